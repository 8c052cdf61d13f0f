"""make bench's --parts: which comparisons run, and the trained-like weights every part runs on (the comparisons
themselves are measurements, not tests)."""
import argparse
import dataclasses

import pytest
import torch
import torchvision

from sed import bench
from sed.config import TrainConfig, build_parser
from sed.experiment import ROWS


def run_parts(monkeypatch, parts):
    calls = []
    monkeypatch.setattr(bench, "compare", lambda kind, sides, *rest: calls.append((kind, [s[2] for s in sides])))
    monkeypatch.setattr(bench, "trained_like", lambda state, *rest: (state, 0.0, 0.0, 0.0))
    bench.main(["--parts", *parts, "--num-classes", "2"])
    return calls


def test_parts_runs_only_the_named_comparisons(monkeypatch):
    assert run_parts(monkeypatch, ["sed-figure1"]) == [
        ("SED fig.1 1+4 vs sup 5", ["sed step, figure 1", "supervised, same images"])]
    assert [kind for kind, _ in run_parts(monkeypatch, ["detector", "sed"])] == [
        "train step (batch 2)", "inference (batch 2)", "SED 1+4 vs sup 5"]


def test_teacher_student_parts_compare_with_supervised_and_with_the_default(monkeypatch):
    assert run_parts(monkeypatch, ["teacher-student", "sed-over-ts"]) == [
        ("teacher-student 1+4 vs sup 5", ["teacher-student step", bench.SUPERVISED]),
        ("SED 1+4 vs t-s 1+4", ["sed step", "teacher-student step"])]


def test_every_part_names_both_sides_of_its_comparison(monkeypatch):
    """Each step kind of PARTS has its printed label (bench.LABELS): all parts run to their comparison."""
    calls = run_parts(monkeypatch, list(bench.PARTS))
    assert [kind for kind, _ in calls] == [name for name, _, _ in bench.PARTS.values()]


def test_the_teacher_student_step_is_the_experiment_s_teacher_student_row():
    """The bench's baseline step runs the config of `sed.experiment`'s teacher_student row flags."""
    parsed = TrainConfig(**vars(build_parser().parse_args(ROWS["teacher_student"])))
    assert parsed == dataclasses.replace(TrainConfig(), **bench.SED_STEPS["teacher-student step"])


def test_compare_speed_reverses_the_order_every_other_round_and_drops_the_warm_up(monkeypatch):
    calls, clock = [], iter([9.0, 9.0, 2.0, 1.0, 4.0, 3.0, 6.0, 5.0, 8.0, 7.0])  # warm-up a, b; then round by round
    monkeypatch.setattr(bench, "timed", lambda step, device: (step(), next(clock))[1])
    steps = {"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}
    times = bench.compare_speed(steps, repeats=4, device=None)
    assert calls == ["a", "b", "b", "a", "a", "b", "b", "a", "a", "b"]
    assert times == {"a": [1.0, 4.0, 5.0, 8.0], "b": [2.0, 3.0, 6.0, 7.0]}  # round 1 ran b first: b 2.0, a 1.0


def test_round_ratios_compare_within_rounds():
    assert bench.round_ratios([2.0, 3.0, 8.0], [1.0, 2.0, 4.0]) == (2.0, 1.5, 2.0)


def test_inputs_have_labels_of_the_model_s_classes():
    """Labels 1..5, or 1..C for fewer classes; with 5 or more classes the same inputs whatever C."""
    _, few = bench.make_inputs(3, 64, 64, "cpu", num_classes=2)
    assert {int(v) for t in few for v in t["labels"]} <= {1, 2}
    _, five = bench.make_inputs(3, 64, 64, "cpu", num_classes=5)
    _, many = bench.make_inputs(3, 64, 64, "cpu")
    assert all(torch.equal(a["labels"], b["labels"]) and torch.equal(a["boxes"], b["boxes"]) for a, b in zip(five, many))


def test_sizes_and_counts_are_checked(capsys):
    """--height 0 or --threads 0 were a traceback (or, for --max-size < --min-size, a silent misfit) until stop 31."""
    for argv, message in [(["--height", "0", "--threads", "-1"], "error: must be >= 1: --threads -1, --height 0"),
                          (["--min-size", "800", "--max-size", "600"],
                           "error: --max-size must be >= --min-size, got 600 and 800")]:
        with pytest.raises(SystemExit) as stop:
            bench.main(argv)
        assert stop.value.code == 2 and capsys.readouterr().err.splitlines()[-1] == message


def test_trained_like_weights_propose_anchors_and_keep_as_many_pseudo_labels_as_a_labeled_image_has_boxes():
    """Zero box deltas: every proposal is an anchor (clipped to the image). The raised background bias leaves
    at most BOXES_PER_IMAGE pseudo-labels per unlabeled image, and a smaller raise leaves more (bisection's
    invariant). Nothing else changes."""
    torch.manual_seed(0)
    state = torchvision.models.detection.fasterrcnn_resnet50_fpn(weights=None, weights_backbone=None,
                                                                  num_classes=3).state_dict()
    args = argparse.Namespace(num_classes=2, height=128, width=192, min_size=128, max_size=192)
    new, offset, before, after = bench.trained_like(state, args, "cpu", steps=8)
    assert before > bench.BOXES_PER_IMAGE >= after and offset > 0
    assert all(not new[k].any() for k in bench.REGRESSION)
    assert torch.equal(new[bench.BACKGROUND_BIAS][1:], state[bench.BACKGROUND_BIAS][1:])   # one scalar raised
    assert all(torch.equal(new[k], v) for k, v in state.items() if k not in (bench.BACKGROUND_BIAS, *bench.REGRESSION))
    images, _ = bench.make_inputs(bench.SED_LABELED + bench.SED_UNLABELED, 128, 192, "cpu", num_classes=2)
    lower = new[bench.BACKGROUND_BIAS] - torch.tensor([64 / 2**8, 0, 0])   # one bisection step below
    counts = []
    for weights in (new, {**new, bench.BACKGROUND_BIAS: lower}):
        model = bench.our_model(args, weights).eval()
        weak, _ = model.transform(images[bench.SED_LABELED:], size_divisible=64)
        counts.append(bench.pseudo_labels_per_image(model, weak, TrainConfig().pseudo_threshold))
    assert counts[0] == after and counts[1] > bench.BOXES_PER_IMAGE
    with torch.no_grad():
        features = model.features(weak.tensors)
        proposals, _ = model.rpn(weak, features)
    anchors = torch.cat(model.rpn.anchors(weak, features))   # [R, 4], the same for every image of the batch
    clipped = torchvision.ops.clip_boxes_to_image(anchors, weak.image_sizes[0])
    assert all((p[:, None] == clipped[None]).all(dim=2).any(dim=1).all() for p in proposals)
