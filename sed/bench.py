"""Speed and memory: our detector against torchvision's, and an SED step against a supervised one.

    python -m sed.bench [--device cuda] [--dtype bfloat16] [--height 800 --width 1333] [--repeats 5]  (make bench)
    python -m sed.bench --parts sed sed-figure1 --height 800 --width 1333 --min-size 800 --max-size 1333
                                     (only the SED ratios, at train.py's default image size: 24 min on 2 cores)
    python -m sed.bench --data [--data-dir DIR] [--data-batches 10000]   (data loading: sed/bench_data.py)

1. Training step (forward + backward) and inference of our R50-FPN and torchvision's
   `fasterrcnn_resnet50_fpn` with the same weights and inputs: ratio ours / torchvision (target <= 1).
2. One SED step (1 labeled + 4 unlabeled images, Soft Teacher's 1:4; teacher on the weak view,
   student on the strong and 0.5x views, `train.sed_step`) against a supervised step over as many
   images (5 labeled): ratio SED / supervised (target <= 1.5), for `train.py`'s defaults (hard labels
   on, their box-head loss on the student's own proposals, no soft self-distillation), with
   `--hard-label-rois teacher` (on the teacher's proposals, the box-head pass of the scale targets) and
   for SED as Figure 1 draws it (`--distill --no-hard-pseudo-labels`).
3. The teacher-student step (the experiment's `teacher_student` row: EMA teacher and hard labels only, no
   scale link) against the same supervised step, and the default SED step against it directly
   (`--parts sed-over-ts`): what SED's own terms (the 0.5x view, the scale targets) cost over the baseline
   it improves on.
Every part runs on the same random weights, made to do a trained detector's work (`trained_like`): zero
box deltas, so that the RPN keeps its 2000 / 1000 proposals per image after NMS, and a background logit
raised until the SED step's teacher keeps 4 pseudo-labels per unlabeled image, as many as a labeled image
has boxes (plain random weights: about 415 / 325 proposals and 100 pseudo-labels).
Times are medians over rounds, measured in one process with the order reversed every other round so
both sides see the same machine load; each ratio is the median of the rounds' ratios (with their range).
Peak memory: CUDA, the allocator's peak during one step; CPU, the growth of the resident size
during one step in a fresh process that holds only that step's model(s).
"""
import argparse
import multiprocessing
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torchvision

import sed
from sed import bench_data
from sed.config import TrainConfig
from sed.errors import ArgumentParser
from sed.evaluation import autocast
from sed.losses import SEDObjective, pseudo_targets
from sed.teacher import make_teacher
from sed.views import SIZE_DIVISIBLE

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # train.py: the exact training steps
import train  # noqa: E402

SED_LABELED, SED_UNLABELED = 1, 4
SED_STEPS = {"sed step": {}, "sed step, teacher rois": {"hard_label_rois": "teacher"},  # kind -> TrainConfig changes
             "sed step, figure 1": {"distill": True, "hard_pseudo_labels": False},
             "teacher-student step": {"scale_consistency": False, "reweight": False}}  # experiment's teacher_student
SUPERVISED = "supervised, same images"
LABELS = {"sed step": "sed", "sed step, teacher rois": "sed", "sed step, figure 1": "sed",  # step kind -> printed
          "teacher-student step": "t-s", SUPERVISED: "supervised"}
OVER_SUP = f"{SED_LABELED}+{SED_UNLABELED} vs sup {SED_LABELED + SED_UNLABELED}"
PARTS = {"sed": (f"SED {OVER_SUP}", "sed step", SUPERVISED),  # --parts name -> (printed name, step, reference step)
         "sed-teacher-rois": (f"SED teacher rois {OVER_SUP}", "sed step, teacher rois", SUPERVISED),
         "sed-figure1": (f"SED fig.1 {OVER_SUP}", "sed step, figure 1", SUPERVISED),
         "teacher-student": (f"teacher-student {OVER_SUP}", "teacher-student step", SUPERVISED),
         "sed-over-ts": (f"SED {SED_LABELED}+{SED_UNLABELED} vs t-s {SED_LABELED}+{SED_UNLABELED}", "sed step",
                         "teacher-student step")}


BOXES_PER_IMAGE = 4  # make_inputs' ground-truth boxes per image
BACKGROUND_BIAS = "roi_heads.box_predictor.cls_score.bias"  # [C+1] in torchvision's state; index 0: background
REGRESSION = ("rpn.head.bbox_pred.weight", "rpn.head.bbox_pred.bias",   # torchvision's state: the box deltas
              "roi_heads.box_predictor.bbox_pred.weight", "roi_heads.box_predictor.bbox_pred.bias")


