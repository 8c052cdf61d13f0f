"""SED loss functions on small hand-made tensors (values computed by hand in the comments)."""
import dataclasses
import itertools
import math
from types import SimpleNamespace

import pytest
import torch

import sed
from sed.config import TrainConfig
from sed.losses import (SEDObjective, distill_mean, foreground_weights, roi_distillation_loss,
                        hard_pseudo_label_loss, rpn_distillation_loss, sed_losses, student_outputs,
                        unsup_weight_at, weighted_mean)
from sed.roi_heads import class_deltas
from sed.teacher import make_teacher, predict_soft
from sed.views import make_views

LN2 = math.log(2)
BETA = 1 / 9  # smooth L1 beta (torchvision)
ALL_DELTAS = TrainConfig(distill_reg_threshold=0.0, distill_reg_weight=1.0,  # box deltas distilled wherever w > 0
                         reweight_anchors=True,  # and anchors re-weighted as RoIs
                         distill_norm="weight")  # sum w l / sum w (SED_NOTES section 3)


def smooth_l1(x, beta=BETA):
    return 0.5 * x * x / beta if abs(x) < beta else abs(x) - 0.5 * beta


def test_weighted_mean_of_constant_is_the_constant():
    loss = torch.full((5,), 3.0)
    assert weighted_mean(loss, torch.tensor([0.1, 0.2, 0.0, 1.0, 0.7])).item() == pytest.approx(3.0, rel=1e-5)


def test_weighted_mean_hand_value():
    # (1*2 + 3*4) / (1 + 3) = 3.5
    assert weighted_mean(torch.tensor([2.0, 4.0]), torch.tensor([1.0, 3.0])).item() == pytest.approx(3.5, rel=1e-5)


@pytest.mark.parametrize("n", [0, 4])
def test_weighted_mean_zero_weights_gives_zero_not_nan(n):
    loss = torch.rand(n, requires_grad=True)
    out = weighted_mean(loss, torch.zeros(n))
    out.backward()
    assert out.item() == 0.0
    assert torch.isfinite(loss.grad).all()


def test_weighted_mean_detaches_the_weights():
    w = torch.tensor([0.5, 0.5], requires_grad=True)
    out = weighted_mean(torch.tensor([1.0, 2.0], requires_grad=True), w)
    out.backward()
    assert w.grad is None


def test_split_normalisation_gives_foreground_and_background_half_each():
    # p_fg [0.9, 0.6 | 0.1, 0.1, 0.2] with w = p: foreground (0.9*1 + 0.6*2) / 1.5 = 1.4,
    # background (0.1*4 + 0.1*4 + 0.2*1) / 0.4 = 2.5; split = (1.4 + 2.5) / 2, weight = 3.1 / 1.9
    loss, p = torch.tensor([1.0, 2.0, 4.0, 4.0, 1.0]), torch.tensor([0.9, 0.6, 0.1, 0.1, 0.2])
    split = distill_mean(loss, p, p, "split")
    assert split.item() == pytest.approx((1.4 + 2.5) / 2, rel=1e-5)
    weight_sum = distill_mean(loss, p, p, "weight")
    assert weight_sum.item() == pytest.approx(3.1 / 1.9, rel=1e-5)


def test_count_normalisation_divides_by_the_number_of_terms():
    # the same terms: sum w l = 3.1 over 5 terms; with w = 1 it is "weight" exactly (the plain mean)
    loss, p = torch.tensor([1.0, 2.0, 4.0, 4.0, 1.0]), torch.tensor([0.9, 0.6, 0.1, 0.1, 0.2])
    count = distill_mean(loss, p, p, "count")
    assert count.item() == pytest.approx(3.1 / 5, rel=1e-5)
    ones = torch.ones(5)
    assert torch.equal(distill_mean(loss, ones, p, "count"),
                       distill_mean(loss, ones, p, "weight"))
    assert distill_mean(loss[:0], p[:0], p[:0], "count").item() == 0.0


def test_split_normalisation_without_foreground_is_half_the_background_mean():
    loss, p = torch.tensor([1.0, 3.0]), torch.tensor([0.1, 0.3])
    split = distill_mean(loss, p, p, "split")
    assert split.item() == pytest.approx(0.5 * (0.1 + 0.9) / 0.4, rel=1e-5)


