"""Named datasets, where their files live, and how to fetch them.

``lastfm`` ships inside the package (``rankrobust/data/embedded/lastfm``, see
its README for provenance and terms).  The others are read from a data
directory holding ``<name>/train.txt.gz`` and ``<name>/test.txt.gz`` (plain
``.txt`` also works) in LightGCN format.  The data directory is, in order:

1. the ``data_dir`` argument (``--data-dir`` on the command line);
2. the environment variable ``RANKROBUST_DATA``;
3. ``./data`` (where ``rankrobust download NAME`` puts a dataset by default),
   then ``../shared/data`` relative to the current directory, or to the
   repository root when rankrobust runs from a source checkout.

``rankrobust download NAME --dest DIR`` fetches an external dataset from its
public source into ``DIR/NAME`` (`rankrobust.data.downloads`).
"""
from __future__ import annotations

import dataclasses
import difflib
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from rankrobust.data.downloads import KNOWN_SHA256, download
from rankrobust.data.errors import DataFormatError, DataNotFoundError
from rankrobust.data.interactions import Interactions
from rankrobust.data.readers import _factorize, _maybe_int, _read_lightgcn_full, _read_table_frame, is_table_path
from rankrobust.data.splits import Dataset, carve_validation
from rankrobust.registry import Registry

__all__ = ["DatasetInfo", "list_datasets", "load_dataset", "load_files", "dataset_files", "files_label", "download",
           "KNOWN_SHA256", "EMBEDDED_DIR", "resolve_data_dir"]

ENV_VAR = "RANKROBUST_DATA"
#: where `rankrobust download NAME` puts NAME/ without --dest or $RANKROBUST_DATA (relative to the working folder)
DOWNLOAD_DIR = "data"
EMBEDDED_DIR = Path(__file__).resolve().parent / "embedded"
_REPO_ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class _Spec:
    description: str
    embedded: bool = False


#: every dataset a config can name (``data.name``); datasets have no options of their own
DATASETS: Registry = Registry("dataset")
DATASETS.register('lastfm')(_Spec("Last.fm (HetRec 2011) artists, 10-core users, 5-core items, warm 80/10/10 split "
                      "(1,812 users, 2,762 items, 70K pairs); embedded default", True))
DATASETS.register('yelp2018')(_Spec("Yelp2018, LightGCN split (31,668 users, 38,048 items, 1.56M pairs)"))
DATASETS.register('gowalla')(_Spec("Gowalla check-ins, LightGCN split (29,858 users, 40,981 items, 1.03M pairs)"))
DATASETS.register('ml')(_Spec("MovieLens-1M subset used by BSL / Adap-tau (6,022 users, 3,043 items, 0.9M pairs)"))
DATASETS.register('ml-100k')(_Spec("MovieLens-100K, IR-Benchmark 10-core 80/20 split (939 users, 1,016 items)"))

@dataclass(frozen=True)
class DatasetInfo:
    """One registered dataset as `list_datasets` reports it.

    ``where`` is the folder its files are (or would be) read from.
    """

    name: str
    description: str
    where: str
    available: bool
    embedded: bool = False


# ------------------------------------------------------------------ locating
def _candidate_dirs(data_dir: str | os.PathLike | None) -> tuple[list[Path], str]:
    """Data directories to search, in order, and a phrase saying where they came from."""
    if data_dir is not None:
        return [Path(data_dir).expanduser()], "the data_dir argument (--data-dir)"
    env = os.environ.get(ENV_VAR)
    if env:
        return [Path(env).expanduser()], f"${ENV_VAR}"
    cands = [Path.cwd() / DOWNLOAD_DIR, Path.cwd().parent / "shared" / "data"]
    if (_REPO_ROOT / "pyproject.toml").exists():
        repo_cand = _REPO_ROOT.parent / "shared" / "data"
        if repo_cand.resolve() != cands[1].resolve():
            cands.append(repo_cand)
    return cands, f"the default locations (./{DOWNLOAD_DIR}, ../shared/data)"


def resolve_data_dir(data_dir: str | os.PathLike | None = None) -> Path | None:
    """The data directory that would be searched first and exists, or ``None``."""
    cands, _ = _candidate_dirs(data_dir)
    return next((c for c in cands if c.is_dir()), None)


def _split_file(folder: Path, split: str) -> Path | None:
    for suffix in (".txt.gz", ".txt"):
        p = folder / f"{split}{suffix}"
        if p.is_file():
            return p
    return None


