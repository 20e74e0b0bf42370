"""The successor losses and the denoising baselines (PROTOCOLS.md §10) against float64 brute-force oracles.

Every oracle below is written from the formula in docs/LOSSES.md with plain
Python loops over rows and negatives (``math`` only, no torch, nothing from
rankrobust).  Values are compared directly; gradients against central finite
differences of the same oracle (or, where the loss detaches a factor, against
the oracle's explicit derivative).  Then: finiteness at τ = 0.01 with scores at
±1, the state updates (SL@K quantile, DrRL margin, AdvInfoNCE adversary,
LLPAUC thresholds, T-CE schedule) and one tiny end-to-end run per stateful loss.
"""
from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch

from rankrobust.loss_state import make_loss_state
from rankrobust.losses import LOSSES, state_keywords
from rankrobust.losses.successors import AdvInfoNCEState, DrRLState, LLPAUCState, topk_quantiles
from tests.oracles import finite_differences

NEW = ("psl", "slatk", "advinfonce", "llpauc", "drrl", "tce", "rce", "dcl", "rince")


# --------------------------------------------------------------------------- scalar helpers
def _lse(xs):
    m = max(xs)
    return m + math.log(sum(math.exp(x - m) for x in xs))


def _softplus(x):
    return max(x, 0.0) + math.log1p(math.exp(-abs(x)))


def _sigmoid(x):
    return 1.0 / (1.0 + math.exp(-x)) if x >= 0 else math.exp(x) / (1.0 + math.exp(x))


def _real(row, mrow):
    return [n for j, n in enumerate(row) if mrow is None or mrow[j]]


# --------------------------------------------------------------------------- oracles (per batch, float64)
def o_psl(pos, neg, mask, st, tau=0.05, activation="tanh", score_scale=0.5):
    sig = {"tanh": lambda d: math.tanh(d) + 1, "atan": lambda d: math.atan(d) + 1,
           "relu": lambda d: max(d + 1, 0.0)}[activation]
    rows = []
    for k, p in enumerate(pos):
        reals = _real(neg[k], None if mask is None else mask[k])
        # log Σ σ(d)^{1/τ}, with the largest power factored out
        logs = [math.log(sig(score_scale * (n - p))) / tau for n in reals]
        rows.append(_lse(logs) if logs else 0.0)
    return sum(rows) / len(rows)


def o_slatk(pos, neg, mask, st, tau=0.1, tau_w=2.25):
    rows = []
    for k, p in enumerate(pos):
        reals = _real(neg[k], None if mask is None else mask[k])
        soft = _lse([(n - p) / tau for n in reals]) if reals else 0.0
        rows.append(_sigmoid((p - st["quantile"][k]) / tau_w) * soft)
    return sum(rows) / len(rows)


def o_advinfonce(pos, neg, mask, st, tau=0.1, neg_weight=64.0):
    rows = []
    for k, p in enumerate(pos):
        idx = [j for j in range(len(neg[k])) if mask is None or mask[k][j]]
        if not idx:
            rows.append(0.0)
            continue
        g = st["hardness"][k]
        z = sum(math.exp(g[j]) for j in idx)
        probs = {j: math.exp(g[j]) / z for j in idx}
        mass = neg_weight * len(idx) * sum(probs[j] * math.exp(neg[k][j] / tau) for j in idx)
        rows.append(-math.log(math.exp(p / tau) / (math.exp(p / tau) + mass)))
    return sum(rows) / len(rows)


def o_llpauc(pos, neg, mask, st, alpha=0.7, beta=0.1, kappa=5.0, tau=0.1):
    a, b, sp, sn, g = (st[key] for key in ("a", "b", "s_pos", "s_neg", "gamma"))
    r = lambda x: math.log1p(math.exp(kappa * x)) / kappa  # noqa: E731
    rows = []
    for k, p in enumerate(pos):
        fp = _sigmoid(p / tau)
        pos_part = -sp - r(-((fp - a) ** 2 - 2 * (1 + g) * fp) - sp) / alpha
        reals = _real(neg[k], None if mask is None else mask[k])
        if reals:
            terms = []
            for n in reals:
                fn = _sigmoid(n / tau)
                terms.append(r((fn - b) ** 2 + 2 * (1 + g) * fn - sn))
            neg_part = sn + (sum(terms) / len(terms)) / beta
        else:
            neg_part = 0.0
        rows.append(pos_part + neg_part)
    return sum(rows) / len(rows) - g * g


