"""Box coding, matching, sampling and anchors: equality with torchvision, hand-computed cases."""
import math

import pytest
import torch
from torchvision.models.detection import _utils as tv_utils
from torchvision.models.detection.anchor_utils import AnchorGenerator as TvAnchorGenerator
from torchvision.models.detection.image_list import ImageList

from sed.anchors import AnchorGenerator, cell_anchors
from sed.boxes import BoxCoder, Matcher, sample_balanced


def random_boxes(n, size=200.0, generator=None):
    xy = torch.rand(n, 2, generator=generator) * size
    wh = torch.rand(n, 2, generator=generator) * size / 2 + 1
    return torch.cat([xy, xy + wh], dim=1)


@pytest.mark.parametrize("weights", [(1.0, 1.0, 1.0, 1.0), (10.0, 10.0, 5.0, 5.0)])
def test_box_coder_equals_torchvision(weights):
    g = torch.Generator().manual_seed(0)
    ref, boxes = random_boxes(50, generator=g), random_boxes(50, generator=g)
    ours, theirs = BoxCoder(weights), tv_utils.BoxCoder(weights)
    torch.testing.assert_close(ours.encode(ref, boxes), theirs.encode_single(boxes, ref), rtol=0, atol=0)
    deltas = torch.randn(50, 12, generator=g)
    torch.testing.assert_close(ours.decode(deltas, ref), theirs.decode(deltas, [ref]), rtol=0, atol=0)


def test_box_coder_hand_computed_and_round_trip():
    coder = BoxCoder((10.0, 10.0, 5.0, 5.0))
    ref = torch.tensor([[0.0, 0.0, 10.0, 20.0]])  # centre (5, 10), w 10, h 20
    box = torch.tensor([[5.0, 0.0, 15.0, 40.0]])  # centre (10, 20), w 10, h 40
    expected = torch.tensor([[10 * 5 / 10, 10 * 10 / 20, 5 * math.log(1.0), 5 * math.log(2.0)]])
    torch.testing.assert_close(coder.encode(ref, box), expected)
    torch.testing.assert_close(coder.decode(expected, ref)[:, 0], box)


def test_low_precision_deltas_decode_at_float32():
    """Under bfloat16 autocast the deltas are bfloat16; the boxes must not be rounded with them (torchvision
    casts the references to bfloat16: [1001, 603, 1203, 799] with zero deltas comes back [1004, 608, 1200, 800])."""
    ref = torch.tensor([[1001.0, 603.0, 1203.0, 799.0]])
    deltas = torch.zeros(1, 4, dtype=torch.bfloat16)
    decoded = BoxCoder((10.0, 10.0, 5.0, 5.0)).decode(deltas, ref)
    assert decoded.dtype == torch.float32 and torch.equal(decoded[:, 0], ref)
    assert not torch.equal(tv_utils.BoxCoder((10.0, 10.0, 5.0, 5.0)).decode(deltas, [ref])[:, 0].float(), ref)


def test_box_coder_clamps_huge_scale():
    coder = BoxCoder((1.0, 1.0, 1.0, 1.0))
    out = coder.decode(torch.tensor([[0.0, 0.0, 1e4, 1e4]]), torch.tensor([[0.0, 0.0, 16.0, 16.0]]))
    assert torch.isfinite(out).all()
    assert out[0, 0, 2] - out[0, 0, 0] == pytest.approx(1000.0, rel=1e-5)  # exp(log(1000/16)) * 16


@pytest.mark.parametrize("low_quality", [False, True])
def test_matcher_equals_torchvision(low_quality):
    g = torch.Generator().manual_seed(1)
    iou = (torch.rand(6, 300, generator=g) * 4).round() / 4  # coarse values: many ties
    theirs = tv_utils.Matcher(0.7, 0.3, allow_low_quality_matches=low_quality)(iou)
    ours = Matcher(0.7, 0.3, allow_low_quality_matches=low_quality)(iou)
    assert torch.equal(ours, theirs)


def test_matcher_hand_computed():
    iou = torch.tensor([[0.9, 0.5, 0.1, 0.0],
                        [0.0, 0.6, 0.2, 0.05]])
    matches = Matcher(0.7, 0.3)(iou)
    assert matches.tolist() == [0, -2, -1, -1]
    # low quality: gt 1's best prediction (0.6, column 1) is kept although below 0.7
    assert Matcher(0.7, 0.3, allow_low_quality_matches=True)(iou).tolist() == [0, 1, -1, -1]


def test_sample_balanced_hand_computed():
    labels = torch.tensor([1, 0, 0, -1, 2, 0, 0, 0, 1, 0, 0, -1])  # 3 positives, 7 negatives, 2 ignored
    torch.manual_seed(0)
    pos, neg = sample_balanced(labels, num_samples=8, positive_fraction=0.25)
    assert len(pos) == 2 and len(neg) == 6  # 8 * 0.25 positives, the rest negatives
    assert (labels[pos] >= 1).all() and (labels[neg] == 0).all()
    assert len(set(pos.tolist())) == 2 and len(set(neg.tolist())) == 6
    pos, neg = sample_balanced(labels, num_samples=16, positive_fraction=0.5)
    assert len(pos) == 3 and len(neg) == 7  # fewer candidates than asked: all of them, never ignored ones
    pos, neg = sample_balanced(torch.zeros(5, dtype=torch.int64), 4, 0.5)
    assert len(pos) == 0 and len(neg) == 4  # no positives: negatives fill the batch


def test_cell_anchors_hand_computed():
    anchors = cell_anchors(32, (0.5, 1.0, 2.0))
    # ratio 1: a 32 x 32 square centred on the origin; ratio 2 (h / w): about 23 x 45
    assert anchors[1].tolist() == [-16.0, -16.0, 16.0, 16.0]
    assert anchors[2].tolist() == [-11.0, -23.0, 11.0, 23.0]


def test_anchors_equal_torchvision():
    sizes, ratios = (32, 64, 128, 256, 512), (0.5, 1.0, 2.0)
    tensors = torch.zeros(2, 3, 224, 320)
    features = [torch.zeros(2, 8, 224 // s, -(-320 // s)) for s in (4, 8, 16, 32)]
    features.append(torch.zeros(2, 8, 4, 5))  # P6 of a P5 of 7 x 10
    theirs = TvAnchorGenerator(tuple((s,) for s in sizes), (ratios,) * 5)(
        ImageList(tensors, [(224, 320)] * 2), features)[0]
    ours = AnchorGenerator(sizes, ratios)(tensors.shape[-2:], [f.shape[-2:] for f in features])
    assert torch.equal(torch.cat(ours), theirs)
