"""The ``rankrobust`` command: datasets, download, train, dro-check, sweep, results, figures, tune, tune-results.

Each subcommand is a small function taking parsed arguments; the heavy lifting
lives in the library modules so that notebooks can call the same code.  The
``train`` flags and their help texts come from the config sections and the
registries (`rankrobust.config.config_flags`); every other key is reachable
with ``--set section.key=value``.  This module (with the sweep layer) is
where the analysis probes are wired into runs.
"""
from __future__ import annotations

import argparse
import difflib
import os
import re
import sys
import warnings
from pathlib import Path
from typing import Any, Sequence

import pandas as pd

from rankrobust.runs import STATUS_DONE, SweepDir

from rankrobust.config import (ConfigError, RunConfig, closest, config_flags, config_from_dict, parse_override,
                               read_config_tree, set_dotted)
from rankrobust.metrics import per_user_metrics

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
        value = re.search(r"^argument (\S+): invalid (int|float) value: '(.*)'$", message)
        if value:  # a value of the wrong type: one line naming the flag and how to write it, no usage block
            flag, kind, bad = value.groups()
            whole = re.fullmatch(r"[+-]?\d+(\.0*)?[eE]\+?\d+|[+-]?\d+\.0*", bad.strip())
            fix = (f"write it as {int(float(bad))}" if kind == "int" and whole else
                   "write a whole number" if kind == "int" else "write a number, e.g. 0.001 or 1e-3")
            self.exit(2, f"{self.prog}: error: {flag} {bad!r} is not {'a whole number' if kind == 'int' else 'a number'}"
                         f"; {fix} ({self.prog} --help lists the flags)\n")
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
    from rankrobust import __version__

    parser = Parser(prog="rankrobust", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"rankrobust {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)

    p = sub.add_parser("datasets", help="list datasets and their statistics")
    p.add_argument("--data-dir", help="folder holding the external datasets")
    p.add_argument("--no-stats", action="store_true", help="only names and locations (do not load the data)")

    p = sub.add_parser("download", help="fetch an external dataset from its public source (resumable, sha256-verified)")
    p.add_argument("name", help="dataset: yelp2018, gowalla, ml, ml-100k (lastfm is embedded: nothing to fetch)")
    p.add_argument("--dest", help="data folder to fill (NAME/ goes inside; default $RANKROBUST_DATA, else ./data)")
    p.add_argument("--mirror", help="base URL of a mirror holding NAME/<upstream file name> (e.g. file:///srv/mirror)")
    p.add_argument("--source", action="store_true",
                   help="lastfm only: fetch the upstream LightGCN++ split that scripts/build_lastfm.py builds it from")

    p = sub.add_parser("train", help="train and evaluate one configuration")
    p.add_argument("--config", help="YAML config (see configs/); flags override it")
    for flag in config_flags():
        if flag.type is bool:
            p.add_argument(flag.flag, action="store_true", default=None, help=flag.help)
        else:
            p.add_argument(flag.flag, type=flag.type, help=flag.help)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="any config key, e.g. --set train.eval_every=5 (repeatable)")
    p.add_argument("--out", help="run directory to write (config, metrics, weights, ...)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing run directory")
    p.add_argument("--fairness", action="store_true", help="per-popularity-group metrics (fairness.parquet)")
    p.add_argument("--track-variance", action="store_true", help="record score statistics per epoch (variance.csv)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")

    p = sub.add_parser("dro-check", help="numerical DRO-equivalence checks on a trained run; check (e) across runs")
    p.add_argument("run_dir", nargs="+",
                   help="a run directory written by `rankrobust train --out` (checks (a)-(e)); or a sweep folder, or "
                        "several run directories: check (e), the negative-side gradient on false negatives per loss "
                        "and p, SL against BPR")
    p.add_argument("--tol", type=float, default=1e-6, help="tolerance of checks (a)-(c) (default %(default)g)")

    p = sub.add_parser("sweep", help="run a grid of runs from a sweep spec (resumable)")
    p.add_argument("spec", help="sweep spec YAML (see configs/sweeps/)")
    p.add_argument("--out", required=True, help="sweep folder (runs/ and store.parquet go here)")
    p.add_argument("--jobs", type=int, default=1,
                   help="parallel processes (one GPU each where several exist; default %(default)s; the README's "
                        "quick sweeps use 2)")
    p.add_argument("--executor", default="local", help="local or ray (default %(default)s)")
    p.add_argument("--seeds", type=int, nargs="+", metavar="SEED",
                   help="run these seeds instead of the spec's (recorded in the sweep's spec, like the spec's own)")
    p.add_argument("--device", help="train.device of every cell instead of the spec's: auto, cpu or cuda[:N]")
    p.add_argument("--address", help="Ray cluster address (with --executor ray), e.g. auto or HOST:6379")
    p.add_argument("--dry-run", action="store_true", help="list the cells and what is left to run (changes nothing)")
    p.add_argument("--prune", action="store_true",
                   help="first delete the stale run folders: cells no longer in the spec (asks nothing; deletes "
                        "nothing else)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")

    p = sub.add_parser("results", help="summarise a sweep's results store (the cells of its current spec)")
    p.add_argument("dir", help="sweep folder (holding store.parquet)")
    p.add_argument("--metric", action="append",
                   help="metrics to show (default test Recall@K and NDCG@K at the K of train.metric)")
    p.add_argument("--compare", nargs=2, metavar=("A", "B"),
                   help="B vs A per cell over matched seeds (the unit is the seed): mean difference B - A, its 95%% "
                        "CI, Cohen's d_z, paired t-test over seeds, one Holm correction over the table; an arm is a "
                        "loss name (sl) or key=value[,key=value] (loss.name=bsl,train.batching=users)")
    p.add_argument("--robustness", nargs=2, metavar=("A", "B"),
                   help="difference of drops from the clean noise level, (A_clean - A_noisy) - (B_clean - B_noisy), "
                        "over matched seeds per noise level (positive: B loses less), its 95%% CI, d_z, paired "
                        "t-test, one Holm correction over the table")
    p.add_argument("--noise-axis", metavar="KEY",
                   help="noise axis for --robustness (default the grid's one numeric noise.* axis; its smallest "
                        "value is the clean level)")
    p.add_argument("--per-user", action="store_true",
                   help="with --compare, add the secondary view: per-user B - A averaged over matched seeds, one "
                        "Wilcoxon test over users per cell (ignores training variance; needs per_user.parquet)")
    p.add_argument("--permutation", action="store_true",
                   help="add the exact sign-flip permutation test over seeds (p_perm; its smallest p is 2/2^n)")
    p.add_argument("--compare-metric",
                   help=f"test metric for --compare and --robustness: a per-user metric NAME@K of the registry "
                        f"(rankrobust.metrics: {', '.join(per_user_metrics())}; a global one such as coverage@K has "
                        f"no per-user values to pair) (default ndcg@K, K of train.metric)")
    p.add_argument("--csv", metavar="FILE",
                   help="also write the tables shown (per-cell summary; --compare, --robustness) as CSV: FILE, and "
                        "FILE's stem + -compare.csv / -robustness.csv")

    p = sub.add_parser("figures", help="regenerate the paper's figures from sweep stores")
    p.add_argument("dirs", nargs="*", help="sweep folders (quick or full results)")
    p.add_argument("--out", help="folder for PNG/PDF and sidecar texts (default: figures/ beside the sweep folders, "
                                 "e.g. results/figures; --out figures replaces the repository's committed figures)")
    p.add_argument("--only", action="append", help="figure numbers or names to make (default all)")
    p.add_argument("--list", action="store_true", help="list the figures and the sweeps each needs, draw nothing")

    from rankrobust.tuning.cli import add_parsers as add_tuning_parsers  # tune, tune-results

    HANDLERS.update(add_tuning_parsers(sub))
    return parser


