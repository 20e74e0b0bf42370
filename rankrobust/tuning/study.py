"""The local tuning engine: one Optuna study per arm in ``DIR/study.db``, trials as ordinary run folders.

Layout of a tune folder::

    study.db                 SQLite: one Optuna study per arm, named by the arm label
    protocol.json            per arm: search space, budget, sampler and pruner settings, seed, objective, noise;
                             the storage the studies live in (`TuneDir.storage_label`, `check_folder`)
                             (a copy: each study's ``protocol`` user attribute is the record; `check_protocol`)
    trials/<arm>/<NNNN>/     one run folder per trial (NNNN = the trial's number in its study)
    best/<arm>.yaml          the chosen settings of each arm (`write_best`)
    plots/<arm>-history.png, <arm>-importance.png   (``rankrobust tune-results``)

A trial trains its config (`Arm.trial_config`) to early stopping with
`run_experiment`; a `PruningProbe` reports the validation value of every
epoch to the study and stops the trial (`StopTraining`) when the pruner says
it is hopeless.  Its value is the best validation value of the run (the
``valid`` section of metrics.json at the objective's metric); the test value
is stored as a label (``test_value``) and never read by selection.

Budget: a study counts COMPLETE and PRUNED trials; failed ones (an error, or a
worker killed mid-trial) do not count and are retried with the same
parameters once.  A trial whose training diverged (`TrainingDiverged`: a NaN
or infinite loss) is an outcome of its settings, not an accident: it counts
against the budget like a pruned trial (state PRUNED, user attribute
``diverged`` with the error line; TPE then reads it by its last reported
value), so an arm whose losses diverge often gets no extra draws.  Workers (``--jobs N`` processes, or several drivers on one
folder) share the study: asking for a trial happens under an exclusive lock
on ``DIR/.ask.lock`` after counting finished + running trials, so no more than
the budget is ever started.  A running trial records its owner (host, pid);
one whose owner is dead (this host) or whose heartbeat stopped (any host) is
marked FAIL, so kill-and-rerun continues the study without losing or
repeating a finished trial.
"""
from __future__ import annotations

import fcntl
import json
import math
import os
import signal
import socket
import threading
import time
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Any, Callable, Iterator

import yaml

from rankrobust.config import ConfigError, OutdatedConfig, RunConfig, canonical_config
from rankrobust.probes import Probe, StopTraining
from rankrobust.runs import STATUS_DONE, read_json, read_status, write_json, write_text
from rankrobust.sweeps.runner import pid_alive, sigterm_stops
from rankrobust.train import TrainingDiverged
from rankrobust.tuning.spec import Arm, TuneSpec

__all__ = ["TuneDir", "TrialResult", "PruningProbe", "train_trial", "run_tune", "open_study", "write_best",
           "TuneTerminated", "HEARTBEAT_SECONDS", "GRACE_SECONDS", "StudyRecord", "study_records", "check_protocol",
           "record_protocol", "study_seed", "check_folder", "readable_storage"]

#: a running trial's heartbeat period, and how long without one before another worker marks it FAIL
HEARTBEAT_SECONDS = 10
GRACE_SECONDS = 60
#: consecutive failed trials of one arm after which a driver gives up on it (a broken config fails every trial)
MAX_CONSECUTIVE_FAILURES = 3


class TuneTerminated(KeyboardInterrupt):
    """Raised in a running ``rankrobust tune`` by SIGTERM: it stops like Ctrl-C, finished trials kept."""


