"""Item popularity: the one place that says what "head", "tail" and "popularity group" mean.

**Popularity** φ(i) of item i is `rankrobust.data.popularity.item_popularity`,
the one definition (users with item i in a training matrix) and the place that
says which matrix each protocol counts: the ``"seen"`` one (clean ∪ injected
noisy positives) for the fairness probe, the ``"trained"`` one for the variance
probe's head, the ``"clean"`` split for the t-SNE colours of fig. 7.  Every notion below is a
function of φ alone, deterministic, with ties broken by item id, so the same
counts always give the same split.  There are four notions (the groups come
in two modes), each kept because a protocol or a figure needs exactly it:

- `popularity_groups` with ``mode="interactions"`` (the default): G groups
  (0 = tail … G−1 = head) of ≈ equal *interactions*.  Items are sorted
  ascending by φ (ties: lower id first); the item at sorted position p goes to
  group ⌊G·C_p/C⌋, C_p = φ of the items before it, C = Σφ.  Used for the
  per-group metrics, PopREO and PopRSP of docs/PROTOCOLS.md §5 (`analysis.fairness`,
  G = 10) and fig. 4.
- `popularity_groups` with ``mode="items"``: the same order cut into G groups
  of equal *item* counts (±1), position p → ⌊G·p/n_items⌋.  Used for the
  fairness tables' items mode (``fairness_table(..., modes=("items",))``).
- `popularity_terciles`: ``popularity_groups(φ, 3, "items")`` named
  ``tail`` / ``mid`` / ``head`` (`TERCILE_LABELS`), a third of the items each.
  Used for the t-SNE colours of fig. 7.
- `short_head_mask` / `long_tail_mask`: the *short head* = the shortest
  prefix of the items by *descending* φ whose cumulative φ reaches 80 % of C
  (Abdollahpouri et al.'s short head, the one Elliot's ``Popularity`` builds;
  zero-count items are always tail); the *long tail* = the rest.  Used for
  APLT and for the Elliot-convention PopREO / PopRSP (two groups: short head
  and long tail, `analysis.fairness`; docs/METRICS.md).
- `head_items`: head = the ⌈0.2·n_items⌉ items with the largest φ (ties: lower
  id first); the rest is "not head".  Used for the popularity score gap of
  `analysis.variance` (docs/PROTOCOLS.md §6).

How they relate: the interactions-mode groups and `long_tail_mask` both cut by
*interaction mass*, whereas the items-mode groups, the terciles and
`head_items` cut by *item rank* (the head is a fixed share of the catalogue).
They give different heads: on the embedded lastfm training split (2,762
items) the 80 %-interaction head of `long_tail_mask` holds 1,014 items, the
default `head_items` 553 (which hold 67 % of the interactions), and group 9 of
ten interaction groups 17 items.  Ties: `popularity_groups` (and so the
terciles) sorts ascending with lower ids first, so among equally popular items
the *higher* ids land in the more popular group; `long_tail_mask` uses the
exact reverse order (consistent with the groups); `head_items` sorts
descending with lower ids first (its historical order, kept so that the
variance tables recorded so far stay reproducible).

Change for the t-SNE colours (fig. 7): they used to be ``np.digitize``
against the 1/3 and 2/3 quantiles of the counts of the *sampled* items, so
tied counts at a cut value all went to the upper bin and the colours were
unequal and sample-dependent (768 / 1,002 / 992 items on the whole lastfm
catalogue).  They are now the items-mode terciles of the *whole catalogue*
(`popularity_terciles`), restricted to the sampled items: each colour holds a
third of the catalogue by rank (920 / 921 / 921 on lastfm).
"""
from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "GROUP_MODES",
    "TERCILE_LABELS",
    "as_counts",
    "popularity_groups",
    "popularity_terciles",
    "short_head_mask",
    "long_tail_mask",
    "head_groups",
    "head_items",
]

#: the two ways `popularity_groups` cuts the sorted items
GROUP_MODES = ("interactions", "items")
#: names of the three `popularity_terciles`, least popular first
TERCILE_LABELS = ("tail", "mid", "head")


def as_counts(item_counts: np.ndarray | Tensor, device: torch.device | str | None = None) -> Tensor:
    """Validated popularity vector: LongTensor ``[n_items]`` of non-negative integer counts.

    Accepts integer or integral-valued float arrays/tensors; raises ValueError for
    non-integer values, negative counts or a shape other than 1-D.  Moved to
    ``device`` when given (otherwise it stays where it is; numpy input lands on the CPU).
    """
    t = torch.as_tensor(item_counts)
    if device is not None:
        t = t.to(device)
    if t.is_floating_point():
        if not torch.equal(t, t.round()):
            raise ValueError("item_counts must be integer counts")
    t = t.to(torch.int64)
    if t.dim() != 1:
        raise ValueError(f"item_counts must be 1-D [n_items], got shape {tuple(t.shape)}")
    if t.numel() and int(t.min()) < 0:
        raise ValueError("item_counts must be non-negative")
    return t


