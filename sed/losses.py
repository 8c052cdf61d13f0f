"""SED's unsupervised losses (SED_NOTES.md sections 1-3), one named function per component.

    foreground_weights       section 3: teacher-confidence weights, detached
    weighted_mean            section 3: sum_i w_i l_i / (sum_i w_i + eps)
    rpn_distillation_loss    section 1: per-anchor BCE with the teacher's objectness + smooth L1 deltas
    roi_distillation_loss    section 1: per-RoI KL over C+1 classes + smooth L1 deltas of the teacher's class
    distillation_loss        section 1 on the strong view
    scale_consistency_loss   section 2: the same targets on the 0.5x view, levels shifted by one
    hard_pseudo_label_loss   thresholded teacher detections through the supervised losses (ablation)
    sed_losses               all of the above that cfg switches on -> dict of named loss tensors
    SEDObjective             supervised + unsupervised losses in one nn.Module forward (for DDP)
    unsup_weight_at          lambda_u as a function of the iteration (burn-in, ramp)

`sed_losses` returns only the individual terms (no "total" key) so that every value can be logged
and summed: `loss = sum(sup.values()) + unsup_weight_at(it, cfg) * sum(unsup.values())`.
Student and teacher are `sed.build_model` detectors (sed/model.py); targets come from
`sed.teacher.predict_soft`, views from `sed.views.make_views`.
"""
import torch
import torch.nn.functional as F
from torch import nn

import sed.rpn
from sed.views import SIZE_DIVISIBLE

# design choice: torchvision's Faster R-CNN smooth-L1 beta (RPN and RoI box losses) for the
# distilled deltas too; not a TrainConfig field yet.
SMOOTH_L1_BETA = 1.0 / 9
EPS = 1e-6  # keeps weighted_mean finite when every weight is 0 (SED_NOTES section 3)


def foreground_weights(p_fg, cfg):
    """Teacher-confidence weights of SED_NOTES section 3, detached.

    p_fg: [N] teacher foreground probability: objectness p_obj for RPN anchors, 1 - p_background
    for RoIs. Returns (w_cls, w_reg), each [N]:
      w_reg = p_fg ** cfg.weight_gamma              (sharpening, default gamma = 1)
      w_cls = max(w_reg, cfg.weight_floor)          (the floor keeps pushing background down)
    cfg.reweight False: w_cls = 1 (plain mean over anchors / RoIs) and w_reg = p_fg. design choice:
    section 1 defines the box distillation as weighted by teacher confidence, so switching off the
    re-weighting of section 3 does not let the deltas of background anchors count.
    """
    p_fg = p_fg.detach()
    if not cfg.reweight:
        return torch.ones_like(p_fg), p_fg
    w_reg = p_fg ** cfg.weight_gamma
    return w_reg.clamp(min=cfg.weight_floor), w_reg


def weighted_mean(loss, weight):
    """sum_i w_i l_i / (sum_i w_i + eps) (SED_NOTES section 3). loss, weight: [N]; weight detached.

    All-zero weights (or N = 0) give 0, not NaN.
    """
    weight = weight.detach()
    return (weight * loss).sum() / (weight.sum() + EPS)


def smooth_l1(deltas, target_deltas):
    """[N, 4], [N, 4] -> [N]: smooth L1 summed over the 4 box coordinates."""
    return F.smooth_l1_loss(deltas, target_deltas, beta=SMOOTH_L1_BETA, reduction="none").sum(dim=-1)


def rpn_distillation_loss(logits, deltas, teacher_prob, teacher_deltas, cfg):
    """SED_NOTES section 1, RPN: every anchor distils the teacher's objectness and box deltas.

    logits [N] student objectness logits; deltas [N, 4] student anchor deltas;
    teacher_prob [N] teacher objectness probability; teacher_deltas [N, 4] (any leading shape that
    flattens to these works, e.g. [B, R] and [B, R, 4]).
    Classification: binary cross-entropy with the soft target p_t, so its minimum (student = teacher)
    is the teacher's entropy H(p_t), not 0; its gradient sigmoid(s) - p_t is that of the Bernoulli KL.
    Regression: smooth L1, weighted by the teacher's objectness. Returns (loss_cls, loss_reg) scalars.
    """
    teacher_prob = teacher_prob.reshape(-1)
    w_cls, w_reg = foreground_weights(teacher_prob, cfg)
    bce = F.binary_cross_entropy_with_logits(logits.reshape(-1), teacher_prob, reduction="none")
    reg = smooth_l1(deltas.reshape(-1, 4), teacher_deltas.reshape(-1, 4))
    return weighted_mean(bce, w_cls), weighted_mean(reg, w_reg)