class TuneDir:
    """The one owner of a tune folder's file names (module docstring)."""

    STUDY = "study.db"
    PROTOCOL = "protocol.json"

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path).absolute()

    @property
    def study_path(self) -> Path:
        return self.path / self.STUDY

    @property
    def storage_url(self) -> str:
        return f"sqlite:///{self.study_path}"

    @property
    def protocol_path(self) -> Path:
        return self.path / self.PROTOCOL

    @property
    def lock_path(self) -> Path:
        return self.path / ".ask.lock"

    #: the ``storage`` protocol.json records for the folder's own database (also when the entry is absent)
    OWN_STORAGE = STUDY

    def storage_label(self, url: str) -> str:
        """How protocol.json records the storage ``url``: `OWN_STORAGE` for ``DIR/study.db``, else the URL with
        any password masked (``postgresql://user:***@host/db``)."""
        return self.OWN_STORAGE if url == self.storage_url else _masked(url)

    def trial_dir(self, arm: str, number: int) -> Path:
        return self.path / "trials" / arm / f"{number:04d}"

    def best_path(self, arm: str) -> Path:
        return self.path / "best" / f"{arm}.yaml"

    def plot_path(self, arm: str, kind: str) -> Path:
        return self.path / "plots" / f"{arm}-{kind}.png"

    #: what to do about a damaged protocol.json: the studies' own records make it safe to delete
    PROTOCOL_FIX = "delete it: `rankrobust tune` rebuilds it from the protocol each study records in study.db"

    def protocol(self) -> dict[str, Any] | None:
        """``protocol.json`` as ``{"name", "source", "storage", "arms": {label: record}}``; None when there is none.

        ``name`` (the tune spec's name) must be a non-empty string; ``source`` (the spec file) and ``storage``
        (`storage_label`) a string or null when present; ``arms`` a mapping of arm label to record when present
        (a missing ``arms`` lists no arm: the studies' own records rebuild it).  A damaged file or one of
        another shape is one ConfigError / RunFolderError line naming the file and `PROTOCOL_FIX`.
        """
        try:
            data = read_json(self.protocol_path, self.PROTOCOL_FIX)
        except FileNotFoundError:
            return None
        if not isinstance(data, dict):
            raise ConfigError(f"{self.protocol_path}: a JSON object with name, source and arms was expected, got a "
                              f"{_json_type(data)}; {self.PROTOCOL_FIX}")
        arms = data.get("arms", {})
        bad = None if isinstance(data.get("name"), str) and data["name"] else (
            f"name is {'absent' if 'name' not in data else 'a ' + _json_type(data['name'])}, not the tune spec's name")
        bad = bad or next((f"{key} is a {_json_type(data[key])}, not a string" for key in ("source", "storage")
                           if data.get(key) is not None and not isinstance(data[key], str)), None)
        bad = bad or (None if isinstance(arms, dict) else f"arms is a {_json_type(arms)}")
        bad = bad or next((f"arms[{label!r}] is a {_json_type(v)}" for label, v in arms.items()
                           if not isinstance(v, dict)), None)
        if bad:
            raise ConfigError(f"{self.protocol_path}: {bad}, not a mapping of arm label to its protocol record; "
                              f"{self.PROTOCOL_FIX}")
        return {**data, "arms": arms}


def _json_type(value: Any) -> str:
    """The JSON name of ``value``'s type (object, array, string, ...) for error lines."""
    names = {dict: "object", list: "array", str: "string", bool: "boolean", int: "number", float: "number"}
    return "null" if value is None else names.get(type(value), type(value).__name__)


# ----------------------------------------------------------------------------- one trial
@dataclass
class TrialResult:
    """What a trial function returns: the best validation value, the test value (a label), whether it was pruned."""

    valid: float | None
    test: float | None = None
    pruned: bool = False
    epochs: int = 0


#: ``report(value, epoch) -> prune?``: hand a trial's per-epoch validation value to the pruner
Report = Callable[[float, int], bool]
#: ``trial_fn(cfg, run_dir, report) -> TrialResult``: run one trial into ``run_dir``
TrialFn = Callable[[RunConfig, Path, Report], TrialResult]


class PruningProbe(Probe):
    """Reports the epoch's validation value (``row["valid_<train.metric>"]``) and stops a trial the pruner prunes."""

    name = "pruning"

    def __init__(self, metric: str, report: Report) -> None:
        self.metric, self.report = metric, report

    def epoch_end(self, epoch: int, model: Any, row: dict[str, Any]) -> None:
        value = row.get(f"valid_{self.metric}")
        if value is None or not math.isfinite(value):
            return None  # no validation round this epoch (train.eval_every), or a NaN one
        if self.report(float(value), epoch):
            raise StopTraining(f"pruned at epoch {epoch} ({self.metric} = {value:.4f})")
        return None


def train_trial(cfg: RunConfig, run_dir: Path, report: Report) -> TrialResult:
    """Train ``cfg`` into the run folder ``run_dir`` with a `PruningProbe`; the run's best validation value.

    The value is metrics.json's ``valid`` section at ``train.metric`` (the
    best epoch's validation); ``test`` is read for the label only.
    """
    from rankrobust.experiment import run_experiment

    metric = cfg.train.metric
    summary = run_experiment(cfg, run_dir, probes=[PruningProbe(metric, report)], progress=False, overwrite=True)
    m = summary.metrics
    return TrialResult(valid=m["valid"].get(metric), test=m["test"].get(metric),
                       pruned=m["stop_reason"] == "stopped_by_probe", epochs=m["epochs_run"])


