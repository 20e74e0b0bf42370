"""Where each loss puts its negative-side gradient when false negatives fill some slots (README: "Analysis").

The gradient-accounting probe (`analysis.probes.GradientShareProbe`) records,
per run with ``noise.neg_prob`` p > 0, ``neg_grad_share_fn`` = Σ over
false-negative slots |∂L/∂s⁻| / Σ over all negative slots |∂L/∂s⁻| and
``fn_slot_fraction``, the share of slots holding a false negative, at the
best epoch (``gradient_accounting.*_best`` in the store).  Their ratio says
how a loss weighs a false negative against an average negative: 1 is uniform
weighting, above 1 up-weighting.

SL's negative term is the KL-DRO worst case over the negatives: its gradient
is softmax(s⁻/τ), which concentrates on high-scoring negatives, and a false
negative (an item the user likes) scores high once the model has learnt it.
So "SL is DRO, hence robust to noisy negatives" can be read off directly: SL
up-weights false negatives relative to BPR when its share/slot ratio exceeds
BPR's at matched p (same pool, backbone, dataset).  `sl_vs_bpr` and
`report_lines` give that reading (``rankrobust dro-check SWEEP``, check (e));
`frame`, `plot` and `caption` make the figure of the share against p.
"""
from __future__ import annotations

from typing import Iterable

import numpy as np
import pandas as pd

from rankrobust.runs import STATUS_DONE
from rankrobust.store import DATASET, LOSS, MODEL, NOISE_NEG_POOL, NOISE_NEG_PROB, RUN_DIR, SEED, STATUS

#: store columns of the negative-side accounting (at the best epoch)
SHARE = "gradient_accounting.neg_grad_share_fn_best"
FRACTION = "gradient_accounting.fn_slot_fraction_best"
#: the columns that identify a matched comparison, when the store has them
MATCH = (DATASET, MODEL, NOISE_NEG_POOL, NOISE_NEG_PROB)


def run_rows(store: pd.DataFrame) -> pd.DataFrame:
    """One row per finished run with negative-side accounting: the matching keys, ``loss``, ``seed``,
    ``share``, ``fraction``, ``ratio`` = share / fraction and ``run_dir`` (so a figure's caption can name
    the runs it drew, `analysis.figures.caption_facts`).

    Runs without the columns (p = 0, runs made before the accounting existed)
    and runs whose loss does not read s⁻ (share recorded as None) give no row.
    """
    if store.empty or SHARE not in store or FRACTION not in store:
        return pd.DataFrame(columns=[*MATCH, "loss", "seed", "share", "fraction", "ratio", RUN_DIR])
    done = store[store[STATUS] == STATUS_DONE] if STATUS in store else store
    done = done.dropna(subset=[SHARE, FRACTION])
    done = done[done[FRACTION] > 0]
    out = pd.DataFrame({key: done[key] if key in done else "" for key in MATCH})
    out["loss"] = done[LOSS]
    out["seed"] = done[SEED] if SEED in done else np.nan
    out["share"] = done[SHARE].astype(float)
    out["fraction"] = done[FRACTION].astype(float)
    out["ratio"] = out["share"] / out["fraction"]
    out[RUN_DIR] = done[RUN_DIR] if RUN_DIR in done else None
    return out.reset_index(drop=True)


def summary(rows: pd.DataFrame) -> pd.DataFrame:
    """Per matched cell and loss: ``n`` runs (seeds) and the means of share, fraction and ratio."""
    keys = [*MATCH, "loss"]
    if rows.empty:
        return pd.DataFrame(columns=[*keys, "n", "share", "fraction", "ratio"])
    return (rows.groupby(keys, dropna=False, sort=True)
            .agg(n=("share", "size"), share=("share", "mean"), fraction=("fraction", "mean"), ratio=("ratio", "mean"))
            .reset_index())


