"""Sweeps: a YAML spec expanded into a grid of runs, executed resumably.

A spec (see ``configs/sweeps/``)::

    name: noisy-positives-lastfm-quick
    base: {preset: configs/x.yaml, data: {name: lastfm}, train: {epochs: 30}}
    grid: {loss.name: [sl, bsl], noise.pos_ratio: [0.0, 0.2]}
    seeds: [0, 1]
    overrides:                       # optional, applied in order to matching cells
      - when: {loss.name: bsl}
        set: {loss.mode: paper, loss.tau1: 0.5}
    options: {fairness: true, track_variance: false}

Each cell (one grid point × one seed) is one run directory
``OUT/runs/<cell id>``.  A cell counts as done only when its ``status`` says
so and its ``config.json`` matches the spec; a rerun skips done cells and
re-runs failed, interrupted or outdated (spec edited since) ones, so a sweep
killed at any moment loses no finished run.  The results store
``OUT/store.parquet`` is rebuilt from the run directories (atomically).
"""
from __future__ import annotations

import itertools
import json
import re
import shutil
import traceback
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Any, Callable, Iterable

import yaml
from tqdm.auto import tqdm

from rankrobust import runs
from rankrobust.config import ConfigError, RunConfig, closest, config_from_dict, load_config, set_dotted

SPEC_KEYS = ("name", "description", "base", "grid", "seeds", "overrides", "options")
OPTION_KEYS = ("fairness", "track_variance", "resources")


@dataclass(frozen=True)
class Cell:
    """One run of a sweep: its id, grid values, seed and resolved config."""

    cell_id: str
    values: dict[str, Any]
    seed: int
    config: RunConfig


@dataclass
class SweepSpec:
    """A parsed sweep spec (see module docstring)."""

    name: str
    base: dict[str, Any]
    grid: dict[str, list[Any]]
    seeds: list[int]
    overrides: list[dict[str, dict[str, Any]]] = field(default_factory=list)
    options: dict[str, bool] = field(default_factory=dict)
    description: str = ""
    source: Path | None = None

    def cells(self) -> list[Cell]:
        """Expand grid × seeds (in spec order) into validated cells."""
        keys = list(self.grid)
        cells = []
        for combo in itertools.product(*(self.grid[k] for k in keys)):
            values = dict(zip(keys, combo))
            for seed in self.seeds:
                tree = json.loads(json.dumps(self.base))
                for key, value in values.items():
                    set_dotted(tree, key, value)
                for rule in self.overrides:
                    if all(values.get(k) == v for k, v in rule.get("when", {}).items()):
                        for key, value in rule.get("set", {}).items():
                            set_dotted(tree, key, value)
                set_dotted(tree, "train.seed", seed)
                try:
                    cfg = config_from_dict(tree)
                except ConfigError as err:
                    raise ConfigError(f"sweep {self.name}, cell {values} seed {seed}: {err}") from None
                cells.append(Cell(cell_id(values, seed), values, seed, cfg))
        ids = [c.cell_id for c in cells]
        if len(set(ids)) != len(ids):
            raise ConfigError(f"sweep {self.name}: grid values give duplicate cell ids")
        return cells


def cell_id(values: dict[str, Any], seed: int) -> str:
    """A readable, filesystem-safe id: ``loss.name=sl__noise.pos_ratio=0.2__seed=0``."""
    parts = [f"{k}={v}" for k, v in values.items()] + [f"seed={seed}"]
    return re.sub(r"[^A-Za-z0-9_.=+-]", "-", "__".join(parts))


def _base_tree(base: dict[str, Any], spec_path: Path | None) -> dict[str, Any]:
    """Base config as a nested dict; ``preset:`` loads a config file first, then the rest overrides it."""
    base = dict(base or {})
    preset = base.pop("preset", None)
    tree = config_from_dict({}).to_dict()
    if preset is not None:
        candidates = [Path(preset)] + ([spec_path.parent / preset] if spec_path else [])
        path = next((p for p in candidates if p.exists()), None)
        if path is None:
            raise ConfigError(f"sweep base preset {preset!r} not found")
        tree = load_config(path).to_dict()

    def merge(dst: dict[str, Any], src: dict[str, Any], prefix: str) -> None:
        for key, value in src.items():
            if isinstance(value, dict):
                if key not in dst or not isinstance(dst[key], dict):
                    raise ConfigError(f"unknown config section '{prefix}{key}'{closest(key, list(dst))}")
                merge(dst[key], value, f"{prefix}{key}.")
            else:
                dst[key] = value

    merge(tree, base, "")
    return tree


