"""Negative samplers, vectorised on the training device (docs/PROTOCOLS.md §2, §3).

Every sampler is a callable::

    sampler(users: LongTensor[B], pos_items: LongTensor[B], generator: torch.Generator) -> LongTensor[B, M]

returning item ids on the users' device.  All randomness comes from the
explicit ``generator`` (which must live on the same device as the data), so the
same generator seed on the same device gives the same draws.  Nothing is
synchronised with or recorded on the host per batch.

Each sampler has a ``name`` and a ``num_negatives`` (M; ``None`` for
``in_batch``, where M = B).  Each is registered once in ``SAMPLERS`` with its
options (``num_negatives``; ``pop_alpha`` for ``popularity``; none for
``in_batch``); ``build_sampler`` makes one from a name and options.

Trade-offs:

- ``uniform`` is the authors' default: cheapest, but a negative is a training
  positive of the user with probability |P_u| / n_items (an implicit false
  negative rate).
- ``uniform_exclude`` is exactly uniform over the items the user has not
  interacted with in training, at the cost of one ``searchsorted`` per draw.
- ``popularity`` draws ∝ count^α (harder negatives, popularity-debiasing
  studies).
- ``in_batch`` reuses the batch's positives (no extra item embeddings, popular
  items sampled ∝ popularity).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch
from torch import Tensor

from rankrobust.data.interactions import Interactions
from rankrobust.data.popularity import item_popularity
from rankrobust.registry import NoOptions, Registry, non_negative, option, positive, uniform

__all__ = [
    "UniformSampler",
    "UniformExcludeSampler",
    "PopularitySampler",
    "InBatchSampler",
    "AllItemsSampler",
    "negative_kind",
    "FalseNegativeMixer",
    "sample_with_fn_mask",
    "SAMPLERS",
    "build_sampler",
]


def _check_m(num_negatives: int) -> int:
    if isinstance(num_negatives, bool) or not isinstance(num_negatives, (int, np.integer)) or num_negatives <= 0:
        raise ValueError(f"num_negatives must be a positive integer, got {num_negatives!r}")
    return int(num_negatives)


def _uniform_below(high: Tensor, m: int, generator: torch.Generator) -> Tensor:
    """Integers uniform in [0, high_b) for every row: high [B] (>= 1) -> LongTensor [B, m].

    float64 uniforms scaled and floored (resolution 2⁻⁵³, so no visible bias for
    any realistic item count), clamped to high - 1 against rounding.
    """
    u = torch.rand((high.shape[0], m), generator=generator, device=high.device, dtype=torch.float64)
    h = high[:, None]
    return torch.minimum((u * h.to(torch.float64)).to(torch.long), h - 1)


class UniformSampler:
    """M items uniformly at random with replacement from all ``n_items`` items.

    The user's own positives are not excluded (the authors' default, kept for
    reproduction).  Output: LongTensor [B, M] on ``users.device``.
    """

    name = "uniform"
    negatives = "sampled"

    def __init__(self, n_items: int, num_negatives: int) -> None:
        if n_items <= 0:
            raise ValueError(f"n_items must be positive, got {n_items}")
        self.n_items = int(n_items)
        self.num_negatives = _check_m(num_negatives)

    def __call__(self, users: Tensor, pos_items: Tensor, generator: torch.Generator) -> Tensor:
        """Uniform item ids [B, M] on ``users.device``."""
        return torch.randint(0, self.n_items, (users.shape[0], self.num_negatives), generator=generator,
                             device=users.device)

    def __repr__(self) -> str:
        return f"UniformSampler(n_items={self.n_items}, num_negatives={self.num_negatives})"


class UniformExcludeSampler:
    """M items uniform with replacement over the items *not* in the user's training row.

    Rather than redrawing rejected candidates a bounded number of times (which
    can leave positives in the output for dense rows), it draws the rank
    ρ ∈ [0, n_items − |P_u|) of a non-positive item directly and maps it to the
    item id against the user's sorted CSR row: with the row's positives
    p_0 < p_1 < … and a_k = p_k − k (non-positives before p_k), the ρ-th
    non-positive is ρ + #{k : a_k ≤ ρ}.  The counts for all users come from one
    ``searchsorted`` on the single globally sorted key array
    ``user * n_items + a_k``.  This is exactly the distribution of rejection
    sampling run to completion, costs one ``searchsorted`` per draw, has no
    data-dependent loop and can never return a training positive.

    Users who interacted with every item have nothing to sample: construction
    fails with a ValueError naming the first such user.
    """

    name = "uniform_exclude"
    negatives = "sampled"

    def __init__(self, train: Interactions, num_negatives: int, device: torch.device | str = "cpu") -> None:
        self.num_negatives = _check_m(num_negatives)
        self.n_items = int(train.n_items)
        self.n_users = int(train.n_users)
        counts = train.user_counts()
        full = np.flatnonzero(counts >= train.n_items)
        if len(full):
            raise ValueError(
                f"uniform_exclude: user {int(full[0])} has interacted with all {train.n_items} items "
                f"({len(full)} such users), so no negative can be drawn; drop them or use sampler 'uniform'"
            )
        rows = np.repeat(np.arange(train.n_users, dtype=np.int64), counts)
        rank_in_row = np.arange(train.nnz, dtype=np.int64) - train.indptr[rows]
        keys = rows * train.n_items + (train.indices - rank_in_row)  # globally sorted
        self.device = torch.device(device)
        self._keys = torch.as_tensor(keys, device=self.device)
        self._indptr = torch.as_tensor(train.indptr, device=self.device)
        self._free = torch.as_tensor(train.n_items - counts, device=self.device)

    def __call__(self, users: Tensor, pos_items: Tensor, generator: torch.Generator) -> Tensor:
        """Item ids [B, M] on the sampler's device, none of them a training positive of its user."""
        rank = _uniform_below(self._free[users], self.num_negatives, generator)
        query = users[:, None] * self.n_items + rank
        below = torch.searchsorted(self._keys, query, right=True) - self._indptr[users][:, None]
        return rank + below

    def __repr__(self) -> str:
        return f"UniformExcludeSampler(n_items={self.n_items}, num_negatives={self.num_negatives})"


