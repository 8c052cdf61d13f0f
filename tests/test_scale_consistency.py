"""Scale-equivalence (SED_NOTES.md section 2): the 0.5x view's level P(l-1) lines up with P(l)."""
import dataclasses
from types import SimpleNamespace

import pytest
import torch

import sed
from sed.config import TrainConfig
from sed.losses import StudentOutputs, check_small_view, scale_consistency_loss, sed_losses, student_outputs
from sed.teacher import make_teacher, predict_soft
from sed.views import downsample, make_views


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return sed.build_model(num_classes=3, backbone="resnet18", backbone_weights=None, min_size=64, max_size=128)


@pytest.fixture(scope="module")
def batches(model):
    """An original batch padded to a multiple of 64 (128 x 128) and its exact half."""
    batch, _ = model.transform([torch.rand(3, 70, 100), torch.rand(3, 90, 64)], min_size=64, size_divisible=64)
    assert batch.tensors.shape[-2:] == (128, 128)
    return batch, downsample(batch)


def test_feature_grids_and_anchors_coincide_at_shifted_levels(model, batches):
    batch, small = batches
    with torch.no_grad():
        feats, small_feats = model.features(batch.tensors), model.features(small.tensors)
    anchors, small_anchors = model.rpn.anchors(batch, feats), model.rpn.anchors(small, small_feats)
    for level in range(1, 5):  # original P3..P6 against small P2..P5
        assert feats[level].shape == small_feats[level - 1].shape
        doubled, original = small_anchors[level - 1] * 2, anchors[level]  # [H*W*A, 4] each
        assert torch.equal(doubled[:, :2] + doubled[:, 2:], original[:, :2] + original[:, 2:])  # centres: exact
        assert torch.equal(doubled[1::3], original[1::3])  # aspect ratio 1: exact
        # ratios 0.5 and 2: torchvision rounds each level's cell anchors to whole pixels -> 1 px apart
        assert (doubled - original).abs().max() <= 1


