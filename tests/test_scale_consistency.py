"""Scale-equivalence (SED_NOTES.md section 2): the 0.5x view's level P(l-1) lines up with P(l)."""
import dataclasses

import pytest
import torch

import sed
from sed.config import TrainConfig
from sed.losses import scale_consistency_loss
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
    return dict(rpn_prob=torch.cat([torch.full((B, n_orig_p2), 0.5), obj[:, :-n_small_p6].sigmoid()], 1),
                rpn_deltas=torch.cat([torch.zeros(B, n_orig_p2, 4), deltas[:, :-n_small_p6]], 1),
                level_sizes=[n_orig_p2] + [3 * f.shape[-2] * f.shape[-1] for f in feats[:-1]],
                proposals=proposals, roi_probs=probs, roi_labels=labels, roi_fg=1 - probs[:, 0],
                roi_deltas=box_deltas.view(len(labels), -1, 4)[rows, labels])


def test_scale_loss_compares_small_p2_p5_with_original_p3_p6_and_boxes_halved(model, batches):
    batch, small = batches
    cfg = TrainConfig(teacher_proposals=16, reweight=False)
    soft = predict_soft(make_teacher(model), batch, cfg)
    targets = dataclasses.replace(soft, **shifted_soft(model, batch, small, soft.proposals))
    model.zero_grad()
    losses = scale_consistency_loss(model, small, targets, cfg)
    sum(losses.values()).backward()
    p = targets.rpn_prob[:, targets.level_sizes[0]:]
    entropy = -(p * p.log() + (1 - p) * (1 - p).log()).mean()  # BCE at its minimum
    assert losses["loss_scale_rpn_cls"].item() == pytest.approx(entropy.item(), rel=1e-4)
    for name in ("loss_scale_rpn_reg", "loss_scale_roi_cls", "loss_scale_roi_reg"):
        assert abs(losses[name].item()) < 1e-6, name
    assert max(q.grad.abs().max().item() for q in model.parameters() if q.grad is not None) < 1e-6


def test_scale_loss_uses_the_original_targets_unchanged(model):
    """With a real teacher the targets of the small view are the original view's, cut at P3..P6."""
    cfg = TrainConfig(teacher_proposals=16)
    weak, strong, small = make_views(model, [torch.rand(3, 70, 100)], cfg, min_size=64)
    soft = predict_soft(make_teacher(model), weak, cfg)
    losses = scale_consistency_loss(model, small, soft, cfg)
    assert all(torch.isfinite(v) and v >= 0 for v in losses.values())


def test_scale_loss_rejects_a_view_not_padded_to_64(model):
    batch, _ = model.transform([torch.rand(3, 70, 100)], min_size=64, size_divisible=32)  # 64 x 96
    soft = predict_soft(make_teacher(model), batch, TrainConfig(teacher_proposals=8))
    with pytest.raises(ValueError, match="multiple of 64"):
        scale_consistency_loss(model, downsample(batch), soft, TrainConfig())