# ----------------------------------------------------------------------------- studies
def _optuna():
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    # heartbeats are recorded by this module's own thread (`_Heartbeat`), not by Study.optimize
    warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used with Study.optimize")
    return optuna


def make_storage(url: str, name: str | None = None):
    """An Optuna RDB storage at ``url`` with heartbeats (a dead worker's trial becomes FAIL, retried once).

    A database that cannot be read (`readable_storage`) is one ConfigError line naming it (``name``, default
    the URL's file).
    """
    optuna = _optuna()
    from optuna.storages import RetryHeartbeatStaleTrialCallback

    kwargs = {"connect_args": {"timeout": 120}} if url.startswith("sqlite") else {}
    return readable_storage(lambda: optuna.storages.RDBStorage(
        url, engine_kwargs=kwargs, heartbeat_interval=HEARTBEAT_SECONDS, grace_period=GRACE_SECONDS,
        heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=1)), name or _url_name(url))


def readable_storage(open_storage: Callable[[], Any], name: str):
    """``open_storage()``, its study list read once; a damaged database is one ConfigError line naming ``name``.

    A 0-byte file opened read-only, garbage bytes or a truncated SQLite file fail inside SQLAlchemy (its
    DatabaseError, OperationalError included) or Optuna (StorageInternalError) when the storage is created or
    first read; the line gives the error's first line and the fix.
    """
    import sqlalchemy.exc

    optuna = _optuna()
    try:
        storage = open_storage()
        storage.get_all_studies()
    except (sqlalchemy.exc.DatabaseError, optuna.exceptions.StorageInternalError) as err:
        first = (str(err).splitlines() or [type(err).__name__])[0]
        raise ConfigError(f"{name} is not a readable Optuna database ({first}); move it away (or choose another "
                          f"--out) to start the tuning over") from None
    return storage


def _url_name(url: str) -> str:
    """A storage URL as error lines name it: the database file for SQLite, else the URL, password masked."""
    return str(Path(url[len("sqlite:///"):])) if url.startswith("sqlite:///") else _masked(url)


def _masked(url: str) -> str:
    """``url`` with any password shown as ``***``."""
    from sqlalchemy.engine import make_url

    from sqlalchemy.exc import ArgumentError

    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:  # not a URL SQLAlchemy parses: shown as given (make_storage names the error)
        return url


def make_pruner(settings: dict[str, Any]):
    """Optuna's pruner for the spec's ``tune.pruner`` (median, halving or none)."""
    optuna = _optuna()
    kind = settings["kind"]
    args = {k: v for k, v in settings.items() if k != "kind"}
    if kind == "median":
        return optuna.pruners.MedianPruner(**args)
    if kind == "halving":
        return optuna.pruners.SuccessiveHalvingPruner(**args)
    return optuna.pruners.NopPruner()


def open_study(spec: TuneSpec, arm: Arm, storage: Any):
    """The study of ``arm`` (created on first use; the spec's pruner; its sampler is replaced before every ask)."""
    optuna = _optuna()
    return optuna.create_study(study_name=arm.label, storage=storage, direction="maximize",
                               sampler=make_sampler(spec, spec.arm_seed(arm), 0), pruner=make_pruner(spec.pruner),
                               load_if_exists=True)


def study_seed(spec: TuneSpec, arm: Arm, study) -> int:
    """The seed of ``arm``: the one its study recorded at its start (`check_protocol`), else `TuneSpec.arm_seed`."""
    seed = _recorded_seed(study.user_attrs.get("protocol"))
    return spec.arm_seed(arm) if seed is None else seed


def _recorded_seed(record: Any) -> int | None:
    """The ``seed`` of a protocol record (None when it has none, or not an integer)."""
    seed = record.get("seed") if isinstance(record, dict) else None
    return seed if isinstance(seed, int) and not isinstance(seed, bool) else None


def make_sampler(spec: TuneSpec, seed: int, asked: int):
    """The TPE sampler of an arm with seed ``seed`` (`study_seed`) for its next trial, after ``asked`` asks.

    Its seed is ``(t + 1000 (seed - t) + asked) mod 2^32`` with t = ``tune.seed``: the arm's offset
    ``seed - t`` (its index for studies started before seeds followed labels, so their draws are unchanged)
    spaced by 1000, plus the asks so far.  Called under the ask lock before every ask, so each trial's random
    draws are distinct across workers and reruns and the same for the same order of asks.
    """
    s = spec.sampler
    return _optuna().samplers.TPESampler(seed=(spec.seed + 1000 * (seed - spec.seed) + asked) % 2 ** 32,
                                         n_startup_trials=s["n_startup_trials"], multivariate=s["multivariate"])


