"""Trials per hour of `rankrobust tune` with and without pruning, measured side by side.

Two studies of the same arms and budget run at the same time, one worker
each: one with the median pruner of ``configs/tune/lastfm-quick.yaml``, one
with ``pruner: none``.  Because they share the machine for the whole
measurement, their ratio does not depend on what else the machine was doing;
the absolute trials per hour do, so the row records the load average.

    python benchmarks/tune_pruning.py [--arms sl bpr] [--trials 6] [--out /tmp/tune-pruning] [--append]

Each study is an ordinary tune folder (``OUT/median``, ``OUT/none``):
``rankrobust tune-results OUT/none`` shows its trials.  Trials per hour is
finished trials (complete + pruned) divided by the study's wall time.
"""
from __future__ import annotations

import argparse
import copy
import datetime as dt
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.speed import append_row  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SOURCE_SPEC = ROOT / "configs" / "tune" / "lastfm-quick.yaml"
SECTION = "Tuning throughput on lastfm"


def spec_for(pruner: str, arms: list[str], trials: int) -> dict:
    """The shipped quick spec reduced to ``arms`` and ``trials``, with the median pruner or none."""
    spec = yaml.safe_load(SOURCE_SPEC.read_text())
    spec = copy.deepcopy(spec)
    spec["name"] = f"pruning-{pruner}"
    spec["description"] = (f"{', '.join(arms)} on MF, lastfm, {trials} trials per arm, "
                           f"{'median pruning' if pruner == 'median' else 'no pruning'} (benchmarks/tune_pruning.py)")
    spec["arms"]["loss.name"] = list(arms)
    spec["overrides"] = [rule for rule in spec.get("overrides", []) if rule["when"].get("loss.name") in arms]
    spec["tune"]["trials"] = trials
    if pruner == "none":
        spec["tune"]["pruner"] = "none"
    return spec


def finished_trials(folder: Path) -> dict[str, int]:
    """Complete and pruned trials over the arms of one tune folder."""
    from rankrobust.tuning.results import require_tune_folder, tune_table

    table = tune_table(require_tune_folder(folder))
    return {"complete": int(table["complete"].sum()), "pruned": int(table["pruned"].sum()),
            "failed": int(table["failed"].sum())}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arms", nargs="+", default=["sl", "bpr"], help="loss names (arms on MF; default sl bpr)")
    parser.add_argument("--trials", type=int, default=6, help="trials per arm in each study (default 6)")
    parser.add_argument("--out", default="/tmp/tune-pruning", help="folder of the two studies (replaced)")
    parser.add_argument("--append", action="store_true", help="append the rows to benchmarks/RESULTS.md")
    args = parser.parse_args(argv)

    out = Path(args.out)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    procs, started = {}, {}
    load_before = os.getloadavg()[0]
    for pruner in ("median", "none"):
        spec_path = out / f"{pruner}.yaml"
        spec_path.write_text(yaml.safe_dump(spec_for(pruner, args.arms, args.trials), sort_keys=False))
        started[pruner] = time.perf_counter()
        procs[pruner] = subprocess.Popen([sys.executable, "-m", "rankrobust", "tune", str(spec_path),
                                          "--out", str(out / pruner), "--quiet"], env=env)
    wall, loads = {}, [load_before]
    while len(wall) < len(procs):
        time.sleep(5)
        loads.append(os.getloadavg()[0])
        for pruner, proc in procs.items():
            if pruner not in wall and proc.poll() is not None:
                if proc.returncode != 0:
                    print(f"the {pruner} study failed (exit {proc.returncode})", file=sys.stderr)
                    return 1
                wall[pruner] = time.perf_counter() - started[pruner]

    import torch

    machine = (f"{platform.machine()}, {os.cpu_count()} cores, one worker per study, both studies at once "
               f"(load average {min(loads):.1f}–{max(loads):.1f})")
    rows = []
    per_hour = {}
    for pruner in ("none", "median"):
        n = finished_trials(out / pruner)
        finished = n["complete"] + n["pruned"]
        per_hour[pruner] = finished / wall[pruner] * 3600
        rows.append(f"| {dt.date.today()} | {machine} | {torch.__version__} | {pruner} | "
                    f"{', '.join(args.arms)} × {args.trials} trials: {n['complete']} complete, {n['pruned']} pruned, "
                    f"{n['failed']} failed | {wall[pruner] / max(finished, 1):.1f} | {per_hour[pruner]:.0f} |")
    ratio = per_hour["median"] / per_hour["none"]
    print("\n".join(rows))
    print(f"pruning / no pruning, trials per hour: {ratio:.2f}x")
    if args.append:
        for row in rows:
            append_row(SECTION, row)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