def train_config(args: argparse.Namespace) -> RunConfig:
    """Merge --config, flags and --set overrides (in that order) into one validated RunConfig.

    Only what the user wrote is merged (no defaults in between), so
    ``--loss bpr`` on the default config is fine while ``--loss bpr --tau 0.2``
    is rejected (BPR has no temperature).
    """
    tree: dict[str, Any] = read_config_tree(args.config) if args.config else {}
    for flag in config_flags():
        value = getattr(args, flag.flag.lstrip("-").replace("-", "_"))
        if value is not None:
            set_dotted(tree, flag.key, value)
    for item in args.set:
        key, value = parse_override(item)
        set_dotted(tree, key, value)
    return config_from_dict(tree)


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
            print(f"reading {info.name} ...", file=sys.stderr, flush=True)  # a large dataset takes a while
            ds = load_dataset(info.name, data_dir=args.data_dir)
            s = dataset_stats(ds.train.union(ds.valid).union(ds.test))
            row.update(users=s["users"], items=s["items"], interactions=s["interactions"],
                       density=f"{s['density']:.2e}")
        rows.append(row)
    frame = pd.DataFrame(rows)
    for column in ("users", "items", "interactions"):  # counts: integers, "-" where not loaded (not 1812.0 / NaN)
        if column in frame:
            frame[column] = [("-" if pd.isna(v) else f"{int(v)}") for v in frame[column]]
    print(frame.fillna("-").to_string(index=False))
    missing = [str(name) for name, there in zip(frame["name"], frame["available"]) if not there]
    if missing:
        print(f"\nnot here: {', '.join(missing)}; fetch one with `rankrobust download NAME --dest DIR` and pass "
              f"--data-dir DIR (or set RANKROBUST_DATA=DIR)")
    return 0


