"""sed.experiment's tables: paired per-seed gains, mean +- std, rendered from the saved run files."""
import json
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch

import sed.config
import sed.experiment
from sed.checkpoint import save_checkpoint
from sed.config import TrainConfig
from sed.experiment import (burn_in_checksum, check_pairing, gain, load_results, parse_args, prepare_data,
                            render_markdown, saved_run_matches, settings, spearman, summary)


def write_run(folder, row, seed, ap, recall=0.25):
    record = {"row": row, "seed": seed, "model": "teacher", "commit": "abc", "minutes": 1.0, "command": [],
              "metrics": {"AP": ap, "AP50": 2 * ap, "APs": ap, "APm": ap, "APl": -1.0},
              "diagnostics": {"pl_dets_per_image": 1.0, "pl_recall@0.5": 0.5, "pl_recall@0.7": recall,
                              "pl_weight_on_objects": 0.75}}
    (folder / f"{row}_seed{seed}.json").write_text(json.dumps(record))


def test_gains_are_paired_per_seed_and_rows_compare_with_the_row_above(tmp_path):
    for seed, (sup, ts, sed) in enumerate([(10.0, 12.0, 15.0), (20.0, 21.0, 23.0), (30.0, 33.0, 34.0)]):
        write_run(tmp_path, "supervised", seed, sup)
        write_run(tmp_path, "teacher_student", seed, ts)
        write_run(tmp_path, "sed", seed, sed)
    write_run(tmp_path, "sed_mutual", 0, 14.0)
    table = load_results(tmp_path)
    text, values = gain(table, "sed", "supervised")
    assert values == [5.0, 3.0, 4.0] and text == "4.0 ± 1.0"  # mean 4, sample std 1
    assert gain(table, "sed_mutual", "sed")[1] == [-1.0]        # only the seed both have
    lines = render_markdown(table, "shapes").splitlines()
    row = {}  # the results table's line of each row (the diagnostics table follows it)
    for line in lines:
        if line.startswith("| "):
            row.setdefault(line.split(" | ")[0].strip("| "), line)
    assert row["supervised"].startswith("| supervised | 3 | 20.0 ± 10.0 | 40.0 ± 20.0 |")
    assert row["teacher_student"].endswith("| 2.0 ± 1.0 | supervised |")  # gains 2, 1, 3
    assert row["sed"].endswith("| 2.0 ± 1.0 | teacher_student |")          # gains 3, 2, 1
    assert row["sed_mutual"].startswith("| sed_mutual | 1 | 14.0 |") and row["sed_mutual"].endswith("| -1.0 | sed |")
    assert "SED - supervised, AP: 4.0 ± 1.0" in lines


def test_threshold_rows_pair_with_their_own_baseline_and_missing_diagnostics_are_left_out(tmp_path):
    """teacher_student_0.9 gains over teacher_student, sed_hard_0.9 over sed_hard, and the default's gain over the
    teacher-student is printed at both thresholds; pl_recall@0.9 (absent from runs saved before it) averages
    over the runs that have it."""
    for seed, aps in enumerate([(10.0, 11.0, 8.0, 12.0), (20.0, 19.0, 17.0, 20.0)]):
        for row, ap in zip(("teacher_student", "sed_hard", "teacher_student_0.9", "sed_hard_0.9"), aps):
            write_run(tmp_path, row, seed, ap)
    record = json.loads((tmp_path / "sed_hard_0.9_seed0.json").read_text())
    record["diagnostics"]["pl_recall@0.9"] = 0.25
    (tmp_path / "sed_hard_0.9_seed0.json").write_text(json.dumps(record))
    lines = render_markdown(load_results(tmp_path), "rings").splitlines()
    assert any(line.startswith("| teacher_student_0.9 | 2 |") and line.endswith("| -2.5 ± 0.7 | teacher_student |")
               for line in lines)  # -2, -3
    assert any(line.startswith("| sed_hard_0.9 | 2 |") and line.endswith("| 1.0 ± 0.0 | sed_hard |") for line in lines)
    assert "sed_hard - teacher_student, AP: 0.0 ± 1.4" in lines      # +1, -1
    assert "sed_hard_0.9 - teacher_student_0.9, AP: 3.5 ± 0.7" in lines  # +4, +3
    diagnostics = [line for line in lines if line.startswith("| sed_hard_0.9 |")][-1].split(" | ")
    assert diagnostics[1:] == ["1.00", "0.50", "0.25", "0.25", "0.75 |"]  # recall@0.9 from seed 0 only
    assert [line for line in lines if line.startswith("| sed_hard |")][-1].split(" | ")[4] == "-"


