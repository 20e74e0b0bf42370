"""Losses against brute-force float64 oracles written with plain Python loops."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from rankrobust import losses
from rankrobust.losses import LOSS_HYPERS, LOSSES, bce, bpr, bsl, ccl, get_loss, mse, sl


# --------------------------------------------------------------------------- oracles
def _lse(xs):
    m = max(xs)
    return m + math.log(sum(math.exp(x - m) for x in xs))


def _softplus(x):
    return max(x, 0.0) + math.log1p(math.exp(-abs(x)))


def o_bpr(pos, neg, users=None):
    return np.mean([np.mean([_softplus(-(p - n)) for n in row]) for p, row in zip(pos, neg)])


def o_bce(pos, neg, users=None, tau=0.1):
    return np.mean([_softplus(-p / tau) + sum(_softplus(n / tau) for n in row) for p, row in zip(pos, neg)])


def o_mse(pos, neg, users=None):
    return np.mean([0.5 * (p - 1) ** 2 + 0.5 * sum(n * n for n in row) for p, row in zip(pos, neg)])


def o_ccl(pos, neg, users=None, margin=0.8, neg_weight=1.0):
    out = []
    for p, row in zip(pos, neg):
        out.append(max(0.0, 1 - p) + neg_weight / len(row) * sum(max(0.0, n - margin) for n in row))
    return np.mean(out)


def o_sl(pos, neg, users=None, tau=0.1, include_pos=False):
    out = []
    for p, row in zip(pos, neg):
        logits = [n / tau for n in row] + ([p / tau] if include_pos else [])
        out.append(-p / tau + _lse(logits))
    return np.mean(out)


def _group_logmeanexp(vals, users, k):
    if users is None:
        return vals[k]
    grp = [vals[k2] for k2 in range(len(vals)) if users[k2] == users[k]]
    return _lse(grp) - math.log(len(grp))


def o_bsl(pos, neg, users=None, mode="paper", tau=0.1, tau1=None, tau2=None, r=1.0):
    out = []
    for k, row in enumerate(neg):
        if mode == "paper":
            t1 = tau if tau1 is None else tau1
            t2 = tau if tau2 is None else tau2
            lp = _group_logmeanexp([p / t1 for p in pos], users, k)
            out.append(-lp + (t2 / t1) * _lse([n / t2 for n in row]))
        elif mode == "reweight":
            out.append(-pos[k] / tau + r * _lse([n / tau for n in row]))
        else:
            lp = _group_logmeanexp([p / tau for p in pos], users, k)
            out.append(-lp + r * (_lse([n / tau for n in row]) - math.log(len(row))))
    return np.mean(out)


ORACLES = {"bpr": o_bpr, "bce": o_bce, "mse": o_mse, "ccl": o_ccl, "sl": o_sl, "bsl": o_bsl}


def _data(b=7, m=5, seed=0, scale=1.0):
    rng = np.random.default_rng(seed)
    pos = rng.uniform(-scale, scale, b)
    neg = rng.uniform(-scale, scale, (b, m))
    users = np.array([3, 1, 3, 0, 1, 3, 2][:b]) if b <= 7 else rng.integers(0, 3, b)
    return pos, neg, users


def _run(name, pos, neg, users, **hyper):
    t = lambda a: torch.tensor(a, dtype=torch.float64)  # noqa: E731
    u = None if users is None else torch.tensor(users, dtype=torch.long)
    return float(LOSSES[name](t(pos), t(neg), users=u, **hyper))


CASES = [
    ("bpr", {}),
    ("bce", {"tau": 1.0}),
    ("bce", {"tau": 0.1}),
    ("mse", {}),
    ("ccl", {}),
    ("ccl", {"margin": 0.3, "neg_weight": 2.5}),
    ("sl", {"tau": 0.1}),
    ("sl", {"tau": 0.5, "include_pos": True}),
    ("bsl", {"mode": "paper", "tau1": 0.2, "tau2": 0.07}),
    ("bsl", {"mode": "paper", "tau": 0.15}),
    ("bsl", {"mode": "reweight", "tau": 0.11, "r": 1.22}),
    ("bsl", {"mode": "multi", "tau": 0.08, "r": 0.84}),
]


# --------------------------------------------------------------------------- values
@pytest.mark.parametrize("name,hyper", CASES)
@pytest.mark.parametrize("grouped", [True, False])
def test_matches_oracle(name, hyper, grouped):
    pos, neg, users = _data(seed=len(name) + len(hyper))
    users = users if grouped else None
    assert _run(name, pos, neg, users, **hyper) == pytest.approx(ORACLES[name](pos, neg, users, **hyper),
                                                                 rel=1e-10, abs=1e-10)


@pytest.mark.parametrize("mode", ["paper", "multi"])
def test_grouping_uses_all_positives_of_a_user(mode):
    # several positives per user; the grouped result must differ from the ungrouped one
    pos, neg, users = _data(b=12, m=4, seed=3)
    grouped = _run("bsl", pos, neg, users, mode=mode, tau=0.2)
    assert grouped == pytest.approx(o_bsl(pos, neg, users, mode=mode, tau=0.2), rel=1e-10)
    assert grouped != pytest.approx(_run("bsl", pos, neg, None, mode=mode, tau=0.2), rel=1e-6)


def test_user_ids_need_not_be_small_or_contiguous():
    pos, neg, _ = _data(b=6, m=3, seed=4)
    users = np.array([10_000_000, 5, 10_000_000, 42, 5, 5])
    assert _run("bsl", pos, neg, users, tau=0.3) == pytest.approx(o_bsl(pos, neg, users, tau=0.3), rel=1e-10)


def test_bsl_paper_one_positive_per_user_equals_sl():
    pos, neg, _ = _data(b=6, m=8, seed=5)
    users = np.arange(6) * 7
    for tau in (0.05, 0.1, 1.0):
        assert _run("bsl", pos, neg, users, mode="paper", tau1=tau, tau2=tau) == pytest.approx(
            _run("sl", pos, neg, None, tau=tau), rel=1e-12)
        assert _run("bsl", pos, neg, None, mode="paper", tau=tau) == pytest.approx(
            _run("sl", pos, neg, None, tau=tau), rel=1e-12)


def test_bsl_reweight_r1_equals_sl():
    pos, neg, users = _data(seed=6)
    assert _run("bsl", pos, neg, users, mode="reweight", tau=0.12, r=1.0) == pytest.approx(
        _run("sl", pos, neg, users, tau=0.12), rel=1e-12)


def test_sl_include_pos_adds_positive_to_normaliser():
    pos, neg, _ = _data(seed=7)
    with_pos = _run("sl", pos, neg, None, tau=0.2, include_pos=True)
    assert with_pos == pytest.approx(o_sl(pos, neg, tau=0.2, include_pos=True), rel=1e-12)
    assert with_pos > _run("sl", pos, neg, None, tau=0.2)


def test_returns_scalar_mean_over_pairs():
    pos, neg, users = _data(seed=8)
    out = sl(torch.tensor(pos), torch.tensor(neg), tau=0.3)
    assert out.shape == ()
    halves = [float(sl(torch.tensor(pos[s]), torch.tensor(neg[s]), tau=0.3)) for s in (slice(0, 3), slice(3, 6))]
    sub = float(sl(torch.tensor(pos[:6]), torch.tensor(neg[:6]), tau=0.3))
    assert sub == pytest.approx(np.mean(halves), rel=1e-12)


# --------------------------------------------------------------------------- stability
@pytest.mark.parametrize("name,hyper", CASES + [("bsl", {"mode": "paper", "tau1": 0.01, "tau2": 0.01}),
                                                 ("bsl", {"mode": "multi", "tau": 0.01, "r": 1.1}),
                                                 ("bsl", {"mode": "reweight", "tau": 0.01, "r": 1.1}),
                                                 ("sl", {"tau": 0.01, "include_pos": True})])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_finite_values_and_gradients_at_small_tau(name, hyper, dtype):
    hyper = {k: (0.01 if k.startswith("tau") else v) for k, v in hyper.items()}
    b, m = 8, 64
    g = torch.Generator().manual_seed(0)
    sign = torch.randint(0, 2, (b, m + 1), generator=g).to(dtype) * 2 - 1  # scores exactly at ±1
    pos = sign[:, 0].clone().requires_grad_(True)
    neg = sign[:, 1:].clone().requires_grad_(True)
    users = torch.tensor([0, 0, 0, 1, 1, 2, 3, 3])
    out = LOSSES[name](pos, neg, users=users, **hyper)
    out.backward()
    assert torch.isfinite(out)
    assert torch.isfinite(pos.grad).all() and torch.isfinite(neg.grad).all()
    # worst case: positives at -1, negatives at +1
    pos2 = torch.full((b,), -1.0, dtype=dtype, requires_grad=True)
    neg2 = torch.full((b, m), 1.0, dtype=dtype, requires_grad=True)
    out2 = LOSSES[name](pos2, neg2, users=users, **hyper)
    out2.backward()
    assert torch.isfinite(out2) and torch.isfinite(pos2.grad).all() and torch.isfinite(neg2.grad).all()


@pytest.mark.parametrize("fn,hyper", [
    (sl, {"tau": 0.3}),
    (sl, {"tau": 0.3, "include_pos": True}),
    (bsl, {"mode": "paper", "tau1": 0.4, "tau2": 0.2}),
    (bsl, {"mode": "reweight", "tau": 0.3, "r": 1.3}),
    (bsl, {"mode": "multi", "tau": 0.3, "r": 0.8}),
])
def test_gradcheck_float64(fn, hyper):
    g = torch.Generator().manual_seed(1)
    pos = torch.rand(6, generator=g, dtype=torch.float64).mul(2).sub(1).requires_grad_(True)
    neg = torch.rand(6, 4, generator=g, dtype=torch.float64).mul(2).sub(1).requires_grad_(True)
    users = torch.tensor([2, 0, 2, 2, 1, 0])
    assert torch.autograd.gradcheck(lambda p, n: fn(p, n, users=users, **hyper), (pos, neg))
    assert torch.autograd.gradcheck(lambda p, n: fn(p, n, **hyper), (pos, neg))


def test_bsl_positive_gradient_is_in_group_softmax():
    # d ℓ / d s⁺ over one user's positives is −softmax(s⁺/τ₁)/τ₁ summed over the user's pairs
    pos = torch.tensor([0.9, -0.5, 0.1], dtype=torch.float64, requires_grad=True)
    neg = torch.zeros(3, 2, dtype=torch.float64)
    users = torch.tensor([4, 4, 4])
    tau1 = 0.2
    bsl(pos, neg, users=users, mode="paper", tau1=tau1, tau2=0.1).backward()
    expected = -torch.softmax(pos.detach() / tau1, 0) / tau1  # 3 pairs × (1/3 mean) = 1 × softmax
    assert torch.allclose(pos.grad, expected)


# --------------------------------------------------------------------------- validation, registry
@pytest.mark.parametrize("fn,hyper", [
    (sl, {"tau": 0.0}), (sl, {"tau": -1.0}), (sl, {"tau": float("nan")}),
    (bsl, {"tau1": 0.0}), (bsl, {"mode": "multi", "r": 0.0}), (bsl, {"mode": "reweight", "tau": -0.1}),
    (ccl, {"neg_weight": -1.0}),
])
def test_bad_hyper_parameters(fn, hyper):
    with pytest.raises(ValueError):
        fn(torch.zeros(2), torch.zeros(2, 3), **hyper)


def test_unknown_mode_names_valid_modes():
    with pytest.raises(ValueError, match="paper.*reweight.*multi"):
        bsl(torch.zeros(2), torch.zeros(2, 3), mode="papr")


def test_unknown_hyper_parameter_is_rejected():
    with pytest.raises(TypeError):
        bpr(torch.zeros(2), torch.zeros(2, 3), tau=0.1)


def test_bad_shapes():
    with pytest.raises(ValueError):
        sl(torch.zeros(2, 1), torch.zeros(2, 3))
    with pytest.raises(ValueError):
        sl(torch.zeros(2), torch.zeros(3, 3))
    with pytest.raises(ValueError):
        bsl(torch.zeros(2), torch.zeros(2, 3), users=torch.zeros(3, dtype=torch.long))


def test_registry():
    original = ("bpr", "bce", "mse", "ccl", "sl", "bsl", "psl", "slatk", "advinfonce", "llpauc", "drrl", "tce", "rce",
                "dcl", "rince")
    assert LOSSES.names()[:len(original)] == original  # the core modules first, in this order
    for name in LOSSES.names()[len(original):]:  # every further loss comes from its own module of the package
        module = LOSSES[name].__module__
        assert module.startswith("rankrobust.losses.") and module.rsplit(".", 1)[1] not in ("base", "successors",
                                                                                            "denoising"), name
    assert set(LOSS_HYPERS) == set(LOSSES)
    for name in LOSSES:
        assert get_loss(name) is LOSSES[name]
    assert LOSS_HYPERS["bsl"] == {"mode", "tau", "tau1", "tau2", "r"}
    with pytest.raises(ValueError, match="did you mean 'bsl'"):
        get_loss("bls")
    with pytest.raises(ValueError, match="valid losses"):
        get_loss("zzzzzz")


def test_loss_hypers_match_signatures():
    """The function's keywords are its options' loss keywords plus the keywords its state hands it, nothing else."""
    import inspect

    from rankrobust.config import LossConfig

    for name, fn in LOSSES.items():
        params = inspect.signature(fn).parameters
        kwonly = {p for p, v in params.items() if v.kind is v.KEYWORD_ONLY} - {"users", "neg_mask"}
        entry = LOSSES.entry(name)
        state = set(losses.state_keywords(entry.options))
        modes = losses.BSL_MODES if name == "bsl" else (None,)
        used = set()
        for mode in modes:
            cfg = LossConfig(name=name, options=entry.make_options(**({"mode": mode} if mode else {})))
            used |= set(cfg.kwargs())
        assert kwonly == used | state, name
        assert used <= LOSS_HYPERS[name] and not state & LOSS_HYPERS[name], name
        if not state and not hasattr(entry.options, "loss_kwargs"):
            assert kwonly == LOSS_HYPERS[name], name


def _state_kwargs(name, options, b=2, m=3):
    """The state's keyword tensors for a batch of ``b`` pairs of user 0 (a tiny 2-user, 4-item training set)."""
    from rankrobust.data.interactions import Interactions
    from rankrobust.loss_state import make_loss_state

    train = Interactions.from_pairs([0, 0, 1], [0, 1, 2], n_users=2, n_items=4)
    state = make_loss_state(options, train, "cpu")
    if state is None:
        return {}
    users = torch.zeros(b, dtype=torch.long)
    return state.batch_kwargs(users, torch.zeros(b, dtype=torch.long), torch.zeros(b, m, dtype=torch.long))


