"""Figures 1–3 with the fifteen losses: one panel per loss family, and figure 3's two false-negative pools."""
from __future__ import annotations

import numpy as np
import pandas as pd

from analysis.figures import FIGURES, plot_loss_families, plot_noise_families
from rankrobust.losses import LOSS_FAMILIES, LOSSES, loss_family


def test_every_loss_has_one_family():
    names = [x for xs in LOSS_FAMILIES.values() for x in xs]
    assert sorted(names) == sorted(LOSSES) and len(names) == len(set(names))
    assert loss_family("sl") == "softmax" and loss_family("hinge") == "other"


def _accuracy(models=("mf", "lightgcn")):
    rng = np.random.default_rng(0)
    return pd.DataFrame([{"model": m, "loss": x, "metric": k, "value": rng.uniform(0.1, 0.4)}
                         for x in LOSSES for m in models for k in ("recall@20", "ndcg@20") for _ in range(2)])


def test_figure1_groups_the_losses_by_family():
    fig = plot_loss_families(_accuracy())
    axes = fig.get_axes()
    assert len(axes) == 2  # one panel per metric
    labels = [t.get_text() for t in axes[0].get_xticklabels()]
    assert labels == [x for xs in LOSS_FAMILIES.values() for x in xs]  # every loss, in family order
    texts = {t.get_text() for t in axes[0].texts}
    assert set(LOSS_FAMILIES) <= texts


def test_figure3_shows_both_pools_side_by_side_one_column_per_family():
    rows = []
    for loss in ("sl", "bsl", "bpr", "dcl", "rince", "drrl"):
        for pool in ("train", "heldout"):
            for p in (0.0, 0.2):
                for metric in ("recall@20", "ndcg@20"):
                    rows.append({"loss": loss, "noise.neg_prob": p, "noise.neg_pool": pool, "metric": metric,
                                 "value": 0.3 - p * (pool == "train")})
    fig = plot_noise_families(pd.DataFrame(rows), x="noise.neg_prob", split="noise.neg_pool")
    axes = fig.get_axes()
    families = {loss_family(x) for x in ("sl", "bsl", "bpr", "dcl", "rince", "drrl")}
    assert len(axes) == 2 * 2 * len(families)  # (metric × pool) rows × family columns
    titles = [ax.get_title() for ax in axes]
    assert any("neg_pool = train" in t for t in titles) and any("neg_pool = heldout" in t for t in titles)
    # one pool only (figure 2's case, or a store with the train pool only): no split rows
    one = pd.DataFrame(rows)
    one = one[one["noise.neg_pool"] == "train"]
    assert len(plot_noise_families(one, x="noise.neg_prob", split="noise.neg_pool").get_axes()) == 2 * len(families)


def test_registry_uses_the_family_plots_for_figures_1_to_3():
    by_number = {f.number: f for f in FIGURES}
    assert by_number[1].plot is plot_loss_families
    for n in (2, 3):
        assert by_number[n].plot.func is plot_noise_families
    assert by_number[3].frame.keywords["split"] == "noise.neg_pool"
