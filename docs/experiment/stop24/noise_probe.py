"""Stop 24's noise probe: how far apart do two runs from the same burn-in end when only the data order
after the burn-in changes? (README.md beside this file, "Noise probe".)

From a family's seed-0 burn-in of `python -m sed.experiment --out runs/experiment`, the given rows rerun with
the experiment's commands but --seed set to each order: the sampler then draws another order of the labeled
and unlabeled images for iterations 600-900, while the split (--split-seed), the weights and the RNG state at
the burn-in are those of seed 0 (order 0 = the experiment's own run, bit for bit). Records go to
noise-<family>/<row>_order<k>.json beside this file (--records: another folder); runs whose file exists are
skipped. From the repository root:
    PYTHONPATH=. python docs/experiment/stop24/noise_probe.py --family rings --rows teacher_student supervised \
        --orders 0 10 11 12
    PYTHONPATH=. python docs/experiment/stop24/noise_probe.py --family rings --rows sed_hard --orders 10 11 12
(sed_hard's order 0 on the rings is rings-threshold/'s run.)
"""
import argparse
import json
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from sed.experiment import parse_args, prepare_data, row_command, run, run_record

HERE = Path(__file__).resolve().parent


def probe(records, family, row, seed0_cmd, order):
    """seed0_cmd: the experiment's seed-0 command of the row (["train.py", ...]), rerun with --seed order."""
    record_path = records / f"{row}_order{order}.json"
    if record_path.exists():
        return
    cmd = list(seed0_cmd)
    cmd[cmd.index("--seed") + 1] = str(order)
    out = Path("runs/noise") / family / f"{row}_order{order}"
    cmd[cmd.index("--out") + 1] = str(out)
    start = time.time()
    run(cmd, out.with_suffix(".log"))
    record = run_record(out, row, 0, cmd, (time.time() - start) / 60) | {"data_order_seed": order}
    record_path.write_text(json.dumps(record, indent=1) + "\n")
    print(f"{family} {row} order {order}: AP {record['metrics']['AP']:.2f}", flush=True)


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--family", required=True)
    p.add_argument("--rows", nargs="+", required=True)
    p.add_argument("--orders", type=int, nargs="+", required=True)
    p.add_argument("--records", type=Path, default=None, help="where the records go (default noise-<family>/ here)")
    a = p.parse_args()
    records = a.records or HERE / f"noise-{a.family}"
    records.mkdir(parents=True, exist_ok=True)
    args, experiment = parse_args(["--family", a.family]), Path("runs/experiment") / a.family
    data = prepare_data(args, experiment / "data")
    jobs = [(records, a.family, row, row_command(args, data, row, 0, experiment), order) for row in a.rows for order in a.orders]
    with ThreadPoolExecutor(len(jobs)) as pool:
        list(pool.map(lambda job: probe(*job), jobs))
