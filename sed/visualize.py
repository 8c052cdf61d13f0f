"""Draw detections (and ground truth) on images and write them as PNG files.

Detections are red with "name score" labels, ground truth is green with names (black text on a
box-coloured background); drawing is torchvision's `draw_bounding_boxes`. Labels use DejaVuSans
when Pillow finds it (size scaled to the image, at least 10 pt, so small images stay readable),
else Pillow's default bitmap font; eval.py --font picks another (one with the class names' script).
"""
import math
import warnings
from pathlib import Path

import torch
from PIL import Image, ImageFont
from torchvision.utils import draw_bounding_boxes

from sed.errors import UserError

DET_COLOR = (255, 0, 0)   # red
GT_COLOR = (0, 255, 0)    # green
MIN_PICTURE_SIDE = 256   # visualize_dataset enlarges smaller images (e.g. the 64 px demo) to this
FONT = "DejaVuSans.ttf"   # Pillow searches the system font directories for it


def resolve_font(path=""):
    """The labels' font: path (a TrueType/OpenType file, or a name Pillow finds in the system font
    directories), which must load (a UserError otherwise); "" = FONT if Pillow can load it, else None
    (draw_bounding_boxes' default font)."""
    try:
        ImageFont.truetype(path or FONT, 10)
        return path or FONT
    except OSError:
        if path:
            raise UserError(f"--font: Pillow cannot load {path} as a TrueType/OpenType font") from None
        return None


def missing_glyphs(font, text):
    """The characters of text that font (a resolve_font result) draws as its "missing glyph" box: the
    glyph of U+FFFF, a code point no font maps. "" for None (Pillow's default font is not checked)."""
    if font is None:
        return ""
    face = ImageFont.truetype(font, 16)
    def mask(ch):
        m = face.getmask(ch)
        return m.size, bytes(m)
    missing = mask("\uffff")
    return "".join(sorted(ch for ch in set(text) if not ch.isspace() and mask(ch) == missing))


def warn_missing_glyphs(font, class_names):
    """One warning naming the class names (at most 3) that font cannot draw, e.g. Chinese names in
    DejaVuSans: their labels would show as empty boxes."""
    chars = missing_glyphs(font, "".join(class_names or ()))   # one pass over all names: the font loads once
    lacking = [name for name in class_names or () if set(name) & set(chars)]
    if lacking:
        warnings.warn(f"{len(lacking)} class names ({', '.join(lacking[:3])}{', ...' if len(lacking) > 3 else ''}) "
                      f"have characters that {Path(font).name} cannot draw ({chars[:10]}): their labels show them "
                      "as empty boxes; --font FILE picks a font that has them (e.g. NotoSansCJK-Regular.ttc)")


def _name(class_names, label):
    """Class name of a 1..C label (class_names index = label - 1), the number if unknown."""
    return class_names[label - 1] if class_names and 1 <= label <= len(class_names) else str(label)


def _draw(image, boxes, labels, color, width, font):
    if len(boxes) == 0:  # draw_bounding_boxes warns on an empty set
        return image
    font_size = max(10, min(image.shape[-2:]) // 25) if font else None
    # black text on a box-coloured background: readable on any image
    return draw_bounding_boxes(image, boxes.cpu(), labels, colors=color, width=width,
                               font=font, font_size=font_size, fill_labels=True)


def draw_detections(image, dets, class_names=None, score_thr=0.5, gt=None, width=2, min_side=0, font=""):
    """image [3,H,W] float 0..1; dets {"boxes" [K,4], "scores" [K], "labels" [K]} in its pixels;
    gt {"boxes", "labels"} or None. Returns uint8 [3,f*H,f*W]: detections with score >= score_thr
    (red, "name score") over the ground truth (green, "name"). f: the smallest whole factor that makes
    the shorter side >= min_side (pixels repeated), so labels stay readable on small images; 1 for
    min_side 0. font: as resolve_font's path."""
    factor = max(1, math.ceil(min_side / min(image.shape[-2:])))
    out = (image.detach().cpu().clamp(0, 1) * 255).round().to(torch.uint8)
    out = out.repeat_interleave(factor, dim=1).repeat_interleave(factor, dim=2)
    font = resolve_font(font)
    if gt is not None:
        names = [_name(class_names, int(label)) for label in gt["labels"]]
        out = _draw(out, gt["boxes"] * factor, names, GT_COLOR, width, font)
    keep = dets["scores"] >= score_thr
    names = [f"{_name(class_names, int(label))} {float(score):.2f}"
             for label, score in zip(dets["labels"][keep], dets["scores"][keep])]
    return _draw(out, dets["boxes"][keep] * factor, names, DET_COLOR, width, font)


def save_png(image, path):
    """Write uint8 [3,H,W] to `path` (parent directories created)."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image.permute(1, 2, 0).cpu().numpy()).save(path)


def save_visualizations(images, dets, out_dir, class_names=None, score_thr=0.5, gts=None, names=None,
                        min_side=0, font=""):
    """One PNG per image into out_dir, named names[i] (default: the index); returns the paths."""
    paths = []
    for i, (image, det) in enumerate(zip(images, dets)):
        path = Path(out_dir) / f"{names[i] if names else i}.png"
        gt = gts[i] if gts else None
        save_png(draw_detections(image, det, class_names, score_thr, gt, min_side=min_side, font=font), path)
        paths.append(path)
    return paths


@torch.no_grad()
def visualize_dataset(model, dataset, indices, out_dir, device="cpu", score_thr=0.5, batch_size=4,
                      min_side=MIN_PICTURE_SIDE, font=""):
    """Run `model` (eval mode, restored afterwards) on dataset[i] for i in indices and write
    out_dir/<image_id>.png (<file_name>.png if the target has one) with its detections and the
    ground truth, small images enlarged to a shorter side >= min_side; returns the paths. An image None
    (eval.py --images: an unreadable file, which predict() warned of) is skipped. Class names that the
    font cannot draw are warned of once."""
    was_training = model.training
    model.eval()
    indices, paths = list(indices), []
    class_names = getattr(dataset, "class_names", None)
    warn_missing_glyphs(resolve_font(font), class_names)
    for start in range(0, len(indices), batch_size):
        batch = [(dataset[i], i) for i in indices[start:start + batch_size]]
        batch = [(image, target, i) for (image, target), i in batch if image is not None]  # None: skipped
        if not batch:
            continue
        images, targets, ids = zip(*batch)
        dets = model([image.to(device) for image in images])
        names = [t.get("file_name", t.get("image_id", i)) for t, i in zip(targets, ids)]  # "photo.jpg" -> photo.jpg.png
        paths += save_visualizations(images, dets, out_dir, class_names, score_thr, targets, names, min_side, font)
    model.train(was_training)
    return paths
