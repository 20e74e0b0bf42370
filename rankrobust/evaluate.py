"""Full-ranking evaluation on the device (docs/PROTOCOLS.md §4).

For every user with a non-empty ground-truth set T_u the evaluator scores all
items, masks the items of the ``exclude`` matrices (training, and validation
when testing) to −inf, takes the top-K once at the largest K and derives every
metric for every K from the resulting hit matrix with cumulative sums:

- Recall@K    = |L ∩ T_u| / |T_u|
- Precision@K = |L ∩ T_u| / K            (K as asked, even when K > n_items)
- NDCG@K      = Σ_{r ≤ K, L_r ∈ T_u} 1/log2(r+1) ÷ Σ_{r ≤ min(K, |T_u|)} 1/log2(r+1)
- Hit@K       = 1 if L ∩ T_u ≠ ∅ else 0
- MRR@K       = 1 / rank of the first hit within K, 0 without a hit

and averages them over the evaluated users (NaN, never 0.0, when there is no
evaluated user: a mean over nobody is undefined). Nothing loops over users in
Python: users go through in chunks of ``chunk_size`` rows, everything stays on
the device, and the results move to the host once at the end.
`ips_metrics` adds inverse-propensity-weighted Recall/NDCG (propensity ∝ pop(i)^γ)
from the same top-K and hits.

Ties between equal scores are broken by ``torch.topk`` (deterministic for a
given device and input). When a user has fewer than K_max unmasked items the
rest of its top-K row is padded with item id −1 (never a hit); consumers of
``EvalResult.topk`` must ignore negative ids (``analysis.fairness`` does).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from rankrobust.data.interactions import Interactions

__all__ = [
    "EvalResult",
    "Evaluator",
    "METRIC_NAMES",
    "ips_metrics",
    "ips_weights",
    "metrics_from_hits",
    "most_popular_baseline",
    "truth_membership",
]

#: metric families computed at every K, in the column order of ``per_user``.
METRIC_NAMES: tuple[str, ...] = ("recall", "precision", "ndcg", "hit", "mrr")


@dataclass
class EvalResult:
    """Outcome of one full-ranking evaluation.

    Attributes:
        metrics: ``{"recall@20": ..., "ndcg@20": ..., "precision@5": ...,
            "hit@10": ..., "mrr@50": ..., "n_users": n_eval}``; means over the
            evaluated users (those with a non-empty truth set); NaN when
            n_eval = 0 (no mean over zero users is reported as 0.0).
        per_user: DataFrame with one row per evaluated user: column ``user``,
            one column per metric (same keys as ``metrics``) and ``n_truth``.
        users: LongTensor [n_eval], evaluated user ids (ascending), on the device.
        topk: LongTensor [n_eval, K_max], recommended item ids best first
            (−1 pads rows with fewer than K_max unmasked items), on the device.
        hits: BoolTensor [n_eval, K_max], ``topk[u, r] ∈ T_u``, on the device.
        n_truth: LongTensor [n_eval], |T_u|, on the device.
        truth: the ground-truth ``Interactions`` the metrics were computed against.
        ks: the cutoffs evaluated.
    """

    metrics: dict[str, float]
    per_user: pd.DataFrame
    users: Tensor
    topk: Tensor
    hits: Tensor
    n_truth: Tensor
    truth: Interactions | None = None
    ks: tuple[int, ...] = field(default=(5, 10, 20, 50))

    @property
    def k_max(self) -> int:
        """Width of the top-K matrix (largest K, clipped to n_items)."""
        return int(self.topk.shape[1])


def _flat_rows(indptr: np.ndarray, indices: np.ndarray, users: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(row position in ``users`` [nnz'], item id [nnz']) of the CSR rows of ``users``.

    Vectorised gather of several CSR rows: ``repeat`` the row position by the
    row length and offset into ``indices``.
    """
    starts = indptr[users]
    lens = indptr[users + 1] - starts
    total = int(lens.sum())
    rows = np.repeat(np.arange(len(users), dtype=np.int64), lens)
    offsets = np.arange(total, dtype=np.int64) - np.repeat(np.cumsum(lens) - lens, lens)
    return rows, indices[np.repeat(starts, lens) + offsets]


