"""ResNet trunk with frozen batch norm (or GroupNorm from scratch), and the Feature Pyramid Network (Lin et al. 2017).

P2-P5 come from ResNet stages C2-C5 through a 1x1 lateral conv, a nearest-neighbour top-down
pathway and a 3x3 output conv, all 256 channels; P6 is P5 max-pooled with stride 2 (used by the
RPN only), as in torchvision's `resnet_fpn_backbone` and detectron2's R50-FPN.
"""
import os

import torch
import torch.nn.functional as F
import torchvision
from torch import nn
from torchvision.ops import FrozenBatchNorm2d

from sed.checkpoint import read_tensors
from sed.errors import UserError, one_line

RESNETS = {
    "resnet18": (torchvision.models.resnet18, torchvision.models.ResNet18_Weights.IMAGENET1K_V1),
    "resnet34": (torchvision.models.resnet34, torchvision.models.ResNet34_Weights.IMAGENET1K_V1),
    "resnet50": (torchvision.models.resnet50, torchvision.models.ResNet50_Weights.IMAGENET1K_V1),
}
STAGES = ("layer4", "layer3", "layer2", "layer1", "conv1")  # from the top, as trainable_layers counts
NORMS = ("frozen_bn", "group")
GROUPS = 32  # GroupNorm groups (Wu & He 2018)


def norm_layer(norm):
    """frozen_bn: FrozenBatchNorm2d, the detection convention for an ImageNet-pretrained trunk
    (tiny per-GPU batches, so BN statistics stay ImageNet's); with random weights it is the identity,
    so the trunk has no normalisation at all. group: trainable GroupNorm, for training from scratch
    (He et al. 2019, "Rethinking ImageNet Pre-training", train detectors from scratch with GN)."""
    if norm == "frozen_bn":
        return FrozenBatchNorm2d
    if norm == "group":
        return lambda channels: nn.GroupNorm(GROUPS, channels)
    raise ValueError(f"backbone norm {norm!r} is not one of {NORMS}")


def resnet(name, weights=None, norm="frozen_bn"):
    """A torchvision ResNet with the normalisation of `norm_layer(norm)`.

    weights: None (random init), "imagenet" (torchvision's IMAGENET1K_V1, downloaded on first
    use; the detection references use V1), or a path to a ResNet state dict (.pth); pretrained
    weights need norm="frozen_bn" (their BN statistics). norm="group" zero-initialises the last
    norm of each residual block (design choice, Goyal et al. 2017: each block starts as the identity).
    """
    if name not in RESNETS:
        raise ValueError(f"backbone {name!r} is not one of {sorted(RESNETS)}")
    builder, imagenet = RESNETS[name]
    layer = norm_layer(norm)
    if weights in (None, "none"):
        return builder(weights=None, norm_layer=layer, zero_init_residual=norm == "group")
    if norm != "frozen_bn":
        raise ValueError(f"backbone weights {weights}: pretrained weights need --backbone-norm frozen_bn")
    if weights == "imagenet":
        return imagenet_resnet(builder, imagenet, layer)
    if not os.path.isfile(weights):
        raise FileNotFoundError(f"backbone weights {weights}: no such file")
    model = builder(weights=None, norm_layer=layer)
    state = read_tensors(weights)
    if isinstance(state, dict) and {"model", "config"} <= state.keys():
        raise UserError(f"--backbone-weights {weights}: a checkpoint of train.py, not a ResNet's weights; "
                        f"--resume {weights} continues from it (a supervised one as SED too)")
    if not isinstance(state, dict):
        raise UserError(f"--backbone-weights {weights}: not a state dict (a {type(state).__name__})")
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as e:   # a tensor of another shape: another ResNet's weights
        mismatch = next((line.strip() for line in str(e).splitlines() if "size mismatch" in line), one_line(e))
        raise UserError(f"--backbone-weights {weights}: not a {name} state dict ({mismatch})") from None
    missing = [k for k in missing if not k.startswith("fc.")]
    if missing or unexpected:
        raise UserError(f"--backbone-weights {weights}: not a {name} state dict "
                        f"(missing {missing[:3]}, unexpected {unexpected[:3]})")
    return model


