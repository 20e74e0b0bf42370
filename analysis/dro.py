"""The DRO reading of the softmax losses, checked numerically (docs/PROTOCOLS.md §7).

For scores f over a finite support with base distribution P₀ (uniform over
the sampled or all items unless given):

    sup_{Q: KL(Q‖P₀) ≤ η} E_Q f  =  min_{τ>0} τ log E_{P₀} exp(f/τ) + τη,

attained at Q*(j) ∝ P₀(j) exp(f_j/τ*).  Checks, all in float64:

(a) `dro_primal` (an SLSQP solve over the simplex, in the square-root
    parametrisation Q = x², that never uses the Gibbs form) equals `dro_dual` (a 1-D minimisation over τ); and SL's negative term
    equals the worst case minus τη at the matching radius η(τ) = `radius`.
(b) the autograd gradient of SL's negative term τ log E exp(f/τ) is `q_star`.
(c) BSL's positive term −τ₁ log E_{P_u} exp(f/τ₁) equals the optimistic
    min_Q {−E_Q f + τ₁ KL(Q‖P_u)} (`optimistic_primal`, solved over the simplex
    by SLSQP) and its autograd gradient is −softmax(f/τ₁).
(d) `positive_gradient_share`: on (trained) embeddings with known noisy
    positives, the share of each user's positive-side gradient that SL and BSL
    put on noisy positives.

`run_checks` runs (a)–(c) on random, tied and extreme score vectors and
returns `CheckResult`s; `dro_report` formats them.
"""
from __future__ import annotations

import contextlib
import functools
import math
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Sequence, TypeVar

import numpy as np
import torch
from scipy.optimize import brentq, minimize, minimize_scalar
from torch import Tensor

__all__ = [
    "CheckResult",
    "dro_dual",
    "dro_primal",
    "optimistic_primal",
    "q_star",
    "radius",
    "kl_divergence",
    "sl_negative_term",
    "sl_negative_grad",
    "bsl_positive_term",
    "bsl_positive_grad",
    "positive_gradient_weights",
    "positive_gradient_share",
    "run_checks",
    "dro_report",
]


# --------------------------------------------------------------------------- numpy helpers
_F = TypeVar("_F", bound=Callable[..., Any])
_CONTROLLER: Any = None


