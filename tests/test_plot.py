"""`python -m sed.plot OUT`: plots from a small hand-made run, and its one-line errors."""
import json
import subprocess
import sys

import pytest
from PIL import Image

from sed.plot import MISSING_MATPLOTLIB, main, make_plots, read_jsonl, series


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


@pytest.fixture
def run_dir(tmp_path):
    write_jsonl(tmp_path / "log.jsonl", [
        {"iteration": i, "loss_classifier": 1.0 / (i + 1), "loss_box_reg": 0.5, "loss_unsup": 0.2 * i,
         "total": 2.0, "lr": 0.01 * min(1, i / 5), "data_time": 0.01, "step_time": 0.2,
         **({"pl_recall@0.7": 0.1 * i, "pl_num_objects": 30} if i % 5 == 0 else {})}
        for i in range(0, 30, 2)])
    write_jsonl(tmp_path / "metrics.jsonl", [
        {"iteration": 10, "model": "teacher", "AP": 1.0, "AP50": 3.0},
        {"iteration": 10, "AP": 0.5, "AP50": 2.0},            # no "model": the student
        {"iteration": 20, "model": "teacher", "AP": 2.0, "AP50": 5.0},
        {"iteration": 20, "model": "student", "AP": 1.5, "AP50": 4.0}])
    return tmp_path


def test_plots_are_valid_png(run_dir):
    pytest.importorskip("matplotlib")
    written = make_plots(run_dir)
    assert written == ["losses.png", "lr.png", "ap.png", "diagnostics.png"]
    for name in written:
        with Image.open(run_dir / "plots" / name) as im:
            assert im.format == "PNG" and im.size == (700, 450)


def test_plot_without_data_is_skipped_and_reported(run_dir, tmp_path, capsys):
    pytest.importorskip("matplotlib")
    (run_dir / "metrics.jsonl").unlink()
    main([str(run_dir), "--out", str(tmp_path / "figs")])
    figs = tmp_path / "figs"
    assert sorted(p.name for p in figs.iterdir()) == ["diagnostics.png", "losses.png", "lr.png"]
    out = capsys.readouterr().out.strip()
    assert out == f"wrote losses.png, lr.png, diagnostics.png to {figs} (no data for ap.png)"


def test_series_skips_missing_and_non_finite_values():
    rows = [{"iteration": 1, "a": 1.0}, {"iteration": 2}, {"iteration": 3, "a": float("nan")},
            {"iteration": 4, "a": None}, {"iteration": 5, "a": 2}]
    assert series(rows, "a") == ([1, 5], [1.0, 2])


def test_missing_matplotlib_gives_the_install_message(run_dir, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(SystemExit) as e:
        main([str(run_dir)])
    assert e.value.code == 2
    assert capsys.readouterr().err == f"error: {MISSING_MATPLOTLIB}\n"
    assert MISSING_MATPLOTLIB == "sed.plot needs matplotlib: pip install matplotlib"


@pytest.mark.parametrize("content", [None, "", "\n\n"])
def test_missing_or_empty_logs_give_a_one_line_error(tmp_path, capsys, content):
    pytest.importorskip("matplotlib")
    if content is not None:
        (tmp_path / "log.jsonl").write_text(content)
    with pytest.raises(SystemExit) as e:
        main([str(tmp_path)])
    assert e.value.code == 1
    assert capsys.readouterr().err == f"error: {tmp_path}: no log.jsonl or metrics.jsonl with data\n"


def test_bad_line_names_file_and_line(tmp_path):
    (tmp_path / "log.jsonl").write_text('{"iteration": 1}\n{"iteration": 2,\n')
    with pytest.raises(ValueError, match=r"log.jsonl line 2: not valid JSON"):
        read_jsonl(tmp_path / "log.jsonl")
    (tmp_path / "log.jsonl").write_text('{"iteration": 1}\n{"iteration": 2, "lo')   # being written, or killed
    assert read_jsonl(tmp_path / "log.jsonl") == [{"iteration": 1}]
    (tmp_path / "dir.jsonl").mkdir()
    with pytest.raises(ValueError, match=r"dir.jsonl: cannot read it as a log \(\[Errno 21\] Is a directory"):
        read_jsonl(tmp_path / "dir.jsonl")


def test_module_entry_point(run_dir):
    pytest.importorskip("matplotlib")
    result = subprocess.run([sys.executable, "-m", "sed.plot", str(run_dir)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("wrote losses.png, lr.png, ap.png, diagnostics.png to ")
