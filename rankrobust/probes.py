"""Probes: how measurements plug into a run without the core knowing them.

A probe watches one training run and contributes numbers to its run folder.
The core (`rankrobust.train`, `rankrobust.experiment`) calls four hooks and
never imports the analysis layer; fairness, prediction variance and in-training
gradient accounting are probes living in ``analysis/probes.py``, wired by the
CLI and the sweep layer (``run_experiment(cfg, out, probes=[...])``).

Hooks, in call order (each optional; the base class does nothing):

``start(ctx)``
    once, before the first epoch: ``ctx.cfg``, ``ctx.data`` (`TrainData`),
    ``ctx.device``, ``ctx.run_dir`` (`RunDir` or None).
``batch(view)``
    every training batch, inside the loop: device tensors only
    (``view.index`` [B] pair ids into ``ctx.data.train`` CSR order,
    ``view.users``, ``view.items``, ``view.pos_scores`` [B] requiring grad — a
    probe may ``register_hook`` on it; a probe with ``wants_negatives`` also
    gets ``view.neg_scores`` [B, M], ``view.neg_mask`` and ``view.fn_mask``;
    the scores are None for a loss that reads none: what a loss reads is
    declared on its registry entry, ``rankrobust.losses.loss_reads(name)``).
    Must not synchronise with the host.
``epoch_end(epoch, model, row)``
    after each epoch (and its validation, if any); may read device
    accumulators once and return extra columns for ``epochs.csv``; may raise
    `StopTraining` to end training after this epoch (the run is then tested
    at its best epoch as usual, with ``stop_reason = "stopped_by_probe"``).
``finish(ctx, result)``
    after the test evaluation: returns a `ProbeOutput` — a section for
    ``metrics.json`` (under the probe's ``name``), tables for the run folder
    (by `RunDir` table name) and objects for the caller (``extra``).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import pandas as pd
import torch

if TYPE_CHECKING:  # imported for type hints only: no runtime cycle
    from rankrobust.config import RunConfig
    from rankrobust.runs import RunDir
    from rankrobust.train import FitResult, TrainData


class StopTraining(Exception):
    """Raised by a probe's ``epoch_end`` to end training after the current epoch (the message says why)."""


@dataclass
class ProbeContext:
    """What a probe may read about the run it watches."""

    cfg: "RunConfig"
    data: "TrainData"
    device: torch.device
    run_dir: "RunDir | None" = None


@dataclass
class BatchView:
    """One training batch as the probes see it (all on the training device).

    ``index`` [B]: positions of the batch's pairs in ``data.train``'s CSR order;
    ``users`` [B], ``items`` [B]: the pairs; ``pos_scores`` [B]: s⁺ of each pair
    (part of the autograd graph: ``pos_scores.register_hook(fn)`` receives
    ∂L/∂s⁺ during backward), or None when the loss reads no score (DirectAU:
    the step never computes them).

    Filled only when a watching probe has ``wants_negatives`` (None otherwise):
    ``neg_scores`` [B, M]: the negative scores exactly as the loss receives
    them, whatever the scorer (gather, sparse, dense, in-batch, all items;
    ``register_hook`` receives ∂L/∂s⁻; the hook is called with None, or not at
    all, for a loss that does not read s⁻); ``neg_mask`` [B, M] bool: True
    where a slot is a real negative (None = every slot is; in-batch negatives
    that are the user's own positives are not); ``fn_mask`` [B, M] bool: True
    where the sampler mixed in a false negative (``noise.neg_prob``; None when
    it mixes in none).
    """

    index: torch.Tensor
    users: torch.Tensor
    items: torch.Tensor
    pos_scores: torch.Tensor
    neg_scores: torch.Tensor | None = None
    neg_mask: torch.Tensor | None = None
    fn_mask: torch.Tensor | None = None


@dataclass
class ProbeOutput:
    """What a probe adds to a finished run."""

    metrics: dict[str, Any] = field(default_factory=dict)
    tables: dict[str, pd.DataFrame] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)


class Probe:
    """Base class of probes; override the hooks you need (see the module docstring)."""

    #: section name in metrics.json and key in the run summary
    name: str = "probe"
    #: True when `batch` must be called (the trainer skips building views otherwise)
    wants_batches: bool = False
    #: True when `batch` needs the negative side of the view (``neg_scores``, ``neg_mask``, ``fn_mask``)
    wants_negatives: bool = False

    def start(self, ctx: ProbeContext) -> None:
        return None

    def batch(self, view: BatchView) -> None:
        return None

    def epoch_end(self, epoch: int, model: torch.nn.Module, row: dict[str, Any]) -> dict[str, Any] | None:
        return None

    def finish(self, ctx: ProbeContext, result: "FitResult") -> ProbeOutput | None:
        return None
