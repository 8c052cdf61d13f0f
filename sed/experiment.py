"""The SSOD experiment at CPU scale: supervised vs SED and its single-component ablations.

    python -m sed.experiment --out runs/experiment          (make experiment)

On the synthetic shapes with 10 % of the training images labeled (split seed 1), every run has
the same iterations, labeled batch, seed and learning-rate schedule:
    supervised           labeled images only
    sed                  SED, all components on (evaluated: the EMA teacher)
    no_distill           --no-distill: hard pseudo-labels (score >= 0.7) instead of soft targets
    no_scale             --no-scale-consistency
    no_reweight          --no-reweight
The first --burn-in iterations are supervised in every run, so they are trained once: the SED runs
continue from the supervised run's checkpoint at that iteration, which is what `--burn-in-iters`
does inside one run (the teacher starts as a copy of the student). Runs go --parallel at a time,
each with an equal share of the CPU threads. Prints a Markdown table (AP, AP50, APs, APm, APl of
the validation set) and writes it to OUT/results.md and OUT/results.json.
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

from sed.synthetic import generate

ROOT = Path(__file__).resolve().parents[1]
ABLATIONS = {"sed": [], "no_distill": ["--no-distill"], "no_scale": ["--no-scale-consistency"],
             "no_reweight": ["--no-reweight"]}
COLUMNS = ("AP", "AP50", "APs", "APm", "APl")


def common_flags(args, data):
    """Flags shared by every run: data, a small R18-FPN sized for 96 px images, the schedule."""
    return ["--train-ann", str(data["train_ann"]), "--train-images", str(data["train_images"]),
            "--val-ann", str(data["val_ann"]), "--val-images", str(data["val_images"]),
            "--labeled-percent", str(args.labeled_percent), "--split-seed", "1", "--seed", "0",
            "--backbone", "resnet18", "--backbone-weights", "none", "--trainable-layers", "5",
            "--min-size", str(args.image_size), "--max-size", str(2 * args.image_size),
            "--anchor-sizes", "16", "32", "64", "128", "256", "--rpn-proposals", "512", "256",
            "--roi-batch-size", "128", "--batch-size", "4", "--lr", "0.01", "--warmup-iters", "50",
            "--lr-steps", str(args.iters * 3 // 4), "--grad-clip", "10", "--eval-every", "0",
            "--checkpoint-every", str(args.burn_in), "--log-every", "20", "--workers", "1",
            "--device", args.device]


def sed_flags(args):
    """SED settings for a short CPU run (design choices, see README "Experiment")."""
    return ["--method", "sed", "--unlabeled-batch-size", "4", "--teacher-proposals", "64",
            "--ema-momentum", str(args.ema_momentum), "--unsup-weight", str(args.unsup_weight),
            "--burn-in-iters", str(args.burn_in), "--rampup-iters", str(args.rampup),
            "--diagnostics-images", "32"]


def run(cmd, log_path, threads):
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    with open(log_path, "w") as log:
        subprocess.run([sys.executable, *cmd], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                       check=True)


def final_metrics(out_dir, model):
    """The last evaluation of `model` (teacher | student) in a run's metrics.jsonl."""
    lines = [json.loads(line) for line in (Path(out_dir) / "metrics.jsonl").read_text().splitlines()]
    return [m for m in lines if m.get("model", "student") == model][-1]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="runs/experiment")
    parser.add_argument("--num-train", type=int, default=1000)
    parser.add_argument("--num-val", type=int, default=200)
    parser.add_argument("--image-size", type=int, default=96)
    parser.add_argument("--labeled-percent", type=float, default=10)
    parser.add_argument("--iters", type=int, default=800)
    parser.add_argument("--burn-in", type=int, default=400)
    parser.add_argument("--rampup", type=int, default=100)
    parser.add_argument("--unsup-weight", type=float, default=1.0,
                        help="lambda_u; 4 (the COCO default) made SED worse than supervised here, see README")
    parser.add_argument("--ema-momentum", type=float, default=0.99)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--parallel", type=int, default=2)
    parser.add_argument("--runs", nargs="+", default=["supervised", *ABLATIONS])
    args = parser.parse_args(argv)
    out = Path(args.out)
    data = generate(out / "data", args.num_train, args.num_val, seed=0, image_size=args.image_size,
                    height_ratios=(1.0,))  # square: the 64-padded SED views waste no pixels
    common = common_flags(args, data)
    threads = max(1, torch.get_num_threads() // args.parallel)

    # burn-in: the supervised run up to --burn-in, its checkpoint kept for the SED runs
    burn_in_ckpt = out / "burn_in.pt"
    if not burn_in_ckpt.exists():
        run(["train.py", *common, "--max-iter", str(args.burn_in), "--out", str(out / "supervised")],
            out / "supervised_burn_in.log", torch.get_num_threads())
        shutil.copy(out / "supervised" / "last.pt", burn_in_ckpt)
    commands = {"supervised": ["train.py", *common, "--max-iter", str(args.iters), "--out", str(out / "supervised"),
                               "--resume", str(out / "supervised" / "last.pt")]}
    for name, switches in ABLATIONS.items():
        commands[name] = ["train.py", *common, *sed_flags(args), *switches, "--max-iter", str(args.iters),
                          "--out", str(out / name), "--resume", str(burn_in_ckpt)]
    with ThreadPoolExecutor(args.parallel) as pool:
        for future in [pool.submit(run, commands[n], out / f"{n}.log", threads) for n in args.runs]:
            future.result()

    rows = {n: final_metrics(out / n, "student" if n == "supervised" else "teacher") for n in args.runs}
    if "sed" in args.runs:
        rows["sed (student)"] = final_metrics(out / "sed", "student")
    table = [f"| run | {' | '.join(COLUMNS)} |", "|---" * (len(COLUMNS) + 1) + "|"]
    table += [f"| {n} | " + " | ".join(f"{m[c]:.1f}" for c in COLUMNS) + " |" for n, m in rows.items()]
    (out / "results.md").write_text("\n".join(table) + "\n")
    (out / "results.json").write_text(json.dumps(rows, indent=1))
    print("\n".join(table))


if __name__ == "__main__":
    main()
