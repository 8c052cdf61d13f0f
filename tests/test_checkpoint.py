"""Checkpoints are written atomically and restore the RNG streams."""
import random

import numpy as np
import pytest
import torch

from sed import checkpoint
from sed.checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state


def test_round_trip(tmp_path):
    path = tmp_path / "last.pt"
    state = {"model": {"w": torch.arange(6.0).view(2, 3)}, "iteration": 7, "config": {"lr": 0.1}}
    save_checkpoint(path, state)
    loaded = load_checkpoint(path)
    assert loaded["iteration"] == 7 and loaded["config"] == {"lr": 0.1}
    assert torch.equal(loaded["model"]["w"], state["model"]["w"])
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]  # no temporary file left


def test_failing_save_keeps_previous_file(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    save_checkpoint(path, {"iteration": 1})

    def broken_save(obj, f):
        f.write(b"half a checkpoint")
        raise RuntimeError("disk full")

    monkeypatch.setattr(checkpoint.torch, "save", broken_save)
    with pytest.raises(RuntimeError, match="disk full"):
        save_checkpoint(path, {"iteration": 2})
    monkeypatch.undo()
    assert load_checkpoint(path)["iteration"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


def test_missing_and_corrupt_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.pt: checkpoint not found"):
        load_checkpoint(tmp_path / "nope.pt")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="bad.pt: not a readable checkpoint"):
        load_checkpoint(bad)


def test_rng_state_restores_all_streams():
    state = rng_state()
    first = (random.random(), torch.rand(3), np.random.rand())
    set_rng_state(state)
    second = (random.random(), torch.rand(3), np.random.rand())
    assert first[0] == second[0] and torch.equal(first[1], second[1]) and first[2] == second[2]
