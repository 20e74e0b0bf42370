"""DRO-equivalence checks on a trained run (`rankrobust dro-check RUN_DIR`).

Checks (a)–(c) of docs/PROTOCOLS.md §7 are run on synthetic score vectors and on
the run's own scores (a few seeded users against a sample of items, at the
run's τ); check (d) measures, on the run's final embeddings and its injected
noisy positives (``noise.parquet``), the share of the positive-side gradient
that SL and BSL put on noisy vs clean positives; check (e) reports the share
of the negative-side gradient that training put on false negatives
(``noise.neg_prob`` > 0) against the share of slots they fill, for one run
(`negative_side_lines`) or, across the runs of a sweep folder or several run
folders (`check_runs`), per loss and p with SL against BPR at matched p
(`analysis.negative_share`): the paper's reading "SL is DRO, hence robust to
noisy negatives" tested on what the optimiser applied.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from analysis import negative_share
from analysis.dro import (CheckResult, dro_dual, dro_primal, dro_report, positive_gradient_share, q_star, radius,
                          run_checks, sl_negative_grad)
from rankrobust.config import RunConfig, config_from_dict
from rankrobust.data.interactions import Interactions
from rankrobust.experiment import load_data, prepare_data
from rankrobust.runs import load_run


def temperature(cfg: RunConfig) -> float | None:
    """τ of the run's loss, or None for a loss without one (BPR, MSE, CCL, DirectAU): never another loss's τ."""
    tau = getattr(cfg.loss.options, "tau", None)
    return None if tau is None else float(tau)


def positive_temperature(cfg: RunConfig) -> float | None:
    """τ₁ of BSL's positive term for the run's loss (its options say; τ for other losses; None without a τ)."""
    tau1 = getattr(cfg.loss.options, "positive_temperature", None)
    return float(tau1) if tau1 is not None else temperature(cfg)


def no_temperature(cfg: RunConfig) -> str:
    """The reason a τ-based check does not apply to the run's loss (one line, naming the loss)."""
    return (f"not applicable for loss {cfg.loss.name}: it has no temperature τ, and a check at another loss's τ "
            f"would describe a loss this run did not train")


def gradient_shares(user_emb: torch.Tensor, item_emb: torch.Tensor, train: Interactions, is_noisy: np.ndarray,
                    tau1: float | None) -> dict[str, float]:
    """Check (d): share of positive-side gradient on noisy positives under SL and under BSL(τ₁).

    ``user_emb``/``item_emb`` are final embeddings (scores = U @ I.T); ``train``
    holds every training pair (noisy included) and ``is_noisy`` marks the
    injected ones.  Returns ``sl_noisy_share``, ``bsl_noisy_share``,
    ``noisy_fraction`` and the BSL mean weights of noisy and clean pairs;
    with ``tau1=None`` (a loss without a temperature) the BSL part is left out.
    """
    users, items = (torch.as_tensor(a) for a in train.to_pairs())
    mask = torch.as_tensor(is_noisy)
    sl = positive_gradient_share(user_emb, item_emb, users, items, mask, "sl")
    if tau1 is None:  # the run's loss has no τ₁: SL's uniform share only (it needs none)
        return {"sl_noisy_share": sl["noisy_share"], "noisy_fraction": sl["noisy_fraction"]}
    bsl = positive_gradient_share(user_emb, item_emb, users, items, mask, "bsl", tau1=tau1)
    return {"sl_noisy_share": sl["noisy_share"], "bsl_noisy_share": bsl["noisy_share"],
            "noisy_fraction": sl["noisy_fraction"], "bsl_relative_share": bsl["relative_share"],
            "bsl_noisy_weight_mean": bsl["noisy_weight_mean"], "bsl_clean_weight_mean": bsl["clean_weight_mean"],
            "tau1": tau1}


def real_score_checks(user_emb: torch.Tensor, item_emb: torch.Tensor, tau: float, *, n_users: int = 4,
                      n_items: int = 40, seed: int = 0, tol: float = 1e-6) -> list[CheckResult]:
    """Checks (a) and (b) on the run's own scores: seeded users × sampled items, uniform P₀, at τ."""
    rng = np.random.default_rng(seed)
    U = user_emb.double().numpy()
    I = item_emb.double().numpy()
    worst_a = worst_b = 0.0
    cases_a = cases_b = 0
    for u in rng.choice(U.shape[0], size=min(n_users, U.shape[0]), replace=False):
        f = I[rng.choice(I.shape[0], size=min(n_items, I.shape[0]), replace=False)] @ U[u]
        p0 = np.full(len(f), 1.0 / len(f))
        eta = radius(f, p0, tau)
        if eta > 1e-12 and eta < -math.log(p0[0]) - 1e-9:
            worst_a = max(worst_a, abs(dro_primal(f, p0, eta)[0] - dro_dual(f, p0, eta)[0]))
            cases_a += 1
        cases_b += 1
        worst_b = max(worst_b, float(np.abs(sl_negative_grad(f, tau).numpy() - q_star(f, p0, tau)).max()))
    return [CheckResult("a_primal_eq_dual[run scores]", worst_a, tol, worst_a <= tol, cases_a),
            CheckResult("b_grad_eq_qstar[run scores]", worst_b, tol, worst_b <= tol, cases_b)]


