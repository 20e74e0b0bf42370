"""One experiment end to end: data → noise → fit → evaluate → run directory.

`run_experiment(cfg, out)` is what ``rankrobust train`` and every sweep cell
call.  The run directory is written file by file (each atomically) and its
``status`` last; a failure writes ``status = failed`` with the traceback.
"""
from __future__ import annotations

import functools
import math
import json
import platform
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from rankrobust import runs
from rankrobust.config import DataConfig, RunConfig
from rankrobust.data import Dataset, load_dataset, load_files
from rankrobust.noise import add_noisy_positives, false_negative_pool, noise_table
from rankrobust.train import Callback, FitResult, TrainData, fit, resolve_device


class RunExistsError(FileExistsError):
    """The output directory already holds a run."""


@functools.lru_cache(maxsize=8)
def _load_cached(data_json: str) -> Dataset:
    dc = DataConfig(**json.loads(data_json))
    if dc.train_path is not None:
        return load_files(dc.train_path, dc.test_path, valid=dc.valid_path, valid_fraction=dc.valid_fraction,
                          seed=dc.split_seed, valid_is_test=dc.valid_is_test)
    return load_dataset(dc.name, data_dir=dc.data_dir, valid_fraction=dc.valid_fraction, seed=dc.split_seed,
                        valid_is_test=dc.valid_is_test)


def load_data(dc: DataConfig) -> Dataset:
    """Load (once per process, cached by config) the dataset a `DataConfig` names."""
    return _load_cached(json.dumps(dc.__dict__, sort_keys=True))


def prepare_data(cfg: RunConfig, dataset: Dataset) -> tuple[TrainData, pd.DataFrame]:
    """Apply the noise protocol of ``cfg.noise`` to ``dataset``.

    Returns the `TrainData` and the table of injected pairs (``noise.parquet``).
    Noisy positives are drawn from items the user has in none of train, valid
    or test, so a fake positive is never a held-out true one.
    """
    nc = cfg.noise
    seed = cfg.train.seed if nc.seed is None else nc.seed
    clean = dataset.train
    frames = []
    train, pool = clean, None
    if nc.neg_prob > 0:  # the pool comes from the clean positives, before any fake ones are added
        train, pool = false_negative_pool(clean, kind=nc.neg_pool, fraction=nc.heldout_fraction, seed=seed + 1)
        if nc.neg_pool == "heldout":
            frames.append(noise_table(pool, "heldout_negative"))
    seen = clean
    if nc.pos_ratio > 0:
        held_out = dataset.test if dataset.leaky_validation else dataset.valid.union(dataset.test)
        train, injected = add_noisy_positives(train, nc.pos_ratio, seed=seed, rounding=nc.pos_rounding,
                                              exclude=held_out.union(clean))
        seen = clean.union(injected)
        frames.insert(0, noise_table(injected, "noisy_positive"))
    table = pd.concat(frames, ignore_index=True) if frames else noise_table(clean.empty(*clean.shape), "none")
    data = TrainData(train=train, seen=seen, valid=dataset.valid, test=dataset.test, fn_pool=pool,
                     leaky=dataset.leaky_validation)
    return data, table


@dataclass
class RunSummary:
    """What a finished run reports back to its caller."""

    path: Path | None
    metrics: dict[str, Any]
    fit: FitResult
    data: TrainData


def environment() -> dict[str, Any]:
    """Versions and machine, stored with every run."""
    return {
        "torch": torch.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cuda_device": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "threads": torch.get_num_threads(),
    }


def metrics_document(cfg: RunConfig, result: FitResult, data: TrainData, device: torch.device) -> dict[str, Any]:
    """The content of ``metrics.json``."""
    return {
        "valid": result.valid.metrics if result.valid else {},
        "test": result.test.metrics,
        "most_popular": {k: v for k, v in result.extra["most_popular"].items() if k.startswith(("recall", "ndcg"))},
        "best_epoch": result.best_epoch,
        "epochs_run": int(len(result.history)),
        "stopped_early": result.stopped_early,
        "leaky_validation": data.leaky,
        "train_seconds": result.seconds,
        "seconds_per_epoch": float(result.history["train_seconds"].mean()),
        "device": str(device),
        "environment": environment(),
        **({"warning": "valid = test: model selection saw the test set (authors' protocol)"} if data.leaky else {}),
    }


