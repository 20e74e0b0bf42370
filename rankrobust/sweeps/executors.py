"""Where sweep cells run: this process, worker processes (one GPU each), or Ray tasks.

Every executor is a generator ``execute(spec, cells, sweep_dir, ...)`` that
yields ``(cell, result)`` as cells finish, each cell going through the same
`rankrobust.sweeps.cell.run_cell`.  ``EXECUTORS`` names them for the CLI.

Worker processes (``--jobs N``) live and die with the sweep:

- each worker asks the kernel to kill it when its parent dies (Linux
  ``prctl(PR_SET_PDEATHSIG, SIGKILL)``) and also polls ``os.getppid()`` once a
  second (other systems), so a SIGKILLed sweep leaves no worker running or
  starting cells (a worker still starting up, importing torch, when the
  parent dies exits as soon as it is up, before taking a cell);
- when the generator is closed or interrupted (an exception, Ctrl-C, the
  SIGTERM handler of `rankrobust.sweeps.runner.run_sweep`) the workers are
  killed at once; their unfinished cells stay unfinished and a rerun redoes them;
- a worker that dies while running a cell (killed by the OOM killer, a
  segfault) fails only that cell: its run folder is marked ``failed`` with the
  reason (``worker process died (killed by signal 9, SIGKILL: out of
  memory?)``), a new worker takes its place and the sweep goes on;
- each worker keeps one device (``cuda:j`` for worker j where GPUs exist), so
  two cells never share a GPU by accident.
"""
from __future__ import annotations

import ctypes
import json
import os
import signal
import sys
import threading
import time
from contextlib import contextmanager
from multiprocessing import get_context
from multiprocessing.connection import wait
from typing import Any, Callable, Iterable, Iterator

from rankrobust.runs import RunDir, SweepDir
from rankrobust.sweeps.cell import run_cell
from rankrobust.sweeps.spec import Cell, SweepSpec