def popularity_groups(
    item_counts: np.ndarray | Tensor,
    n_groups: int = 10,
    mode: str = "interactions",
    device: torch.device | str | None = None,
) -> Tensor:
    """Popularity group id of every item, LongTensor [n_items] in [0, n_groups).

    Items are sorted ascending by ``item_counts`` (stable: ties by ascending id).
    ``mode="interactions"``: item at sorted position p gets
    ``floor(n_groups · C_p / C)`` (C_p = interactions of the items before it,
    C = all interactions), i.e. groups of ≈ equal total interactions, group 0 =
    the long tail, group G−1 = the head; groups can be empty when single items
    hold more than C/G.  ``mode="items"``: ``floor(n_groups · p / n_items)``,
    groups of equal item counts (±1).  All-zero counts fall back to ``"items"``.
    Group ids never decrease with popularity.  Returned on ``device`` (default:
    that of ``item_counts``).
    """
    if mode not in GROUP_MODES:
        raise ValueError(f"mode must be one of {GROUP_MODES}, got {mode!r}")
    if n_groups < 1:
        raise ValueError(f"n_groups must be >= 1, got {n_groups}")
    c = as_counts(item_counts, device)
    n = c.numel()
    order = torch.argsort(c, stable=True)
    sc = c[order]
    total = int(sc.sum()) if n else 0
    if mode == "interactions" and total > 0:
        before = torch.cumsum(sc, 0) - sc
        g_sorted = torch.div(before * n_groups, total, rounding_mode="floor")
    else:
        g_sorted = torch.div(torch.arange(n, device=c.device) * n_groups, max(n, 1), rounding_mode="floor")
    g_sorted = g_sorted.clamp(max=n_groups - 1)
    groups = torch.empty_like(g_sorted)
    groups[order] = g_sorted
    return groups


def popularity_terciles(item_counts: np.ndarray | Tensor) -> np.ndarray:
    """Tercile label of every item: str array ``[n_items]`` of ``"tail"``, ``"mid"``, ``"head"``.

    ``popularity_groups(item_counts, n_groups=3, mode="items")`` named with
    `TERCILE_LABELS`: a third of the items each (±1) by ascending popularity,
    ties by ascending id.  Compute it on the whole catalogue and index the
    result with a sample of items (fig. 7), so the colours do not depend on the sample.
    """
    groups = popularity_groups(item_counts, n_groups=3, mode="items").cpu().numpy()
    return np.asarray(TERCILE_LABELS)[groups]


def short_head_mask(item_counts: np.ndarray | Tensor, head_share: float = 0.8) -> Tensor:
    """BoolTensor [n_items], True for the *short head*: the one definition of "head" by interaction share.

    The head is the shortest prefix of the items in descending popularity
    (ties: higher id first, i.e. the reverse of ``popularity_groups``' order)
    whose cumulative interaction share reaches ``head_share`` (0.8: the
    short head of Abdollahpouri et al., as Elliot's ``Popularity`` builds it):
    an item is head iff the interactions of the items before it are
    < ``head_share`` · total and it has at least one interaction.  Elliot breaks
    ties at the boundary by its internal item order instead; the sets differ
    only when the item crossing 80 % ties with the first item after it.
    """
    c = as_counts(item_counts)
    order = torch.argsort(c, stable=True).flip(0)
    sc = c[order].to(torch.float64)
    before = torch.cumsum(sc, 0) - sc
    head_sorted = (before < head_share * float(sc.sum())) & (sc > 0)
    head = torch.zeros(c.numel(), dtype=torch.bool, device=c.device)
    head[order] = head_sorted
    return head


def long_tail_mask(item_counts: np.ndarray | Tensor, head_share: float = 0.8) -> Tensor:
    """BoolTensor [n_items], True for long-tail items: every item outside `short_head_mask` (APLT's tail,
    docs/PROTOCOLS.md §5)."""
    return ~short_head_mask(item_counts, head_share)


def head_groups(item_counts: np.ndarray | Tensor, head_share: float = 0.8,
                device: torch.device | str | None = None) -> Tensor:
    """The two popularity groups of the Elliot-convention PopREO / PopRSP: LongTensor [n_items], 0 = long tail, 1 = short head.

    `short_head_mask` as group ids (the same order as `popularity_groups`: 0 = least popular), on ``device``.
    """
    g = short_head_mask(item_counts, head_share).to(torch.int64)
    return g.to(device) if device is not None else g


def head_items(item_counts: Tensor | np.ndarray, head_fraction: float = 0.2) -> Tensor:
    """Boolean mask ``[n_items]`` of the head: the ⌈head_fraction · n_items⌉ most popular items.

    Items are ranked by descending count, ties by ascending id (a stable sort);
    the head holds at least one item and, with two or more items, leaves at
    least one outside.  Used by the popularity score gap of `analysis.variance`.
    """
    if not 0.0 < head_fraction < 1.0:
        raise ValueError(f"head_fraction must lie in (0, 1), got {head_fraction}")
    counts = torch.as_tensor(np.asarray(item_counts) if not isinstance(item_counts, Tensor) else item_counts)
    n = counts.shape[0]
    n_head = min(max(1, math.ceil(head_fraction * n - 1e-9)), n - 1) if n > 1 else n
    order = torch.sort(-counts.to(torch.float64), stable=True).indices
    mask = torch.zeros(n, dtype=torch.bool, device=counts.device)
    mask[order[:n_head]] = True
    return mask
