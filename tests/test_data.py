"""sed.data: validation errors, label mapping, image modes, box handling, flip, samplers, loaders."""
import itertools
import json
import multiprocessing
import os
import re
import signal
import time
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

import sed.data
from sed import synthetic
from sed.data import (CocoDetection, ImageFolderDetection, TrainBatchSampler, collate, make_eval_loader,
                      make_loader, verify_images, worker_batches)
from sed.errors import UserError
from sed.evaluation import coco_metrics

CATS = [{"id": 5, "name": "cat"}, {"id": 2, "name": "dog"}, {"id": 90, "name": "bird"}]


def _write(tmp_path, images, annotations, categories=CATS, modes=None):
    """Hand-written COCO file + PNGs of the sizes in `images` -> (ann_file, image_dir)."""
    image_dir = tmp_path / "images"
    image_dir.mkdir(exist_ok=True)
    for img in images:
        mode = (modes or {}).get(img["id"], "RGB")
        Image.new(mode, (img["width"], img["height"])).save(image_dir / img["file_name"])
    ann_file = tmp_path / "ann.json"
    ann_file.write_text(json.dumps({"images": images, "annotations": annotations,
                                    "categories": categories}))
    return ann_file, image_dir


def _img(i, w=40, h=30):
    return {"id": i, "file_name": f"{i}.png", "width": w, "height": h}


def _ann(i, image_id, cat, bbox, **extra):
    return {"id": i, "image_id": image_id, "category_id": cat, "bbox": bbox, "iscrowd": 0,
            "area": 1.0, **extra}


# ---- validation -------------------------------------------------------------------------------

def test_missing_annotation_file(tmp_path):
    with pytest.raises(UserError, match="nope.json: annotation file not found"):
        CocoDetection(tmp_path / "nope.json", tmp_path)


def test_a_file_without_a_box_lists_unlabeled_images(tmp_path):
    """--unlabeled-ann with an empty annotation list (COCO's unlabeled2017 format): until stop 35 its summary
    called every class "not learnable" and the pseudo-label diagnostics measured recall on 0 objects."""
    ann_file, image_dir = _write(tmp_path, [_img(1), _img(2)], [])
    ds = CocoDetection(ann_file, image_dir)
    assert ds.ground_truth_indices() == [] and ds.summary() == "ann.json: 2 images without annotations (unlabeled only)"
    ann_file, image_dir = _write(tmp_path, [_img(1), _img(2)], [_ann(1, 1, 5, [0, 0, 5, 5])])
    assert CocoDetection(ann_file, image_dir).ground_truth_indices() == [0, 1]   # image 2: no object to find


def test_a_byte_order_mark_is_read(tmp_path):
    """JSON written by Windows tools starts with a UTF-8 BOM; until stop 35 such a file was "not valid JSON"."""
    ann_file, image_dir = _write(tmp_path, [_img(1)], [_ann(1, 1, 5, [0, 0, 5, 5])])
    ann_file.write_bytes(b"\xef\xbb\xbf" + ann_file.read_bytes())
    assert len(CocoDetection(ann_file, image_dir)) == 1


def test_not_coco(tmp_path):
    (tmp_path / "a.json").write_text('{"images": [],\n "annotations": [}')
    with pytest.raises(ValueError, match=r"a.json: not a COCO annotation file \(not valid JSON: Expecting value, "
                       r"line 2 column 18\)$"):   # where, since stop 35
        CocoDetection(tmp_path / "a.json", tmp_path)
    (tmp_path / "b.json").write_text(json.dumps({"annotations": [], "categories": []}))
    with pytest.raises(ValueError, match=r"b.json: not a COCO annotation file \(missing 'images'\)"):
        CocoDetection(tmp_path / "b.json", tmp_path)
    (tmp_path / "image_info.json").write_text(json.dumps({"images": [_img(1)], "categories": []}))   # unlabeled2017's
    with pytest.raises(UserError) as info:
        CocoDetection(tmp_path / "image_info.json", tmp_path)
    assert str(info.value) == (f"{tmp_path / 'image_info.json'}: not a COCO annotation file (missing 'annotations'); "
                               "unlabeled images need no JSON: --unlabeled-images DIR takes their folder")


