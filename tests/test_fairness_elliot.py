"""Elliot's Gini, PopREO and PopRSP (docs/METRICS.md) against brute-force float64 oracles of Elliot's formulas.

The oracles below follow the procedures of Elliot's metric classes
(``diversity/gini_index``, ``bias/pop_reo``, ``bias/pop_rsp`` and
``popularity_utils/popularity``: Anelli et al., SIGIR 2021) with Python sets
and loops, one user at a time; the toolkit computes them vectorised from the
evaluator's top-K matrix.  Also: the rename of the old metric keys and the
migration of stores and tables written before it.
"""
from __future__ import annotations

import dataclasses
import math

import numpy as np
import pandas as pd
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from analysis.fairness import (
    RENAMED_METRICS,
    elliot_gini,
    group_metrics,
    elliot_popularity_metrics,
    exposure_gini,
    fairness_report,
    fairness_table,
    migrate_metric_names,
)
from analysis.popularity import head_groups, long_tail_mask, short_head_mask
from rankrobust.data.interactions import Interactions
from rankrobust.evaluate import EvalResult
from tests.test_fairness import random_case


# ------------------------------------------------------------------ oracles (Elliot's procedures, by hand)
def oracle_short_head(counts, order=None, ratio=0.8) -> set[int]:
    """Elliot's ``Popularity.get_short_head``: items by descending popularity (ties: Elliot's internal order,
    ``order``, default ascending ids), appended until the popularity taken reaches ``ratio`` of all interactions."""
    order = list(range(len(counts))) if order is None else list(order)
    ranked = sorted(order, key=lambda i: counts[i], reverse=True)  # a stable sort keeps ``order`` among ties
    limit = ratio * float(sum(counts))
    head = []
    for i in ranked:
        head.append(i)
        limit -= counts[i]
        if limit <= 0:
            break
    return set(head)


def oracle_gini(lists, n_items) -> float:
    """Elliot's ``Gini``: 1 − Σ_j (2j − n − 1) p(i_j) / (n − 1), items by ascending exposure, unrecommended at the bottom."""
    count: dict[int, int] = {}
    total = 0
    for rec in lists:
        total += len(rec)
        for i in rec:
            count[i] = count.get(i, 0) + 1
    n_rec = len(count)
    g = 0.0
    for j, c in enumerate(sorted(count.values())):
        g += (2 * (j + (n_items - n_rec) + 1) - n_items - 1) * (c / total)
    return 1.0 - g / (n_items - 1)


