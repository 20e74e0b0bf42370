"""The Ray Tune path of ``rankrobust tune --executor ray``: the same trials, run on a Ray cluster.

Per arm, Ray Tune runs ``budget - finished`` trials with Optuna's seeded TPE
sampler as the searcher (`OptunaSearch`; the arm's prior is its first point
in a new study) and ASHA as the scheduler (its grace period is the pruner's
``min_resource`` (halving) or ``n_warmup_steps`` (median), its reduction
factor the halving pruner's or 3; ``pruner: none`` runs every trial to early
stopping).  Each trial trains its config into ``DIR/trials/<arm>/<NNNN>``
with `run_experiment`, reporting the validation value of every epoch to Tune
(``tune.report``); resources per trial come from ``tune.resources``.

When Ray is done the trials are recorded in the same study
(``DIR/study.db``, one study per arm) as COMPLETE (the run's best validation
value) or PRUNED (stopped by ASHA), with their per-epoch values, run folder
and test label, so ``best/<arm>.yaml``, ``tune-results`` and the plots are
the same as on the local path.  A trial ASHA stops ends at its next report:
when Ray lets it finish, its run folder is done with ``stop_reason:
stopped_by_probe``; when Ray ends its worker first, the folder is marked
failed with the reason (pruned by ASHA at epoch N).
"""
from __future__ import annotations

import functools
import math
from pathlib import Path
from typing import Any

from rankrobust.config import RunConfig
from rankrobust.runs import RunDir, read_status
from rankrobust.sweeps.executors import connect_ray, unmet_request
from rankrobust.sweeps.runner import sigterm_stops
from rankrobust.train import TrainingDiverged
from rankrobust.tuning.spec import Arm, TuneSpec
from rankrobust.tuning.study import (PruningProbe, TuneDir, TuneTerminated, _distribution, _flock, _optuna, check_folder,
                                     counts, make_storage, open_study, record_protocol, study_seed, write_best)

__all__ = ["run_tune_ray", "RAY_TUNE_HINT"]

RAY_TUNE_HINT = 'the Ray executor of rankrobust tune needs Ray Tune: pip install "rankrobust[ray]"  (or: pip install "ray[tune]>=2.9")'


def _import_tune():
    try:
        import ray
        from ray import tune
        from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
        from ray.tune.search.optuna import OptunaSearch
    except ImportError:
        raise RuntimeError(RAY_TUNE_HINT) from None
    return ray, tune, ASHAScheduler, FIFOScheduler, OptunaSearch


def _claim_folder(trials: Path) -> Path:
    """The next free ``trials/<arm>/<NNNN>`` folder, created here (exclusive: mkdir fails for a taken number)."""
    trials.mkdir(parents=True, exist_ok=True)
    n = len(list(trials.iterdir()))
    while True:
        path = trials / f"{n:04d}"
        try:
            path.mkdir()
            return path
        except FileExistsError:
            n += 1


def _session_gone() -> bool:
    """Whether Ray Tune closed this trial's session (its scheduler stopped it); False when that cannot be told."""
    try:
        from ray.train._internal.session import get_session

        return get_session() is None
    except Exception:  # a Ray version without it: the trial runs on until Ray ends it
        return False


def _ray_trial(params: dict[str, Any], *, base: RunConfig, trials: str, metric: str) -> None:
    """One Ray Tune trial: train ``base`` with ``params`` into a new run folder, reporting each epoch's validation."""
    from ray import tune

    from rankrobust.experiment import run_experiment

    run_dir = _claim_folder(Path(trials))

    def report(value: float, epoch: int) -> bool:
        try:
            tune.report({"valid": value, "epoch": epoch, "run_dir": str(run_dir)})
        except SystemExit:  # Ray ends a trial its scheduler stopped at the report: finish it as pruned
            return True
        return _session_gone()  # stopped by the scheduler: Ray closed the trial's session (reports are dropped)

    try:
        summary = run_experiment(base.with_overrides(params), run_dir, probes=[PruningProbe(metric, report)],
                                 progress=False, overwrite=True)
    except TrainingDiverged as err:  # counted like a pruned trial (study.py: Budget)
        tune.report({"valid": None, "epoch": 0, "run_dir": str(run_dir), "final": True,
                     "diverged": str(err).splitlines()[0][:500]})
        return
    m = summary.metrics
    tune.report({"valid": m["valid"].get(metric), "epoch": m["epochs_run"], "run_dir": str(run_dir),
                 "final": True, "test_value": m["test"].get(metric), "pruned": m["stop_reason"] == "stopped_by_probe"})


def _resources(resources: dict[str, Any]) -> dict[str, Any]:
    """``tune.resources`` as Ray Tune names them (``num_cpus`` → ``cpu``, ``num_gpus`` → ``gpu``)."""
    names = {"num_cpus": "cpu", "num_gpus": "gpu"}
    return {names.get(k, k): v for k, v in resources.items()}


def _scheduler(spec: TuneSpec, arm: Arm, ASHAScheduler, FIFOScheduler):
    p = spec.pruner
    if p["kind"] == "none":
        return FIFOScheduler()
    grace = p["min_resource"] if p["kind"] == "halving" else p["n_warmup_steps"]
    factor = p["reduction_factor"] if p["kind"] == "halving" else 3
    # one report per epoch plus the final one: max_t leaves room for it
    return ASHAScheduler(time_attr="training_iteration", metric="valid", mode="max", max_t=arm.config.train.epochs + 1,
                         grace_period=max(1, grace), reduction_factor=max(2, factor))


