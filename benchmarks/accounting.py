"""Overhead of in-training gradient accounting (docs/PROTOCOLS.md §9) on the epoch time, measured as a ratio.

    python benchmarks/accounting.py --dataset lastfm --loss bsl --noise-pos 0.3 --rounds 6 --append

Builds one `Trainer` and alternates epochs without and with
`analysis.probes.GradientShareProbe` (same trainer, so the same data, model
and caches), ``--rounds`` times each, and reports the median epoch time of
both and their ratio.  Alternating in one process makes the ratio robust to
a machine whose load changes over time; the absolute seconds are not.
"""
from __future__ import annotations

import argparse
import datetime as dt
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `benchmarks` importable when run as a script

from analysis.probes import GradientShareProbe  # noqa: E402
from benchmarks.speed import append_row, machine, run_script, sync  # noqa: E402
from rankrobust.config import config_from_template, parse_override  # noqa: E402
from rankrobust.experiment import load_data, prepare_data  # noqa: E402
from rankrobust.probes import ProbeContext  # noqa: E402
from rankrobust.train import Trainer, resolve_device  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", default="lastfm")
    p.add_argument("--model", default="mf")
    p.add_argument("--loss", default="bsl")
    p.add_argument("--batching", default="users")
    p.add_argument("--noise-pos", type=float, default=0.3)
    p.add_argument("--device", default="auto")
    p.add_argument("--rounds", type=int, default=6, help="timed epochs of each kind (alternating)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--append", action="store_true", help="append the row to benchmarks/RESULTS.md")
    args = p.parse_args()

    cfg = config_from_template({"data.name": args.dataset, "model.name": args.model, "loss.name": args.loss,
                                "train.batching": args.batching, "noise.pos_ratio": args.noise_pos,
                                "train.device": args.device, **dict(parse_override(s) for s in args.set)})
    device = resolve_device(cfg.train.device)
    data, _ = prepare_data(cfg, load_data(cfg.data))
    trainer = Trainer(cfg, data, device)
    probe = GradientShareProbe()
    probe.start(ProbeContext(cfg, data, device))
    if not probe.active:
        raise SystemExit("no noisy positives: pass --noise-pos > 0")
    trainer.epoch().tolist()  # warm-up
    times: dict[bool, list[float]] = {False: [], True: []}
    for _ in range(args.rounds):
        for on in (False, True):
            trainer.probes = [probe] if on else []
            sync(device)
            t0 = time.perf_counter()
            trainer.epoch().tolist()
            if on:
                probe.epoch_end(0, trainer.model, {})  # the once-per-epoch read
            sync(device)
            times[on].append(time.perf_counter() - t0)
    off, on = statistics.median(times[False]), statistics.median(times[True])
    settings = f"{args.model}+{args.loss}, {args.batching} batching, r={args.noise_pos}"
    row = (f"| {dt.date.today()} | {machine(device)} | torch {torch.__version__} | {args.dataset} | {settings} | "
           f"{off:.3f} | {on:.3f} | {on / off:.3f} | {args.rounds} alternating epochs each |")
    print("| date | machine | torch | dataset | settings | s/epoch off | s/epoch on | ratio | notes |")
    print(row)
    if args.append:
        append_row("Gradient accounting overhead", row)


if __name__ == "__main__":
    run_script(main)
