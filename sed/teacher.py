"""The SED teacher: an exponential moving average of the student (SED_NOTES.md "Framework") and
its soft outputs on the weak view, the targets of the distillation losses (sed/losses.py).
"""
import copy
from dataclasses import dataclass

import torch
from torch import Tensor

import sed.rpn
from sed.config import hard_labels_on
from sed.roi_heads import class_deltas


def make_teacher(student):
    """A frozen copy of the student (unwrapped from DDP), in eval mode: trained by EMA, not gradients."""
    teacher = copy.deepcopy(getattr(student, "module", student))
    teacher.requires_grad_(False)
    return teacher.eval()


def ema_momentum_at(iteration, cfg):
    """EMA momentum m at an iteration. design choice (--burn-in-copy, as Unbiased Teacher): m = 0 during
    the supervised burn-in, i.e. the teacher is a copy of the student when distillation starts; without
    it, cfg.ema_momentum throughout (Mean Teacher)."""
    return 0.0 if cfg.burn_in_copy and iteration < cfg.burn_in_iters else cfg.ema_momentum


@torch.no_grad()
def ema_update(teacher, student, momentum):
    """theta_t <- m * theta_t + (1 - m) * theta_s for every parameter; buffers are copied.

    Call after optimizer.step(). student may be DDP-wrapped (its .module is used).
    """
    student = getattr(student, "module", student)
    student_params = dict(student.named_parameters())
    for name, p in teacher.named_parameters():
        p.mul_(momentum).add_(student_params[name].detach(), alpha=1 - momentum)
    student_buffers = dict(student.named_buffers())
    for name, b in teacher.named_buffers():
        b.copy_(student_buffers[name])


@dataclass
class SoftTargets:
    """Teacher outputs on the weak view, all detached: the targets of SED_NOTES sections 1-2.

    Coordinates are those of the weak batch (resized, padded), which the strong view shares.
    """
    rpn_prob: Tensor         # [B, R] objectness probability per anchor, flattened (level, y, x, anchor)
    rpn_target_logits: Tensor  # [B, R] the distillation target's logits: logit / cfg.target_sharpen
    rpn_deltas: Tensor       # [B, R, 4] anchor deltas (model.rpn.box_coder, weights 1,1,1,1)
    level_sizes: list        # anchors per level P2..P6 (A * H_l * W_l); they cut rpn_* into levels
    proposals: list          # per image [P_i, 4] xyxy, the teacher's top cfg.teacher_proposals after NMS
    roi_probs: Tensor        # [P, C+1] target class distribution, softmax(logits / (T * cfg.target_sharpen)),
                             # T = cfg.distill_temperature, P = sum P_i
    roi_labels: Tensor       # [P] arg-max foreground class, 1..C
    roi_deltas: Tensor       # [P, 4] deltas of that class (model.roi_heads.box_coder, weights 10,10,5,5)
    roi_fg: Tensor           # [P] 1 - p_background at temperature 1: the RoI weight of SED_NOTES section 3
    detections: list = None  # per image {"boxes", "scores", "labels"} (batch coordinates), for hard labels


@torch.no_grad()
def predict_soft(teacher, weak_batch, cfg):
    """Teacher forward on the weak batch (from sed.views.make_views) -> SoftTargets.

    With hard labels the RoI head runs once, on all proposals: `detect`'s pass, whose first
    cfg.teacher_proposals rows per image (propose() sorts by objectness) are the distillation's RoIs.
    """
    feats = teacher.features(weak_batch.tensors)
    obj, deltas = teacher.rpn.head(feats)
    level_sizes = [o[0].numel() for o in obj]
    anchors = teacher.rpn.anchors(weak_batch, feats)
    all_proposals = teacher.rpn.propose(anchors, obj, deltas, weak_batch.image_sizes)
    proposals = [p[:cfg.teacher_proposals] for p in all_proposals]
    obj, deltas = (x.float() for x in sed.rpn.flatten_outputs(obj, deltas))  # float32 targets under autocast
    hard = hard_labels_on(cfg)
    class_logits, box_deltas = teacher.roi_heads.predict(feats, all_proposals if hard else proposals)
    detections = None
    if hard:  # = teacher.detect(weak_batch), reusing the features and the RoI outputs
        detections = teacher.roi_heads.detections(class_logits, box_deltas, all_proposals, weak_batch.image_sizes)
        per_image = [len(p) for p in all_proposals]  # each image's first rows: the distillation's RoIs
        class_logits, box_deltas = (torch.cat([x[:cfg.teacher_proposals] for x in t.split(per_image)])
                                    for t in (class_logits, box_deltas))
    class_logits, box_deltas = class_logits.float(), box_deltas.float()
    probs = class_logits.softmax(dim=1)
    labels = probs[:, 1:].argmax(dim=1) + 1
    sharpen = cfg.target_sharpen  # design choice, not in SED_NOTES (README "Experiment"): < 1 sharpens the targets
    return SoftTargets(
        rpn_prob=obj.sigmoid(), rpn_target_logits=obj / sharpen, rpn_deltas=deltas, level_sizes=level_sizes,
        proposals=proposals,
        roi_probs=(class_logits / (cfg.distill_temperature * sharpen)).softmax(dim=1), roi_labels=labels,
        roi_deltas=class_deltas(box_deltas, labels), roi_fg=1 - probs[:, 0], detections=detections)
