"""The loss contract (`LossBatch`), the `LOSSES` registry, the shared helpers and six losses (docs/PROTOCOLS.md §1).

The package `rankrobust.losses` re-exports everything here; the successor
losses (`rankrobust.losses.successors`) and the denoising baselines
(`rankrobust.losses.denoising`) import their helpers and the registry from
this module only (no import cycles).

The training step hands a loss one `LossBatch` (the contract: what it holds,
what is lazy, how a loss declares what it reads, and the two call forms are
stated in its docstring).  A *score-only* loss (it reads nothing but
``pos``, ``neg``, ``neg_mask`` and ``users``: every loss in this module, in
``successors`` and in ``denoising``) is a pure function of the scores, with
the signature::

    fn(pos: Tensor[B], neg: Tensor[B, M], *, users: Tensor[B] | None = None,
       neg_mask: Tensor[B, M] | None = None, **hyper) -> Tensor[]

``pos[k]`` is the score s⁺_k of training pair k = (u_k, i⁺_k), ``neg[k, j]`` the
score s⁻_kj of its j-th negative, ``users[k]`` the user id u_k (only the losses
that group a user's positives, ``bsl`` in modes ``paper`` and ``multi``, read
it).  ``neg_mask`` [B, M] (bool, optional) marks the entries of ``neg`` that
are real negatives: the others (with in-batch negatives, a user's own other
positives in the batch) are left out of every sum, mean and normaliser.  A
row without any real negative contributes a negative term of 0 (sum over no
negatives; log Σ over no negatives is taken as 0, not −∞), so such rows keep
finite values and gradients and only their positive term acts.  The
result is the mean of the per-pair losses over the B pairs.

All losses are written with ``softplus``/``logsumexp`` (never ``exp`` then
``log``), so values and gradients stay finite at τ = 0.01 with cosine scores in
[-1, 1], in float32 as in float64.  Nothing in the hot path syncs with the host
(no ``.item()``, no data-dependent Python branches), so the functions can be
traced by ``torch.compile``.  Hyper-parameters are plain Python numbers checked
up front; a bad value raises ``ValueError``.

Each loss is registered once in ``LOSSES`` (a `rankrobust.registry.Registry`
of `LossEntry`) together with an options dataclass holding its typed
hyper-parameters (defaults, checks, docs, CLI flags), the set of `LossBatch`
fields it reads (``reads``) and its family (``family``, the panels of the
figures); configs and the command line read names and options from there.
``LOSSES[name]`` is the function, ``LOSSES.entry(name)`` the whole entry, ``get_loss(name)`` looks a loss up and suggests the closest
valid name on a typo.  A loss with state between batches (a quantile, a
margin, an adversary, a schedule) declares it on its options class
(``make_state``, ``STATE_KEYWORDS``; `rankrobust.loss_state`).  Adding a loss
is one function, one options class and one ``register`` call in a module of
its own (see docs/EXTENDING.md; the formulas and sources of all losses are in
docs/LOSSES.md).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

from rankrobust.batching import group_ids
from rankrobust.registry import (ConfigError, Entry, NoOptions, Registry, log_uniform, non_negative, one_of,
                                 option, positive, uniform)

__all__ = ["bpr", "bce", "mse", "ccl", "sl", "bsl", "LOSSES", "BSL_MODES", "get_loss", "bsl_temperatures",
           "groups_positives", "state_keywords", "SLOptions", "CCLOptions", "BSLOptions", "TAU", "LossBatch",
           "LossEntry", "LOSS_INPUTS", "SCORES", "SCORE_INPUTS", "apply_loss", "loss_reads", "score_only_entry"]

BSL_MODES = ("paper", "reweight", "multi")


# --------------------------------------------------------------------------- the loss contract
#: every field of `LossBatch` a loss may declare in ``reads`` (what each holds: `LossBatch`)
LOSS_INPUTS = ("pos", "neg", "neg_mask", "users", "pos_items", "neg_items", "user_rows", "pos_rows", "neg_rows",
               "popularity", "final_embeddings")
#: what a loss that ranks by the sampled scores reads: the default ``reads`` of a registered loss
SCORES = frozenset({"pos", "neg", "neg_mask"})
#: the fields a score-only loss may read: such a loss is called as ``fn(pos, neg, users=, neg_mask=, **hyper)``
SCORE_INPUTS = SCORES | {"users"}


class LossBatch:
    """One training batch as a loss sees it: the one object the training step hands every loss.

    The contract (docs/EXTENDING.md §1):

    - **What it holds.**  For the batch's B training pairs k = (u_k, i⁺_k) and
      their M negatives (sampled ids, the other rows' positives with in-batch
      negatives, or every item):

      ======================  ===============  ======================================================================
      field                   shape            what
      ======================  ===============  ======================================================================
      ``pos``                 [B]              s⁺_k, the score of pair k (the model's score function)
      ``neg``                 [B, M]           s⁻_kj, the score of its j-th negative
      ``neg_mask``            [B, M] or None   True where ``neg[k, j]`` is a real negative (None: all are)
      ``users``               [B] int          u_k
      ``pos_items``           [B] int          i⁺_k
      ``neg_items``           [B, M] int       the item id of each ``neg`` column
      ``user_rows``           [B, d]           U[u_k] of the tables the scores come from (``model.score_tables()``:
                                               for LightGCN/XSimGCL the propagated layer mean; before dropout and
                                               normalisation)
      ``pos_rows``            [B, d]           I[i⁺_k] of the same tables (normalised when the model scores by cosine)
      ``neg_rows``            [B, M, d]        I[neg_items] (a [B, M, d] gather: read it only when needed; with
                                               all-items negatives it is [B, n_items, d])
      ``popularity``          [n_items] float  training interactions per item (``data.train.item_counts()``: the
                                               pairs the model learns from, injected noisy positives included)
      ``final_embeddings``    () → (U, I)      the model's evaluation tables (``model.final_embeddings()``: no
                                               gradient; computed once per batch, on first call)
      ======================  ===============  ======================================================================

      Every row tensor (``pos``, ``neg``, ``*_rows``) is part of the autograd
      graph: the loss's gradient flows through it into the model.
    - **Lazy.**  The scores (``pos``, ``neg``, ``neg_mask``, ``neg_items``) are
      computed on first read, the rows gathered on first read and
      ``final_embeddings`` run on first call; a loss pays for what it reads
      only (DirectAU never scores the sampled negatives).  Nothing here syncs
      with the host.
    - **Declared.**  Each registered loss declares the fields it reads
      (``LOSSES.register(name, Options, reads={...})``, default `SCORES`;
      `loss_reads`).  Reading an undeclared field raises AttributeError, so
      the declaration cannot drift from the code; the probes and the analysis
      read it (gradient accounting on s⁺ applies only to a loss that reads
      ``pos``, on s⁻ only to one that reads ``neg``).
    - **Two call forms** (`apply_loss`, the one boundary).  A loss whose
      ``reads`` lie within `SCORE_INPUTS` stays a pure function of the scores:
      ``fn(pos, neg, *, users=None, neg_mask=None, **hyper)`` (``users`` is
      passed only when declared).  Any other loss takes the batch:
      ``fn(batch: LossBatch, **hyper)``.  Either returns the scalar mean loss.

    ``scores`` is a callable returning an object with attributes ``pos``,
    ``neg``, ``neg_mask``, ``neg_items`` (`rankrobust.scoring.BatchScores`);
    ``tables`` the (U, I) of ``model.score_tables()``; ``popularity`` a
    [n_items] tensor or None; ``final_embeddings`` a callable or None;
    ``reads`` the declared fields (all of `LOSS_INPUTS` when None, for tests
    and tools).
    """

    def __init__(self, users: Tensor, pos_items: Tensor, *, scores: Callable[[], object],
                 tables: tuple[Tensor, Tensor] | None = None, popularity: Tensor | None = None,
                 final_embeddings: Callable[[], tuple[Tensor, Tensor]] | None = None,
                 reads: frozenset[str] | None = None) -> None:
        self._users, self._pos_items = users, pos_items
        self._score_fn, self._tables = scores, tables
        self._popularity, self._final_fn = popularity, final_embeddings
        self._reads = frozenset(LOSS_INPUTS) if reads is None else reads
        self.scored = None  #: the scores once computed (None while no one has read them)
        self._final = None

    # the one gate: a loss reads only what it declared
    def _check(self, name: str) -> None:
        if name not in self._reads:
            raise AttributeError(f"the loss reads LossBatch.{name} but does not declare it: add {name!r} to the "
                                 f"reads= of its LOSSES.register call (it declares {sorted(self._reads)})")

    def scores(self):
        """The batch's scores, computed on first call (for the trainer and the loss state; no declaration check)."""
        if self.scored is None:
            self.scored = self._score_fn()
        return self.scored

    def _table(self, side: int, name: str) -> Tensor:
        self._check(name)
        if self._tables is None:
            raise AttributeError(f"LossBatch.{name}: this batch was built without the model's tables")
        return self._tables[side]

    @property
    def pos(self) -> Tensor:
        self._check("pos")
        return self.scores().pos

    @property
    def neg(self) -> Tensor:
        self._check("neg")
        return self.scores().neg

    @property
    def neg_mask(self) -> Tensor | None:
        self._check("neg_mask")
        return self.scores().neg_mask

    @property
    def neg_items(self) -> Tensor:
        self._check("neg_items")
        return self.scores().neg_items

    @property
    def users(self) -> Tensor:
        self._check("users")
        return self._users

    @property
    def pos_items(self) -> Tensor:
        self._check("pos_items")
        return self._pos_items

    @property
    def user_rows(self) -> Tensor:
        return self._table(0, "user_rows")[self._users]

    @property
    def pos_rows(self) -> Tensor:
        return self._table(1, "pos_rows")[self._pos_items]

    @property
    def neg_rows(self) -> Tensor:
        items = self._table(1, "neg_rows")
        return items[self.scores().neg_items]

    @property
    def popularity(self) -> Tensor:
        self._check("popularity")
        if self._popularity is None:
            raise AttributeError("LossBatch.popularity: this batch was built without item popularity")
        return self._popularity

    def final_embeddings(self) -> tuple[Tensor, Tensor]:
        """(U [n_users, d], I [n_items, d]) with U @ I.T the evaluation scores; no gradient; once per batch."""
        self._check("final_embeddings")
        if self._final_fn is None:
            raise AttributeError("LossBatch.final_embeddings: this batch was built without the model")
        if self._final is None:
            self._final = self._final_fn()
        return self._final


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


