"""Datasets (train / valid / test) and seeded per-user splits.

All splits are vectorised: one random key per interaction, one sort by
(user, key), the rank of each interaction within its user, and per-user cut
points; there is no per-user Python loop.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from rankrobust.data.interactions import Interactions

__all__ = ["Dataset", "split_per_user", "carve_validation", "dataset_stats"]


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
