"""Helpers shared by the float64 oracle tests (no rankrobust code: the oracles stay independent of it)."""
from __future__ import annotations

from typing import Callable

import numpy as np


def finite_differences(f: Callable[[list], float], x, h: float = 1e-6) -> np.ndarray:
    """Central finite differences of the scalar function ``f`` at the list (or nested list) ``x``, float64:
    (f(x + h·e_i) − f(x − h·e_i)) / 2h for every entry i, shaped like ``x``."""
    flat = np.array(x, dtype=np.float64)
    grad = np.zeros_like(flat)
    for i in np.ndindex(flat.shape):
        up, down = flat.copy(), flat.copy()
        up[i] += h
        down[i] -= h
        grad[i] = (f(up.tolist()) - f(down.tolist())) / (2 * h)
    return grad


def train_with_both_accounting_sides(tmp_path, loss: dict, sampler: str, **train) -> dict:
    """Train a tiny run of ``loss`` with noisy positives (and false negatives unless ``sampler`` is in_batch)
    for 2 epochs with the gradient-accounting probe; assert a finite loss history and that both sides of the
    accounting are numbers strictly between 0 and 1 (the negative side only with sampled negatives).
    Returns the run's ``gradient_accounting`` record."""
    from analysis.probes import accounting_lines, probes_for
    from rankrobust.experiment import run_experiment
    from tests.test_train import tiny_config

    noise = {"pos_ratio": 0.2, "neg_prob": 0.0 if sampler == "in_batch" else 0.2}
    cfg = tiny_config(tmp_path, loss=loss, noise=noise, train={"epochs": 2, "sampler": sampler, **train})
    summary = run_experiment(cfg, tmp_path / "run", progress=False, probes=probes_for())
    assert np.isfinite(summary.fit.history["loss"]).all()
    acc = summary.metrics["gradient_accounting"]
    assert 0 < acc["pos_grad_share_noisy_best"] < 1
    if sampler == "uniform":
        assert 0 < acc["neg_grad_share_fn_best"] < 1
        assert len(accounting_lines(acc)) == 2 and not any("n/a" in line for line in accounting_lines(acc))
    return acc
