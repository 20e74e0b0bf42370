"""Controlled, seeded, recorded corruption of training data (docs/PROTOCOLS.md §3).

- `add_noisy_positives`: false positives — every user gets ⌊r·|P_u|⌋ (or ⌈·⌉)
  extra "positives" drawn without replacement from the items the user has not
  interacted with, by a registered *noise kind* (`NOISE_KINDS`, chosen by
  ``noise.pos_kind``): ``uniform`` (every free item alike) or ``popularity``
  (item j ∝ φ_j^α, φ the clean training popularity).  A kind is a subclass of
  `PositiveNoise` with an options dataclass, registered once: it picks the
  items (`PositiveNoise.draw`) and says what ``noise.parquet`` records of
  them (`PositiveNoise.table`); docs/EXTENDING.md, "A noise kind".
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

from dataclasses import dataclass

import numpy as np
import pandas as pd

from rankrobust.data.interactions import Interactions
from rankrobust.data.popularity import item_popularity
from rankrobust.registry import NoOptions, Registry, non_negative, option

__all__ = ["add_noisy_positives", "heldout_false_negative_pool", "false_negative_pool", "noise_table",
           "FN_POOL_KINDS", "NOISE_PROTOCOL", "outdated_noise_protocol", "NOISE_KINDS", "NoiseDraw",
           "PositiveNoise", "UniformPositives", "PopularityPositives", "PopularityNoiseOptions",
           "weighted_free_items", "NOISY_POSITIVE", "inject_positives"]

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


# --------------------------------------------------------------------------- noise kinds
#: the ``kind`` value of the noisy-positive rows of ``noise.parquet`` (every noisy-positive kind records it)
NOISY_POSITIVE = "noisy_positive"

#: noisy-positive kinds by name (``noise.pos_kind``): entry target a `PositiveNoise` subclass, options its dataclass
NOISE_KINDS: Registry[type] = Registry("noise kind")


@dataclass(frozen=True)
class NoiseDraw:
    """What a noisy-positive kind is asked to draw (built by `add_noisy_positives`).

    ``counts`` k_u int64 [n_users]: how many fake positives user u gets, already
    capped at the user's free items; ``forbidden``: the pairs a fake positive
    may not be (train ∪ exclude); ``popularity`` φ int64 [n_items]: item
    popularity, `rankrobust.data.popularity.item_popularity` of the clean
    training split (variant ``"clean"``); ``rng``: the seeded generator, the
    only source of randomness.
    """

    counts: np.ndarray
    forbidden: Interactions
    popularity: np.ndarray
    rng: np.random.Generator

    @property
    def free(self) -> np.ndarray:
        """Free items per user, int64 [n_users]: n_items − |forbidden row|."""
        return self.forbidden.n_items - self.forbidden.user_counts()


class PositiveNoise:
    """A noisy-positive kind: which free items become fake positives, and what ``noise.parquet`` records.

    Subclass it, give it an options dataclass and register it once::

        NOISE_KINDS.register("name", NameOptions)(NamePositives)

    ``__init__(options)`` keeps the options; `draw` returns the injected pairs
    (exactly ``request.counts[u]`` distinct items of user u, none in
    ``request.forbidden``, all randomness from ``request.rng``, vectorised);
    `table` the rows recorded in ``noise.parquet`` (columns ``user``,
    ``item``, ``kind`` = `NOISY_POSITIVE`, then any of the kind's own).  A kind
    that cannot give some user k_u items lowers ``counts`` first in
    `capacity` (the zero-weight items of a weighted kind).
    """

    def __init__(self, options=None) -> None:
        self.options = options

    def capacity(self, request: NoiseDraw) -> np.ndarray:
        """The most fake positives each user can get, int64 [n_users] (default: its free items)."""
        return request.free

    def draw(self, request: NoiseDraw) -> Interactions:
        raise NotImplementedError

    def table(self, injected: Interactions, request: NoiseDraw) -> pd.DataFrame:
        """The rows of ``noise.parquet`` for ``injected`` (default: user, item, kind)."""
        return noise_table(injected, NOISY_POSITIVE)


@NOISE_KINDS.register("uniform", NoOptions)
class UniformPositives(PositiveNoise):
    """Fake positives uniform over the user's free items (docs/PROTOCOLS.md §3)."""

    def draw(self, request: NoiseDraw) -> Interactions:
        """k_u ranks uniform without replacement in [0, free_u), mapped to the free items (`_sample_free_ranks`)."""
        users, ranks = _sample_free_ranks(request.rng, request.counts, request.free)
        items = _ranks_to_items(request.forbidden, users, ranks)
        return Interactions.from_pairs(users, items, *request.forbidden.shape)


@dataclass
class PopularityNoiseOptions:
    pos_alpha: float = option(1.0, "popularity noise kind: a fake positive is item j with probability ∝ φ_j^α "
                                   "among the user's free items (φ: clean training popularity; 0: uniform)",
                              check=non_negative, flag="--noise-alpha")


@NOISE_KINDS.register("popularity", PopularityNoiseOptions)
class PopularityPositives(PositiveNoise):
    """Fake positives ∝ item popularity φ_j^α among the user's free items (docs/PROTOCOLS.md §3).

    Successive sampling: each of a user's k_u fake positives is drawn with
    probability φ_j^α / Σ_{free, not yet drawn} φ^α (`weighted_free_items`).
    With α > 0 an item nobody has in the clean training split is never drawn,
    so a user gets at most its free items of positive popularity.  Its rows
    of ``noise.parquet`` also record ``popularity`` (φ_j, int64).
    """

    def weights(self, request: NoiseDraw) -> np.ndarray:
        return np.power(request.popularity.astype(np.float64), float(self.options.pos_alpha))  # 0 ** 0 == 1

    def capacity(self, request: NoiseDraw) -> np.ndarray:
        return _positive_free(request.forbidden, self.weights(request))

    def draw(self, request: NoiseDraw) -> Interactions:
        return weighted_free_items(request.rng, request.counts, request.forbidden, self.weights(request))

    def table(self, injected: Interactions, request: NoiseDraw) -> pd.DataFrame:
        frame = noise_table(injected, NOISY_POSITIVE)
        frame["popularity"] = request.popularity[frame["item"].to_numpy()].astype(np.int64)
        return frame


def _positive_free(forbidden: Interactions, weights: np.ndarray) -> np.ndarray:
    """Free items of positive weight per user, int64 [n_users]."""
    positive = weights > 0
    rows = _rows_of(forbidden.indptr)
    taken = np.bincount(rows, weights=positive[forbidden.indices], minlength=forbidden.n_users)
    return int(positive.sum()) - taken.astype(np.int64)


#: the most (user, item) cells `weighted_free_items` lays out at once for users it enumerates
_DENSE_CHUNK = 1 << 22


def weighted_free_items(rng: np.random.Generator, k: np.ndarray, forbidden: Interactions,
                        weights: np.ndarray) -> Interactions:
    """For every user u, k[u] distinct items outside row u of ``forbidden``, by successive sampling ∝ ``weights``.

    Each draw picks free item j with probability w_j / Σ w over the user's
    free items not drawn yet (sampling without replacement ∝ w).  Requires
    k[u] <= the user's free items of positive weight (`_positive_free`).
    ``weights`` float64 [n_items], >= 0.  Returns the pairs as `Interactions`.

    Two exact ways, picked per user by cost: draw items ∝ w with replacement
    over the whole catalogue (one ``searchsorted`` per draw), drop forbidden
    ones and keep the first k distinct in draw order (the law of successive
    sampling restricted to the free items), about k / m_u draws with m_u the
    user's free share of the weight, redrawn with twice as many for users left
    short; or, where that would take more than n_items draws, lay out the
    user's free items and keep the k smallest of E_j / w_j, E_j ∼ Exp(1)
    (Efraimidis & Spirakis' keys, the same law).
    """
    n_users, n_items = forbidden.shape
    weights = np.asarray(weights, dtype=np.float64)
    total = float(weights.sum())
    rows = _rows_of(forbidden.indptr)
    forbidden_keys = rows * n_items + forbidden.indices  # sorted (CSR)
    free_share = np.zeros(n_users) if total <= 0 else np.clip(
        1.0 - np.bincount(rows, weights=weights[forbidden.indices], minlength=n_users) / total, 0.0, 1.0)
    cdf = np.cumsum(weights)
    users_out, items_out = [], []
    todo = np.flatnonzero(k > 0)
    dense: list[np.ndarray] = []
    factor = 2.0
    while len(todo):
        m = np.ceil(factor * k[todo] / np.maximum(free_share[todo], 1e-300)) + 8
        cheap = m <= n_items
        dense.append(todo[~cheap])
        todo, m = todo[cheap], m[cheap].astype(np.int64)
        if not len(todo):
            break
        draw_rows = np.repeat(todo, m)
        items = np.searchsorted(cdf, rng.random(len(draw_rows)) * total, side="right")
        items = np.minimum(items, n_items - 1)
        keys = draw_rows * n_items + items
        ok = (weights[items] > 0) & ~_in_sorted(keys, forbidden_keys)
        draw_rows, items, keys = draw_rows[ok], items[ok], keys[ok]
        _, first = np.unique(keys, return_index=True)  # first occurrence of each (user, item), in draw order
        first.sort()
        draw_rows, items = draw_rows[first], items[first]
        enough = np.bincount(draw_rows, minlength=n_users)[todo] >= k[todo]
        keep = np.isin(draw_rows, todo[enough]) & _first_k_per_group(draw_rows, k)
        users_out.append(draw_rows[keep])
        items_out.append(items[keep])
        todo = todo[~enough]
        factor *= 2.0
    dense_users = np.sort(np.concatenate(dense)) if dense else np.zeros(0, dtype=np.int64)
    per_chunk = max(1, _DENSE_CHUNK // max(n_items, 1))
    for start in range(0, len(dense_users), per_chunk):
        chunk = dense_users[start:start + per_chunk]
        cell_rows = np.repeat(chunk, n_items)
        cell_items = np.tile(np.arange(n_items, dtype=np.int64), len(chunk))
        ok = (weights[cell_items] > 0) & ~_in_sorted(cell_rows * n_items + cell_items, forbidden_keys)
        cell_rows, cell_items = cell_rows[ok], cell_items[ok]
        key = rng.exponential(size=len(cell_rows)) / weights[cell_items]
        order = np.lexsort((key, cell_rows))
        cell_rows, cell_items = cell_rows[order], cell_items[order]
        keep = _first_k_per_group(cell_rows, k)
        users_out.append(cell_rows[keep])
        items_out.append(cell_items[keep])
    if not users_out:
        return Interactions.empty(n_users, n_items)
    return Interactions.from_pairs(np.concatenate(users_out), np.concatenate(items_out), n_users, n_items)


def _in_sorted(a: np.ndarray, sorted_b: np.ndarray) -> np.ndarray:
    """Boolean mask [len(a)]: which values of ``a`` occur in the sorted array ``sorted_b``."""
    if len(sorted_b) == 0:
        return np.zeros(len(a), dtype=bool)
    pos = np.minimum(np.searchsorted(sorted_b, a), len(sorted_b) - 1)
    return sorted_b[pos] == a


def add_noisy_positives(train: Interactions, ratio: float, seed: int, rounding: str = "floor",
                        exclude: Interactions | None = None, kind: str = "uniform", options=None,
                        popularity: np.ndarray | None = None) -> tuple[Interactions, Interactions]:
    """Inject false positives: (noisy_train = train ∪ injected, injected).

    For every user u, ``k_u = ⌊ratio·|P_u|⌋`` (``rounding="ceil"``: ⌈·⌉; the
    product is rounded to 9 decimals first so 0.1·30 counts as 3) items are drawn
    without replacement from the items u has in neither ``train`` nor
    ``exclude`` (e.g. valid ∪ test, so a fake positive is never a held-out true
    one), by the noise kind ``kind`` (`NOISE_KINDS`; ``uniform``: all free
    items alike; ``popularity``: ∝ φ_j^α) with its ``options`` (default: the
    kind's defaults).  ``popularity`` φ [n_items] is what a kind weighs by:
    pass the clean split's (`item_popularity` variant ``"clean"``); default
    φ of ``train``.  A user with fewer free items than k_u (for a weighted
    kind: of positive weight) gets all of them (as many as possible).
    ``ratio = 0`` injects nothing.  Seeded: same inputs and seed → same pairs.
    Both results have the shape of ``train``; ``injected`` is disjoint from
    ``train`` and ``exclude``.  ValueError for a bad ratio, rounding or shape;
    ConfigError for an unknown kind.
    """
    noisy, injected, _ = inject_positives(train, ratio, seed, rounding, exclude, kind, options, popularity)
    return noisy, injected


def _positive_request(train, ratio, seed, rounding, exclude, kind, options, popularity):
    """(the kind's `PositiveNoise`, its `NoiseDraw`) for `add_noisy_positives`' arguments, checked."""
    if not (isinstance(ratio, (int, float)) and np.isfinite(ratio) and ratio >= 0):
        raise ValueError(f"noise ratio must be a finite number >= 0, got {ratio!r}")
    if rounding not in ("floor", "ceil"):
        raise ValueError(f"rounding must be 'floor' or 'ceil', got {rounding!r}")
    forbidden = train
    if exclude is not None:
        if exclude.shape != train.shape:
            raise ValueError(f"exclude shape {exclude.shape} differs from train shape {train.shape}")
        forbidden = train.union(exclude)
    entry = NOISE_KINDS.entry(kind)
    noise = entry.target(options if options is not None else entry.make_options())
    if popularity is None:
        popularity = item_popularity(train, "clean")
    popularity = np.asarray(popularity)
    if popularity.shape != (train.n_items,):
        raise ValueError(f"popularity must have shape ({train.n_items},), got {popularity.shape}")
    k = _round_counts(ratio * train.user_counts().astype(np.float64), rounding)
    request = NoiseDraw(k, forbidden, popularity, np.random.default_rng(seed))
    request = NoiseDraw(np.minimum(k, noise.capacity(request)), forbidden, popularity, request.rng)
    return noise, request


def inject_positives(train: Interactions, ratio: float, seed: int, rounding: str = "floor",
                     exclude: Interactions | None = None, kind: str = "uniform", options=None,
                     popularity: np.ndarray | None = None) -> tuple[Interactions, Interactions, pd.DataFrame]:
    """`add_noisy_positives` plus the kind's recorded table: (noisy_train, injected, rows of ``noise.parquet``)."""
    noise, request = _positive_request(train, ratio, seed, rounding, exclude, kind, options, popularity)
    injected = noise.draw(request)
    return train.union(injected), injected, noise.table(injected, request)


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
