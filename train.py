"""Train Faster R-CNN (R50-FPN) on COCO-format data: supervised, or semi-supervised with SED.

One script for CPU, one GPU and many (nanoGPT style): `torchrun` sets RANK/WORLD_SIZE and the
script switches to DistributedDataParallel by itself. Only rank 0 logs, evaluates COCO and saves.

CPU smoke run on the synthetic shapes (`make demo` runs SED on similar data with its own sizes; a few
seconds per iteration on 2 cores, so expect AP near 0: it checks the pipeline, not accuracy):
    python -m sed.synthetic data/synthetic --num-train 200 --num-val 50 --seed 0 --image-size 128
    python train.py --train-ann data/synthetic/annotations/train.json --train-images data/synthetic/train \
        --val-ann data/synthetic/annotations/val.json --val-images data/synthetic/val \
        --backbone resnet18 --backbone-weights none --min-size 128 --max-size 213 \
        --max-iter 200 --batch-size 4 --lr 0.005 --warmup-iters 50 --lr-steps 150 \
        --eval-every 100 --checkpoint-every 100 --log-every 10 --workers 2 --device cpu --out runs/smoke

Batches are per process (= per GPU) and default to the recipes' per-GPU batches: supervised 2
images (torchvision references), SED 1 labeled + 4 unlabeled (Soft Teacher); the lr defaults to
0.02 * total labeled batch / 16. The effective totals and the lr are printed at start.

One GPU, COCO 10 % labeled, supervised baseline (2 images, lr 0.0025; the 1x recipe's 90k
iterations at batch 16 become 720k at batch 2):
    python train.py --train-ann coco/annotations/instances_train2017.json --train-images coco/train2017 \
        --val-ann coco/annotations/instances_val2017.json --val-images coco/val2017 \
        --labeled-percent 10 --split-seed 1 --max-iter 720000 \
        --lr-steps 480000 640000 --warmup-iters 8000 --dtype bfloat16 --out runs/sup10

8 GPUs (2 x 8 = 16 images in total, lr 0.02: the defaults are the 1x recipe, 90k iterations):
    torchrun --standalone --nproc_per_node 8 train.py <data flags> --dtype bfloat16
SED on 8 GPUs (8 labeled + 32 unlabeled images per iteration, lr 0.01, as Soft Teacher):
    torchrun --standalone --nproc_per_node 8 train.py <data flags> --method sed --max-iter 180000 \
        --lr-steps 120000 160000 --dtype bfloat16

Several nodes (run on every node; NODE_RANK = 0..N-1, MASTER = the address of node 0):
    torchrun --nnodes N --node_rank $NODE_RANK --nproc_per_node 8 --master_addr $MASTER \
        --master_port 29500 train.py ...

Ctrl-C, or SIGTERM to the training process or to all of its processes (Slurm), stops after the iteration
in progress and saves last.pt first. Continue an interrupted run exactly (weights, optimizer, scaler, RNG, data order):
    python train.py <same flags> --resume runs/sup10/last.pt
A supervised checkpoint taken at iteration B also starts SED (`--method sed --resume`): the teacher
begins as a copy of the student, exactly as after a burn-in of B iterations with --burn-in-iters B
(sed.experiment does this).

Outputs in --out: config.json, log.jsonl (one line per --log-every iterations), metrics.jsonl
(COCO AP etc. in percent after each evaluation), last.pt (atomic; kept when a loss is non-finite).
"""
import contextlib
import dataclasses
import hashlib
import json
import os
import signal
import sys
import time
import warnings

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP
from tqdm import tqdm

import sed
from sed import distributed
from sed.checkpoint import (load_checkpoint, load_weights, remove_stale_temporaries, rng_state,
                            save_checkpoint, set_rng_state)
from sed.config import (WEIGHT_FIELDS, TrainConfig, changed_settings, describe_batch, differences, model_options,
                        parse_args, resolve_batch, unused_settings)
from sed.data import (CocoDetection, ConcatDetection, ImageFolderDetection, TrainBatchSampler,
                      check_image_files, make_loader, verify_images, warn_shared_images, worker_batches)