# ----------------------------------------------------------------------------- the protocol record
@dataclass
class StudyRecord:
    """One study of a tune folder's storage: its recorded protocol (None when none is recorded) and finished trials.

    ``finished`` counts COMPLETE and PRUNED trials (the budget's unit); ``tuning`` is the tune spec name the
    study recorded (None for studies recorded before names were).
    """

    protocol: dict[str, Any] | None
    finished: int
    tuning: str | None = None


def study_records(folder: TuneDir, storage: Any) -> dict[str, StudyRecord]:
    """Every study in ``storage`` by name (the arm label) with its record; reads only, creates nothing.

    The record of a study is its own ``protocol`` user attribute, written when the study started and kept up
    to date by every rerun: it lives with the trials, so deleting or editing ``protocol.json`` changes
    nothing.  ``protocol.json`` (read, and checked, only when present) supplies the record of a study without
    one.  Records written before ``tune_seed`` was recorded get it here: their seed was ``tune.seed + n`` for
    the arm's index n, and the first run's arm 0 had n = 0, so ``tune.seed`` is the smallest such seed.
    """
    from optuna.trial import TrialState

    listed = folder.protocol() or {"arms": {}}
    out = {}
    for frozen in storage.get_all_studies():
        name = frozen.study_name
        record = frozen.user_attrs.get("protocol")
        if not isinstance(record, dict):
            record = listed["arms"].get(name)
        finished = len(storage.get_all_trials(storage.get_study_id_from_name(name), deepcopy=False,
                                              states=(TrialState.COMPLETE, TrialState.PRUNED)))
        tuning = frozen.user_attrs.get("tuning", listed.get("name"))
        out[name] = StudyRecord(dict(record) if record is not None else None, finished, tuning)
    legacy = [r.protocol for r in out.values() if r.protocol is not None and "tune_seed" not in r.protocol
              and _recorded_seed(r.protocol) is not None]
    first = min((r["seed"] for r in legacy), default=None)
    for record in legacy:
        record["tune_seed"] = first
    return out


def check_protocol(spec: TuneSpec, folder: TuneDir, storage: Any) -> tuple[dict[str, dict[str, Any]],
                                                                           dict[str, StudyRecord]]:
    """The protocol to record for each arm of ``spec`` (by label) and the folder's `study_records`.

    Reads only: a refused rerun writes nothing and creates no study.  The rules, checked for every arm before
    anything is written (ConfigError, one line naming the arm and the fix):

    - the record of an arm is its study's (`study_records`), whatever ``protocol.json`` says;
    - an arm whose study has a record keeps the seed recorded there; a new arm gets `TuneSpec.arm_seed`;
    - every entry but the budget must equal the record (the trial config in canonical form), else the rerun
      would mix trials of two protocols: refused, naming the first differing keys and both values;
    - the budget may grow, never fall below the budget recorded for any study in the folder nor below its
      finished (complete + pruned) trials, which would leave arms with unequal budgets (also across two
      concurrent runs: `run_tune` checks and records under the folder's lock);
    - a study with finished trials and no record anywhere is refused (its protocol is unknown), as is a
      folder holding another tuning (another spec ``name``).
    """
    records = study_records(folder, storage)
    others = sorted({r.tuning for r in records.values() if r.tuning not in (None, spec.name)})
    if others:
        raise ConfigError(f"{folder.path} holds tuning {others[0]!r}, not {spec.name!r}; choose another --out")
    for label, record in records.items():
        budget = (record.protocol or {}).get("budget")
        budget = budget if isinstance(budget, int) and not isinstance(budget, bool) else 0
        if max(budget, record.finished) > spec.trials:
            raise ConfigError(f"{folder.path}: arm {label} has budget {budget} recorded and {record.finished} "
                              f"finished trials; tune.trials {spec.trials} would give arms unequal budgets; use "
                              f"tune.trials >= {max(budget, record.finished)}")
    plan = {}
    for arm in spec.arms:
        record = records.get(arm.label)
        before = record.protocol if record is not None else None
        if before is None:
            if record is not None and record.finished:
                raise ConfigError(f"{folder.path}: study {arm.label} has {record.finished} finished trials but no "
                                  f"recorded protocol; choose another --out")
            plan[arm.label] = spec.protocol(arm)
            continue
        now = spec.protocol(arm, _recorded_seed(before))
        differences = {key: _difference(key, before.get(key), now[key]) for key in now if key != "budget"}
        changed = [f"{key} ({how})" for key, how in differences.items() if how]
        if changed:
            raise ConfigError(f"{folder.path}: arm {arm.label} was tuned with another {'; '.join(changed)}; "
                              f"rerun with the original spec or choose another --out")
        plan[arm.label] = now
    return plan, records