def cmd_download(args: argparse.Namespace) -> int:
    """Fetch a dataset from its built-in public source into DEST/NAME (`rankrobust.data.downloads`)."""
    from rankrobust.data.downloads import SOURCES, DownloadError, download_dataset
    from rankrobust.data.registry import DOWNLOAD_DIR, ENV_VAR, resolve_data_dir

    name = args.name.strip().lower()
    if name not in SOURCES:
        raise ConfigError(f"no download source for dataset {args.name!r}{closest(name, SOURCES)}; datasets with one: "
                          f"{', '.join(SOURCES)}")
    source = SOURCES[name]
    if source.embedded and not args.source:
        print(f"{name} is embedded in rankrobust (rankrobust/data/embedded/{name}): --dataset {name} needs no "
              f"download. (--source fetches the upstream split it is built from: {source.origin}.)")
        return 0
    dest = Path(args.dest or os.environ.get(ENV_VAR) or DOWNLOAD_DIR)
    if dest.exists() and not dest.is_dir():
        raise ConfigError(f"--dest {dest} is a file, not a folder; give a folder (NAME/ goes inside it)")
    print(f"{name}: {source.origin}")
    print(f"terms: {source.terms}")
    try:
        download_dataset(name, dest, mirror=args.mirror, log=print)
    except (DownloadError, FileExistsError) as err:  # FileExistsError: a held folder or a planted link
        print(f"rankrobust download: error: {err}", file=sys.stderr)
        return 2
    except FileNotFoundError:
        raise
    except OSError as err:  # a read-only mount, no permission, a full disk, a file on the way
        where = err.filename or dest
        print(f"rankrobust download: error: cannot write {where} ({err.strerror or err}); choose a writable "
              f"folder with --dest", file=sys.stderr)
        return 2
    folder = dest / name
    print(f"{name} is ready in {folder} ({', '.join(o.name for o in source.outputs)}, sha256 verified)")
    searched = resolve_data_dir()
    if not source.embedded and (searched is None or searched.resolve() != dest.resolve()):
        print(f"use it with --data-dir {dest} (or export {ENV_VAR}={dest})")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    """Train one config; SIGTERM stops it like Ctrl-C: its run folder says ``failed`` (stopped by SIGTERM), exit 143."""
    from analysis.probes import accounting_lines, probes_for
    from rankrobust.experiment import run_experiment
    from rankrobust.sweeps.runner import SweepTerminated, sigterm_stops

    cfg = train_config(args)
    probes = probes_for(fairness=args.fairness, track_variance=args.track_variance)
    if not args.out:  # said before the (possibly long) training, not after it
        print(f"note: no --out: this run is printed, not saved (up to {cfg.train.epochs} epochs); add --out "
              f"runs/NAME to keep its config, metrics and model", file=sys.stderr)
    try:
        with sigterm_stops():  # the run folder's status records the stop (`run_experiment`), so a rerun may replace it
            summary = run_experiment(cfg, args.out, progress=not args.quiet, overwrite=args.overwrite, probes=probes)
    except SweepTerminated:
        kept = f"; {args.out} is marked failed (stopped by SIGTERM): rerun the same command to run it again" \
            if args.out else ""
        print(f"rankrobust train: stopped by SIGTERM{kept}", file=sys.stderr)
        return 143
    m = summary.metrics
    print(metrics_table({"valid" + (" (= test, leaky)" if m["leaky_validation"] else ""): m["valid"],
                         "test": m["test"]}))
    cutoff = cfg.train.metric.partition("@")[2]
    pop = {k: v for k, v in m["most_popular"].items() if k.endswith(f"@{cutoff}")}
    print("\nmost-popular baseline (test): " + ", ".join(f"{k} {v:.4f}" for k, v in pop.items()))
    print(f"best epoch {m['best_epoch']} of {m['epochs_run']}, {m['train_seconds']:.1f} s training "
          f"({m['seconds_per_epoch']:.2f} s/epoch) on {m['device']}; mean same-user group size per pair "
          f"{m['group_size_mean']:.2f} ({cfg.train.batching} batching)")
    files = m.get("data_files") or {}
    if files:  # the files the run read (their sizes and sha256 are in metrics.json, data_files)
        print("data: " + ", ".join(f"{split} {record['path']}" for split, record in files.items()))
    split = m.get("split")
    if split:  # data.split = popularity (docs/PROTOCOLS.md §11)
        print(f"{split['kind']} split (seed {split['seed']}): test holds {split['test']:,} interactions "
              f"({split['test_fraction']:.3f} of all), Gini of its item counts {split['test_item_gini']:.3f} "
              f"(the given test: {split['given_test_item_gini']:.3f})")
    for line in accounting_lines(m.get("gradient_accounting")):  # positive and negative side (None-safe)
        print(line)
    for warning in m.get("warnings", []):
        print(f"warning: {warning}")
    if args.fairness:
        from analysis.fairness import format_group_table

        print("\nper popularity group (test, group 0 = tail, last = head):")
        print(format_group_table(summary.extra["fairness_groups"]))
        print("  ".join(f"{k}={v:.4g}" for k, v in summary.metrics["fairness"].items()
                        if isinstance(v, (int, float))))
    print(f"run written to {args.out}" if args.out else "nothing written (no --out)")
    return 0


