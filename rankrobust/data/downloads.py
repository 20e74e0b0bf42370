"""Fetching the external datasets from their public source locations (``rankrobust download NAME``).

Every dataset's source is built in (`SOURCES`): the URL of each upstream
file, pinned to a commit, with the sha256 and size of its exact bytes, and how
it becomes ``<dest>/<name>/train.txt`` and ``test.txt`` (LightGCN format):
as it is, as a member of an upstream archive, or converted from a table of
pairs.  `download_dataset` guarantees:

* **resumable**: each upstream file is streamed into
  ``<dest>/<name>/.<file>.<sha256 prefix>.part``; a later call continues
  from the partial file's end (HTTP ``Range``; a local ``file://`` mirror
  seeks), and restarts from zero when the server ignores the range;
* **verified**: size and sha256 of every upstream file, and of every final
  file, against the built-in values; a mismatch discards the file and names
  both digests;
* **atomic**: a final file appears (``os.replace``) only once verified, so a
  folder never holds a half-written or unverified ``train.txt``; one
  download per dataset folder at a time (a lock file, ``.download.lock``).

``mirror`` replaces the upstream locations by ``<mirror>/<name>/<upstream
file name>`` (any scheme urllib reads, e.g. ``file:///srv/mirror``): the same
hashes must hold, so a mirror serves the same bytes.

Where the built-in hashes come from (no network was reachable when they were
written; see each `DatasetSource.checked`): every sha256 below was computed
from the upstream git objects in a snapshot of the source repository at the
pinned commit, except two large files whose bytes the snapshot lacked
(yelp2018 and gowalla ``train.txt``, > 4 MiB): for those the git blob id
(a SHA-1 over the exact bytes) recorded at the pinned commit equals the blob
id of the project's local copy (``../shared/data``), and the sha256 is the
local copy's.  None of the URLs was fetched over the network.

`download` (older, lower level) fetches ``<base_url>/<name>/{train,test}.txt.gz``
of a mirror laid out like ``../shared/data``, checked against `KNOWN_SHA256`.
"""
from __future__ import annotations

import fcntl
import hashlib
import http.client
import io
import os
import re
import tarfile
import tempfile
import urllib.error
import urllib.parse
import urllib.request
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping

from rankrobust.data.errors import DataFormatError, DataNotFoundError
from rankrobust.data.hashing import sha256_file
from rankrobust.safe_io import LinkRefused, file_mode, open_nofollow, refuse_link

__all__ = ["Remote", "Output", "DatasetSource", "SOURCES", "download_dataset", "download", "KNOWN_SHA256",
           "DownloadError"]


class DownloadError(OSError):
    """A download failed or was interrupted; the message says how far it got and that rerunning resumes."""


@dataclass(frozen=True)
class Remote:
    """One upstream file: its URL and the ``sha256`` (hex) and ``size`` (bytes) of its exact bytes."""

    url: str
    sha256: str
    size: int

    @property
    def file_name(self) -> str:
        """The last path component of the URL (the file name on a mirror)."""
        return urllib.parse.unquote(urllib.parse.urlparse(self.url).path.rsplit("/", 1)[-1])


@dataclass(frozen=True)
class Output:
    """One final file of a dataset folder (``train.txt``, ``test.txt``) and where its bytes come from.

    ``member``: the path inside the remote archive (``.tar.gz`` or ``.zip``),
    None when the remote file *is* the output.  ``convert``: ``"pairs_tsv"``
    turns a header + ``user<TAB>item`` table into LightGCN lines (one per
    user, ascending user id, items in row order).  ``sha256`` / ``size``: of
    the final file.
    """

    name: str
    remote: Remote
    sha256: str
    size: int
    member: str | None = None
    convert: str | None = None


