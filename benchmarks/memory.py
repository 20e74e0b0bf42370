"""Peak resident memory of a training epoch by scoring path: one process, one row.

    python benchmarks/memory.py --dataset yelp2018 --negatives 64 --scorer sparse

Loads the dataset, builds a `Trainer` with ``train.scorer`` set, reads the
process's peak RSS (``ru_maxrss``), runs ``--batches`` training batches (the
peak is reached in the first ones: every batch allocates the same blocks) and
reads it again; prints a row of the "Peak memory" table of
benchmarks/RESULTS.md.  Run one process per row: ``ru_maxrss`` never goes down.
"""
from __future__ import annotations

import argparse
import datetime as dt
import resource
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `benchmarks` importable when run as a script

from benchmarks.speed import machine, run_script
from rankrobust.config import config_from_template
from rankrobust.experiment import load_data, prepare_data
from rankrobust.train import Trainer


def peak_mib() -> float:
    """Peak resident set size of this process so far, MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", default="yelp2018")
    p.add_argument("--data-dir", help="folder holding the dataset's folder (default $RANKROBUST_DATA or ../shared/data)")
    p.add_argument("--negatives", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=1024)
    p.add_argument("--scorer", default="auto", help="train.scorer: auto, gather, sparse or dense")
    p.add_argument("--batches", type=int, default=8)
    args = p.parse_args()

    cfg = config_from_template({"data.name": args.dataset, "data.data_dir": args.data_dir, "model.name": "mf",
                                "loss.name": "sl",
                                "train.num_negatives": args.negatives, "train.batch_size": args.batch_size,
                                "train.scorer": args.scorer, "train.device": "cpu"})
    data, _ = prepare_data(cfg, load_data(cfg.data))
    trainer = Trainer(cfg, data, torch.device("cpu"))
    trainer.n_batches = min(trainer.n_batches, args.batches)
    before = peak_mib()
    trainer.epoch().tolist()
    after = peak_mib()
    chosen = trainer.scorer.scorer
    settings = (f"{args.dataset}, B = {args.batch_size}, M = {args.negatives}, scorer {args.scorer}"
                + (f" (chooses {chosen})" if args.scorer == "auto" else "") + f", {trainer.n_batches} batches")
    print("| date | machine | torch | settings | peak RSS before training | peak RSS after the batches |")
    print(f"| {dt.date.today()} | {machine(torch.device('cpu'))} | torch {torch.__version__} | {settings} | "
          f"{before:.0f} MiB | {after:.0f} MiB |")


if __name__ == "__main__":
    run_script(main)
