"""The central paths on each device: equality with torchvision, a supervised and an SED step in
each precision, evaluation. The "cuda" variants run where a GPU is (`make gpu-check` selects them
with `-k cuda`); here the "cpu" variants check the same code."""
import importlib.util
import math
from pathlib import Path

import pytest
import torch
import torchvision

import sed
from sed.config import TrainConfig
from sed.data import CocoDetection
from sed.evaluation import METRIC_NAMES, evaluate
from sed.losses import SEDObjective
from sed.synthetic import generate
from sed.teacher import make_teacher

ROOT = Path(__file__).resolve().parents[1]
NEEDS_CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
DEVICES = ["cpu", pytest.param("cuda", marks=NEEDS_CUDA)]


def load_train():
    spec = importlib.util.spec_from_file_location("train", ROOT / "train.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


train = load_train()


@pytest.mark.parametrize("device", DEVICES)
def test_detections_match_torchvision_on_device(device):
    """Same weights, same images: our detections equal torchvision's on this device (tolerance:
    GPU kernels may sum in another order than the CPU's)."""
    torch.manual_seed(0)
    theirs = torchvision.models.detection.fasterrcnn_resnet50_fpn(
        weights=None, weights_backbone=None, num_classes=91, min_size=160, max_size=224)
    with torch.no_grad():
        theirs.roi_heads.box_predictor.cls_score.bias.normal_(0, 3)   # many detections above 0.05
        theirs.rpn.head.cls_logits.bias.normal_(0, 1)
    ours = sed.load_torchvision_weights(sed.build_model(90, min_size=160, max_size=224), theirs.state_dict())
    ours, theirs = ours.eval().to(device), theirs.eval().to(device)
    images = [torch.rand(3, 200, 150, device=device), torch.rand(3, 130, 170, device=device)]
    with torch.no_grad():
        expected, got = theirs(images), ours(images)
    for e, g in zip(expected, got):
        assert len(g["boxes"]) > 10 and g["boxes"].device.type == device
        torch.testing.assert_close(g["boxes"], e["boxes"], atol=1e-3, rtol=1e-4)
        torch.testing.assert_close(g["scores"], e["scores"], atol=1e-4, rtol=1e-4)
        assert torch.equal(g["labels"], e["labels"])


def tiny_setup(device, dtype):
    torch.set_flush_denormal(True)   # as train.py on the CPU (denormals of an untrained trunk are slow)
    torch.manual_seed(0)
    model = sed.build_model(num_classes=3, backbone="resnet18", backbone_weights=None,
                            min_size=64, max_size=96, rpn_proposals=(64, 32), roi_batch_size=32).to(device)
    cfg = TrainConfig(device=device, dtype=dtype, burn_in_iters=0, teacher_proposals=16, unsup_weight=1.0, distill=True)
    images = [torch.rand(3, 64, 80, device=device) for _ in range(5)]
    targets = [{"boxes": torch.tensor([[4.0, 6.0, 40.0, 50.0]], device=device),
                "labels": torch.tensor([1 + k % 3], device=device)} for k in range(5)]
    return model.train(), cfg, images, targets


def step_and_check(model, losses, dtype, device):
    """One optimiser step as train.py takes it (GradScaler for float16): finite losses and weights."""
    assert all(torch.isfinite(v).all() for v in losses.values()), {k: v.item() for k, v in losses.items()}
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=0.01, momentum=0.9)
    scaler = torch.amp.GradScaler(torch.device(device).type, enabled=dtype == "float16")
    before = [p.detach().clone() for p in params]
    scaler.scale(losses["total"]).backward()
    scaler.step(optimizer)
    scaler.update()
    assert all(torch.isfinite(p).all() for p in params)
    assert any(not torch.equal(a, p) for a, p in zip(before, params))   # the step was taken


# the reduced precisions are GPU paths (CPU bfloat16 autocast is slow, and float16 is for GPUs)
PRECISIONS = [("cpu", "float32")] + [
    pytest.param("cuda", dtype, marks=NEEDS_CUDA, id=f"cuda-{dtype}") for dtype in ("float32", "bfloat16", "float16")]


@pytest.mark.parametrize("device, dtype", PRECISIONS)
def test_supervised_and_sed_steps_in_each_precision(device, dtype):
    model, cfg, images, targets = tiny_setup(device, dtype)
    objective = SEDObjective(model, cfg)
    sup = train.supervised_step(objective, images[:2], targets[:2], cfg)
    assert set(sup) == {"loss_objectness", "loss_rpn_box_reg", "loss_classifier", "loss_box_reg", "total"}
    step_and_check(model, sup, dtype, device)
    teacher = make_teacher(model)
    losses = train.sed_step(objective, teacher, model, images[:1], targets[:1], images[1:], 0, cfg)
    assert any(k.startswith("loss_") and k not in sup for k in losses)   # unsupervised terms present
    step_and_check(model, losses, dtype, device)


@pytest.mark.parametrize("device", DEVICES)
def test_evaluation_on_device_matches_cpu(device, tmp_path):
    """COCO metrics through pycocotools of the same model on `device` and on the CPU agree."""
    paths = generate(tmp_path, num_train=1, num_val=4, seed=5, image_size=64)
    val = CocoDetection(paths["val_ann"], paths["val_images"])
    torch.manual_seed(0)
    model = sed.build_model(num_classes=5, backbone="resnet18", backbone_weights=None, min_size=64, max_size=96)
    with torch.no_grad():
        model.roi_heads.predictor.cls_score.bias.normal_(0, 3)   # detections above the score threshold
    model.eval()
    on_cpu = evaluate(model, val, "cpu", batch_size=2, workers=0)
    on_device = evaluate(model.to(device), val, device, batch_size=2, workers=0)
    assert set(METRIC_NAMES) <= set(on_device)
    for name in METRIC_NAMES:
        assert math.isclose(on_device[name], on_cpu[name], abs_tol=0.5), (name, on_device[name], on_cpu[name])