def test_config_kwargs_are_accepted():
    from rankrobust.config import LossConfig

    for name in LOSSES:
        for mode in losses.BSL_MODES:
            entry = LOSSES.entry(name)
            cfg = LossConfig(name=name, options=entry.make_options(**({"mode": mode} if name == "bsl" else {})))
            assert set(cfg.kwargs()) <= LOSS_HYPERS[name]
            losses.apply_loss(entry, tiny_batch(entry.reads), {**cfg.kwargs(), **_state_kwargs(name, cfg.options)})


def tiny_batch(reads=None, b=2, m=3, n_users=2, n_items=4, d=3):
    """A `LossBatch` of ``b`` pairs of user 0 with zero scores and random tables (every field present)."""
    from types import SimpleNamespace

    gen = torch.Generator().manual_seed(0)
    tables = (torch.randn(n_users, d, generator=gen), torch.randn(n_items, d, generator=gen))
    scores = SimpleNamespace(pos=torch.zeros(b), neg=torch.zeros(b, m), neg_mask=None,
                             neg_items=torch.zeros(b, m, dtype=torch.long))
    return losses.LossBatch(torch.zeros(b, dtype=torch.long), torch.arange(b), scores=lambda: scores, tables=tables,
                            popularity=torch.ones(n_items), final_embeddings=lambda: tables, reads=reads)


