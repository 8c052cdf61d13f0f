"""Drawing detections / ground truth and writing PNG files."""
import pytest
import torch
from PIL import Image
from torch import nn

from sed.visualize import (DET_COLOR, GT_COLOR, draw_detections, missing_glyphs, resolve_font, save_png,
                           save_visualizations, visualize_dataset)

IMAGE = torch.zeros(3, 64, 96)  # black, H = 64, W = 96
DETS = {"boxes": torch.tensor([[10., 10., 50., 50.], [60., 5., 90., 30.]]),
        "scores": torch.tensor([0.9, 0.3]), "labels": torch.tensor([1, 2])}
GT = {"boxes": torch.tensor([[20., 40., 80., 60.]]), "labels": torch.tensor([2])}
NAMES = ["cat", "dog"]


def pixel(image, y, x):
    return tuple(image[:, y, x].tolist())


def test_box_edges_have_their_colours_and_score_thr_filters():
    out = draw_detections(IMAGE, DETS, NAMES, score_thr=0.5, gt=GT)
    assert out.dtype == torch.uint8 and out.shape == (3, 64, 96)
    assert pixel(out, 50, 30) == DET_COLOR   # bottom edge of the 0.9 detection
    assert pixel(out, 30, 10) == DET_COLOR   # its left edge
    assert pixel(out, 60, 70) == GT_COLOR    # bottom edge of the ground truth
    assert pixel(out, 30, 90) == (0, 0, 0)   # right edge of the 0.3 detection: filtered out
    out = draw_detections(IMAGE, DETS, NAMES, score_thr=0.2)
    assert pixel(out, 30, 90) == DET_COLOR
    assert pixel(out, 60, 70) == (0, 0, 0)   # no ground truth given


def test_small_images_are_enlarged_by_a_whole_factor():
    out = draw_detections(IMAGE, DETS, NAMES, score_thr=0.5, gt=GT, min_side=256)  # 64 -> 256: factor 4
    assert out.shape == (3, 256, 384)
    assert pixel(out, 50 * 4, 30 * 4) == DET_COLOR  # bottom edge of the 0.9 detection, scaled
    assert pixel(out, 60 * 4, 70 * 4) == GT_COLOR   # bottom edge of the ground truth, scaled
    assert draw_detections(IMAGE, DETS, NAMES, min_side=64).shape == (3, 64, 96)  # already large enough


def test_empty_detections_and_unknown_labels():
    none = {"boxes": torch.zeros(0, 4), "scores": torch.zeros(0), "labels": torch.zeros(0, dtype=torch.long)}
    out = draw_detections(IMAGE + 0.5, none)
    assert torch.equal(out, torch.full((3, 64, 96), 128, dtype=torch.uint8))
    out = draw_detections(IMAGE, {**DETS, "labels": torch.tensor([7, 7])}, NAMES)  # no name: "7 0.90"
    assert pixel(out, 50, 30) == DET_COLOR


def test_png_files_are_valid(tmp_path):
    save_png(draw_detections(IMAGE, DETS, NAMES), tmp_path / "a" / "one.png")
    with Image.open(tmp_path / "a" / "one.png") as im:
        assert im.format == "PNG" and im.size == (96, 64) and im.mode == "RGB"
    paths = save_visualizations([IMAGE, IMAGE[:, :32]], [DETS, DETS], tmp_path / "vis", NAMES, gts=[GT, GT],
                                names=[17, 42])
    assert [p.name for p in paths] == ["17.png", "42.png"]
    with Image.open(paths[1]) as im:
        assert im.size == (96, 32)
        assert im.getpixel((30, 10)) == DET_COLOR


class FixedModel(nn.Module):
    def forward(self, images):
        assert not self.training
        return [DETS for _ in images]


def test_visualize_dataset_names_files_by_image_id(tmp_path):
    dataset = [(IMAGE, {**GT, "image_id": 100 + i}) for i in range(3)]
    model = FixedModel().train()
    paths = visualize_dataset(model, dataset, [0, 2], tmp_path, batch_size=1)
    assert model.training
    assert sorted(p.name for p in paths) == ["100.png", "102.png"]
    with Image.open(paths[0]) as im:  # the 64 px image enlarged 4x to MIN_PICTURE_SIDE
        assert im.size == (384, 256) and im.getpixel((70 * 4, 60 * 4)) == GT_COLOR


def test_without_a_truetype_font_falls_back_to_the_default(monkeypatch):
    monkeypatch.setattr("sed.visualize.FONT", "no-such-font.ttf")
    out = draw_detections(IMAGE, DETS, NAMES)
    assert pixel(out, 50, 30) == DET_COLOR


class NamedDataset(list):
    class_names = ["cat", "\u732b", "\u72ac dog"]   # cat, neko, inu: Chinese characters as a COCO file may have them


@pytest.mark.skipif(resolve_font() is None, reason="DejaVuSans is not installed")
def test_class_names_the_font_cannot_draw_are_warned_of_once(tmp_path):
    """DejaVuSans has Latin letters but no Chinese characters: they would be drawn as empty boxes."""
    assert missing_glyphs(resolve_font(), "\u72ac dog \u732b\u732b") == "\u72ac\u732b"
    assert missing_glyphs(resolve_font(), "cat \u00e9t\u00e9 \u03b1") == ""   # accents and Greek: DejaVu has them
    dataset = NamedDataset([(IMAGE, {**GT, "image_id": i}) for i in range(2)])
    with pytest.warns(UserWarning) as caught:
        visualize_dataset(FixedModel(), dataset, [0, 1], tmp_path, batch_size=1)
    assert [str(w.message) for w in caught] == [
        "2 class names (\u732b, \u72ac dog) have characters that DejaVuSans.ttf cannot draw (\u72ac\u732b): their "
        "labels show them as empty boxes; --font FILE picks a font that has them (e.g. NotoSansCJK-Regular.ttc)"]
