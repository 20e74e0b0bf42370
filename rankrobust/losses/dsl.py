"""DSL, the Dual-scale Softmax Loss (Sahyouni et al., arXiv 2602.07206, 2026), as reconstructed here.

SL with two detached branches: negatives reweighted within each pair by
hardness and item–item similarity (the paper's κ-branch), and a per-pair
temperature from the competition over the pair's top-scored negatives (its
competition-aware branch).  The paper's equations could not be read here (only
its abstract and third-party summaries): every formula below is this
project's reconstruction from that description, each choice named in
docs/LOSSES.md (`dsl`).  Not a score-only loss: it reads the item rows of the
positive and the negatives (`rankrobust.losses.base.LossBatch`) for the
similarity; `dsl_scores` is the same loss on scores plus a given similarity.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from rankrobust.registry import ConfigError, non_negative, option, positive, probability, uniform

from .base import (LOSSES, SCORES, TAU_SPACE, LossBatch, _check_number, _check_positive, _check_shapes,
                   _has_negative, _masked_logsumexp, _neg_count)

__all__ = ["dsl", "dsl_scores", "DSLOptions", "DSL_MAX_SCALE", "item_similarity"]

#: DSL: a pair's temperature τ_k stays within [τ/C, τ·C] of the common τ (C = this), whatever γ and the scores
DSL_MAX_SCALE = 10.0


def item_similarity(pos_rows: Tensor, neg_rows: Tensor) -> Tensor:
    """c_kj = cos(e_{i⁺_k}, e_{j}), detached: pos_rows [B, d], neg_rows [B, M, d] → [B, M] in [−1, 1].

    A zero row has similarity 0 to everything (its norm is clamped at 1e-12).
    """
    p = F.normalize(pos_rows.detach(), dim=-1, eps=1e-12)
    n = F.normalize(neg_rows.detach(), dim=-1, eps=1e-12)
    return torch.einsum("bd,bmd->bm", p, n)


def _slate_intensity(d: Tensor, neg_mask: Tensor | None, slate: int) -> Tensor:
    """I_k = mean of d_kj over the row's ``slate`` largest real d_kj (all of them when fewer) → [B]; 0 without any.

    d [B, M] detached.  Ties at the slate's edge do not matter: the tied values are equal.
    """
    k = min(slate, d.shape[1])
    x = d if neg_mask is None else d.masked_fill(~neg_mask, -math.inf)
    top = torch.topk(x, k, dim=1).values
    real = torch.isfinite(top)
    return torch.where(real, top, torch.zeros_like(top)).sum(dim=1) / real.sum(dim=1).clamp(min=1).to(d.dtype)


def dsl_scores(pos: Tensor, neg: Tensor, item_sim: Tensor, *, neg_mask: Tensor | None = None, tau: float = 0.1,
               kappa: float = 1.0, mix: float = 0.5, slate: int = 10, gamma: float = 1.0) -> Tensor:
    """DSL on scores and a given item–item similarity: mean_k ℓ_k (`dsl` computes the similarity from the rows).

    With d_kj = s⁻_kj − s⁺_k over the row's M_k real negatives and c_kj =
    ``item_sim`` (both branches detached):

    - κ-branch: ω_kj = M_k·softmax_j(κ·z_kj), z_kj = ρ·d_kj + (1 − ρ)·c_kj
      (ρ = ``mix``): mean-one weights favouring hard negatives and negatives
      similar to the positive item; κ = 0 gives ω = 1;
    - competition-aware branch: I_k = mean of d_kj over the slate S_k of the
      row's K = ``slate`` largest d (its strongest competitors), and
      τ_k = τ·exp(clamp(γ·(I_k − Ī), ±log C)) with Ī the mean of I over the
      batch's rows with a negative and C = `DSL_MAX_SCALE` (γ > 0: a pair whose
      competitors come close gets a softer softmax); γ = 0 gives τ_k = τ;

    ℓ_k = (τ_k/τ)·log Σ_j ω_kj·e^{d_kj/τ_k}.  The factor τ_k/τ keeps the
    gradient's scale that of SL (Σ_j ∂ℓ/∂s⁻_kj = 1/τ): τ_k changes how it is
    shared among the negatives, not how large it is.  κ = 0, γ = 0 is ``sl``.
    A row without a real negative has loss 0 and no part in Ī.
    Shapes: pos [B], neg [B, M], item_sim [B, M] -> scalar.  τ > 0, κ >= 0,
    ρ ∈ [0, 1], K >= 1 (an int), γ any finite number; ValueError otherwise.
    """
    _check_shapes(pos, neg, None)
    if tuple(item_sim.shape) != tuple(neg.shape):
        raise ValueError(f"item_sim must have the shape of neg {tuple(neg.shape)}, got {tuple(item_sim.shape)}")
    t = _check_positive("tau", tau)
    kp = _check_positive("kappa", kappa, allow_zero=True)
    rho = _check_number("mix", mix, low=0.0, high=1.0)
    if isinstance(slate, bool) or not isinstance(slate, int) or slate < 1:
        raise ValueError(f"slate must be an integer >= 1, got {slate!r}")
    g = _check_number("gamma", gamma)
    d = neg - pos[:, None]
    dd = d.detach()
    has = _has_negative(neg, neg_mask)
    # κ-branch: log ω = log M_k + log softmax over the real negatives of κ·z
    kz = kp * (rho * dd + (1.0 - rho) * item_sim.detach().to(dd.dtype))
    log_w = torch.log(_neg_count(neg, neg_mask))[:, None] + kz - _masked_logsumexp(kz, neg_mask)[:, None]
    # competition-aware branch: the per-pair temperature
    intensity = _slate_intensity(dd, neg_mask, slate)
    hf = has.to(d.dtype)
    centre = (intensity * hf).sum() / hf.sum().clamp(min=1.0)
    log_scale = torch.clamp(g * (intensity - centre), -math.log(DSL_MAX_SCALE), math.log(DSL_MAX_SCALE))
    scale = torch.exp(log_scale)  # τ_k / τ
    loss = scale * _masked_logsumexp(d / (t * scale[:, None]) + log_w, neg_mask)
    return torch.where(has, loss, torch.zeros_like(loss)).mean()


def dsl(batch: LossBatch, *, tau: float = 0.1, kappa: float = 1.0, mix: float = 0.5, slate: int = 10,
        gamma: float = 1.0) -> Tensor:
    """Dual-scale softmax loss on a `LossBatch`: `dsl_scores` with c_kj = cos(I[i⁺_k], I[j]) (`item_similarity`).

    Reads ``pos``, ``neg``, ``neg_mask`` and the item rows ``pos_rows`` [B, d],
    ``neg_rows`` [B, M, d] of the tables the scores come from (a [B, M, d]
    gather: with all-items negatives it is [B, n_items, d]).
    """
    sim = item_similarity(batch.pos_rows, batch.neg_rows)
    return dsl_scores(batch.pos, batch.neg, sim, neg_mask=batch.neg_mask, tau=tau, kappa=kappa, mix=mix,
                      slate=slate, gamma=gamma)


@dataclass
class DSLOptions:
    NOT_SEARCHED: ClassVar[dict[str, str]] = {
        "slate": "the size of the competitor slate only sets which negatives define a pair's competition; with "
                 "γ searched it is a resolution knob, fixed at 10 (at most M)"}
    tau: float = option(0.1, "DSL base temperature τ (SL's τ)", check=positive, flag="--tau", search=TAU_SPACE)
    kappa: float = option(1.0, "DSL κ-branch strength κ of the negative weights softmax(κ·z) (0: no reweighting)",
                          check=non_negative, search=uniform(0.0, 5.0))
    mix: float = option(0.5, "DSL share ρ of hardness (s⁻ − s⁺) against item–item similarity in z",
                        check=probability, search=uniform(0.0, 1.0))
    slate: int = option(10, "DSL competitor slate size K: a pair's strongest negatives defining its competition",
                        check=positive)
    gamma: float = option(1.0, "DSL strength γ of the per-pair temperature τ·exp(γ·(I − Ī)) (0: one τ; < 0: "
                               "sharper for close competition)", search=uniform(-2.0, 2.0))

    def validate(self) -> None:
        if isinstance(self.slate, bool) or not isinstance(self.slate, int):
            raise ConfigError(f"loss.slate must be an integer >= 1, got {self.slate!r}")
        if not math.isfinite(self.gamma):
            raise ConfigError(f"loss.gamma must be a finite number, got {self.gamma!r}")


LOSSES.register("dsl", DSLOptions, reads=SCORES | {"pos_rows", "neg_rows"}, family="softmax")(dsl)
