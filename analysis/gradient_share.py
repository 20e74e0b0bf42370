"""In-training gradient accounting on the positive scores (docs/PROTOCOLS.md §9).

For every training batch of B pairs, g_k = B·|∂L/∂s⁺_k| is the magnitude of
the loss gradient on the positive score of pair k (scaled by B, since L is the
batch mean, so that pairs of batches of different sizes weigh the same).
Summed over an epoch:

    pos_grad_share_noisy = Σ_{k noisy} g_k / Σ_k g_k

is the share of the positive-side gradient that went to injected noisy
positives, *as training applied it* (in-batch groups, the run's batching, its
temperatures).  For SL every g_k equals 1/τ, so the share equals the noisy
pair fraction exactly (``include_pos=False``); for BSL (paper mode) every pair of the user's group
G(k) in the batch carries the group's log-mean-exp, so
g_k = |G(k)|·softmax_{G(k)}(s⁺/τ₁)_k / τ₁: the group's total is |G(k)|/τ₁, as
for SL, but it is shared out by score, and noisy positives with low scores get
less than their share only when groups hold several positives.

g_k is the gradient through the loss's positive-score argument: with SL's
``include_pos`` the positive also sits in the normaliser, so g_k = (1 − p_k)/τ
and the share differs from the noisy fraction.

`GradientAccountant` keeps three sums on the device (all, noisy, noisy pairs
seen) and is read once per epoch; nothing syncs with the host per batch.

Negative side (README: "Analysis", the companion of the positive side): with false negatives mixed
into the sampled negatives (``noise.neg_prob`` p), g⁻_kj = B·|∂L/∂s⁻_kj| over
the real negative slots (``neg_mask``) of the batch, and per epoch

    neg_grad_share_fn = Σ_{false-negative slots} g⁻ / Σ_{all slots} g⁻

beside ``fn_slot_fraction``, the share of slots that hold a false negative.
A loss whose weights follow the score (SL: softmax(s⁻/τ), its DRO worst case
over the negatives) puts more than the slot fraction on false negatives once
they score high; BPR's sigmoid weights saturate.  `NegativeAccountant` keeps
four device sums and is read once per epoch.  A loss that does not read s⁻
(its hook never receives a gradient) records NaN.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import Tensor


class GradientAccountant:
    """Accumulates Σ g and Σ_noisy g over the batches of an epoch, on the device.

    ``noisy``: bool [n_pairs] in the training pairs' CSR order (the trainer's
    ``BatchView.index`` indexes it).  Call `watch` with each batch's index and
    positive scores before ``backward``; `read` returns and resets the sums.
    """

    def __init__(self, noisy: np.ndarray, device: torch.device | str) -> None:
        self.noisy = torch.as_tensor(np.asarray(noisy, dtype=bool), device=device)
        self.sums = torch.zeros(3, dtype=torch.float64, device=device)  # Σg, Σ_noisy g, #noisy pairs

    def watch(self, index: Tensor, pos_scores: Tensor | None) -> None:
        """Register the gradient hook of one batch (``index`` [B], ``pos_scores`` [B] requiring grad)."""
        if pos_scores is None or not pos_scores.requires_grad:  # None: the loss read no score (never computed)
            return
        noisy = self.noisy[index]

        def hook(grad: Tensor | None) -> None:
            if grad is None:  # no gradient reached s⁺ (a compiled graph's output, a loss that ignores it)
                return
            g = grad.detach().abs().to(torch.float64) * grad.shape[0]
            self.sums += torch.stack([g.sum(), (g * noisy).sum(), noisy.sum().to(torch.float64)])

        pos_scores.register_hook(hook)

    def read(self, n_pairs: int) -> dict[str, float]:
        """``pos_grad_share_noisy`` and ``noisy_pair_fraction`` of the epoch (one host sync), then reset."""
        total, noisy_g, noisy_n = self.sums.tolist()
        self.sums.zero_()
        share = noisy_g / total if total > 0 else float("nan")
        return {"noisy_pair_fraction": noisy_n / n_pairs, "pos_grad_share_noisy": share}


class NegativeAccountant:
    """Accumulates, over the batches of an epoch, Σ g⁻ over all and over false-negative slots, on the device.

    Call `watch` with each batch's negative scores (requiring grad, as the loss
    receives them), its ``fn_mask`` and ``neg_mask`` before ``backward``;
    `read` returns and resets the epoch's ``neg_grad_share_fn`` and
    ``fn_slot_fraction``.  Slot counts are added when a batch is watched, the
    gradient sums when its hook fires, so nothing syncs with the host.
    """

    def __init__(self, device: torch.device | str) -> None:
        self.sums = torch.zeros(4, dtype=torch.float64, device=device)  # Σg⁻, Σ_fn g⁻, #fn slots, #slots

    def watch(self, neg_scores: Tensor | None, fn_mask: Tensor | None, neg_mask: Tensor | None = None) -> None:
        """Register the gradient hook of one batch (``neg_scores`` [B, M], ``fn_mask`` [B, M] bool)."""
        if neg_scores is None or fn_mask is None or fn_mask.shape != neg_scores.shape:
            return
        real = None if neg_mask is None else neg_mask.to(torch.float64)
        fn = fn_mask.to(torch.float64) if real is None else fn_mask.to(torch.float64) * real
        slots = (torch.full((), float(fn_mask.numel()), dtype=torch.float64, device=fn.device) if real is None
                 else real.sum())  # a fill, not a host-to-device copy
        self.sums[2:] += torch.stack([fn.sum(), slots])
        if not neg_scores.requires_grad:
            return

        def hook(grad: Tensor | None) -> None:
            if grad is None:
                return
            g = grad.detach().abs().to(torch.float64) * grad.shape[0]
            if real is not None:
                g = g * real
            self.sums[:2] += torch.stack([g.sum(), (g * fn).sum()])

        neg_scores.register_hook(hook)

    def read(self) -> dict[str, float]:
        """``neg_grad_share_fn`` (NaN when no gradient reached s⁻) and ``fn_slot_fraction``; one host sync; reset."""
        total, fn_g, fn_n, slots = self.sums.tolist()
        self.sums.zero_()
        return {"fn_slot_fraction": fn_n / slots if slots > 0 else float("nan"),
                "neg_grad_share_fn": fn_g / total if total > 0 else float("nan")}


def brute_force_negative_share(grad: np.ndarray, fn_mask: np.ndarray,
                               neg_mask: np.ndarray | None = None) -> tuple[float, float]:
    """Reference (Σ_fn |g⁻| / Σ |g⁻|, fn slot fraction) of one batch from its gradient [B, M], float64 loops (tests)."""
    g = np.asarray(grad, dtype=np.float64)
    fn = np.asarray(fn_mask, dtype=bool)
    real = np.ones_like(fn) if neg_mask is None else np.asarray(neg_mask, dtype=bool)
    total = fn_total = 0.0
    slots = fn_slots = 0
    for k in range(g.shape[0]):
        for j in range(g.shape[1]):
            if not real[k, j]:
                continue
            slots += 1
            total += abs(g[k, j])
            if fn[k, j]:
                fn_slots += 1
                fn_total += abs(g[k, j])
    return fn_total / total, fn_slots / slots


def brute_force_share(pos_scores: np.ndarray, users: np.ndarray, noisy: np.ndarray, loss: str,
                      tau1: float = 1.0) -> float:
    """Reference Σ_noisy g / Σ g for one batch, in float64 with Python loops (for tests).

    ``loss``: ``"sl"`` (every g equal) or ``"bsl"`` (paper mode: g_k ∝ |G|·the
    softmax(s⁺/τ₁) weight of k within its user's group G in the batch).
    """
    s = np.asarray(pos_scores, dtype=np.float64)
    g = np.ones_like(s)
    if loss == "bsl":
        for u in np.unique(users):
            rows = np.flatnonzero(users == u)
            w = np.exp(s[rows] / tau1 - np.max(s[rows] / tau1))
            g[rows] = len(rows) * w / w.sum()
    return float(g[np.asarray(noisy, dtype=bool)].sum() / g.sum())
