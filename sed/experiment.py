"""The SSOD ablation at CPU scale, as the paper builds it up, over several seeds.

    python -m sed.experiment                         (every row, seeds 0 1 2; make experiment: in order)
    python -m sed.experiment --seeds 0               (one seed now, `--seeds 1 2` another day)
    python -m sed.experiment --render                (results.md and the chart from the saved runs)
    python -m sed.experiment --family rings --rows supervised teacher_student sed   (unseen data)
    python -m sed.experiment --summary docs/experiment/shapes docs/experiment/rings ...
                                                     (one line per setting: the main rows, their gains, the
                                                     share of objects the teacher-student's labels cover)

Rows, each one switch away from the row above (SED_NOTES "Ablation switches"), then the variants of
Figure 1's scale link:
    supervised        the labeled images only
    teacher_student   EMA teacher + hard pseudo-labels >= 0.7 on the strong view, no scale term,
                      no re-weighting: the Unbiased Teacher-style baseline SED improves on
    +distill          soft self-distillation instead of hard labels (SED_NOTES section 1)
    +scale            + scale equivalence, student 0.5x <-> student full size (section 2)
    sed               + re-weighting (section 3) = SED as Figure 1 draws it
The same three components added on top of the teacher-student, its hard-label loss kept (the
teacher's boxes >= 0.7 through the four Faster R-CNN losses, so that the unlabeled images train box
regression too):
    ts+distill        teacher_student + soft self-distillation
    ts+scale          + scale equivalence
    sed_hard          + re-weighting = SED plus the hard-label loss
    sed_hard_teacher_rois  sed_hard with the hard labels' box-head loss on the teacher's proposals
                      (--hard-label-rois teacher: one student box-head pass for every term)
    sed_hard_quarter_rois  sed_hard with a quarter of the RoIs sampled per unlabeled image for the hard
                      labels' box-head loss (--hard-label-roi-fraction 0.25)
    sed_hard_16_proposals, sed_hard_8_proposals, sed_hard_4_proposals, sed_hard_64_proposals  sed_hard
                      distilling on fewer or more of the teacher's proposals per image (--teacher-proposals
                      16, 8, 4, 64 instead of 32)
    teacher_student_0.9, sed_hard_0.9  teacher_student and sed_hard with hard labels at teacher score >= 0.9
                      instead of 0.7 (--pseudo-threshold 0.9): fewer objects covered by the hard labels
                      from the same burn-in (docs/experiment/stop24)
    sed_hard_no_distill  sed_hard without soft self-distillation (--no-distill): hard labels, scale
                      equivalence and re-weighting (docs/experiment/stop25); train.py's default since
                      stop 26 (docs/experiment/stop26)
    sed_hard_no_distill_64_proposals  sed_hard_no_distill on 64 teacher proposals per image instead of 32
                      (docs/experiment/stop27)
    sed_hard_no_distill_box  sed_hard_no_distill with the scale link's box deltas on (--distill-reg-weight 1
                      --distill-reg-norm count: SED_NOTES section 2's "same distances as section 1";
                      docs/experiment/stop39)
    sed_mutual        SED with --scale-target mutual
    sed_teacher       SED with --scale-target teacher (the 0.5x view against the teacher)
    sed_box           SED with the box-delta distillation at full weight (--distill-reg-weight 1; the
                      default 0 leaves boxes to the supervised loss, README "Experiment")
    sed_box_count     sed_box with the box terms divided by all their anchors / RoIs, as the supervised box
                      losses are (--distill-reg-norm count; the weight sum divides by the confident ones)
    sed_split         SED with foreground and background normalised separately (--distill-norm split)
    sed_weightsum     SED with the weighted terms normalised by their weight sum (--distill-norm weight,
                      SED_NOTES section 3 as written; the default divides by their number, README
                      "Experiment")
    sed_anchors       sed_weightsum with the RPN anchors re-weighted too (--reweight-anchors; the default
                      re-weights only the RoIs)
    sed_rpnscale      SED with the scale link on the RPN only (--no-scale-roi; README "Experiment")
    supervised_ema    the EMA teacher of supervised training (--unsup-weight 0: the unlabeled images train
                      nothing), evaluated like the SED rows: the share of their gain over supervised that
                      the EMA alone gives (stop 32)
    teacher_student_cls_only, sed_hard_no_distill_cls_only  teacher_student and sed_hard_no_distill with hard
                      labels that train the classes only, not the boxes (--no-hard-label-box-losses: Unbiased
                      Teacher's choice; stop 36)
Seed k draws the labeled split (--split-seed k + 1) and the initialisation and data order (--seed k).
Within a seed every row starts from the same supervised burn-in checkpoint (paired comparison), as
`--burn-in-iters` does inside one run. Every finished run writes RESULTS/<row>_seed<k>.json (final
COCO metrics of the evaluated model, the teacher's pseudo-label diagnostics, the commit, the exact
flags and the checksum of its burn-in's weights); runs whose file exists are skipped (a file from other
settings is a one-line error, and so is one from another burn-in of the same seed: the code changed
since, or the machine rounds floats otherwise, and a new row would not be paired with it), and results.md
and results.png are rendered from all the files, so seeds can be added one at a time.
Runs go --parallel at a time with one thread each.
"""
import argparse
import fcntl
import hashlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

