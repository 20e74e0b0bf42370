"""The results store (rankrobust/store.py): rows from run folders, summaries, paired comparisons, Holm."""
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from rankrobust.runs import RunDir, SweepDir
from rankrobust import EXAMPLES_DIR
from rankrobust.stats import holm_family, seed_mean_ci
from rankrobust.store import (collect, compare_drops, compare_losses, compare_runs, compare_runs_per_user, flatten,
                              format_summary, grid_axes, load_store, noise_axis, parse_arm, run_row, stop_reason,
                              summarize, write_store)
from rankrobust.sweeps import load_spec, run_sweep
from tests.test_sweep import tiny_spec


def test_compare_and_holm(tmp_path):
    spec = load_spec(tiny_spec(tmp_path, seeds=(0, 1)))
    out = tmp_path / "out"
    run_sweep(spec, out, progress=False)
    table = compare_losses(load_store(out), ["loss.name", "noise.pos_ratio"], "sl", "bsl")
    assert len(table) == 2 and (table["seeds"] == 2).all()  # one row per cell, its two seeds matched
    assert table["p"].between(0, 1).all() and (table["p_holm"] >= table["p"]).all()
    assert table["p_holm"].tolist() == pytest.approx(holm_family(table["p"]).tolist())
    assert holm_family([0.01, 0.04, 0.03]).tolist() == pytest.approx([0.03, 0.06, 0.06])


# ---------------------------------------------------------------------------- Holm against its definition
def holm_oracle(p: list[float]) -> list[float]:
    """Holm step-down: the i-th smallest gets max_{j <= i} min(1, (m - j + 1) p_(j)) (ranks from 1)."""
    m = len(p)
    order = sorted(range(m), key=lambda k: (p[k], k))
    out = [0.0] * m
    for i, k in enumerate(order):
        out[k] = max(min(1.0, (m - j) * p[order[j]]) for j in range(i + 1))
    return out


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(0.0, 1.0), min_size=1, max_size=12))
def test_holm_matches_step_down_definition(p):
    adjusted = holm_family(np.array(p))
    assert adjusted.tolist() == pytest.approx(holm_oracle(p))
    assert (adjusted >= np.array(p) - 1e-15).all() and (adjusted <= 1.0).all()


# ---------------------------------------------------------------------------- rows, collect, load
def test_flatten():
    assert flatten({"a": {"b": 1, "c": {"d": "x"}}, "ks": [5, 20], "e": None}) == {
        "a.b": 1, "a.c.d": "x", "ks": "[5, 20]", "e": None}


def fake_run(folder: Path, loss: str, seed: int, status: str = "done", per_user: dict | None = None,
             epochs: int = 15, record: dict | None = None, **config) -> RunDir:
    """A run folder written by hand (no training): config, metrics, per-user table, status.

    ``record`` adds top-level metrics.json keys (``epochs_run``, ``stop_reason`` …); ``config`` adds
    top-level config sections (``noise={"pos_ratio": 0.1}``).
    """
    import json

    run = RunDir(folder)
    run.prepare()
    run.write_config(json.dumps({"loss": {"name": loss}, "train": {"seed": seed, "ks": [5, 20], "epochs": epochs},
                                 **config}))
    if status == "done":
        users = per_user or {"user": [0, 1, 2], "ndcg@20": [0.1, 0.2, 0.3]}
        run.write_table("per_user", pd.DataFrame(users))
        run.write_metrics({"test": {"ndcg@20": float(np.mean(users["ndcg@20"])), "recall@20": 0.5},
                           "fairness": {"gini": 0.25, "label": "text is not copied"},
                           "environment": {"threads": 2}, "best_epoch": 3, "group_size_mean": 1.5,
                           "warnings": ["w1", "w2"], **(record or {})})
        run.finish()
    elif status == "failed":
        run.fail("Traceback (most recent call last):\nValueError: boom")
    return run


