"""Training configuration: one dataclass, one CLI flag per field (`--field-name`).

Defaults are the usual Faster R-CNN R50-FPN "1x" recipe (detectron2 / torchvision references:
90k iterations at a total batch of 16, lr 0.02, steps at 60k and 80k). `--lr 0` (the default)
applies the linear scaling rule `lr = 0.02 * total_batch / 16` (Goyal et al. 2017) to the batch
actually used; scale the iteration counts inversely to the batch yourself.
"""
import argparse
import dataclasses
import json
import os
import re
from dataclasses import dataclass, field

import torch

from sed.backbone import RESNETS
from sed.errors import ArgumentParser, UserError

DTYPES = ("float32", "bfloat16", "float16")
# Data loader workers per process: 4, or fewer on a machine with fewer cores (torch warns above them).
DEFAULT_WORKERS = min(4, os.cpu_count() or 1)
METHODS = ("supervised", "sed")
SCALE_TARGETS = ("student", "mutual", "teacher")
HARD_LABEL_ROIS = ("student", "teacher")
DISTILL_NORMS = ("count", "weight", "split")
DISTILL_REG_NORMS = ("weight", "count")


def _help(text, default=dataclasses.MISSING, default_factory=dataclasses.MISSING):
    """A dataclass field whose help text becomes the CLI help."""
    if default_factory is not dataclasses.MISSING:
        return field(default_factory=default_factory, metadata={"help": text})
    return field(default=default, metadata={"help": text})