def parse_spec(data: dict[str, Any], source: Path | None = None) -> SweepSpec:
    """Validate a spec dict (unknown keys → ConfigError naming the closest)."""
    where = f"{source}: " if source else ""
    if not isinstance(data, dict):
        raise ConfigError(f"{where}a sweep spec must be a mapping")
    for key in data:
        if key not in SPEC_KEYS:
            raise ConfigError(f"{where}unknown sweep key '{key}'{closest(key, SPEC_KEYS)}; valid: {', '.join(SPEC_KEYS)}")
    grid = data.get("grid") or {}
    if not isinstance(grid, dict) or any(not isinstance(v, list) or not v for v in grid.values()):
        raise ConfigError(f"{where}grid must map config keys to non-empty lists")
    options = data.get("options") or {}
    for key in options:
        if key not in OPTION_KEYS:
            raise ConfigError(f"{where}unknown sweep option '{key}'{closest(key, OPTION_KEYS)}")
    seeds = data.get("seeds", [0])
    seeds = [seeds] if isinstance(seeds, int) else list(seeds)
    try:
        spec = SweepSpec(name=str(data.get("name") or (source.stem if source else "sweep")),
                         base=_base_tree(data.get("base") or {}, source), grid=grid, seeds=seeds,
                         overrides=list(data.get("overrides") or []), options=dict(options),
                         description=str(data.get("description", "")), source=source)
        spec.cells()  # validate every cell now, before anything runs
    except ConfigError as err:
        raise ConfigError(f"{where}{err}") from None
    return spec


