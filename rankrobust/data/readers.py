"""Readers for interaction files.

* `read_lightgcn`: the LightGCN text format (docs/PROTOCOLS.md §8), one line per
  user, ``user item item ...`` with 0-based integer ids, plain or gzip.  The
  parser is vectorised over the raw bytes (no per-line Python loop), so the
  1.2M-pair Yelp2018 train file reads in well under a second; when the bytes
  are not a valid file it locates the first bad token and raises a
  `DataFormatError` naming the file, the line and the problem.
* `read_table`: CSV / TSV / parquet tables of ``(user, item[, timestamp])``
  rows with arbitrary ids, remapped to contiguous 0-based ids.
"""
from __future__ import annotations

import gzip
import os
import re
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from rankrobust.data.errors import DataFormatError, DataNotFoundError
from rankrobust.data.interactions import Interactions
from rankrobust.safe_io import open_nofollow

__all__ = ["read_lightgcn", "read_table", "TableData", "write_lightgcn"]

_GZIP_MAGIC = b"\x1f\x8b"
_MAX_DIGITS = 18  # every 18-digit decimal fits in int64
_POW10 = 10 ** np.arange(_MAX_DIGITS, dtype=np.int64)
# whitespace accepted between tokens: space, \t, \n, \v, \f, \r
_WS_BYTES = (32, 9, 10, 11, 12, 13)


# --------------------------------------------------------------------- bytes
def _read_bytes(path: str | os.PathLike) -> bytes:
    """The (decompressed) content of ``path``; gzip is detected by suffix or magic bytes."""
    p = Path(path)
    if not p.exists():
        raise DataNotFoundError(f"{path}: no such file")
    if p.is_dir():
        raise DataFormatError(path, "is a directory, expected a file")
    raw = p.read_bytes()
    if p.suffix == ".gz" or raw[:2] == _GZIP_MAGIC:
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as exc:
            raise DataFormatError(path, f"not a valid gzip file ({exc})") from None
    return raw


def _bad_token(data: bytes, pos: int, path, line_of) -> DataFormatError:
    """A DataFormatError for the whitespace-delimited token that contains byte ``pos``."""
    line_start = data.rfind(b"\n", 0, pos) + 1
    line_end = data.find(b"\n", pos)
    line_end = len(data) if line_end < 0 else line_end
    line = data[line_start:line_end]
    k = pos - line_start
    ws = set(_WS_BYTES)
    a = k
    while a > 0 and line[a - 1] not in ws:
        a -= 1
    b = k
    while b < len(line) and line[b] not in ws:
        b += 1
    token = line[a:b].decode("utf-8", errors="replace")
    kind = "item" if line[:a].strip() else "user"
    if re.fullmatch(r"-[0-9]+", token):
        problem = f"{kind} id {token!r} is negative (ids must be non-negative integers)"
    else:
        problem = f"{kind} id {token!r} is not a non-negative integer"
    return DataFormatError(path, problem, line_of(pos))


