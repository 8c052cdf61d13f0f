"""sed.export: a checkpoint's teacher (or student) as a torchvision Faster R-CNN state dict that gives
our detections in torchvision's model."""
import dataclasses

import pytest
import torch
from torchvision.models.detection import FasterRCNN, fasterrcnn_resnet50_fpn
from torchvision.models.detection.backbone_utils import resnet_fpn_backbone

import sed
from sed import export
from sed.checkpoint import load_checkpoint, save_checkpoint
from sed.config import TrainConfig


def random_model(backbone, num_classes=5, seed=0):
    """Random init, perturbed so that detections pass the 0.05 score threshold (tests/test_detector)."""
    torch.manual_seed(seed)
    model = sed.build_model(num_classes, backbone=backbone, min_size=(96, 128), max_size=160)
    with torch.no_grad():
        model.roi_heads.predictor.cls_score.bias.normal_(0, 3)
        model.rpn.head.objectness.bias.normal_(0, 1)
    return model.eval()


@pytest.fixture(scope="module")
def ckpt(module_tmp):
    """An SED-like checkpoint whose teacher and student differ."""
    config = dataclasses.asdict(TrainConfig(num_classes=5, backbone="resnet18", min_size=(96, 128),
                                            max_size=160))
    path = module_tmp / "last.pt"
    save_checkpoint(path, {"model": random_model("resnet18", seed=1).state_dict(), "iteration": 7,
                           "config": config, "teacher": random_model("resnet18", seed=0).state_dict()})
    return path


def test_exported_teacher_gives_our_detections_in_torchvision(ckpt, tmp_path, capsys):
    export.main([str(ckpt), str(tmp_path / "tv.pth")])
    printed = capsys.readouterr().out
    assert "FasterRCNN(resnet_fpn_backbone(backbone_name='resnet18', weights=None), num_classes=6, " \
           "min_size=128, max_size=160)" in printed
    theirs = FasterRCNN(resnet_fpn_backbone(backbone_name="resnet18", weights=None), num_classes=6,
                        min_size=128, max_size=160)
    theirs.load_state_dict(torch.load(tmp_path / "tv.pth", weights_only=True))  # strict
    ours = random_model("resnet18", seed=0)  # the teacher
    torch.manual_seed(2)
    images = [torch.rand(3, 120, 150), torch.rand(3, 140, 100)]
    with torch.no_grad():
        expected, got = theirs.eval()(images), ours(images)
    for e, g in zip(expected, got):
        assert len(g["boxes"]) > 10  # a meaningful comparison
        torch.testing.assert_close(g["boxes"], e["boxes"])
        torch.testing.assert_close(g["scores"], e["scores"])
        assert torch.equal(g["labels"], e["labels"])


def test_student_export_and_round_trip_through_load_torchvision_weights(ckpt, tmp_path):
    export.main([str(ckpt), str(tmp_path / "student.pth"), "--model", "student"])
    student = random_model("resnet18", seed=1)
    back = sed.load_torchvision_weights(random_model("resnet18", seed=5), torch.load(tmp_path / "student.pth"))
    for name, tensor in student.state_dict().items():
        assert torch.equal(back.state_dict()[name], tensor), name


def test_resnet50_names_match_torchvision():
    """Every name of our R50 model maps onto torchvision's R50-FPN Faster R-CNN (frozen batch norm, as
    in fasterrcnn_resnet50_fpn with pretrained weights and its COCO weights file), same shapes."""
    ours = export.to_torchvision(sed.build_model(90).state_dict())
    theirs = FasterRCNN(resnet_fpn_backbone(backbone_name="resnet50", weights=None), num_classes=91).state_dict()
    assert ours.keys() == theirs.keys()
    trainable_bn = fasterrcnn_resnet50_fpn(weights=None, weights_backbone=None).state_dict()
    assert {k for k in trainable_bn if not k.endswith("num_batches_tracked")} == set(ours)
    assert all(ours[k].shape == theirs[k].shape for k in ours)


