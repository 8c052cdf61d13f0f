"""Faster R-CNN with FPN: transform -> backbone + FPN -> RPN -> RoI heads.

The contract is torchvision's: in train mode `model(images, targets)` returns a dict of named
losses, in eval mode `model(images)` returns `[{"boxes", "scores", "labels"}]` in the pixels of
the images given. The intermediate outputs SED needs (features, RPN outputs, proposals, RoI
outputs for given boxes) are plain methods, see `transform`, `features`, `rpn.head`,
`rpn.anchors`, `rpn.propose`, `roi_heads.predict`, `losses` and `detect`.
"""
import re

import torch
from torch import nn

from sed.backbone import BackboneFPN
from sed.errors import UserError
from sed.roi_heads import RoIHeads
from sed.rpn import RegionProposalNetwork
from sed.transform import ImageTransform


class FasterRCNN(nn.Module):
    def __init__(self, backbone, num_classes, transform, rpn, roi_heads):
        super().__init__()
        self.num_classes = num_classes  # foreground classes; labels are 1..C, 0 is background
        self.transform = transform
        self.backbone = backbone
        self.rpn = rpn
        self.roi_heads = roi_heads

    def forward(self, images, targets=None):
        check_images(images)
        if self.training:
            if targets is None:
                raise ValueError("training mode needs targets: call model(images, targets) or model.eval()")
            check_targets(targets, len(images), self.num_classes)
            batch, targets = self.transform(images, targets)
            return self.losses(batch, targets)
        original_sizes = [tuple(img.shape[-2:]) for img in images]
        batch, _ = self.transform(images)
        return self.transform.postprocess(self.detect(batch), batch.image_sizes, original_sizes)

    def features(self, tensors):
        """[B, 3, H, W] normalised batch -> [P2, P3, P4, P5, P6], strides 4 ... 64."""
        return self.backbone(tensors)

    def losses(self, batch, targets, features=None, rpn_head=None, roi_batch_size=None):
        """The four Faster R-CNN losses for an already transformed batch and its targets; features and
        rpn_head: the batch's `features` and `rpn.head(features)`, if already computed (SED shares the
        strong view's with its hard-label loss); roi_batch_size: RoIs sampled per image (None: the
        model's)."""
        features = self.features(batch.tensors) if features is None else features
        proposals, rpn_losses = self.rpn(batch, features, targets, rpn_head)
        return {**rpn_losses, **self.roi_heads.losses(features, proposals, targets, roi_batch_size)}

    def detect(self, batch):
        """Detections of an already transformed batch, in its (resized) pixels."""
        features = self.features(batch.tensors)
        proposals, _ = self.rpn(batch, features)
        return self.roi_heads.detect(features, proposals, batch.image_sizes)


def build_model(num_classes, backbone="resnet50", backbone_weights=None, trainable_layers=3,
                min_size=800, max_size=1333, size_divisible=32, anchor_sizes=(32, 64, 128, 256, 512),
                rpn_proposals=(2000, 1000), roi_batch_size=512, box_head_dim=1024, backbone_norm="frozen_bn",
                fpn_channels=256):
    """Faster R-CNN R-FPN with torchvision's `fasterrcnn_resnet50_fpn` defaults.

    num_classes: foreground classes only (COCO: 80; torchvision's COCO weights: 90).
    backbone: resnet18 | resnet34 | resnet50; backbone_weights: None | "imagenet" | path.
    min_size: short side, or a tuple of short sides for multi-scale training.
    anchor_sizes: one per level P2-P6; they must double from level to level for SED's scale
    consistency (SED_NOTES section 2). rpn_proposals: proposals per image (train, eval), both
    before NMS per level and after it. roi_batch_size: RoIs sampled per image for the box loss.
    box_head_dim: width of the two fully connected layers of the box head (FPN's 1024).
    backbone_norm: "frozen_bn" (torchvision's) or "group" (trainable GroupNorm, for training from scratch).
    fpn_channels: channels of P2-P6, hence of the RPN head and the RoI features (FPN's 256).
    The roi_batch_size, box_head_dim and fpn_channels are smaller in the CPU experiments on small
    synthetic images (at 256 channels the FPN and RPN convolutions cost more than a ResNet-18).
    """
    if num_classes < 1:
        raise UserError(f"num_classes must be >= 1 (foreground classes), got {num_classes}")
    backbone = BackboneFPN(backbone, backbone_weights, trainable_layers, out_channels=fpn_channels,
                           norm=backbone_norm)
    rpn = RegionProposalNetwork(backbone.out_channels, anchor_sizes, pre_nms_top_n=rpn_proposals,
                                post_nms_top_n=rpn_proposals)
    roi_heads = RoIHeads(num_classes, backbone.out_channels, hidden=box_head_dim, batch_size_per_image=roi_batch_size)
    return FasterRCNN(backbone, num_classes, ImageTransform(min_size, max_size, size_divisible), rpn, roi_heads)


