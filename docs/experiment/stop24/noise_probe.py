"""Stop 24's noise probe: how far apart do two runs from the same burn-in end when only the data order
after the burn-in changes? (README.md beside this file, "Noise probe".)

From the rings' seed-0 burn-in of rings-threshold/, teacher_student, sed_hard and supervised rerun with the
experiment's commands but --seed 10, 11 and 12: the sampler then draws another order of the labeled and
unlabeled images for iterations 600-900, while the split (--split-seed), the weights and the RNG state at the
burn-in are those of seed 0. teacher_student reruns with --seed 0 unchanged too (is a rerun bit for bit the
same?), and supervised runs with it (sed_hard's order 0 is rings-threshold/'s run). Runs whose file exists in
noise/ are skipped. Run from the repository root after rings-threshold/ (its burn-in under runs/experiment/rings):
    PYTHONPATH=. python docs/experiment/stop24/noise_probe.py
"""
import json
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from sed.experiment import parse_args, prepare_data, row_command, run, run_record

HERE = Path(__file__).resolve().parent
ORDERS = {"teacher_student": (0, 10, 11, 12), "sed_hard": (10, 11, 12), "supervised": (0, 10, 11, 12)}
EXPERIMENT = Path("runs/experiment/rings")  # rings-threshold/'s --out and family


def probe(row, order):
    if (HERE / "noise" / f"{row}_order{order}.json").exists():
        return
    args = parse_args(["--family", "rings"])
    cmd = row_command(args, prepare_data(args, EXPERIMENT / "data"), row, 0, EXPERIMENT)  # ["train.py", ...]
    cmd[cmd.index("--seed") + 1] = str(order)
    out = Path("runs/noise") / f"{row}_order{order}"
    cmd[cmd.index("--out") + 1] = str(out)
    start = time.time()
    run(cmd, out.with_suffix(".log"))
    record = run_record(out, row, 0, cmd, (time.time() - start) / 60) | {"data_order_seed": order}
    (HERE / "noise" / f"{row}_order{order}.json").write_text(json.dumps(record, indent=1) + "\n")
    print(f"{row} order {order}: AP {record['metrics']['AP']:.2f}", flush=True)


if __name__ == "__main__":
    (HERE / "noise").mkdir(exist_ok=True)
    jobs = [(row, order) for row, orders in ORDERS.items() for order in orders]
    with ThreadPoolExecutor(len(jobs)) as pool:
        list(pool.map(lambda job: probe(*job), jobs))