def o_drrl(pos, neg, mask, st, omega=150.0, eps=0.1, neg_weight=1.0):
    p_star = omega / (omega - 1)
    rows = []
    for k, p in enumerate(pos):
        m = st["user_margin"][k]
        reals = _real(neg[k], None if mask is None else mask[k])
        row = max(0.0, 1 - p)
        if reals:
            norm = sum((eps + neg_weight * max(0.0, n - m)) ** p_star for n in reals) ** (1 / p_star)
            row += len(reals) ** (-1 / p_star) * norm + m
        rows.append(row)
    return sum(rows) / len(rows)


def o_tce(pos, neg, mask, st, tau=0.1):
    b = len(pos)
    losses = [_softplus(-p / tau) for p in pos]
    n_drop = int(math.floor(st["drop_rate"] * b + 1e-9))
    dropped = set(sorted(range(b), key=lambda k: -losses[k])[:n_drop])
    rows = []
    for k in range(b):
        reals = _real(neg[k], None if mask is None else mask[k])
        rows.append((0.0 if k in dropped else losses[k]) + sum(_softplus(n / tau) for n in reals))
    return sum(rows) / b


def o_rce(pos, neg, mask, st, tau=0.1, beta=0.25, weight_negatives=True):
    rows = []
    for k, p in enumerate(pos):
        x = p / tau
        row = _sigmoid(x) ** beta * _softplus(-x)
        for n in _real(neg[k], None if mask is None else mask[k]):
            w = (1 - _sigmoid(n / tau)) ** beta if weight_negatives else 1.0
            row += w * _softplus(n / tau)
        rows.append(row)
    return sum(rows) / len(rows)


def o_rce_grad(pos, neg, mask, tau=0.1, beta=0.25, weight_negatives=True):
    """d R-CE / d scores with the weights held constant (they are detached)."""
    b = len(pos)
    gp = [-(_sigmoid(p / tau) ** beta) * _sigmoid(-p / tau) / tau / b for p in pos]
    gn = [[0.0] * len(row) for row in neg]
    for k, row in enumerate(neg):
        for j, n in enumerate(row):
            if mask is not None and not mask[k][j]:
                continue
            w = (1 - _sigmoid(n / tau)) ** beta if weight_negatives else 1.0
            gn[k][j] = w * _sigmoid(n / tau) / tau / b
    return gp, gn


def o_dcl(pos, neg, mask, st, tau=0.1, tau_plus=0.1):
    rows = []
    for k, p in enumerate(pos):
        reals = _real(neg[k], None if mask is None else mask[k])
        if not reals:
            rows.append(0.0)
            continue
        m = len(reals)
        ng = (sum(math.exp(n / tau) for n in reals) - tau_plus * m * math.exp(p / tau)) / (1 - tau_plus)
        ng = max(ng, m * math.exp(-1 / tau))
        rows.append(-math.log(math.exp(p / tau) / (math.exp(p / tau) + ng)))
    return sum(rows) / len(rows)


def o_rince(pos, neg, mask, st, tau=0.1, q=0.5, lam=0.01):
    rows = []
    for k, p in enumerate(pos):
        reals = _real(neg[k], None if mask is None else mask[k])
        total = math.exp(p / tau) + sum(math.exp(n / tau) for n in reals)
        rows.append(-math.exp(q * p / tau) / q + (lam * total) ** q / q)
    return sum(rows) / len(rows)


ORACLES = {"psl": o_psl, "slatk": o_slatk, "advinfonce": o_advinfonce, "llpauc": o_llpauc, "drrl": o_drrl,
           "tce": o_tce, "rce": o_rce, "dcl": o_dcl, "rince": o_rince}