def _parse_lightgcn(data: bytes, path) -> tuple[np.ndarray, np.ndarray, int]:
    """Parse LightGCN-format bytes into (users [N], items [N], n_users_seen).

    ``n_users_seen`` is the largest user id on any line, including lines with
    no items, plus one (0 when the file holds no lines).
    """
    b = np.frombuffer(data, dtype=np.uint8)
    newlines = np.flatnonzero(b == 10)

    def line_of(pos: int) -> int:
        return int(np.searchsorted(newlines, pos, side="right")) + 1

    digit = (b >= 48) & (b <= 57)
    ok = digit.copy()
    for c in _WS_BYTES:
        ok |= b == c
    if not ok.all():
        raise _bad_token(data, int(np.argmin(ok)), path, line_of)
    if not digit.any():
        raise DataFormatError(path, "file is empty (no user lines)")

    # token boundaries: a token is a maximal run of digits
    d = np.concatenate(([False], digit, [False]))
    starts = np.flatnonzero(d[1:-1] & ~d[:-2])
    ends = np.flatnonzero(d[1:-1] & ~d[2:]) + 1
    lengths = ends - starts
    line_idx = np.searchsorted(newlines, starts)  # 0-based line of each token
    first = np.ones(len(starts), dtype=bool)
    first[1:] = line_idx[1:] != line_idx[:-1]

    if lengths.max() > _MAX_DIGITS:
        t = int(np.argmax(lengths > _MAX_DIGITS))
        kind = "user" if first[t] else "item"
        token = data[starts[t]:ends[t]].decode()
        raise DataFormatError(path, f"{kind} id {token!r} is too large (more than {_MAX_DIGITS} digits)",
                              int(line_idx[t]) + 1)

    # value of each token: sum of digit * 10^(position from the token's end)
    pos = np.flatnonzero(digit)
    tok_of_digit = np.repeat(np.arange(len(starts)), lengths)
    contrib = (b[pos].astype(np.int64) - 48) * _POW10[ends[tok_of_digit] - 1 - pos]
    offsets = np.zeros(len(starts), dtype=np.int64)
    np.cumsum(lengths[:-1], out=offsets[1:])
    values = np.add.reduceat(contrib, offsets)

    line_users = values[first]
    group = np.cumsum(first) - 1
    _refuse_row_table(path, np.bincount(group), line_users)
    users = line_users[group[~first]]
    items = values[~first]
    return users.astype(np.int64), items.astype(np.int64), int(line_users.max()) + 1


def _refuse_row_table(path, tokens_per_line: np.ndarray, line_users: np.ndarray) -> None:
    """DataFormatError for a table of ``user item rating [timestamp]`` rows given where LightGCN lines are read.

    LightGCN text has one line per user; a file whose every line holds the
    same 3 or 4 numbers with user ids repeating across lines is a row table
    (MovieLens ``u.data``): read as LightGCN, its ratings and timestamps would
    become item ids, silently.
    """
    if len(line_users) < 2 or tokens_per_line.min() != tokens_per_line.max() or tokens_per_line[0] not in (3, 4):
        return
    if len(np.unique(line_users)) == len(line_users):
        return
    k = int(tokens_per_line[0])
    columns = "user item rating" + (" timestamp" if k == 4 else "")
    raise DataFormatError(path, f"every line holds {k} numbers and user ids repeat across lines: a table of "
                                f"'{columns}' rows, not LightGCN lines (one line per user: user item item ...); "
                                f"add a header line ({columns.replace(' ', ', ')}) and give it a .tsv or .csv name "
                                f"(read as a table of user, item[, timestamp])")


def _read_lightgcn_full(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray, int]:
    """Like `read_lightgcn` but also returns ``max user id + 1`` over all lines."""
    return _parse_lightgcn(_read_bytes(path), path)


