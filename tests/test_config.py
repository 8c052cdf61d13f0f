"""CLI flags are generated from TrainConfig; validation gives one-line errors."""
import dataclasses
import re

import pytest
import torch

from sed.config import (TrainConfig, build_parser, changed_settings, check_device, check_writable_dir,
                        check_writable_file, from_dict, parse_args, unused_fields, unused_settings, validate)
from sed.errors import UserError


def test_every_field_has_a_flag_and_help():
    flags = {a.dest: a for a in build_parser()._actions}
    for f in dataclasses.fields(TrainConfig):
        assert f.name in flags, f.name
        assert f.metadata["help"]
    assert "--train-ann" in flags["train_ann"].option_strings


def test_defaults_and_types():
    cfg = parse_args([], check_files=False)
    assert cfg == TrainConfig()
    assert cfg.min_size == (640, 672, 704, 736, 768, 800) and cfg.lr_steps == [60000, 80000]
    assert (cfg.ema_momentum, cfg.unsup_weight, cfg.pseudo_threshold) == (0.999, 4.0, 0.7)


def test_values_from_flags():
    cfg = parse_args(["--min-size", "64", "96", "--lr-steps", "5", "--lr", "0.1", "--method", "sed",
                      "--batch-size", "3", "--no-distill", "--no-scale-consistency", "--no-reweight",
                      "--hard-pseudo-labels"], check_files=False)
    assert cfg.min_size == (64, 96) and cfg.lr_steps == [5] and cfg.lr == 0.1 and cfg.batch_size == 3
    assert cfg.method == "sed" and not cfg.distill and not cfg.scale_consistency and not cfg.reweight
    assert cfg.hard_pseudo_labels
    assert parse_args(["--distill"], check_files=False).distill


def test_unknown_flag_and_bad_choice_exit():
    with pytest.raises(SystemExit):
        parse_args(["--not-a-flag", "1"], check_files=False)
    with pytest.raises(SystemExit):
        parse_args(["--dtype", "float8"], check_files=False)


