"""How much each loss loses to noise, against a reference loss, with the seed as the unit: the README's table.

    python scripts/robustness_table.py results/np-tuned --reference sl [--metric test.ndcg@20] [--noise noise.pos_ratio]
        [--where noise.neg_pool=heldout]

For each loss and noisy level r > 0 of ``--noise`` (the smallest level is the
clean one): the loss's mean drop clean − noisy over seeds with its 95 %
t-interval, and the difference of drops against ``--reference`` over matched
seeds, (ref_clean − ref_noisy) − (loss_clean − loss_noisy) (positive: the loss
loses less than the reference), with its 95 % CI, d_z and the paired t-test
(`rankrobust.stats.difference_of_drops`); all rows one Holm family
(`rankrobust.stats.holm_family`). "loses less" / "loses more" when the
Holm-adjusted p is below 0.05 and the CI excludes 0, else "no detectable
difference". Only finished runs count; one run per loss, level and seed
(``--where KEY=VALUE`` keeps the runs of one value of another axis, e.g. one
false-negative pool).
"""
from __future__ import annotations

import argparse
import sys

from rankrobust.stats import difference_of_drops, holm_family, seed_mean_ci
from rankrobust.runs import STATUS_DONE
from rankrobust.store import LOSS, NOISE_POS_RATIO, SEED, STATUS, load_store


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sweep", help="sweep folder (holding store.parquet)")
    parser.add_argument("--reference", default="sl", help="the loss every other is compared with (default sl)")
    parser.add_argument("--metric", default="test.ndcg@20", help="store column (default test.ndcg@20)")
    parser.add_argument("--noise", default=NOISE_POS_RATIO, help=f"the noise axis (default {NOISE_POS_RATIO})")
    parser.add_argument("--where", action="append", default=[], metavar="KEY=VALUE",
                        help="keep only the runs with this value of another axis (repeatable)")
    args = parser.parse_args(argv)
    done = load_store(args.sweep)
    done = done[done[STATUS] == STATUS_DONE]
    for condition in args.where:
        key, _, value = condition.partition("=")
        if key not in done:
            print(f"robustness_table: --where {condition!r}: the store has no column {key!r}", file=sys.stderr)
            return 2
        done = done[done[key].astype(str) == value]
    if done.groupby([LOSS, args.noise, SEED]).size().max() > 1:
        print(f"robustness_table: several runs per loss, {args.noise} and seed; fix the other axes", file=sys.stderr)
        return 2
    value = {k: dict(zip(g[SEED], g[args.metric])) for k, g in done.groupby([LOSS, args.noise])}
    levels = sorted(done[args.noise].unique())
    clean, noisy = levels[0], levels[1:]
    ref = args.reference
    rows = []
    for loss in sorted(done[LOSS].unique()):
        for r in noisy:
            drops = [value[(loss, clean)][s] - value[(loss, r)][s]
                     for s in value[(loss, clean)] if s in value[(loss, r)]]
            row = {"loss": loss, "r": r, "clean": seed_mean_ci(list(value[(loss, clean)].values())),
                   "noisy": seed_mean_ci(list(value[(loss, r)].values())), "drop": seed_mean_ci(drops)}
            if loss != ref:
                row["test"] = difference_of_drops(value[(ref, clean)], value[(ref, r)],
                                                  value[(loss, clean)], value[(loss, r)])
            rows.append(row)
    tested = [row for row in rows if "test" in row]
    for row, p in zip(tested, holm_family([row["test"].p for row in tested])):
        t = row["test"]
        row["p_holm"] = p
        row["reading"] = ("no detectable difference" if p >= 0.05 or t.lo <= 0 <= t.hi
                          else "loses less" if t.diff > 0 else "loses more")
    metric = args.metric
    print(f"| loss | {args.noise} | {metric} clean | {metric} noisy | drop [95% CI] | "
          f"drop {ref} − drop loss [95% CI] | d_z | Holm p | reading |")
    print("|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        c, n, d = row["clean"], row["noisy"], row["drop"]
        head = (f"| `{row['loss']}` | {row['r']:g} | {c[0]:.4f} | {n[0]:.4f} | "
                f"{d[0]:.4f} [{d[1]:.4f}, {d[2]:.4f}] |")
        if "test" in row:
            t = row["test"]
            print(head + f" {t.diff:+.4f} [{t.lo:+.4f}, {t.hi:+.4f}] | {t.d_z:.2f} | {row['p_holm']:.2g} | "
                         f"{row['reading']} |")
        else:
            print(head + " – | – | – | reference |")
    print(f"\n{len(tested)} differences of drops against {ref}, one Holm family; the unit is the seed "
          f"(n = {min(len(v) for v in value.values())}–{max(len(v) for v in value.values())} seeds per cell).")
    return 0


if __name__ == "__main__":
    sys.exit(main())