def test_spearman_by_hand():
    assert spearman([1, 2, 3, 4], [8, 6, 4, 2]) == pytest.approx(-1.0)
    # ranks [1, 2.5, 2.5, 4] (a tie) and [1, 2, 4, 3]: centred [-1.5, 0, 0, 1.5] and [-1.5, -0.5, 1.5, 0.5],
    # covariance 3, squares 4.5 and 5 -> 3 / sqrt(22.5)
    assert spearman([1, 5, 5, 9], [0, 1, 3, 2]) == pytest.approx(3 / 22.5 ** 0.5)


def test_results_name_the_default_s_gains_over_the_rows_it_is_compared_with(tmp_path):
    for seed, (sup, ts, default) in enumerate([(10.0, 12.0, 15.0), (20.0, 21.0, 20.5)]):
        write_run(tmp_path, "supervised", seed, sup)
        write_run(tmp_path, "teacher_student", seed, ts)
        write_run(tmp_path, "sed_hard_no_distill", seed, default)
    lines = render_markdown(load_results(tmp_path), "icons").splitlines()
    assert [line for line in lines if line.startswith("sed_hard_no_distill (the default)")] == [
        "sed_hard_no_distill (the default) - supervised, AP: 2.8 ± 3.2",   # +5.0, +0.5
        "sed_hard_no_distill (the default) - teacher_student, AP: 1.2 ± 2.5"]   # +3.0, -0.5


def test_summary_sorts_by_the_teacher_student_s_recall(tmp_path):
    """One line per folder: each row's mean AP, paired gains; the teacher-student's mean recall over the
    seeds it shares with sed_hard or the default; a folder without the teacher-student comes last."""
    setups = {"low": [(0.2, 10.0, 13.0), (0.4, 20.0, 21.0)], "high": [(0.8, 30.0, 29.0)],
              "mid": [(0.5, 5.0, 5.5), (0.7, 6.0, 6.5)]}   # seed: (recall, teacher_student AP, sed_hard AP)
    for name, seeds in setups.items():
        (tmp_path / name).mkdir()
        for seed, (recall, ts, hard) in enumerate(seeds):
            write_run(tmp_path / name, "teacher_student", seed, ts, recall=recall)
            write_run(tmp_path / name, "sed_hard", seed, hard)
            write_run(tmp_path / name, "supervised", seed, ts - 2)
    write_run(tmp_path / "mid", "teacher_student", 2, 1.0, recall=0.0)   # no sed_hard: not in the recall
    write_run(tmp_path / "high", "sed", 0, 31.0)
    write_run(tmp_path / "high", "sed_hard_no_distill", 0, 27.0)
    (tmp_path / "nots").mkdir()
    write_run(tmp_path / "nots", "supervised", 0, 10.0)
    write_run(tmp_path / "nots", "sed_hard_no_distill", 0, 12.5)
    lines = summary([str(tmp_path / n) for n in ["nots", *setups]]).splitlines()
    assert lines[1] == "|---" * 12 + "|"  # the folder, a column per row and per gain, recall, 2 gains over ts
    assert lines[2:6] == [
        f"| {tmp_path / 'low'} | 13.0 ± 7.1 | 15.0 ± 7.1 | - | 17.0 ± 5.7 | - | - | 4.0 ± 1.4 | - | 0.300 | - | "
        "+3.0, +1.0 (2.0 ± 1.4) |",
        f"| {tmp_path / 'mid'} | 3.5 ± 0.7 | 4.0 ± 2.6 | - | 6.0 ± 0.7 | - | - | 2.5 ± 0.0 | - | 0.600 | - | "
        "+0.5, +0.5 (0.5 ± 0.0) |",
        f"| {tmp_path / 'high'} | 28.0 | 30.0 | 31.0 | 29.0 | 27.0 | -1.0 | 1.0 | 3.0 | 0.800 | -3.0 (-3.0) | "
        "-1.0 (-1.0) |",
        f"| {tmp_path / 'nots'} | 10.0 | - | - | - | 12.5 | 2.5 | - | - | - | - | - |"]
    assert lines[-6:] == ["sed_hard_no_distill >= supervised on 1 of 2 paired runs",
                          "sed_hard >= supervised on 5 of 5 paired runs", "sed >= supervised on 1 of 1 paired runs",
                          "sed_hard_no_distill >= teacher_student on 0 of 1 paired runs",
                          "sed_hard >= teacher_student on 4 of 5 paired runs",
                          "Spearman rank correlation of the teacher-student's recall and the mean gain of sed_hard "
                          "over it, 3 folders: -1.00"]


