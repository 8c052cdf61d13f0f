"""The detector: equality with torchvision, hand-computed losses, input errors, learning."""
import pytest
import torch
import torchvision
from torchvision.ops import FrozenBatchNorm2d, MultiScaleRoIAlign
from torchvision.ops.poolers import LevelMapper

import sed
from sed.backbone import BackboneFPN
from sed.errors import UserError
from sed.roi_heads import MultiLevelRoIAlign, RoIHeads
from sed.rpn import RegionProposalNetwork, flatten_outputs
from sed.transform import ImageBatch


def perturbed_torchvision_model(num_classes=91, **kwargs):
    """torchvision's Faster R-CNN with random weights, perturbed so that many detections pass the
    0.05 score threshold and frozen BN is not the identity."""
    torch.manual_seed(0)
    model = torchvision.models.detection.fasterrcnn_resnet50_fpn(
        weights=None, weights_backbone=None, num_classes=num_classes, **kwargs)
    with torch.no_grad():
        model.roi_heads.box_predictor.cls_score.bias.normal_(0, 3)
        model.rpn.head.cls_logits.bias.normal_(0, 1)
        for module in model.modules():
            if isinstance(module, FrozenBatchNorm2d):
                module.weight.uniform_(0.5, 1.5)
                module.bias.normal_(0, 0.1)
                module.running_mean.normal_(0, 0.1)
                module.running_var.uniform_(0.5, 1.5)
        for param in model.roi_heads.parameters():
            param.add_(torch.randn_like(param) * 0.01)
    return model.eval()


@pytest.fixture(scope="module")
def model_pair():
    theirs = perturbed_torchvision_model(min_size=224, max_size=320)
    ours = sed.build_model(90, min_size=224, max_size=320)
    sed.load_torchvision_weights(ours, theirs.state_dict())
    return ours.eval(), theirs


@pytest.mark.parametrize("sizes", [[(300, 400), (250, 230)], [(180, 180)], [(97, 333)]])
def test_detections_equal_torchvision(model_pair, sizes):
    ours, theirs = model_pair
    torch.manual_seed(1)
    images = [torch.rand(3, h, w) for h, w in sizes]
    with torch.no_grad():
        expected, got = theirs(images), ours(images)
    for e, g in zip(expected, got):
        assert len(g["boxes"]) > 10  # the perturbation makes the comparison meaningful
        torch.testing.assert_close(g["boxes"], e["boxes"])
        torch.testing.assert_close(g["scores"], e["scores"])
        assert torch.equal(g["labels"], e["labels"])


def test_intermediate_outputs_equal_torchvision(model_pair):
    ours, theirs = model_pair
    images = [torch.rand(3, 200, 260), torch.rand(3, 240, 200)]
    with torch.no_grad():
        image_list, _ = theirs.transform(images)
        batch, _ = ours.transform(images)
        assert torch.equal(batch.tensors, image_list.tensors)
        tv_features = list(theirs.backbone(image_list.tensors).values())
        features = ours.features(batch.tensors)
        for f, t in zip(features, tv_features):
            torch.testing.assert_close(f, t)
        tv_proposals, _ = theirs.rpn(image_list, theirs.backbone(image_list.tensors))
        obj, deltas = ours.rpn.head(features)
        proposals = ours.rpn.propose(ours.rpn.anchors(batch, features), obj, deltas, batch.image_sizes)
        for p, t in zip(proposals, tv_proposals):
            torch.testing.assert_close(p, t)


def test_load_torchvision_weights_rejects_wrong_class_count():
    theirs = torchvision.models.detection.fasterrcnn_resnet50_fpn(
        weights=None, weights_backbone=None, num_classes=5)
    with pytest.raises(ValueError, match="4 foreground classes, the model 3"):
        sed.load_torchvision_weights(sed.build_model(3), theirs.state_dict())


def test_level_mapping_equals_torchvision_and_hand_computed():
    boxes = torch.tensor([[0, 0, 224, 224], [0, 0, 112, 112], [0, 0, 448, 448], [0, 0, 10, 10],
                          [0, 0, 2000, 2000], [5, 5, 120, 60]], dtype=torch.float32)
    ours = MultiLevelRoIAlign().level_index(boxes)
    assert ours.tolist() == [2, 1, 3, 0, 3, 0]  # P4, P3, P5, P2, P5 (clamped), sqrt(115*55)=79.5 -> P2
    assert torch.equal(ours, LevelMapper(2, 5)([boxes]))