import sed.config
from sed.checkpoint import load_checkpoint
from sed.errors import ArgumentParser
from sed.plot import read_jsonl
from sed.synthetic import FAMILIES, generate

ROOT = Path(__file__).resolve().parents[1]
FIGURE_1 = ["--distill", "--no-hard-pseudo-labels"]  # the soft rows as Figure 1 draws them: no hard-label term
HARD = ["--distill", "--hard-pseudo-labels"]  # the same plus the hard labels (train.py's default, stops 19-25)
TEACHER_STUDENT = ["--no-distill", "--no-scale-consistency", "--no-reweight"]  # hard labels only
NO_DISTILL = ["--no-distill", "--hard-pseudo-labels"]  # hard labels + scale link + re-weighting (default since stop 26)
ROWS = {"supervised": None,
        "teacher_student": TEACHER_STUDENT,
        "+distill": ["--no-scale-consistency", "--no-reweight", *FIGURE_1],
        "+scale": ["--no-reweight", *FIGURE_1],
        "sed": FIGURE_1,
        "ts+distill": ["--no-scale-consistency", "--no-reweight", *HARD],
        "ts+scale": ["--no-reweight", *HARD],
        "sed_hard": HARD,
        "sed_hard_teacher_rois": ["--hard-label-rois", "teacher", *HARD],
        "sed_hard_quarter_rois": ["--hard-label-roi-fraction", "0.25", *HARD],
        "sed_hard_16_proposals": ["--teacher-proposals", "16", *HARD],
        "sed_hard_8_proposals": ["--teacher-proposals", "8", *HARD],
        "sed_hard_4_proposals": ["--teacher-proposals", "4", *HARD],
        "sed_hard_64_proposals": ["--teacher-proposals", "64", *HARD],
        "teacher_student_0.9": [*TEACHER_STUDENT, "--pseudo-threshold", "0.9"],
        "sed_hard_0.9": ["--pseudo-threshold", "0.9", *HARD],
        "sed_hard_no_distill": NO_DISTILL,
        "sed_hard_no_distill_64_proposals": ["--teacher-proposals", "64", *NO_DISTILL],
        "sed_hard_no_distill_box": ["--distill-reg-weight", "1", "--distill-reg-norm", "count", *NO_DISTILL],
        "sed_mutual": ["--scale-target", "mutual", *FIGURE_1],
        "sed_teacher": ["--scale-target", "teacher", *FIGURE_1],
        "sed_box": ["--distill-reg-weight", "1", *FIGURE_1],
        "sed_box_count": ["--distill-reg-weight", "1", "--distill-reg-norm", "count", *FIGURE_1],
        "sed_split": ["--distill-norm", "split", *FIGURE_1],
        "sed_weightsum": ["--distill-norm", "weight", *FIGURE_1],
        "sed_anchors": ["--reweight-anchors", "--distill-norm", "weight", *FIGURE_1],
        "sed_rpnscale": ["--no-scale-roi", *FIGURE_1],
        "supervised_ema": ["--unsup-weight", "0"],
        "teacher_student_cls_only": [*TEACHER_STUDENT, "--no-hard-label-box-losses"],
        "sed_hard_no_distill_cls_only": ["--no-hard-label-box-losses", *NO_DISTILL]}
INCREMENTAL = ["supervised", "teacher_student", "+distill", "+scale", "sed"]  # each row vs the one above
ON_HARD_LABELS = ["teacher_student", "ts+distill", "ts+scale", "sed_hard"]  # the same, hard labels kept
COLUMNS = ("AP", "AP50", "APs", "APm", "APl")
DIAGNOSTICS = ("pl_dets_per_image", "pl_recall@0.5", "pl_recall@0.7", "pl_recall@0.9", "pl_weight_on_objects")


