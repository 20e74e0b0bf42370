"""The analysis layer's probes: fairness, prediction variance, gradient accounting.

Each is a `rankrobust.probes.Probe`; the CLI and the sweep layer pick them
(`probes_for`) and hand them to ``run_experiment(cfg, out, probes=...)``.

==================  ========================  ===========================  =====================
probe               metrics.json section      epochs.csv columns           run-folder table
==================  ========================  ===========================  =====================
FairnessProbe       ``fairness``              –                            ``fairness``
VarianceProbe       –                         –                            ``variance``
GradientShareProbe  ``gradient_accounting``   ``noisy_pair_fraction``,     –
                                              ``pos_grad_share_noisy``,
                                              ``fn_slot_fraction``,
                                              ``neg_grad_share_fn``
FinalShareProbe     ``gradient_share``        –                            –
==================  ========================  ===========================  =====================
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch

from analysis.fairness import fairness_report, fairness_table
from analysis.gradient_share import GradientAccountant, NegativeAccountant
from analysis.variance import VarianceTracker
from rankrobust.losses import loss_reads
from rankrobust.probes import BatchView, Probe, ProbeContext, ProbeOutput
from rankrobust.sampling import negative_kind


def _cutoff(metric: str) -> int:
    return int(metric.partition("@")[2])


class FairnessProbe(Probe):
    """Per-popularity-group metrics of the test evaluation at the validation metric's cutoff (docs/PROTOCOLS.md §5)."""

    name = "fairness"

    def finish(self, ctx: ProbeContext, result) -> ProbeOutput:
        k = _cutoff(ctx.cfg.train.metric)
        groups, summary = fairness_report(result.test, ctx.data.seen, k=k)
        return ProbeOutput(metrics=summary, tables={"fairness": fairness_table(groups, summary, k=k)},
                           extra={"fairness_groups": groups})


class VarianceProbe(Probe):
    """Score statistics every epoch (docs/PROTOCOLS.md §6), written to the run's ``variance`` table as it goes."""

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
    """In-training gradient accounting: positive side on noisy positives, negative side on false negatives.

    Positive side, with injected noisy positives, per epoch:
    ``noisy_pair_fraction`` and ``pos_grad_share_noisy`` =
    Σ_noisy |∂L/∂s⁺| / Σ |∂L/∂s⁺|.  Negative side, with false negatives mixed
    into sampled negatives (``noise.neg_prob`` > 0), per epoch:
    ``fn_slot_fraction`` and ``neg_grad_share_fn`` = Σ_fn |∂L/∂s⁻| / Σ |∂L/∂s⁻|
    (NaN for a loss that does not read s⁻); see `analysis.gradient_share`.
    In ``metrics.json`` (section ``gradient_accounting``): the values at the
    best epoch (``_best``) and their means over the epochs (``_mean``), and
    for the negative side also at the last epoch (``_last``).  Each side is
    inactive (no hooks, no columns) when the run has none of its noise; the
    probe has no section when neither acts.  A side applies only to a loss
    that reads that side's scores (``pos`` / ``neg`` in its declared
    ``reads``, `rankrobust.losses.loss_reads`); for another loss (DirectAU)
    the section records ``positive_side_not_applicable`` /
    ``negative_side_not_applicable`` (a reason, never a 0.0 share) and no
    columns.
    """

    name = "gradient_accounting"

    def start(self, ctx: ProbeContext) -> None:
        noisy = ctx.data.noisy
        name = ctx.cfg.loss.name
        reads = loss_reads(name)
        with_noisy = noisy is not None and bool(np.any(noisy))
        with_fn = ctx.cfg.noise.neg_prob > 0 and negative_kind(ctx.cfg.train.sampler) == "sampled"
        self.positive = with_noisy and "pos" in reads  # a side applies only to a loss that reads its scores
        self.negative = with_fn and "neg" in reads
        #: the sides whose noise the run has but whose scores the loss does not read: "not applicable", never 0.0
        self.not_applicable = {
            f"{side}_side_not_applicable": (f"loss {name} does not read the {what} (it reads "
                                            f"{', '.join(sorted(reads))}): no gradient to account for")
            for side, what, noise, field in (("positive", "positive scores s⁺", with_noisy, "pos"),
                                             ("negative", "negative scores s⁻", with_fn, "neg"))
            if noise and field not in reads}
        self.active = self.positive or self.negative
        self.wants_batches = self.active
        self.wants_negatives = self.negative
        if self.positive:
            self.n_pairs = int(len(noisy))
            self.accountant = GradientAccountant(noisy, ctx.device)
        if self.negative:
            self.negatives = NegativeAccountant(ctx.device)

    def batch(self, view: BatchView) -> None:
        if self.positive:
            self.accountant.watch(view.index, view.pos_scores)
        if self.negative:
            self.negatives.watch(view.neg_scores, view.fn_mask, view.neg_mask)

    def epoch_end(self, epoch: int, model: torch.nn.Module, row: dict[str, Any]) -> dict[str, Any] | None:
        if not self.active:
            return None
        out: dict[str, Any] = {}
        if self.positive:
            out.update(self.accountant.read(self.n_pairs))
        if self.negative:
            out.update(self.negatives.read())
        return out

    def finish(self, ctx: ProbeContext, result) -> ProbeOutput | None:
        if not self.active:
            return ProbeOutput(metrics=dict(self.not_applicable)) if self.not_applicable else None
        h = result.history.set_index("epoch")
        at_best = result.best_epoch in h.index
        out: dict[str, Any] = {}
        sides = [(self.positive, ["noisy_pair_fraction", "pos_grad_share_noisy", "group_size_mean"], False),
                 (self.negative, ["fn_slot_fraction", "neg_grad_share_fn"], True)]
        for active, cols, last in sides:
            if not active:
                continue
            best = h.loc[result.best_epoch, cols] if at_best else h[cols].iloc[-1]
            out.update({f"{c}_best": float(best[c]) for c in cols})
            out.update({f"{c}_mean": float(h[c].mean()) for c in cols})  # NaN epochs left out; all NaN: NaN
            if last:
                out.update({f"{c}_last": float(h[c].iloc[-1]) for c in cols})
        out["best_epoch"] = int(result.best_epoch)
        out.update(self.not_applicable)
        return ProbeOutput(metrics=out)