def test_foreground_weights_gamma_floor_detached():
    p = torch.tensor([0.01, 0.5, 1.0], requires_grad=True)
    w_cls, w_reg = foreground_weights(p, TrainConfig(weight_gamma=2.0, weight_floor=0.1, distill_reg_threshold=0.0))
    assert torch.allclose(w_reg, torch.tensor([1e-4, 0.25, 1.0]))
    assert torch.allclose(w_cls, torch.tensor([0.1, 0.25, 1.0]))  # floor only on classification
    assert not w_cls.requires_grad and not w_reg.requires_grad


def test_distill_reg_threshold_drops_the_box_weights_of_unconfident_entries():
    p = torch.tensor([0.2, 0.5, 0.9])
    for reweight in (True, False):
        w_cls, w_reg = foreground_weights(p, TrainConfig(reweight=reweight, distill_reg_threshold=0.5))
        assert torch.equal(w_reg, torch.tensor([0.0, 0.5, 0.9]))  # p_fg >= 0.5 keeps its weight p_fg
        assert torch.equal(w_cls, p if reweight else torch.ones(3))  # classification unchanged


def test_foreground_weights_without_reweight():
    p = torch.tensor([0.2, 0.9])
    w_cls, w_reg = foreground_weights(p, TrainConfig(reweight=False, weight_gamma=3.0, weight_floor=0.5,
                                                             distill_reg_threshold=0.0))
    assert torch.equal(w_cls, torch.ones(2))  # plain mean of the classification terms
    assert torch.equal(w_reg, p)              # box distillation stays confidence-weighted (section 1)


def test_without_confidence_weighted_deltas_unweighted_entries_get_the_plain_mean_of_their_deltas():
    """--no-confidence-weighted-deltas: where the classes are not re-weighted, the deltas are not either (those
    above --distill-reg-threshold, weight 1); where they are (RoIs under --reweight), nothing changes."""
    p = torch.tensor([0.2, 0.5, 0.9])
    plain = TrainConfig(reweight=False, confidence_weighted_deltas=False, distill_reg_threshold=0.5)
    assert torch.equal(foreground_weights(p, plain)[1], torch.tensor([0.0, 1.0, 1.0]))
    anchors = TrainConfig(confidence_weighted_deltas=False, distill_reg_threshold=0.0)
    assert torch.equal(foreground_weights(p, anchors, anchors=True)[1], torch.ones(3))
    assert torch.equal(foreground_weights(p, anchors)[1], p)  # RoIs re-weighted: their deltas keep p_fg


def test_anchors_are_re_weighted_only_with_reweight_anchors():
    """--reweight-anchors off (the default): RPN anchors by their plain mean, RoIs still re-weighted."""
    p = torch.tensor([0.2, 0.9])
    cfg = TrainConfig(distill_reg_threshold=0.0)
    assert torch.equal(foreground_weights(p, cfg, anchors=True)[0], torch.ones(2))
    assert torch.equal(foreground_weights(p, cfg)[0], p)
    both = TrainConfig(reweight_anchors=True, distill_reg_threshold=0.0)
    assert torch.equal(foreground_weights(p, both, anchors=True)[0], p)
    for c in (cfg, both):  # the box weights stay the teacher's confidence either way
        assert torch.equal(foreground_weights(p, c, anchors=True)[1], p)


def bernoulli_kl_by_hand(p, q):
    """KL(p || q) of two Bernoulli distributions, p the target."""
    return p * math.log(p / q) + (1 - p) * math.log((1 - p) / (1 - q))