def test_unknown_category(tmp_path):
    ann_file, image_dir = _write(tmp_path, [_img(1)], [_ann(17, 1, 4, [0, 0, 5, 5])])
    with pytest.raises(ValueError, match="ann.json: annotation 17 has category_id 4, not in"):
        CocoDetection(ann_file, image_dir)


@pytest.mark.parametrize("bbox", [[0, 0, 5], [0, 0, "5", 5], [0, float("nan"), 5, 5], None])
def test_malformed_bbox(tmp_path, bbox):
    ann_file, image_dir = _write(tmp_path, [_img(3)], [_ann(1, 3, 5, bbox)])
    with pytest.raises(ValueError, match=r"ann.json: image 3 has malformed bbox"):
        CocoDetection(ann_file, image_dir)


@pytest.mark.parametrize("key", ["images", "categories"])
def test_no_images_or_no_categories(tmp_path, key):
    ann_file, image_dir = _write(tmp_path, [_img(1)], [])
    ann_file.write_text(json.dumps({**json.loads(ann_file.read_text()), key: []}))
    with pytest.raises(UserError) as info:
        CocoDetection(ann_file, image_dir)
    assert str(info.value) == f"{ann_file}: no {key}"


@pytest.mark.parametrize("images, categories, ann, message", [
    ([_img("a")], CATS, _ann(1, "a", 5, [0, 0, 5, 5]), 'image id "a" is not an integer'),
    ([_img(True)], CATS, _ann(1, 1, 5, [0, 0, 5, 5]), "image id true is not an integer"),
    ([_img(1)], [{"id": "rectangle", "name": "rectangle"}], _ann(1, 1, "rectangle", [0, 0, 5, 5]),
     'category id "rectangle" is not an integer'),
    ([_img(1)], CATS, _ann("a7", 1, 5, [0, 0, 5, 5]), 'annotation id "a7" is not an integer'),
    ([_img(1)], CATS, _ann(4, 1.0, 5, [0, 0, 5, 5]), "annotation 4 has image_id 1.0, not an integer"),
    ([_img(1)], CATS, _ann(4, 1, "5", [0, 0, 5, 5]), 'annotation 4 has category_id "5", not an integer'),
], ids=["image", "image-bool", "category", "annotation", "image_id", "category_id"])
def test_ids_must_be_integers(tmp_path, images, categories, ann, message):
    """COCO ids are integers: COCOeval died on a category id "rectangle" at the end of training."""
    ann_file, image_dir = _write(tmp_path, images, [ann], categories)
    with pytest.raises(UserError) as info:
        CocoDetection(ann_file, image_dir)
    assert str(info.value) == f"{ann_file}: {message} (COCO ids are integers)"


BOX = [0, 0, 5, 5]


@pytest.mark.parametrize("images, categories, anns, message", [
    ([_img(1), _img(2), {**_img(2), "file_name": "2b.png"}], CATS, [_ann(1, 2, 5, BOX)],
     "image id 2 appears more than once in 'images' (the boxes of both would land on one image)"),
    ([_img(1)], CATS + [{"id": 2, "name": "horse"}], [_ann(1, 1, 5, BOX)],
     "category id 2 appears more than once in 'categories' (one label for two names)"),
    ([_img(1)], CATS, [_ann(7, 1, 5, BOX), _ann(7, 1, 2, BOX)],
     "annotation id 7 appears more than once in 'annotations' (COCOeval looks boxes up by id and would "
     "lose one)"),
], ids=["image", "category", "annotation"])
def test_duplicate_ids(tmp_path, images, categories, anns, message):
    ann_file, image_dir = _write(tmp_path, images, anns, categories)
    with pytest.raises(UserError) as info:
        CocoDetection(ann_file, image_dir)
    assert str(info.value) == f"{ann_file}: {message}"


