"""COCO-format detection data (through pycocotools), the training batch sampler and the loaders.

Labels follow torchvision: the arbitrary COCO category ids are mapped to contiguous labels 1..C
in sorted category-id order; 0 is background. The data set itself does no random augmentation:
the horizontal flip of each image is drawn by `TrainBatchSampler` and passed as
`dataset[(index, flip)]`, so the training stream is a pure function of (seed, iteration) whatever
the number of workers. Multi-scale resizing is done by the model (`min_size` tuple).
"""
import bisect
import contextlib
import copy
import io
import itertools
import json
import math
import os
import signal
import threading
import warnings
from collections import Counter
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from pycocotools.coco import COCO
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from sed.errors import UserError


def _load_coco_json(ann_file):
    """Parse and validate a COCO annotation file -> (dict, columns of its annotations).

    columns: {"image_id", "category_id", "bbox", "iscrowd", "area"}, one entry per annotation in
    file order (lists; "bbox" a float64 array [A, 4] xywh), read in one pass and shared by the
    validation and the targets (a file of train2017's size has 860k annotations).
    """
    if not ann_file.is_file():
        raise UserError(f"{ann_file}: annotation file not found")
    try:
        data = json.loads(ann_file.read_text(encoding="utf-8-sig"))  # -sig: the BOM that Windows tools write
    except UnicodeDecodeError as e:
        raise UserError(f"{ann_file}: not UTF-8 text, as JSON must be (byte {e.start}); re-save it as UTF-8") from None
    except json.JSONDecodeError as e:
        raise UserError(f"{ann_file}: not a COCO annotation file (not valid JSON: {e.msg}, line {e.lineno} "
                        f"column {e.colno})") from None
    if not isinstance(data, dict):
        raise UserError(f"{ann_file}: not a COCO annotation file (not a JSON object)")
    for key in ("images", "annotations", "categories"):
        if key not in data:
            images_only = key == "annotations" and "images" in data   # COCO's image_info_unlabeled2017.json
            raise UserError(f"{ann_file}: not a COCO annotation file (missing '{key}')" + (
                "; unlabeled images need no JSON: --unlabeled-images DIR takes their folder" if images_only else ""))
    for key in ("images", "annotations", "categories"):
        if not (isinstance(data[key], list) and all(isinstance(e, dict) for e in data[key])):
            raise UserError(f"{ann_file}: not a COCO annotation file ('{key}' is not a list of objects)")
    images, anns = data["images"], data["annotations"]
    for key in ("images", "categories"):   # a set to train or evaluate on needs both
        if not data[key]:
            raise UserError(f"{ann_file}: no {key}")
    columns = {"image_id": [a.get("image_id") for a in anns],   # .get: a missing id is named as null
               "category_id": [a.get("category_id") for a in anns]}
    _check_integer_ids(ann_file, data, columns)
    _check_fields(ann_file, data)
    known = _unique_ids(ann_file, images, "images", "the boxes of both would land on one image")
    cat_ids = _unique_ids(ann_file, data["categories"], "categories", "one label for two names")
    _unique_ids(ann_file, anns, "annotations", "COCOeval looks boxes up by id and would lose one")
    unknown = [k for k, c in enumerate(columns["category_id"]) if c not in cat_ids]
    if unknown:
        ann = anns[unknown[0]]
        raise UserError(f"{ann_file}: annotation {ann['id']} has category_id "
                        f"{ann['category_id']}, not in 'categories' {sorted(cat_ids)}")
    orphans = [k for k, i in enumerate(columns["image_id"]) if i not in known]
    if orphans:
        ann = anns[orphans[0]]
        raise UserError(f"{ann_file}: {len(orphans)} annotations have an image_id not in 'images', the "
                        f"first {ann['image_id']} (annotation {ann['id']})")
    columns["bbox"] = _boxes_array(ann_file, anns)
    columns["iscrowd"], columns["area"] = _crowd_and_area(ann_file, anns, columns["bbox"])
    return data, columns


SINGULAR = {"images": "image", "categories": "category", "annotations": "annotation"}


def _check_integer_ids(ann_file, data, columns):
    """Every id is an integer, as COCO's format says (cocodataset.org/#format-data): COCOeval would
    die on another at the end of training (int() of a category id, an annotation id stored in a float
    array). The first offender is a UserError; true/false are not integers (type is not int)."""
    for key, what in SINGULAR.items():
        ids = [e.get("id") for e in data[key]]
        k = next((k for k, v in enumerate(ids) if type(v) is not int), None)
        if k is not None:
            raise UserError(f"{ann_file}: {what} id {json.dumps(ids[k])} is not an integer "
                            f"(COCO ids are integers)")
    for key in ("image_id", "category_id"):
        k = next((k for k, v in enumerate(columns[key]) if type(v) is not int), None)
        if k is not None:
            raise UserError(f"{ann_file}: annotation {data['annotations'][k]['id']} has {key} "
                            f"{json.dumps(columns[key][k])}, not an integer (COCO ids are integers)")


