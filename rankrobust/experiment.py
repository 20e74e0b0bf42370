"""One experiment end to end: data → noise → fit → evaluate → run directory.

`run_experiment(cfg, out, probes=...)` is what ``rankrobust train`` and every
sweep cell call.  The run directory (`RunDir`) is written file by file (each
atomically) and its ``status`` last; a failure writes ``status = failed`` with
the traceback.  Measurements beyond accuracy (fairness, variance, gradient
accounting) come from probes (`rankrobust.probes`) passed in by the caller;
this module never imports the analysis layer.
"""
from __future__ import annotations

import json
import math
import platform
import time
import traceback
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd
import torch

from rankrobust.config import ConfigError, DataConfig, RunConfig, stored_config
from rankrobust.data import Dataset, load_dataset, load_files
from rankrobust.data.identity import FileFingerprint, data_identity
from rankrobust.data.popularity import item_popularity
from rankrobust.data.splits import OOD_TEST_FRACTION, apply_split
from rankrobust.determinism import Determinism
from rankrobust.evaluate import ips_weights
from rankrobust.losses import groups_positives
from rankrobust.memory import check_memory
from rankrobust.metrics import MetricInputs, compute_metrics, metric_inputs
from rankrobust.noise import NOISE_PROTOCOL, false_negative_pool, inject_positives, noise_table, pair_mask
from rankrobust.probes import Probe, ProbeContext
from rankrobust.runs import RunDir
from rankrobust.sampling import negative_kind
from rankrobust.scoring import oversampling_warning, slow_choice_warning, unused_bf16_warning
from rankrobust.train import FitResult, TrainData, fit, resolve_device


#: datasets kept loaded in this process, least recently used first (see `load_data_identified`)
DATA_CACHE_SIZE = 8
_DATA_CACHE: "OrderedDict[tuple, Dataset]" = OrderedDict()


def load_data_identified(dc: DataConfig) -> tuple[Dataset, dict[str, FileFingerprint]]:
    """The dataset ``dc`` names and the fingerprint (size + sha256) of every file it was read from.

    Cached in the process by (``dc``, the files' sizes and sha256), so a file
    rewritten at the same path is read again, never served from the cache
    (`rankrobust.data.identity`: each file is hashed once per stat signature).
    The files are fingerprinted before they are read and checked unchanged
    after, so the fingerprints are those of the bytes read.  Raises as
    `load_dataset` / `load_files`, and DataNotFoundError naming the key of a
    missing user file.
    """
    for _ in range(3):
        identity = data_identity(dc)
        key = (dc, tuple(sorted((split, f.size, f.sha256) for split, f in identity.items())))
        if key in _DATA_CACHE:
            _DATA_CACHE.move_to_end(key)
            return _DATA_CACHE[key], identity
        dataset = _read_data(dc)
        if all(f.unchanged() for f in identity.values()):
            for old in [k for k in _DATA_CACHE if k[0] == dc]:  # an older version of the same files
                del _DATA_CACHE[old]
            _DATA_CACHE[key] = dataset
            while len(_DATA_CACHE) > DATA_CACHE_SIZE:
                _DATA_CACHE.popitem(last=False)
            return dataset, identity
    raise OSError(f"the data files of {dc} kept changing while they were read; wait until whatever writes them "
                  f"has finished")


def load_data(dc: DataConfig) -> Dataset:
    """The dataset ``dc`` names (cached per process by its files' content: `load_data_identified`)."""
    return load_data_identified(dc)[0]


load_data.cache_clear = _DATA_CACHE.clear  # type: ignore[attr-defined]  # as with functools.lru_cache


