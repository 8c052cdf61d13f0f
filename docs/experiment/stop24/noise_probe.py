"""Stop 24's noise probe: how far apart do two runs from the same burn-in end when only the data order
after the burn-in changes? (README.md beside this file, "Noise probe".)

From the rings' seed-0 burn-in of rings-threshold/, teacher_student and sed_hard rerun with their exact
commands but --seed 10, 11 and 12: the sampler then draws another order of the labeled and unlabeled images
for iterations 600-900, while the split (--split-seed), the weights and the RNG state at the burn-in are
those of seed 0. teacher_student also reruns with --seed 0 unchanged (is a rerun bit for bit the same?).
Run from the repository root after rings-threshold/ (its burn-in under runs/experiment/rings/seed0):
    PYTHONPATH=. python docs/experiment/stop24/noise_probe.py
"""
import json
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from sed.experiment import run, run_record

HERE = Path(__file__).resolve().parent
ORDERS = {"teacher_student": (0, 10, 11, 12), "sed_hard": (10, 11, 12)}


def probe(row, order):
    cmd = json.loads((HERE / "rings-threshold" / f"{row}_seed0.json").read_text())["command"][1:]
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
