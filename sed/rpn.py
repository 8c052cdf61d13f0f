"""Region Proposal Network (Faster R-CNN §3.1) over the FPN levels P2-P6.

A shared 3x3 conv head predicts, at every anchor, an objectness logit and box deltas. Training:
anchors are matched to ground truth (IoU >= 0.7 positive, < 0.3 negative, plus each object's best
anchor), 256 anchors per image are sampled 1:1, and the loss is BCE + smooth L1 (beta 1/9).
Proposals: the top `pre_nms_top_n` anchors per level, decoded, clipped, NMS 0.7 per level, the
top `post_nms_top_n` kept. Defaults are torchvision's `fasterrcnn_resnet50_fpn`.
"""
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import batched_nms, box_iou, clip_boxes_to_image, remove_small_boxes

from sed.anchors import AnchorGenerator
from sed.boxes import BoxCoder, Matcher, sample_balanced


class RPNHead(nn.Module):
    """features (list of [B, C, H, W]) -> objectness [B, A, H, W] and deltas [B, 4A, H, W] per level."""

    def __init__(self, in_channels=256, num_anchors=3):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, in_channels, 3, padding=1)
        self.objectness = nn.Conv2d(in_channels, num_anchors, 1)
        self.deltas = nn.Conv2d(in_channels, 4 * num_anchors, 1)
        for conv in (self.conv, self.objectness, self.deltas):
            nn.init.normal_(conv.weight, std=0.01)  # Faster R-CNN §3.1.3
            nn.init.zeros_(conv.bias)

    def forward(self, features):
        hidden = [F.relu(self.conv(f)) for f in features]
        return [self.objectness(h) for h in hidden], [self.deltas(h) for h in hidden]


def flatten_outputs(objectness, deltas):
    """Per-level head outputs -> objectness [B, R] and deltas [B, R, 4], R = sum_l H_l * W_l * A.

    Order: level, y, x, anchor -- the order of `AnchorGenerator`'s anchors.
    """
    obj_flat, deltas_flat = [], []
    for obj, delta in zip(objectness, deltas):
        b, a, h, w = obj.shape
        obj_flat.append(obj.permute(0, 2, 3, 1).reshape(b, -1))
        deltas_flat.append(delta.view(b, a, 4, h, w).permute(0, 3, 4, 1, 2).reshape(b, -1, 4))
    return torch.cat(obj_flat, dim=1), torch.cat(deltas_flat, dim=1)


