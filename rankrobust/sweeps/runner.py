"""Run a sweep: lock its folder, run the pending cells, keep the results store current.

One sweep process owns a sweep folder at a time: `locked` takes an exclusive
``flock`` on the folder's lock file (`SweepDir.lock_path`) and writes the
owner's pid, host and start time into it.  A second ``rankrobust sweep`` on
the folder stops at once with a message naming the owner.  The kernel
releases the lock when its owner dies, however it dies, so a lock file left
behind by a dead sweep never blocks: the next sweep takes it over and writes
itself into it.

SIGTERM to a running sweep (as sent by ``kill``, SLURM, systemd) stops it like
Ctrl-C: the worker processes are ended, finished runs are kept and a rerun
resumes (`SweepTerminated`).
"""
from __future__ import annotations

import fcntl
import json
import os
import shutil
import signal
import socket
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from tqdm.auto import tqdm

from rankrobust.config import ConfigError, closest
from rankrobust.data.identity import current_digest
from rankrobust.runs import STATUS_DONE, RunDir, SweepDir, describe_holder, open_nofollow, refuse_link
from rankrobust.store import write_store
from rankrobust.sweeps.cell import is_finished
from rankrobust.sweeps.executors import CONNECT, EXECUTORS
from rankrobust.sweeps.spec import Cell, SweepSpec


class SweepTerminated(KeyboardInterrupt):
    """Raised in a running sweep by SIGTERM: it stops like Ctrl-C (workers ended, finished runs kept)."""


class SweepLocked(ConfigError):
    """The sweep folder is in use by another running ``rankrobust sweep`` (the message names it)."""


@dataclass
class SweepReport:
    """Counts of a sweep invocation."""

    total: int
    skipped: int
    done: int = 0
    failed: list[str] = field(default_factory=list)
    #: run folders (relative to the sweep folder) of cells not in the spec: left out of results
    stale: list[str] = field(default_factory=list)
    #: stale run folders deleted by ``prune``
    pruned: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        text = f"{self.total} runs: {self.skipped} already done, {self.done} ran now, {len(self.failed)} failed"
        text += "".join(f"\n  failed {f}" for f in self.failed)
        if self.pruned:
            text += f"\npruned {len(self.pruned)} stale run folder(s) (cells not in the spec), e.g. {self.pruned[0]}"
        if self.stale:
            text += (f"\n{len(self.stale)} stale run folder(s) (cells not in the spec, e.g. {self.stale[0]}) are left "
                     f"out of results; --prune deletes them")
        return text


def data_digests(spec: SweepSpec) -> dict[str, str | None]:
    """Cell id → identity digest of the data files the cell reads now (None where they cannot be read).

    Each distinct data config is fingerprinted once (and each file hashed once
    per process, `rankrobust.data.identity`).
    """
    by_data: dict[Any, str | None] = {}
    for cell in spec.cells:
        if cell.config.data not in by_data:
            by_data[cell.config.data] = current_digest(cell.config.data)
    return {c.cell_id: by_data[c.config.data] for c in spec.cells}


def pending_cells(spec: SweepSpec, out: str | Path | SweepDir,
                  digests: dict[str, str | None] | None = None) -> tuple[list[Cell], int]:
    """(cells still to run, number already done) for a sweep folder.

    A cell is done when its run finished with the cell's config and data files
    of the content they have now (``digests``, default `data_digests`): a data
    file rewritten since makes its cells pending again.
    """
    sweep = out if isinstance(out, SweepDir) else SweepDir(out)
    digests = data_digests(spec) if digests is None else digests
    todo = [c for c in spec.cells if not is_finished(sweep.run(c.cell_id), c.config.to_dict(), digests.get(c.cell_id))]
    return todo, len(spec.cells) - len(todo)


def stale_run_names(spec: SweepSpec, sweep: SweepDir) -> list[str]:
    """Run folders (``runs/<id>``) of the folder whose cell id is not a cell of ``spec``."""
    ids = {c.cell_id for c in spec.cells}
    return [str(d.path.relative_to(sweep.path)) for d in sweep.run_dirs() if d.path.name not in ids]


