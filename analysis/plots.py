"""One function per picture; each returns a matplotlib `Figure`.

Every function takes a tidy pandas DataFrame (columns documented per
function), builds its own `matplotlib.figure.Figure` (not registered with
pyplot, so nothing accumulates in pyplot's global figure list, no backend is
needed and nothing is shown) under a local seaborn style, labels its axes and
returns it.  Save with ``fig.savefig(path)``; in a notebook the returned figure
displays itself.  Extra columns are ignored.  Rows that share a drawn point
(several seeds of one setting) are drawn as their mean with the 95 % t-interval
over seeds of `analysis.stats.seed_mean_ci` (`seed_ci`; no interval from one
seed), and every such figure says under its axes how many seeds each point
has (`annotate_seeds`): "n = 1" figures show means only.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator, Sequence

import numpy as np
import pandas as pd
import seaborn as sns
import torch
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from analysis.stats import seed_mean_ci

__all__ = [
    "plot_group_recall",
    "plot_variance_over_epochs",
    "plot_dro_primal_dual",
    "plot_qstar_vs_gradient",
    "plot_noisy_gradient_share",
    "plot_metric_vs_noise",
    "plot_expansion_error",
    "plot_loss_bars",
    "plot_metric_panels",
    "plot_ratio_sensitivity",
    "plot_tsne",
    "plot_dro_figure",
    "plot_bsl_batching",
    "plot_iid_vs_ood",
    "plot_accuracy_vs_fairness",
    "seed_ci",
    "seed_counts",
    "seed_note",
    "annotate_seeds",
    "IN_TRAINING",
    "COUNTERFACTUAL",
]

STYLE = "whitegrid"
CONTEXT = "notebook"

#: ``measure`` label of the noisy-positive gradient share as training applied it (docs/PROTOCOLS.md §9)
IN_TRAINING = "in training"
#: ``measure`` label of the share softmax(f/τ₁) over all of a user's positives would give (docs/PROTOCOLS.md §7 d)
COUNTERFACTUAL = "counterfactual, final embeddings"


@contextmanager
def _style() -> Iterator[None]:
    """A local seaborn style and context (restores the previous rcParams on exit)."""
    with sns.axes_style(STYLE), sns.plotting_context(CONTEXT):
        yield


def _figure(ncols: int = 1, width: float = 5.5, height: float = 4.0) -> tuple[Figure, list[Axes]]:
    """A new pyplot-free figure with ``ncols`` side-by-side axes."""
    fig = Figure(figsize=(width * ncols, height), layout="constrained")
    axes = fig.subplots(1, ncols, squeeze=False)[0]
    return fig, list(axes)


def _require(df: pd.DataFrame, columns: Sequence[str], where: str) -> None:
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise ValueError(f"{where}: missing column(s) {missing}; got {list(df.columns)}")


def _loss_order(losses: Any) -> list[str]:
    """Loss labels with SL and BSL first (in that order), the rest as they come."""
    seen = list(dict.fromkeys(losses))
    first = [x for x in ("SL", "BSL", "sl", "bsl") if x in seen]
    return first + [x for x in seen if x not in first]


def _ratio_ticks(ax: Axes, values: Any) -> None:
    """x ticks at the distinct noise ratios (at most 8 labelled), formatted compactly."""
    ticks = np.unique(np.asarray(values, dtype=float))
    if 0 < len(ticks) <= 8:
        ax.set_xticks(ticks)
        ax.set_xticklabels([f"{t:g}" for t in ticks])


def seed_ci(values: Any) -> tuple[float, float]:
    """seaborn ``errorbar`` callable: the 95 % t-interval over seeds of `analysis.stats.seed_mean_ci`.

    ``values``: the rows of one drawn point (one per seed).  With one seed the
    interval is (NaN, NaN) and seaborn draws no bar.
    """
    _, lo, hi, _ = seed_mean_ci(np.asarray(values, dtype=np.float64))
    return lo, hi


def seed_counts(df: pd.DataFrame, keys: Sequence[str], value: str) -> tuple[int, int]:
    """(fewest, most) rows with a finite ``value`` per drawn point (a cell of ``keys``): the seeds behind each point."""
    keys = [k for k in keys if k in df.columns]
    d = df[np.isfinite(pd.to_numeric(df[value], errors="coerce"))] if value in df.columns else df
    if d.empty:
        return 0, 0
    sizes = d.groupby(keys, dropna=False, observed=True).size() if keys else pd.Series([len(d)])
    return int(sizes.min()), int(sizes.max())


def seed_note(n: tuple[int, int]) -> str:
    """What the error bars are and how many seeds each point has, e.g. "mean and 95 % t-CI over seeds, n = 3 per point"."""
    lo, hi = n
    if hi == 0:
        return "no data drawn"
    if hi == 1:
        return "one seed per point (n = 1): means only, no CI"
    count = f"n = {lo}" if lo == hi else f"n = {lo}–{hi}"
    return f"mean and 95 % t-CI over seeds, {count} per point" + ("; no CI where n = 1" if lo == 1 else "")


def annotate_seeds(fig: Any, n: tuple[int, int]) -> None:
    """Write `seed_note` under the figure's axes (kept in ``fig.seed_counts`` for tests and callers)."""
    fig.text(0.5, -0.01, seed_note(n), ha="center", va="top", fontsize="small", color="dimgrey")
    fig.seed_counts = n


