"""Box coding, anchor/proposal matching and balanced sampling.

The three small pieces every two-stage detector shares. They follow torchvision's
`detection/_utils.py` (and so Faster R-CNN, Ren et al. 2015, Eq. 2) number for number, so that
weights trained with torchvision give the same detections here. Boxes are `[N, 4]` xyxy in pixels.
"""
import math

import torch


class BoxCoder:
    """Encodes a box relative to a reference box as (dx, dy, dw, dh), Faster R-CNN Eq. 2.

    dx = wx * (x_box - x_ref) / w_ref,  dw = ww * log(w_box / w_ref)   (same for y, h)

    `weights` scale the four deltas: (1, 1, 1, 1) for the RPN, (10, 10, 5, 5) for the RoI head
    (torchvision/detectron2 defaults). dw, dh are clamped at log(1000/16) when decoding so that
    exp() cannot overflow for a wild prediction.
    """

    def __init__(self, weights, clip=math.log(1000.0 / 16)):
        self.weights = weights
        self.clip = clip

    def encode(self, ref, boxes):
        """ref [N, 4], boxes [N, 4] -> deltas [N, 4] that turn each ref into its box."""
        wx, wy, ww, wh = self.weights
        ref_w = ref[:, 2] - ref[:, 0]
        ref_h = ref[:, 3] - ref[:, 1]
        ref_x = ref[:, 0] + 0.5 * ref_w
        ref_y = ref[:, 1] + 0.5 * ref_h
        box_w = boxes[:, 2] - boxes[:, 0]
        box_h = boxes[:, 3] - boxes[:, 1]
        box_x = boxes[:, 0] + 0.5 * box_w
        box_y = boxes[:, 1] + 0.5 * box_h
        dx = wx * (box_x - ref_x) / ref_w
        dy = wy * (box_y - ref_y) / ref_h
        dw = ww * torch.log(box_w / ref_w)
        dh = wh * torch.log(box_h / ref_h)
        return torch.stack((dx, dy, dw, dh), dim=1)

    def decode(self, deltas, ref):
        """deltas [N, 4k] (k boxes per reference, e.g. one per class), ref [N, 4] -> boxes [N, k, 4], float32.

        Deviates from torchvision, which casts ref to the deltas' dtype: under bfloat16 autocast (8
        significant bits) a coordinate near 1000 px would round to a multiple of 4-8 px, and so would the
        proposals, the detections and SED's pseudo-labels. Float32 inputs give torchvision's numbers.
        """
        deltas, ref = deltas.float(), ref.float()
        wx, wy, ww, wh = self.weights
        ref_w = ref[:, 2] - ref[:, 0]
        ref_h = ref[:, 3] - ref[:, 1]
        ref_x = ref[:, 0] + 0.5 * ref_w
        ref_y = ref[:, 1] + 0.5 * ref_h
        dx = deltas[:, 0::4] / wx  # [N, k]
        dy = deltas[:, 1::4] / wy
        dw = (deltas[:, 2::4] / ww).clamp(max=self.clip)
        dh = (deltas[:, 3::4] / wh).clamp(max=self.clip)
        x = dx * ref_w[:, None] + ref_x[:, None]
        y = dy * ref_h[:, None] + ref_y[:, None]
        half_w = 0.5 * torch.exp(dw) * ref_w[:, None]
        half_h = 0.5 * torch.exp(dh) * ref_h[:, None]
        return torch.stack((x - half_w, y - half_h, x + half_w, y + half_h), dim=2)


class Matcher:
    """Assigns each prediction (anchor or proposal) to the ground-truth box it overlaps most.

    Returns `matches [P]`: the index of the matched ground-truth box when IoU >= high,
    `BELOW_LOW_THRESHOLD` (-1, background) when IoU < low and `BETWEEN_THRESHOLDS` (-2, ignored)
    in between. With `allow_low_quality_matches` (RPN), every ground-truth box also keeps the
    predictions of its highest IoU, even below `high`, so no object is left without an anchor
    (Faster R-CNN §3.1.2).
    """

    BELOW_LOW_THRESHOLD = -1
    BETWEEN_THRESHOLDS = -2

    def __init__(self, high, low, allow_low_quality_matches=False):
        assert low <= high
        self.high = high
        self.low = low
        self.allow_low_quality_matches = allow_low_quality_matches

    def __call__(self, iou):
        """iou [G, P] (ground truth x predictions, G >= 1) -> matches [P] int64."""
        best_iou, matches = iou.max(dim=0)  # [P]
        best_gt_for_pred = matches.clone()
        matches[best_iou < self.low] = self.BELOW_LOW_THRESHOLD
        matches[(best_iou >= self.low) & (best_iou < self.high)] = self.BETWEEN_THRESHOLDS
        if self.allow_low_quality_matches:
            best_iou_per_gt = iou.max(dim=1).values  # [G]
            # all predictions tied for a gt's best IoU, as torchvision and detectron2 do
            _, pred_idx = torch.where(iou == best_iou_per_gt[:, None])
            matches[pred_idx] = best_gt_for_pred[pred_idx]
        return matches


def sample_balanced(labels, num_samples, positive_fraction):
    """Draws at most `num_samples` indices with up to `positive_fraction` positives.

    labels [N]: 1 (or any class > 0) positive, 0 negative, -1 ignored.
    Returns (pos_idx [p], neg_idx [n]) with p = min(#pos, num * fraction) and n filling the rest,
    both drawn uniformly without replacement (Faster R-CNN: 256 anchors per image at 1:1;
    Fast R-CNN: 512 RoIs at 1:3).
    """
    positive = torch.where(labels >= 1)[0]
    negative = torch.where(labels == 0)[0]
    num_pos = min(positive.numel(), int(num_samples * positive_fraction))
    num_neg = min(negative.numel(), num_samples - num_pos)
    pos_idx = positive[torch.randperm(positive.numel(), device=labels.device)[:num_pos]]
    neg_idx = negative[torch.randperm(negative.numel(), device=labels.device)[:num_neg]]
    return pos_idx, neg_idx