def test_run_row_done_failed_unfinished(tmp_path):
    done = run_row(fake_run(tmp_path / "a", "sl", 0))
    assert done["status"] == "done" and done["loss.name"] == "sl" and done["train.ks"] == "[5, 20]"
    assert done["test.ndcg@20"] == pytest.approx(0.2) and done["fairness.gini"] == 0.25
    assert "fairness.label" not in done and "environment.threads" not in done
    assert done["best_epoch"] == 3 and done["group_size_mean"] == 1.5 and done["warnings"] == "w1 | w2"
    failed = run_row(fake_run(tmp_path / "b", "sl", 0, status="failed"))
    assert failed["status"] == "failed" and failed["error"] == "ValueError: boom"
    unfinished = run_row(fake_run(tmp_path / "c", "sl", 0, status="none"))
    assert unfinished["status"] == "unfinished" and "test.ndcg@20" not in unfinished


def test_store_paths_relative_on_disk_absolute_when_loaded(tmp_path):
    sweep = SweepDir(tmp_path / "sw")
    fake_run(sweep.run("b"), "bsl", 0)
    fake_run(sweep.run("a"), "sl", 0)
    frame = collect(sweep.path)
    assert frame["cell_id"].tolist() == ["a", "b"] and frame["run_dir"].tolist() == ["runs/a", "runs/b"]
    write_store(sweep.path)
    moved = tmp_path / "moved"
    sweep.path.rename(moved)
    loaded = load_store(moved)
    assert [Path(p) for p in loaded["run_dir"]] == [moved / "runs" / "a", moved / "runs" / "b"]
    assert load_store(moved / "store.parquet")["cell_id"].tolist() == ["a", "b"]
    with pytest.raises(FileNotFoundError, match="rankrobust sweep"):
        load_store(tmp_path / "nowhere")


def test_grid_axes_from_spec_or_varying_columns(tmp_path):
    frame = pd.DataFrame({"loss.name": ["sl", "bsl"], "train.seed": [0, 1], "train.lr": [0.1, 0.1],
                          "test.ndcg@20": [0.1, 0.2]})
    assert grid_axes(tmp_path, frame) == ["loss.name"]
    SweepDir(tmp_path).write_spec({"name": "x", "grid": {"noise.pos_ratio": [0.0]}})
    assert grid_axes(tmp_path, frame) == ["noise.pos_ratio"]


# ---------------------------------------------------------------------------- summaries and comparisons
def test_summarize_and_format():
    frame = pd.DataFrame({"status": ["done", "done", "done", "failed"], "loss.name": ["sl", "sl", "bsl", "bsl"],
                          "test.recall@20": [0.1, 0.3, 0.5, 9.0], "test.ndcg@20": [0.2, 0.2, 0.4, 9.0],
                          "stop_reason": ["epoch_cap", "early_stopping", "time_limit", None]})
    table = summarize(frame, ["loss.name"])
    assert table.loc["sl", ("test.recall@20", "mean")] == pytest.approx(0.2)
    assert table.loc["sl", ("test.recall@20", "std")] == pytest.approx(np.std([0.1, 0.3], ddof=1))
    half = stats.t.ppf(0.975, 1) * np.std([0.1, 0.3], ddof=1) / np.sqrt(2)  # t over the two seeds
    assert table.loc["sl", ("test.recall@20", "hi")] == pytest.approx(0.2 + half)
    assert table.loc["sl", ("test.recall@20", "ci_method")] == "t"  # no per-user tables in this frame
    assert table.loc["bsl", ("test.ndcg@20", "n_seeds")] == 1  # the failed run is left out
    assert table.loc["sl", ("runs", "capped")] == 1 and table.loc["bsl", ("runs", "time_limit")] == 1
    text = format_summary(table)
    assert f"0.2000 [{0.2 - half:.4f}, {0.2 + half:.4f}] n=2" in text and "0.4000 (n=1, no CI)" in text
    assert re.search(r"sl .* t +1/2 +0/2", text) and "capped: runs that stopped at their epoch cap" in text
    assert format_summary(summarize(frame.assign(status="failed"), ["loss.name"])) == "(no finished runs)"


