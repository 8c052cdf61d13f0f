"""SED's unsupervised losses (SED_NOTES.md sections 1-3), one named function per component.

    foreground_weights       section 3: teacher-confidence weights, detached
    weighted_mean            section 3: sum_i w_i l_i / (sum_i w_i + eps)
    distill_mean             sum w l / N (count), weighted_mean (weight), or fg / bg halves (split)
    bernoulli_kl             KL between two objectness probabilities, from their logits
    rpn_distillation_loss    section 1: per-anchor Bernoulli KL to the teacher's objectness + smooth L1 deltas
    roi_distillation_loss    section 1: per-RoI KL over C+1 classes + smooth L1 deltas of the teacher's class
    student_outputs          one student forward on one view (dense RPN outputs, RoI head on given boxes)
    distillation_loss        section 1: teacher -> student on the full-size strong view
    scale_targets            section 2: what the 0.5x view is compared with (--scale-target)
    scale_consistency_loss   section 2: student 0.5x <-> student full size, levels shifted by one
    hard_pseudo_label_loss   thresholded teacher detections through the supervised losses (baseline)
    teacher_roi_losses       the same on the student's outputs for the teacher's proposals (--hard-label-rois)
    sed_losses               all of the above that cfg switches on -> dict of named loss tensors
    SEDObjective             supervised + unsupervised losses in one nn.Module forward (for DDP)
    unsup_weight_at          lambda_u as a function of the iteration (burn-in, ramp)

`sed_losses` returns only the individual terms (no "total" key) so that every value can be logged
and summed: `loss = sum(sup.values()) + unsup_weight_at(it, cfg) * sum(unsup.values())`.
Student and teacher are `sed.build_model` detectors (sed/model.py); targets come from
`sed.teacher.predict_soft`, views from `sed.views.make_views`.
"""
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import sed.rpn
from sed.config import hard_labels_on
from sed.roi_heads import class_deltas
from sed.views import SIZE_DIVISIBLE

BOX_LOSSES = ("loss_rpn_box_reg", "loss_box_reg")  # the box regression terms of sed.rpn and sed.roi_heads
EPS = 1e-6  # keeps weighted_mean finite when every weight is 0 (SED_NOTES section 3)


def foreground_weights(p_fg, cfg, anchors=False):
    """Teacher-confidence weights of SED_NOTES section 3, detached.

    p_fg: [N] teacher foreground probability: objectness p_obj for RPN anchors (anchors=True),
    1 - p_background for RoIs. Returns (w_cls, w_reg), each [N]:
      w = p_fg ** cfg.weight_gamma                  (sharpening, default gamma = 1)
      w_cls = max(w, cfg.weight_floor)              (the floor keeps pushing background down)
      w_reg = w, and 0 where p_fg < cfg.distill_reg_threshold (below)
    cfg.reweight False, or anchors without cfg.reweight_anchors: w_cls = 1 (plain mean over anchors /
    RoIs) and w_reg = p_fg. design choice (--confidence-weighted-deltas; without it w_reg = 1 there):
    section 1 defines the box distillation as weighted by teacher confidence, so switching off the
    re-weighting of section 3 does not let the deltas of background anchors count.
    design choice (--reweight-anchors, off by default): the RPN's soft objectness is graded by overlap,
    and weighting anchors by it centres the loss on the half-covering anchors that the supervised RPN
    loss leaves out (IoU 0.3-0.7); README "Experiment".
    In both cases w_reg = 0 where p_fg < cfg.distill_reg_threshold (design choice, deviates from SED_NOTES
    section 3, which has no hard threshold; README "Experiment"): a weak teacher's deltas on what is
    probably background are noise, not boxes.
    """
    p_fg = p_fg.detach()
    confident = (p_fg >= cfg.distill_reg_threshold).to(p_fg.dtype)
    if not cfg.reweight or (anchors and not cfg.reweight_anchors):
        return torch.ones_like(p_fg), (p_fg if cfg.confidence_weighted_deltas else 1) * confident
    w_reg = p_fg ** cfg.weight_gamma
    return w_reg.clamp(min=cfg.weight_floor), w_reg * confident


def weighted_mean(loss, weight):
    """sum_i w_i l_i / (sum_i w_i + eps) (SED_NOTES section 3). loss, weight: [N]; weight detached.

    All-zero weights (or N = 0) give 0, not NaN.
    """
    weight = weight.detach()
    return (weight * loss).sum() / (weight.sum() + EPS)


