"""Tests for rankrobust.evaluate: metrics vs pytrec_eval and a float64 brute-force oracle."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rankrobust.data.interactions import Interactions
from rankrobust.evaluate import (
    METRIC_NAMES,
    EvalResult,
    Evaluator,
    metrics_from_hits,
    most_popular_baseline,
)

pytrec_eval = pytest.importorskip("pytrec_eval")

KS = (1, 3, 5, 10, 20)


def random_matrix(rng: np.random.Generator, n_users: int, n_items: int, density: float) -> Interactions:
    mask = rng.random((n_users, n_items)) < density
    u, i = np.nonzero(mask)
    return Interactions.from_pairs(u, i, n_users, n_items)


def random_setup(seed: int, n_users: int = 40, n_items: int = 60, d: int = 6, dtype=torch.float32):
    """Random embeddings, train/valid masks and a test set (may overlap the masks)."""
    rng = np.random.default_rng(seed)
    train = random_matrix(rng, n_users, n_items, 0.15)
    valid = random_matrix(rng, n_users, n_items, 0.05)
    test = random_matrix(rng, n_users, n_items, 0.08)
    # keep test mostly disjoint from train, but leave a few overlaps (unreachable truth)
    test = test.difference(train).union(random_matrix(rng, n_users, n_items, 0.01))
    g = torch.Generator().manual_seed(seed)
    U = torch.randn(n_users, d, generator=g, dtype=torch.float64).to(dtype)
    I = torch.randn(n_items, d, generator=g, dtype=torch.float64).to(dtype)
    return train, valid, test, U, I


# --------------------------------------------------------------- oracles
def brute_force(U: torch.Tensor, I: torch.Tensor, truth: Interactions, exclude, ks):
    """Plain-Python float64 oracle: {user: {metric: value}} and {user: ranked list}."""
    S = U.double().numpy() @ I.double().numpy().T
    out, lists = {}, {}
    for u in range(truth.n_users):
        T = set(truth.row(u).tolist())
        if not T:
            continue
        s = S[u].copy()
        for ex in exclude:
            s[ex.row(u)] = -np.inf
        order = [int(i) for i in np.argsort(-s, kind="stable") if np.isfinite(s[i])]
        lists[u] = order
        m = {}
        for k in ks:
            L = order[:k]
            rel = [1 if i in T else 0 for i in L]
            h = sum(rel)
            m[f"recall@{k}"] = h / len(T)
            m[f"precision@{k}"] = h / k
            dcg = sum(r / math.log2(p + 2) for p, r in enumerate(rel))
            idcg = sum(1 / math.log2(p + 2) for p in range(min(k, len(T))))
            m[f"ndcg@{k}"] = dcg / idcg
            m[f"hit@{k}"] = 1.0 if h else 0.0
            first = next((p for p, r in enumerate(rel) if r), None)
            m[f"mrr@{k}"] = 0.0 if first is None else 1 / (first + 1)
        out[u] = m
    return out, lists


def trec_eval_metrics(result: EvalResult, truth: Interactions, ks):
    """pytrec_eval on the evaluator's own top-K lists: {user: {metric: value}}."""
    qrel = {str(u): {str(i): 1 for i in truth.row(u)} for u in result.users.tolist()}
    topk = result.topk.cpu().numpy()
    kmax = topk.shape[1]

    def run_for(cut):
        return {
            str(u): {str(i): float(kmax - r) for r, i in enumerate(row[:cut]) if i >= 0}  # strictly decreasing
            for u, row in zip(result.users.tolist(), topk)
        }

    cuts = ",".join(str(k) for k in ks)
    ev = pytrec_eval.RelevanceEvaluator(qrel, {f"P.{cuts}", f"recall.{cuts}", f"ndcg_cut.{cuts}", f"success.{cuts}"})
    full = ev.evaluate(run_for(kmax))
    rr_ev = pytrec_eval.RelevanceEvaluator(qrel, {"recip_rank"})
    out = {}
    for u in result.users.tolist():
        m = {}
        for k in ks:
            m[f"recall@{k}"] = full[str(u)][f"recall_{k}"]
            m[f"precision@{k}"] = full[str(u)][f"P_{k}"]
            m[f"ndcg@{k}"] = full[str(u)][f"ndcg_cut_{k}"]
            m[f"hit@{k}"] = full[str(u)][f"success_{k}"]
        out[u] = m
    for k in ks:  # recip_rank has no cutoff: truncate the run to K
        res = rr_ev.evaluate(run_for(k))
        for u in result.users.tolist():
            out[u][f"mrr@{k}"] = res[str(u)]["recip_rank"]
    return out


