"""Pseudo-label diagnostics on hand-made cases whose values are computed by hand."""
import math
from types import SimpleNamespace

import pytest
import torch
from torch import nn

import sed
from sed.config import TrainConfig
from sed.diagnostics import (PseudoLabelStats, best_iou, collapse_warning, covered, diagnose, format_summary,
                             size_bins, teacher_outputs, teacher_recall, weight_on_objects)
from sed.transform import ImageTransform

# three objects, one per COCO size bin: areas 100 (small), 1600 (medium), 10000 (large)
GT = {"boxes": torch.tensor([[0., 0., 10., 10.], [100., 100., 140., 140.], [200., 200., 300., 300.]]),
      "labels": torch.tensor([1, 2, 3])}
PRED = {"boxes": torch.tensor([[0., 0., 10., 5.],          # IoU 0.5 with object 0
                               [100., 100., 140., 140.],   # IoU 1.0 with object 1, low score
                               [200., 200., 300., 280.],   # IoU 0.8 with object 2
                               [500., 500., 510., 510.]]), # false positive
        "scores": torch.tensor([0.95, 0.6, 0.8, 0.99]),
        "labels": torch.tensor([1, 2, 3, 1])}
ROIS = torch.tensor([[0., 0., 10., 10.],        # IoU 1.0 with object 0   -> on an object
                     [0., 0., 10., 4.],         # IoU 0.4 with object 0   -> background
                     [200., 200., 300., 300.],  # IoU 1.0 with object 2   -> on an object
                     [600., 600., 700., 700.]]) # background
ROI_W = torch.tensor([0.9, 0.5, 0.6, 0.1])


def test_covered_and_recall_per_threshold():
    hits = covered(PRED["boxes"], PRED["scores"], GT["boxes"], (0.5, 0.7, 0.9), 0.5,
                   PRED["labels"], GT["labels"])
    assert hits.tolist() == [[True, True, True], [True, False, True], [True, False, False]]
    recall = teacher_recall(PRED["boxes"], PRED["scores"], GT["boxes"], (0.5, 0.7, 0.9))
    assert torch.allclose(recall, torch.tensor([1.0, 2 / 3, 1 / 3]))


def test_class_aware_matching():
    wrong = torch.tensor([1, 2, 1, 1])  # the box on object 2 (class 3) now says class 1
    hits = covered(PRED["boxes"], PRED["scores"], GT["boxes"], (0.5,), 0.5, wrong, GT["labels"])
    assert hits.tolist() == [[True, True, False]]
    hits = covered(PRED["boxes"], PRED["scores"], GT["boxes"], (0.5,), 0.5)  # class-agnostic
    assert hits.tolist() == [[True, True, True]]


def test_best_iou_and_size_bins():
    assert torch.allclose(best_iou(PRED["boxes"], GT["boxes"]), torch.tensor([0.5, 1.0, 0.8]))
    assert best_iou(PRED["boxes"][:0], GT["boxes"]).tolist() == [0.0, 0.0, 0.0]
    boxes = torch.tensor([[0., 0., 31., 33.], [0., 0., 32., 32.], [0., 0., 95., 97.], [0., 0., 96., 96.]])
    assert size_bins(boxes).tolist() == [0, 1, 1, 2]  # areas 1023, 1024, 9215, 9216


def test_weight_on_objects():
    on, total = weight_on_objects(ROIS, ROI_W, GT["boxes"])
    assert on == pytest.approx(1.5) and total == pytest.approx(2.1)
    assert weight_on_objects(ROIS, ROI_W, GT["boxes"][:0]) == (0.0, pytest.approx(2.1))