# ---------------------------------------------------------------------------- the folder lock
def pid_alive(pid: int) -> bool:
    """True while process ``pid`` exists on this machine (also when it belongs to another user)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def lock_owner(sweep: SweepDir) -> dict[str, Any] | None:
    """What the lock file says about its owner (pid, host, started, command), or None when empty or unreadable."""
    try:
        info = json.loads(sweep.lock_path.read_text())
    except (OSError, ValueError):
        return None
    return info if isinstance(info, dict) and "pid" in info else None


def running_owner(sweep: SweepDir) -> dict[str, Any] | None:
    """The lock file's owner if it is a live process on this host (read-only check, takes no lock)."""
    info = lock_owner(sweep)
    if info and info.get("host") == socket.gethostname() and isinstance(info.get("pid"), int) \
            and info["pid"] != os.getpid() and pid_alive(info["pid"]):
        return info
    return None


def describe_owner(info: dict[str, Any] | None) -> str:
    """``rankrobust sweep pid 1234 on HOST since 09:12`` (or a vaguer text when the lock file is empty)."""
    return describe_holder(info, "sweep")


def locked_message(sweep: SweepDir, info: dict[str, Any] | None) -> str:
    return f"{sweep.path} is in use by {describe_owner(info)}; wait for it or choose another --out"


@contextmanager
def locked(sweep: SweepDir) -> Iterator[None]:
    """Own the sweep folder while the block runs; `SweepLocked` (a ConfigError) at once if another sweep owns it.

    The lock is an exclusive ``flock`` on `SweepDir.lock_path` (released by
    the kernel when its holder dies); the file holds the owner's pid, host,
    start time and command while it is held, and is emptied on release.  A
    leftover file of a dead owner is simply overwritten.  On a file system
    without ``flock`` (some network file systems) the file decides, best
    effort: a live process on this host, or any process on another host (its
    liveness cannot be checked from here), keeps the folder; a dead one's file
    is taken over.  A lock file, sweep folder or ``runs/`` that is a symbolic
    link is refused (`rankrobust.runs.LinkRefused`), never written through.
    """
    refuse_link(sweep.path, "a sweep")
    sweep.path.mkdir(parents=True, exist_ok=True)
    refuse_link(sweep.runs_path, "a sweep's runs")  # a planted link would put every run elsewhere
    fd = open_nofollow(sweep.lock_path, os.O_RDWR | os.O_CREAT)  # a planted link is refused, never truncated
    held = False
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise SweepLocked(locked_message(sweep, lock_owner(sweep))) from None
        except OSError:  # no flock here (some network file systems): fall back on the recorded pid
            owner = lock_owner(sweep)
            if owner and (owner.get("host") != socket.gethostname() or running_owner(sweep)):
                raise SweepLocked(locked_message(sweep, owner) + f" (if that process is gone, delete "
                                  f"{sweep.lock_path})") from None
        held = True
        info = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time(),
                "command": " ".join(sys.argv) or "python"}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(info) + "\n").encode(), 0)
        yield
    finally:
        if held:
            try:
                os.ftruncate(fd, 0)
            except OSError:
                pass
        os.close(fd)