def test_rpn_distillation_hand_values():
    # anchor 0: logit 0 (q = 1/2), teacher p = 1/4 -> KL = 1/4 ln(1/2) + 3/4 ln(3/2)
    # anchor 1: logit ln 3 (q = 3/4), teacher p = 1/2 -> KL = 1/2 ln(2/3) + 1/2 ln 2
    logits = torch.tensor([[0.0, math.log(3)]])
    p = torch.tensor([[0.25, 0.5]])
    deltas = torch.tensor([[[0.05, 0, 0, 0], [1.0, 0, 0, -0.5]]])
    teacher_deltas = torch.zeros(1, 2, 4)
    kl = [bernoulli_kl_by_hand(0.25, 0.5), bernoulli_kl_by_hand(0.5, 0.75)]
    assert kl[0] == pytest.approx(0.25 * math.log(0.5) + 0.75 * math.log(1.5))
    reg = [smooth_l1(0.05), smooth_l1(1.0) + smooth_l1(-0.5)]
    cls_loss, reg_loss = rpn_distillation_loss(logits, deltas, torch.logit(p), teacher_deltas, p, ALL_DELTAS)
    assert cls_loss.item() == pytest.approx((0.25 * kl[0] + 0.5 * kl[1]) / 0.75, rel=1e-5)
    assert reg_loss.item() == pytest.approx((0.25 * reg[0] + 0.5 * reg[1]) / 0.75, rel=1e-5)
    cls_loss, reg_loss = rpn_distillation_loss(logits, deltas, torch.logit(p), teacher_deltas, p,
                                               dataclasses.replace(ALL_DELTAS, reweight=False))
    assert cls_loss.item() == pytest.approx((kl[0] + kl[1]) / 2, rel=1e-5)
    assert reg_loss.item() == pytest.approx((0.25 * reg[0] + 0.5 * reg[1]) / 0.75, rel=1e-5)
    cls_loss, reg_loss = rpn_distillation_loss(logits, deltas, torch.logit(p), teacher_deltas, p,
                                               dataclasses.replace(ALL_DELTAS, distill_reg_weight=0.1))
    assert cls_loss.item() == pytest.approx((0.25 * kl[0] + 0.5 * kl[1]) / 0.75, rel=1e-5)
    assert reg_loss.item() == pytest.approx(0.1 * (0.25 * reg[0] + 0.5 * reg[1]) / 0.75, rel=1e-5)
    # --distill-smooth-l1-beta 1: 0.05 -> 0.5 * 0.05^2, 1.0 -> 1 - 0.5, -0.5 -> 0.5 * 0.25
    _, reg_loss = rpn_distillation_loss(logits, deltas, torch.logit(p), teacher_deltas, p,
                                        dataclasses.replace(ALL_DELTAS, distill_smooth_l1_beta=1.0))
    assert reg_loss.item() == pytest.approx((0.25 * 0.00125 + 0.5 * (0.5 + 0.125)) / 0.75, rel=1e-5)


def test_rpn_distillation_at_the_teacher_has_zero_gradient_and_zero_value():
    p = torch.tensor([0.1, 0.5, 0.8, 0.999])
    logits = torch.logit(p).requires_grad_(True)
    deltas = torch.randn(4, 4)
    student_deltas = deltas.clone().requires_grad_(True)
    cls_loss, reg_loss = rpn_distillation_loss(logits, student_deltas, torch.logit(p), deltas, p,
                                               TrainConfig(reweight=False))
    (cls_loss + reg_loss).backward()
    assert abs(cls_loss.item()) < 1e-6   # the KL's minimum (the cross-entropy's was the teacher's entropy)
    assert logits.grad.abs().max() < 1e-6
    assert reg_loss.item() == 0 and student_deltas.grad.abs().max() == 0


def roi_targets(probs, labels, deltas, fg):
    return SimpleNamespace(roi_probs=probs, roi_labels=labels, roi_deltas=deltas, roi_fg=fg)


def roi_loss(class_logits, box_deltas, soft, cfg):
    """roi_distillation_loss with the teacher's targets and the student's deltas of the teacher's class."""
    return roi_distillation_loss(class_logits, class_deltas(box_deltas, soft.roi_labels), soft.roi_probs,
                                 soft.roi_deltas, soft.roi_fg, cfg)


def test_roi_distillation_hand_values_with_temperature():
    # T = 2: student logits [0, 2 ln 2, 0] / 2 -> softmax [1/4, 1/2, 1/4]; teacher [1/2, 1/4, 1/4]
    # KL = 1/2 ln 2 + 1/4 ln(1/2) = 1/4 ln 2; times T^2 = 4 -> ln 2
    class_logits = torch.tensor([[0.0, 2 * LN2, 0.0]])
    box_deltas = torch.arange(12.0).reshape(1, 12) / 10  # class 2 deltas = [0.8, 0.9, 1.0, 1.1]
    soft = roi_targets(torch.tensor([[0.5, 0.25, 0.25]]), torch.tensor([2]),
                       torch.tensor([[0.8, 0.9, 1.0, 0.0]]), torch.tensor([0.5]))
    cfg = TrainConfig(distill_temperature=2.0, distill_reg_weight=1.0, distill_norm="weight")
    cls_loss, reg_loss = roi_loss(class_logits, box_deltas, soft, cfg)
    assert cls_loss.item() == pytest.approx(LN2, rel=1e-5)
    assert reg_loss.item() == pytest.approx(smooth_l1(1.1), rel=1e-5)  # a single RoI: weight cancels


