"""CW, the Corrected and Weighted loss (docs/LOSSES.md `cw`), against a float64 brute-force oracle.

The oracle is written from the formula in docs/LOSSES.md with plain Python
loops over rows, negatives and same-user pairs (``math`` only, no torch,
nothing from rankrobust): the confidence weights, the weighted mean, the
same-user positive mean, the PU correction with its cap and floor.  Values are
compared directly; gradients against central finite differences of the same
oracle with the detached weights frozen at the evaluation point (the loss
treats them as constants).  Then the reductions to SL and DCL, edge cases (one
negative, ties, masked negatives, rows without negatives), finiteness at
τ = 0.01, bad options, gradient accounting and a short run.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from rankrobust.losses import LOSSES, dcl, sl
from rankrobust.losses.cw import cw
from tests.oracles import finite_differences, train_with_both_accounting_sides
from conftest import ragged_negative_mask

DELTA = 1e-6  # the relative cap of the correction (denoising.DCL_FLOOR), restated


# --------------------------------------------------------------------------- the oracle (float64, loops)
def _sigmoid(x):
    return 1.0 / (1.0 + math.exp(-x)) if x >= 0 else math.exp(x) / (1.0 + math.exp(x))


def o_weights(pos, neg, mask, tau_w):
    """w̃_kj = σ(−d_kj/τ_w) / mean_j' σ(−d_kj'/τ_w) over the row's real negatives (None for masked entries)."""
    out = []
    for k, p in enumerate(pos):
        reals = [j for j in range(len(neg[k])) if mask is None or mask[k][j]]
        w = {j: _sigmoid(-(neg[k][j] - p) / tau_w) for j in reals}
        mean = sum(w.values()) / len(reals) if reals else 1.0
        out.append([w[j] / mean if j in w else None for j in range(len(neg[k]))])
    return out


def o_cw(pos, neg, mask, users, tau=0.1, tau_plus=0.01, tau_w=0.1, weights=None):
    """mean_k log(M_k·Ê⁻_k); ``weights`` (as `o_weights`) freezes w̃ for finite differences."""
    w = o_weights(pos, neg, mask, tau_w) if weights is None else weights
    rows = []
    for k, p in enumerate(pos):
        reals = [j for j in range(len(neg[k])) if mask is None or mask[k][j]]
        if not reals:
            rows.append(0.0)
            continue
        m = len(reals)
        e = sum(w[k][j] * math.exp((neg[k][j] - p) / tau) for j in reals) / m
        if tau_plus == 0:
            rows.append(math.log(m * e))
            continue
        same = [k2 for k2 in range(len(pos)) if users is not None and users[k2] == users[k]] or [k]
        e_pos = sum(math.exp((pos[k2] - p) / tau) for k2 in same) / len(same)
        corrected = max(e - tau_plus * e_pos, DELTA * e) / (1 - tau_plus)
        floor = math.exp((-1 - p) / tau)
        rows.append(math.log(m * max(corrected, floor)))
    return sum(rows) / len(rows)


def _inputs(b=6, m=5, seed=0, with_mask=False, pos_shift=0.0):
    """float64 scores in [−1, 1], duplicated users, an optional mask (row 1 without negatives, row 2 with one)."""
    rng = np.random.default_rng(seed)
    pos = np.clip(rng.uniform(-1, 1, b) + pos_shift, -1, 1)
    neg = rng.uniform(-1, 1, (b, m))
    users = [0, 1, 0, 2, 1, 0][:b]
    mask = None
    if with_mask:
        mask = ragged_negative_mask(rng, b, m)
    return pos, neg, users, mask


def _run(pos, neg, users, mask, hyper, grad=True):
    p = torch.tensor(pos, requires_grad=True)
    n = torch.tensor(neg, requires_grad=True)
    out = cw(p, n, users=None if users is None else torch.tensor(users),
             neg_mask=None if mask is None else torch.tensor(mask), **hyper)
    if grad:
        out.backward()
    return out, p, n


CASES = [{"tau": 0.3, "tau_plus": 0.1, "tau_w": 0.3}, {"tau": 0.5, "tau_plus": 0.0, "tau_w": 1.0},
         {"tau": 0.2, "tau_plus": 0.3, "tau_w": 2.0}, {"tau": 1.0, "tau_plus": 0.05, "tau_w": 0.1}]