@dataclass
class TrainConfig:
    # --- data ---
    train_ann: str = _help("COCO json of the training images (labeled + unlabeled pool)", "")
    train_images: str = _help("directory of the training images", "")
    val_ann: str = _help("COCO json used for evaluation", "")
    val_images: str = _help("directory of the evaluation images", "")
    labeled_percent: float = _help("percent of train images that keep their labels (0, 100]", 100.0)
    split_seed: int = _help("seed / fold of the random labeled split (COCO-standard folds 1-5)", 1)
    split_file: str = _help("json with the labeled image ids (overrides percent/seed)", "")
    labeled_ann: str = _help("ready-made COCO json of the labeled part (overrides the split)", "")
    unlabeled_ann: str = _help("ready-made COCO json of the unlabeled part", "")
    unlabeled_images: str = _help("folder of unlabeled images (recursive; jpg jpeg png bmp webp; no json "
                                  "needed), added to the unlabeled part", "")
    verify_images: bool = _help("before training, decode every image and check its size against the json "
                                "(parallel, --workers threads)", False)
    method: str = _help("training method: supervised | sed", "supervised")
    num_classes: int = _help("foreground classes C; 0 = read from train_ann", 0)
    # --- model ---
    backbone: str = _help("resnet18 | resnet34 | resnet50", "resnet50")
    backbone_weights: str = _help("imagenet (needs internet once) | none | path to a .pth", "imagenet")
    trainable_layers: int = _help("trainable ResNet stages (0-5), the rest frozen as in torchvision", 3)
    backbone_norm: str = _help("frozen_bn (torchvision's, for pretrained weights) | group (trainable "
                               "GroupNorm, for training from scratch)", "frozen_bn")
    min_size: tuple = _help("shorter side for training, one picked per batch (multi-scale)",
                            default_factory=lambda: (640, 672, 704, 736, 768, 800))
    max_size: int = _help("cap on the longer side", 1333)
    anchor_sizes: tuple = _help("anchor size of each level P2-P6 (doubling per level)",
                                default_factory=lambda: (32, 64, 128, 256, 512))
    rpn_proposals: tuple = _help("RPN proposals per image (train, eval), before and after NMS",
                                 default_factory=lambda: (2000, 1000))
    roi_batch_size: int = _help("RoIs sampled per image for the box-head loss", 512)
    box_head_dim: int = _help("width of the box head's two fully connected layers (FPN: 1024)", 1024)
    fpn_channels: int = _help("channels of the FPN levels, the RPN head and the RoI features (FPN: 256)", 256)
    # --- optimisation (1x schedule at batch 16: 90k iterations, steps at 60k and 80k) ---
    max_iter: int = _help("number of training iterations", 90000)
    batch_size: int = _help("labeled images per iteration and process; 0 = the method's per-GPU default "
                            "(supervised 2, sed 1)", 0)
    lr: float = _help("base learning rate; 0 = linear scaling rule 0.02 * total_batch / 16", 0.0)
    momentum: float = _help("SGD momentum", 0.9)
    weight_decay: float = _help("SGD weight decay", 1e-4)
    warmup_iters: int = _help("linear warmup length in iterations", 1000)
    warmup_factor: float = _help("lr multiplier at iteration 0 of the warmup", 0.001)
    lr_steps: list = _help("iterations at which lr is multiplied by lr_gamma",
                           default_factory=lambda: [60000, 80000])
    lr_gamma: float = _help("step decay factor", 0.1)
    grad_clip: float = _help("max gradient L2 norm; 0 = off", 0.0)
    # --- SED (SED_NOTES.md; several defaults deviate from the notes: README "SED in one step") ---
    unlabeled_batch_size: int = _help("sed: unlabeled images per iteration and process; 0 = 4x batch_size", 0)
    ema_momentum: float = _help("design choice: teacher EMA momentum m: theta_t <- m theta_t + (1-m) theta_s",
                                0.999)
    unsup_weight: float = _help("design choice: lambda_u in L = L_sup + lambda_u L_unsup", 4.0)
    burn_in_iters: int = _help("design choice: supervised-only iterations before the unsupervised losses start",
                               2000)
    burn_in_copy: bool = _help("design choice (Unbiased Teacher): the teacher copies the student at every "
                               "burn-in iteration (EMA momentum 0), so it is the student when the unsupervised "
                               "losses start; off: the EMA at --ema-momentum from iteration 0 (Mean Teacher; a "
                               "supervised checkpoint continued as SED starts its teacher as a copy either way)",
                               True)
    rampup_iters: int = _help("design choice: linear ramp of lambda_u after the burn-in; 0 = step", 0)
    distill: bool = _help("design choice, deviates from Figure 1 (its self-distillation arrow): soft "
                          "self-distillation teacher -> student on the full-size strong view (SED_NOTES "
                          "section 1); off by default: over seeds it cost AP against the hard labels alone (README "
                          "\"Experiment\"), which are then the teacher -> student link", False)
    distill_rpn: bool = _help("design choice (which heads the term uses): the self-distillation's RPN part "
                              "(objectness and deltas per anchor); off: its RoI-head part only", True)
    distill_roi: bool = _help("design choice: the self-distillation's RoI-head part (classes and deltas on the "
                              "teacher's proposals); off: its RPN part only", True)
    scale_consistency: bool = _help("scale-equivalent loss between the student's full-size and 0.5x views", True)
    scale_target: str = _help("target of the 0.5x view: student (full-size outputs, detached) | mutual "
                              "(gradient into both sizes) | teacher (the teacher's outputs)", "student")
    scale_roi: bool = _help("design choice: the scale link's RoI-head part (the 0.5x view on the proposals / 2); "
                            "off = its RPN part only, which cost AP on every run of the CPU experiment, "
                            "mostly APs (README \"Experiment\")", True)
    scale_rpn: bool = _help("design choice: the scale link's RPN part (small P2-P5 against full-size P3-P6); off = "
                            "its RoI-head part only", True)
    small_view_antialias: bool = _help("design choice: the 0.5x view is downsampled bilinearly with antialiasing "
                                       "(a low-pass filter first, as resizing the photo would); off: plain "
                                       "bilinear, the mean of each 2x2 block", True)
    reweight: bool = _help("teacher-confidence re-weighting (SED_NOTES section 3) of the soft terms' RoI classes "
                           "(with --reweight-anchors their anchors too); box deltas are weighted by the teacher's "
                           "foreground probability either way (--weight-gamma shapes them only with it); with the "
                           "defaults it acts on the scale link's RoI classes only", True)
    reweight_anchors: bool = _help("design choice: the re-weighting covers the RPN anchors too; off (the default, "
                                   "README \"Experiment\"): anchors by their plain mean, only the RoIs re-weighted",
                                   False)
    confidence_weighted_deltas: bool = _help("design choice (SED_NOTES section 1 weights the box distillation by "
                                             "the teacher's confidence): the distilled box deltas keep that weight "
                                             "where the re-weighting is off (--no-reweight, or anchors without "
                                             "--reweight-anchors); off: their plain mean there, like the classes",
                                             True)
    hard_pseudo_labels: bool = _help("design choice, deviates from Figure 1 (no hard-label term there): add the "
                                     "teacher's detections >= --pseudo-threshold as hard labels of the four Faster "
                                     "R-CNN losses on the strong view, so that the unlabeled images train box "
                                     "regression too (README \"Experiment\"); off needs --distill; "
                                     "--distill --no-hard-pseudo-labels = SED as Figure 1 draws it", True)
    pseudo_threshold: float = _help("score threshold of the hard pseudo-labels", 0.7)
    hard_label_rois: str = _help("design choice: the RoIs of the hard labels' box-head loss: student (the "
                                 "student's own proposals, sampled as in supervised training: Unbiased Teacher) | "
                                 "teacher (every teacher proposal the student's box head already ran on for "
                                 "distillation and scale targets: one box-head pass for all terms, no student "
                                 "proposals); without those outputs (the teacher-student baseline) always student",
                                 "student")
    hard_label_roi_fraction: float = _help("design choice: RoIs sampled per unlabeled image for the hard labels' "
                                           "box-head loss (--hard-label-rois student), as a fraction of "
                                           "--roi-batch-size; 1 = as many as for a labeled image", 1.0)
    hard_label_box_losses: bool = _help("design choice: the hard labels train box regression too (all four Faster "
                                        "R-CNN losses); off: only the RPN objectness and the box head's classes, "
                                        "as Unbiased Teacher (its box coordinates are the least reliable part of a "
                                        "pseudo-label)", True)
    distill_temperature: float = _help("design choice: softmax temperature of the RoI class terms (self-distillation "
                                       "and the scale link)", 1.0)
    weight_gamma: float = _help("design choice: sharpening exponent of the re-weighting weights", 1.0)
    weight_floor: float = _help("design choice: lower bound of the classification weights", 0.0)
    distill_norm: str = _help("design choice: normalisation of the classification distillation: count "
                              "(sum w l / N over the anchors or RoIs) | weight (sum w l / sum w, SED_NOTES "
                              "section 3) | split (probable foreground, teacher p >= 0.5, and background "
                              "normalised separately, half each)", "count")
    target_sharpen: float = _help("design choice: the teacher's classification targets come from its logits "
                                  "divided by this (RPN objectness and RoI classes); < 1 sharpens them, "
                                  "1 = its probabilities", 1.0)
    distill_reg_weight: float = _help("design choice: weight of the box-delta distillation terms (RPN and RoI, "
                                      "self-distillation and scale) against the classification terms; 0 (the "
                                      "default, README \"Experiment\") leaves boxes to the supervised and the "
                                      "hard-label box losses", 0.0)
    distill_reg_norm: str = _help("design choice: normalisation of the box-delta distillation: weight (sum w l / "
                                  "sum w over the confident anchors or RoIs, SED_NOTES section 3) | count (sum w "
                                  "l / N over all of them, as the supervised box losses divide by all sampled "
                                  "anchors / RoIs)", "weight")
    distill_reg_threshold: float = _help("design choice, deviates from SED_NOTES section 3 (no hard threshold): "
                                         "distil box deltas only where the teacher's foreground probability "
                                         "is at least this (0 = everywhere, weighted)", 0.5)
    distill_smooth_l1_beta: float = _help("design choice: beta of the smooth L1 of the distilled box deltas "
                                          "(torchvision's Faster R-CNN losses: 1/9)", 1 / 9)
    teacher_proposals: int = _help("design choice: the teacher's top proposals per image (by objectness, after "
                                   "NMS) used as RoIs for distillation and the scale link; 256 = the experiment's 32 "
                                   "per 128 px image at this image size (README \"Experiment\")", 256)
    strong_color_jitter: float = _help("strength of the strong view's colour jitter", 0.4)
    strong_grayscale_prob: float = _help("probability of grayscale in the strong view", 0.2)
    strong_blur_prob: float = _help("probability of Gaussian blur in the strong view", 0.5)
    strong_erase_prob: float = _help("probability of random erasing in the strong view", 0.7)
    strong_blur_sigma: tuple = _help("design choice (SimCLR, Unbiased Teacher): range of the strong view's "
                                     "Gaussian blur sigma, in pixels", default_factory=lambda: (0.1, 2.0))
    strong_erase_scale: tuple = _help("design choice (Unbiased Teacher's first random erasing): range of the "
                                      "erased area, as a fraction of the image", default_factory=lambda: (0.05, 0.2))
    strong_erase_ratio: tuple = _help("design choice (the same): range of the erased box's aspect ratio h / w, drawn "
                                      "uniformly in log space", default_factory=lambda: (0.3, 3.3))
    diagnostics_images: int = _help("SED: unlabeled images whose pseudo-labels are measured against their "
                                    "ground truth at each evaluation (measurement only); 0 = off", 64)
    # --- loop, logging, system ---
    eval_every: int = _help("evaluate every N iterations (and at the end); 0 = only at the end", 5000)
    checkpoint_every: int = _help("write OUT/last.pt every N iterations, before each evaluation and at the end",
                                  5000)
    log_every: int = _help("write a line to OUT/log.jsonl every N iterations", 20)
    tensorboard: bool = _help("also write the logged scalars to OUT/tensorboard (needs tensorboard)", False)
    out: str = _help("output directory", "runs/train")
    device: str = _help("cuda | cpu (torchrun: cuda:LOCAL_RANK)",
                        "cuda" if torch.cuda.is_available() else "cpu")
    dtype: str = _help("float32 | bfloat16 | float16 (autocast; GradScaler for float16)", "float32")
    seed: int = _help("seed of model init, sampler and augmentation", 0)
    workers: int = _help("data loader worker processes per rank (4, or the CPU cores when fewer)", DEFAULT_WORKERS)
    eval_batch_size: int = _help("images per inference batch and process", 8)
    resume: str = _help("checkpoint to continue from exactly (e.g. OUT/last.pt)", "")
    debug: bool = _help("show the Python traceback of a user error (also SED_DEBUG=1)", False)

    def __post_init__(self):
        self.min_size = tuple(int(s) for s in self.min_size)
        self.anchor_sizes = tuple(int(s) for s in self.anchor_sizes)
        self.rpn_proposals = tuple(int(s) for s in self.rpn_proposals)
        self.lr_steps = [int(s) for s in self.lr_steps]
        for name in ("strong_blur_sigma", "strong_erase_scale", "strong_erase_ratio"):
            setattr(self, name, tuple(float(s) for s in getattr(self, name)))