def test_summarize_bootstraps_where_per_user_tables_exist(tmp_path):
    """Runs with per-user tables get the hierarchical bootstrap, widened to hold the t-interval."""
    sweep = SweepDir(tmp_path / "sw")
    rng = np.random.default_rng(1)
    for seed in range(3):
        fake_run(sweep.run(f"sl-{seed}"), "sl", seed, per_user={"user": list(range(50)),
                                                                "ndcg@20": rng.random(50).tolist()})
    write_store(sweep.path)
    table = summarize(load_store(sweep.path), ["loss.name"])
    row = table.loc["sl", "test.ndcg@20"]
    _, lo, hi, _ = seed_mean_ci(load_store(sweep.path)["test.ndcg@20"])
    assert row["ci_method"] == "bootstrap+t" and row["lo"] <= lo and row["hi"] >= hi and row["n_seeds"] == 3
    assert table.loc["sl", ("test.recall@20", "ci_method")] == "t"  # the per-user tables lack recall@20


def test_stop_reason_recorded_or_derived_for_old_runs(tmp_path):
    """Recorded stop_reason wins; older runs: stopped_early → early_stopping, epochs_run = cap → epoch_cap, else time."""
    assert stop_reason({"stop_reason": "stopped_by_probe", "epochs_run": 15}, 15) == "stopped_by_probe"
    assert stop_reason({"stopped_early": True, "epochs_run": 15}, 15) == "early_stopping"
    assert stop_reason({"stopped_early": False, "epochs_run": 15}, 15) == "epoch_cap"
    assert stop_reason({"stopped_early": False, "epochs_run": 9}, 15) == "time_limit"
    assert stop_reason({}, 15) is None
    sweep = SweepDir(tmp_path / "sw")
    fake_run(sweep.run("a"), "sl", 0, record={"stopped_early": False, "epochs_run": 15})
    fake_run(sweep.run("b"), "sl", 1, record={"stopped_early": True, "epochs_run": 6})
    fake_run(sweep.run("c"), "sl", 2, record={"stop_reason": "time_limit", "epochs_run": 4})
    assert [run_row(sweep.run(c))["stop_reason"] for c in "abc"] == ["epoch_cap", "early_stopping", "time_limit"]
    write_store(sweep.path)
    old = pd.read_parquet(sweep.store_path).drop(columns="stop_reason")  # a store written before the column
    old.to_parquet(sweep.store_path)
    assert load_store(sweep.path)["stop_reason"].tolist() == ["epoch_cap", "early_stopping", "time_limit"]


def test_shipped_store_stop_reasons_and_capped_counts():
    frame = load_store(EXAMPLES_DIR / "bsl-batching-quick")
    assert (frame["stop_reason"] == "early_stopping").all()  # tuned, up to 100 epochs: all 60 stopped early
    table = summarize(frame, grid_axes(EXAMPLES_DIR / "bsl-batching-quick", frame))
    assert (table[("runs", "capped")] == 0).all() and (table[("runs", "n")] == 5).all()
    assert set(table[("test.ndcg@20", "ci_method")]) == {"t", "bootstrap+t"}  # per-user tables: BSL runs only
    old = load_store(Path(__file__).parent / "data" / "np-quick-2026-11")  # the 15-epoch example until 2026-12
    assert old["stop_reason"].value_counts().to_dict() == {"epoch_cap": 18, "early_stopping": 2}
    table = summarize(old, grid_axes(Path(__file__).parent / "data" / "np-quick-2026-11", old))
    assert table[("runs", "capped")].sum() == 18


def test_parse_arm():
    assert parse_arm("bsl") == {"loss.name": "bsl"}
    assert parse_arm("loss.name=bsl,train.batching=users,train.positives_per_user=4,loss.tau=0.5") == {
        "loss.name": "bsl", "train.batching": "users", "train.positives_per_user": 4, "loss.tau": 0.5}