def _unique_ids(ann_file, entries, key, why):
    """The set of the "id"s of data[key]; one that appears twice is a UserError saying `why` it matters."""
    ids = [e["id"] for e in entries]
    unique = set(ids)
    if len(unique) < len(ids):
        first = next(i for i, n in Counter(ids).items() if n > 1)
        raise UserError(f"{ann_file}: {SINGULAR[key]} id {first} appears more than once in '{key}' ({why})")
    return unique


def _positive(v):
    return type(v) in (int, float) and math.isfinite(v) and v > 0


# what loading and COCOeval read beside the ids: key -> (field, what it must be, test)
REQUIRED_FIELDS = {"images": (("file_name", "a file name", lambda v: isinstance(v, str) and v != ""),
                              ("width", "a positive number", _positive),
                              ("height", "a positive number", _positive)),
                   "categories": (("name", "a string", lambda v: isinstance(v, str)),)}


def _check_fields(ann_file, data):
    """Every image has its file name and size and every category its name, as COCO's format says;
    the first offender is a UserError naming the entry and the field, not a KeyError from deep inside."""
    for key, fields in REQUIRED_FIELDS.items():
        for entry in data[key]:
            for field, what, valid in fields:
                if field not in entry:
                    raise UserError(f"{ann_file}: {SINGULAR[key]} {entry['id']} has no '{field}' ({what})")
                if not valid(entry[field]):
                    raise UserError(f"{ann_file}: {SINGULAR[key]} {entry['id']} has '{field}' "
                                    f"{json.dumps(entry[field])}, not {what}")


def _boxes_array(ann_file, anns):
    """The "bbox" of every annotation -> float64 array [A, 4] xywh; a malformed one is a UserError.

    One numpy conversion for all boxes (fast path); only when it fails or yields a non-number or a
    non-finite value does a per-annotation loop look for the first offender to name it.
    """
    boxes = [a.get("bbox") for a in anns]
    if not anns:
        return np.zeros((0, 4))
    array = _numeric(boxes, (len(anns), 4), np.isfinite)
    if array is not None:
        return array
    for ann, box in zip(anns, boxes):
        if not (isinstance(box, list) and len(box) == 4
                and all(isinstance(v, (int, float)) and math.isfinite(v) for v in box)):
            raise UserError(f"{ann_file}: image {ann['image_id']} has malformed bbox {box!r} "
                            f"(annotation {ann['id']}; need 4 finite numbers [x, y, w, h])")
    return np.array(boxes, dtype=np.float64)   # e.g. integers beyond int64: valid, converted here


def _crowd_and_area(ann_file, anns, xywh):
    """Every annotation's "iscrowd" (0 or 1) and "area" (COCOeval's size ranges), which COCOeval reads
    from each annotation: a missing (or null) one is filled in, in the annotation too, as detectron2
    reads and writes COCO (iscrowd 0, area = box w * h); any other value than a number is a UserError
    naming the annotation. xywh: [A, 4] the checked boxes. Returns (iscrowd [A], area [A]) lists.

    As _boxes_array: one numpy check of all values (a file of train2017's size: 0.1 s), and only when it
    fails a per-annotation loop that fills in or names the first offender.
    """
    crowd, area = [a.get("iscrowd") for a in anns], [a.get("area") for a in anns]
    if (_numeric(crowd, (len(anns),), lambda v: (v == 0) | (v == 1)) is not None
            and _numeric(area, (len(anns),), lambda v: np.isfinite(v) & (v >= 0)) is not None):
        return crowd, area
    for ann, (w, h) in zip(anns, xywh[:, 2:].tolist()):
        if ann.get("iscrowd") is None:
            ann["iscrowd"] = 0
        if ann.get("area") is None:
            ann["area"] = w * h
        crowd, area = ann["iscrowd"], ann["area"]
        if not (type(crowd) in (int, float, bool) and crowd in (0, 1)):
            raise UserError(f"{ann_file}: annotation {ann['id']} has iscrowd {json.dumps(crowd)}, not 0 or 1")
        if not (type(area) in (int, float) and math.isfinite(area) and area >= 0):
            raise UserError(f"{ann_file}: annotation {ann['id']} has area {json.dumps(area)}, not a number >= 0")
    return [a["iscrowd"] for a in anns], [a["area"] for a in anns]