@dataclass(frozen=True)
class DatasetSource:
    """Where a dataset comes from: its outputs, the upstream repository, terms and how the hashes were checked."""

    name: str
    outputs: tuple[Output, ...]
    origin: str
    terms: str
    checked: str
    embedded: bool = False

    @property
    def remotes(self) -> list[Remote]:
        """The distinct upstream files, in output order."""
        return list(dict.fromkeys(o.remote for o in self.outputs))


def _raw(repo: str, commit: str, path: str) -> str:
    return f"https://raw.githubusercontent.com/{repo}/{commit}/{path}"


_LIGHTGCN = ("kuandeng/LightGCN", "b067ec05f16a24e0e1efe63cd82385f0c469af20")
_ADAP_TAU = ("junkangwu/Adap_tau", "9328cf6681351a5bafa5be47b1d812092855a778")
_IRBENCH = ("Tiny-Snow/IR-Benchmark-Dataset", "18bbbe892301c6013579ae70f3cab9d666878e23")
_LIGHTGCNPP = ("geon0325/LightGCNpp", "a394f79a7aceb8f485f6bcb549b4865fe83f1d49")


def _direct(name: str, repo: tuple[str, str], path: str, sha256: str, size: int) -> Output:
    return Output(name, Remote(_raw(*repo, path), sha256, size), sha256, size)


_ML_ARCHIVE = Remote(_raw(*_ADAP_TAU, "data/ml_dataset.tar.gz"),
                     "b5e4785bbd13682f0224566c6824946d17ca7045917f66c5ce43ad41a2897e2b", 1_446_451)
_ML100K_ARCHIVE = Remote(_raw(*_IRBENCH, "data_iid/movielens-100k/proc.zip"),
                         "4ab66c074eb9b253368b5a488974ac89a1fc59adbf0aa3e59bece5cefcd87028", 202_110)

def _lightgcn_source(name: str, train: tuple[str, int], test: tuple[str, int], train_blob: str, *, terms: str,
                     local: str) -> DatasetSource:
    """A dataset served as ``Data/<name>/{train,test}.txt`` by the LightGCN authors' repository at the pinned
    commit; ``train`` / ``test``: (sha256, size) of each file."""
    return DatasetSource(
        name,
        (_direct("train.txt", _LIGHTGCN, f"Data/{name}/train.txt", *train),
         _direct("test.txt", _LIGHTGCN, f"Data/{name}/test.txt", *test)),
        origin=f"kuandeng/LightGCN (the LightGCN authors) Data/{name} at commit b067ec05",
        terms=terms,
        checked=f"test.txt: sha256 of the git object at the pinned commit. train.txt (absent from the snapshot, "
                f"> 4 MiB): its git blob id {train_blob} at the pinned commit equals that of the local copy "
                f"{local}, whose sha256 is built in. Not fetched over the network.")