def truth_membership(truth_keys: Tensor, n_items: int, users: Tensor, items: Tensor) -> Tensor:
    """Bool [b, k]: is ``items[r, c]`` in the truth row of ``users[r]``?

    ``truth_keys`` is the sorted int64 tensor of global keys ``user * n_items +
    item`` of the truth matrix (CSR order is already sorted). ``users`` [b],
    ``items`` [b, k] (negative ids are never members). One ``searchsorted``.
    """
    if truth_keys.numel() == 0:
        return torch.zeros(items.shape, dtype=torch.bool, device=items.device)
    keys = users.unsqueeze(1) * n_items + items.clamp_min(0)
    pos = torch.searchsorted(truth_keys, keys).clamp_max(truth_keys.numel() - 1)
    return (truth_keys[pos] == keys) & (items >= 0)


def _real_dtype(device: torch.device) -> torch.dtype:
    """float64 where the device supports it (not MPS), else float32."""
    return torch.float32 if device.type == "mps" else torch.float64


def metrics_from_hits(hits: Tensor, n_truth: Tensor, ks: Sequence[int]) -> dict[str, Tensor]:
    """Per-user metrics for every K from a hit matrix, on its device.

    Args:
        hits: Bool [n, K_max], ``hits[u, r]`` = the item at rank r+1 is relevant.
        n_truth: Long [n], |T_u| (> 0).
        ks: cutoffs; a K larger than K_max uses the whole row (Precision still
            divides by K).

    Returns:
        ``{"recall@K": Tensor[n], "precision@K", "ndcg@K", "hit@K", "mrr@K"}``
        for every K, in float64 (float32 on MPS).
    """
    n, k_max = hits.shape
    dt = _real_dtype(hits.device)
    out: dict[str, Tensor] = {}
    if k_max == 0:  # no items at all
        zero = torch.zeros(n, dtype=dt, device=hits.device)
        for k in ks:
            for name in METRIC_NAMES:
                out[f"{name}@{k}"] = zero.clone()
        return out
    h = hits.to(dt)
    ranks = torch.arange(1, k_max + 1, device=hits.device, dtype=dt)
    disc = 1.0 / torch.log2(ranks + 1.0)
    cum_hits = h.cumsum(1)                       # [n, K_max]
    cum_dcg = (h * disc).cumsum(1)               # [n, K_max]
    cum_idcg = disc.cumsum(0)                    # [K_max]
    # first hit rank (0-based), K_max when there is none
    pos = torch.arange(k_max, device=hits.device)
    first = torch.where(hits, pos, torch.full_like(pos, k_max)).amin(1)
    nt = n_truth.to(dt)
    for k in ks:
        kk = min(int(k), k_max)
        hk = cum_hits[:, kk - 1]
        ideal_len = torch.clamp(n_truth, max=kk).clamp_min(1) - 1
        out[f"recall@{k}"] = hk / nt
        out[f"precision@{k}"] = hk / float(k)
        out[f"ndcg@{k}"] = cum_dcg[:, kk - 1] / cum_idcg[ideal_len]
        out[f"hit@{k}"] = (hk > 0).to(dt)
        out[f"mrr@{k}"] = torch.where(first < kk, 1.0 / (first.to(dt) + 1.0), torch.zeros_like(nt))
    return out


