"""Convergence run in the authors' setting (a preset of configs/), within a wall-time budget.

    python benchmarks/reproduce.py --time-limit 180 --valid-is-test --append   # authors' leaky protocol
    python benchmarks/reproduce.py --time-limit 180 --append                   # proper validation split
    python benchmarks/reproduce.py --config configs/mf-ml-bsl.yaml --time-limit 0 --append   # to convergence

Trains the preset (default ``configs/mf-yelp2018-sl.yaml``: 800 uniform
negatives, batch 1024, dim 64, cosine, τ = 0.11) until early stopping or the
time limit, and reports test Recall@20 / NDCG@20 with the wall time and
whether training stopped early (converged) or ran out of time; ``--append``
adds the row to benchmarks/RESULTS.md with the machine and torch version.
"""
from __future__ import annotations

import argparse
import datetime as dt
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `benchmarks` importable when run as a script

from benchmarks.speed import append_row, machine, run_script
from rankrobust.config import load_config, parse_override
from rankrobust.experiment import run_experiment
from rankrobust.train import resolve_device

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default=str(REPO / "configs" / "mf-yelp2018-sl.yaml"))
    p.add_argument("--time-limit", type=float, default=180.0, help="training seconds (0: none)")
    p.add_argument("--valid-is-test", action="store_true", help="authors' protocol (leaky, flagged)")
    p.add_argument("--eval-every", type=int, default=5)
    p.add_argument("--patience", type=int, default=50)
    p.add_argument("--device", default="auto")
    p.add_argument("--compile", action="store_true")
    p.add_argument("--data-dir", help="folder holding the dataset's folder (default $RANKROBUST_DATA or ../shared/data)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--out", help="run directory to keep")
    p.add_argument("--append", action="store_true")
    args = p.parse_args()

    overrides = {"train.time_limit": args.time_limit, "train.eval_every": args.eval_every,
                 "train.patience": args.patience, "train.device": args.device, "train.compile": args.compile,
                 "data.valid_is_test": args.valid_is_test}
    if args.data_dir is not None:
        overrides["data.data_dir"] = args.data_dir
    overrides.update(dict(parse_override(s) for s in args.set))
    cfg = load_config(args.config).with_overrides(overrides)
    device = resolve_device(cfg.train.device)
    t0 = time.perf_counter()
    summary = run_experiment(cfg, args.out, device=device, overwrite=True)
    wall = time.perf_counter() - t0
    m = summary.metrics
    protocol = "valid = test (leaky)" if m["leaky_validation"] else "valid carved from train (10%)"
    end = ("early-stopped" if m["stopped_early"] else
           "time limit" if m["epochs_run"] < cfg.train.epochs else "epoch limit")
    scorer = f", scorer {m['scorer']['scorer']}" if m.get("scorer") else ""
    loss_options = " ".join(f"{k}={v}" for k, v in vars(cfg.loss.options).items() if v is not None)
    row = (f"| {dt.date.today()} | {machine(device)} | torch {torch.__version__} | {cfg.data.name} | "
           f"{cfg.model.name}+{cfg.loss.name}, {protocol}, {loss_options}, M={cfg.train.num_negatives}, "
           f"B={cfg.train.batch_size}{scorer}{', compiled' if cfg.train.compile else ''}"
           f"{', ' + ', '.join(args.set) if args.set else ''} | {m['test']['recall@20']:.4f} | "
           f"{m['test']['ndcg@20']:.4f} | {m['best_epoch']} / {m['epochs_run']} ({end}) | {m['seconds_per_epoch']:.3f} | "
           f"{wall:.0f} |")
    print("| date | machine | torch | dataset | settings | test recall@20 | test ndcg@20 | best / run epochs | "
          "s/epoch | wall s |")
    print(row)
    if args.append:
        append_row("Convergence", row)


if __name__ == "__main__":
    run_script(main)