# --------------------------------------------------------------------------- values and gradients
@pytest.mark.parametrize("hyper", CASES)
@pytest.mark.parametrize("with_mask", [False, True])
@pytest.mark.parametrize("grouped", [True, False])
def test_value_and_gradient_match_oracle(hyper, with_mask, grouped):
    pos, neg, users, mask = _inputs(seed=7 + with_mask, with_mask=with_mask)
    users = users if grouped else None
    ml = None if mask is None else mask.tolist()
    out, p, n = _run(pos, neg, users, mask, hyper)
    expected = o_cw(pos.tolist(), neg.tolist(), ml, users, **hyper)
    assert float(out.detach()) == pytest.approx(expected, rel=1e-10, abs=1e-12)
    frozen = o_weights(pos.tolist(), neg.tolist(), ml, hyper["tau_w"])
    gp = finite_differences(lambda x: o_cw(x, neg.tolist(), ml, users, **hyper, weights=frozen), pos.tolist())
    gn = finite_differences(lambda x: o_cw(pos.tolist(), x, ml, users, **hyper, weights=frozen), neg.tolist())
    np.testing.assert_allclose(p.grad.numpy(), gp, rtol=1e-5, atol=1e-8)
    np.testing.assert_allclose(n.grad.numpy(), gn, rtol=1e-5, atol=1e-8)
    if mask is not None:
        assert (n.grad.numpy()[~mask] == 0).all()  # masked negatives get no gradient
        assert n.grad[1].abs().sum() == 0  # the row without negatives has loss 0 ...
        if users is None:
            assert p.grad[1] == 0  # ... and its positive acts only through its user's other rows' E⁺


def test_the_floor_and_the_cap_match_the_oracle():
    """Positives far above their negatives: the estimate E − τ⁺E⁺ goes below the floor (or the cap)."""
    pos, neg, users, _ = _inputs(seed=3, pos_shift=1.5)
    hyper = {"tau": 0.2, "tau_plus": 0.3, "tau_w": 0.5}
    out, p, n = _run(pos, neg, users, None, hyper)
    expected = o_cw(pos.tolist(), neg.tolist(), None, users, **hyper)
    assert float(out.detach()) == pytest.approx(expected, rel=1e-10)
    frozen = o_weights(pos.tolist(), neg.tolist(), None, hyper["tau_w"])
    gp = finite_differences(lambda x: o_cw(x, neg.tolist(), None, users, **hyper, weights=frozen), pos.tolist())
    np.testing.assert_allclose(p.grad.numpy(), gp, rtol=1e-5, atol=1e-8)
    # the floored rows: ℓ_k = log M + (−1 − s⁺)/τ, so ∂ℓ/∂s⁻ = 0 there
    floored = [k for k in range(len(pos)) if abs(p.grad[k] + 1 / hyper["tau"] / len(pos)) < 1e-12]
    assert floored and all(n.grad[k].abs().max() == 0 for k in floored)


def test_one_negative_ties_and_a_masked_negative():
    hyper = {"tau": 0.4, "tau_plus": 0.2, "tau_w": 0.3}
    # M = 1: the weight is 1
    out, _, _ = _run(np.array([0.2, -0.1]), np.array([[0.5], [-0.6]]), [0, 1], None, hyper, grad=False)
    assert float(out.detach()) == pytest.approx(o_cw([0.2, -0.1], [[0.5], [-0.6]], None, [0, 1], **hyper), rel=1e-12)
    # ties: equal negative scores get equal weights (1 each)
    w = o_weights([0.1], [[0.3, 0.3, 0.3]], None, 0.3)
    assert w == [[pytest.approx(1.0)] * 3]
    out, _, n = _run(np.array([0.1]), np.array([[0.3, 0.3, 0.3]]), [0], None, hyper)
    assert float(out.detach()) == pytest.approx(o_cw([0.1], [[0.3, 0.3, 0.3]], None, [0], **hyper), rel=1e-12)
    assert torch.allclose(n.grad, n.grad[0, 0].expand_as(n.grad))
    # a masked negative is as if it were not there, whatever its score
    mask = np.array([[True, False, True]])
    a, _, _ = _run(np.array([0.1]), np.array([[0.3, 0.99, -0.2]]), [0], mask, hyper, grad=False)
    b, _, _ = _run(np.array([0.1]), np.array([[0.3, -0.2]]), [0], None, hyper, grad=False)
    assert float(a.detach()) == pytest.approx(float(b.detach()), rel=1e-12)