def test_stats_one_image_exact():
    s = PseudoLabelStats().update(PRED, GT, ROIS, ROI_W).summary()
    assert s["pl_recall@0.5"] == pytest.approx(1.0)
    assert s["pl_recall@0.7"] == pytest.approx(2 / 3)   # 1/3 of the objects lost by a 0.7 threshold
    assert s["pl_recall@0.9"] == pytest.approx(1 / 3)
    assert s["pl_precision@0.7"] == pytest.approx(2 / 3)  # kept: 0.95 (true), 0.8 (true), 0.99 (FP)
    assert s["pl_mean_iou"] == pytest.approx((0.5 + 0.8) / 2)  # object 1 has no box >= 0.7
    assert (s["pl_recall_small"], s["pl_recall_medium"], s["pl_recall_large"]) == (1.0, 0.0, 1.0)
    assert s["pl_weight_on_objects"] == pytest.approx(1.5 / 2.1)
    assert (s["pl_num_images"], s["pl_num_objects"], s["pl_dets_per_image"]) == (1, 3, 3)


def test_stats_sum_counts_over_images():
    stats = PseudoLabelStats().update(PRED, GT, ROIS, ROI_W)
    background = {"boxes": torch.tensor([[5., 5., 50., 50.]]), "scores": torch.tensor([0.9]),
                  "labels": torch.tensor([2])}
    empty_gt = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)}
    s = stats.update(background, empty_gt, torch.tensor([[5., 5., 50., 50.]]), torch.tensor([0.4])).summary()
    assert s["pl_recall@0.7"] == pytest.approx(2 / 3)      # the object-free image adds nothing
    assert s["pl_precision@0.7"] == pytest.approx(2 / 4)   # ... but one more false positive
    assert s["pl_weight_on_objects"] == pytest.approx(1.5 / 2.5)
    assert s["pl_dets_per_image"] == pytest.approx(2.0)


def test_empty_cases_skip_undefined_ratios():
    none = {"boxes": torch.zeros(0, 4), "scores": torch.zeros(0), "labels": torch.zeros(0, dtype=torch.long)}
    empty_gt = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)}
    s = PseudoLabelStats().update(none, empty_gt, torch.zeros(0, 4), torch.zeros(0)).summary()
    assert s == {"pl_num_images": 1.0, "pl_num_objects": 0.0, "pl_dets_per_image": 0.0}
    s = PseudoLabelStats().update(none, GT).summary()  # objects, no detections: recall 0, no IoU
    assert s["pl_recall@0.5"] == 0.0 and "pl_mean_iou" not in s and "pl_precision@0.7" not in s
    assert PseudoLabelStats().summary() == {"pl_num_images": 0.0, "pl_num_objects": 0.0}
    assert all(math.isfinite(v) for v in s.values())
    assert format_summary({}).startswith("pseudo-labels (0 images")


def test_format_summary_one_line():
    line = format_summary(PseudoLabelStats().update(PRED, GT, ROIS, ROI_W).summary())
    assert "\n" not in line
    assert line.startswith("pseudo-labels (1 images, 3 objects): ")
    assert "recall@0.7 0.667" in line and "mean_iou 0.650" in line and "weight_on_objects 0.714" in line


class FakeTeacher(nn.Module):
    """The contract's intermediate API with a known answer: the "resized" batch is 20 x 20 for a
    40 x 80 image (sy = 2, sx = 4), proposals and class logits are fixed."""

    def __init__(self):
        super().__init__()
        p_bg = torch.tensor([0.1, 0.7])  # -> w_r = 0.9, 0.3
        logits = torch.stack([p_bg, 1 - p_bg], dim=1).log()  # [2, C+1], C = 1
        proposals = [torch.tensor([[0., 0., 5., 10.], [10., 5., 20., 10.]])]  # resized pixels
        det = {"boxes": torch.tensor([[0., 0., 5., 10.]]), "scores": torch.tensor([0.8]),
               "labels": torch.tensor([1])}  # resized pixels: [0, 0, 20, 20] in the image
        batch = SimpleNamespace(tensors=torch.zeros(1, 3, 32, 32), image_sizes=[(20, 20)])
        self.transform = lambda images: (batch, None)
        self.transform.postprocess = ImageTransform.postprocess
        self.rpn = SimpleNamespace(head=lambda feats: (None, None), anchors=lambda batch, feats: None,
                                   propose=lambda anchors, obj, deltas, sizes: proposals)
        self.roi_heads = SimpleNamespace(predict=lambda feats, props: (logits, None),
                                         detections=lambda logits, deltas, props, sizes: [dict(det)])

    def features(self, tensors):
        return [tensors]