def test_roi_distillation_weights_by_teacher_foreground():
    # two RoIs with KL 0 and KL k; fg weights 0.2 and 0.6 -> 0.6 k / 0.8 (weight sum), 0.6 k / 2 (count)
    teacher = torch.tensor([[0.7, 0.2, 0.1], [0.5, 0.25, 0.25]])
    class_logits = torch.tensor([[0.7, 0.2, 0.1], [1.0, 1.0, 1.0]]).log()
    k = sum(t * math.log(t / (1 / 3)) for t in (0.5, 0.25, 0.25))
    soft = roi_targets(teacher, torch.tensor([1, 1]), torch.zeros(2, 4), torch.tensor([0.2, 0.6]))
    cls_loss, reg_loss = roi_loss(class_logits, torch.zeros(2, 12), soft, TrainConfig(distill_norm="weight"))
    assert cls_loss.item() == pytest.approx(0.6 * k / 0.8, rel=1e-5)
    assert reg_loss.item() == 0
    cls_loss, _ = roi_loss(class_logits, torch.zeros(2, 12), soft, TrainConfig())
    assert cls_loss.item() == pytest.approx(0.6 * k / 2, rel=1e-5)


def test_box_distillation_count_normalisation_divides_by_all_rois_and_anchors():
    # three RoIs, teacher p_fg [0.2, 0.6, 0.9], threshold 0.5 -> w_reg [0, 0.6, 0.9]; student deltas off by
    # [0.5, 0.2, 1.0] in x: weight = sum w l / (0.6 + 0.9), count = sum w l / 3 (all three RoIs)
    soft = roi_targets(torch.full((3, 3), 1 / 3), torch.tensor([1, 1, 1]), torch.zeros(3, 4),
                       torch.tensor([0.2, 0.6, 0.9]))
    box_deltas = torch.zeros(3, 12)
    box_deltas[:, 4] = torch.tensor([0.5, 0.2, 1.0])   # class 1's dx
    weighted_sum = 0.6 * smooth_l1(0.2) + 0.9 * smooth_l1(1.0)
    for norm, divisor in (("weight", 1.5), ("count", 3)):
        cfg = TrainConfig(distill_reg_weight=1.0, distill_reg_norm=norm)
        _, reg = roi_loss(torch.zeros(3, 3), box_deltas, soft, cfg)
        assert reg.item() == pytest.approx(weighted_sum / divisor, rel=1e-5)
    # the RPN's anchors (weights p_obj, not re-weighted by default): the same rule over all 3 anchors
    logits, deltas = torch.zeros(3), torch.zeros(3, 4)
    deltas[:, 0] = torch.tensor([0.5, 0.2, 1.0])
    p_obj = torch.tensor([0.2, 0.6, 0.9])
    _, reg = rpn_distillation_loss(logits, deltas, p_obj.logit(), torch.zeros(3, 4), p_obj,
                                   TrainConfig(distill_reg_weight=1.0, distill_reg_norm="count"))
    assert reg.item() == pytest.approx(weighted_sum / 3, rel=1e-5)


def test_roi_distillation_at_the_teacher_is_zero_with_zero_gradient():
    logits = torch.randn(6, 4)
    box_deltas = torch.randn(6, 16)
    labels = torch.tensor([1, 2, 3, 1, 2, 3])
    soft = roi_targets(logits.softmax(1), labels, box_deltas.reshape(6, 4, 4)[torch.arange(6), labels],
                       1 - logits.softmax(1)[:, 0])
    logits.requires_grad_(True)
    box_deltas.requires_grad_(True)
    cls_loss, reg_loss = roi_loss(logits, box_deltas, soft, TrainConfig())
    (cls_loss + reg_loss).backward()
    assert abs(cls_loss.item()) < 1e-6 and reg_loss.item() == 0
    assert logits.grad.abs().max() < 1e-6 and box_deltas.grad.abs().max() == 0


def test_roi_distillation_without_proposals_is_zero():
    soft = roi_targets(torch.zeros(0, 3), torch.zeros(0, dtype=torch.long), torch.zeros(0, 4), torch.zeros(0))
    class_logits = torch.zeros(0, 3, requires_grad=True)
    cls_loss, reg_loss = roi_loss(class_logits, torch.zeros(0, 12), soft, TrainConfig())
    assert cls_loss.item() == 0 and reg_loss.item() == 0