def _read_data(dc: DataConfig) -> Dataset:
    """Read (uncached) the dataset ``dc`` names, under ``data.split``; `load_data` caches it."""
    if dc.train_path is not None:
        dataset = load_files(dc.train_path, dc.test_path, valid=dc.valid_path, valid_fraction=dc.valid_fraction,
                             seed=dc.split_seed, valid_is_test=dc.valid_is_test)
    else:
        dataset = load_dataset(dc.name, data_dir=dc.data_dir, valid_fraction=dc.valid_fraction, seed=dc.split_seed,
                               valid_is_test=dc.valid_is_test)
    split = apply_split(dataset, dc.split, test_fraction=dc.ood_test_fraction, valid_fraction=dc.valid_fraction,
                        seed=dc.split_seed)
    if split.split is not None and split.test.nnz == 0:  # not the test file's fault: the draw was too small
        total = dataset.train.union(dataset.valid).union(dataset.test).nnz
        raise ConfigError(f"data.ood_test_fraction = {dc.ood_test_fraction} draws no test interaction from the "
                          f"{total:,} interactions (data.split = {dc.split}); raise it (default "
                          f"{OOD_TEST_FRACTION})")
    return split


def prepare_data(cfg: RunConfig, dataset: Dataset) -> tuple[TrainData, pd.DataFrame]:
    """Apply the noise protocol of ``cfg.noise`` to ``dataset``.

    Returns the `TrainData` and the table of injected pairs (``noise.parquet``:
    the rows the noise kind ``noise.pos_kind`` records, then the held-out pool).
    Noisy positives are drawn by that kind from items the user has in none of
    train, valid or test, so a fake positive is never a held-out true one; a
    kind that weighs items reads the clean split's popularity (`item_popularity`
    variant ``"clean"``).  The ``heldout``
    false-negative pool is withheld from the positives at every ``neg_prob``,
    0 included, with a seed independent of it: all cells of a sweep over p
    train on the same positives (`rankrobust.noise.NOISE_PROTOCOL`).
    """
    nc = cfg.noise
    seed = cfg.train.seed if nc.seed is None else nc.seed
    clean = dataset.train
    frames = []
    train, pool = clean, None
    if nc.neg_prob > 0 or nc.neg_pool == "heldout":  # from the clean positives, before any fake ones are added
        train, pool = false_negative_pool(clean, kind=nc.neg_pool, fraction=nc.heldout_fraction, seed=seed + 1)
        if nc.neg_pool == "heldout":
            frames.append(noise_table(pool, "heldout_negative"))
    seen, noisy = clean, None
    if nc.pos_ratio > 0:
        held_out = dataset.test if dataset.leaky_validation else dataset.valid.union(dataset.test)
        train, injected, recorded = inject_positives(train, nc.pos_ratio, seed=seed, rounding=nc.pos_rounding,
                                                     exclude=held_out.union(clean), kind=nc.pos_kind,
                                                     options=nc.pos_options, popularity=item_popularity(clean, "clean"))
        seen = clean.union(injected)
        noisy = pair_mask(train, injected)
        frames.insert(0, recorded)
    table = pd.concat(frames, ignore_index=True) if frames else noise_table(clean.empty(*clean.shape), "none")
    data = TrainData(train=train, seen=seen, valid=dataset.valid, test=dataset.test, fn_pool=pool,
                     leaky=dataset.leaky_validation, noisy=noisy)
    return data, table


def training_data_record(data: TrainData) -> dict[str, int]:
    """``metrics.json`` → ``training_data``: the noise protocol version and the prepared data's sizes.

    ``noise_protocol`` (`rankrobust.noise.NOISE_PROTOCOL`) tells a run made
    under an older protocol apart (`rankrobust.noise.outdated_noise_protocol`);
    ``train_pairs`` are the pairs trained on, ``fn_pool_pairs`` the pairs of
    the false-negative pool (0 when the run has none).
    """
    return {"noise_protocol": NOISE_PROTOCOL, "train_pairs": int(data.train.nnz),
            "fn_pool_pairs": int(data.fn_pool.nnz) if data.fn_pool is not None else 0}


@dataclass
class RunSummary:
    """What a finished run reports back to its caller."""

    path: Path | None
    metrics: dict[str, Any]
    fit: FitResult
    data: TrainData
    #: objects the probes handed back (e.g. ``fairness_groups``), by name
    extra: dict[str, Any] = field(default_factory=dict)


def environment() -> dict[str, Any]:
    """Versions and machine, stored with every run."""
    return {
        "torch": torch.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cuda_device": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "threads": torch.get_num_threads(),
    }


