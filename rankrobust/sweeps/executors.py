"""Where sweep cells run: this process, worker processes (one GPU each), or Ray tasks.

Every executor is a generator ``execute(spec, cells, sweep_dir, ...)`` that
yields ``(cell, result)`` as cells finish, each cell going through the same
`rankrobust.sweeps.cell.run_cell`.  ``EXECUTORS`` names them for the CLI.
"""
from __future__ import annotations

import os
from concurrent.futures import ProcessPoolExecutor, as_completed
from multiprocessing import get_context
from typing import Any, Callable, Iterable

from rankrobust.runs import SweepDir
from rankrobust.sweeps.cell import run_cell
from rankrobust.sweeps.spec import Cell, SweepSpec

RAY_INSTALL_HINT = 'the Ray executor needs Ray: pip install "rankrobust[ray]"  (or: pip install "ray>=2.9")'


def _share_cores(jobs: int) -> None:
    """Worker initialiser: split the CPU cores between the ``jobs`` processes (no oversubscription)."""
    import torch

    torch.set_num_threads(max(1, (os.cpu_count() or 1) // jobs))


def _devices(jobs: int) -> list[str | None]:
    import torch

    n = torch.cuda.device_count()
    return [f"cuda:{j % n}" if n else None for j in range(jobs)]


def execute_local(spec: SweepSpec, cells: list[Cell], out: SweepDir, jobs: int = 1,
                  **_: Any) -> Iterable[tuple[Cell, dict[str, Any]]]:
    """Run cells in this process (``jobs = 1``) or in ``jobs`` spawned processes (one GPU each when several)."""
    if jobs <= 1:
        for cell in cells:
            yield cell, run_cell(cell.config, str(out.run(cell.cell_id).path), spec.options)
        return
    devices = _devices(jobs)
    with ProcessPoolExecutor(max_workers=jobs, mp_context=get_context("spawn"), initializer=_share_cores,
                             initargs=(jobs,)) as pool:
        futures = {pool.submit(run_cell, c.config, str(out.run(c.cell_id).path), spec.options,
                               devices[n % jobs]): c for n, c in enumerate(cells)}
        for future in as_completed(futures):
            yield futures[future], future.result()


def import_ray():
    """Import ray or fail with a message saying how to install it."""
    try:
        import ray
    except ImportError:
        raise RuntimeError(RAY_INSTALL_HINT) from None
    return ray


def execute_ray(spec: SweepSpec, cells: list[Cell], out: SweepDir, jobs: int = 1, *, address: str | None = None,
                max_retries: int = 3, **_: Any) -> Iterable[tuple[Cell, dict[str, Any]]]:
    """Yield ``(cell, result)`` as Ray tasks finish (completion order).

    Each cell is one task calling `run_cell`, on a local Ray instance or an
    existing cluster (``address``: ``auto`` or ``HOST:PORT``).  A task whose
    worker dies is retried by Ray (the retry wipes the half-written folder).
    Resources per task come from the spec's ``options.resources`` (default
    ``{num_cpus: 1, num_gpus: 0}``; fractional GPUs pack small runs on one
    card); ``jobs > 1`` caps the tasks in flight.  Datasets are cached per
    worker process (`rankrobust.experiment.load_data`).
    """
    ray = import_ray()
    if not ray.is_initialized():
        ray.init(address=address, include_dashboard=False, log_to_driver=False, ignore_reinit_error=True)
    resources = {"num_cpus": 1, "num_gpus": 0, **spec.options.get("resources", {})}
    task = ray.remote(run_cell).options(max_retries=max_retries, **resources)
    pending = list(cells)
    in_flight: dict[Any, Cell] = {}
    limit = jobs if jobs > 1 else (len(pending) or 1)
    while pending or in_flight:
        while pending and len(in_flight) < limit:
            cell = pending.pop(0)
            ref = task.remote(cell.config, str(out.run(cell.cell_id).path), spec.options)
            in_flight[ref] = cell
        ready, _ = ray.wait(list(in_flight), num_returns=1)
        for ref in ready:
            cell = in_flight.pop(ref)
            try:
                result = ray.get(ref)
            except Exception as err:  # the task failed even after Ray's retries
                result = {"status": "failed", "error": f"{type(err).__name__}: {err}".splitlines()[0]}
            yield cell, result


#: executor name → generator (``rankrobust sweep --executor NAME``)
EXECUTORS: dict[str, Callable[..., Iterable[tuple[Cell, dict[str, Any]]]]] = {
    "local": execute_local,
    "ray": execute_ray,
}
