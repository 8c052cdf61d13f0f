"""The README's command lines parse: every train.py, eval.py, sed.experiment and sed.bench command in its
code blocks uses flags and values that the program accepts (what a user copies first must not fail on a
typo or a renamed flag of ours). Paths are not checked for train.py; eval.py's are created in a scratch folder."""
import importlib.util
import re
import shlex
from pathlib import Path

import pytest

from sed import bench, config, experiment

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("eval_script", ROOT / "eval.py")   # as tests/test_eval_cli.py
eval_cli = importlib.util.module_from_spec(spec)
spec.loader.exec_module(eval_cli)

# What the README's "<the data flags above>" and "<same flags>" stand for: its first COCO command's data flags.
PLACEHOLDERS = {"<the data flags above>": "--train-ann coco/annotations/instances_train2017.json "
                "--train-images coco/train2017 --val-ann coco/annotations/instances_val2017.json "
                "--val-images coco/val2017",
                "<same flags>": "--train-ann coco/annotations/instances_train2017.json --train-images coco/train2017"}


def readme_commands():
    """(program, argv) of each command line in the README's code blocks; continuation lines joined,
    comments and optional [--flag VALUE] parts dropped, lines that elide their flags ("...") left out."""
    found = []
    for block in re.findall(r"```[a-z]*\n(.*?)```", (ROOT / "README.md").read_text(), re.S):
        for line in re.sub(r"\\\n\s*", " ", block).splitlines():
            for placeholder, flags in PLACEHOLDERS.items():
                line = line.replace(placeholder, flags)
            line = re.sub(r"\[--[^]]*\]", "", line)   # usage notation: [--flag VALUE] is optional
            if line.split()[:1] not in (["python"], ["torchrun"]):
                continue
            words = shlex.split(line, comments=True)
            if "..." in words:
                continue
            program = next((w for w in words if w.endswith((".py", "sed.experiment", "sed.bench"))), None)
            if program:
                found.append((Path(program).name, words[words.index(program) + 1:]))
    return found


COMMANDS = readme_commands()


def test_the_readme_has_the_commands_this_test_reads():
    programs = [program for program, _ in COMMANDS]
    assert {"train.py", "eval.py", "sed.experiment", "sed.bench"} <= set(programs) and len(programs) >= 20


@pytest.mark.parametrize("argv", [argv for program, argv in COMMANDS if program == "train.py"], ids=" ".join)
def test_train_commands_parse_and_validate(argv):
    config.parse_args(argv, check_files=False)


@pytest.mark.parametrize("argv", [argv for program, argv in COMMANDS if program == "sed.experiment"], ids=" ".join)
def test_experiment_commands_parse(argv):
    experiment.parse_args(argv)


@pytest.mark.parametrize("argv", [argv for program, argv in COMMANDS if program == "sed.bench"], ids=" ".join)
def test_bench_commands_parse(argv):
    bench.parse_args(argv)


@pytest.mark.parametrize("argv", [argv for program, argv in COMMANDS if program == "eval.py"], ids=" ".join)
def test_eval_commands_parse(argv, tmp_path, monkeypatch):
    """eval.py checks its inputs exist: the files and folders the command names are made first."""
    monkeypatch.chdir(tmp_path)
    values = dict(zip(argv, argv[1:]))
    for name in ("--ckpt", "--val-ann"):
        if name in values:
            Path(values[name]).parent.mkdir(parents=True, exist_ok=True)
            Path(values[name]).touch()
    for name in ("--val-images", "--images"):
        if name in values:
            Path(values[name]).mkdir(parents=True, exist_ok=True)
            (Path(values[name]) / "a.png").touch()
    eval_cli.parse_args(argv)