def test_supervised_checkpoint_has_no_teacher(ckpt, tmp_path, capsys):
    """Without --model the student is exported; --model teacher is a one-line error."""
    state = torch.load(ckpt, weights_only=True)
    del state["teacher"]
    save_checkpoint(tmp_path / "sup.pt", state)
    with pytest.raises(SystemExit) as stop:
        export.main([str(tmp_path / "sup.pt"), str(tmp_path / "x.pth"), "--model", "teacher"])
    assert stop.value.code == 1
    assert capsys.readouterr().err == (f"error: {tmp_path / 'sup.pt'}: has no teacher weights (supervised run); "
                                       "use --model student\n")


def printed_model(printed):
    """Run the Python lines export prints (imports and `model = ...`), return that model."""
    code = printed.split("load it with\n", 1)[1].rsplit("\nmodel.load_state_dict", 1)[0]
    scope = {}
    exec(code, scope)
    return scope["model"]


def test_printed_constructor_fits_group_norm_and_narrow_box_head(tmp_path, capsys):
    """A from-scratch checkpoint (GroupNorm, --box-head-dim 256, other anchors): the printed Python
    builds a torchvision model that takes the file strictly and gives our detections."""
    options = dict(backbone="resnet18", backbone_norm="group", box_head_dim=256, anchor_sizes=(16, 32, 64, 128, 256),
                   rpn_proposals=(256, 128))
    config = dataclasses.asdict(TrainConfig(num_classes=3, backbone_weights="none", min_size=(128,), max_size=160,
                                            **options))
    torch.manual_seed(0)
    ours = sed.build_model(3, min_size=(128,), max_size=160, backbone_weights="none", **options).eval()
    with torch.no_grad():
        ours.roi_heads.predictor.cls_score.bias.normal_(0, 3)
        ours.rpn.head.objectness.bias.normal_(0, 1)
    save_checkpoint(tmp_path / "last.pt", {"model": ours.state_dict(), "iteration": 3, "config": config})
    export.main([str(tmp_path / "last.pt"), str(tmp_path / "tv.pth")])
    theirs = printed_model(capsys.readouterr().out)
    theirs.load_state_dict(torch.load(tmp_path / "tv.pth", weights_only=True))  # strict
    images = [torch.rand(3, 128, 150)]
    with torch.no_grad():
        expected, got = theirs.eval()(images)[0], ours(images)[0]
    assert len(got["boxes"]) > 10
    torch.testing.assert_close(got["boxes"], expected["boxes"])
    torch.testing.assert_close(got["scores"], expected["scores"])


def test_narrow_fpn_is_a_one_line_error(ckpt, tmp_path, capsys):
    state = torch.load(ckpt, weights_only=True)
    state["config"] = {**state["config"], "fpn_channels": 64}
    save_checkpoint(tmp_path / "fpn64.pt", state)
    with pytest.raises(SystemExit) as stop:
        export.main([str(tmp_path / "fpn64.pt"), str(tmp_path / "x.pth")])
    assert stop.value.code == 1
    assert capsys.readouterr().err == ("error: --fpn-channels: this checkpoint has a 64-channel FPN; torchvision's "
                                       "resnet_fpn_backbone has 256 channels, so it cannot be exported\n")
    assert not (tmp_path / "x.pth").exists()
    (tmp_path / "file").write_text("")
    for out, message in [(tmp_path / "fpn64.pt", f"error: {tmp_path / 'fpn64.pt'}: is the checkpoint itself; "
                          "write the export to another file\n"),
                         (tmp_path / "file" / "x.pth",
                          f"error: out: {tmp_path / 'file'} exists and is not a directory\n")]:
        with pytest.raises(SystemExit):
            export.main([str(tmp_path / "fpn64.pt"), str(out)])
        assert capsys.readouterr().err == message
    assert load_checkpoint(tmp_path / "fpn64.pt")["config"]["fpn_channels"] == 64   # untouched