def test_summary_names_a_folder_without_runs(tmp_path):
    with pytest.raises(SystemExit, match="no saved runs"):
        summary([str(tmp_path)])


def test_a_malformed_record_and_a_failed_run_are_one_line(tmp_path, capsys):
    (tmp_path / "sed_seed0.json").write_text('{"row": "sed", ')
    with pytest.raises(SystemExit, match=r"sed_seed0.json: not a run record of sed.experiment$"):
        load_results(tmp_path)
    failing = ["-c", "import sys; print('progress'); print('error: --seed: must be >= 0'); sys.exit(1)"]
    with pytest.raises(SystemExit, match=r"run.log: train.py stopped with exit status 1: error: --seed: must be >= 0$"):
        sed.experiment.run(failing, tmp_path / "run.log")
    with pytest.raises(SystemExit):
        parse_args(["--parallel", "0"])
    assert capsys.readouterr().err == ("error: --seeds must be >= 0, --parallel >= 1 and --image-size a multiple of "
                                       "64, got [0, 1, 2], 0 and 128\n")


def test_the_rows_on_hard_labels_compare_with_the_row_above_in_their_own_chain(tmp_path):
    """teacher_student -> ts+distill -> ts+scale -> sed_hard; sed_hard is also reported against sed."""
    for row, ap in [("supervised", 10.0), ("teacher_student", 12.0), ("sed", 13.0), ("ts+distill", 12.5),
                    ("ts+scale", 14.0), ("sed_hard", 13.5), ("sed_teacher", 12.0)]:
        write_run(tmp_path, row, 0, ap)
    lines = render_markdown(load_results(tmp_path), "shapes").splitlines()
    row = {line.split(" | ")[0].strip("| "): line for line in reversed(lines) if line.startswith("| ")}
    assert row["ts+distill"].endswith("| 0.5 | teacher_student |")
    assert row["ts+scale"].endswith("| 1.5 | ts+distill |")
    assert row["sed_hard"].endswith("| -0.5 | ts+scale |")
    assert row["sed"].endswith("| 1.0 | teacher_student |") and row["sed_teacher"].endswith("| -1.0 | sed |")
    assert "sed_hard (SED + hard labels) - sed, AP: 0.5" in lines