def _numeric(values, shape, valid):
    """values (lists) as a float64 array of `shape` when all are numbers (no None, string or ragged list)
    and valid(array) holds everywhere; else None, and the caller's loop names the first offender."""
    try:
        array = np.array(values)   # dtype inferred: numbers -> int64/float64; a string or null -> not numeric
    except (ValueError, TypeError):   # ragged lists
        return None
    if array.shape != shape or array.dtype.kind not in "biuf":
        return None
    array = array.astype(np.float64)
    return array if valid(array).all() else None


# EXIF orientation -> the transpose that shows the stored pixels as displayed (Pillow's exif_transpose)
ORIENTATION = 0x0112   # the EXIF tag
TRANSPOSE = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180,
             4: Image.Transpose.FLIP_TOP_BOTTOM, 5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270,
             7: Image.Transpose.TRANSVERSE, 8: Image.Transpose.ROTATE_90}


def _orientation(im):
    """The EXIF orientation of an open image, 1 (as stored) when it has none or it cannot be read.

    detectron2's convention (detection_utils._apply_exif_orientation): boxes refer to the image as
    displayed, and a corrupt EXIF block counts as none. Read from what the header holds, the pixels
    not decoded: Image.Image.getexif, not PNG's, which decodes them to look for a later eXIf chunk.
    """
    try:
        return Image.Image.getexif(im).get(ORIENTATION, 1)
    except Exception:   # as detectron2 (its issue 1885): Pillow raises several types on bad EXIF
        return 1


def _displayed_size(im):
    """(width, height) of an open image as displayed: orientations 5-8 turn it by 90 degrees."""
    w, h = im.size
    return (h, w) if _orientation(im) in (5, 6, 7, 8) else (w, h)


def too_large(error):
    """The message of PIL's DecompressionBombError (more than 2 x Image.MAX_IMAGE_PIXELS pixels, a guard
    against files crafted to exhaust memory) with what to do about a real, trusted image."""
    return (f"too large for PIL's guard against decompression bombs ({error}); tile the image, or raise "
            "PIL.Image.MAX_IMAGE_PIXELS if the file is trusted")


def _sixteen_bit_pixels(im):
    """[H, W] float64 pixels of a 16-bit grayscale image (PIL modes I;16*, and I, which older Pillows give
    16-bit PNGs); None for any other mode. 32-bit integer or floating-point pixels (a mode I image beyond
    0..65535, mode F) have no range to scale from, and convert("RGB") made them all white or all black: a
    ValueError naming them (also the check of --verify-images, which needs no conversion)."""
    if im.mode == "F":
        raise ValueError("floating-point pixels (PIL mode F): save it with 8 or 16 bits per channel")
    if not (im.mode == "I" or im.mode.startswith("I;16")):
        return None
    pixels = np.asarray(im, dtype=np.float64)
    if pixels.size and (pixels.min() < 0 or pixels.max() > 65535):
        raise ValueError(f"32-bit pixels (PIL mode I, values {pixels.min():g}..{pixels.max():g}, beyond 16 bits): "
                         "save it with 8 or 16 bits per channel")
    return pixels


def _eight_bit(im):
    """16-bit grayscale scaled to 8 bits, 0..65535 -> 0..255: PIL's convert("RGB") clips those values at
    255, which turns a 16-bit image white. ValueError for pixels beyond 16 bits (`_sixteen_bit_pixels`).
    Any other mode is returned as it is."""
    pixels = _sixteen_bit_pixels(im)
    if pixels is None:
        return im
    return Image.fromarray((pixels / 257).round().clip(0, 255).astype(np.uint8))


def load_rgb(path, what="image"):
    """An image file -> [3, H, W] float32 in 0..1, RGB (grayscale/RGBA/palette/CMYK converted, 16-bit
    grayscale scaled to 8 bits), as displayed: turned by its EXIF orientation (detectron2's convention,
    see _orientation).

    An empty, truncated or non-image file is a one-line UserError naming the path.
    """
    try:
        with Image.open(path) as im:
            transpose = TRANSPOSE.get(_orientation(im))
            rgb = _eight_bit(im).convert("RGB")
            pixels = np.asarray(rgb if transpose is None else rgb.transpose(transpose))  # [H, W, 3] uint8
    except (OSError, ValueError) as e:  # PIL.UnidentifiedImageError is an OSError; ValueError: _eight_bit
        raise UserError(f"{path}: cannot read the image ({what}): {e}") from None
    except Image.DecompressionBombError as e:
        raise UserError(f"{path}: {too_large(e)}") from None
    return torch.from_numpy(pixels.copy()).permute(2, 0, 1).float().div_(255)