def imagenet_resnet(builder, imagenet, layer):
    """torchvision's ResNet with its ImageNet weights, downloaded into torch.hub's cache on first use; no
    connection (a machine without internet, a proxy) is one line saying where to put the file instead."""
    try:
        return builder(weights=imagenet, norm_layer=layer)
    except OSError as e:   # urllib's URLError and HTTPError, or the cache folder not writable
        cache = os.path.join(torch.hub.get_dir(), "checkpoints")
        raise UserError(f"--backbone-weights imagenet: cannot get {imagenet.url} ({getattr(e, 'reason', e)}); "
                        f"download it elsewhere and put it in {cache}, or pass it as --backbone-weights FILE") from None


class ResNetTrunk(nn.Module):
    """conv1 ... layer4 of a ResNet; returns C2-C5 (strides 4, 8, 16, 32)."""

    def __init__(self, net, trainable_layers=3):
        super().__init__()
        for name in ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4"):
            self.add_module(name, getattr(net, name))
        c5 = net.fc.in_features  # 512 (ResNet-18/34) or 2048 (ResNet-50)
        self.out_channels = [c5 // 8, c5 // 4, c5 // 2, c5]  # C2-C5
        freeze_stages(self, trainable_layers)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        c2 = self.layer1(x)
        c3 = self.layer2(c2)
        c4 = self.layer3(c3)
        c5 = self.layer4(c4)
        return [c2, c3, c4, c5]


def freeze_stages(trunk, trainable_layers):
    """Trains only the top `trainable_layers` stages (torchvision default 3: layer2-4; stem and
    layer1 stay frozen, as their features are generic)."""
    if not 0 <= trainable_layers <= 5:
        raise ValueError(f"trainable_layers must be in 0..5, got {trainable_layers}")
    trainable = STAGES[:trainable_layers] + (("bn1",) if trainable_layers == 5 else ())  # as torchvision
    for name, param in trunk.named_parameters():
        param.requires_grad_(name.startswith(trainable))


class FPN(nn.Module):
    """Feature Pyramid Network: [C2, C3, C4, C5] -> [P2, P3, P4, P5, P6], 256 channels each."""

    def __init__(self, in_channels, out_channels=256):
        super().__init__()
        self.lateral = nn.ModuleList(nn.Conv2d(c, out_channels, 1) for c in in_channels)
        self.output = nn.ModuleList(nn.Conv2d(out_channels, out_channels, 3, padding=1)
                                    for _ in in_channels)
        for conv in [*self.lateral, *self.output]:
            nn.init.kaiming_uniform_(conv.weight, a=1)  # torchvision's FPN init
            nn.init.zeros_(conv.bias)

    def forward(self, features):
        top_down = self.lateral[-1](features[-1])
        outputs = [self.output[-1](top_down)]
        for level in range(len(features) - 2, -1, -1):
            lateral = self.lateral[level](features[level])
            top_down = lateral + F.interpolate(top_down, size=lateral.shape[-2:], mode="nearest")
            outputs.insert(0, self.output[level](top_down))
        outputs.append(F.max_pool2d(outputs[-1], kernel_size=1, stride=2))  # P6
        return outputs


class BackboneFPN(nn.Module):
    """Image batch [B, 3, H, W] -> [P2, ..., P6], each [B, 256, H / stride, W / stride]."""

    def __init__(self, name="resnet50", weights=None, trainable_layers=3, out_channels=256, norm="frozen_bn"):
        super().__init__()
        self.body = ResNetTrunk(resnet(name, weights, norm), trainable_layers)
        self.fpn = FPN(self.body.out_channels, out_channels)
        self.out_channels = out_channels

    def forward(self, images):
        return self.fpn(self.body(images))