def per_user_dict(result: EvalResult) -> dict[int, dict[str, float]]:
    df = result.per_user.set_index("user")
    return {int(u): row.to_dict() for u, row in df.iterrows()}


# ----------------------------------------------------------------- tests
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_pytrec_eval(seed):
    train, valid, test, U, I = random_setup(seed)
    ev = Evaluator(test, [train, valid], ks=KS, chunk_size=7)
    res = ev.evaluate(U, I)
    ours = per_user_dict(res)
    ref = trec_eval_metrics(res, test, KS)
    assert set(ours) == set(ref)
    for u, m in ref.items():
        for name, v in m.items():
            assert ours[u][name] == pytest.approx(v, abs=1e-9), (u, name)
    # means agree too
    for name in ref[next(iter(ref))]:
        assert res.metrics[name] == pytest.approx(np.mean([m[name] for m in ref.values()]), abs=1e-6)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 2**31 - 1),
    n_users=st.integers(1, 30),
    n_items=st.integers(1, 40),
    chunk=st.integers(1, 12),
)
def test_matches_bruteforce_oracle(seed, n_users, n_items, chunk):
    train, valid, test, U, I = random_setup(seed, n_users, n_items, d=5, dtype=torch.float64)
    ks = (1, 2, 5, 10, 50)
    ev = Evaluator(test, [train, valid], ks=ks, chunk_size=chunk)
    res = ev.evaluate(U, I)
    ref, lists = brute_force(U, I, test, [train, valid], ks)
    ours = per_user_dict(res)
    assert set(ours) == set(ref)
    assert res.metrics["n_users"] == len(ref)
    topk = res.topk.numpy()
    for row, u in enumerate(res.users.tolist()):
        expect = lists[u][: topk.shape[1]]
        got = [int(i) for i in topk[row] if i >= 0]
        assert got == expect
        assert all(i == -1 for i in topk[row][len(got):])
        for name, v in ref[u].items():
            assert ours[u][name] == pytest.approx(v, abs=1e-12), (u, name)
    for name in ref[next(iter(ref))] if ref else []:
        assert res.metrics[name] == pytest.approx(np.mean([m[name] for m in ref.values()]), abs=1e-12)


def test_topk_is_a_valid_ranking_float32():
    """Independent of tie-breaking: scores non-increasing, nothing better left outside."""
    train, valid, test, U, I = random_setup(5, 50, 80)
    res = Evaluator(test, [train], ks=(10,), chunk_size=16).evaluate(U, I)
    S = (U @ I.T).numpy()
    for row, u in enumerate(res.users.tolist()):
        s = S[u].copy()
        s[train.row(u)] = -np.inf
        top = res.topk[row].numpy()
        ts = s[top]
        assert np.all(np.diff(ts) <= 0)
        rest = np.setdiff1d(np.arange(80), top)
        assert s[rest].max() <= ts[-1]


