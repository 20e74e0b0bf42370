"""Figures that tell the truth: seed intervals with n on every figure, captions generated from the data drawn,
figure 5 on the logit scale, fairness at matched accuracy (figure 12)."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from analysis import figures, plots
from analysis.figures import FIGURES, Sweep, caption_facts, facts_sentence, open_sweeps
from analysis.stats import seed_mean_ci
from tests.conftest import TINY_FOLDERS

#: per figure, the frame columns that make one drawn setting (the seeds of a setting are averaged)
CELLS = {1: ["model", "loss"], 2: ["loss", "noise.pos_ratio"], 3: ["loss", "noise.neg_prob", "noise.neg_pool"],
         4: ["loss"], 5: ["tau"], 6: ["model", "r"], 7: ["loss", "ratio"], 8: ["loss", "noise_ratio"],
         9: ["loss", "batching", "noise_ratio"], 10: ["model", "loss", "split"],
         11: ["data.name", "model.name", "noise.neg_pool", "noise.neg_prob", "loss"], 12: ["model", "score", "loss"]}


@pytest.fixture(scope="module")
def rendered(tiny_results):
    sweeps = open_sweeps([tiny_results / TINY_FOLDERS[k] for k in figures.sweep_kinds()])
    return {fig.number: fig.render(sweeps) for fig in FIGURES}, sweeps


def _frames(data):
    return [d for d in (data if isinstance(data, tuple) else (data,)) if isinstance(d, pd.DataFrame)]


def _runs_of(frames):
    return set().union(*(set(f["run_dir"].astype(str)) for f in frames if "run_dir" in f.columns))


def test_caption_fields_equal_the_frame_drawn(rendered):
    drawn, sweeps = rendered
    for number, d in drawn.items():
        fig = next(f for f in FIGURES if f.number == number)
        frames = _frames(d.data)
        facts = d.facts
        assert d.caption.startswith(fig.caption) and " Drawn: " in d.caption, number
        assert facts_sentence(facts) in d.caption
        named = _runs_of(frames)
        if not named:  # a frame that does not name its runs says so
            assert facts["runs"] is None and "not recorded" in d.caption
            continue
        assert facts["runs"] == len(named), number
        store = pd.concat([s.done for s in sweeps.values()])
        rows = store[store["run_dir"].astype(str).isin(named)]
        for f in frames:
            if "loss" in f.columns:  # every loss drawn is named, and no other
                assert set(facts["losses"]) == {str(x).lower() for x in f["loss"]}, number
            if "model" in f.columns:
                assert set(facts["models"]) == {str(x).lower() for x in f["model"]}, number
        # seeds per setting: counted on the frame itself
        frame = next(f for f in frames if "seed" in f.columns)
        keys = [k for k in CELLS[number] if k in frame.columns]
        per_cell = frame.groupby(keys, dropna=False)["seed"].nunique() if keys else pd.Series([frame["seed"].nunique()])
        assert facts["seeds"] == (int(per_cell.min()), int(per_cell.max())), number
        n_text = f"n = {per_cell.min()}" if per_cell.min() == per_cell.max() else f"n = {per_cell.min()}–{per_cell.max()}"
        assert n_text in d.caption
        if per_cell.max() == 1:
            assert "no CI" in d.caption and "sd over seeds" not in d.caption
        # epochs, stop reasons and tuning of the runs drawn
        assert facts["epochs"] == sorted(int(e) for e in rows["train.epochs"].unique())
        assert sum(facts["stops"].values()) == len(rows)
        assert facts["tuned"] == figures.UNTUNED and figures.UNTUNED in d.caption
        # the cutoff named is the one the frame drew
        if facts["k"]:
            assert facts["k"] == [figures.figure_cutoff(sweeps[fig.needs[0]])], number
            assert f"K = {facts['k'][0]}" in d.caption


def test_settings_in_the_caption_are_the_frame_axes(rendered):
    drawn, _ = rendered
    assert drawn[2].facts["settings"]["noise.pos_ratio"] == sorted(drawn[2].data["noise.pos_ratio"].unique())
    assert drawn[5].facts["settings"]["loss.tau"] == sorted(drawn[5].data["tau"].unique())
    assert drawn[6].facts["settings"]["loss.r"] == sorted(drawn[6].data["r"].unique())
    assert drawn[9].facts["settings"]["train.batching"] == sorted(drawn[9].data["batching"].unique())
    assert drawn[4].facts["groups"] == [drawn[4].data["group"].nunique()]
    assert sorted(drawn[7].facts["settings"]["noise.pos_ratio"]) == sorted(drawn[7].data["ratio"].unique())
    # figure 3's pools: the caption names the pool(s) drawn
    pools = set(drawn[3].data["noise.neg_pool"]) if "noise.neg_pool" in drawn[3].data else set()
    assert pools and all(p in drawn[3].caption for p in pools)


def test_every_figure_shows_n(rendered):
    drawn, _ = rendered
    for number, d in drawn.items():
        texts = [t.get_text() for t in d.figure.texts]
        assert any("n = " in t for t in texts), (number, texts)
    assert getattr(drawn[1].figure, "seed_counts") == drawn[1].facts["seeds"]


def test_no_static_caption_claims_sd_or_fixed_data():
    for fig in FIGURES:
        if fig.number == 11:  # drawn by analysis.negative_share (its own engineer's caption)
            continue
        assert "sd over seeds" not in fig.caption and "mean and sd" not in fig.caption, fig.number
        assert "@20" not in fig.caption and "(MF, LightGCN" not in fig.caption, fig.number


def _sweep(rows: list[dict]) -> Sweep:
    store = pd.DataFrame(rows)
    store["status"] = "done"
    return Sweep(Path("/nowhere"), "noisy-positives-x", store)


def test_caption_facts_multi_seed_stops_and_tuning():
    rows = []
    for loss in ("sl", "bpr"):
        for r in (0.0, 0.2):
            for seed in (0, 1, 2):
                if (loss, r, seed) == ("bpr", 0.2, 2):
                    continue  # a missing run: n = 2 for that setting
                rows.append({"run_dir": f"{loss}-{r}-{seed}", "loss.name": loss, "model.name": "mf",
                             "model.score": "cosine" if loss == "sl" else "dot", "loss.tau": 0.1 if loss == "sl" else np.nan,
                             "noise.pos_ratio": r, "train.seed": seed, "train.epochs": 30,
                             "stop_reason": "early_stopping" if seed == 0 else "epoch_cap"})
    sweep = _sweep(rows)
    frame = pd.DataFrame({"run_dir": [r["run_dir"] for r in rows if r["loss.name"] == "sl" or r["noise.pos_ratio"] == 0.2]})
    facts = caption_facts(frame, [sweep])
    assert facts["runs"] == 8 and facts["losses"] == ["bpr", "sl"] and facts["models"] == ["mf"]
    assert facts["settings"] == {"noise.pos_ratio": [0.0, 0.2]}  # loss.tau and model.score follow the loss
    assert facts["scores"] == {"cosine": ["sl"], "dot": ["bpr"]}
    assert facts["seeds"] == (2, 3)
    assert facts["stops"] == {"early_stopping": 3, "epoch_cap": 5} and facts["epochs"] == [30]
    text = facts_sentence(facts)
    assert "n = 2–3" in text and "no CI" not in text and "score functions: cosine (sl), dot (bpr)" in text
    assert "3 by early stopping" in text and "5 at the epoch cap" in text and figures.UNTUNED in text
    # a tuned origin recorded in the runs' config
    tuned = _sweep([{**r, "train.tuned_from": "tune/best/sl.yaml"} for r in rows])
    assert caption_facts(frame, [tuned])["tuned"].startswith("tuned")
    # the older store without stop_reason: read from epochs_run
    old = _sweep([{**{k: v for k, v in r.items() if k != "stop_reason"}, "epochs_run": 12 if r["train.seed"] == 0 else 30}
                  for r in rows])
    assert caption_facts(frame, [old])["stops"] == {"early_stopping": 3, "epoch_cap": 5}


def test_seed_ci_is_the_t_interval_and_none_from_one_seed():
    v = np.array([0.30, 0.32, 0.35])
    assert plots.seed_ci(v) == pytest.approx(seed_mean_ci(v)[1:3])
    assert all(math.isnan(x) for x in plots.seed_ci([0.3]))
    assert plots.seed_note((1, 1)).startswith("one seed per point (n = 1)")
    assert plots.seed_note((3, 3)) == "mean and 95 % t-CI over seeds, n = 3 per point"
    assert "no CI where n = 1" in plots.seed_note((1, 3))


def test_fig5_logit_row_reverses_on_the_example_store():
    """The shipped variance store: smaller tau, smaller Var f, but larger Var f/tau (issue 23)."""
    root = Path(__file__).resolve().parents[1] / "rankrobust" / "examples" / "var-quick"
    sweep = open_sweeps([root])["variance"]
    df = figures.variance_frame(sweep)
    last = df[df["epoch"] == df["epoch"].max()].groupby("tau")["neg_var"].mean().sort_index()  # mean over seeds
    raw, logit = last, last / last.index.to_series() ** 2
    assert raw.is_monotonic_increasing and logit.is_monotonic_decreasing
    fig = plots.plot_variance_over_epochs(df)
    assert "in logits" in fig.axes[2].get_title()


def _fair_frame():
    rows = []
    rng = np.random.default_rng(0)
    for score, losses in (("cosine", ("sl", "bsl")), ("dot", ("bpr", "mse"))):
        for i, loss in enumerate(losses):
            for seed in range(3):
                for metric, base in (("aplt", 0.05), ("recall_cond_cv", 0.8)):
                    rows.append({"model": "mf", "score": score, "loss": loss, "seed": seed, "run_dir": f"{loss}{seed}",
                                 "accuracy_metric": "ndcg@20", "accuracy": 0.2 + 0.02 * i + 0.001 * rng.normal(),
                                 "fairness_metric": metric, "fairness": base + 0.01 * i + 0.001 * rng.normal()})
    return pd.DataFrame(rows)


def test_accuracy_vs_fairness_panels_cis_and_front():
    df = _fair_frame()
    fig = plots.plot_accuracy_vs_fairness(df)
    assert len(fig.axes) == 2 * 2  # fairness metric × (backbone, score function)
    assert {ax.get_title() for ax in fig.axes} == {"mf · score cosine", "mf · score dot"}
    assert "↑ fairer" in fig.axes[0].get_ylabel() and "↓ fairer" in fig.axes[2].get_ylabel()
    # one error bar per loss in each direction (three seeds each)
    from matplotlib.container import ErrorbarContainer

    bars = [c for c in fig.axes[0].containers if isinstance(c, ErrorbarContainer)]
    assert len(bars) == 2 and all(c.has_xerr and c.has_yerr for c in bars)
    assert fig.seed_counts == (3, 3)
    pts = pd.DataFrame({"x": [0.1, 0.2, 0.3, 0.15], "y": [0.5, 0.4, 0.1, 0.2]})
    assert list(plots._pareto(pts, +1).index) == [0, 1, 2]  # (0.15, 0.2) is beaten by (0.2, 0.4)
    assert list(plots._pareto(pts, -1).index) == [2]  # lower is fairer: (0.3, 0.1) beats every other point
    trade = pd.DataFrame({"x": [0.1, 0.2, 0.3], "y": [0.1, 0.2, 0.3]})  # more accurate, less fair: all on the front
    assert list(plots._pareto(trade, -1).index) == [0, 1, 2] and list(plots._pareto(trade, +1).index) == [2]


def test_fig12_frame_matches_the_store(rendered):
    drawn, sweeps = rendered
    df = drawn[12].data
    store = sweeps["loss-comparison"].done
    assert set(df["fairness_metric"]) <= set(figures.FAIRNESS_VS_ACCURACY)
    assert {"aplt", "recall_cond_cv", "elliot_pop_reo", "exposure_gini"} <= set(df["fairness_metric"])
    one = df[df["fairness_metric"] == "aplt"].set_index("run_dir")
    ref = store.set_index("run_dir")
    k = figures.figure_cutoff(sweeps["loss-comparison"])
    for run, row in one.iterrows():
        assert row["accuracy"] == ref.loc[run, f"test.ndcg@{k}"] and row["fairness"] == ref.loc[run, "fairness.aplt"]
    # a store written before the rename still gives the renamed metrics
    legacy = store.rename(columns={"fairness.exposure_gini": "fairness.gini", "fairness.recall_cond_cv": "fairness.pop_reo"})
    old = figures.fairness_accuracy_frame(Sweep(sweeps["loss-comparison"].path, "loss-comparison-x", legacy))
    assert {"recall_cond_cv", "exposure_gini"} <= set(old["fairness_metric"])
    with pytest.raises(figures.MissingData, match="fairness"):
        figures.fairness_accuracy_frame(Sweep(Path("/x"), "loss-comparison-x", store.drop(
            columns=[c for c in store if c.startswith("fairness.")])))