def record_protocol(spec: TuneSpec, folder: TuneDir, storage: Any) -> None:
    """Record the protocol of every arm (`check_protocol`, which refuses a rerun under another protocol).

    Sets each arm's study attributes ``protocol`` (the record) and ``tuning`` (the spec name), creating the
    studies of new arms, then rewrites ``protocol.json`` from the records of all studies in the folder (a
    missing or deleted file is rebuilt), with the storage (`TuneDir.storage_label`) they live in.  Called
    under the folder's lock by `run_tune`, so two drivers starting together are checked one after the other.
    """
    plan, records = check_protocol(spec, folder, storage)
    for arm in spec.arms:
        study = open_study(spec, arm, storage)
        study.set_user_attr("protocol", _jsonable(plan[arm.label]))
        study.set_user_attr("tuning", spec.name)
    arms = {label: r.protocol for label, r in records.items() if r.protocol is not None}
    write_json(folder.protocol_path, _jsonable({"name": spec.name, "source": str(spec.source) if spec.source else None,
                                                "storage": folder.storage_label(_url(storage)),
                                                "arms": {**arms, **plan}}))


def check_folder(spec: TuneSpec, folder: TuneDir, url: str) -> None:
    """Refuse an ``--out`` folder that `run_tune` must not write into; reads only, creates nothing.

    Checked before the storage is opened or any file is written (ConfigError, one line naming the folder and
    the fix): a ``protocol.json`` that cannot be read or is of another shape (`TuneDir.protocol`); a presets
    folder (``best/<arm>.yaml`` but no study database: the folder's storage is its own ``study.db`` and there
    is none, e.g. a copy of ``configs/tuned/...``); a ``protocol.json`` naming another tuning; and a storage
    ``url`` other than the one the folder was tuned with (protocol.json's ``storage``; absent in files
    written before it was recorded, meaning the folder's own ``study.db``, as it does when only study.db is
    there), whose trial numbers would land on the run folders of the recorded storage's trials.
    """
    listed = folder.protocol()
    recorded = (listed or {}).get("storage") or (
        folder.OWN_STORAGE if listed is not None or folder.study_path.exists() else None)
    presets = (recorded in (None, folder.OWN_STORAGE) and not folder.study_path.exists()
               and any((folder.path / "best").glob("*.yaml")))
    if presets:
        name = (listed or {}).get("name")
        raise ConfigError(f"{folder.path} holds the presets of tuning {name!r} (no {folder.STUDY}); "
                          f"choose another --out" if name else
                          f"{folder.path} holds presets (best/<arm>.yaml, no {folder.STUDY}); choose another --out")
    if listed is not None and listed["name"] != spec.name:
        raise ConfigError(f"{folder.path} holds tuning {listed['name']!r}, not {spec.name!r}; choose another --out")
    now = folder.storage_label(url)
    if recorded is not None and recorded != now:
        how = "without --storage" if recorded == folder.OWN_STORAGE else f"with --storage {recorded}"
        raise ConfigError(f"{folder.path} was tuned with storage {recorded}, not {now}; rerun {how} or choose "
                          f"another --out")


def _difference(key: str, before: Any, now: Any) -> str | None:
    """How one entry of an arm's recorded protocol differs from today's (None when equal).

    The first (up to 3) differing dotted keys with both values, e.g. ``train.num_negatives 8 → 16``.  The
    trial ``config`` is compared in canonical form (`rankrobust.config.canonical_config`: migrated, every
    default filled), so an option added to rankrobust after the study started, with a default equal to the
    old behaviour, does not make the study "tuned under another protocol"; every other entry as JSON.
    """
    if key == "config" and isinstance(before, dict):
        try:
            before = canonical_config(before)
        except OutdatedConfig:
            return "a config of an outdated schema"
    before, now = _jsonable(before), _jsonable(now)
    if before == now:
        return None
    old, new = _flatten(before), _flatten(now)
    keys = [k for k in dict.fromkeys([*old, *new]) if old.get(k, _ABSENT) != new.get(k, _ABSENT)]
    return ", ".join(f"{k + ' ' if k else ''}{_show(old.get(k, _ABSENT))} → {_show(new.get(k, _ABSENT))}"
                     for k in keys[:3]) + (f", and {len(keys) - 3} more" if len(keys) > 3 else "")


