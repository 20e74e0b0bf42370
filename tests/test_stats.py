"""Seed-level statistics (rankrobust/stats.py): intervals cover at their rate, tests match scipy/statsmodels."""
import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats
from statsmodels.stats.multitest import multipletests

from analysis import stats as analysis_stats
from rankrobust.stats import (difference_of_drops, format_ci, hierarchical_bootstrap_ci, holm_family,
                              paired_seed_comparison, per_user_pooled_test, seed_mean_ci)


# ---------------------------------------------------------------------------- one arm
def test_seed_mean_ci_is_the_t_interval():
    x = np.array([0.27, 0.28, 0.275, 0.29])
    mean, lo, hi, n = seed_mean_ci(x)
    half = stats.t.ppf(0.975, 3) * x.std(ddof=1) / 2
    assert (mean, n) == (pytest.approx(x.mean()), 4) and (lo, hi) == (pytest.approx(x.mean() - half),
                                                                      pytest.approx(x.mean() + half))
    assert seed_mean_ci([0.3, np.nan])[3] == 1 and math.isnan(seed_mean_ci([0.3])[1])  # a missing run is no seed
    assert format_ci(*seed_mean_ci([0.3])) == "0.3000 (n=1, no CI)"
    assert format_ci(*seed_mean_ci([0.2, 0.2])) == "0.2000 [0.2000, 0.2000] n=2"
    assert format_ci(*seed_mean_ci([])) == "–"
    assert analysis_stats.seed_mean_ci is seed_mean_ci  # the figures' import path


def nested(rng, seeds: int, users: int, seed_sd: float, user_sd: float, mu: float = 0.3) -> dict[int, np.ndarray]:
    """A synthetic arm: value[s, u] = mu + a_s + e_su, a_s ~ N(0, seed_sd), e_su ~ N(0, user_sd)."""
    effects = rng.normal(0.0, seed_sd, seeds)
    return {s: mu + effects[s] + rng.normal(0.0, user_sd, users) for s in range(seeds)}


def test_hierarchical_bootstrap_covers_the_mean_at_its_rate():
    """200 synthetic datasets of 8 seeds × 200 users: the 95 % interval holds the true mean 0.90–0.99 of the time."""
    rng = np.random.default_rng(7)
    hits = 0
    for _ in range(200):
        _, lo, hi = hierarchical_bootstrap_ci(nested(rng, 8, 200, 0.01, 0.15), n_boot=400, rng=rng)
        hits += lo <= 0.3 <= hi
    assert 0.90 <= hits / 200 <= 0.99


def test_t_interval_over_seeds_covers_when_seed_variance_dominates():
    """3 seeds, training variance large against user noise: the t-interval keeps its rate (the bootstrap would not)."""
    rng = np.random.default_rng(8)
    hits = sum(lo <= 0.3 <= hi for lo, hi in (
        seed_mean_ci([v.mean() for v in nested(rng, 3, 200, 0.03, 0.1).values()])[1:3] for _ in range(400)))
    assert 0.91 <= hits / 400 <= 0.99


def test_hierarchical_bootstrap_inputs():
    frame = pd.DataFrame({"seed": [0, 0, 0, 1, 1], "user": [0, 1, 2, 0, 1], "value": [0.1, 0.2, 0.3, 0.5, np.nan]})
    mean, lo, hi = hierarchical_bootstrap_ci(frame, n_boot=300, rng=0)
    assert mean == pytest.approx((0.2 + 0.5) / 2) and 0.1 <= lo <= mean <= hi <= 0.5
    assert hierarchical_bootstrap_ci({0: [0.1, 0.2, 0.3], 1: [0.5]}, n_boot=300, rng=0) == (mean, lo, hi)
    assert math.isnan(hierarchical_bootstrap_ci({0: [0.1, 0.3]})[1])  # one seed: no CI
    with pytest.raises(ValueError, match="lacks column"):
        hierarchical_bootstrap_ci(frame.drop(columns="seed"))
    with pytest.raises(ValueError, match="no finite per-user value"):
        hierarchical_bootstrap_ci({0: [0.1], 1: [np.nan]})