def roi_distillation_loss(class_logits, box_deltas, soft, cfg):
    """SED_NOTES section 1, RoI head: on the teacher's proposals, class distribution and box deltas.

    class_logits [P, C+1], box_deltas [P, (C+1)*4]: student outputs on soft.proposals (or on
    soft.proposals / 2 for the small view). Classification: T^2 * KL(p_t^T || softmax(s / T)) per
    RoI, T = cfg.distill_temperature (T^2 keeps the gradient scale independent of T, Hinton et al.
    2015). Regression: smooth L1 between the student's deltas of the teacher's arg-max foreground
    class and the teacher's deltas, weighted by the teacher's foreground probability.
    Returns (loss_cls, loss_reg) scalars; 0 when there are no proposals.
    """
    T = cfg.distill_temperature
    w_cls, w_reg = foreground_weights(soft.roi_fg, cfg)
    log_q = F.log_softmax(class_logits / T, dim=1)
    kl = F.kl_div(log_q, soft.roi_probs, reduction="none").sum(dim=1) * T**2  # [P]
    rows = torch.arange(len(box_deltas), device=box_deltas.device)
    deltas = box_deltas.reshape(len(box_deltas), class_logits.shape[1], 4)[rows, soft.roi_labels]  # [P, 4]
    reg = smooth_l1(deltas, soft.roi_deltas)
    return weighted_mean(kl, w_cls), weighted_mean(reg, w_reg)


def student_outputs(student, batch, proposals):
    """Student RPN outputs for every anchor and RoI-head outputs on the given proposals.

    Returns obj [B, R] logits, deltas [B, R, 4], level_sizes (anchors per level),
    class_logits [P, C+1], box_deltas [P, (C+1)*4].
    """
    feats = student.features(batch.tensors)
    obj, deltas = student.rpn.head(feats)
    level_sizes = [o[0].numel() for o in obj]  # A * H_l * W_l
    obj, deltas = sed.rpn.flatten_outputs(obj, deltas)
    class_logits, box_deltas = student.roi_heads.predict(feats, proposals)
    return obj, deltas, level_sizes, class_logits, box_deltas


def distillation_loss(student, strong_batch, soft, cfg):
    """SED_NOTES section 1: the student on the strong view against the teacher on the weak view
    (same geometry, so anchor a and proposal r mean the same image region in both)."""
    obj, deltas, _, class_logits, box_deltas = student_outputs(student, strong_batch, soft.proposals)
    rpn_cls, rpn_reg = rpn_distillation_loss(obj, deltas, soft.rpn_prob, soft.rpn_deltas, cfg)
    roi_cls, roi_reg = roi_distillation_loss(class_logits, box_deltas, soft, cfg)
    return {"loss_rpn_distill_cls": rpn_cls, "loss_rpn_distill_reg": rpn_reg,
            "loss_roi_distill_cls": roi_cls, "loss_roi_distill_reg": roi_reg}