def test_every_row_names_its_hard_label_switch():
    """A row's meaning does not follow train.py's --hard-pseudo-labels default: the soft rows (Figure 1) run
    without the hard-label loss, the chain on hard labels with it."""
    data = {k: Path(k) for k in ("train_ann", "train_images", "val_ann", "val_images")}
    args = parse_args([])
    for row in sed.experiment.ROWS:
        if row in ("supervised", "supervised_ema") or row.startswith("teacher_student"):  # no soft rows
            continue
        cfg = sed.config.parse_args(sed.experiment.row_command(args, data, row, 0, Path("o"))[1:], check_files=False)
        assert cfg.hard_pseudo_labels == (row in sed.experiment.ON_HARD_LABELS or row.startswith("sed_hard_")), row


def test_a_saved_run_is_reused_only_with_the_same_settings(tmp_path):
    """Paths and device may differ (another machine, another --out); a flag that changes training may
    not, and neither may a default that changed since the run (its command alone would still match)."""
    cmd = ["train.py", "--train-ann", "/a/train.json", "--seed", "0", "--max-iter", "900", "--out", "/a/sed",
           "--device", "cpu", "--method", "sed", "--unsup-weight", "1"]
    wanted = settings(cmd)
    assert wanted["seed"] == 0 and wanted["max_iter"] == 900 and wanted["unsup_weight"] == 1.0
    assert wanted["weight_floor"] == TrainConfig().weight_floor  # a default, recorded too
    assert not {"train_ann", "out", "device"} & wanted.keys()
    path = tmp_path / "sed_seed0.json"
    assert not saved_run_matches(path, cmd)
    moved = [t.replace("/a/", "/b/") for t in cmd]
    moved[moved.index("cpu")] = "cuda"
    path.write_text(json.dumps({"command": ["python", *moved], "settings": settings(moved)}))
    assert saved_run_matches(path, cmd)
    longer = [t if t != "900" else "600" for t in cmd]
    with pytest.raises(SystemExit, match=r"sed_seed0.json was run with other settings \(max_iter\)"):
        saved_run_matches(path, longer)
    old_default = {**wanted, "weight_floor": wanted["weight_floor"] + 0.5}
    path.write_text(json.dumps({"command": ["python", *cmd], "settings": old_default}))
    with pytest.raises(SystemExit, match=r"other settings \(weight_floor\)"):
        saved_run_matches(path, cmd)


def test_the_data_is_generated_once_per_settings(tmp_path):
    """A second invocation reuses the files (runs beside it may be reading them); other settings regenerate."""
    args = parse_args(["--num-train", "3", "--num-val", "2", "--image-size", "64"])
    first = prepare_data(args, tmp_path / "data")
    image = first["train_images"] / "000000.png"
    written = image.stat().st_mtime_ns
    assert prepare_data(args, tmp_path / "data") == first and image.stat().st_mtime_ns == written
    more = parse_args(["--num-train", "4", "--num-val", "2", "--image-size", "64"])
    assert len(json.loads(prepare_data(more, tmp_path / "data")["train_ann"].read_text())["images"]) == 4


def test_invocations_started_together_generate_the_data_once(tmp_path, monkeypatch):
    """Two invocations whose data folder does not exist yet: one generates, the other waits and reuses."""
    calls = []

    def slow_generate(folder, *args, **kwargs):
        calls.append(folder)
        time.sleep(0.3)  # the second caller arrives while the first is still writing
        (folder / "annotations").mkdir(parents=True)

    monkeypatch.setattr(sed.experiment, "generate", slow_generate)
    args = parse_args(["--num-train", "3", "--num-val", "2", "--image-size", "64"])
    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(lambda _: prepare_data(args, tmp_path / "data"), range(2)))
    assert len(calls) == 1 and results[0] == results[1]


