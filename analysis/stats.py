"""Seed-level statistics for the analysis layer (figures, notebooks): the names of `rankrobust.stats`.

The implementation lives in `rankrobust.stats`, because the results store
(`rankrobust.store`: ``summarize``, ``compare_runs``) needs it and the core
never imports ``analysis/``; this module re-exports it so analysis code
reads ``from analysis.stats import seed_mean_ci`` (one home, two import
paths).  See `rankrobust.stats` for the formulas, shapes and errors.
"""
from __future__ import annotations

from rankrobust.stats import (LEVEL, PER_USER_LABEL, SeedComparison, difference_of_drops, format_ci,
                              hierarchical_bootstrap_ci, holm_family, paired_seed_comparison, per_user_pooled_test,
                              seed_mean_ci)

__all__ = ["LEVEL", "PER_USER_LABEL", "SeedComparison", "difference_of_drops", "format_ci",
           "hierarchical_bootstrap_ci", "holm_family", "paired_seed_comparison", "per_user_pooled_test",
           "seed_mean_ci"]
