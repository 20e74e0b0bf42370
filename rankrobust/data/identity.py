"""Data identity: which files a run read, and a fingerprint (size + sha256) of each.

A run records the fingerprint of every data file it read (``metrics.json``,
section ``data_files``: split → ``{"path", "size", "sha256"}``), the
in-process dataset cache (`rankrobust.experiment.load_data`) is keyed by
them, and a sweep re-runs a cell whose recorded fingerprints differ from the
files' current ones.  So rewriting a file at the same path is never mistaken
for the old data.

Hashing costs about 0.1 s per 50 MB, so each file is hashed once per process
per *stat signature* (resolved path, inode, size, mtime and ctime in ns) and
the digest reused while the signature holds; any write changes mtime and
ctime, so a rewritten file is hashed again.  ``ctime`` cannot be set back by
a user (``touch -d`` sets only mtime), so restoring an old mtime does not hide
a change.

The identity of a dataset is its files' sizes and sha256 (`identity_digest`);
paths do not enter it, so moving a data folder keeps the runs current.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from rankrobust.data.errors import DataFormatError, DataNotFoundError
from rankrobust.data.hashing import sha256_file

__all__ = ["FileFingerprint", "sha256_file", "fingerprint", "data_files", "data_identity", "identity_digest",
           "recorded_digest", "current_digest"]

#: most stat signatures whose digest is remembered (oldest forgotten first)
_CACHE_SIZE = 1024
_DIGESTS: dict[tuple, str] = {}


def stat_signature(path: str | os.PathLike) -> tuple:
    """(resolved path, inode, size, mtime_ns, ctime_ns) of ``path``; FileNotFoundError when missing."""
    p = Path(path).resolve()
    st = os.stat(p)
    return (str(p), st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


@dataclass(frozen=True)
class FileFingerprint:
    """One data file as a run read it: ``path`` (resolved), ``size`` in bytes, ``sha256`` (hex).

    ``signature`` is the file's stat signature when it was hashed (not part
    of the record, nor of equality).
    """

    path: str
    size: int
    sha256: str
    signature: tuple = field(default=(), compare=False, repr=False)

    def record(self) -> dict[str, Any]:
        """The JSON form stored in a run record: ``{"path", "size", "sha256"}``."""
        return {"path": self.path, "size": self.size, "sha256": self.sha256}

    def unchanged(self) -> bool:
        """True while the file on disk still has the stat signature it had when hashed."""
        try:
            return stat_signature(self.path) == self.signature
        except OSError:
            return False


def fingerprint(path: str | os.PathLike) -> FileFingerprint:
    """Size and sha256 of ``path``, hashed once per process per stat signature.

    A file that changes while it is hashed is hashed again (up to 3 times).
    Raises DataNotFoundError (a FileNotFoundError) naming a missing file and
    DataFormatError for a folder.
    """
    if Path(path).is_dir():
        raise DataFormatError(path, "is a directory, expected a file")
    for _ in range(3):
        try:
            before = stat_signature(path)
        except FileNotFoundError:
            raise DataNotFoundError(f"{path}: no such file") from None
        digest = _DIGESTS.get(before)
        if digest is None:
            digest = sha256_file(before[0])
            if stat_signature(before[0]) != before:  # written to while we read it: hash again
                continue
            if len(_DIGESTS) >= _CACHE_SIZE:
                _DIGESTS.pop(next(iter(_DIGESTS)))
            _DIGESTS[before] = digest
        return FileFingerprint(before[0], before[2], digest, before)
    raise OSError(f"{path} kept changing while it was hashed; wait until whatever writes it has finished")


def data_files(dc: Any) -> dict[str, Path]:
    """The files a data config reads, split → path (``train``, ``test`` and, when it has one, ``valid``).

    ``dc`` is a `rankrobust.config.DataConfig` (or anything with its fields):
    user files (``train_path``, ``test_path``, ``valid_path``) or the files of
    the registered dataset ``name`` (`rankrobust.data.registry.dataset_files`).
    Raises ValueError for an unknown dataset name and DataNotFoundError when
    a registered dataset's files are missing.
    """
    if getattr(dc, "train_path", None) is not None:
        files = {"train": Path(dc.train_path), "test": Path(dc.test_path)}
        if getattr(dc, "valid_path", None) is not None:
            files["valid"] = Path(dc.valid_path)
        return files
    from rankrobust.data.registry import dataset_files

    return dataset_files(dc.name, data_dir=getattr(dc, "data_dir", None))


def data_identity(dc: Any) -> dict[str, FileFingerprint]:
    """Fingerprint of every file `data_files` names, split → `FileFingerprint`.

    Raises DataNotFoundError naming the config key of a missing user file.
    """
    out = {}
    for split, path in data_files(dc).items():
        try:
            out[split] = fingerprint(path)
        except DataNotFoundError:
            key = f"data.{split}_path" if getattr(dc, "train_path", None) is not None else f"data.name = {dc.name!r}"
            raise DataNotFoundError(f"{path}: no such file ({key}); check the path") from None
    return out


def identity_digest(records: Mapping[str, Mapping[str, Any]]) -> str:
    """A short digest of a dataset's identity: the splits' sizes and sha256, not their paths.

    ``records``: split → ``{"size", "sha256", ...}`` (as stored in a run
    record, or `FileFingerprint.record`).  Equal content, equal digest.
    """
    core = {split: [int(r["size"]), str(r["sha256"])] for split, r in records.items()}
    return hashlib.sha256(json.dumps(core, sort_keys=True).encode()).hexdigest()[:16]


def recorded_digest(metrics: Mapping[str, Any]) -> str | None:
    """`identity_digest` of the ``data_files`` a run recorded in ``metrics.json``; None when it recorded none."""
    files = metrics.get("data_files") if isinstance(metrics, Mapping) else None
    if not isinstance(files, Mapping) or not files:
        return None
    try:
        return identity_digest(files)
    except (KeyError, TypeError, ValueError):
        return None


def current_digest(dc: Any) -> str | None:
    """`identity_digest` of the files ``dc`` reads now; None when they cannot be found or read."""
    try:
        return identity_digest({s: f.record() for s, f in data_identity(dc).items()})
    except (OSError, ValueError):
        return None
