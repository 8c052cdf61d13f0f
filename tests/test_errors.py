"""Every command turns a user error into one line `error: <file or flag>: <problem>` on stderr and a
non-zero exit, without a traceback (sed/errors.py), on tiny synthetic data.

Each bad input runs the command as a real subprocess, two at a time (each pays a few seconds for
importing torch); the checkpoint they share is trained in this process."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
import torchvision

from sed.backbone import imagenet_resnet
from sed.checkpoint import load_checkpoint
from sed.data import CocoDetection, TrainBatchSampler
from sed.distributed import DistInfo, main_warns_only
from sed.errors import UserError, show_warning, user_errors

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "SED_DEBUG": ""}


def train_args(data, out, *extra, max_iter=1):
    return ["train.py", "--train-ann", str(data["train_ann"]), "--train-images", str(data["train_images"]),
            "--backbone", "resnet18", "--backbone-weights", "none", "--min-size", "48", "--max-size", "64",
            "--max-iter", str(max_iter), "--batch-size", "2", "--lr", "0.01", "--warmup-iters", "0",
            "--lr-steps", "100", "--log-every", "1", "--checkpoint-every", "1", "--workers", "0",
            "--device", "cpu", "--seed", "3", "--rpn-proposals", "64", "32", "--roi-batch-size", "32",
            "--out", str(out), *extra]


def run(args, timeout=300):
    """args: a script path relative to the repo, or ["-m", module, ...]."""
    return subprocess.run([sys.executable, *args], cwd=ROOT, env=ENV, capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture(scope="module")
def data(tiny_coco):
    return tiny_coco


@pytest.fixture(scope="module")
def ckpt(data, module_tmp):
    """A 1-iteration supervised checkpoint (in process: no subprocess cost)."""
    out = module_tmp / "run"
    _train_module().main(train_args(data, out)[1:])
    return out / "last.pt"


class _RunsCode:
    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def bad_inputs(data, ckpt, tmp):
    """{case: (argv, the file or flag the line must name)}; files written into tmp."""
    coco = json.loads(Path(data["train_ann"]).read_text())
    (tmp / "not_json.json").write_text("{'images': []")
    (tmp / "unknown_cat.json").write_text(json.dumps({**coco, "annotations": [
        {**coco["annotations"][0], "category_id": 99}, *coco["annotations"][1:]]}))
    (tmp / "bad_box.json").write_text(json.dumps({**coco, "annotations": [
        {**coco["annotations"][0], "bbox": [1, 2, "wide", 4]}, *coco["annotations"][1:]]}))
    (tmp / "missing_image.json").write_text(json.dumps({**coco, "images": [
        *coco["images"], {**coco["images"][0], "id": 999, "file_name": "not_there.png"}]}))
    wrong_size = [{**img, "width": img["width"] + 1} for img in coco["images"]]
    (tmp / "wrong_size.json").write_text(json.dumps({**coco, "images": wrong_size}))
    (tmp / "split.json").write_text(json.dumps({"10": {"1": [0]}}))
    (tmp / "unreadable.json").write_text("{}")
    (tmp / "unreadable.json").chmod(0)
    few_classes = {**coco, "categories": coco["categories"][:2],
                   "annotations": [a for a in coco["annotations"] if a["category_id"] in
                                   {c["id"] for c in coco["categories"][:2]}]}
    (tmp / "two_classes.json").write_text(json.dumps(few_classes))
    torch.save({"backbone.body.conv1.weight": torch.zeros(1)}, tmp / "torchvision.pth")
    torch.save({"model": {}, "iteration": 0, "config": {}, "x": _RunsCode(tmp / "pwned")}, tmp / "evil.pt")
    (tmp / "garbage.pt").write_bytes(b"not a checkpoint")
    (tmp / "file").write_text("")
    (tmp / "all_crowd.json").write_text(json.dumps({**coco, "annotations": [
        {**a, "iscrowd": 1} for a in coco["annotations"]]}))
    out = tmp / "out"
    ann = lambda name: ["--train-ann", str(tmp / name)]  # noqa: E731  (overrides the first --train-ann)
    val = ["--val-ann", str(data["val_ann"]), "--val-images", str(data["val_images"])]
    eval_cmd = ["eval.py", "--device", "cpu", "--workers", "0"]
    cases = {
        "train: annotation file is not JSON": (train_args(data, out, *ann("not_json.json")), "not_json.json"),
        "train: unknown category id": (train_args(data, out, *ann("unknown_cat.json")), "unknown_cat.json"),
        "train: malformed bbox": (train_args(data, out, *ann("bad_box.json")), "bad_box.json"),
        "train: missing annotation file": (train_args(data, out, *ann("nope.json")), "nope.json"),
        "train: unreadable annotation file": (train_args(data, out, *ann("unreadable.json")), "unreadable.json"),
        "train: missing image file": (train_args(data, out, *ann("missing_image.json")), "not_there.png"),
        "train: image size disagrees with the JSON": (
            train_args(data, out, *ann("wrong_size.json"), "--verify-images"), "000000.png"),
        "train: split file without the percent": (
            train_args(data, out, "--split-file", str(tmp / "split.json"), "--labeled-percent", "5"), "split.json"),
        "train: class count mismatch": (train_args(data, out, "--num-classes", "7"), "--num-classes"),
        "train: resume from a foreign checkpoint": (
            train_args(data, out, "--resume", str(tmp / "torchvision.pth")), "torchvision.pth"),
        "train: resume from a checkpoint with other classes": (
            train_args(data, tmp / "out2", *ann("two_classes.json"), "--resume", str(ckpt)), str(ckpt)),
        "train: bad flag value": (train_args(data, out, "--max-iter", "ten"), "--max-iter"),
        "train: --out is a file": (train_args(data, tmp / "file"), "--out"),
        "train: no box to train on": (train_args(data, out, *ann("all_crowd.json")), "--train-ann"),
        "eval: no box to evaluate on": ([*eval_cmd, "--ckpt", str(ckpt), "--val-ann", str(tmp / "all_crowd.json"),
                                         "--val-images", str(data["train_images"])], "all_crowd.json"),
        "train: val categories differ from the training's": (
            train_args(data, out, "--val-ann", str(tmp / "two_classes.json"), "--val-images",
                       str(data["train_images"])), "--val-ann"),
        "eval: checkpoint that would run code": (
            [*eval_cmd, "--ckpt", str(tmp / "evil.pt"), *val], "evil.pt"),
        "eval: not a checkpoint": ([*eval_cmd, "--ckpt", str(tmp / "garbage.pt"), *val], "garbage.pt"),
        "eval: classes differ from the checkpoint's": (
            [*eval_cmd, "--ckpt", str(ckpt), "--val-ann", str(tmp / "two_classes.json"),
             "--val-images", str(data["train_images"])], "two_classes.json"),
        "eval: missing --val-images": ([*eval_cmd, "--ckpt", str(ckpt), "--val-ann", str(data["val_ann"])],
                                       "--val-images"),
        "synthetic: bad size": (["-m", "sed.synthetic", str(tmp / "syn"), "--image-size", "4"], "--image-size"),
        "synthetic: output is a file": (["-m", "sed.synthetic", str(tmp / "file")], str(tmp / "file")),
        "plot: not a run folder": (["-m", "sed.plot", str(tmp / "no_run")], "no_run"),
        "torchrun train: annotation file is not JSON": (
            ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "1",
             *train_args(data, out, *ann("not_json.json"))], "not_json.json"),
        "export: foreign checkpoint": (["-m", "sed.export", str(tmp / "torchvision.pth"), str(tmp / "x.pth")],
                                       "torchvision.pth"),
    }
    return cases


@pytest.fixture(scope="module")
def results(data, ckpt, tmp_path_factory):
    """{case: (subprocess result or None, argv, what the line names)}, tmp."""
    tmp = tmp_path_factory.mktemp("bad")
    cases = bad_inputs(data, ckpt, tmp)
    with ThreadPoolExecutor(2) as pool:
        done = dict(zip(cases, pool.map(run, [argv for argv, _ in cases.values()])))
    return {name: (done[name], named) for name, (_, named) in cases.items()}, tmp


CASES = ["train: annotation file is not JSON", "train: unknown category id", "train: malformed bbox",
         "train: missing annotation file", "train: unreadable annotation file", "train: missing image file",
         "train: image size disagrees with the JSON", "train: split file without the percent",
         "train: class count mismatch", "train: resume from a foreign checkpoint",
         "train: resume from a checkpoint with other classes", "train: bad flag value", "train: --out is a file",
         "train: val categories differ from the training's", "train: no box to train on", "eval: no box to evaluate on",
         "eval: checkpoint that would run code", "eval: not a checkpoint",
         "eval: classes differ from the checkpoint's", "eval: missing --val-images", "synthetic: bad size",
         "synthetic: output is a file", "plot: not a run folder", "export: foreign checkpoint"]


@pytest.mark.parametrize("case", CASES)
def test_one_line_error(results, case):
    result, named = results[0][case]
    lines = result.stderr.splitlines()
    if "--verify-images" in result.args:  # its progress bar comes first
        lines = [line for line in lines if not line.startswith("verifying images:") and line]
    assert result.returncode in (1, 2), result.stderr
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert named in lines[0] and "Traceback" not in result.stderr


def test_under_torchrun_the_worker_prints_one_line_before_torchrun_s_report(results):
    """Under torchrun the worker's line is the same one line, with no traceback of ours; torchrun
    itself then reports the failed worker (its own ChildFailedError summary, which a worker cannot
    suppress: README "Data")."""
    result, named = results[0]["torchrun train: annotation file is not JSON"]
    ours = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert result.returncode != 0 and len(ours) == 1 and named in ours[0], result.stderr
    assert 'File "' + str(ROOT / "train.py") not in result.stderr and "ChildFailedError" in result.stderr


def test_exact_lines(data, ckpt, results):
    """The messages of a few cases, in full: the first thing on the line is the file or flag."""
    _, tmp = results
    res = {case: results[0][case] for case in (
        "train: missing image file", "train: image size disagrees with the JSON", "train: bad flag value",
        "eval: checkpoint that would run code", "train: resume from a checkpoint with other classes")}
    assert res["train: missing image file"][0].stderr == (
        f"error: {tmp / 'missing_image.json'}: 1 of its 9 image files are not in {data['train_images']}: "
        "not_there.png\n")
    assert res["train: image size disagrees with the JSON"][0].stderr.splitlines()[-1].startswith(
        f"error: 8 of the 8 images are unusable (--verify-images), in {data['train_images']}: 000000.png: is 64x")
    assert res["train: bad flag value"][0].stderr == "error: argument --max-iter: invalid int value: 'ten'\n"
    assert res["train: bad flag value"][0].returncode == 2
    assert res["eval: checkpoint that would run code"][0].stderr.startswith(
        f"error: {tmp / 'evil.pt'}: refused: it holds pickled Python objects")
    assert not (tmp / "pwned").exists()  # the pickled open() never ran
    assert res["train: resume from a checkpoint with other classes"][0].stderr == (
        f"error: --resume: {ckpt} holds another model (--num-classes 5 -> 2): resume with the settings and "
        "annotations it was trained with (its config.json)\n")
    assert res["train: missing image file"][0].stdout.count("iteration") == 0  # before any iteration


def test_debug_shows_the_traceback(data, tmp_path, monkeypatch):
    """--debug or SED_DEBUG=1: the UserError propagates (the interpreter prints its traceback)."""
    message = "--num-classes: wrong class count: --num-classes 7 but the training annotations have 5 categories"
    with pytest.raises(UserError) as info:
        _train_module().main(train_args(data, tmp_path, "--num-classes", "7", "--debug")[1:])
    assert str(info.value) == message
    monkeypatch.setenv("SED_DEBUG", "1")
    with pytest.raises(UserError):
        _train_module().main(train_args(data, tmp_path, "--num-classes", "7")[1:])


def test_corrupt_image_during_training_then_resume(data, tmp_path):
    """An image that became unreadable after the start check (a worker process reads it): one line
    naming the file, exit 1, last.pt of the iteration before intact; once the file is restored,
    --resume finishes the run."""
    images = tmp_path / "train"
    shutil.copytree(data["train_images"], images)
    ds = CocoDetection(data["train_ann"], images)
    stream = iter(TrainBatchSampler(ds.aspect_ratios(), 2, seed=3))
    seen = {i for _ in range(2) for i, _ in next(stream)}  # the first two iterations' images
    victim = next(i for i, _ in next(stream) if i not in seen)  # first read at iteration 3
    path = ds.files()[victim][0]
    original = path.read_bytes()
    path.write_bytes(original[: len(original) // 3])  # truncated PNG
    args = train_args({**data, "train_images": images}, tmp_path / "out", "--workers", "1", max_iter=4)
    args[args.index("--train-images") + 1] = str(images)
    result = run(args)
    lines = result.stderr.splitlines()
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    assert [line for line in lines if "error" in line] == [lines[-1]]
    assert lines[-1].startswith(f"error: {path}: cannot read the image (image id ")
    assert load_checkpoint(tmp_path / "out" / "last.pt")["iteration"] == 2
    path.write_bytes(original)
    _train_module().main([*args[1:], "--resume", str(tmp_path / "out" / "last.pt")])
    assert load_checkpoint(tmp_path / "out" / "last.pt")["iteration"] == 4


def test_failing_evaluation_keeps_the_checkpoint_of_its_iteration(data, tmp_path):
    """A val image whose size disagrees with its JSON is first read by the evaluation: one line naming
    it, exit 1, and the iteration's checkpoint is already written: saved before every evaluation, due or
    not (since stop 30)."""
    coco = json.loads(Path(data["val_ann"]).read_text())
    coco["images"][0]["width"] += 1
    (tmp_path / "val.json").write_text(json.dumps(coco))
    result = run(train_args(data, tmp_path / "out", "--val-ann", str(tmp_path / "val.json"), "--val-images",
                            str(data["val_images"]), "--eval-every", "2", "--checkpoint-every", "1000", max_iter=3))
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    bad_image = Path(data["val_images"]) / coco["images"][0]["file_name"]
    assert result.stderr.splitlines()[-1].startswith(f"error: {bad_image}")
    assert load_checkpoint(tmp_path / "out" / "last.pt")["iteration"] == 2


def test_kill_during_checkpoint_write_leaves_no_temporary_after_resume(data, tmp_path):
    """SIGKILL while a checkpoint is written (polled for; if the write is never seen, the files a
    kill leaves are made by hand: ours and the random-named ones of earlier versions), then --resume:
    the folder holds last.pt (loadable) and no temporary file."""
    out = tmp_path / "out"
    args = train_args(data, out, max_iter=40)
    proc = subprocess.Popen([sys.executable, *args], cwd=ROOT, env=ENV, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    tmp_file, deadline = out / ".last.pt.tmp", time.time() + 120
    while proc.poll() is None and time.time() < deadline and not (tmp_file.exists() and (out / "last.pt").exists()):
        time.sleep(0.001)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    if not tmp_file.exists():
        tmp_file.write_bytes(b"half a checkpoint")
    (out / ".tmp_last.ptx8k2_q").write_bytes(b"half a checkpoint")  # what mkstemp left before
    iteration = load_checkpoint(out / "last.pt")["iteration"]  # the previous write is intact
    _train_module().main(train_args(data, out, "--resume", str(out / "last.pt"), max_iter=iteration + 1)[1:])
    assert sorted(p.name for p in out.iterdir() if p.name.startswith(".")) == []
    assert load_checkpoint(out / "last.pt")["iteration"] == iteration + 1


def _script(name):
    import importlib.util
    spec = importlib.util.spec_from_file_location(f"{name}_script", ROOT / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _train_module():
    return _script("train")


def test_cuda_out_of_memory_names_the_memory_flags(data, tmp_path, monkeypatch, capsys):
    """In process, with the first step raising what CUDA raises (no GPU needed)."""
    train = _train_module()

    def out_of_memory(*args):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total "
                                          "capacity of 79.19 GiB of which 1.06 GiB is free.")

    monkeypatch.setattr(train, "supervised_step", out_of_memory)
    with pytest.raises(SystemExit) as stop:
        train.main(train_args(data, tmp_path)[1:])
    assert stop.value.code == 1
    assert capsys.readouterr().err.splitlines()[-1] == (
        "error: --batch-size: CUDA out of memory. Tried to allocate 2.00 GiB; lower --batch-size, "
        "--unlabeled-batch-size, --min-size / --max-size or --dtype bfloat16")
    monkeypatch.setenv("SED_DEBUG", "1")  # the traceback instead
    with pytest.raises(torch.cuda.OutOfMemoryError):
        train.main(train_args(data, tmp_path)[1:])


@pytest.mark.parametrize("rank", [0, 1])
def test_under_torchrun_a_rank_s_warnings_are_attributed_and_data_warnings_shown_once(rank, monkeypatch, capsys):
    """Until stop 31 every rank printed each warning of the annotation files it reads alike, unattributed
    and at times two on one line. Now rank 0 alone shows those; other warnings carry report's rank prefix."""
    monkeypatch.setenv("RANK", str(rank))
    with user_errors():
        with main_warns_only(DistInfo(rank=rank, world_size=2, is_main=rank == 0)):
            warnings.warn(f"ann.json: dropped 3 degenerate boxes (w or h < 1), rank {rank}")
        warnings.warn(f"photo{rank}.jpg: cannot read the image: skipped")   # a file of this rank's shard
    prefix = "" if rank == 0 else f"[rank {rank}] "
    shared = [f"warning: ann.json: dropped 3 degenerate boxes (w or h < 1), rank {rank}\n"] if rank == 0 else []
    own = f"{prefix}warning: photo{rank}.jpg: cannot read the image: skipped\n"
    assert capsys.readouterr().err == "".join([*shared, own])


