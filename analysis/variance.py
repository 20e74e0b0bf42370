"""Prediction variance of a recommender's scores (docs/PROTOCOLS.md §6).

SL's negative term has the second-order expansion

    τ log E_{P_n} exp(f/τ) = E_{P_n} f + Var_{P_n} f / (2τ) + O(1/τ²),

so SL ≈ (−E_{P_u} f + E_{P_n} f) + Var_{P_n}(f)/(2τ): it penalises the variance
of the negative scores, more strongly for small τ.  This module measures the
quantities involved:

- `score_statistics`: per user, mean and (population, ddof = 0) variance of the
  scores of the user's positives, of a fixed set of sampled negatives and of
  all items, computed with segment sums over the CSR rows (no per-user loop);
  `aggregate` summarises them over users (mean and 10/50/90 % quantiles).
- `log_expectation_exp`, `second_order_expansion`, `expansion_error`: the exact
  term, its expansion and the error as a function of τ.
- `popularity_score_gap`: mean score of head items minus mean score of the
  other items; the head is `analysis.popularity.head_items` (the 20 % most
  popular items, see that module for how it differs from the fairness head).
- `VarianceTracker`: a training callback recording all of the above per epoch
  into ``variance.csv``.

Scores are always ``U @ I.T`` with ``(U, I) = model.final_embeddings()``
(cosine models return normalised rows, so the scores are cosines).
"""
from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from analysis.popularity import head_items
from rankrobust.data.interactions import Interactions
from rankrobust.data.popularity import item_popularity
from rankrobust.runs import RunDir, write_csv

__all__ = [
    "STATS",
    "QUANTILES",
    "score_statistics",
    "aggregate",
    "log_expectation_exp",
    "second_order_expansion",
    "expansion_error",
    "popularity_score_gap",
    "head_items",  # re-exported from analysis.popularity
    "VarianceTracker",
]

#: Per-user statistics returned by `score_statistics` (besides ``users`` and ``n_pos``).
STATS = ("pos_mean", "pos_var", "neg_mean", "neg_var", "all_mean", "all_var")
#: Quantiles reported by `aggregate`.
QUANTILES = (0.1, 0.5, 0.9)


# --------------------------------------------------------------------------- helpers
def _csr(pos: Interactions | tuple[Any, Any], device: torch.device) -> tuple[Tensor, Tensor]:
    """(indptr, indices) int64 tensors on ``device`` from an Interactions or a pair."""
    if isinstance(pos, Interactions):
        return pos.to_torch(device)
    indptr, indices = pos
    return (torch.as_tensor(indptr, dtype=torch.int64, device=device),
            torch.as_tensor(indices, dtype=torch.int64, device=device))