#: dataset name → its built-in source (see the module docstring for how the hashes were checked)
SOURCES: dict[str, DatasetSource] = {
    "yelp2018": _lightgcn_source(
        "yelp2018", ("1e9568725a9e833d0ac3bae01c94cd95367f73b3bb6104fd26b5f65ea5054093", 6_904_880),
        ("9cd9b37926cd1447a06625ffa7914527573fb097c10cb0bbdb1d1b8ded3742fe", 1_986_152), "cda12361…",
        terms="Yelp Dataset Challenge data: academic, non-commercial use only; do not redistribute",
        local="../shared/data/yelp2018 (byte-identical to BSL's yelp2018.tar.gz)"),
    "gowalla": _lightgcn_source(
        "gowalla", ("7244696fdeb23911319cf7b689f2e15a3c4c92549c873a5677b44e3f13cc3e62", 4_633_414),
        ("099a2a73924e4b754dc6efd730d764f492321b53c38eb93298850c83acf57be3", 1_372_559), "a27782bd…",
        terms="SNAP loc-Gowalla (Cho, Myers, Leskovec, KDD 2011): research use, cite the paper",
        local="../shared/data/gowalla"),
    "ml": DatasetSource(
        "ml",
        (Output("train.txt", _ML_ARCHIVE, "31fe589506162c76c90e87ddd017642f73655a3f959bd70deec8dda142608f4e",
                3_660_330, member="ml_data/train.txt"),
         Output("test.txt", _ML_ARCHIVE, "c8b4f275ea29fdb5560f0d9014d85a3865743f3089dca0259c79fee30dcdbdcd",
                482_621, member="ml_data/test.txt")),
        origin="junkangwu/Adap_tau (BSL's first author) data/ml_dataset.tar.gz at commit 9328cf66",
        terms="MovieLens-1M (GroupLens): research use only, no redistribution, acknowledge the data set",
        checked="the archive's sha256 is that of the git object at the pinned commit; its two members "
                "equal the local copy ../shared/data/ml. Not fetched over the network."),
    "ml-100k": DatasetSource(
        "ml-100k",
        (Output("train.txt", _ML100K_ARCHIVE, "c3d2f88896ab88519d0a8448cda64fa14c5af0d1886ff893b068568e34b7d9ef",
                255_730, member="train.tsv", convert="pairs_tsv"),
         Output("test.txt", _ML100K_ARCHIVE, "7f4ab8a9adfac9bfd84d261f457e6ebcb7be41a72cc0702391f1da8e36000f31",
                68_443, member="test.tsv", convert="pairs_tsv")),
        origin="Tiny-Snow/IR-Benchmark-Dataset data_iid/movielens-100k/proc.zip at commit 18bbbe89 "
               "(10-core, 80/20 per user), converted to LightGCN lines",
        terms="MovieLens-100K (GroupLens): research use only, no redistribution without permission, cite "
              "Harper & Konstan 2015; fetched from a third-party copy for your own research use",
        checked="the archive's sha256 is that of the git object at the pinned commit; converting its "
                "train.tsv / test.tsv gives exactly the local copy ../shared/data/ml-100k. Not fetched over "
                "the network."),
    "lastfm": DatasetSource(
        "lastfm",
        tuple(_direct(f"{s}.txt", _LIGHTGCNPP, f"data/lastfm/{s}.txt", sha, size) for s, sha, size in (
            ("train", "1845769cb1a9834692d3cf884de523d23aa126fa6b58eb5f49e9628e8c317705", 300_863),
            ("valid", "9ae3440becfcbba19d5a5a8298b7933126f89424a468de5765bf1c6f08a9e3eb", 50_860),
            ("test", "0f0a15e3de2f868554ee1e32190c51db3e0ad0c4138e1428c66ba6de86102755", 93_806))),
        origin="geon0325/LightGCNpp data/lastfm at commit a394f79a: the unfiltered split that "
               "scripts/build_lastfm.py builds the embedded lastfm from",
        terms="HetRec 2011 hetrec2011-lastfm-2k: non-commercial use, cite Last.fm and HetRec'11",
        checked="sha256 of the git objects at the pinned commit. Not fetched over the network.",
        embedded=True),
}