def parse_args(argv):
    p = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/experiment", help="runs, logs and checkpoints")
    p.add_argument("--results", default="", help="per-run JSON, results.md, results.png "
                   "(default docs/experiment/<family>)")
    p.add_argument("--family", default="shapes", choices=sorted(FAMILIES), help="synthetic family")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--rows", nargs="+", default=list(ROWS), choices=list(ROWS))
    p.add_argument("--num-train", type=int, default=1000)
    p.add_argument("--num-val", type=int, default=200)
    p.add_argument("--image-size", type=int, default=128, help="a multiple of 64: the views pad to 64")
    p.add_argument("--labeled-percent", type=float, default=10)
    p.add_argument("--iters", type=int, default=900, help="total iterations of every run")
    p.add_argument("--burn-in", type=int, default=600, help="supervised iterations shared by a seed's rows")
    p.add_argument("--lr-step", type=int, default=0, help="iteration of the x0.1 lr step of every run "
                   "(0: after 3/4 of the iterations that follow the burn-in; design choice)")
    p.add_argument("--eval-every", type=int, default=0, help="evaluate (and measure the pseudo-labels) every N "
                   "iterations too; each run's JSON keeps the curve; 0 = only at the end")
    p.add_argument("--sed-flags", nargs=argparse.REMAINDER, default=[],
                   help="extra train.py flags for every semi-supervised row (last; for tuning)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--parallel", type=int, default=2, help="runs at a time, one thread each")
    p.add_argument("--render", action="store_true", help="only render results.md/png from the saved runs")
    p.add_argument("--summary", nargs="+", metavar="RESULTS", default=[],
                   help="only print one line per results folder: the main rows, the gains, the teacher-student's "
                   "pl_recall@0.7 (README, \"Results\")")
    args = p.parse_args(argv)
    if min(args.seeds) < 0 or args.parallel < 1 or args.image_size % 64:
        p.error(f"--seeds must be >= 0, --parallel >= 1 and --image-size a multiple of 64, got {args.seeds}, "
                f"{args.parallel} and {args.image_size}")
    return args


def lr_step(args):
    """The x0.1 lr step of every run: --lr-step, or 3/4 of the way through the iterations after the burn-in
    (825 of 600 + 300). Design choice: at 3/4 of all 900 (675) every row was ~3 AP short of the same
    runs stepped at 825, and the semi-supervised rows had 75 iterations at full lr after the burn-in
    (README, "Experiment"; docs/experiment/probes/README.md)."""
    return args.lr_step or args.burn_in + (args.iters - args.burn_in) * 3 // 4


def common_flags(args, data, seed):
    """Flags of every run of a seed: data, an R18-FPN sized for 128 px images on a CPU (64-channel FPN:
    at 256 channels its convolutions and the RPN head's cost 2.7x more than the whole ResNet-18), the schedule."""
    return ["--train-ann", str(data["train_ann"]), "--train-images", str(data["train_images"]),
            "--val-ann", str(data["val_ann"]), "--val-images", str(data["val_images"]),
            "--labeled-percent", str(args.labeled_percent), "--split-seed", str(seed + 1), "--seed", str(seed),
            "--backbone", "resnet18", "--backbone-weights", "none", "--trainable-layers", "5",
            "--min-size", str(args.image_size), "--max-size", str(2 * args.image_size),
            "--anchor-sizes", "16", "32", "64", "128", "256", "--rpn-proposals", "256", "128",
            "--roi-batch-size", "64", "--box-head-dim", "256", "--fpn-channels", "64",
            "--batch-size", "4", "--lr", "0.01",
            "--warmup-iters", "50", "--lr-steps", str(lr_step(args)), "--grad-clip", "10",
            "--eval-every", str(args.eval_every), "--checkpoint-every", str(args.burn_in), "--log-every", "20",
            "--workers", "0", "--device", args.device]


def sed_flags(args):
    """The semi-supervised rows: train.py's SED defaults except what a 300-iteration CPU SED phase needs
    (design choices: lambda_u 1 with a 50-iteration ramp, EMA 0.99 so the teacher moves within the run,
    32 teacher proposals per 128 px image)."""
    return ["--method", "sed", "--unlabeled-batch-size", "4", "--teacher-proposals", "32",
            "--burn-in-iters", str(args.burn_in), "--rampup-iters", "50", "--unsup-weight", "1",
            "--ema-momentum", "0.99", "--diagnostics-images", "32", *args.sed_flags]


