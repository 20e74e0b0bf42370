"""Run directories: one folder per training run, written atomically.

Layout (this module is the only owner of these names)::

    config.json        resolved RunConfig
    metrics.json       {"valid": {...}, "test": {...}, "best_epoch": n, "leaky_validation": bool, ...}
    epochs.csv         per-epoch loss, validation metric and timings
    per_user.parquet   per-user test metrics
    noise.parquet      injected pairs (user, item, kind)
    model.pt           dict of tensors (raw and final embeddings), load with weights_only=True
    origin.json        where tuned settings came from (sweep cells of a spec with ``tuned:`` only)
    status             "done" or "failed\\n<traceback>", written last

Every file is written to a temporary name in the same folder and moved into
place with ``os.replace``, so a reader never sees half a file; ``status`` is
written last, so a run counts as finished only when its status says ``done``.

Reading never raises a bare parser error: a damaged or unreadable file raises
`RunFolderError` (a ValueError) naming the file and the fix.
"""
from __future__ import annotations

import fcntl
import hashlib
import io
import itertools
import json
import os
import re
import socket
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import pandas as pd
import torch

from rankrobust.safe_io import LinkRefused, file_mode, open_nofollow, refuse_link, umask  # noqa: F401 (re-exported)

STATUS_DONE = "done"
STATUS_FAILED = "failed"


class RunFolderError(ValueError):
    """A file of a run or sweep folder that exists but cannot be read (damaged, truncated, unreadable).

    The message names the file and what to do about it.
    """


def read_json(path: Path, fix: str) -> Any:
    """``path`` parsed as JSON; `RunFolderError` naming the file and ``fix`` when it is damaged or unreadable.

    A missing file raises FileNotFoundError (callers decide what missing means).
    """
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise
    except (OSError, UnicodeDecodeError) as err:
        reason = err.strerror if isinstance(err, OSError) and err.strerror else type(err).__name__
        raise RunFolderError(f"{path} cannot be read ({reason}); {fix}") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        what = "is empty" if not text.strip() else f"is not valid JSON ({err.msg}: line {err.lineno} column {err.colno})"
        raise RunFolderError(f"{path} {what}: the file is damaged (truncated?); {fix}") from None