def cmd_dro_check(args: argparse.Namespace) -> int:
    from analysis.dro_run import check_run, check_runs
    from rankrobust.runs import SweepDir

    paths = [Path(p) for p in args.run_dir]
    if len(paths) == 1 and not (paths[0] / SweepDir.RUNS).is_dir():
        report, ok = check_run(paths[0], tol=args.tol)
    else:  # across runs: check (e) only
        report, ok = check_runs(paths)
    print(report)
    return 0 if ok else 1


def _one_line_os_errors(command: str, handler):
    """Run ``handler``; an OSError (permission denied, a file where a folder should be) becomes one line, exit 2."""
    try:
        return handler()
    except BrokenPipeError:  # `rankrobust results DIR | head`: the reader has all it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except FileNotFoundError:
        raise
    except OSError as err:
        where = f"{err.filename}: " if getattr(err, "filename", None) else ""
        print(f"rankrobust {command}: error: {where}{err.strerror or err}; check the path and its permissions",
              file=sys.stderr)
        return 2


def cmd_sweep(args: argparse.Namespace) -> int:
    """Run a sweep (or list it with --dry-run); SIGTERM stops it like Ctrl-C, keeping finished runs."""
    from rankrobust.sweeps import load_spec, pending_cells, run_sweep
    from rankrobust.sweeps.cell import unfinished_reason
    from rankrobust.sweeps.runner import SweepTerminated, stale_run_names

    if args.jobs < 1:
        raise ConfigError(f"--jobs must be at least 1, got {args.jobs}")
    spec = load_spec(args.spec, seeds=args.seeds, device=args.device)
    sweep = SweepDir(args.out)
    if sweep.path.exists() and not sweep.path.is_dir():
        raise ConfigError(f"--out {sweep.path} is a file, not a folder; choose a folder for the sweep")

    def dry_run() -> int:
        todo, done = pending_cells(spec, sweep)
        print(f"{spec.name}: {done + len(todo)} runs, {done} done, {len(todo)} to run")
        for cell in todo:  # why a run folder on disk does not count (an outdated config names its key)
            why = unfinished_reason(sweep.run(cell.cell_id), cell.config.to_dict())
            print(f"  {cell.cell_id}" + (f"  ({why})" if why else ""))
        stale = stale_run_names(spec, sweep)
        if stale:
            verb = "--prune would delete" if args.prune else "left out of results; --prune deletes them"
            print(f"{len(stale)} stale run folder(s) (cells not in the spec), {verb}:")
            for name in stale:
                print(f"  {name}")
        return 0

    def run() -> int:
        if not args.quiet:  # the bar moves only when a run ends (minutes on a CPU): say what is starting
            print(f"{spec.name}: {len(spec.cells)} runs into {sweep.path} with {args.jobs} process"
                  f"{'es' if args.jobs > 1 else ''} ({args.executor}); the bar moves as runs finish (each takes "
                  f"seconds to minutes); its end shows the running runs' epoch and best validation value", file=sys.stderr, flush=True)
        try:
            report = run_sweep(spec, args.out, jobs=args.jobs, executor=args.executor, address=args.address,
                               progress=not args.quiet, prune=args.prune)
        except KeyboardInterrupt as stop:  # SIGTERM (SweepTerminated) or Ctrl-C
            by = "SIGTERM" if isinstance(stop, SweepTerminated) else "Ctrl-C"
            print(f"rankrobust sweep: stopped by {by}; running cells ended (workers or Ray tasks), finished runs "
                  f"kept in {sweep.path.absolute()}; rerun the same command to resume", file=sys.stderr)
            code = 143 if isinstance(stop, SweepTerminated) else 130
            if args.executor == "ray":  # everything is written; Ray's core worker can abort while the interpreter
                sys.stdout.flush()     # tears down after its tasks were ended, which would replace this exit code
                sys.stderr.flush()
                os._exit(code)
            return code
        print(report)
        print(f"store: {sweep.store_path}")
        return 1 if report.failed else 0

    return _one_line_os_errors("sweep", dry_run if args.dry_run else run)