class PopularitySampler:
    """M items with replacement, P(i) ∝ count(i)^α (inverse CDF on the device).

    ``item_counts`` [n_items] are training interaction counts; α >= 0
    (α = 0 is uniform over all items, α > 0 never draws a zero-count item).
    Draws are float64 uniforms looked up in the float64 cumulative weights with
    ``searchsorted`` — O(log n_items) per draw, independent of M.
    """

    name = "popularity"
    negatives = "sampled"

    def __init__(self, item_counts, num_negatives: int, alpha: float = 1.0,
                 device: torch.device | str = "cpu") -> None:
        self.num_negatives = _check_m(num_negatives)
        if not (isinstance(alpha, (int, float)) and np.isfinite(alpha) and alpha >= 0):
            raise ValueError(f"popularity alpha must be a finite number >= 0, got {alpha!r}")
        counts = np.asarray(item_counts, dtype=np.float64)
        if counts.ndim != 1 or len(counts) == 0 or (counts < 0).any():
            raise ValueError("item_counts must be a non-empty 1-d array of non-negative counts")
        weights = np.power(counts, float(alpha))  # 0 ** 0 == 1: alpha = 0 is uniform
        if not weights.sum() > 0:
            raise ValueError("popularity sampler: every item has zero count")
        self.alpha = float(alpha)
        self.n_items = len(counts)
        self.device = torch.device(device)
        self.probs = weights / weights.sum()  # numpy float64 [n_items], for inspection and tests
        cdf = np.cumsum(weights)
        self._total = float(cdf[-1])
        self._cdf = torch.as_tensor(cdf, device=self.device)

    def __call__(self, users: Tensor, pos_items: Tensor, generator: torch.Generator) -> Tensor:
        """Item ids [B, M] on the sampler's device, drawn ∝ count^α."""
        u = torch.rand((users.shape[0], self.num_negatives), generator=generator, device=self._cdf.device,
                       dtype=torch.float64) * self._total
        return torch.searchsorted(self._cdf, u, right=True).clamp_(max=self.n_items - 1)

    def __repr__(self) -> str:
        return f"PopularitySampler(n_items={self.n_items}, num_negatives={self.num_negatives}, alpha={self.alpha})"


