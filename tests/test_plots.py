"""Every plotting function renders to PNG with labelled axes (Agg backend)."""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from analysis import plots  # noqa: E402
from analysis.dro import dro_dual, dro_primal, q_star, radius, sl_negative_grad  # noqa: E402
from analysis.variance import expansion_error  # noqa: E402


def _check(fig: Figure, tmp_path, name: str) -> None:
    assert isinstance(fig, Figure)
    path = tmp_path / f"{name}.png"
    fig.savefig(path, dpi=60)
    assert path.stat().st_size > 1000
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert fig.axes
    for ax in fig.axes:
        assert ax.get_xlabel() and ax.get_ylabel(), f"{name}: unlabelled axes"


def _seeds(df: pd.DataFrame, n: int = 2) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    parts = []
    for s in range(n):
        part = df.copy()
        for col in part.select_dtypes("float").columns:
            part[col] = part[col] * (1 + 0.05 * rng.standard_normal(len(part)))
        parts.append(part.assign(seed=s))
    return pd.concat(parts, ignore_index=True)


def test_plot_group_recall(tmp_path):
    df = pd.DataFrame([{"loss": loss, "group": g, "recall": 0.01 * (g + 1) * (1.2 if loss == "bsl" else 1.0)}
                       for loss in ("sl", "bsl", "bpr") for g in range(10)])
    _check(plots.plot_group_recall(_seeds(df)), tmp_path, "group_recall")


def test_plot_variance_over_epochs(tmp_path):
    df = pd.DataFrame([{"epoch": e, "tau": tau, "neg_var": 0.1 / (e * tau), "pos_mean": 1 - 1 / e}
                       for tau in (0.05, 0.1, 0.5) for e in range(1, 11)])
    fig = plots.plot_variance_over_epochs(df)
    assert len(fig.axes) == 4  # scores on top, logits f/τ below
    assert [ax.get_title() for ax in fig.axes[2:]] == ["Var of negative scores in logits",
                                                       "Mean of positive scores in logits"]
    # the logit row draws Var f / τ² = 0.1 / (e τ³): the smallest τ now has the largest variance
    ys = [np.asarray(line.get_ydata()) for line in fig.axes[2].lines if len(line.get_ydata()) == 10]
    want = {tau: [0.1 / (e * tau) / tau ** 2 for e in range(1, 11)] for tau in (0.05, 0.1, 0.5)}
    for tau, values in want.items():
        assert any(np.allclose(y, values) for y in ys), tau
    assert len(plots.plot_variance_over_epochs(df, logits=False).axes) == 2
    _check(fig, tmp_path, "variance")


def test_plot_dro_primal_dual(tmp_path):
    rng = np.random.default_rng(0)
    f = rng.uniform(-1, 1, 15)
    etas = [radius(f, None, t) for t in (0.05, 0.1, 0.3, 1.0)]
    df = pd.DataFrame([{"eta": e, "primal": dro_primal(f, None, e)[0], "dual": dro_dual(f, None, e)[0]}
                       for e in etas])
    _check(plots.plot_dro_primal_dual(df), tmp_path, "primal_dual")


@pytest.mark.parametrize("tau", [0.05, 1.0])
def test_plot_qstar_vs_gradient(tmp_path, tau):
    f = np.random.default_rng(1).uniform(-1, 1, 40)
    fig = plots.plot_qstar_vs_gradient(q_star(f, None, tau), sl_negative_grad(torch.as_tensor(f), tau))
    _check(fig, tmp_path, f"qstar_{tau}")
    with pytest.raises(ValueError):
        plots.plot_qstar_vs_gradient(np.ones(3), np.ones(4))


def test_plot_noisy_gradient_share(tmp_path):
    rows = []
    for r in (0.1, 0.2, 0.3, 0.4, 0.5):
        frac = r / (1 + r)
        rows += [{"loss": "sl", "noise_ratio": r, "noisy_share": frac, "noisy_fraction": frac},
                 {"loss": "bsl", "noise_ratio": r, "noisy_share": 0.4 * frac, "noisy_fraction": frac}]
    df = pd.DataFrame(rows)
    _check(plots.plot_noisy_gradient_share(df), tmp_path, "noisy_share")
    _check(plots.plot_noisy_gradient_share(df.drop(columns="noisy_fraction")), tmp_path, "noisy_share_plain")


def test_plot_metric_vs_noise(tmp_path):
    df = pd.DataFrame([{"loss": loss, "noise_ratio": r, "recall@20": 0.08 - r * (0.05 if loss == "sl" else 0.02)}
                       for loss in ("sl", "bsl", "bpr") for r in (0.0, 0.1, 0.2, 0.3)])
    fig = plots.plot_metric_vs_noise(_seeds(df, 3), "recall@20", "noise_ratio")
    assert fig.axes[0].get_ylabel() == "recall@20"
    _check(fig, tmp_path, "metric_vs_noise")
    with pytest.raises(ValueError, match="ndcg@20"):
        plots.plot_metric_vs_noise(df, "ndcg@20", "noise_ratio")


