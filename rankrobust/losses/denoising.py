"""The noise-robust baselines (docs/PROTOCOLS.md §10): T-CE, R-CE (noisy positives), DCL, RINCE (false negatives).

Same interface and guarantees as every loss (`rankrobust.losses.base`).  T-CE
is stateful: its drop rate grows with the number of optimiser steps, counted
on the device by `TCEState` (`rankrobust.loss_state`), which hands the current
rate to the function as the keyword ``drop_rate`` every batch.  Formulas,
sources and defaults are in docs/LOSSES.md.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rankrobust.loss_state import LossState
from rankrobust.registry import ConfigError, integers, log_uniform, non_negative, option, positive, uniform, unit_interval

from .base import (LOSSES, TAU_SPACE, _check_number, _check_positive, _check_shapes, _has_negative,
                   _masked_logsumexp, _masked_sum, _neg_count)

__all__ = ["tce", "rce", "dcl", "rince", "TCEOptions", "TCEState", "RCEOptions", "DCLOptions", "RINCEOptions",
           "DCL_FLOOR"]

#: DCL: the estimated negative mass is kept at least this far (relatively) below the observed one
DCL_FLOOR = 1e-6


# --------------------------------------------------------------------------- T-CE
def tce(pos: Tensor, neg: Tensor, *, users: Tensor | None = None, neg_mask: Tensor | None = None,
        tau: float = 0.1, drop_rate: Tensor) -> Tensor:
    """Truncated BCE (Wang et al., WSDM 2021): BCE without the ⌊ρ·B⌋ positives of largest loss in the batch.

    Logits are s/τ.  ℓ_k = keep_k·softplus(−s⁺_k/τ) + Σ_j softplus(s⁻_kj/τ), mean
    over the B pairs (a dropped positive contributes 0; its negatives stay).
    keep_k is False for the ⌊ρ·B⌋ positives whose loss is largest (ties broken
    by position), ρ = ``drop_rate`` (a 0-dim tensor or number in [0, 1],
    `TCEState` grows it with the step count).  The ranking is on the detached
    loss and uses no host sync.  ρ = 0 is ``bce`` on s/τ.
    Shapes: pos [B], neg [B, M] -> scalar.  ``users`` is ignored.
    """
    _check_shapes(pos, neg, users)
    t = _check_positive("tau", tau)
    b = pos.shape[0]
    pos_loss = F.softplus(-pos / t)
    rho = torch.as_tensor(drop_rate, dtype=pos.dtype, device=pos.device)
    n_drop = torch.floor(rho * b + 1e-9)  # ρ·B up to rounding of the float product
    order = torch.argsort(pos_loss.detach(), descending=True, stable=True)
    rank = torch.empty_like(order).scatter_(0, order, torch.arange(b, device=pos.device))
    keep = (rank.to(pos.dtype) >= n_drop).to(pos.dtype)
    return (keep * pos_loss + _masked_sum(F.softplus(neg / t), neg_mask)).mean()


class TCEState(LossState):
    """T-CE's schedule: ρ(t) = ρ_max · min(t / T, 1) at optimiser step t = 0, 1, … (a device counter).

    ``batch_kwargs`` returns the current ρ and advances the counter in place on
    the device (no host sync).  It runs outside ``torch.compile``
    (``torch.compiler.disable``: a graph break, not a sync), because dynamo
    drops an in-place update of a buffer of a module it does not trace as
    the compiled function's own (tested in tests/test_losses_successors.py).
    """

    def __init__(self, max_rate: float, num_gradual: int) -> None:
        super().__init__()
        self.max_rate, self.num_gradual = max_rate, num_gradual
        self.register_buffer("step", torch.zeros((), dtype=torch.float64))
        # applied here, not as a decorator: torch.compiler.disable imports dynamo (~2 s of every CLI start)
        self.batch_kwargs = torch.compiler.disable(self._advance)

    def rate(self) -> Tensor:
        return self.max_rate * torch.clamp(self.step / self.num_gradual, max=1.0)

    def _advance(self, users: Tensor, pos_items: Tensor, neg_items: Tensor) -> dict[str, Tensor]:
        """`LossState.batch_kwargs`: the current ρ, then the step counter advanced in place."""
        rho = self.rate()
        self.step.add_(1.0)
        return {"drop_rate": rho}

    def epoch_end(self, epoch: int, model: nn.Module) -> dict[str, float]:
        return {"tce_drop_rate": float(self.rate()), "tce_steps": float(self.step)}


@dataclass
class TCEOptions:
    STATE_KEYWORDS: ClassVar[tuple[str, ...]] = ("drop_rate",)
    tau: float = option(0.1, "logit temperature: BCE on s/τ (τ = 1 on dot scores, as in the papers)",
                        check=positive, flag="--tau", search=TAU_SPACE)
    max_drop_rate: float = option(0.2, "T-CE: largest share ρ_max of a batch's positives dropped",
                                  check=unit_interval, search=uniform(0.05, 0.5))
    num_gradual: int = option(1000, "T-CE: optimiser steps T over which ρ grows from 0 to ρ_max", check=positive,
                              search=integers(100, 30000, log=True))

    def loss_kwargs(self) -> dict:
        return {"tau": self.tau}

    def make_state(self, train: Any, device: torch.device | str) -> TCEState:
        return TCEState(self.max_drop_rate, self.num_gradual)


# --------------------------------------------------------------------------- R-CE
def rce(pos: Tensor, neg: Tensor, *, users: Tensor | None = None, neg_mask: Tensor | None = None,
        tau: float = 0.1, beta: float = 0.25, weight_negatives: bool = True) -> Tensor:
    """Reweighted BCE (Wang et al., WSDM 2021): BCE on s/τ with detached weights.

    ℓ_k = σ(x⁺_k)^β·softplus(−x⁺_k) + Σ_j w⁻_kj·softplus(x⁻_kj), x = s/τ, σ the
    sigmoid, w⁻ = (1 − σ(x⁻))^β when ``weight_negatives`` (the authors' code)
    else 1 (the positives-only form).  β = 0 is ``bce`` on s/τ.
    Shapes: pos [B], neg [B, M] -> scalar.  ``users`` is ignored.
    """
    _check_shapes(pos, neg, users)
    t = _check_positive("tau", tau)
    bt = _check_positive("beta", beta, allow_zero=True)
    if not isinstance(weight_negatives, bool):
        raise ValueError(f"weight_negatives must be True or False, got {weight_negatives!r}")
    xp, xn = pos / t, neg / t
    wp = torch.exp(bt * F.logsigmoid(xp.detach()))
    pos_term = wp * F.softplus(-xp)
    neg_loss = F.softplus(xn)
    if weight_negatives:
        neg_loss = torch.exp(bt * F.logsigmoid(-xn.detach())) * neg_loss
    return (pos_term + _masked_sum(neg_loss, neg_mask)).mean()


@dataclass
class RCEOptions:
    NOT_SEARCHED: ClassVar[dict[str, str]] = {
        "weight_negatives": "a variant of the loss (positives only, or both as in the authors' code), compared "
                            "as its own arm"}
    tau: float = option(0.1, "logit temperature: BCE on s/τ (τ = 1 on dot scores, as in the papers)",
                        check=positive, flag="--tau", search=TAU_SPACE)
    beta: float = option(0.25, "R-CE weight exponent β: weight σ(s⁺/τ)^β (detached)", check=non_negative,
                         search=uniform(0.0, 1.0))
    weight_negatives: bool = option(True, "R-CE: weight negatives by (1 − σ(s⁻/τ))^β too (the authors' code)")


# --------------------------------------------------------------------------- DCL
def dcl(pos: Tensor, neg: Tensor, *, users: Tensor | None = None, neg_mask: Tensor | None = None,
        tau: float = 0.1, tau_plus: float = 0.1) -> Tensor:
    """Debiased contrastive loss (Chuang et al., NeurIPS 2020): mean_k −log[e^{s⁺/τ} / (e^{s⁺/τ} + N_g)].

    N_g = max((Σ_j e^{s⁻_j/τ} − τ⁺·M·e^{s⁺/τ}) / (1 − τ⁺), M·e^{−1/τ}) with M the
    row's real negatives and τ⁺ = ``tau_plus`` the class prior (the share of
    false negatives among the sampled ones); τ⁺ = 0 is InfoNCE (SL with the
    positive in the normaliser) up to the floor M·e^{−1/τ}.  In log space:
    ℓ = softplus(log N_g − s⁺/τ); the difference is computed as
    LSE + log(1 − e^{r}), r = log(τ⁺M) + s⁺/τ − LSE, with r capped at
    log(1 − `DCL_FLOOR`) (where the floor usually wins anyway), so value and
    gradient stay finite.  A row with no real negative has loss 0.
    Shapes: pos [B], neg [B, M] -> scalar.  ``users`` is ignored.
    """
    _check_shapes(pos, neg, users)
    t = _check_positive("tau", tau)
    tp = _check_number("tau_plus", tau_plus, low=0.0, high=1.0, high_open=True)
    xp = pos / t
    lse = _masked_logsumexp(neg / t, neg_mask)
    log_m = torch.log(_neg_count(neg, neg_mask))
    if tp > 0:
        r = math.log(tp) + log_m + xp - lse
        r = torch.clamp(r, max=math.log1p(-DCL_FLOOR))
        debiased = lse + torch.log(-torch.expm1(r)) - math.log1p(-tp)
    else:
        debiased = lse
    log_ng = torch.maximum(debiased, log_m - 1.0 / t)
    loss = F.softplus(log_ng - xp)
    return torch.where(_has_negative(neg, neg_mask), loss, torch.zeros_like(loss)).mean()


@dataclass
class DCLOptions:
    tau: float = option(0.1, "DCL temperature τ", check=positive, flag="--tau", search=TAU_SPACE)
    tau_plus: float = option(0.1, "DCL class prior τ⁺ (expected share of false negatives)", check=unit_interval,
                             search=uniform(0.0, 0.5))


# --------------------------------------------------------------------------- RINCE
def rince(pos: Tensor, neg: Tensor, *, users: Tensor | None = None, neg_mask: Tensor | None = None,
          tau: float = 0.1, q: float = 0.5, lam: float = 0.01) -> Tensor:
    """Robust InfoNCE (Chuang et al., CVPR 2022): mean_k −e^{q·s⁺/τ}/q + (λ·(e^{s⁺/τ} + Σ_j e^{s⁻_j/τ}))^q/q.

    q ∈ (0, 1], λ = ``lam`` > 0.  The second term is exp(q·(log λ + logsumexp))
    /q, never a power of an overflowed sum.  The loss is exponential in q·s/τ
    by definition: with cosine scores it is finite in float32 while q/τ < 88
    (q = 0.5 at τ = 0.01 gives e^{50}); q → 0 approaches InfoNCE.
    Shapes: pos [B], neg [B, M] -> scalar.  ``users`` is ignored.
    """
    _check_shapes(pos, neg, users)
    t = _check_positive("tau", tau)
    qq = _check_number("q", q, low=0.0, high=1.0, low_open=True)
    la = _check_positive("lam", lam)
    xp = pos / t
    logits = torch.cat([xp[:, None], neg / t], dim=1)
    mask = None if neg_mask is None else torch.cat([torch.ones_like(neg_mask[:, :1]), neg_mask], dim=1)
    lse = _masked_logsumexp(logits, mask)
    return (-torch.exp(qq * xp) / qq + torch.exp(qq * (math.log(la) + lse)) / qq).mean()


@dataclass
class RINCEOptions:
    tau: float = option(0.1, "RINCE temperature τ", check=positive, flag="--tau", search=TAU_SPACE)
    q: float = option(0.5, "RINCE exponent q ∈ (0, 1] (q → 0: InfoNCE; q = 1: most robust)", check=positive,
                      search=uniform(0.1, 1.0))
    lam: float = option(0.01, "RINCE density weight λ", check=positive, search=log_uniform(1e-3, 1.0))

    def validate(self) -> None:
        if not 0 < self.q <= 1:
            raise ConfigError(f"loss.q must be in (0, 1], got {self.q!r}")


LOSSES.register("tce", TCEOptions, family="denoising")(tce)
LOSSES.register("rce", RCEOptions, family="denoising")(rce)
LOSSES.register("dcl", DCLOptions, family="denoising")(dcl)
LOSSES.register("rince", RINCEOptions, family="denoising")(rince)
