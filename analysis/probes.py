"""The analysis layer's probes: fairness, prediction variance, gradient accounting.

Each is a `rankrobust.probes.Probe`; the CLI and the sweep layer pick them
(`probes_for`) and hand them to ``run_experiment(cfg, out, probes=...)``.

==================  ========================  ===========================  =====================
probe               metrics.json section      epochs.csv columns           run-folder table
==================  ========================  ===========================  =====================
FairnessProbe       ``fairness``              –                            ``fairness``
VarianceProbe       –                         –                            ``variance``
GradientShareProbe  ``gradient_accounting``   ``noisy_pair_fraction``,     –
                                              ``pos_grad_share_noisy``
FinalShareProbe     ``gradient_share``        –                            –
==================  ========================  ===========================  =====================
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch

from analysis.fairness import fairness_report, fairness_table
from analysis.gradient_share import GradientAccountant
from analysis.variance import VarianceTracker
from rankrobust.probes import BatchView, Probe, ProbeContext, ProbeOutput


def _cutoff(metric: str) -> int:
    return int(metric.partition("@")[2])


class FairnessProbe(Probe):
    """Per-popularity-group metrics of the test evaluation at the validation metric's cutoff (PROTOCOLS §5)."""

    name = "fairness"

    def finish(self, ctx: ProbeContext, result) -> ProbeOutput:
        k = _cutoff(ctx.cfg.train.metric)
        groups, summary = fairness_report(result.test, ctx.data.seen, k=k)
        return ProbeOutput(metrics=summary, tables={"fairness": fairness_table(groups, summary, k=k)},
                           extra={"fairness_groups": groups})


class VarianceProbe(Probe):
    """Score statistics every epoch (PROTOCOLS §6), written to the run's ``variance`` table as it goes."""

    name = "variance"

    def start(self, ctx: ProbeContext) -> None:
        self.run_dir = ctx.run_dir
        self.tracker = VarianceTracker(ctx.data.train, seed=ctx.cfg.train.seed)

    def epoch_end(self, epoch: int, model: torch.nn.Module, row: dict[str, Any]) -> None:
        self.tracker(epoch, model, row)
        if self.run_dir is not None:
            self.run_dir.write_table("variance", self.tracker.to_frame())

    def finish(self, ctx: ProbeContext, result) -> ProbeOutput:
        return ProbeOutput(tables={"variance": self.tracker.to_frame()})


class GradientShareProbe(Probe):
    """In-training share of the positive-side gradient on injected noisy positives (PROTOCOLS §9).

    Per epoch: ``noisy_pair_fraction`` and ``pos_grad_share_noisy`` =
    Σ_noisy |∂L/∂s⁺| / Σ |∂L/∂s⁺| (see `analysis.gradient_share`).  In
    ``metrics.json`` (section ``gradient_accounting``): the values at the best
    epoch and their means over the epochs.  Inactive (no hooks, no section)
    when the run has no injected noisy positives.
    """

    name = "gradient_accounting"

    def start(self, ctx: ProbeContext) -> None:
        noisy = ctx.data.noisy
        self.active = noisy is not None and bool(np.any(noisy))
        self.wants_batches = self.active
        if self.active:
            self.n_pairs = int(len(noisy))
            self.accountant = GradientAccountant(noisy, ctx.device)

    def batch(self, view: BatchView) -> None:
        self.accountant.watch(view.index, view.pos_scores)

    def epoch_end(self, epoch: int, model: torch.nn.Module, row: dict[str, Any]) -> dict[str, Any] | None:
        return self.accountant.read(self.n_pairs) if self.active else None

    def finish(self, ctx: ProbeContext, result) -> ProbeOutput | None:
        if not self.active:
            return None
        h = result.history.set_index("epoch")
        cols = ["noisy_pair_fraction", "pos_grad_share_noisy", "group_size_mean"]
        best = h.loc[result.best_epoch, cols] if result.best_epoch in h.index else h[cols].iloc[-1]
        out = {f"{c}_best": float(best[c]) for c in cols}
        out.update({f"{c}_mean": float(h[c].mean()) for c in cols})
        out["best_epoch"] = int(result.best_epoch)
        return ProbeOutput(metrics=out)


class FinalShareProbe(Probe):
    """Counterfactual check (d) on the final embeddings: softmax(f/τ₁) over *all* of a user's positives.

    This is not what training applied (that is `GradientShareProbe`): it is
    the weight BSL *would* give each noisy positive if every positive of the
    user were in one batch.  Kept as ``gradient_share`` in metrics.json.
    """

    name = "gradient_share"

    def finish(self, ctx: ProbeContext, result) -> ProbeOutput | None:
        noisy = ctx.data.noisy
        if noisy is None or not np.any(noisy):
            return None
        from analysis.dro_run import gradient_shares, positive_temperature

        U, I = (t.cpu() for t in result.model.final_embeddings())
        return ProbeOutput(metrics=gradient_shares(U, I, ctx.data.train, noisy,
                                                   tau1=positive_temperature(ctx.cfg)))


def probes_for(*, fairness: bool = False, track_variance: bool = False) -> list[Probe]:
    """The probes a run gets: gradient accounting always (inactive without noisy positives), plus options."""
    probes: list[Probe] = [GradientShareProbe(), FinalShareProbe()]
    if fairness:
        probes.append(FairnessProbe())
    if track_variance:
        probes.append(VarianceProbe())
    return probes