def sl_vs_bpr(rows: pd.DataFrame, loss: str = "sl", reference: str = "bpr") -> pd.DataFrame:
    """The robustness reading at matched p: ``loss``'s share/slot ratio over ``reference``'s.

    One row per matched cell (dataset, backbone, pool, p) holding both losses:
    their ratios (means over seeds), ``sl_over_bpr`` = ratio(loss) /
    ratio(reference) and ``up_weights`` = that ratio > 1, i.e. ``loss``'s
    worst-case weighting puts more on false negatives, per slot, than
    ``reference``'s.
    """
    table = summary(rows)
    a = table[table["loss"] == loss].drop(columns="loss")
    b = table[table["loss"] == reference].drop(columns="loss")
    both = a.merge(b, on=list(MATCH), suffixes=(f"_{loss}", f"_{reference}"))
    both["sl_over_bpr"] = both[f"ratio_{loss}"] / both[f"ratio_{reference}"]
    both["up_weights"] = both["sl_over_bpr"] > 1
    return both.reset_index(drop=True)


def _where(row: pd.Series) -> str:
    parts = [str(row[k]) for k in (DATASET, MODEL) if str(row.get(k, ""))]
    return " ".join(parts + [f"pool {row['noise.neg_pool']}", f"p = {float(row['noise.neg_prob']):g}"])


def report_lines(rows: pd.DataFrame) -> list[str]:
    """Check (e) over several runs: share vs slot fraction per loss and p, then SL against BPR at matched p."""
    if rows.empty:
        return ["(e) no run with negative-side gradient accounting (train with --noise-neg P > 0; runs made before "
                "the accounting existed lack it)"]
    table = summary(rows)
    lines = ["(e) negative-side gradient on false negatives, at each run's best epoch (Σ_fn |∂L/∂s⁻| / Σ |∂L/∂s⁻|; "
             "ratio = share / slot fraction, 1 = uniform weighting; means over seeds)",
             f"    {'cell':<34} {'loss':<11} {'n':>3} {'FN slots':>9} {'FN share':>9} {'ratio':>7}"]
    for _, r in table.iterrows():
        lines.append(f"    {_where(r):<34} {r['loss']:<11} {int(r['n']):>3} {r['fraction']:>9.4f} "
                     f"{r['share']:>9.4f} {r['ratio']:>7.2f}")
    cmp = sl_vs_bpr(rows)
    if cmp.empty:
        lines.append("    SL vs BPR: no cell holds both an SL and a BPR run, so the reading cannot be tested here")
        return lines
    lines += ["", "    Does SL's worst-case (DRO) weighting up-weight false negatives relative to BPR? "
                  "(ratio SL / ratio BPR > 1: yes)"]
    for _, r in cmp.iterrows():
        lines.append(f"    {_where(r):<34} SL {r['ratio_sl']:.2f} (share {r['share_sl']:.4f}) vs BPR "
                     f"{r['ratio_bpr']:.2f} (share {r['share_bpr']:.4f}): {r['sl_over_bpr']:.2f}x "
                     f"{'yes' if r['up_weights'] else 'no'}")
    yes = int(cmp["up_weights"].sum())
    lines.append(f"    SL up-weights false negatives relative to BPR in {yes} of {len(cmp)} matched cells")
    return lines


# ------------------------------------------------------------------ figure
def frame(sweep, missing: type[Exception] = ValueError) -> pd.DataFrame:
    """The figure's data from a noisy-negatives sweep (`analysis.figures.Sweep`): `run_rows` of its finished runs.

    Raises ``missing`` (the registry passes `analysis.figures.MissingData`) when no run recorded the
    negative-side accounting.
    """
    rows = run_rows(sweep.done)
    if rows.empty:
        raise missing(f"{sweep.path}: no run with negative-side gradient accounting ({SHARE}); its runs "
                          f"predate it, or none has noise.neg_prob > 0")
    return rows