@contextmanager
def sigterm_stops(error: type[KeyboardInterrupt] = SweepTerminated) -> Iterator[None]:
    """While the block runs, SIGTERM raises ``error`` and SIGINT `KeyboardInterrupt` in the main thread.

    ``error``: `SweepTerminated` for sweeps, `rankrobust.tuning.study.TuneTerminated`
    for tuning (both KeyboardInterrupt, so every ``finally`` runs).  Installed
    after any backend has connected (`rankrobust.sweeps.executors.connect_ray`):
    ``ray.init`` puts in handlers of its own, which would otherwise replace
    these.  Elsewhere than in the main thread: no change.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    fired: list[int] = []

    def handler(signum, frame):
        fired.append(signum)
        raise error("stopped by SIGTERM")

    previous = signal.signal(signal.SIGTERM, handler)
    previous_int = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    except KeyboardInterrupt as err:  # a library (Ray's wait) may turn ours into a plain KeyboardInterrupt
        if fired and not isinstance(err, error):
            raise error("stopped by SIGTERM") from None
        raise
    finally:
        signal.signal(signal.SIGTERM, previous)
        signal.signal(signal.SIGINT, previous_int)


def prepare_out(spec: SweepSpec, sweep: SweepDir, digests: dict[str, str | None] | None = None) -> None:
    """Record the spec and its cells' data identity (``digests``) in the sweep folder; clean stale temp files.

    Refuses a folder of another sweep.  ``digests`` default to `data_digests`.
    """
    for stale in sweep.path.glob(".*.tmp"):  # temp files of a store write that was killed midway
        stale.unlink(missing_ok=True)
    old = sweep.spec()
    if old is not None and old.get("name") != spec.name:
        raise ConfigError(f"{sweep.path} holds sweep {old.get('name')!r}, not {spec.name!r}; choose another --out")
    sweep.write_spec({**spec.record(), "data": data_digests(spec) if digests is None else digests})


def prune_stale(spec: SweepSpec, sweep: SweepDir) -> tuple[list[str], list[str]]:
    """Delete the run folders of cells not in ``spec`` (call under `locked`): (deleted, kept).

    Only folders that hold nothing but a run's files are deleted; one holding
    anything else is kept (and returned as kept) so no user file is lost.
    """
    deleted, kept = [], []
    for name in stale_run_names(spec, sweep):
        run = RunDir(sweep.path / name)
        if run.foreign_files():
            kept.append(name)
            continue
        shutil.rmtree(run.path)
        deleted.append(name)
    return deleted, kept


def run_sweep(spec: SweepSpec, out: str | Path, *, jobs: int = 1, executor: str = "local",
              address: str | None = None, progress: bool = True, prune: bool = False) -> SweepReport:
    """Run every unfinished cell of ``spec`` into ``out`` and rebuild the store.

    ``executor`` is ``local`` (``jobs`` processes) or ``ray`` (``address`` of
    an existing cluster, or a local Ray instance).  ``prune`` first deletes the
    run folders of cells that are no longer in the spec (stale: a grid value
    or seed was removed); without it they stay on disk, left out of results.
    Returns counts of done, skipped and failed cells and the stale folders.
    Raises ConfigError for an unknown executor or a folder of another sweep,
    `SweepLocked` for a folder another sweep process is using, and
    `SweepTerminated` when stopped by SIGTERM (workers ended, finished runs kept).
    """
    if executor not in EXECUTORS:
        raise ConfigError(f"unknown executor {executor!r}{closest(executor, EXECUTORS)}; choose one of {list(EXECUTORS)}")
    sweep = SweepDir(Path(out).expanduser().absolute())  # tasks may run in another working directory
    held = [n for n in (RunDir.CONFIG, RunDir.METRICS, RunDir.STATUS) if (sweep.path / n).is_file()]
    if held:  # a `rankrobust train --out` folder: a sweep inside it would mix its files with the run's
        raise ConfigError(f"--out {sweep.path} is a single run folder (it holds {held[0]}), not a sweep folder; "
                          f"choose another --out for the sweep")
    if executor in CONNECT:
        CONNECT[executor](address)  # before the signal handlers below: ray.init replaces them with its own
    with locked(sweep), sigterm_stops():
        digests = data_digests(spec)
        prepare_out(spec, sweep, digests)
        pruned: list[str] = []
        if prune:
            pruned, _ = prune_stale(spec, sweep)
        todo, done_before = pending_cells(spec, sweep, digests)
        report = SweepReport(total=done_before + len(todo), skipped=done_before, pruned=pruned)
        bar = tqdm(total=report.total, initial=done_before, desc=spec.name, unit="run", disable=not progress,
                   dynamic_ncols=True)
        stream = EXECUTORS[executor](spec, todo, sweep, jobs, address=address,
                                     on_progress=lambda text: bar.set_postfix_str(f"failed={len(report.failed)}, {text}"))
        stopped = True
        try:
            write_store(sweep.path)  # stale or damaged runs show in the store before the first cell ends
            for cell, result in stream:
                if result["status"] == STATUS_DONE:
                    report.done += 1
                else:
                    report.failed.append(f"{cell.cell_id}: {result.get('error', 'failed')}")
                bar.update(1)
                bar.set_postfix(failed=len(report.failed))
                write_store(sweep.path)  # keep the table current: an interrupted sweep still has one
            stopped = False
        finally:
            close = getattr(stream, "close", None)
            if close is not None:
                close()  # ends the executor's workers now, also when interrupted
            bar.close()
            if stopped:  # Ctrl-C, SIGTERM, an error: the store still lists the run folders as they are now
                try:     # (a cell stopped in this process is marked failed), so results and figures see them
                    write_store(sweep.path)
                except Exception:
                    pass  # the stop (or the error) is what the caller must see
        write_store(sweep.path)
        report.stale = stale_run_names(spec, sweep)
    return report