def test_multilevel_roi_align_equals_torchvision():
    torch.manual_seed(0)
    features = [torch.randn(2, 4, 64 // s, 96 // s) for s in (4, 8, 16, 32)]
    boxes = [torch.tensor([[1.0, 2, 30, 40], [0, 0, 90, 60]]), torch.tensor([[10.0, 5, 20, 25]])]
    theirs = MultiScaleRoIAlign(["0", "1", "2", "3"], 7, 2)(
        dict(zip("0123", features)), boxes, [(64, 96), (64, 96)])
    assert torch.equal(MultiLevelRoIAlign()(features, boxes), theirs)


def test_flatten_order_matches_anchors():
    """Anchor i of the flattened order belongs to (level, y, x, a); objectness must follow it."""
    obj = [torch.arange(2 * 3 * 2 * 4, dtype=torch.float32).view(2, 3, 2, 4)]
    deltas = [torch.zeros(2, 12, 2, 4)]
    obj_flat, deltas_flat = flatten_outputs(obj, deltas)
    assert obj_flat.shape == (2, 24) and deltas_flat.shape == (2, 24, 4)
    y, x, a = 1, 2, 1  # flattened index (y * W + x) * A + a
    assert obj_flat[1, (y * 4 + x) * 3 + a] == obj[0][1, a, y, x]


def test_rpn_loss_hand_computed():
    rpn = RegionProposalNetwork(batch_size_per_image=256)
    anchors = torch.tensor([[0.0, 0, 10, 10], [0, 0, 10, 10.5], [20, 20, 30, 30], [0, 0, 10, 40]])
    # IoU with the gt [0,0,10,10]: 1.0, 0.952, 0, 0.25 -> labels 1, 1, 0, 0
    target = {"boxes": torch.tensor([[0.0, 0, 10, 10]]), "labels": torch.tensor([1])}
    obj = torch.tensor([[2.0, -1.0, 0.5, -3.0]])
    deltas = torch.zeros(1, 4, 4)
    deltas[0, 0] = torch.tensor([0.3, 0.0, 0.0, 0.0])
    losses = rpn.loss(anchors, obj, deltas, [target])
    labels = torch.tensor([1.0, 1, 0, 0])
    expected_bce = torch.nn.functional.binary_cross_entropy_with_logits(obj[0], labels)
    torch.testing.assert_close(losses["loss_objectness"], expected_bce)
    # anchor 0: target 0, prediction dx = 0.3 > beta = 1/9 -> smooth L1 = 0.3 - 1/18;
    # anchor 1: targets dy = (5 - 5.25) / 10.5, dh = log(10 / 10.5), prediction 0; both below
    # beta = 1/9, so each costs 0.5 * d^2 / beta
    dy, dh = torch.tensor(-0.25 / 10.5), torch.log(torch.tensor(10 / 10.5))
    expected_box = ((0.3 - 1 / 18) + 0.5 * (dy ** 2 + dh ** 2) * 9) / 4
    torch.testing.assert_close(losses["loss_rpn_box_reg"], expected_box)


def test_roi_loss_hand_computed():
    torch.manual_seed(0)
    heads = RoIHeads(num_classes=2, in_channels=4, batch_size_per_image=512)
    features = [torch.randn(1, 4, 16, 16) for _ in range(5)]
    proposals = [torch.tensor([[40.0, 40, 60, 60], [0, 0, 8, 8]])]
    target = {"boxes": torch.tensor([[40.0, 40, 60, 60]]), "labels": torch.tensor([2])}
    losses = heads.losses(features, proposals, [target])
    # the gt joins the proposals: RoIs [40,40,60,60] x2 (class 2) and [0,0,8,8] (background)
    rois = [torch.tensor([[40.0, 40, 60, 60], [40, 40, 60, 60], [0, 0, 8, 8]])]
    logits, deltas = heads.predict(features, rois)
    expected_ce = torch.nn.functional.cross_entropy(logits, torch.tensor([2, 2, 0]))
    torch.testing.assert_close(losses["loss_classifier"], expected_ce)
    class2 = deltas.view(3, 3, 4)[:2, 2]  # targets are 0: the RoIs equal the gt box
    expected_box = torch.nn.functional.smooth_l1_loss(class2, torch.zeros(2, 4), beta=1 / 9, reduction="sum") / 3
    torch.testing.assert_close(losses["loss_box_reg"], expected_box)


def tiny_model(**kwargs):
    torch.manual_seed(0)
    return sed.build_model(3, backbone="resnet18", min_size=96, max_size=128, **kwargs)


def test_finite_losses_for_image_without_boxes():
    model = tiny_model().train()
    empty = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}
    losses = model([torch.rand(3, 80, 100)], [empty])
    assert set(losses) == {"loss_objectness", "loss_rpn_box_reg", "loss_classifier", "loss_box_reg"}
    assert all(torch.isfinite(v) for v in losses.values())
    assert losses["loss_rpn_box_reg"] == 0 and losses["loss_box_reg"] == 0
    sum(losses.values()).backward()


def test_eval_output_format():
    model = tiny_model().eval()
    with torch.no_grad():
        out = model([torch.rand(3, 70, 90), torch.rand(3, 100, 60)])
    assert len(out) == 2
    for det, (h, w) in zip(out, [(70, 90), (100, 60)]):
        assert det["boxes"].shape[1] == 4 and det["scores"].shape == det["labels"].shape
        assert (det["boxes"][:, 2] <= w + 1e-3).all() and (det["boxes"][:, 3] <= h + 1e-3).all()  # input pixels


@pytest.mark.parametrize("target, message", [
    ({"boxes": torch.tensor([[10.0, 10, 5, 20]]), "labels": torch.tensor([1])}, "image 0: box .* x2 <= x1"),
    ({"boxes": torch.tensor([[10.0, 10, 20, 10]]), "labels": torch.tensor([1])}, "y2 <= y1"),
    ({"boxes": torch.tensor([[0.0, float("nan"), 5, 5]]), "labels": torch.tensor([1])}, "non-finite box"),
    ({"boxes": torch.tensor([[0.0, 0, 5]]), "labels": torch.tensor([1])}, r"boxes must be a \[N, 4\]"),
    ({"boxes": torch.tensor([[0.0, 0, 5, 5]]), "labels": torch.tensor([4])}, "label 4 outside the classes 1..3"),
    ({"boxes": torch.tensor([[0.0, 0, 5, 5]]), "labels": torch.tensor([0])}, "label 0 outside"),
    ({"boxes": torch.tensor([[0.0, 0, 5, 5]]), "labels": torch.tensor([1, 2])}, r"labels must be a \[1\]"),
])
def test_bad_targets_one_line_error(target, message):
    model = tiny_model().train()
    with pytest.raises(ValueError, match=message) as info:
        model([torch.rand(3, 32, 32)], [target])
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("images, message", [
    ([torch.rand(32, 32)], r"image 0: expected a \[3, H, W\] tensor"),
    ([torch.rand(3, 8, 8), torch.rand(1, 8, 8)], "image 1"),
    ([torch.zeros(3, 0, 8)], "non-empty"),
    (torch.rand(2, 3, 8, 8), "list"),
])
def test_bad_images_one_line_error(images, message):
    with pytest.raises(ValueError, match=message):
        tiny_model().eval()(images)


def test_trainable_layers_freeze_the_stem_and_layer1():
    trunk = BackboneFPN("resnet18", trainable_layers=3).body
    frozen = {name.split(".")[0] for name, p in trunk.named_parameters() if not p.requires_grad}
    assert frozen == {"conv1", "layer1"}  # frozen BN has no parameters
    assert all(p.requires_grad for p in BackboneFPN("resnet18", trainable_layers=5).body.parameters())


def test_backbone_weights_from_file(tmp_path):
    net = torchvision.models.resnet18()
    path = tmp_path / "r18.pth"
    torch.save(net.state_dict(), path)
    trunk = BackboneFPN("resnet18", weights=str(path)).body
    assert torch.equal(trunk.layer3[0].conv1.weight, net.layer3[0].conv1.weight)
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        BackboneFPN("resnet18", weights=str(tmp_path / "missing.pth"))
    torch.save({"not": torch.zeros(1)}, tmp_path / "bad.pth")
    with pytest.raises(ValueError, match="not a resnet18 state dict"):
        BackboneFPN("resnet18", weights=str(tmp_path / "bad.pth"))
    torch.save(torchvision.models.resnet50().state_dict(), tmp_path / "r50.pth")   # tracebacks until stop 31:
    with pytest.raises(UserError, match=r"r50.pth: not a resnet18 state dict \(size mismatch for layer1.0.conv1."):
        BackboneFPN("resnet18", weights=str(tmp_path / "r50.pth"))
    torch.save({"model": {}, "config": {}, "iteration": 0}, tmp_path / "last.pt")
    with pytest.raises(UserError, match=r"last.pt: a checkpoint of train.py, not a ResNet's weights; --resume "):
        BackboneFPN("resnet18", weights=str(tmp_path / "last.pt"))
    (tmp_path / "notes.txt").write_text("hi\n")  # made torch's unpickler raise KeyError
    with pytest.raises(ValueError, match=r"notes.txt: not a checkpoint \(not a file written by torch.save"):
        BackboneFPN("resnet18", weights=str(tmp_path / "notes.txt"))


def test_overfitting_one_image_lowers_the_loss():
    torch.set_flush_denormal(True)  # as train.py on CPU: denormals slow a random trunk's steps 5x
    model = tiny_model(trainable_layers=3).train()
    image = torch.rand(3, 96, 128) * 0.2
    image[:, 20:60, 30:80] = torch.tensor([0.9, 0.2, 0.1])[:, None, None]
    image[:, 50:90, 90:120] = torch.tensor([0.1, 0.8, 0.9])[:, None, None]
    target = {"boxes": torch.tensor([[30.0, 20, 80, 60], [90, 50, 120, 90]]), "labels": torch.tensor([1, 2])}
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=0.005, momentum=0.9)
    totals = []
    for _ in range(30):
        loss = sum(model([image], [target]).values())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        totals.append(loss.item())
    assert all(map(lambda t: t == t, totals))  # no NaN
    assert sum(totals[-5:]) / 5 < 0.5 * sum(totals[:5]) / 5