def scale_consistency_loss(student, small_batch, soft, cfg):
    """SED_NOTES section 2: the student on the 0.5x strong view against the same teacher targets.

    RPN: small-image level P(l-1) has the grid of original level P(l) and anchors of half the size
    at the same places, so, in the flattened (level, y, x, anchor) order, the student's P2-P5 block
    lines up element by element with the teacher's P3-P6 block. Box deltas are relative to the
    anchor size, hence scale-invariant: the teacher's deltas are the targets unchanged.
    (Exact for the anchor centres and the square anchors; the 1:2 and 2:1 anchors differ by 1 px
    after the doubling because torchvision rounds every level's cell anchors to whole pixels.)
    RoI head: teacher proposal B corresponds to B / 2 on the small image; same class and delta targets.
    """
    if any(side % (SIZE_DIVISIBLE // 2) for side in small_batch.tensors.shape[-2:]):
        raise ValueError(f"scale consistency: the small view {tuple(small_batch.tensors.shape[-2:])} is not half "
                         f"of a batch padded to a multiple of {SIZE_DIVISIBLE}; build it with sed.views.make_views")
    obj, deltas, level_sizes, class_logits, box_deltas = student_outputs(
        student, small_batch, [p / 2 for p in soft.proposals])
    small = slice(0, sum(level_sizes[:-1]))                       # small P2..P5
    original = slice(soft.level_sizes[0], sum(soft.level_sizes))  # original P3..P6
    if level_sizes[:-1] != soft.level_sizes[1:]:
        raise ValueError(f"scale consistency: small-view anchors per level {level_sizes[:-1]} do not match "
                         f"the original's P3-P6 {soft.level_sizes[1:]}; pad to a multiple of 64 (make_views)")
    rpn_cls, rpn_reg = rpn_distillation_loss(obj[:, small], deltas[:, small], soft.rpn_prob[:, original],
                                             soft.rpn_deltas[:, original], cfg)
    roi_cls, roi_reg = roi_distillation_loss(class_logits, box_deltas, soft, cfg)
    return {"loss_scale_rpn_cls": rpn_cls, "loss_scale_rpn_reg": rpn_reg,
            "loss_scale_roi_cls": roi_cls, "loss_scale_roi_reg": roi_reg}


def pseudo_targets(detections, threshold, scale=1.0):
    """Teacher detections with score >= threshold as hard targets, boxes multiplied by scale."""
    return [{"boxes": d["boxes"][d["scores"] >= threshold] * scale,
             "labels": d["labels"][d["scores"] >= threshold]} for d in detections]


def hard_pseudo_label_loss(student, strong_batch, small_batch, soft, cfg):
    """Classic thresholded pseudo-labels (SED_NOTES section 1 "optional", and `--no-distill`).

    Teacher detections with score >= cfg.pseudo_threshold become targets of the four standard
    Faster R-CNN losses on the strong view (design choice: all four, box regression included);
    an image without confident detections is trained as all background. With small_batch given
    (scale consistency without distillation) the same labels / 2 are targets on the 0.5x view.
    """
    targets = pseudo_targets(soft.detections, cfg.pseudo_threshold)
    losses = {k.replace("loss_", "loss_hard_"): v for k, v in student.losses(strong_batch, targets).items()}
    if small_batch is not None:
        small_targets = pseudo_targets(soft.detections, cfg.pseudo_threshold, scale=0.5)
        losses |= {k.replace("loss_", "loss_hard_scale_"): v
                   for k, v in student.losses(small_batch, small_targets).items()}
    return losses


def sed_losses(student, strong_batch, small_batch, soft, cfg):
    """All unsupervised loss terms the cfg switches on, as a dict of named scalar tensors.

    cfg.distill: sections 1 (+ 2 with cfg.scale_consistency); cfg.hard_pseudo_labels or not
    cfg.distill: the hard pseudo-label loss (on the small view too when scale consistency is on
    and distillation off). Sum the values for L_unsup; there is no "total" key.
    """
    losses = {}
    if cfg.distill:
        losses |= distillation_loss(student, strong_batch, soft, cfg)
        if cfg.scale_consistency:
            losses |= scale_consistency_loss(student, small_batch, soft, cfg)
    if cfg.hard_pseudo_labels or not cfg.distill:
        small = small_batch if cfg.scale_consistency and not cfg.distill else None
        losses |= hard_pseudo_label_loss(student, strong_batch, small, soft, cfg)
    return losses


class SEDObjective(nn.Module):
    """One SED step's student losses inside one forward.

    DistributedDataParallel only synchronises the gradients of computation done in the wrapped
    module's forward, so train.py wraps this module, not the bare student:
        objective = DDP(SEDObjective(student, cfg))
        sup, unsup = objective(images, targets, strong_batch, small_batch, soft)
    soft=None (burn-in, or lambda_u = 0) returns unsup = {} and runs only the supervised losses.
    """

    def __init__(self, student, cfg):
        super().__init__()
        self.student = student
        self.cfg = cfg

    def forward(self, labeled_images, labeled_targets, strong_batch=None, small_batch=None, soft=None):
        sup = self.student(labeled_images, labeled_targets)  # the 4 Faster R-CNN losses
        if soft is None:
            return sup, {}
        return sup, sed_losses(self.student, strong_batch, small_batch, soft, self.cfg)


def unsup_weight_at(iteration, cfg):
    """lambda_u at an iteration (0-based): 0 during the cfg.burn_in_iters supervised burn-in, then a
    linear ramp reaching cfg.unsup_weight after cfg.rampup_iters iterations (0 = a step)."""
    t = iteration - cfg.burn_in_iters
    if t < 0:
        return 0.0
    if cfg.rampup_iters <= 0:
        return cfg.unsup_weight
    return cfg.unsup_weight * min(1.0, (t + 1) / cfg.rampup_iters)