def test_compiles_without_graph_breaks_on_hot_path():
    torch._dynamo.reset()
    fn = torch.compile(lambda p, n, u: bsl(p, n, users=u, mode="multi", tau=0.1, r=1.1), fullgraph=True,
                       backend="eager")
    p, n, u = torch.randn(5), torch.randn(5, 3), torch.tensor([1, 0, 1, 2, 0])
    assert torch.allclose(fn(p, n, u), bsl(p, n, users=u, mode="multi", tau=0.1, r=1.1))


# --------------------------------------------------------------------------- rows without any real negative
# With in-batch negatives a row can lose every negative to the mask (a batch holding one user only).  Its negative
# term is 0 (sum over no negatives; log Σ over no negatives taken as 0, not −∞): value and gradients stay finite and
# only the positive term acts.
POSITIVE_TERM_ONLY = {  # per-row loss of a row with no negative, as a function of s⁺ (hyper-parameters of CASES)
    "bpr": lambda s, h: 0.0,
    "bce": lambda s, h: _softplus(-s / h["tau"]),
    "mse": lambda s, h: 0.5 * (s - 1) ** 2,
    "ccl": lambda s, h: max(0.0, 1 - s),
    "sl": lambda s, h: 0.0 if h.get("include_pos") else -s / h["tau"],
    "bsl": lambda s, h: -s / h.get("tau1", h.get("tau", 0.1)),
}