def _one_blas_thread(fn: _F) -> _F:
    """Run ``fn`` with the BLAS pool limited to one thread.

    SLSQP makes thousands of tiny BLAS calls; a multi-threaded OpenBLAS on a
    busy machine spins on them and runs ~40× slower (measured: 10 s vs 0.27 s
    for three n = 50 solves).  Uses threadpoolctl (installed with
    scikit-learn); without it, runs unchanged.
    """

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        global _CONTROLLER
        if _CONTROLLER is None:
            try:
                from threadpoolctl import ThreadpoolController

                _CONTROLLER = ThreadpoolController()
            except Exception:  # optional: only a speed-up
                _CONTROLLER = False
        ctx = _CONTROLLER.limit(limits=1, user_api="blas") if _CONTROLLER else contextlib.nullcontext()
        with ctx:
            return fn(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


def _vec(f: Any) -> np.ndarray:
    """1-D float64 copy of ``f`` (numpy, list or tensor)."""
    if isinstance(f, Tensor):
        f = f.detach().cpu().numpy()
    out = np.asarray(f, dtype=np.float64).ravel()
    if out.size == 0:
        raise ValueError("empty score vector")
    if not np.all(np.isfinite(out)):
        raise ValueError("scores must be finite")
    return out


def _base(p0: Any, n: int) -> np.ndarray:
    """The base distribution as a float64 vector summing to one (None → uniform)."""
    if p0 is None:
        return np.full(n, 1.0 / n)
    p = _vec(p0)
    if p.shape != (n,):
        raise ValueError(f"p0 has {p.size} entries for {n} scores")
    if np.any(p < 0) or p.sum() <= 0:
        raise ValueError("p0 must be non-negative with a positive sum")
    return p / p.sum()


def _lse(x: np.ndarray) -> float:
    """log Σ exp(x), stable (cheaper than scipy's for the optimiser's inner loop)."""
    m = x.max()
    return float(m + np.log(np.exp(x - m).sum()))


def kl_divergence(q: Any, p: Any) -> float:
    """KL(q‖p) = Σ q log(q/p) for distributions on the same support (0 log 0 = 0; inf if q ⊄ p)."""
    q, p = _vec(q), _vec(p)
    pos = q > 0
    if np.any(p[pos] <= 0):
        return math.inf
    return float(np.sum(q[pos] * (np.log(q[pos]) - np.log(p[pos]))))


def _gibbs(f: np.ndarray, p0: np.ndarray, tau: float) -> tuple[np.ndarray, float, float]:
    """Q_τ ∝ P₀ exp(f/τ) on the support of P₀, with KL(Q_τ‖P₀) and τ log E_{P₀} exp(f/τ).

    Computed with f shifted by its maximum over the support, so it is stable for
    any τ > 0 (no overflow at τ → 0, no cancellation of the shift at τ → ∞).
    """
    sup = p0 > 0
    fs, lp = f[sup], np.log(p0[sup])
    fmax = fs.max()
    x = (fs - fmax) / tau + lp
    lse = _lse(x)  # log E_{P0} exp((f - fmax)/τ)
    qs = np.exp(x - lse)
    # KL = Σ q (log q − log p0) = Σ q (f − fmax)/τ − lse
    kl = max(float(qs @ ((fs - fmax) / tau)) - lse, 0.0)
    q = np.zeros_like(f)
    q[sup] = qs
    return q, kl, fmax + tau * lse


def q_star(f: Any, p0: Any, tau: float) -> np.ndarray:
    """Q*_τ(j) = P₀(j) exp(f_j/τ) / Σ_k P₀(k) exp(f_k/τ), float64 ``[n]`` (p0 None = uniform)."""
    f = _vec(f)
    return _gibbs(f, _base(p0, f.size), float(tau))[0]


def radius(f: Any, p0: Any, tau: float) -> float:
    """η(τ) = KL(Q*_τ ‖ P₀): the KL radius at which temperature τ is the dual optimum.

    Non-increasing in τ, from −log P₀(argmax f) at τ → 0 to 0 at τ → ∞.
    """
    f = _vec(f)
    return _gibbs(f, _base(p0, f.size), float(tau))[1]


def _sqrt_simplex_solve(fun, ps: np.ndarray, score, extra_constraints: list, maxiter: int,
                        rounds: int = 8, mixes: tuple[float, ...] = (0.05, 0.2, 0.5)) -> np.ndarray:
    """Minimise ``fun(x) -> (value, grad)`` over Q = x² on the simplex with SLSQP; return Q.

    x ∈ [0, 1]ⁿ, Σ x² = 1 (plus ``extra_constraints``), start x = √P₀.  After each
    solve the best end point is mixed with P₀ (Q ← (1 − mix) Q + mix P₀) and solved
    again: an SLSQP step that lands an entry on the bound x_j = 0 cannot leave
    it (the gradient there is 0), and the problems solved here are convex in Q,
    so the mixed start is never worse and frees such entries.  ``score(Q)``
    (lower is better, computed exactly on the normalised Q) picks the best end
    point.  A round that no longer improves it by more than 1e-15 moves on to
    the next, larger mix of ``mixes`` (a small mix can leave an entry too close
    to its bound to recover: near a vertex of the simplex the primal then fell
    1e-5 short of the dual); the search stops when the largest mix does not help
    either, or after ``rounds`` solves.
    """
    n = ps.size
    constraints = [{"type": "eq", "fun": lambda x: float(x @ x) - 1.0, "jac": lambda x: 2.0 * x},
                   *extra_constraints]
    start = np.sqrt(ps)
    best_q, best = ps.copy(), score(ps)
    level = 0
    for round_ in range(rounds):
        res = minimize(fun, start, jac=True, method="SLSQP", bounds=[(0.0, 1.0)] * n,
                       constraints=constraints, options={"ftol": 1e-15, "maxiter": maxiter})
        q = res.x * res.x
        q /= q.sum()
        value = score(q)
        improved = value < best - 1e-15 * max(1.0, abs(best))
        if value < best:
            best_q, best = q, value
        if not improved and round_ > 0:
            level += 1
            if level == len(mixes):
                break
        start = np.sqrt((1.0 - mixes[level]) * best_q + mixes[level] * ps)
    return best_q


def _log_sq(x: np.ndarray) -> np.ndarray:
    """log x² with log 0 clipped to a large negative number (0 · log 0 = 0)."""
    return 2.0 * np.log(np.maximum(np.abs(x), 1e-300))


def _pull_back(q: np.ndarray, ps: np.ndarray, eta: float) -> np.ndarray:
    """The point of the segment P₀ → q farthest from P₀ with KL ≤ η (q itself if feasible)."""
    if kl_divergence(q, ps) <= eta:
        return q
    lo_s, hi_s = 0.0, 1.0
    for _ in range(100):
        mid = 0.5 * (lo_s + hi_s)
        if kl_divergence(ps + mid * (q - ps), ps) <= eta:
            lo_s = mid
        else:
            hi_s = mid
    return ps + lo_s * (q - ps)


# --------------------------------------------------------------------------- (a) dual and primal
@_one_blas_thread
def dro_dual(f: Any, p0: Any, eta: float) -> tuple[float, float]:
    """The dual min_{τ>0} τ log E_{P₀} exp(f/τ) + τη and its minimiser τ*.

    Shapes: ``f [n]``, ``p0 [n]`` or None (uniform).  Returns ``(value, tau_star)``.
    Limits handled in closed form: η ≤ 0 → (E_{P₀} f, inf); η ≥ −log P₀(argmax f)
    (the worst case can sit entirely on the maximum) → (max f over the support, 0);
    all scores equal → (f, inf).

    Otherwise the objective g(τ) is minimised over log τ with
    ``minimize_scalar(method="bounded")`` on a bracket [τ_lo, τ_hi] chosen so that
    the radius KL(Q_τ‖P₀) crosses η inside it (g′(τ) = η − KL(Q_τ‖P₀), so the
    bracket contains the minimum); the result is polished with a root solve of
    KL(Q_τ‖P₀) = η (the stationarity condition): τ* is that root and the value
    the lower of g at the two candidates.
    """
    f = _vec(f)
    p0 = _base(p0, f.size)
    eta = float(eta)
    sup = p0 > 0
    fs = f[sup]
    fmax, fmin = fs.max(), fs.min()
    mean = float(p0[sup] @ fs)
    if eta <= 0.0:
        return mean, math.inf
    spread = fmax - fmin
    if spread == 0.0:
        return float(fmax), math.inf
    p_max = p0[sup][fs == fmax].sum()
    if eta >= -math.log(p_max):
        return float(fmax), 0.0

    def g(log_tau: float) -> float:
        tau = math.exp(log_tau)
        return _gibbs(f, p0, tau)[2] + tau * eta

    def kl_minus_eta(log_tau: float) -> float:
        return _gibbs(f, p0, math.exp(log_tau))[1] - eta

    # bracket: radius(τ_lo) ≥ η ≥ radius(τ_hi); radius is non-increasing in τ
    lo = hi = math.log(spread)
    while kl_minus_eta(lo) < 0 and lo > math.log(spread) - 30 * math.log(10):
        lo -= math.log(4.0)
    while kl_minus_eta(hi) > 0 and hi < math.log(spread) + 30 * math.log(10):
        hi += math.log(4.0)
    res = minimize_scalar(g, bounds=(lo, hi), method="bounded", options={"xatol": 1e-12, "maxiter": 1000})
    best_t, best = float(res.x), float(res.fun)
    a, b = kl_minus_eta(lo), kl_minus_eta(hi)
    if a >= 0 >= b and a != b:
        # the root of g′ is the sharper τ* (g is flat at its minimum); keep the lower value
        t_root = brentq(kl_minus_eta, lo, hi, xtol=1e-15, rtol=4 * np.finfo(float).eps, maxiter=500)
        best, best_t = min(best, g(t_root)), t_root
    return best, math.exp(best_t)


@_one_blas_thread
def dro_primal(f: Any, p0: Any, eta: float, *, maxiter: int = 3000) -> tuple[float, np.ndarray]:
    """The primal sup_{Q ∈ Δ, KL(Q‖P₀) ≤ η} E_Q f, solved directly over the simplex.

    Independent of the dual: Q = x² (element-wise) on the support of P₀, and
    SLSQP maximises E_{x²} f over x ∈ [0, 1]ⁿ subject to Σ x² = 1 and
    KL(x²‖P₀) ≤ η, with analytic gradients, started from x = √P₀ (feasible),
    ``ftol = 1e-15``, restarted from its end point mixed with P₀ until it stops
    improving (`_sqrt_simplex_solve`).  Why
    the square-root parametrisation: in Q itself the KL Hessian diag(1/Q) is
    badly conditioned (SLSQP needs thousands of iterations), and a softmax
    parametrisation Q ∝ P₀eᶻ stalls at vertices (its gradients vanish with Q),
    missing the optimum when the top item has small P₀ mass; in x the curvature
    of KL grows only like log x.  An end point violating the constraint is
    pulled back along the segment to P₀ (a feasible value is never above the sup).
    The objective is the affinely rescaled (f − max f)/(max f − min f) so that it
    is O(1) whatever the score scale.  Two exact primal shortcuts are used and
    nothing else: η ≤ 0 → Q = P₀ (the only feasible point); and if P₀ restricted
    to the argmax of f is feasible it is optimal (E_Q f ≤ max f for every Q).  No
    Gibbs form, τ or root solve is used.  Returns ``(value, q [n])``.
    """
    f = _vec(f)
    p0 = _base(p0, f.size)
    eta = float(eta)
    sup = p0 > 0
    fs, ps = f[sup], p0[sup]
    q = np.zeros_like(f)
    if eta <= 0.0:
        return float(ps @ fs), p0.copy()
    fmax, fmin = fs.max(), fs.min()
    top = fs == fmax
    if -math.log(ps[top].sum()) <= eta:  # all mass on the maximum is feasible, hence optimal
        q[sup] = np.where(top, ps, 0.0) / ps[top].sum()
        return float(fmax), q
    # on Σ x² = 1, E_{x²} (g + c) = E_{x²} g + c: the shift only centres the objective
    g = (fs - fmax) / (fmax - fmin) + 0.5  # in [-0.5, 0.5]
    lp = np.log(ps)

    def objective(x: np.ndarray) -> tuple[float, np.ndarray]:
        return -float(g @ (x * x)), -2.0 * g * x

    def slack(x: np.ndarray) -> float:  # η − KL(x²‖P0)
        return eta - float((x * x) @ (_log_sq(x) - lp))

    def slack_jac(x: np.ndarray) -> np.ndarray:
        return -2.0 * x * (_log_sq(x) - lp + 1.0)

    def score(qq: np.ndarray) -> float:  # −E_Q g of the feasible point
        return -float(_pull_back(qq, ps, eta) @ g)

    qz = _sqrt_simplex_solve(objective, ps, score, [{"type": "ineq", "fun": slack, "jac": slack_jac}], maxiter)
    qz = _pull_back(qz, ps, eta)
    q[sup] = qz
    return float(qz @ fs), q


# --------------------------------------------------------------------------- (b) SL negative term
def _tensor64(f: Any) -> Tensor:
    if isinstance(f, Tensor):
        return f.detach().to(torch.float64)
    return torch.as_tensor(np.asarray(f, dtype=np.float64))


def sl_negative_term(f: Tensor, tau: float) -> Tensor:
    """SL's negative term τ log E_j exp(f_j/τ) (uniform P₀) over the last axis: ``[..., n]`` → ``[...]``.

    Differentiable (logsumexp); its gradient with respect to f is Q*_τ = softmax(f/τ).
    """
    return tau * (torch.logsumexp(f / tau, dim=-1) - math.log(f.shape[-1]))


def sl_negative_grad(f: Any, tau: float) -> Tensor:
    """Autograd gradient of `sl_negative_term` summed over rows, float64 ``[..., n]``."""
    x = _tensor64(f).clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(sl_negative_term(x, tau).sum(), x)
    return grad


def bsl_positive_term(f: Tensor, tau1: float) -> Tensor:
    """BSL's positive term −τ₁ log E_{i∈P_u} exp(f_i/τ₁) over the last axis: ``[..., n]`` → ``[...]``.

    Differentiable; its gradient is −softmax(f/τ₁) (each positive weighted by
    its softmax share, so low-scored — likely noisy — positives get little).
    """
    return -tau1 * (torch.logsumexp(f / tau1, dim=-1) - math.log(f.shape[-1]))


def bsl_positive_grad(f: Any, tau1: float) -> Tensor:
    """Autograd gradient of `bsl_positive_term` summed over rows, float64 ``[..., n]``."""
    x = _tensor64(f).clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(bsl_positive_term(x, tau1).sum(), x)
    return grad


# --------------------------------------------------------------------------- (c) optimistic DRO
@_one_blas_thread
def optimistic_primal(f: Any, p0: Any, tau1: float, *, maxiter: int = 3000) -> tuple[float, np.ndarray]:
    """min_{Q ∈ Δ} −E_Q f + τ₁ KL(Q‖P₀), solved directly over the simplex.

    The optimistic (best-case) counterpart of the DRO on the user's positives
    P₀ = P_u (None = uniform).  Same parametrisation as `dro_primal`: Q = x²
    on the support, SLSQP over x ∈ [0, 1]ⁿ with Σ x² = 1, analytic gradient,
    started at x = √P₀, scores rescaled to [−1, 0] (τ₁ rescaled alike),
    ``ftol = 1e-15``, restarted like `dro_primal`.  No closed
    form is used.  Returns
    ``(value, q [n])``; the closed form is −τ₁ log E_{P₀} exp(f/τ₁) (`bsl_positive_term`).
    """
    f = _vec(f)
    p0 = _base(p0, f.size)
    sup = p0 > 0
    fs, ps = f[sup], p0[sup]
    fmax, fmin = fs.max(), fs.min()
    q = np.zeros_like(f)
    if fmax == fmin:
        q[sup] = ps
        return float(-fmax), q
    s = fmax - fmin
    g, t = (fs - fmax) / s, float(tau1) / s
    lp = np.log(ps)

    def fun(x: np.ndarray) -> tuple[float, np.ndarray]:  # −E_{x²} g + t KL(x²‖P0)
        a = _log_sq(x) - lp
        return float((x * x) @ (t * a - g)), 2.0 * x * (t * (a + 1.0) - g)

    def score(qq: np.ndarray) -> float:
        return -float(qq @ g) + t * kl_divergence(qq, ps)

    qz = _sqrt_simplex_solve(fun, ps, score, [], maxiter)
    value = -fmax - s * float(qz @ g) + float(tau1) * kl_divergence(qz, ps)
    q[sup] = qz
    return value, q


# --------------------------------------------------------------------------- (d) gradient shares
def _segment_softmax(x: Tensor, seg: Tensor, n_seg: int) -> Tensor:
    """softmax of ``x [N]`` within the groups ``seg [N]`` (ids in [0, n_seg)), vectorised with scatter."""
    m = torch.full((n_seg,), -math.inf, dtype=x.dtype, device=x.device)
    m = m.scatter_reduce(0, seg, x, reduce="amax", include_self=True)
    e = torch.exp(x - m[seg])
    z = torch.zeros(n_seg, dtype=x.dtype, device=x.device).index_add_(0, seg, e)
    return e / z[seg]


@torch.no_grad()
def positive_gradient_weights(user_emb: Tensor, item_emb: Tensor, pos_users: Tensor, pos_items: Tensor,
                              loss: str, tau1: float = 1.0) -> Tensor:
    """Normalised positive-side gradient weight of every training pair, float64 ``[N]``.

    Scores s_k = ⟨user_emb[pos_users[k]], item_emb[pos_items[k]]⟩ (the caller
    passes final embeddings, so these are the model's scores, cosine or dot).
    ``loss="sl"``: the positive term −s⁺/τ has the same gradient for every pair,
    so each of user u's n_u positives gets 1/n_u.  ``loss="bsl"``: the positive
    term −τ₁ log E_{P_u} exp(s/τ₁) has gradient −softmax(s/τ₁) over u's positives,
    so the weights are that softmax (segment softmax over users).  Each user's
    weights sum to one.
    """
    if loss not in ("sl", "bsl"):
        raise ValueError(f"loss must be 'sl' or 'bsl', got {loss!r}")
    device = user_emb.device
    pos_users = torch.as_tensor(pos_users, dtype=torch.int64, device=device)
    pos_items = torch.as_tensor(pos_items, dtype=torch.int64, device=device)
    n_users = user_emb.shape[0]
    if loss == "sl":
        counts = torch.bincount(pos_users, minlength=n_users).to(torch.float64)
        return 1.0 / counts[pos_users]
    scores = (user_emb[pos_users].to(torch.float64) * item_emb[pos_items].to(torch.float64)).sum(-1)
    return _segment_softmax(scores / tau1, pos_users, n_users)


@torch.no_grad()
def positive_gradient_share(user_emb: Tensor, item_emb: Tensor, pos_users: Tensor, pos_items: Tensor,
                            is_noisy: Tensor, loss: str, tau1: float = 1.0) -> dict[str, float]:
    """Share of the positive-side gradient that SL or BSL puts on noisy positives (check d).

    Shapes: ``user_emb [n_users, d]``, ``item_emb [n_items, d]`` (final embeddings:
    scores = U @ I.T), ``pos_users [N]``, ``pos_items [N]`` (all training pairs,
    noisy ones included), ``is_noisy BoolTensor[N]`` (True for injected pairs).
    Weights from `positive_gradient_weights`.  Returns floats:

    - ``noisy_share``: mean over users with ≥ 1 noisy positive of the weight on their noisy positives;
    - ``noisy_fraction``: mean over the same users of |noisy_u| / |P_u| (what uniform weights
      give, so SL's ``noisy_share`` equals it);
    - ``relative_share``: noisy_share / noisy_fraction (< 1: noisy positives are down-weighted);
    - ``noisy_share_pooled``: Σ noisy weights / Σ all weights over every user with a positive
      (= mean over all users of their noisy share);
    - ``noisy_fraction_pooled``: noisy pairs / all pairs;
    - ``noisy_weight_mean`` / ``clean_weight_mean``: mean weight of a noisy / clean pair;
    - ``n_users``, ``n_users_noisy``, ``n_pairs``, ``n_noisy``.
    """
    device = user_emb.device
    pos_users = torch.as_tensor(pos_users, dtype=torch.int64, device=device)
    is_noisy = torch.as_tensor(is_noisy, dtype=torch.bool, device=device)
    if not (pos_users.shape == is_noisy.shape == torch.as_tensor(pos_items).shape):
        raise ValueError("pos_users, pos_items and is_noisy must have the same length")
    w = positive_gradient_weights(user_emb, item_emb, pos_users, pos_items, loss, tau1)
    n_users = user_emb.shape[0]
    noisy = is_noisy.to(torch.float64)
    zeros = torch.zeros(n_users, dtype=torch.float64, device=device)
    share_u = zeros.clone().index_add_(0, pos_users, w * noisy)
    total_u = zeros.clone().index_add_(0, pos_users, w)
    n_noisy_u = zeros.clone().index_add_(0, pos_users, noisy)
    n_u = zeros.clone().index_add_(0, pos_users, torch.ones_like(noisy))
    has_pos, has_noisy = n_u > 0, n_noisy_u > 0
    nan = torch.tensor(math.nan, dtype=torch.float64)
    noisy_share = share_u[has_noisy].mean() if has_noisy.any() else nan
    noisy_fraction = (n_noisy_u[has_noisy] / n_u[has_noisy]).mean() if has_noisy.any() else nan
    out = {
        "noisy_share": float(noisy_share),
        "noisy_fraction": float(noisy_fraction),
        "relative_share": float(noisy_share / noisy_fraction) if has_noisy.any() else math.nan,
        "noisy_share_pooled": float(share_u[has_pos].sum() / total_u[has_pos].sum()),
        "noisy_fraction_pooled": float(noisy.mean()) if noisy.numel() else math.nan,
        "noisy_weight_mean": float(w[is_noisy].mean()) if is_noisy.any() else math.nan,
        "clean_weight_mean": float(w[~is_noisy].mean()) if (~is_noisy).any() else math.nan,
        "n_users": int(has_pos.sum()),
        "n_users_noisy": int(has_noisy.sum()),
        "n_pairs": int(noisy.numel()),
        "n_noisy": int(is_noisy.sum()),
    }
    return out


# --------------------------------------------------------------------------- the checks
@dataclass(frozen=True)
class CheckResult:
    """One numerical check: the worst absolute error over its cases against its tolerance."""

    name: str
    max_abs_error: float
    tolerance: float
    passed: bool
    n_cases: int = 0


class _Collector:
    def __init__(self) -> None:
        self.errors: dict[str, list[float]] = {}
        self.tolerances: dict[str, float] = {}

    def add(self, name: str, error: float, tol: float) -> None:
        self.errors.setdefault(name, []).append(float(error))
        self.tolerances[name] = tol

    def results(self) -> list[CheckResult]:
        out = []
        for name, errs in self.errors.items():
            worst = max(errs) if errs else math.nan
            tol = self.tolerances[name]
            out.append(CheckResult(name, worst, tol, bool(np.isfinite(worst) and worst <= tol), len(errs)))
        return out


def _families(ns: Sequence[int], seeds: Iterable[int], include_ties: bool,
              include_extremes: bool) -> list[tuple[str, np.ndarray, np.ndarray, tuple[float, ...]]]:
    """(family, f, p0, taus) cases for `run_checks`."""
    cases = []
    for seed in seeds:
        rng = np.random.default_rng(seed)
        for n in ns:
            taus = (0.05, 0.2, 1.0)
            # cosine-like scores, uniform base (sampled negatives)
            cases.append(("random", rng.uniform(-1, 1, n), np.full(n, 1.0 / n), taus))
            # dot-product scale, non-uniform base
            cases.append(("random_nonuniform", rng.normal(0, 3, n), rng.dirichlet(np.ones(n)), (0.2, 1.0, 5.0)))
            if include_ties:
                cases.append(("ties", rng.integers(-2, 3, n) * 0.5, np.full(n, 1.0 / n), taus))
            if include_extremes:
                cases.append(("extremes", rng.uniform(-50, 50, n), np.full(n, 1.0 / n), (0.01, 0.1, 1.0, 100.0)))
    if include_ties:
        cases.append(("ties", np.full(7, 0.3), np.full(7, 1.0 / 7), (0.05, 1.0)))  # all equal
        cases.append(("ties", np.array([1.0, 1.0, 1.0, -1.0, -1.0]), np.full(5, 0.2), (0.01, 0.1, 1.0)))
    if include_extremes:
        cases.append(("extremes", np.array([50.0, -50.0, -50.0, 0.0]), np.full(4, 0.25), (0.01, 1.0, 10.0)))
        cases.append(("extremes", np.array([1e-3, 0.0, -1e-3]), np.full(3, 1 / 3), (1e-5, 1e3)))
    return cases


@_one_blas_thread
def run_checks(n: Sequence[int] | int = (5, 20, 50), seeds: Iterable[int] = (0, 1), include_ties: bool = True,
               include_extremes: bool = True, tol: float = 1e-6, q_tol: float = 1e-5) -> list[CheckResult]:
    """Run checks (a)–(c) of docs/PROTOCOLS.md §7 on random, tied and extreme score vectors, in float64.

    For every case (score vector f, base P₀, temperatures τ) and every τ:

    - ``a_primal_eq_dual[family]``: |`dro_primal`(f, P₀, η) − `dro_dual`(f, P₀, η)| at η = `radius`(τ)
      and at a random η ∈ (0, −log P₀(argmax));
    - ``a_sl_eq_worst_case_minus_tau_eta[family]``: |τ log E exp(f/τ) − (dual(η(τ)) − τ η(τ))|;
    - ``a_primal_q_eq_qstar[family]``: max |primal Q − Q*_τ| (the independent solve finds the Gibbs
      distribution), tolerance ``q_tol`` (a maximiser is determined less sharply than the value);
    - ``b_grad_eq_qstar[family]``: max |∇_f sl_negative_term − Q*_τ| (uniform P₀ cases);
    - ``c_value[family]``: |`bsl_positive_term` − `optimistic_primal`|;
    - ``c_grad[family]``: max |∇_f bsl_positive_term + softmax(f/τ)|;
    - ``c_grad_eq_primal_q[family]``: max |∇_f bsl_positive_term + optimistic Q| (tolerance ``q_tol``);
    - ``radius_monotone``: the largest increase of η(τ) along an increasing τ grid (must be ≤ 1e-12).

    Families: ``random`` (uniform in [−1, 1], uniform P₀), ``random_nonuniform`` (N(0, 3²),
    Dirichlet P₀, a-checks only), ``ties`` (scores on a coarse grid, all equal), ``extremes``
    (uniform in [−50, 50] with τ down to 0.01, and tiny spreads with τ from 1e-5 to 1e3).
    ``n``: vector sizes; ``seeds``: one set of vectors per seed.
    """
    ns = (n,) if isinstance(n, int) else tuple(n)
    col = _Collector()
    rng = np.random.default_rng(12345)
    for family, f, p0, taus in _families(ns, seeds, include_ties, include_extremes):
        uniform = np.allclose(p0, p0[0])
        etas = [radius(f, p0, tau) for tau in taus]
        fmax = f.max()
        eta_max = -math.log(p0[f == fmax].sum())
        if eta_max > 0:
            etas.append(float(rng.uniform(0.05, 0.95)) * eta_max)
        solved = []
        for eta in etas:
            primal, q = dro_primal(f, p0, eta)
            dual, _ = dro_dual(f, p0, eta)
            col.add(f"a_primal_eq_dual[{family}]", abs(primal - dual), tol)
            solved.append((q, dual))
        for tau, eta, (q, dual) in zip(taus, etas, solved):
            qs = q_star(f, p0, tau)
            lee = tau * math.log(float(p0 @ np.exp((f - fmax) / tau))) + fmax
            col.add(f"a_sl_eq_worst_case_minus_tau_eta[{family}]", abs(lee - (dual - tau * eta)), tol)
            col.add(f"a_primal_q_eq_qstar[{family}]", float(np.abs(q - qs).max()), q_tol)
            if family == "random_nonuniform" or not uniform:
                continue
            grad = sl_negative_grad(torch.as_tensor(f), tau).numpy()
            col.add(f"b_grad_eq_qstar[{family}]", float(np.abs(grad - qs).max()), tol)
            # (c): positives of a user, uniform P_u
            closed = float(bsl_positive_term(torch.as_tensor(f), tau))
            opt_value, opt_q = optimistic_primal(f, p0, tau)
            col.add(f"c_value[{family}]", abs(closed - opt_value), tol)
            bgrad = bsl_positive_grad(torch.as_tensor(f), tau).numpy()
            col.add(f"c_grad[{family}]", float(np.abs(bgrad + torch.softmax(torch.as_tensor(f) / tau, 0).numpy()).max()),
                    tol)
            col.add(f"c_grad_eq_primal_q[{family}]", float(np.abs(bgrad + opt_q).max()), q_tol)
        grid = np.geomspace(1e-3, 1e3, 61) * max(f.max() - f.min(), 1e-12)
        r = np.array([radius(f, p0, t) for t in grid])
        col.add("radius_monotone", float(max(np.max(np.diff(r)), 0.0)), 1e-12)
    return col.results()


def dro_report(results: Sequence[CheckResult]) -> str:
    """A short plain-text table of check results with PASS/FAIL per check and an overall verdict."""
    width = max([len(r.name) for r in results] + [5])
    lines = [f"{'check':<{width}}  {'max abs error':>13}  {'tolerance':>9}  {'cases':>5}  result"]
    for r in results:
        lines.append(f"{r.name:<{width}}  {r.max_abs_error:>13.3e}  {r.tolerance:>9.1e}  {r.n_cases:>5d}  "
                     f"{'PASS' if r.passed else 'FAIL'}")
    n_fail = sum(not r.passed for r in results)
    lines.append(f"{len(results) - n_fail}/{len(results)} checks passed" + ("" if n_fail == 0 else f", {n_fail} FAILED"))
    return "\n".join(lines)