def distill_mean(loss, weight, p_fg, norm):
    """The mean over anchors or RoIs of a distillation term (classification or box deltas). loss, weight,
    p_fg: [N]; norm: cfg.distill_norm for the classes, cfg.distill_reg_norm for the box deltas.

    "count" (design choice, the classes' default; README "Experiment"): sum_i w_i l_i / N. The
    weights screen background down, as section 3 wants, without renormalising the loss onto the few
    probable objects: the notes' weight-sum normalisation gives the RoIs half-covering an object
    (teacher p_fg 0.3-0.7, IoU-labelled background by the supervised RoI loss) most of the weight,
    as it did for the anchors. Anchors, whose class weights are 1 by default, get their plain mean.
    For the box deltas (design choice, --distill-reg-norm count) it is the supervised box losses' rule:
    torchvision's RPN and RoI box losses sum over the positives and divide by all sampled anchors / RoIs,
    where the weight sum divides by the few confident ones only.
    "weight": weighted_mean over all N (SED_NOTES section 3 as written; the box deltas' default).
    "split" (classes only; design choice, SED_NOTES "Known failure mode"): the probable foreground (teacher
    p_fg >= 0.5) and the rest are weighted means of their own, half each, so that thousands of
    background anchors cannot outweigh a few objects (as the balanced anchor and RoI sampling of
    the supervised Faster R-CNN losses does, torchvision's positive_fraction).
    """
    if norm == "count":
        return weighted_mean(weight.detach() * loss, torch.ones_like(loss))  # with w = 1: "weight", bit for bit
    if norm == "weight":
        return weighted_mean(loss, weight)
    fg = p_fg.detach() >= 0.5
    return 0.5 * (weighted_mean(loss[fg], weight[fg]) + weighted_mean(loss[~fg], weight[~fg]))


def smooth_l1(deltas, target_deltas, beta):
    """[N, 4], [N, 4] -> [N]: smooth L1 summed over the 4 box coordinates; beta = cfg.distill_smooth_l1_beta
    (design choice: torchvision's Faster R-CNN box losses' 1/9 by default)."""
    return F.smooth_l1_loss(deltas, target_deltas, beta=beta, reduction="none").sum(dim=-1)


def bernoulli_kl(logits, target_logits):
    """KL(sigmoid(t) || sigmoid(s)) per element, flattened to [N], from the logits s and t (same shapes):
    the binary cross-entropy with the soft target sigmoid(t) minus that target's entropy, so 0 where
    s = t. The gradient is sigmoid(s) - sigmoid(t) into s and, where t is not detached (--scale-target
    mutual), (t - s) * sigmoid'(t) into t: 0 where the two agree. (The cross-entropy alone would push t
    by -s * sigmoid'(t) even there: towards background wherever the other branch says background.)
    The sigmoid runs before the flattening, and the cross-entropy after it, as before stop 32: the
    student's gradient stays bit for bit what it was (a sigmoid over a copy rounds differently)."""
    target = target_logits.sigmoid().reshape(-1)
    logits, target_logits = logits.reshape(-1), target_logits.reshape(-1)
    return (F.binary_cross_entropy_with_logits(logits, target, reduction="none")
            - F.binary_cross_entropy_with_logits(target_logits, target, reduction="none"))


def rpn_distillation_loss(logits, deltas, target_logits, target_deltas, p_fg, cfg):
    """SED_NOTES section 1, RPN: every anchor distils a target objectness and box deltas.

    logits [N] student objectness logits; deltas [N, 4] student anchor deltas; target_logits [N] target
    objectness logits; target_deltas [N, 4]; p_fg [N] the teacher's objectness, source of the weights
    (section 3). Any leading shapes that flatten to these work, e.g. [B, R] and [B, R, 4].
    Classification: `bernoulli_kl` to the target (0 when the student equals it; until stop 32 the
    binary cross-entropy, whose minimum is the target's entropy, with the same gradient into the student).
    Regression: smooth L1, weighted by the teacher's objectness, times cfg.distill_reg_weight.
    Returns (loss_cls, loss_reg) scalars.
    """
    w_cls, w_reg = foreground_weights(p_fg.reshape(-1), cfg, anchors=True)
    kl = bernoulli_kl(logits, target_logits)
    reg = smooth_l1(deltas.reshape(-1, 4), target_deltas.reshape(-1, 4), cfg.distill_smooth_l1_beta)
    reg = cfg.distill_reg_weight * distill_mean(reg, w_reg, p_fg.reshape(-1), cfg.distill_reg_norm)
    return distill_mean(kl, w_cls, p_fg.reshape(-1), cfg.distill_norm), reg