def check_images(images):
    """One-line ValueError for anything but a list of [3, H, W] floating tensors."""
    if not isinstance(images, (list, tuple)) or not images:
        raise ValueError(f"images must be a non-empty list of [3, H, W] tensors, got {type(images).__name__}")
    for i, image in enumerate(images):
        if not torch.is_tensor(image) or image.dim() != 3 or image.shape[0] != 3:
            shape = tuple(image.shape) if torch.is_tensor(image) else type(image).__name__
            raise ValueError(f"image {i}: expected a [3, H, W] tensor, got {shape}")
        if not image.is_floating_point() or min(image.shape[-2:]) == 0:
            raise ValueError(f"image {i}: expected a non-empty float tensor, got {image.dtype} {tuple(image.shape)}")


def check_targets(targets, num_images, num_classes):
    """One-line ValueError naming the image and the problem for malformed boxes or labels."""
    if len(targets) != num_images:
        raise ValueError(f"got {num_images} images but {len(targets)} targets")
    for i, target in enumerate(targets):
        boxes, labels = target.get("boxes"), target.get("labels")
        if not torch.is_tensor(boxes) or boxes.dim() != 2 or boxes.shape[1] != 4:
            raise ValueError(f"image {i}: boxes must be a [N, 4] tensor, got {getattr(boxes, 'shape', boxes)}")
        if not torch.is_tensor(labels) or labels.shape != boxes.shape[:1]:
            raise ValueError(f"image {i}: labels must be a [{len(boxes)}] tensor, got {getattr(labels, 'shape', labels)}")
        if not torch.isfinite(boxes).all():
            raise ValueError(f"image {i}: non-finite box {boxes[~torch.isfinite(boxes).all(1)][0].tolist()}")
        bad = (boxes[:, 2] <= boxes[:, 0]) | (boxes[:, 3] <= boxes[:, 1])
        if bad.any():
            raise ValueError(f"image {i}: box {boxes[bad][0].tolist()} has x2 <= x1 or y2 <= y1")
        outside = (labels < 1) | (labels > num_classes)
        if outside.any():
            raise ValueError(f"image {i}: label {labels[outside][0].item()} outside the classes 1..{num_classes}")


# (torchvision name prefix, ours): torchvision wraps some convs in Sequentials; "{}" is the FPN level.
# load_torchvision_weights renames left -> right, sed.export right -> left.
TORCHVISION_NAMES = [
    ("backbone.fpn.inner_blocks.{}.0.", "backbone.fpn.lateral.{}."),
    ("backbone.fpn.layer_blocks.{}.0.", "backbone.fpn.output.{}."),
    ("rpn.head.conv.0.0.", "rpn.head.conv."),
    ("rpn.head.cls_logits.", "rpn.head.objectness."),
    ("rpn.head.bbox_pred.", "rpn.head.deltas."),
    ("roi_heads.box_predictor.", "roi_heads.predictor."),
]


def rename_prefixes(state_dict, pairs):
    """A state dict with each key's prefix `old` of (old, new) in pairs replaced by `new`."""
    rules = [("^" + re.escape(old).replace(r"\{\}", r"(\d)"), new.replace("{}", r"\1")) for old, new in pairs]
    renamed = {}
    for name, value in state_dict.items():
        for pattern, replacement in rules:
            name = re.sub(pattern, replacement, name)
        renamed[name] = value
    return renamed


def load_torchvision_weights(model, state_dict):
    """Loads a torchvision `fasterrcnn_resnet*_fpn` state dict (e.g. its COCO weights, 91 classes
    with background: build the model with num_classes=90) into our model, strictly."""
    renamed = rename_prefixes(state_dict, TORCHVISION_NAMES)
    classes = renamed["roi_heads.predictor.cls_score.weight"].shape[0] - 1
    if classes != model.num_classes:
        raise UserError(f"torchvision weights have {classes} foreground classes, the model {model.num_classes}")
    model.load_state_dict(renamed, strict=True)
    return model
