"""COCO-format detection data (through pycocotools), the training batch sampler and the loaders.

Labels follow torchvision: the arbitrary COCO category ids are mapped to contiguous labels 1..C
in sorted category-id order; 0 is background. The data set itself does no random augmentation:
the horizontal flip of each image is drawn by `TrainBatchSampler` and passed as
`dataset[(index, flip)]`, so the training stream is a pure function of (seed, iteration) whatever
the number of workers. Multi-scale resizing is done by the model (`min_size` tuple).
"""
import contextlib
import copy
import io
import itertools
import json
import math
import warnings
from collections import Counter
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from pycocotools.coco import COCO
from torch.utils.data import DataLoader, Dataset


def _load_coco_json(ann_file):
    """Parse and validate a COCO annotation file -> dict (one-line errors naming the file)."""
    if not ann_file.is_file():
        raise FileNotFoundError(f"{ann_file}: annotation file not found")
    try:
        data = json.loads(ann_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise ValueError(f"{ann_file}: not a COCO annotation file (not valid JSON)") from None
    if not isinstance(data, dict):
        raise ValueError(f"{ann_file}: not a COCO annotation file (not a JSON object)")
    for key in ("images", "annotations", "categories"):
        if key not in data:
            raise ValueError(f"{ann_file}: not a COCO annotation file (missing '{key}')")
    cat_ids = {c["id"] for c in data["categories"]}
    for ann in data["annotations"]:
        if ann["category_id"] not in cat_ids:
            raise ValueError(f"{ann_file}: annotation {ann['id']} has category_id "
                             f"{ann['category_id']}, not in 'categories' {sorted(cat_ids)}")
        box = ann.get("bbox")
        if not (isinstance(box, list) and len(box) == 4
                and all(isinstance(v, (int, float)) and math.isfinite(v) for v in box)):
            raise ValueError(f"{ann_file}: image {ann['image_id']} has malformed bbox {box!r} "
                             f"(annotation {ann['id']}; need 4 finite numbers [x, y, w, h])")
    return data


def load_rgb(path, what="image"):
    """An image file -> [3, H, W] float32 in 0..1, RGB (grayscale/RGBA/palette/CMYK converted).

    An empty, truncated or non-image file is a one-line ValueError naming the path.
    """
    try:
        with Image.open(path) as im:
            pixels = np.asarray(im.convert("RGB"))  # [H, W, 3] uint8
    except OSError as e:  # PIL.UnidentifiedImageError is an OSError
        raise ValueError(f"{path}: cannot read the image ({what}): {e}") from None
    return torch.from_numpy(pixels.copy()).permute(2, 0, 1).float().div_(255)


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
        data = _load_coco_json(self.ann_file)
        self.coco = COCO()
        self.coco.dataset = data
        with contextlib.redirect_stdout(io.StringIO()):   # pycocotools prints "creating index..."
            self.coco.createIndex()
        cat_ids = sorted(self.coco.cats)
        self.num_classes = len(cat_ids)
        self.cat_id_to_label = {c: i + 1 for i, c in enumerate(cat_ids)}
        self.label_to_cat_id = {i + 1: c for i, c in enumerate(cat_ids)}
        self.class_names = [self.coco.cats[c]["name"] for c in cat_ids]
        self._targets = self._precompute_targets(data["images"])
        self.image_ids = [img["id"] for img in data["images"]]
        if image_ids is not None:
            self.image_ids = self._restrict(image_ids)

    def _precompute_targets(self, images):
        """{image_id: (boxes [N, 4] xyxy float32, labels [N] int64, areas [N])}, warns once."""
        targets, dropped = {}, 0
        for img in images:
            anns = [a for a in self.coco.imgToAnns[img["id"]] if not a.get("iscrowd", 0)]
            xywh = np.array([a["bbox"] for a in anns], dtype=np.float64).reshape(-1, 4)
            boxes = np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], axis=1)
            boxes[:, 0::2] = boxes[:, 0::2].clip(0, img["width"])
            boxes[:, 1::2] = boxes[:, 1::2].clip(0, img["height"])
            keep = (boxes[:, 2] - boxes[:, 0] >= 1) & (boxes[:, 3] - boxes[:, 1] >= 1)
            dropped += int((~keep).sum())
            labels = np.array([self.cat_id_to_label[a["category_id"]] for a in anns], dtype=np.int64)
            # COCOeval's size ranges use the annotation's "area" (segment area), else the box area
            areas = np.array([a.get("area", a["bbox"][2] * a["bbox"][3]) for a in anns], dtype=float)
            targets[img["id"]] = (boxes[keep].astype(np.float32), labels[keep], areas[keep])
        if dropped:
            warnings.warn(f"{self.ann_file.name}: dropped {dropped} degenerate boxes (w or h < 1)")
        return targets

    def _restrict(self, image_ids):
        """The file-ordered subset of image ids; unknown ids are an error."""
        wanted = set(image_ids)
        unknown = wanted - self._targets.keys()
        if unknown:
            raise ValueError(f"{self.ann_file}: {len(unknown)} requested image ids not in the file, "
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
            raise FileNotFoundError(f"{path}: image file not found (image id {image_id})")
        image = load_rgb(path, f"image id {image_id}")  # [3, H, W]
        h, w = image.shape[-2:]
        if (w, h) != (info["width"], info["height"]):
            raise ValueError(f"{path}: image is {w}x{h} but {self.ann_file.name} says "
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
        """Multi-line description: images, images without boxes, boxes per class, COCO sizes."""
        per_image = [self._targets[i] for i in self.image_ids]
        labels = np.concatenate([t[1] for t in per_image]) if per_image else np.zeros(0, int)
        areas = np.concatenate([t[2] for t in per_image]) if per_image else np.zeros(0)
        counts = Counter(labels.tolist())
        per_class = ", ".join(f"{self.class_names[k - 1]}: {n}" for k, n in
                              sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))
        small = int((areas < 32 ** 2).sum())
        large = int((areas > 96 ** 2).sum())
        return "\n".join([
            f"{title or self.ann_file.name}: {len(self)} images "
            f"({sum(len(t[1]) == 0 for t in per_image)} without boxes), {len(labels)} boxes, "
            f"{self.num_classes} classes",
            f"  boxes per class: {per_class or '-'}",
            f"  box sizes (COCO area): small {small}, medium {len(areas) - small - large}, "
            f"large {large}"])


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


def make_loader(dataset, batch_sampler, workers, pin_memory=False):
    """Training DataLoader driven by a batch sampler of (index, flip) tuples."""
    return DataLoader(dataset, batch_sampler=batch_sampler, num_workers=workers,
                      collate_fn=collate, pin_memory=pin_memory, persistent_workers=workers > 0)


def make_eval_loader(dataset, batch_size, workers, rank=0, world_size=1):
    """Evaluation DataLoader over this rank's shard `indices[rank::world_size]`, fixed order."""
    indices = list(range(len(dataset)))[rank::world_size]
    return DataLoader(dataset, batch_size=batch_size, sampler=indices, num_workers=workers,
                      collate_fn=collate)