# --------------------------------------------------------------------------- reductions
def test_without_correction_and_flat_weights_it_is_sl():
    pos, neg, users, mask = _inputs(seed=11, with_mask=True)
    t = torch.tensor
    for m in (None, t(mask)):
        a = cw(t(pos), t(neg), users=t(users), neg_mask=m, tau=0.2, tau_plus=0.0, tau_w=1e12)
        b = sl(t(pos), t(neg), neg_mask=m, tau=0.2)
        # sl keeps −s⁺/τ for a row without negatives; cw gives it 0 (as dcl does)
        if m is not None:
            b = b + float(t(pos)[1]) / 0.2 / len(pos)
        assert float(a) == pytest.approx(float(b), rel=1e-10)


def test_one_pair_per_user_and_flat_weights_is_dcl_without_the_positive_in_the_normaliser():
    """DCL's ℓ = log(1 + M·Ê⁻) where CW's is log(M·Ê⁻): the same PU estimate, another normaliser."""
    pos, neg, _, _ = _inputs(seed=5)
    t = torch.tensor
    for k in range(len(pos)):
        p, n = t(pos[k:k + 1]), t(neg[k:k + 1])
        c = float(cw(p, n, tau=0.3, tau_plus=0.2, tau_w=1e12))
        assert float(dcl(p, n, tau=0.3, tau_plus=0.2)) == pytest.approx(math.log1p(math.exp(c)), rel=1e-10)


def test_same_user_positives_enter_the_correction():
    pos, neg, users, _ = _inputs(seed=2)
    t = torch.tensor
    grouped = float(cw(t(pos), t(neg), users=t(users), tau=0.3, tau_plus=0.2))
    alone = float(cw(t(pos), t(neg), tau=0.3, tau_plus=0.2))
    assert grouped != pytest.approx(alone, rel=1e-6)
    assert alone == pytest.approx(o_cw(pos.tolist(), neg.tolist(), None, None, tau=0.3, tau_plus=0.2), rel=1e-10)


# --------------------------------------------------------------------------- stability and validation
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_finite_at_small_tau_with_scores_at_pm1(dtype):
    b, m = 8, 64
    gen = torch.Generator().manual_seed(0)
    sign = torch.randint(0, 2, (b, m + 1), generator=gen).to(dtype) * 2 - 1
    users = torch.tensor([0, 0, 0, 1, 1, 2, 3, 3])
    cases = [(sign[:, 0], sign[:, 1:]), (torch.full((b,), -1.0, dtype=dtype), torch.full((b, m), 1.0, dtype=dtype)),
             (torch.full((b,), 1.0, dtype=dtype), torch.full((b, m), -1.0, dtype=dtype))]
    for mask in (None, torch.rand(b, m, generator=gen) < 0.5, torch.zeros(b, m, dtype=torch.bool)):
        for p0, n0 in cases:
            for tp in (0.0, 0.1, 0.5):
                p, n = p0.clone().requires_grad_(True), n0.clone().requires_grad_(True)
                out = cw(p, n, users=users, neg_mask=mask, tau=0.01, tau_plus=tp, tau_w=0.01)
                out.backward()
                assert torch.isfinite(out) and torch.isfinite(p.grad).all() and torch.isfinite(n.grad).all()


@pytest.mark.parametrize("hyper,match", [({"tau": 0.0}, "tau"), ({"tau_plus": 1.0}, "tau_plus"),
                                         ({"tau_plus": -0.1}, "tau_plus"), ({"tau_w": 0.0}, "tau_w"),
                                         ({"tau_w": float("nan")}, "tau_w")])
def test_bad_hyper_parameters(hyper, match):
    with pytest.raises(ValueError, match=match):
        cw(torch.zeros(2), torch.zeros(2, 3), **hyper)


def test_registry_entry_and_bad_options_at_config_time():
    from rankrobust.config import ConfigError, config_from_dict

    entry = LOSSES.entry("cw")
    assert entry.score_only and entry.reads == {"pos", "neg", "neg_mask", "users"} and entry.family == "denoising"
    assert entry.make_options() == entry.options(tau=0.1, tau_plus=0.01, tau_w=0.1)
    with pytest.raises(ConfigError, match="loss.tau_plus"):
        config_from_dict({"loss": {"name": "cw", "tau_plus": 1.0}})


# --------------------------------------------------------------------------- in training
@pytest.mark.parametrize("sampler", ["uniform", "in_batch"])
def test_trains_with_gradient_accounting_on_both_sides(tmp_path, sampler):
    """CW reads s⁺ and s⁻: both sides of the gradient accounting are numbers (docs/PROTOCOLS.md §13)."""
    train_with_both_accounting_sides(tmp_path, {"name": "cw", "tau_plus": 0.2}, sampler)