def _numpy(x: Any) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=np.float64).ravel()


# --------------------------------------------------------------------------- pictures
def plot_group_recall(df: pd.DataFrame, *, metric_label: str = "Recall@20") -> Figure:
    """Per-popularity-group recall as grouped bars, one colour per loss.

    ``df`` columns: ``loss`` (str), ``group`` (int, 0 = tail … G−1 = head), ``recall``
    (float; several rows per (loss, group), e.g. seeds: mean with a 95 % CI bar, `seed_ci`).
    """
    _require(df, ["loss", "group", "recall"], "plot_group_recall")
    with _style():
        fig, (ax,) = _figure(width=7.0)
        sns.barplot(data=df, x="group", y="recall", hue="loss", errorbar=seed_ci, ax=ax)
        ax.set_xlabel("item popularity group (0 = tail, high = head)")
        ax.set_ylabel(f"per-group {metric_label}")
        ax.set_title("Recall by popularity group")
        ax.legend(title="loss")
        annotate_seeds(fig, seed_counts(df, ["loss", "group"], "recall"))
    return fig


def plot_variance_over_epochs(df: pd.DataFrame, *, logits: bool = True) -> Figure:
    """Score statistics over training epochs, one line per temperature τ, on the score and the logit scale.

    Top row, the scores f the model outputs: variance of sampled-negative
    scores (``neg_var``) and mean positive score (``pos_mean``).  Bottom row
    (``logits=True``), the same statistics of the logits f/τ the softmax sees:
    Var(f/τ) = ``neg_var``/τ² and E(f⁺/τ) = ``pos_mean``/τ.  The two scales can
    order the temperatures oppositely (a small τ can shrink Var f while Var f/τ
    grows), so a variance claim must say which scale it is on.  Rows without a
    finite positive τ are left out of the logit row.  ``df`` columns:
    ``epoch``, ``tau``, ``neg_var``, ``pos_mean`` (e.g.
    `VarianceTracker.to_frame()` with a ``tau`` column added per run); several
    rows per (τ, epoch) (seeds) give the mean with a 95 % CI band (`seed_ci`).
    """
    _require(df, ["epoch", "tau", "neg_var", "pos_mean"], "plot_variance_over_epochs")
    data = df.assign(τ=df["tau"].map(lambda t: f"{t:g}"))
    order = [f"{t:g}" for t in sorted(df["tau"].unique())]
    tau = pd.to_numeric(df["tau"], errors="coerce")
    ok = np.isfinite(tau) & (tau > 0)
    data = data.assign(neg_var_logit=np.where(ok, df["neg_var"] / tau.where(ok) ** 2, np.nan),
                       pos_mean_logit=np.where(ok, df["pos_mean"] / tau.where(ok), np.nan))
    rows = [("", "neg_var", "pos_mean", "f")]
    if logits:
        rows.append((" in logits", "neg_var_logit", "pos_mean_logit", "f/τ"))
    with _style():
        fig = Figure(figsize=(11.0, 4.0 * len(rows)), layout="constrained")
        grid = fig.subplots(len(rows), 2, squeeze=False)
        for (suffix, var_col, mean_col, sym), (left, right) in zip(rows, grid):
            part = data[data[var_col].notna()]
            if part.empty:
                for ax in (left, right):
                    ax.text(0.5, 0.5, "no finite τ: no logit scale", ha="center", va="center", transform=ax.transAxes)
                continue
            sns.lineplot(data=part, x="epoch", y=var_col, hue="τ", hue_order=order, errorbar=seed_ci, ax=left)
            left.set_xlabel("epoch")
            left.set_ylabel(f"Var of negative {sym}")
            left.set_title(f"Var of negative scores{suffix}")
            sns.lineplot(data=part, x="epoch", y=mean_col, hue="τ", hue_order=order, errorbar=seed_ci, ax=right)
            right.set_xlabel("epoch")
            right.set_ylabel(f"mean positive {sym}")
            right.set_title(f"Mean of positive scores{suffix}")
        annotate_seeds(fig, seed_counts(df, ["tau", "epoch"], "neg_var"))
    return fig