class PackedTargets(Mapping):
    """{image_id: (boxes [N, 4] xyxy float32, labels [N] int64, areas [N] float64)}, read-only.

    The boxes of all images in three arrays sorted by image; image k (file order) owns rows
    offsets[k]:offsets[k + 1], and a lookup returns views. Design choice for train2017's 118k images:
    3 arrays instead of 3 per image are built in one vectorised pass, and forked DataLoader workers
    that read them write to no per-image Python object (reference counts), which would copy its
    memory page into the worker.
    """

    def __init__(self, position, boxes, labels, areas, offsets):
        self._position = position                       # {image_id: k}, file order
        self.boxes, self.labels, self.areas = boxes, labels, areas
        self.offsets = offsets                          # [I + 1] int64

    def __getitem__(self, image_id):
        k = self._position[image_id]
        start, end = self.offsets[k], self.offsets[k + 1]
        return self.boxes[start:end], self.labels[start:end], self.areas[start:end]

    def __iter__(self):
        return iter(self._position)

    def __len__(self):
        return len(self._position)


class CocoDetection(Dataset):
    """A COCO-format detection data set.

    dataset[i] or dataset[(i, flip)] -> (image, target):
      image   [3, H, W] float32 in 0..1, RGB, original size (flipped horizontally if flip)
      target  {"boxes": [N, 4] float32 xyxy in image pixels, "labels": [N] int64 in 1..C,
               "image_id": int, "orig_size": (h, w), "flipped": bool}
    Boxes: crowd boxes dropped, clipped to the image, degenerate ones (w or h < 1 after clipping)
    dropped with one warning at construction. Images without boxes are kept (boxes [0, 4]).
    image_ids: restrict to these images (file order of the `images` list is kept).
    """

    def __init__(self, ann_file, image_dir, image_ids=None):
        self.ann_file = Path(ann_file)
        self.image_dir = Path(image_dir)
        data, columns = _load_coco_json(self.ann_file)
        self.coco = COCO()
        self.coco.dataset = data
        with contextlib.redirect_stdout(io.StringIO()):   # pycocotools prints "creating index..."
            self.coco.createIndex()
        cat_ids = sorted(self.coco.cats)
        self.num_classes = len(cat_ids)
        self.cat_id_to_label = {c: i + 1 for i, c in enumerate(cat_ids)}
        self.label_to_cat_id = {i + 1: c for i, c in enumerate(cat_ids)}
        self.class_names = [self.coco.cats[c]["name"] for c in cat_ids]
        shared = sorted(name for name, n in Counter(self.class_names).items() if n > 1)
        if shared:
            warnings.warn(f"{self.ann_file.name}: several categories are named {', '.join(shared)}: logs, "
                          "pictures and per-class counts cannot tell them apart")
        self._targets = self._precompute_targets(data["images"], columns)
        self.image_ids = [img["id"] for img in data["images"]]
        if image_ids is not None:
            self.image_ids = self._restrict(image_ids)

    def _precompute_targets(self, images, columns):
        """PackedTargets {image_id: (boxes [N, 4] xyxy float32, labels [N] int64, areas [N])}, warns once.

        All annotations at once (columns from _load_coco_json, which checked that their images are in
        the file): drop crowd boxes, xywh -> xyxy, clip to the image, drop w or h < 1, then group by
        image (stable: file order within an image, as pycocotools' imgToAnns).
        """
        position = {img["id"]: k for k, img in enumerate(images)}
        size = np.array([(img["width"], img["height"]) for img in images], dtype=np.float64)     # [I, 2]
        image_of = np.array([position[i] for i in columns["image_id"]], dtype=np.int64)           # [A]
        xywh = columns["bbox"]                                                                    # [A, 4]
        boxes = np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], axis=1)                 # [A, 4] xyxy
        wh = size[image_of]                                                                       # [A, 2]
        boxes[:, 0::2] = boxes[:, 0::2].clip(0, wh[:, :1])
        boxes[:, 1::2] = boxes[:, 1::2].clip(0, wh[:, 1:])
        counted = np.array(columns["iscrowd"], dtype=np.int64).reshape(-1) == 0
        valid = (boxes[:, 2] - boxes[:, 0] >= 1) & (boxes[:, 3] - boxes[:, 1] >= 1)
        dropped = int((counted & ~valid).sum())
        kept = np.flatnonzero(counted & valid)
        kept = kept[np.argsort(image_of[kept], kind="stable")]                                   # [K] by image
        labels = np.array([self.cat_id_to_label[c] for c in columns["category_id"]], dtype=np.int64)
        areas = np.array(columns["area"], dtype=np.float64)   # [A] COCOeval's size ranges (_crowd_and_area)
        offsets = np.concatenate([[0], np.cumsum(np.bincount(image_of[kept], minlength=len(images)))])
        if dropped:
            warnings.warn(f"{self.ann_file.name}: dropped {dropped} degenerate boxes (w or h < 1)")
        return PackedTargets(position, boxes[kept].astype(np.float32), labels[kept], areas[kept], offsets)

    def _restrict(self, image_ids):
        """The file-ordered subset of image ids; unknown ids are an error."""
        wanted = set(image_ids)
        unknown = wanted - self._targets.keys()
        if unknown:
            raise UserError(f"{self.ann_file}: {len(unknown)} requested image ids not in the file, "
                             f"e.g. {sorted(unknown)[:5]}")
        return [i for i in self._targets if i in wanted]   # dict order = file order

    def subset(self, image_ids):
        """A view on the same annotations restricted to image_ids (no re-parsing of the file)."""
        view = copy.copy(self)
        view.image_ids = self._restrict(image_ids)
        return view

    def __len__(self):
        return len(self.image_ids)

    def __getitem__(self, item):
        index, flip = item if isinstance(item, tuple) else (item, False)
        image_id = self.image_ids[index]
        info = self.coco.imgs[image_id]
        path = self.image_dir / info["file_name"]
        if not path.is_file():
            raise UserError(f"{path}: image file not found (image id {image_id})")
        image = load_rgb(path, f"image id {image_id}")  # [3, H, W]
        h, w = image.shape[-2:]
        if (w, h) != (info["width"], info["height"]):
            raise UserError(f"{path}: image is {w}x{h} but {self.ann_file.name} says "
                             f"{info['width']}x{info['height']} (image id {image_id})")
        boxes_np, labels_np, _ = self._targets[image_id]
        boxes = torch.from_numpy(boxes_np.copy())              # [N, 4] xyxy
        if flip:
            image = image.flip(-1)
            boxes = torch.stack([w - boxes[:, 2], boxes[:, 1], w - boxes[:, 0], boxes[:, 3]], dim=1)
        target = {"boxes": boxes, "labels": torch.from_numpy(labels_np.copy()),
                  "image_id": int(image_id), "orig_size": (h, w), "flipped": bool(flip)}
        return image, target

    def aspect_ratios(self):
        """w / h of each image (from the JSON, no decoding), for aspect-ratio grouping."""
        return [self.coco.imgs[i]["width"] / self.coco.imgs[i]["height"] for i in self.image_ids]

    def summary(self, title=None):
        """Multi-line description: images, images without boxes, boxes per class, COCO sizes; one line for
        a file without a box (a list of unlabeled images, as COCO's unlabeled2017)."""
        if self.num_boxes() == 0:
            return f"{title or self.ann_file.name}: {len(self)} images without annotations (unlabeled only)"
        per_image = [self._targets[i] for i in self.image_ids]
        labels = np.concatenate([t[1] for t in per_image]) if per_image else np.zeros(0, int)
        areas = np.concatenate([t[2] for t in per_image]) if per_image else np.zeros(0)
        counts = Counter(labels.tolist())
        per_class = ", ".join(f"{self.class_names[k - 1]}: {n}" for k, n in
                              sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))
        small = int((areas < 32 ** 2).sum())
        large = int((areas > 96 ** 2).sum())
        absent = [name for k, name in enumerate(self.class_names, 1) if k not in counts]
        return "\n".join([
            f"{title or self.ann_file.name}: {len(self)} images "
            f"({sum(len(t[1]) == 0 for t in per_image)} without boxes), {len(labels)} boxes, "
            f"{self.num_classes} classes",
            f"  boxes per class: {per_class or '-'}",
            f"  box sizes (COCO area): small {small}, medium {len(areas) - small - large}, "
            f"large {large}",
            *([f"  no box of {', '.join(absent)}: not learnable from these images"] if absent else [])])

    def num_boxes(self):
        """Boxes the images of the data set train or are evaluated on (crowd and degenerate ones dropped)."""
        return sum(len(self._targets[i][1]) for i in self.image_ids)

    def files(self):
        """[(path, (width, height) from the JSON)] of the images of the data set, in index order."""
        return [(self.image_dir / self.coco.imgs[i]["file_name"],
                 (self.coco.imgs[i]["width"], self.coco.imgs[i]["height"])) for i in self.image_ids]

    def ground_truth_indices(self):
        """Indices of the images with ground truth: all (an image without boxes has none to find), unless the
        file has no box at all: then it lists unlabeled images (the pseudo-label diagnostics skip them)."""
        return list(range(len(self))) if self.num_boxes() else []


IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


def is_image_file(path):
    """An image of a folder without annotations (--unlabeled-images, eval.py --images): IMAGE_EXTENSIONS in
    any letter case, not hidden (an editor's or macOS's "._" copy)."""
    return path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith(".") and path.is_file()


def image_files(folder):
    """The image files (is_image_file) of a folder and its subfolders, sorted by path."""
    return sorted(p for p in Path(folder).rglob("*") if is_image_file(p))


class ImageFolderDetection(Dataset):
    """The images of a folder and its subfolders, without annotations: an unlabeled pool that needs
    no COCO JSON (`--unlabeled-images DIR`). The interface of CocoDetection that training uses:
    dataset[(i, flip)] -> (image [3, H, W] float 0..1 RGB, target with no boxes: {"boxes": [0, 4],
    "labels": [0], "image_id": i, "orig_size", "flipped", "file_name": path relative to the folder}),
    aspect_ratios(), summary(), files(), ground_truth_indices() (none).
    Files: IMAGE_EXTENSIONS in any letter case, sorted by relative path; hidden files skipped.
    """

    def __init__(self, image_dir):
        self.image_dir = Path(image_dir)
        if not self.image_dir.is_dir():
            raise UserError(f"{self.image_dir}: directory not found (unlabeled images)")
        self.paths = image_files(self.image_dir)
        if not self.paths:
            raise UserError(f"{self.image_dir}: no {'/'.join(e[1:] for e in IMAGE_EXTENSIONS)} images "
                            "in the folder or its subfolders")
        self._sizes = None

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, item):
        index, flip = item if isinstance(item, tuple) else (item, False)
        path = self.paths[index]
        image = load_rgb(path, "unlabeled image")  # [3, H, W]
        if flip:
            image = image.flip(-1)
        return image, {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64),
                       "image_id": index, "orig_size": tuple(image.shape[-2:]), "flipped": bool(flip),
                       "file_name": str(path.relative_to(self.image_dir))}

    def sizes(self):
        """(width, height) of each image as displayed (EXIF orientation, as load_rgb) from its header
        (PIL reads no pixels); an unreadable header is a UserError naming the file."""
        if self._sizes is None:
            self._sizes = []
            for path in self.paths:
                try:
                    with Image.open(path) as im:
                        self._sizes.append(_displayed_size(im))
                except OSError as e:
                    raise UserError(f"{path}: cannot read the image (unlabeled image): {e}") from None
                except Image.DecompressionBombError as e:
                    raise UserError(f"{path}: {too_large(e)}") from None
        return self._sizes

    def aspect_ratios(self):
        return [w / h for w, h in self.sizes()]

    def files(self):
        return [(path, None) for path in self.paths]  # no JSON size to check against

    def ground_truth_indices(self):
        return []

    def summary(self, title=None):
        return f"{title or self.image_dir}: {len(self)} images without annotations (unlabeled only)"


