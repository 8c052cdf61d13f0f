"""The default SED step at 512 and at 256 teacher proposals per image, against a supervised step, in one
process (stop 27). `make bench`'s inputs and steps (1 labeled + 4 unlabeled images against 5 labeled,
R50-FPN, random weights); each round runs the supervised step and the SED step at each setting, in
reversed order every other round (this machine's speed drifts within minutes: a fixed order would favour
the last step), and a round's ratios share its machine state; prints the median over rounds of each time
and of each ratio to the supervised step and to the first setting.
From the repository root:
    PYTHONPATH=. python docs/experiment/stop27/proposals_step.py --rounds 7
"""
import argparse
import statistics

import torch
import torchvision

from sed import bench


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--height", type=int, default=448)
    p.add_argument("--width", type=int, default=640)
    p.add_argument("--proposals", type=int, nargs="+", default=[512, 256])
    p.add_argument("--rounds", type=int, default=7)
    a = p.parse_args()
    args = argparse.Namespace(num_classes=80, min_size=a.height, max_size=a.width, height=a.height, width=a.width,
                              dtype="float32")  # the fields make_sed_or_supervised_step reads
    torch.manual_seed(0)
    state = torchvision.models.detection.fasterrcnn_resnet50_fpn(
        weights=None, weights_backbone=None, num_classes=81).state_dict()
    torch.set_flush_denormal(True)
    device = torch.device("cpu")
    for n in a.proposals:
        bench.SED_STEPS[f"sed {n}"] = {"teacher_proposals": n}
    steps = {"supervised": bench.make_sed_or_supervised_step("supervised, same images", args, state, device)}
    steps |= {f"sed {n}": bench.make_sed_or_supervised_step(f"sed {n}", args, state, device) for n in a.proposals}
    times = bench.compare_speed(steps, a.rounds, device)  # since stop 28 make bench's own rounds (this design)
    for i in range(a.rounds):
        print(f"round {i + 1}: " + ", ".join(f"{k} {v[i]:.1f} s" for k, v in times.items()))
    print(f"{a.height}x{a.width}, medians over {a.rounds} rounds:")
    first = f"sed {a.proposals[0]}"
    for name, t in times.items():
        line = f"  {name:12s} {statistics.median(t):6.1f} s"
        for ref in ("supervised", first):
            line += "   / {}, per round: median {:.3f} (min {:.3f}, max {:.3f})".format(
                ref, *bench.round_ratios(t, times[ref]))
        print(line)


if __name__ == "__main__":
    main()