# --help groups: title -> the first field of the group; a field belongs to the last group started
# above it in declaration order, so a new field lands in its section's group by itself.
HELP_GROUPS = {"data": "train_ann", "model": "backbone", "schedule": "max_iter", "SED": "unlabeled_batch_size",
               "evaluation and logging": "eval_every", "system": "device"}
_NAMES = [f.name for f in dataclasses.fields(TrainConfig)]
SED_FIELDS = set(_NAMES[_NAMES.index(HELP_GROUPS["SED"]):_NAMES.index(HELP_GROUPS["evaluation and logging"])])


# What decides the images of a run and their batches (data group): a resumed run that changes one of them
# trains on another split or stream than the one it started, exactly resumable no more.
SPLIT_FIELDS = ("labeled_percent", "split_seed", "split_file", "labeled_ann", "unlabeled_ann", "unlabeled_images",
                "batch_size", "unlabeled_batch_size")
# The rest of what makes a run's iterations what they are (since stop 30): its data, order, sizes and schedule.
RUN_FIELDS = ("train_ann", "train_images", "seed", "min_size", "max_size", "dtype", "lr", "momentum", "weight_decay",
              "warmup_iters", "warmup_factor", "lr_steps", "lr_gamma", "grad_clip")


# SED settings that act only through one component: with that switch off they change nothing (sed/losses.py:
# the scale term; foreground_weights, which returns before gamma and floor without --reweight; the hard labels).
ONLY_WITH = {"distill": ("distill_rpn", "distill_roi"),
             "scale_consistency": ("scale_target", "scale_roi", "scale_rpn", "small_view_antialias"),
             "reweight": ("reweight_anchors", "weight_gamma", "weight_floor"),
             "hard_pseudo_labels": ("pseudo_threshold", "hard_label_rois", "hard_label_roi_fraction",
                                    "hard_label_box_losses")}
