"""rankrobust: how the loss of a recommender shapes its accuracy, robustness and fairness.

Train MF and LightGCN with BPR, BCE, MSE, CCL, softmax (SL) and bilateral
softmax (BSL) losses on real data corrupted at controlled rates, evaluate by
full ranking, and analyse fairness, prediction variance and DRO equivalence.

The public face (what notebooks and scripts need)::

    from rankrobust import load_config, run_experiment, load_run, load_store, results_dir

    cfg = load_config("configs/mf-ml-bsl.yaml").with_overrides({"train.epochs": 5})
    summary = run_experiment(cfg, "runs/demo")
    store = load_store(results_dir() / "np-quick")

Names are imported lazily, so ``import rankrobust`` stays cheap.
"""
from __future__ import annotations

import importlib
import os
import sys
from pathlib import Path

__version__ = "0.1.0"

#: public name → module that defines it
_EXPORTS = {
    "RunConfig": "rankrobust.config",
    "ConfigError": "rankrobust.config",
    "load_config": "rankrobust.config",
    "config_from_dict": "rankrobust.config",
    "run_experiment": "rankrobust.experiment",
    "load_data": "rankrobust.experiment",
    "prepare_data": "rankrobust.experiment",
    "load_dataset": "rankrobust.data",
    "list_datasets": "rankrobust.data",
    "load_run": "rankrobust.runs",
    "RunDir": "rankrobust.runs",
    "SweepDir": "rankrobust.runs",
    "load_store": "rankrobust.store",
    "summarize": "rankrobust.store",
    "format_summary": "rankrobust.store",
    "grid_axes": "rankrobust.store",
    "main_metrics": "rankrobust.store",
    "selection_cutoff": "rankrobust.store",
    "compare_runs": "rankrobust.store",
    "compare_losses": "rankrobust.store",
    "compare_drops": "rankrobust.store",
    "compare_runs_per_user": "rankrobust.store",
    "load_spec": "rankrobust.sweeps",
    "run_sweep": "rankrobust.sweeps",
    "Probe": "rankrobust.probes",
    "LOSSES": "rankrobust.losses",
    "MODELS": "rankrobust.models",
    "SAMPLERS": "rankrobust.sampling",
    "BATCHINGS": "rankrobust.batching",
}

#: environment variable naming a folder of sweep results (``np-quick/``, ``lc-quick/`` …)
RESULTS_ENV = "RANKROBUST_RESULTS"
#: small example results shipped with the package (the quick lastfm sweeps)
EXAMPLES_DIR = Path(__file__).resolve().parent / "examples"

__all__ = sorted(_EXPORTS) + ["__version__", "results_dir", "RESULTS_ENV", "EXAMPLES_DIR"]


def results_dir(sweep: str | None = None) -> Path:
    """Where notebooks read sweep results: ``$RANKROBUST_RESULTS`` if set, else the shipped examples.

    The examples (``rankrobust/examples/``) are the quick lastfm sweeps'
    stores with the per-run files the notebooks need, so a fresh clone can run
    every notebook before any sweep has been run.  A relative
    ``$RANKROBUST_RESULTS`` (``export RANKROBUST_RESULTS=results``) is read
    against the working folder, else against ``$PWD``, the folder of the shell
    it was set in (a Jupyter kernel runs in ``notebooks/`` but keeps its
    launching shell's ``$PWD``).

    ``results_dir("np-quick")`` is that sweep's folder: under
    ``$RANKROBUST_RESULTS`` when it holds the sweep's store, otherwise the
    shipped example of that name, with a printed note naming the folder that
    lacks it (so a notebook runs whichever of its sweeps you have run).
    """
    env = os.environ.get(RESULTS_ENV)
    base = _resolve_results(env) if env else EXAMPLES_DIR
    if sweep is None:
        return base
    from rankrobust.runs import SweepDir

    folder = base / sweep
    store = SweepDir(folder).store_path
    if env and not store.is_file() and (EXAMPLES_DIR / sweep).is_dir():
        print(f"note: {RESULTS_ENV}={env} has no sweep {sweep!r} ({store} does not exist); reading the shipped "
              f"example {EXAMPLES_DIR / sweep} instead (examples, not results to cite)", file=sys.stderr)
        return EXAMPLES_DIR / sweep
    return folder


def _resolve_results(value: str) -> Path:
    """``$RANKROBUST_RESULTS`` as an absolute folder (a relative value: the working folder's, else ``$PWD``'s)."""
    path = Path(value).expanduser()
    if path.is_absolute():
        return path
    here = Path.cwd() / path
    shell = Path(os.environ.get("PWD") or Path.cwd()) / path
    return here.resolve() if here.is_dir() or not shell.is_dir() else shell.resolve()


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'rankrobust' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


def __dir__() -> list[str]:
    return __all__