def in_training_lines(epochs, accounting: dict[str, Any]) -> list[str]:
    """Report lines of the in-training gradient accounting stored with a run (docs/PROTOCOLS.md §9)."""
    reason = (accounting or {}).get("positive_side_not_applicable")
    if reason:
        return [f"    in training: not applicable ({reason})"]
    if epochs is None or "pos_grad_share_noisy" not in epochs:
        return ["    in training: not recorded for this run (runs trained before gradient accounting existed)"]
    e = epochs.dropna(subset=["pos_grad_share_noisy"])
    n = len(e)
    picks = sorted({int(e["epoch"].iloc[k]) for k in (0, n // 2, n - 1)}) if n else []
    lines = ["    IN TRAINING (what the optimiser applied: Σ_noisy |∂L/∂s⁺| / Σ |∂L/∂s⁺| over each epoch's batches)",
             "      epoch  group size  noisy pairs  noisy gradient share"]
    for epoch in picks:
        row = e[e["epoch"] == epoch].iloc[0]
        lines.append(f"      {epoch:5d}  {row['group_size_mean']:10.2f}{_cell(row['noisy_pair_fraction'], 13)}"
                     f"{_cell(row['pos_grad_share_noisy'], 22)}")
    if accounting:
        lines.append(f"      best epoch {accounting.get('best_epoch')}: share "
                     f"{_cell(accounting.get('pos_grad_share_noisy_best'), 0)} vs noisy fraction "
                     f"{_cell(accounting.get('noisy_pair_fraction_best'), 0)} (mean over epochs "
                     f"{_cell(accounting.get('pos_grad_share_noisy_mean'), 0)}, group size "
                     f"{_cell(accounting.get('group_size_mean_mean'), 0)})")
    return lines


def _cell(value: Any, width: int) -> str:
    """A number to 4 decimals right-aligned in ``width``, ``n/a`` for None / NaN."""
    ok = isinstance(value, (int, float)) and math.isfinite(value)
    return f"{value:{width}.4f}" if ok else f"{'n/a':>{width}}"


def negative_side_lines(cfg: RunConfig, epochs, accounting: dict[str, Any]) -> list[str]:
    """Check (e) for one run: the in-training share of negative-side gradient on false negatives (README: Analysis)."""
    head = (f"(e) negative-side gradient on false negatives (p = {cfg.noise.neg_prob:g}, pool "
            f"{cfg.noise.neg_pool}, {cfg.loss.name}):")
    if cfg.noise.neg_prob <= 0:
        return ["(e) skipped: the run has no false negatives (train with --noise-neg P, P > 0)"]
    reason = (accounting or {}).get("negative_side_not_applicable")
    if reason:
        return [head, f"    not applicable ({reason})"]
    if epochs is None or "neg_grad_share_fn" not in epochs:
        return [head, "    not recorded for this run (runs trained before negative-side accounting existed)"]
    e = epochs.reset_index(drop=True)
    n = len(e)
    picks = sorted({int(e["epoch"].iloc[k]) for k in (0, n // 2, n - 1)}) if n else []
    lines = [head,
             "    IN TRAINING (Σ_fn |∂L/∂s⁻| / Σ |∂L/∂s⁻| over each epoch's batches; ratio = share / slot fraction)",
             "      epoch  FN slots  FN share   ratio"]
    for epoch in picks:
        row = e[e["epoch"] == epoch].iloc[0]
        share, slots = row["neg_grad_share_fn"], row["fn_slot_fraction"]
        ratio = share / slots if slots and math.isfinite(share) else float("nan")
        lines.append(f"      {epoch:5d}{_cell(slots, 10)}{_cell(share, 10)}{_cell(ratio, 8)}")
    share, slots = accounting.get("neg_grad_share_fn_best"), accounting.get("fn_slot_fraction_best")
    if share is None:
        lines.append("      no gradient reached the negative scores: this loss does not read them")
    elif slots:
        lines.append(f"      best epoch {accounting.get('best_epoch')}: {share:.4f} of the negative-side gradient on "
                     f"the {slots:.4f} of slots holding a false negative ({share / slots:.2f}x uniform)")
    lines.append("    SL against BPR at the same p: rankrobust dro-check SWEEP_FOLDER (or several run folders)")
    return lines


def _store_rows(path: Path) -> pd.DataFrame:
    """Store rows of a sweep folder (its store, else its run folders) or of one run folder."""
    from rankrobust.runs import SweepDir
    from rankrobust.store import collect, load_store, run_row

    if (path / SweepDir.RUNS).is_dir():
        try:
            return load_store(path)
        except (FileNotFoundError, OSError, ValueError):  # no store yet: read the run folders
            return collect(path)
    return pd.DataFrame([run_row(path)])


def check_runs(paths: list[Path]) -> tuple[str, bool]:
    """Check (e) across runs: sweep folders and/or run folders → (report text, True).

    Share of the negative-side gradient on false negatives against their slot
    fraction per (dataset, backbone, pool, p) and loss, and whether SL's
    share/slot ratio exceeds BPR's at matched p (`analysis.negative_share`).
    A measurement, not a tolerance check: it never fails the command.
    """
    frames = [_store_rows(Path(p)) for p in paths]
    rows = negative_share.run_rows(pd.concat(frames, ignore_index=True) if frames else pd.DataFrame())
    where = ", ".join(str(p) for p in paths)
    return "\n".join([f"Negative-side check (e) over {where}", *negative_share.report_lines(rows)]), True


def check_run(run_dir: Path, tol: float = 1e-6) -> tuple[str, bool]:
    """Run (a)–(c) and report (d) and (e) for a run directory; returns (report text, all checks passed).

    (d) has two parts, labelled as such: the in-training shares the run
    recorded (``epochs.csv`` and ``metrics.json`` → ``gradient_accounting``),
    and the counterfactual full-P_u softmax(f/τ₁) share on the final embeddings.
    """
    run = load_run(run_dir)
    if run.status != "done":
        raise ValueError(f"{run_dir} has status {run.status!r}; dro-check needs a finished run")
    cfg = config_from_dict(run.config)
    weights = run.tensors()
    U, I = weights["final_user"], weights["final_item"]
    tau, tau1 = temperature(cfg), positive_temperature(cfg)
    results = run_checks(n=(5, 20), seeds=(0,), tol=tol)
    if tau is not None:  # (a), (b) on the run's own scores are checks at the run's τ: none without one
        results += real_score_checks(U, I, tau, tol=tol)
    options = ", ".join(f"{k}={v}" for k, v in cfg.loss.to_flat().items() if v is not None)
    at = (f"checks on the run's scores at τ = {tau:g}" if tau is not None
          else "synthetic checks only")
    lines = [f"DRO-equivalence checks for {run_dir} ({cfg.model.name} + {cfg.loss.name}"
             f"{' ' + options if options else ''}; {at})",
             dro_report(results)]
    if tau is None:
        lines.append(f"(a), (b) on the run's scores: {no_temperature(cfg)}")
    data, _ = prepare_data(cfg, load_data(cfg.data))
    if data.noisy is not None and data.noisy.any():
        mask = data.noisy
        d = gradient_shares(U, I, data.train, mask, tau1=tau1)
        lines += ["", f"(d) positive-side gradient on injected noisy positives "
                      f"({int(mask.sum()):,} of {len(mask):,} training pairs, {cfg.train.batching} batching):"]
        lines += in_training_lines(run.table("epochs"), run.metrics.get("gradient_accounting") or {})
        lines += ["    COUNTERFACTUAL (final embeddings, softmax over ALL of a user's positives at once; "
                  "training never applied this):",
                  f"      noisy share of positives per user (SL's uniform weights): {d['noisy_fraction']:.4f}",
                  f"      SL  puts {d['sl_noisy_share']:.4f} of each user's positive gradient on noisy positives"]
        lines += ([f"      BSL softmax(f/τ₁): {no_temperature(cfg)}"] if tau1 is None else
                  [f"      BSL softmax(f/τ₁) (τ₁ = {tau1:g}) would put {d['bsl_noisy_share']:.4f} "
                   f"({d['bsl_relative_share']:.2f}× the uniform share); mean weight noisy "
                   f"{d['bsl_noisy_weight_mean']:.4g} vs clean {d['bsl_clean_weight_mean']:.4g}"])
    else:
        lines += ["", "(d) skipped: the run has no injected noisy positives (train with --noise-pos R)"]
    lines += [""] + negative_side_lines(cfg, run.table("epochs"), run.metrics.get("gradient_accounting") or {})
    ok = all(r.passed for r in results)
    lines.append("\nall checks passed" if ok else "\nSOME CHECKS FAILED")
    return "\n".join(lines), ok