def test_unsup_weight_schedule():
    cfg = TrainConfig(burn_in_iters=10, rampup_iters=4, unsup_weight=4.0)
    assert [unsup_weight_at(i, cfg) for i in (0, 9, 10, 11, 13, 100)] == [0, 0, 1, 2, 4, 4]
    assert unsup_weight_at(10, TrainConfig(burn_in_iters=10, rampup_iters=0)) == 4.0


# --- the losses on a tiny detector (resnet18, 64-128 px images) ---

NO_AUGMENT = dict(strong_color_jitter=0.0, strong_grayscale_prob=0.0, strong_blur_prob=0.0, strong_erase_prob=0.0)


@pytest.fixture(scope="module")
def tiny():
    """A student, its teacher (same weights), and 2 unlabeled images of different sizes."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: extra threads only add contention on a shared 2-core machine
    torch.manual_seed(0)
    student = sed.build_model(num_classes=3, backbone="resnet18", backbone_weights=None,
                              min_size=64, max_size=128).train()
    student.rpn.post_nms_top_n = {True: 64, False: 64}  # few RoIs keep the 1024-d box head fast
    student.roi_heads.batch_size_per_image = 32
    images = [torch.rand(3, 70, 100), torch.rand(3, 90, 64)]
    yield student, make_teacher(student), images
    torch.set_num_threads(threads)


def sed_step(student, teacher, images, cfg):
    weak, strong, small = make_views(student, images, cfg, min_size=64)
    soft = predict_soft(teacher, weak, cfg)
    return sed_losses(student, strong, small, soft, cfg), soft


def test_identical_views_and_weights_give_zero_distillation_and_zero_gradient(tiny):
    student, teacher, images = tiny
    cfg = TrainConfig(distill=True, scale_consistency=False, hard_pseudo_labels=False, teacher_proposals=64,
                      **NO_AUGMENT)
    losses, soft = sed_step(student, teacher, images, cfg)
    assert sorted(losses) == ["loss_roi_distill_cls", "loss_roi_distill_reg",
                              "loss_rpn_distill_cls", "loss_rpn_distill_reg"]
    for name in ("loss_rpn_distill_cls", "loss_rpn_distill_reg", "loss_roi_distill_cls", "loss_roi_distill_reg"):
        assert abs(losses[name].item()) < 1e-6, name
    student.zero_grad()
    sum(losses.values()).backward()
    grads = [q.grad.abs().max().item() for q in student.parameters() if q.grad is not None]
    assert grads and max(grads) < 1e-6


def test_no_gradient_reaches_the_teacher(tiny):
    student, teacher, images = tiny
    cfg = TrainConfig(distill=True, hard_pseudo_labels=True, pseudo_threshold=0.0, teacher_proposals=64)
    losses, soft = sed_step(student, teacher, images, cfg)
    for t in [soft.rpn_prob, soft.rpn_deltas, soft.roi_probs, soft.roi_deltas, soft.roi_fg]:
        assert not t.requires_grad
    student.zero_grad()
    sum(losses.values()).backward()
    assert all(q.grad is None for q in teacher.parameters())
    assert any(q.grad is not None and q.grad.abs().sum() > 0 for q in student.parameters())


def test_hard_label_loss_on_the_shared_strong_view_outputs_equals_its_own_forward(tiny):
    """sed_losses hands the distillation's strong-view features and RPN head outputs to the hard-label
    loss: the same losses and gradients as the separate forward it replaces (one backbone and RPN head
    pass fewer per SED step)."""
    student, teacher, images = tiny
    cfg = TrainConfig(distill=True, hard_pseudo_labels=True, pseudo_threshold=0.0, scale_consistency=False,
                      teacher_proposals=32)
    weak, strong, _ = make_views(student, images, cfg, min_size=64)
    soft = predict_soft(teacher, weak, cfg)
    assert sum(len(d["boxes"]) for d in soft.detections) > 0  # boxes to train on
    results = []
    for full in (None, student_outputs(student, strong, soft.proposals, soft.roi_labels)):
        torch.manual_seed(0)  # the same anchor and RoI sampling
        losses = hard_pseudo_label_loss(student, strong, soft, cfg, full)
        student.zero_grad()
        sum(losses.values()).backward()
        results.append((losses, [q.grad.clone() for q in student.parameters() if q.grad is not None]))
    (separate, separate_grads), (shared, shared_grads) = results
    assert separate.keys() == shared.keys() == {"loss_hard_objectness", "loss_hard_rpn_box_reg",
                                                "loss_hard_classifier", "loss_hard_box_reg"}
    for name in separate:
        assert shared[name].item() == pytest.approx(separate[name].item(), rel=1e-5, abs=1e-7), name
    assert len(shared_grads) == len(separate_grads)
    assert all(torch.allclose(a, b, rtol=1e-4, atol=1e-6) for a, b in zip(shared_grads, separate_grads))
    calls = []
    features, head = student.features, student.rpn.head.forward
    student.features = lambda tensors: calls.append("backbone") or features(tensors)
    student.rpn.head.forward = lambda feats: calls.append("rpn head") or head(feats)
    assert set(sed_losses(student, strong, None, soft, cfg)) >= set(shared)
    assert calls == ["backbone", "rpn head"]  # one pass on the strong view for both terms


def test_without_hard_label_box_losses_the_hard_labels_train_the_classes_only(tiny):
    """--no-hard-label-box-losses (Unbiased Teacher): the RPN objectness and box-head class losses of the
    hard labels, the same values as with the box losses, and no box regression term."""
    student, teacher, images = tiny
    cfg = TrainConfig(pseudo_threshold=0.0, scale_consistency=False, teacher_proposals=16)
    weak, strong, _ = make_views(student, images, cfg, min_size=64)
    soft = predict_soft(teacher, weak, cfg)
    results = []
    for box_losses in (True, False):
        torch.manual_seed(0)  # the same anchor and RoI sampling
        results.append(hard_pseudo_label_loss(student, strong, soft,
                                              dataclasses.replace(cfg, hard_label_box_losses=box_losses)))
    full, classes = results
    assert set(full) == {"loss_hard_objectness", "loss_hard_rpn_box_reg", "loss_hard_classifier", "loss_hard_box_reg"}
    assert full["loss_hard_box_reg"] > 0 and full["loss_hard_rpn_box_reg"] > 0  # boxes that would train
    assert classes == {k: full[k] for k in ("loss_hard_objectness", "loss_hard_classifier")}


@pytest.mark.parametrize("fraction,expected", [(1.0, 32), (0.25, 8)])
def test_hard_label_roi_fraction_samples_fewer_rois_per_unlabeled_image(tiny, fraction, expected):
    """--hard-label-roi-fraction: the hard labels' box-head loss samples that fraction of --roi-batch-size
    (32 in `tiny`) RoIs per image from the student's proposals."""
    student, teacher, images = tiny
    cfg = TrainConfig(distill=True, hard_pseudo_labels=True, pseudo_threshold=0.0, scale_consistency=False,
                      teacher_proposals=16, hard_label_roi_fraction=fraction)
    weak, strong, _ = make_views(student, images, cfg, min_size=64)
    soft = predict_soft(teacher, weak, cfg)
    scores = torch.cat([d["scores"] for d in soft.detections])
    cfg = dataclasses.replace(cfg, pseudo_threshold=scores.quantile(0.95).item())  # a few boxes: negatives abound
    sizes = []
    predict = student.roi_heads.predict
    student.roi_heads.predict = lambda feats, boxes: sizes.append([len(b) for b in boxes]) or predict(feats, boxes)
    try:
        hard_pseudo_label_loss(student, strong, soft, cfg)
    finally:
        del student.roi_heads.predict
    assert sizes == [[expected, expected]]  # 64 proposals per image: the sample is full