def _canonical(name: str) -> str:
    key = name.strip().lower()
    if key not in DATASETS:
        close = difflib.get_close_matches(key, list(DATASETS), n=1, cutoff=0.4)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"unknown dataset {name!r}{hint} Known datasets: {', '.join(DATASETS)}")
    return key


def _external_folder(name: str, data_dir) -> tuple[Path | None, list[Path], str]:
    cands, origin = _candidate_dirs(data_dir)
    for c in cands:
        folder = c / name
        if _split_file(folder, "train") and _split_file(folder, "test"):
            return folder, cands, origin
    return None, cands, origin


def list_datasets(data_dir: str | os.PathLike | None = None) -> list[DatasetInfo]:
    """All registered datasets, with where their files are and whether they are present."""
    out = []
    for name, spec in DATASETS.items():
        if spec.embedded:
            folder = EMBEDDED_DIR / name
            ok = all(_split_file(folder, s) for s in ("train", "valid", "test"))
            out.append(DatasetInfo(name, spec.description, str(folder), bool(ok), True))
            continue
        folder, cands, _ = _external_folder(name, data_dir)
        where = folder if folder is not None else cands[0] / name
        out.append(DatasetInfo(name, spec.description, str(where), folder is not None, False))
    return out


# ------------------------------------------------------------------- loading
def _assemble(name: str, source: str, train: tuple, test: tuple, valid: tuple | None, n_users_seen: int,
              valid_fraction: float, seed: int, valid_is_test: bool, test_path: Path) -> Dataset:
    """Build the Dataset from (users, items) pair tuples; shape = max id over all splits + 1.

    What is odd but not fatal about the test file ``test_path`` (pairs also in
    train, a few cold users) goes into ``Dataset.notes``, naming the file.
    """
    parts = [train, test] + ([valid] if valid is not None else [])
    n_users = max([n_users_seen] + [int(u.max()) + 1 for u, _ in parts if len(u)])
    n_items = max([0] + [int(i.max()) + 1 for _, i in parts if len(i)])
    tr = Interactions.from_pairs(*train, n_users, n_items)
    te = Interactions.from_pairs(*test, n_users, n_items)
    va = Interactions.from_pairs(*valid, n_users, n_items) if valid is not None else None
    if tr.nnz == 0:
        raise DataFormatError(source, "the training split holds no interactions")
    overlap = te.nnz - te.difference(tr).nnz
    pairs = "test pair also occurs" if overlap == 1 else "test pairs also occur"
    notes = ([f"{test_path}: {overlap:,} {pairs} in train (scored as hits although training saw them)"]
             if overlap else [])
    cold = _check_cold(source, test_path, tr, te)
    if cold:
        notes.append(cold)
    if valid_is_test:
        if va is not None:  # the shipped validation pairs go back into training
            tr = tr.union(va)
        return Dataset(name, tr, te, te, leaky_validation=True, source=source, notes=tuple(notes))
    if va is None:
        tr, va = carve_validation(tr, valid_fraction, seed)
    return Dataset(name, tr, va, te, leaky_validation=False, source=source, notes=tuple(notes))


def _check_dense_ids(name: str, paths: dict, parts: list) -> None:
    """Registered datasets use contiguous ids; refuse files where most ids in 0..max never occur.

    Such a file (an id typed with extra digits, say) would silently create
    millions of items that never occur, or allocate absurd memory.
    """
    for axis, kind in ((0, "user"), (1, "item")):
        ids = np.concatenate([p[axis] for p in parts])
        if not len(ids):
            continue
        top, distinct = int(ids.max()), len(np.unique(ids))
        if top + 1 > 2 * distinct:
            where = ", ".join(str(p) for p in paths.values() if p is not None)
            raise DataFormatError(where, f"{name}: the largest {kind} id is {top:,} but only {distinct:,} distinct "
                                         f"{kind} ids occur; the ids of a registered dataset are contiguous (0..n-1), "
                                         f"so a file holds an out-of-range id; restore the original files")


#: share of test users without any training interaction above which a split is refused
COLD_TEST_USERS_LIMIT = 0.5