def test_a_burn_in_is_reused_only_with_the_same_settings(tmp_path, monkeypatch):
    """train_all with train.py replaced by a stub: the burn-in runs once per settings (burn_in.json), and a
    row's run starts in an empty folder (the stub's mkdir fails on the folder the last round left; since
    stop 35, when train.py refuses to --resume into a folder that holds another run)."""
    ran = []

    def fake_run(cmd, log_path):
        out = Path(cmd[cmd.index("--out") + 1])
        out.mkdir(parents=True)
        ran.append(out.name)
        if out.name == "burn_in":
            save_checkpoint(out / "last.pt", {"model": {"w": torch.ones(2)}, "iteration": 2, "config": {}})
            return
        metrics = {"model": "student", **{c: 1.0 for c in sed.experiment.COLUMNS}}
        (out / "metrics.jsonl").write_text(json.dumps(metrics) + "\n")
        (out / "log.jsonl").write_text(json.dumps({"iteration": 1}) + "\n")

    monkeypatch.setattr(sed.experiment, "run", fake_run)
    argv = ["--out", str(tmp_path / "runs"), "--rows", "supervised", "--seeds", "0", "--num-train", "3",
            "--num-val", "2", "--image-size", "64", "--iters", "4"]
    for burn_in, results, expected in [("2", "a", ["burn_in", "supervised"]), ("2", "b", ["supervised"]),
                                       ("3", "c", ["burn_in", "supervised"])]:
        ran.clear()
        (tmp_path / results).mkdir()
        sed.experiment.train_all(parse_args([*argv, "--burn-in", burn_in]), tmp_path / results)
        assert ran == expected
        record = json.loads((tmp_path / results / "supervised_seed0.json").read_text())
        assert record["burn_in"] == burn_in_checksum(tmp_path / "runs" / "shapes" / "seed0" / "burn_in.pt")


def test_settings_leave_out_only_what_the_run_does_not_use():
    """A supervised run does not use the SED fields, hard labels do not use the soft targets' fields;
    SED with re-weighting uses all of them."""
    base = ["train.py", "--seed", "0"]
    sed_cmd = [*base, "--method", "sed"]
    assert {"weight_floor", "distill_reg_weight", "unsup_weight", "scale_target"} <= settings(sed_cmd).keys()
    assert not {"weight_floor", "unsup_weight", "ema_momentum"} & settings(base).keys()
    hard = settings([*sed_cmd, "--no-distill", "--no-scale-consistency", "--no-reweight"])
    assert {"unsup_weight", "pseudo_threshold"} <= hard.keys()
    assert not {"weight_floor", "distill_temperature", "hard_pseudo_labels"} & hard.keys()  # hard labels either way
    assert "hard_pseudo_labels" not in settings(sed_cmd)  # the default (stop 26): no distillation, hard labels
    assert "hard_pseudo_labels" in settings([*sed_cmd, "--distill"])
    no_reweight = settings([*sed_cmd, "--no-reweight"])
    assert "distill_reg_weight" in no_reweight and not {"weight_floor", "weight_gamma"} & no_reweight.keys()
    assert "distill_norm" not in no_reweight  # every weight 1: count and weight are the same mean
    assert settings([*sed_cmd, "--no-reweight", "--distill-norm", "split"])["distill_norm"] == "split"


def test_a_field_the_run_does_not_use_is_not_compared(tmp_path):
    """A +scale run saved when --distill-norm weight was the default is the run --no-reweight asks for now."""
    cmd = ["train.py", "--seed", "0", "--method", "sed", "--no-reweight"]
    path = tmp_path / "+scale_seed0.json"
    path.write_text(json.dumps({"settings": {**settings(cmd), "distill_norm": "weight"}}))
    assert saved_run_matches(path, cmd)
    with pytest.raises(SystemExit, match=r"other settings \(distill_norm\)"):
        saved_run_matches(path, [*cmd, "--distill-norm", "split"])


def test_a_field_added_after_a_run_counts_at_its_default(tmp_path):
    """A run saved before --scale-roi existed ran with the RoI part, the flag's default: it is the run the
    default asks for, not the one --no-scale-roi asks for."""
    cmd = ["train.py", "--seed", "0", "--method", "sed"]
    path = tmp_path / "sed_seed0.json"
    path.write_text(json.dumps({"settings": {k: v for k, v in settings(cmd).items() if k != "scale_roi"}}))
    assert saved_run_matches(path, cmd)
    with pytest.raises(SystemExit, match=r"other settings \(scale_roi\)"):
        saved_run_matches(path, [*cmd, "--no-scale-roi"])