# The settings of the teacher's soft targets, their RoIs and their weights: only the self-distillation and the
# scale term read them (sed/losses.py); the hard labels alone do not.
SOFT_TARGET_FIELDS = {"scale_target", "scale_roi", "reweight", "reweight_anchors", "distill_temperature",
                      "weight_gamma", "weight_floor", "distill_norm", "target_sharpen", "distill_reg_weight",
                      "distill_reg_norm", "distill_reg_threshold", "teacher_proposals", "confidence_weighted_deltas",
                      "distill_smooth_l1_beta"}


def hard_labels_on(cfg):
    """Whether the hard pseudo-label loss runs, so that the teacher must detect: --hard-pseudo-labels, or
    without --distill, where the hard labels are the teacher's only signal to the student."""
    return cfg.hard_pseudo_labels or not cfg.distill


def unused_fields(cfg):
    """The settings a run's switches leave unused, each changing nothing (sed/losses.py, sed/teacher.py):
    - every SED setting of a supervised run;
    - those of a switched-off component (ONLY_WITH), and the soft targets' without distillation and scale term;
    - --target-sharpen when nothing learns from the teacher's soft targets (only the self-distillation and
      --scale-target teacher do); --distill-reg-norm, --distill-reg-threshold, --distill-smooth-l1-beta and
      --confidence-weighted-deltas when no box delta is distilled, the last also when every weight is the
      re-weighting's (--reweight --reweight-anchors);
    - --burn-in-copy without a burn-in;
    - --hard-pseudo-labels without distillation (the hard labels are on either way);
    - --hard-label-rois without hard labels or without the student's box-head outputs on the teacher's
      proposals; --hard-label-roi-fraction without hard labels or with them on the teacher's proposals;
    - --distill-norm count or weight without re-weighting (every weight is 1: the same mean, bit for bit).
    train.py warns of such a flag given another value (unused_settings); sed.experiment leaves them out of
    what makes two runs the same run."""
    if cfg.method != "sed":
        return set(SED_FIELDS)
    unused = {f for switch, names in ONLY_WITH.items() if not getattr(cfg, switch) for f in names}
    if not (cfg.distill or cfg.scale_consistency):
        unused |= SOFT_TARGET_FIELDS
    if not (cfg.distill or (cfg.scale_consistency and cfg.scale_target == "teacher")):
        unused.add("target_sharpen")
    if cfg.distill_reg_weight == 0:
        unused |= {"distill_reg_norm", "distill_reg_threshold", "distill_smooth_l1_beta",
                   "confidence_weighted_deltas"}
    if cfg.reweight and cfg.reweight_anchors:
        unused.add("confidence_weighted_deltas")
    if cfg.burn_in_iters == 0:
        unused.add("burn_in_copy")
    if not cfg.distill:
        unused.add("hard_pseudo_labels")
    no_hard_labels = not hard_labels_on(cfg)
    student_rois_only = not (cfg.distill or (cfg.scale_consistency and cfg.scale_target != "teacher"))
    if no_hard_labels or student_rois_only:
        unused.add("hard_label_rois")  # no box-head outputs on the teacher's proposals to reuse
    if no_hard_labels or (cfg.hard_label_rois == "teacher" and not student_rois_only):
        unused.add("hard_label_roi_fraction")  # none sampled from the student's proposals
    if not cfg.reweight and cfg.distill_norm != "split":
        unused.add("distill_norm")
    return unused