def _masked_sum(x: Tensor, mask: Tensor | None) -> Tensor:
    """Row sums of ``x`` [B, M] over the entries where ``mask`` is True (all when None) → [B]."""
    return x.sum(dim=1) if mask is None else torch.where(mask, x, torch.zeros_like(x)).sum(dim=1)


def _neg_count(neg: Tensor, mask: Tensor | None) -> Tensor:
    """Number of real negatives per row → [B] (M when ``mask`` is None; at least 1)."""
    if mask is None:
        return torch.full((neg.shape[0],), float(neg.shape[1]), dtype=neg.dtype, device=neg.device)
    return mask.sum(dim=1).clamp(min=1).to(neg.dtype)


class _ScaledLogSumExp(torch.autograd.Function):
    """log Σ_j exp(c·x_kj) → [B] with the row softmax as the only saved block (unmasked rows)."""

    @staticmethod
    def forward(ctx, x: Tensor, scale: float) -> Tensor:
        low = x.dtype in (torch.float16, torch.bfloat16)  # reduce in float32, as autocast does for logsumexp
        xf = x.float() if low else x
        peak = xf.amax(dim=1, keepdim=True)
        peak = torch.where(peak.isinf(), 0.0, peak)  # rows of ±inf: the same values as torch.logsumexp
        e = (xf - peak).mul_(scale).exp_()  # exp(c·(x − max)) ∈ (0, 1]: no overflow for c > 0
        total = e.sum(dim=1)
        ctx.save_for_backward(e, total)
        ctx.scale, ctx.dtype = scale, x.dtype
        out = total.log().add_(peak[:, 0], alpha=scale)
        return out.to(x.dtype) if low else out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor):
        e, total = ctx.saved_tensors  # ∂/∂x_kj = c · softmax(c·x_k)_j
        return (e * (grad.to(e.dtype) * ctx.scale / total)[:, None]).to(ctx.dtype), None