def test_the_lr_step_is_three_quarters_of_the_way_after_the_burn_in_unless_given():
    data = {k: Path(k) for k in ("train_ann", "train_images", "val_ann", "val_images")}

    def lr_steps(argv):
        flags = sed.experiment.common_flags(parse_args(argv), data, seed=0)
        return flags[flags.index("--lr-steps") + 1]

    assert lr_steps(["--iters", "900"]) == "825"
    assert lr_steps(["--iters", "1000", "--burn-in", "200"]) == "800"
    assert lr_steps(["--iters", "900", "--lr-step", "700"]) == "700"


def test_a_new_row_pairs_only_with_saved_runs_of_the_same_burn_in(tmp_path, capsys):
    """The burn-in's checksum is the weights' (not the file's), and a seed's saved runs from another burn-in
    (the code changed since, or another machine's rounding) stop the invocation in one line, naming their
    commit; runs that record none are named in a warning."""
    for weights, name in [(torch.ones(2), "a.pt"), (torch.ones(2), "b.pt"), (torch.tensor([1.0, 2.0]), "c.pt")]:
        save_checkpoint(tmp_path / name, {"model": {"w": weights}, "iteration": 2, "config": {"out": name}})
    same, other = burn_in_checksum(tmp_path / "a.pt"), burn_in_checksum(tmp_path / "c.pt")
    assert same == burn_in_checksum(tmp_path / "b.pt") and same != other
    results = tmp_path / "results"
    results.mkdir()
    (results / "supervised_seed0.json").write_text(json.dumps({"burn_in": same}))
    (results / "sed_seed1.json").write_text(json.dumps({"burn_in": other, "commit": "c4d682e75465b0ef"}))
    check_pairing(results, 0, same)
    assert capsys.readouterr().err == ""
    with pytest.raises(SystemExit, match=r"sed_seed1.json started from another burn-in than today's seed 1 "
                                         r"\(it ran at c4d682e; the code changed since, or this machine"):
        check_pairing(results, 1, same)
    (results / "sed_hard_seed0.json").write_text(json.dumps({"row": "sed_hard"}))  # saved before stop 26
    check_pairing(results, 0, same)
    assert "sed_hard_seed0.json record no burn-in checksum" in capsys.readouterr().err


def test_a_run_evaluated_more_than_once_keeps_its_curve():
    """--eval-every: one curve entry per evaluation, with the pseudo-label diagnostics of that iteration."""
    metrics = {k: 1.0 for k in sed.experiment.COLUMNS}
    evaluations = [{"iteration": 300, "model": "teacher", **metrics}, {"iteration": 600, "model": "teacher",
                                                                        **metrics, "AP": 2.0}]
    diagnostics = [{"iteration": 600, "pl_num_images": 4.0, **{k: 0.5 for k in sed.experiment.DIAGNOSTICS}}]
    points = sed.experiment.curve(evaluations, diagnostics)["curve"]
    assert [p["iteration"] for p in points] == [300, 600] and [p["AP"] for p in points] == [1.0, 2.0]
    assert "pl_recall@0.5" not in points[0] and points[1]["pl_recall@0.5"] == 0.5
    assert sed.experiment.curve(evaluations[:1], diagnostics) == {}
    assert parse_args(["--eval-every", "300"]).eval_every == 300