# ---------------------------------------------------------------------------- two arms
def test_paired_seed_comparison_matches_scipy():
    a = {0: 0.30, 1: 0.31, 2: 0.29, 3: 0.33, 9: 0.1}
    b = {0: 0.32, 1: 0.33, 2: 0.30, 3: 0.33, 5: 0.9}
    r = paired_seed_comparison(a, b, permutation=True)
    x, y = np.array([0.32, 0.33, 0.30, 0.33]), np.array([0.30, 0.31, 0.29, 0.33])
    d = x - y
    assert r.seeds == (0, 1, 2, 3) and r.n == 4 and r.diff == pytest.approx(d.mean())
    assert r.p == pytest.approx(stats.ttest_rel(x, y).pvalue) and r.t == pytest.approx(stats.ttest_rel(x, y).statistic)
    assert r.d_z == pytest.approx(d.mean() / d.std(ddof=1))
    assert (r.lo, r.hi) == pytest.approx(stats.t.interval(0.95, 3, loc=d.mean(), scale=stats.sem(d)))
    flips = np.array(np.meshgrid(*[[-1, 1]] * 4)).reshape(4, -1).T @ d  # every sign flip of the differences, summed
    assert r.p_perm == pytest.approx(np.mean(np.abs(flips) >= abs(d.sum()) - 1e-12))
    with pytest.raises(ValueError, match=r"no seed is in every arm, .*A: \[0\]; B: \[1\]"):
        paired_seed_comparison({0: 0.1}, {1: 0.2})
    one = paired_seed_comparison({0: 0.1}, {0: 0.2})
    assert one.n == 1 and math.isnan(one.p) and math.isnan(one.lo)


def test_seeds_of_one_config_are_not_declared_different_beyond_the_nominal_rate():
    """Two arms drawn from one distribution (3 matched seeds each, 400 times): p < 0.05 about 5 % of the time."""
    rng = np.random.default_rng(11)
    ps = np.array([paired_seed_comparison(dict(enumerate(rng.normal(0.3, 0.01, 3))),
                                          dict(enumerate(rng.normal(0.3, 0.01, 3)))).p for _ in range(400)])
    assert np.mean(ps < 0.05) <= 0.08


def test_difference_of_drops_matches_brute_force():
    rng = np.random.default_rng(3)
    runs = {k: dict(enumerate(rng.random(5))) for k in ("ac", "an", "bc", "bn")}
    runs["an"][7] = 0.5  # a seed not in every set is left out
    r = difference_of_drops(runs["ac"], runs["an"], runs["bc"], runs["bn"])
    v = {k: np.array([runs[k][s] for s in range(5)], dtype=np.float64) for k in runs}
    d = (v["ac"] - v["an"]) - (v["bc"] - v["bn"])
    assert r.seeds == tuple(range(5)) and r.diff == pytest.approx(d.mean(), abs=1e-15)
    assert r.mean_a == pytest.approx((v["ac"] - v["an"]).mean()) and r.mean_b == pytest.approx((v["bc"] - v["bn"]).mean())
    assert r.p == pytest.approx(stats.ttest_1samp(d, 0.0).pvalue)
    with pytest.raises(ValueError, match="B noisy: none"):
        difference_of_drops(runs["ac"], runs["an"], runs["bc"], {})


def test_holm_family_is_statsmodels():
    p = np.array([0.01, 0.04, 0.03, 0.5, 0.002])
    assert holm_family(p) == pytest.approx(multipletests(p, method="holm")[1])
    with_nan = holm_family([0.01, np.nan, 0.04, 0.03])
    assert math.isnan(with_nan[1]) and with_nan[[0, 2, 3]] == pytest.approx([0.03, 0.06, 0.06])
    assert holm_family([]).size == 0


def test_per_user_pooled_view():
    a = {s: pd.DataFrame({"user": [0, 1, 2, 3], "value": [0.1, 0.2, 0.3, 0.4]}) for s in (0, 1)}
    b = {0: pd.DataFrame({"user": [0, 1, 2, 3], "value": [0.2, 0.2, 0.5, 0.3]}),
         1: pd.DataFrame({"user": [0, 1, 2], "value": [0.0, 0.4, 0.3]})}
    out = per_user_pooled_test(a, b)
    pooled = np.array([(0.1 - 0.1) / 2, (0.0 + 0.2) / 2, (0.2 + 0.0) / 2, -0.1])
    assert out["view"] == "secondary: per-user, pooled over 2 seeds" and out["users"] == 4
    assert out["diff"] == pytest.approx(pooled.mean()) and out["p"] == pytest.approx(stats.wilcoxon(pooled).pvalue)
