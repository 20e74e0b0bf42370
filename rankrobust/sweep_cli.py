"""Subcommands ``sweep``, ``results`` and ``figures``."""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Callable


def add_subcommands(sub: argparse._SubParsersAction) -> None:
    """Register ``sweep``, ``results`` and ``figures`` on the main parser."""
    p = sub.add_parser("sweep", help="run a grid of runs from a sweep spec (resumable)")
    p.add_argument("spec", help="sweep spec YAML (see configs/sweeps/)")
    p.add_argument("--out", required=True, help="sweep folder (runs/ and store.parquet go here)")
    p.add_argument("--jobs", type=int, default=1, help="parallel processes (one GPU each where several exist)")
    p.add_argument("--executor", default="local", help="local or ray")
    p.add_argument("--address", help="Ray cluster address (with --executor ray), e.g. auto or HOST:6379")
    p.add_argument("--dry-run", action="store_true", help="list the cells and what is left to run")
    p.add_argument("--quiet", action="store_true", help="no progress bar")

    p = sub.add_parser("results", help="summarise a sweep's results store")
    p.add_argument("dir", help="sweep folder (holding store.parquet)")
    p.add_argument("--metric", action="append", help="metrics to show (default test.recall@20, test.ndcg@20)")
    p.add_argument("--compare", nargs=2, metavar=("LOSS_A", "LOSS_B"),
                   help="paired Wilcoxon test across users of two losses per cell, Holm-corrected")
    p.add_argument("--compare-metric", default="ndcg@20", help="per-user metric for --compare")

    p = sub.add_parser("figures", help="regenerate the paper's figures from sweep stores")
    p.add_argument("dirs", nargs="+", help="sweep folders (quick or full results)")
    p.add_argument("--out", default="figures", help="folder for PNG/PDF and sidecar texts")
    p.add_argument("--only", action="append", help="figure numbers or names to make (default all)")


def cmd_sweep(args: argparse.Namespace) -> int:
    from rankrobust.sweep import load_spec, pending_cells, run_sweep

    spec = load_spec(args.spec)
    if args.dry_run:
        todo, done = pending_cells(spec, Path(args.out))
        print(f"{spec.name}: {done + len(todo)} runs, {done} done, {len(todo)} to run")
        for cell in todo:
            print(f"  {cell.cell_id}")
        return 0
    report = run_sweep(spec, args.out, jobs=args.jobs, executor=args.executor, address=args.address,
                       progress=not args.quiet)
    print(report)
    print(f"store: {Path(args.out) / 'store.parquet'}")
    return 1 if report.failed else 0


def cmd_results(args: argparse.Namespace) -> int:
    from rankrobust.store import MAIN_METRICS, compare_losses, format_summary, grid_axes, load_store, summarize

    frame = load_store(args.dir)
    axes = grid_axes(args.dir, frame)
    counts = frame["status"].value_counts().to_dict()
    print(f"{args.dir}: {len(frame)} runs " + ", ".join(f"{v} {k}" for k, v in sorted(counts.items())))
    print(format_summary(summarize(frame, axes, tuple(args.metric or MAIN_METRICS))))
    if args.compare:
        a, b = args.compare
        table = compare_losses(frame, axes, a, b, metric=args.compare_metric)
        if table.empty:
            print(f"\nno cell has finished runs of both {a!r} and {b!r}")
            return 1
        print(f"\npaired Wilcoxon signed-rank test across users, {args.compare_metric}, {b} vs {a} "
              f"(Holm-corrected over {len(table)} cells)")
        print(table.to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    return 0


def cmd_figures(args: argparse.Namespace) -> int:
    from analysis.figures import make_figures

    made = make_figures([Path(d) for d in args.dirs], Path(args.out), only=args.only)
    for path in made:
        print(path)
    return 0


HANDLERS: dict[str, Callable[[argparse.Namespace], int]] = {
    "sweep": cmd_sweep, "results": cmd_results, "figures": cmd_figures,
}