RAY_INSTALL_HINT = 'the Ray executor needs Ray: pip install "rankrobust[ray]"  (or: pip install "ray>=2.9")'
PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def _share_cores(jobs: int) -> None:
    """Split the CPU cores between the ``jobs`` worker processes (no oversubscription)."""
    import torch

    torch.set_num_threads(max(1, (os.cpu_count() or 1) // jobs))


def _devices(jobs: int) -> list[str | None]:
    import torch

    n = torch.cuda.device_count()
    return [f"cuda:{j % n}" if n else None for j in range(jobs)]


def die_with_parent(parent_pid: int, poll_seconds: float = 1.0) -> None:
    """Make this (worker) process end when process ``parent_pid`` (its parent) ends, however it ends.

    Linux: ``prctl(PR_SET_PDEATHSIG, SIGKILL)``, so the kernel kills it the
    moment the parent dies (even by SIGKILL).  Everywhere: a daemon thread
    that kills the process once ``os.getppid()`` is no longer ``parent_pid``
    (within ``poll_seconds``).  A parent that died before this call is noticed
    at once.
    """
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
        except (OSError, AttributeError):
            pass  # the polling thread below still ends the worker
    if os.getppid() != parent_pid:
        os._exit(1)

    def watch() -> None:
        while True:
            time.sleep(poll_seconds)
            if os.getppid() != parent_pid:
                os.kill(os.getpid(), signal.SIGKILL)

    threading.Thread(target=watch, name="die-with-parent", daemon=True).start()


def _worker_main(conn, parent_pid: int, jobs: int, device: str | None, target: Callable[..., dict]) -> None:
    """A worker process: run the cells it is sent (``(config, run_dir, options)``) until it gets None."""
    die_with_parent(parent_pid)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle: it ends the workers
    from tqdm import tqdm

    # a thread lock, not tqdm's default multiprocessing one: a worker killed midway leaks no semaphore
    tqdm.set_lock(threading.RLock())
    _share_cores(jobs)
    while True:
        try:
            task = conn.recv()
        except (EOFError, OSError):
            return
        if task is None:
            return
        config, run_dir, options = task
        try:
            result = target(config, run_dir, options, device)
        except BaseException as err:  # run_cell never raises; a custom target might
            result = {"status": "failed", "error": f"{type(err).__name__}: {err}".splitlines()[0]}
        conn.send(result)


def death_reason(exitcode: int | None) -> str:
    """Why a worker process ended, for the failed cell's status: signal name or exit code."""
    if exitcode is not None and exitcode < 0:
        try:
            name = signal.Signals(-exitcode).name
        except ValueError:
            name = "unknown signal"
        hint = ": out of memory?" if -exitcode == signal.SIGKILL else ""
        return f"worker process died (killed by signal {-exitcode}, {name}{hint})"
    return f"worker process died (exit code {exitcode})"


class _Worker:
    """One worker process of `execute_local`, fixed to one device, running one cell at a time."""

    def __init__(self, ctx, jobs: int, device: str | None, target: Callable[..., dict]) -> None:
        self.conn, child = ctx.Pipe()
        self.process = ctx.Process(target=_worker_main, args=(child, os.getpid(), jobs, device, target),
                                   name="rankrobust-sweep-worker")
        self.process.start()
        child.close()
        self.device = device
        self.cell: Cell | None = None
        self.run_dir = ""

    def assign(self, cell: Cell, run_dir: str, options: dict[str, Any]) -> bool:
        """Send a cell; False when the worker is gone (the caller replaces it)."""
        try:
            self.conn.send((cell.config, run_dir, options))
        except (OSError, ValueError):
            return False
        self.cell, self.run_dir = cell, run_dir
        return True

    def stop(self, kill: bool) -> None:
        """End the worker: ``kill`` at once (interrupted sweep), else ask it to finish and wait briefly."""
        if not kill and self.process.is_alive():
            try:
                self.conn.send(None)
            except (OSError, ValueError):
                pass
            self.process.join(timeout=10)
        if self.process.is_alive():
            self.process.kill()
        self.process.join()
        self.conn.close()


def execute_local(spec: SweepSpec, cells: list[Cell], out: SweepDir, jobs: int = 1, *,
                  target: Callable[..., dict] = run_cell, on_progress: Callable[[str], None] | None = None,
                  poll_seconds: float = 2.0, **_: Any) -> Iterable[tuple[Cell, dict[str, Any]]]:
    """Run cells in this process (``jobs = 1``) or in ``jobs`` spawned worker processes (one GPU each when several).

    ``target(config, run_dir, options, device)`` runs one cell (`run_cell`).
    Workers end with the sweep and a dying worker fails only its cell (module
    docstring).  Every ``poll_seconds`` while cells run, `running_summary` of
    their progress files goes to ``on_progress`` (the bar's postfix: epoch
    reached and best validation value so far), so the first minutes of a
    sweep, before any cell ends, show movement; with ``jobs = 1`` a
    background thread reads the files while the cell trains in this thread.
    """
    if jobs <= 1:
        for cell in cells:
            run_dir = str(out.run(cell.cell_id).path)
            with _reporting(on_progress, [run_dir], poll_seconds):
                result = target(cell.config, run_dir, spec.options)
            yield cell, result
        return
    ctx = get_context("spawn")
    devices = _devices(jobs)
    pending = list(cells)
    workers: list[_Worker] = []
    finished = False
    try:
        workers = [_Worker(ctx, jobs, devices[j], target) for j in range(min(jobs, len(pending)))]
        while True:
            for j, worker in enumerate(workers):
                while worker.cell is None and pending:
                    cell = pending[0]
                    if worker.process.is_alive() and worker.assign(cell, str(out.run(cell.cell_id).path),
                                                                   spec.options):
                        pending.pop(0)
                    else:  # a worker that died (idle or with a cell, below) is replaced: no cell is lost
                        worker.stop(kill=True)
                        workers[j] = worker = _Worker(ctx, jobs, worker.device, target)
            busy = [w for w in workers if w.cell is not None]
            if not busy:
                break
            if not wait([w.conn for w in busy] + [w.process.sentinel for w in busy], timeout=poll_seconds):
                if on_progress is not None:  # nothing ended yet: show how far the running cells are
                    on_progress(running_summary([w.run_dir for w in busy]))
                continue
            for j, worker in enumerate(workers):
                if worker.cell is None:
                    continue
                result = None
                if worker.conn.poll():
                    try:
                        result = worker.conn.recv()
                    except (EOFError, OSError):
                        result = None
                if result is None and worker.process.is_alive():
                    continue  # not this one
                cell = worker.cell
                worker.cell = None
                if result is None:  # died while running the cell: fail the cell (a new worker takes the next)
                    worker.process.join()
                    reason = death_reason(worker.process.exitcode)
                    try:
                        RunDir(worker.run_dir).fail(f"{reason} while running cell {cell.cell_id}\n{reason}")
                    except OSError:
                        pass
                    result = {"status": "failed", "error": reason}
                yield cell, result
        finished = True
    finally:
        for worker in workers:
            worker.stop(kill=not finished)


def import_ray():
    """Import ray or fail with a message saying how to install it."""
    try:
        import ray
    except ImportError:
        raise RuntimeError(RAY_INSTALL_HINT) from None
    return ray


class RayStartError(RuntimeError):
    """Ray could not be started or reached (one line: the address, Ray's message, where its logs are)."""


#: where a Ray node writes its logs (the session folder of the newest start on this machine)
RAY_LOGS = "/tmp/ray/session_latest/logs"


def connect_ray(address: str | None = None):
    """Connect this process to Ray: a new local instance (``address`` None) or a running cluster.

    Called by `rankrobust.sweeps.runner.run_sweep` *before* it installs its
    SIGTERM/SIGINT handlers, because ``ray.init`` replaces them with its own
    (which would end the driver with a stack dump instead of the clean stop).
    Raises `RayStartError` (one line) when Ray cannot start or connect, for
    example a raylet that gave up waiting for its agents, a wrong address, or
    a token-authenticated cluster (see docs/ray.md "Token authentication").
    """
    ray = import_ray()
    if ray.is_initialized():
        return ray
    where = f"the cluster at {address}" if address else "a new local Ray instance"
    try:
        ray.init(address=address, include_dashboard=False, log_to_driver=False, ignore_reinit_error=True)
    except Exception as err:  # Ray raises ConnectionError, RuntimeError, TimeoutError, its own types...
        lines = [line.strip() for line in str(err).splitlines() if line.strip()]
        message = lines[0] if lines else type(err).__name__
        hint = ("; the cluster uses token authentication: see docs/ray.md \"Token authentication\""
                if "token" in str(err).lower() or "auth" in type(err).__name__.lower() else "")
        raise RayStartError(f"could not start or reach Ray ({where}): {type(err).__name__}: {message}{hint}; "
                            f"Ray's logs are in {RAY_LOGS}") from None
    return ray


#: ``options.resources`` key → the name of that resource in ``ray.nodes()``
RAY_RESOURCE_NAMES = {"num_cpus": "CPU", "num_gpus": "GPU", "memory": "memory"}


def unmet_request(request: dict[str, Any], nodes: list[dict[str, Any]]) -> str | None:
    """None when some alive node has every resource of ``request`` (``options.resources`` form), else one line.

    ``nodes`` is ``ray.nodes()``: each with ``Alive`` and ``Resources``
    (``{"CPU": 2.0, "GPU": 1.0, "memory": ..., custom: ...}``).  A request no
    node can meet would wait forever (Ray queues it for an autoscaler).
    """
    need = {RAY_RESOURCE_NAMES[k]: float(v) for k, v in request.items() if k in RAY_RESOURCE_NAMES and v}
    need.update({k: float(v) for k, v in (request.get("resources") or {}).items() if v})
    alive = [n.get("Resources", {}) for n in nodes if n.get("Alive", True)]
    if any(all(have.get(k, 0.0) >= v for k, v in need.items()) for have in alive):
        return None
    shown = "; ".join(", ".join(f"{k} {have.get(k, 0.0):g}" for k in need) for have in alive) or "no alive node"
    asked = ", ".join(f"{k} {v:g}" for k, v in need.items())
    return f"no node of the cluster can run a cell asking for {asked} (nodes have: {shown})"


def progress_of(run_dir: str) -> dict[str, Any] | None:
    """The live progress a running cell writes into its folder (epoch, epochs), or None before the first epoch."""
    try:
        return RunDir(run_dir).progress()
    except (OSError, ValueError):
        return None


def execute_ray(spec: SweepSpec, cells: list[Cell], out: SweepDir, jobs: int = 1, *, address: str | None = None,
                max_retries: int = 3, on_progress: Callable[[str], None] | None = None,
                poll_seconds: float = 2.0, **_: Any) -> Iterable[tuple[Cell, dict[str, Any]]]:
    """Yield ``(cell, result)`` as Ray tasks finish (completion order).

    Each cell is one task calling `run_cell`, on a local Ray instance or an
    existing cluster (``address``: ``auto`` or ``HOST:PORT``; already connected
    by `connect_ray` when run from `run_sweep`).  A task whose worker dies is
    retried by Ray (the retry wipes the half-written folder).  Resources per
    task: `cell_resources` (the spec's ``options.resources``, default
    ``{num_cpus: 1, num_gpus: 0}``, and those of the override rules that
    match the cell); before any task starts, each distinct request is
    compared with the cluster's nodes and one no node can meet stops the
    sweep (RuntimeError, one line) instead of waiting forever.  At most
    ``options.max_concurrent`` (or ``jobs`` > 1) tasks are in flight.
    Every ``poll_seconds`` the epochs reached by the running cells go to
    ``on_progress``.  Closing the generator (SIGTERM, Ctrl-C, an error) with
    tasks in flight disconnects from Ray, which ends the tasks this driver
    started; their cells stay unfinished and a rerun redoes them.  Tasks get the driver's data folder (``RANKROBUST_DATA``,
    absolute) unless set on the nodes.
    """
    from rankrobust.data.registry import ENV_VAR, resolve_data_dir

    ray = connect_ray(address)
    requests = {c.cell_id: cell_resources(spec, c) for c in cells}
    for request in {json.dumps(r, sort_keys=True): r for r in requests.values()}.values():
        problem = unmet_request(request, ray.nodes())
        if problem:
            raise RuntimeError(f"{problem}; change options.resources in {spec.source or 'the spec'} "
                               f"or add such a node")
    data_dir = resolve_data_dir(None)
    env = {ENV_VAR: str(data_dir.resolve())} if data_dir is not None and not os.environ.get(ENV_VAR) else {}
    remote = ray.remote(run_cell)
    pending = list(cells)
    in_flight: dict[Any, Cell] = {}
    cap = spec.options.get("max_concurrent") or (jobs if jobs > 1 else None)
    limit = cap or (len(pending) or 1)
    try:
        while pending or in_flight:
            while pending and len(in_flight) < limit:
                cell = pending.pop(0)
                task = remote.options(max_retries=max_retries, runtime_env={"env_vars": env} if env else None,
                                      **ray_options(requests[cell.cell_id]))
                ref = task.remote(cell.config, str(out.run(cell.cell_id).path), spec.options)
                in_flight[ref] = cell
            ready, _ = ray.wait(list(in_flight), num_returns=1, timeout=poll_seconds)
            if not ready:
                if on_progress is not None:
                    on_progress(running_summary([str(out.run(c.cell_id).path) for c in in_flight.values()]))
                continue
            for ref in ready:
                cell = in_flight.pop(ref)
                try:
                    result = ray.get(ref)
                except Exception as err:  # the task failed even after Ray's retries
                    result = {"status": "failed", "error": f"{type(err).__name__}: {err}".splitlines()[0]}
                yield cell, result
    finally:
        if in_flight:  # stopped early: end this driver's Ray job, which ends every task it started on the cluster
            ray.shutdown()  # (ray.cancel(force=True) then exiting can trip a fatal check in Ray's core worker)


def cell_resources(spec: SweepSpec, cell: Cell) -> dict[str, Any]:
    """The resources one cell's task asks for: defaults ⊕ ``options.resources`` ⊕ matching rules' ``resources``."""
    request: dict[str, Any] = {"num_cpus": 1, "num_gpus": 0, **(spec.options.get("resources") or {})}
    for rule in spec.overrides:
        if rule.get("resources") and all(cell.values.get(k) == v for k, v in rule.get("when", {}).items()):
            request.update(rule["resources"])
    return request


def ray_options(request: dict[str, Any]) -> dict[str, Any]:
    """``options.resources`` form → keyword arguments of Ray's ``.options`` (the same names)."""
    return {k: v for k, v in request.items() if v is not None}


def running_summary(run_dirs: list[str]) -> str:
    """``"3 running: epoch 12/100 (best recall@20 0.2311), 4/100, 1/100"`` from the running cells' progress files.

    One entry per cell that has finished an epoch (`CellProbe` writes them):
    epoch reached / epoch cap, and the best validation value of its
    ``train.metric`` so far where there is one (the metric is named once,
    on the first entry that has it).  Cells still loading data or in their
    first epoch are only counted.
    """
    entries, named = [], False
    for progress in filter(None, (progress_of(d) for d in run_dirs)):
        text = f"{progress.get('epoch')}/{progress.get('epochs')}"
        best = progress.get("best")
        if isinstance(best, (int, float)):
            text += f" (best {progress.get('metric')} {best:.4f})" if not named else f" ({best:.4f})"
            named = True
        entries.append(text)
    shown = ", ".join(entries[:6]) + (" …" if len(entries) > 6 else "")
    return f"{len(run_dirs)} running" + (f": epoch {shown}" if entries else "")


@contextmanager
def _reporting(on_progress: Callable[[str], None] | None, run_dirs: list[str],
               poll_seconds: float) -> Iterator[None]:
    """While the block runs (a cell training in this thread), a daemon thread sends `running_summary` of
    ``run_dirs`` to ``on_progress`` every ``poll_seconds``; it stops when the block ends, however it ends."""
    if on_progress is None:
        yield
        return
    stop = threading.Event()

    def tick() -> None:
        while not stop.wait(poll_seconds):
            on_progress(running_summary(run_dirs))

    thread = threading.Thread(target=tick, name="sweep-progress", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


#: executor name → a function connecting to its backend, called by `run_sweep` before its signal handlers go in
CONNECT: dict[str, Callable[[str | None], Any]] = {"ray": connect_ray}


#: executor name → generator (``rankrobust sweep --executor NAME``)
EXECUTORS: dict[str, Callable[..., Iterable[tuple[Cell, dict[str, Any]]]]] = {
    "local": execute_local,
    "ray": execute_ray,
}