def cmd_results(args: argparse.Namespace) -> int:
    """Summarise the current cells of a sweep folder; stale, outdated and unreadable runs get one line each."""
    return _one_line_os_errors("results", lambda: _results(args))


def _results(args: argparse.Namespace) -> int:
    from rankrobust.store import (EPOCH_CAP, OUTDATED, STALE, STATUS, STOP_REASON, arm_label, capped_warning,
                                  cells_progress, check_arm, compare_drops, compare_runs, compare_runs_per_user, format_summary,
                                  grid_axes, load_store, main_metrics, missing_cutoff, noise_axis, parse_arm,
                                  selection_cutoff, store_problems, summarize)
    from rankrobust.sweeps.runner import describe_owner, running_owner

    folder = Path(args.dir).parent if Path(args.dir).suffix == ".parquet" else Path(args.dir)
    full = load_store(args.dir, include_stale=True)
    frame = full[~(full[STALE] | full[OUTDATED])].drop(columns=[STALE, OUTDATED]).reset_index(drop=True)
    axes = grid_axes(folder, frame)
    # a comparison's arguments are checked before anything is printed: a typo is one line, not a table then a line
    if not (args.compare or args.robustness) and (args.per_user or args.noise_axis):
        raise ConfigError(f"{'--per-user' if args.per_user else '--noise-axis'} goes with "
                          f"{'--compare' if args.per_user else '--robustness'} A B")
    metric = (_compare_metric(args.compare_metric or f"ndcg@{selection_cutoff(frame)}", frame)
              if args.compare or args.robustness else None)
    try:
        for flag, pair in (("--compare", args.compare), ("--robustness", args.robustness)):
            if pair and parse_arm(pair[0]) == parse_arm(pair[1]):
                raise ValueError(f"{flag} {pair[0]} {pair[1]}: both arms are the same runs, so the difference is 0 "
                                 f"by construction; name two different arms, e.g. {flag} sl bsl")
        for arm in (*(args.compare or ()), *(args.robustness or ())):
            missing = [key for key in parse_arm(arm) if key not in frame]
            if missing:
                raise ValueError(f"arm {arm!r}: the store has no column {missing[0]!r}"
                                 f"{closest(missing[0], list(axes))}; grid axes: {', '.join(axes) or 'none'}")
            check_arm(frame, parse_arm(arm))
        noise = (args.noise_axis or noise_axis(frame, axes)) if args.robustness else None
    except ValueError as err:
        raise ConfigError(str(err)) from None
    noise_axes = [x for x in axes if x.startswith("noise.")]
    if noise is not None and noise not in noise_axes:
        raise ConfigError(f"--noise-axis {noise!r} is not a noise axis of this sweep{closest(noise, noise_axes)}; "
                          f"its noise axes: {', '.join(noise_axes) or 'none'}")
    counts = frame[STATUS].value_counts().to_dict()
    print(f"{args.dir}: {len(frame)} runs " + ", ".join(f"{v} {k}" for k, v in sorted(counts.items())))
    progress = cells_progress(folder, frame)
    if progress:
        print(f"note: {progress}")
    owner = running_owner(SweepDir(folder))
    if owner:
        print(f"note: {describe_owner(owner)} is still writing this folder; the numbers may change")
    for line in store_problems(full, folder):
        print(f"warning: {line}")
    lacking = None if args.metric else missing_cutoff(frame, selection_cutoff(frame))
    if lacking:
        print(f"warning: {lacking}; pass --metric test.recall@K with one of those")
    for metric in args.metric or ():
        if metric not in frame.columns or not pd.api.types.is_numeric_dtype(frame[metric]) \
                or pd.api.types.is_bool_dtype(frame[metric]):
            known = sorted(c for c in frame.columns if c.startswith(("test.", "valid.", "fairness.", "gradient_"))
                           and pd.api.types.is_numeric_dtype(frame[c]))
            what = "not a numeric metric column" if metric in frame.columns else "not a column"
            raise ConfigError(f"--metric {metric!r} is {what} of the store{closest(metric, known)}; "
                              f"metrics: {', '.join(known[:20])}{' …' if len(known) > 20 else ''}")
    summary = summarize(frame, axes, tuple(args.metric or main_metrics(frame)))
    print(format_summary(summary))
    csv = Path(args.csv) if args.csv else None
    if csv:
        _write_csv(summary, csv)
    done = frame[frame[STATUS] == STATUS_DONE]
    capped = int((done.get(STOP_REASON, pd.Series(dtype=object)) == EPOCH_CAP).sum())
    if capped:
        print(f"\nwarning: {capped} of {len(done)} finished runs stopped at their epoch cap (train.epochs), not by "
              f"early stopping: they are not converged")
    if "warnings" in frame:
        warned = frame[frame["warnings"].fillna("") != ""]
        if len(warned):
            first = warned["warnings"].iloc[0].split(" | ")[0]
            print(f"\nwarning: {len(warned)} of {len(frame)} runs carry warnings, e.g. {warned['cell_id'].iloc[0]}: "
                  f"{first}")
    if not (args.compare or args.robustness):
        return 0
    show = dict(index=False, float_format=lambda v: f"{v:.4g}")
    if args.compare:
        a, b = (parse_arm(x) for x in args.compare)
        table = compare_runs(frame, axes, a, b, metric=metric, permutation=args.permutation)
        if table.empty:
            print(f"\nno cell has finished runs of both {args.compare[0]!r} and {args.compare[1]!r} with a common seed")
            return 1
        la, lb = arm_label(a), arm_label(b)
        print(f"\n{lb} vs {la}, test {metric}, over matched seeds: diff = {lb} - {la} with its 95% CI (t), d_z, "
              f"p of the paired t-test over seeds; {_holm_family(table)}")
        print(table.to_string(**show))
        _warn_capped(capped_warning(table.attrs["capped"], table.attrs["runs"]))
        if csv:
            _write_csv(table, csv.with_name(f"{csv.stem}-compare.csv"))
        tested = int(table["p"].notna().sum())
        if args.per_user or not tested:  # no seed-level test: the per-user view is all there is (labelled secondary)
            try:
                secondary = compare_runs_per_user(frame, axes, a, b, metric=metric)
            except FileNotFoundError as err:
                if args.per_user:
                    raise
                print(f"(no per-user view either: {err})")
                return 0
            print(f"\n{secondary['view'].iloc[-1] if len(secondary) else 'secondary: per-user'}: per-user {lb} - "
                  f"{la} averaged over the matched seeds, Wilcoxon signed-rank over users (its unit is the user: "
                  f"it ignores training variance; " + ("the seed-level table above is the test)" if tested else
                                                       "shown because no seed-level test is possible: not a "
                                                       "substitute for one)"))
            print(secondary.drop(columns="view").to_string(**show))
    if args.robustness:
        a, b = (parse_arm(x) for x in args.robustness)
        table = compare_drops(frame, axes, a, b, noise=noise, metric=metric, permutation=args.permutation)
        if table.empty:
            print(f"\nno cell has clean and noisy finished runs of both {args.robustness[0]!r} and "
                  f"{args.robustness[1]!r} with a common seed")
            return 1
        clean = frame.loc[frame[STATUS] == STATUS_DONE, noise].min()
        x, y = arm_label(a), arm_label(b)
        print(f"\nrobustness, test {metric}: drop = value at {noise} = {clean:g} minus value at the noisy level; "
              f"diff = drop {x} - drop {y} over matched seeds (positive: {y} loses less), 95% CI (t), d_z, paired "
              f"t-test over seeds; {_holm_family(table)}")
        print(table.to_string(**show))
        _warn_capped(capped_warning(table.attrs["capped"], table.attrs["runs"]))
        if csv:
            _write_csv(table, csv.with_name(f"{csv.stem}-robustness.csv"))
    return 0