# sha256 of the gzip files as distributed in ../shared/data (see its README), for `download`
KNOWN_SHA256: dict[str, dict[str, str]] = {
    "yelp2018": {
        "train.txt.gz": "9b69e51c511d3552ba88a05023f6fcfdf7c1a2d4ab64d3b67cea126d6d398572",
        "test.txt.gz": "d5eb19d4311a3d48f49534bfbd9f5cfefc4d4c684bff7754648478f3aef69b41",
    },
    "gowalla": {
        "train.txt.gz": "61fb99c1e8bcbd8c4a0ec56a079d033a18985317589e52cc952767b49b2506a7",
        "test.txt.gz": "23368b745faf7cf0201859230872db6ccf13e23cbaf0c844de53c94b6f8888ea",
    },
    "ml": {
        "train.txt.gz": "037dd2ed77415037cbb1f0d9db24143bf1fd67c75d95be0723e3305d05800baf",
        "test.txt.gz": "dc0517b0a36b7e7f676f7397b035cb4071f6f85f1b33dcd917231481a91802e9",
    },
    "ml-100k": {
        "train.txt.gz": "dee3590448bd3348b1a00111b5e4dbbdf0be241e9730cfba4e9f59267e938713",
        "test.txt.gz": "96621cd740ce796043ee9336888d09e30c6c8e3e133ba609cc89512d62f7c3bf",
    },
    # the unfiltered LightGCN++ split the embedded lastfm is built from
    "lastfm": {
        "train.txt.gz": "b749680a88365264255a2c91e858480fe89bc503ee942039e2c112331184236c",
        "valid.txt.gz": "d33dab5f618592d9bb404bad943e6ae87ff5d5dbc2e52b5d601335623d1f4148",
        "test.txt.gz": "f159d7022d12d034ef3914dbe91d4696db9336297a38d3ce3db3e2412a49ffe8",
    },
}

_CHUNK = 1 << 20
_SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
Log = Callable[[str], None]


# ------------------------------------------------------------------ one file, resumable
def _open_from(url: str, offset: int, timeout: float) -> tuple[io.BufferedIOBase | None, bool]:
    """(stream of ``url`` from byte ``offset``, True when it starts at ``offset`` / False when at 0).

    None as the stream means the server says the range is past the end (the
    partial file is already complete).  Raises DataNotFoundError (404, missing
    local file) or DownloadError.
    """
    parsed = urllib.parse.urlparse(url)
    if parsed.scheme == "file":  # a local mirror: seek, as an HTTP range would
        path = urllib.request.url2pathname(parsed.path)
        try:
            handle = open(path, "rb")
        except FileNotFoundError:
            raise DataNotFoundError(f"{url}: not found") from None
        except OSError as err:
            raise DownloadError(f"{url}: cannot be read ({err.strerror or err})") from None
        handle.seek(offset)
        return handle, True
    headers = {"User-Agent": "rankrobust-download"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    try:
        resp = urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout)
    except urllib.error.HTTPError as err:
        if err.code == 416 and offset:
            return None, True
        if err.code == 404:
            raise DataNotFoundError(f"{url}: not found (HTTP 404)") from None
        raise DownloadError(f"{url}: HTTP {err.code} {err.reason}") from None
    except (urllib.error.URLError, OSError) as err:
        raise DownloadError(f"{url}: {getattr(err, 'reason', err)}") from None
    return resp, bool(offset) and getattr(resp, "status", 200) == 206