@pytest.mark.parametrize("field, value, message", [
    ("file_name", None, "image 3 has no 'file_name' (a file name)"),
    ("width", None, "image 3 has no 'width' (a positive number)"),
    ("height", "30", "image 3 has 'height' \"30\", not a positive number"),
    ("width", 0, "image 3 has 'width' 0, not a positive number"),
    ("file_name", "", "image 3 has 'file_name' \"\", not a file name"),
    ("name", None, "category 90 has no 'name' (a string)"),
])
def test_required_fields(tmp_path, field, value, message):
    """A KeyError from pycocotools or the targets' code before these checks; None = field removed."""
    image, categories = _img(3), [dict(c) for c in CATS]
    entry = categories[2] if field == "name" else image
    if value is None:
        del entry[field]
    else:
        entry[field] = value
    ann_file, image_dir = _write(tmp_path, [_img(3)], [_ann(1, 3, 5, BOX)], categories)
    ann_file.write_text(json.dumps({**json.loads(ann_file.read_text()), "images": [image]}))
    with pytest.raises(UserError) as info:
        CocoDetection(ann_file, image_dir)
    assert str(info.value) == f"{ann_file}: {message}"


def test_annotations_of_images_not_in_the_file(tmp_path):
    anns = [_ann(1, 1, 5, [0, 0, 5, 5]), _ann(2, 9, 5, [0, 0, 5, 5]), _ann(3, 8, 2, [0, 0, 5, 5])]
    ann_file, image_dir = _write(tmp_path, [_img(1)], anns)
    with pytest.raises(UserError) as info:
        CocoDetection(ann_file, image_dir)
    assert str(info.value) == (f"{ann_file}: 2 annotations have an image_id not in 'images', "
                               "the first 9 (annotation 2)")


def test_verify_images_tells_train_from_val(tmp_path):
    paths = synthetic.generate(tmp_path, num_train=2, num_val=2, seed=0, image_size=32)
    sets = [CocoDetection(paths[f"{split}_ann"], paths[f"{split}_images"]) for split in ("train", "val")]
    assert verify_images(sets, workers=1, progress=False) == 4
    for split in ("train", "val"):
        (paths[f"{split}_images"] / "000000.png").write_bytes(b"")
    with pytest.raises(UserError) as info:
        verify_images(sets, workers=1, progress=False)
    message = str(info.value)
    assert message.startswith(f"2 of the 4 images are unusable (--verify-images), in {tmp_path}: "
                              "train/000000.png: cannot decode (")
    assert ", val/000000.png: cannot decode (" in message and "\n" not in message


def test_exif_orientation_is_applied(tmp_path):
    """A photo stored 40x30 with EXIF orientation 6 (turn 90 degrees clockwise to display) is 30x40
    as displayed, the size its JSON gives (detectron2's convention); its boxes refer to that image."""
    ann_file, image_dir = _write(tmp_path, [{**_img(1, w=30, h=40), "file_name": "1.jpg"}],
                                 [_ann(1, 1, 5, [20, 0, 10, 10])])
    stored = np.zeros((30, 40, 3), np.uint8)
    stored[:10, :10] = 255                                       # white top-left block, as stored
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(stored).save(image_dir / "1.jpg", exif=exif, quality=95)
    ds = CocoDetection(ann_file, image_dir)
    image, target = ds[0]
    assert image.shape == (3, 40, 30) and target["orig_size"] == (40, 30)
    assert image[:, :10, 20:].mean() > 0.9 and image[:, :10, :10].mean() < 0.1   # now top-right
    assert target["boxes"].tolist() == [[20, 0, 30, 10]]
    assert verify_images([ds], workers=1, progress=False) == 1
    assert ImageFolderDetection(image_dir).sizes() == [(30, 40)]
    ann_file.write_text(ann_file.read_text().replace('"width": 30, "height": 40', '"width": 40, "height": 30'))
    with pytest.raises(UserError, match=r"1.jpg: is 30x40 \(as displayed: its EXIF orientation 6 turns it\), "
                       r"the JSON says 40x30"):
        verify_images([CocoDetection(ann_file, image_dir)], workers=1, progress=False)


def test_missing_image_file(tmp_path):
    ann_file, image_dir = _write(tmp_path, [_img(1)], [])
    (image_dir / "1.png").unlink()
    ds = CocoDetection(ann_file, image_dir)
    with pytest.raises(UserError, match=r"1.png: image file not found \(image id 1\)"):
        ds[0]