@pytest.mark.parametrize("argv, message", [
    (["--labeled-percent", "0"], "--labeled-percent must be in (0, 100], got 0.0"),
    (["--labeled-percent", "101"], "--labeled-percent must be in (0, 100], got 101.0"),
    (["--trainable-layers", "7"], "--trainable-layers must be in 0..5, got 7"),
    (["--lr-steps", "10", "5"], "--lr-steps must be positive and strictly increasing, got [10, 5]"),
    (["--lr-steps", "2", "2"], "--lr-steps must be positive and strictly increasing, got [2, 2]"),   # since stop 30
    (["--lr-steps", "-5"], "--lr-steps must be positive and strictly increasing, got [-5]"),
    (["--lr-gamma", "-1"], "--lr-gamma must be in (0, 1] (a decay), got -1.0"),
    (["--warmup-factor", "10"], "--warmup-factor must be in (0, 1], got 10.0"),
    (["--anchor-sizes", "0", "0", "0", "0", "0"],
     "--anchor-sizes must be positive and increase from P2 to P6, got (0, 0, 0, 0, 0)"),
    (["--method", "sed", "--anchor-sizes", "32", "48", "96", "192", "384"],   # since stop 32
     "--anchor-sizes must double from level to level for the scale link (small P2-P5 against full P3-P6, "
     "SED_NOTES section 2), got (32, 48, 96, 192, 384); or --no-scale-consistency"),
    (["--teacher-proposals", "0"], "--teacher-proposals must be >= 1, got 0"),
    (["--seed", "-1"], "--seed and --split-seed must be in [0, 2**32 - 1], got -1 and 1"),  # until stop 35 a traceback
    (["--split-seed", str(2**32)], "--seed and --split-seed must be in [0, 2**32 - 1], got 0 and 4294967296"),
    (["--min-size", "0"], "--min-size must be positive, got [0]"),
    (["--unsup-weight", "-1"], "--unsup-weight must be >= 0, got -1.0"),
    (["--pseudo-threshold", "1.5"], "--pseudo-threshold must be in [0, 1) (a score; at 1 no detection is a "
     "pseudo-label), got 1.5"),
    (["--pseudo-threshold", "1"], "--pseudo-threshold must be in [0, 1) (a score; at 1 no detection is a "
     "pseudo-label), got 1.0"),   # accepted until stop 31: the hard-label term trained everything as background
    (["--method", "sed", "--no-hard-pseudo-labels"], "--no-hard-pseudo-labels needs --distill (without the soft "
     "self-distillation the hard labels are the teacher's only signal to the student); --distill "
     "--no-hard-pseudo-labels is SED as Figure 1 draws it"),
    (["--distill-smooth-l1-beta", "-1"], "--distill-smooth-l1-beta must be >= 0 (0 = L1), got -1.0"),
    (["--strong-erase-scale", "0.3", "0.1"], "--strong-erase-scale must be two numbers low <= high in (0, 1], got "
     "[0.3, 0.1]"),
    (["--strong-erase-ratio", "0", "1"], "--strong-erase-ratio must be two numbers low <= high in (0, inf], got "
     "[0.0, 1.0]"),
    (["--strong-blur-sigma", "1"], "--strong-blur-sigma must be two numbers low <= high in (0, inf], got [1.0]"),
    (["--method", "sed", "--distill", "--no-distill-rpn", "--no-distill-roi"],
     "--distill needs --distill-rpn or --distill-roi (with neither, --no-distill)"),
    (["--method", "sed", "--no-scale-rpn", "--no-scale-roi"],
     "--scale-consistency needs --scale-rpn or --scale-roi (with neither, --no-scale-consistency)"),
    (["--checkpoint-every", "0"],
     "--checkpoint-every, --log-every and --eval-batch-size must be >= 1, got 0, 20 and 8"),
    (["--log-every", "0"], "--checkpoint-every, --log-every and --eval-batch-size must be >= 1, got 5000, 0 and 8"),
    (["--momentum", "-1"], "--momentum, --weight-decay and --grad-clip must be >= 0"),
    (["--workers", "-1"], "--workers must be >= 0 (0 = load in the main process), got -1"),
    (["--min-size", "800", "--max-size", "600"], "--max-size must be >= --min-size, got 600 and (800,)"),
    (["--roi-batch-size", "0"], "--roi-batch-size, --box-head-dim and --fpn-channels must be >= 1"),
    (["--val-ann", "v.json"], "--val-ann and --val-images go together (evaluation needs both)"),
    (["--unlabeled-ann", "u.json"], "--unlabeled-ann needs --labeled-ann (the two ready-made parts go together; "
     "images beside a percent split: --unlabeled-images)"),
    (["--labeled-ann", "l.json", "--labeled-percent", "10"],
     "--labeled-ann is the labeled part: it takes no --labeled-percent or --split-file"),
])
def test_validation_messages(argv, message, capsys):
    with pytest.raises(SystemExit) as stop:
        parse_args(argv, check_files=False)
    assert stop.value.code == 2 and capsys.readouterr().err == f"error: {message}\n"  # one line, no usage
    with pytest.raises(ValueError, match=re.escape(message)):
        validate(TrainConfig(**vars(build_parser().parse_args(argv))), check_files=False)


def test_backbone_is_one_of_the_resnets(capsys):
    with pytest.raises(SystemExit):
        parse_args(["--backbone", "resnet101"], check_files=False)
    assert "argument --backbone: invalid choice: 'resnet101'" in capsys.readouterr().err


@pytest.mark.parametrize("device, message", [
    ("gpu", "--device: 'gpu' is not a device (cpu, cuda or cuda:N)"),
    ("mps", "--device: mps: only cpu and cuda are supported"),
    ("cuda:99", "--device: cuda:99: "),
])
def test_device_is_checked_before_any_work(device, message):
    with pytest.raises(UserError, match=re.escape(message)):
        check_device(device)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_without_cuda_is_one_line():
    with pytest.raises(UserError, match=r"--device: cuda: CUDA is not available to this torch .*; use --device cpu"):
        check_device("cuda")


