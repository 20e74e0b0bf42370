"""Recommendation losses as small pure functions (PROTOCOLS.md §1).

Every loss has the signature::

    fn(pos: Tensor[B], neg: Tensor[B, M], *, users: Tensor[B] | None = None, **hyper) -> Tensor[]

``pos[k]`` is the score s⁺_k of training pair k = (u_k, i⁺_k), ``neg[k, j]`` the
score s⁻_kj of its j-th negative, ``users[k]`` the user id u_k (only the losses
that group a user's positives, ``bsl`` in modes ``paper`` and ``multi``, read
it).  The result is the mean of the per-pair losses over the B pairs.

All losses are written with ``softplus``/``logsumexp`` (never ``exp`` then
``log``), so values and gradients stay finite at τ = 0.01 with cosine scores in
[-1, 1], in float32 as in float64.  Nothing in the hot path syncs with the host
(no ``.item()``, no data-dependent Python branches), so the functions can be
traced by ``torch.compile``.  Hyper-parameters are plain Python numbers checked
up front; a bad value raises ``ValueError``.

``LOSSES`` maps names to functions, ``LOSS_HYPERS`` names the keyword
hyper-parameters each loss accepts, ``get_loss(name)`` looks a loss up and
suggests the closest valid name on a typo.
"""
from __future__ import annotations

import difflib
import math
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["bpr", "bce", "mse", "ccl", "sl", "bsl", "LOSSES", "LOSS_HYPERS", "BSL_MODES", "get_loss"]

BSL_MODES = ("paper", "reweight", "multi")


# --------------------------------------------------------------------------- helpers
def _check_shapes(pos: Tensor, neg: Tensor, users: Tensor | None) -> None:
    """Static shape checks (shapes only, so no host sync and compile-safe)."""
    if pos.dim() != 1:
        raise ValueError(f"pos must have shape [B], got {tuple(pos.shape)}")
    if neg.dim() != 2 or neg.shape[0] != pos.shape[0]:
        raise ValueError(f"neg must have shape [B, M] with B = {pos.shape[0]}, got {tuple(neg.shape)}")
    if users is not None and tuple(users.shape) != tuple(pos.shape):
        raise ValueError(f"users must have shape [B] = {tuple(pos.shape)}, got {tuple(users.shape)}")


