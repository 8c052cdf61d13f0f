"""Input transform: normalise, resize, batch with zero padding, and map detections back.

Follows torchvision's `GeneralizedRCNNTransform` step for step (normalise, then resize so the
short side is `min_size` and the long side at most `max_size`, then pad to a multiple of
`size_divisible`), so detections equal torchvision's for the same weights.
"""
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class ImageBatch:
    tensors: torch.Tensor  # [B, 3, Hp, Wp] normalised, zero padded to size_divisible
    image_sizes: list  # [(h, w)] of each image after resizing, before padding


def resize_scale(height, width, min_size, max_size):
    """The factor that brings the short side to min_size without the long side passing max_size."""
    return min(min_size / min(height, width), max_size / max(height, width))


def resize_boxes(boxes, old_size, new_size):
    """boxes [N, 4] in an image of old_size (h, w) -> the same boxes in an image of new_size."""
    ratio_h, ratio_w = (torch.tensor(new, dtype=torch.float32, device=boxes.device)
                        / torch.tensor(old, dtype=torch.float32, device=boxes.device)
                        for new, old in zip(new_size, old_size))
    scale = torch.stack((ratio_w, ratio_h, ratio_w, ratio_h))
    return boxes * scale


class ImageTransform(nn.Module):
    """Images in 0..1 of any size -> an `ImageBatch` the backbone can take.

    min_size: a tuple of short sides; in training one is drawn per batch (multi-scale training,
    as the torchvision references do), in evaluation the last one is used.
    """

    def __init__(self, min_size=(800,), max_size=1333, size_divisible=32,
                 mean=IMAGENET_MEAN, std=IMAGENET_STD):
        super().__init__()
        self.min_size = tuple(min_size) if isinstance(min_size, (tuple, list)) else (min_size,)
        self.max_size = max_size
        self.size_divisible = size_divisible
        self.register_buffer("mean", torch.tensor(mean).view(3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(3, 1, 1), persistent=False)

    def forward(self, images, targets=None, min_size=None, size_divisible=None):
        """images: list of [3, H, W]; targets: list of {"boxes": [N, 4], ...} or None.

        Returns (ImageBatch, targets with boxes in resized-image pixels).
        """
        if min_size is None:
            min_size = self.choose_min_size()
        resized, new_targets = [], []
        for i, image in enumerate(images):
            image = (image - self.mean) / self.std
            scale = resize_scale(image.shape[-2], image.shape[-1], min_size, self.max_size)
            # torchvision's size floor(side * scale) (interpolate with recompute_scale_factor), at least 1 px:
            # an image over max_size:min_size in aspect ratio (1 x 500 px) would get a side of 0
            size = [max(1, math.floor(side * scale)) for side in image.shape[-2:]]
            out = F.interpolate(image[None], size=size, mode="bilinear", align_corners=False)[0]
            resized.append(out)
            if targets is not None:
                boxes = resize_boxes(targets[i]["boxes"], image.shape[-2:], out.shape[-2:])
                new_targets.append({**targets[i], "boxes": boxes})
        batch = ImageBatch(self.pad(resized, size_divisible or self.size_divisible),
                           [tuple(img.shape[-2:]) for img in resized])
        return batch, (new_targets if targets is not None else None)

    def choose_min_size(self):
        """A random short side in training (torch RNG, so resume is exact), the last in eval."""
        if not self.training:
            return self.min_size[-1]
        return self.min_size[int(torch.randint(len(self.min_size), ()).item())]

    @staticmethod
    def pad(images, size_divisible):
        """list of [3, h, w] -> [B, 3, Hp, Wp], zero padded at the bottom/right to a multiple."""
        max_h = max(img.shape[-2] for img in images)
        max_w = max(img.shape[-1] for img in images)
        padded_h = int(math.ceil(max_h / size_divisible) * size_divisible)
        padded_w = int(math.ceil(max_w / size_divisible) * size_divisible)
        batch = images[0].new_zeros((len(images), 3, padded_h, padded_w))
        for img, slot in zip(images, batch):
            slot[:, : img.shape[-2], : img.shape[-1]].copy_(img)
        return batch

    @staticmethod
    def postprocess(detections, resized_sizes, original_sizes):
        """Boxes from resized-image pixels back to the caller's image pixels."""
        for det, resized, original in zip(detections, resized_sizes, original_sizes):
            det["boxes"] = resize_boxes(det["boxes"], resized, original)
        return detections