class RegionProposalNetwork(nn.Module):
    def __init__(self, in_channels=256, anchor_sizes=(32, 64, 128, 256, 512),
                 aspect_ratios=(0.5, 1.0, 2.0), fg_iou=0.7, bg_iou=0.3, batch_size_per_image=256,
                 positive_fraction=0.5, pre_nms_top_n=(2000, 1000), post_nms_top_n=(2000, 1000),
                 nms_thresh=0.7, min_box_size=1e-3):
        super().__init__()
        self.anchor_generator = AnchorGenerator(anchor_sizes, aspect_ratios)
        self.head = RPNHead(in_channels, len(aspect_ratios))
        self.box_coder = BoxCoder((1.0, 1.0, 1.0, 1.0))
        self.matcher = Matcher(fg_iou, bg_iou, allow_low_quality_matches=True)
        self.batch_size_per_image = batch_size_per_image
        self.positive_fraction = positive_fraction
        self.pre_nms_top_n = dict(zip((True, False), pre_nms_top_n))  # keyed by self.training
        self.post_nms_top_n = dict(zip((True, False), post_nms_top_n))
        self.nms_thresh = nms_thresh
        self.min_box_size = min_box_size

    def anchors(self, batch, features):
        """Per level [H_l * W_l * A, 4]: the same anchors for every image of the batch."""
        return self.anchor_generator(batch.tensors.shape[-2:], [f.shape[-2:] for f in features])

    def forward(self, batch, features, targets=None, head_outputs=None):
        """Returns (proposals: list of [P_i, 4] per image, losses: dict, empty without targets).
        head_outputs: `self.head(features)` if already computed (SED's strong view)."""
        objectness, deltas = self.head(features) if head_outputs is None else head_outputs
        anchors = self.anchors(batch, features)
        proposals = self.propose(anchors, objectness, deltas, batch.image_sizes)
        if targets is None:
            return proposals, {}
        obj_flat, deltas_flat = flatten_outputs(objectness, deltas)
        return proposals, self.loss(torch.cat(anchors), obj_flat, deltas_flat, targets)

    @torch.no_grad()
    def propose(self, anchors, objectness, deltas, image_sizes):
        """Top anchors per level -> decoded, clipped boxes after NMS, list of [P_i, 4] per image."""
        obj_flat, deltas_flat = flatten_outputs(objectness, deltas)  # [B, R], [B, R, 4]
        top_idx, levels = self.top_per_level(obj_flat, [len(a) for a in anchors])  # [B, K], [B, K]
        rows = torch.arange(obj_flat.shape[0], device=obj_flat.device)[:, None]
        scores = torch.sigmoid(obj_flat[rows, top_idx])  # [B, K]
        ref = torch.cat(anchors)[top_idx]  # [B, K, 4]
        boxes = self.box_coder.decode(deltas_flat[rows, top_idx].reshape(-1, 4), ref.reshape(-1, 4))
        boxes = boxes.view_as(ref)
        return [self.nms_per_level(b, s, lvl, size)
                for b, s, lvl, size in zip(boxes, scores, levels, image_sizes)]

    def top_per_level(self, obj_flat, num_per_level):
        """Indices [B, K] of the `pre_nms_top_n` highest-objectness anchors of each level, and their level."""
        top_idx, levels, start = [], [], 0
        for level, n in enumerate(num_per_level):
            k = min(self.pre_nms_top_n[self.training], n)
            top_idx.append(obj_flat[:, start:start + n].topk(k, dim=1).indices + start)
            levels.append(torch.full((k,), level, device=obj_flat.device))
            start += n
        top_idx = torch.cat(top_idx, dim=1)
        return top_idx, torch.cat(levels).expand_as(top_idx)

    def nms_per_level(self, boxes, scores, levels, image_size):
        """One image: boxes [K, 4], scores [K], levels [K] -> kept proposals [P, 4], best first."""
        boxes = clip_boxes_to_image(boxes, image_size)
        keep = remove_small_boxes(boxes, self.min_box_size)
        boxes, scores, levels = boxes[keep], scores[keep], levels[keep]
        keep = batched_nms(boxes, scores, levels, self.nms_thresh)[: self.post_nms_top_n[self.training]]
        return boxes[keep]

    def loss(self, anchors, obj_flat, deltas_flat, targets):
        """anchors [R, 4], obj_flat [B, R], deltas_flat [B, R, 4] -> objectness BCE + box smooth L1."""
        sampled_obj, sampled_labels, pos_deltas, pos_targets = [], [], [], []
        for obj, deltas, target in zip(obj_flat, deltas_flat, targets):
            labels, matched = self.match(anchors, target["boxes"])
            pos, neg = sample_balanced(labels, self.batch_size_per_image, self.positive_fraction)
            idx = torch.cat([pos, neg])
            sampled_obj.append(obj[idx])
            sampled_labels.append(labels[idx])
            pos_deltas.append(deltas[pos])
            pos_targets.append(self.box_coder.encode(anchors[pos], target["boxes"][matched[pos]]))
        num_sampled = sum(len(x) for x in sampled_labels)
        loss_obj = F.binary_cross_entropy_with_logits(torch.cat(sampled_obj), torch.cat(sampled_labels))
        loss_box = F.smooth_l1_loss(torch.cat(pos_deltas), torch.cat(pos_targets),
                                    beta=1 / 9, reduction="sum") / max(num_sampled, 1)
        return {"loss_objectness": loss_obj, "loss_rpn_box_reg": loss_box}

    def match(self, anchors, gt_boxes):
        """-> labels [R] (1 object, 0 background, -1 ignored), matched gt index [R] (valid where 1)."""
        if gt_boxes.numel() == 0:  # an image without objects: every anchor is background
            zeros = torch.zeros(len(anchors), dtype=torch.int64, device=anchors.device)
            return zeros.float(), zeros
        matches = self.matcher(box_iou(gt_boxes, anchors))
        labels = (matches >= 0).float()
        labels[matches == Matcher.BETWEEN_THRESHOLDS] = -1.0
        return labels, matches.clamp(min=0)