def read_lightgcn(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Read a LightGCN-format file into parallel (user, item) id arrays.

    Format: one line per user, ``user item item ...``, 0-based non-negative
    integer ids separated by whitespace.  A line holding only a user id is
    allowed (that user contributes no pairs); blank lines are skipped.  The
    file may be plain text or gzip (``.gz`` suffix or gzip magic bytes).

    Returns:
        ``(users [N], items [N])``, int64, in file order (duplicates are kept;
        `Interactions.from_pairs` drops them).

    Raises:
        DataNotFoundError: (a ``FileNotFoundError``) the file does not exist.
        DataFormatError: the file is empty, not valid gzip, or holds a token
            that is not a non-negative integer; the message names the file,
            the 1-based line and the token.
    """
    users, items, _ = _read_lightgcn_full(path)
    return users, items


def write_lightgcn(inter: Interactions, path: str | os.PathLike, *, skip_empty: bool = True) -> None:
    """Write ``inter`` in LightGCN format (gzip with mtime 0 when ``path`` ends in ``.gz``).

    One line per user in increasing id order, items ascending, single spaces,
    ``\\n`` line endings.  Users without items are left out when
    ``skip_empty`` (the default) and written as a bare user id otherwise.
    The file is written to a temporary name and moved into place.
    """
    counts = inter.user_counts()
    lines = []
    for u in range(inter.n_users):
        if counts[u] == 0 and skip_empty:
            continue
        row = inter.indices[inter.indptr[u]:inter.indptr[u + 1]]
        lines.append(" ".join([str(u), *map(str, row.tolist())]))
    payload = ("\n".join(lines) + ("\n" if lines else "")).encode()
    p = Path(path)
    tmp = p.with_name(p.name + ".tmp")
    try:
        tmp.unlink(missing_ok=True)  # a leftover, or a planted link: removed, never written through
        with os.fdopen(open_nofollow(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL), "wb") as fh:
            if p.suffix == ".gz":
                with gzip.GzipFile(filename="", mode="wb", fileobj=fh, compresslevel=9, mtime=0) as gz:
                    gz.write(payload)
            else:
                fh.write(payload)
        os.replace(tmp, p)
    finally:
        if tmp.exists():
            tmp.unlink()


# --------------------------------------------------------------------- tables
@dataclass(frozen=True)
class TableData:
    """Interactions read from a table, with ids remapped to 0..n-1.

    Attributes:
        users: int64 [N], contiguous user ids.
        items: int64 [N], contiguous item ids.
        timestamps: [N] values of the timestamp column, or ``None`` when absent.
        user_ids: [n_users] original id of each new user id (``user_ids[u]``).
        item_ids: [n_items] original id of each new item id.
    """

    users: np.ndarray
    items: np.ndarray
    timestamps: np.ndarray | None
    user_ids: np.ndarray
    item_ids: np.ndarray

    @property
    def n_users(self) -> int:
        return int(len(self.user_ids))

    @property
    def n_items(self) -> int:
        return int(len(self.item_ids))

    def to_interactions(self) -> Interactions:
        """The binary [n_users, n_items] matrix of the pairs (duplicates dropped)."""
        return Interactions.from_pairs(self.users, self.items, self.n_users, self.n_items)


_TABLE_SUFFIXES = {".csv": ",", ".tsv": "\t", ".tab": "\t", ".parquet": None, ".pq": None}
_COMPRESSION_SUFFIXES = {".gz", ".bz2", ".xz", ".zip", ".zst"}


def _format_suffix(path: Path) -> str:
    """The format suffix of ``path`` after stripping a compression suffix ('.csv', '.parquet', ...)."""
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] in _COMPRESSION_SUFFIXES:
        suffixes = suffixes[:-1]
    return suffixes[-1] if suffixes else ""


def is_table_path(path: str | os.PathLike) -> bool:
    """True when ``path`` names a CSV / TSV / parquet file (by suffix)."""
    return _format_suffix(Path(path)) in _TABLE_SUFFIXES


def _read_table_frame(path, user_col: str, item_col: str, sep: str | None,
                      time_col: str | None) -> pd.DataFrame:
    """Raw table as a DataFrame with columns ``user``, ``item`` (and ``timestamp``), original ids.

    Rows with missing ids raise; rows that are entirely empty are dropped.
    """
    p = Path(path)
    if not p.exists():
        raise DataNotFoundError(f"{path}: no such file")
    fmt = _format_suffix(p)
    text_table = fmt not in (".parquet", ".pq")
    try:
        if not text_table:
            frame = pd.read_parquet(p)
        else:
            if sep is None:
                sep = _TABLE_SUFFIXES.get(fmt)
            kwargs = dict(sep=sep, skip_blank_lines=False, dtype=str, keep_default_na=False, na_values=[""])
            frame = pd.read_csv(p, **kwargs) if sep is not None else pd.read_csv(p, engine="python", **kwargs)
    except pd.errors.EmptyDataError:
        raise DataFormatError(path, "file is empty") from None
    except pd.errors.ParserError as exc:
        m = re.search(r"line (\d+)", str(exc))
        raise DataFormatError(path, f"cannot parse table: {exc}", int(m.group(1)) if m else None) from None
    except (OSError, ValueError, ImportError) as exc:
        raise DataFormatError(path, f"cannot read table: {exc}") from None
    missing = [c for c in (user_col, item_col) if c not in frame.columns]
    if missing:
        header = "" if not text_table else (f"; a table's first line is its header: start the file with the line "
                                            f"'{(sep or ',').replace(chr(9), '<TAB>').join((user_col, item_col))}'")
        raise DataFormatError(path, f"missing column(s) {', '.join(map(repr, missing))}; "
                                    f"columns present: {', '.join(map(repr, map(str, frame.columns)))}{header}")
    cols = {user_col: "user", item_col: "item"}
    if time_col is not None and time_col in frame.columns:
        cols[time_col] = "timestamp"
    frame = frame[list(cols)].rename(columns=cols)
    # text tables: row index r is on line r + 2 (header on line 1), blank lines included
    frame = frame[~frame.isna().all(axis=1)]
    if len(frame) == 0:
        raise DataFormatError(path, "table has no rows")
    for col in ("user", "item"):
        bad = frame[col].isna().to_numpy()
        if bad.any():
            r = int(frame.index[np.argmax(bad)])
            if text_table:
                raise DataFormatError(path, f"missing {col} id", r + 2)
            raise DataFormatError(path, f"row {r}: missing {col} id")
        if text_table:
            frame[col] = _maybe_int(frame[col])
    if text_table and "timestamp" in frame.columns:
        try:  # numeric timestamps become numbers; anything else (dates, ...) stays text
            frame["timestamp"] = pd.to_numeric(frame["timestamp"])
        except (ValueError, TypeError):
            pass
    return frame.reset_index(drop=True)


def _maybe_int(col: pd.Series) -> pd.Series:
    """Canonical ids: stripped strings, numbers spelled alike (``3``, ``3.0``, ``3e0`` → 3).

    Every id that reads as an integral number becomes that integer's decimal
    text; the column becomes int64 when every id is such an integer.  So the
    same id matches by value across files however it is spelled; ids that are
    not integral numbers (``"u17"``, ``"3.5"``) stay text.
    """
    s = col.astype(str).str.strip()
    if s.str.fullmatch(r"-?[0-9]{1,18}").all():
        return s.astype(np.int64)
    numbers = pd.to_numeric(s, errors="coerce")
    integral = numbers.notna() & np.isfinite(numbers) & (numbers == np.round(numbers)) & (numbers.abs() < 2**53)
    s = s.where(~integral, numbers.where(integral, 0).astype(np.int64).astype(str))
    if integral.all():
        return s.astype(np.int64)
    return s


def _factorize(values: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """(codes int64 [N], uniques [n]) with uniques sorted."""
    codes, uniques = pd.factorize(values, sort=True)
    return codes.astype(np.int64), np.asarray(uniques)


def read_table(path: str | os.PathLike, user_col: str = "user", item_col: str = "item",
               sep: str | None = None, time_col: str | None = "timestamp") -> TableData:
    """Read a CSV / TSV / parquet table of (user, item[, timestamp]) rows.

    The format follows the suffix (``.csv``, ``.tsv``/``.tab``, ``.parquet``/``.pq``,
    optionally compressed, e.g. ``.csv.gz``); for other suffixes ``sep=None``
    lets pandas sniff the separator.  Ids may be strings or integers; they are
    remapped to contiguous 0-based ids in sorted order of the original ids
    (``pandas.factorize(sort=True)``).  The timestamp column is returned when
    present and ignored otherwise.

    Returns:
        `TableData` with ``users [N]``, ``items [N]``, ``timestamps [N] | None``,
        and the maps ``user_ids [n_users]``, ``item_ids [n_items]`` back to the
        original ids.

    Raises:
        DataNotFoundError: the file does not exist.
        DataFormatError: a column is missing (the message lists the columns
            present), the table is empty, or an id is missing (line named).
    """
    frame = _read_table_frame(path, user_col, item_col, sep, time_col)
    users, user_ids = _factorize(frame["user"])
    items, item_ids = _factorize(frame["item"])
    ts = frame["timestamp"].to_numpy() if "timestamp" in frame.columns else None
    return TableData(users, items, ts, user_ids, item_ids)
