"""Anchor boxes for the FPN levels (Faster R-CNN §3.1.1, FPN §4.1).

One anchor size per level (32 on P2 ... 512 on P6) times the aspect ratios (0.5, 1, 2), placed
at every cell of the level's grid. Order of the flattened anchors, used everywhere in `sed`:
level, then row y, then column x, then anchor -- torchvision's order, so the objectness of
anchor i is `flatten_outputs(...)[..., i]`.
"""
import torch
from torch import nn


def cell_anchors(size, aspect_ratios):
    """Anchors centred on (0, 0): [len(aspect_ratios), 4] xyxy, rounded like torchvision.

    aspect ratio = h / w, area = size ** 2.
    """
    ratios = torch.as_tensor(aspect_ratios, dtype=torch.float32)
    h_ratios = torch.sqrt(ratios)
    w_ratios = 1 / h_ratios
    ws = w_ratios * size
    hs = h_ratios * size
    return (torch.stack([-ws, -hs, ws, hs], dim=1) / 2).round()


class AnchorGenerator(nn.Module):
    """Anchors for every level of a feature pyramid.

    sizes: one anchor size per level, e.g. (32, 64, 128, 256, 512) for P2-P6.
    The stride of a level is `padded image size // feature size`, as in torchvision; it is the
    nominal 4, 8, ..., 64 whenever the padded size is a multiple of 64 (the SED views are).
    """

    def __init__(self, sizes=(32, 64, 128, 256, 512), aspect_ratios=(0.5, 1.0, 2.0)):
        super().__init__()
        self.sizes = sizes
        self.num_anchors_per_cell = len(aspect_ratios)
        for level, size in enumerate(sizes):
            self.register_buffer(f"cell_{level}", cell_anchors(size, aspect_ratios), persistent=False)

    def forward(self, padded_size, feature_sizes):
        """padded_size (H, W) of the batch tensor; feature_sizes [(H_l, W_l)] -> per level [H_l*W_l*A, 4]."""
        return [self.grid_anchors(getattr(self, f"cell_{level}"), padded_size, size)
                for level, size in enumerate(feature_sizes)]

    @staticmethod
    def grid_anchors(cell, padded_size, feature_size):
        """cell [A, 4] -> [H*W*A, 4]: the cell anchors shifted to the top-left corner of every cell."""
        (h, w), (image_h, image_w) = feature_size, padded_size
        stride_y, stride_x = image_h // h, image_w // w
        shift_x = torch.arange(w, dtype=torch.int32, device=cell.device) * stride_x
        shift_y = torch.arange(h, dtype=torch.int32, device=cell.device) * stride_y
        shift_y, shift_x = torch.meshgrid(shift_y, shift_x, indexing="ij")
        shifts = torch.stack((shift_x, shift_y, shift_x, shift_y), dim=-1).reshape(-1, 1, 4)  # [H*W, 1, 4]
        return (shifts + cell.view(1, -1, 4)).reshape(-1, 4)