def test_compare_runs_pairs_by_seed_and_matches_scipy(tmp_path):
    """Arms are paired on the seed; the test is scipy's paired t over seeds; the per-user view pools the seeds."""
    sweep = SweepDir(tmp_path / "sw")
    rng = np.random.default_rng(0)
    values = {}
    for loss in ("sl", "bsl"):
        for seed in (0, 1, 2):
            v = rng.random(12).round(3)
            values[loss, seed] = v
            fake_run(sweep.run(f"{loss}-{seed}"), loss, seed, per_user={"user": list(range(12)), "ndcg@20": v},
                     record={"epochs_run": 15, "stopped_early": seed == 0})
    write_store(sweep.path)
    table = compare_runs(load_store(sweep.path), ["loss.name"], {"loss.name": "sl"}, {"loss.name": "bsl"})
    a = np.array([values["sl", s].mean() for s in (0, 1, 2)])
    b = np.array([values["bsl", s].mean() for s in (0, 1, 2)])
    row = table.iloc[0]
    assert len(table) == 1 and row["seeds"] == 3 and row["diff"] == pytest.approx((b - a).mean())
    assert row["p"] == pytest.approx(stats.ttest_rel(b, a).pvalue) and row["p_holm"] == pytest.approx(row["p"])
    assert row["d_z"] == pytest.approx((b - a).mean() / (b - a).std(ddof=1))
    assert (row["runs"], row["capped"]) == (6, 4) and table.attrs == {"runs": 6, "capped": 4}
    per_user = compare_runs_per_user(load_store(sweep.path), ["loss.name"], {"loss.name": "sl"}, {"loss.name": "bsl"})
    pooled = np.mean([values["bsl", s] - values["sl", s] for s in (0, 1, 2)], axis=0)
    assert per_user.iloc[0]["view"] == "secondary: per-user, pooled over 3 seeds"
    assert per_user.iloc[0]["p"] == pytest.approx(stats.wilcoxon(pooled).pvalue)
    with pytest.raises(ValueError, match="no column 'loss.mode'"):
        compare_runs(load_store(sweep.path), ["loss.name"], {"loss.mode": "paper"}, {"loss.name": "bsl"})


def test_compare_drops_on_a_noise_grid(tmp_path):
    """Difference of drops from the clean level per noisy level, one Holm family over the table."""
    sweep = SweepDir(tmp_path / "sw")
    rng = np.random.default_rng(2)
    value = {}
    for loss in ("sl", "bsl"):
        for ratio in (0.0, 0.2, 0.4):
            for seed in (0, 1, 2):
                v = rng.random(6)
                value[loss, ratio, seed] = v.mean()
                fake_run(sweep.run(f"{loss}-{ratio}-{seed}"), loss, seed, noise={"pos_ratio": ratio},
                         per_user={"user": list(range(6)), "ndcg@20": v})
    write_store(sweep.path)
    frame = load_store(sweep.path)
    axes = ["loss.name", "noise.pos_ratio"]
    assert noise_axis(frame, axes) == "noise.pos_ratio"
    table = compare_drops(frame, axes, {"loss.name": "sl"}, {"loss.name": "bsl"})
    assert table["noise.pos_ratio"].tolist() == [0.2, 0.4]
    for row in table.itertuples():
        d = [(value["sl", 0.0, s] - value["sl", row._1, s]) - (value["bsl", 0.0, s] - value["bsl", row._1, s])
             for s in (0, 1, 2)]
        assert row.diff == pytest.approx(np.mean(d))
    assert table["p_holm"].tolist() == pytest.approx(holm_family(table["p"]).tolist())
    assert table.attrs["runs"] == 18  # the clean runs serve both rows but count once
    with pytest.raises(ValueError, match="no numeric noise axis"):
        noise_axis(frame, ["loss.name"])