def config_hash(config: dict[str, Any]) -> str:
    """A short fingerprint of a config dict: equal dicts, equal hash.

    Hash canonical forms (`rankrobust.config.canonical_config` of a stored
    ``config.json``, ``RunConfig.to_dict()`` of a fresh config): they are what
    ``sweep.json`` → ``cells`` and the store's ``config_hash`` column record.
    Records written before canonical forms hold the hash of the stored dict
    as it was (`RunDir.identity_hashes` gives both).
    """
    text = json.dumps(json.loads(json.dumps(config)), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def cell_id(values: dict[str, Any], seed: int) -> str:
    """A sweep cell's run-folder name: ``loss.name=sl__noise.pos_ratio=0.2__seed=0`` (filesystem-safe)."""
    parts = [f"{k}={v}" for k, v in values.items()] + [f"seed={seed}"]
    return re.sub(r"[^A-Za-z0-9_.=+-]", "-", "__".join(parts))


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success move it onto ``path``.

    On an exception the temporary file is removed and ``path`` is untouched.
    The file gets the mode a plain ``open`` would (``0o666`` less the umask,
    not the temporary file's ``0600``).  A parent folder that is a symbolic
    link is refused (`LinkRefused`): a planted link would move the write
    outside the tool's folders.  A link *at* ``path`` is replaced, never
    followed (``os.replace`` acts on the name).
    """
    path = Path(path)
    refuse_link(path.parent, "into a folder")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, file_mode())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_text(path: str | Path, text: str) -> None:
    """Atomically write ``text`` to ``path``."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json(path: str | Path, data: Any) -> None:
    """Atomically write ``data`` as indented JSON (NaN/inf are refused)."""
    write_text(path, json.dumps(data, indent=2, sort_keys=True, allow_nan=False) + "\n")


def write_parquet(path: str | Path, frame: pd.DataFrame) -> None:
    """Atomically write a DataFrame as parquet."""
    with atomic_path(path) as tmp:
        frame.to_parquet(tmp, index=False)


def write_csv(path: str | Path, frame: pd.DataFrame) -> None:
    """Atomically write a DataFrame as CSV."""
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False)


def save_tensors(path: str | Path, tensors: dict[str, torch.Tensor]) -> None:
    """Atomically ``torch.save`` a dict of CPU tensors (loadable with weights_only=True)."""
    buffer = io.BytesIO()  # via a buffer, so the file's bytes do not depend on the temporary name
    torch.save({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, buffer)
    with atomic_path(path) as tmp:
        tmp.write_bytes(buffer.getvalue())


def file_given_for_folder(path: str | Path, what: str = "run folder") -> str | None:
    """The one-line error for an existing *file* given where a ``what`` (run or sweep folder) is expected; else None.

    A file a run or sweep folder holds (``runs/demo/metrics.json``) names that
    folder as the one to pass; any other file names what to pass instead.
    """
    path = Path(path)
    if not path.is_file():
        return None
    sweep = what == "sweep folder"
    own, other = ((SweepDir.SPEC, SweepDir.STORE), RunDir.file_names()) if sweep else \
        (RunDir.file_names(), (SweepDir.SPEC, SweepDir.STORE))
    if path.name in own:
        return f"{path} is a file, not a {what}: pass the folder that holds it ({path.parent})"
    if sweep and path.name in other:
        return (f"{path} is a file of the single run folder {path.parent}, not a sweep folder: the run's metrics "
                f"are in {path.parent / RunDir.METRICS}; pass a sweep folder (one written by "
                f"`rankrobust sweep SPEC --out DIR`)")
    if path.name in other:
        return (f"{path} is a file of the sweep folder {path.parent}, not a run folder: pass one of its runs "
                f"({path.parent / SweepDir.RUNS}/<cell id>)")
    how = "rankrobust sweep SPEC --out DIR" if sweep else "rankrobust train --out DIR"
    return f"{path} is a file, not a {what}: pass a {what} (one written by `{how}`)"


def require_folder(path: str | Path, what: str = "run folder") -> None:
    """`RunFolderError` (`file_given_for_folder`'s line) when ``path`` is an existing file, not a ``what``."""
    problem = file_given_for_folder(path, what)
    if problem:
        raise RunFolderError(problem)


def read_status(run_dir: str | Path) -> str | None:
    """``"done"``, ``"failed"`` or None (missing: never finished or interrupted).

    A path that is a file raises `RunFolderError` saying so (never advice to delete it).
    """
    require_folder(run_dir)
    path = Path(run_dir) / RunDir.STATUS
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        return None
    except OSError as err:
        raise RunFolderError(f"{path} cannot be read ({err.strerror}); fix its permissions or delete the run "
                             f"folder and run it again") from None
    first = text.split("\n", 1)[0].strip()
    return first or None


def write_status(run_dir: str | Path, status: str, detail: str = "") -> None:
    """Write the ``status`` file last: ``done`` or ``failed`` followed by ``detail`` (a traceback)."""
    if status not in (STATUS_DONE, STATUS_FAILED):
        raise ValueError(f"status must be 'done' or 'failed', got {status!r}")
    write_text(Path(run_dir) / RunDir.STATUS, status + ("\n" + detail if detail else "") + "\n")


def clear_status(run_dir: str | Path) -> None:
    """Remove a previous ``status`` before a run directory is (re)written."""
    (Path(run_dir) / RunDir.STATUS).unlink(missing_ok=True)


class RunDir:
    """The one owner of a run folder's file names, for writing and for reading.

    Nothing else in rankrobust spells ``metrics.json`` or ``fairness.parquet``:
    writers call ``write_config``, ``write_metrics``, ``write_table(name, frame)``,
    ``save_tensors``, ``finish``/``fail``; readers call ``config()``,
    ``metrics()``, ``table(name)``, ``tensors()``, ``status()``.  Tables are
    known by name (`TABLES`): ``epochs``, ``per_user``, ``noise``,
    ``fairness``, ``variance``, ``ids`` (for user files: the original id of
    every remapped user and item; columns ``kind``, ``id``, ``original``).  Every write is atomic (temp file +
    ``os.replace``); ``status`` is written last.  Reading a damaged file
    raises `RunFolderError` naming it.
    """

    CONFIG = "config.json"
    METRICS = "metrics.json"
    MODEL = "model.pt"
    #: provenance of a sweep cell's tuned settings (`write_origin`), beside config.json, never inside it: that
    #: one is parsed back as a RunConfig and compared for run identity
    ORIGIN = "origin.json"
    STATUS = "status"
    #: live progress of a running run (epoch reached), written by sweep cells for the driver's bar
    PROGRESS = "progress.json"
    #: held (``flock``) by the one process writing the run (`locked`); holds its pid, host and start time
    LOCK = ".run.lock"
    #: table name → file name (the suffix picks CSV or parquet)
    TABLES: dict[str, str] = {
        "epochs": "epochs.csv",
        "per_user": "per_user.parquet",
        "noise": "noise.parquet",
        "fairness": "fairness.parquet",
        "ids": "ids.parquet",
        "variance": "variance.csv",
    }

    #: what to do about a damaged file of a run folder
    FIX = "delete the run folder and run it again (a sweep redoes it on its next `rankrobust sweep`)"

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    @classmethod
    def file_names(cls) -> tuple[str, ...]:
        """Every file name a run folder may hold (config, metrics, weights, tables, status)."""
        return (cls.CONFIG, cls.METRICS, cls.MODEL, cls.ORIGIN, *cls.TABLES.values(), cls.PROGRESS, cls.STATUS)

    @classmethod
    def owns(cls, name: str) -> bool:
        """True for a file name `RunDir` writes: one of `file_names` or the temp file of one (``.NAME.*.tmp``)."""
        if name in cls.file_names() or name == cls.LOCK:
            return True
        return name.startswith(".") and name.endswith(".tmp") and \
            any(name.startswith(f".{known}.") for known in cls.file_names())

    def foreign_files(self) -> list[str]:
        """Names in the folder that are not a run's files (other files, subfolders); [] when none or no folder."""
        if not self.path.is_dir():
            return []
        return sorted(p.name + ("/" if p.is_dir() else "") for p in self.path.iterdir()
                      if p.is_dir() or not self.owns(p.name))

    def __fspath__(self) -> str:
        return str(self.path)

    # ------------------------------------------------------------------ writing
    def prepare(self, overwrite: bool = False) -> None:
        """Create the folder for a new run, empty of any previous run's files.

        A folder that holds files raises FileExistsError unless ``overwrite``
        or the folder is a *failed* attempt (status ``failed``: a refused or
        crashed run, nothing worth keeping, so a plain rerun replaces it); then
        every file of the previous run (`file_names`, and their temp files) is
        removed first (``status`` first), so the folder then holds only the new
        run's files.  A folder holding anything else
        (a user's files, subfolders) is never emptied: FileExistsError naming
        them, and nothing is removed.
        """
        refuse_link(self.path, "a run")
        if self.path.exists() and not self.path.is_dir():
            raise FileExistsError(f"{self.path} is a file, not a folder; choose another --out")
        if self.path.exists() and any(p.name != self.LOCK for p in self.path.iterdir()):
            if not overwrite and not self._failed_attempt():
                raise FileExistsError(f"{self.path} already holds files; pass --overwrite or choose another --out")
            foreign = self.foreign_files()
            if foreign:
                shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
                raise FileExistsError(f"{self.path} holds files that are not a run's ({shown}); --overwrite only "
                                      f"replaces a previous run's files, so nothing was removed: choose a new or "
                                      f"empty --out")
            clear_status(self.path)  # first: a kill midway leaves an unfinished folder, never a 'done' one
            for entry in self.path.iterdir():
                if entry.name != self.LOCK:  # held by this writer (`locked`): removing it would free the folder
                    entry.unlink(missing_ok=True)
        self.path.mkdir(parents=True, exist_ok=True)

    @contextmanager
    def locked(self) -> Iterator[None]:
        """Own the run folder while the block writes it; `RunLocked` at once when another process writes it.

        An exclusive ``flock`` on ``.run.lock`` inside the folder (created,
        never through a link), released by the kernel however its holder
        ends; the file names the holder (pid, host, start, command) for the
        message of a second writer, and is removed on release (a lock taken
        on a file removed meanwhile is retaken on the new one).  The folder is
        created when missing.
        """
        refuse_link(self.path, "a run")
        if self.path.exists() and not self.path.is_dir():
            raise FileExistsError(f"{self.path} is a file, not a folder; choose another --out")
        self.path.mkdir(parents=True, exist_ok=True)
        lock = self.path / self.LOCK
        for _ in range(100):
            fd = open_nofollow(lock, os.O_RDWR | os.O_CREAT)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise RunLocked(f"{self.path} is being written by {describe_holder(read_holder(lock), 'run')}; "
                                f"wait for it to end or choose another --out") from None
            except OSError:
                break  # no flock on this file system: best effort, as before
            try:
                same = os.fstat(fd).st_ino == os.stat(lock, follow_symlinks=False).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)  # its previous holder removed it as we opened it: take the current file
        else:
            raise RunLocked(f"{self.path}: could not take {lock}; another process keeps replacing it")
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, (json.dumps(holder_record()) + "\n").encode(), 0)
            yield
        finally:
            try:
                lock.unlink(missing_ok=True)  # while held: a waiter that opened it retakes the new file
            except OSError:
                pass
            os.close(fd)

    def write_config(self, config_json: str) -> None:
        write_text(self.path / self.CONFIG, config_json.rstrip("\n") + "\n")

    def write_progress(self, progress: dict[str, Any]) -> None:
        """Record how far a running run is (``{"epoch": 12, "epochs": 100}``), atomically."""
        write_json(self.path / self.PROGRESS, progress)

    def progress(self) -> dict[str, Any] | None:
        """The last recorded progress, or None when none was written (yet)."""
        path = self.path / self.PROGRESS
        return read_json(path, self.FIX) if path.is_file() else None

    def write_metrics(self, metrics: dict[str, Any]) -> None:
        write_json(self.path / self.METRICS, metrics)

    def write_origin(self, origin: dict[str, Any]) -> None:
        """Record where the run's tuned settings came from (``origin.json``: the best file, its arm and settings,
        the study, trial and objective); written before ``status``."""
        write_json(self.path / self.ORIGIN, origin)

    def table_path(self, name: str) -> Path:
        """Path of table ``name``; ValueError naming the known tables otherwise."""
        try:
            return self.path / self.TABLES[name]
        except KeyError:
            raise ValueError(f"unknown run table {name!r}; known tables: {', '.join(self.TABLES)}") from None

    def write_table(self, name: str, frame: pd.DataFrame) -> None:
        path = self.table_path(name)
        (write_parquet if path.suffix == ".parquet" else write_csv)(path, frame)

    def save_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        save_tensors(self.path / self.MODEL, tensors)

    def finish(self) -> None:
        write_status(self.path, STATUS_DONE)

    def fail(self, detail: str) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        write_status(self.path, STATUS_FAILED, detail)

    def _failed_attempt(self) -> bool:
        """True when the folder's status file says ``failed`` (unreadable: False)."""
        try:
            return self.status() == STATUS_FAILED
        except (OSError, ValueError):
            return False

    # ------------------------------------------------------------------ reading
    def exists(self) -> bool:
        return (self.path / self.CONFIG).exists()

    def status(self) -> str | None:
        return read_status(self.path)

    def failure(self) -> str:
        """Last line of a failed run's traceback ('' when none)."""
        path = self.path / self.STATUS
        try:
            lines = path.read_text(errors="replace").strip().splitlines()
        except OSError:
            lines = []
        return lines[-1] if len(lines) > 1 else ""

    def _read_dict(self, name: str) -> dict[str, Any]:
        path = self.path / name
        data = read_json(path, self.FIX)
        if not isinstance(data, dict):
            raise RunFolderError(f"{path} holds a JSON {type(data).__name__}, not an object: the file is damaged; "
                                 f"{self.FIX}")
        return data

    def stored_config(self) -> dict[str, Any]:
        """``config.json`` exactly as stored, its ``"schema"`` included (absent in files written before versions);
        FileNotFoundError naming the folder when missing, RunFolderError when damaged."""
        require_folder(self.path)
        if not (self.path / self.CONFIG).exists():
            raise FileNotFoundError(f"{self.path} is not a run directory (no {self.CONFIG})")
        return self._read_dict(self.CONFIG)

    def config(self) -> dict[str, Any]:
        """``config.json``'s sections as a dict (its ``"schema"`` left out), as stored: options added since the
        run are missing (`canonical_config` fills them).  Errors as `stored_config`."""
        return {k: v for k, v in self.stored_config().items() if k != "schema"}

    def canonical_config(self) -> dict[str, Any]:
        """The run's config in canonical form (`rankrobust.config.canonical_config`: migrated to the current
        layout, every default filled): what run identity compares.  Errors as `stored_config`, and
        `rankrobust.config.OutdatedConfig` (a ValueError, one line naming the key) for a config this version
        would not make (an option removed without a migration): such a run is outdated."""
        from rankrobust.config import OutdatedConfig, canonical_config  # runs.py stays free of the registries

        try:
            return canonical_config(self.stored_config())
        except OutdatedConfig as err:
            raise OutdatedConfig(f"{self.path / self.CONFIG}: {err}") from None

    def identity_hashes(self) -> set[str]:
        """The `config_hash` values that identify this run: of its canonical form (recorded from now on) and of
        ``config.json`` as stored, ``"schema"`` left out (what records made before canonical forms hold).  The
        canonical one is missing when the config is outdated (`canonical_config` raises).  Errors as
        `stored_config`."""
        from rankrobust.config import OutdatedConfig

        found = {config_hash(self.config())}
        try:
            found.add(config_hash(self.canonical_config()))
        except OutdatedConfig:  # only the stored form identifies it
            pass
        return found

    def metrics(self) -> dict[str, Any]:
        """``metrics.json`` as a dict ({} when the run has none yet); RunFolderError naming it when damaged."""
        require_folder(self.path)
        if not (self.path / self.METRICS).exists():
            return {}
        return self._read_dict(self.METRICS)

    def origin(self) -> dict[str, Any] | None:
        """``origin.json`` (where the run's tuned settings came from), None for a run without one;
        RunFolderError naming it when damaged."""
        require_folder(self.path)
        if not (self.path / self.ORIGIN).exists():
            return None
        return self._read_dict(self.ORIGIN)

    def has_table(self, name: str) -> bool:
        return self.table_path(name).exists()

    def table(self, name: str, *, required: bool = True) -> pd.DataFrame | None:
        """Table ``name`` as a DataFrame; missing: FileNotFoundError (or None when not ``required``).

        A missing ``noise`` table reads as an empty (user, item, kind) frame.
        """
        require_folder(self.path)
        path = self.table_path(name)
        if not path.exists():
            if name == "noise":
                return pd.DataFrame({"user": [], "item": [], "kind": []})
            if not required:
                return None
            raise FileNotFoundError(f"{self.path} has no {path.name}")
        try:
            return pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(path)
        except (OSError, ValueError, UnicodeDecodeError) as err:  # pyarrow's errors are ValueError/OSError
            raise RunFolderError(f"{path} cannot be read ({_first_line(err)}); {self.FIX}") from None

    def tensors(self) -> dict[str, torch.Tensor]:
        """Saved weights (``model.pt``) loaded safely with ``weights_only=True``."""
        require_folder(self.path)
        path = self.path / self.MODEL
        if not path.exists():
            raise FileNotFoundError(f"{self.path} has no {self.MODEL}")
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # zip / unpickling errors of a damaged file
            raise RunFolderError(f"{path} cannot be read ({_first_line(err)}); {self.FIX}") from None