def _compare_metric(text: str, frame: pd.DataFrame) -> str:
    """``--compare-metric``'s ``name@K`` (``test.`` dropped): a registered per-user metric these runs computed.

    Read from the metric registry (`rankrobust.metrics`, with the fairness probe's metrics of
    `analysis.fairness`): a global metric (one value per run) is refused, for it has no per-user values to
    pair; an unknown or uncomputed one too.  Each refusal is one ConfigError line naming the choices.
    """
    import analysis.fairness  # noqa: F401  (registers the fairness probe's metrics)
    from rankrobust.metrics import UnknownMetric, parse_metric, per_user_metrics
    from rankrobust.store import stored_metrics

    metric = text.removeprefix("test.")
    tested = stored_metrics(frame, per_user=True)
    choices = f"per-user metrics of these runs: {', '.join(tested) if tested else 'none'}"
    try:
        entry, _ = parse_metric(metric)
    except UnknownMetric:
        raise ConfigError(f"--compare-metric {metric!r} is not a registered metric{closest(metric, tested)}; "
                          f"{choices}") from None
    except ValueError as err:
        raise ConfigError(f"--compare-metric {metric!r}: {err}; {choices}") from None
    if not entry.per_user:
        raise ConfigError(f"--compare-metric {metric!r} is a global metric (one value per run, over all users' "
                          f"lists): it has no per-user values to pair; per-user metrics: "
                          f"{', '.join(per_user_metrics())} ({choices})")
    if metric not in tested:
        raise ConfigError(f"--compare-metric {metric!r} is not a test metric of these runs"
                          f"{closest(metric, tested)}; {choices}")
    return metric