def id_table(dataset: Dataset) -> pd.DataFrame:
    """The map from the contiguous ids of a run back to the ids written in the user's files.

    Columns ``kind`` (``user`` / ``item``), ``id`` (as used in the run's
    tables and weights) and ``original`` (as text, since files may use any ids).
    """
    frames = [pd.DataFrame({"kind": kind, "id": np.arange(len(ids), dtype=np.int64),
                            "original": pd.Series(ids).astype(str)})
              for kind, ids in (("user", dataset.user_ids), ("item", dataset.item_ids))]
    return pd.concat(frames, ignore_index=True)


def group_size_warning(cfg: RunConfig, group_size: float) -> str | None:
    """The warning for a grouped positive term that barely acts, or None (docs/PROTOCOLS.md §9).

    BSL ``paper``/``multi`` take a log-mean-exp over the positives of the same
    user in the same batch; with a mean same-user group size below 2 most
    pairs are alone in their group and that term reduces to SL's.
    """
    if not groups_positives(cfg.loss.options) or not group_size < 2.0:
        return None
    return (f"{cfg.loss.name} ({cfg.loss.options.mode} mode) averages each user's positives within a batch, but "
            f"the mean same-user group size was {group_size:.2f} (< 2): most pairs are alone in their group, "
            f"so its positive term is nearly inactive (README: \"BSL's positive side\"). Group a user's positives with "
            f"--set train.batching=users (chunks of train.positives_per_user, default 8).")


def metrics_document(cfg: RunConfig, result: FitResult, data: TrainData, device: torch.device) -> dict[str, Any]:
    """The content of ``metrics.json`` (before the probes add their sections)."""
    history = result.history
    group_size = float(history["group_size_mean"].mean())
    negatives = negative_kind(cfg.train.sampler)
    warnings = [w for w in (group_size_warning(cfg, group_size),
                            "valid = test: model selection saw the test set (authors' protocol)" if data.leaky
                            else None, slow_choice_warning(result.extra.get("scorer")),
                            unused_bf16_warning(cfg.train.bf16, device.type, negatives, result.extra.get("scorer")),
                            oversampling_warning(cfg.train.num_negatives, data.train.n_items)
                            if negatives == "sampled" else None) if w]
    return {
        "valid": result.valid.metrics if result.valid else {},
        "test": result.test.metrics,
        "most_popular": {k: v for k, v in result.extra["most_popular"].items() if k.startswith(("recall", "ndcg"))},
        "best_epoch": result.best_epoch,
        "epochs_run": int(len(result.history)),
        "stopped_early": result.stopped_early,
        "stop_reason": result.stop_reason,
        "leaky_validation": data.leaky,
        "train_seconds": result.seconds,
        "seconds_per_epoch": float(history["train_seconds"].mean()),
        "group_size_mean": group_size,
        "scorer": result.extra.get("scorer"),
        **({"valid_sample": result.extra["valid_sample"]} if result.extra.get("valid_sample") else {}),
        "device": str(device),
        "environment": environment(),
        "warnings": warnings,
    }


def registered_metric_inputs(cfg: RunConfig, dataset: Dataset, result: FitResult) -> MetricInputs:
    """What the registered metrics (`rankrobust.metrics`) read of a run's test evaluation.

    ``popularity`` is `item_popularity` variant ``"clean"`` (the clean
    training split: what a practitioner observes, the same for every cell of
    a noise sweep); ``propensity`` the IPS weights `ips_weights` of it at
    ``train.ips_gamma``, absent (IPS metrics not computed) when that is unset.
    """
    popularity = item_popularity(dataset.train, "clean")
    gamma = cfg.train.ips_gamma
    return metric_inputs(result.test, popularity=popularity,
                         propensity=None if gamma is None else ips_weights(popularity, gamma))


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
                   progress: bool = True, overwrite: bool = False, probes: Sequence[Probe] = ()) -> RunSummary:
    """Train and evaluate one configuration; write its run directory when ``out`` is given.

    ``probes`` (`rankrobust.probes.Probe`) add measurements: each may add
    columns to ``epochs.csv``, a section to ``metrics.json`` and tables to the
    run folder (e.g. ``analysis.probes.FairnessProbe``).  On failure the run
    directory gets ``status = failed`` with the traceback and the exception
    propagates.  Raises FileExistsError when ``out`` holds files and not
    ``overwrite``, and `rankrobust.runs.RunLocked` (a FileExistsError naming
    the holder) at once when another process is writing ``out``: the folder is
    locked (`RunDir.locked`) from before it is emptied until its status is
    written.
    """
    cfg.validate()  # before the folder is created
    if out is None:
        return _run_experiment(cfg, None, device=device, progress=progress, overwrite=overwrite, probes=probes)
    with RunDir(out).locked():
        return _run_experiment(cfg, out, device=device, progress=progress, overwrite=overwrite, probes=probes)


