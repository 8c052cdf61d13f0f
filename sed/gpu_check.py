"""Everything GPU-specific, checked with one command on a GPU machine (`make gpu-check`).

    python -m sed.gpu_check [--python PYTHON] [--wheel pycocotools-...whl ...] [--out build/gpu-check]

Each part runs as a subprocess with a time limit (25 minutes at most in all; about 8 on one GPU by an
estimate never measured) and is
reported as pass / fail / skip with its seconds; the run ends with one summary table (also written
to OUT/summary.md) and exits 1 if any part failed. Without CUDA the CUDA parts are skipped, not
failed, and the CPU-capable parts run (torchrun with gloo, evaluation through pycocotools).

Parts:
  environment        torch / torchvision / CUDA / NCCL / pycocotools versions
  tests (cuda)       the tests with a CUDA variant: pytest tests/test_cuda.py -k cuda
  step <dtype>       R50-FPN at 800x1333 on one GPU, float32 / bfloat16 / float16: a supervised step
                     (2 images) and an SED step (1 + 4 images) with an optimiser step (GradScaler
                     for float16): finite losses and weights, time and peak memory
  torchrun 1 proc    train.py under torchrun --nproc_per_node 1 (NCCL on a GPU, gloo without),
                     SED on synthetic data, 4 iterations with an evaluation
  torchrun 2 procs   the same with 2 processes, when 2 GPUs exist
  eval (pycocotools) eval.py on that checkpoint: the 12 COCO numbers through pycocotools
  bench <dtype>      python -m sed.bench --device cuda at 800x1333, float32 and bfloat16: ours vs
                     torchvision (train step, inference), SED 1 + 4 vs supervised 5

It runs with the machine's own python (torch >= 2.11, torchvision >= 0.26) and needs no internet:
pycocotools (and tqdm, pytest, if missing) come as wheels (`--wheel`, or any wheels in ./wheels);
those whose module is missing are installed with `pip --no-index --target OUT/site`, so that the
system python is left untouched.
"""
import argparse
import glob
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DTYPES = ("float32", "bfloat16", "float16")


def run_part(name, cmd, timeout, env, log_dir):
    """Run one part: (name, "pass" | "fail" | "skip", seconds, note). Exit status 77 means skip
    (the part found no GPU), as in automake's test protocol; the note is the last output line."""
    start = time.perf_counter()
    log = log_dir / (name.replace(" ", "_").replace("(", "").replace(")", "") + ".log")
    try:
        result = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
        output, code = result.stdout + result.stderr, result.returncode
    except subprocess.TimeoutExpired as e:
        output = (e.stdout or b"").decode(errors="replace") if isinstance(e.stdout, bytes) else (e.stdout or "")
        output, code = output + f"\ntimed out after {timeout} s", None
    seconds = time.perf_counter() - start
    log.write_text(" ".join(map(str, cmd)) + "\n" + output)
    lines = [line for line in output.splitlines() if line.strip()]
    status = "pass" if code == 0 else "skip" if code == 77 else "fail"
    note = lines[-1].strip() if lines else ""
    if status == "fail":
        note = f"{note[:150]}  (log: {log.relative_to(ROOT) if log.is_relative_to(ROOT) else log})"
    print(f"[{status}] {name} ({seconds:.0f} s): {note}", flush=True)
    return name, status, seconds, note


def table(rows):
    """The summary as a markdown table."""
    lines = ["| part | result | seconds | note |", "|---|---|---|---|"]
    lines += [f"| {name} | {status} | {seconds:.0f} | {note.replace('|', '/')} |"
              for name, status, seconds, note in rows]
    return "\n".join(lines)


IMPORT_NAMES = {"pillow": "PIL", "pyyaml": "yaml"}   # distributions whose module is named otherwise


def install_wheels(python, wheels, site):
    """pip install --no-index --no-deps --target site the wheels whose module `python` lacks:
    offline, and the system python is left alone (a numpy wheel pulled in by `pip download` does
    not shadow the numpy that torch was built against)."""
    needed = []
    for wheel in wheels:
        dist = Path(wheel).name.split("-")[0].lower()
        module = IMPORT_NAMES.get(dist, dist)
        probe = subprocess.run([python, "-c", f"import importlib.util, sys; "
                                              f"sys.exit(importlib.util.find_spec({module!r}) is None)"])
        if probe.returncode != 0:
            needed.append(wheel)
    if needed:
        print("installing into", site, ":", ", ".join(Path(w).name for w in needed), flush=True)
        subprocess.run([python, "-m", "pip", "install", "--quiet", "--no-index", "--no-deps", "--upgrade",
                        "--target", str(site), *needed], check=True)