def _number(value: Any, digits: int = 4) -> str:
    """``value`` to ``digits`` decimals, or ``n/a`` for None / NaN (metrics.json stores NaN as null)."""
    if value is None or (isinstance(value, float) and not np.isfinite(value)):
        return "n/a"
    return f"{value:.{digits}f}"


def accounting_lines(acc: dict[str, Any] | None) -> list[str]:
    """What ``rankrobust train`` prints of a run's ``gradient_accounting`` section: a line per active side.

    Missing keys and None values (a loss that does not read s⁻) print as ``n/a``; a side that does not apply
    to the run's loss (``*_side_not_applicable``: it reads none of that side's scores) prints as such.
    """
    if not acc:
        return []
    lines = []
    for side in ("positive", "negative"):
        reason = acc.get(f"{side}_side_not_applicable")
        if reason:
            lines.append(f"in-training gradient accounting, {side} side: not applicable ({reason})")
    if "pos_grad_share_noisy_best" in acc:
        lines.append(f"in-training share of positive-side gradient on noisy positives: "
                     f"{_number(acc.get('pos_grad_share_noisy_best'))} at the best epoch (mean over epochs "
                     f"{_number(acc.get('pos_grad_share_noisy_mean'))}); noisy pairs are "
                     f"{_number(acc.get('noisy_pair_fraction_best'))} of the training pairs")
    if "neg_grad_share_fn_best" in acc:
        share = acc.get("neg_grad_share_fn_best")
        lines.append(f"in-training share of negative-side gradient on false negatives: {_number(share)} at the best "
                     f"epoch (mean over epochs {_number(acc.get('neg_grad_share_fn_mean'))}); false negatives fill "
                     f"{_number(acc.get('fn_slot_fraction_best'))} of the negative slots"
                     + (" (no gradient reached the negative scores: the loss does not read them)"
                        if share is None else ""))
    return lines


class FinalShareProbe(Probe):
    """Counterfactual check (d) on the final embeddings: softmax(f/τ₁) over *all* of a user's positives.

    This is not what training applied (that is `GradientShareProbe`): it is
    the weight BSL *would* give each noisy positive if every positive of the
    user were in one batch.  Kept as ``gradient_share`` in metrics.json.  The
    run's τ₁ is its loss's (`analysis.dro_run.positive_temperature`); for a
    loss without a temperature (BPR, DirectAU) the BSL part is not computed
    (``bsl_not_applicable`` says why), never at another loss's τ.
    """

    name = "gradient_share"

    def finish(self, ctx: ProbeContext, result) -> ProbeOutput | None:
        noisy = ctx.data.noisy
        if noisy is None or not np.any(noisy):
            return None
        from analysis.dro_run import gradient_shares, no_temperature, positive_temperature

        U, I = (t.cpu() for t in result.model.final_embeddings())
        tau1 = positive_temperature(ctx.cfg)
        metrics = gradient_shares(U, I, ctx.data.train, noisy, tau1=tau1)
        if tau1 is None:
            metrics["bsl_not_applicable"] = no_temperature(ctx.cfg)
        return ProbeOutput(metrics=metrics)


def probes_for(*, fairness: bool = False, track_variance: bool = False) -> list[Probe]:
    """The probes a run gets: gradient accounting always (inactive without noisy positives), plus options."""
    probes: list[Probe] = [GradientShareProbe(), FinalShareProbe()]
    if fairness:
        probes.append(FairnessProbe())
    if track_variance:
        probes.append(VarianceProbe())
    return probes