def _masked_logsumexp(x: Tensor, mask: Tensor | None, scale: float = 1.0) -> Tensor:
    """log Σ_j exp(scale·x_kj) over the entries where ``mask`` is True → [B] (``scale`` > 0, e.g. 1/τ).

    Without a mask the value and gradient come from one hand-written pass pair
    (the max-shifted exponentials, kept for the backward pass: about half the
    passes over [B, M] of ``torch.logsumexp(x * scale)`` and its autograd; same
    numbers, tested against a float64 oracle; no second derivatives).
    A row with no True entry (no real negative: e.g. an in-batch row whose
    batch holds only its own user's pairs) gives 0, not log Σ_∅ = −∞, with a
    zero (finite) gradient: its negative term is dropped, as the sums of
    ``bce``/``mse`` and the means of ``bpr``/``ccl`` drop it.  Without the guard
    the value would be −∞ and the backward pass NaN.  No host sync (``where``).
    """
    if mask is None:
        return _ScaledLogSumExp.apply(x, scale) if scale > 0 else torch.logsumexp(x * scale, dim=1)
    if scale != 1.0:
        x = x * scale
    has_any = mask.any(dim=1)
    # empty rows are replaced by zeros before the logsumexp (finite value and gradient), then selected away
    safe = torch.where(has_any[:, None], x.masked_fill(~mask, -math.inf), torch.zeros_like(x))
    return torch.where(has_any, torch.logsumexp(safe, dim=1), torch.zeros_like(safe[:, 0]))