def _write_csv(table: pd.DataFrame, path: Path) -> None:
    """Write a results table as CSV (flat column names: ``test.ndcg@20 mean``) and say where."""
    flat = table.reset_index() if not isinstance(table.index, pd.RangeIndex) else table.copy()
    if isinstance(flat.columns, pd.MultiIndex):
        flat.columns = [" ".join(str(p) for p in col if str(p)) for col in flat.columns]
    path.parent.mkdir(parents=True, exist_ok=True)
    flat.to_csv(path, index=False)
    print(f"wrote {path}")


def _holm_family(table: pd.DataFrame) -> str:
    """``p_holm: one Holm family of N tests`` (naming the cells left out for lack of 2 matched seeds), or, where
    no cell has the 2 matched seeds a paired test over seeds needs, a line saying so (the table's p and p_holm
    are then empty: not an error of the store)."""
    tested = int(table["p"].notna().sum())
    if tested:
        short = int((table["seeds"] < 2).sum()) if "seeds" in table else 0
        return f"p_holm: one Holm family of {tested} tests" + (
            f" ({short} cell(s) with fewer than 2 matched seeds have no test)" if short else "")
    most = int(table["seeds"].max()) if "seeds" in table and len(table) else 0
    return (f"no test: a seed-level test needs >= 2 matched seeds per cell and these cells have at most "
            f"{most} (p, p_holm empty); run more seeds (rankrobust sweep SPEC --seeds 0 1 2 --out DIR)")


