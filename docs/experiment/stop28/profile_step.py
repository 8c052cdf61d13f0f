"""Where the default SED step's time goes against a supervised step (stop 28): `make bench`'s inputs and
steps (1 labeled + 4 unlabeled images against 5 labeled, R50-FPN, random weights, 448x640), one step of
each under torch.profiler after a warm-up step; prints each step's total self CPU time and its top ops.
From the repository root:
    PYTHONPATH=. python docs/experiment/stop28/profile_step.py
"""
import argparse

import torch
import torchvision
from torch.profiler import ProfilerActivity, profile

from sed import bench


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--height", type=int, default=448)
    p.add_argument("--width", type=int, default=640)
    p.add_argument("--top", type=int, default=14)
    a = p.parse_args()
    args = argparse.Namespace(num_classes=80, min_size=a.height, max_size=a.width, height=a.height, width=a.width,
                              dtype="float32")  # the fields make_sed_or_supervised_step reads
    torch.set_flush_denormal(True)
    torch.manual_seed(0)
    state = torchvision.models.detection.fasterrcnn_resnet50_fpn(
        weights=None, weights_backbone=None, num_classes=81).state_dict()
    steps = {kind: bench.make_sed_or_supervised_step(kind, args, state, torch.device("cpu"))
             for kind in ("sed step", "supervised, same images")}
    for step in steps.values():
        step()  # warm-up
    for kind, step in steps.items():
        torch.manual_seed(1)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            step()
        events = prof.key_averages()
        print(f"{kind}: {sum(e.self_cpu_time_total for e in events) / 1e6:.1f} s self CPU time in all")
        for e in sorted(events, key=lambda e: -e.self_cpu_time_total)[:a.top]:
            print(f"   {e.key:55s} {e.self_cpu_time_total / 1e6:6.2f} s   calls {e.count}")


if __name__ == "__main__":
    main()