class Evaluator:
    """Full-ranking evaluator for one split (built once, reused every epoch).

    Args:
        truth: ground truth (validation or test) ``Interactions``; the
            evaluated users are those with a non-empty row.
        exclude: matrices whose items are masked to −inf before ranking
            (training; training and validation when testing). Same shape.
        ks: cutoffs; metrics for all of them come from one top-K at max(ks)
            (clipped to n_items).
        chunk_size: users scored per step (memory ≈ chunk_size × n_items scores).
        device: where scoring and all metric computation happen.

    ``n_eval`` is the number of evaluated users, ``n_rankable`` those of them
    with at least one truth item outside the ``exclude`` matrices (a user whose
    truth items are all masked can never score a hit).
    """

    def __init__(
        self,
        truth: Interactions,
        exclude: Sequence[Interactions] = (),
        ks: Sequence[int] = (5, 10, 20, 50),
        chunk_size: int = 4096,
        device: torch.device | str = "cpu",
    ) -> None:
        ks = tuple(sorted({int(k) for k in ks}))
        if not ks or ks[0] < 1:
            raise ValueError(f"ks must be positive integers, got {ks}")
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
        if isinstance(exclude, Interactions):
            exclude = (exclude,)
        for ex in exclude:
            if ex.shape != truth.shape:
                raise ValueError(f"exclude matrix has shape {ex.shape}, truth has {truth.shape}")
        self.truth = truth
        self.ks = ks
        self.chunk_size = int(chunk_size)
        self.device = torch.device(device)
        self.n_users, self.n_items = truth.shape
        self.k_max = min(ks[-1], self.n_items)

        counts = truth.user_counts()
        users = np.flatnonzero(counts > 0).astype(np.int64)
        self._users_np = users
        self.users = torch.as_tensor(users, device=self.device)
        self.n_truth = torch.as_tensor(counts[users], device=self.device)
        rankable = truth
        for ex in exclude:
            rankable = rankable.difference(ex)
        #: evaluated users with at least one truth item outside the masked ones (the others can never hit)
        self.n_rankable = int(np.count_nonzero(rankable.user_counts()))
        tu, ti = truth.to_pairs()
        self._truth_keys = torch.as_tensor(tu * self.n_items + ti, device=self.device)

        # Masked (row-in-evaluated-users, item) pairs, flattened once; the
        # slice belonging to each chunk is found with host-side offsets, so the
        # chunk loop never has to sync to learn a size.
        rows_l, cols_l = [], []
        for ex in exclude:
            r, c = _flat_rows(ex.indptr, ex.indices, users)
            rows_l.append(r)
            cols_l.append(c)
        rows = np.concatenate(rows_l) if rows_l else np.zeros(0, np.int64)
        cols = np.concatenate(cols_l) if cols_l else np.zeros(0, np.int64)
        order = np.argsort(rows, kind="stable")
        rows, cols = rows[order], cols[order]
        bounds = np.arange(0, len(users) + self.chunk_size, self.chunk_size).clip(max=len(users))
        self._chunks = [(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:]) if b > a]
        self._mask_offsets = np.searchsorted(rows, bounds).astype(np.int64)
        self._mask_rows = torch.as_tensor(rows, device=self.device)
        self._mask_cols = torch.as_tensor(cols, device=self.device)

    @property
    def n_eval(self) -> int:
        """Number of evaluated users (non-empty truth)."""
        return int(len(self._users_np))

    # ------------------------------------------------------------------ api
    @torch.no_grad()
    def evaluate(self, user_emb: Tensor, item_emb: Tensor) -> EvalResult:
        """Rank all items by ``user_emb @ item_emb.T`` and compute all metrics.

        Args:
            user_emb: [n_users, d] user representations (any device; moved).
            item_emb: [n_items, d] item representations.
        Returns:
            ``EvalResult`` (tensors on the evaluator's device).
        """
        if user_emb.shape[0] != self.n_users or item_emb.shape[0] != self.n_items:
            raise ValueError(
                f"embeddings [{user_emb.shape[0]}, ·] × [{item_emb.shape[0]}, ·] do not match "
                f"{self.n_users} users × {self.n_items} items"
            )
        U = user_emb.detach().to(self.device)
        I_t = item_emb.detach().to(self.device).T
        if U.dtype != I_t.dtype:
            dt = torch.promote_types(U.dtype, I_t.dtype)
            U, I_t = U.to(dt), I_t.to(dt)
        return self._run(lambda u: U[u] @ I_t, owned=True)

    @torch.no_grad()
    def evaluate_scores(self, score_fn: Callable[[Tensor], Tensor]) -> EvalResult:
        """Like ``evaluate`` with an arbitrary scorer.

        Args:
            score_fn: maps a LongTensor of user ids [b] (on the device) to a
                float score matrix [b, n_items]; it is not modified in place.
        """
        return self._run(score_fn, owned=False)

    # ------------------------------------------------------------ internals
    def _run(self, score_fn: Callable[[Tensor], Tensor], owned: bool) -> EvalResult:
        topk_l, hits_l = [], []
        for ci, (a, b) in enumerate(self._chunks):
            u = self.users[a:b]
            scores = score_fn(u)
            if scores.shape != (b - a, self.n_items):
                raise ValueError(f"score matrix has shape {tuple(scores.shape)}, expected ({b - a}, {self.n_items})")
            if not scores.is_floating_point():
                scores = scores.float()
            elif not owned:
                scores = scores.clone()
            m0, m1 = self._mask_offsets[ci], self._mask_offsets[ci + 1]
            if m1 > m0:
                scores.index_put_(
                    (self._mask_rows[m0:m1] - a, self._mask_cols[m0:m1]),
                    torch.tensor(float("-inf"), dtype=scores.dtype, device=scores.device),
                )
            vals, idx = torch.topk(scores, self.k_max, dim=1, largest=True, sorted=True)
            valid = vals > float("-inf")
            idx = torch.where(valid, idx, torch.full_like(idx, -1))
            topk_l.append(idx)
            hits_l.append(truth_membership(self._truth_keys, self.n_items, u, idx))
        if topk_l:
            topk = torch.cat(topk_l)
            hits = torch.cat(hits_l)
        else:
            topk = torch.zeros((0, self.k_max), dtype=torch.long, device=self.device)
            hits = torch.zeros((0, self.k_max), dtype=torch.bool, device=self.device)
        per = metrics_from_hits(hits, self.n_truth, self.ks)
        # one transfer to the host
        names = list(per)
        mat = torch.stack([per[n] for n in names], 1).cpu().numpy().astype(np.float64) if names else None
        df = pd.DataFrame(mat, columns=names)
        df.insert(0, "user", self._users_np)
        df["n_truth"] = self.n_truth.cpu().numpy()
        # a mean over zero users is undefined: NaN (JSON null in metrics.json), never a 0.0 that reads as a result
        metrics = {n: (float(df[n].mean()) if len(df) else float("nan")) for n in names}
        metrics["n_users"] = float(self.n_eval)
        return EvalResult(metrics, df, self.users, topk, hits, self.n_truth, self.truth, self.ks)


