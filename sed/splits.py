"""Semi-supervised splits of a training set into labeled and unlabeled images.

Three ways, as in the SSOD literature:
- `percent_split`: p % of the images drawn at random per seed (STAC / Soft Teacher protocol,
  COCO-standard 1/2/5/10 %, folds = seeds);
- `read_split_file`: the fixed index lists of Unbiased Teacher's `COCO_supervision.txt`;
- two annotation files (labeled, unlabeled), e.g. the JSON files Soft Teacher's split script writes.
`load_split` builds the data sets for each case.
"""
import json
import warnings
from pathlib import Path

import numpy as np

from sed.data import CocoDetection
from sed.errors import UserError


def percent_split(image_ids, percent, seed):
    """(labeled_ids, unlabeled_ids), both in the order of image_ids; disjoint, union = all.

    Soft Teacher's `semi_coco.py` exactly (SED_NOTES "Results"): `int(percent / 100. * n)` images
    (truncated, not rounded: train2017 at 10 % keeps 11828 of 118287, not 11829; at least 1) are
    drawn without replacement with `np.random.RandomState(seed).choice` (= its `np.random.seed(fold)`
    then `np.random.choice`) over the positions of image_ids in file order.
    """
    ids = list(image_ids)
    if not ids:
        raise ValueError("percent_split: no images to split")
    if not 0 < percent <= 100:
        raise ValueError(f"percent_split: labeled percent must be in (0, 100], got {percent}")
    size = max(1, int(percent / 100.0 * len(ids)))  # this float expression, as semi_coco.py writes it
    chosen = set(np.random.RandomState(seed).choice(len(ids), size=size, replace=False).tolist())
    labeled = [i for k, i in enumerate(ids) if k in chosen]
    unlabeled = [i for k, i in enumerate(ids) if k not in chosen]
    return labeled, unlabeled


def _find_key(table, wanted, convert):
    """The key of table equal to wanted after convert (float for percents, int for seeds)."""
    for key in table:
        try:
            if convert(key) == convert(wanted):
                return key
        except ValueError:
            continue
    return None


def read_split_file(path, percent, seed, image_ids):
    """(labeled_ids, unlabeled_ids) from Unbiased Teacher's `COCO_supervision.txt` format.

    The file is JSON `{"<percent>": {"<seed>": [indices into image_ids]}}`; percent keys are
    matched as floats ("10" == "10.0"), seed keys as ints. Both lists keep the order of image_ids.
    Unbiased Teacher indexes detectron2's image list (sorted image ids, images with at least one
    non-crowd annotation); `load_split` passes that list.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: split file not found")
    try:
        table = json.loads(path.read_text(encoding="utf-8-sig"))  # -sig: the BOM that Windows tools write
    except json.JSONDecodeError as e:
        raise UserError(f"{path}: split file is not valid JSON ({e.msg}, line {e.lineno} column {e.colno})") from None
    except UnicodeDecodeError:
        raise UserError(f"{path}: split file is not valid JSON (not UTF-8 text)") from None
    if not isinstance(table, dict) or not all(isinstance(v, dict) for v in table.values()):
        raise UserError(f"{path}: split file must be JSON {{\"<percent>\": {{\"<seed>\": [indices]}}}}")
    percent_key = _find_key(table, percent, float)
    if percent_key is None:
        raise UserError(f"{path}: no percent {float(percent):g} in split file (--labeled-percent, default 100), "
                        f"available: {list(table)}")
    seed_key = _find_key(table[percent_key], seed, int)
    if seed_key is None:
        raise UserError(f"{path}: no seed {seed} for percent {percent} in split file, "
                         f"available: {list(table[percent_key])}")
    indices = table[percent_key][seed_key]
    if not isinstance(indices, list) or not indices:
        raise UserError(f"{path}: percent {percent} seed {seed}: expected a non-empty list of the labeled images' "
                        f"indices, got {json.dumps(indices)[:60]}")
    ids = list(image_ids)
    bad = [k for k in indices if not (type(k) is int and 0 <= k < len(ids))]   # true/false are not indices
    if bad or len(set(indices)) != len(indices):
        raise UserError(f"{path}: percent {percent} seed {seed}: indices must be distinct ints in "
                         f"[0, {len(ids)}), got e.g. {bad[:5] or 'duplicates'}")
    chosen = set(indices)
    return ([i for k, i in enumerate(ids) if k in chosen],
            [i for k, i in enumerate(ids) if k not in chosen])


def detectron2_image_ids(dataset):
    """Image ids as detectron2 lists them for training: sorted, at least one non-crowd box."""
    coco = dataset.coco
    return [i for i in sorted(coco.imgs)
            if any(not a.get("iscrowd", 0) for a in coco.imgToAnns[i])]


def load_split(train_ann, train_images, labeled_percent=None, split_seed=1, split_file=None,
               labeled_ann=None, unlabeled_ann=None):
    """(labeled_ds, unlabeled_ds or None) as CocoDetection data sets.

    - labeled_ann given: the labeled/unlabeled annotation files (images in train_images);
      unlabeled images keep their annotations in the data set for measurement only, the training
      code never uses them.
    - split_file given: Unbiased Teacher's index file for (labeled_percent, split_seed).
    - labeled_percent in (0, 100): `percent_split` of train_ann with split_seed.
    - otherwise (None or 100): all of train_ann labeled, no unlabeled set.
    """
    if labeled_ann is not None:
        labeled = CocoDetection(labeled_ann, train_images)
        unlabeled = CocoDetection(unlabeled_ann, train_images) if unlabeled_ann else None
        if unlabeled is not None and unlabeled.num_boxes() and (
                (unlabeled.label_to_cat_id, unlabeled.class_names) != (labeled.label_to_cat_id, labeled.class_names)):
            warnings.warn(f"{unlabeled_ann}: its categories differ from {labeled_ann}'s: the pseudo-label "
                          "diagnostics, which measure the teacher's detections against its boxes, mean nothing")
        return labeled, unlabeled
    full = CocoDetection(train_ann, train_images)
    if split_file is not None:
        if labeled_percent is None:
            raise UserError(f"{split_file}: a split file needs labeled_percent to pick its list")
        labeled, unlabeled = read_split_file(split_file, labeled_percent, split_seed,
                                             detectron2_image_ids(full))
    elif labeled_percent is None or labeled_percent == 100:
        return full, None
    else:
        labeled, unlabeled = percent_split(full.image_ids, labeled_percent, split_seed)
    return full.subset(labeled), full.subset(unlabeled)