_ABSENT = object()


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    """A JSON value as {dotted key: leaf}; a non-mapping is one leaf under ``prefix``."""
    if not isinstance(value, dict) or not value:
        return {prefix: value}
    out = {}
    for key, item in value.items():
        out.update(_flatten(item, f"{prefix}.{key}" if prefix else str(key)))
    return out


def _show(value: Any) -> str:
    return "(absent)" if value is _ABSENT else json.dumps(value)


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


@contextmanager
def _flock(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def fail_dead_trials(study) -> list[int]:
    """Mark FAIL the running trials whose owner is gone: a dead process on this host, or a stale heartbeat.

    Each is retried once with the same parameters (`make_storage`'s callback).
    Returns the numbers of the trials failed here.
    """
    optuna = _optuna()
    from optuna.trial import TrialState

    host = socket.gethostname()
    failed = []
    storage = study._storage
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        owner = t.user_attrs.get("owner") or {}
        if owner.get("host") == host and isinstance(owner.get("pid"), int) and not pid_alive(owner["pid"]):
            if storage.set_trial_state_values(t._trial_id, state=TrialState.FAIL):
                failed.append(t.number)
                callback = storage.get_heartbeat_stale_trial_callback()
                if callback is not None:
                    callback(study, storage.get_trial(t._trial_id))
    optuna.storages.fail_stale_trials(study)
    return failed


def counts(study) -> dict[str, int]:
    """Trials of ``study`` by state: complete, pruned, running, failed, waiting; and diverged (counted in pruned)."""
    from optuna.trial import TrialState

    out = {"complete": 0, "pruned": 0, "running": 0, "failed": 0, "waiting": 0, "diverged": 0}
    names = {TrialState.COMPLETE: "complete", TrialState.PRUNED: "pruned", TrialState.RUNNING: "running",
             TrialState.FAIL: "failed", TrialState.WAITING: "waiting"}
    for t in study.get_trials(deepcopy=False):
        out[names[t.state]] += 1
        out["diverged"] += "diverged" in t.user_attrs  # among the pruned
    return out


class _Heartbeat:
    """Records a running trial's heartbeat every `HEARTBEAT_SECONDS` in a daemon thread."""

    def __init__(self, storage: Any, trial_id: int) -> None:
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._beat, args=(storage, trial_id), daemon=True, name="tune-heartbeat")

    def _beat(self, storage: Any, trial_id: int) -> None:
        while not self.stop.is_set():
            try:
                storage.record_heartbeat(trial_id)
            except Exception:  # a busy database: the next beat tries again
                pass
            self.stop.wait(HEARTBEAT_SECONDS)

    def __enter__(self) -> "_Heartbeat":
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop.set()
        self.thread.join(timeout=5)


def _ask(spec: TuneSpec, arm: Arm, study, folder: TuneDir):
    """Under the folder's ask lock: a new trial of ``arm``, or None when finished + running trials fill the budget."""
    with _flock(folder.lock_path):
        fail_dead_trials(study)
        c = counts(study)
        if c["complete"] + c["pruned"] + c["running"] >= spec.trials:
            return None
        prior = arm.prior()
        tried = any(t.user_attrs.get("prior") and t.state.name != "FAIL" for t in study.trials)
        if prior and not tried:  # the documented settings are the first trial of every arm (again if it failed)
            study.enqueue_trial(prior, user_attrs={"prior": True})
        # a sampler seeded by the arm and the number of trials asked so far: workers and reruns each draw
        # new settings (one seed per process made every worker repeat the same random start-up draws)
        study.sampler = make_sampler(spec, study_seed(spec, arm, study), len(study.trials))
        trial = study.ask({key: _distribution(s.space) for key, s in arm.space.items()})
        trial.set_user_attr("owner", {"host": socket.gethostname(), "pid": os.getpid()})
        return trial


def _distribution(space: Any):
    optuna = _optuna()
    d = optuna.distributions
    if space.kind == "float":
        return d.FloatDistribution(space.low, space.high, log=space.log)
    if space.kind == "int":
        return d.IntDistribution(int(space.low), int(space.high), log=space.log, step=space.step)
    return d.CategoricalDistribution(list(space.choices))