def plot_dro_primal_dual(df: pd.DataFrame) -> Figure:
    """The DRO primal and dual values over the radius η, and their gap.

    ``df`` columns: ``eta``, ``primal``, ``dual`` (one row per η).  Left: both
    values against η (dual as a line, primal as markers); right: |primal − dual|
    on a log scale.
    """
    _require(df, ["eta", "primal", "dual"], "plot_dro_primal_dual")
    d = df.sort_values("eta")
    gap = (d["primal"] - d["dual"]).abs().clip(lower=1e-17)
    with _style():
        fig, (left, right) = _figure(ncols=2)
        left.plot(d["eta"], d["dual"], "-", label="dual: min_τ τ log E exp(f/τ) + τη")
        left.plot(d["eta"], d["primal"], "o", markersize=4, fillstyle="none", label="primal: sup E_Q f, KL ≤ η")
        left.set_xlabel("KL radius η")
        left.set_ylabel("worst-case expected score")
        left.set_title("DRO primal = dual")
        left.legend()
        right.plot(d["eta"], gap, "o-", markersize=3)
        right.set_yscale("log")
        right.set_xlabel("KL radius η")
        right.set_ylabel("|primal − dual|")
        right.set_title("Gap")
    return fig


def plot_qstar_vs_gradient(q_star: Any, grad: Any, *, log: bool | None = None) -> Figure:
    """Scatter of the DRO weights Q* against the autograd gradient, with the identity line.

    ``q_star``, ``grad``: arrays or tensors of the same size (flattened; e.g. Q*_τ
    and ∇_f τ log E exp(f/τ) for one or several users).  ``log``: log-log axes
    (default: when the positive weights span more than three decades).
    """
    q, g = _numpy(q_star), _numpy(grad)
    if q.shape != g.shape:
        raise ValueError(f"q_star and grad differ in size: {q.size} vs {g.size}")
    pos = (q > 0) & (g > 0)
    if log is None:
        log = bool(pos.any() and q[pos].max() / q[pos].min() > 1e3)
    with _style():
        fig, (ax,) = _figure(width=4.8, height=4.5)
        x, y = (q[pos], g[pos]) if log else (q, g)
        ax.scatter(x, y, s=14, alpha=0.7, label="items")
        lo, hi = (min(x.min(), y.min()), max(x.max(), y.max())) if x.size else (0.0, 1.0)
        ax.plot([lo, hi], [lo, hi], "k--", linewidth=1, label="identity")
        if log:
            ax.set_xscale("log")
            ax.set_yscale("log")
        ax.set_xlabel("Q*(j) ∝ P₀(j) exp(f_j/τ)")
        ax.set_ylabel("∂/∂f_j of τ log E exp(f/τ) (autograd)")
        ax.set_title(f"Gradient = worst-case weights (max |Δ| = {np.abs(q - g).max():.1e})")
        ax.legend()
    return fig


def plot_noisy_gradient_share(df: pd.DataFrame) -> Figure:
    """Share of the positive-side gradient on noisy positives, SL vs BSL, across noise ratios.

    ``df`` columns: ``loss``, ``noise_ratio``, ``noisy_share`` (from
    `analysis.dro.positive_gradient_share`; several seeds averaged), optional
    ``noisy_fraction`` (the share uniform weights would give; drawn dashed when
    present).  Left: noisy share; right: clean share = 1 − noisy share.
    """
    _require(df, ["loss", "noise_ratio", "noisy_share"], "plot_noisy_gradient_share")
    data = df.assign(clean_share=1.0 - df["noisy_share"])
    with _style():
        fig, (left, right) = _figure(ncols=2)
        sns.lineplot(data=data, x="noise_ratio", y="noisy_share", hue="loss", marker="o", errorbar=seed_ci, ax=left)
        sns.lineplot(data=data, x="noise_ratio", y="clean_share", hue="loss", marker="o", errorbar=seed_ci,
                     ax=right, legend=False)
        if "noisy_fraction" in df.columns:
            ref = df.groupby("noise_ratio", as_index=False)["noisy_fraction"].mean()
            left.plot(ref["noise_ratio"], ref["noisy_fraction"], "k--", linewidth=1, label="noisy fraction")
            right.plot(ref["noise_ratio"], 1.0 - ref["noisy_fraction"], "k--", linewidth=1)
            left.legend()
        left.set_xlabel("noisy positive ratio r")
        left.set_ylabel("gradient share on noisy positives")
        left.set_title("Noisy positives")
        right.set_xlabel("noisy positive ratio r")
        right.set_ylabel("gradient share on clean positives")
        right.set_title("Clean positives")
        annotate_seeds(fig, seed_counts(df, ["loss", "noise_ratio"], "noisy_share"))
    return fig