def _record(study, arm: Arm, result: Any, folder: TuneDir) -> None:
    """Add one finished Ray trial to the arm's Optuna study (COMPLETE, PRUNED or FAIL)."""
    optuna = _optuna()
    from optuna.trial import TrialState

    params = {k: v for k, v in (result.config or {}).items() if k in arm.space}
    metrics = result.metrics or {}
    history = result.metrics_dataframe
    curve: dict[int, float] = {}
    if history is not None and "valid" in history:
        for _, row in history.iterrows():
            if not row.get("final", False) and row["valid"] is not None and math.isfinite(row["valid"]):
                curve[int(row["epoch"])] = float(row["valid"])
    run_dir = metrics.get("run_dir")
    attrs = {"executor": "ray"}
    if run_dir:
        attrs["run_dir"] = str(Path(run_dir).relative_to(folder.path))
    value, state = None, TrialState.FAIL
    if result.error is None and metrics.get("final") and not metrics.get("pruned") and metrics.get("valid") is not None:
        value, state = float(metrics["valid"]), TrialState.COMPLETE
        if metrics.get("test_value") is not None:
            attrs["test_value"] = float(metrics["test_value"])
    elif result.error is None and metrics.get("diverged"):
        state, attrs["diverged"] = TrialState.PRUNED, metrics["diverged"]
    elif result.error is None and curve:
        state = TrialState.PRUNED
        if run_dir and read_status(run_dir) != "done":
            RunDir(run_dir).fail(f"pruned by ASHA (Ray Tune) at epoch {max(curve)}: Ray ended the trial's worker")
    attrs["epochs"] = max(curve) if curve else 0
    if len(params) != len(arm.space):
        return  # a trial that never started has no parameters to record
    study.add_trial(optuna.trial.create_trial(
        params=params, distributions={k: _distribution(s.space) for k, s in arm.space.items()}, value=value,
        state=state, intermediate_values=curve, user_attrs=attrs))


def run_tune_ray(spec: TuneSpec, out: str | Path, *, address: str | None = None, jobs: int = 1,
                 progress: bool = True) -> TuneDir:
    """Tune every arm of ``spec`` with Ray Tune (module docstring) into ``out``; the same outputs as `run_tune`.

    Uses the running Ray instance, or starts one (``address``: an existing
    cluster, ``auto`` or ``HOST:PORT``).  ``jobs > 1`` caps the trials in
    flight.  Raises RuntimeError with the install line when Ray Tune is missing.
    """
    ray, tune, ASHAScheduler, FIFOScheduler, OptunaSearch = _import_tune()
    optuna = _optuna()
    ray = connect_ray(address)  # the sweeps' connection: one-line start failures, before our signal handlers
    problem = unmet_request(spec.resources, ray.nodes())
    if problem:  # Ray Tune would wait forever for such a trial
        raise RuntimeError(f"{problem}; change tune.resources in {spec.source or 'the tune spec'} or add such a node")
    with sigterm_stops(TuneTerminated):  # SIGTERM: a clean stop (143), finished trials kept, as for sweeps
        return _tune_arms(spec, out, ray, tune, ASHAScheduler, FIFOScheduler, OptunaSearch, optuna, jobs, progress)


def _tune_arms(spec: TuneSpec, out: str | Path, ray, tune, ASHAScheduler, FIFOScheduler, OptunaSearch, optuna,
               jobs: int, progress: bool) -> TuneDir:
    """The arms of `run_tune_ray`, one Ray Tune run each, inside its connection and signal handling."""
    folder = TuneDir(out)
    check_folder(spec, folder, folder.storage_url)
    folder.path.mkdir(parents=True, exist_ok=True)
    with _flock(folder.lock_path):  # serialised with other drivers' checks (`run_tune`)
        storage = make_storage(folder.storage_url)
        record_protocol(spec, folder, storage)
    try:
        for arm in spec.arms:
            study = open_study(spec, arm, storage)
            c = counts(study)
            left = spec.trials - c["complete"] - c["pruned"]
            if left <= 0:
                continue
            sampler = optuna.samplers.TPESampler(seed=(study_seed(spec, arm, study) + sum(c.values())) % 2 ** 32,
                                                 n_startup_trials=spec.sampler["n_startup_trials"],
                                                 multivariate=spec.sampler["multivariate"])
            first = [arm.prior()] if not study.trials and arm.prior().keys() == arm.space.keys() else None
            searcher = OptunaSearch(space={k: _distribution(s.space) for k, s in arm.space.items()}, metric="valid",
                                    mode="max", sampler=sampler, points_to_evaluate=first)
            trainable = tune.with_resources(
                functools.partial(_ray_trial, base=arm.config, trials=str(folder.path / "trials" / arm.label),
                                  metric=spec.metric), _resources(spec.resources))
            tuner = tune.Tuner(trainable, tune_config=tune.TuneConfig(
                search_alg=searcher, scheduler=_scheduler(spec, arm, ASHAScheduler, FIFOScheduler),
                num_samples=left, max_concurrent_trials=jobs if jobs > 1 else None),
                run_config=tune.RunConfig(name=arm.label, storage_path=str(folder.path / "ray"),
                                          verbose=1 if progress else 0))
            grid = tuner.fit()
            for result in grid:
                _record(study, arm, result, folder)
    finally:
        write_best(spec, folder, storage)
    return folder
