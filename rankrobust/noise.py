"""Controlled, seeded, recorded corruption of training data (docs/PROTOCOLS.md §3).

- `add_noisy_positives`: false positives — every user gets ⌊r·|P_u|⌋ (or ⌈·⌉)
  extra "positives" drawn uniformly without replacement from the items the user
  has not interacted with.
- `false_negative_pool` / `heldout_false_negative_pool`: the pools that
  `rankrobust.sampling.FalseNegativeMixer` draws false negatives from.  The
  ``heldout`` pool is withheld from training at every p, p = 0 included, so
  every cell of a false-negative sweep trains on the same positives
  (`NOISE_PROTOCOL`, `outdated_noise_protocol`).
- `noise_table`: the injected pairs as a DataFrame for ``noise.parquet``.

Everything is vectorised with numpy and driven by ``np.random.default_rng(seed)``:
the same inputs and seed give the same pairs.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from rankrobust.data.interactions import Interactions

__all__ = ["add_noisy_positives", "heldout_false_negative_pool", "false_negative_pool", "noise_table",
           "FN_POOL_KINDS", "NOISE_PROTOCOL", "outdated_noise_protocol"]

FN_POOL_KINDS = ("train", "heldout")

#: version of the noise protocol, recorded by every run in ``metrics.json`` → ``training_data.noise_protocol``.
#: 2: the ``heldout`` pool is withheld from the training positives at every p, p = 0 included (version 1, never
#: recorded, withheld it only at p > 0, so its p = 0 cells trained on 100 % of the positives and its p > 0 cells
#: on 90 %: a gap that figures then attributed to false negatives).
NOISE_PROTOCOL = 2


def outdated_noise_protocol(config: dict, metrics: dict) -> bool:
    """True for a finished run whose training data the current protocol would prepare differently.

    ``config`` / ``metrics``: the run's ``config.json`` and ``metrics.json``.
    Only ``noise.neg_pool = heldout`` runs at ``noise.neg_prob = 0`` made
    before `NOISE_PROTOCOL` 2 qualify (they kept the held-out positives in
    training); every other run, recorded or not, trained on what it would
    train on now.  Sweeps redo such runs (`rankrobust.sweeps.cell.is_finished`).
    """
    noise = config.get("noise") if isinstance(config, dict) else None
    if not isinstance(noise, dict) or noise.get("neg_pool") != "heldout" or (noise.get("neg_prob") or 0) > 0:
        return False
    recorded = (metrics.get("training_data") or {}) if isinstance(metrics, dict) else {}
    version = recorded.get("noise_protocol") if isinstance(recorded, dict) else None
    return not (isinstance(version, int) and version >= NOISE_PROTOCOL)


def _round_counts(x: np.ndarray, rounding: str) -> np.ndarray:
    """floor / ceil of a float array, robust to binary rounding (0.1 · 30 → 3, not 4 under ceil)."""
    x = np.round(x, 9)
    out = np.floor(x) if rounding == "floor" else np.ceil(x)
    return out.astype(np.int64)


def _rows_of(indptr: np.ndarray) -> np.ndarray:
    """Row id of every CSR entry, int64 [nnz]."""
    return np.repeat(np.arange(len(indptr) - 1, dtype=np.int64), np.diff(indptr))


def _first_k_per_group(groups: np.ndarray, k: np.ndarray) -> np.ndarray:
    """Boolean mask [N] keeping the first ``k[g]`` entries of each group (groups sorted, contiguous)."""
    n = len(groups)
    if n == 0:
        return np.zeros(0, dtype=bool)
    starts = np.flatnonzero(np.r_[True, groups[1:] != groups[:-1]])
    lens = np.diff(np.r_[starts, n])
    pos_in_group = np.arange(n) - np.repeat(starts, lens)
    return pos_in_group < k[groups]


def _sample_free_ranks(rng: np.random.Generator, k: np.ndarray, free: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For every user u, k[u] distinct ranks drawn uniformly without replacement from [0, free[u]).

    Requires k <= free.  Returns (users [Σk], ranks [Σk]) sorted by user.

    Users with 2k >= free ("dense" requests) take the k smallest of random keys
    over their whole range (cost O(free) <= O(2k)).  The others draw ~2k + 8
    ranks with replacement and keep the first k distinct values in draw order
    (sequential sampling without replacement, hence a uniform k-subset); the
    rare users left short redraw from scratch with a larger oversampling factor.
    """
    users_out, ranks_out = [], []
    want = k > 0
    dense = np.flatnonzero(want & (2 * k >= free))
    if len(dense):
        rows = np.repeat(dense, free[dense])
        starts = np.repeat(np.cumsum(free[dense]) - free[dense], free[dense])
        ranks = np.arange(len(rows), dtype=np.int64) - starts
        order = np.lexsort((rng.random(len(rows)), rows))
        rows, ranks = rows[order], ranks[order]
        keep = _first_k_per_group(rows, k)
        users_out.append(rows[keep])
        ranks_out.append(ranks[keep])
    todo = np.flatnonzero(want & (2 * k < free))
    factor = 2.0
    while len(todo):
        m = np.ceil(factor * k[todo]).astype(np.int64) + 8
        rows = np.repeat(todo, m)
        ranks = np.floor(rng.random(len(rows)) * free[rows]).astype(np.int64)
        ranks = np.minimum(ranks, free[rows] - 1)
        # first occurrence of each (user, rank), in draw order (draws are grouped by user)
        _, first = np.unique(rows * (int(free.max()) + 1) + ranks, return_index=True)
        first.sort()
        rows, ranks = rows[first], ranks[first]
        distinct = np.bincount(rows, minlength=len(k))
        ok = distinct[todo] >= k[todo]
        done = np.isin(rows, todo[ok])
        keep = done & _first_k_per_group(rows, k)
        users_out.append(rows[keep])
        ranks_out.append(ranks[keep])
        todo = todo[~ok]
        factor *= 2.0
    if not users_out:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    users = np.concatenate(users_out)
    ranks = np.concatenate(ranks_out)
    order = np.argsort(users, kind="stable")
    return users[order], ranks[order]