@pytest.mark.parametrize("name,hyper", CASES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_rows_without_negatives_keep_only_the_positive_term(name, hyper, dtype):
    pos = torch.tensor([0.3, -0.6, 0.8], dtype=dtype, requires_grad=True)
    neg = torch.tensor([[0.9, -0.2], [0.4, 0.1], [-0.5, 0.7]], dtype=dtype, requires_grad=True)
    users = torch.tensor([0, 1, 2])
    mask = torch.tensor([[False, False], [False, False], [True, False]])  # rows 0 and 1: no real negative
    out = LOSSES[name](pos, neg, users=users, neg_mask=mask, **hyper)
    out.backward()
    assert torch.isfinite(out) and torch.isfinite(pos.grad).all() and torch.isfinite(neg.grad).all()
    assert (neg.grad[~mask] == 0).all()  # masked entries get no gradient
    p, n = pos.detach().double().tolist(), neg.detach().double().tolist()
    last = ORACLES[name]([p[2]], [[n[2][0]]], [2], **hyper)  # the one row with a negative
    expected = (POSITIVE_TERM_ONLY[name](p[0], hyper) + POSITIVE_TERM_ONLY[name](p[1], hyper) + last) / 3
    tol = 1e-12 if dtype == torch.float64 else 1e-5
    assert float(out.detach()) == pytest.approx(expected, rel=tol, abs=tol)


@pytest.mark.parametrize("name,hyper", CASES)
def test_all_rows_without_negatives_finite_at_small_tau(name, hyper):
    hyper = {k: (0.01 if k.startswith("tau") else v) for k, v in hyper.items()}
    pos = torch.tensor([1.0], requires_grad=True)
    neg = torch.tensor([[-1.0]], requires_grad=True)
    out = LOSSES[name](pos, neg, users=torch.tensor([5]), neg_mask=torch.zeros(1, 1, dtype=torch.bool), **hyper)
    out.backward()
    assert torch.isfinite(out) and torch.isfinite(pos.grad).all() and torch.isfinite(neg.grad).all()
    assert float(neg.grad) == 0.0


@pytest.mark.parametrize("scale", [1.0, 1 / 0.07, 0.5])
def test_scaled_logsumexp_matches_a_loop_oracle(scale):
    """The unmasked row logsumexp of scale·x (one hand-written forward/backward): values against the loop
    oracle in float64, gradients by gradcheck, ±inf rows as torch.logsumexp, half precision reduced in float32."""
    from rankrobust.losses.base import _masked_logsumexp

    g = torch.Generator().manual_seed(3)
    x = torch.randn(6, 9, dtype=torch.float64, generator=g, requires_grad=True)
    want = [_lse([scale * v for v in row]) for row in x.tolist()]
    torch.testing.assert_close(_masked_logsumexp(x, None, scale), torch.tensor(want, dtype=torch.float64))
    assert torch.autograd.gradcheck(lambda t: _masked_logsumexp(t, None, scale), (x,))
    inf = math.inf
    odd = torch.tensor([[-inf, -inf], [1.0, -inf], [inf, 0.0]], dtype=torch.float64)
    torch.testing.assert_close(_masked_logsumexp(odd, None, scale), torch.logsumexp(odd * scale, 1))
    half = x.detach().to(torch.bfloat16)
    out = _masked_logsumexp(half, None, scale)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.double(), torch.logsumexp(half.double() * scale, 1), atol=0.05, rtol=0.01)