def _masked_mean(x: Tensor, mask: Tensor | None) -> Tensor:
    """Row means of ``x`` [B, M] over the real entries (0 for a row without any) → [B]."""
    return _masked_sum(x, mask) / _neg_count(x, mask)


def _has_negative(neg: Tensor, mask: Tensor | None) -> Tensor:
    """Bool [B]: the row has at least one real negative (all True when ``mask`` is None)."""
    if mask is None:
        return torch.ones(neg.shape[0], dtype=torch.bool, device=neg.device)
    return mask.any(dim=1)


def _check_number(name: str, value, *, low: float | None = None, high: float | None = None,
                  low_open: bool = False, high_open: bool = False) -> float:
    """``value`` as a float, or ValueError unless it is a finite number in the given (half-)open range."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    bad_low = low is not None and (value <= low if low_open else value < low)
    bad_high = high is not None and (value >= high if high_open else value > high)
    if bad_low or bad_high:
        lo = "" if low is None else f"{'(' if low_open else '['}{low}"
        hi = "" if high is None else f"{high}{')' if high_open else ']'}"
        raise ValueError(f"{name} must be in {lo or '(-inf'}, {hi or 'inf)'}, got {value!r}")
    return float(value)


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
    g = group_ids(users)
    b = x.shape[0]
    neg_inf = torch.full((b,), -math.inf, dtype=x.dtype, device=x.device)
    gmax = neg_inf.scatter_reduce(0, g, x.detach(), reduce="amax", include_self=True)
    shift = gmax[g]
    sums = torch.zeros(b, dtype=x.dtype, device=x.device).scatter_add(0, g, torch.exp(x - shift))
    counts = torch.zeros(b, dtype=x.dtype, device=x.device).scatter_add(0, g, torch.ones_like(x))
    # gather before log: every gathered group sum is >= 1 (its max contributes exp(0))
    return torch.log(sums[g]) + shift - torch.log(counts[g])


def bsl_temperatures(tau: float, tau1: float | None, tau2: float | None) -> tuple[float, float]:
    """(τ₁, τ₂) of BSL's paper mode: each defaults to ``tau`` when None (the one home of that rule).

    Raises ValueError unless both are finite numbers > 0.
    """
    return (_check_positive("tau1", tau if tau1 is None else tau1),
            _check_positive("tau2", tau if tau2 is None else tau2))


# --------------------------------------------------------------------------- losses
def bpr(pos: Tensor, neg: Tensor, *, users: Tensor | None = None, neg_mask: Tensor | None = None) -> Tensor:
    """Bayesian personalised ranking: mean_k mean_j softplus(−(s⁺_k − s⁻_kj)).

    Shapes: pos [B], neg [B, M] -> scalar.  ``users`` is ignored.
    """
    _check_shapes(pos, neg, users)
    return (_masked_sum(F.softplus(neg - pos[:, None]), neg_mask) / _neg_count(neg, neg_mask)).mean()


def bce(pos: Tensor, neg: Tensor, *, users: Tensor | None = None, neg_mask: Tensor | None = None,
        tau: float = 0.1) -> Tensor:
    """Binary cross-entropy on the logits s/τ: mean_k [softplus(−s⁺_k/τ) + Σ_j softplus(s⁻_kj/τ)].

    τ > 0 (default 0.1) scales cosine scores in [−1, 1] to logits that can
    reach a confident 0/1 (σ(±1) = 0.73/0.27 could not); τ = 1 is the usual
    BCE on dot-product logits.  Shapes: pos [B], neg [B, M] -> scalar.
    ``users`` is ignored.
    """
    _check_shapes(pos, neg, users)
    t = _check_positive("tau", tau)
    return (F.softplus(-pos / t) + _masked_sum(F.softplus(neg / t), neg_mask)).mean()


def mse(pos: Tensor, neg: Tensor, *, users: Tensor | None = None, neg_mask: Tensor | None = None) -> Tensor:
    """Squared error to targets 1 / 0: mean_k [½(s⁺_k − 1)² + ½ Σ_j (s⁻_kj)²].

    Shapes: pos [B], neg [B, M] -> scalar.  ``users`` is ignored.
    """
    _check_shapes(pos, neg, users)
    return (0.5 * (pos - 1.0) ** 2 + 0.5 * _masked_sum(neg ** 2, neg_mask)).mean()


def ccl(pos: Tensor, neg: Tensor, *, users: Tensor | None = None, neg_mask: Tensor | None = None,
        margin: float = 0.8, neg_weight: float = 1.0) -> Tensor:
    """SimpleX cosine contrastive loss: mean_k [relu(1 − s⁺_k) + (w/M) Σ_j relu(s⁻_kj − m)].

    Shapes: pos [B], neg [B, M] -> scalar.  ``margin`` m (default 0.8, the
    SimpleX default for cosine scores; any real number), ``neg_weight`` w >= 0
    (default 1).  ``users`` is ignored.
    """
    _check_shapes(pos, neg, users)
    if isinstance(margin, bool) or not isinstance(margin, (int, float)) or not math.isfinite(margin):
        raise ValueError(f"margin must be a finite number, got {margin!r}")
    w = _check_positive("neg_weight", neg_weight, allow_zero=True)
    return (F.relu(1.0 - pos) + w * _masked_sum(F.relu(neg - margin), neg_mask) / _neg_count(neg, neg_mask)).mean()


def sl(pos: Tensor, neg: Tensor, *, users: Tensor | None = None, neg_mask: Tensor | None = None,
       tau: float = 0.1, include_pos: bool = False) -> Tensor:
    """Sampled softmax: mean_k [−s⁺_k/τ + log Σ_j exp(s⁻_kj/τ)].

    With ``include_pos=True`` the positive joins the normaliser:
    −s⁺/τ + log(exp(s⁺/τ) + Σ_j exp(s⁻_j/τ)) (the usual cross-entropy form).
    With in-batch negatives the trainer masks each row's own positive (the
    diagonal) and its user's other positives out of ``neg`` (``neg_mask``), so
    plain SL is the softmax over the B − 1 other users' positives; the in-batch
    cross-entropy (the positive once in the normaliser) is ``include_pos=True``.
    A row with no real negative has a negative term of 0 (see the module docstring).
    Shapes: pos [B], neg [B, M] -> scalar.  τ > 0 (default 0.1).  ``users`` is ignored.
    """
    _check_shapes(pos, neg, users)
    t = _check_positive("tau", tau)
    if not isinstance(include_pos, bool):
        raise ValueError(f"include_pos must be True or False, got {include_pos!r}")
    logits = torch.cat([pos[:, None], neg], dim=1) if include_pos else neg
    if include_pos and neg_mask is not None:
        neg_mask = torch.cat([torch.ones_like(neg_mask[:, :1]), neg_mask], dim=1)
    return (_masked_logsumexp(logits, neg_mask, 1 / t) - pos / t).mean()


def bsl(pos: Tensor, neg: Tensor, *, users: Tensor | None = None, neg_mask: Tensor | None = None, mode: str = "paper",
        tau: float = 0.1, tau1: float | None = None, tau2: float | None = None, r: float = 1.0) -> Tensor:
    """Bilateral softmax loss (docs/PROTOCOLS.md §1), mean over the B pairs of ℓ_k.

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
        t1, t2 = bsl_temperatures(t, tau1, tau2)
        pos_term = _group_logmeanexp(pos / t1, users)
        neg_term = (t2 / t1) * _masked_logsumexp(neg, neg_mask, 1 / t2)
        return (neg_term - pos_term).mean()
    rr = _check_positive("r", r)
    if mode == "reweight":
        return (rr * _masked_logsumexp(neg, neg_mask, 1 / t) - pos / t).mean()
    # multi
    pos_term = _group_logmeanexp(pos / t, users)
    neg_term = rr * (_masked_logsumexp(neg, neg_mask, 1 / t) - torch.log(_neg_count(neg, neg_mask)))
    return (neg_term - pos_term).mean()


