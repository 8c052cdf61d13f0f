"""eval.py end to end on a tiny checkpoint: --visualize on the validation set, --images FOLDER."""
import dataclasses
import importlib.util
import json
import math
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import sed
from sed.checkpoint import save_checkpoint
from sed.config import TrainConfig
from sed.evaluation import METRIC_NAMES
from sed.synthetic import generate
from sed.visualize import MIN_PICTURE_SIDE

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("eval_script", ROOT / "eval.py")
eval_script = importlib.util.module_from_spec(spec)
spec.loader.exec_module(eval_script)

CLASS_NAMES = ["rectangle", "ellipse", "triangle", "cross", "diamond"]  # sed.synthetic, ids 1 3 7 8 12
LABEL_TO_CAT_ID = {1: 1, 2: 3, 3: 7, 4: 8, 5: 12}


@pytest.fixture(scope="module")
def setup(module_tmp):
    """Synthetic data and a random-weight checkpoint whose class-1 logit is raised by 5, so that
    detections with scores above 0.5 exist."""
    tmp = module_tmp
    data = generate(tmp / "shapes", num_train=4, num_val=3, seed=0, image_size=64)
    torch.manual_seed(0)
    model = sed.build_model(5, backbone="resnet18", backbone_weights=None, min_size=64, max_size=64)
    with torch.no_grad():
        model.roi_heads.predictor.cls_score.bias[1] += 5.0
    config = dataclasses.asdict(TrainConfig(num_classes=5, backbone="resnet18", backbone_weights="none",
                                            min_size=(64,), max_size=64))
    ckpt = tmp / "last.pt"
    save_checkpoint(ckpt, {"model": model.state_dict(), "iteration": 0, "config": config,
                           "class_names": CLASS_NAMES, "label_to_cat_id": LABEL_TO_CAT_ID})
    return data, ckpt


def run(ckpt, *args):
    eval_script.main(["--ckpt", str(ckpt), "--device", "cpu", "--workers", "0", "--batch-size", "2", *args])


def test_visualize_validation_set(setup, tmp_path):
    data, ckpt = setup
    run(ckpt, "--val-ann", str(data["val_ann"]), "--val-images", str(data["val_images"]),
        "--json", str(tmp_path / "m.json"), "--visualize", str(tmp_path / "pics"), "--max-images", "2")
    assert set(json.loads((tmp_path / "m.json").read_text())) == set(METRIC_NAMES)
    coco = json.loads(Path(data["val_ann"]).read_text())
    pictures = sorted((tmp_path / "pics").iterdir())
    assert [p.name for p in pictures] == [f"{img['id']}.png" for img in coco["images"][:2]]
    for picture, info in zip(pictures, coco["images"]):
        f = enlargement(info["width"], info["height"])  # small images are drawn enlarged
        with Image.open(picture) as im:
            assert im.size == (f * info["width"], f * info["height"]) and im.mode == "RGB"


@pytest.fixture
def folder(setup, tmp_path):
    """The validation PNGs, one converted to a greyscale JPEG and one to a WebP, a copy in a subfolder, a
    hidden copy (skipped, like an editor's or macOS's "._" file) and a file that is not an image."""
    data, _ = setup
    folder = tmp_path / "photos"
    shutil.copytree(data["val_images"], folder)
    first = sorted(folder.glob("*.png"))[0]
    with Image.open(first) as im:
        im.convert("L").save(folder / "grey.jpg")
        im.save(folder / "lossless.webp", lossless=True)
        im.save(folder / ".hidden.png")
        (folder / "street").mkdir()
        im.save(folder / "street" / "inside.png")
    (folder / "notes.txt").write_text("not an image")
    return folder