def test_teacher_outputs_are_in_image_pixels():
    dets, ((boxes, w),) = teacher_outputs(FakeTeacher(), [torch.zeros(3, 40, 80)])
    assert torch.allclose(dets[0]["boxes"], torch.tensor([[0., 0., 20., 20.]]))
    assert torch.allclose(boxes, torch.tensor([[0., 0., 20., 20.], [40., 10., 80., 20.]]))
    assert torch.allclose(w, torch.tensor([0.9, 0.3]))


def test_the_weight_on_objects_is_that_of_the_loss_s_rois_and_weights():
    """Only each image's first --teacher-proposals count, with the loss's weights (floor, gamma)."""
    image = [torch.zeros(3, 40, 80)]
    _, ((boxes, w),) = teacher_outputs(FakeTeacher(), image, TrainConfig(teacher_proposals=1))
    assert len(boxes) == 1 and torch.allclose(w, torch.tensor([0.9]))
    _, ((_, w),) = teacher_outputs(FakeTeacher(), image, TrainConfig(weight_floor=0.5, weight_gamma=2.0))
    assert torch.allclose(w, torch.tensor([0.81, 0.5]))
    _, ((_, w),) = teacher_outputs(FakeTeacher(), image, TrainConfig(reweight=False))
    assert torch.equal(w, torch.ones(2))


def test_diagnose_with_fake_teacher_restores_train_mode():
    teacher = FakeTeacher().train()
    dataset = [(torch.zeros(3, 40, 80), {"boxes": torch.tensor([[0., 0., 20., 20.]]),
                                         "labels": torch.tensor([1])})]
    s = diagnose(teacher, dataset, [0])
    assert teacher.training
    assert s["pl_recall@0.7"] == 1.0 and s["pl_recall@0.9"] == 0.0 and s["pl_mean_iou"] == 1.0
    assert s["pl_weight_on_objects"] == pytest.approx(0.9 / 1.2)


def test_diagnose_runs_on_the_real_detector():
    torch.manual_seed(0)
    model = sed.build_model(num_classes=3, backbone="resnet18", min_size=64, max_size=96)
    model.roi_heads.score_thresh = 0.0  # an untrained head: keep its low-score detections
    dataset = [(torch.rand(3, 48, 64), {"boxes": torch.tensor([[4., 4., 40., 30.]]),
                                        "labels": torch.tensor([2])}) for _ in range(2)]
    s = diagnose(model, dataset, range(2), batch_size=2)
    assert s["pl_num_images"] == 2 and s["pl_num_objects"] == 2
    assert all(math.isfinite(v) for v in s.values()) and 0.0 <= s["pl_weight_on_objects"] <= 1.0
    images = [image for image, _ in dataset]
    model.eval()
    dets, rois = teacher_outputs(model, images)  # one pass gives what model(images) gives
    with torch.no_grad():
        refs = model(images)
    for det, ref in zip(dets, refs):
        assert len(ref["boxes"]) > 0 and torch.allclose(det["boxes"], ref["boxes"])
    for boxes, w in rois:  # proposals back in the 64 x 48 image
        assert boxes[:, 2].max() <= 64 and boxes[:, 3].max() <= 48 and boxes[:, 2].max() > 48
        assert len(boxes) == len(w) and ((w >= 0) & (w <= 1)).all()


def test_collapse_warning_when_detections_or_recall_halve():
    first = {"pl_dets_per_image": 2.0, "pl_recall@0.5": 0.6, "pl_num_images": 32.0}
    assert collapse_warning({"pl_dets_per_image": 1.1, "pl_recall@0.5": 0.31}, first) is None  # above half
    warning = collapse_warning({"pl_dets_per_image": 0.9, "pl_recall@0.5": 0.5}, first)
    assert warning.startswith("warning: the teacher is collapsing") and "dets_per_image 2.000 -> 0.900" in warning
    assert "recall" not in warning
    assert collapse_warning({}, first) is None  # nothing measured (no objects): no claim