# --------------------------------------------------------------------------- registry
@dataclass(frozen=True)
class LossEntry(Entry):
    """A registered loss: `rankrobust.registry.Entry` plus what it reads and its family.

    ``reads``: the `LossBatch` fields the loss reads (a subset of `LOSS_INPUTS`;
    default `SCORES`); within `SCORE_INPUTS` the loss is called on the scores,
    otherwise on the batch (`apply_loss`).  ``family``: the loss family that
    figures and tables group it under (`rankrobust.losses.LOSS_FAMILIES` is
    read from the entries, in registration order).  ValueError at
    registration for a field that `LossBatch` does not have.
    """

    reads: frozenset = SCORES
    family: str = "other"

    def __post_init__(self) -> None:
        object.__setattr__(self, "reads", frozenset(self.reads))
        unknown = sorted(self.reads - set(LOSS_INPUTS))
        if unknown:
            raise ValueError(f"loss {self.name!r} declares reads={unknown}, which LossBatch does not have; "
                             f"valid fields are {list(LOSS_INPUTS)}")

    @property
    def score_only(self) -> bool:
        """True when the loss reads nothing but scores (called as ``fn(pos, neg, users=, neg_mask=)``)."""
        return self.reads <= SCORE_INPUTS


class LossRegistry(Registry):
    """The registry of losses: entries are `LossEntry` (``register(name, Options, reads=..., family=...)``)."""

    entry_type = LossEntry