def test_label_all_and_fast_rcnn_loss_hand_values():
    """--hard-label-rois teacher labels every teacher proposal by IoU >= 0.5 with a target (none sampled, no
    target added) and applies torchvision's Fast R-CNN loss to them."""
    heads = sed.build_model(num_classes=3, backbone="resnet18", backbone_weights=None).roi_heads
    rois = [torch.tensor([[0.0, 0, 10, 10], [0, 0, 10, 5], [0, 0, 10, 4], [20, 20, 30, 30]])]
    target = {"boxes": torch.tensor([[0.0, 0, 10, 10]]), "labels": torch.tensor([2])}
    labels, reg_targets = heads.label_all(rois, [target])
    assert labels.tolist() == [2, 2, 0, 0]  # IoU 1, 0.5, 0.4, 0
    # the second RoI [0, 0, 10, 5] -> the target: dy = 10 * (5 - 2.5) / 5 = 5, dh = 5 * ln(10 / 5)
    assert torch.allclose(reg_targets, torch.tensor([[0.0, 0, 0, 0], [0, 5, 0, 5 * math.log(2)]]), atol=1e-5)
    logits, deltas = torch.zeros(4, 4), torch.zeros(4, 16)
    losses = heads.fast_rcnn_loss(logits, deltas, labels, reg_targets)
    assert losses["loss_classifier"].item() == pytest.approx(math.log(4), rel=1e-5)  # uniform over C + 1 = 4
    # smooth L1 (beta 1/9) of the deltas 0 against 5 and 5 ln 2, summed, over the 4 RoIs
    assert losses["loss_box_reg"].item() == pytest.approx((smooth_l1(5) + smooth_l1(5 * LN2)) / 4, rel=1e-5)
    empty = heads.fast_rcnn_loss(logits[:0], deltas[:0], labels[:0], reg_targets[:0])
    assert all(v.item() == 0 for v in empty.values())  # no proposals: 0, not NaN


