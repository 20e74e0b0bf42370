"""Run a sweep: lock its folder, run the pending cells, keep the results store current."""
from __future__ import annotations

import fcntl
import os
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from tqdm.auto import tqdm

from rankrobust.config import ConfigError, closest
from rankrobust.runs import STATUS_DONE, SweepDir
from rankrobust.store import write_store
from rankrobust.sweeps.cell import is_finished
from rankrobust.sweeps.executors import EXECUTORS
from rankrobust.sweeps.spec import Cell, SweepSpec


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


def pending_cells(spec: SweepSpec, out: str | Path | SweepDir) -> tuple[list[Cell], int]:
    """(cells still to run, number already done) for a sweep folder."""
    sweep = out if isinstance(out, SweepDir) else SweepDir(out)
    todo = [c for c in spec.cells if not is_finished(sweep.run(c.cell_id), c.config.to_dict())]
    return todo, len(spec.cells) - len(todo)


@contextmanager
def locked(sweep: SweepDir) -> Iterator[None]:
    """Hold the sweep folder's lock; ConfigError at once if another process holds it."""
    sweep.path.mkdir(parents=True, exist_ok=True)
    fd = os.open(sweep.lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise ConfigError(f"{sweep.path} is in use by another `rankrobust sweep` (lock {sweep.lock_path}); "
                              f"wait for it to finish or choose another --out") from None
        yield
    finally:
        os.close(fd)


def prepare_out(spec: SweepSpec, sweep: SweepDir) -> None:
    """Record the spec in the sweep folder (refusing a folder of another sweep); clean stale temp files."""
    for stale in sweep.path.glob(".*.tmp"):  # temp files of a store write that was killed midway
        stale.unlink(missing_ok=True)
    old = sweep.spec()
    if old is not None and old.get("name") != spec.name:
        raise ConfigError(f"{sweep.path} holds sweep {old.get('name')!r}, not {spec.name!r}; choose another --out")
    sweep.write_spec(spec.record())


def run_sweep(spec: SweepSpec, out: str | Path, *, jobs: int = 1, executor: str = "local",
              address: str | None = None, progress: bool = True) -> SweepReport:
    """Run every unfinished cell of ``spec`` into ``out`` and rebuild the store.

    ``executor`` is ``local`` (``jobs`` processes) or ``ray`` (``address`` of
    an existing cluster, or a local Ray instance).  Returns counts of done,
    skipped and failed cells.  Raises ConfigError for an unknown executor, a
    folder of another sweep, or a folder another sweep process is using.
    """
    if executor not in EXECUTORS:
        raise ConfigError(f"unknown executor {executor!r}{closest(executor, EXECUTORS)}; choose one of {list(EXECUTORS)}")
    sweep = SweepDir(out)
    with locked(sweep):
        prepare_out(spec, sweep)
        todo, done_before = pending_cells(spec, sweep)
        stream = EXECUTORS[executor](spec, todo, sweep, jobs, address=address)
        report = SweepReport(total=done_before + len(todo), skipped=done_before)
        bar = tqdm(total=report.total, initial=done_before, desc=spec.name, unit="run", disable=not progress,
                   dynamic_ncols=True)
        try:
            for cell, result in stream:
                if result["status"] == STATUS_DONE:
                    report.done += 1
                else:
                    report.failed.append(f"{cell.cell_id}: {result.get('error', 'failed')}")
                bar.update(1)
                bar.set_postfix(failed=len(report.failed))
                write_store(sweep.path)  # keep the table current: an interrupted sweep still has one
        finally:
            bar.close()
        write_store(sweep.path)
    return report