def fetch(url: str, remote: Remote, part: Path, *, timeout: float = 60.0, log: Log | None = None) -> int:
    """Complete the partial file ``part`` from ``url`` and verify it against ``remote``; returns bytes transferred.

    Resumes from ``part``'s size (restarting from zero when the server ignores
    the range, or when a resumed file fails verification).  An interrupted
    transfer (an error, or a stream that ends early after bringing bytes)
    keeps ``part`` for the next call and raises `DownloadError` saying how far
    it got; a stream that goes on past ``remote.size`` is cut after one more
    chunk (an endless stream never fills the disk).  A complete file whose
    size or sha256 differs from ``remote`` (or a source that ends short and
    brings nothing more on a resume) is deleted and raises DataFormatError
    naming both digests.  ``part`` is never written through a symbolic link
    (`rankrobust.runs.LinkRefused`).
    """
    transferred = 0
    for attempt in range(2):
        refuse_link(part, "a download")
        offset = part.stat().st_size if part.exists() else 0
        if offset > remote.size:
            offset = 0
            part.unlink()
        now, declared = 0, None  # bytes brought by this attempt; where the source says it ends
        if offset < remote.size:
            stream, resumed = _open_from(url, offset, timeout)
            if stream is not None:
                if log:
                    log(f"fetching {url} ({remote.size / 2**20:.1f} MiB"
                        + (f", resuming at {offset / 2**20:.1f} MiB" if resumed and offset else "") + ")")
                flags = os.O_WRONLY | os.O_CREAT | (os.O_APPEND if resumed else os.O_TRUNC)
                start = offset if resumed else 0
                declared = _declared_end(stream, start)
                try:
                    with stream, os.fdopen(open_nofollow(part, flags), "wb") as out:
                        while start + now <= remote.size and (block := stream.read(_CHUNK)):
                            out.write(block)  # at most one chunk past the expected size, then stop
                            now += len(block)
                        out.flush()
                        os.fsync(out.fileno())
                except LinkRefused:
                    raise
                except (OSError, urllib.error.URLError, http.client.HTTPException) as err:
                    transferred += now
                    done = part.stat().st_size if part.exists() else 0
                    raise DownloadError(f"{url}: interrupted after {done:,} of {remote.size:,} bytes "
                                        f"({getattr(err, 'reason', err)}); run the same command again to resume "
                                        f"from {part}") from None
                transferred += now
        size = part.stat().st_size
        if size < remote.size and now and (declared is None or size < declared):
            # the stream ended before the source's end (the server closed the connection early): resumable
            raise DownloadError(f"{url}: interrupted after {size:,} of {remote.size:,} bytes (the connection "
                                f"closed early); run the same command again to resume from {part}")
        got = sha256_file(part) if size == remote.size else None
        if got == remote.sha256:
            return transferred
        part.unlink(missing_ok=True)
        if offset and attempt == 0 and size >= remote.size:  # a stale or foreign partial file: start again
            if log:
                log(f"{part.name}: the resumed file did not verify; fetching it again from the start")
            continue
        what = (f"sha256 {got}" if got else f"more than {remote.size:,} bytes (the stream went on; cut after one "
                f"more chunk)" if size > remote.size else f"{size:,} bytes")
        raise DataFormatError(url, f"expected {remote.size:,} bytes with sha256 {remote.sha256}, got {what}; the "
                                   f"file was discarded (a changed upstream file or a wrong --mirror)")
    raise AssertionError("unreachable")


def _declared_end(stream: io.IOBase, start: int) -> int | None:
    """Where the source says its bytes end: ``start`` + HTTP Content-Length, a local file's size; None: unknown.

    (urllib returns a clean end of stream when a server closes the connection
    before its Content-Length: fewer bytes than declared is an interruption.)
    """
    headers = getattr(stream, "headers", None)
    if headers is not None:
        length = headers.get("Content-Length")
        return start + int(length) if length and length.isdigit() else None
    if isinstance(stream, (io.BufferedReader, io.FileIO)):
        try:
            return os.fstat(stream.fileno()).st_size
        except OSError:
            return None
    return None


# ------------------------------------------------------------------ outputs
def _member_bytes(archive: Path, member: str) -> bytes:
    """The bytes of ``member`` inside a ``.zip`` or ``.tar.gz`` archive (DataFormatError when absent)."""
    try:
        if zipfile.is_zipfile(archive):
            with zipfile.ZipFile(archive) as zf:
                return zf.read(member)
        with tarfile.open(archive, "r:*") as tf:
            handle = tf.extractfile(member)
            if handle is None:
                raise KeyError(member)
            return handle.read()
    except KeyError:
        raise DataFormatError(archive, f"the archive has no member {member!r}") from None
    except (tarfile.TarError, zipfile.BadZipFile, OSError) as err:
        raise DataFormatError(archive, f"not a readable archive ({err})") from None