CASES = [
    ("psl", {"tau": 0.05}), ("psl", {"tau": 0.2, "activation": "atan"}),
    ("psl", {"tau": 0.1, "activation": "relu", "score_scale": 0.45}), ("psl", {"tau": 0.5, "activation": "tanh",
                                                                              "score_scale": 1.0}),
    ("slatk", {"tau": 0.1, "tau_w": 2.25}), ("slatk", {"tau": 0.3, "tau_w": 1.0}),
    ("advinfonce", {"tau": 0.1, "neg_weight": 64.0}), ("advinfonce", {"tau": 0.4, "neg_weight": 1.5}),
    ("llpauc", {}), ("llpauc", {"alpha": 0.3, "beta": 0.5, "kappa": 2.0, "tau": 1.0}),
    ("drrl", {}), ("drrl", {"omega": 2.0, "eps": 0.3, "neg_weight": 2.0}),
    ("tce", {"tau": 0.1}), ("tce", {"tau": 0.5}),
    ("rce", {"tau": 0.1, "beta": 0.25}), ("rce", {"tau": 1.0, "beta": 1.0, "weight_negatives": False}),
    ("dcl", {"tau": 0.1, "tau_plus": 0.1}), ("dcl", {"tau": 0.3, "tau_plus": 0.0}),
    ("dcl", {"tau": 0.5, "tau_plus": 0.6}),
    ("rince", {"tau": 0.1, "q": 0.5, "lam": 0.01}), ("rince", {"tau": 0.5, "q": 1.0, "lam": 0.1}),
]


def _inputs(name, b=6, m=5, seed=0, with_mask=False):
    """float64 scores, an optional mask (row 1 without any real negative), duplicated users, state keywords."""
    rng = np.random.default_rng(seed)
    pos = rng.uniform(-1, 1, b)
    neg = rng.uniform(-1, 1, (b, m))
    users = np.array([0, 1, 0, 2, 1, 0][:b])
    mask = None
    if with_mask:
        mask = rng.uniform(size=(b, m)) < 0.7
        mask[0, 0] = True
        mask[1, :] = False
    st = {}
    if name == "slatk":
        st["quantile"] = rng.uniform(-0.5, 0.5, 3)[users].tolist()
    elif name == "advinfonce":
        st["hardness"] = rng.normal(0, 1, (b, m)).tolist()
    elif name == "llpauc":
        st.update(a=0.8, b=0.2, s_pos=0.3, s_neg=0.6, gamma=-0.1)
    elif name == "drrl":
        st["user_margin"] = rng.uniform(-0.3, 0.5, 3)[users].tolist()
    elif name == "tce":
        st["drop_rate"] = 0.34  # ⌊0.34·6⌋ = 2 positives dropped
    return pos, neg, users, mask, st


def _torch_state(st):
    return {k: torch.tensor(v, dtype=torch.float64, requires_grad=True) for k, v in st.items()}


def _call(name, pos, neg, users, mask, st, hyper):
    t = torch.tensor
    kw = {} if not st else st
    return LOSSES[name](pos, neg, users=t(users), neg_mask=None if mask is None else t(mask), **hyper, **kw)


