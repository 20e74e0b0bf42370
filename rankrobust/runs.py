"""Run directories: one folder per training run, written atomically.

Layout (see ../shared/DESIGN.md)::

    config.json        resolved RunConfig
    metrics.json       {"valid": {...}, "test": {...}, "best_epoch": n, "leaky_validation": bool, ...}
    epochs.csv         per-epoch loss, validation metric and timings
    per_user.parquet   per-user test metrics
    noise.parquet      injected pairs (user, item, kind)
    model.pt           dict of tensors (raw and final embeddings), load with weights_only=True
    status             "done" or "failed\\n<traceback>", written last

Every file is written to a temporary name in the same folder and moved into
place with ``os.replace``, so a reader never sees half a file; ``status`` is
written last, so a run counts as finished only when its status says ``done``.
"""
from __future__ import annotations

import io
import json
import os
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import pandas as pd
import torch

STATUS_DONE = "done"
STATUS_FAILED = "failed"


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success move it onto ``path``.

    On an exception the temporary file is removed and ``path`` is untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
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


def read_status(run_dir: str | Path) -> str | None:
    """``"done"``, ``"failed"`` or None (missing: never finished or interrupted)."""
    path = Path(run_dir) / RunDir.STATUS
    if not path.exists():
        return None
    first = path.read_text().split("\n", 1)[0].strip()
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
    ``fairness``, ``variance``.  Every write is atomic (temp file +
    ``os.replace``); ``status`` is written last.
    """

    CONFIG = "config.json"
    METRICS = "metrics.json"
    MODEL = "model.pt"
    STATUS = "status"
    #: table name → file name (the suffix picks CSV or parquet)
    TABLES: dict[str, str] = {
        "epochs": "epochs.csv",
        "per_user": "per_user.parquet",
        "noise": "noise.parquet",
        "fairness": "fairness.parquet",
        "variance": "variance.csv",
    }

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    def __fspath__(self) -> str:
        return str(self.path)

    # ------------------------------------------------------------------ writing
    def prepare(self, overwrite: bool = False) -> None:
        """Create the folder for a new run; FileExistsError if it holds files and not ``overwrite``."""
        if self.path.exists() and any(self.path.iterdir()) and not overwrite:
            raise FileExistsError(f"{self.path} already holds files; pass --overwrite or choose another --out")
        self.path.mkdir(parents=True, exist_ok=True)
        clear_status(self.path)

    def write_config(self, config_json: str) -> None:
        write_text(self.path / self.CONFIG, config_json.rstrip("\n") + "\n")

    def write_metrics(self, metrics: dict[str, Any]) -> None:
        write_json(self.path / self.METRICS, metrics)

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

    # ------------------------------------------------------------------ reading
    def exists(self) -> bool:
        return (self.path / self.CONFIG).exists()

    def status(self) -> str | None:
        return read_status(self.path)

    def failure(self) -> str:
        """Last line of a failed run's traceback ('' when none)."""
        path = self.path / self.STATUS
        lines = path.read_text().strip().splitlines() if path.exists() else []
        return lines[-1] if len(lines) > 1 else ""

    def config(self) -> dict[str, Any]:
        """``config.json`` as a dict; FileNotFoundError naming the folder when missing."""
        path = self.path / self.CONFIG
        if not path.exists():
            raise FileNotFoundError(f"{self.path} is not a run directory (no {self.CONFIG})")
        return json.loads(path.read_text())

    def metrics(self) -> dict[str, Any]:
        """``metrics.json`` as a dict ({} when the run has none yet)."""
        path = self.path / self.METRICS
        return json.loads(path.read_text()) if path.exists() else {}

    def has_table(self, name: str) -> bool:
        return self.table_path(name).exists()

    def table(self, name: str, *, required: bool = True) -> pd.DataFrame | None:
        """Table ``name`` as a DataFrame; missing: FileNotFoundError (or None when not ``required``).

        A missing ``noise`` table reads as an empty (user, item, kind) frame.
        """
        path = self.table_path(name)
        if not path.exists():
            if name == "noise":
                return pd.DataFrame({"user": [], "item": [], "kind": []})
            if not required:
                return None
            raise FileNotFoundError(f"{self.path} has no {path.name}")
        return pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(path)

    def tensors(self) -> dict[str, torch.Tensor]:
        """Saved weights (``model.pt``) loaded safely with ``weights_only=True``."""
        return torch.load(self.path / self.MODEL, map_location="cpu", weights_only=True)


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
    """The one owner of a sweep folder's names: ``sweep.json``, ``store.parquet``, ``runs/<cell id>/``."""

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

    def run_dirs(self) -> list[RunDir]:
        """Every run folder of the sweep, sorted by cell id."""
        root = self.runs_path
        return [RunDir(p) for p in sorted(root.iterdir()) if p.is_dir()] if root.exists() else []

    def spec(self) -> dict[str, Any] | None:
        """The recorded spec (``sweep.json``) or None."""
        return json.loads(self.spec_path.read_text()) if self.spec_path.exists() else None

    def write_spec(self, doc: dict[str, Any]) -> None:
        write_json(self.spec_path, doc)

    def name(self) -> str:
        """The sweep's spec name (the folder name when no spec is recorded)."""
        spec = self.spec()
        return spec["name"] if spec else self.path.name
