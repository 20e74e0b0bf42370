#!/usr/bin/env python
"""Copy the example sweeps shipped in rankrobust/examples/ from a folder of finished sweep results.

The notebooks read ``results_dir()``: ``$RANKROBUST_RESULTS`` when set, else
``rankrobust/examples/``.  This script fills that folder with small copies of
the quick lastfm sweeps so that every notebook runs on a fresh clone:

==================  ==================================  ======================================================
 example             source folder (in SRC)              per-run files kept (besides config, metrics, status)
==================  ==================================  ======================================================
 np-quick            np-quick                            per_user of the SL and BSL runs (notebook 01's paired
                                                         test); the final user/item embeddings of ONE SL run,
                                                         the one `dro_frames` reads (notebook 03)
 lc-quick            lc-quick                            fairness (notebook 02's per-group recall)
 var-quick           var-quick                           variance (notebook 02's score statistics per epoch)
 bsl-batching-quick  bsl-batching-quick (or bb-quick)    epochs (notebook 04's per-epoch gradient share);
                                                         per_user of the BSL runs (its paired test)
==================  ==================================  ======================================================

Every run folder keeps ``config``, ``metrics`` and ``status`` so the copied
store agrees with its runs.  Nothing is rebuilt or retrained: the sweep's spec
record and store are copied byte for byte (the store's ``run_dir`` column is
relative to the sweep folder, so it stays valid), run files are copied as they
are, except the model weights, of which only ``final_user`` / ``final_item``
are kept.  In each run folder ``status`` is written last (`RunDir.finish` /
`RunDir.fail`), and the whole example folder is assembled next to its target
and moved into place at the end, so nothing half-written is left behind.  File
names come from `RunDir` / `SweepDir`.

Usage (from the repository root)::

    python scripts/make_examples.py SRC_RESULTS_DIR [--out rankrobust/examples]
        [--machine "2-core x86_64 VM, no GPU"] [--max-mb 8] [--allow-unfinished]

It refuses a sweep that is not complete (runs missing from its store or not
finished) unless ``--allow-unfinished``, and refuses to write more than
``--max-mb`` MB (default `MAX_MB`).  Every refusal (a missing SRC or sweep
folder, a missing or damaged ``sweep.json`` or store, an unfinished sweep, too
many MB) is one line on stderr naming the file and the fix, exit status 2.  It writes ``README.md`` saying which sweeps, commands and
machine made the examples (from each sweep's spec record and its runs'
``metrics.json`` ``environment``), and that they are examples, not results to
cite.
"""
from __future__ import annotations

import argparse
import io
import math
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, NoReturn

import pandas as pd
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from rankrobust import EXAMPLES_DIR, RunDir, SweepDir, load_store  # noqa: E402
from rankrobust import runs  # noqa: E402  (atomic write helpers)
from rankrobust.runs import RunFolderError  # noqa: E402

#: tensors of model.pt kept for notebook 03 (final embeddings; the raw ones are dropped)
KEEP_TENSORS = ("final_user", "final_item")
#: default of ``--max-mb``: the most the shipped examples may take, in MB (10^6 bytes)
MAX_MB = 8.0


def refuse(message: str) -> NoReturn:
    """Stop with ``message`` as one line on stderr and exit status 2 (bad input, like argparse's usage errors)."""
    print(f"make_examples.py: error: {message}", file=sys.stderr)
    raise SystemExit(2)


@dataclass
class Example:
    """What one example folder copies from its source sweep."""

    folder: str
    sources: tuple[str, ...]
    #: table name → which runs keep it (a predicate on the store row), with a line for the README
    tables: dict[str, tuple[Callable[[pd.Series], bool], str]] = field(default_factory=dict)
    #: picks the one run whose (reduced) weights are kept, or None
    tensors_of: Callable[[pd.DataFrame], str | None] | None = None
    used_by: str = ""


def _all(_row: pd.Series) -> bool:
    return True


def _loss_in(*names: str) -> Callable[[pd.Series], bool]:
    return lambda row: row.get("loss.name") in names


def _least_noisy_sl(store: pd.DataFrame) -> str | None:
    """Cell id of the SL run `analysis.figures.dro_frames` reads: the first done SL run by noise ratio."""
    sl = store[(store["status"] == runs.STATUS_DONE) & (store["loss.name"] == "sl")]
    if sl.empty:
        return None
    order = [c for c in ("noise.pos_ratio", "train.seed") if c in sl]
    return str(sl.sort_values(order, kind="stable").iloc[0]["cell_id"])