def _check_cold(source: str, test_path: Path, train: Interactions, test: Interactions) -> str | None:
    """Refuse a test split whose users are mostly absent from train; a note (naming ``test_path``) when some are.

    Such users can only get recommendations from untrained embeddings; most
    often it means the ids of the files do not refer to the same entities.
    """
    test_users = test.user_counts() > 0
    if not test_users.any():
        return None
    cold = test_users & (train.user_counts() == 0)
    share = cold.sum() / test_users.sum()
    if share > COLD_TEST_USERS_LIMIT:
        raise DataFormatError(source, f"{cold.sum():,} of {test_users.sum():,} test users ({share:.0%}) have no "
                                      f"training interaction: the files' ids probably do not refer to the same "
                                      f"users (check how ids are written in each file)")
    if not cold.any():
        return None
    return (f"{test_path}: {cold.sum():,} of {test_users.sum():,} test users "
            f"{'has' if cold.sum() == 1 else 'have'} no training interaction (evaluated from untrained embeddings)")


def _read_split(path: Path) -> tuple[tuple[np.ndarray, np.ndarray], int]:
    u, i, seen = _read_lightgcn_full(path)
    return (u, i), seen


def dataset_files(name: str, data_dir: str | os.PathLike | None = None) -> dict[str, Path]:
    """The files `load_dataset` reads for ``name``: split → path (``train``, ``test``, and ``valid`` for lastfm).

    Raises:
        ValueError: unknown name (the message suggests the closest one).
        DataNotFoundError: the files are missing; the message says where it
            looked and how to get the data (``rankrobust download NAME``).
    """
    key = _canonical(name)
    if DATASETS[key].embedded:
        folder = EMBEDDED_DIR / key
        paths = {s: _split_file(folder, s) for s in ("train", "valid", "test")}
        if not all(paths.values()):
            raise DataNotFoundError(f"embedded dataset {key!r} is missing from {folder}; reinstall rankrobust "
                                    f"or rebuild it with scripts/build_lastfm.py")
        return {s: p for s, p in paths.items() if p is not None}
    folder, cands, origin = _external_folder(key, data_dir)
    if folder is None:
        looked = ", ".join(str(c / key) for c in cands)
        for c in cands:  # one split there, the other missing: say which
            have = {s for s in ("train", "test") if _split_file(c / key, s)}
            if len(have) == 1:
                (missing,) = {"train", "test"} - have
                raise DataNotFoundError(
                    f"dataset {key!r} is incomplete in {c / key}: {_split_file(c / key, have.pop())} is there but "
                    f"{missing}.txt(.gz) is not; restore it (`rankrobust download {key} --dest {c}`)")
        raise DataNotFoundError(
            f"dataset {key!r} not found: looked for {key}/train.txt(.gz) and {key}/test.txt(.gz) in {looked} "
            f"(from {origin}). Download it with `rankrobust download {key} --dest DIR` and pass --data-dir DIR "
            f"(or set {ENV_VAR}=DIR), or point --data-dir at a folder holding {key}/.")
    return {s: _split_file(folder, s) for s in ("train", "test")}  # type: ignore[misc]


def files_label(train_path: str | os.PathLike) -> str:
    """How runs on user files are labelled (``Dataset.name``, the store's ``data.name``): ``<folder>/<file stem>``.

    ``data/myset/train.txt.gz`` → ``myset/train``; never a registered
    dataset's name, so such runs are not mistaken for the default dataset.
    """
    path = Path(train_path)
    stem = path.name.split(".")[0] or path.name
    folder = path.resolve().parent.name
    return f"{folder}/{stem}" if folder else stem


