"""--unlabeled-images DIR: a folder of photos (no JSON) as SED's unlabeled pool, alone or with
--unlabeled-ann; the pseudo-label diagnostics skip its images (they have no ground truth)."""
import importlib.util
import json
import warnings
from pathlib import Path

import pytest
import torch
from PIL import Image

from sed.data import CocoDetection, ConcatDetection, ImageFolderDetection, load_rgb, warn_shared_images
from sed.errors import UserError
from sed.synthetic import generate

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def data(tiny_coco):
    return tiny_coco


@pytest.fixture(scope="module")
def photos(data, tmp_path_factory):
    """The val PNGs as a nested folder of jpg / JPEG / webp / bmp / png, plus files to ignore."""
    folder = tmp_path_factory.mktemp("photos")
    sources = sorted(Path(data["val_images"]).glob("*.png"))
    (folder / "trip" / "day2").mkdir(parents=True)
    targets = [folder / "a.jpg", folder / "trip" / "B.JPEG", folder / "trip" / "day2" / "c.webp",
               folder / "d.bmp", folder / "trip" / "e.png"]
    for source, target in zip(sources * 2, targets):
        with Image.open(source) as im:
            im.convert("RGB").save(target)
    (folder / "notes.txt").write_text("not an image")
    (folder / ".hidden.jpg").write_bytes(b"")
    return folder


def test_folder_lists_images_recursively_with_the_training_interface(photos):
    ds = ImageFolderDetection(photos)
    assert [str(p.relative_to(photos)) for p in ds.paths] == [
        "a.jpg", "d.bmp", "trip/B.JPEG", "trip/day2/c.webp", "trip/e.png"]
    image, target = ds[(2, False)]
    flipped, flipped_target = ds[(2, True)]
    assert torch.equal(flipped, image.flip(-1)) and flipped_target["flipped"]
    assert torch.equal(image, load_rgb(photos / "trip" / "B.JPEG"))
    assert target["boxes"].shape == (0, 4) and target["labels"].shape == (0,)
    assert target["file_name"] == "trip/B.JPEG" and target["orig_size"] == tuple(image.shape[-2:])
    sizes = [Image.open(p).size for p in ds.paths]
    assert ds.aspect_ratios() == [w / h for w, h in sizes] and ds.ground_truth_indices() == []
    assert ds.summary() == f"{photos}: 5 images without annotations (unlabeled only)"


def test_concatenation_with_an_annotated_pool(data, photos):
    coco = CocoDetection(data["train_ann"], data["train_images"])
    folder = ImageFolderDetection(photos)
    both = ConcatDetection([coco, folder])
    assert len(both) == 13 and both.ground_truth_indices() == list(range(8))
    assert both.aspect_ratios() == coco.aspect_ratios() + folder.aspect_ratios()
    assert torch.equal(both[(9, True)][0], folder[(1, True)][0])
    assert torch.equal(both[(7, False)][1]["boxes"], coco[(7, False)][1]["boxes"])


def test_images_in_both_parts_warn(data, photos):
    coco = CocoDetection(data["train_ann"], data["train_images"])
    with pytest.warns(UserWarning, match=r"^8 labeled images are among the unlabeled ones too \(e.g. "):
        warn_shared_images(coco, ImageFolderDetection(data["train_images"]))   # --unlabeled-images: the same folder
    folder = ImageFolderDetection(photos)
    with pytest.warns(UserWarning, match=r"^5 unlabeled images are listed more than once \(e.g. "):
        warn_shared_images(coco, ConcatDetection([folder, folder]))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        warn_shared_images(coco, folder)   # disjoint: no warning


def test_empty_or_missing_folder_is_a_user_error(tmp_path):
    (tmp_path / "readme.txt").write_text("no images")
    with pytest.raises(UserError, match=f"{tmp_path}: no jpg/jpeg/png/bmp/webp images in the folder"):
        ImageFolderDetection(tmp_path)
    with pytest.raises(UserError, match="nope: directory not found"):
        ImageFolderDetection(tmp_path / "nope")


def _train():
    spec = importlib.util.spec_from_file_location("train_script", ROOT / "train.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _argv(data, out, *extra):
    return ["--train-ann", str(data["train_ann"]), "--train-images", str(data["train_images"]),
            "--val-ann", str(data["val_ann"]), "--val-images", str(data["val_images"]),
            "--backbone", "resnet18", "--backbone-weights", "none", "--min-size", "48", "--max-size", "64",
            "--max-iter", "2", "--batch-size", "2", "--lr", "0.01", "--warmup-iters", "1", "--lr-steps", "9",
            "--log-every", "1", "--checkpoint-every", "2", "--workers", "0", "--device", "cpu",
            "--method", "sed", "--burn-in-iters", "1", "--unlabeled-batch-size", "2", "--teacher-proposals", "32",
            "--rpn-proposals", "64", "32", "--roi-batch-size", "32", "--out", str(out), *extra]


@pytest.mark.parametrize("with_ann", [False, True])
def test_sed_trains_and_evaluates_with_a_folder_of_photos(data, photos, tmp_path, capsys, with_ann):
    """Labeled COCO JSON (all of it) + a folder of photos -> SED steps (the default's hard labels and
    scale link), teacher and student evaluated; with --unlabeled-ann too, the diagnostics measure only the
    annotated images."""
    extra = ["--unlabeled-images", str(photos), "--diagnostics-images", "8"]
    if with_ann:  # an annotated unlabeled part (train.json again as a stand-in, images in train/)
        extra += ["--labeled-ann", str(data["train_ann"]), "--unlabeled-ann", str(data["train_ann"])]
    argv = _argv(data, tmp_path, *extra)
    if with_ann:  # the evaluation is covered by the folder-only run
        del argv[argv.index("--val-ann"):argv.index("--val-images") + 2]
    _train().main(argv)
    out = capsys.readouterr().out
    log = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert {"loss_hard_classifier", "loss_scale_roi_cls"} <= log[1].keys()
    assert all(torch.isfinite(torch.tensor(v)) for k, v in log[1].items() if k.startswith("loss"))
    if with_ann:
        assert ("pseudo-label diagnostics: 5 unlabeled images have no ground truth (a folder, or a file without a box) "
                "and are skipped; measured on 8") in out
        assert log[-1]["pl_num_images"] == 8
    else:
        metrics = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
        assert [m["model"] for m in metrics] == ["teacher", "student"]
        assert "measured on 0 (off: no unlabeled image has annotations)" in out
        assert not any("pl_num_images" in r for r in log)