# ---- the parts that run in their own process: python -m sed.gpu_check --part NAME ----

SKIP = 77


def part_environment():
    import torch
    import torchvision
    print(f"python {sys.version.split()[0]}, torch {torch.__version__}, torchvision {torchvision.__version__}")
    missing = []
    for module in ("numpy", "PIL", "tqdm", "pycocotools", "pytest"):
        try:
            __import__(module)
        except ImportError:
            missing.append(module)
    if torch.cuda.is_available():
        names = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        print(f"CUDA {torch.version.cuda}, {len(names)} GPU(s): {', '.join(names)}; "
              f"NCCL {torch.cuda.nccl.version() if torch.distributed.is_nccl_available() else 'missing'}; "
              f"bf16 {torch.cuda.is_bf16_supported()}")
    else:
        print("no CUDA device: the CUDA parts are skipped")
    if missing:
        print(f"missing modules: {', '.join(missing)} (bring them as wheels: see README 'GPU check')")
        return 1
    print(f"torch {torch.__version__}, torchvision {torchvision.__version__}, "
          f"{torch.cuda.device_count()} GPU(s), all modules present")
    return 0


def part_step(dtype, height=800, width=1333):
    """A supervised step (2 images) and an SED step (1 + 4 images) of R50-FPN at 800x1333, each with
    an optimiser step as train.py takes it."""
    import torch
    if not torch.cuda.is_available():
        print("no CUDA device")
        return SKIP
    if dtype == "bfloat16" and not torch.cuda.is_bf16_supported():
        print("this GPU does not support bfloat16")
        return SKIP
    sys.path.insert(0, str(ROOT))
    import train
    import sed
    from sed.bench import make_inputs
    from sed.config import TrainConfig
    from sed.losses import SEDObjective
    from sed.teacher import make_teacher

    device = "cuda"
    torch.manual_seed(0)
    model = sed.build_model(80, "resnet50", min_size=height, max_size=width).to(device).train()
    cfg = TrainConfig(device=device, dtype=dtype, burn_in_iters=0, min_size=(height,), max_size=width)
    objective = SEDObjective(model, cfg)
    teacher = make_teacher(model)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=0.01, momentum=0.9, weight_decay=1e-4)
    scaler = torch.amp.GradScaler("cuda", enabled=dtype == "float16")
    images, targets = make_inputs(5, height, width, device)
    steps = {"supervised 2": lambda: train.supervised_step(objective, images[:2], targets[:2], cfg),
             "sed 1+4": lambda: train.sed_step(objective, teacher, model, images[:1], targets[:1], images[1:], 0, cfg)}
    report = []
    for name, step in steps.items():
        for attempt in range(2):   # the second run is timed (the first pays cuDNN's algorithm search)
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            start = time.perf_counter()
            losses = step()
            if not all(torch.isfinite(v).all() for v in losses.values()):
                print(f"{name} {dtype}: non-finite loss: " + json.dumps({k: v.item() for k, v in losses.items()}))
                return 1
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(losses["total"]).backward()
            scaler.step(optimizer)
            scaler.update()
            torch.cuda.synchronize()
            seconds = time.perf_counter() - start
        if not all(torch.isfinite(p).all() for p in params):
            print(f"{name} {dtype}: non-finite weights after the step")
            return 1
        report.append(f"{name}: {seconds * 1000:.0f} ms, peak {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB")
    print(f"{dtype}, {height}x{width}: " + "; ".join(report) + ", losses finite")
    return 0


def part_no_gpu_is_skip(min_gpus=1):
    import torch
    if torch.cuda.device_count() < min_gpus:
        print(f"needs {min_gpus} CUDA GPU(s), found {torch.cuda.device_count()}")
        return SKIP
    return 0


# ---- the driver ----