def test_no_excluded_item_in_topk_and_hits_consistent():
    train, valid, test, U, I = random_setup(3, 60, 50)
    res = Evaluator(test, [train, valid], ks=(5, 20, 50), chunk_size=9).evaluate(U, I)
    excl = train.union(valid)
    users = res.users.numpy()
    topk = res.topk.numpy()
    key = users[:, None] * 50 + topk
    ex_u, ex_i = excl.to_pairs()
    ok = topk >= 0
    assert not np.isin(key[ok], ex_u * 50 + ex_i).any()
    tu, ti = test.to_pairs()
    np.testing.assert_array_equal(res.hits.numpy(), np.isin(key, tu * 50 + ti) & ok)
    np.testing.assert_array_equal(res.n_truth.numpy(), test.user_counts()[users])


def test_chunk_size_does_not_change_results():
    train, valid, test, U, I = random_setup(11, 57, 70)
    results = [Evaluator(test, [train, valid], chunk_size=c).evaluate(U, I) for c in (1, 4, 13, 57, 10_000)]
    for r in results[1:]:
        assert torch.equal(r.topk, results[0].topk)
        assert torch.equal(r.hits, results[0].hits)
        assert r.metrics == results[0].metrics


def test_users_with_empty_truth_are_not_evaluated():
    train = Interactions.from_pairs([0, 1, 2, 3], [0, 1, 2, 3], 5, 6)
    test = Interactions.from_pairs([1, 1, 3], [2, 4, 5], 5, 6)
    res = Evaluator(test, [train], ks=(2,)).evaluate(torch.randn(5, 3), torch.randn(6, 3))
    assert res.users.tolist() == [1, 3]
    assert res.per_user["user"].tolist() == [1, 3]
    assert res.metrics["n_users"] == 2.0
    assert res.topk.shape == (2, 2) and res.hits.shape == (2, 2)
    assert res.n_truth.tolist() == [2, 1]


def test_k_larger_than_n_items_and_padding():
    # 4 items, user 0 has 2 masked -> only 2 rankable; ks up to 10 are clipped to 4 columns
    train = Interactions.from_pairs([0, 0], [0, 1], 2, 4)
    test = Interactions.from_pairs([0, 0, 1], [2, 3, 0], 2, 4)
    U = torch.tensor([[1.0], [1.0]])
    I = torch.tensor([[4.0], [3.0], [2.0], [1.0]])
    res = Evaluator(test, [train], ks=(1, 10)).evaluate(U, I)
    assert res.topk.tolist() == [[2, 3, -1, -1], [0, 1, 2, 3]]
    assert res.hits.tolist() == [[True, True, False, False], [True, False, False, False]]
    pu = per_user_dict(res)
    assert pu[0]["recall@10"] == 1.0 and pu[0]["precision@10"] == pytest.approx(0.2)
    assert pu[0]["ndcg@10"] == pytest.approx(1.0)
    assert pu[1]["precision@1"] == 1.0 and pu[1]["mrr@10"] == 1.0


def test_metrics_from_hits_hand_values():
    hits = torch.tensor([[True, False, True, False], [False, False, False, True], [False] * 4])
    n_truth = torch.tensor([3, 1, 2])
    m = metrics_from_hits(hits, n_truth, (2, 4))
    l2, l3, l5 = math.log2(2), math.log2(3), math.log2(5)
    assert m["recall@2"].tolist() == pytest.approx([1 / 3, 0, 0])
    assert m["recall@4"].tolist() == pytest.approx([2 / 3, 1, 0])
    assert m["precision@4"].tolist() == pytest.approx([0.5, 0.25, 0])
    assert m["ndcg@2"].tolist() == pytest.approx([(1 / l2) / (1 / l2 + 1 / l3), 0, 0])
    # user 0: hits at ranks 1 and 3, ideal over min(4, 3) = 3 ranks; user 1: hit at rank 4, ideal 1 rank
    assert m["ndcg@4"].tolist() == pytest.approx([(1 + 1 / 2) / (1 + 1 / l3 + 1 / 2), 1 / l5, 0])
    assert m["hit@2"].tolist() == [1, 0, 0] and m["hit@4"].tolist() == [1, 1, 0]
    assert m["mrr@2"].tolist() == pytest.approx([1, 0, 0])
    assert m["mrr@4"].tolist() == pytest.approx([1, 0.25, 0])
    assert set(m) == {f"{n}@{k}" for n in METRIC_NAMES for k in (2, 4)}