class ConcatDetection(Dataset):
    """Data sets one after the other (the unlabeled pool of --unlabeled-ann and --unlabeled-images):
    index i is index i - offsets[k] of part k. torch's ConcatDataset takes int indices only, and
    training indexes with (index, flip)."""

    def __init__(self, datasets):
        self.datasets = list(datasets)
        self.offsets = [0, *itertools.accumulate(len(d) for d in self.datasets)]

    def __len__(self):
        return self.offsets[-1]

    def __getitem__(self, item):
        index, flip = item if isinstance(item, tuple) else (item, False)
        k = bisect.bisect_right(self.offsets, index) - 1
        return self.datasets[k][(index - self.offsets[k], flip)]

    def aspect_ratios(self):
        return [r for d in self.datasets for r in d.aspect_ratios()]

    def files(self):
        return [f for d in self.datasets for f in d.files()]

    def ground_truth_indices(self):
        return [offset + i for d, offset in zip(self.datasets, self.offsets) for i in d.ground_truth_indices()]

    def summary(self, title=None):
        return "\n".join(d.summary() for d in self.datasets)


def _parts(dataset):
    return dataset.datasets if isinstance(dataset, ConcatDetection) else [dataset]


def _examples(names, n=3):
    return ", ".join(map(str, names[:n])) + (", ..." if len(names) > n else "")


