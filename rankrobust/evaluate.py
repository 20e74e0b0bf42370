"""Full-ranking evaluation on the device (docs/PROTOCOLS.md §4).

For every evaluated user (a non-empty ground-truth set T_u) the evaluator
scores all items, sets the items of the ``exclude`` matrices (training, and
validation when testing) to −∞, takes the top K once at the largest K and
derives every metric for every K from the resulting hit matrix with
cumulative sums:

- Recall@K    = |L ∩ T_u| / |T_u|
- Precision@K = |L ∩ T_u| / K            (K as asked, even when K > n_items)
- NDCG@K      = Σ_{r ≤ K, L_r ∈ T_u} d_r ÷ Σ_{r ≤ min(K, |T_u|)} d_r, d_r = 1/log2(r+1) (`ndcg_discount`)
- Hit@K       = 1 if L ∩ T_u ≠ ∅ else 0
- MRR@K       = 1 / rank of the first hit within K, 0 without a hit

and averages them over the evaluated users (NaN, never 0.0, when there is no
evaluated user: a mean over nobody is undefined).
The metrics are entries of the registry `rankrobust.metrics` (the formulas and
`metrics_from_hits` live there); `ips_metrics` adds inverse-propensity-weighted
Recall/NDCG (propensity ∝ pop(i)^γ) from the same top-K and hits.

**The ranking.** Items are ordered by score, descending; equal scores by
ascending item id (the order of a stable full sort, which is what the tests'
brute-force oracle does).  −∞ (masked) items are never listed: a user with
fewer than K_max unmasked items gets its top-K row padded with item id −1
(never a hit; consumers of ``EvalResult.topk`` ignore negative ids, as
``analysis.fairness`` does).  A NaN score counts as −∞ (a diverged model's
NaN items are not recommended).

**Deterministic.** The same embeddings give bit-identical metrics whatever
the chunk size, the thread count or the grouping below.  Three things make
it so: every score comes from a matrix product of one fixed shape
(`BLOCK_ROWS` users × all items; a user always sits in the same block, and
MKL's sgemm sums in another order for some row counts, e.g. a one-row
chunk's matrix-vector path: the summation order of a score would otherwise
depend on the chunk size); the ranking rule above is a total order, so which
tied item `torch.topk` happens to return never matters; and the means over
users are exactly rounded sums (`math.fsum`), independent of the order in
which users are added.  (Across thread counts MKL's product of one shape was
bit-identical in every test, tests/test_evaluate_fast.py; BLAS libraries do
not promise it.)

**How it runs near the speed of its matrix product.** Users go through in
chunks of rows (``chunk_size`` at most; fewer when the device's memory, on a
CPU its per-core cache, says so: `chunk_rows`), each chunk's scores written into one
reused [rows × n_items] buffer.  Masked items are set to −∞ in place by their
precomputed flat offsets (no dense boolean mask).  The top K of a row is
found without sorting or scanning the row a second time: the items are cut
into G strided groups of g (item j in group j mod G), the row's G group
maxima (one elementwise max over g slices) pick the K groups with the largest
maxima, and the top K of the row lies within those K·g items, provided the
K-th and (K+1)-th group maxima differ (otherwise a group outside could hold an
item tied with the K-th).  One `torch.topk` over the K·g candidates then gives
the list.  A row with a tie at the group boundary or anywhere among its K + 1
best candidates (exactly equal scores; a user with fewer than K + 1 unmasked
items) is flagged and ranked again after the chunk loop by the exact
tie-resolving path (`_exact_top`: the K-th value, then the lowest ids among
the items equal to it, then the list ordered by score and id).  Nothing
leaves the device inside the chunk loop; the flags, and then the per-user
metrics, move to the host once each at the end.

Users: every user with a non-empty truth row, or those of an explicit
``users`` list (`sample_users`: validation on a fixed, seeded sample,
``train.valid_users``); test metrics always use every user.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from rankrobust.data.interactions import Interactions
from rankrobust.data.popularity import item_popularity
from rankrobust.metrics import HIT_METRICS, compute_metrics, csr_rows, metric_inputs, metrics_from_hits

__all__ = [
    "EvalResult",
    "Evaluator",
    "METRIC_NAMES",
    "chunk_rows",
    "default_group_size",
    "ips_metrics",
    "ips_weights",
    "metrics_from_hits",
    "most_popular_baseline",
    "sample_users",
    "truth_membership",
]

#: metric families the evaluator computes at every K, in the column order of ``per_user`` (`rankrobust.metrics`)
METRIC_NAMES: tuple[str, ...] = HIT_METRICS


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
        topk: LongTensor [n_eval, K_max], recommended item ids best first, equal
            scores by ascending id (−1 pads rows with fewer than K_max unmasked
            items), on the device.
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


#: seed stream of `sample_users` (numpy ``default_rng([seed, VALID_SAMPLE_STREAM])``), apart from the other
#: draws made with the same seed (the validation split itself uses ``default_rng(seed)``)
VALID_SAMPLE_STREAM = 1


def sample_users(truth: Interactions, n: int, seed: int) -> np.ndarray:
    """Sorted ids of ``n`` users drawn uniformly without replacement among those with a non-empty row of ``truth``.

    All such users (sorted) when there are at most ``n``.  The draw depends
    only on ``truth``'s non-empty rows, ``n`` and ``seed`` (numpy
    ``default_rng([seed, VALID_SAMPLE_STREAM])``), so every run that validates on the same split
    with the same ``n`` and ``seed`` uses the same users.  ValueError when ``n`` < 1.
    """
    if n < 1:
        raise ValueError(f"a user sample needs n >= 1, got {n}")
    users = np.flatnonzero(truth.user_counts() > 0).astype(np.int64)
    if len(users) <= n:
        return users
    rng = np.random.default_rng([int(seed), VALID_SAMPLE_STREAM])
    return np.sort(rng.choice(users, size=int(n), replace=False))


#: bytes of one evaluation chunk's score buffer on a CPU per intra-op thread, in units of the per-core L2 cache
#: (2-core development machine, yelp2018, one thread: chunks of 64 to 256 users ran alike, 2.1 s, 512 users
#: took 2.5 s and 1,024 users 3.1 s: a larger buffer leaves the cache between the product and the top-K)
CPU_CACHE_SHARE = 4
#: share of a GPU's total memory one evaluation chunk's score buffer may take
GPU_MEMORY_SHARE = 0.05
#: rows of every matrix product of the evaluation: chunks are whole numbers of such blocks, and a user's scores
#: always come from the same [BLOCK_ROWS × d] × [d × n_items] call, whatever the chunk size.  (MKL's sgemm
#: sums in another order for some row counts, e.g. one row (its matrix-vector path) or three.)
BLOCK_ROWS = 64


def _l2_cache_bytes() -> int:
    """Per-core L2 cache of this machine in bytes (Linux sysfs; 1 MiB when unknown)."""
    root = Path("/sys/devices/system/cpu/cpu0/cache")
    try:
        for index in sorted(root.glob("index*")):
            if (index / "level").read_text().strip() == "2":
                text = (index / "size").read_text().strip().upper()
                scale = {"K": 1024, "M": 1024 ** 2, "G": 1024 ** 3}.get(text[-1:], 1)
                return int(text.rstrip("KMG")) * scale
    except (OSError, ValueError):
        pass
    return 1024 ** 2


def chunk_rows(row_bytes: int, device: torch.device | str, cap: int) -> int:
    """Users per evaluation chunk: a whole number of `BLOCK_ROWS` blocks, as many as the device's memory suits.

    ``row_bytes``: bytes of one user's row of scores; ``cap``: the most users
    wanted (``train.eval_chunk``), rounded down to whole blocks (one block at
    least).  On a CPU the chunk's score buffer is sized to stay in cache
    between the matrix product and the top-K: `CPU_CACHE_SHARE` × the
    per-core L2 cache × the intra-op threads (each thread works on its share
    of the rows), to the nearest whole block; on a GPU to `GPU_MEMORY_SHARE`
    of its *total* memory (not the free memory, which changes from call to
    call).  The choice never changes a result (the evaluation is
    bit-identical for every chunk size), only its speed.
    """
    device = torch.device(device)
    if device.type == "cuda":
        budget = GPU_MEMORY_SHARE * torch.cuda.get_device_properties(device).total_memory
    else:
        budget = CPU_CACHE_SHARE * _l2_cache_bytes() * torch.get_num_threads()
    blocks = max(1, round(budget / max(int(row_bytes), 1) / BLOCK_ROWS))
    return BLOCK_ROWS * min(blocks, max(1, int(cap) // BLOCK_ROWS))


def default_group_size(n_items: int, k: int) -> int:
    """Items per group of the grouped top-K (1: no grouping, rank whole rows).

    With G = ⌈n/g⌉ groups of g the top-K costs about G (group maxima) + K·g
    (candidates) elements per row, least near g = √(n / K); grouping needs
    G ≥ K + 1 group maxima (to see a tie at the K-th) and g ≥ 2.
    """
    if k < 1:
        return 1
    g = int(round(math.sqrt(n_items / (k + 1))))
    return g if g >= 2 and -(-n_items // g) >= k + 1 else 1


def _exact_top(scores: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """Top ``k`` of each row of ``scores`` [r, m] under (score desc, column asc): (values [r, k], columns [r, k]).

    Exact whatever the ties: the k-th largest value v comes from `torch.topk`
    (its values are exact, only its choice among equal ones is not).  Every
    column with a score > v (fewer than k) must be taken, then the lowest
    columns with a score = v: one integer key per column, 2m − column above
    v, m − column at v, 0 below, whose k largest are exactly those columns.
    The k chosen are then ordered by `_by_score_then_id`.  A few passes over
    the rows: used for small catalogues and for the rows the grouped path flags.
    """
    m = scores.shape[1]
    v = torch.topk(scores, k, dim=1, largest=True, sorted=True).values[:, k - 1:k]
    reverse = torch.arange(m, 0, -1, dtype=torch.int32, device=scores.device)   # m − column
    key = torch.where(scores > v, reverse + m, torch.where(scores == v, reverse, 0))
    top = torch.topk(key, k, dim=1, largest=True, sorted=True).values.long()
    cols = torch.where(top > m, 2 * m - top, m - top)
    return _by_score_then_id(scores.gather(1, cols), cols)


def _by_score_then_id(values: Tensor, ids: Tensor) -> tuple[Tensor, Tensor]:
    """``values`` [r, k] and their ``ids`` [r, k] reordered by (value desc, id asc) within each row."""
    ids, by_id = torch.sort(ids, dim=1)
    values, order = torch.sort(values.gather(1, by_id), dim=1, descending=True, stable=True)
    return values, ids.gather(1, order)


class Evaluator:
    """Full-ranking evaluator for one split (built once, reused every epoch).

    Args:
        truth: ground truth (validation or test) ``Interactions``; the
            evaluated users are those with a non-empty row (of ``users``, when given).
        exclude: matrices whose items are masked to −∞ before ranking
            (training; training and validation when testing). Same shape.
        ks: cutoffs; metrics for all of them come from one top-K at max(ks)
            (clipped to n_items).
        chunk_size: the most users scored per step; fewer when the device's
            memory says so (`chunk_rows`).  Results never depend on it.
        device: where scoring and all metric computation happen.
        users: evaluate only these user ids (a validation sample, `sample_users`);
            None: every user.  Out-of-range ids: ValueError.
        group_size: items per group of the grouped top-K (None: `default_group_size`
            of n_items and K; 1: rank whole rows).  Results never depend on it.

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
        users: Sequence[int] | np.ndarray | None = None,
        group_size: int | None = None,
    ) -> None:
        ks = tuple(sorted({int(k) for k in ks}))
        if not ks or ks[0] < 1:
            raise ValueError(f"ks must be positive integers, got {ks}")
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
        if group_size is not None and group_size < 1:
            raise ValueError(f"group_size must be >= 1, got {group_size}")
        if isinstance(exclude, Interactions):
            exclude = (exclude,)
        for ex in exclude:
            if ex.shape != truth.shape:
                raise ValueError(f"exclude matrix has shape {ex.shape}, truth has {truth.shape}")
        self.truth = truth
        self.ks = ks
        self.device = torch.device(device)
        self.n_users, self.n_items = truth.shape
        self.k_max = min(ks[-1], self.n_items)

        counts = truth.user_counts()
        if users is None:
            chosen = np.arange(self.n_users, dtype=np.int64)
        else:
            chosen = np.unique(np.asarray(users, dtype=np.int64))
            if len(chosen) and (chosen[0] < 0 or chosen[-1] >= self.n_users):
                raise ValueError(f"users must be ids in [0, {self.n_users}), got {chosen[0]}..{chosen[-1]}")
        users_np = chosen[counts[chosen] > 0]
        self._users_np = users_np
        self.users = torch.as_tensor(users_np, device=self.device)
        self.n_truth = torch.as_tensor(counts[users_np], device=self.device)
        rankable = truth
        for ex in exclude:
            rankable = rankable.difference(ex)
        #: evaluated users with at least one truth item outside the masked ones (the others can never hit)
        self.n_rankable = int(np.count_nonzero(rankable.user_counts()[users_np]))
        tu, ti = truth.to_pairs()
        self._truth_keys = torch.as_tensor(tu * self.n_items + ti, device=self.device)

        # the grouped top-K's layout: item j sits in group j mod G; the row is padded to g·G columns (−∞)
        g = group_size if group_size is not None else default_group_size(self.n_items, self.k_max)
        if g > 1 and not (-(-self.n_items // g) >= self.k_max + 1 and self.k_max >= 1):
            g = 1  # too few groups to see a tie at the K-th: rank whole rows
        self.group = int(g)
        self.n_groups = -(-self.n_items // self.group) if self.n_items else 0
        self.n_cols = self.group * self.n_groups
        n_eval = len(users_np)
        #: rows per chunk: whole `BLOCK_ROWS` blocks; the last chunk is padded (with the last user) to whole blocks
        self.chunk_size = min(chunk_rows(self.n_cols * 4, self.device, chunk_size),
                              BLOCK_ROWS * max(1, -(-n_eval // BLOCK_ROWS)))
        self._users_padded = torch.as_tensor(
            np.concatenate([users_np, np.repeat(users_np[-1:], (-n_eval) % BLOCK_ROWS)]) if n_eval else users_np,
            device=self.device)
        bounds = list(range(0, n_eval, self.chunk_size)) + [n_eval]
        self._chunks = [(a, b) for a, b in zip(bounds[:-1], bounds[1:])]

        # masked (evaluated-user position, item) pairs, sorted by position: the CSR rows of the evaluated users
        pos_l, item_l = [], []
        for ex in exclude:
            r, c = csr_rows(ex.indptr, ex.indices, users_np)
            pos_l.append(r)
            item_l.append(c)
        pos = np.concatenate(pos_l) if pos_l else np.zeros(0, np.int64)
        items = np.concatenate(item_l) if item_l else np.zeros(0, np.int64)
        order = np.argsort(pos, kind="stable")
        self._mask_pos, self._mask_items = pos[order], items[order]
        # each chunk's slice of them as flat offsets into its [rows × n_cols] buffer, found without a sync
        self._mask_offsets = np.searchsorted(self._mask_pos, [a for a, _ in self._chunks] + [n_eval]).astype(np.int64)
        flat = (self._mask_pos % self.chunk_size) * self.n_cols + self._mask_items
        self._mask_flat = torch.as_tensor(flat, device=self.device)

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
        I = item_emb.detach().to(self.device)
        dtype = torch.promote_types(U.dtype, I.dtype)
        if not dtype.is_floating_point:
            dtype = torch.float32
        U = U.to(dtype)
        # the items' transpose padded to n_cols columns with zeros (their scores are set to −∞ after the product)
        items_t = torch.zeros((I.shape[1], self.n_cols), dtype=dtype, device=self.device)
        items_t[:, :self.n_items] = I.T
        # scores can only be NaN or ±∞ from non-finite embeddings or an overflowing product: one check, here
        big = torch.finfo(dtype).max
        finite = bool(torch.isfinite(U).all() & torch.isfinite(I).all()) and (
            float(U.abs().amax()) * float(I.abs().amax()) * max(U.shape[1], 1) < big if U.numel() and I.numel()
            else True)

        def scores(rows: Tensor, out: Tensor) -> None:
            for r in range(0, rows.shape[0], BLOCK_ROWS):  # the same [BLOCK_ROWS × d] × [d × n_cols] call each time
                torch.mm(U.index_select(0, rows[r:r + BLOCK_ROWS]), items_t, out=out[r:r + BLOCK_ROWS])

        return self._run(scores, dtype, clean=not finite)

    @torch.no_grad()
    def evaluate_scores(self, score_fn: Callable[[Tensor], Tensor]) -> EvalResult:
        """Like ``evaluate`` with an arbitrary scorer.

        Args:
            score_fn: maps a LongTensor of user ids [b] (on the device) to a
                score matrix [b, n_items]; it is not modified.  Scores are
                ranked in float64 (exact for float32, float16, bfloat16 and
                integers below 2^53).
        """
        def scores(rows: Tensor, out: Tensor) -> None:
            s = score_fn(rows)
            if tuple(s.shape) != (rows.shape[0], self.n_items):
                raise ValueError(f"score matrix has shape {tuple(s.shape)}, expected ({rows.shape[0]}, {self.n_items})")
            out[:, :self.n_items] = s

        return self._run(scores, torch.float64, clean=True)

    # ------------------------------------------------------------ internals
    def _masked_scores(self, scores: Callable[[Tensor, Tensor], None], rows: Tensor, flat: Tensor, buf: Tensor,
                       clean: bool) -> Tensor:
        """``buf`` [rows, n_cols] filled with the scores of ``rows``: masked items at ``flat`` and padding −∞."""
        scores(rows, buf)
        if clean:
            torch.nan_to_num_(buf, nan=-math.inf, posinf=math.inf, neginf=-math.inf)
        buf.view(-1).index_fill_(0, flat, -math.inf)
        if self.n_cols > self.n_items:
            buf[:, self.n_items:] = -math.inf
        return buf

    def _top(self, buf: Tensor) -> tuple[Tensor, Tensor, Tensor | None]:
        """Top ``k_max`` of each row of the masked ``buf``: (values, item ids, tied-boundary flags or None)."""
        k, g, G = self.k_max, self.group, self.n_groups
        if g == 1:
            values, ids = _exact_top(buf, k)
            return values, ids, None
        rows = buf.shape[0]
        strided = buf.view(rows, g, G)                      # [r, t, j] = item t·G + j
        group_val, group_ids = torch.topk(strided.amax(1), k + 1, dim=1, largest=True, sorted=True)
        groups = group_ids[:, :k]
        candidates = torch.gather(strided, 2, groups.unsqueeze(1).expand(rows, g, k)).reshape(rows, g * k)
        cand_val, cand_pos = torch.topk(candidates, k + 1, dim=1, largest=True, sorted=True)
        # a tie anywhere in the list or at its boundary (equal neighbours among the K + 1 best): ranked again
        tied = (group_val[:, k - 1] == group_val[:, k]) | (cand_val[:, 1:] == cand_val[:, :-1]).any(1)
        pos = cand_pos[:, :k]
        ids = torch.div(pos, k, rounding_mode="floor") * G + groups.gather(1, pos % k)
        return cand_val[:, :k], ids, tied

    def _run(self, scores: Callable[[Tensor, Tensor], None], dtype: torch.dtype, clean: bool) -> EvalResult:
        n_eval, k, c = self.n_eval, self.k_max, self.chunk_size
        topk = torch.full((n_eval, k), -1, dtype=torch.long, device=self.device)
        hits = torch.zeros((n_eval, k), dtype=torch.bool, device=self.device)
        if n_eval and k:
            buf = torch.empty((c, self.n_cols), dtype=dtype, device=self.device)
            tied = torch.zeros(n_eval, dtype=torch.bool, device=self.device) if self.group > 1 else None
            for ci, (a, b) in enumerate(self._chunks):
                m0, m1 = self._mask_offsets[ci], self._mask_offsets[ci + 1]
                rows = self._users_padded[a:a + c]                  # whole blocks (the last chunk may be shorter)
                masked = self._masked_scores(scores, rows, self._mask_flat[m0:m1], buf[:rows.shape[0]], clean)
                values, ids, flags = self._top(masked)
                self._store(topk, hits, a, b, values, ids)
                if flags is not None:
                    tied[a:b] = flags[:b - a]
            if tied is not None:
                self._rank_again(torch.nonzero(tied).squeeze(1).cpu().numpy(), scores, buf, clean, topk, hits)
        per = metrics_from_hits(hits, self.n_truth, self.ks)
        # one transfer to the host
        names = list(per)
        mat = torch.stack([per[n] for n in names], 1).cpu().numpy().astype(np.float64) if names else None
        df = pd.DataFrame(mat, columns=names)
        df.insert(0, "user", self._users_np)
        df["n_truth"] = self.n_truth.cpu().numpy()
        # exactly rounded means (math.fsum): the same bits in whatever order the users are added; a mean over zero
        # users is undefined: NaN (JSON null in metrics.json), never a 0.0 that reads as a result
        metrics = {n: (math.fsum(df[n].to_numpy()) / len(df) if len(df) else float("nan")) for n in names}
        metrics["n_users"] = float(n_eval)
        return EvalResult(metrics, df, self.users, topk, hits, self.n_truth, self.truth, self.ks)

    def _store(self, topk: Tensor, hits: Tensor, a: int, b: int, values: Tensor, ids: Tensor) -> None:
        """Write the ranked ``ids`` of evaluated users a..b (−1 where the score is −∞) and their hits."""
        ids = torch.where(values[:b - a] > -math.inf, ids[:b - a], -1)
        topk[a:b] = ids
        hits[a:b] = truth_membership(self._truth_keys, self.n_items, self.users[a:b], ids)

    def _rank_again(self, positions: np.ndarray, scores: Callable[[Tensor, Tensor], None], buf: Tensor, clean: bool,
                    topk: Tensor, hits: Tensor) -> None:
        """Rank the evaluated users at ``positions`` (flagged ties) again by `_exact_top`.

        Their scores are computed again by the same `BLOCK_ROWS` blocks as in the chunk loop (the whole block
        of each, ``buf``'s rows at a time), so they are the very scores the loop ranked.
        """
        T = BLOCK_ROWS
        blocks = np.unique(positions // T)
        per_fill = buf.shape[0] // T
        for f in range(0, len(blocks), per_fill):
            chosen = blocks[f:f + per_fill]
            first = chosen * T                                       # position of each block's first row
            rows = (first[:, None] + np.arange(T)).ravel()           # positions in the padded user list
            lo, hi = np.searchsorted(self._mask_pos, first), np.searchsorted(self._mask_pos, first + T)
            lens = hi - lo
            which = np.repeat(lo, lens) + (np.arange(lens.sum()) - np.repeat(np.cumsum(lens) - lens, lens))
            slot = np.repeat(np.arange(len(chosen)) * T - first, lens) + self._mask_pos[which]  # row in buf
            flat = slot * self.n_cols + self._mask_items[which]
            masked = self._masked_scores(scores, self._users_padded[torch.as_tensor(rows, device=self.device)],
                                         torch.as_tensor(flat, device=self.device), buf[:len(rows)], clean)
            wanted = positions[np.isin(positions // T, chosen)]
            local = np.searchsorted(chosen, wanted // T) * T + wanted % T
            values, ids = _exact_top(masked.index_select(0, torch.as_tensor(local, device=self.device)), self.k_max)
            index = torch.as_tensor(wanted, device=self.device)
            ids = torch.where(values > -math.inf, ids, -1)
            topk[index] = ids
            hits[index] = truth_membership(self._truth_keys, self.n_items, self.users[index], ids)


def ips_weights(popularity: np.ndarray, gamma: float) -> np.ndarray:
    """Inverse-propensity weights [n_items] in float64: w_i = 1 / p_i with p_i = max(pop_i, 1)^γ.

    ``popularity`` is each item's training interaction count, `item_popularity`
    variant ``"clean"`` (the clean training split: what a practitioner observes),
    floored at 1 so an item absent from training is weighted like one seen once.  Only ratios matter:
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
    metrics (exactly rounded).  The registered metrics ``ips_recall`` / ``ips_ndcg``
    of `rankrobust.metrics` compute them (per user); ``ks`` defaults to the
    evaluation's cutoffs.
    """
    ks = tuple(result.ks if ks is None else ks)
    if len(result.users) == 0 or result.truth is None:
        return {f"ips_{m}@{k}": float("nan") for k in ks for m in ("recall", "ndcg")}
    inputs = metric_inputs(result, propensity=ips_weights(popularity, gamma))
    means, _ = compute_metrics(inputs, ks, only=("ips_recall", "ips_ndcg"))
    return {f"ips_{m}@{k}": means[f"ips_{m}@{k}"] for k in ks for m in ("recall", "ndcg")}


def most_popular_baseline(train: Interactions, dtype: torch.dtype = torch.float64) -> tuple[Tensor, Tensor]:
    """Embeddings (U [n_users, 1], I [n_items, 1]) ranking items by training popularity.

    ``train`` is the matrix evaluation masks as seen (clean ∪ injected noisy
    positives), counted by `item_popularity` variant ``"seen"`` (docs/PROTOCOLS.md §4).
    ``U`` is all ones and ``I`` the interaction count of each item plus
    a tie-break ``(n_items − 1 − id) / n_items`` < 1, so ``U @ I.T`` orders items
    by popularity, equal counts by ascending id. Exact in float64 (the default)
    up to 2^53 / n_items interactions per item; pass ``dtype=torch.float32`` for
    devices without float64 (where the tie-break rounds away, the evaluator ranks equal
    scores by ascending id itself: the same order).
    """
    counts = torch.as_tensor(item_popularity(train, "seen"), dtype=torch.float64)
    n = train.n_items
    tie = (n - 1 - torch.arange(n, dtype=torch.float64)) / max(n, 1)
    I = (counts + tie).to(dtype).unsqueeze(1)
    U = torch.ones(train.n_users, 1, dtype=dtype)
    return U, I