EXAMPLES = (
    Example("np-quick", ("np-quick",),
            {"per_user": (_loss_in("sl", "bsl"), "per_user (SL and BSL runs)")},
            _least_noisy_sl, "01-explore-sweep, 03-dro-equivalence"),
    Example("lc-quick", ("lc-quick",), {"fairness": (_all, "fairness (all runs)")},
            None, "02-fairness-variance"),
    Example("var-quick", ("var-quick",), {"variance": (_all, "variance (all runs)")},
            None, "02-fairness-variance"),
    Example("bsl-batching-quick", ("bsl-batching-quick", "bb-quick"),
            {"epochs": (_all, "epochs (all runs)"), "per_user": (_loss_in("bsl"), "per_user (BSL runs)")},
            None, "04-bsl-batching"),
)


def copy_file(src: Path, dst: Path) -> None:
    """Copy ``src`` to ``dst`` through a temporary name (atomic)."""
    with runs.atomic_path(dst) as tmp:
        shutil.copyfile(src, tmp)


def save_tensors(dst: RunDir, tensors: dict[str, torch.Tensor]) -> None:
    """Write ``dst``'s weights like `RunDir.save_tensors` (``torch.save``, atomic), but byte-reproducibly.

    ``torch.save`` to a path names the archive's inner folder after the file, and the atomic write goes
    through a random temporary name; saving to memory first gives the fixed inner name ``archive``, so
    rerunning this script leaves an unchanged ``model.pt`` unchanged.
    """
    buffer = io.BytesIO()
    torch.save({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, buffer)
    with runs.atomic_path(dst.path / RunDir.MODEL) as tmp:
        tmp.write_bytes(buffer.getvalue())


def find_source(root: Path, example: Example) -> Path:
    for name in example.sources:
        if SweepDir(root / name).store_path.exists():
            return root / name
    refuse(f"{root}: no sweep folder for {example.folder!r} (looked for "
                     f"{' or '.join(example.sources)} with a results store)")


def expected_runs(spec: dict) -> int:
    """Number of cells of a recorded spec: product of the grid sizes times the seeds."""
    return math.prod(len(v) for v in spec.get("grid", {}).values()) * len(spec.get("seeds", [0]))


def check_complete(sweep: SweepDir, store: pd.DataFrame, allow_unfinished: bool) -> None:
    spec = sweep.spec() or {}
    finished = store["status"].isin([runs.STATUS_DONE, runs.STATUS_FAILED]).sum()
    expected = expected_runs(spec) if spec else len(store)
    problems = []
    if finished < expected:
        problems.append(f"{finished} of {expected} runs finished")
    failed = int((store["status"] == runs.STATUS_FAILED).sum())
    if failed:
        problems.append(f"{failed} failed runs")
    if problems and not allow_unfinished:
        refuse(f"{sweep.path}: {', '.join(problems)}; wait for the sweep to finish "
                         f"(or pass --allow-unfinished)")
    if problems:
        print(f"warning: {sweep.path}: {', '.join(problems)}", file=sys.stderr)


def copy_run(src: RunDir, dst: RunDir, row: pd.Series, example: Example, tensors: bool) -> list[str]:
    """Copy one run folder's kept files; ``status`` last.  Returns the table names copied."""
    dst.path.mkdir(parents=True, exist_ok=True)
    for name in (RunDir.CONFIG, RunDir.METRICS):
        if (src.path / name).exists():
            copy_file(src.path / name, dst.path / name)
    copied = []
    for table, (keep, _) in example.tables.items():
        if keep(row) and src.has_table(table):
            copy_file(src.table_path(table), dst.table_path(table))
            copied.append(table)
    if tensors:
        weights = src.tensors()
        missing = [k for k in KEEP_TENSORS if k not in weights]
        if missing:
            refuse(f"{src.path}: model weights lack {missing} (has {sorted(weights)})")
        save_tensors(dst, {k: weights[k] for k in KEEP_TENSORS})
    status = src.status()
    if status == runs.STATUS_DONE:
        dst.finish()
    elif status == runs.STATUS_FAILED:
        text = (src.path / RunDir.STATUS).read_text()
        dst.fail(text.split("\n", 1)[1].rstrip("\n") if "\n" in text.rstrip("\n") else "")
    return copied


def copy_sweep(source: Path, target: Path, example: Example, allow_unfinished: bool) -> dict:
    """Copy one sweep into ``target`` (which must not exist); returns facts for the README."""
    src = SweepDir(source)
    if not src.spec_path.is_file():
        refuse(f"{src.spec_path} is missing: the sweep's recorded spec is copied with its store; run "
               f"`rankrobust sweep SPEC --out {source}` again to record it (finished runs are kept)")
    try:
        src.spec()
        store = load_store(source)
    except (RunFolderError, FileNotFoundError) as err:  # each names the file and the fix
        refuse(str(err))
    stored = pd.read_parquet(src.store_path, columns=["run_dir"])
    absolute = [d for d in stored["run_dir"] if Path(d).is_absolute()]
    if absolute:
        refuse(f"{src.store_path}: run_dir holds absolute paths (e.g. {absolute[0]}); the store was "
                         f"written by an older rankrobust. Rebuild it from its runs with the current one first.")
    check_complete(src, store, allow_unfinished)
    dst = SweepDir(target)
    weights_cell = example.tensors_of(store) if example.tensors_of else None
    if example.tensors_of and weights_cell is None:
        refuse(f"{source}: no finished run to take model weights from")
    counts: dict[str, int] = {}
    for _, row in store.iterrows():
        cell = str(row["cell_id"])
        for table in copy_run(src.run(cell), dst.run(cell), row, example, tensors=cell == weights_cell):
            counts[table] = counts.get(table, 0) + 1
    copy_file(src.spec_path, dst.spec_path)
    copy_file(src.store_path, dst.store_path)
    done = store[store["status"] == runs.STATUS_DONE]
    return {"example": example, "source": source, "spec": src.spec() or {}, "store": store, "done": done,
            "tables": counts, "weights_cell": weights_cell}


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:.1f} min"