def shifted_soft(student, batch, small, proposals):
    """Soft targets laid out like a teacher on the original image, made from the student's own outputs
    on the small view: small P2..P5 moved to original P3..P6 (original P2: arbitrary), RoIs on B / 2."""
    with torch.no_grad():
        feats = student.features(small.tensors)
        obj, deltas = student.rpn.head(feats)
        obj, deltas = sed.rpn.flatten_outputs(obj, deltas)
        logits, box_deltas = student.roi_heads.predict(feats, [p / 2 for p in proposals])
    n_small_p6 = 3 * feats[-1].shape[-2] * feats[-1].shape[-1]
    n_orig_p2 = 3 * (batch.tensors.shape[-2] // 4) * (batch.tensors.shape[-1] // 4)  # original P2, stride 4
    B = obj.shape[0]
    probs, labels = logits.softmax(1), logits[:, 1:].argmax(1) + 1
    rows = torch.arange(len(labels))
    rpn_prob = torch.cat([torch.full((B, n_orig_p2), 0.5), obj[:, :-n_small_p6].sigmoid()], 1)
    return dict(rpn_prob=rpn_prob, rpn_target_logits=torch.logit(rpn_prob),
                rpn_deltas=torch.cat([torch.zeros(B, n_orig_p2, 4), deltas[:, :-n_small_p6]], 1),
                level_sizes=[n_orig_p2] + [3 * f.shape[-2] * f.shape[-1] for f in feats[:-1]],
                proposals=proposals, roi_probs=probs, roi_labels=labels, roi_fg=1 - probs[:, 0],
                roi_deltas=box_deltas.view(len(labels), -1, 4)[rows, labels])


def test_scale_loss_compares_small_p2_p5_with_original_p3_p6_and_boxes_halved(model, batches):
    batch, small_batch = batches
    cfg = TrainConfig(teacher_proposals=16, reweight=False, scale_target="teacher", distill_reg_weight=1.0,
                      distill=True)
    soft = predict_soft(make_teacher(model), batch, cfg)
    targets = dataclasses.replace(soft, **shifted_soft(model, batch, small_batch, soft.proposals))
    model.zero_grad()
    small = student_outputs(model, small_batch, [p / 2 for p in soft.proposals], targets.roi_labels)
    losses = scale_consistency_loss(small, None, targets, cfg)
    sum(losses.values()).backward()
    for name in ("loss_scale_rpn_cls", "loss_scale_rpn_reg", "loss_scale_roi_cls", "loss_scale_roi_reg"):
        assert abs(losses[name].item()) < 1e-5, name
    assert max(q.grad.abs().max().item() for q in model.parameters() if q.grad is not None) < 1e-6


def hand_outputs(level_sizes, num_rois, seed):
    """StudentOutputs of random values for one image, 3 classes (4 with background)."""
    g = torch.Generator().manual_seed(seed)
    R = sum(level_sizes)
    return StudentOutputs(None, None, torch.randn(1, R, generator=g), torch.randn(1, R, 4, generator=g), level_sizes,
                          torch.randn(num_rois, 4, generator=g), torch.randn(num_rois, 4, generator=g))


def hand_soft(level_sizes, num_rois):
    """Teacher targets of which the student-target modes use only the weights (rpn_prob, roi_fg)."""
    R = sum(level_sizes)
    rpn_prob = torch.linspace(0.05, 0.95, R)[None]
    return SimpleNamespace(level_sizes=level_sizes, rpn_prob=rpn_prob, rpn_target_logits=torch.logit(rpn_prob),
                           rpn_deltas=torch.zeros(1, R, 4), roi_probs=torch.full((num_rois, 4), 0.25),
                           roi_deltas=torch.zeros(num_rois, 4), roi_fg=torch.linspace(0.1, 0.9, num_rois))


def test_student_target_is_the_full_size_output_at_shifted_levels():
    """Small P2..P5 one logit above full P3..P6 and equal RoI outputs: the RPN term is the Bernoulli KL of
    the full-size objectness to the small one's, anchor by anchor, weighted as configured; other terms 0."""
    full_sizes, small_sizes = [48, 12, 3, 1, 1], [12, 3, 1, 1, 1]
    full, soft = hand_outputs(full_sizes, 5, seed=0), hand_soft(full_sizes, 5)
    small = hand_outputs(small_sizes, 5, seed=1)
    small.obj[:, :17], small.deltas[:, :17] = full.obj[:, 48:] + 1, full.deltas[:, 48:]  # small P2-P5 ~ full P3-P6
    small.class_logits, small.box_deltas = full.class_logits.clone(), full.box_deltas.clone()
    p, q = full.obj[0, 48:].double().sigmoid(), (full.obj[0, 48:].double() + 1).sigmoid()  # target, student
    kl = p * (p / q).log() + (1 - p) * ((1 - p) / (1 - q)).log()
    w = soft.rpn_prob[0, 48:].double()  # the teacher's objectness: the weights
    for reweight_anchors, norm, expected in [(False, "count", kl.mean()), (True, "count", (w * kl).mean()),
                                             (True, "weight", (w * kl).sum() / w.sum())]:
        cfg = TrainConfig(scale_target="student", distill_reg_weight=1.0, reweight_anchors=reweight_anchors,
                          distill_norm=norm)
        losses = scale_consistency_loss(small, full, soft, cfg)
        assert losses["loss_scale_rpn_cls"].item() == pytest.approx(expected.item(), rel=1e-5)
        for name in ("loss_scale_rpn_reg", "loss_scale_roi_cls", "loss_scale_roi_reg"):
            assert abs(losses[name].item()) < 1e-6, name


@pytest.mark.parametrize("mode,full_gets_gradient", [("student", False), ("mutual", True), ("teacher", None)])
def test_which_branch_receives_gradient(mode, full_gets_gradient):
    """student: only the 0.5x branch learns; mutual: both; teacher: the full-size outputs are unused."""
    full_sizes, small_sizes = [48, 12, 3, 1, 1], [12, 3, 1, 1, 1]
    full, soft = hand_outputs(full_sizes, 5, seed=0), hand_soft(full_sizes, 5)
    small = hand_outputs(small_sizes, 5, seed=1)
    branches = [full.obj, full.deltas, full.class_logits, full.box_deltas,
                small.obj, small.deltas, small.class_logits, small.box_deltas]
    for t in branches:
        t.requires_grad_(True)
    losses = scale_consistency_loss(small, full, soft, TrainConfig(scale_target=mode, distill_reg_weight=1.0))
    grads = torch.autograd.grad(sum(losses.values()), branches, allow_unused=True)
    assert all(g is not None and g.abs().sum() > 0 for g in grads[4:])  # the 0.5x branch always learns
    if full_gets_gradient:
        assert all(g is not None and g.abs().sum() > 0 for g in grads[:4])
    else:
        assert all(g is None for g in grads[:4])


def test_mutual_sends_no_gradient_where_the_two_sizes_agree():
    """--scale-target mutual at agreement (small P2..P5 = full P3..P6): no gradient into either size's
    objectness (the cross-entropy before stop 32 pushed the full size by -s * sigmoid'(s) there)."""
    full_sizes, small_sizes = [48, 12, 3, 1, 1], [12, 3, 1, 1, 1]
    full, soft = hand_outputs(full_sizes, 5, seed=0), hand_soft(full_sizes, 5)
    small = hand_outputs(small_sizes, 5, seed=1)
    small.obj[:, :17] = full.obj[:, 48:]
    full.obj.requires_grad_(True)
    small.obj.requires_grad_(True)
    losses = scale_consistency_loss(small, full, soft, TrainConfig(scale_target="mutual"))
    full_grad, small_grad = torch.autograd.grad(losses["loss_scale_rpn_cls"], [full.obj, small.obj])
    assert full_grad.abs().max() < 1e-7 and small_grad.abs().max() < 1e-7
    small.obj = (small.obj.detach() + 1).requires_grad_(True)   # one logit above: both sides pulled together
    full_grad, small_grad = torch.autograd.grad(scale_consistency_loss(small, full, soft, TrainConfig(
        scale_target="mutual"))["loss_scale_rpn_cls"], [full.obj, small.obj])
    assert (full_grad[0, 48:] < 0).all() and (small_grad[0, :17] > 0).all()


@pytest.mark.parametrize("mode", ["student", "mutual", "teacher"])
def test_the_teacher_never_receives_gradient(model, mode):
    cfg = TrainConfig(teacher_proposals=16, scale_target=mode, distill=False, hard_pseudo_labels=False,
                      distill_reg_weight=1.0)
    teacher = make_teacher(model)
    weak, strong, small = make_views(model, [torch.rand(3, 70, 100)], cfg, min_size=64)
    soft = predict_soft(teacher, weak, cfg)
    full = student_outputs(model, strong, soft.proposals, soft.roi_labels)
    small_out = student_outputs(model, small, [p / 2 for p in soft.proposals], soft.roi_labels)
    losses = scale_consistency_loss(small_out, full, soft, cfg)
    model.zero_grad()
    sum(losses.values()).backward()
    assert all(torch.isfinite(v) and v >= 0 for v in losses.values())
    assert all(q.grad is None for q in teacher.parameters())
    assert any(q.grad is not None and q.grad.abs().sum() > 0 for q in model.parameters())


def test_scale_loss_rejects_a_view_not_padded_to_64(model):
    batch, _ = model.transform([torch.rand(3, 70, 100)], min_size=64, size_divisible=32)  # 64 x 96
    with pytest.raises(ValueError, match="multiple of 64"):
        check_small_view(downsample(batch))


def test_without_scale_roi_only_the_rpn_part_remains(model, batches, monkeypatch):
    """--no-scale-roi: the same RPN scale terms, no RoI-head scale terms, and the RoI head runs on the
    full-size view only (not on the 0.5x one)."""
    batch, small_batch = batches
    cfg = TrainConfig(teacher_proposals=16, distill_reg_weight=1.0, distill=True, hard_pseudo_labels=False)
    soft = predict_soft(make_teacher(model), batch, cfg)
    calls, predict = [], model.roi_heads.predict
    monkeypatch.setattr(model.roi_heads, "predict",
                        lambda feats, boxes: calls.append(len(boxes)) or predict(feats, boxes))
    with torch.no_grad():
        both = sed_losses(model, batch, small_batch, soft, cfg)
        assert len(calls) == 2
        rpn_only = sed_losses(model, batch, small_batch, soft, dataclasses.replace(cfg, scale_roi=False))
    assert len(calls) == 3
    assert set(both) - set(rpn_only) == {"loss_scale_roi_cls", "loss_scale_roi_reg"}
    assert all(torch.equal(rpn_only[k], both[k]) for k in rpn_only)
    assert both["loss_scale_roi_cls"] > 0


def test_each_term_can_leave_out_either_head(model, batches):
    """Which heads each term uses (SED_NOTES "Framework", design choices): --no-scale-rpn keeps only the scale
    link's RoI-head terms, --no-distill-rpn / --no-distill-roi only the self-distillation's other head; the terms
    kept are the same values as with both heads."""
    batch, small_batch = batches
    cfg = TrainConfig(teacher_proposals=16, distill_reg_weight=1.0, distill=True, hard_pseudo_labels=False)
    soft = predict_soft(make_teacher(model), batch, cfg)
    with torch.no_grad():
        both = sed_losses(model, batch, small_batch, soft, cfg)
        for switch, left_out in (("scale_rpn", {"loss_scale_rpn_cls", "loss_scale_rpn_reg"}),
                                 ("distill_rpn", {"loss_rpn_distill_cls", "loss_rpn_distill_reg"}),
                                 ("distill_roi", {"loss_roi_distill_cls", "loss_roi_distill_reg"})):
            fewer = sed_losses(model, batch, small_batch, soft, dataclasses.replace(cfg, **{switch: False}))
            assert set(both) - set(fewer) == left_out, switch
            assert all(torch.equal(fewer[k], both[k]) for k in fewer), switch


def test_the_full_size_box_head_runs_only_for_a_term_that_uses_it(model, batches, monkeypatch):
    """The student's box head on the teacher's proposals at full size runs only where a term uses its outputs
    (sed.losses.full_size_rois_used): not with --no-scale-roi beside the hard labels, with or without --distill
    --no-distill-roi; the terms kept have the same values as where it runs."""
    batch, small_batch = batches
    cfg = TrainConfig(teacher_proposals=16)  # train.py's default SED otherwise
    soft = predict_soft(make_teacher(model), batch, cfg)
    on_teacher_rois, predict = [], model.roi_heads.predict
    monkeypatch.setattr(model.roi_heads, "predict", lambda feats, boxes: on_teacher_rois.append(
        boxes is soft.proposals) or predict(feats, boxes))

    def losses(**changes):
        on_teacher_rois.clear()
        torch.manual_seed(0)  # the hard labels' RoI sampling
        with torch.no_grad():
            values = sed_losses(model, batch, small_batch, soft, dataclasses.replace(cfg, **changes))
        return values, any(on_teacher_rois)

    both, ran = losses()
    assert ran
    for changes in ({"scale_roi": False}, {"scale_roi": False, "distill": True, "distill_roi": False}):
        fewer, ran = losses(**changes)
        assert not ran, changes
        assert {"loss_hard_classifier", "loss_scale_rpn_cls"} <= set(fewer)
        assert all(torch.equal(fewer[k], both[k]) for k in set(fewer) & set(both)), changes
    assert losses(scale_roi=False, hard_label_rois="teacher")[1]