@pytest.mark.parametrize("content", [b"", b"not an image"])
def test_empty_or_corrupt_image_file(tmp_path, content):
    ann_file, image_dir = _write(tmp_path, [_img(1)], [])
    (image_dir / "1.png").write_bytes(content)
    with pytest.raises(ValueError, match=r"1.png: cannot read the image \(image id 1\)") as info:
        CocoDetection(ann_file, image_dir)[0]
    assert "\n" not in str(info.value)


def test_missing_crowd_and_area_are_filled_in_for_cocoeval(tmp_path):
    """A hand-made file without "iscrowd" and "area" (or with null) works as detectron2 reads it: iscrowd 0,
    area = box w * h, in the annotations that COCOeval reads too."""
    anns = [{"id": 1, "image_id": 1, "category_id": 5, "bbox": [0, 0, 4, 5]},
            {"id": 2, "image_id": 1, "category_id": 2, "bbox": [1, 1, 40, 20], "iscrowd": None, "area": None},
            _ann(3, 1, 2, [1, 1, 3, 3], area=2.5)]
    ann_file, image_dir = _write(tmp_path, [_img(1)], anns)
    ds = CocoDetection(ann_file, image_dir)
    assert [(a["iscrowd"], a["area"]) for a in ds.coco.dataset["annotations"]] == [(0, 20), (0, 800), (0, 2.5)]
    assert ds._targets[1][2].tolist() == [20, 800, 2.5]
    perfect = [{"image_id": 1, "category_id": a["category_id"], "bbox": a["bbox"], "score": 0.9} for a in anns]
    assert coco_metrics(ds.coco, perfect, verbose=False)["AP"] == pytest.approx(100)   # COCOeval reads them


@pytest.mark.parametrize("extra, message", [
    ({"iscrowd": "yes"}, 'annotation 1 has iscrowd "yes", not 0 or 1'),
    ({"iscrowd": 2}, "annotation 1 has iscrowd 2, not 0 or 1"),
    ({"area": "big"}, 'annotation 1 has area "big", not a number >= 0'),
    ({"area": -1}, "annotation 1 has area -1, not a number >= 0"),
])
def test_malformed_crowd_or_area(tmp_path, extra, message):
    ann_file, image_dir = _write(tmp_path, [_img(1)], [_ann(1, 1, 5, [0, 0, 5, 5], **extra)])
    with pytest.raises(UserError, match="ann.json: " + re.escape(message)):
        CocoDetection(ann_file, image_dir)


def test_categories_sharing_a_name_warn(tmp_path):
    ann_file, image_dir = _write(tmp_path, [_img(1)], [], categories=[*CATS, {"id": 7, "name": "dog"}])
    with pytest.warns(UserWarning, match=r"ann.json: several categories are named dog: logs, pictures"):
        CocoDetection(ann_file, image_dir)


def test_sections_must_be_lists_of_objects(tmp_path):
    (tmp_path / "a.json").write_text(json.dumps({"images": [_img(1)], "annotations": {"1": _ann(1, 1, 5, [0, 0, 5, 5])},
                                                 "categories": CATS}))
    with pytest.raises(UserError,
                       match=r"a.json: not a COCO annotation file \('annotations' is not a list of objects\)"):
        CocoDetection(tmp_path / "a.json", tmp_path)


def test_json_that_is_not_utf8(tmp_path):
    text = json.dumps({"images": [], "annotations": [], "categories": [{"id": 1, "name": "X"}]})
    (tmp_path / "a.json").write_bytes(text.encode().replace(b"X", b"\xe9"))   # Latin-1 e-acute
    with pytest.raises(UserError, match=r"a.json: not UTF-8 text, as JSON must be \(byte \d+\); re-save it as UTF-8"):
        CocoDetection(tmp_path / "a.json", tmp_path)


# ---- labels, images, boxes --------------------------------------------------------------------

def test_category_mapping_round_trip(tmp_path):
    ann_file, image_dir = _write(tmp_path, [_img(1)], [_ann(1, 1, 90, [0, 0, 5, 5]),
                                                      _ann(2, 1, 2, [1, 1, 5, 5])])
    ds = CocoDetection(ann_file, image_dir)
    assert ds.num_classes == 3
    assert ds.cat_id_to_label == {2: 1, 5: 2, 90: 3}
    assert ds.class_names == ["dog", "cat", "bird"]
    assert all(ds.label_to_cat_id[ds.cat_id_to_label[c]] == c for c in (2, 5, 90))
    assert ds[0][1]["labels"].tolist() == [3, 1]