def _std_over_mean(pr):
    pr = np.asarray(pr, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        return float(np.std(pr) / np.mean(pr))


def oracle_pop_reo(lists, truth_rows, train_rows, head, tail) -> float:
    """Elliot's ``PopREO``: per group, hits in the top-K over the user's relevant (test, not training) items."""
    num, den = np.zeros(2), np.zeros(2)
    for rec, rel, seen in zip(lists, truth_rows, train_rows):
        if not rel:
            continue
        hit = {i for i in rec if i in rel}
        num += [len(hit & head), len(hit & tail)]
        den += [len((head & rel) - seen), len((tail & rel) - seen)]
    with np.errstate(divide="ignore", invalid="ignore"):
        return _std_over_mean(num / den)


def oracle_pop_rsp(lists, train_rows, head, tail) -> float:
    """Elliot's ``PopRSP``: per group, recommended items over the items the user has not interacted with."""
    num, den = np.zeros(2), np.zeros(2)
    for rec, seen in zip(lists, train_rows):
        r = set(rec)
        num += [len(r & head), len(r & tail)]
        den += [len(head - seen), len(tail - seen)]
    with np.errstate(divide="ignore", invalid="ignore"):
        return _std_over_mean(num / den)


def _lists(res, k):
    return [[i for i in row if i >= 0] for row in res.topk[:, :k].tolist()]


# ------------------------------------------------------------------ the short head
def test_short_head_hand():
    counts = np.array([10, 5, 3, 1, 1, 0])  # total 20; 0.8 · 20 = 16 is reached at item 2 (10 + 5 + 3 = 18)
    assert short_head_mask(counts).tolist() == [True, True, True, False, False, False]
    assert oracle_short_head(counts) == {0, 1, 2}
    assert (long_tail_mask(counts) == ~short_head_mask(counts)).all()
    assert head_groups(counts).tolist() == [1, 1, 1, 0, 0, 0]
    exact = np.array([8, 4, 4, 2, 2])  # 0.8 · 20 = 16 is reached exactly by 8 + 4 + 4: the item reaching it is head
    assert short_head_mask(exact).tolist() == [True, True, True, False, False] and oracle_short_head(exact) == {0, 1, 2}


def test_short_head_ties_at_the_boundary():
    """Elliot breaks a tie at the 80 % boundary by its internal item order; here the higher id goes first."""
    counts = np.array([4, 4, 4, 4, 4])  # any four items are a short head
    assert short_head_mask(counts).tolist() == [False, True, True, True, True]
    assert oracle_short_head(counts) == {0, 1, 2, 3}  # Elliot, items read in ascending id order
    assert oracle_short_head(counts, order=range(4, -1, -1)) == {1, 2, 3, 4}  # read in descending order: ours


@settings(max_examples=80, deadline=None)
@given(counts=st.lists(st.integers(0, 40), min_size=1, max_size=60), ratio=st.sampled_from([0.5, 0.8, 0.9]))
def test_short_head_is_elliots(counts, ratio):
    c = np.array(counts)
    ours = set(np.flatnonzero(short_head_mask(c, ratio).numpy()).tolist())
    elliot = oracle_short_head(c, order=range(len(c) - 1, -1, -1), ratio=ratio)  # the same tie order as ours
    if c.sum() == 0:
        assert ours == set()  # Elliot's loop stops at the first item: an empty training set has no head here
    else:
        assert ours == elliot


# ------------------------------------------------------------------ Gini
def test_elliot_gini_hand_and_direction():
    # exposure [1, 1, 1, 1, 1, 0] (5 lists' slots spread over 5 of 6 items)
    e = np.array([1, 1, 1, 1, 1, 0])
    assert elliot_gini(e) == pytest.approx(1 - (-3 - 1 + 1 + 3 + 5) / (5 * 5))
    assert elliot_gini(e) == pytest.approx(oracle_gini([[0, 1], [2, 3], [4]], 6))
    assert elliot_gini(e) == pytest.approx(1 - exposure_gini(e) * 6 / 5)
    assert elliot_gini(np.ones(9)) == pytest.approx(1.0)  # uniform exposure: most diverse
    one = np.zeros(9)
    one[4] = 7
    assert elliot_gini(one) == pytest.approx(0.0) and exposure_gini(one) == pytest.approx(8 / 9)  # opposite ends
    assert math.isnan(elliot_gini(np.zeros(4))) and math.isnan(elliot_gini(np.ones(1)))


@settings(max_examples=60, deadline=None)
@given(lists=st.lists(st.lists(st.integers(0, 14), min_size=1, max_size=5, unique=True), min_size=1, max_size=12))
def test_elliot_gini_equals_the_oracle(lists):
    n = 15
    exposure = np.bincount([i for rec in lists for i in rec], minlength=n)
    assert elliot_gini(exposure) == pytest.approx(oracle_gini(lists, n), abs=1e-12)


# ------------------------------------------------------------------ PopREO / PopRSP
def test_elliot_pop_reo_rsp_hand():
    # 3 users, 6 items; training counts [3, 2, 1, 0, 0, 0] over 6 interactions: 0.8 · 6 = 4.8 → short head {0, 1}
    train = Interactions.from_pairs([0, 0, 0, 1, 1, 2], [0, 1, 2, 0, 1, 0], 3, 6)
    test = Interactions.from_pairs([0, 0, 1, 1, 2], [3, 4, 2, 5, 1], 3, 6)
    assert train.item_counts().tolist() == [3, 2, 1, 0, 0, 0]
    assert oracle_short_head(train.item_counts()) == {0, 1} and head_groups(train.item_counts()).tolist() == [1, 1, 0, 0, 0, 0]
    topk = torch.tensor([[3, 5], [2, 3], [1, 4]])  # K = 2, training items excluded
    groups = head_groups(train.item_counts())
    gdf = group_metrics(topk, groups, 2, users=torch.tensor([0, 1, 2]), truth=test, train=train, n_groups=2)
    # hits: u0 item 3 (tail), u1 item 2 (tail), u2 item 1 (head); relevant: tail {3, 4} + {2, 5}, head {1}
    assert gdf["recall_cond"].tolist() == pytest.approx([2 / 4, 1 / 1])
    # recommended: tail 3, 5, 2, 3, 4 = 5, head 1; not yet seen: tail 3 + 4 + 4 = 11, head 0 + 0 + 1 = 1
    assert gdf["rec_rate"].tolist() == pytest.approx([5 / 11, 1 / 1])
    head, tail = {0, 1}, {2, 3, 4, 5}
    lists = topk.tolist()
    rows_t = [set(test.row(u).tolist()) for u in range(3)]
    rows_p = [set(train.row(u).tolist()) for u in range(3)]
    # two values: std / mean = |a − b| / (a + b)
    assert oracle_pop_reo(lists, rows_t, rows_p, head, tail) == pytest.approx(1 / 3)
    assert oracle_pop_rsp(lists, rows_p, head, tail) == pytest.approx(6 / 16)
    # the same through an evaluation: an EvalResult built from this top-K
    res = EvalResult(metrics={}, per_user=pd.DataFrame(), users=torch.tensor([0, 1, 2]), topk=topk,
                     hits=torch.tensor([[True, False], [True, False], [True, False]]),
                     n_truth=torch.tensor([2, 2, 1]), truth=test, ks=(2,))
    _, m = elliot_popularity_metrics(res, train, 2)
    assert m == pytest.approx({"elliot_pop_reo": 1 / 3, "elliot_pop_rsp": 6 / 16})


@pytest.mark.parametrize("seed", [0, 1, 2, 5, 11])
@pytest.mark.parametrize("k", [5, 20])
def test_elliot_metrics_equal_the_oracles(seed, k):
    train, test, res = random_case(seed)
    counts = train.item_counts()
    head = oracle_short_head(counts, order=range(len(counts) - 1, -1, -1))
    tail = set(range(train.n_items)) - head
    users = res.users.tolist()
    lists = _lists(res, k)
    rows_t = [set(test.row(u).tolist()) for u in users]
    rows_p = [set(train.row(u).tolist()) for u in users]
    gdf, summary = fairness_report(res, train, k=k, n_groups=10)
    _, elliot = elliot_popularity_metrics(res, train, k)
    assert elliot == {key: summary[key] for key in elliot}
    assert summary["elliot_pop_reo"] == pytest.approx(oracle_pop_reo(lists, rows_t, rows_p, head, tail), abs=1e-12)
    assert summary["elliot_pop_rsp"] == pytest.approx(oracle_pop_rsp(lists, rows_p, head, tail), abs=1e-12)
    assert summary["elliot_gini"] == pytest.approx(oracle_gini(lists, train.n_items), abs=1e-12)
    # the toolkit's own names are other quantities (10 groups, the inequality direction)
    assert summary["exposure_gini"] == pytest.approx((1 - summary["elliot_gini"]) * (train.n_items - 1) / train.n_items)


def test_elliot_cv_is_nan_where_elliots_division_is():
    train, test, res = random_case(3)
    empty_topk = dataclasses.replace(res, topk=torch.full_like(res.topk, -1), hits=torch.zeros_like(res.hits))
    _, m = elliot_popularity_metrics(empty_topk, train, 5)
    assert math.isnan(m["elliot_pop_reo"]) and math.isnan(m["elliot_pop_rsp"])  # 0 / 0: Elliot's nan


# ------------------------------------------------------------------ the rename
def test_migrate_metric_names():
    assert RENAMED_METRICS == {"gini": "exposure_gini", "pop_reo": "recall_cond_cv", "pop_rsp": "rec_rate_cv"}
    old = {"arp": 1.0, "gini": 0.5, "pop_reo": 0.2, "pop_rsp": 0.3}
    assert migrate_metric_names(old) == {"arp": 1.0, "exposure_gini": 0.5, "recall_cond_cv": 0.2, "rec_rate_cv": 0.3}
    # a store mixing runs from before and after the rename: one column, filled from both
    store = pd.DataFrame({"fairness.gini": [0.5, np.nan], "fairness.exposure_gini": [np.nan, 0.6],
                          "split.test_item_gini": [0.1, 0.2], "fairness.pop_reo": [0.2, 0.3]})
    new = migrate_metric_names(store)
    assert set(new.columns) == {"fairness.exposure_gini", "split.test_item_gini", "fairness.recall_cond_cv"}
    assert new["fairness.exposure_gini"].tolist() == [0.5, 0.6] and new["fairness.recall_cond_cv"].tolist() == [0.2, 0.3]
    assert "fairness.gini" in store.columns  # not modified in place
    # a long fairness table written before the rename
    train, _, res = random_case(4, 20, 30)
    table = fairness_table(res, train, k=5, n_groups=3)
    legacy = table.assign(metric=table["metric"].replace({v: k for k, v in RENAMED_METRICS.items()}))
    assert "gini" in set(legacy["metric"])
    pd.testing.assert_frame_equal(migrate_metric_names(legacy), table)
    assert migrate_metric_names(table) is table and migrate_metric_names(3) == 3
