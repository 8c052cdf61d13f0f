"""sed.gpu_check's bookkeeping: pass / fail / skip / time-out of a part, the summary table, and
CUDA parts reported as skipped (not failed) on a machine without a GPU."""
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from sed import gpu_check


@pytest.mark.parametrize("code, status", [("print('ok')", "pass"), ("print('no GPU'); raise SystemExit(77)", "skip"),
                                          ("print('boom'); raise SystemExit(3)", "fail")])
def test_run_part_status(tmp_path, code, status):
    name, got, seconds, note = gpu_check.run_part("part x", [sys.executable, "-c", code], 60, None, tmp_path)
    assert (name, got) == ("part x", status) and seconds >= 0
    assert note.startswith({"pass": "ok", "skip": "no GPU", "fail": "boom"}[status])
    assert (tmp_path / "part_x.log").read_text().splitlines()[-1] == note.split("  (log:")[0]


def test_run_part_time_limit(tmp_path):
    name, status, seconds, note = gpu_check.run_part(
        "slow", [sys.executable, "-c", "import time; print('started', flush=True); time.sleep(30)"], 1, None, tmp_path)
    assert status == "fail" and seconds < 20
    assert note.startswith("timed out after 1 s")


def test_summary_table():
    rows = [("environment", "pass", 1.2, "torch 2.11"), ("step float16", "skip", 0.0, "no CUDA device"),
            ("bench float32", "fail", 61.7, "a | b")]
    assert gpu_check.table(rows).splitlines() == [
        "| part | result | seconds | note |", "|---|---|---|---|",
        "| environment | pass | 1 | torch 2.11 |", "| step float16 | skip | 0 | no CUDA device |",
        "| bench float32 | fail | 62 | a / b |"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the behaviour without a GPU")
def test_cuda_parts_skip_without_a_gpu(capsys):
    assert gpu_check.part_step("bfloat16") == gpu_check.SKIP
    assert gpu_check.part_no_gpu_is_skip(1) == gpu_check.SKIP
    assert capsys.readouterr().out.splitlines() == ["no CUDA device", "needs 1 CUDA GPU(s), found 0"]


def test_wheels_of_present_modules_are_not_installed(tmp_path):
    """A wheel (e.g. numpy, pulled in by `pip download pycocotools`) whose module the python already
    has is left out: nothing shadows the numpy that torch was built against."""
    gpu_check.install_wheels(sys.executable, [str(tmp_path / "numpy-2.0.0-cp312-cp312-manylinux2014_x86_64.whl"),
                                              str(tmp_path / "Pillow-10.0.0-cp312-cp312-any.whl")], tmp_path / "site")
    assert not (tmp_path / "site").exists()


def test_make_gpu_check_without_torch_is_one_line(tmp_path):
    """On GPU images python3 is often not the python with torch: one line naming PYTHON= (a traceback
    ending in ModuleNotFoundError until stop 31)."""
    result = subprocess.run(["make", "-s", "gpu-check", "PYTHON=false"], cwd=Path(__file__).resolve().parents[1],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode != 0 and result.stdout == ("error: false cannot import torch: give the python that "
                                                         "has it, e.g. make gpu-check PYTHON=/opt/conda/bin/python\n")