def test_image_modes_become_rgb(tmp_path):
    images = [_img(1), _img(2), _img(3), _img(4, 7, 9)]
    ann_file, image_dir = _write(tmp_path, images, [],
                                 modes={1: "L", 2: "RGBA", 3: "P", 4: "RGB"})
    Image.new("L", (40, 30), 255).save(image_dir / "1.png")      # white grayscale image
    ds = CocoDetection(ann_file, image_dir)
    for i, (h, w) in enumerate([(30, 40), (30, 40), (30, 40), (9, 7)]):
        image, target = ds[i]
        assert image.shape == (3, h, w) and image.dtype == torch.float32
        assert target["orig_size"] == (h, w)
    assert torch.all(ds[0][0] == 1.0)


def test_image_over_pils_pixel_guard_is_one_line(tmp_path, monkeypatch):
    ann_file, image_dir = _write(tmp_path, [_img(1)], [])
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 40 * 30 // 2 - 1)   # PIL refuses above twice this
    ds = CocoDetection(ann_file, image_dir)
    for check in (lambda: ds[0], lambda: verify_images([ds], workers=1, progress=False),
                  lambda: ImageFolderDetection(image_dir).sizes()):
        with pytest.raises(UserError, match=r"1.png: .*too large for PIL's guard against decompression bombs "
                           r"\(Image size \(1200 pixels\) exceeds limit .*\); tile the image"):
            check()


def test_16_bit_grayscale_is_scaled_to_8_bits(tmp_path):
    """PIL's convert("RGB") clips 16-bit values at 255 (a white image); load_rgb scales 0..65535 to 0..1."""
    ann_file, image_dir = _write(tmp_path, [_img(1, 2, 1)], [])
    Image.fromarray(np.array([[0, 200 * 257]], dtype=np.uint16)).save(image_dir / "1.png")   # 8-bit 0 and 200
    with Image.open(image_dir / "1.png") as im:
        assert im.mode.startswith("I")   # I;16 (or I in older Pillows): the case this test is about
    image, _ = CocoDetection(ann_file, image_dir)[0]
    assert image[:, 0, 0].tolist() == [0, 0, 0] and image[:, 0, 1].tolist() == pytest.approx([200 / 255] * 3)


@pytest.mark.parametrize("pixels, reason", [
    (np.array([[0.27, 0.68]], dtype=np.float32), r"floating-point pixels \(PIL mode F\)"),
    (np.array([[0, 10_000_000]], dtype=np.int32), r"32-bit pixels \(PIL mode I, values 0..1e\+07, beyond 16 bits\)")])
def test_32_bit_and_float_pixels_are_one_line(tmp_path, pixels, reason):
    """TIFFs of float or 32-bit integer pixels have no range to scale from; until stop 35 convert("RGB") made
    them all black or all white, silently, for training and --verify-images alike."""
    ann_file, image_dir = _write(tmp_path, [_img(1, 2, 1)], [])
    (image_dir / "1.png").unlink()
    Image.fromarray(pixels).save(image_dir / "1.tif")
    coco = json.loads(ann_file.read_text())
    coco["images"][0]["file_name"] = "1.tif"
    ann_file.write_text(json.dumps(coco))
    ds = CocoDetection(ann_file, image_dir)
    for check in (lambda: ds[0], lambda: verify_images([ds], workers=0, progress=False)):
        with pytest.raises(UserError, match=r"1.tif: (cannot read the image \(.*\): )?" + reason
                           + ": save it with 8 or 16 bits per channel"):
            check()


