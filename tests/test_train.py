"""train.py end to end on tiny synthetic data: exact resume, non-finite loss, 2-process DDP (gloo)."""
import importlib.util
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import sed
from sed.checkpoint import load_checkpoint
from sed.data import CocoDetection, make_loader
from sed.splits import detectron2_image_ids
from sed.synthetic import generate

ROOT = Path(__file__).resolve().parents[1]


def load_script(name):
    spec = importlib.util.spec_from_file_location(name, ROOT / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


train, eval_script = load_script("train"), load_script("eval")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return generate(tmp_path_factory.mktemp("shapes"), num_train=12, num_val=4, seed=0, image_size=64)


def argv(data, out, max_iter, *extra):
    return ["--train-ann", str(data["train_ann"]), "--train-images", str(data["train_images"]),
            "--backbone", "resnet18", "--backbone-weights", "none", "--min-size", "48", "64",
            "--max-size", "80", "--max-iter", str(max_iter), "--batch-size", "2", "--lr", "0.01",
            "--warmup-iters", "2", "--lr-steps", "3", "--log-every", "1", "--checkpoint-every", "2",
            "--workers", "0", "--device", "cpu", "--seed", "3", "--out", str(out), *extra]


def test_learning_rate_schedule():
    cfg = train.parse_args(["--lr", "0.1", "--warmup-iters", "10", "--warmup-factor", "0.001",
                            "--lr-steps", "20", "30", "--lr-gamma", "0.1"], check_files=False)
    assert train.learning_rate(0, cfg) == pytest.approx(1e-4)
    assert train.learning_rate(5, cfg) == pytest.approx(0.1 * (0.001 * 0.5 + 0.5))
    assert [train.learning_rate(i, cfg) for i in (10, 19, 20, 29, 30)] == \
        pytest.approx([0.1, 0.1, 0.01, 0.01, 0.001])


def test_wrong_class_count(data, tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:
        train.main(argv(data, tmp_path, 1, "--num-classes", "3"))
    assert stop.value.code == 1 and capsys.readouterr().err == (
        "error: --num-classes: wrong class count: --num-classes 3 but the training annotations have 5 categories\n")


def test_resume_is_exact(data, tmp_path):
    """3 iterations in one go == 2 iterations, then --resume to 3 (the resumed part with workers=2):
    same weights and momentum, bit for bit."""
    train.main(argv(data, tmp_path / "full", 3))
    train.main(argv(data, tmp_path / "split", 2))
    assert load_checkpoint(tmp_path / "split" / "last.pt")["iteration"] == 2
    train.main(argv(data, tmp_path / "split", 3, "--resume", str(tmp_path / "split" / "last.pt"),
                    "--workers", "2"))
    full, split = (load_checkpoint(tmp_path / d / "last.pt") for d in ("full", "split"))
    assert split["iteration"] == 3
    for name, tensor in full["model"].items():
        assert torch.equal(tensor, split["model"][name]), name
    assert full["optimizer"]["state"].keys() == split["optimizer"]["state"].keys()
    for k, state in full["optimizer"]["state"].items():
        assert torch.equal(state["momentum_buffer"], split["optimizer"]["state"][k]["momentum_buffer"])
    log = [json.loads(line) for line in (tmp_path / "split" / "log.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in log] == [1, 2, 3]
    assert {"loss_classifier", "loss_box_reg", "loss_objectness", "loss_rpn_box_reg", "total", "lr",
            "data_time", "step_time"} <= set(log[0])
    config = json.loads((tmp_path / "full" / "config.json").read_text())
    assert config["num_classes"] == 5 and full["label_to_cat_id"] == {1: 1, 2: 3, 3: 7, 4: 8, 5: 12}


def test_an_unreadable_image_mid_run_saves_the_iterations_before_it(data, tmp_path, monkeypatch, capsys):
    """An image that cannot be read at iteration 1 (of a run that checkpoints every 2): last.pt at 1 and one
    line saying so, and the run resumed once the image is repaired ends as one that never met it (until
    stop 35 the iterations since the last checkpoint were lost)."""
    train.main(argv(data, tmp_path / "full", 3))
    load_rgb, calls = sed.data.load_rgb, []

    def unreadable_third(path, what="image"):   # batch size 2: the first image of iteration 1
        calls.append(path)
        if len(calls) == 3:
            raise sed.data.UserError(f"{path}: cannot read the image ({what}): image file is truncated")
        return load_rgb(path, what)
    monkeypatch.setattr(sed.data, "load_rgb", unreadable_third)
    with pytest.raises(SystemExit) as stop:
        train.main(argv(data, tmp_path / "run", 3))
    last = tmp_path / "run" / "last.pt"
    assert stop.value.code == 1 and capsys.readouterr().err.splitlines()[-1] == (
        f"error: {calls[2]}: cannot read the image (image id {int(Path(calls[2]).stem) + 1}): image file is "
        f"truncated; saved {last} at iteration 1: repair or replace the image, then --resume it")   # ids from 1
    monkeypatch.setattr(sed.data, "load_rgb", load_rgb)
    train.main(argv(data, tmp_path / "run", 3, "--resume", str(last)))
    full, resumed = (load_checkpoint(tmp_path / d / "last.pt") for d in ("full", "run"))
    assert all(torch.equal(tensor, resumed["model"][name]) for name, tensor in full["model"].items())


def test_resume_asks_for_no_backbone_weights(data, tmp_path, monkeypatch):
    """--resume replaces every weight, so the default --backbone-weights imagenet is not downloaded (until
    stop 35 a resume on an offline node failed for want of the ImageNet file)."""
    train.main(argv(data, tmp_path, 2))
    asked, build = [], sed.build_model
    monkeypatch.setattr(sed, "build_model", lambda backbone_weights, **options: asked.append(backbone_weights)
                        or build(backbone_weights=None, **options))
    train.main(argv(data, tmp_path, 3, "--backbone-weights", "imagenet", "--resume", str(tmp_path / "last.pt")))
    assert asked == [None]


def test_a_resume_on_other_classes_is_refused(data, tmp_path, capsys):
    """Annotations whose class names changed (here two swapped) would give label i another meaning
    mid-training: one line, as eval.py says for a validation set (silently remapped until stop 35)."""
    train.main(argv(data, tmp_path / "run", 2))
    coco = json.loads(Path(data["train_ann"]).read_text())
    names = [c["name"] for c in coco["categories"]]
    for category, name in zip(coco["categories"], [names[1], names[0], *names[2:]]):
        category["name"] = name
    swapped = tmp_path / "swapped.json"
    swapped.write_text(json.dumps(coco))
    with pytest.raises(SystemExit) as stop:
        train.main([*argv(data, tmp_path / "run", 3, "--resume", str(tmp_path / "run" / "last.pt")),
                    "--train-ann", str(swapped)])
    assert stop.value.code == 1 and capsys.readouterr().err.endswith(
        f"error: --resume: {tmp_path / 'run' / 'last.pt'} was trained on the classes {names}, the annotations "
        f"have {[names[1], names[0], *names[2:]]}: resume with the annotations it was trained with\n")


def test_evaluation_draws_no_random_number_of_the_training(data, tmp_path):
    """3 iterations evaluated after each == 3 iterations without evaluation, bit for bit: the evaluation
    (its loader draws a seed from torch's generator) runs with the training's RNG state restored after it,
    so the checkpoint saved before it resumes exactly."""
    val = ["--val-ann", str(data["val_ann"]), "--val-images", str(data["val_images"])]
    train.main(argv(data, tmp_path / "evaluated", 3, *val, "--eval-every", "1"))
    train.main(argv(data, tmp_path / "plain", 3))
    evaluated, plain = (load_checkpoint(tmp_path / d / "last.pt") for d in ("evaluated", "plain"))
    for name, tensor in plain["model"].items():
        assert torch.equal(tensor, evaluated["model"][name]), name
    metrics = (tmp_path / "evaluated" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["iteration"] for line in metrics] == [1, 2, 3]


@pytest.mark.parametrize("nan_at, kept", [(3, "last good checkpoint kept"), (1, "no checkpoint written yet")])
def test_non_finite_loss_stops_and_keeps_last_checkpoint(data, tmp_path, monkeypatch, capsys, nan_at, kept):
    """The line names the iteration and whether a checkpoint exists (before stop 30 it claimed one when the
    first iteration failed)."""
    calls = []

    def nan_at_step(model, images, targets, cfg):
        losses = supervised_step(model, images, targets, cfg)
        calls.append(1)
        if len(calls) == nan_at:
            losses["loss_box_reg"] = losses["loss_box_reg"] * math.nan
            losses["total"] = sum(v for k, v in losses.items() if k != "total")
        return losses

    supervised_step = train.supervised_step
    monkeypatch.setattr(train, "supervised_step", nan_at_step)
    with pytest.raises(SystemExit) as stop:
        train.main(argv(data, tmp_path, 6))
    assert stop.value.code == (f"stopped: non-finite loss at iteration {nan_at - 1}; {kept} (a lower --lr or a "
                               "--grad-clip may keep it finite)")
    err = capsys.readouterr().err
    assert f'non-finite loss at iteration {nan_at - 1}: {{"loss_' in err and "rank 0" not in err   # one process
    if nan_at == 1:
        assert not (tmp_path / "last.pt").exists()
        return
    ckpt = load_checkpoint(tmp_path / "last.pt")  # written after iteration 2, untouched since
    assert ckpt["iteration"] == 2
    assert all(torch.isfinite(t).all() for t in ckpt["model"].values() if t.is_floating_point())


def process_tree(pid):
    """pid and all its descendants (Linux /proc)."""
    with open(f"/proc/{pid}/task/{pid}/children") as f:
        return [pid, *(p for child in f.read().split() for p in process_tree(int(child)))]


def interrupt_after_two_iterations(cmd, out, signum=signal.SIGINT, every_process=False):
    """Runs cmd in a process group of its own and, once OUT/log.jsonl has 2 lines, sends signum to the whole
    group (SIGINT: as Ctrl-C does) or to every process of its tree (SIGTERM: as Slurm's scancel does; torchrun
    puts each rank in a process group of its own) -> (exit status, stderr)."""
    proc = subprocess.Popen(cmd, cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    log, deadline = out / "log.jsonl", time.time() + 240
    while proc.poll() is None and time.time() < deadline and not (log.exists() and log.read_text().count("\n") >= 2):
        time.sleep(0.1)
    if every_process:
        for pid in process_tree(proc.pid):
            os.kill(pid, signum)
    else:
        os.killpg(proc.pid, signum)
    _, err = proc.communicate(timeout=240)
    return proc.returncode, err


@pytest.mark.parametrize("launcher, signum", [("python", signal.SIGINT), ("torchrun", signal.SIGINT),
                                             ("python", signal.SIGTERM), ("torchrun", signal.SIGTERM)],
                         ids=["ctrl-c", "torchrun-ctrl-c", "sigterm", "torchrun-slurm"])
def test_a_signal_stops_after_its_iteration_and_saves(data, tmp_path, launcher, signum):
    """SIGINT or SIGTERM to every process, data loader workers included, as Ctrl-C and Slurm's scancel send
    them: train.py finishes the iteration in progress, writes last.pt although no checkpoint is due, says
    so in one line, exits 128 + the signal's number, and --resume continues from there (SIGTERM: until
    stop 30 the killed workers failed the iteration, and nothing was saved). Under torchrun, which
    forwards the signal to each rank's process group a second time, both ranks stop after the same
    iteration with identical weights (the exit status and the traceback after our line are torchrun's own)."""
    out = tmp_path / "run"
    flags = argv(data, out, 1000, "--checkpoint-every", "1000", "--workers", "1")
    launch = [sys.executable] if launcher == "python" else [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    status, err = interrupt_after_two_iterations([*launch, str(ROOT / "train.py"), *flags, "--batch-size", "1"], out,
                                                 signum, every_process=signum == signal.SIGTERM)
    name = signal.Signals(signum).name
    stopped = load_checkpoint(out / "last.pt")["iteration"]
    line = (f"stopped by {name} after iteration {stopped}: saved {out / 'last.pt'}; continue with the same flags "
            f"and --resume {out / 'last.pt'}")
    assert 2 <= stopped < 1000 and f"{name}: stopping after this iteration" in err, err[-3000:]
    if launcher == "python":
        assert status == 128 + signum and "Traceback" not in err and err.splitlines()[-1] == line, err[-3000:]
        train.main(argv(data, out, stopped + 1, "--resume", str(out / "last.pt"), "--batch-size", "1"))
        assert load_checkpoint(out / "last.pt")["iteration"] == stopped + 1
    else:
        assert line in err.splitlines(), err[-3000:]
        saved = [json.loads(r) for r in (out / "log.jsonl").read_text().splitlines() if "param_checksums" in r]
        assert saved[-1]["iteration"] == stopped and len(set(saved[-1]["param_checksums"])) == 1


def test_stop_requests_act_on_the_first_signal_and_on_a_second_ctrl_c():
    before = signal.getsignal(signal.SIGTERM)
    with train.stop_requests(announce=False) as received:
        os.kill(os.getpid(), signal.SIGTERM)
        os.kill(os.getpid(), signal.SIGTERM)   # a repeat (torchrun forwarding it, a scheduler): ignored
        assert received == [signal.SIGTERM]
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
    with train.stop_requests(announce=False, ctrl_c_twice_stops=False) as received:   # under torchrun
        os.kill(os.getpid(), signal.SIGINT)
        os.kill(os.getpid(), signal.SIGINT)
        assert received == [signal.SIGINT]
    assert signal.getsignal(signal.SIGTERM) is before


SED_FLAGS = ["--method", "sed", "--labeled-percent", "50", "--burn-in-iters", "1", "--unlabeled-batch-size", "2",
             "--teacher-proposals", "32", "--ema-momentum", "0.9", "--grad-clip", "10"]


def test_sed_resume_is_exact_with_the_teacher(data, tmp_path, capsys):
    """SED with every term: 3 iterations in one go == 2, then --resume to 3: student, teacher and momentum
    bit for bit (the unlabeled stream and the strong-view RNG continue exactly)."""
    flags = [*SED_FLAGS, "--distill", "--diagnostics-images", "0"]
    train.main(argv(data, tmp_path / "full", 3, *flags))
    train.main(argv(data, tmp_path / "split", 2, *flags))
    capsys.readouterr()
    changed = [f for f in flags if f != "--distill"]  # today's default, not the checkpoint's setting
    train.main(argv(data, tmp_path / "changed", 3, *changed, "--resume", str(tmp_path / "split" / "last.pt")))
    assert "warning: --resume: this run's settings differ from the checkpoint's (--distill True -> False)" \
        in capsys.readouterr().err
    train.main(argv(data, tmp_path / "split", 3, *flags, "--resume", str(tmp_path / "split" / "last.pt")))
    assert "warning" not in capsys.readouterr().err  # the same SED settings as the checkpoint's
    full, split = (load_checkpoint(tmp_path / d / "last.pt") for d in ("full", "split"))
    for key in ("model", "teacher"):
        for name, tensor in full[key].items():
            assert torch.equal(tensor, split[key][name]), (key, name)
    assert not all(torch.equal(full["model"][k], full["teacher"][k]) for k in full["model"])  # EMA lags
    log = [json.loads(line) for line in (tmp_path / "full" / "log.jsonl").read_text().splitlines()]
    assert "loss_rpn_distill_cls" not in log[0]  # iteration 1 is the burn-in
    assert {"loss_rpn_distill_cls", "loss_roi_distill_reg", "loss_scale_rpn_cls", "loss_scale_roi_cls"} <= set(log[2])
    train.main(argv(data, tmp_path / "again", 3, *flags, "--resume", str(tmp_path / "full" / "last.pt")))
    assert ("warning: --resume: the checkpoint is at iteration 3, --max-iter is 3: nothing to train; raise "
            "--max-iter to go on") in capsys.readouterr().err


@pytest.mark.parametrize("switches", [["--no-distill", "--no-scale-consistency", "--no-reweight"],
                                      ["--distill", "--no-scale-consistency", "--hard-pseudo-labels"]])
def test_sed_ablations_run_and_evaluate_teacher_and_student(data, tmp_path, switches):
    train.main(argv(data, tmp_path, 2, *SED_FLAGS, *switches, "--diagnostics-images", "4",
                    "--val-ann", str(data["val_ann"]), "--val-images", str(data["val_images"])))
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["distill"] == ("--distill" in switches)
    assert config["scale_consistency"] is False
    log = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert "loss_hard_classifier" in log[1] and all(math.isfinite(v) for v in log[1].values())
    assert ("loss_roi_distill_cls" in log[1]) == ("--distill" in switches)
    assert not any(k.startswith("loss_scale") or k.startswith("loss_hard_scale") for k in log[1])
    assert "pl_recall@0.7" in log[-1] or "pl_num_objects" in log[-1]  # diagnostics after the evaluation
    metrics = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [m["model"] for m in metrics] == ["teacher", "student"]


@pytest.mark.parametrize("unsup_weight, loaders", [("0", 1), ("1", 2)])
def test_unsup_weight_0_reads_no_unlabeled_image(data, tmp_path, monkeypatch, unsup_weight, loaders):
    """--unsup-weight 0 (the EMA teacher of supervised training) builds no unlabeled loader (until stop 35
    its workers decoded 2 unlabeled images per iteration for nothing); the teacher is still trained."""
    made = []
    monkeypatch.setattr(train, "make_loader", lambda dataset, *a: made.append(dataset) or make_loader(dataset, *a))
    train.main(argv(data, tmp_path, 2, *SED_FLAGS, "--unsup-weight", unsup_weight))
    assert len(made) == loaders
    assert "teacher" in load_checkpoint(tmp_path / "last.pt")


def test_a_batch_larger_than_the_labeled_images_warns_in_one_line(data, tmp_path, capsys):
    train.main(argv(data, tmp_path, 1, "--labeled-percent", "25", "--batch-size", "4"))
    err = capsys.readouterr().err
    assert "warning: --batch-size 4 is more than the 3 labeled images: images repeat within a batch\n" in err
    assert "UserWarning" not in err   # not Python's two-line format


def test_sed_needs_unlabeled_images(data, tmp_path, capsys):
    """None at all, or a split file whose labeled list takes every image: one line, not a sampler's error."""
    split = tmp_path / "split.json"
    split.write_text(json.dumps({"50": {"1": list(range(len(detectron2_image_ids(
        CocoDetection(data["train_ann"], data["train_images"])))))}}))
    for flags in (["--method", "sed"], ["--method", "sed", "--split-file", str(split), "--labeled-percent", "50"]):
        with pytest.raises(SystemExit) as stop:
            train.main(argv(data, tmp_path, 1, *flags))
        assert stop.value.code == 1
        assert capsys.readouterr().err.startswith("error: --method: sed needs unlabeled images: give")


@pytest.mark.parametrize("method", ["supervised", "sed"])
def test_two_process_ddp_gloo(data, tmp_path, method, capsys):
    """torchrun with 2 CPU processes: replicas stay identical (checksums logged by rank 0), each rank
    evaluates its shard, and the checkpoint loads in eval.py. Resumed by one process, the run is warned
    that it goes on with half the batch (silent until stop 31)."""
    out = tmp_path / "ddp"
    extra = SED_FLAGS + ["--diagnostics-images", "0"] if method == "sed" else []
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--standalone",
           str(ROOT / "train.py"), *argv(data, out, 3, "--val-ann", str(data["val_ann"]),
                                         "--val-images", str(data["val_images"]), *extra, "--batch-size", "1")]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    checksums = [r["param_checksums"] for r in log if "param_checksums" in r]
    assert len(checksums) == 2 and all(len(c) == 2 and c[0] == c[1] for c in checksums)  # iterations 2, 3
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert metrics[-1]["iteration"] == 3 and "AP" in metrics[-1]
    eval_script.main(["--ckpt", str(out / "last.pt"), "--val-ann", str(data["val_ann"]),
                      "--val-images", str(data["val_images"]), "--device", "cpu", "--workers", "0",
                      "--json", str(out / "m.json")])
    assert set(json.loads((out / "m.json").read_text())) == set(train.METRIC_NAMES)
    if method == "supervised":
        capsys.readouterr()
        train.main(argv(data, out, 4, "--batch-size", "1", "--resume", str(out / "last.pt")))
        assert ("warning: --resume: this run's settings differ from the checkpoint's (processes 2 -> 1: 2 -> 1 "
                "labeled images per iteration, another data order); its flags and process count continue its "
                "run unchanged") in capsys.readouterr().err.splitlines()


def test_tensorboard_writes_events(data, tmp_path):
    pytest.importorskip("tensorboard")  # optional dependency (requirements-optional.txt)
    train.main(argv(data, tmp_path, 1, "--tensorboard"))
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))


def test_an_out_that_holds_a_run_is_refused_and_a_refused_resume_changes_nothing(data, tmp_path, capsys):
    """Rerunning the first command into its --out (after a crash) emptied the logs and overwrote last.pt;
    a --resume refused for another model had already rewritten config.json (both until stop 30); another
    run's checkpoint resumed into it overwrote its checkpoint and mixed the logs (until stop 35)."""
    out = tmp_path / "run"
    train.main(argv(data, out, 2))
    before = {name: (out / name).read_bytes() for name in ("config.json", "log.jsonl", "last.pt")}
    with pytest.raises(SystemExit) as stop:
        train.main(argv(data, out, 2))
    assert stop.value.code == 2 and f"--out: {out} holds a run already" in capsys.readouterr().err
    with pytest.raises(SystemExit) as stop:
        train.main(argv(data, out, 4, "--fpn-channels", "32", "--resume", str(out / "last.pt")))
    assert stop.value.code == 1 and capsys.readouterr().err.endswith(
        f"error: --resume: {out / 'last.pt'} holds another model (--fpn-channels 256 -> 32): resume with the settings "
        "and annotations it was trained with (its config.json)\n")   # until stop 31 only "do not fit this model"
    other = tmp_path / "other.pt"   # another run's checkpoint: resumed into this --out it overwrote last.pt (stop 35)
    shutil.copy(out / "last.pt", other)
    with pytest.raises(SystemExit) as stop:
        train.main(argv(data, out, 4, "--resume", str(other)))
    assert stop.value.code == 2 and f"--out: {out} holds another run ({out / 'last.pt'}) than --resume {other}" \
        in capsys.readouterr().err
    assert {name: (out / name).read_bytes() for name in before} == before


def test_resume_after_a_kill_in_a_log_line_and_into_float16(data, tmp_path, capsys):
    """An unfinished last log line (a kill during its write) is dropped, not a JSONDecodeError; a float32
    checkpoint's empty GradScaler state lets --dtype float16 start a new loss scale (a traceback before)."""
    out = tmp_path / "run"
    train.main(argv(data, out, 2))
    with open(out / "log.jsonl", "a") as f:
        f.write('{"iteration": 3, "lo')
    train.main(argv(data, out, 3, "--dtype", "float16", "--resume", str(out / "last.pt")))
    assert "--dtype float32 -> float16" in capsys.readouterr().err
    assert load_checkpoint(out / "last.pt")["iteration"] == 3
    assert [json.loads(line)["iteration"] for line in (out / "log.jsonl").read_text().splitlines()] == [1, 2, 3]


def test_settings_that_change_nothing_are_warned_of(data, tmp_path, capsys):
    """SED settings under --method supervised, and a burn-in as long as the run, say so in one line each."""
    train.main(argv(data, tmp_path / "sup", 1, "--pseudo-threshold", "0.3", "--ema-momentum", "0.5"))
    err = capsys.readouterr().err
    assert ("warning: --ema-momentum, --pseudo-threshold: not used by this run (--method supervised); they change "
            "nothing") in err
    assert ("warning: --warmup-iters 2 >= --max-iter 1: the whole run is the lr warm-up (lr 1e-05 rising, never "
            "reaching --lr 0.01)") in err.splitlines()   # since stop 31 (argv's --warmup-iters 2)
    train.main(argv(data, tmp_path / "sed", 1, *SED_FLAGS[:4], "--burn-in-iters", "1"))
    assert "warning: --burn-in-iters 1 >= --max-iter 1: the whole run is the supervised burn-in, no SED iteration" \
        in capsys.readouterr().err
    flags = argv(data, tmp_path / "steps", 1)
    at = flags.index("--lr-steps")
    train.main(flags[:at] + flags[at + 2:])
    assert ("warning: --lr-steps 60000 80000 (the default, for --max-iter 90000) are not before --max-iter 1: the lr "
            "never decays\n") in capsys.readouterr().err


def test_default_lr_steps_beyond_the_run_are_named_with_the_1x_recipe_s_places():
    """Only the default steps are questioned: steps set by hand beyond --max-iter are a choice (the
    experiment's burn-ins are the first part of a longer schedule)."""
    message = train.lr_steps_warning(train.parse_args(["--max-iter", "5000"], check_files=False))
    assert message.endswith("the lr never decays; the 1x recipe's places for this run: --lr-steps 3333 4444")
    assert train.lr_steps_warning(train.parse_args(["--max-iter", "60001"], check_files=False)) is None
    assert train.lr_steps_warning(train.parse_args(["--max-iter", "600", "--lr-steps", "825"], check_files=False)) \
        is None


def test_an_unlabeled_json_whose_images_are_elsewhere_names_unlabeled_images(data, tmp_path, capsys):
    """COCO's unlabeled2017 lies in a folder of its own; --unlabeled-ann reads from --train-images (the helper
    probe of stop 31 found the line gave no way out)."""
    coco = json.loads(Path(data["val_ann"]).read_text())
    for image in coco["images"]:
        image["file_name"] = "unlabeled2017/" + image["file_name"]   # not under --train-images
    (tmp_path / "unlabeled.json").write_text(json.dumps(coco))
    with pytest.raises(SystemExit) as stop:
        train.main(argv(data, tmp_path / "run", 2, "--labeled-ann", str(data["train_ann"]), "--unlabeled-ann",
                        str(tmp_path / "unlabeled.json"), "--method", "sed"))
    assert stop.value.code == 1
    assert capsys.readouterr().err.splitlines()[-1].endswith(
        "; --unlabeled-ann's images are read from --train-images: a folder of their own (COCO's unlabeled2017) "
        "goes in as --unlabeled-images DIR, no JSON needed")
