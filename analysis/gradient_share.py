"""In-training gradient accounting on the positive scores (PROTOCOLS.md §9).

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

    def watch(self, index: Tensor, pos_scores: Tensor) -> None:
        """Register the gradient hook of one batch (``index`` [B], ``pos_scores`` [B] requiring grad)."""
        if not pos_scores.requires_grad:
            return
        noisy = self.noisy[index]

        def hook(grad: Tensor) -> None:
            g = grad.detach().abs().to(torch.float64) * grad.shape[0]
            self.sums += torch.stack([g.sum(), (g * noisy).sum(), noisy.sum().to(torch.float64)])

        pos_scores.register_hook(hook)

    def read(self, n_pairs: int) -> dict[str, float]:
        """``pos_grad_share_noisy`` and ``noisy_pair_fraction`` of the epoch (one host sync), then reset."""
        total, noisy_g, noisy_n = self.sums.tolist()
        self.sums.zero_()
        share = noisy_g / total if total > 0 else float("nan")
        return {"noisy_pair_fraction": noisy_n / n_pairs, "pos_grad_share_noisy": share}


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