def _missing_files(root, names):
    """The names (relative to root, "/"-separated as in COCO's file_name) of files that do not exist.
    Design choice: one directory listing per folder instead of one stat per file (a cold stat of
    each of train2017's 118k files took tens of seconds here); only names not listed are stat-ed."""
    listed, missing = {}, []
    for name in names:
        folder, _, base = name.rpartition("/")
        if folder not in listed:
            path = os.path.join(root, folder)
            listed[folder] = set(os.listdir(path)) if os.path.isdir(path) else set()
        if base not in listed[folder] and not os.path.isfile(os.path.join(root, name)):
            missing.append(name)
    return missing


def warn_shared_images(labeled, unlabeled):
    """A warning when image files are in both parts (--unlabeled-images over the training folder, a ready-made
    unlabeled file that repeats labeled images, the same file listed twice): they would be trained as labeled
    and as unlabeled, and the unlabeled part would count some images twice."""
    if unlabeled is None:
        return
    counts = Counter(os.path.abspath(path) for path, _ in unlabeled.files())     # no system call per file
    shared = sorted({os.path.abspath(path) for path, _ in labeled.files()} & set(counts))
    repeated = sorted(path for path, n in counts.items() if n > 1)
    problems = [*([f"{len(shared)} labeled images are among the unlabeled ones too"] if shared else []),
                *([f"{len(repeated)} unlabeled images are listed more than once"] if repeated else [])]
    if problems:
        warnings.warn(f"{' and '.join(problems)} (e.g. {_examples(shared or repeated, 1)})")


def check_image_files(*datasets, hint=""):
    """Every image file that the COCO data sets name exists, checked before the first iteration
    rather than when the sampler first meets a missing file hours in. One UserError per annotation
    file, with the count, the first names and `hint` (what to do instead). None entries are skipped."""
    for part in (p for d in datasets if d is not None for p in _parts(d)):
        if not isinstance(part, CocoDetection):
            continue  # a folder's files were listed from the disk
        missing = _missing_files(str(part.image_dir), [part.coco.imgs[i]["file_name"] for i in part.image_ids])
        if missing:
            raise UserError(f"{part.ann_file}: {len(missing)} of its {len(part)} image files are not in "
                            f"{part.image_dir}: {_examples(missing)}{hint}")


def _verify_one(entry):
    """(path, expected (w, h) or None) -> a problem string or None: decode all pixels; the size is
    the displayed one (EXIF orientation), the one load_rgb returns."""
    path, expected = entry
    try:
        with Image.open(path) as im:
            size, orientation = _displayed_size(im), _orientation(im)
            im.load()
            _sixteen_bit_pixels(im)   # load_rgb's check of the bit depth, without its conversion
    except OSError as e:  # truncated, corrupt, not an image, unreadable
        return f"cannot decode ({e})"
    except ValueError as e:  # pixels load_rgb cannot scale to 8 bits
        return str(e)
    except Image.DecompressionBombError as e:
        return too_large(e)
    if expected is not None and tuple(size) != tuple(expected):
        turned = f" (as displayed: its EXIF orientation {orientation} turns it)" if orientation in (5, 6, 7, 8) else ""
        return f"is {size[0]}x{size[1]}{turned}, the JSON says {expected[0]}x{expected[1]}"
    return None


def verify_images(datasets, workers=4, progress=True):
    """Decode every image of the data sets (threads: PIL releases the GIL while decoding) and check
    its size against the JSON; one UserError naming the count and the first problems, each file by
    its path from the folder that holds them all (train/0.png and val/0.png are told apart)."""
    entries = list(dict.fromkeys(f for d in datasets if d is not None for f in d.files()))
    with ThreadPoolExecutor(max(1, workers)) as pool:
        results = list(tqdm(pool.map(_verify_one, entries, chunksize=64), total=len(entries),
                            desc="verifying images", disable=not progress, dynamic_ncols=True))
    problems = [(os.path.abspath(path), r) for (path, _), r in zip(entries, results) if r is not None]
    if problems:
        root = os.path.commonpath([os.path.dirname(path) for path, _ in problems])
        named = [f"{os.path.relpath(path, root)}: {r}" for path, r in problems]
        raise UserError(f"{len(problems)} of the {len(entries)} images are unusable (--verify-images), in {root}: "
                        f"{_examples(named)}")
    return len(entries)


def collate(batch):
    """[(image, target), ...] -> (list of images, list of targets); images keep their own size."""
    images, targets = zip(*batch)
    return list(images), list(targets)


