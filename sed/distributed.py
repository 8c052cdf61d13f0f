"""DDP detected from the environment, as in nanoGPT: `torchrun` sets RANK/WORLD_SIZE/LOCAL_RANK,
a plain `python train.py` runs as a single process. NCCL on CUDA, gloo on CPU."""
import contextlib
import os
import warnings
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass
class DistInfo:
    rank: int = 0           # global rank
    world_size: int = 1     # number of processes
    local_rank: int = 0     # rank on this node (= GPU index)
    is_main: bool = True    # rank 0 logs, evaluates COCO and saves
    device: str = "cpu"     # device of this process ("cuda:LOCAL_RANK" under torchrun on GPU)

    @property
    def distributed(self):
        return self.world_size > 1


@contextlib.contextmanager
def main_warns_only(dist_info):
    """Warnings inside show on the main process only: for work that every rank repeats alike (reading the
    same annotation files), which would print each warning once per process."""
    with warnings.catch_warnings():
        if not dist_info.is_main:
            warnings.simplefilter("ignore")
        yield


def launched():
    """True in a process that torchrun started (it sets RANK), even with one process."""
    return "RANK" in os.environ


def setup(device="cpu") -> DistInfo:
    if not launched():
        return DistInfo(device=device)
    rank, world_size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if device.startswith("cuda"):
        device = f"cuda:{local_rank}"
        torch.cuda.set_device(device)
    dist.init_process_group(backend="nccl" if device.startswith("cuda") else "gloo")
    return DistInfo(rank, world_size, local_rank, rank == 0, device)


def all_gather_objects(obj) -> list:
    """[obj of rank 0, obj of rank 1, ...]; [obj] when not distributed."""
    if not (dist.is_available() and dist.is_initialized()):
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def cleanup():
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