class RunLocked(FileExistsError):
    """The run folder is being written by another process (the message names it: pid, host, since when)."""


def holder_record() -> dict[str, Any]:
    """What a lock file holds about its holder: pid, host, start time and command line."""
    return {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time(),
            "command": " ".join(sys.argv) or "python"}


def read_holder(lock: Path) -> dict[str, Any] | None:
    """A lock file's holder record (`holder_record`), None when empty, unreadable or a link."""
    try:
        fd = os.open(lock, os.O_RDONLY | os.O_NOFOLLOW)
        with os.fdopen(fd) as handle:
            info = json.loads(handle.read())
    except (OSError, ValueError):
        return None
    return info if isinstance(info, dict) and "pid" in info else None


def describe_holder(info: dict[str, Any] | None, what: str) -> str:
    """``rankrobust run pid 1234 on HOST since 09:12`` (a vaguer text when the record is empty)."""
    if not info:
        return f"another rankrobust {what} (it has not written its pid yet)"
    started = info.get("started")
    when = ""
    if isinstance(started, (int, float)):
        local = time.localtime(started)
        when = " since " + time.strftime("%H:%M" if local[:3] == time.localtime()[:3] else "%Y-%m-%d %H:%M", local)
    return f"rankrobust {what} pid {info.get('pid')} on {info.get('host', '?')}{when}"


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0]}" if text else type(err).__name__


