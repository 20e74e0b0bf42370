"""State that a loss carries between batches: one mechanism for every stateful loss.

Most losses are pure functions of the batch's scores (`rankrobust.losses`).
A few successors need more (docs/PROTOCOLS.md §10): SL@K a per-user score
quantile refreshed every T epochs, DrRL a learnable per-user margin,
AdvInfoNCE an adversarial hardness model trained by gradient *ascent*, T-CE a
drop rate that grows with the step count.  They all go through this one
mechanism, never through a special case in the trainer:

1. The loss's options class defines ``make_state(train, device) -> LossState``
   (`make_loss_state` calls it; losses without it have no state) and lists in
   a ``STATE_KEYWORDS`` class attribute the keywords its state passes to the
   loss function (`rankrobust.losses.state_keywords`; they are keyword-only
   arguments of the function without a default, never config options).
2. The trainer adds the state's parameters to the one Adam optimiser, with
   the learning rates of `LossState.param_groups`.  A parameter to be
   *maximised* (an adversary) goes through `reverse_gradient` inside
   `LossState.batch_kwargs`, so the same Adam step is an ascent step for it.
3. In every training step the trainer calls
   ``state.batch_kwargs(users [B], pos_items [B], neg_items [B, M])`` and passes
   the returned tensors to the loss function as keywords (``margin=m[users]``,
   ``beta=q[users]``, ``drop_rate=…``).  It runs on the device and must not
   sync with the host.
4. After every epoch the trainer calls ``state.epoch_end(epoch, model)``; the
   returned numbers join the epoch's row of the history (``epochs.parquet``).

The loss function itself stays a pure function of its inputs, so its tests
compare it with a brute-force oracle given the same keyword tensors.

The states in use (`rankrobust.losses`, docs/LOSSES.md):

- ``slatk``: a buffer β_u (no parameters), refreshed in ``epoch_end`` every T
  epochs from ``model.final_embeddings()``;
- ``advinfonce``: an adversary's embeddings, at their own learning rate,
  through `reverse_gradient` in its adversarial epochs and detached (so not
  stepped at all: Adam skips a parameter without a gradient) in the others;
- ``llpauc``: five scalar thresholds, two of them ascending through
  `reverse_gradient`, kept in range by clamping where they are read;
- ``drrl``: a per-user margin, trained on detached scores;
- ``tce``: a step counter buffer advanced in place in ``batch_kwargs``
  (a device op, no host sync), from which the drop rate grows.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["LossState", "make_loss_state", "reverse_gradient"]


class _ReverseGradient(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:  # noqa: D401 - autograd signature
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        return -grad


def reverse_gradient(x: Tensor) -> Tensor:
    """Identity in the forward pass, negated gradient in the backward pass.

    A parameter used through it is moved *up* the loss by a descent optimiser
    (the min–max game of an adversarial loss, in one optimiser step).
    """
    return _ReverseGradient.apply(x)


class LossState(nn.Module):
    """Base class of a loss's state.  Subclasses override what they need.

    The defaults describe a state with no parameters, no per-batch keywords
    and nothing to do at the end of an epoch.
    """

    def param_groups(self, lr: float) -> list[dict[str, Any]]:
        """Optimiser parameter groups of the state (default: all parameters at the model's ``lr``)."""
        params = [p for p in self.parameters() if p.requires_grad]
        return [{"params": params, "lr": lr}] if params else []

    def batch_kwargs(self, users: Tensor, pos_items: Tensor, neg_items: Tensor) -> dict[str, Tensor]:
        """Keyword tensors for the loss function in this batch (device tensors, no host sync).

        ``users [B]`` and ``pos_items [B]`` are the batch's pairs, ``neg_items [B, M]``
        the item ids whose scores are the loss's ``neg`` argument.
        """
        return {}

    def epoch_end(self, epoch: int, model: nn.Module) -> dict[str, float]:
        """Update the state after epoch ``epoch`` (1-based); return columns for the history row."""
        return {}


def make_loss_state(options: Any, train: Any, device: torch.device | str) -> LossState | None:
    """The state of the loss whose options are ``options`` (None when it has none), on ``device``.

    ``train`` is the training `rankrobust.data.interactions.Interactions`.
    """
    factory = getattr(options, "make_state", None)
    if factory is None:
        return None
    state = factory(train, device)
    return state.to(device) if state is not None else None