def test_results_show_the_curves_of_runs_evaluated_during_training(tmp_path):
    """Per row and evaluation: AP mean +- std, the gain over supervised paired per seed, the diagnostics."""
    for seed, (sup, sed) in enumerate([((10.0, 12.0), (11.0, 15.0)), ((20.0, 22.0), (20.0, 26.0))]):
        for row, aps in (("supervised", sup), ("sed_hard_no_distill", sed)):
            write_run(tmp_path, row, seed, aps[-1])
            path = tmp_path / f"{row}_seed{seed}.json"
            record = json.loads(path.read_text())
            record["curve"] = [{"iteration": it, "AP": ap, "pl_recall@0.5": 0.5 + seed / 10}
                               for it, ap in zip((300, 600), aps)]
            path.write_text(json.dumps(record))
    lines = render_markdown(load_results(tmp_path), "shapes").splitlines()
    at = lines.index("During training (every --eval-every iterations; SED rows: the EMA teacher), AP:")
    assert lines[at + 2:at + 6] == ["| row | 300 | 600 |", "|---|---|---|",
                                    "| supervised | 15.0 ± 7.1 | 17.0 ± 7.1 |",
                                    "| sed_hard_no_distill | 15.5 ± 6.4 | 20.5 ± 7.8 |"]
    at = lines.index("AP gain over supervised, paired per seed:")
    assert lines[at + 4] == "| sed_hard_no_distill | 0.5 ± 0.7 | 3.5 ± 0.7 |"
    at = lines.index("Teacher's pl_recall@0.5, mean over seeds:")
    assert lines[at + 4] == "| sed_hard_no_distill | 0.55 | 0.55 |"
    plain = tmp_path / "plain"
    plain.mkdir()
    write_run(plain, "supervised", 0, 1.0)   # evaluated at the end only: no such lines
    assert "During training" not in render_markdown(load_results(plain), "shapes")


def test_the_ema_of_supervised_training_compares_with_supervised(tmp_path):
    """supervised_ema (--unsup-weight 0) is over supervised, whatever else ran; the default and the
    teacher-student are named over it."""
    for row, ap in (("supervised", 10.0), ("supervised_ema", 11.0), ("sed", 12.0), ("teacher_student", 12.5),
                    ("sed_hard_no_distill", 14.0)):
        write_run(tmp_path, row, 0, ap)
    table = load_results(tmp_path)
    assert sed.experiment.references(table)["supervised_ema"] == "supervised"
    lines = render_markdown(table, "shapes").splitlines()
    assert "sed_hard_no_distill (the default) - supervised_ema, AP: 3.0" in lines
    assert "teacher_student - supervised_ema, AP: 1.5" in lines
    cfg = sed.config.parse_args(sed.experiment.row_command(parse_args([]), {k: Path(k) for k in (
        "train_ann", "train_images", "val_ann", "val_images")}, "supervised_ema", 0, Path("o"))[1:], check_files=False)
    assert cfg.method == "sed" and cfg.unsup_weight == 0 and cfg.ema_momentum == 0.99


def test_the_class_only_hard_label_rows_compare_with_their_own_row(tmp_path):
    """teacher_student_cls_only and sed_hard_no_distill_cls_only (--no-hard-label-box-losses) are over the same
    row with box losses, and run with that switch."""
    for row, ap in (("supervised", 10.0), ("teacher_student", 12.0), ("sed_hard", 12.5), ("sed_hard_no_distill", 14.0),
                    ("teacher_student_cls_only", 11.0), ("sed_hard_no_distill_cls_only", 13.0)):
        write_run(tmp_path, row, 0, ap)
    references = sed.experiment.references(load_results(tmp_path))
    assert references["teacher_student_cls_only"] == "teacher_student"
    assert references["sed_hard_no_distill_cls_only"] == "sed_hard_no_distill"
    data = {k: Path(k) for k in ("train_ann", "train_images", "val_ann", "val_images")}
    for row in ("teacher_student_cls_only", "sed_hard_no_distill_cls_only"):
        cfg = sed.config.parse_args(sed.experiment.row_command(parse_args([]), data, row, 0, Path("o"))[1:],
                                    check_files=False)
        assert cfg.hard_pseudo_labels and not cfg.hard_label_box_losses and not cfg.distill