def _ranks_to_items(forbidden: Interactions, users: np.ndarray, ranks: np.ndarray) -> np.ndarray:
    """Item id of the ``rank``-th item (0-based, ascending) *not* in row ``user`` of ``forbidden``.

    With the row's sorted items p_0 < p_1 < … and a_k = p_k − k, that item is
    rank + #{k : a_k <= rank}; one searchsorted on the globally sorted keys
    ``row * n_items + a_k`` counts them for every query at once.
    """
    rows = _rows_of(forbidden.indptr)
    a = forbidden.indices - (np.arange(forbidden.nnz, dtype=np.int64) - forbidden.indptr[rows])
    keys = rows * forbidden.n_items + a
    below = np.searchsorted(keys, users * forbidden.n_items + ranks, side="right") - forbidden.indptr[users]
    return ranks + below


def add_noisy_positives(train: Interactions, ratio: float, seed: int, rounding: str = "floor",
                        exclude: Interactions | None = None) -> tuple[Interactions, Interactions]:
    """Inject false positives: (noisy_train = train ∪ injected, injected).

    For every user u, ``k_u = ⌊ratio·|P_u|⌋`` (``rounding="ceil"``: ⌈·⌉; the
    product is rounded to 9 decimals first so 0.1·30 counts as 3) items are drawn
    uniformly without replacement from the items u has in neither ``train`` nor
    ``exclude`` (e.g. valid ∪ test, so a fake positive is never a held-out true
    one).  A user with fewer free items than k_u gets all of them (as many as
    possible).  ``ratio = 0`` injects nothing.  Seeded: same inputs and seed →
    same pairs.  Both results have the shape of ``train``; ``injected`` is
    disjoint from ``train`` and ``exclude``.
    """
    if not (isinstance(ratio, (int, float)) and np.isfinite(ratio) and ratio >= 0):
        raise ValueError(f"noise ratio must be a finite number >= 0, got {ratio!r}")
    if rounding not in ("floor", "ceil"):
        raise ValueError(f"rounding must be 'floor' or 'ceil', got {rounding!r}")
    forbidden = train
    if exclude is not None:
        if exclude.shape != train.shape:
            raise ValueError(f"exclude shape {exclude.shape} differs from train shape {train.shape}")
        forbidden = train.union(exclude)
    k = _round_counts(ratio * train.user_counts().astype(np.float64), rounding)
    free = train.n_items - forbidden.user_counts()
    k = np.minimum(k, free)
    rng = np.random.default_rng(seed)
    users, ranks = _sample_free_ranks(rng, k, free)
    items = _ranks_to_items(forbidden, users, ranks)
    injected = Interactions.from_pairs(users, items, train.n_users, train.n_items)
    return train.union(injected), injected