from sed.diagnostics import collapse_warning, diagnose, format_summary
from sed.errors import UserError, one_line, user_errors
from sed.evaluation import METRIC_NAMES, autocast, evaluate, warn_slow_precision
from sed.losses import SEDObjective, unsup_weight_at
from sed.plot import read_jsonl
from sed.splits import load_split
from sed.teacher import ema_momentum_at, ema_update, make_teacher, predict_soft
from sed.views import make_views


def learning_rate(it, cfg):
    """Linear warmup from warmup_factor * lr, then x lr_gamma at each of lr_steps (Goyal et al.;
    detectron2's WarmupMultiStepLR). A pure function of the iteration, so resuming needs nothing else."""
    warmup = 1.0
    if it < cfg.warmup_iters:
        alpha = it / cfg.warmup_iters
        warmup = cfg.warmup_factor * (1 - alpha) + alpha
    return cfg.lr * warmup * cfg.lr_gamma ** sum(it >= step for step in cfg.lr_steps)


def lr_steps_warning(cfg):
    """A warning when the default --lr-steps (60000 80000, made for the 1x recipe's 90k iterations) are not
    before --max-iter: the lr would never decay. None otherwise, and for --lr-steps given by hand. The
    suggestion puts the steps where the 1x recipe has them, at 2/3 and 8/9 of the run."""
    default = TrainConfig()
    if cfg.lr_steps != default.lr_steps or cfg.max_iter > cfg.lr_steps[0]:
        return None
    steps = ' '.join(map(str, cfg.lr_steps))
    suggestion = f"; the 1x recipe's places for this run: --lr-steps {cfg.max_iter * 2 // 3} {cfg.max_iter * 8 // 9}"
    return (f"--lr-steps {steps} (the default, for --max-iter {default.max_iter}) are not before --max-iter "
            f"{cfg.max_iter}: the lr never decays" + (suggestion if cfg.max_iter >= 9 else ""))


def supervised_step(objective, images, targets, cfg):
    """Faster R-CNN losses of one labeled batch -> dict of scalar tensors, plus their sum "total"."""
    with autocast(cfg.device, cfg.dtype):
        sup, _ = objective(images, targets)  # loss_objectness, loss_rpn_box_reg, loss_classifier, loss_box_reg
    return {**sup, "total": sum(sup.values())}


def sed_step(objective, teacher, student, images, targets, unlabeled_images, it, cfg):
    """One SED iteration (SED_NOTES.md "Framework"): L = L_sup + lambda_u * L_unsup.

    The teacher sees the weak view; the student sees the strong view (same geometry) and its
    0.5x copy (scale consistency). During the burn-in lambda_u = 0 and no unlabeled data is used.
    """
    weight = unsup_weight_at(it, cfg)
    with autocast(cfg.device, cfg.dtype):
        if weight == 0:
            sup, unsup = objective(images, targets)
        else:
            weak, strong, small = make_views(student, unlabeled_images, cfg)
            soft = predict_soft(teacher, weak, cfg)  # no grad: soft targets and their weights
            sup, unsup = objective(images, targets, strong, small, soft)  # named terms, sed/losses.py
    return {**sup, **unsup, "total": sum(sup.values()) + weight * sum(unsup.values())}


@contextlib.contextmanager
def preserved_rng():
    """Restores every random generator of the training loop (sed.checkpoint.rng_state) on exit."""
    state = rng_state()
    try:
        yield
    finally:
        set_rng_state(state)


def agreed_flags(loss, stop_requested, dist_info):
    """(the loss is finite on every rank, some rank was asked to stop), from one all-reduce: all ranks
    must stop together, else DDP hangs."""
    flags = torch.stack([torch.isfinite(loss.detach()).float(),
                         torch.tensor(-float(stop_requested), device=loss.device)])   # [2]
    if dist_info.distributed:
        dist.all_reduce(flags, op=dist.ReduceOp.MIN)   # min(finite): all finite; min(-stop) = -any(stop)
    finite, minus_stop = flags.tolist()
    return finite == 1, minus_stop < 0


