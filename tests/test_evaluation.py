"""COCO evaluation on hand-made cases: perfect detections, no detections, category-id mapping."""
import pytest
import torch

from sed.data import CocoDetection
from sed.evaluation import METRIC_NAMES, coco_metrics, evaluate, to_coco_results
from sed.synthetic import generate


@pytest.fixture(scope="module")
def val_set(tmp_path_factory):
    paths = generate(tmp_path_factory.mktemp("shapes"), num_train=1, num_val=6, seed=3, image_size=64)
    return CocoDetection(paths["val_ann"], paths["val_images"])


class ReplayModel(torch.nn.Module):
    """Returns the given detections, one per image in data set order (as the eval loader feeds it)."""

    def __init__(self, detections):
        super().__init__()
        self.detections = list(detections)

    def forward(self, images):
        return [self.detections.pop(0) for _ in images]


def ground_truth_detections(ds):
    """The data set's own boxes as detections with score 1 (labels 1..C)."""
    return [{"boxes": t["boxes"], "labels": t["labels"], "scores": torch.ones(len(t["labels"]))}
            for t in (ds[i][1] for i in range(len(ds)))]


def test_ground_truth_as_detections_gives_ap_100(val_set):
    metrics = evaluate(ReplayModel(ground_truth_detections(val_set)), val_set, "cpu", batch_size=4, workers=0)
    assert set(METRIC_NAMES) <= set(metrics)
    assert metrics["AP"] == pytest.approx(100) and metrics["AP50"] == pytest.approx(100)
    assert metrics["AP75"] == pytest.approx(100) and metrics["AR100"] == pytest.approx(100)
    # results carry the COCO category ids (1, 3, 7, 8, 12 in the synthetic set), not labels 1..5
    assert {d["category_id"] for d in metrics["detections"]} <= set(val_set.label_to_cat_id.values())
    assert {a["category_id"] for a in val_set.coco.dataset["annotations"]} == \
        {d["category_id"] for d in metrics["detections"]}


def test_no_detections_gives_zeros(val_set):
    empty = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64), "scores": torch.zeros(0)}
    metrics = evaluate(ReplayModel([empty] * len(val_set)), val_set, "cpu", batch_size=4, workers=0)
    assert all(metrics[k] == 0.0 for k in METRIC_NAMES) and metrics["detections"] == []


def test_wrong_class_halves_ap(val_set):
    dets = ground_truth_detections(val_set)
    for d in dets[::2]:  # every other image predicts class label+1: its boxes count as false positives
        d["labels"] = d["labels"] % val_set.num_classes + 1
    assert coco_metrics(val_set.coco, [], verbose=False)["AP"] == 0
    metrics = evaluate(ReplayModel(dets), val_set, "cpu", batch_size=2, workers=0)
    assert 0 < metrics["AP"] < 100


def test_result_format():
    dets = {"boxes": torch.tensor([[10.0, 20.0, 30.0, 60.0]]), "scores": torch.tensor([0.5]),
            "labels": torch.tensor([2])}
    assert to_coco_results(dets, 17, {1: 1, 2: 3}) == [
        {"image_id": 17, "category_id": 3, "bbox": [10.0, 20.0, 20.0, 40.0], "score": 0.5}]
