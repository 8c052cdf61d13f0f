"""RoI box head (Fast R-CNN) on FPN levels P2-P5.

Each proposal is pooled by RoIAlign 7x7 from the level its size selects (FPN Eq. 1), passed
through two 1024-d fully connected layers, and classified into C+1 classes (0 = background)
with one set of box deltas per class. Training samples 512 RoIs per image, 25 % foreground
(IoU >= 0.5). Inference: softmax scores, per-class boxes, score > 0.05, per-class NMS 0.5, 100
detections. Defaults are torchvision's `fasterrcnn_resnet50_fpn`.
"""
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import batched_nms, box_area, box_iou, clip_boxes_to_image, remove_small_boxes, roi_align

from sed.boxes import BoxCoder, Matcher, sample_balanced


class MultiLevelRoIAlign(nn.Module):
    """RoIAlign from the FPN level that matches each box's size.

    Level rule (FPN Eq. 1): k = floor(k0 + log2(sqrt(w * h) / 224)), k0 = 4, clamped to P2-P5;
    a 224x224 box (ImageNet size) pools from P4. Strides of P2-P5 are 4, 8, 16, 32.
    """

    def __init__(self, output_size=7, sampling_ratio=2, levels=(2, 3, 4, 5),
                 canonical_size=224, canonical_level=4):
        super().__init__()
        self.output_size = output_size
        self.sampling_ratio = sampling_ratio
        self.levels = levels
        self.canonical_size = canonical_size
        self.canonical_level = canonical_level

    def level_index(self, boxes):
        """boxes [N, 4] -> [N] index into `self.levels` (0 = P2)."""
        size = torch.sqrt(box_area(boxes))
        eps = torch.tensor(1e-6, dtype=size.dtype)  # torchvision's guard against log2 rounding
        level = torch.floor(self.canonical_level + torch.log2(size / self.canonical_size) + eps)
        return (level.clamp(min=self.levels[0], max=self.levels[-1]) - self.levels[0]).to(torch.int64)

    def forward(self, features, boxes):
        """features: [P2, ..., P5] each [B, C, H, W]; boxes: list of [N_i, 4] -> [sum N_i, C, 7, 7]."""
        image_idx = torch.cat([torch.full_like(b[:, :1], i) for i, b in enumerate(boxes)])
        rois = torch.cat([image_idx, torch.cat(boxes)], dim=1)  # [N, 5]: image index, x1, y1, x2, y2
        level_idx = self.level_index(rois[:, 1:])
        out = features[0].new_zeros((len(rois), features[0].shape[1], self.output_size, self.output_size))
        for i, (feature, level) in enumerate(zip(features, self.levels)):
            in_level = torch.where(level_idx == i)[0]
            pooled = roi_align(feature, rois[in_level], self.output_size,
                               spatial_scale=1.0 / 2 ** level, sampling_ratio=self.sampling_ratio)
            out[in_level] = pooled.to(out.dtype)
        return out


class BoxHead(nn.Module):
    """[N, C, 7, 7] -> [N, 1024]: two fully connected layers (FPN §4.2 '2fc' head)."""

    def __init__(self, in_features, hidden=1024):
        super().__init__()
        self.fc6 = nn.Linear(in_features, hidden)
        self.fc7 = nn.Linear(hidden, hidden)

    def forward(self, x):
        return F.relu(self.fc7(F.relu(self.fc6(x.flatten(1)))))


class BoxPredictor(nn.Module):
    """[N, 1024] -> class logits [N, C+1] and per-class deltas [N, (C+1) * 4]."""

    def __init__(self, in_features, num_classes):
        super().__init__()
        self.cls_score = nn.Linear(in_features, num_classes + 1)
        self.bbox_pred = nn.Linear(in_features, (num_classes + 1) * 4)

    def forward(self, x):
        return self.cls_score(x), self.bbox_pred(x)


