"""Every arm of a sweep against the best one, with the seed as the unit: the table behind README statements.

    python scripts/compare_to_best.py results/lc-v2 [--metric test.ndcg@20] [--axis loss.name]

It prints a Markdown table (the form the README quotes), then one line naming
the Holm family and the unit.  For each value of ``--axis`` (default: the sweep's one grid axis): the mean of
``--metric`` over seeds with its 95 % t-interval (`rankrobust.stats.seed_mean_ci`),
the number of seeds and of runs that stopped at their epoch cap; then, against
the arm with the highest mean, the paired difference over matched seeds with
its 95 % CI, Cohen's d_z and the paired t-test, all arms forming one Holm family
(`rankrobust.stats.holm_family`). "lower" when the Holm-adjusted p is below
0.05 and the CI of the difference excludes 0, else "no detectable difference". Only finished runs of the store count; other grid axes
must be fixed (one cell per arm and seed), else the script stops naming them.
"""
from __future__ import annotations

import argparse
import sys

import numpy as np

from rankrobust.runs import STATUS_DONE
from rankrobust.store import SEED, STATUS, load_store
from rankrobust.stats import holm_family, paired_seed_comparison, seed_mean_ci


def table(store, axis: str, metric: str) -> list[dict]:
    """One row per arm (value of ``axis``), sorted by mean, best first; the comparison columns vs the best arm."""
    done = store[store[STATUS] == STATUS_DONE]
    if metric not in done:
        raise SystemExit(f"compare_to_best: the store has no column {metric!r}")
    twice = done.groupby([axis, SEED]).size()
    if (twice > 1).any():
        raise SystemExit(f"compare_to_best: several runs per {axis} and seed; fix the other grid axes first")
    per_arm = {arm: dict(zip(g[SEED], g[metric])) for arm, g in done.groupby(axis, sort=False)}
    capped = {arm: int((g.get("stop_reason") == "epoch_cap").sum()) for arm, g in done.groupby(axis, sort=False)}
    rows = []
    for arm, values in per_arm.items():
        mean, lo, hi, n = seed_mean_ci(list(values.values()))
        rows.append({"arm": arm, "mean": mean, "lo": lo, "hi": hi, "n": n, "capped": capped[arm]})
    rows.sort(key=lambda r: -r["mean"])
    best = rows[0]["arm"]
    others = [r for r in rows if r["arm"] != best]
    tests = [paired_seed_comparison(per_arm[best], per_arm[r["arm"]]) for r in others]
    holm = holm_family([t.p for t in tests]) if tests else []
    for row, test, p_holm in zip(others, tests, holm):
        row.update(diff=test.diff, dlo=test.lo, dhi=test.hi, d_z=test.d_z, p=test.p, p_holm=p_holm,
                   verdict="lower" if p_holm < 0.05 and not test.lo <= 0 <= test.hi else "no detectable difference")
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sweep", help="sweep folder (holding store.parquet)")
    parser.add_argument("--metric", default="test.ndcg@20", help="store column (default test.ndcg@20)")
    parser.add_argument("--axis", default=None, help="the arms (default: the sweep's one grid axis)")
    args = parser.parse_args(argv)
    store = load_store(args.sweep)
    axis = args.axis
    if axis is None:
        from rankrobust.store import grid_axes

        axes = [a for a in grid_axes(args.sweep, store) if a != SEED]
        if len(axes) != 1:
            print(f"compare_to_best: the sweep has grid axes {axes}; pick the arms with --axis", file=sys.stderr)
            return 2
        axis = axes[0]
    rows = table(store, axis, args.metric)
    best = rows[0]["arm"]
    print(f"| {axis} | {args.metric}, mean [95% CI] | seeds | capped | − {best} [95% CI] | d_z | Holm p | reading |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        ci = f"[{r['lo']:.4f}, {r['hi']:.4f}]" if r["n"] > 1 else "(one seed: no CI)"
        head = f"| `{r['arm']}` | {r['mean']:.4f} {ci} | {r['n']} | {r['capped']} |"
        if r["arm"] == best:
            print(head + " – | – | – | best mean |")
        else:
            print(head + f" {r['diff']:+.4f} [{r['dlo']:+.4f}, {r['dhi']:+.4f}] | {r['d_z']:.2f} | "
                         f"{r['p_holm']:.2g} | {r['verdict']} |")
    print(f"\n{len(rows) - 1} comparisons against {best}, one Holm family; the unit is the seed "
          f"(paired t-test over matched seeds).")
    return 0


if __name__ == "__main__":
    sys.exit(main())