def test_image_batch_padding():
    batch = sed.build_model(1, backbone="resnet18", min_size=50, max_size=1000, size_divisible=64).transform(
        [torch.rand(3, 50, 70), torch.rand(3, 60, 50)])[0]
    assert isinstance(batch, ImageBatch)
    assert batch.tensors.shape == (2, 3, 64, 128) and batch.image_sizes == [(50, 70), (60, 50)]
    assert (batch.tensors[0, :, 50:] == 0).all() and (batch.tensors[1, :, :, 50:] == 0).all()


def test_rpn_proposals_are_inside_the_image():
    model = tiny_model().eval()
    batch, _ = model.transform([torch.rand(3, 90, 120)])
    with torch.no_grad():
        proposals, _ = model.rpn(batch, model.features(batch.tensors))
    h, w = batch.image_sizes[0]
    assert len(proposals[0]) > 0
    assert (proposals[0][:, [0, 2]] <= w).all() and (proposals[0][:, [1, 3]] <= h).all()


def test_group_norm_backbone_for_training_from_scratch():
    """--backbone-norm group: trainable GroupNorm(32) instead of FrozenBatchNorm2d, each residual block
    starting as the identity (its last norm's scale 0); pretrained weights refuse it."""
    backbone = BackboneFPN("resnet18", None, trainable_layers=5, norm="group")
    norms = [m for m in backbone.modules() if isinstance(m, (torch.nn.GroupNorm, FrozenBatchNorm2d))]
    assert norms and all(isinstance(m, torch.nn.GroupNorm) and m.num_groups == 32 for m in norms)
    assert all(m.weight.requires_grad for m in norms)
    blocks = [m for m in backbone.modules() if isinstance(m, torchvision.models.resnet.BasicBlock)]
    assert len(blocks) == 8 and all(torch.equal(b.bn2.weight, torch.zeros_like(b.bn2.weight)) for b in blocks)
    with pytest.raises(ValueError, match="frozen_bn"):
        BackboneFPN("resnet18", "imagenet", norm="group")