def plot_metric_vs_noise(df: pd.DataFrame, metric: str, x: str, *, hue: str = "loss",
                         ylabel: str | None = None, xlabel: str | None = None) -> Figure:
    """One line per loss (``hue``) of ``metric`` against a noise ratio ``x``.

    ``df`` columns: ``hue`` (default ``loss``), ``x`` (e.g. ``noise_ratio`` or
    ``neg_prob``), ``metric`` (e.g. ``recall@20``); several rows per point (seeds)
    give the mean with a 95 % CI band (`seed_ci`).
    """
    _require(df, [hue, x, metric], "plot_metric_vs_noise")
    with _style():
        fig, (ax,) = _figure()
        sns.lineplot(data=df, x=x, y=metric, hue=hue, style=hue, markers=True, dashes=False, errorbar=seed_ci,
                     ax=ax)
        ax.set_xlabel(xlabel or x.replace("_", " "))
        ax.set_ylabel(ylabel or metric)
        ax.set_title(f"{ylabel or metric} vs {xlabel or x.replace('_', ' ')}")
        annotate_seeds(fig, seed_counts(df, [hue, x], metric))
    return fig


def plot_expansion_error(df: pd.DataFrame, *, hue: str | None = None) -> Figure:
    """|τ log E exp(f/τ) − (E f + Var f/(2τ))| against τ on log-log axes, with a τ⁻² guide.

    ``df`` columns: ``tau``, ``abs_error`` (e.g. `analysis.variance.expansion_error`);
    optional ``hue`` column for several series (e.g. ``model`` or ``epoch``).
    """
    _require(df, ["tau", "abs_error"] + ([hue] if hue else []), "plot_expansion_error")
    d = df[df["abs_error"] > 0]
    with _style():
        fig, (ax,) = _figure()
        if hue:
            sns.lineplot(data=d, x="tau", y="abs_error", hue=hue, marker="o", errorbar=None, ax=ax)
        else:
            sns.lineplot(data=d, x="tau", y="abs_error", marker="o", errorbar=None, ax=ax,
                         label="|exact − expansion|")
        if len(d):
            last = d.sort_values("tau").iloc[-1]
            t0, e0 = float(last["tau"]), float(last["abs_error"])
            taus = np.geomspace(d["tau"].min(), d["tau"].max(), 50)
            ax.plot(taus, e0 * (t0 / taus) ** 2, "k--", linewidth=1, label="∝ τ⁻²")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("temperature τ")
        ax.set_ylabel("absolute error of the 2nd-order expansion")
        ax.set_title("τ log E exp(f/τ) ≈ E f + Var f/(2τ)")
        ax.legend()
    return fig


# --------------------------------------------------------------------------- the paper's figures
def plot_loss_bars(df: pd.DataFrame) -> Figure:
    """Test accuracy of each loss per backbone as grouped bars (the paper's opening chart).

    ``df`` columns: ``model``, ``loss``, ``metric`` (e.g. ``recall@20``), ``value``;
    one panel per metric, one bar group per backbone, one colour per loss.
    """
    _require(df, ["model", "loss", "metric", "value"], "plot_loss_bars")
    metrics = list(dict.fromkeys(df["metric"]))
    with _style():
        fig, axes = _figure(ncols=len(metrics))
        for ax, metric in zip(axes, metrics):
            sns.barplot(data=df[df["metric"] == metric], x="model", y="value", hue="loss", errorbar=seed_ci, ax=ax)
            ax.set_xlabel("backbone")
            ax.set_ylabel(f"test {metric}")
            ax.set_title(metric)
        annotate_seeds(fig, seed_counts(df, ["metric", "model", "loss"], "value"))
    return fig


def plot_metric_panels(df: pd.DataFrame, x: str, *, xlabel: str | None = None) -> Figure:
    """One panel per metric of ``value`` against ``x``, one line per loss.

    ``df`` columns: ``loss``, ``x``, ``metric``, ``value`` (several rows per point
    give the mean with a 95 % CI band, `seed_ci`).
    """
    _require(df, ["loss", x, "metric", "value"], "plot_metric_panels")
    metrics = list(dict.fromkeys(df["metric"]))
    with _style():
        fig, axes = _figure(ncols=len(metrics))
        for ax, metric in zip(axes, metrics):
            sns.lineplot(data=df[df["metric"] == metric], x=x, y="value", hue="loss", style="loss", markers=True,
                         dashes=False, errorbar=seed_ci, ax=ax)
            ax.set_xlabel(xlabel or x)
            ax.set_ylabel(f"test {metric}")
            ax.set_title(metric)
        annotate_seeds(fig, seed_counts(df, ["metric", "loss", x], "value"))
    return fig


