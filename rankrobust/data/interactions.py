"""The `Interactions` type: a user -> items CSR matrix of implicit feedback.

Every split (train / valid / test), every noisy copy of train and every
dataset in the registry is an `Interactions`.  Rows are users, columns are
items, entries are binary; within a row the item ids are sorted and unique,
which lets samplers test membership with `searchsorted`.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
import torch


def _sorted_unique(a: np.ndarray) -> np.ndarray:
    """Sorted unique values of a 1-D array.

    Same result as ``np.unique(a)``; sort + neighbour comparison, which is far
    faster than the hash-based ``np.unique`` of numpy >= 2.3 on 1M+ keys.
    """
    s = np.sort(a)
    if len(s) < 2:
        return s
    keep = np.empty(len(s), dtype=bool)
    keep[0] = True
    np.not_equal(s[1:], s[:-1], out=keep[1:])
    return s[keep]


def _in_sorted(a: np.ndarray, sorted_b: np.ndarray) -> np.ndarray:
    """Boolean mask [len(a)]: which values of ``a`` occur in the sorted array ``sorted_b``."""
    if len(sorted_b) == 0:
        return np.zeros(len(a), dtype=bool)
    pos = np.minimum(np.searchsorted(sorted_b, a), len(sorted_b) - 1)
    return sorted_b[pos] == a


@dataclass(frozen=True)
class Interactions:
    """Binary user-item matrix in CSR form.

    Attributes:
        indptr: int64 array of shape [n_users + 1]; row u is
            ``indices[indptr[u]:indptr[u + 1]]``.
        indices: int64 array of shape [nnz]; item ids, sorted and unique per row.
        n_users: number of rows (users).
        n_items: number of columns (items).
    """

    indptr: np.ndarray
    indices: np.ndarray
    n_users: int
    n_items: int

    def __post_init__(self) -> None:
        if self.indptr.shape != (self.n_users + 1,):
            raise ValueError(f"indptr has shape {self.indptr.shape}, expected ({self.n_users + 1},)")
        if self.indptr[0] != 0 or self.indptr[-1] != len(self.indices):
            raise ValueError("indptr must start at 0 and end at len(indices)")
        if len(self.indices) and (self.indices.min() < 0 or self.indices.max() >= self.n_items):
            raise ValueError(f"item ids must lie in [0, {self.n_items})")

    # ------------------------------------------------------------------ build
    @classmethod
    def from_pairs(cls, users, items, n_users: int | None = None, n_items: int | None = None) -> "Interactions":
        """Build from parallel arrays of (user, item) ids; duplicates are dropped.

        Shapes: users [N], items [N] (any integer array-likes). ``n_users`` and
        ``n_items`` default to ``max id + 1``.
        """
        u = np.asarray(users, dtype=np.int64).ravel()
        i = np.asarray(items, dtype=np.int64).ravel()
        if u.shape != i.shape:
            raise ValueError(f"users and items differ in length: {u.shape[0]} vs {i.shape[0]}")
        if len(u) and (u.min() < 0 or i.min() < 0):
            raise ValueError("user and item ids must be non-negative")
        n_users = int(u.max()) + 1 if n_users is None and len(u) else int(n_users or 0)
        n_items = int(i.max()) + 1 if n_items is None and len(i) else int(n_items or 0)
        if len(u) and (u.max() >= n_users or i.max() >= n_items):
            raise ValueError(f"ids out of range for a {n_users} x {n_items} matrix")
        key = _sorted_unique(u * n_items + i)  # sorts by user then item, drops duplicates
        u, i = key // max(n_items, 1), key % max(n_items, 1)
        indptr = np.zeros(n_users + 1, dtype=np.int64)
        np.cumsum(np.bincount(u, minlength=n_users), out=indptr[1:])
        return cls(indptr, i.astype(np.int64), n_users, n_items)

    @classmethod
    def empty(cls, n_users: int, n_items: int) -> "Interactions":
        """An all-zero matrix of the given shape."""
        return cls(np.zeros(n_users + 1, dtype=np.int64), np.zeros(0, dtype=np.int64), n_users, n_items)

    # ------------------------------------------------------------------ views
    @property
    def nnz(self) -> int:
        """Number of (user, item) pairs."""
        return int(len(self.indices))

    @property
    def shape(self) -> tuple[int, int]:
        return (self.n_users, self.n_items)

    def user_counts(self) -> np.ndarray:
        """Interactions per user, int64 [n_users]."""
        return np.diff(self.indptr)

    def item_counts(self) -> np.ndarray:
        """Interactions per item, int64 [n_items] (as a popularity: `rankrobust.data.popularity.item_popularity`,
        which names the matrix counted)."""
        return np.bincount(self.indices, minlength=self.n_items).astype(np.int64)

    def row(self, u: int) -> np.ndarray:
        """Sorted item ids of user ``u``."""
        return self.indices[self.indptr[u]:self.indptr[u + 1]]

    def to_pairs(self) -> tuple[np.ndarray, np.ndarray]:
        """(users [nnz], items [nnz]) in CSR order."""
        return np.repeat(np.arange(self.n_users, dtype=np.int64), self.user_counts()), self.indices.copy()

    def to_scipy(self) -> sp.csr_matrix:
        """A float32 scipy CSR matrix with ones at the interactions."""
        data = np.ones(self.nnz, dtype=np.float32)
        return sp.csr_matrix((data, self.indices, self.indptr), shape=self.shape)

    def to_torch(self, device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
        """(indptr [n_users + 1], indices [nnz]) as int64 tensors on ``device``."""
        return (torch.as_tensor(self.indptr, device=device), torch.as_tensor(self.indices, device=device))

    # ---------------------------------------------------------------- algebra
    def union(self, other: "Interactions") -> "Interactions":
        """Element-wise OR of two matrices of the same shape."""
        self._same_shape(other)
        u1, i1 = self.to_pairs()
        u2, i2 = other.to_pairs()
        return Interactions.from_pairs(np.concatenate([u1, u2]), np.concatenate([i1, i2]), *self.shape)

    def difference(self, other: "Interactions") -> "Interactions":
        """Pairs of ``self`` that are not in ``other`` (same shape)."""
        self._same_shape(other)
        u, i = self.to_pairs()
        ou, oi = other.to_pairs()
        keep = ~_in_sorted(u * self.n_items + i, ou * self.n_items + oi)  # CSR keys are sorted
        return Interactions.from_pairs(u[keep], i[keep], *self.shape)

    def _same_shape(self, other: "Interactions") -> None:
        if self.shape != other.shape:
            raise ValueError(f"shape mismatch: {self.shape} vs {other.shape}")

    def __repr__(self) -> str:
        return f"Interactions(n_users={self.n_users}, n_items={self.n_items}, nnz={self.nnz})"