def test_images_folder(setup, folder, tmp_path):
    _, ckpt = setup
    run(ckpt, "--images", str(folder), "--dets", str(tmp_path / "dets.json"),
        "--visualize", str(tmp_path / "pics"))
    files = [str(p.relative_to(folder)) for p in sorted(folder.rglob("*"))
             if p.is_file() and p.suffix != ".txt" and not p.name.startswith(".")]
    assert "lossless.webp" in files and "street/inside.png" in files
    dets = json.loads((tmp_path / "dets.json").read_text())
    assert isinstance(dets, list) and len(dets) > 0
    for d in dets:
        assert set(d) == {"image_id", "category_id", "bbox", "score", "file_name"}
        assert d["category_id"] in LABEL_TO_CAT_ID.values() and 0 <= d["score"] <= 1
        assert len(d["bbox"]) == 4 and all(isinstance(v, (int, float)) for v in d["bbox"])
        assert d["file_name"] == files[d["image_id"]]
    pictures = tmp_path / "pics"
    assert sorted(str(p.relative_to(pictures)) for p in pictures.rglob("*.png")) == sorted(f"{f}.png" for f in files)
    with Image.open(tmp_path / "pics" / "grey.jpg.png") as im:
        assert im.mode == "RGB"
    assert any(d["score"] >= 0.5 for d in dets)  # so the pictures have red boxes
    with Image.open(folder / files[0]) as a, Image.open(tmp_path / "pics" / f"{files[0]}.png") as b:
        assert (enlarged(a) != np.asarray(b)).any()


def test_default_dets_path(setup, folder):
    _, ckpt = setup
    run(ckpt, "--images", str(folder) + "/")
    assert json.loads((folder.parent / "photos_detections.json").read_text())


def enlargement(width, height):
    """The whole factor by which sed.visualize draws an image of this size."""
    return max(1, math.ceil(MIN_PICTURE_SIDE / min(width, height)))


def enlarged(image):
    """A PIL image as RGB pixels [f*H, f*W, 3], each pixel repeated f x f times."""
    f = enlargement(*image.size)
    return np.asarray(image.convert("RGB")).repeat(f, axis=0).repeat(f, axis=1)


def test_score_thr_one_draws_nothing(setup, folder, tmp_path):
    _, ckpt = setup
    run(ckpt, "--images", str(folder), "--dets", str(tmp_path / "dets.json"),
        "--visualize", str(tmp_path / "pics"), "--score-thr", "1.0", "--max-images", "1")
    assert json.loads((tmp_path / "dets.json").read_text())  # there are detections, none drawn
    source = sorted(p for p in folder.iterdir() if p.suffix != ".txt" and not p.name.startswith("."))[0]
    with Image.open(source) as a, Image.open(tmp_path / "pics" / f"{source.name}.png") as b:
        np.testing.assert_array_equal(enlarged(a), np.asarray(b))
    assert len(list((tmp_path / "pics").iterdir())) == 1


@pytest.mark.parametrize("args, message", [
    (["--images", "{empty}"], "no jpg/jpeg/png/bmp/webp files in"),
    (["--images", "{empty}", "--val-ann", "x.json"], "not allowed with argument"),
    ([], "one of the arguments --val-ann --images is required"),
    (["--val-ann", "{ann}"], "--val-images: required with --val-ann"),
    (["--val-ann", "{ann}", "--val-images", "{empty}/nope"], "--val-images: directory not found"),
    (["--images", "{photos}", "--score-thr", "1.5", "--visualize", "{empty}/pics"],
     "--score-thr must be in [0, 1] (a score), got 1.5"),
    (["--images", "{photos}", "--score-thr", "0.3", "--max-images", "4"],
     "--score-thr and --max-images need --visualize (they choose what its pictures show)"),
    (["--images", "{photos}", "--json", "m.json"], "need --val-ann"),
    (["--images", "{photos}", "--font", "DejaVuSans.ttf"], "--font need --visualize"),
    (["--images", "{photos}", "--visualize", "{empty}/pics", "--font", "{empty}/readme.txt"],
     "--font: Pillow cannot load {empty}/readme.txt as a TrueType/OpenType font"),
    (["--images", "{photos}", "--batch-size", "0"], "--batch-size must be >= 1 and --workers >= 0, got 0 and 0"),
    (["--images", "{photos}", "--dets", "{empty}"], "--dets: {empty} is a directory, not a file"),
    (["--images", "{photos}", "--device", "gpu"], "--device: 'gpu' is not a device (cpu, cuda or cuda:N)"),
])
def test_bad_arguments(setup, tmp_path, capsys, args, message):
    data, ckpt = setup
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("no images here")
    paths = {"empty": tmp_path / "empty", "ann": data["val_ann"], "photos": data["val_images"]}
    with pytest.raises(SystemExit):
        run(ckpt, *[a.format(**paths) for a in args])
    assert message.format(**paths) in capsys.readouterr().err


