"""Per-process batch defaults that fit one GPU (supervised 2, SED 1 + 4) and the linear lr rule."""
import importlib.util
import json
from pathlib import Path

import pytest

from sed.config import describe_batch, parse_args, resolve_batch
from sed.synthetic import generate

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("flags, world_size, expected", [
    ([], 1, (2, 0, 0.0025)),                                     # torchvision references: 2 per GPU
    ([], 8, (2, 0, 0.02)),                                       # 16 in total: the 1x recipe's lr
    (["--method", "sed"], 1, (1, 4, 0.00125)),                   # Soft Teacher: 1 + 4 per GPU
    (["--method", "sed"], 8, (1, 4, 0.01)),                      # 8 + 32 in total, lr 0.01
    (["--method", "sed", "--batch-size", "3"], 2, (3, 12, 0.0075)),
    (["--method", "sed", "--unlabeled-batch-size", "2", "--lr", "0.1"], 4, (1, 2, 0.1)),
    (["--batch-size", "4", "--unlabeled-batch-size", "9"], 1, (4, 0, 0.005)),  # supervised: no unlabeled
])
def test_resolve_batch(flags, world_size, expected):
    cfg = resolve_batch(parse_args(flags, check_files=False), world_size)
    assert (cfg.batch_size, cfg.unlabeled_batch_size) == expected[:2]
    assert cfg.lr == pytest.approx(expected[2], rel=1e-12)


def test_describe_batch():
    cfg = resolve_batch(parse_args(["--method", "sed"], check_files=False), 8)
    assert describe_batch(cfg, 8) == ("batch: 1 labeled + 4 unlabeled images per process x 8 processes "
                                      "= 8 labeled + 32 unlabeled per iteration; lr 0.01")
    cfg = resolve_batch(parse_args([], check_files=False), 1)
    assert describe_batch(cfg, 1) == ("batch: 2 labeled images per process x 1 process "
                                      "= 2 labeled per iteration; lr 0.0025")


def test_negative_batch_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exit_info:
        parse_args(["--unlabeled-batch-size", "-1"], check_files=False)
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1].endswith(
        "error: --batch-size and --unlabeled-batch-size must be >= 0 (0 = the method's default)")


def test_train_sed_with_only_data_flags_uses_1_plus_4(tmp_path, monkeypatch, capsys):
    """`train.py --method sed` without batch flags: each step sees 1 labeled + 4 unlabeled images."""
    spec = importlib.util.spec_from_file_location("train", ROOT / "train.py")
    train = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(train)
    data = generate(tmp_path / "shapes", num_train=12, num_val=1, seed=0, image_size=48)
    seen = []

    def counting_sed_step(objective, teacher, student, images, targets, unlabeled_images, it, cfg):
        seen.append((len(images), len(unlabeled_images)))
        return real_sed_step(objective, teacher, student, images, targets, unlabeled_images, it, cfg)
    real_sed_step = train.sed_step
    monkeypatch.setattr(train, "sed_step", counting_sed_step)
    out = tmp_path / "run"
    train.main(["--method", "sed", "--labeled-percent", "50",
                "--train-ann", str(data["train_ann"]), "--train-images", str(data["train_images"]),
                # a tiny model on the CPU; no batch, lr or iteration flags beyond these
                "--backbone", "resnet18", "--backbone-weights", "none", "--min-size", "48", "--max-size", "64",
                "--max-iter", "1", "--burn-in-iters", "0", "--teacher-proposals", "16", "--diagnostics-images", "0",
                "--workers", "0", "--device", "cpu", "--out", str(out)])
    assert seen == [(1, 4)]
    config = json.loads((out / "config.json").read_text())
    assert (config["batch_size"], config["unlabeled_batch_size"], config["lr"]) == (1, 4, 0.00125)
    assert ("batch: 1 labeled + 4 unlabeled images per process x 1 process = 1 labeled + 4 unlabeled "
            "per iteration; lr 0.00125") in capsys.readouterr().out.splitlines()
