"""DSL, the dual-scale softmax loss (docs/LOSSES.md `dsl`), against a float64 brute-force oracle.

The oracle is written from the formula in docs/LOSSES.md with plain Python
loops (``math`` only, no torch, nothing from rankrobust): cosine similarities
of item rows, the κ-branch weights, the competitor slate (a sort), its
intensity, the batch centre and the clamped per-pair temperature, the weighted
log-sum-exp.  Values are compared directly; gradients against central finite
differences of the same oracle with the detached quantities (weights and
temperatures) frozen at the evaluation point.  Then the reductions to SL, edge
cases (one negative, ties, a masked negative, rows without negatives, the
clamp), the batch form on a `LossBatch`, finiteness at τ = 0.01, bad options,
gradient accounting and a short run.
"""
from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from rankrobust.losses import LOSSES, LossBatch, sl
from rankrobust.losses.dsl import dsl, dsl_scores
from tests.oracles import finite_differences, train_with_both_accounting_sides
from conftest import ragged_negative_mask

MAX_SCALE = 10.0  # the clamp of τ_k/τ (dsl.DSL_MAX_SCALE), restated


# --------------------------------------------------------------------------- the oracle (float64, loops)
def o_cos(a, b):
    na, nb = math.sqrt(sum(x * x for x in a)), math.sqrt(sum(x * x for x in b))
    return sum(x * y for x, y in zip(a, b)) / (max(na, 1e-12) * max(nb, 1e-12))


def _reals(neg, mask, k):
    return [j for j in range(len(neg[k])) if mask is None or mask[k][j]]


def o_detached(pos, neg, sim, mask, tau, kappa, mix, slate, gamma):
    """(ω, τ_k/τ): the κ-branch weights (None for masked entries) and the per-pair temperature factors."""
    weights, intensity = [], []
    for k, p in enumerate(pos):
        reals = _reals(neg, mask, k)
        z = {j: mix * (neg[k][j] - p) + (1 - mix) * sim[k][j] for j in reals}
        total = sum(math.exp(kappa * v) for v in z.values())
        weights.append([len(reals) * math.exp(kappa * z[j]) / total if j in z else None for j in range(len(neg[k]))])
        top = sorted((neg[k][j] - p for j in reals), reverse=True)[:slate]
        intensity.append(sum(top) / len(top) if top else None)
    present = [i for i in intensity if i is not None]
    centre = sum(present) / len(present) if present else 0.0
    scales = []
    for i in intensity:
        x = 0.0 if i is None else gamma * (i - centre)
        scales.append(math.exp(min(max(x, -math.log(MAX_SCALE)), math.log(MAX_SCALE))))
    return weights, scales


def o_dsl(pos, neg, sim, mask, tau=0.1, kappa=1.0, mix=0.5, slate=10, gamma=1.0, frozen=None):
    """mean_k (τ_k/τ)·log Σ_j ω_kj·exp(d_kj/τ_k); ``frozen`` (as `o_detached`) for finite differences."""
    weights, scales = o_detached(pos, neg, sim, mask, tau, kappa, mix, slate, gamma) if frozen is None else frozen
    rows = []
    for k, p in enumerate(pos):
        reals = _reals(neg, mask, k)
        if not reals:
            rows.append(0.0)
            continue
        tk = tau * scales[k]
        terms = [math.log(weights[k][j]) + (neg[k][j] - p) / tk for j in reals]
        top = max(terms)
        rows.append(scales[k] * (top + math.log(sum(math.exp(x - top) for x in terms))))
    return sum(rows) / len(rows)


def _inputs(b=6, m=5, seed=0, with_mask=False, dim=4):
    """float64 scores in [−1, 1], item rows (positive [B, d], negatives [B, M, d]), an optional mask
    (row 1 without negatives, row 2 with one)."""
    rng = np.random.default_rng(seed)
    pos = rng.uniform(-1, 1, b)
    neg = rng.uniform(-1, 1, (b, m))
    pos_rows = rng.normal(size=(b, dim))
    neg_rows = rng.normal(size=(b, m, dim))
    sim = [[o_cos(pos_rows[k].tolist(), neg_rows[k, j].tolist()) for j in range(m)] for k in range(b)]
    mask = None
    if with_mask:
        mask = ragged_negative_mask(rng, b, m)
    return pos, neg, pos_rows, neg_rows, sim, mask