def make_inputs(batch_size, height, width, device, seed=0, num_classes=80):
    """Random images with BOXES_PER_IMAGE random boxes each (labels 1..min(5, num_classes))."""
    g = torch.Generator().manual_seed(seed)
    images, targets = [], []
    for _ in range(batch_size):
        images.append(torch.rand(3, height, width, generator=g).to(device))
        xy = torch.rand(BOXES_PER_IMAGE, 2, generator=g) * torch.tensor([width, height]) * 0.6
        wh = 16 + torch.rand(BOXES_PER_IMAGE, 2, generator=g) * torch.tensor([width, height]) * 0.3
        labels = torch.randint(1, min(5, num_classes) + 1, (BOXES_PER_IMAGE,), generator=g)
        targets.append({"boxes": torch.cat([xy, xy + wh], dim=1).to(device), "labels": labels.to(device)})
    return images, targets


def our_model(args, state):
    model = sed.build_model(args.num_classes, "resnet50", min_size=args.min_size, max_size=args.max_size)
    return sed.load_torchvision_weights(model, state)


def torchvision_model(args, state):
    model = torchvision.models.detection.fasterrcnn_resnet50_fpn(
        weights=None, weights_backbone=None, num_classes=args.num_classes + 1,
        min_size=args.min_size, max_size=args.max_size)
    model.load_state_dict(state)
    return model


@torch.no_grad()
def pseudo_labels_per_image(model, weak_batch, threshold):
    """Mean number of the eval-mode model's hard pseudo-labels (detections >= threshold) per image of
    weak_batch."""
    targets = pseudo_targets(model.detect(weak_batch), threshold)
    return sum(len(t["boxes"]) for t in targets) / len(targets)


@torch.no_grad()
def trained_like(state, args, device, steps=12):
    """Random weights that do the work of a trained detector's step: its counts of proposals, detections and
    pseudo-labels, which the step's time depends on (stop 34). Two changes, the same for every side and part:

    1. The box-regression layers (RPN and box head) are zero, so proposals are the anchors and detections the
       proposals. Random deltas made almost every box the image's full height, and the RPN's NMS kept about
       415 of 2000 proposals per image in training and 325 of 1000 in evaluation mode; with zero deltas it
       keeps 2000 and 1000, as a trained RPN does (docs/experiment/stop30/bench_counts.py measured the former).
    2. The background logit's bias is raised (bisection in [0, 64]) until the SED step's teacher keeps at most
       BOXES_PER_IMAGE pseudo-labels per unlabeled image, as many as a labeled image has boxes. Random weights
       score almost every proposal as an object, and all 100 detections per image passed --pseudo-threshold:
       25x a labeled image's boxes into the hard labels' matching and sampling.
    Design choice of the bench. Returns (state, offset, pseudo-labels per image before 2, after 2).
    """
    state = {k: torch.zeros_like(v) if k in REGRESSION else v for k, v in state.items()}
    model = our_model(args, state).to(device).eval()
    images, _ = make_inputs(SED_LABELED + SED_UNLABELED, args.height, args.width, device, num_classes=args.num_classes)
    weak_batch, _ = model.transform(images[SED_LABELED:], size_divisible=SIZE_DIVISIBLE)  # the teacher's view
    bias, base = model.roi_heads.predictor.cls_score.bias, float(state[BACKGROUND_BIAS][0])  # bias: [C+1]

    def count(offset):
        bias[0] = base + offset
        return pseudo_labels_per_image(model, weak_batch, TrainConfig().pseudo_threshold)

    low, high = 0.0, 64.0
    before = count(low)
    if before <= BOXES_PER_IMAGE:
        return state, 0.0, before, before
    for _ in range(steps):   # invariant: count(low) > BOXES_PER_IMAGE >= count(high)
        middle = (low + high) / 2
        low, high = (middle, high) if count(middle) > BOXES_PER_IMAGE else (low, middle)
    state[BACKGROUND_BIAS] = state[BACKGROUND_BIAS].clone()
    state[BACKGROUND_BIAS][0] = base + high
    return state, high, before, count(high)