def _environments(facts: dict) -> list[str]:
    """Distinct (device, environment) of the sweep's finished runs, as text."""
    seen: dict[str, int] = {}
    for run_dir in facts["done"]["run_dir"]:
        m = RunDir(run_dir).metrics()
        env = m.get("environment", {})
        text = (f"device `{m.get('device', '?')}`; torch {env.get('torch', '?')}, python {env.get('python', '?')}, "
                f"{env.get('machine', '?')}, threads: {env.get('threads', '?')}, CUDA device: "
                f"{env.get('cuda_device') or 'none'}")
        seen[text] = seen.get(text, 0) + 1
    return [f"{text} ({n} runs)" for text, n in seen.items()]


def readme(all_facts: list[dict], machine: str | None, total_bytes: int) -> str:
    lines = [
        "# Example sweeps (generated, do not edit)",
        "",
        "**These are examples, not results to cite.** They are small copies of the quick lastfm sweeps "
        "(MF on the embedded lastfm data, sized for 2 CPU cores; how each was made, its settings, seeds and "
        "epochs, is in its `sweep.json`), shipped so that every notebook in `notebooks/` runs "
        "on a fresh clone: `rankrobust.results_dir(\"np-quick\")` returns the sweep of that name under "
        "`RANKROBUST_RESULTS` when that folder holds it, else this folder's copy (with a printed note). For numbers to report, run the sweeps yourself (commands below), point "
        "`RANKROBUST_RESULTS` at their folder, and read the full stores.",
        "",
        "Written by `python scripts/make_examples.py SRC_RESULTS_DIR` from the sweep folders listed below; "
        "rerun it after the sweeps change. Nothing here is rebuilt or retrained: each folder's `sweep.json` "
        "(the recorded spec) and `store.parquet` (one row per run, `run_dir` relative to the folder) are "
        "copied as the sweep wrote them, and each run folder keeps its `config.json`, `metrics.json` and "
        "`status` plus only the per-run files the notebooks read. Anything else (another loss's per-user "
        "table, most model weights, `noise.parquet`) was left out to keep the package small, so analyses "
        "that need it fail with a missing-file error here and work on the full sweeps.",
        "",
        "| folder | sweep (spec name) | command that made it | runs done / in store | per-run files kept "
        "besides config, metrics, status | notebooks |",
        "|---|---|---|---|---|---|",
    ]
    for f in all_facts:
        ex: Example = f["example"]
        spec = f["spec"]
        made_in = f["source"].resolve().name  # the folder that ran the sweep (SRC may hold a link to it)
        command = (f"`rankrobust sweep {spec.get('source') or 'configs/sweeps/' + spec.get('name', '?') + '.yaml'}"
                   f" --out results/{made_in}`")
        kept = [f"{ex.tables[t][1]}" for t in ex.tables if f["tables"].get(t)]
        if f["weights_cell"]:
            kept.append(f"model weights `{'`, `'.join(KEEP_TENSORS)}` of `{f['weights_cell']}` only")
        lines.append(f"| `{ex.folder}` | `{spec.get('name', '?')}` | {command} | {len(f['done'])} / "
                     f"{len(f['store'])} | {'; '.join(kept) or '-'} | {ex.used_by} |")
    lines += ["", "## Machine and time", ""]
    lines.append(f"Machine: {machine}" if machine else
                 "Machine and sweep wall-clock time: _not given (pass `--machine TEXT` to `make_examples.py`)_.")
    lines.append("")
    lines.append("Recorded by the runs themselves (`metrics.json`: `device`, `environment`; store columns "
                 "`train_seconds`, `wall_seconds`):")
    lines.append("")
    for f in all_facts:
        done = f["done"]
        train = float(done["train_seconds"].fillna(0).sum()) if "train_seconds" in done else 0.0
        wall = float(done["wall_seconds"].fillna(0).sum()) if "wall_seconds" in done else 0.0
        lines.append(f"- `{f['example'].folder}` (from `{f['source'].resolve().name}`): {len(done)} runs, "
                     f"{_minutes(train)} training and {_minutes(wall)} run wall time summed over runs.")
        for env in _environments(f):
            lines.append(f"  - {env}")
    lines += ["", f"Size of the example folders: {total_bytes / 1e6:.2f} MB.", ""]
    return "\n".join(lines)