def _batch(pos, neg, pos_rows, neg_rows, mask, reads=None):
    """A `LossBatch` over given scores and rows: item k's row is pos_rows[k], item B + k·M + j is neg_rows[k, j]."""
    b, m = neg.shape
    table = torch.cat([pos_rows, neg_rows.reshape(b * m, -1)])
    scored = SimpleNamespace(pos=pos, neg=neg, neg_mask=mask,
                             neg_items=(b + torch.arange(b * m)).reshape(b, m))
    return LossBatch(torch.arange(b), torch.arange(b), scores=lambda: scored,
                     tables=(torch.zeros(b, table.shape[1], dtype=table.dtype), table), reads=reads)


CASES = [{"tau": 0.3, "kappa": 1.0, "mix": 0.5, "slate": 2, "gamma": 1.0},
         {"tau": 0.5, "kappa": 2.5, "mix": 0.0, "slate": 10, "gamma": -1.5},
         {"tau": 0.2, "kappa": 0.7, "mix": 1.0, "slate": 3, "gamma": 0.5},
         {"tau": 1.0, "kappa": 0.0, "mix": 0.3, "slate": 1, "gamma": 2.0}]


# --------------------------------------------------------------------------- values and gradients
@pytest.mark.parametrize("hyper", CASES)
@pytest.mark.parametrize("with_mask", [False, True])
def test_value_and_gradient_match_oracle(hyper, with_mask):
    pos, neg, _, _, sim, mask = _inputs(seed=3 + with_mask, with_mask=with_mask)
    ml = None if mask is None else mask.tolist()
    p = torch.tensor(pos, requires_grad=True)
    n = torch.tensor(neg, requires_grad=True)
    out = dsl_scores(p, n, torch.tensor(sim, dtype=torch.float64), neg_mask=None if mask is None else torch.tensor(mask), **hyper)
    expected = o_dsl(pos.tolist(), neg.tolist(), sim, ml, **hyper)
    assert float(out.detach()) == pytest.approx(expected, rel=1e-10, abs=1e-12)
    out.backward()
    frozen = o_detached(pos.tolist(), neg.tolist(), sim, ml, **hyper)
    gp = finite_differences(lambda x: o_dsl(x, neg.tolist(), sim, ml, **hyper, frozen=frozen), pos.tolist())
    gn = finite_differences(lambda x: o_dsl(pos.tolist(), x, sim, ml, **hyper, frozen=frozen), neg.tolist())
    np.testing.assert_allclose(p.grad.numpy(), gp, rtol=1e-5, atol=1e-8)
    np.testing.assert_allclose(n.grad.numpy(), gn, rtol=1e-5, atol=1e-8)
    if mask is not None:
        assert (n.grad.numpy()[~mask] == 0).all()  # masked negatives get no gradient
        assert p.grad[1] == 0  # the row without negatives: loss 0


@pytest.mark.parametrize("with_mask", [False, True])
def test_batch_form_reads_item_rows_and_matches_the_oracle(with_mask):
    """`dsl` on a LossBatch: the similarity is the cosine of the positive's and each negative's item rows."""
    hyper = CASES[0]
    pos, neg, pos_rows, neg_rows, sim, mask = _inputs(seed=9, with_mask=with_mask)
    t = torch.tensor
    p, n = t(pos, requires_grad=True), t(neg, requires_grad=True)
    rows = t(pos_rows, requires_grad=True), t(neg_rows, requires_grad=True)
    batch = _batch(p, n, *rows, None if mask is None else t(mask), reads=LOSSES.entry("dsl").reads)
    out = LOSSES["dsl"](batch, **hyper)
    ml = None if mask is None else mask.tolist()
    assert float(out.detach()) == pytest.approx(o_dsl(pos.tolist(), neg.tolist(), sim, ml, **hyper), rel=1e-10)
    out.backward()
    assert rows[0].grad is None and rows[1].grad is None  # the similarity is detached: no gradient through it
    assert p.grad is not None and n.grad is not None