def _check_positive(name: str, value, *, allow_zero: bool = False) -> float:
    """``value`` as a float, or ValueError unless it is a finite number > 0 (>= 0)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name} must be a number, got {value!r}")
    ok = math.isfinite(value) and (value >= 0 if allow_zero else value > 0)
    if not ok:
        raise ValueError(f"{name} must be {'>= 0' if allow_zero else '> 0'} and finite, got {value!r}")
    return float(value)


def _group_ids(users: Tensor) -> Tensor:
    """Dense group ids [B] in [0, B): pairs with the same user share an id.

    Sort-based (sort, mark user changes, cumsum, scatter back), which gives the
    same grouping as ``torch.unique(users, return_inverse=True)`` but keeps every
    shape static and needs no host sync.
    """
    sorted_u, perm = torch.sort(users)
    change = (sorted_u[1:] != sorted_u[:-1]).to(torch.long)
    first = torch.zeros(1, dtype=torch.long, device=users.device)
    gid_sorted = torch.cumsum(torch.cat([first, change]), dim=0)
    return torch.empty_like(gid_sorted).scatter_(0, perm, gid_sorted)


def _group_logmeanexp(x: Tensor, users: Tensor | None) -> Tensor:
    """log mean_{k': u_k' = u_k} exp(x_k') for every pair k; shape [B] -> [B].

    A vectorised segment log-mean-exp over the pairs of each user in the batch:
    segment max via ``scatter_reduce(amax)`` (detached: it is only a shift, the
    gradient is the in-group softmax either way), segment sum of shifted exps via
    ``scatter_add``.  With ``users=None`` every pair is its own group and the
    result is ``x`` itself.
    """
    if users is None:
        return x
    g = _group_ids(users)
    b = x.shape[0]
    neg_inf = torch.full((b,), -math.inf, dtype=x.dtype, device=x.device)
    gmax = neg_inf.scatter_reduce(0, g, x.detach(), reduce="amax", include_self=True)
    shift = gmax[g]
    sums = torch.zeros(b, dtype=x.dtype, device=x.device).scatter_add(0, g, torch.exp(x - shift))
    counts = torch.zeros(b, dtype=x.dtype, device=x.device).scatter_add(0, g, torch.ones_like(x))
    # gather before log: every gathered group sum is >= 1 (its max contributes exp(0))
    return torch.log(sums[g]) + shift - torch.log(counts[g])


# --------------------------------------------------------------------------- losses
def bpr(pos: Tensor, neg: Tensor, *, users: Tensor | None = None) -> Tensor:
    """Bayesian personalised ranking: mean_k mean_j softplus(−(s⁺_k − s⁻_kj)).

    Shapes: pos [B], neg [B, M] -> scalar.  ``users`` is ignored.
    """
    _check_shapes(pos, neg, users)
    return F.softplus(neg - pos[:, None]).mean()


def bce(pos: Tensor, neg: Tensor, *, users: Tensor | None = None) -> Tensor:
    """Binary cross-entropy on logits: mean_k [softplus(−s⁺_k) + Σ_j softplus(s⁻_kj)].

    Shapes: pos [B], neg [B, M] -> scalar.  ``users`` is ignored.
    """
    _check_shapes(pos, neg, users)
    return (F.softplus(-pos) + F.softplus(neg).sum(dim=1)).mean()


def mse(pos: Tensor, neg: Tensor, *, users: Tensor | None = None) -> Tensor:
    """Squared error to targets 1 / 0: mean_k [½(s⁺_k − 1)² + ½ Σ_j (s⁻_kj)²].

    Shapes: pos [B], neg [B, M] -> scalar.  ``users`` is ignored.
    """
    _check_shapes(pos, neg, users)
    return (0.5 * (pos - 1.0) ** 2 + 0.5 * (neg ** 2).sum(dim=1)).mean()


def ccl(pos: Tensor, neg: Tensor, *, users: Tensor | None = None, margin: float = 0.8,
        neg_weight: float = 1.0) -> Tensor:
    """SimpleX cosine contrastive loss: mean_k [relu(1 − s⁺_k) + (w/M) Σ_j relu(s⁻_kj − m)].

    Shapes: pos [B], neg [B, M] -> scalar.  ``margin`` m (default 0.8, the
    SimpleX default for cosine scores; any real number), ``neg_weight`` w >= 0
    (default 1).  ``users`` is ignored.
    """
    _check_shapes(pos, neg, users)
    if isinstance(margin, bool) or not isinstance(margin, (int, float)) or not math.isfinite(margin):
        raise ValueError(f"margin must be a finite number, got {margin!r}")
    w = _check_positive("neg_weight", neg_weight, allow_zero=True)
    return (F.relu(1.0 - pos) + (w / neg.shape[1]) * F.relu(neg - margin).sum(dim=1)).mean()


def sl(pos: Tensor, neg: Tensor, *, users: Tensor | None = None, tau: float = 0.1,
       include_pos: bool = False) -> Tensor:
    """Sampled softmax: mean_k [−s⁺_k/τ + log Σ_j exp(s⁻_kj/τ)].

    With ``include_pos=True`` the positive joins the normaliser:
    −s⁺/τ + log(exp(s⁺/τ) + Σ_j exp(s⁻_j/τ)) (the usual cross-entropy form).
    With in-batch negatives (neg [B, B] holding the batch's positives, own one
    included) this is already the in-batch softmax.
    Shapes: pos [B], neg [B, M] -> scalar.  τ > 0 (default 0.1).  ``users`` is ignored.
    """
    _check_shapes(pos, neg, users)
    t = _check_positive("tau", tau)
    if not isinstance(include_pos, bool):
        raise ValueError(f"include_pos must be True or False, got {include_pos!r}")
    logits = torch.cat([pos[:, None], neg], dim=1) if include_pos else neg
    return (torch.logsumexp(logits / t, dim=1) - pos / t).mean()


def bsl(pos: Tensor, neg: Tensor, *, users: Tensor | None = None, mode: str = "paper",
        tau: float = 0.1, tau1: float | None = None, tau2: float | None = None, r: float = 1.0) -> Tensor:
    """Bilateral softmax loss (PROTOCOLS.md §1), mean over the B pairs of ℓ_k.

    Modes (G(k) = the pairs of the batch whose user is u_k; with ``users=None``
    every pair is its own group):

    - ``paper`` (default; uses ``tau1``, ``tau2``, each defaulting to ``tau``):
      ℓ_k = −log mean_{k'∈G(k)} exp(s⁺_k'/τ₁) + (τ₂/τ₁)·log Σ_j exp(s⁻_kj/τ₂).
      With one positive per user and τ₁ = τ₂ = τ it equals ``sl(tau)``.
    - ``reweight`` (authors' code; uses ``tau``, ``r``):
      ℓ_k = −s⁺_k/τ + r·log Σ_j exp(s⁻_kj/τ); r = 1 is ``sl``.
    - ``multi`` (authors' code; uses ``tau``, ``r``):
      ℓ_k = −log mean_{k'∈G(k)} exp(s⁺_k'/τ) + r·log mean_j exp(s⁻_kj/τ).

    Shapes: pos [B], neg [B, M], users [B] (int) or None -> scalar.  All
    temperatures and r must be > 0; an unknown mode raises ValueError.  ``r`` is
    ignored in ``paper`` mode, ``tau1``/``tau2`` outside it.
    """
    _check_shapes(pos, neg, users)
    if mode not in BSL_MODES:
        raise ValueError(f"unknown bsl mode {mode!r}; valid modes are {list(BSL_MODES)}")
    t = _check_positive("tau", tau)
    if mode == "paper":
        t1 = _check_positive("tau1", t if tau1 is None else tau1)
        t2 = _check_positive("tau2", t if tau2 is None else tau2)
        pos_term = _group_logmeanexp(pos / t1, users)
        neg_term = (t2 / t1) * torch.logsumexp(neg / t2, dim=1)
        return (neg_term - pos_term).mean()
    rr = _check_positive("r", r)
    if mode == "reweight":
        return (rr * torch.logsumexp(neg / t, dim=1) - pos / t).mean()
    # multi
    pos_term = _group_logmeanexp(pos / t, users)
    neg_term = rr * (torch.logsumexp(neg / t, dim=1) - math.log(neg.shape[1]))
    return (neg_term - pos_term).mean()


# --------------------------------------------------------------------------- registry
LOSSES: dict[str, Callable[..., Tensor]] = {
    "bpr": bpr,
    "bce": bce,
    "mse": mse,
    "ccl": ccl,
    "sl": sl,
    "bsl": bsl,
}

LOSS_HYPERS: dict[str, set[str]] = {
    "bpr": set(),
    "bce": set(),
    "mse": set(),
    "ccl": {"margin", "neg_weight"},
    "sl": {"tau", "include_pos"},
    "bsl": {"mode", "tau", "tau1", "tau2", "r"},
}


def get_loss(name: str) -> Callable[..., Tensor]:
    """The loss function registered as ``name``.

    Raises ValueError naming the closest valid name (difflib) and all valid names.
    """
    try:
        return LOSSES[name]
    except (KeyError, TypeError):
        match = difflib.get_close_matches(str(name), list(LOSSES), n=1, cutoff=0.4)
        hint = f" (did you mean {match[0]!r}?)" if match else ""
        raise ValueError(f"unknown loss {name!r}{hint}; valid losses are {sorted(LOSSES)}") from None
