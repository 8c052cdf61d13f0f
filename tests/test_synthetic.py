"""sed.synthetic: deterministic, valid COCO, imbalanced classes, wide range of object sizes."""
import json
from collections import Counter

import numpy as np
import pytest
from PIL import Image
from pycocotools.coco import COCO

from sed import synthetic


def _files(paths):
    """{relative name: bytes} of everything generate() wrote."""
    root = paths["train_ann"].parent.parent
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_same_bytes_other_seed_differs(tmp_path):
    a = _files(synthetic.generate(tmp_path / "a", num_train=6, num_val=3, seed=3, image_size=64))
    b = _files(synthetic.generate(tmp_path / "b", num_train=6, num_val=3, seed=3, image_size=64))
    c = _files(synthetic.generate(tmp_path / "c", num_train=6, num_val=3, seed=4, image_size=64))
    assert len(a) == 6 + 3 + 2 and a == b
    assert a.keys() == c.keys()
    assert a["annotations/train.json"] != c["annotations/train.json"]
    assert a["train/000000.png"] != c["train/000000.png"]
    assert a["train/000000.png"] != a["val/000000.png"]      # train and val use different streams


def test_valid_coco_imbalanced_sizes_and_boxes_inside(tmp_path):
    paths = synthetic.generate(tmp_path, num_train=150, num_val=10, seed=0, image_size=128)
    coco = COCO(str(paths["train_ann"]))
    cat_ids = sorted(coco.getCatIds())
    assert cat_ids == [1, 3, 7, 8, 12]
    counts = Counter(a["category_id"] for a in coco.dataset["annotations"])
    assert counts[1] > counts[3] > counts[7] and counts[1] > 3 * counts[12] > 0
    sides = np.array([np.sqrt(a["bbox"][2] * a["bbox"][3]) for a in coco.dataset["annotations"]])
    assert sides.min() <= 8 and sides.max() >= 48        # few pixels .. about half the image
    heights = {img["height"] for img in coco.dataset["images"]}
    assert heights == {96, 128, 160}                       # non-square images for grouping
    annotated = {a["image_id"] for a in coco.dataset["annotations"]}
    assert any(img["id"] not in annotated for img in coco.dataset["images"])   # background-only
    for img in coco.dataset["images"]:
        with Image.open(paths["train_images"] / img["file_name"]) as im:
            assert im.size == (img["width"], img["height"]) and im.mode == "RGB"
        for a in coco.imgToAnns[img["id"]]:
            x, y, w, h = a["bbox"]
            assert a["iscrowd"] == 0 and w >= 1 and h >= 1 and 0 < a["area"] <= w * h
            assert x >= 0 and y >= 0 and x + w <= img["width"] and y + h <= img["height"]


def test_cli_writes_layout(tmp_path):
    synthetic.main([str(tmp_path), "--num-train", "2", "--num-val", "1", "--seed", "1",
                    "--image-size", "32", "--height-ratios", "1"])
    train = json.loads((tmp_path / "annotations" / "train.json").read_text())
    assert [i["file_name"] for i in train["images"]] == ["000000.png", "000001.png"]
    assert all(i["width"] == i["height"] == 32 for i in train["images"])
    assert (tmp_path / "val" / "000000.png").exists()


@pytest.mark.parametrize("flags, message", [
    (["--height-ratios", "0.001"], "--height-ratios: image heights must be 16 px to 4x the width, got [0.001]"),
    (["--height-ratios", "1e9"], "--height-ratios: image heights must be 16 px to 4x the width, got [1000000000.0]"),
    (["--seed", "-1"], "--seed: must be >= 0 (numpy's generators), got -1"),
])
def test_cli_checks_are_one_line(tmp_path, capsys, flags, message):
    with pytest.raises(SystemExit) as stop:
        synthetic.main([str(tmp_path / "out"), "--num-train", "2", "--num-val", "1", *flags])
    assert stop.value.code != 0 and capsys.readouterr().err == f"error: {message}\n"
    assert not (tmp_path / "out").exists()


def test_every_family_shape_fills_its_box_to_the_borders():
    """The box of an annotation is the shape's extent: each mask touches all four borders."""
    for family in synthetic.FAMILIES.values():
        for _, name, _ in family.categories:
            mask = synthetic._draw_shape(name, 21, 14)
            assert mask.getbbox() == (0, 0, 21, 14), name
            assert 0 < np.count_nonzero(np.asarray(mask)) < 21 * 14 or name == "rectangle", name


