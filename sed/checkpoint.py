"""One checkpoint dict holds everything needed to resume exactly (nanoGPT style).

Keys written by train.py: model (unwrapped from DDP), optimizer, scaler, iteration, config
(dataclasses.asdict), class_names, label_to_cat_id, rng (see `rng_state`), and "teacher" for SED.

Safe to share: everything in it is a tensor or a plain type (dict, list, tuple, str, number), so
it is read with `torch.load(weights_only=True)`, which refuses pickled objects (a file from
someone else cannot run code when loaded). Written atomically through the fixed temporary name
`.<name>.tmp` in the same folder, with the permissions the umask gives a new file.
"""
import os
import pickle
import random
import zipfile

import numpy as np
import torch

from sed.errors import UserError, one_line

REQUIRED_KEYS = ("model", "iteration", "config")


def temporary_path(path):
    """The fixed temporary name of `path` (design choice: a fixed name rather than mkstemp's random
    one, so that the file a kill left behind is replaced by the next write instead of piling up)."""
    return os.path.join(os.path.dirname(os.path.abspath(path)), f".{os.path.basename(path)}.tmp")


def remove_stale_temporaries(path):
    """Remove what an interrupted write of `path` left: our `.<name>.tmp` and the `.tmp_<name>*`
    files of earlier versions (tempfile.mkstemp). Call at start, before the first write."""
    directory, name = os.path.split(os.path.abspath(path))
    if not os.path.isdir(directory):
        return []
    stale = [f for f in os.listdir(directory) if f == f".{name}.tmp" or f.startswith(f".tmp_{name}")]
    for f in stale:
        os.unlink(os.path.join(directory, f))
    return stale


def save_checkpoint(path, state: dict):
    """Atomic write: a crash (or a failing torch.save) leaves the previous file intact."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    tmp = temporary_path(path)
    try:
        with open(tmp, "wb") as f:  # mode 0666 & ~umask, as any new file (mkstemp gave 0600)
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)  # atomic on POSIX when tmp and path share a file system
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def written_by_torch_save(path):
    """torch.save's zip archive, or its legacy format (torch < 1.6, still read by torch.load: a pickle of
    protocol >= 2, whose first byte is the PROTO opcode 0x80)."""
    if zipfile.is_zipfile(path):
        return True
    with open(path, "rb") as f:
        return f.read(1) == b"\x80"


def read_tensors(path, map_location="cpu"):
    """torch.load(path, weights_only=True): tensors and plain types only; what torch.save did not write,
    and pickled Python objects, are one-line UserErrors naming the file (a checkpoint of train.py, or
    --backbone-weights)."""
    if not written_by_torch_save(path):  # other bytes would reach the unpickler, whose errors (a KeyError
        # for some text files) name nothing
        raise UserError(f"{path}: not a checkpoint (not a file written by torch.save, or a truncated one)")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        if "Unsupported global" not in str(e):  # not a pickle of objects; torch's own message advises
            # weights_only=False, which would not help
            raise UserError(f"{path}: not a checkpoint (not a file written by torch.save)") from None
        raise UserError(f"{path}: refused: it holds pickled Python objects, which could run code when "
                        "loaded (only tensors and plain types are read; a checkpoint of sed before "
                        "weights_only, with numpy RNG states, is refused too)") from None
    except (RuntimeError, EOFError, OSError) as e:  # a corrupt zip archive
        raise UserError(f"{path}: not a readable checkpoint ({one_line(e)})") from None


def load_checkpoint(path, map_location="cpu", required=REQUIRED_KEYS) -> dict:
    """The checkpoint dict at `path` (`read_tensors`); anything that is not a checkpoint of ours with the
    `required` keys is a one-line UserError naming the file."""
    if not os.path.isfile(path):
        raise UserError(f"{path}: checkpoint not found")
    ckpt = read_tensors(path, map_location)
    missing = [k for k in required if not (isinstance(ckpt, dict) and k in ckpt)]
    if missing:
        raise UserError(f"{path}: not a checkpoint of train.py (no {', '.join(map(repr, missing))}; "
                        "a torchvision ResNet's weights go through --backbone-weights, a torchvision detector's "
                        "through sed.load_torchvision_weights)")
    return ckpt


def load_weights(model, state_dict, path, what="model"):
    """model.load_state_dict(state_dict), with a one-line UserError when the checkpoint's weights
    do not fit (another backbone, class count or layer width; the anchor sizes shape no weight)."""
    own = model.state_dict()
    missing, unexpected = own.keys() - state_dict.keys(), state_dict.keys() - own.keys()
    reshaped = [k for k in own if k in state_dict and own[k].shape != state_dict[k].shape]  # model order
    if missing or unexpected or reshaped:
        example = (f"{reshaped[0]} is {list(state_dict[reshaped[0]].shape)} in the checkpoint, "
                   f"{list(own[reshaped[0]].shape)} here" if reshaped else
                   f"e.g. {sorted(missing or unexpected)[0]} {'missing' if missing else 'unexpected'}")
        raise UserError(f"{path}: its {what} weights do not fit this model ({len(missing)} missing, "
                        f"{len(unexpected)} unexpected, {len(reshaped)} of another shape: {example}); "
                        "was it trained with another --backbone, --num-classes, --fpn-channels or --box-head-dim?")
    model.load_state_dict(state_dict)


def rng_state() -> dict:
    """All random generators the training loop touches (the sampler has its own seed), as tensors
    and plain types (weights_only): python's state as a list, numpy's as a dict with a tensor."""
    version, mt, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"python": [version, list(mt), gauss],
             "numpy": {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                       "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict):
    version, mt, gauss = state["python"]
    random.setstate((version, tuple(mt), gauss))
    n = state["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
