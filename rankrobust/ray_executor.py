"""Run sweep cells as Ray tasks, on a local Ray instance or an existing cluster.

Each cell is one task calling the same `run_cell` as the local executor, so
the store and its guarantees are identical: a run counts as done only when its
directory says so, a task whose worker dies is retried by Ray (and the retry
wipes the half-written directory), and rerunning the sweep resumes.  Datasets
are cached per worker process (`rankrobust.experiment.load_data`), so a worker
that runs many cells loads each dataset once.

Resources per task come from the spec's ``options.resources`` (default
``{num_cpus: 1, num_gpus: 0}``; fractional GPUs such as 0.25 pack several
small-dataset runs on one card).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable

INSTALL_HINT = 'the Ray executor needs Ray: pip install "rankrobust[ray]"  (or: pip install "ray>=2.9")'


def import_ray():
    """Import ray or fail with a message saying how to install it."""
    try:
        import ray
    except ImportError:
        raise RuntimeError(INSTALL_HINT) from None
    return ray


def _run_cell_task(config: dict[str, Any], run_dir: str, options: dict[str, Any]) -> dict[str, Any]:
    from rankrobust.sweep import run_cell

    return run_cell(config, run_dir, options)


def execute_ray(spec, cells, out: Path, *, address: str | None = None, max_parallel: int | None = None,
                max_retries: int = 3) -> Iterable[tuple[Any, dict[str, Any]]]:
    """Yield ``(cell, result)`` as Ray tasks finish (completion order).

    ``address``: an existing cluster (``auto`` or ``HOST:PORT``); None starts a
    local instance.  ``max_parallel`` caps the tasks in flight (default: all).
    """
    ray = import_ray()
    if not ray.is_initialized():
        ray.init(address=address, include_dashboard=False, log_to_driver=False, ignore_reinit_error=True)
    resources = {"num_cpus": 1, "num_gpus": 0, **spec.options.get("resources", {})}
    task = ray.remote(_run_cell_task).options(max_retries=max_retries, **resources)
    pending = list(cells)
    in_flight: dict[Any, Any] = {}
    limit = max_parallel or len(pending) or 1
    while pending or in_flight:
        while pending and len(in_flight) < limit:
            cell = pending.pop(0)
            ref = task.remote(cell.config.to_dict(), str(out / "runs" / cell.cell_id), spec.options)
            in_flight[ref] = cell
        ready, _ = ray.wait(list(in_flight), num_returns=1)
        for ref in ready:
            cell = in_flight.pop(ref)
            try:
                result = ray.get(ref)
            except Exception as err:  # the task failed even after Ray's retries
                result = {"status": "failed", "error": f"{type(err).__name__}: {err}".splitlines()[0]}
            yield cell, result