def plot_ratio_sensitivity(df: pd.DataFrame, metric: str = "ndcg@20") -> Figure:
    """``metric`` of BSL against the ratio r = τ₁/τ₂ (r = 1 is SL), one line per backbone.

    ``df`` columns: ``model``, ``r``, ``metric``.
    """
    _require(df, ["model", "r", metric], "plot_ratio_sensitivity")
    with _style():
        fig, (ax,) = _figure()
        sns.lineplot(data=df, x="r", y=metric, hue="model", style="model", markers=True, dashes=False,
                     errorbar=seed_ci, ax=ax)
        ax.axvline(1.0, color="grey", linestyle=":", linewidth=1, label="r = 1 (SL)")
        ax.set_xlabel("τ₁/τ₂ (code parameter r)")
        ax.set_ylabel(f"test {metric}")
        ax.set_title("BSL sensitivity to τ₁/τ₂")
        ax.legend()
        annotate_seeds(fig, seed_counts(df, ["model", "r"], metric))
    return fig


def plot_tsne(df: pd.DataFrame) -> Figure:
    """t-SNE maps of item embeddings: rows = loss, columns = noise ratio, colour = popularity.

    ``df`` columns: ``loss``, ``ratio``, ``x``, ``y``, ``popularity`` (category);
    optional ``seed`` (named in the note under the maps: one run per panel).
    """
    _require(df, ["loss", "ratio", "x", "y", "popularity"], "plot_tsne")
    losses = list(dict.fromkeys(df["loss"]))
    ratios = sorted(df["ratio"].unique())
    with _style():
        fig = Figure(figsize=(3.6 * len(ratios), 3.4 * len(losses)), layout="constrained")
        grid = fig.subplots(len(losses), len(ratios), squeeze=False)
        order = ["tail", "mid", "head"]
        for r, loss in enumerate(losses):
            for c, ratio in enumerate(ratios):
                ax = grid[r][c]
                part = df[(df["loss"] == loss) & (df["ratio"] == ratio)]
                sns.scatterplot(data=part, x="x", y="y", hue="popularity", hue_order=order, s=8, linewidth=0,
                                ax=ax, legend=(r == 0 and c == len(ratios) - 1))
                ax.set_title(f"{loss}, noisy positives {ratio:.0%}")
                ax.set_xlabel("t-SNE 1")
                ax.set_ylabel("t-SNE 2")
                ax.set_xticks([])
                ax.set_yticks([])
        seeds = sorted(pd.Series(df["seed"]).dropna().unique().tolist()) if "seed" in df.columns else []
        fig.text(0.5, -0.01, "one run per panel (n = 1, no aggregation over seeds)"
                 + (f"; seed {', '.join(f'{s:g}' for s in seeds)}" if seeds else ""),
                 ha="center", va="top", fontsize="small", color="dimgrey")
        fig.seed_counts = (1, 1)
    return fig


def plot_dro_figure(primal_dual: pd.DataFrame, q_star: Any, grad: Any, shares: pd.DataFrame) -> Figure:
    """The DRO-equivalence figure in three panels.

    Left: primal and dual value over the KL radius η (``primal_dual`` columns
    ``eta``, ``primal``, ``dual``); middle: Q* against the autograd gradient of
    SL's negative term (arrays of one size); right: share of the positive-side
    gradient on noisy positives of each loss across noise ratios.

    ``shares`` columns: ``loss``, ``noise_ratio``, ``noisy_share``; optional
    ``measure`` — `IN_TRAINING` (drawn solid: what the optimiser applied) or
    `COUNTERFACTUAL` (drawn dashed: softmax(f/τ₁) over all of a user's
    positives on the final embeddings); without the column every row counts as
    `COUNTERFACTUAL`, the only measure older stores hold.  Optional
    ``noisy_fraction``: the share uniform weights would give, drawn as a grey
    dotted reference (from the in-training rows when there are any).  Several
    rows per point (seeds) give the mean with a 95 % CI band (`seed_ci`).
    """
    _require(primal_dual, ["eta", "primal", "dual"], "plot_dro_figure")
    _require(shares, ["loss", "noise_ratio", "noisy_share"], "plot_dro_figure")
    if "measure" not in shares.columns:
        shares = shares.assign(measure=COUNTERFACTUAL)
    q, g = _numpy(q_star), _numpy(grad)
    with _style():
        fig, (a, b, c) = _figure(ncols=3, width=4.6)
        a.plot(primal_dual["eta"], primal_dual["primal"], "o", label="primal (SLSQP over the simplex)")
        a.plot(primal_dual["eta"], primal_dual["dual"], "-", label="dual min_τ τ log E exp(f/τ) + τη")
        a.set_xscale("log")
        a.set_xlabel("KL radius η")
        a.set_ylabel("worst-case E_Q f")
        a.set_title("Primal = dual")
        a.legend(fontsize="small")
        b.scatter(q, g, s=10)
        lim = [0, max(q.max(), g.max()) * 1.05]
        b.plot(lim, lim, "k--", linewidth=1, label="identity")
        b.set_xlabel("Q*(j) ∝ exp(f_j/τ)")
        b.set_ylabel("∂/∂f_j of τ log E exp(f/τ)")
        b.set_title(f"Gradient = Q* (max |Δ| = {np.abs(q - g).max():.1e})")
        b.legend(fontsize="small")
        _draw_shares(c, shares)
        c.set_xlabel("noisy-positive ratio r")
        c.set_ylabel("gradient share on noisy positives")
        only_cf = set(shares["measure"]) <= {COUNTERFACTUAL}
        c.set_title("Where the positive gradient goes" + (" (counterfactual only)" if only_cf else ""))
        annotate_seeds(fig, seed_counts(shares, ["loss", "measure", "noise_ratio"], "noisy_share"))
    return fig


