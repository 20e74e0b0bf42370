"""DirectAU: alignment and uniformity of the normalised user and item embeddings (docs/LOSSES.md "DirectAU").

Wang, Yu, Ma, Zhang, Chen, Liu and Ma, "Towards Representation Alignment and
Uniformity in Collaborative Filtering", KDD 2022 (arXiv 2206.12811), after
Wang and Isola's alignment and uniformity on the hypersphere (ICML 2020).
For the batch's B training pairs (u_k, i⁺_k), with x̃ = x / ‖x‖ the
L2-normalised embedding rows:

    L = ℓ_align + γ · (ℓ_unif(users) + ℓ_unif(items)) / 2
    ℓ_align      = (1/B) Σ_k ‖ũ_k − ĩ_k‖²
    ℓ_unif(X)    = log [ (2 / (B(B − 1))) Σ_{a<b} exp(−2 ‖x̃_a − x̃_b‖²) ]

over the B user rows (``users``) and the B positive-item rows (``items``) of
the batch, duplicates kept (a user with two pairs in the batch is two rows:
a pair of equal rows contributes exp(0) = 1), as the authors' code does
(``torch.pdist`` over the batch rows; t = 2).  No negative is read: the
uniformity term over the batch's own rows is what spreads the embeddings.
A batch of one pair has no pair of rows; its uniformity terms are 0.

The embedding rows are those the scores come from (`LossBatch.user_rows`,
`LossBatch.pos_rows`: MF's tables, LightGCN's propagated layer mean), so the
score function (cosine or dot) changes evaluation only: training normalises
either way.  γ defaults to 1, the authors' released default; their
per-dataset choices were 0.5 (Beauty), 5 (Gowalla) and 1 (Yelp2018), from
the grid {0.01, 0.1, 0.2, 0.5, 1, 2, 5, 10}, the range of the search space.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from rankrobust.losses.base import LOSSES, LossBatch, _check_positive
from rankrobust.registry import log_uniform, option, positive

__all__ = ["directau", "alignment", "uniformity", "DirectAUOptions"]


def alignment(users: Tensor, items: Tensor) -> Tensor:
    """ℓ_align = mean_k ‖ũ_k − ĩ_k‖² of the L2-normalised rows ``users`` [B, d] and ``items`` [B, d] → scalar."""
    return (F.normalize(users, dim=1) - F.normalize(items, dim=1)).pow(2).sum(dim=1).mean()


def uniformity(rows: Tensor, t: float = 2.0) -> Tensor:
    """ℓ_unif = log mean_{a<b} exp(−t ‖x̃_a − x̃_b‖²) over the B L2-normalised ``rows`` [B, d] → scalar.

    On the unit sphere ‖x̃_a − x̃_b‖² = 2 − 2 x̃_a·x̃_b, so the pairs come
    from one [B, B] Gram matrix; the mean over a < b equals the mean over
    a ≠ b, taken as a log-sum-exp over the off-diagonal entries (finite for
    every input).  0 for B < 2 (no pair).  No host sync.
    """
    b = rows.shape[0]
    if b < 2:  # a static shape: no data-dependent branch
        return rows.sum() * 0.0
    x = F.normalize(rows, dim=1)
    sq = (2.0 - 2.0 * (x @ x.T)).clamp(min=0.0)  # ‖x̃_a − x̃_b‖², rounding kept ≥ 0
    off = ~torch.eye(b, dtype=torch.bool, device=rows.device)
    logits = (-t * sq).masked_fill(~off, -math.inf)
    return torch.logsumexp(logits.reshape(-1), dim=0) - math.log(b * (b - 1))


def directau(batch: LossBatch, *, gamma: float) -> Tensor:
    """DirectAU: ℓ_align + γ·(ℓ_unif(users) + ℓ_unif(items))/2 on the batch's user and positive-item rows.

    Reads ``batch.user_rows`` [B, d] and ``batch.pos_rows`` [B, d] (declared
    with ``reads=``), nothing else; γ > 0 (ValueError otherwise).  Returns
    the scalar loss (formulas: the module docstring).
    """
    g = _check_positive("gamma", gamma)
    users, items = batch.user_rows, batch.pos_rows
    return alignment(users, items) + g * (uniformity(users) + uniformity(items)) / 2


@dataclass
class DirectAUOptions:
    gamma: float = option(1.0, "DirectAU weight γ of the uniformity term (authors' default 1)", check=positive,
                          flag="--gamma", search=log_uniform(0.01, 10.0))


LOSSES.register("directau", DirectAUOptions, reads={"user_rows", "pos_rows"}, family="alignment-uniformity",
                summary="DirectAU: alignment of each pair plus γ·uniformity of the batch's users and items "
                        "(normalised embeddings)")(directau)