def test_plot_expansion_error(tmp_path):
    f = np.random.default_rng(2).uniform(-1, 1, (4, 100)) ** 3
    df = expansion_error(f, np.geomspace(0.5, 100, 10))
    _check(plots.plot_expansion_error(df), tmp_path, "expansion")
    both = pd.concat([df.assign(model="a"), df.assign(model="b", abs_error=df["abs_error"] * 2)])
    _check(plots.plot_expansion_error(both, hue="model"), tmp_path, "expansion_hue")


def test_no_pyplot_state_leaks():
    before = plt.get_fignums()
    style = {k: matplotlib.rcParams[k] for k in ("axes.grid", "axes.facecolor", "font.size", "axes.edgecolor")}
    df = pd.DataFrame({"loss": ["sl"], "group": [0], "recall": [0.1]})
    plots.plot_group_recall(df)
    assert plt.get_fignums() == before  # the figure is not registered with pyplot
    assert {k: matplotlib.rcParams[k] for k in style} == style  # the seaborn style stays local


def _dro_inputs():
    f = np.random.default_rng(3).uniform(-1, 1, 30)
    etas = [radius(f, None, t) for t in (0.1, 0.5)]
    pdual = pd.DataFrame([{"eta": e, "primal": dro_primal(f, None, e)[0], "dual": dro_dual(f, None, e)[0]}
                          for e in etas])
    return pdual, q_star(f, None, 0.1), sl_negative_grad(torch.as_tensor(f), 0.1)


def test_plot_dro_figure_shows_both_measures(tmp_path):
    rows = []
    for r in (0.1, 0.2, 0.4):
        frac = r / (1 + r)
        for loss, cf, it in (("SL", frac, frac), ("BSL", 0.5 * frac, 0.9 * frac)):
            rows += [{"loss": loss, "noise_ratio": r, "measure": plots.IN_TRAINING, "noisy_share": it,
                      "noisy_fraction": frac},
                     {"loss": loss, "noise_ratio": r, "measure": plots.COUNTERFACTUAL, "noisy_share": cf,
                      "noisy_fraction": frac}]
    shares = pd.DataFrame(rows)
    fig = plots.plot_dro_figure(*_dro_inputs(), shares)
    _check(fig, tmp_path, "dro_both")
    panel = fig.axes[2]
    labels = [t.get_text() for t in panel.get_legend().get_texts()]
    assert plots.IN_TRAINING in labels and plots.COUNTERFACTUAL in labels
    assert "counterfactual only" not in panel.get_title()
    styles = {line.get_label(): line.get_linestyle() for line in panel.get_legend().get_lines()}
    assert styles[plots.IN_TRAINING] == "-" and styles[plots.COUNTERFACTUAL] == "--"
    # stores without in-training accounting: counterfactual only, said in the title and the legend
    for old in (shares[shares["measure"] == plots.COUNTERFACTUAL], shares.drop(columns="measure").iloc[:6]):
        fig = plots.plot_dro_figure(*_dro_inputs(), old)
        _check(fig, tmp_path, "dro_counterfactual")
        assert "counterfactual only" in fig.axes[2].get_title()
        assert plots.COUNTERFACTUAL in [t.get_text() for t in fig.axes[2].get_legend().get_texts()]


def _batching_runs(seeds: int = 3) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    rows = []
    for loss in ("SL", "BSL"):
        for batching in ("pairs", "users"):
            for r in (0.0, 0.1, 0.2, 0.4):
                frac = r / (1 + r) if r else np.nan
                keep = 1.0 if loss == "SL" else (0.95 if batching == "pairs" else 0.6)
                for seed in range(seeds):
                    rows.append({"loss": loss, "batching": batching, "noise_ratio": r, "seed": seed,
                                 "ndcg@20": 0.28 - 0.1 * r + 0.003 * rng.standard_normal(),
                                 "noisy_share": frac * keep, "noisy_fraction": frac})
    return pd.DataFrame(rows)


def test_plot_bsl_batching(tmp_path):
    df = _batching_runs()
    fig = plots.plot_bsl_batching(df)
    assert len(fig.axes) == 2
    _check(fig, tmp_path, "bsl_batching")
    left, right = fig.axes
    assert left.get_ylabel() == "test ndcg@20"
    xs = np.concatenate([np.asarray(line.get_xdata(), dtype=float) for line in right.get_lines()])
    assert xs.min() > 0  # r = 0 has no noisy pairs and is left out of the share panel
    assert {0.1, 0.2, 0.4} <= set(np.round(xs, 6))
    labels = [t.get_text() for t in right.get_legend().get_texts()]
    assert {"SL", "BSL", "pairs", "users", "noisy pair fraction"} <= set(labels)
    ref = next(line for line in right.get_lines() if line.get_label() == "noisy pair fraction")
    assert ref.get_linestyle() == "--"
    np.testing.assert_allclose(ref.get_ydata(), [r / (1 + r) for r in (0.1, 0.2, 0.4)])
    with pytest.raises(ValueError, match="noisy_share"):
        plots.plot_bsl_batching(df.drop(columns="noisy_share"))