def load_spec(path: str | Path) -> SweepSpec:
    """Read and validate a sweep spec YAML."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"sweep spec {path} does not exist")
    return parse_spec(yaml.safe_load(path.read_text()), path)


# ----------------------------------------------------------------------------- running
def is_finished(run_dir: Path, config: dict[str, Any]) -> bool:
    """True when ``run_dir`` holds a finished run of exactly ``config``.

    A run made with another config (the spec was edited since) counts as
    unfinished, so a resumed sweep re-runs it instead of keeping stale numbers.
    """
    if runs.read_status(run_dir) != runs.STATUS_DONE:
        return False
    try:
        stored = json.loads((run_dir / "config.json").read_text())
    except (OSError, ValueError):
        return False
    return stored == json.loads(json.dumps(config))


def run_cell(config: dict[str, Any], run_dir: str, options: dict[str, bool], device: str | None = None) -> dict[str, Any]:
    """Run one cell into ``run_dir`` (wiping an unfinished, failed or outdated previous attempt).

    Never raises for a failing run: the failure is recorded in the run's
    ``status`` (with the traceback) and returned as ``{"status": "failed"}``.
    """
    from rankrobust.experiment import run_experiment

    path = Path(run_dir)
    if is_finished(path, config):
        return {"status": runs.STATUS_DONE, "skipped": True}
    if path.exists():
        shutil.rmtree(path)
    try:
        cfg = config_from_dict(config)
        run_experiment(cfg, path, device=device, progress=False, overwrite=True,
                       fairness=options.get("fairness", False), track_variance=options.get("track_variance", False))
        return {"status": runs.STATUS_DONE}
    except Exception:
        detail = traceback.format_exc()
        if not path.exists() or runs.read_status(path) != runs.STATUS_FAILED:
            path.mkdir(parents=True, exist_ok=True)
            runs.write_status(path, runs.STATUS_FAILED, detail)
        return {"status": runs.STATUS_FAILED, "error": detail.strip().splitlines()[-1]}


def pending_cells(spec: SweepSpec, out: Path) -> tuple[list[Cell], int]:
    """(cells still to run, number already done) for a sweep folder."""
    cells = spec.cells()
    todo = [c for c in cells if not is_finished(out / "runs" / c.cell_id, c.config.to_dict())]
    return todo, len(cells) - len(todo)


def prepare_out(spec: SweepSpec, out: Path) -> None:
    """Create the sweep folder and record the spec (refusing a folder of another sweep)."""
    out.mkdir(parents=True, exist_ok=True)
    for stale in out.glob(".*.tmp"):  # temp files of a store write that was killed midway
        stale.unlink(missing_ok=True)
    record = out / "sweep.json"
    doc = {"name": spec.name, "grid": spec.grid, "seeds": spec.seeds, "base": spec.base,
           "overrides": spec.overrides, "options": spec.options,
           "source": str(spec.source) if spec.source else None}
    if record.exists():
        old = json.loads(record.read_text())
        if old.get("name") != spec.name:
            raise ConfigError(f"{out} holds sweep {old.get('name')!r}, not {spec.name!r}; choose another --out")
    runs.write_json(record, doc)


def _share_cores(jobs: int) -> None:
    """Worker initialiser: split the CPU cores between the ``jobs`` processes (no oversubscription)."""
    import os

    import torch

    torch.set_num_threads(max(1, (os.cpu_count() or 1) // jobs))


def _devices(jobs: int) -> list[str | None]:
    import torch

    n = torch.cuda.device_count()
    return [f"cuda:{j % n}" if n else None for j in range(jobs)]


Executor = Callable[[SweepSpec, list[Cell], Path, Any], Iterable[tuple[Cell, dict[str, Any]]]]


def execute_local(spec: SweepSpec, cells: list[Cell], out: Path, jobs: int = 1) -> Iterable[tuple[Cell, dict[str, Any]]]:
    """Run cells in this process (``jobs = 1``) or in ``jobs`` spawned processes (one GPU each when several)."""
    if jobs <= 1:
        for cell in cells:
            yield cell, run_cell(cell.config.to_dict(), str(out / "runs" / cell.cell_id), spec.options)
        return
    devices = _devices(jobs)
    with ProcessPoolExecutor(max_workers=jobs, mp_context=get_context("spawn"), initializer=_share_cores,
                             initargs=(jobs,)) as pool:
        futures = {pool.submit(run_cell, c.config.to_dict(), str(out / "runs" / c.cell_id), spec.options,
                               devices[n % jobs]): c for n, c in enumerate(cells)}
        for future in as_completed(futures):
            yield futures[future], future.result()


def run_sweep(spec: SweepSpec, out: str | Path, *, jobs: int = 1, executor: str = "local",
              address: str | None = None, progress: bool = True) -> "SweepReport":
    """Run every unfinished cell of ``spec`` into ``out`` and rebuild the store.

    ``executor`` is ``local`` (``jobs`` processes) or ``ray`` (``address`` of
    an existing cluster, or a local Ray instance).  Returns counts of done,
    skipped and failed cells.
    """
    from rankrobust.store import write_store

    out = Path(out)
    prepare_out(spec, out)
    todo, done_before = pending_cells(spec, out)
    if executor == "local":
        stream = execute_local(spec, todo, out, jobs)
    elif executor == "ray":
        from rankrobust.ray_executor import execute_ray

        stream = execute_ray(spec, todo, out, address=address, max_parallel=jobs if jobs > 1 else None)
    else:
        raise ConfigError(f"unknown executor {executor!r}{closest(executor, ['local', 'ray'])}")
    report = SweepReport(total=done_before + len(todo), skipped=done_before)
    bar = tqdm(total=report.total, initial=done_before, desc=spec.name, unit="run", disable=not progress,
               dynamic_ncols=True)
    try:
        for cell, result in stream:
            if result["status"] == runs.STATUS_DONE:
                report.done += 1
            else:
                report.failed.append(f"{cell.cell_id}: {result.get('error', 'failed')}")
            bar.update(1)
            bar.set_postfix(failed=len(report.failed))
            write_store(out)  # keep the table current: an interrupted sweep still has one
    finally:
        bar.close()
    write_store(out)
    return report


@dataclass
class SweepReport:
    """Counts of a sweep invocation."""

    total: int
    skipped: int
    done: int = 0
    failed: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        text = f"{self.total} runs: {self.skipped} already done, {self.done} ran now, {len(self.failed)} failed"
        return text + "".join(f"\n  failed {f}" for f in self.failed)