def _draw_shares(ax: Axes, shares: pd.DataFrame) -> None:
    """Noisy-gradient share lines: colour = loss, solid = in training, dashed = counterfactual."""
    data = shares.dropna(subset=["noisy_share"])
    if data.empty:
        ax.text(0.5, 0.5, "no runs with noisy positives", ha="center", va="center", transform=ax.transAxes)
        return
    measures = [m for m in (IN_TRAINING, COUNTERFACTUAL) if m in set(data["measure"])]
    measures += sorted(set(data["measure"]) - set(measures))
    dashes = {m: ("" if m == IN_TRAINING else (4, 2)) for m in measures}
    markers = {m: ("o" if m == IN_TRAINING else "X") for m in measures}
    sns.lineplot(data=data, x="noise_ratio", y="noisy_share", hue="loss", hue_order=_loss_order(data["loss"]),
                 style="measure", style_order=measures, dashes=dashes, markers=markers, errorbar=seed_ci, ax=ax)
    if "noisy_fraction" in data.columns and data["noisy_fraction"].notna().any():
        ref = data[data["measure"] == measures[0]].dropna(subset=["noisy_fraction"])
        ref = ref.groupby("noise_ratio", as_index=False)["noisy_fraction"].mean()
        ax.plot(ref["noise_ratio"], ref["noisy_fraction"], ":", color="grey", linewidth=1.5, marker="_",
                markersize=12, label="noisy fraction (uniform weights)")
    _ratio_ticks(ax, data["noise_ratio"])
    ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.02, 1.0))