def roi_distillation_loss(class_logits, deltas, target_probs, target_deltas, p_fg, cfg):
    """SED_NOTES section 1, RoI head: on the teacher's proposals, class distribution and box deltas.

    class_logits [P, C+1] student logits; deltas [P, 4] the student's deltas of the teacher's arg-max
    foreground class (`class_deltas`); target_probs [P, C+1] target distribution at temperature
    T = cfg.distill_temperature; target_deltas [P, 4]; p_fg [P] = 1 - p_background of the teacher, source
    of the weights. Classification: T^2 * KL(p_t^T || softmax(s / T)) per RoI (T^2 keeps the gradient
    scale independent of T, Hinton et al. 2015). Regression: smooth L1, weighted by the teacher's
    foreground probability, times cfg.distill_reg_weight. Returns (loss_cls, loss_reg) scalars; 0 when
    there are no proposals.
    """
    T = cfg.distill_temperature
    w_cls, w_reg = foreground_weights(p_fg, cfg)
    log_q = F.log_softmax(class_logits / T, dim=1)
    kl = F.kl_div(log_q, target_probs, reduction="none").sum(dim=1) * T**2  # [P]
    reg = smooth_l1(deltas, target_deltas, cfg.distill_smooth_l1_beta)
    reg = cfg.distill_reg_weight * distill_mean(reg, w_reg, p_fg, cfg.distill_reg_norm)
    return distill_mean(kl, w_cls, p_fg, cfg.distill_norm), reg


@dataclass
class StudentOutputs:
    """One student forward on one view: dense RPN outputs and RoI-head outputs on given boxes."""
    features: list       # [P2, ..., P6] of the view, [B, C, H_l, W_l]
    rpn_head: tuple      # student.rpn.head(features): per-level objectness [B, A, H_l, W_l], deltas [B, 4A, H_l, W_l]
    obj: Tensor          # [B, R] objectness logits, flattened (level, y, x, anchor)
    deltas: Tensor       # [B, R, 4] anchor deltas
    level_sizes: list    # anchors per level P2..P6 (A * H_l * W_l)
    class_logits: Tensor  # [P, C+1] on the given boxes (the teacher's proposals, or them / 2); None: no boxes given
    box_deltas: Tensor   # [P, 4] deltas of the teacher's arg-max foreground class (soft.roi_labels)
    all_box_deltas: Tensor = None  # [P, (C+1) * 4] every class's deltas (hard labels on the teacher's RoIs)


def student_outputs(student, batch, proposals, labels):
    """Student RPN outputs for every anchor, RoI-head outputs on `proposals` (list of [P_i, 4]; None:
    the RoI head is not run and its fields are None); labels [P] picks each RoI's class deltas."""
    feats = student.features(batch.tensors)
    head = student.rpn.head(feats)
    level_sizes = [o[0].numel() for o in head[0]]  # A * H_l * W_l
    obj, deltas = sed.rpn.flatten_outputs(*head)
    if proposals is None:
        return StudentOutputs(feats, head, obj, deltas, level_sizes, None, None)
    class_logits, box_deltas = student.roi_heads.predict(feats, proposals)
    return StudentOutputs(feats, head, obj, deltas, level_sizes, class_logits, class_deltas(box_deltas, labels),
                          box_deltas)


def distillation_loss(full, soft, cfg):
    """SED_NOTES section 1 (Figure 1 "Self-Distillation"): the student on the full-size strong view
    against the teacher on the weak view (same geometry: anchor a and proposal r are the same image
    region in both). full: StudentOutputs of the strong view on soft.proposals. design choice (which
    heads the term uses, SED_NOTES "Framework"): the RPN part with cfg.distill_rpn, the RoI-head part
    with cfg.distill_roi, both by default."""
    losses = {}
    if cfg.distill_rpn:
        rpn_cls, rpn_reg = rpn_distillation_loss(full.obj, full.deltas, soft.rpn_target_logits, soft.rpn_deltas,
                                                 soft.rpn_prob, cfg)
        losses |= {"loss_rpn_distill_cls": rpn_cls, "loss_rpn_distill_reg": rpn_reg}
    if cfg.distill_roi:
        roi_cls, roi_reg = roi_distillation_loss(full.class_logits, full.box_deltas, soft.roi_probs,
                                                 soft.roi_deltas, soft.roi_fg, cfg)
        losses |= {"loss_roi_distill_cls": roi_cls, "loss_roi_distill_reg": roi_reg}
    return losses


