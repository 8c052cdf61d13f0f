"""One checkpoint dict holds everything needed to resume exactly (nanoGPT style).

Keys written by train.py: model (unwrapped from DDP), optimizer, scaler, iteration, config
(dataclasses.asdict), class_names, label_to_cat_id, rng (see `rng_state`), and "teacher" for SED.
"""
import os
import random
import tempfile

import numpy as np
import torch


def save_checkpoint(path, state: dict):
    """Atomic write: a crash (or a failing torch.save) leaves the previous file intact."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp_" + os.path.basename(path), dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)  # atomic on POSIX when tmp and path share a file system
    except BaseException:
        os.unlink(tmp)
        raise


def load_checkpoint(path, map_location="cpu") -> dict:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: checkpoint not found")
    try:
        # weights_only=False: the dict holds numpy RNG states and python objects we wrote ourselves
        return torch.load(path, map_location=map_location, weights_only=False)
    except Exception as e:
        raise ValueError(f"{path}: not a readable checkpoint ({type(e).__name__}: {e})") from None


def rng_state() -> dict:
    """All random generators the training loop touches (the sampler has its own seed)."""
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict):
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