LOSSES: LossRegistry = LossRegistry("loss")


def loss_reads(name: str) -> frozenset[str]:
    """The `LossBatch` fields loss ``name`` declares it reads (ConfigError for an unknown name)."""
    return LOSSES.entry(name).reads


def score_only_entry(fn: Callable[..., Tensor]) -> LossEntry:
    """The registered entry whose function is ``fn``, else an unregistered score-only entry for it (a loss
    function handed straight to the training step, as tests and benchmarks do: called on the scores, ``users``
    passed)."""
    found = next((e for e in LOSSES.entries() if e.target is fn), None)
    if found is not None:
        return found
    name = getattr(fn, "__name__", "loss")
    return LossEntry(name, fn, NoOptions, "", reads=SCORE_INPUTS)


def apply_loss(entry: LossEntry, batch: LossBatch, kwargs: dict) -> Tensor:
    """The loss of ``entry`` on ``batch`` with hyper-parameters ``kwargs``: the one boundary between the
    training step and the two call forms of `LossBatch` (score-only losses get the scores, others the batch)."""
    if entry.score_only:
        users = batch.users if "users" in entry.reads else None
        return entry.target(batch.pos, batch.neg, users=users, neg_mask=batch.neg_mask, **kwargs)
    return entry.target(batch, **kwargs)

TAU = ("temperature τ: the loss reads scores / τ (SL and the softmax family; BCE-type logits, τ = 1 on dot "
       "scores; BSL reweight/multi; the default of BSL's τ₁, τ₂)")

#: the search space of a temperature that divides cosine-scale scores (SL's τ and its kin): from sharp (0.02,
#: below every paper's optimum) to 1 (BCE-type logits on dot scores); a log scale, as τ acts through 1/τ
TAU_SPACE = log_uniform(0.02, 1.0)


@dataclass
class BCEOptions:
    tau: float = option(0.1, TAU, check=positive, flag="--tau", search=TAU_SPACE)


@dataclass
class SLOptions:
    NOT_SEARCHED: ClassVar[dict[str, str]] = {
        "include_pos": "a variant of the loss (cross-entropy form), compared as its own arm"}
    tau: float = option(0.1, TAU, check=positive, flag="--tau", search=TAU_SPACE)
    include_pos: bool = option(False, "SL: the positive joins the softmax normaliser (cross-entropy form)")


@dataclass
class CCLOptions:
    margin: float = option(0.8, "CCL margin m on negative cosine scores", flag="--margin", search=uniform(0.0, 1.0))
    neg_weight: float = option(1.0, "CCL weight w of the negative term", check=non_negative,
                               search=log_uniform(0.1, 100.0))