def unused_settings(cfg):
    """['--flag'] of each setting given another value than its default that this run does not use
    (`unused_fields`), except a switch turned off: the teacher-student's --no-reweight turns off what its
    other switches leave unused, and saying so is no news. Call before resolve_batch, which fills in the
    batches. A flag set to its default is not seen."""
    default, now = as_json(TrainConfig()), as_json(cfg)
    return [flag(f) for f in sorted(unused_fields(cfg)) if now[f] != default[f] and now[f] is not False]


def changed_settings(saved, cfg):
    """['--flag saved -> now'] for each setting in which cfg differs from a checkpoint's saved config (a
    dict) that would change a resumed run silently: the labeled split and the batches (SPLIT_FIELDS), the
    data, order, sizes and schedule (RUN_FIELDS), SED that goes on as supervised training (its teacher
    unused), and, when both are SED runs, each SED setting (the --help group "SED"; --distill's default
    changed at stop 26). --max-iter (extending a run) and supervised -> SED (how a burn-in continues,
    sed.experiment) are not named."""
    fields = [*SPLIT_FIELDS, *RUN_FIELDS, *(sorted(SED_FIELDS) if saved.get("method") == cfg.method == "sed" else ())]
    changed = differences(saved, cfg, fields)
    if saved.get("method") == "sed" and cfg.method == "supervised":
        changed.insert(0, "--method sed -> supervised (its teacher is not used)")
    return changed


# The model settings that shape a checkpoint's weights and its optimizer's parameter groups: a resume
# with another value cannot load them.
WEIGHT_FIELDS = ("backbone", "backbone_norm", "num_classes", "fpn_channels", "box_head_dim", "trainable_layers")


def differences(saved, cfg, fields):
    """['--flag saved -> now'] for each of `fields` in which cfg differs from a checkpoint's saved config
    (a dict; a field it lacks, from an older version, is not compared)."""
    saved_json, now = as_json(saved), as_json(cfg)
    return [f"{flag(k)} {saved_json[k]} -> {now[k]}" for k in fields if k in saved_json and saved_json[k] != now[k]]


def as_json(cfg):
    """A TrainConfig, or a dict of its fields, as JSON values (tuples as lists): how a config saved in a
    JSON file reads back, and the form in which a checkpoint's config (tuples kept) compares with it."""
    return json.loads(json.dumps(dataclasses.asdict(cfg) if dataclasses.is_dataclass(cfg) else cfg))


def flag(name):
    return "--" + name.replace("_", "-")


def _name_flags(message):
    """'labeled_percent must be ...' -> '--labeled-percent must be ...': the message starts with
    the flag (and names other fields, those with an underscore, by their flags too)."""
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    message = re.sub(r"^(\w+)", lambda m: flag(m[1]) if m[1] in names else m[1], message)
    return re.sub(r"(?<![\w-])(\w+_\w+)", lambda m: flag(m[1]) if m[1] in names else m[1], message)