def ips_weights(popularity: np.ndarray, gamma: float) -> np.ndarray:
    """Inverse-propensity weights [n_items] in float64: w_i = 1 / p_i with p_i = max(pop_i, 1)^γ.

    ``popularity`` is each item's training interaction count (floored at 1, so an
    item absent from training is weighted like one seen once).  Only ratios matter:
    `ips_metrics` normalises per user.
    """
    if gamma < 0 or not np.isfinite(gamma):
        raise ValueError(f"gamma must be finite and >= 0, got {gamma}")
    return np.maximum(np.asarray(popularity, dtype=np.float64), 1.0) ** (-float(gamma))


def ips_metrics(result: EvalResult, popularity: np.ndarray, gamma: float,
                ks: Sequence[int] | None = None) -> dict[str, float]:
    """Inverse-propensity-weighted Recall@K and NDCG@K of an evaluation → ``{"ips_recall@K", "ips_ndcg@K"}``.

    Propensity p_i ∝ pop(i)^γ (docs/PROTOCOLS.md §11), weight w_i = 1/p_i (`ips_weights`).
    For user u with truth T_u and top-K list L (the evaluation's own ``topk``/``hits``):

    - IPS-Recall@K(u) = Σ_{i ∈ L ∩ T_u} w_i / Σ_{i ∈ T_u} w_i
    - IPS-NDCG@K(u)   = Σ_{r ≤ K, L_r ∈ T_u} w_{L_r} / log₂(r+1) ÷ IDCG_w@K(u), the
      ideal placing T_u's largest weights first: Σ_{r ≤ min(K, |T_u|)} w_(r) / log₂(r+1)

    (per-user self-normalised, so the scale of p does not matter and γ = 0 gives
    exactly Recall@K and NDCG@K); averaged over the evaluated users like the plain
    metrics.  Vectorised: the hit part on the evaluation's device, the per-user
    denominators with one sort and ``bincount`` over the truth pairs on the host.
    ``ks`` defaults to the evaluation's cutoffs.
    """
    ks = tuple(result.ks if ks is None else ks)
    users = result.users.cpu().numpy()
    n = len(users)
    if n == 0 or result.truth is None:
        return {f"ips_{m}@{k}": float("nan") for k in ks for m in ("recall", "ndcg")}
    w = ips_weights(popularity, gamma)
    device = result.topk.device
    dt = _real_dtype(device)
    k_max = result.k_max
    # numerators: weights of the hits, by rank
    w_dev = torch.as_tensor(w, dtype=dt, device=device)
    hit_w = torch.where(result.hits, w_dev[result.topk.clamp_min(0)], torch.zeros((), dtype=dt, device=device))
    disc = 1.0 / torch.log2(torch.arange(2, k_max + 2, device=device, dtype=dt))
    cum_w = hit_w.cumsum(1).cpu().numpy().astype(np.float64) if k_max else np.zeros((n, 0))
    cum_dcg = (hit_w * disc).cumsum(1).cpu().numpy().astype(np.float64) if k_max else np.zeros((n, 0))
    # denominators: each user's truth weights, sorted descending within the user
    rows, items = _flat_rows(result.truth.indptr, result.truth.indices, users)
    tw = w[items]
    order = np.lexsort((-tw, rows))
    rows, tw = rows[order], tw[order]
    starts = np.searchsorted(rows, np.arange(n))
    rank = np.arange(len(rows)) - starts[rows]
    total = np.bincount(rows, weights=tw, minlength=n)
    disc_np = 1.0 / np.log2(np.arange(2, max(k_max, 1) + 2, dtype=np.float64))
    out: dict[str, float] = {}
    for k in ks:
        kk = min(int(k), k_max)
        inside = rank < kk
        idcg = np.bincount(rows[inside], weights=tw[inside] * disc_np[rank[inside]], minlength=n)
        hit_sum = cum_w[:, kk - 1] if kk else np.zeros(n)
        dcg = cum_dcg[:, kk - 1] if kk else np.zeros(n)
        out[f"ips_recall@{k}"] = float(np.mean(hit_sum / total))
        out[f"ips_ndcg@{k}"] = float(np.mean(np.divide(dcg, idcg, out=np.zeros(n), where=idcg > 0)))
    return out


def most_popular_baseline(train: Interactions, dtype: torch.dtype = torch.float64) -> tuple[Tensor, Tensor]:
    """Embeddings (U [n_users, 1], I [n_items, 1]) ranking items by training popularity.

    ``U`` is all ones and ``I`` the training interaction count of each item plus
    a tie-break ``(n_items − 1 − id) / n_items`` < 1, so ``U @ I.T`` orders items
    by popularity, equal counts by ascending id. Exact in float64 (the default)
    up to 2^53 / n_items interactions per item; pass ``dtype=torch.float32`` for
    devices without float64 (ties may then be broken by ``torch.topk``).
    """
    counts = torch.as_tensor(train.item_counts(), dtype=torch.float64)
    n = train.n_items
    tie = (n - 1 - torch.arange(n, dtype=torch.float64)) / max(n, 1)
    I = (counts + tie).to(dtype).unsqueeze(1)
    U = torch.ones(train.n_users, 1, dtype=dtype)
    return U, I
