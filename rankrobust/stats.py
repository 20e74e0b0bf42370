"""Statistics for comparing runs: the unit of replication is the training seed.

Two runs of one config that differ only in their seed differ in their
test metric by training variance alone, so every interval and test here
treats the *seed* as the unit: an arm is summarised by the mean over its
seeds with a 95 % confidence interval, and two arms are compared on matched
seeds (same seed = same noise draw, same data), never on the users of one
seed (per-user tests inside one seed ignore training variance and declare
two seeds of one config different far more often than their nominal rate).

- `seed_mean_ci`: mean over seeds and the t-interval of it (needs only one
  number per seed: the store's metric columns);
- `hierarchical_bootstrap_ci`: mean over seeds of per-seed user means and its
  percentile interval from resampling seeds, then users within each
  resampled seed (needs the per-user tables, ``per_user.parquet``);
- `paired_seed_comparison`: B − A on matched seeds: mean difference, its
  t-interval, Cohen's d_z, the paired t-test over seeds and (optional) the
  exact sign-flip permutation test;
- `difference_of_drops`: (A_clean − A_noisy) − (B_clean − B_noisy) on matched
  seeds, with the same outputs (how much more A loses to the noise than B);
- `holm_family`: one Holm correction over a declared family of p-values
  (statsmodels);
- `per_user_pooled_test`: the secondary view, per-user B − A averaged over
  the matched seeds, then one Wilcoxon signed-rank test over users.

Distributions, tests and corrections are scipy's and statsmodels' (no
hand-written distributions).

Why this module is in the core (``rankrobust/``) and not in ``analysis/``:
`rankrobust.store` (``summarize``, ``compare_runs``) needs it and the core
never imports the analysis layer; ``analysis.stats`` re-exports these names
for the analysis code (figures) that reads it from there.
"""
from __future__ import annotations

import math
from typing import Mapping, NamedTuple

import numpy as np
from scipy import stats

#: confidence level of every interval unless a caller asks for another
LEVEL = 0.95


def _finite(values) -> np.ndarray:
    """``values`` as a 1-d float64 array without NaN (a missing seed is not a zero)."""
    array = np.asarray(values, dtype=np.float64).ravel()
    return array[np.isfinite(array)]


def seed_mean_ci(values, level: float = LEVEL) -> tuple[float, float, float, int]:
    """Mean over seeds and its t confidence interval: ``(mean, lo, hi, n)``.

    ``values``: one number per seed (a run's test metric), shape ``(n,)``;
    NaN entries (a missing run) are left out and not counted.  The interval is
    ``mean ± t_{(1+level)/2, n−1} · s / √n``, ``s`` the sample standard
    deviation (ddof = 1) over seeds, from ``scipy.stats.t``; its unit is the
    seed, so it covers training variance (not the sampling of test users,
    see `hierarchical_bootstrap_ci`).  ``n`` is the number of seeds.  With
    ``n = 1`` the interval is undefined: ``lo = hi = NaN`` (`format_ci`
    writes "n=1, no CI"); with ``n = 0`` the mean is NaN as well.  Identical
    values give ``lo = hi = mean``.
    """
    x = _finite(values)
    n = len(x)
    if n == 0:
        return math.nan, math.nan, math.nan, 0
    mean = float(x.mean())
    if n == 1:
        return mean, math.nan, math.nan, 1
    sem = float(x.std(ddof=1) / math.sqrt(n))
    if sem == 0.0:
        return mean, mean, mean, n
    lo, hi = stats.t.interval(level, df=n - 1, loc=mean, scale=sem)
    return mean, float(lo), float(hi), n


def format_ci(mean: float, lo: float, hi: float, n: int, digits: int = 4) -> str:
    """``"0.2760 [0.2701, 0.2819] n=3"``; ``"0.2760 (n=1, no CI)"``; ``"–"`` when there is no value (n = 0)."""
    if n == 0 or not np.isfinite(mean):
        return "–"
    if not (np.isfinite(lo) and np.isfinite(hi)):
        return f"{mean:.{digits}f} (n={n}, no CI)"
    return f"{mean:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}] n={n}"