def test_hard_labels_on_the_teacher_rois_reuse_the_student_box_head_pass(tiny):
    """--hard-label-rois teacher: the hard labels' box-head loss is the cross-entropy of the student's outputs
    on the teacher's proposals (those of the distillation) against their IoU labels; the student's box head
    runs once per view and no student proposals are made."""
    student, teacher, images = tiny
    cfg = TrainConfig(distill=True, hard_pseudo_labels=True, pseudo_threshold=0.0, teacher_proposals=32,
                      hard_label_rois="teacher")
    weak, strong, small = make_views(student, images, cfg, min_size=64)
    soft = predict_soft(teacher, weak, cfg)
    scores = torch.cat([d["scores"] for d in soft.detections])
    cfg = dataclasses.replace(cfg, pseudo_threshold=scores.quantile(0.9).item())  # a few boxes per image
    targets = [{"boxes": d["boxes"][d["scores"] >= cfg.pseudo_threshold],
                "labels": d["labels"][d["scores"] >= cfg.pseudo_threshold]} for d in soft.detections]
    calls = []
    predict, propose = student.roi_heads.predict, student.rpn.propose
    student.roi_heads.predict = lambda feats, boxes: calls.append("box head") or predict(feats, boxes)
    student.rpn.propose = lambda *a: calls.append("propose") or propose(*a)
    try:
        losses = sed_losses(student, strong, small, soft, cfg)
    finally:
        del student.roi_heads.predict, student.rpn.propose
    assert calls == ["box head", "box head"]  # the full-size view and the 0.5x view, nothing else
    full = student_outputs(student, strong, soft.proposals, soft.roi_labels)
    labels, _ = student.roi_heads.label_all(soft.proposals, targets)
    assert 0 < (labels > 0).sum() < len(labels)
    expected = torch.nn.functional.cross_entropy(full.class_logits, labels)
    assert losses["loss_hard_classifier"].item() == pytest.approx(expected.item(), rel=1e-5)
    student.zero_grad()
    losses["loss_hard_classifier"].backward()
    assert student.roi_heads.predictor.cls_score.weight.grad.abs().sum() > 0
    assert any(q.grad is not None and q.grad.abs().sum() > 0 for q in student.backbone.parameters())  # shared features
    assert all(q.grad is None for q in teacher.parameters())


def background_teacher(student):
    """A teacher certain that everything is background: no proposal scores, no detection survives."""
    teacher = make_teacher(student)
    teacher.rpn.head.objectness.bias.fill_(-30.0)
    teacher.roi_heads.predictor.cls_score.bias[0] = 30.0
    return teacher


def no_proposals(soft):
    """The same targets with 0 teacher proposals (e.g. every box removed as too small)."""
    return dataclasses.replace(soft, proposals=[p[:0] for p in soft.proposals], roi_probs=soft.roi_probs[:0],
                               roi_labels=soft.roi_labels[:0], roi_deltas=soft.roi_deltas[:0], roi_fg=soft.roi_fg[:0])


SWITCHES = list(itertools.product([True, False], repeat=4))  # distill, scale, reweight, hard labels