def heldout_false_negative_pool(train: Interactions, fraction: float = 0.1,
                                seed: int = 0) -> tuple[Interactions, Interactions]:
    """Hold out a seeded share of each user's positives as a false-negative pool: (reduced_train, pool).

    User u loses ``min(⌊fraction·|P_u|⌋, |P_u| − 1)`` positives chosen uniformly
    without replacement (so every user with a positive keeps at least one; users
    with fewer than 1/fraction positives lose none).  ``reduced_train`` and
    ``pool`` are disjoint and their union is ``train``.
    """
    if not (isinstance(fraction, (int, float)) and 0.0 < fraction < 1.0):
        raise ValueError(f"heldout fraction must be in (0, 1), got {fraction!r}")
    counts = train.user_counts()
    h = np.minimum(_round_counts(fraction * counts.astype(np.float64), "floor"), np.maximum(counts - 1, 0))
    rng = np.random.default_rng(seed)
    rows = _rows_of(train.indptr)
    order = np.lexsort((rng.random(train.nnz), rows))
    take = np.zeros(train.nnz, dtype=bool)
    take[order[_first_k_per_group(rows[order], h)]] = True
    items = train.indices
    pool = Interactions.from_pairs(rows[take], items[take], train.n_users, train.n_items)
    reduced = Interactions.from_pairs(rows[~take], items[~take], train.n_users, train.n_items)
    return reduced, pool


def false_negative_pool(train: Interactions, kind: str = "train", fraction: float = 0.1,
                        seed: int = 0) -> tuple[Interactions, Interactions]:
    """(train_for_training, pool) for the false-negative protocol.

    ``kind="train"``: the pool is the user's own training positives (train is
    returned unchanged as both).  ``kind="heldout"``: see
    `heldout_false_negative_pool` (``fraction``, ``seed``); the caller builds
    it whatever p is (p = 0 included) and with a seed that does not depend on
    p, so all cells of a sweep over p train on the same positives.
    """
    if kind == "train":
        return train, train
    if kind == "heldout":
        return heldout_false_negative_pool(train, fraction=fraction, seed=seed)
    raise ValueError(f"unknown false-negative pool {kind!r}; valid pools are {list(FN_POOL_KINDS)}")


def noise_table(injected: Interactions, kind: str) -> pd.DataFrame:
    """The pairs of ``injected`` as a DataFrame with columns ``user`` (int64), ``item`` (int64), ``kind`` (str).

    One row per pair, in CSR order; ``kind`` (e.g. ``noisy_positive``,
    ``heldout_negative``) is the same on every row.  Saved as ``noise.parquet``.
    """
    users, items = injected.to_pairs()
    return pd.DataFrame({"user": users.astype(np.int64), "item": items.astype(np.int64),
                         "kind": pd.Series([kind] * len(users), dtype=object)})


def pair_mask(inter: Interactions, pairs: Interactions) -> np.ndarray:
    """Bool [inter.nnz] in ``inter``'s CSR order: True where the pair (u, i) is also in ``pairs``.

    Used to mark the injected noisy positives among the training pairs.
    Vectorised: one ``searchsorted`` of the pair keys u·n_items + i.
    """
    users, items = inter.to_pairs()
    keys = users * inter.n_items + items
    pu, pi = pairs.to_pairs()
    wanted = np.sort(pu.astype(np.int64) * inter.n_items + pi.astype(np.int64))
    if len(wanted) == 0:
        return np.zeros(len(keys), dtype=bool)
    pos = np.minimum(np.searchsorted(wanted, keys), len(wanted) - 1)
    return wanted[pos] == keys