def test_one_negative_ties_a_masked_negative_and_the_clamp():
    # M = 1: ω = 1 and the temperature cancels, ℓ = (s⁻ − s⁺)/τ whatever κ, ρ, γ and the similarity
    out = dsl_scores(torch.tensor([0.2, -0.4]), torch.tensor([[0.5], [0.1]]), torch.tensor([[0.9], [-0.3]]),
                     tau=0.25, kappa=3.0, mix=0.2, slate=4, gamma=1.7)
    assert float(out) == pytest.approx(((0.5 - 0.2) + (0.1 + 0.4)) / 0.25 / 2, rel=1e-6)
    # ties: equal scores and similarities give ω = 1, the slate's choice among ties does not matter
    pos, neg, sim = [0.1, 0.3], [[0.4, 0.4, 0.4], [0.2, 0.2, -0.5]], [[0.2, 0.2, 0.2], [0.6, 0.6, 0.1]]
    hyper = {"tau": 0.3, "kappa": 2.0, "mix": 0.5, "slate": 1, "gamma": 1.0}
    w, _ = o_detached(pos, neg, sim, None, **hyper)
    assert w[0] == [pytest.approx(1.0)] * 3
    t = torch.tensor
    out = dsl_scores(t(pos, dtype=torch.float64), t(neg, dtype=torch.float64), t(sim, dtype=torch.float64), **hyper)
    assert float(out) == pytest.approx(o_dsl(pos, neg, sim, None, **hyper), rel=1e-12)
    # a masked negative is as if it were not there, whatever its score and similarity
    mask = t([[True, False, True], [True, True, True]])
    a = dsl_scores(t([0.1, 0.3]), t([[0.3, 0.99, -0.2], [0.1, 0.0, 0.5]]), t([[0.1, 0.9, 0.4], [0.2, 0.3, 0.1]]),
                   neg_mask=mask, **hyper)
    b = o_dsl([0.1, 0.3], [[0.3, -0.2], [0.1, 0.0, 0.5]], [[0.1, 0.4], [0.2, 0.3, 0.1]], None, **hyper)
    assert float(a) == pytest.approx(b, rel=1e-6)
    # the clamp: a huge γ puts every τ_k at τ/10 or 10τ
    _, scales = o_detached([0.0, 0.0], [[0.9, 0.8], [-0.9, -0.7]], [[0, 0], [0, 0]], None, 0.1, 0.0, 0.5, 2, 1e3)
    assert scales == [pytest.approx(10.0), pytest.approx(0.1)]
    out = dsl_scores(t([0.0, 0.0]), t([[0.9, 0.8], [-0.9, -0.7]]), t([[0.0, 0.0], [0.0, 0.0]]), tau=0.1, kappa=0.0,
                     slate=2, gamma=1e3)
    assert float(out) == pytest.approx(o_dsl([0.0, 0.0], [[0.9, 0.8], [-0.9, -0.7]], [[0, 0], [0, 0]], None,
                                             tau=0.1, kappa=0.0, slate=2, gamma=1e3), rel=1e-6)


def test_each_row_gets_the_gradient_scale_of_sl():
    """Σ_j ∂ℓ_k/∂s⁻_kj = 1/τ (per pair, before the mean): τ_k only shares the gradient among the negatives."""
    pos, neg, _, _, sim, _ = _inputs(seed=4)
    n = torch.tensor(neg, requires_grad=True)
    dsl_scores(torch.tensor(pos), n, torch.tensor(sim, dtype=torch.float64), tau=0.2, kappa=1.5, mix=0.4, slate=2, gamma=1.8).backward()
    np.testing.assert_allclose(n.grad.sum(dim=1).numpy() * len(pos), 1 / 0.2, rtol=1e-12)


# --------------------------------------------------------------------------- reductions
def test_without_both_branches_it_is_sl():
    pos, neg, _, _, sim, mask = _inputs(seed=12, with_mask=True)
    t = torch.tensor
    sim = t(sim, dtype=torch.float64)
    for m in (None, t(mask)):
        a = dsl_scores(t(pos), t(neg), sim, neg_mask=m, tau=0.2, kappa=0.0, gamma=0.0)
        b = sl(t(pos), t(neg), neg_mask=m, tau=0.2)
        if m is not None:  # sl keeps −s⁺/τ for a row without negatives; dsl gives it 0
            b = b + float(t(pos)[1]) / 0.2 / len(pos)
        assert float(a) == pytest.approx(float(b), rel=1e-10)


