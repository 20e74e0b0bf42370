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
from rankrobust.store import (collect, compare_losses, compare_runs, flatten, format_summary, grid_axes, holm,
                              load_store, parse_arm, run_row, summarize, write_store)
from rankrobust.sweeps import load_spec, run_sweep
from tests.test_sweep import tiny_spec


def test_compare_and_holm(tmp_path):
    spec = load_spec(tiny_spec(tmp_path, seeds=(0, 1)))
    out = tmp_path / "out"
    run_sweep(spec, out, progress=False)
    table = compare_losses(load_store(out), ["loss.name", "noise.pos_ratio"], "sl", "bsl")
    assert len(table) == 4 and table["p"].between(0, 1).all() and (table["p_holm"] >= table["p"]).all()
    assert holm([0.01, 0.04, 0.03]).tolist() == pytest.approx([0.03, 0.06, 0.06])


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
    adjusted = holm(np.array(p))
    assert adjusted.tolist() == pytest.approx(holm_oracle(p))
    assert (adjusted >= np.array(p) - 1e-15).all() and (adjusted <= 1.0).all()


# ---------------------------------------------------------------------------- rows, collect, load
def test_flatten():
    assert flatten({"a": {"b": 1, "c": {"d": "x"}}, "ks": [5, 20], "e": None}) == {
        "a.b": 1, "a.c.d": "x", "ks": "[5, 20]", "e": None}


def fake_run(folder: Path, loss: str, seed: int, status: str = "done", per_user: dict | None = None) -> RunDir:
    """A run folder written by hand (no training): config, metrics, per-user table, status."""
    run = RunDir(folder)
    run.prepare()
    run.write_config(f'{{"loss": {{"name": "{loss}"}}, "train": {{"seed": {seed}, "ks": [5, 20]}}}}')
    if status == "done":
        users = per_user or {"user": [0, 1, 2], "ndcg@20": [0.1, 0.2, 0.3]}
        run.write_table("per_user", pd.DataFrame(users))
        run.write_metrics({"test": {"ndcg@20": float(np.mean(users["ndcg@20"])), "recall@20": 0.5},
                           "fairness": {"gini": 0.25, "label": "text is not copied"},
                           "environment": {"threads": 2}, "best_epoch": 3, "group_size_mean": 1.5,
                           "warnings": ["w1", "w2"]})
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
                          "test.recall@20": [0.1, 0.3, 0.5, 9.0], "test.ndcg@20": [0.2, 0.2, 0.4, 9.0]})
    table = summarize(frame, ["loss.name"])
    assert table.loc["sl", ("test.recall@20", "mean")] == pytest.approx(0.2)
    assert table.loc["sl", ("test.recall@20", "std")] == pytest.approx(np.std([0.1, 0.3], ddof=1))
    assert table.loc["bsl", ("test.ndcg@20", "count")] == 1  # the failed run is left out
    text = format_summary(table)
    assert "0.2000 ± 0.1414 (n=2)" in text and "0.4000 (n=1)" in text
    assert format_summary(summarize(frame.assign(status="failed"), ["loss.name"])) == "(no finished runs)"


def test_parse_arm():
    assert parse_arm("bsl") == {"loss.name": "bsl"}
    assert parse_arm("loss.name=bsl,train.batching=users,train.positives_per_user=4,loss.tau=0.5") == {
        "loss.name": "bsl", "train.batching": "users", "train.positives_per_user": 4, "loss.tau": 0.5}


def test_compare_runs_pairs_by_seed_and_matches_scipy(tmp_path):
    """Arms are paired on the seed; p is scipy's two-sided Wilcoxon on the paired per-user values."""
    sweep = SweepDir(tmp_path / "sw")
    rng = np.random.default_rng(0)
    values = {}
    for loss in ("sl", "bsl"):
        for seed in (0, 1):
            v = rng.random(12).round(3)
            values[loss, seed] = v
            fake_run(sweep.run(f"{loss}-{seed}"), loss, seed, per_user={"user": list(range(12)), "ndcg@20": v})
    write_store(sweep.path)
    table = compare_runs(load_store(sweep.path), ["loss.name"], {"loss.name": "sl"}, {"loss.name": "bsl"})
    assert table["train.seed"].tolist() == [0, 1] and (table["users"] == 12).all()
    for row, seed in zip(table.itertuples(), (0, 1)):
        a, b = values["sl", seed], values["bsl", seed]
        assert row.diff == pytest.approx((b - a).mean())
        assert row.p == pytest.approx(stats.wilcoxon(a, b).pvalue)
    assert table["p_holm"].tolist() == pytest.approx(holm(table["p"].to_numpy()).tolist())
    with pytest.raises(ValueError, match="no column 'loss.mode'"):
        compare_runs(load_store(sweep.path), ["loss.name"], {"loss.mode": "paper"}, {"loss.name": "bsl"})


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
