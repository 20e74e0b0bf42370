"""Tests for analysis.dro: checks (a)–(d) of PROTOCOLS §7 in float64."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st

from analysis.dro import (CheckResult, bsl_positive_grad, bsl_positive_term, dro_dual, dro_primal, dro_report,
                          kl_divergence, optimistic_primal, positive_gradient_share, positive_gradient_weights, q_star,
                          radius, run_checks, sl_negative_grad, sl_negative_term)

TOL = 1e-6


# --------------------------------------------------------------------------- (a)
@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("n", [2, 7, 30, 50])
def test_primal_equals_dual_random(seed, n):
    rng = np.random.default_rng(seed)
    f = rng.uniform(-1, 1, n)
    p0 = np.full(n, 1.0 / n) if seed % 2 == 0 else rng.dirichlet(np.ones(n))
    eta_max = -math.log(p0[np.argmax(f)])
    for eta in (1e-4, 0.1 * eta_max, 0.5 * eta_max, 0.9 * eta_max):
        primal, q = dro_primal(f, p0, eta)
        dual, tau = dro_dual(f, p0, eta)
        assert primal == pytest.approx(dual, abs=TOL)
        assert primal <= dual + 1e-9  # weak duality: a feasible Q never beats the dual
        assert kl_divergence(q, p0) <= eta * (1 + 1e-9)  # the primal returns a feasible point
        assert q.sum() == pytest.approx(1.0) and (q >= 0).all()
        # the dual's τ* sits at the matching radius and Q* is the primal maximiser
        assert radius(f, p0, tau) == pytest.approx(eta, rel=1e-6, abs=1e-12)
        np.testing.assert_allclose(q, q_star(f, p0, tau), atol=1e-5)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(-8, 8), min_size=2, max_size=12), st.sampled_from([0.01, 0.3, 1.0, 40.0]),
       st.floats(0.02, 0.98))
@example(values=[2, -2, -5], scale=0.3, frac=0.978515625)  # near the vertex: an entry stuck at its bound (fixed)
def test_primal_equals_dual_with_ties(values, scale, frac):
    f = np.array(values, dtype=np.float64) * scale
    n = len(f)
    p0 = np.full(n, 1.0 / n)
    eta_max = -math.log(np.mean(f == f.max()))
    eta = frac * eta_max if eta_max > 0 else frac
    primal, _ = dro_primal(f, p0, eta)
    dual, _ = dro_dual(f, p0, eta)
    assert primal == pytest.approx(dual, abs=TOL * max(1.0, scale))


def test_dual_limits():
    f = np.array([0.5, -1.0, 2.0, 2.0, 0.0])
    p0 = np.full(5, 0.2)
    assert dro_dual(f, p0, 0.0) == (pytest.approx(f.mean()), math.inf)
    assert dro_dual(f, p0, 1e-12)[0] == pytest.approx(f.mean(), abs=1e-5)
    # η ≥ −log P0(argmax) = log(5/2): all mass on the maximum is feasible
    assert dro_dual(f, p0, math.log(2.5)) == (2.0, 0.0)
    assert dro_dual(f, p0, 50.0) == (2.0, 0.0)
    assert dro_primal(f, p0, 50.0)[0] == 2.0
    assert dro_primal(f, None, 0.0)[0] == pytest.approx(f.mean())
    # slightly below the limit the value approaches max f continuously
    assert dro_dual(f, p0, math.log(2.5) - 1e-9)[0] == pytest.approx(2.0, abs=1e-6)
    # all scores equal
    assert dro_dual(np.ones(4), None, 0.3)[0] == 1.0
    # entries with P0 = 0 are outside the support
    g = np.array([100.0, 1.0, 0.0])
    p = np.array([0.0, 0.5, 0.5])
    assert dro_dual(g, p, 10.0)[0] == 1.0
    assert dro_primal(g, p, 0.1)[0] == pytest.approx(dro_dual(g, p, 0.1)[0], abs=TOL)
    assert q_star(g, p, 0.5)[0] == 0.0


def test_sl_term_is_worst_case_minus_tau_eta():
    rng = np.random.default_rng(3)
    f = rng.normal(size=40)
    for tau in (0.05, 0.3, 2.0):
        eta = radius(f, None, tau)
        dual, tau_star = dro_dual(f, None, eta)
        sl = float(sl_negative_term(torch.as_tensor(f), tau))
        assert sl == pytest.approx(dual - tau * eta, abs=1e-10)
        assert tau_star == pytest.approx(tau, rel=1e-5)


def test_radius_monotone_in_tau():
    rng = np.random.default_rng(0)
    for f in (rng.uniform(-1, 1, 30), rng.uniform(-50, 50, 30), np.array([1.0, 1.0, 0.0])):
        taus = np.geomspace(1e-3, 1e3, 200) * (f.max() - f.min())
        r = np.array([radius(f, None, t) for t in taus])
        assert np.all(np.diff(r) <= 1e-13)
        assert r[0] == pytest.approx(-math.log(np.mean(f == f.max())), rel=1e-3)
        assert r[-1] < 1e-4 and (r >= 0).all()


# --------------------------------------------------------------------------- (b), (c)
def test_sl_gradient_is_qstar_batched_and_extreme():
    rng = np.random.default_rng(1)
    f = rng.uniform(-1, 1, size=(6, 25))
    for tau in (0.01, 0.1, 1.0):
        grad = sl_negative_grad(torch.as_tensor(f), tau).numpy()
        expect = np.stack([q_star(row, None, tau) for row in f])
        np.testing.assert_allclose(grad, expect, atol=1e-12)
    g = rng.uniform(-50, 50, 20)
    grad = sl_negative_grad(g, 0.01).numpy()
    assert np.isfinite(grad).all()
    np.testing.assert_allclose(grad, q_star(g, None, 0.01), atol=1e-12)


@pytest.mark.parametrize("tau1", [0.02, 0.2, 1.0, 10.0])
def test_bsl_positive_term_is_optimistic_dro(tau1):
    rng = np.random.default_rng(int(tau1 * 100))
    for f in (rng.uniform(-1, 1, 12), np.array([0.5, 0.5, -0.5, 0.5]), rng.uniform(-50, 50, 8)):
        value, q = optimistic_primal(f, None, tau1)
        closed = float(bsl_positive_term(torch.as_tensor(f), tau1))
        assert value == pytest.approx(closed, abs=TOL)
        grad = bsl_positive_grad(f, tau1).numpy()
        np.testing.assert_allclose(grad, -torch.softmax(torch.as_tensor(f) / tau1, 0).numpy(), atol=1e-12)
        np.testing.assert_allclose(-grad, q, atol=1e-5)


def test_run_checks_all_pass_and_report():
    results = run_checks(n=(5, 20), seeds=(0,))
    assert all(isinstance(r, CheckResult) for r in results)
    names = {r.name for r in results}
    for family in ("random", "ties", "extremes"):
        for check in ("a_primal_eq_dual", "b_grad_eq_qstar", "c_value", "c_grad"):
            assert f"{check}[{family}]" in names
    failed = [r for r in results if not r.passed]
    assert not failed, dro_report(failed)
    assert all(r.max_abs_error <= r.tolerance for r in results)
    text = dro_report(results)
    assert "PASS" in text and "FAIL " not in text and f"{len(results)}/{len(results)} checks passed" in text
    bad = dro_report([CheckResult("x", 1.0, 1e-6, False, 3)])
    assert "FAIL" in bad and "1 FAILED" in bad


def test_run_checks_without_ties_and_extremes():
    names = {r.name for r in run_checks(n=4, seeds=(1,), include_ties=False, include_extremes=False)}
    assert not any("ties" in n or "extremes" in n for n in names)


# --------------------------------------------------------------------------- (d)
def _noisy_setting(seed: int = 0, n_users: int = 40, n_items: int = 120, d: int = 16):
    """Cosine embeddings where each user's clean positives score high and noisy ones low."""
    gen = torch.Generator().manual_seed(seed)
    U = torch.nn.functional.normalize(torch.randn(n_users, d, generator=gen, dtype=torch.float64), dim=1)
    I = torch.nn.functional.normalize(torch.randn(n_items, d, generator=gen, dtype=torch.float64), dim=1)
    S = U @ I.T
    rng = np.random.default_rng(seed)
    users, items, noisy = [], [], []
    order = torch.argsort(S, dim=1, descending=True).numpy()
    for u in range(n_users):
        n_clean = int(rng.integers(3, 9))
        n_noisy = int(rng.integers(0, 4)) if u % 5 else 0  # every fifth user is clean
        clean = order[u, :3 * n_clean][rng.choice(3 * n_clean, n_clean, replace=False)]  # high scores
        bad = order[u, -n_items // 2:][rng.choice(n_items // 2, n_noisy, replace=False)]  # low scores
        users += [u] * (n_clean + n_noisy)
        items += list(clean) + list(bad)
        noisy += [False] * n_clean + [True] * n_noisy
    return U, I, torch.tensor(users), torch.tensor(items), torch.tensor(noisy)


def _brute_weights(U, I, users, items, loss, tau1):
    w = np.zeros(len(users))
    for u in set(users.tolist()):
        idx = [k for k in range(len(users)) if users[k] == u]
        s = np.array([float(U[u] @ I[items[k]]) for k in idx])
        if loss == "sl":
            w[idx] = 1.0 / len(idx)
        else:
            e = np.exp((s - s.max()) / tau1)
            w[idx] = e / e.sum()
    return w


@pytest.mark.parametrize("loss", ["sl", "bsl"])
def test_positive_gradient_weights_match_brute_force(loss):
    U, I, users, items, _ = _noisy_setting(1)
    perm = torch.randperm(len(users), generator=torch.Generator().manual_seed(0))  # order must not matter
    users, items = users[perm], items[perm]
    w = positive_gradient_weights(U, I, users, items, loss, tau1=0.1)
    np.testing.assert_allclose(w.numpy(), _brute_weights(U, I, users, items, loss, 0.1), atol=1e-12)
    sums = torch.zeros(U.shape[0], dtype=torch.float64).index_add_(0, users, w)
    assert torch.allclose(sums[torch.unique(users)], torch.ones(len(torch.unique(users)), dtype=torch.float64))


def test_bsl_weights_are_the_autograd_gradient_of_its_positive_term():
    U, I, users, items, _ = _noisy_setting(2, n_users=6)
    w = positive_gradient_weights(U, I, users, items, "bsl", tau1=0.3)
    for u in range(6):
        idx = (users == u).nonzero().squeeze(1)
        s = (U[u] * I[items[idx]]).sum(-1)
        grad = bsl_positive_grad(s, 0.3)
        torch.testing.assert_close(-grad, w[idx])


def test_bsl_puts_less_gradient_on_noisy_positives_than_sl():
    U, I, users, items, noisy = _noisy_setting(0)
    sl = positive_gradient_share(U, I, users, items, noisy, "sl")
    bsl = positive_gradient_share(U, I, users, items, noisy, "bsl", tau1=0.1)
    # SL's uniform weights give exactly the noisy fraction
    assert sl["noisy_share"] == pytest.approx(sl["noisy_fraction"], abs=1e-12)
    assert sl["relative_share"] == pytest.approx(1.0)
    assert bsl["noisy_share"] < 0.5 * sl["noisy_share"]
    assert bsl["noisy_share_pooled"] < sl["noisy_share_pooled"]
    assert bsl["noisy_weight_mean"] < bsl["clean_weight_mean"]
    assert bsl["relative_share"] < 0.5
    # brute force of the shares
    w = _brute_weights(U, I, users, items, "bsl", 0.1)
    per_user = [(w[(users == u).numpy() & noisy.numpy()].sum(), (users == u).numpy() & noisy.numpy())
                for u in range(U.shape[0])]
    expect = np.mean([s for s, m in per_user if m.any()])
    assert bsl["noisy_share"] == pytest.approx(expect, abs=1e-12)
    assert bsl["n_users_noisy"] == sum(m.any() for _, m in per_user)
    assert bsl["n_noisy"] == int(noisy.sum()) and bsl["n_pairs"] == len(users)
    assert sl["noisy_fraction_pooled"] == pytest.approx(float(noisy.double().mean()))
    # τ₁ → ∞ gives SL's uniform weights; a colder τ₁ down-weights noisy positives further
    hot = positive_gradient_share(U, I, users, items, noisy, "bsl", tau1=1e6)
    assert hot["noisy_share"] == pytest.approx(sl["noisy_share"], abs=1e-5)
    cold = positive_gradient_share(U, I, users, items, noisy, "bsl", tau1=0.02)
    assert cold["noisy_share"] < bsl["noisy_share"]


def test_positive_gradient_share_validates_input():
    U, I, users, items, noisy = _noisy_setting(0, n_users=5)
    with pytest.raises(ValueError):
        positive_gradient_share(U, I, users, items, noisy[:-1], "sl")
    with pytest.raises(ValueError):
        positive_gradient_share(U, I, users, items, noisy, "bpr")
    none = positive_gradient_share(U, I, users, items, torch.zeros_like(noisy), "bsl", tau1=0.1)
    assert math.isnan(none["noisy_share"]) and none["noisy_share_pooled"] == 0.0
