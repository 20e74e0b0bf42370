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


def _per_seed_arrays(per_user) -> list[np.ndarray]:
    """Per-seed arrays of user values from a ``seed → values`` mapping or a DataFrame with ``seed`` and ``value``."""
    if hasattr(per_user, "columns"):
        missing = [c for c in ("seed", "value") if c not in per_user.columns]
        if missing:
            raise ValueError(f"per-user table lacks column(s) {', '.join(missing)}; it needs seed, user, value "
                             f"(has {', '.join(map(str, per_user.columns))})")
        groups = per_user.groupby("seed", sort=True)["value"]
        arrays = [_finite(v.to_numpy()) for _, v in groups]
    elif isinstance(per_user, Mapping):
        arrays = [_finite(per_user[k]) for k in sorted(per_user)]
    else:
        raise TypeError(f"per_user must be a DataFrame[seed, user, value] or a dict seed → values, "
                        f"not {type(per_user).__name__}")
    empty = [i for i, a in enumerate(arrays) if len(a) == 0]
    if empty:
        raise ValueError(f"{len(empty)} seed(s) have no finite per-user value; a seed needs at least one user")
    return arrays


def hierarchical_bootstrap_ci(per_user, n_boot: int = 2000, level: float = LEVEL,
                              rng: np.random.Generator | int | None = None) -> tuple[float, float, float]:
    """Mean over seeds of per-seed user means and its hierarchical-bootstrap interval: ``(mean, lo, hi)``.

    ``per_user``: a DataFrame with columns ``seed``, ``user``, ``value`` (one
    row per user and seed) or a dict ``seed → array of user values``; seeds
    may have different numbers of users, NaN values are left out.  The
    statistic is ``θ = (1/S) Σ_s mean_u x[s, u]`` over the S seeds.  One
    replicate draws S seeds with replacement, then for each drawn seed s its
    n_s users with replacement, and computes θ on that sample; ``(lo, hi)``
    are the ``(1 ∓ level)/2`` quantiles of the ``n_boot`` replicates
    (percentile interval).  Vectorised over users and over replicates (in
    chunks of at most ~4·10⁶ draws).  With one seed the seed-to-seed
    variance is unknown and ``lo = hi = NaN`` (as `seed_mean_ci`).  With
    few seeds (< 10) the percentile interval of resampled seeds is narrower
    than the t-interval of `seed_mean_ci` and covers less than ``level``.
    Raises ValueError for a seed without values, TypeError for another input.
    """
    arrays = _per_seed_arrays(per_user)
    seeds = len(arrays)
    if seeds == 0:
        return math.nan, math.nan, math.nan
    theta = float(np.mean([a.mean() for a in arrays]))
    if seeds == 1:
        return theta, math.nan, math.nan
    rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
    sizes = np.array([len(a) for a in arrays])
    offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    flat = np.concatenate(arrays)
    width = int(sizes.max())
    chunk = max(1, int(4e6 // (seeds * width)))
    replicates = np.empty(n_boot)
    for start in range(0, n_boot, chunk):
        b = min(chunk, n_boot - start)
        drawn = rng.integers(0, seeds, size=(b, seeds))              # (b, S) seed indices
        n = sizes[drawn][..., None]                                   # (b, S, 1) users of each drawn seed
        users = (rng.random((b, seeds, width)) * n).astype(np.int64)  # (b, S, width) user positions
        valid = np.arange(width) < n                                  # only the first n_s draws count
        values = flat[np.where(valid, offsets[drawn][..., None] + users, 0)]
        seed_means = np.where(valid, values, 0.0).sum(axis=2) / n[..., 0]
        replicates[start:start + b] = seed_means.mean(axis=1)
    lo, hi = np.quantile(replicates, [(1 - level) / 2, (1 + level) / 2])
    return theta, float(lo), float(hi)


class SeedComparison(NamedTuple):
    """A comparison over matched seeds (`paired_seed_comparison`, `difference_of_drops`).

    ``diff`` is positive when B does better: B − A for a comparison, drop_A −
    drop_B for a difference of drops.  ``lo``/``hi``: t-interval of ``diff``;
    ``d_z``: Cohen's d_z = mean(d) / sd(d) (ddof = 1) of the per-seed
    differences d; ``t``, ``p``: paired t-test over seeds (two-sided);
    ``p_perm``: exact sign-flip permutation p (NaN unless asked for).
    NaN where undefined (n = 1; sd(d) = 0 for d_z, t and p when every d is 0).
    """
    n: int
    seeds: tuple
    mean_a: float
    mean_b: float
    diff: float
    lo: float
    hi: float
    d_z: float
    t: float
    p: float
    p_perm: float


def _matched(named: dict[str, Mapping]) -> tuple:
    """The seeds present (with a finite value) in every mapping of ``named``; ValueError naming the unmatched."""
    present = {name: {k for k, v in m.items() if v is not None and np.isfinite(float(v))}
               for name, m in named.items()}
    common = set.intersection(*present.values())
    if not common:
        listing = "; ".join(f"{name}: {sorted(s) if s else 'none'}" for name, s in present.items())
        raise ValueError(f"no seed is in every arm, nothing to pair (seeds per arm: {listing})")
    return tuple(sorted(common))


def _paired_stats(x: np.ndarray, y: np.ndarray, seeds: tuple, level: float, permutation: bool,
                  mean_a: float, mean_b: float) -> SeedComparison:
    """Statistics of the per-seed differences d = x − y (shape (n,), float64)."""
    d = x - y
    n = len(d)
    diff, lo, hi, _ = seed_mean_ci(d, level)
    sd = float(d.std(ddof=1)) if n > 1 else math.nan
    if n < 2 or sd == 0.0:
        d_z = t = p = math.nan
        if n > 1 and diff != 0.0:  # every seed differs by the same amount
            d_z, t, p = math.copysign(math.inf, diff), math.copysign(math.inf, diff), 0.0
    else:
        d_z = diff / sd
        result = stats.ttest_rel(x, y)
        t, p = float(result.statistic), float(result.pvalue)
    p_perm = math.nan
    if permutation and n > 1:
        perm = stats.permutation_test((x, y), lambda u, v, axis: np.mean(u - v, axis=axis),
                                      permutation_type="samples", n_resamples=np.inf, vectorized=True)
        p_perm = float(perm.pvalue)
    return SeedComparison(n, seeds, mean_a, mean_b, diff, lo, hi, d_z, t, p, p_perm)


def paired_seed_comparison(a: Mapping, b: Mapping, level: float = LEVEL,
                           permutation: bool = False) -> SeedComparison:
    """B − A over matched seeds: mean difference, t-interval, d_z, paired t-test (and permutation test).

    ``a``, ``b``: ``seed → value`` (one number per run, e.g. its test
    NDCG@20).  Only seeds present in both (with a finite value) are used,
    so every difference is between runs of one seed (same noise draw, same
    data).  With d_s = b_s − a_s over the n matched seeds: ``diff`` = mean d,
    its interval from `seed_mean_ci`, ``d_z`` = mean d / sd d, ``p`` from
    ``scipy.stats.ttest_rel(b, a)``; ``permutation=True`` adds the exact
    sign-flip test (``scipy.stats.permutation_test``, all 2ⁿ flips; its
    smallest p is 2/2ⁿ, 0.25 with three seeds).  ``mean_a``/``mean_b`` are
    the arms' means over the matched seeds.  Raises ValueError naming each
    arm's seeds when none match.
    """
    seeds = _matched({"A": a, "B": b})
    x = np.array([float(b[s]) for s in seeds])
    y = np.array([float(a[s]) for s in seeds])
    return _paired_stats(x, y, seeds, level, permutation, float(y.mean()), float(x.mean()))


def difference_of_drops(a_clean: Mapping, a_noisy: Mapping, b_clean: Mapping, b_noisy: Mapping,
                        level: float = LEVEL, permutation: bool = False) -> SeedComparison:
    """How much more A loses to the noise than B: (A_clean − A_noisy) − (B_clean − B_noisy), on matched seeds.

    Each argument maps ``seed → value``; the seeds used are those in all
    four.  Per seed, drop_A = A_clean − A_noisy and drop_B = B_clean −
    B_noisy; ``diff`` = mean over seeds of drop_A − drop_B (positive: B
    loses less, i.e. B is more robust), with the same interval, d_z and
    paired t-test (``ttest_rel(drop_A, drop_B)``) as `paired_seed_comparison`;
    ``mean_a``/``mean_b`` are the mean drops of A and B.  Raises ValueError
    naming each run set's seeds when none is in all four.
    """
    seeds = _matched({"A clean": a_clean, "A noisy": a_noisy, "B clean": b_clean, "B noisy": b_noisy})
    drop_a = np.array([float(a_clean[s]) - float(a_noisy[s]) for s in seeds])
    drop_b = np.array([float(b_clean[s]) - float(b_noisy[s]) for s in seeds])
    return _paired_stats(drop_a, drop_b, seeds, level, permutation, float(drop_a.mean()), float(drop_b.mean()))


def holm_family(pvalues) -> np.ndarray:
    """Holm-adjusted p-values of one declared family (e.g. every comparison of one table).

    ``pvalues``: shape ``(m,)``; NaN entries (comparisons without a test,
    such as one seed) are not members of the family and stay NaN; the
    others are adjusted together by
    ``statsmodels.stats.multitest.multipletests(method="holm")`` (step-down,
    monotone, capped at 1).
    """
    p = np.asarray(pvalues, dtype=np.float64).ravel()
    adjusted = np.full(p.shape, np.nan)
    members = np.isfinite(p)
    if members.any():
        from statsmodels.stats.multitest import multipletests

        adjusted[members] = multipletests(p[members], method="holm")[1]
    return adjusted


#: label of the per-user view, filled with the number of seeds it pools
PER_USER_LABEL = "secondary: per-user, pooled over {n} seeds"


def per_user_pooled_test(a: Mapping, b: Mapping) -> dict:
    """The secondary per-user view: B − A per user, averaged over matched seeds, one Wilcoxon test over users.

    ``a``, ``b``: ``seed → DataFrame[user, value]`` (a run's per-user
    metric).  For each seed present in both, users are matched by id
    (inner join); each user's difference b − a is averaged over the seeds
    in which the user appears in both, and the two-sided Wilcoxon
    signed-rank test (``scipy.stats.wilcoxon``) tests these U user means
    for a median of zero.  Its unit is the user, so it ignores training
    variance beyond the seeds it averages: a secondary view, never the
    headline test.  Returns ``{"view", "seeds", "users", "diff", "p"}``
    (``diff`` = mean over users; ``p`` = 1 when every difference is 0).
    Raises ValueError naming each arm's seeds when none match.
    """
    import pandas as pd

    seeds = _matched({"A": {s: 0.0 for s in a}, "B": {s: 0.0 for s in b}})
    joined = pd.concat([a[s][["user", "value"]].merge(b[s][["user", "value"]], on="user", suffixes=("_a", "_b"))
                        .assign(seed=s) for s in seeds], ignore_index=True)
    per_user = (joined["value_b"] - joined["value_a"]).groupby(joined["user"]).mean().to_numpy(np.float64)
    p = float(stats.wilcoxon(per_user).pvalue) if np.any(per_user != 0) else 1.0
    return {"view": PER_USER_LABEL.format(n=len(seeds)), "seeds": len(seeds), "users": len(per_user),
            "diff": float(per_user.mean()) if len(per_user) else math.nan, "p": p}