def test_ctrl_c_and_warnings_are_one_line(capsys):
    with pytest.raises(SystemExit) as stop:
        with user_errors():
            warnings.warn("ann.json: dropped 2 degenerate boxes (w or h < 1)")
            raise KeyboardInterrupt
    assert stop.value.code == 130
    assert capsys.readouterr().err == ("warning: ann.json: dropped 2 degenerate boxes (w or h < 1)\n"
                                       "error: interrupted (Ctrl-C)\n")
    assert warnings.showwarning is not show_warning   # Python's own display is back


def test_no_connection_for_the_imagenet_weights_is_one_line(monkeypatch):
    """No internet (here a builder that fails as torch.hub's download does) -> where to put the file."""
    def offline(**kwargs):
        raise urllib.error.URLError("Name or service not known")
    monkeypatch.setenv("TORCH_HOME", "/tmp/hub-home")
    with pytest.raises(UserError, match=r"^--backbone-weights imagenet: cannot get https://\S+/resnet18-\w+\.pth "
                       r"\(Name or service not known\); download it elsewhere and put it in "
                       r"/tmp/hub-home/hub/checkpoints, or pass it as --backbone-weights FILE$"):
        imagenet_resnet(offline, torchvision.models.ResNet18_Weights.IMAGENET1K_V1, None)
