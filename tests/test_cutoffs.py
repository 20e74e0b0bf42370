"""Nothing downstream assumes a cutoff the runs did not compute (issue 10, item 3): results, figures, comparisons."""
from __future__ import annotations

import numpy as np
import pytest

from analysis import figures
from rankrobust.cli import main
from rankrobust.store import computed_cutoffs, load_store, missing_cutoff, summarize
from rankrobust.sweeps import parse_spec, run_sweep
from tests.test_identity import write_data


@pytest.fixture(scope="module")
def k10_sweep(tmp_path_factory):
    """A loss-comparison sweep whose runs computed only @5 and @10 (selection on recall@10), with fairness."""
    root = tmp_path_factory.mktemp("k10")
    train, test = write_data(root / "data")
    spec = parse_spec({"name": "loss-comparison-k10", "seeds": [0], "options": {"fairness": True},
                       "base": {"data": {"train_path": train, "test_path": test}, "model": {"dim": 8},
                                "train": {"epochs": 2, "batch_size": 64, "num_negatives": 4, "device": "cpu",
                                          "ks": [5, 10], "metric": "recall@10", "patience": 0}},
                       "grid": {"model.name": ["mf"], "loss.name": ["bpr", "sl"]}})
    report = run_sweep(spec, root / "lc", progress=False)
    assert not report.failed
    return root / "lc"


def test_figures_use_the_cutoff_the_runs_computed(k10_sweep, tmp_path, capsys):
    sweep = figures.open_sweeps([k10_sweep])["loss-comparison"]
    assert figures.figure_cutoff(sweep) == 10
    assert set(figures.accuracy_frame(sweep)["metric"]) == {"recall@10", "ndcg@10"}
    groups = figures.group_frame(sweep)
    assert set(groups["k"]) == {10} and len(groups) == 2 * 10
    made = figures.make_figures([k10_sweep], tmp_path / "fig", only=["1", "4"])
    assert {p.name for p in made} >= {"fig1-loss-comparison.png", "fig4-popularity-groups.png"}
    assert "skipped" not in capsys.readouterr().err


def test_a_cutoff_some_runs_lack_is_named(k10_sweep, capsys):
    sweep = figures.open_sweeps([k10_sweep])["loss-comparison"]
    store = sweep.store.copy()
    first = store["cell_id"].iloc[0]
    store.loc[0, ["test.recall@10", "test.ndcg@10"]] = np.nan  # as if that run had train.ks = [5]
    broken = figures.Sweep(sweep.path, sweep.name, store)
    with pytest.raises(figures.MissingData) as info:
        figures.accuracy_frame(broken)
    assert str(info.value) == (f"{sweep.path}: 1 of 2 finished runs did not compute test.recall@10 and test.ndcg@10 "
                               f"(e.g. {first}; K = 10 is not in their train.ks); cutoffs every run computed: 5")
    assert computed_cutoffs(store) == [5] and missing_cutoff(sweep.store, 10) is None


def test_results_and_compare_default_to_the_runs_cutoff(k10_sweep, capsys):
    assert main(["results", str(k10_sweep), "--compare", "bpr", "sl"]) == 0
    out = capsys.readouterr().out
    assert "test.recall@10" in out and "test.ndcg@10" in out and "@20" not in out
    assert "sl vs bpr, test ndcg@10, over matched seeds" in out
    table = summarize(load_store(k10_sweep), ["loss.name"])
    assert list(table.columns.get_level_values(0).unique()) == ["test.recall@10", "test.ndcg@10", "runs"]


def test_results_name_a_cutoff_some_runs_lack(k10_sweep, tmp_path, capsys):
    import shutil

    import pandas as pd

    copy = tmp_path / "lc"
    shutil.copytree(k10_sweep, copy)
    store = pd.read_parquet(copy / "store.parquet")
    store.loc[0, ["test.recall@10", "test.ndcg@10"]] = np.nan  # as if that run had computed @5 only
    store.to_parquet(copy / "store.parquet", index=False)
    assert main(["results", str(copy)]) == 0
    out = capsys.readouterr().out
    assert (f"warning: 1 of 2 finished runs did not compute test.recall@10 and test.ndcg@10 (e.g. "
            f"{store['cell_id'].iloc[0]}; K = 10 is not in their train.ks); cutoffs every run computed: 5; pass "
            f"--metric test.recall@K with one of those") in out