def validate(cfg: TrainConfig, check_files=True):
    """Raise a one-line UserError, starting with the flag, for the first problem found."""
    checks = [
        (0 < cfg.labeled_percent <= 100, f"labeled_percent must be in (0, 100], got {cfg.labeled_percent}"),
        (cfg.method in METHODS, f"method must be one of {METHODS}, got {cfg.method!r}"),
        (cfg.dtype in DTYPES, f"dtype must be one of {DTYPES}, got {cfg.dtype!r}"),
        (cfg.distill_norm in DISTILL_NORMS, f"distill_norm must be one of {DISTILL_NORMS}, got {cfg.distill_norm!r}"),
        (cfg.distill_reg_norm in DISTILL_REG_NORMS,
         f"distill_reg_norm must be one of {DISTILL_REG_NORMS}, got {cfg.distill_reg_norm!r}"),
        (cfg.distill_reg_weight >= 0, f"distill_reg_weight must be >= 0, got {cfg.distill_reg_weight}"),
        (cfg.target_sharpen > 0, f"target_sharpen must be > 0, got {cfg.target_sharpen}"),
        (cfg.scale_target in SCALE_TARGETS, f"scale_target must be one of {SCALE_TARGETS}, got {cfg.scale_target!r}"),
        (0 < cfg.hard_label_roi_fraction <= 1,
         f"hard_label_roi_fraction must be in (0, 1], got {cfg.hard_label_roi_fraction}"),
        (cfg.method != "sed" or cfg.distill or cfg.hard_pseudo_labels, "--no-hard-pseudo-labels needs --distill "
         "(without the soft self-distillation the hard labels are the teacher's only signal to the student); "
         "--distill --no-hard-pseudo-labels is SED as Figure 1 draws it"),
        (cfg.method != "sed" or not cfg.distill or cfg.distill_rpn or cfg.distill_roi,
         "--distill needs --distill-rpn or --distill-roi (with neither, --no-distill)"),
        (cfg.method != "sed" or not cfg.scale_consistency or cfg.scale_rpn or cfg.scale_roi,
         "--scale-consistency needs --scale-rpn or --scale-roi (with neither, --no-scale-consistency)"),
        (cfg.hard_label_rois in HARD_LABEL_ROIS,
         f"hard_label_rois must be one of {HARD_LABEL_ROIS}, got {cfg.hard_label_rois!r}"),
        (cfg.backbone_norm == "frozen_bn" or cfg.backbone_weights == "none",
         f"backbone_norm {cfg.backbone_norm} needs --backbone-weights none (pretrained weights carry BN statistics)"),
        (cfg.num_classes >= 0, f"num_classes must be >= 0, got {cfg.num_classes}"),
        (cfg.max_iter > 0, f"max_iter must be positive, got {cfg.max_iter}"),
        (cfg.batch_size >= 0 and cfg.unlabeled_batch_size >= 0,
         "batch_size and unlabeled_batch_size must be >= 0 (0 = the method's default)"),
        (cfg.lr >= 0, f"lr must be >= 0 (0 = linear scaling rule), got {cfg.lr}"),
        (len(cfg.min_size) > 0 and min(cfg.min_size) > 0,
         f"min_size must be positive, got {list(cfg.min_size)}"),
        (0 <= cfg.seed < 2**32 and 0 <= cfg.split_seed < 2**32,  # numpy's and the samplers' seed range
         f"seed and split_seed must be in [0, 2**32 - 1], got {cfg.seed} and {cfg.split_seed}"),
        (0 <= cfg.trainable_layers <= 5, f"trainable_layers must be in 0..5, got {cfg.trainable_layers}"),
        (0 <= cfg.ema_momentum <= 1, f"ema_momentum must be in [0, 1], got {cfg.ema_momentum}"),
        (cfg.unsup_weight >= 0, f"unsup_weight must be >= 0, got {cfg.unsup_weight}"),
        (0 <= cfg.pseudo_threshold < 1, f"pseudo_threshold must be in [0, 1) (a score; at 1 no detection is a "
                                        f"pseudo-label), got {cfg.pseudo_threshold}"),
        (cfg.teacher_proposals >= 1, f"teacher_proposals must be >= 1, got {cfg.teacher_proposals}"),
        (cfg.weight_gamma >= 0, f"weight_gamma must be >= 0, got {cfg.weight_gamma}"),
        (cfg.burn_in_iters >= 0 and cfg.rampup_iters >= 0,
         f"burn_in_iters and rampup_iters must be >= 0, got {cfg.burn_in_iters} and {cfg.rampup_iters}"),
        (cfg.distill_temperature > 0, f"distill_temperature must be > 0, got {cfg.distill_temperature}"),
        (cfg.distill_smooth_l1_beta >= 0, f"distill_smooth_l1_beta must be >= 0 (0 = L1), got "
                                          f"{cfg.distill_smooth_l1_beta}"),
        *_range_checks(cfg),
        (0 <= cfg.weight_floor <= 1, f"weight_floor must be in [0, 1], got {cfg.weight_floor}"),
        (0 <= cfg.distill_reg_threshold <= 1,
         f"distill_reg_threshold must be in [0, 1] (a probability), got {cfg.distill_reg_threshold}"),
        (all(a < b for a, b in zip([0, *cfg.lr_steps], cfg.lr_steps)),
         f"lr_steps must be positive and strictly increasing, got {cfg.lr_steps}"),
        (0 < cfg.lr_gamma <= 1, f"lr_gamma must be in (0, 1] (a decay), got {cfg.lr_gamma}"),
        (0 < cfg.warmup_factor <= 1, f"warmup_factor must be in (0, 1], got {cfg.warmup_factor}"),
        (len(cfg.anchor_sizes) == 5, f"anchor_sizes needs one size per level P2-P6, got {cfg.anchor_sizes}"),
        (all(a < b for a, b in zip([0, *cfg.anchor_sizes], cfg.anchor_sizes)),
         f"anchor_sizes must be positive and increase from P2 to P6, got {cfg.anchor_sizes}"),
        (cfg.method != "sed" or not cfg.scale_consistency
         or all(b == 2 * a for a, b in zip(cfg.anchor_sizes, cfg.anchor_sizes[1:])),
         f"anchor_sizes must double from level to level for the scale link (small P2-P5 against full P3-P6, "
         f"SED_NOTES section 2), got {cfg.anchor_sizes}; or --no-scale-consistency"),
        (len(cfg.rpn_proposals) == 2, f"rpn_proposals is (train, eval), got {cfg.rpn_proposals}"),
        (min(cfg.rpn_proposals) >= 1, f"rpn_proposals must be >= 1, got {cfg.rpn_proposals}"),
        (cfg.max_size >= max(cfg.min_size), f"max_size must be >= min_size, got {cfg.max_size} and {cfg.min_size}"),
        (min(cfg.roi_batch_size, cfg.box_head_dim, cfg.fpn_channels) >= 1,
         "roi_batch_size, box_head_dim and fpn_channels must be >= 1"),
        (cfg.momentum >= 0 and cfg.weight_decay >= 0 and cfg.grad_clip >= 0,
         "momentum, weight_decay and grad_clip must be >= 0"),
        (cfg.warmup_iters >= 0 and cfg.eval_every >= 0 and cfg.diagnostics_images >= 0,
         "warmup_iters, eval_every and diagnostics_images must be >= 0"),
        (cfg.checkpoint_every >= 1 and cfg.log_every >= 1 and cfg.eval_batch_size >= 1,
         f"checkpoint_every, log_every and eval_batch_size must be >= 1, got {cfg.checkpoint_every}, "
         f"{cfg.log_every} and {cfg.eval_batch_size}"),
        (cfg.workers >= 0, f"workers must be >= 0 (0 = load in the main process), got {cfg.workers}"),
        (bool(cfg.val_ann) == bool(cfg.val_images), "val_ann and val_images go together (evaluation needs both)"),
        (not cfg.unlabeled_ann or cfg.labeled_ann, "unlabeled_ann needs labeled_ann (the two ready-made parts go "
         "together; images beside a percent split: --unlabeled-images)"),
        (not cfg.labeled_ann or (not cfg.split_file and cfg.labeled_percent == 100),
         "labeled_ann is the labeled part: it takes no labeled_percent or split_file"),
    ]
    for ok, message in checks:
        if not ok:
            raise UserError(_name_flags(message))
    if not check_files:
        return
    if cfg.resume and os.path.isdir(cfg.resume):
        raise UserError(f"--resume: {cfg.resume} is a folder; --resume {os.path.join(cfg.resume, 'last.pt')} "
                        "continues the run it holds")
    for name in ("train_ann", "val_ann", "split_file", "labeled_ann", "unlabeled_ann", "resume"):
        path = getattr(cfg, name)
        if path and os.path.isdir(path):
            raise UserError(f"{flag(name)}: {path} is a folder, not a file")
        if path and not os.path.isfile(path):
            raise UserError(f"{flag(name)}: file not found: {path}")
        if path and not os.access(path, os.R_OK):
            raise UserError(f"{flag(name)}: no permission to read {path}")
    for name in ("train_images", "val_images", "unlabeled_images"):
        path = getattr(cfg, name)
        if path and not os.path.isdir(path):
            raise UserError(f"{flag(name)}: directory not found: {path}")
    check_writable_dir(cfg.out, "--out")
    last = os.path.join(cfg.out, "last.pt")
    if not cfg.resume and os.path.exists(last):   # train.py would empty its logs and overwrite its checkpoint
        raise UserError(f"--out: {cfg.out} holds a run already ({last}): --resume {last} continues it; "
                        "another --out (or removing this one) starts anew")
    if cfg.resume and os.path.exists(last) and not os.path.samefile(cfg.resume, last):  # would mix two runs
        raise UserError(f"--out: {cfg.out} holds another run ({last}) than --resume {cfg.resume}: its checkpoint "
                        f"and logs would be overwritten; --resume {last} continues it, another --out continues "
                        f"{cfg.resume} in a folder of its own")
    if not (cfg.train_ann or cfg.labeled_ann):
        raise UserError("--train-ann: give --train-ann (or --labeled-ann) and --train-images")
    if cfg.backbone_weights not in ("imagenet", "none") and not os.path.isfile(cfg.backbone_weights):
        raise UserError(f"--backbone-weights: file not found: {cfg.backbone_weights}")
    check_device(cfg.device)