def scale_targets(full, soft, cfg):
    """The targets of the 0.5x view (SED_NOTES section 2, `--scale-target`), at full-size levels P3-P6:
    (rpn_logits [B, R'], rpn_deltas [B, R', 4], roi_probs [P, C+1], roi_deltas [P, 4]); the classes' in
    float32 (under autocast the student's outputs are bfloat16 or float16).

    student: the student's full-size outputs, detached (Figure 1: the link joins the student's two
             sizes; design choice: the larger view is the target, as the detector is better on larger
             objects); mutual: the same, not detached (gradient into both sizes); teacher: the
             teacher's outputs (sed's first version, which deviates from the figure).
    """
    p3_p6 = slice(soft.level_sizes[0], sum(soft.level_sizes))
    if cfg.scale_target == "teacher":
        return soft.rpn_target_logits[:, p3_p6], soft.rpn_deltas[:, p3_p6], soft.roi_probs, soft.roi_deltas
    keep = (lambda t: t.detach()) if cfg.scale_target == "student" else (lambda t: t)  # mutual: not detached
    obj, deltas = keep(full.obj[:, p3_p6].float()), keep(full.deltas[:, p3_p6])
    if not cfg.scale_roi:  # no RoI-head part (--no-scale-roi): the full-size box head may not have run
        return obj, deltas, None, None
    probs = (keep(full.class_logits.float()) / cfg.distill_temperature).softmax(dim=1)
    return obj, deltas, probs, keep(full.box_deltas)


def scale_consistency_loss(small, full, soft, cfg):
    """SED_NOTES section 2 (Figure 1 "Scale Equivalent"): the student on the 0.5x strong view against
    `scale_targets` (by default the student's own full-size outputs), weighted by the teacher's
    foreground probabilities (section 3, one re-weighting for both terms: the RoIs; the anchors only
    with --reweight-anchors).

    RPN: small-image level P(l-1) has the grid of full-size level P(l) and anchors of half the size
    at the same places, so, in the flattened (level, y, x, anchor) order, the small P2-P5 block lines
    up element by element with the full-size P3-P6 block. Box deltas are relative to the anchor size,
    hence scale-invariant: the full-size deltas are the targets unchanged. (Exact for the anchor
    centres and the square anchors; the 1:2 and 2:1 anchors differ by 1 px per side after the doubling because
    torchvision rounds every level's cell anchors to whole pixels.)
    RoI head: proposal B on the full view is B / 2 on the small one (small.* were computed there);
    without cfg.scale_roi (design choice, `--no-scale-roi`) this part is left out and small has no
    RoI outputs; without cfg.scale_rpn (design choice, `--no-scale-rpn`) the RPN part is.
    """
    if small.level_sizes[:-1] != soft.level_sizes[1:]:
        raise ValueError(f"scale consistency: small-view anchors per level {small.level_sizes[:-1]} do not "
                         f"match the full view's P3-P6 {soft.level_sizes[1:]}; pad to a multiple of "
                         f"{SIZE_DIVISIBLE} (sed.views.make_views)")
    p2_p5 = slice(0, sum(small.level_sizes[:-1]))
    p3_p6 = slice(soft.level_sizes[0], sum(soft.level_sizes))
    rpn_logits, rpn_deltas, roi_probs, roi_deltas = scale_targets(full, soft, cfg)
    losses = {}
    if cfg.scale_rpn:
        rpn_cls, rpn_reg = rpn_distillation_loss(small.obj[:, p2_p5], small.deltas[:, p2_p5], rpn_logits,
                                                 rpn_deltas, soft.rpn_prob[:, p3_p6], cfg)
        losses |= {"loss_scale_rpn_cls": rpn_cls, "loss_scale_rpn_reg": rpn_reg}
    if cfg.scale_roi:
        roi_cls, roi_reg = roi_distillation_loss(small.class_logits, small.box_deltas, roi_probs, roi_deltas,
                                                 soft.roi_fg, cfg)
        losses |= {"loss_scale_roi_cls": roi_cls, "loss_scale_roi_reg": roi_reg}
    return losses