@contextlib.contextmanager
def stop_requests(announce=True, ctrl_c_twice_stops=True):
    """SIGINT (Ctrl-C) and SIGTERM (`kill PID`, `docker stop`, Kubernetes; to every process: Slurm's scancel,
    whose SIGTERM the data loader workers serve through, sed.data._worker_signals) ask the training loop to
    stop after the iteration in progress: it saves OUT/last.pt and exits, so a stop loses no iteration
    and --resume continues exactly. With ctrl_c_twice_stops (a plain process), a second SIGINT interrupts
    at once (KeyboardInterrupt: one line; the last checkpoint written stays, save_checkpoint being
    atomic). Any other repeat is ignored: torchrun forwards the signal it receives to its workers, which
    the terminal or the scheduler has already signalled, and escalates to SIGKILL itself after its
    --shutdown_timeout. Yields the list of the signal numbers acted on; restores the previous handlers."""
    received = []

    def handler(signum, frame):
        if received:
            if signum == signal.SIGINT and ctrl_c_twice_stops:
                raise KeyboardInterrupt
            return
        received.append(signum)
        if announce:
            tqdm.write(f"{signal.Signals(signum).name}: stopping after this iteration, then saving last.pt"
                       + (" (Ctrl-C again stops at once)" if ctrl_c_twice_stops else ""), file=sys.stderr)

    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield received
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def parameter_checksum(model):
    """Hash of all parameters: DDP replicas must agree bit for bit."""
    h = hashlib.sha1()
    for p in model.parameters():
        h.update(p.detach().float().cpu().numpy().tobytes())
    return h.hexdigest()


