"""Paired differences of the COCO metrics by object size (APs, APm) and overall, from saved experiment
runs (stop 28): which rows lose medium objects against supervised, and whether SED's parts or the hard
pseudo-labels they share with the teacher-student do it. Over the (folder, seed) runs that have all
three rows (supervised, teacher_student, sed_hard_no_distill), paired within each.
From the repository root:
    python docs/experiment/stop28/size_gains.py docs/experiment/stop26/* docs/experiment/stop27/* \
        docs/experiment/stop28/icons
"""
import argparse
import statistics
from pathlib import Path

from sed.experiment import load_results

ROWS = ("supervised", "teacher_student", "sed_hard_no_distill")
PAIRS = (("sed_hard_no_distill", "supervised"), ("teacher_student", "supervised"),
         ("sed_hard_no_distill", "teacher_student"))
METRICS = ("AP", "AP50", "APs", "APm")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("folders", nargs="+")
    folders = [Path(f) for f in p.parse_args().folders if Path(f).is_dir()]
    runs = [{row: t[row][seed]["metrics"] for row in ROWS}   # one dict per (folder, seed) with all rows
            for t in map(load_results, folders) if all(row in t for row in ROWS)
            for seed in sorted(set.intersection(*(set(t[row]) for row in ROWS)))]
    print(f"{len(runs)} runs with all of {', '.join(ROWS)}; mean ± std of the paired difference "
          "(runs below 0 / runs)")
    print("| pair | " + " | ".join(METRICS) + " |\n" + "|---" * (len(METRICS) + 1) + "|")
    for a, b in PAIRS:
        cells = []
        for metric in METRICS:
            diffs = [run[a][metric] - run[b][metric] for run in runs]
            cells.append(f"{statistics.mean(diffs):+.2f} ± {statistics.stdev(diffs):.2f} "
                         f"({sum(d < 0 for d in diffs)}/{len(diffs)})" if len(diffs) > 1 else "-")
        print(f"| {a} - {b} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