def plot_bsl_batching(df: pd.DataFrame, metric: str = "ndcg@20") -> Figure:
    """BSL's positive side at work: accuracy and in-training noisy gradient share, loss × batching.

    ``df``: one row per run with columns ``loss`` (e.g. ``SL``, ``BSL``),
    ``batching`` (``pairs`` | ``users``), ``noise_ratio`` (r), ``metric``
    (test accuracy, default ``ndcg@20``), ``noisy_share`` (in-training share of
    the positive-side gradient on noisy positives; NaN at r = 0) and
    ``noisy_fraction`` (share of noisy training pairs; NaN at r = 0).  Several
    rows per point (seeds) give the mean with 95 % CI error bars (`seed_ci`).

    Left: ``metric`` against r, colour = loss (SL, BSL first), line style and
    marker = batching.  Right: ``noisy_share`` against r (rows with r = 0 or no
    share are left out), same encoding, with the noisy pair fraction as a
    black dashed reference (SL's share equals it exactly; BSL's can fall below
    it only where a batch holds several positives of one user, which
    ``users`` batching makes the rule).  One legend, right of the right panel.
    """
    _require(df, ["loss", "batching", "noise_ratio", metric, "noisy_share", "noisy_fraction"], "plot_bsl_batching")
    losses = _loss_order(df["loss"])
    batchings = [b for b in ("pairs", "users") if b in set(df["batching"])]
    batchings += sorted(set(df["batching"]) - set(batchings))
    dashes = {b: ("" if k == 0 else (2, 1.5)) for k, b in enumerate(batchings)}
    markers = {b: m for b, m in zip(batchings, "osD^v<>")}
    style = dict(hue="loss", hue_order=losses, style="batching", style_order=batchings, dashes=dashes,
                 markers=markers, errorbar=seed_ci, err_style="bars", err_kws={"capsize": 3})
    shares = df[(df["noise_ratio"] > 0) & df["noisy_share"].notna()]
    with _style():
        fig, (left, right) = _figure(ncols=2, width=5.4, height=4.3)
        sns.lineplot(data=df, x="noise_ratio", y=metric, ax=left, legend=shares.empty, **style)
        left.set_xlabel("noisy-positive ratio r")
        left.set_ylabel(f"test {metric}")
        left.set_title("Accuracy (mean, 95 % CI over seeds)")
        _ratio_ticks(left, df["noise_ratio"])
        if shares.empty:
            right.text(0.5, 0.5, "no in-training accounting recorded", ha="center", va="center",
                       transform=right.transAxes)
            left.legend(fontsize="small")
        else:
            sns.lineplot(data=shares, x="noise_ratio", y="noisy_share", ax=right, **style)
            ref = shares.dropna(subset=["noisy_fraction"]).groupby("noise_ratio", as_index=False)["noisy_fraction"]
            ref = ref.mean()
            right.plot(ref["noise_ratio"], ref["noisy_fraction"], "k--", linewidth=1.2, marker="_", markersize=14,
                       label="noisy pair fraction")
            _ratio_ticks(right, shares["noise_ratio"])
            right.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.02, 1.0))
        right.set_xlabel("noisy-positive ratio r")
        right.set_ylabel("gradient share on noisy positives")
        right.set_title("In training: positive-side gradient")
        annotate_seeds(fig, seed_counts(df, ["loss", "batching", "noise_ratio"], metric))
    return fig


def plot_iid_vs_ood(df: pd.DataFrame, metric: str | None = None) -> Figure:
    """IID vs popularity-shift (OOD) test accuracy per loss and backbone.

    ``df``: one row per run with columns ``model``, ``loss``, ``split``
    (``IID`` | ``OOD``) and ``metric`` (default: the frame's ``ndcg@K`` column); several rows per
    bar (seeds) give the mean with a 95 % CI bar (`seed_ci`; none from one seed).  Left: one panel per
    backbone, bars per loss, IID and OOD side by side.  Right: the OOD/IID
    ratio of the means per loss (one colour per backbone): how much of its
    accuracy a loss keeps when the test items are close to uniform in popularity.
    """
    metric = metric or next((c for c in df.columns if str(c).startswith("ndcg@")), "ndcg@20")
    _require(df, ["model", "loss", "split", metric], "plot_iid_vs_ood")
    seen = list(dict.fromkeys(df["model"]))
    models = [m for m in ("mf", "lightgcn", "xsimgcl") if m in seen] + [m for m in seen if m not in
                                                                     ("mf", "lightgcn", "xsimgcl")]
    losses = _loss_order(df["loss"])
    splits = [s for s in ("IID", "OOD") if s in set(df["split"])]
    means = df.groupby(["model", "loss", "split"])[metric].mean().unstack("split")
    ratio = (means["OOD"] / means["IID"]).rename("ratio").reset_index() if {"IID", "OOD"} <= set(means) else None
    with _style():
        fig, axes = _figure(ncols=len(models) + 1, width=3.6, height=3.8)
        for ax, model in zip(axes, models):
            sns.barplot(data=df[df["model"] == model], x="loss", y=metric, hue="split", order=losses,
                        hue_order=splits, errorbar=seed_ci, ax=ax, legend=ax is axes[0])
            ax.set_title(model)
            ax.set_xlabel("loss")
            ax.set_ylabel(f"test {metric}" if ax is axes[0] else "")
        top = max(ax.get_ylim()[1] for ax in axes[:len(models)]) * 1.2  # headroom for the legend
        for ax in axes[:len(models)]:  # one scale for the backbones' panels
            ax.set_ylim(0.0, top)
        if axes[0].get_legend() is not None:
            axes[0].legend(loc="upper center", ncol=len(splits), fontsize="small", title=None)
        last = axes[-1]
        if ratio is not None:
            sns.barplot(data=ratio, x="loss", y="ratio", hue="model", order=losses, hue_order=models, ax=last)
            last.axhline(1.0, color="k", linewidth=0.8)
            last.set_ylim(0.0, 1.25)
            last.legend(loc="upper center", ncol=len(models), fontsize="small", title=None)
        else:
            last.text(0.5, 0.5, "needs IID and OOD runs", ha="center", va="center", transform=last.transAxes)
        last.set_title("OOD / IID")
        last.set_xlabel("loss")
        last.set_ylabel(f"{metric} ratio")
        annotate_seeds(fig, seed_counts(df, ["model", "loss", "split"], metric))
    return fig