def test_a_run_folder_as_ckpt_names_its_last_pt(setup, capsys):
    """train.py --resume says the same of a folder (until stop 35 eval.py said "file not found")."""
    data, ckpt = setup
    with pytest.raises(SystemExit):
        run(ckpt.parent, "--images", str(data["val_images"]))
    assert f"--ckpt: {ckpt.parent} is a folder; --ckpt {ckpt} evaluates the run it holds" in capsys.readouterr().err


def test_detections_of_the_current_folder_go_beside_it(setup, monkeypatch):
    """--images . writes FOLDER_detections.json next to the folder, not a hidden ._detections.json in it."""
    data, ckpt = setup
    monkeypatch.chdir(data["val_images"])
    args = eval_script.parse_args(["--ckpt", str(ckpt), "--images", "."])
    assert args.dets == str(data["val_images"].resolve()) + "_detections.json"


def test_unreadable_images_in_a_folder_are_skipped_with_one_line_each(setup, folder, tmp_path, capsys):
    """One bad photo no longer stops a folder's detections (until stop 31: one error line, no detections)."""
    _, ckpt = setup
    (folder / "broken.png").write_bytes(b"")
    good = sorted(folder.glob("0*.png"))[0]
    (folder / "street" / "truncated.png").write_bytes(good.read_bytes()[:200])
    run(ckpt, "--images", str(folder), "--dets", str(tmp_path / "dets.json"), "--visualize", str(tmp_path / "pics"))
    out, err = capsys.readouterr()
    warned = [line for line in err.splitlines() if line.startswith("warning: ")]
    assert warned == [f"warning: {folder / 'broken.png'}: cannot read the image (image): cannot identify image "
                      f"file '{folder / 'broken.png'}': skipped",
                      f"warning: {folder / 'street' / 'truncated.png'}: cannot read the image (image): image file "
                      "is truncated: skipped"]   # each on a line of its own, not after the progress bar's
    named = {d["file_name"] for d in json.loads((tmp_path / "dets.json").read_text())}
    assert good.name in named and not named & {"broken.png", "street/truncated.png"}
    read = sum(map(sed.data.is_image_file, folder.rglob("*"))) - 2   # until stop 35 the count included the two
    assert re.search(rf"^{read} images, \d+ detections -> .*dets.json \(2 unreadable, skipped\)$", out, re.M)
    pictures = {str(p.relative_to(tmp_path / "pics")) for p in (tmp_path / "pics").rglob("*.png")}
    assert f"{good.name}.png" in pictures and not pictures & {"broken.png.png", "street/truncated.png.png"}


def test_float16_on_the_cpu_is_warned_of(setup, tmp_path, capsys):
    """As train.py warns (eval.py did not until stop 31): float16 is emulated on the CPU, bfloat16 is not."""
    data, ckpt = setup
    run(ckpt, "--val-ann", str(data["val_ann"]), "--val-images", str(data["val_images"]), "--dtype", "float16")
    assert capsys.readouterr().err.splitlines()[0] == (
        "warning: --dtype float16 on the CPU is emulated and many times slower than float32; bfloat16 is the "
        "CPU's half precision")
    run(ckpt, "--val-ann", str(data["val_ann"]), "--val-images", str(data["val_images"]), "--dtype", "bfloat16")
    assert "warning" not in capsys.readouterr().err
