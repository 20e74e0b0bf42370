"""From a batch of pairs to the scores a loss reads: gather, sparse, dense, in-batch, or all items.

A training step needs, for each pair k = (u_k, i⁺_k) of the batch, the
positive score s⁺_k [B] and the scores of its negatives s⁻_k [B, M].  There
are three ways to compute sampled scores, with the same numbers (tested):

* ``gather``: gather the M negative rows of the item table into a [B, M, d]
  block and take B·M dot products (`rankrobust.kernels.gather_dot`).  Cost ∝
  B·M·d of *memory traffic* (index + element-wise work on the block, forward
  and backward).
* ``sparse``: the batch's columns are the pattern of a sparse [B, n_items]
  matrix; the scores are the product ``u @ I.T`` sampled on that pattern
  (SDDMM) and the backward pass two sparse × dense products
  (`rankrobust.kernels.sampled_dot`).  Cost ∝ B·M·d of arithmetic on operands
  that stay in cache, plus the [n_items, d] table gradient; no [B, M, d] block.
* ``dense``: score the batch's users against the whole (normalised) item table
  with one matrix product ``u [B, d] @ I.T [d, n_items]`` and pick the
  positive and negative columns with ``gather`` on the [B, n_items] matrix.
  Its backward is two matrix products plus a scatter-add into [B, n_items]
  (duplicated negatives accumulate as they should).  Cost ∝ B·n_items·d of
  *arithmetic* (matrix-product speed) plus B·n_items element-wise.

``dense`` wins when M is a large fraction of the catalog, ``sparse`` otherwise;
`choose_scorer` (``train.scorer = auto``) picks from a cost model of the three.
Two more kinds of negatives share the code:

* in-batch (``train.sampler = in_batch``): the [B, B] matrix of the batch's
  users against its positives; the negatives of row k are the other users'
  positives (``neg_mask`` hides the diagonal and the user's own positives).
* all items (``train.sampler = full``): the [B, n_items] matrix *is* the
  negative block; ``neg_mask`` hides each row's positive, and with
  ``mask_positives`` the user's other training positives too.  SL on it is the
  exact softmax over the catalog (docs/PROTOCOLS.md §1, §7: the distribution in
  which SL is DRO over the negatives), not its sampled estimate.

Nothing here syncs with the host.
"""
from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass
from functools import cached_property

import numpy as np
import torch
from torch import Tensor

from rankrobust.batching import own_positive_mask
from rankrobust.data.interactions import Interactions
from rankrobust.kernels import CatalogColumns, gather_dot, plain_gather_dot, sampled_dot

__all__ = ["SCORERS", "NEGATIVE_KINDS", "BatchScores", "ScorerChoice", "PositivesBitmap", "choose_scorer",
           "PairScorer", "column_scorer", "catalog_scores", "score_batch", "penalised_items", "dense_bytes",
           "slow_choice_warning", "unused_bf16_warning", "oversampling_warning"]

SCORERS = ("auto", "gather", "sparse", "dense")
#: what the negatives of a batch are: sampled ids [B, M], the other rows' positives, or every item
NEGATIVE_KINDS = ("sampled", "in_batch", "all")


@dataclass
class BatchScores:
    """Scores of one batch: ``pos [B]``, ``neg [B, M]``, ``neg_mask [B, M]`` (True = a real negative, or
    None = all), ``neg_items [B, M]`` (item id of each ``neg`` column) and ``pos_items [B]``.

    ``items`` [B, 1 + M'] (built on first use) are the item ids whose raw
    embeddings the L2 term and auxiliary losses see, positive first: the
    sampled negatives follow when ``regularise_negatives`` (sampled negatives),
    none otherwise (in-batch and all-items negatives are other rows' positives
    or the whole catalog).
    """

    pos: Tensor
    neg: Tensor
    neg_mask: Tensor | None
    neg_items: Tensor
    pos_items: Tensor
    regularise_negatives: bool = False

    @cached_property
    def items(self) -> Tensor:
        return penalised_items(self.pos_items, self.neg_items, self.regularise_negatives)