def pairs_tsv_to_lightgcn(data: bytes, source: str = "table") -> bytes:
    """A header + ``user<TAB>item`` table → LightGCN text: one line per user, ascending id, items in row order.

    Raises DataFormatError naming ``source`` and the line for a row that is
    not two integer ids.
    """
    lines = data.decode().splitlines()[1:]
    by_user: dict[int, list[str]] = {}
    for n, line in enumerate(lines, start=2):
        parts = line.split("\t")
        if len(parts) != 2 or not all(p.isdigit() for p in parts):
            raise DataFormatError(source, f"expected 'user<TAB>item' integer ids, got {line!r}", line=n)
        by_user.setdefault(int(parts[0]), []).append(parts[1])
    return "".join(f"{u} {' '.join(by_user[u])}\n" for u in sorted(by_user)).encode()


def _write_output(output: Output, fetched: Path, final: Path) -> None:
    """Make ``final`` from the verified upstream file ``fetched``; verified, then moved into place atomically."""
    if output.member is None:
        os.replace(fetched, final)  # fetched was verified against the same digest
        return
    data = _member_bytes(fetched, output.member)
    if output.convert == "pairs_tsv":
        data = pairs_tsv_to_lightgcn(data, f"{fetched.name}:{output.member}")
    elif output.convert is not None:
        raise ValueError(f"unknown conversion {output.convert!r}")
    got = hashlib.sha256(data).hexdigest()
    if got != output.sha256 or len(data) != output.size:
        raise DataFormatError(final, f"expected {output.size:,} bytes with sha256 {output.sha256} from "
                                     f"{output.member}, got {len(data):,} bytes with sha256 {got}; nothing written")
    tmp = final.parent / f".{final.name}.{os.getpid()}.tmp"
    Path(tmp).unlink(missing_ok=True)  # a leftover of this pid, or a planted link: removed, never followed
    fd = open_nofollow(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL)  # the umask applies, as for a plain file
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, final)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _part_path(folder: Path, remote: Remote) -> Path:
    return folder / f".{remote.file_name}.{remote.sha256[:16]}.part"


def download_dataset(name: str, dest: str | os.PathLike, *, mirror: str | None = None, timeout: float = 60.0,
                     log: Log | None = None, sources: Mapping[str, DatasetSource] | None = None) -> dict[str, int]:
    """Fetch dataset ``name`` from its built-in source into ``<dest>/<name>/`` (resumable, verified, atomic).

    ``mirror``: a base URL replacing the upstream locations by
    ``<mirror>/<name>/<upstream file name>``.  Final files already present
    with the right sha256 are kept (nothing is fetched for them).
    ``sources`` replaces `SOURCES` (tests).  ``log`` receives one line per
    step.

    Returns:
        Upstream file name → bytes transferred now (0: complete already).

    Raises:
        ValueError: unknown dataset (the message names the known ones).
        FileExistsError: a final file exists with other content, or another
            download holds the folder.
        DataFormatError: a file failed verification (it was discarded).
        DataNotFoundError / DownloadError: a file could not be fetched (a
            partial file is kept; rerunning resumes).
    """
    table = SOURCES if sources is None else sources
    if name not in table:
        raise ValueError(f"no download source for dataset {name!r}; datasets with one: {', '.join(table)}")
    source = table[name]
    folder = Path(dest).expanduser() / name
    folder.mkdir(parents=True, exist_ok=True)
    lock = open_nofollow(folder / ".download.lock", os.O_RDWR | os.O_CREAT)  # a planted link: refused
    try:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise FileExistsError(f"{folder} is being written by another rankrobust download; wait for it") from None
        todo = []
        for output in source.outputs:
            final = folder / output.name
            if final.exists():
                got = sha256_file(final)
                if got != output.sha256:
                    raise FileExistsError(f"{final} exists but is not the {name} file (sha256 {got}, expected "
                                          f"{output.sha256}); move it away or choose another --dest")
                if log:
                    log(f"{final}: present, sha256 verified")
                continue
            todo.append(output)
        transferred: dict[str, int] = {}
        fetched: dict[Remote, Path] = {}
        for output in todo:
            remote = output.remote
            if remote not in fetched:
                url = f"{mirror.rstrip('/')}/{name}/{remote.file_name}" if mirror else remote.url
                part = _part_path(folder, remote)
                transferred[remote.file_name] = fetch(url, remote, part, timeout=timeout, log=log)
                fetched[remote] = part
                if log:
                    log(f"{remote.file_name}: {remote.size:,} bytes, sha256 verified")
            _write_output(output, fetched[remote], folder / output.name)
            if log:
                log(f"{folder / output.name}: written, sha256 {output.sha256[:16]}… verified")
        for part in fetched.values():  # archives: their members are out
            part.unlink(missing_ok=True)
        return transferred
    finally:
        os.close(lock)