def make_step(kind, which, args, state, device):
    """A zero-argument callable running one `kind` step of `which` model on fixed inputs."""
    if kind in SED_STEPS or kind == SUPERVISED:
        return make_sed_or_supervised_step(kind, args, state, device)
    model = (our_model if which == "ours" else torchvision_model)(args, state).to(device)
    images, targets = make_inputs(args.batch_size, args.height, args.width, device, num_classes=args.num_classes)
    if kind == "inference":
        model.eval()

        def infer():
            with torch.no_grad(), autocast(device, args.dtype):
                return model(images)
        return infer
    model.train()

    def step():
        with autocast(device, args.dtype):   # as train.supervised_step: autocast forward, backward outside
            loss = sum(model(images, targets).values())
        loss.backward()
        model.zero_grad(set_to_none=True)
    return step


def make_sed_or_supervised_step(kind, args, state, device):
    """train.sed_step on 1 labeled + 4 unlabeled images, or train.supervised_step on all 5 labeled."""
    cfg = TrainConfig(device=str(device), dtype=args.dtype, burn_in_iters=0, **SED_STEPS.get(kind, {}))
    model = our_model(args, state).to(device).train()
    objective = SEDObjective(model, cfg)
    images, targets = make_inputs(SED_LABELED + SED_UNLABELED, args.height, args.width, device,
                                  num_classes=args.num_classes)
    if kind in SED_STEPS:
        teacher = make_teacher(model)
        run = lambda: train.sed_step(objective, teacher, model, images[:SED_LABELED], targets[:SED_LABELED],
                                     images[SED_LABELED:], 0, cfg)
    else:
        run = lambda: train.supervised_step(objective, images, targets, cfg)

    def step():
        run()["total"].backward()
        model.zero_grad(set_to_none=True)
    return step


def timed(fn, device):
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def compare_speed(steps, repeats, device):
    """steps: {name: callable} -> {name: [seconds of each of `repeats` rounds]}, after a warm-up round.

    Every round runs each step once, in reversed order every other round (A B, B A, ...): this CPU's
    speed drifts by up to 1.5x within minutes, and a fixed order favours the step that runs while the
    machine speeds up (stop 27, docs/experiment/stop27/proposals_step.py). The steps of a round share
    the machine's state, so `round_ratios` compares within rounds.
    """
    times = {name: [] for name in steps}
    for i in range(repeats + 1):
        for name, step in list(steps.items())[::-1 if i % 2 else 1]:
            torch.manual_seed(i)  # the same anchor/RoI sampling draws for every side
            seconds = timed(step, device)
            if i > 0:
                times[name].append(seconds)
    return times


def round_ratios(times_a, times_b):
    """Per-round ratios a / b of two steps' times [R] -> (median, min, max)."""
    ratios = [a / b for a, b in zip(times_a, times_b)]
    return statistics.median(ratios), min(ratios), max(ratios)