def run_arm(spec: TuneSpec, arm: Arm, folder: TuneDir, storage: Any, *, trial_fn: TrialFn = train_trial,
            on_change: Callable[[], None] | None = None) -> None:
    """Run trials of ``arm`` until its study holds ``spec.trials`` complete + pruned trials.

    Waits for trials other workers are running (so the arm is finished when
    this returns).  An exception in a trial marks it FAIL and the loop goes on;
    `MAX_CONSECUTIVE_FAILURES` in a row raise RuntimeError naming the last
    error and run folder.  KeyboardInterrupt (and `TuneTerminated`) mark the
    running trial FAIL and propagate.
    """
    from optuna.trial import TrialState

    study = open_study(spec, arm, storage)
    failures = 0
    while True:
        trial = _ask(spec, arm, study, folder)
        if trial is None:
            c = counts(study)
            if c["complete"] + c["pruned"] >= spec.trials:
                return
            time.sleep(1.0)  # another worker's trial is running: wait for it (or for it to be marked FAIL)
            continue
        params = {key: trial.params[key] for key in arm.space}
        run_dir = folder.trial_dir(arm.label, trial.number)
        trial.set_user_attr("run_dir", str(run_dir.relative_to(folder.path)))
        if read_status(run_dir) == STATUS_DONE:  # another study's trial (e.g. another --storage): keep it
            why = f"{run_dir} already holds a finished run, of a trial this study does not know"
            trial.set_user_attr("error", why)
            study.tell(trial, state=TrialState.FAIL)
            raise ConfigError(f"{why}; not overwritten: rerun with the storage this folder was tuned with, or "
                              f"choose another --out")

        def report(value: float, epoch: int) -> bool:
            trial.report(value, epoch)
            return trial.should_prune()

        if on_change is not None:
            on_change()
        try:
            with _Heartbeat(study._storage, trial._trial_id):
                result = trial_fn(arm.trial_config(params), run_dir, report)
        except TrainingDiverged as err:  # the settings' own outcome: counted, like a pruned trial
            trial.set_user_attr("diverged", str(err).splitlines()[0][:500])
            study.tell(trial, state=TrialState.PRUNED)
            if on_change is not None:
                on_change()
            failures = 0
            continue
        except BaseException as err:
            trial.set_user_attr("error", f"{type(err).__name__}: {err}".splitlines()[0][:500])
            study.tell(trial, state=TrialState.FAIL)
            if on_change is not None:
                on_change()
            if not isinstance(err, Exception):
                raise
            failures += 1
            if failures >= MAX_CONSECUTIVE_FAILURES:
                raise RuntimeError(f"arm {arm.label}: {failures} trials failed in a row, the last with "
                                   f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''} "
                                   f"(see {run_dir}/status); fix the spec and rerun") from None
            continue
        failures = 0
        if result.test is not None:
            trial.set_user_attr("test_value", float(result.test))  # a label: selection never reads it
        trial.set_user_attr("epochs", result.epochs)
        if result.pruned:
            study.tell(trial, state=TrialState.PRUNED)
        elif result.valid is None or not math.isfinite(result.valid):
            trial.set_user_attr("error", "no finite validation value")
            study.tell(trial, state=TrialState.FAIL)
        else:
            study.tell(trial, float(result.valid))
        if on_change is not None:
            on_change()


def write_best(spec: TuneSpec, folder: TuneDir, storage: Any) -> list[Path]:
    """Write ``best/<arm>.yaml`` (atomically) for each arm with a complete trial; returns the files written.

    The best trial is the complete trial with the highest validation value
    (Optuna's ``best_trial``); its test value is never consulted.
    """
    written = []
    for arm in spec.arms:
        study = open_study(spec, arm, storage)
        if counts(study)["complete"] == 0:
            continue
        best = study.best_trial
        doc = {"arm": arm.label, "values": dict(arm.values),
               "settings": {key: best.params[key] for key in arm.space if key in best.params},
               "origin": {"study": str(folder.study_path) if storage_is_folder(storage, folder) else _url(storage),
                          "study_name": arm.label, "trial": best.number, "objective": spec.objective,
                          "value": float(best.value), "direction": "maximize", "noise": spec.noise}}
        path = folder.best_path(arm.label)
        write_text(path, yaml.safe_dump(_jsonable(doc), sort_keys=False, default_flow_style=None, width=120))
        written.append(path)
    return written


def _url(storage: Any) -> str:
    engine = getattr(storage, "engine", None)
    return str(engine.url.render_as_string(hide_password=True)) if engine is not None else str(storage)


def storage_is_folder(storage: Any, folder: TuneDir) -> bool:
    return _url(storage) == folder.storage_url