@pytest.mark.parametrize("distill,scale,reweight,hard", SWITCHES)
def test_every_switch_combination_gives_finite_losses(tiny, distill, scale, reweight, hard):
    student, teacher, images = tiny
    cfg = TrainConfig(distill=distill, scale_consistency=scale, reweight=reweight, hard_pseudo_labels=hard,
                      pseudo_threshold=0.0, teacher_proposals=32, weight_floor=0.05)
    losses, _ = sed_step(student, teacher, images, cfg)
    expected = set()
    if distill:
        expected |= {"loss_rpn_distill_cls", "loss_rpn_distill_reg", "loss_roi_distill_cls", "loss_roi_distill_reg"}
    if scale:  # the student <-> student link, with soft or hard teacher targets alike
        expected |= {"loss_scale_rpn_cls", "loss_scale_rpn_reg", "loss_scale_roi_cls", "loss_scale_roi_reg"}
    if hard or not distill:
        expected |= {"loss_hard_objectness", "loss_hard_rpn_box_reg", "loss_hard_classifier", "loss_hard_box_reg"}
    assert set(losses) == expected
    total = sum(losses.values())
    student.zero_grad()
    total.backward()
    assert torch.isfinite(total)
    assert all(torch.isfinite(q.grad).all() for q in student.parameters() if q.grad is not None)


@pytest.mark.parametrize("distill,scale,rois", [(True, True, "student"), (False, True, "student"),
                                                (False, False, "student"), (True, True, "teacher")])
def test_no_confident_object_and_no_proposals_give_finite_losses(tiny, distill, scale, rois):
    student, _, images = tiny
    cfg = TrainConfig(distill=distill, scale_consistency=scale, hard_pseudo_labels=True, teacher_proposals=32,
                      hard_label_rois=rois)
    weak, strong, small = make_views(student, images, cfg, min_size=64)
    soft = predict_soft(background_teacher(student), weak, cfg)
    assert all(len(d["boxes"]) == 0 for d in soft.detections)  # nothing passes the threshold
    for targets in (soft, no_proposals(soft)):
        losses = sed_losses(student, strong, small, targets, cfg)
        student.zero_grad()
        sum(losses.values()).backward()
        assert all(torch.isfinite(v) for v in losses.values()), losses


def test_objective_returns_supervised_and_unsupervised_losses(tiny):
    student, teacher, images = tiny
    targets = [{"boxes": torch.tensor([[5.0, 5.0, 40.0, 50.0]]), "labels": torch.tensor([1])},
               {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}]
    for cfg, terms in [(TrainConfig(teacher_proposals=32), 8),  # the defaults: scale link and hard labels
                       (TrainConfig(teacher_proposals=32, distill=True), 12)]:  # + distillation, 4 terms each
        objective = SEDObjective(student, cfg)
        weak, strong, small = make_views(student, images, cfg, min_size=64)
        sup, unsup = objective(images, targets, strong, small, predict_soft(teacher, weak, cfg))
        assert set(sup) == {"loss_objectness", "loss_rpn_box_reg", "loss_classifier", "loss_box_reg"}
        assert len(unsup) == terms and not any("_distill_" in k for k in unsup) == (not cfg.distill), sorted(unsup)
        assert objective(images, targets)[1] == {}  # burn-in: supervised only


def test_objective_under_ddp_synchronises_a_full_sed_step(tiny, tmp_path):
    """World size 1 (gloo, CPU): DDP(SEDObjective) runs two SED steps and EMA reads through .module."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP

    from sed.teacher import ema_update

    student, teacher, images = tiny
    cfg = TrainConfig(teacher_proposals=16, distill=True)
    dist.init_process_group("gloo", init_method=f"file://{tmp_path}/store", rank=0, world_size=1)
    try:
        objective = DDP(SEDObjective(student, cfg))
        targets = [{"boxes": torch.tensor([[5.0, 5.0, 40.0, 50.0]]), "labels": torch.tensor([2])}] * 2
        for _ in range(2):
            weak, strong, small = make_views(student, images, cfg, min_size=64)
            sup, unsup = objective(images, targets, strong, small, predict_soft(teacher, weak, cfg))
            student.zero_grad()
            (sum(sup.values()) + 4.0 * sum(unsup.values())).backward()
            ema_update(teacher, objective.module.student, 0.5)
        assert all(torch.isfinite(v) for v in {**sup, **unsup}.values())
    finally:
        dist.destroy_process_group()
