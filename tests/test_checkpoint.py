"""Checkpoints are written atomically and restore the RNG streams."""
import os
import random
import stat

import numpy as np
import pytest
import torch

from sed import checkpoint
from sed.checkpoint import load_checkpoint, read_tensors, rng_state, save_checkpoint, set_rng_state
from sed.errors import UserError


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
    save_checkpoint(path, {"model": {}, "iteration": 1, "config": {}})

    def broken_save(obj, f):
        f.write(b"half a checkpoint")
        raise RuntimeError("disk full")

    monkeypatch.setattr(checkpoint.torch, "save", broken_save)
    with pytest.raises(RuntimeError, match="disk full"):
        save_checkpoint(path, {"iteration": 2})
    monkeypatch.undo()
    assert load_checkpoint(path)["iteration"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]  # the temporary file removed


def test_missing_and_corrupt_files(tmp_path):
    with pytest.raises(UserError, match="nope.pt: checkpoint not found"):
        load_checkpoint(tmp_path / "nope.pt")
    torch.save({"model": {"w": torch.zeros(100)}}, tmp_path / "ok.pt")
    truncated = (tmp_path / "ok.pt").read_bytes()[:-100]
    for content in (b"not a checkpoint", b"hi\n", truncated):  # b"hi\n" made torch's unpickler raise KeyError
        bad = tmp_path / "bad.pt"
        bad.write_bytes(content)
        with pytest.raises(ValueError, match=r"bad.pt: not a checkpoint \(not a file written by torch.save, or a "
                           r"truncated one\)$"):
            load_checkpoint(bad)  # not torch's advice to load with weights_only=False


def test_the_legacy_torch_save_format_is_read(tmp_path):
    """torch < 1.6 wrote a plain pickle, not a zip archive (e.g. older ResNet weights for --backbone-weights)."""
    state = {"conv.weight": torch.arange(6.0)}
    torch.save(state, tmp_path / "legacy.pth", _use_new_zipfile_serialization=False)
    assert torch.equal(read_tensors(tmp_path / "legacy.pth")["conv.weight"], state["conv.weight"])


def test_rng_state_restores_all_streams():
    state = rng_state()
    first = (random.random(), torch.rand(3), np.random.rand())
    set_rng_state(state)
    second = (random.random(), torch.rand(3), np.random.rand())
    assert first[0] == second[0] and torch.equal(first[1], second[1]) and first[2] == second[2]


class _RunsCode:
    """A pickled object that would create a file when unpickled (what a malicious checkpoint does)."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_checkpoint_that_would_run_code_is_refused(tmp_path):
    evil, marker = tmp_path / "evil.pt", tmp_path / "pwned"
    torch.save({"model": {}, "iteration": 0, "config": {}, "x": _RunsCode(marker)}, evil)
    with pytest.raises(UserError) as info:
        load_checkpoint(evil)
    assert str(info.value).startswith(f"{evil}: refused: it holds pickled Python objects")
    assert "\n" not in str(info.value) and not marker.exists()


def test_written_checkpoint_has_only_tensors_and_plain_types(tmp_path):
    """The RNG states too: torch.load(weights_only=True) reads the file, set_rng_state restores."""
    path = tmp_path / "last.pt"
    save_checkpoint(path, {"model": {"w": torch.ones(2)}, "iteration": 3, "config": {"min_size": (1, 2)},
                           "rng": [rng_state()]})
    state = torch.load(path, weights_only=True)["rng"][0]
    expected = (random.random(), np.random.rand(), torch.rand(2))
    set_rng_state(state)
    assert (random.random(), np.random.rand()) == expected[:2] and torch.equal(torch.rand(2), expected[2])


def test_permissions_follow_the_umask_and_the_temporary_name_is_fixed(tmp_path):
    old = os.umask(0o022)
    try:
        save_checkpoint(tmp_path / "last.pt", {"model": {}, "iteration": 1, "config": {}})
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(tmp_path / "last.pt").st_mode) == 0o644  # 0666 & ~022, not 0600
    assert checkpoint.temporary_path(tmp_path / "last.pt") == str(tmp_path / ".last.pt.tmp")


def test_stale_temporaries_are_removed(tmp_path):
    for name in (".last.pt.tmp", ".tmp_last.ptk3j_x9a", "last.pt", ".tmp_other.pt1"):
        (tmp_path / name).write_bytes(b"x")
    removed = checkpoint.remove_stale_temporaries(tmp_path / "last.pt")
    assert sorted(removed) == [".last.pt.tmp", ".tmp_last.ptk3j_x9a"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [".tmp_other.pt1", "last.pt"]


def test_foreign_checkpoint_and_weights_that_do_not_fit(tmp_path):
    foreign = tmp_path / "fasterrcnn.pth"
    torch.save({"backbone.body.conv1.weight": torch.zeros(1)}, foreign)  # a bare state dict
    with pytest.raises(UserError, match=r"fasterrcnn.pth: not a checkpoint of train.py \(no 'model', "
                                        r"'iteration', 'config'"):
        load_checkpoint(foreign)
    model = torch.nn.Linear(3, 2)
    with pytest.raises(UserError) as info:
        checkpoint.load_weights(model, {"weight": torch.zeros(4, 3), "bias": torch.zeros(4)}, "x.pt")
    assert str(info.value) == ("x.pt: its model weights do not fit this model (0 missing, 0 unexpected, "
                               "2 of another shape: weight is [4, 3] in the checkpoint, [2, 3] here); was it trained "
                               "with another --backbone, --num-classes, --fpn-channels or --box-head-dim?")
