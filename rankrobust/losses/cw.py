"""CW, the Corrected and Weighted loss (Yin et al., arXiv 2601.04291, 2026): a false-negative-robust softmax loss.

A score-only loss (`rankrobust.losses.base`: ``fn(pos [B], neg [B, M], *,
users=None, neg_mask=None, **hyper) -> scalar``) that reads ``users`` as well,
to average over the positives of the same user in the batch.  Its formula, the
parts taken from the paper, the choices the paper leaves open (or that could
not be read here) and the defaults are in docs/LOSSES.md (`cw`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from rankrobust.registry import choice, log_uniform, option, positive, unit_interval

from .base import (LOSSES, SCORE_INPUTS, TAU_SPACE, _check_number, _check_positive, _check_shapes,
                   _group_logmeanexp, _has_negative, _masked_logsumexp, _neg_count)
from .denoising import DCL_FLOOR

__all__ = ["cw", "CWOptions", "cw_log_weights"]


def cw_log_weights(d: Tensor, neg_mask: Tensor | None, tau_w: float) -> Tensor:
    """log w̃_kj, CW's mean-one confidence weights of the negatives, detached; d [B, M] = s⁻ − s⁺ → [B, M].

    w_kj = σ(−d_kj/τ_w), the Bradley–Terry probability that the positive
    outranks negative j at temperature τ_w, normalised to mean one over the
    row's real negatives: w̃_kj = w_kj / mean_{j'} w_kj'.  Masked entries get
    values too (the caller's sums leave them out).
    """
    log_w = F.logsigmoid(-d.detach() / tau_w)
    log_mean = _masked_logsumexp(log_w, neg_mask) - torch.log(_neg_count(d, neg_mask))
    return log_w - log_mean[:, None]


def cw(pos: Tensor, neg: Tensor, *, users: Tensor | None = None, neg_mask: Tensor | None = None,
       tau: float = 0.1, tau_plus: float = 0.01, tau_w: float = 0.1) -> Tensor:
    """Corrected and Weighted loss: mean_k ℓ_k, the sampled softmax in difference form with two changes.

    With d_kj = s⁻_kj − s⁺_k, M_k the row's real negatives, τ⁺ = ``tau_plus``:

    - *weighted* (detached, `cw_log_weights`): E_k = (1/M_k) Σ_j w̃_kj·e^{d_kj/τ},
      w̃_kj ∝ σ(−d_kj/τ_w) with mean one, so confidently ranked (easy)
      negatives weigh more than uncertain ones (likely false negatives);
    - *corrected* (PU, the paper's Lemma 1): the sampled items are a mixture
      p = τ⁺p⁺ + (1 − τ⁺)p⁻ of positives and negatives, so the negative-only
      expectation is Ê⁻_k = (E_k − τ⁺·E⁺_k)/(1 − τ⁺), with
      E⁺_k = mean_{k': u_k' = u_k} e^{(s⁺_k' − s⁺_k)/τ} over the positives of
      the same user in the batch (1 when ``users`` is None or u_k has one pair);
      Ê⁻_k is floored at e^{(−1 − s⁺_k)/τ} (the smallest e^{d/τ} on cosine
      scores, as DCL floors its estimate at e^{−1/τ} per negative).

    ℓ_k = log(M_k·Ê⁻_k), in log space: the difference as log E + log(1 − e^r),
    r = log τ⁺ + log E⁺ − log E capped at log(1 − `DCL_FLOOR`).  τ⁺ = 0 drops the
    correction (and the floor); τ⁺ = 0 with τ_w → ∞ is ``sl`` (−s⁺/τ + log Σ_j e^{s⁻/τ}).
    A row without a real negative has loss 0.
    Shapes: pos [B], neg [B, M], users [B] (int) or None -> scalar.  τ, τ_w > 0, τ⁺ ∈ [0, 1).
    """
    _check_shapes(pos, neg, users)
    t = _check_positive("tau", tau)
    tp = _check_number("tau_plus", tau_plus, low=0.0, high=1.0, high_open=True)
    tw = _check_positive("tau_w", tau_w)
    d = neg - pos[:, None]
    log_sum = _masked_logsumexp(d / t + cw_log_weights(d, neg_mask, tw), neg_mask)  # log Σ_j w̃ e^{d/τ}
    if tp > 0:
        log_m = torch.log(_neg_count(neg, neg_mask))
        log_e = log_sum - log_m
        log_e_pos = _group_logmeanexp(pos / t, users) - pos / t
        r = torch.clamp(math.log(tp) + log_e_pos - log_e, max=math.log1p(-DCL_FLOOR))
        corrected = log_e + torch.log(-torch.expm1(r)) - math.log1p(-tp)
        loss = log_m + torch.maximum(corrected, (-1.0 - pos) / t)
    else:
        loss = log_sum
    return torch.where(_has_negative(neg, neg_mask), loss, torch.zeros_like(loss)).mean()


@dataclass
class CWOptions:
    tau: float = option(0.1, "CW softmax temperature τ", check=positive, flag="--tau", search=TAU_SPACE)
    tau_plus: float = option(0.01, "CW class prior τ⁺: expected share of positives among the sampled negatives "
                                   "(0: no correction)", check=unit_interval,
                             search=choice(0.0, 0.001, 0.003, 0.01, 0.03, 0.1))
    tau_w: float = option(0.1, "CW weight temperature τ_w of w = σ(−(s⁻ − s⁺)/τ_w) (τ_w = τ: each negative's "
                               "term saturates at σ((s⁻ − s⁺)/τ))", check=positive, search=log_uniform(0.02, 5.0))


LOSSES.register("cw", CWOptions, reads=SCORE_INPUTS, family="denoising")(cw)