def trim_jsonl(path, last_iteration):
    """Drop records after last_iteration (a fresh run: -1 drops all), so a resumed run's logs have
    each iteration once; an unfinished last line (a kill during its write) goes too (sed.plot.read_jsonl)."""
    if not os.path.exists(path):
        return
    try:
        records = [r for r in read_jsonl(path) if r["iteration"] <= last_iteration]
    except ValueError as e:
        raise UserError(f"{e}; the run's log is damaged: repair or remove the line") from None
    with open(path, "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in records)


def tensorboard_writer(cfg):
    """A SummaryWriter in OUT/tensorboard; tensorboard is an optional dependency."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise UserError("--tensorboard: needs the tensorboard package: pip install tensorboard") from None
    return SummaryWriter(os.path.join(cfg.out, "tensorboard"))


def append_jsonl(path, record):
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")


# what lowers GPU memory, named when CUDA runs out of it
MEMORY_FLAGS = "--batch-size, --unlabeled-batch-size, --min-size / --max-size or --dtype bfloat16"


def main(argv=None):
    """The command line. A user error (sed/errors.py) prints one line `error: ...` on stderr and
    exits with status 1; --debug (or SED_DEBUG=1) shows its traceback. A bug keeps its traceback."""
    cfg = parse_args(argv)
    with user_errors(cfg.debug, MEMORY_FLAGS):
        train(cfg)


def load_data(cfg):
    """(labeled part, unlabeled pool or None, evaluation set or None) of a config's data flags."""
    labeled, unlabeled = load_split(cfg.train_ann, cfg.train_images, cfg.labeled_percent, cfg.split_seed,
                                    cfg.split_file or None, cfg.labeled_ann or None, cfg.unlabeled_ann or None)
    if cfg.unlabeled_images:  # a folder of photos, no JSON: added to the unlabeled part (if any)
        folder = ImageFolderDetection(cfg.unlabeled_images)
        unlabeled = folder if unlabeled is None else ConcatDetection([unlabeled, folder])
    if cfg.method == "sed":   # supervised training leaves the unlabeled part out
        warn_shared_images(labeled, unlabeled)
    val = CocoDetection(cfg.val_ann, cfg.val_images) if cfg.val_ann else None
    return labeled, unlabeled, val


def train(cfg):
    dist_info = distributed.setup(cfg.device)
    cfg.device = device = dist_info.device
    unused = unused_settings(cfg)   # before resolve_batch fills in the batches
    cfg = resolve_batch(cfg, dist_info.world_size)  # per-process batches, lr by the linear scaling rule
    master = dist_info.is_main
    if device == "cpu":  # denormal floats (tiny activations of a randomly initialised trunk without
        torch.set_flush_denormal(True)  # batch norm) made CPU steps 5-7x slower here; flush them to 0

    # ---- data: labeled part (+ unlabeled pool for SED) and the evaluation set ----
    with distributed.main_warns_only(dist_info):
        labeled, unlabeled, val = load_data(cfg)
    if cfg.num_classes and cfg.num_classes != labeled.num_classes:
        raise UserError(f"--num-classes: wrong class count: --num-classes {cfg.num_classes} but the "
                        f"training annotations have {labeled.num_classes} categories")
    if labeled.num_boxes() == 0:
        raise UserError(f"--train-ann: the {len(labeled)} labeled images have no boxes (none annotated, "
                        "or crowd only): nothing to train a detector on")
    if val is not None and val.num_boxes() == 0:
        raise UserError(f"--val-ann: {cfg.val_ann} has no boxes (none annotated, or crowd only): COCO AP is "
                        "undefined without ground truth")
    if val is not None and val.label_to_cat_id != labeled.label_to_cat_id:  # eval.py checks the same
        raise UserError(f"--val-ann: categories {val.class_names} (ids {sorted(val.label_to_cat_id.values())}) "
                        f"differ from the training annotations' {labeled.class_names} "
                        f"(ids {sorted(labeled.label_to_cat_id.values())})")
    check_image_files(labeled)  # one stat per file, here rather than hours in
    check_image_files(unlabeled, hint="; --unlabeled-ann's images are read from --train-images: a folder of "
                      "their own (COCO's unlabeled2017) goes in as --unlabeled-images DIR, no JSON needed"
                      if cfg.unlabeled_ann else "")
    check_image_files(val)
    if cfg.verify_images and master:  # decode everything: minutes for COCO, so only when asked
        verify_images([labeled, unlabeled, val], cfg.workers)
    cfg.num_classes = labeled.num_classes
    if master:
        print(json.dumps(dataclasses.asdict(cfg), indent=1))
        print(describe_batch(cfg, dist_info.world_size))
        if cfg.batch_size > len(labeled):
            warnings.warn(f"--batch-size {cfg.batch_size} is more than the {len(labeled)} labeled images: "
                          "images repeat within a batch")
        warn_slow_precision(device, cfg.dtype)
        print("labeled:", labeled.summary())
        if unlabeled is not None and cfg.method == "sed":
            print("unlabeled:", unlabeled.summary())
        elif cfg.unlabeled_images or cfg.unlabeled_ann:
            print("note: --method supervised trains on the labeled images only; "
                  "--unlabeled-images and --unlabeled-ann are not used")
        try:
            os.makedirs(cfg.out, exist_ok=True)
        except OSError as e:   # validate() checked the path; the disk may have changed since
            raise UserError(f"--out: cannot create {cfg.out}: {e.strerror}") from None
        remove_stale_temporaries(os.path.join(cfg.out, "last.pt"))  # what a kill during a write left

    # ---- model and optimiser (same seed on every rank -> same init; DDP broadcasts anyway) ----
    torch.manual_seed(cfg.seed)
    # --resume replaces every weight: no ImageNet download (an offline node resumes as well)
    weights = None if cfg.backbone_weights == "none" or cfg.resume else cfg.backbone_weights
    model = sed.build_model(backbone_weights=weights, **model_options(cfg)).to(device)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    scaler = torch.amp.GradScaler(torch.device(device).type, enabled=cfg.dtype == "float16")
    teacher = None  # SED: the EMA teacher (sed/teacher.py), saved in the checkpoint and evaluated
    if cfg.method == "sed":
        if unlabeled is None or len(unlabeled) == 0:
            raise UserError("--method: sed needs unlabeled images: give --labeled-percent < 100, "
                            "--split-file (leaving some images out), --unlabeled-ann or --unlabeled-images")
        teacher = make_teacher(model)
    iteration = 0  # number of completed iterations
    if cfg.resume:
        ckpt = load_checkpoint(cfg.resume, map_location=device)
        other_model = differences(ckpt["config"], cfg, WEIGHT_FIELDS)
        if other_model:   # named, where load_weights could only say which weights do not fit
            raise UserError(f"--resume: {cfg.resume} holds another model ({', '.join(other_model)}): resume "
                            "with the settings and annotations it was trained with (its config.json)")
        if ckpt.get("class_names", labeled.class_names) != labeled.class_names:  # label i would change meaning
            raise UserError(f"--resume: {cfg.resume} was trained on the classes {ckpt['class_names']}, the "
                            f"annotations have {labeled.class_names}: resume with the annotations it was trained with")
        load_weights(model, ckpt["model"], cfg.resume)
        optimizer.load_state_dict(ckpt["optimizer"])
        if ckpt["scaler"]:   # empty when the run did not use float16: --dtype float16 starts a new scale
            scaler.load_state_dict(ckpt["scaler"])
        if teacher is not None:  # a supervised checkpoint starts SED as after its burn-in: teacher = student
            load_weights(teacher, ckpt.get("teacher", ckpt["model"]), cfg.resume, "teacher")
        iteration = ckpt["iteration"]
        if master:
            print(f"resumed from {cfg.resume} at iteration {iteration}")
            changed = changed_settings(ckpt["config"], cfg)
            saved_processes = len(ckpt["rng"])   # one RNG state per rank of the run that saved it
            if saved_processes != dist_info.world_size:   # an elastic restart: allowed, but not the same run
                changed.insert(0, f"processes {saved_processes} -> {dist_info.world_size}: "
                                  f"{cfg.batch_size * saved_processes} -> {cfg.batch_size * dist_info.world_size} "
                                  "labeled images per iteration, another data order")
            if changed:
                warnings.warn(f"--resume: this run's settings differ from the checkpoint's ({', '.join(changed)}); "
                              "its flags and process count continue its run unchanged")
            if iteration >= cfg.max_iter:
                warnings.warn(f"--resume: the checkpoint is at iteration {iteration}, --max-iter is {cfg.max_iter}: "
                              "nothing to train; raise --max-iter to go on")
    if master and unused:   # after the errors above: a run that cannot start says only why
        warnings.warn(f"{', '.join(unused)}: not used by this run ("
                      + ("--method supervised" if cfg.method != "sed" else "their component is switched off")
                      + "); they change nothing")
    if master and cfg.warmup_iters >= cfg.max_iter:
        warnings.warn(f"--warmup-iters {cfg.warmup_iters} >= --max-iter {cfg.max_iter}: the whole run is the lr "
                      f"warm-up (lr {learning_rate(0, cfg):g} rising, never reaching --lr {cfg.lr:g})")
    if master and (message := lr_steps_warning(cfg)):
        warnings.warn(message)
    if master and cfg.method == "sed" and cfg.burn_in_iters >= cfg.max_iter:
        warnings.warn(f"--burn-in-iters {cfg.burn_in_iters} >= --max-iter {cfg.max_iter}: the whole run is "
                      "the supervised burn-in, no SED iteration")
    if master:   # once the model and the checkpoint are in place: a refused --resume leaves the run as it was
        with open(os.path.join(cfg.out, "config.json"), "w") as f:
            json.dump(dataclasses.asdict(cfg), f, indent=1)
        for name in ("log.jsonl", "metrics.jsonl"):
            trim_jsonl(os.path.join(cfg.out, name), iteration if cfg.resume else -1)
    raw_model = model
    # DDP synchronises only what runs inside the wrapped forward: the objective holds all losses
    objective = SEDObjective(raw_model, cfg)
    if dist_info.distributed:
        objective = DDP(objective, device_ids=[dist_info.local_rank] if device.startswith("cuda") else None)
    writer = tensorboard_writer(cfg) if master and cfg.tensorboard else None

    def log(name, record):
        """One JSON line in OUT/<name> (and TensorBoard scalars when asked)."""
        append_jsonl(os.path.join(cfg.out, name), record)
        if writer is not None:
            prefix = record.get("model", "train") + "/"
            for key, value in record.items():
                if isinstance(value, (int, float)) and key != "iteration":
                    writer.add_scalar(prefix + key, value, record["iteration"])

    def save(it):
        """OUT/last.pt on rank 0; every rank contributes its RNG state (call on all ranks)."""
        rngs = distributed.all_gather_objects(rng_state())
        if dist_info.distributed:  # check that the DDP replicas are identical, and log it
            sums = distributed.all_gather_objects(parameter_checksum(raw_model))
            if master:
                log("log.jsonl", {"iteration": it, "param_checksums": sums})
                assert len(set(sums)) == 1, f"DDP replicas differ at iteration {it}: {sums}"
        if not master:
            return
        state = {"model": raw_model.state_dict(), "optimizer": optimizer.state_dict(),
                 "scaler": scaler.state_dict(), "iteration": it, "config": dataclasses.asdict(cfg),
                 "class_names": labeled.class_names, "label_to_cat_id": labeled.label_to_cat_id,
                 "rng": rngs}
        if teacher is not None:
            state["teacher"] = teacher.state_dict()
        save_checkpoint(os.path.join(cfg.out, "last.pt"), state)

    def run_eval(it):
        """COCO metrics of the student (and SED's teacher) into metrics.jsonl; SED also measures the
        teacher's pseudo-labels on a fixed sample of unlabeled images (sed/diagnostics.py)."""
        models = {"student": raw_model} if teacher is None else {"teacher": teacher, "student": raw_model}
        for name, eval_model in models.items() if val is not None else ():
            metrics = evaluate(eval_model, val, device, cfg.dtype, cfg.eval_batch_size, cfg.workers, dist_info)
            if master:
                log("metrics.jsonl", {"iteration": it, "model": name, **{k: metrics[k] for k in METRIC_NAMES}})
                tqdm.write(f"iteration {it}: {name} AP {metrics['AP']:.2f}  AP50 {metrics['AP50']:.2f}")
        if master and diagnostics_sample:
            stats = diagnose(teacher, unlabeled, diagnostics_sample, device, cfg=cfg)
            log("log.jsonl", {"iteration": it, **stats})
            tqdm.write(f"iteration {it}: {format_summary(stats)}")
            warning = collapse_warning(stats, first_diagnostics.setdefault("stats", stats))
            if warning:
                tqdm.write(f"iteration {it}: {warning}")

    # SED: a fixed, evenly spaced sample of the unlabeled images that have ground truth (their labels
    # measure, never train); the images of a folder or of a file without a box have none and are skipped
    diagnostics_sample, first_diagnostics = [], {}  # the first measurement: the reference of collapse_warning
    if teacher is not None and cfg.diagnostics_images > 0:
        with_truth = unlabeled.ground_truth_indices()
        step = max(1, len(with_truth) // cfg.diagnostics_images)
        diagnostics_sample = with_truth[::step][: cfg.diagnostics_images]
        if master and len(with_truth) < len(unlabeled):
            print(f"pseudo-label diagnostics: {len(unlabeled) - len(with_truth)} unlabeled images have no ground "
                  f"truth (a folder, or a file without a box) and are skipped; measured on {len(diagnostics_sample)}"
                  + ("" if with_truth else " (off: no unlabeled image has annotations)"))

    stop = False  # a signal asked to stop (stop_requests): save, then exit
    with stop_requests(announce=master, ctrl_c_twice_stops=not distributed.launched()) as received, \
            contextlib.ExitStack() as loaders:   # the data loader workers end with the loop, also on an error
        # ---- data order: a pure function of (seed, rank, world_size, iteration) -> exact resume ----
        sampler = TrainBatchSampler(labeled.aspect_ratios(), cfg.batch_size, cfg.seed, rank=dist_info.rank,
                                    world_size=dist_info.world_size, start_iter=iteration)
        pin = device.startswith("cuda")
        batches = loaders.enter_context(worker_batches(make_loader(labeled, sampler, cfg.workers, pin)))
        # the unlabeled stream starts after the burn-in (it is unused before); --unsup-weight 0 (the EMA teacher
        # of supervised training, sed.experiment's supervised_ema) never reads an unlabeled image
        reads_unlabeled = teacher is not None and cfg.unsup_weight > 0
        if reads_unlabeled:
            unlabeled_sampler = TrainBatchSampler(
                unlabeled.aspect_ratios(), cfg.unlabeled_batch_size, cfg.seed + 1,
                rank=dist_info.rank, world_size=dist_info.world_size,
                start_iter=max(0, iteration - cfg.burn_in_iters))
            unlabeled_batches = loaders.enter_context(
                worker_batches(make_loader(unlabeled, unlabeled_sampler, cfg.workers, pin)))
        if cfg.resume:  # after the loader drew its seed from torch's RNG, so the stream continues exactly
            rngs = ckpt["rng"]  # one per rank of the run that saved it
            set_rng_state(rngs[dist_info.rank] if len(rngs) == dist_info.world_size else rngs[0])

        objective.train()
        bar = tqdm(total=cfg.max_iter, initial=iteration, disable=not master, dynamic_ncols=True)
        t0 = time.perf_counter()
        for it in range(iteration, cfg.max_iter):
            try:
                (images, targets), unlabeled_batch = next(batches), None
                if reads_unlabeled and it >= cfg.burn_in_iters:  # targets of unlabeled images are never used
                    unlabeled_batch = next(unlabeled_batches)[0]
            except UserError as e:  # an unreadable image: the iterations since the last checkpoint are kept
                if dist_info.distributed or it == iteration:  # save() needs every rank; or nothing new to keep
                    raise
                save(it)
                raise UserError(f"{one_line(e)}; saved {os.path.join(cfg.out, 'last.pt')} at iteration {it}: "
                                "repair or replace the image, then --resume it") from None
            images = [im.to(device, non_blocking=True) for im in images]
            targets = [{"boxes": t["boxes"].to(device), "labels": t["labels"].to(device)} for t in targets]
            unlabeled_images = None if unlabeled_batch is None else [
                im.to(device, non_blocking=True) for im in unlabeled_batch]
            data_time = time.perf_counter() - t0

            lr = learning_rate(it, cfg)
            for group in optimizer.param_groups:
                group["lr"] = lr
            if cfg.method == "sed":
                losses = sed_step(objective, teacher, raw_model, images, targets, unlabeled_images, it, cfg)
            else:
                losses = supervised_step(objective, images, targets, cfg)
            finite, stop = agreed_flags(losses["total"], bool(received), dist_info)
            if not finite:
                if not torch.isfinite(losses["total"]):   # a line of its own under the progress bar
                    tqdm.write(f"{f'rank {dist_info.rank}: ' if dist_info.distributed else ''}non-finite loss at "
                               f"iteration {it}: " + json.dumps({k: v.item() for k, v in losses.items()}),
                               file=sys.stderr)
                kept = "last good checkpoint kept" if os.path.exists(os.path.join(cfg.out, "last.pt")) else \
                    "no checkpoint written yet"
                precision = "" if cfg.dtype == "float32" else f", or float32 instead of --dtype {cfg.dtype},"
                raise SystemExit(f"stopped: non-finite loss at iteration {it}; {kept} (a lower --lr or a "
                                 f"--grad-clip{precision} may keep it finite)")

            optimizer.zero_grad(set_to_none=True)
            scaler.scale(losses["total"]).backward()
            if cfg.grad_clip > 0:
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
            scaler.step(optimizer)
            scaler.update()
            if teacher is not None:
                ema_update(teacher, raw_model, ema_momentum_at(it, cfg))  # SED_NOTES "Framework"
            step_time = time.perf_counter() - t0

            done = it + 1
            stop = stop and done < cfg.max_iter   # the last iteration ends the run as usual
            if master:
                values = {k: v.item() for k, v in losses.items()}
                bar.update(1)
                bar.set_postfix(loss=f"{values['total']:.3f}", lr=f"{lr:.2e}")
                if done % cfg.log_every == 0 or done == cfg.max_iter:
                    log("log.jsonl", {"iteration": done, **values, "lr": lr, "data_time": round(data_time, 4),
                                      "step_time": round(step_time, 4)})
            evaluate_now = (cfg.eval_every and done % cfg.eval_every == 0) or done == cfg.max_iter
            if done % cfg.checkpoint_every == 0 or evaluate_now or stop:
                save(done)  # before the evaluation: a failing one (a bad val image, a signal) loses no training
            if stop:
                break
            if evaluate_now:
                with preserved_rng():  # the evaluation draws no number of the training's (exact resume)
                    run_eval(done)
            t0 = time.perf_counter()
    bar.close()
    if writer is not None:
        writer.close()
    distributed.cleanup()
    if stop:
        signum = received[0] if received else signal.SIGTERM   # a rank that only agreed to another's stop
        if master:
            print(f"stopped by {signal.Signals(signum).name} after iteration {done}: saved "
                  f"{os.path.join(cfg.out, 'last.pt')}; continue with the same flags and --resume "
                  f"{os.path.join(cfg.out, 'last.pt')}", file=sys.stderr)
        sys.exit(128 + signum)   # the shell's convention for a process ended by a signal


if __name__ == "__main__":
    main()