@dataclass
class Run:
    """A finished (or failed) run directory read back from disk (through its `RunDir`)."""

    path: Path
    status: str | None
    config: dict[str, Any]
    metrics: dict[str, Any]

    @property
    def dir(self) -> RunDir:
        return RunDir(self.path)

    def epochs(self) -> pd.DataFrame:
        """Per-epoch log."""
        return self.dir.table("epochs")

    def per_user(self) -> pd.DataFrame:
        """Per-user test metrics."""
        return self.dir.table("per_user")

    def noise(self) -> pd.DataFrame:
        """Injected pairs (user, item, kind); empty when none."""
        return self.dir.table("noise")

    def tensors(self) -> dict[str, torch.Tensor]:
        """Saved weights loaded safely with ``weights_only=True``."""
        return self.dir.tensors()

    def table(self, name: str, *, required: bool = False) -> pd.DataFrame | None:
        """Table ``name`` (see `RunDir.TABLES`) if present, else None (or FileNotFoundError if ``required``)."""
        return self.dir.table(name, required=required)


def load_run(run_dir: str | Path) -> Run:
    """Read a run directory; a missing folder or config raises FileNotFoundError naming it."""
    d = RunDir(run_dir)
    return Run(d.path, d.status(), d.config(), d.metrics())


class SweepDir:
    """The one owner of a sweep folder's names: ``sweep.json``, ``store.parquet``, ``runs/<cell id>/``, the lock.

    ``sweep.json`` records the spec of the last ``rankrobust sweep`` on the
    folder, including its cells (``cells``: cell id → `config_hash`) and the
    identity of each cell's data files when the sweep started (``data``: cell
    id → `rankrobust.data.identity.identity_digest`, None where the files
    could not be read); run folders of other cell ids are *stale* (a grid
    value or seed was removed from the spec) and are left out of results
    (`stale_runs`).
    """

    SPEC = "sweep.json"
    STORE = "store.parquet"
    RUNS = "runs"
    LOCK = ".sweep.lock"

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"SweepDir({str(self.path)!r})"

    @property
    def spec_path(self) -> Path:
        return self.path / self.SPEC

    @property
    def store_path(self) -> Path:
        return self.path / self.STORE

    @property
    def lock_path(self) -> Path:
        return self.path / self.LOCK

    @property
    def runs_path(self) -> Path:
        return self.path / self.RUNS

    def run(self, cell_id: str) -> RunDir:
        return RunDir(self.runs_path / cell_id)

    def missing_store(self) -> str | None:
        """Why there is no results store to read here, in one line naming what to pass instead; None: there is one.

        Tells apart a file, a single run folder (it holds a run's files; its
        metrics are in its ``metrics.json``), a missing folder and a sweep
        folder whose store is not written yet.
        """
        if self.store_path.is_file():
            return None
        problem = file_given_for_folder(self.path, "sweep folder")
        if problem:
            return problem
        how = "; pass a sweep folder (one written by `rankrobust sweep SPEC --out DIR`, holding store.parquet)"
        if not self.path.exists():
            return f"{self.path} does not exist{how}"
        held = [n for n in (RunDir.METRICS, RunDir.CONFIG, RunDir.STATUS) if (self.path / n).is_file()]
        if held:
            where = (f"its metrics are in {self.path / RunDir.METRICS}" if RunDir.METRICS in held
                     else f"it has no {RunDir.METRICS} (an unfinished run)")
            sweep = self.path.parent.parent
            owner = (f" such as the sweep folder it belongs to, {sweep}"
                     if self.path.parent.name == self.RUNS and SweepDir(sweep).store_path.is_file() else "")
            return f"{self.path} is a single run folder (it holds {held[0]}), not a sweep folder: {where}{how}{owner}"
        return f"no results store at {self.store_path}; run `rankrobust sweep SPEC --out {self.path}` first"

    def run_dirs(self) -> list[RunDir]:
        """Every run folder of the sweep, sorted by cell id."""
        root = self.runs_path
        return [RunDir(p) for p in sorted(root.iterdir()) if p.is_dir()] if root.exists() else []

    def spec(self) -> dict[str, Any] | None:
        """The recorded spec (``sweep.json``) or None; RunFolderError naming it when damaged (or the path a file)."""
        require_folder(self.path, "sweep folder")
        if not self.spec_path.exists():
            return None
        fix = (f"delete it and run `rankrobust sweep SPEC --out {self.path}` again to record the spec "
               f"(finished runs are kept)")
        data = read_json(self.spec_path, fix)
        if not isinstance(data, dict):
            raise RunFolderError(f"{self.spec_path} is not a sweep record (a JSON object); {fix}")
        return data

    def cells(self) -> dict[str, str | None] | None:
        """Cell id → config hash of the recorded spec's cells (hash None when not recorded); None: no record.

        Records written before cells were recorded give the ids of their grid ×
        seeds, with the grid keys in the record's (sorted) order: match run
        folder names against them with `current_cells`.
        """
        found = self._recorded_cells()
        return None if found is None else found[0]

    def _recorded_cells(self) -> tuple[dict[str, str | None], bool] | None:
        """(cell id → hash, ids recorded exactly) from ``sweep.json``; None without a usable record."""
        record = self.spec()
        if record is None:
            return None
        cells = record.get("cells")
        if isinstance(cells, dict):
            return {str(k): (v if isinstance(v, str) else None) for k, v in cells.items()}, True
        if isinstance(cells, list):
            return {str(k): None for k in cells}, True
        grid, seeds = record.get("grid"), record.get("seeds")
        if not isinstance(grid, dict) or not isinstance(seeds, list) or \
                not all(isinstance(v, list) for v in grid.values()):
            return None
        keys = list(grid)
        return {cell_id(dict(zip(keys, combo)), seed): None
                for combo in itertools.product(*(grid[k] for k in keys)) for seed in seeds}, False

    def recorded_data(self) -> dict[str, str | None]:
        """Cell id → identity digest of its data files as recorded in ``sweep.json`` ({} when none recorded)."""
        record = self.spec()
        data = record.get("data") if record else None
        if not isinstance(data, dict):
            return {}
        return {str(k): (v if isinstance(v, str) else None) for k, v in data.items()}

    def current_cells(self, names: list[str]) -> dict[str, str | None] | None:
        """Of the run folder ``names``, those that are cells of the recorded spec → their recorded config hash.

        A name left out is *stale* (not a cell of the spec).  None when no spec
        is recorded (every run counts as current).  Against an old record
        without ``cells`` the grid keys may be in any order in a name.
        """
        found = self._recorded_cells()
        if found is None:
            return None
        cells, exact = found
        if exact:
            return {n: cells[n] for n in names if n in cells}

        def canonical(name: str) -> str:
            return "__".join(sorted(name.split("__")))

        known = {canonical(k) for k in cells}
        return {n: None for n in names if canonical(n) in known}

    def stale_runs(self) -> list[RunDir]:
        """Run folders whose cell id is not a cell of the recorded spec ([] when no spec is recorded)."""
        folders = self.run_dirs()
        current = self.current_cells([d.path.name for d in folders])
        return [] if current is None else [d for d in folders if d.path.name not in current]

    def write_spec(self, doc: dict[str, Any]) -> None:
        write_json(self.spec_path, doc)

    def name(self) -> str:
        """The sweep's spec name (the folder name when no spec is recorded)."""
        spec = self.spec()
        return spec["name"] if spec else self.path.name