# ---------------------------------------------------------------------------- current cells only (item 12)
def test_load_store_keeps_the_recorded_cells(tmp_path):
    """Rows of cell ids not recorded in sweep.json are stale; an old record (no cells, sorted grid keys) works too."""
    sweep = SweepDir(tmp_path / "sw")
    fake_run(sweep.run("model.name=mf__loss.name=sl__seed=0"), "sl", 0)
    fake_run(sweep.run("model.name=mf__loss.name=bpr__seed=0"), "bpr", 0)
    write_store(sweep.path)
    assert len(load_store(sweep.path)) == 2  # no record: every run counts
    sweep.write_spec({"name": "x", "grid": {"loss.name": ["sl"], "model.name": ["mf"]}, "seeds": [0]})
    assert load_store(sweep.path)["cell_id"].tolist() == ["model.name=mf__loss.name=sl__seed=0"]
    sweep.write_spec({"name": "x", "grid": {}, "seeds": [0], "cells": {"model.name=mf__loss.name=bpr__seed=0": None}})
    assert load_store(sweep.path / "store.parquet")["cell_id"].tolist() == ["model.name=mf__loss.name=bpr__seed=0"]
    everything = load_store(sweep.path, include_stale=True)
    assert everything["stale"].tolist() == [False, True] and [d.path.name for d in sweep.stale_runs()] == [
        "model.name=mf__loss.name=sl__seed=0"]


# ---------------------------------------------------------------------------- bad folders: one line, no traceback
def test_run_row_of_a_damaged_run_is_corrupt_not_an_error(tmp_path):
    run = fake_run(tmp_path / "a", "sl", 0)
    (run.path / "config.json").write_text('{"loss": ')
    row = run_row(run)
    assert row["status"] == "corrupt" and "config.json is not valid JSON" in row["error"]
    frame = pd.DataFrame([row])
    assert summarize(frame, ["loss.name"]).empty and compare_runs(frame, ["loss.name"], {"loss.name": "a"},
                                                                  {"loss.name": "b"}).empty


@pytest.mark.parametrize("damage,match", [
    ("store", r"store\.parquet is not a readable results store .*rankrobust sweep SPEC --out"),
    ("spec", r"sweep\.json is not valid JSON .*delete it and run `rankrobust sweep SPEC --out"),
    ("missing", r"no results store at .*store\.parquet; run `rankrobust sweep SPEC --out"),
    ("per_user", r"per_user\.parquet cannot be read"),
])
def test_results_on_a_bad_folder_print_one_line(tmp_path, capsys, damage, match):
    from rankrobust.cli import main

    sweep = SweepDir(tmp_path / "sw")
    for loss in ("sl", "bsl"):
        fake_run(sweep.run(loss), loss, 0)
    sweep.write_spec({"name": "x", "grid": {"loss.name": ["sl", "bsl"]}, "seeds": [0], "cells": {"sl": None,
                                                                                                "bsl": None}})
    write_store(sweep.path)
    if damage == "store":
        sweep.store_path.write_bytes(sweep.store_path.read_bytes()[:40])
    elif damage == "spec":
        sweep.spec_path.write_text('{"name": "x", "gri')
    elif damage == "missing":
        sweep.store_path.unlink()
    else:
        (sweep.run("bsl").path / "per_user.parquet").write_bytes(b"garbage")
    argv = ["results", str(sweep.path)] + (["--compare", "sl", "bsl"] if damage == "per_user" else [])
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert re.search(match, err), err