def _range_checks(cfg):
    """(ok, message) for each of the strong view's (low, high) ranges: 0 < low <= high <= its bound."""
    checks, inf = [], float("inf")
    for name, bound in (("strong_blur_sigma", inf), ("strong_erase_scale", 1), ("strong_erase_ratio", inf)):
        r = getattr(cfg, name)
        checks.append((len(r) == 2 and 0 < r[0] <= r[1] <= bound,
                       f"{name} must be two numbers low <= high in (0, {bound:g}], got {list(r)}"))
    return checks


def check_writable_dir(path, flag):
    """`path` is, or can be created as, a directory this process may write: checked before any work, so
    that a typo or a read-only disk is one line at the start, not a traceback after hours of training."""
    if os.path.exists(path) and not os.path.isdir(path):
        raise UserError(f"{flag}: {path} exists and is not a directory")
    existing = os.path.abspath(path)
    while not os.path.exists(existing):   # the nearest ancestor that exists: makedirs creates the rest
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        raise UserError(f"{flag}: cannot create {path}: {existing} is not a directory")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UserError(f"{flag}: cannot write in {existing} (no permission, or a read-only file system)")


def check_writable_file(path, flag):
    """`path` can be written as a file: not a directory, and its folder writable or creatable."""
    if os.path.isdir(path):
        raise UserError(f"{flag}: {path} is a directory, not a file")
    check_writable_dir(os.path.dirname(os.path.abspath(path)), flag)


def check_device(device):
    """--device names a device this torch can run on (cpu, cuda, cuda:N): one line otherwise, before the
    data is loaded, rather than torch's traceback at the first tensor moved there."""
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise UserError(f"--device: {device!r} is not a device (cpu, cuda or cuda:N)") from None
    if dev.type not in ("cpu", "cuda"):
        raise UserError(f"--device: {device}: only cpu and cuda are supported")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device: {device}: CUDA is not available to this torch {torch.__version__} (no GPU, "
                        "no driver, or a CPU-only build); use --device cpu")
    if dev.type == "cuda" and (dev.index or 0) >= torch.cuda.device_count():
        raise UserError(f"--device: {device}: this machine has {torch.cuda.device_count()} CUDA device(s)")


