"""Plot a training run: `python -m sed.plot OUT [--out DIR]`.

Reads OUT/log.jsonl (one JSON object per logging step: "iteration", "loss*" keys, "total", "lr",
"data_time", "step_time", optional "pl_*" pseudo-label diagnostics, sed/diagnostics.py) and
OUT/metrics.jsonl (one object per evaluation: "iteration", "model" = teacher | student (absent:
student), "AP", "AP50", ...). Writes into OUT/plots/ (or DIR), skipping a plot without data:
    losses.png       every loss* key and "total" vs iteration
    lr.png           learning rate vs iteration
    ap.png           AP (solid) and AP50 (dashed) of teacher and student vs iteration
    diagnostics.png  the pl_* ratios vs iteration (from either file)
matplotlib is optional (requirements-optional.txt); without it the command exits with code 2.
"""
import argparse
import json
import math
import sys
from pathlib import Path

from sed.config import check_writable_dir

MISSING_MATPLOTLIB = "sed.plot needs matplotlib: pip install matplotlib"


class MissingMatplotlib(ImportError):
    pass


def read_jsonl(path):
    """List of dicts, [] for a missing file; a line that is not a JSON object is a ValueError, except an
    unfinished last line (no newline after it: a run writing it now, or killed while it did), left out."""
    path = Path(path)
    if not path.exists():
        return []
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:   # a directory, no permission, not text
        raise ValueError(f"{path}: cannot read it as a log ({e})") from None
    lines = text.splitlines()
    if lines and not text.endswith("\n"):
        lines.pop()
    rows = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            raise ValueError(f"{path} line {n}: not valid JSON") from None
        if not isinstance(row, dict):
            raise ValueError(f"{path} line {n}: not a JSON object")
        rows.append(row)
    return rows


def series(rows, key):
    """(iterations, values) of the rows that have a finite number under `key`."""
    points = [(r["iteration"], r[key]) for r in rows
              if "iteration" in r and isinstance(r.get(key), (int, float)) and math.isfinite(r[key])]
    return [p[0] for p in points], [p[1] for p in points]


def _keys(rows, predicate):
    return sorted({k for r in rows for k in r if predicate(k)})


def _matplotlib():
    """(Figure, FigureCanvasAgg): the Agg backend without pyplot's global state."""
    try:
        import matplotlib  # noqa: F401  (first, so a blocked matplotlib fails here)
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise MissingMatplotlib(MISSING_MATPLOTLIB) from None
    return Figure, FigureCanvasAgg


def _figure():
    Figure, FigureCanvasAgg = _matplotlib()
    fig = Figure(figsize=(7, 4.5))
    FigureCanvasAgg(fig)
    return fig, fig.subplots()


def _plot(path, title, ylabel, lines):
    """lines: [(label, xs, ys, style)]; returns False (nothing written) when no line has data."""
    lines = [line for line in lines if line[1]]
    if not lines:
        return False
    fig, ax = _figure()
    for label, xs, ys, style in lines:
        ax.plot(xs, ys, style, label=label, marker="o" if len(xs) < 20 else None, markersize=3)
    ax.set(title=title, xlabel="iteration", ylabel=ylabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return True


def make_plots(run_dir, plot_dir=None):
    """Write the plots of run_dir into plot_dir (default run_dir/plots); returns the file names
    written. ValueError when neither log file has data; MissingMatplotlib without matplotlib."""
    _matplotlib()
    run_dir = Path(run_dir)
    log, metrics = read_jsonl(run_dir / "log.jsonl"), read_jsonl(run_dir / "metrics.jsonl")
    if not log and not metrics:
        raise ValueError(f"{run_dir}: no log.jsonl or metrics.jsonl with data")
    plot_dir = Path(plot_dir) if plot_dir else run_dir / "plots"
    check_writable_dir(str(plot_dir), "--out")
    plot_dir.mkdir(parents=True, exist_ok=True)
    by_model = {}
    for row in metrics:
        by_model.setdefault(row.get("model", "student"), []).append(row)
    pl_rows = log + metrics
    loss_keys = _keys(log, lambda k: k.startswith("loss") or k == "total")
    pl_keys = _keys(pl_rows, lambda k: k.startswith("pl_") and not k.startswith("pl_num")
                    and k != "pl_dets_per_image")  # the ratios in [0, 1]
    plots = {
        "losses.png": ("training losses", "loss", [(k, *series(log, k), "-") for k in loss_keys]),
        "lr.png": ("learning rate", "lr", [("lr", *series(log, "lr"), "-")]),
        "ap.png": ("COCO AP", "AP", [(f"{model} {key}", *series(rows, key), f"C{j}{style}")  # C{j}: model
                                    for j, (model, rows) in enumerate(sorted(by_model.items()))
                                    for key, style in (("AP", "-"), ("AP50", "--"))]),
        "diagnostics.png": ("pseudo-label diagnostics (sed/diagnostics.py)", "ratio",
                            [(k[3:], *series(pl_rows, k), "-") for k in pl_keys]),
    }
    return [name for name, (title, ylabel, lines) in plots.items()
            if _plot(plot_dir / name, title, ylabel, lines)]


def main(argv=None):
    """One line `error: ...` for a user error (sed/errors.py): exit 2 without matplotlib, 1 for a
    missing folder or logs without data (read_jsonl's ValueErrors name the file and line)."""
    from sed.errors import ArgumentParser, UserError, debug_requested, report
    parser = ArgumentParser(prog="python -m sed.plot", description=__doc__.splitlines()[0],
                            formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("run_dir", help="training output directory with log.jsonl / metrics.jsonl")
    parser.add_argument("--out", default=None, help="directory of the PNG files (default RUN_DIR/plots)")
    parser.add_argument("--debug", action="store_true", help="show the Python traceback of a user error")
    args = parser.parse_args(argv)
    try:
        if not Path(args.run_dir).is_dir():
            raise UserError(f"{args.run_dir}: not a directory (the --out of a train.py run)")
        written = make_plots(args.run_dir, args.out)
    except (MissingMatplotlib, ValueError) as e:  # UserError is a ValueError
        if debug_requested(args.debug):
            raise
        report(str(e))
        sys.exit(2 if isinstance(e, MissingMatplotlib) else 1)
    plot_dir = Path(args.out) if args.out else Path(args.run_dir) / "plots"
    skipped = [n for n in ("losses.png", "lr.png", "ap.png", "diagnostics.png") if n not in written]
    print(f"wrote {', '.join(written) or 'nothing'} to {plot_dir}"
          + (f" (no data for {', '.join(skipped)})" if skipped else ""))


if __name__ == "__main__":
    main()