class InBatchSampler:
    """The batch's positives are every row's negatives: returns ``pos_items`` broadcast to [B, B].

    Row k holds all B positives of the batch, its own positive i⁺_k included
    (at column k).  The trainer (`rankrobust.train.make_step`) does not treat
    them all as negatives: for every loss it masks the diagonal (row k's own
    positive) and the other positives of row k's user, so the negatives of
    row k are the other users' positives, and ``sl`` is SL over those (at most
    B − 1); the in-batch cross-entropy, with the positive once in the softmax
    normaliser, is ``loss.include_pos=true``.  Other users' positives that the
    user also likes are not removed.  The
    result is a broadcast view (no copy); do not write into it.  No randomness:
    ``generator`` is unused.  ``num_negatives`` is ``None`` (M = B).
    """

    name = "in_batch"
    negatives = "in_batch"
    num_negatives = None

    def __call__(self, users: Tensor, pos_items: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """``pos_items`` [B] broadcast to [B, B] (row k = all the batch's positives)."""
        b = pos_items.shape[0]
        return pos_items[None, :].expand(b, b)

    def __repr__(self) -> str:
        return "InBatchSampler()"


class AllItemsSampler:
    """Every item is a negative of every pair: the exact (full) softmax setting.

    Draws nothing: returns an empty [B, 0] tensor, and the trainer scores the
    batch against the whole catalog (`rankrobust.scoring.score_batch` with
    ``negatives='all'``), leaving out each row's positive and, with
    ``mask_positives``, the user's other training positives.  With it, SL is
    the exact softmax over the catalog (the P_n of the DRO reading, docs/PROTOCOLS.md
    §7) and BSL's negative term its exact log-sum-exp; BPR, BCE, MSE and CCL
    average or sum over all items instead of a sample.  ``num_negatives`` is
    ``None`` (M = n_items).
    """

    name = "full"
    negatives = "all"
    num_negatives = None

    def __init__(self, mask_positives: bool = True) -> None:
        self.mask_positives = bool(mask_positives)

    def __call__(self, users: Tensor, pos_items: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """An empty LongTensor [B, 0] (the negatives are implicit: every item)."""
        return torch.empty((users.shape[0], 0), dtype=torch.long, device=users.device)

    def __repr__(self) -> str:
        return f"AllItemsSampler(mask_positives={self.mask_positives})"


class FalseNegativeMixer:
    """Wraps a sampler: with probability p each negative of user u becomes a draw from u's pool row.

    The replacement is uniform over ``pool`` row u (``indptr[u] + ⌊U·len_u⌋``),
    so with the ``train`` pool it is one of u's own training positives and with
    the ``heldout`` pool one of its held-out positives (docs/PROTOCOLS.md §3).  Users
    with an empty pool row keep the base negative, so the realised rate is
    p · (share of pairs whose user has a non-empty row).  Fully vectorised;
    two extra [B, M] uniform draws per batch when p > 0, none when p = 0
    (then the draws equal the base sampler's exactly).
    """

    def __init__(self, base, pool: Interactions, p: float, device: torch.device | str = "cpu") -> None:
        if not (isinstance(p, (int, float)) and 0.0 <= p <= 1.0):
            raise ValueError(f"false-negative probability must be in [0, 1], got {p!r}")
        if getattr(base, "negatives", "sampled") != "sampled":
            raise ValueError(f"false negatives need a sampled-negative sampler, not {base.name!r}")
        self.base = base
        self.p = float(p)
        self.name = f"{base.name}+fn"
        self.negatives = "sampled"
        self.num_negatives = base.num_negatives
        self.device = torch.device(device)
        indptr, indices = pool.to_torch(self.device)
        self._indptr = indptr
        # one dummy entry so that gathers for empty rows stay in range (they are masked out)
        self._indices = torch.cat([indices, torch.zeros(1, dtype=indices.dtype, device=self.device)])
        self._lens = indptr[1:] - indptr[:-1]

    def sample_with_mask(self, users: Tensor, pos_items: Tensor,
                         generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """(negatives [B, M], replaced [B, M] bool): which entries came from the pool."""
        neg = self.base(users, pos_items, generator)
        if self.p == 0.0:
            return neg, torch.zeros_like(neg, dtype=torch.bool)
        shape = neg.shape
        coin = torch.rand(shape, generator=generator, device=neg.device)  # float32 is ample for a coin
        lens = self._lens[users]
        offset = _uniform_below(lens.clamp(min=1), shape[1], generator)
        replaced = (coin < self.p) & (lens > 0)[:, None]
        pick = self._indices[self._indptr[users][:, None] + offset]
        return torch.where(replaced, pick, neg), replaced

    def __call__(self, users: Tensor, pos_items: Tensor, generator: torch.Generator) -> Tensor:
        """Negatives [B, M] with a share p replaced by false negatives from the pool."""
        return self.sample_with_mask(users, pos_items, generator)[0]

    def __repr__(self) -> str:
        return f"FalseNegativeMixer({self.base!r}, p={self.p})"


# --------------------------------------------------------------------------- registry
SAMPLERS: Registry = Registry("sampler")


@dataclass
class NegativesOptions:
    NOT_SEARCHED: ClassVar[dict[str, str]] = {
        "num_negatives": "a cost knob whose optimum is mostly 'as many as affordable': searching it would give "
                         "each arm a different compute budget per epoch; hold M fixed across arms (base config) "
                         "and vary it as a sweep axis"}
    num_negatives: int = option(64, "sampled negatives M per training pair", check=positive, flag="--negatives")


@dataclass
class PopularityOptions(NegativesOptions):
    pop_alpha: float = option(1.0, "popularity sampler exponent α (P(i) ∝ count^α)", check=non_negative,
                              flag="--pop-alpha", search=uniform(0.0, 1.0))


@SAMPLERS.register("uniform", NegativesOptions)
def _make_uniform(train: Interactions, options: NegativesOptions, device) -> UniformSampler:
    """Uniform over all items, the user's positives included (the authors' default)."""
    return UniformSampler(train.n_items, options.num_negatives)


@SAMPLERS.register("uniform_exclude", NegativesOptions)
def _make_uniform_exclude(train: Interactions, options: NegativesOptions, device) -> UniformExcludeSampler:
    """Uniform over the items not in the user's training row (exact, no redraw loop)."""
    return UniformExcludeSampler(train, options.num_negatives, device)


@SAMPLERS.register("popularity", PopularityOptions)
def _make_popularity(train: Interactions, options: PopularityOptions, device) -> PopularitySampler:
    """P(i) ∝ training count^α (harder negatives)."""
    return PopularitySampler(item_popularity(train, "trained"), options.num_negatives, alpha=options.pop_alpha, device=device)


@SAMPLERS.register("in_batch", NoOptions)
def _make_in_batch(train: Interactions, options: NoOptions, device) -> InBatchSampler:
    """The other rows' positives of the batch are each row's negatives."""
    return InBatchSampler()


@dataclass
class FullOptions:
    NOT_SEARCHED: ClassVar[dict[str, str]] = {
        "mask_positives": "a variant of the sampler (what counts as a negative), compared as its own arm"}
    mask_positives: bool = option(True, "full sampler: leave the user's other training positives out of the "
                                        "negatives (the row's own positive always is)")


@SAMPLERS.register("full", FullOptions)
def _make_full(train: Interactions, options: FullOptions, device) -> AllItemsSampler:
    """Every item except the positive is a negative: the exact softmax over the catalog."""
    return AllItemsSampler(options.mask_positives)


def sample_with_fn_mask(sampler, users: Tensor, pos_items: Tensor,
                        generator: torch.Generator) -> tuple[Tensor, Tensor | None]:
    """``sampler``'s negatives [B, M] and which slots hold a false negative it mixed in (bool [B, M], on device).

    The draws are exactly ``sampler(users, pos_items, generator)``'s.  The
    mask comes from a `FalseNegativeMixer` (True where the pool replaced the
    base negative); a sampler that mixes in none returns None for it.  For the
    gradient-accounting probe (`analysis.probes.GradientShareProbe`): no host sync, no extra draw.
    """
    marked = getattr(sampler, "sample_with_mask", None)
    if marked is None:
        return sampler(users, pos_items, generator), None
    return marked(users, pos_items, generator)


def negative_kind(name: str) -> str:
    """What the negatives of sampler ``name`` are: ``sampled`` ids, ``in_batch`` or ``all`` items."""
    return {cls.name: cls.negatives for cls in (InBatchSampler, AllItemsSampler)}.get(name, "sampled")


def build_sampler(name: str, *, train: Interactions, options=None, device: torch.device | str = "cpu",
                  fn_pool: Interactions | None = None, fn_prob: float = 0.0, n_items: int | None = None,
                  **values):
    """The sampler registered as ``name``, wrapped in a `FalseNegativeMixer` when ``fn_prob > 0``.

    ``options`` is the entry's options dataclass (or give its fields as
    keywords, e.g. ``num_negatives=64``).  ``train`` gives the rows to
    exclude (``uniform_exclude``) and the item counts (``popularity``);
    ``fn_pool`` is the false-negative pool (required when ``fn_prob > 0``).
    Unknown names or options raise ValueError naming the closest valid one.
    """
    entry = SAMPLERS.entry(name)
    if n_items is not None and train.n_items != n_items:
        raise ValueError(f"n_items = {n_items} but train has {train.n_items} items")
    if options is None:
        options = entry.make_options(**values)
    sampler = entry.target(train, options, device)
    if fn_prob > 0:
        if fn_pool is None:
            raise ValueError("fn_prob > 0 needs a false-negative pool (fn_pool)")
        if fn_pool.shape != train.shape:
            raise ValueError(f"fn_pool shape {fn_pool.shape} differs from train shape {train.shape}")
        sampler = FalseNegativeMixer(sampler, fn_pool, fn_prob, device)
    return sampler