# Images per process (= per GPU) when --batch-size is 0. Supervised: torchvision's detection
# references (2 images per GPU, 8 GPUs -> 16). SED: Soft Teacher's 1 labeled + 4 unlabeled per GPU
# (its COCO configs); the unlabeled batch defaults to 4x the labeled one for any batch.
# Both fit one GPU at 800x1333 (design choice: the per-GPU recipe, not the total batch, is the
# default, so that `torchrun --nproc_per_node 8` gives the recipes' totals of 16 and 8 + 32).
DEFAULT_BATCH = {"supervised": 2, "sed": 1}
UNLABELED_RATIO = 4


def resolve_batch(cfg: TrainConfig, world_size=1) -> TrainConfig:
    """A copy of cfg with batch_size, unlabeled_batch_size (sed only) and lr filled in.

    batch_size 0 -> DEFAULT_BATCH[method]; unlabeled_batch_size 0 -> 4x batch_size (sed; 0 stays 0
    for supervised, which uses no unlabeled images); lr 0 -> the linear scaling rule
    0.02 * total labeled batch / 16 (Goyal et al. 2017; total = batch_size x world_size processes).
    """
    batch = cfg.batch_size or DEFAULT_BATCH[cfg.method]
    unlabeled = (cfg.unlabeled_batch_size or UNLABELED_RATIO * batch) if cfg.method == "sed" else 0
    lr = cfg.lr or 0.02 * batch * world_size / 16
    return dataclasses.replace(cfg, batch_size=batch, unlabeled_batch_size=unlabeled, lr=lr)


def describe_batch(cfg: TrainConfig, world_size=1) -> str:
    """The start-up line with the effective batch of a resolved config, e.g. for 8 SED processes:
    "batch: 1 labeled + 4 unlabeled images per process x 8 processes = 8 labeled + 32 unlabeled per
    iteration; lr 0.01"."""
    per, total = f"{cfg.batch_size} labeled", f"{cfg.batch_size * world_size} labeled"
    if cfg.method == "sed":
        per += f" + {cfg.unlabeled_batch_size} unlabeled"
        total += f" + {cfg.unlabeled_batch_size * world_size} unlabeled"
    processes = "process" if world_size == 1 else "processes"
    return f"batch: {per} images per process x {world_size} {processes} = {total} per iteration; lr {cfg.lr:g}"


def build_parser():
    """One flag per TrainConfig field, in the --help groups of HELP_GROUPS; help and defaults come
    from the dataclass. Errors are one line (sed.errors.ArgumentParser)."""
    parser = ArgumentParser(description="Train Faster R-CNN supervised or with SED.",
                            usage="%(prog)s --train-ann JSON --train-images DIR [flags, by group below]",
                            formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    defaults, group = TrainConfig(), parser
    first_fields = {name: title for title, name in HELP_GROUPS.items()}
    for f in dataclasses.fields(TrainConfig):
        if f.name in first_fields:
            group = parser.add_argument_group(first_fields[f.name])
        flag, default, kwargs = "--" + f.name.replace("_", "-"), getattr(defaults, f.name), {}
        if f.type is bool:
            kwargs = dict(action=argparse.BooleanOptionalAction)
        elif f.type in (tuple, list):
            kwargs = dict(nargs="+", type=type(default[0]) if default else int)
        else:
            kwargs = dict(type=f.type)
        choices = {"method": METHODS, "dtype": DTYPES, "scale_target": SCALE_TARGETS,
                   "hard_label_rois": HARD_LABEL_ROIS, "distill_norm": DISTILL_NORMS,
                   "distill_reg_norm": DISTILL_REG_NORMS,
                   "backbone_norm": ("frozen_bn", "group"), "backbone": tuple(RESNETS)}
        if f.name in choices:
            kwargs["choices"] = choices[f.name]
        group.add_argument(flag, default=default, help=f.metadata["help"], **kwargs)
    return parser


def parse_args(argv=None, check_files=True) -> TrainConfig:
    """CLI -> validated TrainConfig. Unknown flags and invalid values: one line on stderr, exit 2."""
    parser = build_parser()
    cfg = TrainConfig(**vars(parser.parse_args(argv)))
    try:
        validate(cfg, check_files)
    except UserError as e:
        parser.error(str(e))  # `error: <flag>: <problem>`, exit status 2
    return cfg


def from_dict(d) -> TrainConfig:
    """Rebuild a config saved with dataclasses.asdict (ignores keys of newer/older versions)."""
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    return TrainConfig(**{k: v for k, v in d.items() if k in names})


def model_options(cfg: TrainConfig) -> dict:
    """The keyword arguments of sed.build_model that a config fixes (train.py and eval.py)."""
    return dict(num_classes=cfg.num_classes, backbone=cfg.backbone, trainable_layers=cfg.trainable_layers,
                min_size=cfg.min_size, max_size=cfg.max_size, anchor_sizes=cfg.anchor_sizes,
                rpn_proposals=cfg.rpn_proposals, roi_batch_size=cfg.roi_batch_size,
                box_head_dim=cfg.box_head_dim, backbone_norm=cfg.backbone_norm,
                fpn_channels=cfg.fpn_channels)