def test_result_layout():
    train, valid, test, U, I = random_setup(4)
    res = Evaluator(test, [train], ks=(5, 10, 20, 50)).evaluate(U, I)
    expected = [f"{n}@{k}" for k in (5, 10, 20, 50) for n in METRIC_NAMES]
    assert list(res.metrics) == expected + ["n_users"]
    assert list(res.per_user.columns) == ["user"] + expected + ["n_truth"]
    assert res.topk.dtype == torch.long and res.hits.dtype == torch.bool and res.n_truth.dtype == torch.long
    assert res.topk.shape == (len(res.users), 50) and res.k_max == 50
    assert res.truth is test and res.ks == (5, 10, 20, 50)


def test_evaluate_scores_matches_and_does_not_modify_input():
    train, valid, test, U, I = random_setup(8)
    ev = Evaluator(test, [train], chunk_size=10)
    S = U @ I.T
    S0 = S.clone()
    a = ev.evaluate(U, I)
    b = ev.evaluate_scores(lambda users: S[users])
    assert torch.equal(a.topk, b.topk) and a.metrics == b.metrics
    assert torch.equal(S, S0)
    with pytest.raises(ValueError):
        ev.evaluate_scores(lambda users: S[:1])
    with pytest.raises(ValueError):
        ev.evaluate(U[:-1], I)


def test_most_popular_baseline_ranks_by_popularity():
    rng = np.random.default_rng(0)
    n_users, n_items = 30, 25
    train = random_matrix(rng, n_users, n_items, 0.3)
    test = random_matrix(rng, n_users, n_items, 0.2).difference(train)
    U, I = most_popular_baseline(train)
    assert U.shape == (n_users, 1) and I.shape == (n_items, 1)
    res = Evaluator(test, [train], ks=(10,)).evaluate(U, I)
    counts = train.item_counts()
    order = sorted(range(n_items), key=lambda i: (-counts[i], i))  # popularity, ties by id
    for row, u in enumerate(res.users.tolist()):
        seen = set(train.row(u).tolist())
        expect = [i for i in order if i not in seen][:10]
        assert [i for i in res.topk[row].tolist() if i >= 0] == expect


# --------------------------------------------------------------- nobody to evaluate
def test_no_evaluated_user_gives_nan_never_zero():
    """A mean over zero users is undefined: every metric is NaN (metrics.json: null), not 0.0."""
    train = Interactions.from_pairs([0, 1, 2], [0, 1, 2], 4, 5)
    empty = Interactions.empty(4, 5)
    ev = Evaluator(empty, [train], ks=(2, 3))
    assert ev.n_eval == 0 and ev.n_rankable == 0
    res = ev.evaluate(torch.randn(4, 2), torch.randn(5, 2))
    assert res.metrics["n_users"] == 0.0 and len(res.per_user) == 0
    assert res.topk.shape == (0, 3)
    names = [f"{m}@{k}" for k in (2, 3) for m in METRIC_NAMES]
    assert set(res.metrics) == set(names) | {"n_users"}
    assert all(math.isnan(res.metrics[n]) for n in names)


def test_n_rankable_counts_users_with_an_unmasked_truth_item():
    train = Interactions.from_pairs([0, 1, 2, 2], [0, 1, 2, 3], 4, 5)
    valid = Interactions.from_pairs([3], [4], 4, 5)
    # user 0: its one test item is a training item; user 2: one masked, one not; user 3: masked by valid
    test = Interactions.from_pairs([0, 2, 2, 3], [0, 3, 4, 4], 4, 5)
    assert Evaluator(test, [train]).n_eval == 3
    assert Evaluator(test, [train]).n_rankable == 2
    assert Evaluator(test, [train, valid]).n_rankable == 1
    assert Evaluator(test, []).n_rankable == 3