def train_command(python, data, out, nproc, device):
    """train.py under torchrun: SED on the synthetic shapes, 4 iterations (burn-in 2), evaluation at the end."""
    return [python, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc), "train.py",
            "--method", "sed", "--labeled-percent", "50", "--burn-in-iters", "2", "--max-iter", "4",
            "--train-ann", f"{data}/annotations/train.json", "--train-images", f"{data}/train",
            "--val-ann", f"{data}/annotations/val.json", "--val-images", f"{data}/val",
            "--backbone", "resnet18", "--backbone-weights", "none", "--min-size", "64", "--max-size", "96",
            "--batch-size", "1", "--unlabeled-batch-size", "2", "--teacher-proposals", "32",
            "--diagnostics-images", "4", "--eval-every", "4", "--checkpoint-every", "4", "--log-every", "1",
            "--workers", "1", "--device", device, "--out", str(out)]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--python", default=sys.executable, help="the python that runs every part")
    parser.add_argument("--wheel", nargs="*", default=[], help="wheels to install first (pycocotools, tqdm)")
    parser.add_argument("--wheels-dir", default=str(ROOT / "wheels"), help="every *.whl here is installed too")
    parser.add_argument("--out", default=str(ROOT / "build" / "gpu-check"), help="logs, site, summary.md")
    parser.add_argument("--skip-bench", action="store_true", help="leave out the benchmark parts")
    parser.add_argument("--part", help=argparse.SUPPRESS)        # internal: run one part in this process
    parser.add_argument("--dtype", default="float32", help=argparse.SUPPRESS)
    parser.add_argument("--min-gpus", type=int, default=1, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.part:
        parts = {"environment": part_environment, "step": lambda: part_step(args.dtype),
                 "gpus": lambda: part_no_gpu_is_skip(args.min_gpus)}
        sys.exit(parts[args.part]())

    out = Path(args.out).resolve()
    logs, site = out / "logs", out / "site"
    logs.mkdir(parents=True, exist_ok=True)
    install_wheels(args.python, args.wheel + sorted(glob.glob(os.path.join(args.wheels_dir, "*.whl"))), site)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(site), str(ROOT), os.environ.get("PYTHONPATH"))
                                                       if p),
           "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")}
    py, me = args.python, [args.python, "-m", "sed.gpu_check"]
    rows = []

    def part(name, cmd, timeout):
        rows.append(run_part(name, cmd, timeout, env, logs))
        return rows[-1][1]

    def gated(name, min_gpus, cmd, timeout):
        """A part that needs min_gpus CUDA devices: skipped (not failed) without them."""
        probe = subprocess.run(me + ["--part", "gpus", "--min-gpus", str(min_gpus)], cwd=ROOT, env=env,
                               capture_output=True, text=True)
        if probe.returncode == SKIP:
            rows.append((name, "skip", 0.0, probe.stdout.strip()))
            print(f"[skip] {name}: {probe.stdout.strip()}", flush=True)
            return "skip"
        return part(name, cmd, timeout)

    start = time.perf_counter()
    part("environment", me + ["--part", "environment"], 120)
    gated("tests (cuda)", 1, [py, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", "tests/test_cuda.py",
                              "-k", "cuda"], 150)
    for dtype in DTYPES:
        part(f"step {dtype}", me + ["--part", "step", "--dtype", dtype], 120)

    data = Path(tempfile.mkdtemp(prefix="sed-gpu-check-"))
    subprocess.run([py, "-m", "sed.synthetic", str(data), "--num-train", "16", "--num-val", "8", "--seed", "0",
                    "--image-size", "64"], cwd=ROOT, env=env, check=True, capture_output=True)
    probe = subprocess.run(me + ["--part", "gpus"], cwd=ROOT, env=env, capture_output=True)
    device = "cuda" if probe.returncode == 0 else "cpu"
    backend = "nccl" if device == "cuda" else "gloo"
    run1 = data / "run1"
    status = part(f"torchrun 1 proc ({backend})", train_command(py, data, run1, 1, device), 240)
    gated("torchrun 2 procs (nccl)", 2, train_command(py, data, data / "run2", 2, "cuda"), 240)
    if status == "pass":
        part("eval (pycocotools)", [py, "eval.py", "--ckpt", str(run1 / "last.pt"),
                                    "--val-ann", f"{data}/annotations/val.json", "--val-images", f"{data}/val",
                                    "--device", device, "--workers", "0", "--json", str(run1 / "eval.json")], 120)
    else:
        rows.append(("eval (pycocotools)", "fail", 0.0, "no checkpoint: the torchrun part failed"))
    if not args.skip_bench:
        for dtype in ("float32", "bfloat16"):
            gated(f"bench {dtype}", 1, [py, "-m", "sed.bench", "--device", "cuda", "--dtype", dtype, "--height", "800",
                                        "--width", "1333", "--min-size", "800", "--max-size", "1333"], 150)

    summary = table(rows)
    bench_logs = [logs / f"bench_{dtype}.log" for dtype in ("float32", "bfloat16")]
    figures = "\n\n".join(f"```\n{p.read_text()}\n```" for p in bench_logs if p.exists())
    (out / "summary.md").write_text(summary + "\n" + (f"\n{figures}\n" if figures else ""))
    print(f"\ngpu-check summary ({time.perf_counter() - start:.0f} s; logs in {logs}):\n{summary}")
    sys.exit(1 if any(status == "fail" for _, status, _, _ in rows) else 0)


if __name__ == "__main__":
    main()