@dataclass
class BSLOptions:
    NOT_SEARCHED: ClassVar[dict[str, str]] = {
        "mode": "a variant of the loss (paper form or the authors' code), compared as its own arm"}
    mode: str = option("paper", "BSL form: paper (τ₁, τ₂), or the authors' code reweight / multi (τ, r)",
                       check=one_of(*BSL_MODES), flag="--bsl-mode")
    tau: float = option(0.1, TAU, check=positive, flag="--tau", search=TAU_SPACE)
    tau1: float | None = option(None, "BSL positive temperature τ₁ (paper mode; default τ)", check=positive,
                                flag="--tau1", search=TAU_SPACE, prior=0.1)
    tau2: float | None = option(None, "BSL negative temperature τ₂ (paper mode; default τ)", check=positive,
                                flag="--tau2", search=TAU_SPACE, prior=0.1)
    r: float = option(1.0, "BSL ratio r of reweight/multi modes (plays τ₁/τ₂)", check=positive, flag="--r",
                      search=log_uniform(0.5, 2.0), prior=1.1)

    def searchable(self) -> set[str]:
        """The searched options that act in this mode: τ₁, τ₂ in paper mode (τ only supplies their defaults
        there), τ and r in reweight and multi."""
        return {"tau1", "tau2"} if self.mode == "paper" else {"tau", "r"}

    def validate(self) -> None:
        """Refuse an option of another BSL mode (it would be stored but do nothing)."""
        if self.mode != "paper" and (self.tau1 is not None or self.tau2 is not None):
            raise ConfigError(f"loss.tau1/loss.tau2 apply to bsl mode 'paper' only, not mode {self.mode!r} "
                              f"(which uses loss.tau and loss.r); remove them or set loss.mode=paper")
        if self.mode == "paper" and self.r != 1.0:
            raise ConfigError("loss.r applies to bsl modes 'reweight' and 'multi' only, not 'paper' (which uses "
                              "loss.tau1 and loss.tau2); remove it or set loss.mode=reweight or multi")

    def loss_kwargs(self) -> dict:
        """The keywords `bsl` uses in this mode (paper: resolved τ₁, τ₂; reweight/multi: τ, r)."""
        if self.mode == "paper":
            tau1, tau2 = bsl_temperatures(self.tau, self.tau1, self.tau2)
            return {"mode": "paper", "tau1": tau1, "tau2": tau2}
        return {"mode": self.mode, "tau": self.tau, "r": self.r}

    @property
    def groups_positives(self) -> bool:
        """paper and multi modes average a user's positives within the batch (log-mean-exp)."""
        return self.mode in ("paper", "multi")

    @property
    def positive_temperature(self) -> float:
        """τ of the positive-side softmax: τ₁ in paper mode, τ otherwise."""
        return self.loss_kwargs().get("tau1", self.tau)


LOSSES.register("bpr", NoOptions, family="classic")(bpr)
LOSSES.register("bce", BCEOptions, family="classic")(bce)
LOSSES.register("mse", NoOptions, family="classic")(mse)
LOSSES.register("ccl", CCLOptions, family="classic")(ccl)
LOSSES.register("sl", SLOptions, family="softmax")(sl)
LOSSES.register("bsl", BSLOptions, reads=SCORE_INPUTS, family="softmax")(bsl)  # users: the in-batch groups

def state_keywords(options) -> tuple[str, ...]:
    """Names of the keyword tensors a stateful loss receives from its state every batch (() for most).

    ``options`` is an options class or instance; a stateful loss lists them in
    a ``STATE_KEYWORDS`` class attribute (`rankrobust.loss_state`).
    """
    return tuple(getattr(options, "STATE_KEYWORDS", ()))


def groups_positives(options) -> bool:
    """True when a loss with these ``options`` has a per-user grouped positive term.

    Such a term (BSL ``paper`` and ``multi``) is a log-mean-exp over the
    positives of the same user in the same batch, so it only acts when
    batches hold several positives per user (docs/PROTOCOLS.md §9).  A loss says so
    with a ``groups_positives`` attribute on its options class.
    """
    return bool(getattr(options, "groups_positives", False))


def get_loss(name: str) -> Callable[..., Tensor]:
    """The loss function registered as ``name``.

    Raises ValueError (a `ConfigError`) naming the closest valid name and all valid names.
    """
    return LOSSES.entry(name).target