def test_fpn_channels_set_the_width_of_every_level_the_rpn_and_the_box_head():
    model = tiny_model(fpn_channels=64).train()
    feats = model.features(torch.rand(1, 3, 96, 96))
    assert [f.shape[1] for f in feats] == [64] * 5
    assert model.rpn.head.conv.in_channels == 64
    assert model.roi_heads.box_head.fc6.in_features == 64 * 7 * 7
    target = {"boxes": torch.tensor([[10.0, 10.0, 50.0, 60.0]]), "labels": torch.tensor([1])}
    assert all(torch.isfinite(v) for v in model([torch.rand(3, 96, 96)], [target]).values())


def test_an_image_over_the_size_ratio_keeps_a_side_of_one_pixel():
    """1 x 500 px with min 64 / max 128: scale 128 / 500, so torchvision's floor(1 * 0.256) would be a side
    of 0 (a traceback from interpolate until stop 30); the side is 1 px, the other as torchvision's."""
    from sed.transform import ImageTransform
    batch, targets = ImageTransform(min_size=(64,), max_size=128).eval()(
        [torch.rand(3, 1, 500)], [{"boxes": torch.tensor([[0.0, 0.0, 250.0, 1.0]])}])
    assert batch.image_sizes == [(1, 128)]
    assert torch.allclose(targets[0]["boxes"], torch.tensor([[0.0, 0.0, 64.0, 1.0]]))