def _warn_capped(line: str | None) -> None:
    if line:
        print(f"warning: {line}")


def cmd_figures(args: argparse.Namespace) -> int:
    from analysis.figures import figure_list, make_figures

    from rankrobust.store import cells_progress, load_store

    if args.list:
        return _one_line_os_errors("figures", lambda: print(figure_list()) or 0)  # `--list | head` ends quietly
    if not args.dirs:
        raise ConfigError("name the sweep folders to draw from (rankrobust figures results/np-quick ...); "
                          "--list shows the figures and the sweeps each needs")
    out = Path(args.out) if args.out else default_figures_dir(args.dirs)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file, not a folder; give a folder for the figures")
    if not args.out:  # the default folder is not one the user named: say where the files go
        print(f"writing figures to {out} (--out to choose)", file=sys.stderr, flush=True)
    for folder in args.dirs:  # a sweep with cells not run (yet): say so before drawing what there is
        try:
            progress = cells_progress(Path(folder), load_store(folder))
        except (OSError, ValueError):
            progress = None  # make_figures reports an unreadable folder itself
        if progress:
            print(f"note: {folder}: {progress}", file=sys.stderr)
    made = make_figures([Path(d) for d in args.dirs], out, only=args.only)
    for path in made:
        print(path)
    return 0


def default_figures_dir(dirs: Sequence[str]) -> Path:
    """Where ``figures`` writes without ``--out``: ``figures/`` in the folder holding the sweep folders
    (their common parent: ``results/np-quick results/lc-quick`` → ``results/figures``), never the repository's
    committed ``figures/`` unless asked: sweep folders at the root of a checkout give ``results/figures``, and
    the shipped example stores (inside the installed package, maybe read-only) give ``results/figures`` under
    the working folder."""
    from rankrobust import EXAMPLES_DIR

    parents = [Path(d).expanduser().resolve().parent for d in dirs]
    out = Path(os.path.commonpath(parents)) / "figures"
    if out.is_relative_to(EXAMPLES_DIR.resolve().parent):  # the examples: never write into the package
        return Path.cwd() / "results" / "figures"
    committed = Path(__file__).resolve().parents[1] / "figures"  # the checkout's tracked figures/
    if out == committed and (committed.parent / ".git").exists():  # sweep folders at the repository root
        return committed.parent / "results" / "figures"
    return out


HANDLERS = {"datasets": cmd_datasets, "download": cmd_download, "train": cmd_train, "dro-check": cmd_dro_check,
            "sweep": cmd_sweep, "results": cmd_results, "figures": cmd_figures}


def _format_warning(message, category, filename, lineno, line=None, _default=warnings.formatwarning) -> str:
    """A warning raised by rankrobust's own code as one ``warning: ...`` line (not Python's ``FILE:LINE:
    UserWarning:`` form with the source line); others (torch, pandas) as Python prints them."""
    ours = Path(__file__).resolve().parent  # rankrobust/ and analysis/ beside it
    if any(Path(filename).resolve().is_relative_to(home) for home in (ours, ours.parent / "analysis")):
        return f"warning: {message}\n"
    return _default(message, category, filename, lineno, line)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``rankrobust`` console script (rankrobust's warnings as one line while it runs)."""
    previous, warnings.formatwarning = warnings.formatwarning, _format_warning
    try:
        return _main(argv)
    finally:
        warnings.formatwarning = previous


def _main(argv: Sequence[str] | None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "out", None):  # the folder the user named, through any link of their own (results -> /scratch);
        args.out = str(Path(args.out).expanduser().resolve())  # links planted inside it are still refused
    try:
        return HANDLERS[args.command](args)
    except (ConfigError, FileNotFoundError, FileExistsError, ValueError, RuntimeError) as err:
        print(f"rankrobust {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
