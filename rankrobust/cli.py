"""The ``rankrobust`` command: datasets, train, dro-check, sweep, results, figures.

Each subcommand is a small function taking parsed arguments; the heavy lifting
lives in the library modules so that notebooks can call the same code.
"""
from __future__ import annotations

import argparse
import difflib
import re
import sys
from pathlib import Path
from typing import Any, Sequence

import pandas as pd

from rankrobust.config import ConfigError, RunConfig, config_from_dict, load_config, parse_override

# flag → dotted config key; the flags every researcher reaches for.
TRAIN_FLAGS: dict[str, tuple[str, type, str]] = {
    "--dataset": ("data.name", str, "dataset name (see `rankrobust datasets`)"),
    "--data-dir": ("data.data_dir", str, "folder holding yelp2018/, gowalla/, ml/ (default $RANKROBUST_DATA or ../shared/data)"),
    "--model": ("model.name", str, "mf or lightgcn"),
    "--layers": ("model.layers", int, "LightGCN hops"),
    "--dim": ("model.dim", int, "embedding size"),
    "--score": ("model.score", str, "cosine or dot"),
    "--dropout": ("model.dropout", float, "dropout on user embeddings"),
    "--loss": ("loss.name", str, "bpr, bce, mse, ccl, sl or bsl"),
    "--tau": ("loss.tau", float, "temperature τ (SL, BSL reweight/multi)"),
    "--tau1": ("loss.tau1", float, "BSL positive temperature τ₁ (paper mode)"),
    "--tau2": ("loss.tau2", float, "BSL negative temperature τ₂ (paper mode)"),
    "--bsl-mode": ("loss.mode", str, "paper, reweight or multi"),
    "--r": ("loss.r", float, "BSL ratio r (reweight/multi), plays τ₁/τ₂"),
    "--noise-pos": ("noise.pos_ratio", float, "noisy-positive ratio r"),
    "--noise-neg": ("noise.neg_prob", float, "false-negative probability p"),
    "--fn-pool": ("noise.neg_pool", str, "false-negative pool: train or heldout"),
    "--epochs": ("train.epochs", int, "maximum epochs"),
    "--patience": ("train.patience", int, "early-stopping patience in epochs (0: off)"),
    "--lr": ("train.lr", float, "Adam learning rate"),
    "--l2": ("train.l2", float, "the authors' L2 coefficient"),
    "--batch-size": ("train.batch_size", int, "training pairs per batch"),
    "--negatives": ("train.num_negatives", int, "sampled negatives per pair"),
    "--sampler": ("train.sampler", str, "uniform, uniform_exclude, popularity or in_batch"),
    "--seed": ("train.seed", int, "seed of the run"),
    "--device": ("train.device", str, "auto, cpu or cuda[:N]"),
}


class Parser(argparse.ArgumentParser):
    """argparse that names the closest valid flag or subcommand on a typo."""

    def error(self, message: str) -> None:  # type: ignore[override]
        hint = ""
        found = re.search(r"(?:unrecognized arguments|invalid choice): '?([^\s']+)", message)
        if found:
            bad = found.group(1)
            options = self._known_words()
            match = difflib.get_close_matches(bad.split("=")[0], options, n=1, cutoff=0.5)
            hint = f" (did you mean '{match[0]}'?)" if match else ""
        self.print_usage(sys.stderr)
        self.exit(2, f"{self.prog}: error: {message}{hint}\n")


    def _known_words(self) -> list[str]:
        """Every flag and subcommand name of this parser and its subparsers."""
        words = [o for a in self._actions for o in a.option_strings]
        for action in self._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    words += [name] + sub._known_words()
        return words


def build_parser() -> Parser:
    """The full command-line parser."""
    parser = Parser(prog="rankrobust", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)

    p = sub.add_parser("datasets", help="list datasets and their statistics")
    p.add_argument("--data-dir", help="folder holding the external datasets")
    p.add_argument("--no-stats", action="store_true", help="only names and locations (do not load the data)")

    p = sub.add_parser("train", help="train and evaluate one configuration")
    p.add_argument("--config", help="YAML config (see configs/); flags override it")
    for flag, (_, typ, helptext) in TRAIN_FLAGS.items():
        p.add_argument(flag, type=typ, help=helptext)
    p.add_argument("--valid-is-test", action="store_true", help="authors' leaky protocol: validate on test")
    p.add_argument("--compile", action="store_true", help="torch.compile the training step")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="any config key, e.g. --set train.eval_every=5 (repeatable)")
    p.add_argument("--out", help="run directory to write (config, metrics, weights, ...)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing run directory")
    p.add_argument("--fairness", action="store_true", help="per-popularity-group metrics (fairness.parquet)")
    p.add_argument("--track-variance", action="store_true", help="record score statistics per epoch (variance.csv)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")

    p = sub.add_parser("dro-check", help="numerical DRO-equivalence checks on a trained run")
    p.add_argument("run_dir", help="a run directory written by `rankrobust train --out`")
    p.add_argument("--tol", type=float, default=1e-6, help="tolerance of checks (a)-(c)")

    from rankrobust import sweep_cli  # sweeps, results and figures live in their own module

    sweep_cli.add_subcommands(sub)
    return parser