def read_status_kib(field):
    """A field of /proc/self/status in KiB (VmRSS: resident now, VmHWM: resident peak)."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))


def _cpu_peak_child(kind, which, args, state_file, queue):
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)
    step = make_step(kind, which, args, torch.load(state_file, weights_only=True), torch.device("cpu"))
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # Linux: reset the resident high-water mark (VmHWM) to the current size
    before = read_status_kib("VmRSS")
    step()
    queue.put((read_status_kib("VmHWM") - before) * 1024)


def peak_memory(kind, which, args, state_file, step, device):
    """Peak memory (bytes) of one step: CUDA allocator peak, or resident growth in a fresh CPU process."""
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        step()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - before
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    process = ctx.Process(target=_cpu_peak_child, args=(kind, which, args, state_file, queue))
    process.start()
    result = queue.get()
    process.join()
    return result


def compare(kind, sides, args, state, state_file, device, images):
    """Prints time (and images per second: `images` per step) and peak memory of `kind` for two sides
    [(label, which, step_kind)] and their ratio."""
    steps = {label: make_step(step_kind, which, args, state, device) for label, which, step_kind in sides}
    rounds = compare_speed(steps, args.repeats, device)
    mem = {label: peak_memory(step_kind, which, args, state_file, steps[label], device)
           for label, which, step_kind in sides}
    (a, *_), (b, *_) = sides
    t = {label: statistics.median(seconds) for label, seconds in rounds.items()}
    ratio, low, high = round_ratios(rounds[a], rounds[b])
    print(f"{kind:28s} time   {a} {t[a] * 1000:9.1f} ms   {b} {t[b] * 1000:9.1f} ms   ratio {ratio:.3f} "
          f"(rounds {low:.3f}-{high:.3f})   images/s {a} {images / t[a]:.1f} {b} {images / t[b]:.1f}")
    print(f"{kind:28s} memory {a} {mem[a] / 2**20:9.1f} MiB  {b} {mem[b] / 2**20:9.1f} MiB  "
          f"ratio {mem[a] / max(mem[b], 1):.3f}", flush=True)


def parse_args(argv=None):
    """The command line -> checked arguments; a bad size or count is one line, exit status 2."""
    parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch-size", type=int, default=2, help="images of the detector comparison")
    parser.add_argument("--height", type=int, default=448, help="image height (a multiple of 64: no SED padding)")
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--min-size", type=int, default=448)
    parser.add_argument("--max-size", type=int, default=640)
    parser.add_argument("--num-classes", type=int, default=80)
    parser.add_argument("--repeats", type=int, default=4,
                        help="timed rounds after a warm-up; even, so that each step runs first in half of them "
                        "(--data: the repeats of each measurement)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"),
                        help="autocast precision of every step, as train.py --dtype")
    parser.add_argument("--parts", nargs="+", default=["detector", *PARTS], choices=["detector", *PARTS],
                        help="what to compare: ours vs torchvision (detector), each SED step and the "
                        "teacher-student's vs supervised, the default SED step vs the teacher-student's (sed-over-ts); "
                        "e.g. `--parts sed sed-figure1 --height 800 --width 1333 --min-size 800 --max-size 1333` "
                        "measures the SED ratios at train.py's default image size")
    parser.add_argument("--data", action="store_true",
                        help="benchmark data loading at train2017 size instead (sed/bench_data.py)")
    parser.add_argument("--data-dir", default=None, help="--data: where the generated files go (reused)")
    parser.add_argument("--data-batches", type=int, default=10000, help="--data: batches of the worker curve")
    parser.add_argument("--data-images", type=int, default=bench_data.NUM_IMAGES, help="--data: images")
    args = parser.parse_args(argv)
    counts = {"--repeats": args.repeats, "--data-images": args.data_images, "--num-classes": args.num_classes,
              "--batch-size": args.batch_size, "--threads": args.threads, "--height": args.height,
              "--width": args.width, "--min-size": args.min_size, "--max-size": args.max_size}
    too_small = [f"{name} {value}" for name, value in counts.items() if value < 1]
    if too_small:
        parser.error(f"must be >= 1: {', '.join(too_small)}")
    if args.max_size < args.min_size:
        parser.error(f"--max-size must be >= --min-size, got {args.max_size} and {args.min_size}")
    return args


def main(argv=None):
    args = parse_args(argv)
    if args.data:
        return bench_data.main(args.data_dir, args.repeats, args.data_batches, args.data_images)
    device = torch.device(args.device)
    torch.set_num_threads(args.threads)
    if device.type == "cpu":
        torch.set_flush_denormal(True)  # as train.py
    torch.manual_seed(0)
    state = torchvision.models.detection.fasterrcnn_resnet50_fpn(  # random weights shared by all sides
        weights=None, weights_backbone=None, num_classes=args.num_classes + 1).state_dict()
    state, offset, before, after = trained_like(state, args, device)
    state_file = os.path.join(tempfile.mkdtemp(), "weights.pt")
    torch.save(state, state_file)
    print(f"R50-FPN, {args.num_classes} classes, {args.height}x{args.width} images, {device}, {args.dtype}, "
          f"torch {torch.__version__}, torchvision {torchvision.__version__}")
    print(f"trained-like weights: box deltas 0 (proposals = anchors), background logit +{offset:.2f}: the SED "
          f"teacher's pseudo-labels per unlabeled image {before:.1f} -> {after:.1f} (labeled: {BOXES_PER_IMAGE} boxes)")
    for kind in ("train step", "inference") if "detector" in args.parts else ():
        compare(f"{kind} (batch {args.batch_size})", [("ours", "ours", kind), ("torchvision", "torchvision", kind)],
                args, state, state_file, device, args.batch_size)
    for name, kind, reference in (PARTS[part] for part in PARTS if part in args.parts):
        compare(name, [(LABELS[kind], "ours", kind), (LABELS[reference], "ours", reference)],
                args, state, state_file, device, SED_LABELED + SED_UNLABELED)
    os.remove(state_file)


if __name__ == "__main__":
    main()