def _values(series: Iterable) -> str:
    vals = sorted({v for v in series if str(v) != ""}, key=lambda v: (str(type(v)), v))
    return ", ".join(f"{v:g}" if isinstance(v, float) else str(v) for v in vals) or "–"


def caption(rows: pd.DataFrame) -> str:
    """What the drawn frame holds: losses, pools, backbones, p, seeds and the number of runs."""
    seeds = rows["seed"].dropna().astype(int) if "seed" in rows else []
    return (f"losses: {_values(rows['loss'])}; pools: {_values(rows['noise.neg_pool'])}; backbones: "
            f"{_values(rows['model.name'])}; p: {_values(rows['noise.neg_prob'].astype(float))}; seeds: "
            f"{_values(seeds)}; n = {len(rows)} runs")


def plot(rows: pd.DataFrame):
    """Share of the negative-side gradient on false negatives against p: one column per loss family, one row per
    pool (and backbone); a line per loss (mean and 95 % t-CI over seeds, `analysis.plots.seed_ci`), SL dashed
    grey as the reference in every panel, the false-negative slot fraction (what uniform weights give) dotted
    black; `caption` and the seeds per point (`analysis.plots.annotate_seeds`) under it."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    from analysis import plots
    from rankrobust.losses import LOSS_FAMILIES

    present = list(dict.fromkeys(rows["loss"]))
    known = {x for names in LOSS_FAMILIES.values() for x in names}
    groups = [(fam, [x for x in names if x in present]) for fam, names in LOSS_FAMILIES.items()]
    groups = [(fam, xs) for fam, xs in groups + [("other", [x for x in present if x not in known])] if xs]
    pools = sorted(dict.fromkeys(rows[NOISE_NEG_POOL]), key=lambda v: ({"train": 0, "heldout": 1}.get(v, 2), v))
    models = list(dict.fromkeys(rows[MODEL]))
    panels = [(pool, model) for pool in pools for model in models]
    with sns.axes_style(plots.STYLE), sns.plotting_context(plots.CONTEXT):
        fig, axes = plt.subplots(len(panels), len(groups), figsize=(3.6 * len(groups), 3.0 * len(panels) + 0.4),
                                 squeeze=False, sharex=True, sharey=True)
        for r, (pool, model) in enumerate(panels):
            part = rows[(rows[NOISE_NEG_POOL] == pool) & (rows[MODEL] == model)]
            slots = part.groupby(NOISE_NEG_PROB)["fraction"].mean()
            for c, (fam, names) in enumerate(groups):
                ax = axes[r, c]
                ax.plot(slots.index, slots.values, color="black", linestyle=":", label="FN slot fraction")
                ref = part[part["loss"] == "sl"] if "sl" not in names else part.iloc[0:0]
                if not ref.empty:
                    sns.lineplot(data=ref, x=NOISE_NEG_PROB, y="share", color="grey", linestyle="--",
                                 errorbar=None, ax=ax, label="sl (ref.)")
                sns.lineplot(data=part[part["loss"].isin(names)], x=NOISE_NEG_PROB, y="share", hue="loss",
                             hue_order=names, style="loss", style_order=names, markers=True, dashes=False,
                             errorbar=plots.seed_ci, ax=ax)
                where = f"pool = {pool}" + (f" · {model}" if len(models) > 1 and str(model) else "")
                ax.set_title(f"{fam} · {where}", fontsize="medium")
                ax.set_xlabel("false-negative probability p")
                ax.set_ylabel("share of negative-side gradient\non false negatives" if c == 0 else "")
                ax.set_ylim(0, 1)
                ax.legend(fontsize="x-small", loc="upper left")
        fig.tight_layout(rect=(0, 0.04, 1, 1))
        fig.text(0.01, 0.005, caption(rows), fontsize="x-small", ha="left", va="bottom")
        plots.annotate_seeds(fig, plots.seed_counts(rows, [NOISE_NEG_POOL, MODEL, "loss", NOISE_NEG_PROB],
                                                    "share"))
    return fig