def check_small_view(small_batch):
    """The 0.5x view must be half of a batch padded to a multiple of SIZE_DIVISIBLE (section 2)."""
    if any(side % (SIZE_DIVISIBLE // 2) for side in small_batch.tensors.shape[-2:]):
        raise ValueError(f"scale consistency: the small view {tuple(small_batch.tensors.shape[-2:])} is not half "
                         f"of a batch padded to a multiple of {SIZE_DIVISIBLE}; build it with sed.views.make_views")


def pseudo_targets(detections, threshold):
    """Teacher detections with score >= threshold as hard targets (boxes in the weak batch's pixels)."""
    return [{"boxes": d["boxes"][d["scores"] >= threshold],
             "labels": d["labels"][d["scores"] >= threshold]} for d in detections]


def hard_pseudo_label_loss(student, strong_batch, soft, cfg, full=None):
    """Classic thresholded pseudo-labels (SED_NOTES section 1, the teacher-student baseline).

    Teacher detections with score >= cfg.pseudo_threshold become targets of the four standard
    Faster R-CNN losses on the strong view (design choice, --hard-label-box-losses: all four, box
    regression included; without it the two classification losses only, as Unbiased Teacher), the
    box-head loss on cfg.hard_label_roi_fraction of the RoIs sampled per labeled image (design choice);
    an image without confident detections is trained as all background. full: the student's
    StudentOutputs on strong_batch when the distillation or the scale term already computed them: one
    backbone and RPN head pass for both terms, and with cfg.hard_label_rois "teacher" their box-head
    outputs on the teacher's proposals are the RoIs of the box-head loss too (`teacher_roi_losses`).
    """
    targets = pseudo_targets(soft.detections, cfg.pseudo_threshold)
    if full is not None and cfg.hard_label_rois == "teacher":
        losses = teacher_roi_losses(student, strong_batch, full, soft.proposals, targets)
    else:
        roi_batch_size = max(1, round(cfg.hard_label_roi_fraction * student.roi_heads.batch_size_per_image))
        losses = student.losses(strong_batch, targets, *((full.features, full.rpn_head) if full else (None, None)),
                                roi_batch_size=roi_batch_size)
    if not cfg.hard_label_box_losses:
        losses = {k: v for k, v in losses.items() if k not in BOX_LOSSES}
    return {k.replace("loss_", "loss_hard_"): v for k, v in losses.items()}


def teacher_roi_losses(student, strong_batch, full, proposals, targets):
    """The four Faster R-CNN losses of hard targets on outputs the student already has (--hard-label-rois
    teacher): the RPN loss on full's dense outputs (anchors sampled as in supervised training) and the
    box-head loss on full's outputs for the teacher's proposals (list of [P_i, 4]), each labelled by IoU
    >= 0.5 with a target (design choice: every proposal, none sampled and no target box added; the
    student's own proposals are not computed)."""
    anchors = torch.cat(student.rpn.anchors(strong_batch, full.features))  # [R, 4]
    rpn = student.rpn.loss(anchors, full.obj, full.deltas, targets)
    labels, reg_targets = student.roi_heads.label_all(proposals, targets)
    return {**rpn, **student.roi_heads.fast_rcnn_loss(full.class_logits, full.all_box_deltas, labels, reg_targets)}


def full_size_rois_used(cfg):
    """Whether a term uses the student's full-size box-head outputs on the teacher's proposals: the
    distillation's RoI-head part, the scale link's RoI-head targets, or the hard labels' box-head loss
    with --hard-label-rois teacher."""
    return ((cfg.distill and cfg.distill_roi)
            or (cfg.scale_consistency and cfg.scale_roi and cfg.scale_target != "teacher")
            or (hard_labels_on(cfg) and cfg.hard_label_rois == "teacher"))


def sed_losses(student, strong_batch, small_batch, soft, cfg):
    """All unsupervised loss terms the cfg switches on, as a dict of named scalar tensors (Figure 1).

    The student runs once on the full-size strong view (its outputs feed self-distillation, are the
    scale targets and, with hard labels, its features and RPN head outputs feed that loss too) and, with scale
    consistency, once on the 0.5x view. cfg.distill: section 1;
    cfg.scale_consistency: section 2; sed.config.hard_labels_on: the hard
    pseudo-label loss. Sum the values for L_unsup; there is no "total" key.
    """
    losses = {}
    full = None
    if cfg.distill or (cfg.scale_consistency and cfg.scale_target != "teacher"):
        proposals = soft.proposals if full_size_rois_used(cfg) else None  # None: the box head is not run
        full = student_outputs(student, strong_batch, proposals, soft.roi_labels)
    if cfg.distill:
        losses |= distillation_loss(full, soft, cfg)
    if cfg.scale_consistency:
        check_small_view(small_batch)
        small_proposals = [p / 2 for p in soft.proposals] if cfg.scale_roi else None
        small = student_outputs(student, small_batch, small_proposals, soft.roi_labels)
        losses |= scale_consistency_loss(small, full, soft, cfg)
    if hard_labels_on(cfg):
        losses |= hard_pseudo_label_loss(student, strong_batch, soft, cfg, full)
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
