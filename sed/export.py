"""Export a train.py checkpoint as a torchvision Faster R-CNN state dict:
`python -m sed.export CKPT OUT.pth [--model teacher|student]`.

The reverse of `sed.load_torchvision_weights`: our parameter names are renamed to those of
torchvision's `fasterrcnn_resnet*_fpn` models, whose output has one background class + C classes.
The command prints the torchvision constructor that takes the file: `FasterRCNN` on
`resnet_fpn_backbone`, whose frozen batch norm is ours (`fasterrcnn_resnet50_fpn(weights=None,
weights_backbone=None)` builds trainable BatchNorm2d layers instead, whose state has
`num_batches_tracked` entries). SED checkpoints export the EMA teacher by default.
"""

import os

import torch

from sed.backbone import GROUPS
from sed.checkpoint import load_checkpoint
from sed.config import check_writable_file, from_dict
from sed.errors import ArgumentParser, UserError, user_errors
from sed.model import TORCHVISION_NAMES, rename_prefixes

TORCHVISION_ANCHORS = (32, 64, 128, 256, 512)  # fasterrcnn_resnet50_fpn's default, one size per level


def to_torchvision(state_dict):
    """Our model's state dict -> torchvision Faster R-CNN names (the same tensors)."""
    return rename_prefixes(state_dict, [(ours, theirs) for theirs, ours in TORCHVISION_NAMES])


def torchvision_constructor(cfg):
    """The Python line that builds the torchvision model the exported file fits (eval settings).

    torchvision's resnet_fpn_backbone has 256 FPN channels and no flag for others: a checkpoint trained
    with another --fpn-channels has no torchvision equivalent (UserError)."""
    if cfg.fpn_channels != 256:
        raise UserError(f"--fpn-channels: this checkpoint has a {cfg.fpn_channels}-channel FPN; torchvision's "
                        "resnet_fpn_backbone has 256 channels, so it cannot be exported")
    backbone = f"backbone_name={cfg.backbone!r}, weights=None"
    if cfg.backbone_norm == "group":
        backbone += f", norm_layer=lambda c: torch.nn.GroupNorm({GROUPS}, c)"
    if cfg.box_head_dim == 1024:  # FasterRCNN's own TwoMLPHead width
        options = [f"num_classes={cfg.num_classes + 1}"]
    else:
        options = [f"box_head=TwoMLPHead(256 * 7 ** 2, {cfg.box_head_dim})",
                   f"box_predictor=FastRCNNPredictor({cfg.box_head_dim}, {cfg.num_classes + 1})"]
    options += [f"min_size={cfg.min_size[-1]}", f"max_size={cfg.max_size}"]
    if cfg.rpn_proposals[1] != 1000:  # torchvision's eval default, before and after NMS
        options += [f"rpn_pre_nms_top_n_test={cfg.rpn_proposals[1]}", f"rpn_post_nms_top_n_test={cfg.rpn_proposals[1]}"]
    if tuple(cfg.anchor_sizes) != TORCHVISION_ANCHORS:
        options.append("rpn_anchor_generator=AnchorGenerator("
                       f"{tuple((s,) for s in cfg.anchor_sizes)}, ((0.5, 1.0, 2.0),) * 5)")
    return f"FasterRCNN(resnet_fpn_backbone({backbone}), {', '.join(options)})"


IMPORTS = """import torch
from torchvision.models.detection import FasterRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.backbone_utils import resnet_fpn_backbone
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead"""


def main(argv=None):
    p = ArgumentParser(prog="python -m sed.export", description=__doc__.splitlines()[0])
    p.add_argument("ckpt", help="checkpoint written by train.py (OUT/last.pt)")
    p.add_argument("out", help="the torchvision state dict to write (.pth)")
    p.add_argument("--model", choices=("teacher", "student"), default=None,
                   help="which weights; default: the teacher when the checkpoint has one")
    p.add_argument("--debug", action="store_true", help="show the Python traceback of a user error")
    args = p.parse_args(argv)
    with user_errors(args.debug):
        check_writable_file(args.out, "out")
        if os.path.abspath(args.out) == os.path.abspath(args.ckpt):
            raise UserError(f"{args.out}: is the checkpoint itself; write the export to another file")
        ckpt = load_checkpoint(args.ckpt)
        which = args.model or ("teacher" if "teacher" in ckpt else "student")
        if which == "teacher" and "teacher" not in ckpt:
            raise UserError(f"{args.ckpt}: has no teacher weights (supervised run); use --model student")
        cfg = from_dict(ckpt["config"])
        constructor = torchvision_constructor(cfg)
        torch.save(to_torchvision(ckpt["model" if which == "student" else "teacher"]), args.out)
        print(f"{args.ckpt} ({which}, iteration {ckpt['iteration']}) -> {args.out}; load it with\n{IMPORTS}\n"
              f"model = {constructor}\n"
              f"model.load_state_dict(torch.load({args.out!r}))  # labels 1..{cfg.num_classes}: "
              "the checkpoint's class_names / label_to_cat_id")


if __name__ == "__main__":
    main()