def test_output_folder_that_cannot_be_written(tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(UserError, match=r"--out: cannot create .*/file/run: .*/file is not a directory"):
        check_writable_dir(str(tmp_path / "file" / "run"), "--out")
    check_writable_dir(str(tmp_path / "new" / "run"), "--out")   # creatable: fine, nothing created
    assert not (tmp_path / "new").exists()
    with pytest.raises(UserError, match=r"--json: .* is a directory, not a file"):
        check_writable_file(str(tmp_path), "--json")


def test_missing_files_are_named(tmp_path, capsys):
    ann = tmp_path / "a.json"
    ann.write_text("{}")
    for argv, message in [(["--train-ann", str(tmp_path / "nope.json")], f"--train-ann: file not found: {tmp_path}"),
                          (["--train-ann", str(ann), "--train-images", str(tmp_path / "imgs")],
                           "--train-images: directory not found"),
                          (["--train-ann", str(ann), "--unlabeled-images", str(tmp_path / "photos")],
                           "--unlabeled-images: directory not found"),
                          ([], "give --train-ann"),
                          # until stop 35 "file not found":
                          (["--train-ann", str(tmp_path)], f"--train-ann: {tmp_path} is a folder, not a file"),
                          # until stop 31 "file not found":
                          (["--train-ann", str(ann), "--resume", str(tmp_path)],
                           f"--resume: {tmp_path} is a folder; --resume {tmp_path / 'last.pt'} continues the run "
                           "it holds")]:
        with pytest.raises(SystemExit):
            parse_args(argv)
        assert message in capsys.readouterr().err


def test_round_trip_through_dict():
    cfg = parse_args(["--min-size", "64", "--method", "sed"], check_files=False)
    assert from_dict({**dataclasses.asdict(cfg), "unknown_old_key": 1}) == cfg


def test_help_is_grouped_and_every_flag_is_in_one_group():
    """--help lists the flags in the HELP_GROUPS sections; a field belongs to the last group that
    starts above it, so the SED fields (and any added after them) land in the SED group."""
    from sed.config import HELP_GROUPS
    groups = {g.title: [a.dest for a in g._group_actions] for g in build_parser()._action_groups}
    assert list(HELP_GROUPS) == [t for t in groups if t in HELP_GROUPS]
    names = [f.name for f in dataclasses.fields(TrainConfig)]
    assert [n for title in HELP_GROUPS for n in groups[title]] == names  # each field once, in order
    assert groups["SED"][0] == "unlabeled_batch_size" and "diagnostics_images" in groups["SED"]
    assert {"unlabeled_images", "verify_images"} <= set(groups["data"]) and "debug" in groups["system"]
    text = build_parser().format_help()
    assert text.index("\nSED:\n") < text.index("--ema-momentum") < text.index("\nevaluation and logging:\n")


def test_changed_settings_name_what_a_resume_changes():
    """A resumed run is warned of each setting that differs from its checkpoint's config and would change
    the run (a default that changed since it started included), and of nothing else."""
    saved = dataclasses.asdict(TrainConfig(method="sed", distill=True))  # as train.py's checkpoint holds it
    assert changed_settings(saved, TrainConfig(method="sed")) == ["--distill True -> False"]
    assert changed_settings(saved, TrainConfig(method="sed", distill=True, max_iter=5)) == []  # extending a run
    assert changed_settings(saved, TrainConfig(method="sed", distill=True, lr=0.1, seed=7, lr_steps=[5])) == [
        "--seed 0 -> 7", "--lr 0.0 -> 0.1", "--lr-steps [60000, 80000] -> [5]"]   # unnamed until stop 30
    assert changed_settings({**saved, "method": "supervised"}, TrainConfig(method="sed")) == []  # burn-in -> SED
    assert changed_settings(saved, TrainConfig(method="sed", distill=True, labeled_percent=5, batch_size=4)) == [
        "--labeled-percent 100.0 -> 5", "--batch-size 0 -> 4"]
    assert changed_settings(saved, TrainConfig(method="supervised")) == [
        "--method sed -> supervised (its teacher is not used)"]




@pytest.mark.parametrize("argv, unused", [
    ([], []),
    (["--method", "sed", "--scale-target", "mutual", "--weight-gamma", "2"], []),
    (["--unlabeled-batch-size", "8", "--pseudo-threshold", "0.3", "--ema-momentum", "0.99"],
     ["--ema-momentum", "--pseudo-threshold", "--unlabeled-batch-size"]),
    (["--method", "sed", "--no-scale-consistency", "--scale-target", "mutual", "--no-reweight", "--weight-floor", "0.1"],
     ["--scale-target", "--weight-floor"]),
    (["--method", "sed", "--distill", "--no-hard-pseudo-labels", "--pseudo-threshold", "0.5"], ["--pseudo-threshold"]),
    (["--method", "sed", "--target-sharpen", "0.5", "--distill-reg-threshold", "0"],   # since stop 32
     ["--distill-reg-threshold", "--target-sharpen"]),
    (["--method", "sed", "--scale-target", "teacher", "--target-sharpen", "0.5", "--distill-reg-weight", "1",
      "--distill-reg-threshold", "0"], []),
    (["--method", "sed", "--distill", "--target-sharpen", "0.5"], []),
    (["--method", "sed", "--no-reweight", "--distill-norm", "weight"], ["--distill-norm"]),  # since stop 35
    (["--method", "sed", "--no-reweight", "--distill-norm", "split"], []),
    (["--method", "sed", "--no-scale-consistency", "--no-small-view-antialias", "--burn-in-iters", "0",  # stop 36
      "--no-burn-in-copy", "--distill-smooth-l1-beta", "1"],
     ["--distill-smooth-l1-beta"]),   # switches turned off are not named
    (["--method", "sed", "--distill", "--no-hard-pseudo-labels", "--distill-reg-weight", "1", "--reweight-anchors",
      "--no-confidence-weighted-deltas", "--distill-smooth-l1-beta", "1"], []),
    (["--method", "sed", "--no-distill", "--no-scale-consistency", "--no-reweight", "--no-scale-roi"], []),
    (["--method", "sed", "--hard-label-rois", "teacher", "--hard-label-roi-fraction", "0.5"],
     ["--hard-label-roi-fraction"]),
    (["--method", "sed", "--no-distill", "--no-scale-consistency", "--hard-label-rois", "teacher",
      "--distill-temperature", "2", "--teacher-proposals", "64"],
     ["--distill-temperature", "--hard-label-rois", "--teacher-proposals"]),
])
def test_unused_settings_are_named(argv, unused):
    """A setting given for a method or component the run does not use (silently ignored until stop 30)."""
    assert unused_settings(parse_args(argv, check_files=False)) == unused


def test_the_flags_of_stop_36_are_unused_where_they_change_nothing():
    """The design choices made flags at stop 36 join unused_fields where their component is off."""
    cfg = parse_args(["--method", "sed", "--no-scale-consistency", "--burn-in-iters", "0"], check_files=False)
    assert {"small_view_antialias", "burn_in_copy", "distill_smooth_l1_beta", "confidence_weighted_deltas",
            "scale_rpn", "distill_rpn", "distill_roi"} <= unused_fields(cfg)
    cfg = parse_args(["--method", "sed", "--distill", "--no-hard-pseudo-labels", "--distill-reg-weight", "1"],
                     check_files=False)
    assert "hard_label_box_losses" in unused_fields(cfg)
    assert not {"distill_smooth_l1_beta", "confidence_weighted_deltas", "small_view_antialias", "burn_in_copy",
                "scale_rpn", "distill_rpn", "distill_roi"} & unused_fields(cfg)