def penalised_items(pos_items: Tensor, neg_items: Tensor, with_negatives: bool) -> Tensor:
    """The item ids [B, 1 + M'] whose raw rows the L2 term and auxiliary losses see: the positive first, then the
    sampled negatives when ``with_negatives`` (sampled negatives only; `BatchScores.items`)."""
    if with_negatives:
        return torch.cat([pos_items[:, None], neg_items], dim=1)
    return pos_items[:, None]


class PositivesBitmap:
    """Each user's training items as a packed bit matrix on the device: ``rows(users)`` → bool [B, n_items].

    Memory n_users · ⌈n_items / 8⌉ bytes (yelp2018: 150 MB); one gather and a
    bit unpack per batch, no host sync.  Used to keep a user's other training
    positives out of the all-items negatives.
    """

    def __init__(self, train: Interactions, device: torch.device | str = "cpu") -> None:
        n_users, n_items = train.shape
        dense = np.zeros((n_users, n_items), dtype=bool)
        users, items = train.to_pairs()
        dense[users, items] = True
        self.n_items = n_items
        self.packed = torch.as_tensor(np.packbits(dense, axis=1, bitorder="little"), device=device)
        self._bits = (1 << torch.arange(8, dtype=torch.uint8, device=device))

    def rows(self, users: Tensor) -> Tensor:
        """bool [B, n_items]: entry (k, i) is True when item i is a training item of ``users[k]``."""
        bits = (self.packed[users][:, :, None] & self._bits) != 0
        return bits.reshape(users.shape[0], -1)[:, : self.n_items]


@dataclass(frozen=True)
class ScorerChoice:
    """What ``train.scorer = auto`` chose and why (recorded in ``metrics.json``).

    ``estimate_*_ms``: the cost model's time of one batch's scoring (forward +
    backward) by each path (None: not a candidate on this device);
    ``dense_mib``: memory of the dense path's [B, n_items] blocks.
    """

    scorer: str
    requested: str
    estimate_gather_ms: float
    estimate_sparse_ms: float | None
    estimate_dense_ms: float
    dense_mib: float
    reason: str

    def to_dict(self) -> dict:
        return asdict(self)


# Cost-model constants: seconds per unit of work of one batch's scoring (forward + backward of the scores
# alone; the rest of a step is the same for every path), per device type, at one thread.
# CPU: fitted on the development machine (2 cores of a cloud x86_64 VM with AVX512 and AMX, torch 2.13 CPU
# build), d = 64, float32, for lastfm (n = 2,762, M = 16 and 64, B = 1024), ml-100k (n = 1,016, M = 256,
# B = 1024 and 2048), ml (n = 3,043, M = 800, B = 2048), yelp2018 (n = 38,048, M = 64 and 800) and a
# synthetic n = 200,000 (M = 64); per-path times at one thread, in ms:
#                 lastfm M=64   ml-100k M=256   ml M=800   yelp M=64   yelp M=800   n=200k M=64
#   gather            18.2          229            751        42.2        1173          113
#   sparse             4.3           32.6          117        14.5         191           66.0
#   dense             11.3           12.3           62.7       272          619         1396
#   gather ≈ 6.8 ns per gathered (pair · column · dim) element while the item table fits in cache
#            (≤ 4 MiB), ≈ 10 ns beyond, + 5 ns per element of the [n_items, d] table gradient;
#   sparse ≈ 0.8 ns per (pair · column · dim) multiply-add while the table fits in cache, 1.8 ns beyond,
#            + 5 ns per table-gradient element;
#   dense  ≈ 0.02 ns per multiply-add of the three [B, d] × [d, n_items] products in float32
#            (0.0032 ns in bfloat16 with AMX), + 2.5 ns per [B, n_items] element (gather, scatter-add).
# Threads: the products and gathers scale with torch.get_num_threads() (2 threads: dense 1.8-2.8x, gather
# 1.3-1.8x faster); the sparse kernels of this build run on one thread (1.0-1.5x), so their cost is not
# divided.  CUDA: not measured (`benchmarks/gpu_check.sh` measures it); the constants assume HBM-bound
# gathers and element-wise work and tensor-core products, and `auto` does not pick `sparse` there.
_COST = {
    "cpu": {"gather": 6.8e-9, "gather_big_table": 10e-9, "sparse": 0.8e-9, "sparse_big_table": 1.8e-9,
            "table_grad": 5e-9, "gemm": 0.02e-9, "gemm_bf16": 0.0032e-9, "elementwise": 2.5e-9},
    "cuda": {"gather": 0.02e-9, "gather_big_table": 0.03e-9, "sparse": None, "sparse_big_table": None,
             "table_grad": 0.01e-9, "gemm": 0.00003e-9, "gemm_bf16": 0.00001e-9, "elementwise": 0.01e-9},
}
#: item tables larger than this (bytes) make the gathers miss the cache
_CACHED_TABLE_BYTES = 4 << 20
#: the dense path's [B, n_items] float blocks alive at once in forward + backward (scores, their gradient,
#: the loss's element-wise intermediates); used for its memory estimate
_DENSE_BLOCKS = 4