# --------------------------------------------------------------------------- values and gradients
@pytest.mark.parametrize("name,hyper", CASES, ids=[f"{n}-{i}" for i, (n, _) in enumerate(CASES)])
@pytest.mark.parametrize("with_mask", [False, True])
def test_value_and_gradient_match_oracle(name, hyper, with_mask):
    pos, neg, users, mask, st = _inputs(name, seed=len(hyper) + 3 * with_mask, with_mask=with_mask)
    oracle = ORACLES[name]
    ml = None if mask is None else mask.tolist()
    p = torch.tensor(pos, requires_grad=True)
    n = torch.tensor(neg, requires_grad=True)
    tst = _torch_state(st)
    if name == "tce":
        tst["drop_rate"] = tst["drop_rate"].detach()
    out = _call(name, p, n, users, mask, tst, hyper)
    expected = oracle(pos.tolist(), neg.tolist(), ml, st, **hyper)
    assert float(out.detach()) == pytest.approx(expected, rel=1e-10, abs=1e-10)
    out.backward()
    if name == "rce":
        gp, gn = o_rce_grad(pos.tolist(), neg.tolist(), ml, **hyper)
    else:
        gp = finite_differences(lambda x: oracle(x, neg.tolist(), ml, st, **hyper), pos.tolist())
        gn = finite_differences(lambda x: oracle(pos.tolist(), x, ml, st, **hyper), neg.tolist())
    np.testing.assert_allclose(p.grad.numpy(), gp, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(n.grad.numpy(), gn, rtol=1e-5, atol=1e-7)
    if mask is not None:
        assert (n.grad.numpy()[~mask] == 0).all()  # masked entries get no gradient
    # gradients of the state keywords: SL@K's quantile, the adversary's logits, DrRL's margin, LLPAUC's thresholds
    for key in {"slatk": ["quantile"], "advinfonce": ["hardness"], "drrl": ["user_margin"],
                "llpauc": ["a", "b", "s_pos", "s_neg", "gamma"]}.get(name, []):
        def f(x, key=key):
            return oracle(pos.tolist(), neg.tolist(), ml, {**st, key: x}, **hyper)
        np.testing.assert_allclose(tst[key].grad.numpy(), finite_differences(f, st[key]), rtol=1e-5, atol=1e-7, err_msg=key)


@pytest.mark.parametrize("name", NEW)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_finite_at_small_tau_with_scores_at_pm1(name, dtype):
    b, m = 8, 64
    gen = torch.Generator().manual_seed(0)
    sign = torch.randint(0, 2, (b, m + 1), generator=gen).to(dtype) * 2 - 1
    users = torch.tensor([0, 0, 0, 1, 1, 2, 3, 3])
    hyper = {k: 0.01 for k in ("tau", "tau_w") if k in LOSSES.entry(name).option_names}
    cases = [(sign[:, 0], sign[:, 1:]), (torch.full((b,), -1.0, dtype=dtype), torch.full((b, m), 1.0, dtype=dtype)),
             (torch.full((b,), 1.0, dtype=dtype), torch.full((b, m), -1.0, dtype=dtype))]
    for mask in (None, torch.rand(b, m, generator=gen) < 0.5):
        for p0, n0 in cases:
            p, n = p0.clone().requires_grad_(True), n0.clone().requires_grad_(True)
            st = {k: (v.to(dtype) if v.is_floating_point() else v)
                  for k, v in _state_for(name, users, b, m, dtype).items()}
            out = LOSSES[name](p, n, users=users, neg_mask=mask, **hyper, **st)
            out.backward()
            assert torch.isfinite(out), (name, float(out))
            assert torch.isfinite(p.grad).all() and torch.isfinite(n.grad).all(), name


def _state_for(name, users, b, m, dtype=torch.float64):
    """Keyword tensors of a stateful loss at its initial state (4 users, 64 items)."""
    from rankrobust.data.interactions import Interactions

    train = Interactions.from_pairs([0, 1, 2, 3], [0, 1, 2, 3], n_users=4, n_items=64)
    state = make_loss_state(LOSSES.entry(name).make_options(), train, "cpu")
    if state is None:
        return {}
    if name == "advinfonce":
        state.active = True
    return state.batch_kwargs(users, torch.zeros(b, dtype=torch.long), torch.arange(m).repeat(b, 1))


@pytest.mark.parametrize("name", NEW)
def test_rows_without_negatives_are_finite(name):
    pos = torch.tensor([0.3, -0.6], requires_grad=True)
    neg = torch.tensor([[0.9, -0.2], [0.4, 0.1]], requires_grad=True)
    users = torch.tensor([0, 1])
    mask = torch.zeros(2, 2, dtype=torch.bool)
    st = _state_for(name, users, 2, 2)
    hyper = {"tau": 0.01} if "tau" in LOSSES.entry(name).option_names else {}
    out = LOSSES[name](pos, neg, users=users, neg_mask=mask, **hyper, **{k: v.float() for k, v in st.items()})
    out.backward()
    assert torch.isfinite(out) and torch.isfinite(pos.grad).all() and (neg.grad == 0).all()


def test_special_cases_reduce_to_known_losses():
    from rankrobust.losses import bce, sl

    gen = torch.Generator().manual_seed(2)
    pos = torch.rand(9, generator=gen, dtype=torch.float64) * 2 - 1
    neg = torch.rand(9, 7, generator=gen, dtype=torch.float64) * 2 - 1
    # T-CE at ρ = 0 and R-CE at β = 0 are BCE on s/τ
    assert float(LOSSES["tce"](pos, neg, tau=0.2, drop_rate=torch.tensor(0.0))) == pytest.approx(
        float(bce(pos, neg, tau=0.2)), rel=1e-12)
    assert float(LOSSES["rce"](pos, neg, tau=0.2, beta=0.0)) == pytest.approx(float(bce(pos, neg, tau=0.2)),
                                                                               rel=1e-12)
    # AdvInfoNCE with uniform hardness and w = 1 is the cross-entropy form of SL
    assert float(LOSSES["advinfonce"](pos, neg, tau=0.1, neg_weight=1.0, hardness=torch.zeros_like(neg))) == \
        pytest.approx(float(sl(pos, neg, tau=0.1, include_pos=True)), rel=1e-12)
    # SL@K with a weight of 1 everywhere (β = −∞) is SL
    assert float(LOSSES["slatk"](pos, neg, tau=0.1, tau_w=1.0, quantile=torch.full((9,), -1e9))) == pytest.approx(
        float(sl(pos, neg, tau=0.1)), rel=1e-12)
    # DCL with τ⁺ = 0 is the cross-entropy form of SL whenever the floor M·e^{−1/τ} does not bind
    assert float(LOSSES["dcl"](pos, neg, tau=0.1, tau_plus=0.0)) == pytest.approx(
        float(sl(pos, neg, tau=0.1, include_pos=True)), rel=1e-12)


@pytest.mark.parametrize("name,hyper,match", [
    ("psl", {"activation": "sigmoid"}, "activation"), ("psl", {"tau": 0.0}, "tau"),
    ("dcl", {"tau_plus": 1.0}, "tau_plus"), ("rince", {"q": 1.5}, "q"), ("rince", {"q": 0.0}, "q"),
    ("rce", {"beta": -1.0}, "beta"), ("tce", {"tau": -0.1}, "tau"),
])
def test_bad_hyper_parameters(name, hyper, match):
    st = _state_for(name, torch.tensor([0, 0]), 2, 3)
    with pytest.raises(ValueError, match=match):
        LOSSES[name](torch.zeros(2), torch.zeros(2, 3), **hyper, **st)


@pytest.mark.parametrize("tree,match", [
    ({"name": "drrl", "omega": 1.0}, "omega"), ({"name": "rince", "q": 2.0}, "q"),
    ({"name": "slatk", "k": 50, "quantile_negatives": 10}, "quantile_negatives"),
    ({"name": "llpauc", "alpha": 0.0}, "alpha"), ({"name": "psl", "activation": "tanhh"}, "activation"),
])
def test_bad_options_fail_at_config_time(tree, match):
    from rankrobust.config import ConfigError, config_from_dict

    with pytest.raises(ConfigError, match=match):
        config_from_dict({"loss": tree})


# --------------------------------------------------------------------------- state updates
def test_slatk_quantile_is_the_empirical_top_k_quantile():
    rng = np.random.default_rng(0)
    n_users, n_items, d, k, n_neg = 5, 30, 4, 6, 9
    U, I = rng.normal(size=(n_users, d)), rng.normal(size=(n_items, d))
    rows = [sorted(rng.choice(n_items, size=c, replace=False).tolist()) for c in (1, 3, 7, 12, 2)]
    indptr = np.cumsum([0] + [len(r) for r in rows])
    negatives = rng.integers(0, n_items, (n_users, n_neg))
    got = topk_quantiles(torch.tensor(U @ I.T), torch.tensor(indptr), torch.tensor(sum(rows, [])),
                         torch.arange(n_users), torch.tensor(negatives), k)
    for u in range(n_users):
        scores = [float(U[u] @ I[i]) for i in rows[u]] + [float(U[u] @ I[j]) for j in negatives[u]]
        assert float(got[u]) == pytest.approx(sorted(scores, reverse=True)[k - 1], rel=1e-12)


class _FixedModel(torch.nn.Module):
    def __init__(self, U, I):
        super().__init__()
        self.U, self.I = U, I

    def final_embeddings(self):
        return self.U, self.I


def test_slatk_state_refreshes_every_t_epochs_from_the_model():
    from rankrobust.data.interactions import Interactions

    rng = np.random.default_rng(1)
    users = [0, 0, 0, 1, 2, 2, 3, 3, 3, 3]
    items = [1, 4, 7, 2, 0, 9, 3, 5, 8, 11]
    train = Interactions.from_pairs(users, items, n_users=4, n_items=12)
    opts = LOSSES.entry("slatk").make_options(k=3, refresh_every=2, quantile_negatives=5)
    state = make_loss_state(opts, train, "cpu")
    U, I = torch.tensor(rng.normal(size=(4, 3))), torch.tensor(rng.normal(size=(12, 3)))
    model = _FixedModel(U, I)
    assert state.epoch_end(1, model) == {} and (state.quantile == 0).all()  # not yet: T = 2, β starts at 0
    row = state.epoch_end(2, model)
    gen = torch.Generator().manual_seed(state.seed + 2)
    negs = torch.randint(0, 12, (4, 5), generator=gen)
    for u in range(4):
        pos_items = [i for uu, i in zip(users, items) if uu == u]
        scores = [float(U[u] @ I[i]) for i in pos_items] + [float(U[u] @ I[j]) for j in negs[u].tolist()]
        assert float(state.quantile[u]) == pytest.approx(sorted(scores, reverse=True)[2], rel=1e-6)
    assert row["slatk_quantile_mean"] == pytest.approx(float(state.quantile.mean()))
    kw = state.batch_kwargs(torch.tensor([3, 0, 3]), torch.zeros(3, dtype=torch.long),
                            torch.zeros(3, 2, dtype=torch.long))
    assert torch.equal(kw["quantile"], state.quantile[torch.tensor([3, 0, 3])])


def _drrl_objective(neg_row, m, omega, eps, w):
    p_star = omega / (omega - 1)
    norm = sum((eps + w * max(0.0, n - m)) ** p_star for n in neg_row) ** (1 / p_star)
    return len(neg_row) ** (-1 / p_star) * norm + m


@pytest.mark.parametrize("neg_weight,direction", [(1.0, -1), (3.0, +1)])
def test_drrl_margin_moves_down_its_objective(neg_weight, direction):
    """J(m) = N^{−1/ω*}‖ε + w·relu(s⁻ − m)‖ + m: with w = 1, dJ/dm > 0 (margin falls); with w = 3 and every
    negative above m, dJ/dm ≈ 1 − w < 0 (margin rises).  One Adam step lowers J; duplicated users add up."""
    omega, eps = 150.0, 0.1
    state = DrRLState(n_users=3, init=0.2, lr=1e-2)
    opt = torch.optim.Adam(state.param_groups(1e-3))
    users = torch.tensor([0, 2, 0, 1])
    pos = torch.tensor([0.9, 0.1, 0.5, -0.2], dtype=torch.float32)
    neg = torch.tensor([[0.6, 0.7, 0.8], [0.5, 0.9, 0.4], [0.3, 0.45, 0.95], [0.25, 0.6, 0.7]])
    kw = state.batch_kwargs(users, users, torch.zeros(4, 3, dtype=torch.long))
    loss = LOSSES["drrl"](pos, neg, users=users, omega=omega, eps=eps, neg_weight=neg_weight, **kw)
    loss.backward()
    before = state.margin.detach().clone()
    # the margin's gradient is the batch mean of dJ/dm (finite differences of the oracle), summed over a user's pairs
    for u in range(3):
        rows = [k for k in range(4) if int(users[k]) == u]
        fd = sum((_drrl_objective(neg[k].tolist(), float(before[u]) + 1e-6, omega, eps, neg_weight)
                  - _drrl_objective(neg[k].tolist(), float(before[u]) - 1e-6, omega, eps, neg_weight)) / 2e-6
                 for k in rows) / 4
        assert float(state.margin.grad[u]) == pytest.approx(fd, rel=1e-3, abs=1e-6)
        assert np.sign(fd) == -direction
    j_before = [_drrl_objective(neg[k].tolist(), float(before[int(users[k])]), omega, eps, neg_weight)
                for k in range(4)]
    opt.step()
    assert (torch.sign(state.margin.detach() - before) == direction).all()
    j_after = [_drrl_objective(neg[k].tolist(), float(state.margin.detach()[int(users[k])]), omega, eps, neg_weight)
               for k in range(4)]
    assert sum(j_after) < sum(j_before)
    # the model's scores see the margin detached: their gradient is the loss's at the fixed margin
    assert loss.grad_fn is not None


def test_advinfonce_adversary_ascends_and_rests_between_its_epochs():
    torch.manual_seed(0)
    state = AdvInfoNCEState(n_users=4, n_items=20, dim=8, lr=0.05, interval=5, max_epochs=2)
    schedule = []
    for epoch in range(1, 16):
        schedule.append(state.active)
        state.epoch_end(epoch, None)
    assert [e for e, a in zip(range(1, 16), schedule) if a] == [3, 8]  # (e + 2) % 5 = 0, at most 2 of them
    state = AdvInfoNCEState(n_users=4, n_items=20, dim=8, lr=0.05, interval=5, max_epochs=8)
    state.active = True
    opt = torch.optim.Adam(state.param_groups(1e-3))
    gen = torch.Generator().manual_seed(1)
    users = torch.tensor([0, 1, 2, 3, 0, 1])
    items = torch.randint(0, 20, (6, 7), generator=gen)
    pos, neg = torch.rand(6, generator=gen), torch.rand(6, 7, generator=gen) * 2 - 1

    def value():
        with torch.no_grad():
            return float(LOSSES["advinfonce"](pos, neg, tau=0.1, hardness=state.logits(users, items)))

    values = [value()]
    for _ in range(5):
        opt.zero_grad()
        LOSSES["advinfonce"](pos, neg, tau=0.1, **state.batch_kwargs(users, users, items)).backward()
        opt.step()
        values.append(value())
    assert all(b > a for a, b in zip(values, values[1:]))  # gradient *ascent* on the loss
    state.active = False
    opt.zero_grad()
    LOSSES["advinfonce"](pos.requires_grad_(True), neg, tau=0.1, **state.batch_kwargs(users, users, items)).backward()
    assert state.user.grad is None and state.item.grad is None  # not in the graph: Adam leaves it untouched


def test_llpauc_thresholds_descend_and_ascend_as_the_min_max_says():
    state = LLPAUCState()
    gen = torch.Generator().manual_seed(3)
    pos, neg = torch.rand(5, generator=gen) * 2 - 1, torch.rand(5, 4, generator=gen) * 2 - 1
    LOSSES["llpauc"](pos, neg, **state.batch_kwargs(None, None, None)).backward()
    plain = {k: v.detach().clone().requires_grad_(True) for k, v in state.values().items()}
    LOSSES["llpauc"](pos, neg, **plain).backward()
    for name, sign in (("a", 1), ("b", 1), ("s_neg", 1), ("s_pos", -1), ("gamma", -1)):
        assert float(getattr(state, name).grad) == pytest.approx(sign * float(plain[name].grad), rel=1e-6), name
    with torch.no_grad():  # projection on the ranges
        state.a.fill_(1.7)
        state.gamma.fill_(-3.0)
        state.b.fill_(0.4)
    v = {k: x.detach() for k, x in state.values().items()}
    assert float(v["a"]) == 1.0 and float(v["gamma"]) == pytest.approx(-0.6)


def test_tce_drop_rate_grows_linearly_then_stays():
    opts = LOSSES.entry("tce").make_options(max_drop_rate=0.2, num_gradual=4)
    state = make_loss_state(opts, None, "cpu")
    u = torch.zeros(2, dtype=torch.long)
    rates = [float(state.batch_kwargs(u, u, u[:, None])["drop_rate"]) for _ in range(7)]
    assert rates == pytest.approx([0.0, 0.05, 0.1, 0.15, 0.2, 0.2, 0.2])
    assert state.epoch_end(1, None) == {"tce_drop_rate": pytest.approx(0.2), "tce_steps": 7.0}


@pytest.mark.parametrize("name", ["tce", "advinfonce", "slatk", "drrl", "llpauc"])
def test_state_works_inside_torch_compile(name):
    """The trainer may compile the step (``train.compile``), state calls included: compiled = eager, and T-CE's
    counter advances (AOT autograd would drop an in-place buffer update inside the graph; ``aot_eager`` shows it
    without a C++ compiler)."""
    torch._dynamo.reset()
    users = torch.tensor([0, 1, 0, 3])
    gen = torch.Generator().manual_seed(0)
    pos, neg = torch.rand(4, generator=gen) * 2 - 1, torch.rand(4, 6, generator=gen) * 2 - 1
    results = []
    for compiled in (False, True):
        from rankrobust.data.interactions import Interactions

        train = Interactions.from_pairs([0, 1, 2, 3], [0, 1, 2, 3], n_users=4, n_items=8)
        opts = LOSSES.entry(name).make_options(**({"num_gradual": 2} if name == "tce" else {}))
        torch.manual_seed(0)
        state = make_loss_state(opts, train, "cpu")
        if name == "advinfonce":
            state.active = True
        items = torch.arange(6).repeat(4, 1)

        def step(p, n, state=state):
            return LOSSES[name](p, n, users=users, **opts.loss_kwargs() if hasattr(opts, "loss_kwargs") else {},
                                **state.batch_kwargs(users, users, items))

        fn = torch.compile(step, backend="aot_eager") if compiled else step
        values = []
        for _ in range(3):
            p = pos.clone().requires_grad_(True)
            out = fn(p, neg)
            out.backward()
            values.append((float(out.detach()), p.grad.clone()))
        results.append((values, float(state.step) if name == "tce" else None))
    (eager, eager_steps), (comp, comp_steps) = results
    for (a, ga), (b, gb) in zip(eager, comp):
        assert a == pytest.approx(b, rel=1e-5) and torch.allclose(ga, gb, atol=1e-6)
    if name == "tce":
        assert eager_steps == comp_steps == 3.0


# --------------------------------------------------------------------------- the trainer's wiring, end to end
@pytest.mark.parametrize("name,options,column", [
    ("slatk", {"refresh_every": 1, "quantile_negatives": 30, "k": 5}, "slatk_quantile_mean"),
    ("advinfonce", {"adv_interval": 3}, "advinfonce_adversarial"),
    ("llpauc", {}, "llpauc_s_pos"),
    ("drrl", {}, "drrl_margin_mean"),
    ("tce", {"num_gradual": 10}, "tce_drop_rate"),
])
def test_stateful_loss_trains_end_to_end(tmp_path, name, options, column):
    from rankrobust.experiment import run_experiment
    from tests.test_train import tiny_config

    cfg = tiny_config(tmp_path, loss={"name": name, **options}, train={"epochs": 2})
    run_experiment(cfg, tmp_path / "run", progress=False)
    stored = json.loads((tmp_path / "run" / "config.json").read_text())
    assert stored["loss"]["name"] == name and set(state_keywords(LOSSES.entry(name).options)).isdisjoint(
        stored["loss"])
    hist = pd.read_csv(tmp_path / "run" / "epochs.csv")
    assert column in hist.columns and hist[column].notna().all() and np.isfinite(hist["loss"]).all()
    if name == "advinfonce":
        assert hist[column].tolist() == [0.0, 0.0]  # (e + 2) % 3 = 0 first at e = 4
    if name == "tce":
        steps = hist["tce_steps"].tolist()
        assert steps[1] == 2 * steps[0] > 0  # one step per batch, counted on the device