def finite_or_none(value: Any) -> Any:
    """Replace NaN/inf floats (undefined metrics) by None, recursively, so JSON stays valid."""
    if isinstance(value, dict):
        return {k: finite_or_none(v) for k, v in value.items()}
    if isinstance(value, list):
        return [finite_or_none(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def run_experiment(cfg: RunConfig, out: str | Path | None = None, *, device: torch.device | str | None = None,
                   progress: bool = True, overwrite: bool = False, callbacks: tuple[Callback, ...] = (),
                   fairness: bool = False, track_variance: bool = False) -> RunSummary:
    """Train and evaluate one configuration; write its run directory when ``out`` is given.

    ``fairness`` adds ``fairness.parquet`` (per-popularity-group metrics);
    ``track_variance`` records prediction-variance statistics every epoch
    into ``variance.csv``.  On failure the run directory gets ``status =
    failed`` with the traceback and the exception propagates.
    """
    cfg.validate()
    device = resolve_device(cfg.train.device) if device is None else torch.device(device)
    path = Path(out) if out is not None else None
    if path is not None:
        if path.exists() and any(path.iterdir()) and not overwrite:
            raise RunExistsError(f"{path} already holds files; pass --overwrite or choose another --out")
        path.mkdir(parents=True, exist_ok=True)
        runs.clear_status(path)
        runs.write_text(path / "config.json", cfg.to_json() + "\n")
    try:
        dataset = load_data(cfg.data)
        data, noise = prepare_data(cfg, dataset)
        all_callbacks = list(callbacks)
        tracker = None
        if track_variance:
            from analysis.variance import VarianceTracker

            tracker = VarianceTracker(data.train, seed=cfg.train.seed,
                                      path=None if path is None else path / "variance.csv")
            all_callbacks.append(tracker)
        t0 = time.perf_counter()
        result = fit(cfg, data, device, callbacks=tuple(all_callbacks), progress=progress)
        metrics = metrics_document(cfg, result, data, device)
        metrics["wall_seconds"] = time.perf_counter() - t0
        fair_table = None
        if fairness:
            from analysis.fairness import fairness_report, fairness_table

            k = int(cfg.train.metric.partition("@")[2])
            groups, summary = fairness_report(result.test, data.seen, k=k)
            fair_table = fairness_table(groups, summary, k=k)
            metrics["fairness"] = summary
            result.extra["fairness_groups"] = groups
        if not noise.empty and (noise["kind"] == "noisy_positive").any():
            from analysis.dro_run import gradient_shares, noisy_mask, positive_temperature

            noisy = noise[noise["kind"] == "noisy_positive"]
            mask = noisy_mask(data.train, noisy["user"].to_numpy(), noisy["item"].to_numpy())
            U, I = (t.cpu() for t in result.model.final_embeddings())
            metrics["gradient_share"] = gradient_shares(U, I, data.train, mask,
                                                        tau1=positive_temperature(cfg.to_dict()["loss"]))
        metrics = finite_or_none(metrics)
        if path is not None:
            runs.write_csv(path / "epochs.csv", result.history)
            runs.write_parquet(path / "per_user.parquet", result.test.per_user)
            runs.write_parquet(path / "noise.parquet", noise)
            if fair_table is not None:
                runs.write_parquet(path / "fairness.parquet", fair_table)
            U, I = result.model.final_embeddings()
            runs.save_tensors(path / "model.pt", {"user_emb": result.model.user_emb, "item_emb": result.model.item_emb,
                                                  "final_user": U, "final_item": I})
            runs.write_json(path / "metrics.json", metrics)
            runs.write_status(path, runs.STATUS_DONE)
        return RunSummary(path, metrics, result, data)
    except BaseException as err:
        if path is not None:
            runs.write_status(path, runs.STATUS_FAILED, "".join(traceback.format_exception(err)))
        raise
