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
    with atomic_path(path) as tmp:
        torch.save({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, tmp)


def read_status(run_dir: str | Path) -> str | None:
    """``"done"``, ``"failed"`` or None (missing: never finished or interrupted)."""
    path = Path(run_dir) / "status"
    if not path.exists():
        return None
    first = path.read_text().split("\n", 1)[0].strip()
    return first or None


def write_status(run_dir: str | Path, status: str, detail: str = "") -> None:
    """Write the ``status`` file last: ``done`` or ``failed`` followed by ``detail`` (a traceback)."""
    if status not in (STATUS_DONE, STATUS_FAILED):
        raise ValueError(f"status must be 'done' or 'failed', got {status!r}")
    write_text(Path(run_dir) / "status", status + ("\n" + detail if detail else "") + "\n")


def clear_status(run_dir: str | Path) -> None:
    """Remove a previous ``status`` before a run directory is (re)written."""
    (Path(run_dir) / "status").unlink(missing_ok=True)


@dataclass
class Run:
    """A finished (or failed) run directory read back from disk."""

    path: Path
    status: str | None
    config: dict[str, Any]
    metrics: dict[str, Any]

    def epochs(self) -> pd.DataFrame:
        """Per-epoch log (``epochs.csv``)."""
        return pd.read_csv(self.path / "epochs.csv")

    def per_user(self) -> pd.DataFrame:
        """Per-user test metrics (``per_user.parquet``)."""
        return pd.read_parquet(self.path / "per_user.parquet")

    def noise(self) -> pd.DataFrame:
        """Injected pairs (``noise.parquet``: user, item, kind); empty when none."""
        path = self.path / "noise.parquet"
        if not path.exists():
            return pd.DataFrame({"user": [], "item": [], "kind": []})
        return pd.read_parquet(path)

    def tensors(self) -> dict[str, torch.Tensor]:
        """Saved weights (``model.pt``) loaded safely with ``weights_only=True``."""
        return torch.load(self.path / "model.pt", map_location="cpu", weights_only=True)

    def optional_frame(self, name: str) -> pd.DataFrame | None:
        """Read ``name`` (csv or parquet) from the run if it exists, else None."""
        path = self.path / name
        if not path.exists():
            return None
        return pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(path)


def load_run(run_dir: str | Path) -> Run:
    """Read a run directory; a missing folder or config raises FileNotFoundError naming it."""
    path = Path(run_dir)
    if not (path / "config.json").exists():
        raise FileNotFoundError(f"{path} is not a run directory (no config.json)")
    metrics_path = path / "metrics.json"
    metrics = json.loads(metrics_path.read_text()) if metrics_path.exists() else {}
    return Run(path, read_status(path), json.loads((path / "config.json").read_text()), metrics)