def _pareto(points: pd.DataFrame, sign: int) -> pd.DataFrame:
    """The points no other point beats on both accuracy ``x`` (higher) and fairness ``y`` (``sign`` · y higher)."""
    keep = []
    for i, row in points.iterrows():
        better = points[(points["x"] >= row["x"]) & (sign * points["y"] >= sign * row["y"])
                        & ((points["x"] > row["x"]) | (sign * points["y"] > sign * row["y"]))]
        if better.empty:
            keep.append(i)
    return points.loc[keep].sort_values("x")


def plot_accuracy_vs_fairness(df: pd.DataFrame) -> Figure:
    """Fairness at matched accuracy: one point per loss, accuracy on x, a fairness metric on y, with CIs both ways.

    ``df``: long form, one row per run and fairness metric, columns ``model``,
    ``score`` (the score function, ``model.score``: losses are compared only
    within one backbone and score function), ``loss``, ``accuracy_metric``
    (e.g. ``ndcg@20``), ``accuracy``, ``fairness_metric`` (a fairness metric
    registered in `rankrobust.metrics`, e.g. ``aplt``), ``fairness``.  One panel per
    (fairness metric, backbone · score function); each loss is drawn at its
    mean over seeds with the 95 % t-interval of `seed_ci` in both directions
    (none from one seed) and labelled; the dashed line joins the losses no
    other loss beats on both accuracy and fairness (the Pareto front), so
    losses of different accuracy are compared along it rather than by
    fairness alone.  The y label says which direction is fairer.
    """
    from analysis.fairness import FAIRNESS_SECTION
    from rankrobust.metrics import METRICS

    _require(df, ["model", "score", "loss", "accuracy_metric", "accuracy", "fairness_metric", "fairness"],
             "plot_accuracy_vs_fairness")
    metrics = list(dict.fromkeys(df["fairness_metric"]))
    panels = list(dict.fromkeys(zip(df["model"], df["score"])))
    losses = _loss_order(df["loss"])
    colours = dict(zip(losses, sns.color_palette("tab20" if len(losses) > 10 else "tab10", len(losses))))
    acc_name = str(df["accuracy_metric"].iloc[0]) if len(df) else "accuracy"
    with _style():
        fig = Figure(figsize=(4.6 * max(len(panels), 1), 3.9 * max(len(metrics), 1)), layout="constrained")
        grid = fig.subplots(max(len(metrics), 1), max(len(panels), 1), squeeze=False)
        for r, metric in enumerate(metrics):
            entry = METRICS.get(f"{FAIRNESS_SECTION}.{metric}")  # its declared direction (+1: higher is fairer)
            sign = +1 if entry is None or entry.higher_is_better else -1
            for c, (model, score) in enumerate(panels):
                ax = grid[r][c]
                part = df[(df["fairness_metric"] == metric) & (df["model"] == model) & (df["score"] == score)]
                rows = []
                for loss, g in part.groupby("loss", sort=False):
                    mx, xlo, xhi, _ = seed_mean_ci(g["accuracy"].to_numpy(dtype=float))
                    my, ylo, yhi, _ = seed_mean_ci(g["fairness"].to_numpy(dtype=float))
                    if not (np.isfinite(mx) and np.isfinite(my)):
                        continue
                    rows.append({"loss": loss, "x": mx, "y": my})
                    xerr = [[mx - xlo], [xhi - mx]] if np.isfinite(xlo) else None
                    yerr = [[my - ylo], [yhi - my]] if np.isfinite(ylo) else None
                    ax.errorbar([mx], [my], xerr=xerr, yerr=yerr, fmt="o", color=colours[loss], capsize=3,
                                markersize=6)
                    ax.annotate(str(loss), (mx, my), textcoords="offset points", xytext=(4, 4), fontsize="x-small")
                if rows:
                    front = _pareto(pd.DataFrame(rows), sign)
                    if len(front) > 1:
                        ax.plot(front["x"], front["y"], "--", color="grey", linewidth=1, label="Pareto front")
                        ax.legend(fontsize="x-small", loc="best")
                else:
                    ax.text(0.5, 0.5, "no runs with both values", ha="center", va="center", transform=ax.transAxes)
                ax.set_title(f"{model} · score {score}", fontsize="medium")
                ax.set_xlabel(f"test {acc_name}")
                ax.set_ylabel(f"{metric} ({'↑' if sign > 0 else '↓'} fairer)" if c == 0 else "")
        annotate_seeds(fig, seed_counts(df, ["fairness_metric", "model", "score", "loss"], "fairness"))
    return fig