def _gather_rows(indptr: Tensor, indices: Tensor, users: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Flatten the CSR rows of ``users``.

    Returns ``seg [T]`` (position of the user in ``users`` for each entry),
    ``items [T]`` (the item ids, row after row) and ``counts [b]``.
    """
    starts = indptr[users]
    counts = indptr[users + 1] - starts
    b = users.shape[0]
    seg = torch.repeat_interleave(torch.arange(b, device=users.device), counts)
    row_offset = torch.cumsum(counts, 0) - counts  # where each user's block starts in the flat array
    within = torch.arange(seg.shape[0], device=users.device) - row_offset[seg]
    items = indices[starts[seg] + within]
    return seg, items, counts


def _pair_scores(Ub: Tensor, item_emb: Tensor, seg: Tensor, items: Tensor) -> Tensor:
    """Scores ``[T]`` of the pairs (``Ub[seg[t]]``, ``item_emb[items[t]]``)."""
    return (Ub.index_select(0, seg) * item_emb.index_select(0, items)).sum(-1)


def _segment_mean_var(values: Tensor, seg: Tensor, counts: Tensor) -> tuple[Tensor, Tensor]:
    """Per-segment mean and population variance (two-pass); NaN for empty segments.

    Shapes: values [T], seg [T] (segment id in [0, b)), counts [b].
    """
    b = counts.shape[0]
    n = counts.to(values.dtype)
    total = torch.zeros(b, dtype=values.dtype, device=values.device).index_add_(0, seg, values)
    mean = total / n  # 0/0 → NaN for users without positives
    dev = values - mean[seg]
    var = torch.zeros(b, dtype=values.dtype, device=values.device).index_add_(0, seg, dev * dev) / n
    return mean, var


def _all_item_mean_var(Ub: Tensor, item_emb: Tensor) -> tuple[Tensor, Tensor]:
    """Mean and population variance over all items of the scores ``Ub @ item_emb.T``.

    Exact identities, without the ``[b, n_items]`` score matrix:
    mean_i u·i = u·ī and Var_i u·i = uᵀ Σ u, Σ = (1/n) Σ_i (i − ī)(i − ī)ᵀ.
    Cost O(n_items d² + b d²).  Shapes: Ub [b, d], item_emb [n_items, d] → ([b], [b]).
    """
    centre = item_emb.mean(0)
    centred = item_emb - centre
    cov = centred.T @ centred / item_emb.shape[0]  # [d, d]
    mean = Ub @ centre
    var = ((Ub @ cov) * Ub).sum(1).clamp_min(0.0)
    return mean, var


def _neg_scores(Ub: Tensor, item_emb: Tensor, neg_items: Tensor) -> Tensor:
    """Scores ``[b, M]`` of each user's sampled negatives ``neg_items [b, M]``."""
    b, m = neg_items.shape
    rows = item_emb.index_select(0, neg_items.reshape(-1)).view(b, m, -1)
    return torch.bmm(rows, Ub.unsqueeze(-1)).squeeze(-1)


def _as_float_tensor(f: Any, dtype: torch.dtype | None = None) -> Tensor:
    """Tensor view of ``f``; non-tensors become float64, tensors keep their dtype unless given."""
    if isinstance(f, Tensor):
        return f if dtype is None else f.to(dtype)
    return torch.as_tensor(np.asarray(f, dtype=np.float64), dtype=dtype or torch.float64)


# --------------------------------------------------------------------------- statistics
@torch.no_grad()
def score_statistics(user_emb: Tensor, item_emb: Tensor, users: Tensor,
                     pos: Interactions | tuple[Any, Any], neg_items: Tensor | None = None,
                     *, all_items: bool = True) -> dict[str, Tensor]:
    """Per-user mean and population variance of positive, sampled-negative and all-item scores.

    Args:
        user_emb: ``[n_users, d]``; item_emb: ``[n_items, d]`` (scores = ``user_emb @ item_emb.T``).
        users: ``LongTensor[b]`` user ids to evaluate.
        pos: the positives, an `Interactions` or a CSR pair ``(indptr [n_users+1], indices [nnz])``.
        neg_items: ``LongTensor[b, M]`` sampled negative item ids for each of ``users`` (row k
            belongs to ``users[k]``), or None to skip the sampled-negative statistics.
        all_items: also compute the statistics over all ``n_items`` scores, exactly, from the
            item mean and covariance (mean = u·ī, var = uᵀΣu; no ``[b, n_items]`` matrix).

    Returns a dict of tensors on the embeddings' device, in their dtype:
    ``users [b]``, ``n_pos [b]``, ``pos_mean [b]``, ``pos_var [b]`` (NaN when the user has
    no positive), and where computed ``neg_mean [b]``, ``neg_var [b]``, ``all_mean [b]``,
    ``all_var [b]``.  Variances are population variances (ddof = 0), matching the
    Var_{P} of docs/PROTOCOLS.md §6 with P uniform over the set.  Positives are gathered with
    segment sums over the CSR rows (vectorised, no per-user loop).
    """
    device = user_emb.device
    users = torch.as_tensor(users, dtype=torch.int64, device=device)
    indptr, indices = _csr(pos, device)
    Ub = user_emb[users]  # [b, d]
    seg, items, counts = _gather_rows(indptr, indices, users)
    pos_scores = _pair_scores(Ub, item_emb, seg, items)
    pos_mean, pos_var = _segment_mean_var(pos_scores, seg, counts)
    out: dict[str, Tensor] = {"users": users, "n_pos": counts, "pos_mean": pos_mean, "pos_var": pos_var}
    if neg_items is not None:
        neg_items = torch.as_tensor(neg_items, dtype=torch.int64, device=device)
        if neg_items.shape[0] != users.shape[0]:
            raise ValueError(f"neg_items has {neg_items.shape[0]} rows for {users.shape[0]} users")
        neg_scores = _neg_scores(Ub, item_emb, neg_items)  # [b, M]
        out["neg_var"], out["neg_mean"] = torch.var_mean(neg_scores, dim=1, correction=0)
    if all_items:
        out["all_mean"], out["all_var"] = _all_item_mean_var(Ub, item_emb)
    return out


def aggregate(per_user: dict[str, Tensor], quantiles: Sequence[float] = QUANTILES) -> dict[str, float]:
    """Summarise `score_statistics` over users.

    For every statistic ``s`` of `STATS` present in ``per_user`` returns ``s_mean``
    and ``s_q10``, ``s_q50``, ``s_q90`` (for the default ``quantiles``; key
    ``s_q{round(100 q)}``), ignoring NaNs (users without positives).  Values are floats.
    """
    out: dict[str, float] = {}
    qs = [float(q) for q in quantiles]
    for name in STATS:
        if name not in per_user:
            continue
        v = per_user[name].detach().to(torch.float64)
        v = v[~torch.isnan(v)]
        if v.numel() == 0:
            out[f"{name}_mean"] = math.nan
            for q in qs:
                out[f"{name}_q{round(100 * q)}"] = math.nan
            continue
        out[f"{name}_mean"] = float(v.mean())
        qv = torch.quantile(v, torch.tensor(qs, dtype=torch.float64, device=v.device))
        for q, val in zip(qs, qv.tolist()):
            out[f"{name}_q{round(100 * q)}"] = float(val)
    return out


# --------------------------------------------------------------------------- the expansion
def log_expectation_exp(f: Tensor | np.ndarray, tau: float) -> Tensor:
    """τ log mean_j exp(f_j / τ) over the last axis, computed stably with logsumexp.

    Shapes: ``f [..., n]`` → ``[...]``.  Non-tensor input is converted to float64.
    """
    f = _as_float_tensor(f)
    n = f.shape[-1]
    return tau * (torch.logsumexp(f / tau, dim=-1) - math.log(n))


def second_order_expansion(f: Tensor | np.ndarray, tau: float) -> Tensor:
    """mean f + Var f / (2τ) over the last axis (population variance, ddof = 0).

    Shapes: ``f [..., n]`` → ``[...]``; the second-order approximation of
    `log_expectation_exp` for large τ.
    """
    f = _as_float_tensor(f)
    var, mean = torch.var_mean(f, dim=-1, correction=0)
    return mean + var / (2.0 * tau)


def expansion_error(f: Tensor | np.ndarray, taus: Iterable[float]) -> pd.DataFrame:
    """The exact negative term vs its second-order expansion, per τ, in float64.

    ``f``: scores ``[n]`` or ``[b, n]`` (one row per user).  Returns one row per τ
    with columns ``tau``, ``exact`` (mean over rows of `log_expectation_exp`),
    ``expansion`` (mean over rows of `second_order_expansion`) and ``abs_error``
    (mean over rows of |exact − expansion|).  The error is O(1/τ²) as τ → ∞
    (its leading term is κ₃/(6τ²), κ₃ the third central moment of f).
    """
    f = _as_float_tensor(f, torch.float64)
    if f.dim() == 1:
        f = f.unsqueeze(0)
    rows = []
    for tau in taus:
        exact = log_expectation_exp(f, float(tau))
        approx = second_order_expansion(f, float(tau))
        rows.append({"tau": float(tau), "exact": float(exact.mean()), "expansion": float(approx.mean()),
                     "abs_error": float((exact - approx).abs().mean())})
    return pd.DataFrame(rows, columns=["tau", "exact", "expansion", "abs_error"])


# --------------------------------------------------------------------------- popularity gap
@torch.no_grad()
def popularity_score_gap(user_emb: Tensor, item_emb: Tensor, item_counts: Tensor | np.ndarray,
                         users: Tensor | None = None, head_fraction: float = 0.2) -> float:
    """Mean score of popular items minus mean score of the other items, averaged over users.

    Popular = the head of `head_items` (top ``head_fraction`` of items by training
    count); unpopular = every other item.  For each user u the gap is
    mean_{i∈head} f(u,i) − mean_{i∉head} f(u,i) = u · (mean I_head − mean I_tail),
    so the cost is one matrix-vector product.  Shapes: ``user_emb [n_users, d]``,
    ``item_emb [n_items, d]``, ``item_counts [n_items]``, ``users [b]`` (None = all users).
    """
    mask = head_items(item_counts, head_fraction).to(item_emb.device)
    direction = item_emb[mask].mean(0) - item_emb[~mask].mean(0)  # [d]
    U = user_emb if users is None else user_emb[torch.as_tensor(users, dtype=torch.int64,
                                                                 device=user_emb.device)]
    return float((U @ direction).mean())


# --------------------------------------------------------------------------- the callback
class VarianceTracker:
    """Training callback recording score statistics once per epoch.

    On a fixed, seeded sample of ``n_users_sample`` users (among those with at
    least one training positive) and fixed negatives (``n_neg`` per user, uniform
    with replacement over all items, docs/PROTOCOLS.md §2 ``uniform``), each call records
    one row: ``epoch``; for every ``s`` in `STATS` the mean over users (column
    ``s``) and the median (``s_median``); ``pop_gap`` (`popularity_score_gap` with
    training counts); ``n_users``; ``seconds`` (time spent in the tracker).  With
    ``path`` (a run directory, or a file path ending in ``.csv``) the whole table
    is rewritten atomically to ``variance.csv`` after every epoch.

    Usage: through `analysis.probes.VarianceProbe` (``run_experiment(cfg, out, probes=[VarianceProbe()])``).
    The model must expose ``final_embeddings() -> (U [n_users, d], I [n_items, d])``.
    """

    def __init__(self, dataset_train: Interactions, n_users_sample: int = 512, n_neg: int = 100,
                 seed: int = 0, path: str | Path | None = None, head_fraction: float = 0.2) -> None:
        rng = np.random.default_rng(seed)
        eligible = np.flatnonzero(dataset_train.user_counts() > 0)
        if len(eligible) == 0:
            raise ValueError("VarianceTracker: the training matrix has no interactions")
        k = min(int(n_users_sample), len(eligible))
        self.users = torch.as_tensor(np.sort(rng.choice(eligible, size=k, replace=False)), dtype=torch.int64)
        self.neg_items = torch.as_tensor(rng.integers(0, dataset_train.n_items, size=(k, int(n_neg))),
                                         dtype=torch.int64)
        # the sampled users' positives, flattened once (segment ids + item ids)
        indptr, indices = dataset_train.to_torch("cpu")
        self.seg, self.pos_items, self.counts = _gather_rows(indptr, indices, self.users)
        head = head_items(item_popularity(dataset_train, "trained"), head_fraction)
        # contrast weights: head @ I = mean I_head − mean I_tail
        self.head = torch.where(head, 1.0 / head.sum(), -1.0 / (~head).sum()).to(torch.float32)
        self.path = None if path is None else (Path(path) if str(path).endswith(".csv")
                                               else RunDir(path).table_path("variance"))
        self.rows: list[dict[str, Any]] = []
        self._cache: dict[torch.device, tuple[Tensor, ...]] = {}

    def _on(self, device: torch.device) -> tuple[Tensor, ...]:
        if device not in self._cache:
            self._cache[device] = tuple(t.to(device) for t in (self.users, self.neg_items, self.seg,
                                                                self.pos_items, self.counts))
        return self._cache[device]

    @torch.no_grad()
    def measure(self, U: Tensor, I: Tensor) -> dict[str, float]:
        """The statistics of one epoch from final embeddings ``U [n_users, d]``, ``I [n_items, d]``."""
        users, neg, seg, pos_items, counts = self._on(U.device)
        head = self.head.to(device=I.device, dtype=I.dtype)
        Ub = U[users]
        pos_mean, pos_var = _segment_mean_var(_pair_scores(Ub, I, seg, pos_items), seg, counts)
        neg_var, neg_mean = torch.var_mean(_neg_scores(Ub, I, neg), dim=1, correction=0)
        all_mean, all_var = _all_item_mean_var(Ub, I)
        gap = (Ub @ (head @ I)).mean()
        stats = torch.stack([pos_mean, pos_var, neg_mean, neg_var, all_mean, all_var])  # [6, b]
        means = stats.mean(1)
        medians = stats.to(torch.float64).quantile(0.5, dim=1)
        vals = torch.cat([means.to(torch.float64), medians, gap.to(torch.float64)[None]]).cpu().tolist()  # one sync
        row = {name: vals[k] for k, name in enumerate(STATS)}
        row.update({f"{name}_median": vals[len(STATS) + k] for k, name in enumerate(STATS)})
        row["pop_gap"] = vals[-1]
        return row

    def __call__(self, epoch: int, model: Any, state: dict[str, Any] | None = None) -> None:
        """Record epoch ``epoch`` of ``model`` (``state`` is the trainer's epoch row, unused)."""
        t0 = time.perf_counter()
        U, I = model.final_embeddings()
        row: dict[str, Any] = {"epoch": int(epoch), **self.measure(U.detach(), I.detach())}
        row["n_users"] = int(self.users.shape[0])
        row["seconds"] = time.perf_counter() - t0
        self.rows.append(row)
        if self.path is not None:
            write_csv(self.path, self.to_frame())  # atomic: temp file + os.replace

    def to_frame(self) -> pd.DataFrame:
        """All recorded rows, one per epoch."""
        return pd.DataFrame(self.rows)