def test_empty_crowd_clip_degenerate(tmp_path):
    images = [_img(1), _img(2)]
    anns = [_ann(1, 2, 5, [-5, 2, 10, 10]),                      # clipped to [0, 2, 5, 12]
            _ann(2, 2, 5, [35, 25, 10, 10]),                     # clipped to [35, 25, 40, 30]
            _ann(3, 2, 2, [1, 1, 3, 3], iscrowd=1),              # crowd: ignored
            _ann(4, 2, 2, [10, 10, 0.5, 4]),                     # degenerate: w < 1
            _ann(5, 2, 2, [39.5, 3, 10, 10])]                    # degenerate after clipping
    ann_file, image_dir = _write(tmp_path, images, anns)
    with pytest.warns(UserWarning, match=r"ann.json: dropped 2 degenerate boxes \(w or h < 1\)") as rec:
        ds = CocoDetection(ann_file, image_dir)
    assert len(rec) == 1
    _, t0 = ds[0]
    assert t0["boxes"].shape == (0, 4) and t0["labels"].shape == (0,) and t0["image_id"] == 1
    _, t1 = ds[1]
    assert t1["boxes"].tolist() == [[0, 2, 5, 12], [35, 25, 40, 30]]
    assert t1["labels"].tolist() == [2, 2] and t1["boxes"].dtype == torch.float32
    assert ds.aspect_ratios() == [40 / 30, 40 / 30]


def test_no_warning_when_nothing_dropped(tmp_path):
    ann_file, image_dir = _write(tmp_path, [_img(1)], [_ann(1, 1, 5, [0, 0, 5, 5])])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        CocoDetection(ann_file, image_dir)


def test_flip(tmp_path):
    ann_file, image_dir = _write(tmp_path, [_img(1)], [_ann(1, 1, 5, [2, 3, 10, 4])])
    pixels = np.zeros((30, 40, 3), np.uint8)
    pixels[0, 0] = 255                                           # top-left pixel white
    Image.fromarray(pixels).save(image_dir / "1.png")
    ds = CocoDetection(ann_file, image_dir)
    image, target = ds[(0, True)]
    assert target["boxes"].tolist() == [[40 - 12, 3, 40 - 2, 7]] and target["flipped"]
    assert image[:, 0, 39].tolist() == [1, 1, 1] and image[:, 0, 0].tolist() == [0, 0, 0]
    image, target = ds[0]
    assert target["boxes"].tolist() == [[2, 3, 12, 7]] and not target["flipped"]
    assert image[:, 0, 0].tolist() == [1, 1, 1]


def test_image_ids_subset_keeps_file_order_and_summary(tmp_path):
    images = [_img(7), _img(3), _img(5)]
    anns = [_ann(1, 3, 5, [0, 0, 5, 5]), _ann(2, 3, 2, [0, 0, 40, 30]), _ann(3, 5, 5, [0, 0, 5, 5])]
    ann_file, image_dir = _write(tmp_path, images, anns)
    ds = CocoDetection(ann_file, image_dir, image_ids=[5, 7])
    assert ds.image_ids == [7, 5] and len(ds) == 2
    assert CocoDetection(ann_file, image_dir).subset([5, 3]).image_ids == [3, 5]
    with pytest.raises(ValueError, match="ann.json: 1 requested image ids not in the file"):
        CocoDetection(ann_file, image_dir, image_ids=[4])
    text = CocoDetection(ann_file, image_dir).summary()
    assert "3 images (1 without boxes), 3 boxes" in text
    assert "boxes per class: cat: 2, dog: 1" in text
    assert text.endswith("\n  no box of bird: not learnable from these images")


def test_synthetic_round_trip(tmp_path):
    paths = synthetic.generate(tmp_path, num_train=5, num_val=2, seed=0, image_size=48)
    ds = CocoDetection(paths["train_ann"], paths["train_images"])
    assert ds.num_classes == 5 and ds.class_names[0] == "rectangle"
    images, targets = collate([ds[0], ds[(1, True)]])
    assert len(images) == 2 and images[0].shape[0] == 3 and targets[1]["flipped"]


# ---- samplers and loaders ---------------------------------------------------------------------

RATIOS = [1.0, 0.8, 1.25, 0.75, 1.0, 1.33, 0.6, 1.0, 2.0, 0.5, 1.0]   # 11 images, both orientations


def _take(sampler, k):
    return list(itertools.islice(iter(sampler), k))


def test_sampler_deterministic_and_resumable():
    a = _take(TrainBatchSampler(RATIOS, 2, seed=3), 30)
    assert a == _take(TrainBatchSampler(RATIOS, 2, seed=3), 30)
    assert a != _take(TrainBatchSampler(RATIOS, 2, seed=4), 30)
    for k in (1, 7, 12):
        assert _take(TrainBatchSampler(RATIOS, 2, seed=3, start_iter=k), 30 - k) == a[k:]


