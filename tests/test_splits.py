"""sed.splits: percent splits, Unbiased Teacher split files, load_split."""
import json

import numpy as np
import pytest

from sed import synthetic
from sed.splits import load_split, percent_split, read_split_file

IDS = [9, 4, 17, 1, 30, 2, 8, 11, 5, 21]        # file order, not sorted


def test_percent_split_exact():
    labeled, unlabeled = percent_split(IDS, 30, seed=1)
    assert len(labeled) == 3 and len(unlabeled) == 7
    assert set(labeled).isdisjoint(unlabeled) and set(labeled) | set(unlabeled) == set(IDS)
    assert labeled == [i for i in IDS if i in labeled]            # file order kept
    assert unlabeled == [i for i in IDS if i not in labeled]
    assert percent_split(IDS, 30, seed=1) == (labeled, unlabeled)
    assert percent_split(list(range(100)), 10, 2)[0] != percent_split(list(range(100)), 10, 3)[0]
    assert len(percent_split(IDS, 1, seed=0)[0]) == 1              # at least one labeled image
    assert percent_split(IDS, 100, seed=0) == (IDS, [])


@pytest.mark.parametrize("percent", [0, -5, 100.5])
def test_percent_split_invalid(percent):
    with pytest.raises(ValueError, match=r"labeled percent must be in \(0, 100\]"):
        percent_split(IDS, percent, seed=0)


@pytest.mark.parametrize("key", ["10.0", "10"])
def test_read_split_file(tmp_path, key):
    path = tmp_path / "COCO_supervision.txt"
    path.write_text(json.dumps({key: {"0": [4, 0], "1": [2]}, "5.0": {"1": [1]}}))
    assert read_split_file(path, 10, 0, IDS) == ([9, 30], [i for i in IDS if i not in (9, 30)])
    assert read_split_file(path, 10.0, "1", IDS)[0] == [17]
    with pytest.raises(ValueError, match=r"no percent 2 in split file \(--labeled-percent, default 100\), "
                                         r"available: \['" + key):
        read_split_file(path, 2, 0, IDS)
    path.with_suffix(".json").write_text('{"10": {"0": [4, 0]')
    with pytest.raises(ValueError, match=r"split file is not valid JSON \(Expecting ',' delimiter, line 1 "
                                         r"column 20\)$"):   # where, since stop 35
        read_split_file(path.with_suffix(".json"), 10, 0, IDS)
    with pytest.raises(ValueError, match=r"no seed 7 for percent 5 in split file, available: \['1'\]"):
        read_split_file(path, 5, 7, IDS)
    with pytest.raises(ValueError, match=r"indices must be distinct ints in \[0, 3\)"):
        read_split_file(path, 10, 0, IDS[:3])
    path.write_text(json.dumps({"10": {"0": [], "1": 4}}))   # each was a later error about --train-ann
    for seed, got in ((0, r"\[\]"), (1, "4")):
        with pytest.raises(ValueError, match=f"percent 10 seed {seed}: expected a non-empty list of the labeled "
                                             f"images' indices, got {got}$"):
            read_split_file(path, 10, seed, IDS)


def test_load_split_cases(tmp_path):
    paths = synthetic.generate(tmp_path, num_train=20, num_val=1, seed=0, image_size=32)
    ann, images = paths["train_ann"], paths["train_images"]
    full, none = load_split(ann, images)
    assert none is None and len(full) == 20
    assert load_split(ann, images, labeled_percent=100)[1] is None
    labeled, unlabeled = load_split(ann, images, labeled_percent=25, split_seed=2)
    assert (labeled.image_ids, unlabeled.image_ids) == percent_split(full.image_ids, 25, 2)
    assert len(labeled) == 5 and labeled.num_classes == 5
    split_file = tmp_path / "split.txt"
    split_file.write_text(json.dumps({"10.0": {"1": [0, 3]}}))
    labeled, unlabeled = load_split(ann, images, labeled_percent=10, split_seed=1,
                                    split_file=split_file)
    annotated = sorted(i for i in full.image_ids if full.coco.imgToAnns[i])
    assert labeled.image_ids == [annotated[0], annotated[3]]
    assert len(labeled) + len(unlabeled) == len(annotated)
    lab, unl = load_split(None, images, labeled_ann=ann, unlabeled_ann=ann)
    assert lab.image_ids == unl.image_ids == full.image_ids


def test_ready_made_parts_with_other_categories_warn(tmp_path):
    """The unlabeled file's boxes only measure the pseudo-labels: with other categories that means nothing."""
    paths = synthetic.generate(tmp_path, num_train=6, num_val=1, seed=0, image_size=32)
    coco = json.loads(paths["train_ann"].read_text())
    coco["categories"] = [{**c, "name": c["name"].upper()} for c in coco["categories"]]
    other = tmp_path / "other.json"
    other.write_text(json.dumps(coco))
    with pytest.warns(UserWarning, match=r"other.json: its categories differ from .*train.json's: the pseudo-label"):
        load_split(None, paths["train_images"], labeled_ann=paths["train_ann"], unlabeled_ann=other)


@pytest.mark.parametrize("n, percent, expected", [(118287, 10, 11828), (118287, 1, 1182), (15, 10, 1),
                                                  (100, 29, 28)])
def test_percent_split_truncates_as_soft_teacher(n, percent, expected):
    """Soft Teacher's semi_coco.py: int(percent / 100. * n), where round() would keep one image more
    (11828.7, 1182.87, 1.5; 0.29 * 100 = 28.999999999999996 in floating point)."""
    assert round(n * percent / 100) == expected + 1
    labeled, unlabeled = percent_split(range(n), percent, seed=1)
    assert len(labeled) == expected and len(unlabeled) == n - expected
    chosen = np.random.RandomState(1).choice(n, size=expected, replace=False)   # semi_coco.py's draw
    assert labeled == sorted(chosen.tolist())
