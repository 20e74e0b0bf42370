"""One sweep cell: run a config into its run folder, with the analysis probes the sweep asks for.

`run_cell` is what every executor calls (in this process, in a worker process,
in a Ray task), so the guarantees are the same everywhere: a run counts as
done only when its folder says so with exactly this config and data files of
the same content as now, an unfinished, failed or outdated attempt is wiped
and re-run, and a failure never raises.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import socket
import traceback
from typing import Any

from rankrobust.config import OutdatedConfig, RunConfig
from rankrobust.data.identity import current_digest, recorded_digest
from rankrobust.experiment import run_experiment
from rankrobust.noise import outdated_noise_protocol
from rankrobust.probes import Probe, ProbeOutput
from rankrobust.runs import STATUS_DONE, STATUS_FAILED, RunDir
from rankrobust.safe_io import refuse_link
from rankrobust.sweeps.spec import ORIGINS


def ray_node_id() -> str | None:
    """The id of the Ray node when called inside a Ray task, else None (a driver is not a task; never starts Ray)."""
    import sys

    ray = sys.modules.get("ray")  # only a process that uses Ray has it imported
    try:
        if ray is None or not ray.is_initialized():
            return None
        context = ray.get_runtime_context()
        in_task = getattr(context.worker, "mode", None) == 1  # Ray's WORKER_MODE (a driver is SCRIPT_MODE, 0)
        return context.get_node_id() if in_task else None
    except Exception:  # an old Ray without the runtime context API
        return None


class CellProbe(Probe):
    """What a sweep cell adds to its run: live progress for the driver, and where it ran.

    After each epoch it writes ``{"epoch", "epochs", "metric", "best"}`` to
    the run folder's progress file (`RunDir.write_progress`; the sweep's bar
    reads it, `rankrobust.sweeps.executors.running_summary`): ``best`` is the
    largest validation value of ``train.metric`` so far (``row["valid_<metric>"]``,
    already on the host: no extra device sync), None before the first
    validation round.  At the end, ``metrics.json`` → ``placement`` records
    the host, the Ray node id (None outside Ray), the process id and the
    absolute folder written.
    """

    name = "placement"

    def __init__(self, run_dir: RunDir, epochs: int, metric: str | None = None) -> None:
        self.run_dir, self.epochs, self.metric = run_dir, epochs, metric
        self.best: float | None = None

    def epoch_end(self, epoch, model, row):
        value = row.get(f"valid_{self.metric}") if self.metric else None
        if isinstance(value, (int, float)) and math.isfinite(value) and (self.best is None or value > self.best):
            self.best = float(value)
        try:
            self.run_dir.write_progress({"epoch": epoch, "epochs": self.epochs, "metric": self.metric,
                                         "best": self.best})
        except OSError:
            pass  # progress is a convenience; never fail a run for it
        return None

    def finish(self, ctx, result) -> ProbeOutput:
        return ProbeOutput(metrics={"host": socket.gethostname(), "node_id": ray_node_id(), "pid": os.getpid(),
                                    "run_dir": str(self.run_dir.path.absolute())})


class OriginProbe(Probe):
    """Writes where a sweep cell's tuned settings came from (``origin.json``, `RunDir.write_origin`) into its run
    folder when the run starts, so a finished run always carries it (``status`` comes last)."""

    name = "tuned_origin"

    def __init__(self, origin: dict[str, Any]) -> None:
        self.origin = origin

    def start(self, ctx) -> None:
        if ctx.run_dir is not None:
            ctx.run_dir.write_origin(self.origin)


def unfinished_reason(run_dir: RunDir, config: dict[str, Any], data_digest: str | None = None) -> str | None:
    """None when ``run_dir`` holds a finished run of ``config`` (and of the data ``data_digest``); else why not,
    in a few words (``""`` when there is no finished run at all).

    Run identity is the canonical form: the run's ``config.json`` is
    migrated and has every default filled (`RunDir.canonical_config`,
    `rankrobust.config.canonical_config`) before it is compared with
    ``config``, a fresh ``RunConfig.to_dict()`` (itself canonical), so an
    option added since the run, with a default that is the old behaviour,
    leaves the run finished.  A run made with another config (the spec was
    edited since) is not finished, so a resumed sweep re-runs it instead of
    keeping stale numbers; nor is a run whose config this version would not
    make (an option removed without a migration: the reason names the key),
    nor one whose ``config.json`` or ``metrics.json`` cannot be read
    (damaged, truncated: `RunFolderError`), so a damaged run is redone
    instead of blocking the sweep.  ``data_digest``: the identity of the data
    files as they are now (`rankrobust.data.identity.current_digest`); a run
    that recorded other data files (rewritten since at the same path) is not
    finished either.  None, or a run that recorded no data files (made before
    rankrobust recorded them), skips that check.  A run whose training data
    the current noise protocol prepares differently (a ``heldout`` p = 0 run
    made before the pool was withheld at every p:
    `rankrobust.noise.outdated_noise_protocol`) is not finished as well.
    """
    try:
        if run_dir.status() != STATUS_DONE:
            return ""
        metrics = run_dir.metrics()  # readable, or the run is redone
        stored = run_dir.canonical_config()
    except OutdatedConfig as err:
        return f"outdated: {err}"
    except (OSError, ValueError) as err:  # RunFolderError is a ValueError
        return f"unreadable: {err}"
    if stored != json.loads(json.dumps(config)):
        return "made with another config"
    if outdated_noise_protocol(stored, metrics):  # trained on data the current noise protocol prepares otherwise
        return "made under an older noise protocol"
    recorded = recorded_digest(metrics)
    if data_digest is not None and recorded is not None and recorded != data_digest:
        return "data files changed since"
    return None


def is_finished(run_dir: RunDir, config: dict[str, Any], data_digest: str | None = None) -> bool:
    """True when ``run_dir`` holds a finished run of ``config`` in canonical form (and of the data
    ``data_digest``); see `unfinished_reason`."""
    return unfinished_reason(run_dir, config, data_digest) is None


def run_cell(cfg: RunConfig, run_dir: str, options: dict[str, Any], device: str | None = None) -> dict[str, Any]:
    """Run one cell's validated config into ``run_dir`` (wiping an unfinished, failed or outdated attempt).

    ``options``: the sweep's run options (``fairness``, ``track_variance``)
    choosing the probes (`analysis.probes.probes_for`) and, for a spec with
    ``tuned:``, each cell's origin (``options["origins"]``: cell id → record,
    written to the run folder's ``origin.json``).  Never raises for a
    failing run: the failure is recorded in the run's status (with the
    traceback) and returned as ``{"status": "failed", "error": last line}``.
    """
    from analysis.probes import probes_for  # the sweep layer wires the analysis probes

    folder = RunDir(run_dir)
    if is_finished(folder, cfg.to_dict(), current_digest(cfg.data)):
        return {"status": STATUS_DONE, "skipped": True}
    try:
        refuse_link(folder.path, "a run")  # a planted link in runs/: one line naming it (rmtree would only say
        if folder.path.exists():           # "Cannot call rmtree on a symbolic link"); nothing written through it
            shutil.rmtree(folder.path)
        probes = probes_for(fairness=bool(options.get("fairness")), track_variance=bool(options.get("track_variance")))
        origin = (options.get(ORIGINS) or {}).get(folder.path.name)  # the spec's `tuned:` (cell id = folder name)
        if origin is not None:
            probes = [*probes, OriginProbe(origin)]
        probes = [*probes, CellProbe(folder, cfg.train.epochs, cfg.train.metric)]
        run_experiment(cfg, folder.path, device=device, progress=False, overwrite=True, probes=probes)
        return {"status": STATUS_DONE}
    except Exception:
        detail = traceback.format_exc()
        try:
            if folder.status() != STATUS_FAILED:
                folder.fail(detail)
        except (OSError, ValueError):
            pass  # the folder cannot be written; the failure is still returned
        return {"status": STATUS_FAILED, "error": detail.strip().splitlines()[-1]}
