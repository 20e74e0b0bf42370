"""Tests for analysis.fairness: popularity groups, per-group metrics, popularity-bias metrics."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch
from hypothesis import example, HealthCheck, given, settings
from hypothesis import strategies as st

from analysis.fairness import (
    fairness_report,
    fairness_table,
    format_group_table,
    exposure_gini,
    gini,
    group_metrics,
    popularity_metrics,
)
from analysis.popularity import long_tail_mask, popularity_groups
from rankrobust.data.interactions import Interactions
from rankrobust.evaluate import Evaluator


def random_case(seed: int, n_users: int = 40, n_items: int = 60):
    """Skewed random train/test and an evaluation of random embeddings."""
    rng = np.random.default_rng(seed)
    p = rng.pareto(1.2, n_items) + 0.05
    p /= p.sum()
    def draw(density):
        m = rng.random((n_users, n_items)) < np.clip(density * n_items * p, 0, 1)
        u, i = np.nonzero(m)
        return Interactions.from_pairs(u, i, n_users, n_items)
    train = draw(0.2)
    test = draw(0.08).difference(train)
    g = torch.Generator().manual_seed(seed)
    U, I = torch.randn(n_users, 6, generator=g), torch.randn(n_items, 6, generator=g)
    res = Evaluator(test, [train], ks=(5, 10, 20), chunk_size=8).evaluate(U, I)
    return train, test, res


# --------------------------------------------------------------- groups
def test_groups_interactions_mode_hand():
    counts = np.array([5, 1, 1, 3, 0, 10])
    # ascending, ties by id: 4(0) 1(1) 2(1) 3(3) 0(5) 5(10); interactions before: 0 0 1 2 5 10 of 20
    assert popularity_groups(counts, 2, "interactions").tolist() == [0, 0, 0, 0, 0, 1]
    assert popularity_groups(counts, 4, "interactions").tolist() == [1, 0, 0, 0, 0, 2]  # group 3 empty
    assert popularity_groups(np.ones(100, int), 10).tolist() == [i // 10 for i in range(100)]


def test_groups_items_mode_hand():
    counts = np.array([5, 1, 1, 3, 0, 10])
    # positions 0..5 -> floor(3 p / 6)
    g = popularity_groups(counts, 3, "items").tolist()
    assert g == [2, 0, 1, 1, 0, 2]
    sizes = np.bincount(popularity_groups(np.arange(23)[::-1].copy(), 5, "items").numpy(), minlength=5)
    assert sizes.tolist() == [5, 5, 4, 5, 4]


def test_groups_degenerate_inputs():
    assert popularity_groups(np.zeros(4, int), 2).tolist() == [0, 0, 1, 1]  # falls back to items
    assert popularity_groups(np.array([3, 1]), 5, "items").tolist() == [2, 0]
    assert popularity_groups(torch.tensor([2.0, 1.0]), 1).tolist() == [0, 0]
    with pytest.raises(ValueError):
        popularity_groups(np.array([1, 2]), 2, "bogus")
    with pytest.raises(ValueError):
        popularity_groups(np.array([1, -2]), 2)


@settings(max_examples=60, deadline=None)
@given(
    counts=st.lists(st.integers(0, 50), min_size=1, max_size=80),
    n_groups=st.integers(1, 12),
    mode=st.sampled_from(["interactions", "items"]),
)
def test_groups_properties(counts, n_groups, mode):
    c = np.array(counts)
    g = popularity_groups(c, n_groups, mode).numpy()
    assert g.min() >= 0 and g.max() < n_groups
    # monotone: more popular never in a lower group; equal popularity: ordered by id
    order = np.lexsort((np.arange(len(c)), c))
    assert np.all(np.diff(g[order]) >= 0)
    sizes = np.bincount(g, minlength=n_groups)
    if mode == "items" or c.sum() == 0:
        if len(c) >= n_groups:
            assert sizes.max() - sizes.min() <= 1
        else:
            assert sizes.max() <= 1
    else:
        inter = np.bincount(g, weights=c, minlength=n_groups)
        assert np.all(inter <= c.sum() / n_groups + c.max() + 1e-9)
        assert g[order[0]] == 0


def test_long_tail_mask_hand():
    counts = np.array([10, 5, 3, 1, 1, 0])  # total 20, head reaches 16 at item 2 (10+5+3 = 18)
    assert long_tail_mask(counts).tolist() == [False, False, False, True, True, True]
    assert long_tail_mask(np.array([4, 4, 4, 4, 4])).tolist() == [True, False, False, False, False]


# ---------------------------------------------------------- group sums
@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 2**31 - 1),
    n_groups=st.integers(1, 10),
    k=st.sampled_from([5, 10, 20]),
    mode=st.sampled_from(["interactions", "items"]),
)
@example(seed=902, n_groups=1, k=5, mode="interactions")  # an empty test split: NaN totals and contributions
def test_group_contributions_sum_to_totals(seed, n_groups, k, mode):
    train, test, res = random_case(seed, 25, 35)
    groups = popularity_groups(train.item_counts(), n_groups, mode)
    df = group_metrics(res, groups, k, train=train, n_groups=n_groups)
    assert len(df) == n_groups
    if res.users.numel() == 0:  # no evaluated user (an empty test split): undefined, never 0.0
        assert np.isnan(res.metrics[f"recall@{k}"]) and df["recall"].isna().all() and df["ndcg"].isna().all()
        return
    assert df["recall"].sum() == pytest.approx(res.metrics[f"recall@{k}"], abs=1e-12)
    assert df["ndcg"].sum() == pytest.approx(res.metrics[f"ndcg@{k}"], abs=1e-12)
    assert df["n_items"].sum() == 35
    assert df["n_interactions"].sum() == train.nnz
    assert df["n_recs"].sum() == int((res.topk[:, :k] >= 0).sum())
    assert df["rec_share"].sum() == pytest.approx(1.0)
    assert df["n_truth"].sum() == test.nnz
    assert df["n_hits"].sum() == int(res.hits[:, :k].sum())


def test_no_evaluated_user_gives_nan_contributions():
    """An empty test split (the case hypothesis found at seed 902): totals and group contributions are NaN."""
    train, _, _ = random_case(3, 25, 35)
    empty = Interactions.empty(*train.shape)
    g = torch.Generator().manual_seed(0)
    res = Evaluator(empty, [train], ks=(5,), chunk_size=8).evaluate(torch.randn(25, 6, generator=g),
                                                                     torch.randn(35, 6, generator=g))
    df = group_metrics(res, popularity_groups(train.item_counts(), 3, "interactions"), 5, train=train, n_groups=3)
    assert np.isnan(res.metrics["recall@5"]) and df["recall"].isna().all() and df["ndcg"].isna().all()


def test_group_metrics_bruteforce_and_raw_topk_path():
    train, test, res = random_case(7)
    k, G = 10, 4
    groups = popularity_groups(train.item_counts(), G)
    df = group_metrics(res, groups, k, train=train)
    gnp = groups.numpy()
    rec = np.zeros(G); dcg = np.zeros(G); hits = np.zeros(G); truth_g = np.zeros(G); recs = np.zeros(G); cand = np.zeros(G)
    for row, u in enumerate(res.users.tolist()):
        T = set(test.row(u).tolist())
        L = [i for i in res.topk[row, :k].tolist() if i >= 0]
        idcg = sum(1 / math.log2(r + 2) for r in range(min(k, len(T))))
        for r, i in enumerate(L):
            recs[gnp[i]] += 1
            if i in T:
                rec[gnp[i]] += 1 / len(T)
                dcg[gnp[i]] += 1 / math.log2(r + 2) / idcg
                hits[gnp[i]] += 1
        for i in T:
            truth_g[gnp[i]] += 1
        P = set(train.row(u).tolist())
        for i in range(train.n_items):
            if i not in P:
                cand[gnp[i]] += 1
    n = len(res.users)
    np.testing.assert_allclose(df["recall"], rec / n, atol=1e-12)
    np.testing.assert_allclose(df["ndcg"], dcg / n, atol=1e-12)
    np.testing.assert_allclose(df["recall_cond"], np.where(truth_g > 0, hits / np.maximum(truth_g, 1), np.nan))
    np.testing.assert_allclose(df["rec_rate"], np.where(cand > 0, recs / np.maximum(cand, 1), np.nan))
    np.testing.assert_array_equal(df["candidates"], cand)
    # the raw top-K path gives the same table
    df2 = group_metrics(res.topk, groups, k, users=res.users, truth=test, train=train)
    pd.testing.assert_frame_equal(df, df2)
    # without train the candidates are |U| * |g|
    df3 = group_metrics(res, groups, k)
    np.testing.assert_array_equal(df3["candidates"], n * df3["n_items"])


def test_group_metrics_hand():
    # 2 users, 4 items, groups [0, 0, 1, 1]; K = 2
    train = Interactions.from_pairs([0, 1, 1], [3, 0, 2], 2, 4)
    test = Interactions.from_pairs([0, 0, 1], [0, 2, 3], 2, 4)
    topk = torch.tensor([[2, 1], [3, 1]])
    df = group_metrics(topk, torch.tensor([0, 0, 1, 1]), 2, users=torch.tensor([0, 1]), truth=test, train=train)
    # user 0: hit item 2 (g1) at rank 1, |T|=2; user 1: hit item 3 (g1) at rank 1, |T|=1
    assert df["recall"].tolist() == pytest.approx([0.0, (0.5 + 1.0) / 2])
    idcg0 = 1 + 1 / math.log2(3)
    assert df["ndcg"].tolist() == pytest.approx([0.0, (1 / idcg0 + 1.0) / 2])
    assert df["n_recs"].tolist() == [2, 2] and df["rec_share"].tolist() == [0.5, 0.5]
    assert df["n_truth"].tolist() == [1, 2] and df["n_hits"].tolist() == [0, 2]
    assert df["recall_cond"].tolist() == pytest.approx([0.0, 1.0])
    # candidates: user 0 excludes item 3 (g1); user 1 excludes items 0 (g0) and 2 (g1)
    assert df["candidates"].tolist() == [3, 2]
    assert df["rec_rate"].tolist() == pytest.approx([2 / 3, 1.0])


# ------------------------------------------------------ popularity metrics
HAND_COUNTS = np.array([10, 5, 3, 1, 1, 0])
HAND_TOPK = torch.tensor([[0, 1], [2, 3], [4, -1]])
HAND_GROUPS = torch.tensor([1, 1, 0, 0, 0, 0])


def test_popularity_metrics_hand():
    m = popularity_metrics(HAND_TOPK, HAND_COUNTS, HAND_GROUPS, 2, [0.2, 0.6])
    assert m["arp"] == pytest.approx((7.5 + 2 + 1) / 3)
    assert m["aplt"] == pytest.approx((0 + 0.5 + 1) / 3)
    # exposure [1,1,1,1,1,0]: sorted [0,1,1,1,1,1] -> (-3-1+1+3+5)/(6*5)
    assert m["exposure_gini"] == pytest.approx(1 / 6)
    assert m["coverage"] == pytest.approx(5 / 6)
    assert m["recall_cond_cv"] == pytest.approx(0.2 / 0.4)
    # rates: g0 3 recs / 4 items, g1 2 recs / 2 items -> std 0.125 / mean 0.875
    assert m["rec_rate_cv"] == pytest.approx(1 / 7)
    m2 = popularity_metrics(HAND_TOPK, HAND_COUNTS, HAND_GROUPS, 2, [0.2, 0.6], group_candidates=[8, 4])
    assert m2["rec_rate_cv"] == pytest.approx(0.0625 / 0.4375)
    # k = 1 only uses the first column: items 0, 2, 4
    m1 = popularity_metrics(HAND_TOPK, HAND_COUNTS, HAND_GROUPS, 1, [0.3, 0.3])
    assert m1["arp"] == pytest.approx((10 + 3 + 1) / 3)
    assert m1["aplt"] == pytest.approx(1 / 3)
    assert m1["coverage"] == pytest.approx(0.5)
    assert m1["recall_cond_cv"] == 0.0


def test_reo_rsp_skip_undefined_groups():
    m = popularity_metrics(HAND_TOPK, HAND_COUNTS, torch.tensor([1, 1, 0, 0, 0, 0]), 2, [0.2, float("nan"), 0.6],
                           n_groups=3)
    assert m["recall_cond_cv"] == pytest.approx(0.5)
    assert m["rec_rate_cv"] == pytest.approx(1 / 7)  # group 2 has no items
    assert popularity_metrics(HAND_TOPK, HAND_COUNTS, HAND_GROUPS, 2, [0.0, 0.0])["recall_cond_cv"] == 0.0
    assert math.isnan(popularity_metrics(HAND_TOPK, HAND_COUNTS, HAND_GROUPS, 2, [np.nan, np.nan])["recall_cond_cv"])


def test_gini_extremes():
    assert gini is exposure_gini  # the old name stays importable
    assert gini(np.ones(7)) == pytest.approx(0.0)
    for n in (2, 5, 100):
        e = np.zeros(n)
        e[3 % n] = 42
        assert gini(e) == pytest.approx((n - 1) / n)
    assert math.isnan(gini(np.zeros(3)))
    # from top-K lists: every user gets item 0 only
    m = popularity_metrics(torch.zeros(5, 1, dtype=torch.long), np.ones(10, int), torch.zeros(10, dtype=torch.long), 1, [1.0])
    assert m["exposure_gini"] == pytest.approx(0.9)
    # each item once: uniform exposure
    m = popularity_metrics(torch.arange(10).view(5, 2), np.ones(10, int), torch.zeros(10, dtype=torch.long), 2, [1.0])
    assert m["exposure_gini"] == pytest.approx(0.0) and m["coverage"] == 1.0


# ------------------------------------------------------------ reporting
def test_fairness_report_and_table():
    train, test, res = random_case(3)
    gdf, summary = fairness_report(res, train, k=10, n_groups=5)
    assert len(gdf) == 5
    assert summary["recall@10"] == pytest.approx(res.metrics["recall@10"])
    assert summary["ndcg@10"] == pytest.approx(res.metrics["ndcg@10"])
    for key in ("arp", "aplt", "exposure_gini", "coverage", "recall_cond_cv", "rec_rate_cv", "elliot_gini",
                "elliot_pop_reo", "elliot_pop_rsp"):
        assert np.isfinite(summary[key]), key
    assert 0 <= summary["aplt"] <= 1 and 0 <= summary["exposure_gini"] <= 1 and 0 < summary["coverage"] <= 1
    assert summary["recall_cond_cv"] == pytest.approx(np.nanstd(gdf["recall_cond"]) / np.nanmean(gdf["recall_cond"]))
    assert summary["rec_rate_cv"] == pytest.approx(gdf["rec_rate"].std(ddof=0) / gdf["rec_rate"].mean())

    table = fairness_table(res, train, ks=(5, 10), n_groups=5, modes=("interactions", "items"))
    assert list(table.columns) == ["mode", "n_groups", "k", "scope", "group", "metric", "value"]
    assert set(table["mode"]) == {"interactions", "items"} and set(table["k"]) == {5, 10}
    sel = table[(table["mode"] == "interactions") & (table["k"] == 10)]
    overall = sel[sel["scope"] == "overall"].set_index("metric")["value"]
    assert overall["recall"] == pytest.approx(res.metrics["recall@10"])
    grp = sel[(sel["scope"] == "group") & (sel["metric"] == "recall")]
    assert sorted(grp["group"]) == list(range(5))
    assert grp["value"].sum() == pytest.approx(overall["recall"])
    assert table["value"].dtype == np.float64
    # the (group_df, summary) form gives the same rows for one report
    gdf10, summ10 = fairness_report(res, train, k=10, n_groups=5, mode="items")
    one = fairness_table(gdf10, summ10, k=10, mode="items")
    part = table[(table["mode"] == "items") & (table["k"] == 10)].reset_index(drop=True)
    pd.testing.assert_frame_equal(one, part)
    with pytest.raises(TypeError):
        fairness_table(gdf10, train)


def test_fairness_table_parquet_roundtrip(tmp_path):
    train, test, res = random_case(4, 20, 30)
    table = fairness_table(res, train, ks=(5,), n_groups=3, modes=("interactions", "items"))
    path = tmp_path / "fairness.parquet"
    table.to_parquet(path)
    back = pd.read_parquet(path)
    assert len(back) == len(table)
    np.testing.assert_allclose(back["value"].to_numpy(), table["value"].to_numpy(), equal_nan=True)


def test_format_group_table():
    train, test, res = random_case(5)
    gdf, summary = fairness_report(res, train, k=10, n_groups=4)
    text = format_group_table(gdf, summary)
    lines = text.splitlines()
    assert lines[0].split()[0] == "group"
    assert len(lines) == 1 + 1 + 4 + 1 + 1 + 1  # header, rule, groups, rule, sum, summary
    assert lines[-2].lstrip().startswith("sum")
    assert "exposure_gini=" in lines[-1] and "elliot_pop_reo=" in lines[-1]