def _run_experiment(cfg: RunConfig, out: str | Path | None, *, device: torch.device | str | None,
                    progress: bool, overwrite: bool, probes: Sequence[Probe]) -> RunSummary:
    """`run_experiment`'s work, under the run folder's lock when ``out`` is given."""
    cfg.validate()
    device = resolve_device(cfg.train.device) if device is None else torch.device(device)
    run_dir = RunDir(out) if out is not None else None
    if run_dir is not None:
        run_dir.prepare(overwrite)
        run_dir.write_config(json.dumps(stored_config(cfg), indent=2, sort_keys=True))  # with its schema
    determinism = Determinism(False)
    try:
        dataset, data_files = load_data_identified(cfg.data)
        data, noise = prepare_data(cfg, dataset)
        check_memory(cfg, *data.train.shape, data.train.nnz, device)  # before the model is built
        determinism = Determinism.start(cfg.train.deterministic, device)  # before training
        ctx = ProbeContext(cfg, data, device, run_dir)
        for probe in probes:
            probe.start(ctx)
        t0 = time.perf_counter()
        result = fit(cfg, data, device, probes=probes, progress=progress)
        metrics = metrics_document(cfg, result, data, device)
        metrics["warnings"] = list(dataset.notes) + metrics["warnings"]  # what loading the files found
        metrics["wall_seconds"] = time.perf_counter() - t0
        metrics["data_files"] = {split: f.record() for split, f in data_files.items()}  # what the run read
        metrics["training_data"] = training_data_record(data)  # what it trained on (noise protocol version)
        # the registered test metrics beyond the evaluator's (coverage; IPS when train.ips_gamma is set: propensity
        # ∝ clean train pop^γ; any added one): their means in metrics.json, per-user values beside the others
        means, per_user = compute_metrics(registered_metric_inputs(cfg, dataset, result), result.test.ks)
        metrics["test"] = {**metrics["test"], **means}
        for column, values in per_user.items():
            result.test.per_user[column] = values
        if dataset.split is not None:  # the re-drawn split (data.split), e.g. the popularity-shift test
            metrics["split"] = dataset.split
        tables: dict[str, pd.DataFrame] = {}
        extra: dict[str, Any] = {}
        for probe in probes:
            output = probe.finish(ctx, result)
            if output is None:
                continue
            if output.metrics:
                metrics[probe.name] = output.metrics
            tables.update(output.tables)
            extra.update(output.extra)
        metrics.update(determinism.record())
        metrics["warnings"] = metrics.get("warnings", []) + determinism.warnings()
        metrics = finite_or_none(metrics)
        if run_dir is not None:
            run_dir.write_table("epochs", result.history)
            run_dir.write_table("per_user", result.test.per_user)
            run_dir.write_table("noise", noise)
            if dataset.user_ids is not None:
                run_dir.write_table("ids", id_table(dataset))
            for name, frame in tables.items():
                run_dir.write_table(name, frame)
            U, I = result.model.final_embeddings()
            run_dir.save_tensors({"user_emb": result.model.user_emb, "item_emb": result.model.item_emb,
                                  "final_user": U, "final_item": I})
            run_dir.write_metrics(metrics)
            run_dir.finish()
        return RunSummary(run_dir.path if run_dir else None, metrics, result, data, extra)
    except BaseException as err:
        if run_dir is not None:
            run_dir.fail("".join(traceback.format_exception(err)))
        raise
    finally:
        determinism.stop()
