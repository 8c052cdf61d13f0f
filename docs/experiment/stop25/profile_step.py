"""Where the default SED step's time goes beyond a supervised step's, at a given image size (stop 25).

`make bench`'s two steps (sed.bench: 1 labeled + 4 unlabeled images against 5 labeled, R50-FPN, random
weights), one warm-up each, then one profiled step each with torch.profiler; prints, per operator, the
self CPU seconds of both and their difference, largest difference first. From the repository root:
    PYTHONPATH=. python docs/experiment/stop25/profile_step.py --height 800 --width 1333
Stop 25 ran it at 57b1433, when the default had the soft self-distillation; since stop 26 (no
distillation by default) the "sed step" kind is the new default, and stop 25's is not a kind of sed.bench.
"""
import argparse

import torch
import torchvision
from torch.profiler import ProfilerActivity, profile

from sed import bench


def self_seconds(step):
    """{operator: self CPU seconds} of one call of step."""
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step()
    return {e.key: e.self_cpu_time_total / 1e6 for e in prof.key_averages()}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--height", type=int, default=800)
    p.add_argument("--width", type=int, default=1333)
    p.add_argument("--kind", default="sed step", choices=list(bench.SED_STEPS))
    p.add_argument("--top", type=int, default=25)
    a = p.parse_args()
    args = argparse.Namespace(  # the fields make_sed_or_supervised_step reads
        num_classes=80, min_size=a.height, max_size=a.width, height=a.height, width=a.width, dtype="float32")
    torch.manual_seed(0)
    state = torchvision.models.detection.fasterrcnn_resnet50_fpn(
        weights=None, weights_backbone=None, num_classes=81).state_dict()
    device = torch.device("cpu")
    torch.set_flush_denormal(True)
    times = {}
    for kind in (a.kind, "supervised, same images"):
        step = bench.make_sed_or_supervised_step(kind, args, state, device)
        torch.manual_seed(1)
        step()  # warm-up
        torch.manual_seed(1)
        times[kind] = self_seconds(step)
    sed, sup = times[a.kind], times["supervised, same images"]
    print(f"{a.height}x{a.width}, {a.kind} vs supervised (5 images): total self CPU s "
          f"{sum(sed.values()):.1f} / {sum(sup.values()):.1f}")
    ops = sorted(set(sed) | set(sup), key=lambda k: sed.get(k, 0) - sup.get(k, 0), reverse=True)
    for op in ops[:a.top]:
        print(f"{op[:60]:60s} {sed.get(op, 0):8.2f} {sup.get(op, 0):8.2f} {sed.get(op, 0) - sup.get(op, 0):+8.2f}")


if __name__ == "__main__":
    main()