def folder_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def arguments() -> argparse.ArgumentParser:
    """The command line of this script."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("src", type=Path, help="folder holding the finished sweep folders (e.g. results/)")
    parser.add_argument("--out", type=Path, default=EXAMPLES_DIR, help=f"examples folder (default {EXAMPLES_DIR})")
    parser.add_argument("--machine", help="free text describing the machine that ran the sweeps, for the README")
    parser.add_argument("--max-mb", type=float, default=MAX_MB,
                        help=f"refuse to write more than this (default {MAX_MB:g} MB)")
    parser.add_argument("--allow-unfinished", action="store_true", help="copy sweeps that are not complete")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = arguments().parse_args(argv)
    if not args.src.is_dir():
        refuse(f"SRC {args.src} {'is not a folder' if args.src.exists() else 'does not exist'}; pass the folder "
               f"holding the finished sweep folders ({', '.join(e.sources[0] for e in EXAMPLES)}), e.g. results")
    src_root = args.src.resolve()
    out = args.out.resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        facts = []
        for example in EXAMPLES:
            source = find_source(src_root, example)
            facts.append(copy_sweep(source, stage / example.folder, example, args.allow_unfinished))
        runs.write_text(stage / "README.md", readme(facts, args.machine, folder_bytes(stage)))
        size = folder_bytes(stage)
        for path in [stage, *stage.rglob("*")]:  # temp names are private (0600 / 0700); ship them readable
            path.chmod(0o755 if path.is_dir() else 0o644)
        if size > args.max_mb * 1e6:
            big = sorted(((folder_bytes(p), p.name) for p in stage.iterdir() if p.is_dir()), reverse=True)
            refuse(f"examples would take {size / 1e6:.2f} MB > {args.max_mb} MB: "
                             + ", ".join(f"{n} {b / 1e6:.2f} MB" for b, n in big))
        if out.exists():
            shutil.rmtree(out)
        os.replace(stage, out)
    finally:
        if stage.exists():
            shutil.rmtree(stage)
    for f in facts:
        folder = out / f["example"].folder
        print(f"{folder}: {len(f['store'])} runs from {f['source']}, {folder_bytes(folder) / 1e6:.2f} MB")
    print(f"{out}: {folder_bytes(out) / 1e6:.2f} MB in all")
    return 0


if __name__ == "__main__":
    sys.exit(main())