def test_sampler_orientation_groups_and_flips():
    batches = _take(TrainBatchSampler(RATIOS, 3, seed=0), 40)
    for batch in batches:
        assert len(batch) == 3
        assert len({RATIOS[i] >= 1 for i, _ in batch}) == 1
    flips = [f for batch in batches for _, f in batch]
    assert 0.3 < np.mean(flips) < 0.7
    none = _take(TrainBatchSampler(RATIOS, 3, seed=0, flip_prob=0.0), 10)
    assert not any(f for batch in none for _, f in batch)
    assert [i for b in none for i, _ in b] == [i for b in batches[:10] for i, _ in b]


def test_sampler_ranks_disjoint_within_epoch():
    ratios = [1.0] * 10                                        # one group: batches follow the epoch
    shards = [[i for b in _take(TrainBatchSampler(ratios, 1, seed=5, rank=r, world_size=3), 3)
               for i, _ in b] for r in range(3)]               # 10 // 3 = 3 images each
    assert all(len(s) == 3 for s in shards)
    assert len(set(sum(shards, []))) == 9
    with pytest.raises(ValueError, match="rank"):
        TrainBatchSampler(ratios, 1, seed=0, rank=3, world_size=3)


def test_loaders(tmp_path):
    paths = synthetic.generate(tmp_path, num_train=6, num_val=5, seed=0, image_size=32)
    ds = CocoDetection(paths["train_ann"], paths["train_images"])
    sampler = TrainBatchSampler(ds.aspect_ratios(), 2, seed=0)
    images, targets = next(iter(make_loader(ds, sampler, workers=0)))
    first = next(iter(sampler))
    assert [t["image_id"] for t in targets] == [ds.image_ids[i] for i, _ in first]
    assert [t["flipped"] for t in targets] == [f for _, f in first] and len(images) == 2
    val = CocoDetection(paths["val_ann"], paths["val_images"])
    seen = [[t["image_id"] for _, ts in make_eval_loader(val, 2, 0, rank=r, world_size=2)
             for t in ts] for r in range(2)]
    assert seen == [val.image_ids[0::2], val.image_ids[1::2]]


class SlowNumbers(torch.utils.data.Dataset):
    """Item i is i, ready after `seconds` (a batch the main process waits for)."""

    def __init__(self, seconds):
        self.seconds = seconds

    def __len__(self):
        return 100

    def __getitem__(self, i):
        time.sleep(self.seconds)
        return i


def test_a_worker_serves_its_batch_through_a_sigterm_then_exits_normally(monkeypatch):
    """A SIGTERM to the process group (Slurm's scancel; with torchrun a second one follows, to each rank's
    group) reaches the workers too: the worker still delivers the batch asked for, and ends with status 0
    after STOP_GRACE_S (a worker killed by a signal fails the main process wherever it is)."""
    monkeypatch.setattr(sed.data, "STOP_GRACE_S", 3)   # read by the forked worker
    loader = torch.utils.data.DataLoader(SlowNumbers(0.5), batch_size=1, num_workers=1, prefetch_factor=1,
                                         worker_init_fn=sed.data._worker_signals)
    with worker_batches(loader) as batches:
        assert next(batches).tolist() == [0]   # the worker is up; item 1 is being loaded
        worker = multiprocessing.active_children()[0]
        for _ in range(2):
            os.kill(worker.pid, signal.SIGTERM)
            time.sleep(0.1)
        assert next(batches).tolist() == [1]
        worker.join(timeout=10)
        assert worker.exitcode == 0


def test_worker_batches_ends_the_workers_on_an_error():
    """Without it an error's traceback keeps the iterator, and Python's exit waits STOP_GRACE_S on its
    workers (their SIGTERM grace)."""
    loader = torch.utils.data.DataLoader(SlowNumbers(0), batch_size=1, num_workers=2,
                                         worker_init_fn=sed.data._worker_signals)
    with pytest.raises(ZeroDivisionError):
        with worker_batches(loader) as batches:
            next(batches)
            workers = multiprocessing.active_children()
            assert len(workers) == 2
            1 / 0
    assert not any(w.is_alive() for w in workers)