def load_dataset(name: str, data_dir: str | os.PathLike | None = None, valid_fraction: float = 0.1,
                 seed: int = 0, valid_is_test: bool = False) -> Dataset:
    """Load a registered dataset as train / valid / test `Interactions`.

    ``n_users`` / ``n_items`` are the largest ids over all splits plus one.
    For external datasets (``yelp2018``, ``gowalla``, ``ml``, ``ml-100k``) the
    validation split is carved from train with ``carve_validation(train,
    valid_fraction, seed)``.  The embedded ``lastfm`` ships its own validation
    split (``valid_fraction`` and ``seed`` are then unused).  The files read
    are `dataset_files` ``(name, data_dir)``.

    ``valid_is_test=True`` reproduces the authors' protocol: valid is the test
    set, ``leaky_validation`` is True, nothing is carved from train, and for
    ``lastfm`` the shipped validation pairs are added back to train.

    Raises:
        ValueError: unknown name (the message suggests the closest one).
        DataNotFoundError: the files are missing; the message says where it
            looked and how to get the data (``rankrobust download NAME``).
        DataFormatError: a file is malformed.
    """
    key = _canonical(name)
    paths: dict[str, Path | None] = dict(dataset_files(key, data_dir))
    paths.setdefault("valid", None)
    folder = paths["train"].parent  # type: ignore[union-attr]
    source = ("embedded:" if DATASETS[key].embedded else "") + str(folder)
    train, seen_tr = _read_split(paths["train"])  # type: ignore[arg-type]
    test, seen_te = _read_split(paths["test"])  # type: ignore[arg-type]
    valid, seen_va = _read_split(paths["valid"]) if paths["valid"] is not None else (None, 0)
    _check_dense_ids(key, paths, [train, test] + ([valid] if valid is not None else []))
    dataset = _assemble(key, source, train, test, valid, max(seen_tr, seen_te, seen_va),
                        valid_fraction, seed, valid_is_test, paths["test"])  # type: ignore[arg-type]
    other = Path(data_dir).expanduser() / key if data_dir is not None else None
    if DATASETS[key].embedded and other is not None and other.exists():  # the user may expect those files
        dataset = dataclasses.replace(dataset, notes=dataset.notes + (
            f"{other} was not read: {key!r} is the embedded dataset ({folder}), whatever --data-dir says; to train "
            f"on the files in {other}, pass data.train_path=... and data.test_path=... (--set)",))
    return dataset


def load_files(train: str | os.PathLike, test: str | os.PathLike, valid: str | os.PathLike | None = None,
               valid_fraction: float = 0.1, seed: int = 0, valid_is_test: bool = False, name: str | None = None,
               user_col: str = "user", item_col: str = "item") -> Dataset:
    """Load a dataset from user-given files.

    The files are LightGCN text (plain or ``.gz``), or all tables (``.csv``,
    ``.tsv``, ``.parquet``; read with `read_table` conventions, ids of all
    splits remapped jointly to contiguous ids in sorted order of the original
    ids).  Without ``valid`` the validation split is carved from train with
    ``carve_validation(train, valid_fraction, seed)``; ``valid_is_test`` makes
    valid the test set (``leaky_validation=True``; a given ``valid`` file is
    then added to train).  ``name`` defaults to the train file's parent folder.

    Returns:
        `Dataset` whose shape is the largest id over all splits plus one.
    """
    files = {"train": Path(train), "test": Path(test)}
    if valid is not None:
        files["valid"] = Path(valid)
    label = name or files_label(files["train"])
    source = ", ".join(f"{k}={v}" for k, v in files.items())
    tables = [is_table_path(p) for p in files.values()]
    if any(tables) and not all(tables):
        raise ValueError(f"mix of table and LightGCN files ({source}); use one format for all splits")
    if all(tables):
        frames = {k: _read_table_frame(p, user_col, item_col, None, None) for k, p in files.items()}
        all_rows = pd.concat(list(frames.values()), ignore_index=True)
        # ids are matched by value across files: canonicalise them jointly ("3" and "3.0" are one id)
        all_rows = all_rows.assign(user=_maybe_int(all_rows["user"]), item=_maybe_int(all_rows["item"]))
        sizes = {k: len(f) for k, f in frames.items()}
    else:
        reads = {k: _read_lightgcn_full(p)[:2] for k, p in files.items()}
        all_rows = pd.DataFrame({"user": np.concatenate([u for u, _ in reads.values()]),
                                 "item": np.concatenate([i for _, i in reads.values()])})
        sizes = {k: len(u) for k, (u, _) in reads.items()}
    # user files are remapped jointly to contiguous ids (sorted by original id), so the same
    # interactions give the same numbers however the ids are spelled (gaps, offsets, strings)
    ucodes, user_ids = _factorize(all_rows["user"])
    icodes, item_ids = _factorize(all_rows["item"])
    pairs, start = {}, 0
    for k, n in sizes.items():
        pairs[k] = (ucodes[start:start + n], icodes[start:start + n])
        start += n
    dataset = _assemble(label, source, pairs["train"], pairs["test"], pairs.get("valid"), 0,
                        valid_fraction, seed, valid_is_test, files["test"])
    return dataclasses.replace(dataset, user_ids=user_ids, item_ids=item_ids)
