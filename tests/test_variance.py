"""Tests for analysis.variance against brute-force float64 per-user loops."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

from analysis.popularity import head_items
from analysis.variance import (STATS, VarianceTracker, aggregate, expansion_error, log_expectation_exp,
                               popularity_score_gap, score_statistics, second_order_expansion)
from rankrobust.data.interactions import Interactions
from tests.conftest import random_interactions


def _setup(seed: int = 0, n_users: int = 30, n_items: int = 50, d: int = 8):
    gen = torch.Generator().manual_seed(seed)
    U = torch.randn(n_users, d, generator=gen, dtype=torch.float64)
    I = torch.randn(n_items, d, generator=gen, dtype=torch.float64)
    train = random_interactions(n_users, n_items, 0.15, seed)
    return U, I, train


def _brute(U, I, train: Interactions, users, neg):
    """Per-user loops in float64 numpy: the oracle."""
    U, I = U.numpy(), I.numpy()
    out = {k: [] for k in STATS}
    for k, u in enumerate(users.tolist()):
        row = train.row(u)
        s_pos = np.array([U[u] @ I[i] for i in row])
        out["pos_mean"].append(s_pos.mean() if len(row) else math.nan)
        out["pos_var"].append(s_pos.var() if len(row) else math.nan)
        s_neg = np.array([U[u] @ I[j] for j in neg[k].tolist()])
        out["neg_mean"].append(s_neg.mean())
        out["neg_var"].append(s_neg.var())
        s_all = np.array([U[u] @ I[j] for j in range(I.shape[0])])
        out["all_mean"].append(s_all.mean())
        out["all_var"].append(s_all.var())
    return {k: np.array(v) for k, v in out.items()}


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_score_statistics_matches_brute_force(seed):
    U, I, train = _setup(seed)
    # a user without positives, a repeated user, unsorted order
    pairs_u, pairs_i = train.to_pairs()
    keep = pairs_u != 3
    train = Interactions.from_pairs(pairs_u[keep], pairs_i[keep], train.n_users, train.n_items)
    users = torch.tensor([5, 3, 0, 17, 5, 29, 11])
    neg = torch.randint(0, train.n_items, (len(users), 13), generator=torch.Generator().manual_seed(seed))
    stats = score_statistics(U, I, users, train, neg)
    oracle = _brute(U, I, train, users, neg)
    assert torch.equal(stats["users"], users)
    assert stats["n_pos"].tolist() == [len(train.row(u)) for u in users.tolist()]
    for k in STATS:
        np.testing.assert_allclose(stats[k].numpy(), oracle[k], rtol=1e-10, atol=1e-10, err_msg=k)
    assert math.isnan(stats["pos_mean"][1]) and math.isnan(stats["pos_var"][1])
    # the CSR pair form gives the same numbers; negatives and all-items are optional
    stats2 = score_statistics(U, I, users, train.to_torch("cpu"), None, all_items=False)
    assert set(stats2) == {"users", "n_pos", "pos_mean", "pos_var"}
    torch.testing.assert_close(stats2["pos_var"], stats["pos_var"], equal_nan=True)


def test_score_statistics_float32_close_to_float64():
    U, I, train = _setup(4, n_users=40, n_items=300, d=16)
    users = torch.arange(40)
    neg = torch.randint(0, 300, (40, 50), generator=torch.Generator().manual_seed(0))
    s64 = score_statistics(U, I, users, train, neg)
    s32 = score_statistics(U.float(), I.float(), users, train, neg)
    for k in STATS:
        np.testing.assert_allclose(s32[k].double().numpy(), s64[k].numpy(), rtol=1e-4, atol=1e-4, err_msg=k)


def test_aggregate_means_and_quantiles_ignore_nan():
    per_user = {"pos_mean": torch.tensor([1.0, math.nan, 3.0, 2.0, 10.0]), "neg_var": torch.arange(11.0)}
    agg = aggregate(per_user)
    v = np.array([1.0, 3.0, 2.0, 10.0])
    assert agg["pos_mean_mean"] == pytest.approx(v.mean())
    for q in (0.1, 0.5, 0.9):
        assert agg[f"pos_mean_q{round(100 * q)}"] == pytest.approx(np.quantile(v, q))
    assert agg["neg_var_q50"] == pytest.approx(5.0)
    assert not any(k.startswith("all_") for k in agg)


def test_log_expectation_exp_exact_and_stable():
    f = torch.tensor([[0.3, -0.2, 0.9, 0.1], [1.0, 1.0, 1.0, 1.0]], dtype=torch.float64)
    for tau in (0.5, 2.0):
        brute = tau * torch.log(torch.exp(f / tau).mean(-1))
        torch.testing.assert_close(log_expectation_exp(f, tau), brute)
    # τ = 0.01 on cosine scores: exp(f/τ) overflows float32, the stable form does not
    g = torch.tensor([1.0, -1.0, 0.99], dtype=torch.float32)
    val = log_expectation_exp(g, 0.01)
    assert torch.isfinite(val)
    assert float(val) == pytest.approx(1.0 + 0.01 * math.log((1 + math.exp(-1.0)) / 3), abs=1e-5)
    # numpy input becomes float64; the expansion uses the population variance
    assert log_expectation_exp(np.array([0.0, 1.0]), 1.0).dtype == torch.float64
    assert float(second_order_expansion([0.0, 1.0], 2.0)) == pytest.approx(0.5 + 0.25 / 4)


def test_expansion_error_shrinks_like_inverse_tau_squared():
    rng = np.random.default_rng(0)
    f = rng.uniform(-1, 1, size=(8, 200)) ** 3  # skewed rows: the 1/τ² term does not vanish
    taus = np.geomspace(2.0, 200.0, 12)
    df = expansion_error(f, taus)
    assert list(df.columns) == ["tau", "exact", "expansion", "abs_error"]
    assert len(df) == len(taus)
    assert np.all(np.diff(df["abs_error"].to_numpy()) < 0)
    slope = np.polyfit(np.log(df["tau"]), np.log(df["abs_error"]), 1)[0]
    assert slope <= -1.8
    scaled = df["abs_error"] * df["tau"] ** 2
    assert scaled.max() / scaled.min() < 2.0  # error · τ² bounded
    # the exact column is the mean over rows of τ log E exp(f/τ)
    assert df["exact"].iloc[0] == pytest.approx(float(log_expectation_exp(f, taus[0]).mean()))


def test_popularity_score_gap_matches_brute_force():
    U, I, train = _setup(5)
    counts = train.item_counts()
    users = torch.tensor([0, 4, 9, 22])
    gap = popularity_score_gap(U, I, counts, users, head_fraction=0.2)
    order = sorted(range(len(counts)), key=lambda i: (-counts[i], i))
    n_head = math.ceil(0.2 * len(counts))
    head, tail = order[:n_head], order[n_head:]
    S = (U @ I.T).numpy()
    brute = np.mean([S[u, head].mean() - S[u, tail].mean() for u in users.tolist()])
    assert gap == pytest.approx(brute, abs=1e-12)
    assert popularity_score_gap(U, I, torch.as_tensor(counts)) == pytest.approx(
        np.mean([S[u, head].mean() - S[u, tail].mean() for u in range(U.shape[0])]), abs=1e-12)


def test_head_items_size_and_ties():
    counts = np.array([5, 1, 5, 0, 3, 9, 2, 5, 1, 1])
    mask = head_items(counts, 0.2)
    assert mask.sum() == 2
    assert mask[5] and mask[0] and not mask[2]  # ties broken by the lower id
    assert head_items(counts, 0.35).sum() == 4
    with pytest.raises(ValueError):
        head_items(counts, 1.5)


class TinyModel:
    """Stands in for a trained model: only `final_embeddings` is used."""

    def __init__(self, n_users: int, n_items: int, d: int = 8, seed: int = 0) -> None:
        gen = torch.Generator().manual_seed(seed)
        self.U = torch.randn(n_users, d, generator=gen)
        self.I = torch.randn(n_items, d, generator=gen)

    def step(self, scale: float) -> None:
        self.U = self.U * scale

    def final_embeddings(self):
        return self.U, self.I


def test_tracker_writes_one_row_per_epoch(tmp_path):
    train = random_interactions(40, 60, 0.1, 0)
    tracker = VarianceTracker(train, n_users_sample=16, n_neg=20, seed=3, path=tmp_path)
    model = TinyModel(40, 60)
    for epoch in range(1, 4):
        tracker(epoch, model, {"epoch": epoch, "loss": 1.0})
        model.step(0.5)
        csv = pd.read_csv(tmp_path / "variance.csv")
        assert len(csv) == epoch
    assert csv["epoch"].tolist() == [1, 2, 3]
    for name in STATS:
        assert name in csv.columns and f"{name}_median" in csv.columns
    assert {"pop_gap", "n_users", "seconds"} <= set(csv.columns)
    # scaling U by 1/2 each epoch divides variances by 4
    np.testing.assert_allclose(csv["neg_var"].to_numpy()[1:] / csv["neg_var"].to_numpy()[:-1], 0.25, rtol=1e-4)
    pd.testing.assert_frame_equal(tracker.to_frame(), csv, check_dtype=False, atol=1e-9)
    assert len(tracker.rows) == 3
    assert not list(tmp_path.glob(".*tmp"))  # no temporary files left behind


def test_tracker_rows_match_score_statistics_and_are_reproducible(tmp_path):
    train = random_interactions(50, 80, 0.08, 1)
    model = TinyModel(50, 80, seed=1)
    a = VarianceTracker(train, n_users_sample=20, n_neg=30, seed=7, path=tmp_path / "v.csv")
    b = VarianceTracker(train, n_users_sample=20, n_neg=30, seed=7)
    a(1, model, {})
    b(1, model, {})
    assert (tmp_path / "v.csv").exists()
    assert torch.equal(a.users, b.users) and torch.equal(a.neg_items, b.neg_items)
    assert (train.user_counts()[a.users.numpy()] > 0).all()
    U, I = model.final_embeddings()
    stats = score_statistics(U.double(), I.double(), a.users, train, a.neg_items)
    for name in STATS:
        assert a.rows[0][name] == pytest.approx(float(stats[name].mean()), rel=1e-4, abs=1e-5)
        assert a.rows[0][f"{name}_median"] == pytest.approx(float(torch.quantile(stats[name], 0.5)), rel=1e-4,
                                                            abs=1e-5)
    assert a.rows[0]["pop_gap"] == pytest.approx(
        popularity_score_gap(U.double(), I.double(), train.item_counts(), a.users), rel=1e-4, abs=1e-5)
    # more users than eligible: all eligible users are taken
    c = VarianceTracker(train, n_users_sample=10_000, n_neg=5)
    assert len(c.users) == int((train.user_counts() > 0).sum())