def class_deltas(box_deltas, labels):
    """[P, (C+1)*4] per-class deltas (BoxPredictor's layout), [P] labels -> [P, 4] each row's label's deltas."""
    rows = torch.arange(len(labels), device=box_deltas.device)
    return box_deltas.reshape(len(labels), box_deltas.shape[1] // 4, 4)[rows, labels]


class RoIHeads(nn.Module):
    def __init__(self, num_classes, in_channels=256, pool_size=7, hidden=1024, fg_iou=0.5,
                 bg_iou=0.5, batch_size_per_image=512, positive_fraction=0.25,
                 score_thresh=0.05, nms_thresh=0.5, detections_per_img=100):
        super().__init__()
        self.num_classes = num_classes
        self.roi_align = MultiLevelRoIAlign(pool_size)
        self.box_head = BoxHead(in_channels * pool_size ** 2, hidden)
        self.predictor = BoxPredictor(hidden, num_classes)
        self.box_coder = BoxCoder((10.0, 10.0, 5.0, 5.0))
        self.matcher = Matcher(fg_iou, bg_iou)
        self.batch_size_per_image = batch_size_per_image
        self.positive_fraction = positive_fraction
        self.score_thresh = score_thresh
        self.nms_thresh = nms_thresh
        self.detections_per_img = detections_per_img

    def predict(self, features, boxes):
        """features [P2, ..., P6]; boxes list of [N_i, 4] -> logits [N, C+1], deltas [N, (C+1) * 4]."""
        pooled = self.roi_align(features[:4], boxes)  # P6 feeds the RPN only
        return self.predictor(self.box_head(pooled))

    def losses(self, features, proposals, targets, batch_size=None):
        """Fast R-CNN loss on 512 (batch_size) sampled RoIs per image (ground-truth boxes join the proposals)."""
        rois, labels, reg_targets = self.sample(proposals, targets, batch_size or self.batch_size_per_image)
        return self.fast_rcnn_loss(*self.predict(features, rois), labels, reg_targets)

    def sample(self, proposals, targets, batch_size):
        """Per image its proposals and ground-truth boxes, matched, batch_size sampled (at most 25 % objects)
        -> rois list of [S_i, 4], labels [S] (0 background), regression targets [S_fg, 4] of the RoIs with
        labels > 0, in their order."""
        rois, labels, reg_targets = [], [], []
        for props, target in zip(proposals, targets):
            props = torch.cat([props, target["boxes"]])
            roi_labels, matched = self.match(props, target["boxes"], target["labels"])
            pos, neg = sample_balanced(roi_labels, batch_size, self.positive_fraction)
            rois.append(torch.cat([props[pos], props[neg]]))
            labels.append(roi_labels[torch.cat([pos, neg])])
            reg_targets.append(self.box_coder.encode(props[pos], target["boxes"][matched[pos]]))
        return rois, torch.cat(labels), torch.cat(reg_targets)

    def label_all(self, rois, targets):
        """Every RoI matched, none sampled, no box added: rois list of [N_i, 4] -> labels [N] (0 background),
        regression targets [N_fg, 4] of the RoIs with labels > 0, in their order."""
        labels, reg_targets = [], []
        for boxes, target in zip(rois, targets):
            roi_labels, matched = self.match(boxes, target["boxes"], target["labels"])
            pos = roi_labels > 0
            labels.append(roi_labels)
            reg_targets.append(self.box_coder.encode(boxes[pos], target["boxes"][matched[pos]]))
        return torch.cat(labels), torch.cat(reg_targets)

    def fast_rcnn_loss(self, class_logits, deltas, labels, reg_targets):
        """logits [N, C+1], deltas [N, (C+1) * 4], labels [N], reg_targets [N_fg, 4] (`sample`, `label_all`)
        -> cross-entropy over the N RoIs, smooth L1 of the true class's deltas summed over the objects / N
        (torchvision's fastrcnn_loss); 0 for N = 0."""
        if len(labels) == 0:
            zero = class_logits.sum() * 0.0  # keeps the graph (DDP: every parameter in the loss)
            return {"loss_classifier": zero, "loss_box_reg": zero}
        pos = torch.where(labels > 0)[0]
        deltas = deltas.reshape(len(deltas), -1, 4)[pos, labels[pos]]  # deltas of the true class
        loss_box = F.smooth_l1_loss(deltas, reg_targets, beta=1 / 9, reduction="sum")
        return {"loss_classifier": F.cross_entropy(class_logits, labels),
                "loss_box_reg": loss_box / len(labels)}

    def match(self, rois, gt_boxes, gt_labels):
        """-> labels [N] (class of the matched object, 0 background), matched gt index [N]."""
        if gt_boxes.numel() == 0:
            zeros = torch.zeros(len(rois), dtype=torch.int64, device=rois.device)
            return zeros, zeros
        matches = self.matcher(box_iou(gt_boxes, rois))
        labels = gt_labels[matches.clamp(min=0)].clone()
        labels[matches == Matcher.BELOW_LOW_THRESHOLD] = 0
        labels[matches == Matcher.BETWEEN_THRESHOLDS] = -1
        return labels, matches.clamp(min=0)

    @torch.no_grad()
    def detect(self, features, proposals, image_sizes):
        """-> per image {"boxes" [K, 4], "scores" [K], "labels" [K]} in batch (resized) pixels."""
        return self.detections(*self.predict(features, proposals), proposals, image_sizes)

    @torch.no_grad()
    def detections(self, class_logits, deltas, proposals, image_sizes):
        """`detect` from outputs already computed: logits [N, C+1], deltas [N, (C+1) * 4]."""
        boxes = self.box_coder.decode(deltas, torch.cat(proposals))  # [N, C+1, 4]
        scores = F.softmax(class_logits, dim=-1)  # [N, C+1]
        per_image = [len(p) for p in proposals]
        return [self.postprocess(b, s, size)
                for b, s, size in zip(boxes.split(per_image), scores.split(per_image), image_sizes)]

    def postprocess(self, boxes, scores, image_size):
        """One image: boxes [N, C+1, 4], scores [N, C+1] -> its detections, best first."""
        boxes = clip_boxes_to_image(boxes, image_size)
        labels = torch.arange(scores.shape[1], device=scores.device).expand_as(scores)
        boxes, scores, labels = boxes[:, 1:].reshape(-1, 4), scores[:, 1:].reshape(-1), labels[:, 1:].reshape(-1)
        keep = torch.where(scores > self.score_thresh)[0]
        boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
        keep = remove_small_boxes(boxes, min_size=1e-2)
        boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
        keep = batched_nms(boxes, scores, labels, self.nms_thresh)[: self.detections_per_img]
        return {"boxes": boxes[keep], "scores": scores[keep], "labels": labels[keep]}