# ----------------------------------------------------------------------------- drivers
def _share_cores(jobs: int) -> None:
    import torch

    torch.set_num_threads(max(1, (os.cpu_count() or 1) // jobs))


def work(spec: TuneSpec, folder: TuneDir, url: str, *, trial_fn: TrialFn = train_trial,
         on_change: Callable[[], None] | None = None) -> None:
    """One worker: every arm in spec order, until each holds its budget."""
    storage = make_storage(url)
    for arm in spec.arms:
        run_arm(spec, arm, folder, storage, trial_fn=trial_fn, on_change=on_change)


def _worker_main(spec: TuneSpec, path: str, url: str, parent: int, jobs: int, trial_fn: TrialFn) -> None:
    from rankrobust.sweeps.executors import die_with_parent

    die_with_parent(parent)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the driver handles Ctrl-C and ends its workers
    _share_cores(jobs)
    work(spec, TuneDir(path), url, trial_fn=trial_fn)


class Progress:
    """One tqdm bar per driver: finished trials / total budget, postfix done / pruned / running / best."""

    def __init__(self, spec: TuneSpec, storage: Any, enabled: bool) -> None:
        from tqdm.auto import tqdm

        self.spec, self.storage = spec, storage
        self.studies = None
        self.bar = tqdm(total=spec.trials * len(spec.arms), desc=f"tune {spec.name}", unit="trial",
                        disable=not enabled, dynamic_ncols=True)

    def update(self) -> None:
        if self.bar.disable:
            return
        if self.studies is None:
            self.studies = [open_study(self.spec, arm, self.storage) for arm in self.spec.arms]
        total = {"complete": 0, "pruned": 0, "running": 0, "failed": 0}
        best = None
        for study in self.studies:
            c = counts(study)
            for k in total:
                total[k] += c[k]
            if c["complete"]:
                value = study.best_value
                best = value if best is None else max(best, value)
        self.bar.n = min(total["complete"] + total["pruned"], self.bar.total)
        self.bar.set_postfix(done=total["complete"], pruned=total["pruned"], running=total["running"],
                             failed=total["failed"], best="-" if best is None else f"{best:.4f}", refresh=False)
        self.bar.refresh()

    def close(self) -> None:
        self.bar.close()


def run_tune(spec: TuneSpec, out: str | Path, *, jobs: int = 1, storage_url: str | None = None,
             progress: bool = True, trial_fn: TrialFn = train_trial) -> TuneDir:
    """Tune every arm of ``spec`` into ``out`` (resumable); write ``protocol.json`` and ``best/<arm>.yaml``.

    ``jobs`` worker processes share the study (``storage_url``, default the
    folder's SQLite file); with ``jobs = 1`` trials run in this process.
    Raises ConfigError (a folder `check_folder` refuses, one tuned under another protocol: `check_protocol`;
    a damaged database: `readable_storage`), RuntimeError
    (an arm whose trials keep failing) and `TuneTerminated` on SIGTERM
    (workers ended; the rerun continues).  The best files are written also
    when interrupted.
    """
    if jobs < 1:
        raise ConfigError(f"--jobs must be at least 1, got {jobs}")
    folder = TuneDir(out)
    url = storage_url or folder.storage_url
    check_folder(spec, folder, url)
    folder.path.mkdir(parents=True, exist_ok=True)
    with _flock(folder.lock_path):  # serialised with other drivers' checks and workers' asks
        storage = make_storage(url)
        record_protocol(spec, folder, storage)
    bar = Progress(spec, storage, progress)
    processes = []
    finished = False
    try:
        with sigterm_stops(TuneTerminated):
            bar.update()
            if jobs == 1:
                work(spec, folder, url, trial_fn=trial_fn, on_change=bar.update)
            else:
                ctx = get_context("spawn")
                processes = [ctx.Process(target=_worker_main, args=(spec, str(folder.path), url, os.getpid(), jobs,
                                                                    trial_fn), name=f"rankrobust-tune-{j}")
                             for j in range(jobs)]
                for p in processes:
                    p.start()
                while any(p.is_alive() for p in processes):
                    time.sleep(1.0)
                    bar.update()
                bad = [p.exitcode for p in processes if p.exitcode]
                if bad:
                    raise RuntimeError(f"{len(bad)} tune worker(s) ended with an error (exit codes {bad}); "
                                       f"rerun the same command to continue the study")
            bar.update()
            finished = True
    finally:
        for p in processes:
            if p.is_alive():
                p.kill()
            p.join()
        if processes and not finished:
            studies = [open_study(spec, arm, storage) for arm in spec.arms]
            for study in studies:
                fail_dead_trials(study)  # the killed workers' trials: FAIL now, retried by the rerun
        bar.close()
        write_best(spec, folder, storage)
    return folder
