"""Datasets (train / valid / test) and seeded per-user splits.

All splits are vectorised: one random key per interaction, one sort by
(user, key), the rank of each interaction within its user, and per-user cut
points; there is no per-user Python loop.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field, replace
from typing import Any, Sequence

import numpy as np

from rankrobust.data.interactions import Interactions
from rankrobust.data.popularity import item_popularity

__all__ = ["Dataset", "split_per_user", "carve_validation", "dataset_stats", "popularity_shift_split", "apply_split",
           "gini", "SPLITS", "OOD_TEST_FRACTION"]


@dataclass(frozen=True)
class Dataset:
    """A named dataset: train / valid / test `Interactions` of one shape.

    Attributes:
        name: dataset name (registry name or a label for user files).
        train, valid, test: `Interactions` of shape [n_users, n_items].
        leaky_validation: True when ``valid`` is the test set (the authors'
            protocol): model selection then sees the test data.
        source: where the data came from (paths or "embedded"), for run records.
        user_ids, item_ids: for user files, which are remapped jointly to
            contiguous ids in sorted order of the original ids, the original id
            of every user / item (None for registered datasets).
        split: the record of `apply_split` when the splits were re-drawn
            (``data.split = popularity``), else None.
        notes: non-fatal findings of loading, each naming its file.
    """

    name: str
    train: Interactions
    valid: Interactions
    test: Interactions
    leaky_validation: bool = False
    source: str = ""
    #: original ids of user files (``user_ids[u]`` is the id user u had in the files); None for registered data
    user_ids: np.ndarray | None = field(default=None, compare=False)
    item_ids: np.ndarray | None = field(default=None, compare=False)
    #: how the splits were re-drawn (`apply_split`, e.g. the popularity-shift test); None for the given split
    split: dict[str, Any] | None = field(default=None, compare=False)
    #: what loading found odd but not fatal (test pairs also in train, cold test users), each naming its
    #: file; a run records them in metrics.json → warnings
    notes: tuple[str, ...] = field(default=(), compare=False)

    def __post_init__(self) -> None:
        shapes = {s: getattr(self, s).shape for s in ("train", "valid", "test")}
        if len(set(shapes.values())) != 1:
            raise ValueError(f"dataset {self.name!r}: splits differ in shape: {shapes}")

    @property
    def n_users(self) -> int:
        """Number of users (rows of every split)."""
        return self.train.n_users

    @property
    def n_items(self) -> int:
        """Number of items (columns of every split)."""
        return self.train.n_items

    def stats(self) -> dict:
        """Summary numbers: sizes of each split, statistics of all interactions, cold items.

        Keys: ``name``, ``users``, ``items``, ``train``, ``valid``, ``test``
        (interaction counts), ``train_users``/``valid_users``/``test_users``
        (users with at least one interaction in that split),
        ``cold_valid_items``/``cold_test_items`` (items of that split absent
        from train), ``leaky_validation``, and ``all``: `dataset_stats` of the
        union of the splits (the union of train and test when leaky).
        """
        train_items = self.train.item_counts() > 0
        out: dict = {"name": self.name, "users": self.n_users, "items": self.n_items}
        for split in ("train", "valid", "test"):
            inter: Interactions = getattr(self, split)
            out[split] = inter.nnz
            out[f"{split}_users"] = int(np.count_nonzero(inter.user_counts()))
        for split in ("valid", "test"):
            present = getattr(self, split).item_counts() > 0
            out[f"cold_{split}_items"] = int(np.count_nonzero(present & ~train_items))
        out["leaky_validation"] = self.leaky_validation
        full = self.train.union(self.test) if self.leaky_validation else self.train.union(self.valid).union(self.test)
        out["all"] = dataset_stats(full)
        return out

    def __repr__(self) -> str:
        leak = ", leaky_validation=True" if self.leaky_validation else ""
        return (f"Dataset({self.name!r}, n_users={self.n_users}, n_items={self.n_items}, train={self.train.nnz}, "
                f"valid={self.valid.nnz}, test={self.test.nnz}{leak})")


def _check_fractions(fractions: Sequence[float]) -> np.ndarray:
    f = np.asarray(fractions, dtype=np.float64)
    if f.ndim != 1 or len(f) == 0:
        raise ValueError(f"fractions must be a non-empty sequence, got {fractions!r}")
    if (f < 0).any() or not np.isfinite(f).all():
        raise ValueError(f"fractions must be finite and non-negative, got {list(fractions)}")
    if abs(f.sum() - 1.0) > 1e-6:
        raise ValueError(f"fractions must sum to 1, got {list(fractions)} (sum {f.sum():.6g})")
    return f


def split_per_user(inter: Interactions, fractions: Sequence[float], seed: int) -> list[Interactions]:
    """Partition each user's items at random into ``len(fractions)`` parts.

    For a user with n items, part k gets the items ranked in
    ``[b_{k-1}, b_k)`` of a seeded random order, where
    ``b_k = round(n * (f_0 + ... + f_k))`` (halves round up), except that the
    first part always gets at least one item when n >= 1.  So every part is
    within about one item of ``n * f_k``, and the parts are disjoint with union
    equal to ``inter``.

    Args:
        inter: the [n_users, n_items] matrix to split.
        fractions: non-negative, summing to 1, e.g. ``(0.8, 0.1, 0.1)``.
        seed: seed of the numpy generator; same seed and input → same split.

    Returns:
        ``len(fractions)`` `Interactions`, each of shape [n_users, n_items].
    """
    f = _check_fractions(fractions)
    if inter.n_users >= 1 << 32:
        raise ValueError(f"split_per_user supports fewer than 2**32 users, got {inter.n_users}")
    rng = np.random.default_rng(seed)
    users, items = inter.to_pairs()  # grouped by user
    # sort key: user in the high bits, a random 31-bit key in the low bits (ties keep CSR order)
    keys = (users << 31) | rng.integers(0, 1 << 31, size=inter.nnz, dtype=np.int64)
    order = np.argsort(keys, kind="stable")
    rank = np.empty(inter.nnz, dtype=np.int64)
    rank[order] = np.arange(inter.nnz, dtype=np.int64) - inter.indptr[users[order]]

    counts = inter.user_counts().astype(np.float64)
    cum = np.cumsum(f)[:-1]
    bounds = np.floor(counts[:, None] * cum[None, :] + 0.5 + 1e-9).astype(np.int64)  # [n_users, K-1]
    if bounds.shape[1]:
        bounds[:, 0] = np.maximum(bounds[:, 0], np.minimum(counts, 1).astype(np.int64))
        bounds = np.maximum.accumulate(bounds, axis=1)
    part = (rank[:, None] >= bounds[users]).sum(axis=1) if inter.nnz else np.zeros(0, dtype=np.int64)
    return [Interactions.from_pairs(users[part == k], items[part == k], *inter.shape) for k in range(len(f))]


def carve_validation(train: Interactions, fraction: float = 0.1, seed: int = 0) -> tuple[Interactions, Interactions]:
    """Hold out about ``fraction`` of each user's training items as validation.

    A seeded `split_per_user` with fractions ``(1 - fraction, fraction)``;
    a user with a single training item keeps it in train.

    Returns:
        ``(train_rest, valid)``, disjoint, of the same shape as ``train``,
        with union equal to ``train``.
    """
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"validation fraction must be in [0, 1), got {fraction}")
    if fraction == 0.0:
        return train, Interactions.empty(*train.shape)
    rest, valid = split_per_user(train, (1.0 - fraction, fraction), seed)
    return rest, valid


def dataset_stats(inter: Interactions) -> dict:
    """Summary statistics of one interaction matrix.

    Keys: ``users``, ``items`` (matrix shape), ``interactions`` (nnz),
    ``density`` (nnz / (users * items)), ``active_users`` / ``active_items``
    (with at least one interaction), ``mean_per_user``, ``median_per_user``,
    ``min_per_user``, ``max_per_user`` (over active users), ``mean_per_item``,
    ``median_per_item``, ``max_per_item`` (over active items), and
    ``item_gini`` (Gini coefficient of item popularity over all items).
    """
    uc = inter.user_counts()
    ic = inter.item_counts()
    au, ai = uc[uc > 0], ic[ic > 0]
    cells = inter.n_users * inter.n_items
    sorted_ic = np.sort(ic).astype(np.float64)
    n = len(sorted_ic)
    gini = (float((2 * np.arange(1, n + 1) - n - 1) @ sorted_ic / (n * sorted_ic.sum()))
            if n and sorted_ic.sum() > 0 else 0.0)

    def agg(fn, a):
        return float(fn(a)) if len(a) else 0.0

    return {
        "users": inter.n_users,
        "items": inter.n_items,
        "interactions": inter.nnz,
        "density": inter.nnz / cells if cells else 0.0,
        "active_users": int(len(au)),
        "active_items": int(len(ai)),
        "mean_per_user": agg(np.mean, au),
        "median_per_user": agg(np.median, au),
        "min_per_user": int(au.min()) if len(au) else 0,
        "max_per_user": int(au.max()) if len(au) else 0,
        "mean_per_item": agg(np.mean, ai),
        "median_per_item": agg(np.median, ai),
        "max_per_item": int(ai.max()) if len(ai) else 0,
        "item_gini": gini,
    }


# ----------------------------------------------------------------- popularity shift (OOD)
#: ``data.split`` values: the dataset's own split, or PSL's popularity-shift test (docs/PROTOCOLS.md §11)
SPLITS = ("given", "popularity")
#: PSL's OOD sets (IR-Benchmark ``data_ood/*-popularity``) hold out 20% of all interactions as test
OOD_TEST_FRACTION = 0.2


def gini(counts: np.ndarray) -> float:
    """Gini coefficient of non-negative counts (0 = all equal, → 1 = all mass on one entry); 0.0 when empty."""
    c = np.sort(np.asarray(counts, dtype=np.float64))
    n = len(c)
    if n == 0 or c.sum() <= 0:
        return 0.0
    return float((2 * np.arange(1, n + 1) - n - 1) @ c / (n * c.sum()))


def _keep_covered(users: np.ndarray, items: np.ndarray, keys: np.ndarray, test: np.ndarray, n: int,
                  ids: np.ndarray) -> None:
    """Move back to train, for every id of ``ids`` (users or items) with no training interaction left,
    its test interaction of the smallest key (the last one the weighted draw took); in place on ``test``."""
    train_count = np.bincount(ids[~test], minlength=n)
    orphan = test & (train_count[ids] == 0)
    if not orphan.any():
        return
    cand = np.flatnonzero(orphan)
    order = cand[np.lexsort((keys[cand], ids[cand]))]           # by id, then key ascending
    first = np.ones(len(order), dtype=bool)
    first[1:] = ids[order][1:] != ids[order][:-1]
    test[order[first]] = False


def popularity_shift_split(inter: Interactions, test_fraction: float = OOD_TEST_FRACTION,
                           seed: int = 0) -> tuple[Interactions, Interactions]:
    """Split ``inter`` into (rest, test) with test drawn ∝ 1/pop(i) per interaction (PSL's OOD test).

    pop(i) is the item's number of interactions in ``inter``.  ``round(test_fraction · nnz)``
    interactions are drawn *without replacement* with probability ∝ 1/pop(i) at every
    draw (vectorised Efraimidis–Spirakis: key = pop(i) · log U, U ~ U(0, 1], the largest
    keys win); in expectation an item's share of the test is then close to uniform rather
    than to its popularity (IR-Benchmark draws an item uniformly, then one of its users,
    which is the same per-draw probability).  Every user and item keeps at least one
    interaction in ``rest``: for an id left without one, its last-drawn test interaction
    goes back (IR-Benchmark discards such test pairs instead), so the test share can end
    slightly below ``test_fraction``.  Seeded numpy generator: same input and seed, same split.

    Returns ``(rest, test)``, disjoint, union = ``inter``, both of its shape.
    """
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    users, items = inter.to_pairs()
    nnz = len(users)
    rng = np.random.default_rng(seed)
    pop = item_popularity(inter, "all").astype(np.float64)
    keys = pop[items] * np.log1p(-rng.random(nnz))               # log U with U = 1 − random ∈ (0, 1]
    n_test = int(round(test_fraction * nnz))
    test = np.zeros(nnz, dtype=bool)
    if n_test > 0:
        test[np.argsort(-keys, kind="stable")[:n_test]] = True
    _keep_covered(users, items, keys, test, inter.n_items, items)
    _keep_covered(users, items, keys, test, inter.n_users, users)
    shape = inter.shape
    return (Interactions.from_pairs(users[~test], items[~test], *shape),
            Interactions.from_pairs(users[test], items[test], *shape))


def pairs_digest(inter: Interactions) -> str:
    """sha256 (first 16 hex digits) of the interaction pairs, to identify a split in run records."""
    users, items = inter.to_pairs()
    h = hashlib.sha256(np.ascontiguousarray(users, dtype=np.int64).tobytes())
    h.update(np.ascontiguousarray(items, dtype=np.int64).tobytes())
    return h.hexdigest()[:16]


def apply_split(dataset: Dataset, kind: str = "given", *, test_fraction: float = OOD_TEST_FRACTION,
                valid_fraction: float = 0.1, seed: int = 0) -> Dataset:
    """The dataset under split ``kind`` (``data.split``): ``given`` returns it unchanged.

    ``popularity``: all its interactions (train ∪ valid ∪ test) are re-split by
    `popularity_shift_split` (``seed``) into rest and an OOD test; validation is then
    carved from the rest per user (`carve_validation`, ``valid_fraction``, ``seed``), or
    is the test itself when the dataset was loaded with leaky validation.  The new
    dataset's ``split`` records the kind, seed, sizes, the Gini of the test's item
    counts before (the given test) and after, and a digest of the test pairs.
    """
    if kind == "given":
        return dataset
    if kind != "popularity":
        raise ValueError(f"split must be one of {list(SPLITS)}, got {kind!r}")
    full = dataset.train.union(dataset.valid).union(dataset.test)
    rest, test = popularity_shift_split(full, test_fraction, seed)
    if dataset.leaky_validation:
        train, valid = rest, test
    else:
        train, valid = carve_validation(rest, valid_fraction, seed)
    record = {
        "kind": kind,
        "seed": int(seed),
        "test_fraction_target": float(test_fraction),
        "test_fraction": test.nnz / full.nnz if full.nnz else 0.0,
        "train": train.nnz, "valid": valid.nnz, "test": test.nnz,
        "test_item_gini": gini(test.item_counts()),
        "given_test_item_gini": gini(dataset.test.item_counts()),
        "test_items": int(np.count_nonzero(test.item_counts())),
        "test_digest": pairs_digest(test),
    }
    return replace(dataset, train=train, valid=valid, test=test, source=f"{dataset.source} [{kind} split]",
                   split=record)