def test_each_branch_changes_the_loss():
    pos, neg, _, _, sim, _ = _inputs(seed=13)
    t = torch.tensor
    base = float(dsl_scores(t(pos), t(neg), t(sim), tau=0.2, kappa=0.0, gamma=0.0))
    assert float(dsl_scores(t(pos), t(neg), t(sim), tau=0.2, kappa=1.0, gamma=0.0)) != pytest.approx(base)
    assert float(dsl_scores(t(pos), t(neg), t(sim), tau=0.2, kappa=0.0, gamma=1.0)) != pytest.approx(base)
    similar = float(dsl_scores(t(pos), t(neg), t(sim), tau=0.2, kappa=1.0, mix=0.0, gamma=0.0))
    flipped = float(dsl_scores(t(pos), t(neg), -t(sim), tau=0.2, kappa=1.0, mix=0.0, gamma=0.0))
    assert similar != pytest.approx(flipped)


# --------------------------------------------------------------------------- stability and validation
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_finite_at_small_tau_with_scores_at_pm1(dtype):
    b, m = 8, 64
    gen = torch.Generator().manual_seed(0)
    sign = torch.randint(0, 2, (b, m + 1), generator=gen).to(dtype) * 2 - 1
    sim = torch.rand(b, m, generator=gen).to(dtype) * 2 - 1
    cases = [(sign[:, 0], sign[:, 1:]), (torch.full((b,), -1.0, dtype=dtype), torch.full((b, m), 1.0, dtype=dtype)),
             (torch.full((b,), 1.0, dtype=dtype), torch.full((b, m), -1.0, dtype=dtype))]
    for mask in (None, torch.rand(b, m, generator=gen) < 0.5, torch.zeros(b, m, dtype=torch.bool)):
        for p0, n0 in cases:
            for gamma in (0.0, 2.0, -2.0):
                p, n = p0.clone().requires_grad_(True), n0.clone().requires_grad_(True)
                out = dsl_scores(p, n, sim, neg_mask=mask, tau=0.01, kappa=5.0, gamma=gamma)
                out.backward()
                assert torch.isfinite(out) and torch.isfinite(p.grad).all() and torch.isfinite(n.grad).all()


@pytest.mark.parametrize("hyper,match", [({"tau": 0.0}, "tau"), ({"kappa": -1.0}, "kappa"), ({"mix": 1.5}, "mix"),
                                         ({"slate": 0}, "slate"), ({"slate": 2.5}, "slate"),
                                         ({"gamma": float("inf")}, "gamma")])
def test_bad_hyper_parameters(hyper, match):
    with pytest.raises(ValueError, match=match):
        dsl_scores(torch.zeros(2), torch.zeros(2, 3), torch.zeros(2, 3), **hyper)


def test_registry_entry_and_bad_options_at_config_time():
    from rankrobust.config import ConfigError, config_from_dict

    entry = LOSSES.entry("dsl")
    assert not entry.score_only and entry.family == "softmax"
    assert entry.reads == {"pos", "neg", "neg_mask", "pos_rows", "neg_rows"}
    assert entry.make_options() == entry.options(tau=0.1, kappa=1.0, mix=0.5, slate=10, gamma=1.0)
    for tree, match in [({"name": "dsl", "slate": 0}, "loss.slate"), ({"name": "dsl", "mix": 2.0}, "loss.mix"),
                        ({"name": "dsl", "kappa": -0.5}, "loss.kappa")]:
        with pytest.raises(ConfigError, match=match):
            config_from_dict({"loss": tree})


# --------------------------------------------------------------------------- in training
@pytest.mark.parametrize("sampler,compile_step", [("uniform", False), ("in_batch", False), ("uniform", True)])
def test_trains_with_gradient_accounting_on_both_sides(tmp_path, sampler, compile_step):
    """DSL reads s⁺, s⁻ and the item rows: it trains (also compiled, and on in-batch negatives, whose rows are
    the other pairs' positives) and both sides of the gradient accounting are numbers (docs/PROTOCOLS.md §13)."""
    train_with_both_accounting_sides(tmp_path, {"name": "dsl", "slate": 3}, sampler, compile=compile_step)
