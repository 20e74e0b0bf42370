"""The ``tune`` and ``tune-results`` subcommands (wired into `rankrobust.cli` by `add_parsers`).

Nothing heavy is imported here: Optuna, torch and Ray load when a command runs.
"""
from __future__ import annotations

import argparse
import sys
from typing import Any, Callable

__all__ = ["add_parsers", "cmd_tune", "cmd_tune_results"]


def add_parsers(sub: Any) -> dict[str, Callable[[argparse.Namespace], int]]:
    """Add ``tune`` and ``tune-results`` to the subparsers ``sub``; returns their handlers by command name."""
    p = sub.add_parser("tune", help="tune hyper-parameters per arm with Optuna (resumable; README: \"Tuning\")")
    p.add_argument("spec", help="tune spec YAML (see configs/tune/)")
    p.add_argument("--out", required=True, help="tune folder (study.db, trials/, best/<arm>.yaml go here)")
    p.add_argument("--jobs", type=int, default=1, help="local worker processes sharing the study")
    p.add_argument("--executor", default="local", help="local (Optuna workers) or ray (Ray Tune: OptunaSearch + ASHA)")
    p.add_argument("--address", help="Ray cluster address (with --executor ray), e.g. auto or HOST:6379")
    p.add_argument("--storage", help="an Optuna database URL shared by workers on several machines "
                                     "(e.g. postgresql://...; default DIR/study.db)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")

    p = sub.add_parser("tune-results", help="per-arm summary of a tune folder, and the study plots")
    p.add_argument("dir", help="tune folder written by `rankrobust tune SPEC --out DIR`")
    p.add_argument("--storage", help="the database URL given to `rankrobust tune --storage` (default DIR/study.db)")
    p.add_argument("--no-plots", action="store_true", help="do not write plots/<arm>-history.png, -importance.png")
    return {"tune": cmd_tune, "tune-results": cmd_tune_results}


def cmd_tune(args: argparse.Namespace) -> int:
    """Run a tune spec; SIGTERM or Ctrl-C stop it cleanly (exit 143 / 130) and a rerun continues the study."""
    from rankrobust.config import ConfigError, closest
    from rankrobust.tuning.spec import load_tune_spec
    from rankrobust.tuning.study import TuneDir, TuneTerminated, run_tune

    executors = ("local", "ray")
    if args.executor not in executors:
        raise ConfigError(f"unknown executor {args.executor!r}{closest(args.executor, executors)}; choose local or ray")
    if args.jobs < 1:
        raise ConfigError(f"--jobs must be at least 1, got {args.jobs}")
    spec = load_tune_spec(args.spec)
    folder = TuneDir(args.out)
    if folder.path.exists() and not folder.path.is_dir():
        raise ConfigError(f"--out {folder.path} is a file, not a folder; choose a folder for the tuning")
    try:
        if args.executor == "ray":
            from rankrobust.tuning.ray_tune import run_tune_ray

            run_tune_ray(spec, folder.path, address=args.address, jobs=args.jobs, progress=not args.quiet)
        else:
            run_tune(spec, folder.path, jobs=args.jobs, storage_url=args.storage, progress=not args.quiet)
    except KeyboardInterrupt as err:
        why = "SIGTERM" if isinstance(err, TuneTerminated) else "Ctrl-C"
        print(f"rankrobust tune: stopped by {why}; finished trials kept in {folder.path}; rerun the same command to "
              f"resume", file=sys.stderr)
        return 143 if isinstance(err, TuneTerminated) else 130
    return _print_results(folder.path, args.storage, plots=True)


def cmd_tune_results(args: argparse.Namespace) -> int:
    """Print the per-arm table of a tune folder and write its plots; reads the study, never creates a database.

    A folder of presets (best files without a study, e.g. configs/tuned/...) is refused (exit 2) with the study
    its best files name (`require_tune_folder`).
    """
    return _print_results(args.dir, args.storage, plots=not args.no_plots)


def _print_results(path, storage: str | None, plots: bool) -> int:
    from rankrobust.tuning.results import format_table, require_tune_folder, tune_table, write_plots

    folder = require_tune_folder(path, storage)
    table = tune_table(folder, storage)
    print(format_table(table))
    best = sorted(folder.path.glob("best/*.yaml"))
    if best:
        print(f"best settings: {folder.path / 'best'}/<arm>.yaml ({len(best)} arm{'s' if len(best) != 1 else ''})")
    if plots:
        made = write_plots(folder, storage)
        if made:
            print(f"plots: {folder.path / 'plots'} ({len(made)} files)")
    return 0