class TrainBatchSampler:
    """Infinite, deterministic, resumable stream of training batches of (index, flip) tuples.

    Epoch e is the permutation `default_rng([seed, e]).permutation(n)`; rank r takes
    `perm[r::world_size]` truncated to n // world_size images, so the ranks' shards are disjoint
    and of equal length. Images are grouped by orientation (w >= h, w < h): a batch is emitted
    when a group's buffer reaches batch_size (torchvision's GroupedBatchSampler); buffers carry
    over epoch boundaries. Flips are drawn with probability flip_prob from
    `default_rng([seed, e, rank, 1])`.

    The stream is a pure function of (aspect_ratios, batch_size, seed, rank, world_size,
    flip_prob): `start_iter=k` yields exactly batch k, k+1, ... of the stream that start_iter=0
    yields (exact resume from an iteration number; the first k batches are generated and
    discarded, which costs only index arithmetic).
    """

    def __init__(self, aspect_ratios, batch_size, seed, rank=0, world_size=1, start_iter=0,
                 flip_prob=0.5):
        if len(aspect_ratios) < world_size:
            raise ValueError(f"TrainBatchSampler: {len(aspect_ratios)} images cannot be sharded "
                             f"over {world_size} ranks")
        if batch_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"TrainBatchSampler: need batch_size >= 1 and 0 <= rank < world_size, "
                             f"got batch_size={batch_size}, rank={rank}, world_size={world_size}")
        self.groups = [0 if r >= 1 else 1 for r in aspect_ratios]   # 0: landscape/square, 1: portrait
        self.batch_size, self.seed, self.rank, self.world_size = batch_size, seed, rank, world_size
        self.start_iter, self.flip_prob = start_iter, flip_prob

    def _stream(self):
        n, buffers = len(self.groups), ([], [])
        per_rank = n // self.world_size
        for epoch in itertools.count():
            perm = np.random.default_rng([self.seed, epoch]).permutation(n)
            shard = perm[self.rank::self.world_size][:per_rank]
            flips = np.random.default_rng([self.seed, epoch, self.rank, 1]).random(per_rank)
            for index, u in zip(shard.tolist(), flips.tolist()):
                buffer = buffers[self.groups[index]]
                buffer.append((index, u < self.flip_prob))
                if len(buffer) == self.batch_size:
                    yield buffer.copy()
                    buffer.clear()

    def __iter__(self):
        return itertools.islice(self._stream(), self.start_iter, None)


STOP_GRACE_S = 60  # design choice: how long a data loader worker goes on serving after a SIGTERM


def _exit_quietly():
    """End a worker with exit status 0: torch's DataLoader fails the main process at once, wherever it
    is, when a worker is killed by a signal, not when one exits normally."""
    os._exit(0)


def _serve_then_exit(signum, frame):
    """A worker's first SIGTERM: it serves the batches already asked for and ends after STOP_GRACE_S (or
    earlier, shut down by the main process). Later SIGTERMs are ignored: under Slurm and torchrun a worker
    gets two at once, Slurm's to every process and torchrun's to each rank's process group."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    timer = threading.Timer(STOP_GRACE_S, _exit_quietly)
    timer.daemon = True
    timer.start()


def _worker_signals(worker_id):
    """DataLoader worker_init_fn. A signal to the whole process group (Ctrl-C: SIGINT; Slurm's scancel and
    `kill -- -PGID`: SIGTERM) reaches the workers too, and a worker ended by it fails the main process in
    the middle of its iteration; instead the main process finishes the iteration and saves last.pt
    (train.stop_requests). SIGINT is ignored; a SIGTERM lets the worker serve the batch the main
    process may be waiting for, then ends it (_serve_then_exit)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, _serve_then_exit)


@contextlib.contextmanager
def worker_batches(loader):
    """iter(loader), whose worker processes end with the block, also on an error: the error's traceback
    would keep the iterator until Python's exit, whose SIGTERM the workers serve through for STOP_GRACE_S.
    `_shutdown_workers` is what torch's iterator runs when it is deleted or exhausted."""
    batches = iter(loader)
    try:
        yield batches
    finally:
        getattr(batches, "_shutdown_workers", lambda: None)()  # none without workers


def make_loader(dataset, batch_sampler, workers, pin_memory=False):
    """Training DataLoader driven by a batch sampler of (index, flip) tuples."""
    return DataLoader(dataset, batch_sampler=batch_sampler, num_workers=workers, collate_fn=collate,
                      pin_memory=pin_memory, persistent_workers=workers > 0, worker_init_fn=_worker_signals)


def make_eval_loader(dataset, batch_size, workers, rank=0, world_size=1):
    """Evaluation DataLoader over this rank's shard `indices[rank::world_size]`, fixed order."""
    indices = list(range(len(dataset)))[rank::world_size]
    return DataLoader(dataset, batch_size=batch_size, sampler=indices, num_workers=workers,
                      collate_fn=collate, worker_init_fn=_worker_signals)