def test_polygons_family_classes(tmp_path):
    paths = synthetic.generate(tmp_path, num_train=20, num_val=2, seed=0, image_size=64, family="polygons")
    coco = COCO(str(paths["train_ann"]))
    assert sorted(coco.getCatIds()) == [4, 6, 10]
    assert {a["category_id"] for a in coco.dataset["annotations"]} == {4, 6, 10}


@pytest.mark.parametrize("family, ids, background", [("glyphs", [11, 13, 14, 15], synthetic._stripes_background),
                                                    ("signs", [22, 23, 24], synthetic._plaid_background),
                                                    ("icons", [28, 29, 30], synthetic._ripples_background)])
def test_blended_families_classes_and_background(tmp_path, family, ids, background):
    paths = synthetic.generate(tmp_path, num_train=20, num_val=2, seed=0, image_size=64, family=family)
    coco = COCO(str(paths["train_ann"]))
    assert sorted(coco.getCatIds()) == ids
    assert {a["category_id"] for a in coco.dataset["annotations"]} == set(ids)
    img, (c0, c1) = background(np.random.default_rng(0), 64, 48)
    pixels = np.asarray(img, dtype=float).reshape(-1, 3)   # every pixel lies between the two colours
    assert (pixels >= np.minimum(c0, c1).astype(int) - 1).all() and (pixels <= np.maximum(c0, c1) + 1).all()


@pytest.mark.parametrize("family, ids, background", [("blocks", [16, 17, 18], synthetic._checker_background),
                                                    ("marks", [19, 20, 21], synthetic._dots_background),
                                                    ("badges", [25, 26, 27], synthetic._grid_background),
                                                    ("tiles", [31, 32, 33], synthetic._bricks_background),
                                                    ("emblems", [37, 38, 39], synthetic._speckle_background),
                                                    ("crests", [40, 41, 42], synthetic._zigzag_background)])
def test_two_colour_families_classes_and_background(tmp_path, family, ids, background):
    paths = synthetic.generate(tmp_path, num_train=20, num_val=2, seed=0, image_size=64, family=family)
    coco = COCO(str(paths["train_ann"]))
    assert sorted(coco.getCatIds()) == ids
    assert {a["category_id"] for a in coco.dataset["annotations"]} == set(ids)
    img, (c0, c1) = background(np.random.default_rng(0), 64, 48)
    colours = np.unique(np.asarray(img).reshape(-1, 3), axis=0)   # exactly the two colours (cells, or dots and ground)
    assert len(colours) == 2 and {tuple(c) for c in colours} == {tuple(c0.astype(np.uint8)), tuple(c1.astype(np.uint8))}


def test_stencils_family_classes_and_three_colour_mosaic(tmp_path):
    paths = synthetic.generate(tmp_path, num_train=20, num_val=2, seed=0, image_size=64, family="stencils")
    coco = COCO(str(paths["train_ann"]))
    assert sorted(coco.getCatIds()) == [34, 35, 36]
    assert {a["category_id"] for a in coco.dataset["annotations"]} == {34, 35, 36}
    img, colours = synthetic._mosaic_background(np.random.default_rng(0), 64, 48)
    found = {tuple(c) for c in np.unique(np.asarray(img).reshape(-1, 3), axis=0)}   # each cell one of the three
    assert found == {tuple(c.astype(np.uint8)) for c in colours} and len(colours) == 3


def test_specks_cover_20_to_40_percent():
    for seed in range(5):
        img, (c0, c1) = synthetic._speckle_background(np.random.default_rng(seed), 128, 96)
        is_speck = (np.asarray(img).reshape(-1, 3) == c1.astype(np.uint8)).all(axis=1)
        assert 0.15 < is_speck.mean() < 0.45   # 20-40 % of the speck cells, the last row and column cut


def test_dots_are_the_minority_colour():
    img, (c0, c1) = synthetic._dots_background(np.random.default_rng(0), 64, 48)
    is_dot = (np.asarray(img).reshape(-1, 3) == c1.astype(np.uint8)).all(axis=1)   # dot diameter: half the spacing
    assert 0 < is_dot.mean() < 0.5
