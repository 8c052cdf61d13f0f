"""The EMA teacher (sed/teacher.py): hand-computed EMA values and the soft targets' shapes."""
import pytest
import torch
from torch import nn

import sed
from sed.config import TrainConfig
from sed.teacher import ema_momentum_at, ema_update, make_teacher, predict_soft
from sed.views import make_views


def small_net():
    return nn.Sequential(nn.Linear(2, 1), nn.BatchNorm1d(1))


class Wrapped(nn.Module):
    """Stands in for DistributedDataParallel: the model is at .module."""

    def __init__(self, module):
        super().__init__()
        self.module = module


def test_make_teacher_is_a_frozen_eval_copy():
    student = small_net().train()
    teacher = make_teacher(Wrapped(student))
    assert not teacher.training and all(not p.requires_grad for p in teacher.parameters())
    assert all(p.requires_grad for p in student.parameters())
    assert torch.equal(teacher[0].weight, student[0].weight) and teacher[0].weight is not student[0].weight


@pytest.mark.parametrize("wrap", [False, True])
def test_ema_update_hand_values_and_buffers_copied(wrap):
    student = small_net()
    teacher = make_teacher(student)
    with torch.no_grad():
        teacher[0].weight.copy_(torch.tensor([[1.0, 2.0]]))
        student[0].weight.copy_(torch.tensor([[3.0, -2.0]]))
        student[1].running_mean.fill_(5.0)
    student[1].num_batches_tracked += 7
    ema_update(teacher, Wrapped(student) if wrap else student, momentum=0.9)
    # 0.9 * [1, 2] + 0.1 * [3, -2] = [1.2, 1.6]
    assert torch.allclose(teacher[0].weight, torch.tensor([[1.2, 1.6]]))
    assert torch.equal(teacher[1].running_mean, torch.tensor([5.0]))  # buffers: copied, not averaged
    assert teacher[1].num_batches_tracked.item() == 7
    assert teacher[0].weight.grad is None and not teacher[0].weight.requires_grad


def test_ema_momentum_zero_copies_the_student():
    student, teacher = small_net(), small_net()
    ema_update(teacher, student, momentum=0.0)
    assert all(torch.equal(a, b) for a, b in zip(teacher.state_dict().values(), student.state_dict().values()))


def test_ema_momentum_schedule():
    cfg = TrainConfig(burn_in_iters=5, ema_momentum=0.999)
    assert [ema_momentum_at(i, cfg) for i in (0, 4, 5, 50)] == [0.0, 0.0, 0.999, 0.999]
    cfg = TrainConfig(burn_in_iters=5, ema_momentum=0.999, burn_in_copy=False)  # Mean Teacher: EMA from the start
    assert [ema_momentum_at(i, cfg) for i in (0, 4, 5, 50)] == [0.999] * 4


def test_predict_soft_shapes_and_values():
    torch.manual_seed(0)
    model = sed.build_model(num_classes=3, backbone="resnet18", backbone_weights=None, min_size=64, max_size=128)
    teacher = make_teacher(model)
    cfg = TrainConfig(teacher_proposals=20, distill_temperature=2.0, distill=True, hard_pseudo_labels=True)
    weak, _, _ = make_views(model, [torch.rand(3, 70, 100), torch.rand(3, 90, 64)], cfg, min_size=64)
    soft = predict_soft(teacher, weak, cfg)
    B, R = 2, sum(soft.level_sizes)
    assert soft.level_sizes == [3 * 32 * 32, 3 * 16 * 16, 3 * 8 * 8, 3 * 4 * 4, 3 * 2 * 2]  # 128x128 padded batch
    assert soft.rpn_prob.shape == (B, R) and soft.rpn_deltas.shape == (B, R, 4)
    assert ((soft.rpn_prob >= 0) & (soft.rpn_prob <= 1)).all()
    P = sum(len(p) for p in soft.proposals)
    assert all(0 < len(p) <= 20 for p in soft.proposals)
    assert soft.roi_probs.shape == (P, 4) and torch.allclose(soft.roi_probs.sum(1), torch.ones(P))
    assert soft.roi_deltas.shape == (P, 4) and soft.roi_fg.shape == (P,)
    assert ((soft.roi_labels >= 1) & (soft.roi_labels <= 3)).all()
    # the same teacher at temperature 1: fg = 1 - p_bg, labels = arg-max foreground class, deltas of that class
    with torch.no_grad():
        features = teacher.features(weak.tensors)
    logits, deltas = teacher.roi_heads.predict(features, soft.proposals)
    probs = logits.softmax(1)
    assert torch.allclose(soft.roi_fg, 1 - probs[:, 0])
    assert torch.equal(soft.roi_labels, probs[:, 1:].argmax(1) + 1)
    assert torch.allclose(soft.roi_probs, (logits / 2).softmax(1))
    # allclose, not equal: predict_soft's rows come from one pass over all proposals (a larger matmul), whose
    # float rounding depends on the CPU's kernels (bitwise equal on stop 20's machine; 3.4e-7 apart on stop 21's)
    assert torch.allclose(soft.roi_deltas, deltas.view(P, 4, 4)[torch.arange(P), soft.roi_labels], atol=1e-6)
    # hard-label detections equal teacher.detect on the weak batch
    for mine, ref in zip(soft.detections, teacher.detect(weak)):
        assert torch.equal(mine["boxes"], ref["boxes"]) and torch.equal(mine["labels"], ref["labels"])
    figure_1 = TrainConfig(distill=True, hard_pseudo_labels=False)
    assert predict_soft(teacher, weak, figure_1).detections is None  # not needed: not computed
    calls = []
    predict = teacher.roi_heads.predict
    teacher.roi_heads.predict = lambda feats, boxes: calls.append(sum(map(len, boxes))) or predict(feats, boxes)
    predict_soft(teacher, weak, cfg)
    assert calls == [sum(len(d) for d in teacher.rpn(weak, features)[0])]  # one RoI-head pass: all proposals


def test_target_sharpen_divides_the_teacher_logits_and_leaves_the_weights():
    torch.manual_seed(0)
    model = sed.build_model(num_classes=3, backbone="resnet18", backbone_weights=None, min_size=64, max_size=128)
    teacher = make_teacher(model)
    cfg = TrainConfig(teacher_proposals=8, distill_temperature=2.0, target_sharpen=0.5)
    weak, _, _ = make_views(model, [torch.rand(3, 64, 64)], cfg, min_size=64)
    soft = predict_soft(teacher, weak, cfg)
    plain = predict_soft(teacher, weak, TrainConfig(teacher_proposals=8, distill_temperature=2.0))
    assert torch.equal(soft.rpn_prob, plain.rpn_prob) and torch.equal(soft.roi_fg, plain.roi_fg)  # weights
    assert torch.equal(plain.rpn_target_logits.sigmoid(), plain.rpn_prob)  # target_sharpen 1: the teacher's own
    assert torch.equal(soft.rpn_target_logits, 2 * plain.rpn_target_logits)
    with torch.no_grad():
        logits, _ = teacher.roi_heads.predict(teacher.features(weak.tensors), soft.proposals)
    assert torch.allclose(soft.roi_probs, (logits / (2.0 * 0.5)).softmax(1), atol=1e-6)
