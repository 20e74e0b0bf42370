"""The losses after BSL (docs/PROTOCOLS.md §10): PSL, SL@K, AdvInfoNCE, LLPAUC and DrRL.

Same interface as every loss (`rankrobust.losses.base`): ``fn(pos [B], neg
[B, M], *, users=None, neg_mask=None, **hyper) -> scalar`` (mean over the B
pairs), ``neg_mask`` respected in every sum, mean and normaliser, finite at
τ = 0.01 with cosine scores at ±1, no host sync.  Four of them carry state
between batches through the one mechanism of `rankrobust.loss_state`: their
options class has ``make_state(train, device)`` and lists in
``STATE_KEYWORDS`` the keyword tensors the state hands to the function every
batch:

- ``slatk``: ``quantile`` [B], the user's top-K score quantile β_u, refreshed
  every ``refresh_every`` epochs from the user's positives and N sampled items;
- ``advinfonce``: ``hardness`` [B, M], the adversary's logits g(u, j) for the
  batch's negatives (trained by gradient *ascent* in its adversarial epochs);
- ``llpauc``: ``a``, ``b``, ``s_pos``, ``s_neg``, ``gamma`` (0-dim), the
  thresholds of its min–max objective (``s_pos`` and ``gamma`` ascend);
- ``drrl``: ``user_margin`` [B], the learnable per-user margin m_u.

The functions stay pure functions of their inputs: their tests compare them
with brute-force oracles given the same keyword tensors.  Formulas, sources,
defaults and the paper settings are in docs/LOSSES.md.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rankrobust.loss_state import LossState, reverse_gradient
from rankrobust.registry import (ConfigError, choice, integers, log_uniform, non_negative, one_of, option, positive,
                                 probability, uniform)

from .base import (LOSSES, TAU_SPACE, _check_number, _check_positive, _check_shapes, _has_negative,
                   _masked_logsumexp, _masked_mean, _neg_count)

__all__ = ["psl", "slatk", "advinfonce", "llpauc", "drrl", "PSL_ACTIVATIONS", "PSLOptions", "SLatKOptions",
           "SLatKState", "AdvInfoNCEOptions", "AdvInfoNCEState", "LLPAUCOptions", "LLPAUCState", "DrRLOptions",
           "DrRLState", "topk_quantiles"]

PSL_ACTIVATIONS = ("tanh", "atan", "relu")
#: floor of σ(d) before its log in PSL's atan / relu activations (σ reaches 0 there; tanh never does)
PSL_FLOOR = 1e-12


# --------------------------------------------------------------------------- PSL
def _psl_log_sigma(x: Tensor, activation: str) -> Tensor:
    """log σ(x) for PSL's surrogate activations σ (elementwise).

    tanh: log(tanh(x) + 1) = log 2 − softplus(−2x) (exact, finite everywhere);
    atan: log(arctan(x) + 1); relu: log(relu(x + 1)) — both reach 0 (x ≤ −tan 1,
    x ≤ −1), so σ is floored at `PSL_FLOOR` before the log (a mass of at most
    1e-12^{1/τ}: nothing, and a zero gradient there, where the exact one is 0 too).
    """
    if activation == "tanh":
        return math.log(2.0) - F.softplus(-2.0 * x)
    if activation == "atan":
        return torch.log(torch.clamp(torch.atan(x) + 1.0, min=PSL_FLOOR))
    return torch.log(torch.clamp(x + 1.0, min=PSL_FLOOR))


def psl(pos: Tensor, neg: Tensor, *, users: Tensor | None = None, neg_mask: Tensor | None = None,
        tau: float = 0.05, activation: str = "tanh", score_scale: float = 0.5) -> Tensor:
    """Pairwise softmax loss (Yang et al., NeurIPS 2024): mean_k log Σ_j σ(d_kj)^{1/τ}.

    d_kj = c·(s⁻_kj − s⁺_k) with c = ``score_scale`` (IR-Benchmark scores are
    cos/2: c = 0.5), σ one of ``tanh`` (tanh(d) + 1), ``atan`` (arctan(d) + 1),
    ``relu`` (relu(d + 1)).  Computed as the log-sum-exp of log σ(d)/τ over the
    real negatives.  With log σ(d) = d it is SL at temperature τ/c, which is
    why the default τ = 0.05 matches SL's τ = 0.1.
    Shapes: pos [B], neg [B, M] -> scalar.  ``users`` is ignored.
    """
    _check_shapes(pos, neg, users)
    t = _check_positive("tau", tau)
    c = _check_positive("score_scale", score_scale)
    if activation not in PSL_ACTIVATIONS:
        raise ValueError(f"unknown psl activation {activation!r}; valid ones are {list(PSL_ACTIVATIONS)}")
    d = c * (neg - pos[:, None])
    return _masked_logsumexp(_psl_log_sigma(d, activation) / t, neg_mask).mean()


@dataclass
class PSLOptions:
    NOT_SEARCHED: ClassVar[dict[str, str]] = {
        "score_scale": "c and τ act together (PSL at τ is close to SL at τ/c): τ is searched, c stays at "
                       "IR-Benchmark's 0.5"}
    tau: float = option(0.05, "PSL robustness temperature τ* (τ*/c plays SL's τ)", check=positive, flag="--tau",
                        search=log_uniform(0.005, 0.5))
    activation: str = option("tanh", "PSL surrogate activation σ of d = s⁻ − s⁺", check=one_of(*PSL_ACTIVATIONS),
                             flag="--psl-activation", search=choice(*PSL_ACTIVATIONS))
    score_scale: float = option(0.5, "PSL: scores are multiplied by c before the difference (IR-Benchmark: cos/2)",
                                check=positive)


# --------------------------------------------------------------------------- SL@K
def slatk(pos: Tensor, neg: Tensor, *, users: Tensor | None = None, neg_mask: Tensor | None = None,
          tau: float = 0.1, tau_w: float = 2.25, quantile: Tensor) -> Tensor:
    """SL@K (Yang et al., KDD 2025): mean_k sigmoid((s⁺_k − β_k)/τ_w) · log Σ_j exp((s⁻_kj − s⁺_k)/τ).

    ``quantile`` [B] (or a number) is β_{u_k}, the user's top-K score quantile
    (kept by `SLatKState`).  The weight is *not* detached (as in the authors'
    code): its gradient is part of the loss.  ``tau`` is the softmax
    temperature τ_d, ``tau_w`` the weight temperature.  A row with no real
    negative has a softmax term 0, hence a loss 0.
    Shapes: pos [B], neg [B, M], quantile [B] -> scalar.  ``users`` is ignored.
    """
    _check_shapes(pos, neg, users)
    t = _check_positive("tau", tau)
    tw = _check_positive("tau_w", tau_w)
    beta = torch.as_tensor(quantile, dtype=pos.dtype, device=pos.device)
    weight = torch.sigmoid((pos - beta) / tw)
    softmax = _masked_logsumexp((neg - pos[:, None]) / t, neg_mask)
    return (weight * softmax).mean()


def topk_quantiles(scores: Tensor, indptr: Tensor, indices: Tensor, users: Tensor, negatives: Tensor,
                   k: int) -> Tensor:
    """β_u for ``users [C]``: the k-th largest of the user's positive scores and of its sampled items' scores.

    ``scores [C, n_items]``: the users' scores against every item;
    ``indptr``/``indices``: the training CSR (long tensors, same device);
    ``negatives [C, N]``: item ids sampled for each user (an item counts as
    often as it is drawn, and a drawn positive counts twice, as in the
    authors' code, which concatenates the two score lists).  A user with fewer
    than k candidates gets the smallest one.  → [C]
    """
    starts, ends = indptr[users], indptr[users + 1]
    counts = ends - starts
    width = max(int(counts.max()) if counts.numel() else 0, 1)  # once per refresh, not in the training step
    offs = torch.arange(width, device=scores.device)
    valid = offs[None, :] < counts[:, None]
    items = indices[torch.clamp(starts[:, None] + offs[None, :], max=max(indices.numel() - 1, 0))]
    pos_scores = scores.gather(1, items).masked_fill(~valid, -math.inf)
    candidates = torch.cat([pos_scores, scores.gather(1, negatives)], dim=1)
    top = torch.topk(candidates, min(k, candidates.shape[1]), dim=1).values
    last = torch.isfinite(top).sum(dim=1).clamp(min=1) - 1  # fewer than k finite candidates: the smallest one
    return top.gather(1, last[:, None])[:, 0]


class SLatKState(LossState):
    """SL@K's per-user quantile β_u (a buffer, not learned), refreshed every ``refresh_every`` epochs.

    At the end of epoch e with e % T = 0 (and never before the first refresh:
    β starts at 0, as in the authors' code) β_u is set, for every user, to the
    K-th largest score among the user's training positives and N items drawn
    uniformly (with replacement) from the catalog, on the model's
    `final_embeddings`.  ``batch_kwargs`` hands β_{u_k} to the loss.
    """

    def __init__(self, train: Any, k: int, refresh_every: int, negatives: int, seed: int = 0,
                 chunk: int = 256) -> None:
        super().__init__()
        self.k, self.refresh_every, self.n_negatives, self.chunk = k, refresh_every, negatives, chunk
        self.n_items = train.n_items
        self.register_buffer("quantile", torch.zeros(train.n_users))
        self.register_buffer("indptr", torch.as_tensor(np.asarray(train.indptr, dtype=np.int64)))
        self.register_buffer("indices", torch.as_tensor(np.asarray(train.indices, dtype=np.int64)))
        self.seed = seed
        self.refreshes = 0

    def batch_kwargs(self, users: Tensor, pos_items: Tensor, neg_items: Tensor) -> dict[str, Tensor]:
        return {"quantile": self.quantile[users]}

    def estimate(self, U: Tensor, I: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """β for every user [n_users] from embeddings (U, I), N fresh uniform items per user."""
        out = torch.empty(U.shape[0], dtype=U.dtype, device=U.device)
        for start in range(0, U.shape[0], self.chunk):
            users = torch.arange(start, min(start + self.chunk, U.shape[0]), device=U.device)
            negs = torch.randint(0, self.n_items, (users.shape[0], self.n_negatives), generator=generator,
                                 device=U.device)
            out[users] = topk_quantiles(U[users] @ I.T, self.indptr, self.indices, users, negs, self.k)
        return out

    @torch.no_grad()
    def epoch_end(self, epoch: int, model: nn.Module) -> dict[str, float]:
        if epoch % self.refresh_every:
            return {}
        was_training = model.training
        model.eval()  # the evaluation scores (no dropout, no training-time noise of a backbone)
        U, I = model.final_embeddings()
        model.train(was_training)
        gen = torch.Generator(device=U.device).manual_seed(self.seed + epoch)
        self.quantile.copy_(self.estimate(U, I, gen).to(self.quantile.dtype))
        self.refreshes += 1
        return {"slatk_quantile_mean": float(self.quantile.mean())}


@dataclass
class SLatKOptions:
    STATE_KEYWORDS: ClassVar[tuple[str, ...]] = ("quantile",)
    NOT_SEARCHED: ClassVar[dict[str, str]] = {
        "k": "the cut-off of the metric the loss targets (set it to the evaluation's K), not a free parameter",
        "refresh_every": "how often β_u is re-estimated (an estimation cost knob)",
        "quantile_negatives": "the sample size of β_u's estimate (an estimation cost knob)"}
    tau: float = option(0.1, "SL@K softmax temperature τ_d (SL's τ)", check=positive, flag="--tau",
                        search=TAU_SPACE)
    tau_w: float = option(2.25, "SL@K weight temperature τ_w of sigmoid((s⁺ − β_u)/τ_w)", check=positive,
                          search=log_uniform(0.5, 3.0))
    k: int = option(20, "SL@K cut-off K of the top-K quantile β_u", check=positive)
    refresh_every: int = option(5, "SL@K: refresh β_u every T epochs", check=positive)
    quantile_negatives: int = option(1000, "SL@K: items N sampled per user to estimate β_u", check=positive)

    def validate(self) -> None:
        if self.quantile_negatives < self.k:
            raise ConfigError(f"loss.quantile_negatives ({self.quantile_negatives}) must be at least loss.k "
                              f"({self.k}): β_u is the K-th largest of the user's positives and N sampled items")

    def loss_kwargs(self) -> dict:
        return {"tau": self.tau, "tau_w": self.tau_w}

    def make_state(self, train: Any, device: torch.device | str) -> SLatKState:
        return SLatKState(train, self.k, self.refresh_every, self.quantile_negatives)


# --------------------------------------------------------------------------- AdvInfoNCE
def advinfonce(pos: Tensor, neg: Tensor, *, users: Tensor | None = None, neg_mask: Tensor | None = None,
               tau: float = 0.1, neg_weight: float = 64.0, hardness: Tensor) -> Tensor:
    """AdvInfoNCE (Zhang et al., NeurIPS 2023): mean_k −log[e^{s⁺/τ} / (e^{s⁺/τ} + w·N·Σ_j p_kj e^{s⁻_kj/τ})].

    p_k = softmax over the row's real negatives of ``hardness`` [B, M] (the
    adversary's logits g(u, j)); N the number of real negatives; w =
    ``neg_weight``.  Computed as softplus(log w + log N + logsumexp_j(log p_kj
    + (s⁻_kj − s⁺_k)/τ)).  With uniform p it is InfoNCE with the negative
    mass scaled by w.  A row with no real negative has loss 0.
    Shapes: pos [B], neg [B, M], hardness [B, M] -> scalar.  ``users`` is ignored.
    """
    _check_shapes(pos, neg, users)
    t = _check_positive("tau", tau)
    w = _check_positive("neg_weight", neg_weight)
    if hardness.shape != neg.shape:
        raise ValueError(f"hardness must have the shape of neg {tuple(neg.shape)}, got {tuple(hardness.shape)}")
    g = hardness.to(neg.dtype)
    log_p = g - _masked_logsumexp(g, neg_mask)[:, None]
    z = math.log(w) + torch.log(_neg_count(neg, neg_mask)) + _masked_logsumexp(log_p + (neg - pos[:, None]) / t,
                                                                                neg_mask)
    return torch.where(_has_negative(neg, neg_mask), F.softplus(z), torch.zeros_like(z)).mean()


class AdvInfoNCEState(LossState):
    """AdvInfoNCE's adversary: an MF "hardness" model g(u, j) = <a_u, a_j>, trained by gradient ascent.

    Embeddings of size ``dim`` (xavier-normal init, as in the authors' code).
    Adversarial epochs are the epochs e (1-based) with (e + 2) % ``interval``
    = 0 and e > ``warmup`` + 1 (the authors' test on their 0-based epoch
    counter), at most ``max_epochs`` of them (the
    authors' η budget: their count of adversarial epochs bounds the KL radius).
    In an adversarial epoch ``batch_kwargs`` passes the logits through
    `reverse_gradient`, so the one Adam step moves the adversary *up* the loss
    (at learning rate ``lr``) while it moves the model down; in the other
    epochs the logits are detached and the adversary does not move at all
    (no gradient, so Adam skips it).  (The authors alternate instead: a whole
    epoch updates the adversary with the model frozen.)
    """

    def __init__(self, n_users: int, n_items: int, dim: int, lr: float, interval: int, max_epochs: int,
                 warmup: int = 0, seed: int = 0) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.user = nn.Parameter(torch.empty(n_users, dim))
        self.item = nn.Parameter(torch.empty(n_items, dim))
        with torch.no_grad():
            for p in (self.user, self.item):
                std = math.sqrt(2.0 / (p.shape[0] + p.shape[1]))
                p.copy_(torch.randn(p.shape, generator=gen) * std)
        self.lr, self.interval, self.max_epochs, self.warmup = lr, interval, max_epochs, warmup
        self.adversarial_epochs = 0
        self.active = self._is_adversarial(1)

    def _is_adversarial(self, epoch: int) -> bool:
        return ((epoch + 2) % self.interval == 0 and epoch - 1 > self.warmup
                and self.adversarial_epochs < self.max_epochs)

    def param_groups(self, lr: float) -> list[dict[str, Any]]:
        return [{"params": [self.user, self.item], "lr": self.lr}]

    def logits(self, users: Tensor, items: Tensor) -> Tensor:
        """g(u, j) = <a_u, a_j> for ``users [B]`` and ``items [B, M]`` → [B, M]."""
        return torch.einsum("bd,bmd->bm", self.user[users], self.item[items])

    def batch_kwargs(self, users: Tensor, pos_items: Tensor, neg_items: Tensor) -> dict[str, Tensor]:
        g = self.logits(users, neg_items)
        return {"hardness": reverse_gradient(g) if self.active else g.detach()}

    def epoch_end(self, epoch: int, model: nn.Module) -> dict[str, float]:
        row = {"advinfonce_adversarial": float(self.active)}
        if self.active:
            self.adversarial_epochs += 1
        self.active = self._is_adversarial(epoch + 1)
        return row


@dataclass
class AdvInfoNCEOptions:
    STATE_KEYWORDS: ClassVar[tuple[str, ...]] = ("hardness",)
    NOT_SEARCHED: ClassVar[dict[str, str]] = {
        "neg_weight": "fixed at the authors' 64 by the PSL and SL@K papers' protocols",
        "adv_dim": "the adversary's capacity, fixed as the backbone's dim is (same budget for every arm)"}
    tau: float = option(0.1, "AdvInfoNCE temperature τ", check=positive, flag="--tau", search=TAU_SPACE)
    neg_weight: float = option(64.0, "AdvInfoNCE negative weight w (the authors' k_neg)", check=positive)
    adv_lr: float = option(5e-5, "AdvInfoNCE: Adam learning rate of the adversary (ascent)", check=positive,
                           search=log_uniform(1e-5, 1e-2))
    adv_interval: int = option(5, "AdvInfoNCE: an adversarial epoch every this many epochs", check=positive,
                               search=integers(2, 15))
    adv_epochs: int = option(8, "AdvInfoNCE: at most this many adversarial epochs (the authors' eta_epochs, "
                                "bounding the KL radius)", check=non_negative, search=integers(1, 20))
    adv_dim: int = option(64, "AdvInfoNCE: embedding size of the hardness model", check=positive)

    def loss_kwargs(self) -> dict:
        return {"tau": self.tau, "neg_weight": self.neg_weight}

    def make_state(self, train: Any, device: torch.device | str) -> AdvInfoNCEState:
        return AdvInfoNCEState(train.n_users, train.n_items, self.adv_dim, self.adv_lr, self.adv_interval,
                               self.adv_epochs)


# --------------------------------------------------------------------------- LLPAUC
LLPAUC_INIT = {"a": 1.0, "b": 0.0, "s_pos": 0.5, "s_neg": 0.5, "gamma": 0.0}


def llpauc(pos: Tensor, neg: Tensor, *, users: Tensor | None = None, neg_mask: Tensor | None = None,
           alpha: float = 0.7, beta: float = 0.1, kappa: float = 5.0, tau: float = 0.1,
           a: Tensor, b: Tensor, s_pos: Tensor, s_neg: Tensor, gamma: Tensor) -> Tensor:
    """Lower-left partial AUC surrogate (Shi et al., WWW 2024), the min–max objective at fixed thresholds.

    With f = sigmoid(s/τ), r_κ(x) = softplus(κx)/κ, ℓ₊(f) = (f − a)² − 2(1 + γ)f
    and ℓ₋(f) = (f − b)² + 2(1 + γ)f, pair k contributes

        −s⁺ − r_κ(−ℓ₊(f⁺_k) − s⁺)/α + s⁻ + mean_j r_κ(ℓ₋(f⁻_kj) − s⁻)/β

    and the loss is the mean over pairs minus γ² (the CVaR form of the paper's
    objective, as the authors' and IR-Benchmark's code write it).  The
    thresholds ``a``, ``b``, ``s_pos`` (s⁺), ``s_neg`` (s⁻), ``gamma`` come from
    `LLPAUCState` (descend: a, b, s⁻; ascend: s⁺, γ).  A row with no real
    negative has negative term 0.
    Shapes: pos [B], neg [B, M], thresholds 0-dim -> scalar.  ``users`` is ignored.
    """
    _check_shapes(pos, neg, users)
    al = _check_number("alpha", alpha, low=0.0, high=1.0, low_open=True)
    be = _check_number("beta", beta, low=0.0, high=1.0, low_open=True)
    k = _check_positive("kappa", kappa)
    t = _check_positive("tau", tau)
    fp, fn = torch.sigmoid(pos / t), torch.sigmoid(neg / t)
    lp = (fp - a) ** 2 - 2 * (1 + gamma) * fp
    ln = (fn - b) ** 2 + 2 * (1 + gamma) * fn
    pos_part = -s_pos - F.softplus(k * (-lp - s_pos)) / k / al
    neg_part = s_neg + _masked_mean(F.softplus(k * (ln - s_neg)) / k, neg_mask) / be
    neg_part = torch.where(_has_negative(neg, neg_mask), neg_part, torch.zeros_like(neg_part))
    return (pos_part + neg_part).mean() - gamma ** 2


class LLPAUCState(LossState):
    """LLPAUC's thresholds a, b ∈ [0, 1], s⁺ ∈ [−1, 4], s⁻ ∈ [0, 5], γ ∈ [max(−a, b − 1), 1].

    Initial values and ranges as in the paper's code (a = 1, b = 0, s± = 0.5,
    γ = 0).  The ranges are kept by clamping the parameters where the loss
    reads them (a projection in the forward pass).  s⁺ and γ are maximised
    (`reverse_gradient`), a, b and s⁻ minimised with the model, all in the one
    Adam: a and b at the model's learning rate, s± and γ at twice it (as in the
    authors' code).
    """

    def __init__(self) -> None:
        super().__init__()
        for name, value in LLPAUC_INIT.items():
            setattr(self, name, nn.Parameter(torch.tensor(float(value))))

    def param_groups(self, lr: float) -> list[dict[str, Any]]:
        return [{"params": [self.a, self.b], "lr": lr},
                {"params": [self.s_pos, self.s_neg, self.gamma], "lr": 2 * lr}]

    def values(self) -> dict[str, Tensor]:
        """The thresholds projected on their ranges (differentiable inside them)."""
        a, b = self.a.clamp(0.0, 1.0), self.b.clamp(0.0, 1.0)
        gamma = torch.maximum(self.gamma, torch.maximum(-a, b - 1)).clamp(max=1.0)
        return {"a": a, "b": b, "s_pos": self.s_pos.clamp(-1.0, 4.0), "s_neg": self.s_neg.clamp(0.0, 5.0),
                "gamma": gamma}

    def batch_kwargs(self, users: Tensor, pos_items: Tensor, neg_items: Tensor) -> dict[str, Tensor]:
        v = self.values()
        v["s_pos"] = reverse_gradient(v["s_pos"])
        v["gamma"] = reverse_gradient(v["gamma"])
        return v

    def epoch_end(self, epoch: int, model: nn.Module) -> dict[str, float]:
        return {f"llpauc_{k}": float(v.detach()) for k, v in self.values().items()}


@dataclass
class LLPAUCOptions:
    STATE_KEYWORDS: ClassVar[tuple[str, ...]] = ("a", "b", "s_pos", "s_neg", "gamma")
    NOT_SEARCHED: ClassVar[dict[str, str]] = {
        "kappa": "the sharpness of the smooth hinge standing in for relu (a smoothing knob, fixed in the papers)"}
    alpha: float = option(0.7, "LLPAUC: TPR bound α (the top α of a user's positives count)", check=probability,
                          search=uniform(0.1, 0.9))
    beta: float = option(0.1, "LLPAUC: FPR bound β (the top β of the negatives count)", check=probability,
                         search=log_uniform(0.01, 0.5))
    kappa: float = option(5.0, "LLPAUC: sharpness κ of the softplus r_κ", check=positive)
    tau: float = option(0.1, "LLPAUC: f = sigmoid(s/τ) (τ = 1 on dot scores, as in the paper)", check=positive,
                        flag="--tau", search=TAU_SPACE)

    def validate(self) -> None:
        for name in ("alpha", "beta"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"loss.{name} must be in (0, 1], got {getattr(self, name)!r}")

    def make_state(self, train: Any, device: torch.device | str) -> LLPAUCState:
        return LLPAUCState()


# --------------------------------------------------------------------------- DrRL
def _drrl_negative(neg: Tensor, margin: Tensor, neg_mask: Tensor | None, omega: float, eps: float,
                   neg_weight: float) -> Tensor:
    """N^{−1/ω*}·‖ε + w·relu(s⁻ − m)‖_{ω*} + m per row [B] (0 for a row without real negatives)."""
    p = omega / (omega - 1.0)
    x = eps + neg_weight * F.relu(neg - margin[:, None])
    power = x ** p
    total = power.sum(dim=1) if neg_mask is None else torch.where(neg_mask, power, torch.zeros_like(power)).sum(1)
    has = _has_negative(neg, neg_mask)
    norm = torch.where(has, total, torch.ones_like(total)) ** (1.0 / p)
    term = _neg_count(neg, neg_mask) ** (-1.0 / p) * norm + margin
    return torch.where(has, term, torch.zeros_like(term))


def drrl(pos: Tensor, neg: Tensor, *, users: Tensor | None = None, neg_mask: Tensor | None = None,
         omega: float = 150.0, eps: float = 0.1, neg_weight: float = 1.0, user_margin: Tensor) -> Tensor:
    """DrRL (Zhang et al., AAAI 2025), Rényi-DRO ranking loss with a learnable per-user margin.

    mean_k [relu(1 − s⁺_k) + N_k^{−1/ω*}·‖ε + w·relu(s⁻_k − m_k)‖_{ω*} + m_k], ω* = ω/(ω − 1),
    N_k the row's real negatives, m_k = ``user_margin`` [B] (m_{u_k}).  As in the
    authors' code the model's loss sees the margin detached, and the margin is
    trained on the same objective with the scores detached: the function adds
    that second term's gradient (not its value) for the margin, so the value is
    the DrRL loss and ``backward`` moves both.
    Shapes: pos [B], neg [B, M], user_margin [B] -> scalar.  ``users`` is ignored.
    """
    _check_shapes(pos, neg, users)
    om = _check_number("omega", omega, low=1.0, low_open=True)
    e = _check_positive("eps", eps)
    w = _check_positive("neg_weight", neg_weight, allow_zero=True)
    m = torch.as_tensor(user_margin, dtype=pos.dtype, device=pos.device).expand(pos.shape[0])
    model_part = F.relu(1.0 - pos) + _drrl_negative(neg, m.detach(), neg_mask, om, e, w)
    margin_part = _drrl_negative(neg.detach(), m, neg_mask, om, e, w)
    return (model_part + (margin_part - margin_part.detach())).mean()


class DrRLState(LossState):
    """DrRL's learnable per-user margin m_u (init ``init``), trained with Adam at learning rate ``lr``.

    (The authors use plain SGD for the margins; here they join the one Adam.)
    """

    def __init__(self, n_users: int, init: float, lr: float) -> None:
        super().__init__()
        self.margin = nn.Parameter(torch.full((n_users,), float(init)))
        self.lr = lr

    def param_groups(self, lr: float) -> list[dict[str, Any]]:
        return [{"params": [self.margin], "lr": self.lr}]

    def batch_kwargs(self, users: Tensor, pos_items: Tensor, neg_items: Tensor) -> dict[str, Tensor]:
        return {"user_margin": self.margin[users]}

    def epoch_end(self, epoch: int, model: nn.Module) -> dict[str, float]:
        m = self.margin.detach()
        return {"drrl_margin_mean": float(m.mean()), "drrl_margin_std": float(m.std()) if m.numel() > 1 else 0.0}


@dataclass
class DrRLOptions:
    STATE_KEYWORDS: ClassVar[tuple[str, ...]] = ("user_margin",)
    NOT_SEARCHED: ClassVar[dict[str, str]] = {
        "eps": "a constant keeping the norm away from 0 (the repository's 0.1)",
        "margin_lr": "the step size of the margins' dual update (the repository's 1e-3); the margins themselves "
                     "are searched through margin_init"}
    omega: float = option(150.0, "DrRL Rényi order ω > 1 (norm ω* = ω/(ω − 1))", check=positive,
                          search=log_uniform(2.0, 1000.0))
    eps: float = option(0.1, "DrRL constant ε inside the norm", check=positive)
    neg_weight: float = option(1.0, "DrRL weight w of the negative hinge", check=non_negative,
                               search=log_uniform(0.1, 10.0))
    margin_init: float = option(0.7, "DrRL initial per-user margin m_u", flag=None, search=uniform(0.0, 1.0))
    margin_lr: float = option(1e-3, "DrRL learning rate of the per-user margins", check=positive)

    def validate(self) -> None:
        if self.omega <= 1:
            raise ConfigError(f"loss.omega must be > 1 (ω* = ω/(ω − 1)), got {self.omega!r}")
        if not math.isfinite(self.margin_init):
            raise ConfigError(f"loss.margin_init must be a finite number, got {self.margin_init!r}")

    def loss_kwargs(self) -> dict:
        return {"omega": self.omega, "eps": self.eps, "neg_weight": self.neg_weight}

    def make_state(self, train: Any, device: torch.device | str) -> DrRLState:
        return DrRLState(train.n_users, self.margin_init, self.margin_lr)


LOSSES.register("psl", PSLOptions, family="softmax")(psl)
LOSSES.register("slatk", SLatKOptions, family="softmax")(slatk)
LOSSES.register("advinfonce", AdvInfoNCEOptions, family="softmax")(advinfonce)
LOSSES.register("llpauc", LLPAUCOptions, family="ranking-dro")(llpauc)
LOSSES.register("drrl", DrRLOptions, family="ranking-dro")(drrl)