def test_sweep_into_a_folder_with_a_damaged_record_prints_one_line(tmp_path, capsys):
    from rankrobust.cli import main

    spec = tiny_spec(tmp_path, losses=("sl",), ratios=(0.0,), epochs=1)
    out = SweepDir(tmp_path / "out")
    out.path.mkdir()
    out.spec_path.write_text("{")
    assert main(["sweep", str(spec), "--out", str(out.path), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "sweep.json is not valid JSON" in err and "delete it" in err
    assert main(["sweep", str(tmp_path), "--out", str(out.path)]) == 2  # a folder given as the spec
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "cannot be read" in err


# ---------------------------------------------------------------------------- not a sweep folder: say what it is
@pytest.mark.parametrize("given,match", [
    ("run", (r"^rankrobust results: error: (?P<p>\S+) is a single run folder \(it holds metrics\.json\), not a "
             r"sweep folder: its metrics are in (?P=p)/metrics\.json; pass a sweep folder")),
    ("run_file", (r"metrics\.json is a file of the single run folder \S+, not a sweep folder: the run's metrics "
                  r"are in \S+/metrics\.json; pass a sweep folder")),
    ("file", (r"README\.md is a file, not a sweep folder: pass a sweep folder \(one written by `rankrobust sweep "
              r"SPEC --out DIR`\)$")),
    ("nothing", r"nope does not exist; pass a sweep folder"),
    ("sweep_run", r"is a single run folder .* such as the sweep folder it belongs to, \S+sw$"),
])
def test_results_on_a_run_folder_or_file_says_what_it_is(tmp_path, capsys, given, match):
    from rankrobust.cli import main

    sweep = SweepDir(tmp_path / "sw")
    fake_run(sweep.run("sl"), "sl", 0)
    write_store(sweep.path)
    run = fake_run(tmp_path / "demo", "sl", 0)
    (tmp_path / "README.md").write_text("# notes\n")
    path = {"run": run.path, "run_file": run.path / "metrics.json", "file": tmp_path / "README.md",
            "nothing": tmp_path / "nope", "sweep_run": sweep.run("sl").path}[given]
    assert main(["results", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "store.parquet; run `rankrobust sweep" not in err
    assert re.search(match, err), err


def test_compare_with_a_value_not_in_the_store_names_it(tmp_path, capsys):
    """--compare sl foo: 'foo' occurs in no run, so say that (listing the values that do), exit 2."""
    from rankrobust.cli import main

    sweep = SweepDir(tmp_path / "sw")
    for loss in ("sl", "bsl"):
        fake_run(sweep.run(loss), loss, 0)
    write_store(sweep.path)
    assert main(["results", str(sweep.path), "--compare", "sl", "foo"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "rankrobust results: error: no run of the store has loss.name = 'foo'; values of loss.name " \
                  "there: bsl, sl"
    assert main(["results", str(sweep.path), "--compare", "sl", "train.seed=7"]) == 2
    assert "no run of the store has train.seed = 7; values of train.seed there: 0" in capsys.readouterr().err
    with pytest.raises(ValueError, match="no run of the store has loss.name = 'bls' \\(did you mean 'bsl'\\?\\)"):
        compare_runs(load_store(sweep.path), ["loss.name"], {"loss.name": "sl"}, {"loss.name": "bls"})
    assert main(["results", str(sweep.path), "--compare", "sl", "bsl"]) == 0  # both occur: the test runs


def test_an_old_layout_store_copied_reads_its_own_runs(tmp_path):
    """Stores written before run_dir was relative hold absolute paths of the original folder: a copy reads its own."""
    import shutil

    from rankrobust.store import load_store

    original = tmp_path / "orig"
    for cell, value in (("a", 0.29), ("b", 0.30)):
        run = RunDir(original / "runs" / cell)
        run.path.mkdir(parents=True)
        run.write_table("per_user", pd.DataFrame({"user": [0], "value": [value]}))
    pd.DataFrame({"cell_id": ["a", "b"], "run_dir": [str(original / "runs" / c) for c in "ab"],
                  "status": ["done", "done"]}).to_parquet(original / "store.parquet")
    copy = tmp_path / "copy"
    shutil.copytree(original, copy)
    frame = load_store(copy)
    assert list(frame["run_dir"]) == [str(copy / "runs" / "a"), str(copy / "runs" / "b")]


def test_shipped_stores_report_no_missing_cells():
    """Old records list a cell's grid keys in sorted order; every cell of the shipped stores is done."""
    from rankrobust.store import cells_progress, load_store

    for name in ("lc-quick", "bsl-batching-quick", "np-quick", "var-quick"):
        folder = Path(__file__).resolve().parents[1] / "rankrobust" / "examples" / name
        assert cells_progress(folder, load_store(folder)) is None, name