def dense_bytes(batch_size: int, n_items: int, element_size: int = 4) -> int:
    """Estimated bytes of the dense path's [B, n_items] blocks for one batch."""
    return _DENSE_BLOCKS * batch_size * n_items * element_size


def _memory_budget(device: torch.device) -> int:
    """Bytes the dense blocks may use: a quarter of the device's memory (CPU: physical RAM)."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory // 4
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 4
    except (ValueError, OSError, AttributeError):  # not POSIX: assume 4 GiB
        return 1 << 32


def choose_scorer(requested: str, *, n_items: int, num_negatives: int, dim: int, batch_size: int,
                  device: torch.device | str = "cpu", bf16: bool = False,
                  threads: int | None = None) -> ScorerChoice:
    """Resolve ``train.scorer`` (``auto | gather | sparse | dense``) for sampled negatives → `ScorerChoice`.

    ``auto`` takes the path with the smallest estimated time (constants above;
    ``bf16``: the dense products run in bfloat16; ``threads``: CPU threads,
    default ``torch.get_num_threads()``), never ``dense`` when its blocks would
    exceed a quarter of the device's memory.  An explicit choice is kept (its
    estimates are still recorded).  Raises ValueError for an unknown ``requested``.
    """
    if requested not in SCORERS:
        raise ValueError(f"train.scorer must be one of {list(SCORERS)}, got {requested!r}")
    device = torch.device(device)
    on_cpu = device.type != "cuda"
    cost = _COST["cpu" if on_cpu else "cuda"]
    parallel = max(1, threads or torch.get_num_threads()) if on_cpu else 1
    columns = batch_size * (num_negatives + 1) * dim
    cached = n_items * dim * 4 <= _CACHED_TABLE_BYTES
    table_grad = cost["table_grad"] * n_items * dim
    estimates = {"gather": ((cost["gather"] if cached else cost["gather_big_table"]) * columns + table_grad) / parallel}
    if cost["sparse"] is not None:
        estimates["sparse"] = (estimates["gather"] if num_negatives + 1 > n_items  # `sampled_dot` then gathers
                               else (cost["sparse"] if cached else cost["sparse_big_table"]) * columns + table_grad)
    gemm = cost["gemm_bf16"] if bf16 else cost["gemm"]
    estimates["dense"] = (gemm * batch_size * n_items * dim * 3 + cost["elementwise"] * batch_size * n_items) / parallel
    need = dense_bytes(batch_size, n_items)
    candidates = dict(estimates)
    if requested != "auto":
        scorer, reason = requested, "set by train.scorer"
    else:
        if need > _memory_budget(device):
            del candidates["dense"]
        scorer = min(candidates, key=candidates.get)
        others = ", ".join(f"{k} {v * 1e3:.3g} ms" for k, v in estimates.items() if k != scorer)
        reason = f"estimated {estimates[scorer] * 1e3:.3g} ms per batch vs {others}"
        if "dense" not in candidates:
            reason += f"; dense blocks ({need / 2**20:.0f} MiB) exceed a quarter of device memory"
    ms = {k: round(v * 1e3, 4) for k, v in estimates.items()}
    return ScorerChoice(scorer, requested, ms["gather"], ms.get("sparse"), ms["dense"], round(need / 2**20, 1), reason)


def unused_bf16_warning(bf16: bool, device_type: str, negatives: str, choice: dict | None) -> str | None:
    """A warning when ``train.bf16`` is set but the run has no product it applies to, else None.

    On CPU, bfloat16 is the precision of the dense scorer's and the all-items
    sampler's [B, d] × [d, n_items] products only; sampled negatives scored by
    ``gather`` or ``sparse``, and in-batch negatives, run in float32 whatever
    ``train.bf16`` says (on CUDA it autocasts the whole step, so it always
    applies).  ``negatives``: the sampler's kind (``sampled | in_batch | all``);
    ``choice``: the run's `ScorerChoice.to_dict()` (None without sampled negatives).
    """
    if not bf16 or device_type == "cuda" or negatives == "all" or (choice and choice["scorer"] == "dense"):
        return None
    if choice:
        path = f"scores its sampled negatives with {choice['scorer']!r} (train.scorer = {choice['requested']!r})"
        fix = "Set train.scorer=dense to use it, or drop train.bf16."
    else:
        path, fix = f"takes {negatives} negatives", "Drop train.bf16 (or use train.sampler=full)."
    return (f"train.bf16 = true had no effect: on CPU it runs the dense and all-items matrix products in "
            f"bfloat16, and this run {path}, all in float32. {fix}")


def oversampling_warning(num_negatives: int, n_items: int) -> str | None:
    """A warning when a user's row samples at least as many negatives as the catalog has items, else None.

    Such rows repeat items (uniform sampling with replacement) and pay for
    ``num_negatives`` columns per pair; ``train.sampler=full`` scores every
    item once instead (the exact softmax over the catalog).
    """
    if num_negatives < n_items:
        return None
    return (f"train.num_negatives = {num_negatives:,} is at least the catalog's {n_items:,} items: every row repeats "
            f"items and pays for {num_negatives:,} columns per pair; train.sampler=full scores each item once "
            f"(the exact softmax over the catalog)")


#: an explicitly set scorer this many times slower (estimated) than the best one gets a warning
SLOW_CHOICE = 3.0


def slow_choice_warning(choice: dict | None) -> str | None:
    """A warning when ``train.scorer`` was set to a path the cost model estimates ≥ `SLOW_CHOICE`× slower than
    the fastest one, else None.  ``choice`` is a `ScorerChoice.to_dict()` (None: no sampled negatives)."""
    if not choice or choice["requested"] == "auto":
        return None
    estimates = {name: choice[f"estimate_{name}_ms"] for name in SCORERS[1:]
                 if choice.get(f"estimate_{name}_ms") is not None}
    best = min(estimates, key=estimates.get)
    mine = estimates.get(choice["scorer"])
    if mine is None or mine < SLOW_CHOICE * estimates[best]:
        return None
    return (f"train.scorer = {choice['scorer']!r} was set: the cost model estimates {mine:.3g} ms per batch for it "
            f"against {estimates[best]:.3g} ms for {best!r}, which train.scorer=auto would pick")


#: a sampled-negative kernel: ``f(u [B, d], I [n_items, d], pos [B], neg [B, M]) → (pos [B], neg [B, M])`` scores
PairScorer = Callable[[Tensor, Tensor, Tensor, Tensor], tuple[Tensor, Tensor]]


def _via_item_block(kernel: Callable[[Tensor, Tensor, Tensor], Tensor]) -> PairScorer:
    """A `PairScorer` from a kernel of one id block ``f(u, I, items [B, K]) → [B, K]`` (positive = column 0)."""
    def pairs(u: Tensor, I: Tensor, pos: Tensor, neg: Tensor) -> tuple[Tensor, Tensor]:
        scores = kernel(u, I, torch.cat([pos[:, None], neg], dim=1))
        return scores[:, 0], scores[:, 1:]
    return pairs


def column_scorer(scorer: str, product_dtype: torch.dtype | None = None, fused: bool = True) -> PairScorer:
    """The kernel of a resolved sampled-negative scorer, as a `PairScorer`.

    ``gather``: `rankrobust.kernels.gather_dot` (``fused=False``: plain
    autograd on the gathered block); ``sparse``: `rankrobust.kernels.sampled_dot`
    (both on the [B, 1 + M] block of the positive and negative ids);
    ``dense``: `rankrobust.kernels.CatalogColumns.pairs`, whose products run in
    ``product_dtype`` (None: the tables' own).  Raises ValueError for any other name.
    """
    if scorer == "gather":
        return _via_item_block(gather_dot if fused else plain_gather_dot)
    if scorer == "sparse":
        return _via_item_block(sampled_dot)
    if scorer == "dense":
        return CatalogColumns(product_dtype).pairs
    raise ValueError(f"scorer must be one of {list(SCORERS[1:])}, got {scorer!r}")


def catalog_scores(u: Tensor, I: Tensor, product_dtype: torch.dtype | None = None,
                   columns: Tensor | None = None) -> Tensor:
    """Scores of user rows ``u [B, d]`` against the whole item table ``I [n_items, d]`` → [B, n_items].

    One matrix product; with ``columns [B, M]`` only those columns are
    returned ([B, M], picked by ``gather``, whose backward scatter-adds, so
    repeated columns accumulate).  With ``product_dtype`` (``torch.bfloat16``)
    the product and the two products of its backward pass run in that
    precision (float32 accumulation; on CPUs with AMX or AVX512-bf16 about 6×
    faster than float32 at d = 64), the columns are picked before the scores
    are cast back to ``u``'s dtype, and only the [B, M] block is converted.
    """
    low = product_dtype is not None and product_dtype != u.dtype
    scores = u.to(product_dtype) @ I.to(product_dtype).T if low else u @ I.T
    if columns is not None:
        scores = scores.gather(1, columns)
    return scores.to(u.dtype) if low else scores


def score_batch(model, U: Tensor, I: Tensor, users: Tensor, pos: Tensor, neg: Tensor, *, negatives: str,
                columns: PairScorer | None = None,
                positives: PositivesBitmap | None = None,
                product_dtype: torch.dtype | None = None) -> BatchScores:
    """Scores of the batch ``users [B]``, ``pos [B]`` against their negatives → `BatchScores`.

    ``(U, I)`` come from ``model.score_tables()`` (the item table already
    normalised for cosine); ``neg [B, M]`` are the sampled ids (ignored unless
    ``negatives == 'sampled'``).  ``columns`` is the sampled-negative kernel
    (`column_scorer`: gather, sparse or dense; None: gather); ``positives`` (all-items
    negatives only) masks each user's other training positives.
    ``product_dtype`` is the precision of the all-items [B, d] × [d, n_items]
    product (`catalog_scores`; None = the tables' own).
    """
    b = users.shape[0]
    if negatives == "in_batch":
        scores = model.inbatch_scores(U, I, users, pos)  # [B, B]: users against the batch's positives
        eye = torch.eye(b, dtype=torch.bool, device=users.device)
        neg_mask = ~(own_positive_mask(users) | eye)  # other users' positives only
        return BatchScores(scores.diagonal(), scores, neg_mask, pos[None, :].expand(b, b), pos)
    if negatives == "all":
        scores = catalog_scores(model.user_rows(U, users), I, product_dtype)  # [B, n_items]
        pos_scores = scores.gather(1, pos[:, None])[:, 0]
        own = torch.zeros_like(scores, dtype=torch.bool).scatter_(1, pos[:, None], True)
        if positives is not None:
            own = own | positives.rows(users)
        all_items = torch.arange(scores.shape[1], device=users.device)[None, :].expand(b, -1)
        return BatchScores(pos_scores, scores, ~own, all_items, pos)
    if negatives != "sampled":
        raise ValueError(f"negatives must be one of {list(NEGATIVE_KINDS)}, got {negatives!r}")
    pos_scores, neg_scores = (columns or column_scorer("gather"))(model.user_rows(U, users), I, pos, neg)
    return BatchScores(pos_scores, neg_scores, None, neg, pos, regularise_negatives=True)