def train_config(args: argparse.Namespace) -> RunConfig:
    """Merge --config, flags and --set overrides into a validated RunConfig."""
    cfg = load_config(args.config) if args.config else config_from_dict({})
    overrides: dict[str, Any] = {}
    for flag, (key, _, _) in TRAIN_FLAGS.items():
        value = getattr(args, flag.lstrip("-").replace("-", "_"))
        if value is not None:
            overrides[key] = value
    if args.valid_is_test:
        overrides["data.valid_is_test"] = True
    if args.compile:
        overrides["train.compile"] = True
    for item in args.set:
        key, value = parse_override(item)
        overrides[key] = value
    return cfg.with_overrides(overrides)


def metrics_table(metrics: dict[str, dict[str, float]]) -> str:
    """Format ``{"valid": {...}, "test": {...}}`` as a metric × K table per split."""
    blocks = []
    for split, values in metrics.items():
        rows: dict[str, dict[int, float]] = {}
        for key, value in values.items():
            name, at, k = key.partition("@")
            if at and k.isdigit():
                rows.setdefault(name, {})[int(k)] = value
        frame = pd.DataFrame(rows).T.sort_index(axis=1)
        frame.columns = [f"@{k}" for k in frame.columns]
        blocks.append(f"{split}\n{frame.to_string(float_format=lambda v: f'{v:.4f}')}")
    return "\n\n".join(blocks)


def cmd_datasets(args: argparse.Namespace) -> int:
    from rankrobust.data import dataset_stats, list_datasets, load_dataset

    rows = []
    for info in list_datasets(data_dir=args.data_dir):
        row = {"name": info.name, "available": info.available, "where": str(info.where),
               "description": info.description}
        if not args.no_stats and info.available:
            ds = load_dataset(info.name, data_dir=args.data_dir)
            s = dataset_stats(ds.train.union(ds.valid).union(ds.test))
            row.update(users=s["users"], items=s["items"], interactions=s["interactions"],
                       density=f"{s['density']:.2e}")
        rows.append(row)
    print(pd.DataFrame(rows).to_string(index=False))
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from rankrobust.experiment import run_experiment

    cfg = train_config(args)
    summary = run_experiment(cfg, args.out, progress=not args.quiet, overwrite=args.overwrite,
                             fairness=args.fairness, track_variance=args.track_variance)
    m = summary.metrics
    print(metrics_table({"valid" + (" (= test, leaky)" if m["leaky_validation"] else ""): m["valid"],
                         "test": m["test"]}))
    pop = m["most_popular"]
    print(f"\nmost-popular baseline (test): recall@20 {pop['recall@20']:.4f}, ndcg@20 {pop['ndcg@20']:.4f}")
    print(f"best epoch {m['best_epoch']} of {m['epochs_run']}, {m['train_seconds']:.1f} s training "
          f"({m['seconds_per_epoch']:.2f} s/epoch) on {m['device']}")
    if args.fairness:
        from analysis.fairness import format_group_table

        print("\nper popularity group (test, group 0 = tail, last = head):")
        print(format_group_table(summary.fit.extra["fairness_groups"]))
        print("  ".join(f"{k}={v:.4g}" for k, v in summary.metrics["fairness"].items()
                        if isinstance(v, (int, float))))
    if args.out:
        print(f"run written to {args.out}")
    return 0


def cmd_dro_check(args: argparse.Namespace) -> int:
    from analysis.dro_run import check_run

    report, ok = check_run(Path(args.run_dir), tol=args.tol)
    print(report)
    return 0 if ok else 1


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``rankrobust`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    handlers = {"datasets": cmd_datasets, "train": cmd_train, "dro-check": cmd_dro_check}
    from rankrobust import sweep_cli

    handlers.update(sweep_cli.HANDLERS)
    try:
        return handlers[args.command](args)
    except (ConfigError, FileNotFoundError, FileExistsError, ValueError, RuntimeError) as err:
        print(f"rankrobust {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