def run(cmd, log_path):
    """One train.py process with one thread; its output goes to log_path."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "w") as log:
        status = subprocess.run([sys.executable, *cmd], cwd=ROOT, env=env, stdout=log,
                                stderr=subprocess.STDOUT).returncode
    if status:   # its last line: train.py's one-line error, or the end of a traceback
        last = next((line for line in reversed(log_path.read_text().splitlines()) if line.strip()), "")
        raise SystemExit(f"error: {log_path}: train.py stopped with exit status {status}: {last.strip()}")


def run_record(run_dir, row, seed, cmd, minutes):
    """What a finished run leaves in RESULTS/<row>_seed<k>.json."""
    model = "student" if row == "supervised" else "teacher"
    evaluations = [m for m in read_jsonl(run_dir / "metrics.jsonl") if m.get("model", "student") == model]
    metrics = evaluations[-1]
    diagnostics = [r for r in read_jsonl(run_dir / "log.jsonl") if "pl_num_images" in r]
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    dirty = bool(subprocess.run(["git", "status", "--porcelain", "sed", "train.py"], cwd=ROOT,
                                capture_output=True, text=True).stdout.strip())
    return {"row": row, "seed": seed, "model": model, "metrics": {k: metrics[k] for k in COLUMNS},
            "diagnostics": {k: diagnostics[-1].get(k) for k in DIAGNOSTICS} if diagnostics else {},
            "commit": commit + ("+uncommitted" if dirty else ""), "minutes": round(minutes, 1),
            "command": ["python", *cmd], "settings": settings(cmd)} | curve(evaluations, diagnostics)


def curve(evaluations, diagnostics):
    """{"curve": [one entry per evaluation: iteration, COLUMNS, DIAGNOSTICS of that iteration]} when the run
    was evaluated more than once (--eval-every); {} otherwise."""
    if len(evaluations) < 2:
        return {}
    by_iteration = {r["iteration"]: r for r in diagnostics}
    return {"curve": [{"iteration": m["iteration"], **{k: m[k] for k in COLUMNS},
                       **{k: by_iteration[m["iteration"]][k] for k in DIAGNOSTICS if m["iteration"] in by_iteration}}
                      for m in evaluations]}


RUN_FIELDS = {"train_ann", "train_images", "val_ann", "val_images", "out", "resume", "device"}
DEFAULTS = sed.config.as_json(sed.config.TrainConfig())  # as settings() reads them


def settings(cmd):
    """The TrainConfig a train.py command resolves to, defaults included, without its paths, device and
    the fields its switches leave unused (sed.config.unused_fields): what a saved run must share with the
    run it stands for (image size, split, seed, schedule, SED flags...). Defaults count: a run from before
    a default it uses changed is another run; a default it does not use (the re-weighting's for a
    supervised run) does not make it one."""
    cfg = sed.config.parse_args(cmd[1:], check_files=False)
    return {k: v for k, v in sed.config.as_json(cfg).items() if k not in RUN_FIELDS | sed.config.unused_fields(cfg)}


def saved_run_matches(path, cmd):
    """True if RESULTS/<row>_seed<k>.json exists and ran with cmd's settings; False if it does not exist.
    A file from other settings is a one-line error naming them, not silently mixed into the table. Only
    the fields cmd's run uses are compared: one the file records but the run leaves unused (a default
    that became inert, as --distill-norm without re-weighting) does not make it another run. A field
    the file does not record was added after it ran and counts at its default (a new flag's default keeps
    the behaviour of before it: the project's rule)."""
    if not path.exists():
        return False
    saved, wanted = json.loads(path.read_text()).get("settings", {}), settings(cmd)
    differ = sorted(k for k in wanted if saved.get(k, DEFAULTS.get(k)) != wanted[k])
    if differ:
        raise SystemExit(f"error: {path} was run with other settings ({', '.join(differ)}); "
                         "move it away or choose another --results folder")
    return True


def burn_in_command(args, data, seed, out):
    return ["train.py", *common_flags(args, data, seed), "--max-iter", str(args.burn_in),
            "--out", str(out / f"seed{seed}" / "burn_in")]


def row_command(args, data, row, seed, out):
    cmd = ["train.py", *common_flags(args, data, seed), "--max-iter", str(args.iters),
           "--out", str(out / f"seed{seed}" / row), "--resume", str(out / f"seed{seed}" / "burn_in.pt")]
    return cmd + ([*sed_flags(args), *ROWS[row]] if ROWS[row] is not None else [])


def burn_in_checksum(ckpt_path):
    """sha1 of a burn-in checkpoint's weights, in name order: what a seed's rows start from. Same settings
    do not make the same burn-in: a code change that moves float rounding gives other weights."""
    h = hashlib.sha1()
    for name, tensor in sorted(load_checkpoint(ckpt_path)["model"].items()):
        h.update(name.encode() + tensor.float().numpy().tobytes())
    return h.hexdigest()


def check_pairing(results, seed, checksum):
    """A new row of a seed is paired with the saved rows of that seed only if they started from the same
    burn-in: a saved run recording another checksum is a one-line error; saved runs recording none (before
    stop 26) are named in one warning line (rerun `supervised` into a scratch --results folder: the same AP
    to the last digit means the same burn-in)."""
    unrecorded = []
    for path in sorted(results.glob(f"*_seed{seed}.json")):
        record = json.loads(path.read_text())
        if record.get("burn_in") is None:
            unrecorded.append(path.name)
        elif record["burn_in"] != checksum:
            raise SystemExit(f"error: {path} started from another burn-in than today's seed {seed} (it ran at "
                             f"{record.get('commit', '?')[:7]}; the code changed since, or this machine rounds "
                             "floats otherwise: stop 39): a new row would not be paired with it; choose another "
                             "--results folder and rerun the rows to compare")
    if unrecorded:
        print(f"warning: {results}: {', '.join(unrecorded)} record no burn-in checksum; a new row of seed {seed} "
              "is paired with them only if today's burn-in is theirs", file=sys.stderr, flush=True)


def stamp_matches(stamp, value):
    """True if the JSON file `stamp` exists and holds value: what made the files beside it."""
    return stamp.exists() and json.loads(stamp.read_text()) == value


def prepare_data(args, folder):
    """The family's synthetic data, generated once: data.json records what generated it, and another
    invocation (even one running beside this one) reuses the files instead of rewriting them under
    running trainings; a lock beside the folder makes invocations started together generate it once.
    Square images: the 64-padded views waste no pixels."""
    spec = {"family": args.family, "num_train": args.num_train, "num_val": args.num_val,
            "image_size": args.image_size}
    stamp = folder / "data.json"
    folder.parent.mkdir(parents=True, exist_ok=True)
    with open(folder.parent / f"{folder.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        if not stamp_matches(stamp, spec):
            generate(folder, args.num_train, args.num_val, seed=0, image_size=args.image_size,
                     height_ratios=(1.0,), family=args.family)
            stamp.write_text(json.dumps(spec))
    return {"train_ann": folder / "annotations" / "train.json", "train_images": folder / "train",
            "val_ann": folder / "annotations" / "val.json", "val_images": folder / "val"}


def train_all(args, results):
    """Burn-ins first (one per seed), then every (row, seed) without a result file, --parallel at a time.
    A burn-in checkpoint is reused only if burn_in.json beside it records the same settings."""
    out = Path(args.out) / args.family
    data = prepare_data(args, out / "data")
    todo = [(row, seed) for seed in args.seeds for row in args.rows
            if not saved_run_matches(results / f"{row}_seed{seed}.json", row_command(args, data, row, seed, out))]

    def burn_in(seed):
        cmd, ckpt = burn_in_command(args, data, seed, out), out / f"seed{seed}" / "burn_in.pt"
        if not (ckpt.exists() and stamp_matches(ckpt.with_suffix(".json"), settings(cmd))):
            shutil.rmtree(out / f"seed{seed}" / "burn_in", ignore_errors=True)   # an older or aborted burn-in
            run(cmd, out / f"seed{seed}" / "burn_in.log")
            shutil.copy(out / f"seed{seed}" / "burn_in" / "last.pt", ckpt)
            ckpt.with_suffix(".json").write_text(json.dumps(settings(cmd)))
        checksum = burn_in_checksum(ckpt)
        check_pairing(results, seed, checksum)
        return checksum

    def train(row, seed):
        cmd = row_command(args, data, row, seed, out)
        shutil.rmtree(out / f"seed{seed}" / row, ignore_errors=True)   # an aborted run of the row starts anew
        start = time.time()
        run(cmd, out / f"seed{seed}" / f"{row}.log")
        record = run_record(out / f"seed{seed}" / row, row, seed, cmd, (time.time() - start) / 60)
        record["burn_in"] = checksums[seed]
        (results / f"{row}_seed{seed}.json").write_text(json.dumps(record, indent=1) + "\n")
        print(f"{row} seed {seed}: AP {record['metrics']['AP']:.1f} ({record['minutes']} min)", flush=True)

    with ThreadPoolExecutor(args.parallel) as pool:
        seeds = sorted({s for _, s in todo})
        checksums = dict(zip(seeds, [future.result() for future in [pool.submit(burn_in, s) for s in seeds]]))
        for future in [pool.submit(train, row, seed) for row, seed in todo]:
            future.result()


def mean_std(values):
    """'m +- s' over seeds ('m' alone for one seed)."""
    if len(values) == 1:
        return f"{values[0]:.1f}"
    return f"{statistics.mean(values):.1f} ± {statistics.stdev(values):.1f}"


def load_results(results):
    """{row: {seed: record}} from every RESULTS/*.json."""
    table = {}
    for path in sorted(results.glob("*_seed*.json")):
        try:
            record = json.loads(path.read_text())
            table.setdefault(record["row"], {})[record["seed"]] = record
        except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError):
            raise SystemExit(f"error: {path}: not a run record of sed.experiment") from None
    return table


def gain(table, row, reference):
    """Paired gain in AP of row over reference, over the seeds both have: (mean +- std text, values)."""
    seeds = sorted(set(table.get(row, {})) & set(table.get(reference, {})))
    values = [table[row][s]["metrics"]["AP"] - table[reference][s]["metrics"]["AP"] for s in seeds]
    return (mean_std(values) if values else "-"), values


def references(table):
    """{row: the row its AP gain is over}: in each chain (INCREMENTAL, ON_HARD_LABELS) the nearest row above
    that was run; the variants over sed (sed_hard's: over sed_hard, sed_hard_no_distill's: over it,
    teacher_student's: over teacher_student);
    supervised_ema over supervised."""
    over_sed = [r for r in ROWS if r not in [*INCREMENTAL, *ON_HARD_LABELS, "supervised_ema"]]
    reference = {r: "sed" for r in over_sed if "sed" in table}
    reference |= {r: "sed_hard" for r in ROWS if r.startswith("sed_hard_") and "sed_hard" in table}
    reference |= {r: "sed_hard_no_distill" for r in ROWS
                  if r.startswith("sed_hard_no_distill_") and "sed_hard_no_distill" in table}
    reference |= {r: "teacher_student" for r in ROWS if r.startswith("teacher_student_") and "teacher_student" in table}
    reference |= {"supervised_ema": "supervised"} if "supervised" in table else {}
    for chain in (INCREMENTAL, ON_HARD_LABELS):
        present = [r for r in chain if r in table]
        reference |= dict(zip(present[1:], present))
    return reference


def mean_of(values):
    """'0.12': the mean of the values that are not None (runs saved before a diagnostic existed); '-': none."""
    values = [v for v in values if v is not None]
    return f"{statistics.mean(values):.2f}" if values else "-"


HARD_LABEL = "sed_hard (SED + hard labels)"
DEFAULT_ROW = "sed_hard_no_distill (the default)"
# results.md's lines under the table: (row, its label, the row its AP gain is over), where both ran
MAIN_GAINS = (("sed", "SED", "supervised"), ("sed", "SED", "teacher_student"),
              ("sed_hard", HARD_LABEL, "supervised"), ("sed_hard", HARD_LABEL, "sed"),
              ("sed_hard_no_distill", DEFAULT_ROW, "supervised"),
              ("sed_hard_no_distill", DEFAULT_ROW, "teacher_student"),
              ("sed_hard_no_distill", DEFAULT_ROW, "sed_hard"),
              ("sed_hard_no_distill", DEFAULT_ROW, "supervised_ema"),
              ("teacher_student", "teacher_student", "supervised_ema"),
              ("sed_hard", "sed_hard", "teacher_student"), ("sed_hard_0.9", "sed_hard_0.9", "teacher_student_0.9"))


def render_markdown(table, family):
    """results.md: mean +- std per row, the gain over the row above, the pseudo-label diagnostics."""
    rows = [r for r in ROWS if r in table]
    reference = references(table)
    lines = [f"Synthetic family `{family}`; COCO AP in percent on the validation set, mean ± std over seeds "
             "(SED rows: the EMA teacher). Gain: paired per seed, over the row named.", "",
             "| row | seeds | " + " | ".join(COLUMNS) + " | AP gain | over |", "|---" * (len(COLUMNS) + 4) + "|"]
    for r in rows:
        runs = list(table[r].values())
        cells = [mean_std([run["metrics"][c] for run in runs]) for c in COLUMNS]
        ref = reference.get(r)
        lines.append(f"| {r} | {len(runs)} | " + " | ".join(cells)
                     + f" | {gain(table, r, ref)[0] if ref else '-'} | {ref or '-'} |")
    notes = [f"{label} - {other}, AP: {gain(table, row, other)[0]}"
             for row, label, other in MAIN_GAINS if row in table and other in table]
    lines += [""] + notes if notes else []
    lines += ["", "Teacher's pseudo-labels at the end (32 unlabeled images), mean over seeds:", "",
              "| row | " + " | ".join(DIAGNOSTICS) + " |", "|---" * (len(DIAGNOSTICS) + 1) + "|"]
    for r in rows[1:] if rows and rows[0] == "supervised" else rows:
        cells = [mean_of([run["diagnostics"].get(k) for run in table[r].values()]) for k in DIAGNOSTICS]
        lines.append(f"| {r} | " + " | ".join(cells) + " |")
    lines += render_curves(table, rows)
    commits = sorted({run["commit"] for runs in table.values() for run in runs.values()})
    lines += ["", f"Commits: {', '.join(commits)}. Exact flags of each run: the JSON files beside this one."]
    return "\n".join(lines) + "\n"


def at_iteration(run, iteration, key):
    """A run's value of key at an evaluation of its curve (--eval-every); None where it has none."""
    return next((point.get(key) for point in run.get("curve", ()) if point["iteration"] == iteration), None)


def render_curves(table, rows):
    """results.md's lines for runs evaluated during training (--eval-every): per row and evaluation, AP mean
    +- std over seeds, each SED row's AP gain over supervised (paired per seed) and its teacher's
    pl_recall@0.5 and pl_dets_per_image (means); [] when no run has a curve."""
    iterations = sorted({p["iteration"] for r in rows for run in table[r].values() for p in run.get("curve", ())})
    if not iterations:
        return []

    def values(row, iteration, key="AP"):   # {seed: value} of the row's runs evaluated at that iteration
        return {s: v for s, run in table[row].items() if (v := at_iteration(run, iteration, key)) is not None}

    def gains(row, iteration):
        base = values("supervised", iteration)
        return [v - base[s] for s, v in values(row, iteration).items() if s in base]

    def line(row, cells):
        return f"| {row} | " + " | ".join(cells) + " |"

    def cell(numbers):
        return mean_std(numbers) if numbers else "-"

    header = [line("row", map(str, iterations)), "|---" * (len(iterations) + 1) + "|"]
    sed_rows = [r for r in rows if r != "supervised"]
    lines = ["", "During training (every --eval-every iterations; SED rows: the EMA teacher), AP:", "", *header]
    lines += [line(r, [cell(list(values(r, i).values())) for i in iterations]) for r in rows]
    if "supervised" in table and sed_rows:
        lines += ["", "AP gain over supervised, paired per seed:", "", *header]
        lines += [line(r, [cell(gains(r, i)) for i in iterations]) for r in sed_rows]
    for key in ("pl_recall@0.5", "pl_dets_per_image"):
        lines += ["", f"Teacher's {key}, mean over seeds:", "", *header]
        lines += [line(r, [mean_of(list(values(r, i, key).values())) for i in iterations]) for r in sed_rows]
    return lines


def ranks(values):
    """Rank of each value, 1 = smallest; ties share their mean rank (as Spearman's coefficient needs)."""
    order = sorted(values)
    return [order.index(v) + (order.count(v) + 1) / 2 for v in values]


def spearman(xs, ys):
    """Spearman's rank correlation: Pearson's correlation of the ranks."""
    rx, ry = ranks(xs), ranks(ys)
    mx, my = statistics.mean(rx), statistics.mean(ry)
    cov = sum((a - mx) * (b - my) for a, b in zip(rx, ry))
    return cov / (sum((a - mx) ** 2 for a in rx) * sum((b - my) ** 2 for b in ry)) ** 0.5


SUMMARY_ROWS = ("supervised", "teacher_student", "sed", "sed_hard", "sed_hard_no_distill")
SUMMARY_GAINS = (("sed_hard_no_distill", "supervised"), ("sed_hard", "supervised"), ("sed", "supervised"))
OVER_TEACHER_STUDENT = ("sed_hard_no_distill", "sed_hard")  # today's default, stops 19-25's


def teacher_student_recall(table):
    """The teacher-student's pl_recall@0.7 at the end, mean over the seeds it shares with a row of
    OVER_TEACHER_STUDENT (the seeds whose gains the summary lists); None without such a seed."""
    seeds = set().union(*(table.get(r, {}) for r in OVER_TEACHER_STUDENT)) & set(table.get("teacher_student", {}))
    if not seeds:
        return None
    return statistics.mean(table["teacher_student"][s]["diagnostics"]["pl_recall@0.7"] for s in seeds)


def summary(folders):
    """Markdown, one line per results folder (a family or a setting): the main rows' AP, the gains over
    supervised of the default (sed_hard_no_distill since stop 26), of stops 19-25's default (sed_hard) and
    of Figure 1 (sed), the teacher-student's pl_recall@0.7 at the end (`teacher_student_recall`: the share
    of objects its hard labels cover; 1 - it are their False Negatives, the problem SED_NOTES says the paper
    names) and each OVER_TEACHER_STUDENT row's gain over the teacher-student per seed. Sorted by that recall
    (folders without it last); then how many paired runs of all folders gain, and per row the rank
    correlation of recall and gain over the teacher-student. A folder needs only some of the rows ("-")."""
    over_ts = [(r, "teacher_student") for r in OVER_TEACHER_STUDENT]
    lines = ["| results | " + " | ".join(SUMMARY_ROWS) + " | " + " | ".join(f"{a} - {b}" for a, b in SUMMARY_GAINS)
             + " | teacher_student pl_recall@0.7 | " + " | ".join(f"{a} - {b}" for a, b in over_ts) + " |",
             "|---" * (len(SUMMARY_ROWS) + len(SUMMARY_GAINS) + len(over_ts) + 2) + "|"]
    points, paired = [], {pair: [] for pair in SUMMARY_GAINS + tuple(over_ts)}   # (row, reference) -> gains
    for folder in folders:
        table = load_results(Path(folder))
        if not table:
            raise SystemExit(f"error: {folder}: no saved runs (*_seed*.json)")
        recall = teacher_student_recall(table)
        aps = [mean_std([run["metrics"]["AP"] for run in table[r].values()]) if r in table else "-"
               for r in SUMMARY_ROWS]
        gains = {pair: gain(table, *pair) for pair in paired}   # (row, reference) -> (text, per-seed values)
        for pair, (_, values) in gains.items():
            paired[pair] += values
        over = [gains[pair] for pair in over_ts]
        line = (f"| {folder} | " + " | ".join(aps + [gains[pair][0] for pair in SUMMARY_GAINS])
                + f" | {'-' if recall is None else f'{recall:.3f}'} | "
                + " | ".join(", ".join(f"{v:+.1f}" for v in values) + f" ({text})" if values else "-"
                             for text, values in over) + " |")
        points.append((recall, [statistics.mean(values) if values else None for _, values in over], line))
    points.sort(key=lambda p: (p[0] is None, p[0] or 0.0))
    lines += [line for *_, line in points] + [""]
    lines += [f"{a} >= {b} on {sum(v >= 0 for v in values)} of {len(values)} paired runs"
              for (a, b), values in paired.items() if values]
    for i, row in enumerate(OVER_TEACHER_STUDENT):
        known = [(recall, means[i]) for recall, means, _ in points if recall is not None and means[i] is not None]
        if len(known) > 2:
            rho = spearman(*zip(*known))
            lines += [f"Spearman rank correlation of the teacher-student's recall and the mean gain of {row} "
                      f"over it, {len(known)} folders: {rho:+.2f}"]
    return "\n".join(lines) + "\n"


def render_chart(table, path):
    """results.png: AP mean +- std per row (bars), each seed as a dot."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no chart (pip install matplotlib)", file=sys.stderr)
        return
    rows = [r for r in ROWS if r in table]
    aps = [[run["metrics"]["AP"] for run in table[r].values()] for r in rows]
    fig, ax = plt.subplots(figsize=(1.3 * len(rows) + 1, 3.2))
    means = [statistics.mean(a) for a in aps]
    stds = [statistics.stdev(a) if len(a) > 1 else 0 for a in aps]
    ax.bar(range(len(rows)), means, yerr=stds, capsize=4, color="#9ecae1", edgecolor="#3182bd")
    for i, a in enumerate(aps):
        ax.plot([i] * len(a), a, "k.", markersize=5)
    ax.set_xticks(range(len(rows)), rows, rotation=20)
    ax.set_ylabel("AP (%)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None):
    args = parse_args(argv)
    if args.summary:
        print(summary(args.summary), end="")
        return
    results = Path(args.results or ROOT / "docs" / "experiment" / args.family)
    results.mkdir(parents=True, exist_ok=True)
    if not args.render:
        train_all(args, results)
    table = load_results(results)
    if not table:
        raise SystemExit(f"error: {results}: no run results to render")
    markdown = render_markdown(table, args.family)
    (results / "results.md").write_text(markdown)
    render_chart(table, results / "results.png")
    print(markdown)


if __name__ == "__main__":
    main()
