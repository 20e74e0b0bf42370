"""Epoch orders of the training pairs, and same-user group statistics (docs/PROTOCOLS.md §9).

An epoch visits every training pair (u, i⁺) exactly once: the trainer takes a
permutation ``order`` [N] of the N pairs and cuts batches of B consecutive
entries (the last one may be shorter).  Two batchings produce that permutation:

- ``pairs`` (default, the authors' protocol): a uniform shuffle of all pairs,
  ``pairs_order`` = ``torch.randperm(N)``.  A batch is then (all but the edge
  batch) a uniform B-subset of the pairs, so for a pair of user u, the number of
  u's pairs in its batch is 1 + Hypergeometric, with mean

      E[n_u,batch] = 1 + (B − 1)(n_u − 1)/(N − 1),

  and averaged over pairs (weights n_u / N) the expected same-user group size is

      Ḡ = Σ_u (n_u / N) · [1 + (B − 1)(n_u − 1)/(N − 1)]      (``expected_group_size_pairs``).

  On the benchmark splits Ḡ is barely above 1 (1.075 on yelp2018 and 1.096 on
  gowalla at B = 1024, §9).
- ``users``: each user's pairs are shuffled and cut into consecutive chunks of
  K = ``positives_per_user`` (a user's last chunk holds n_u mod K pairs when that
  is nonzero), the chunks are shuffled and concatenated (``users_order``).  A
  batch then holds about B/K users with K positives each, so Ḡ ≈ K (less at batch
  edges and at a user's short chunk, more when two chunks of one user land in
  the same batch by chance).  Every pair is still visited exactly once.

Why it matters: BSL's positive term is a log-mean-exp over the positives of the
same user in the same batch, log (1/|G_u|) Σ_{k ∈ G_u} exp(s⁺_k / τ₁).  With
|G_u| = 1 it is s⁺_k / τ₁ and the bilateral (positive-side) reweighting does
nothing: ``paper`` mode reduces to (τ₂/τ₁)·SL(τ₂) and ``multi`` to ``reweight``
plus a constant.  ``group_size_mean`` measures Ḡ = Σ_g n_g² / B on a batch
without a host sync, so the trainer can report it per epoch.

With ``in_batch`` negatives a user's other positives in the batch are not
negatives: ``own_positive_mask`` marks them for removal from each row.

All randomness comes from an explicit ``torch.Generator`` living on the data's
device; everything is vectorised on that device (sorts, cumsums, scatters) with
static shapes and no host synchronisation or per-user Python loop.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from rankrobust.registry import NoOptions, Registry, choice, option, positive

__all__ = [
    "BATCHINGS",
    "pairs_order",
    "users_order",
    "group_size_mean",
    "expected_group_size_pairs",
    "own_positive_mask",
]

#: ``train.batching`` choices and their options (``positives_per_user`` for ``users``)
BATCHINGS: Registry = Registry("batching")


@dataclass
class UsersBatchingOptions:
    positives_per_user: int = option(8, "users batching: chunk size K of a user's positives per batch",
                                     check=positive, flag="--positives-per-user", search=choice(2, 4, 8, 16, 32))



def _check_positive_int(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def group_ids(users: Tensor) -> Tensor:
    """Dense group ids [B] in [0, B): pairs with the same user share an id.

    Sort, mark user changes, cumsum, scatter back (static shapes, no host sync);
    the same grouping as ``torch.unique(users, return_inverse=True)``.
    """
    sorted_u, perm = torch.sort(users)
    change = (sorted_u[1:] != sorted_u[:-1]).to(torch.long)
    first = torch.zeros(1, dtype=torch.long, device=users.device)
    gid_sorted = torch.cumsum(torch.cat([first, change]), dim=0)
    return torch.empty_like(gid_sorted).scatter_(0, perm, gid_sorted)


def pairs_order(n_pairs: int, generator: torch.Generator, device: torch.device | str) -> Tensor:
    """``pairs`` batching: a uniform permutation LongTensor [n_pairs] of 0..n_pairs−1.

    Exactly ``torch.randperm(n_pairs, generator=generator, device=device)`` (the
    trainer's historical draw), so the same generator state gives the same order.
    """
    return torch.randperm(n_pairs, generator=generator, device=device)


def users_order(pair_users: Tensor, positives_per_user: int, generator: torch.Generator) -> Tensor:
    """``users`` batching: a permutation LongTensor [N] of 0..N−1 made of per-user chunks of K.

    ``pair_users`` [N] are the users of the training pairs (any order; CSR order
    from ``Interactions.to_pairs()`` is the usual one), K = ``positives_per_user``.
    Each user's n_u pairs are shuffled and cut into ⌊n_u/K⌋ chunks of K plus one
    of n_u mod K if that is nonzero; the chunks are put in uniformly random order
    and concatenated.  Cutting batches of B consecutive entries then gives about
    B/K users per batch with K positives each.

    Vectorised on ``pair_users.device`` (``generator`` must live there):

    1. p = randperm(N); idx = p[argsort(pair_users[p], stable)] groups the pairs
       by user, shuffled within each user (ties keep the random order of p);
    2. rank r within the user = position − start of the user's run (cummax of
       run starts); a chunk starts where r mod K = 0, so the chunk id is
       c = cumsum(r mod K = 0) − 1 ∈ [0, N);
    3. q = randperm(N) gives every chunk the distinct key q[c] (the relative order
       of q[0..C−1] is a uniform permutation of the C chunks); a stable sort by
       key keeps each chunk's entries together and in order.

    Two draws from ``generator`` (both randperm of N), no host sync, no loop.
    """
    k = _check_positive_int(positives_per_user, "positives_per_user")
    if pair_users.dim() != 1:
        raise ValueError(f"pair_users must be 1-d, got shape {tuple(pair_users.shape)}")
    device = pair_users.device
    n = pair_users.shape[0]
    # 1. group by user, random order within each user
    p = torch.randperm(n, generator=generator, device=device)
    idx = p[torch.argsort(pair_users[p], stable=True)]
    su = pair_users[idx]
    # 2. rank within the user's run, chunk ids
    pos = torch.arange(n, device=device)
    is_start = torch.ones(n, dtype=torch.bool, device=device)
    is_start[1:] = su[1:] != su[:-1]
    run_start = torch.cummax(torch.where(is_start, pos, torch.zeros_like(pos)), dim=0).values
    rank = pos - run_start
    chunk = torch.cumsum((rank % k == 0).to(torch.long), dim=0) - 1
    # 3. shuffle the chunks, keep each chunk contiguous and in order
    q = torch.randperm(n, generator=generator, device=device)
    return idx[torch.argsort(q[chunk], stable=True)]


def group_size_mean(users: Tensor) -> Tensor:
    """Mean over the B pairs of the batch of the number of pairs sharing the pair's user.

    Ḡ = (1/B) Σ_k n_{u_k} = Σ_g n_g² / B, with n_g the size of same-user group g.
    ``users`` LongTensor [B] -> float scalar tensor on ``users.device`` (default
    float dtype), computed with a sort and a ``scatter_add`` (no host sync).
    NaN for an empty batch.
    """
    b = users.shape[0]
    g = group_ids(users)
    counts = torch.zeros(b, dtype=torch.long, device=users.device).scatter_add_(0, g, torch.ones_like(g))
    return (counts * counts).sum().to(torch.get_default_dtype()) / b


def expected_group_size_pairs(user_counts, batch_size: int) -> float:
    """Expected same-user group size per pair under ``pairs`` batching (docs/PROTOCOLS.md §9).

    With n_u training pairs per user (``user_counts``), N = Σ_u n_u and a batch
    that is a uniform B-subset of the pairs (B = ``batch_size``, clipped to N),

        Ḡ = Σ_u (n_u / N) · [1 + (B − 1)(n_u − 1)/(N − 1)],

    the weighted mean over pairs of the expected number of the pair's user's
    pairs in its batch.  Computed in float64 numpy; 1.0 when N = 1.  The shorter
    last batch of an epoch is not accounted for.
    """
    b = _check_positive_int(batch_size, "batch_size")
    n_u = np.asarray(user_counts, dtype=np.float64).ravel()
    if (n_u < 0).any():
        raise ValueError("user_counts must be non-negative")
    total = n_u.sum()
    if total <= 0:
        raise ValueError("user_counts must sum to a positive number of pairs")
    if total == 1:
        return 1.0
    b = min(float(b), total)
    per_pair = 1.0 + (b - 1.0) * (n_u - 1.0) / (total - 1.0)
    return float((n_u * per_pair).sum() / total)


def own_positive_mask(users: Tensor) -> Tensor:
    """BoolTensor [B, B]: True at [k, c] when c ≠ k and users[c] = users[k].

    For ``in_batch`` negatives (row k's negatives are the batch's positives): the
    marked columns are the other in-batch positives of row k's own user, which
    are not negatives and must be removed from row k.  The diagonal (row k's own
    positive) is False; the loss code treats it separately.
    """
    b = users.shape[0]
    same = users[:, None] == users[None, :]
    return same & ~torch.eye(b, dtype=torch.bool, device=users.device)


# --------------------------------------------------------------------------- registry entries
# target: order(pair_users [N], options, generator) -> permutation [N]; the trainer cuts batches of B from it.
@BATCHINGS.register("pairs", NoOptions)
def _pairs(pair_users: Tensor, options: NoOptions, generator: torch.Generator) -> Tensor:
    """Shuffle all training pairs and cut batches of B (the authors' protocol)."""
    return pairs_order(pair_users.shape[0], generator, pair_users.device)


@BATCHINGS.register("users", UsersBatchingOptions)
def _users(pair_users: Tensor, options: UsersBatchingOptions, generator: torch.Generator) -> Tensor:
    """Each user's pairs shuffled into chunks of K, chunks shuffled, batches of B cut from the sequence."""
    return users_order(pair_users, options.positives_per_user, generator)