# ------------------------------------------------------------------ mirror of the shared-data layout
def download(name: str, dest_dir: str | os.PathLike, base_url: str,
             sha256: Mapping[str, str] | None = None, timeout: float = 60.0) -> Path:
    """Fetch ``<base_url>/<name>/{train,test}.txt.gz`` into ``<dest_dir>/<name>/`` (a mirror of ../shared/data).

    Any URL scheme urllib understands works (``https://``, ``file://``).
    Each file is streamed to a temporary file next to its destination while
    its sha256 is computed; only when every file matches are they moved into
    place with ``os.replace``.  ``sha256`` maps file name → hex digest and
    defaults to the known digests in `KNOWN_SHA256`; file names in it beyond
    train/test (e.g. ``valid.txt.gz``) are fetched as well.  A file without a
    known digest is fetched unverified, with a warning.  For the upstream
    sources use `download_dataset` (``rankrobust download NAME``).

    Returns:
        The folder ``<dest_dir>/<name>``, usable as ``data_dir=dest_dir``.

    Raises:
        DataFormatError: a digest does not match; nothing is left behind.
        DataNotFoundError / OSError: a file could not be fetched; nothing is
            left behind.
    """
    if not _SAFE_NAME.fullmatch(name):
        raise ValueError(f"invalid dataset name {name!r}")
    expected = dict(KNOWN_SHA256.get(name, {}) if sha256 is None else sha256)
    fnames = ["train.txt.gz", "test.txt.gz"] + sorted(set(expected) - {"train.txt.gz", "test.txt.gz"})
    for f in fnames:
        if not _SAFE_NAME.fullmatch(f):
            raise ValueError(f"invalid file name {f!r} in sha256")
    folder = Path(dest_dir) / name
    created = not folder.exists()
    folder.mkdir(parents=True, exist_ok=True)
    temps: list[tuple[Path, Path]] = []
    try:
        for fname in fnames:
            url = f"{base_url.rstrip('/')}/{name}/{fname}"
            fd, tmp_name = tempfile.mkstemp(prefix=f".{fname}.", suffix=".part", dir=folder)
            tmp = Path(tmp_name)
            temps.append((tmp, folder / fname))
            digest = hashlib.sha256()
            try:
                with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as resp:
                    while chunk := resp.read(_CHUNK):
                        digest.update(chunk)
                        out.write(chunk)
            except urllib.error.URLError as exc:
                reason = getattr(exc, "reason", exc)
                if isinstance(reason, FileNotFoundError) or getattr(exc, "code", None) == 404:
                    raise DataNotFoundError(f"{url}: not found ({reason})") from None
                raise OSError(f"{url}: download failed ({reason})") from None
            want = expected.get(fname)
            got = digest.hexdigest()
            if want is None:
                warnings.warn(f"{url}: no known sha256, file not verified (sha256 {got})", stacklevel=2)
            elif got.lower() != want.lower():
                raise DataFormatError(url, f"sha256 mismatch: expected {want}, got {got}; file discarded")
        for tmp, final in temps:
            os.chmod(tmp, file_mode())  # mkstemp's 0600 → what a plain file gets
            os.replace(tmp, final)
        temps.clear()
    finally:
        for tmp, _ in temps:
            tmp.unlink(missing_ok=True)
        if created and not any(folder.iterdir()):
            folder.rmdir()
    return folder
