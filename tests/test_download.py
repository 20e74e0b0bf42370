"""`rankrobust download`: built-in sources, resumable, verified, atomic; tested on local mirrors only (no network)."""
from __future__ import annotations

import gzip
import hashlib
import http.server
import io
import re
import tarfile
import threading
import zipfile
from pathlib import Path

import pytest

from rankrobust.cli import main
from rankrobust.data import load_dataset
from rankrobust.data import downloads as dl
from rankrobust.data.downloads import SOURCES, DatasetSource, DownloadError, Output, Remote, download_dataset
from rankrobust.data.errors import DataFormatError
from tests.conftest import shared_data_dir

TRAIN = b"0 0 1 2\n1 1 2\n2 0 2\n" * 2000  # large enough to be streamed in several reads when resumed
TEST = b"0 3\n1 3\n2 1\n"


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def toy_sources(base: str = "https://example.invalid/toy") -> dict[str, DatasetSource]:
    """One dataset per kind of output: direct files, tar.gz members, a zip table converted to LightGCN lines."""
    tar = io.BytesIO()
    with tarfile.open(fileobj=tar, mode="w:gz") as tf:
        for name, data in (("toy_data/train.txt", TRAIN), ("toy_data/test.txt", TEST)):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    zipped = io.BytesIO()
    with zipfile.ZipFile(zipped, "w") as zf:
        zf.writestr("train.tsv", "user_procid\titem_procid\n1\t5\n0\t2\n0\t1\n")
        zf.writestr("test.tsv", "user_procid\titem_procid\n0\t3\n1\t0\n")
    archives = {"toy.tar.gz": tar.getvalue(), "toy.zip": zipped.getvalue()}
    tar_remote = Remote(f"{base}/toy.tar.gz", sha(archives["toy.tar.gz"]), len(archives["toy.tar.gz"]))
    zip_remote = Remote(f"{base}/toy.zip", sha(archives["toy.zip"]), len(archives["toy.zip"]))
    converted_train, converted_test = b"0 2 1\n1 5\n", b"0 3\n1 0\n"
    toy_sources.archives = archives  # type: ignore[attr-defined]
    return {
        "toy": DatasetSource("toy", (Output("train.txt", Remote(f"{base}/train.txt", sha(TRAIN), len(TRAIN)),
                                            sha(TRAIN), len(TRAIN)),
                                     Output("test.txt", Remote(f"{base}/test.txt", sha(TEST), len(TEST)),
                                            sha(TEST), len(TEST))),
                             origin="toy origin", terms="toy terms", checked="made here"),
        "toytar": DatasetSource("toytar", (Output("train.txt", tar_remote, sha(TRAIN), len(TRAIN),
                                                  member="toy_data/train.txt"),
                                           Output("test.txt", tar_remote, sha(TEST), len(TEST),
                                                  member="toy_data/test.txt")),
                                origin="o", terms="t", checked="c"),
        "toyzip": DatasetSource("toyzip", (Output("train.txt", zip_remote, sha(converted_train), len(converted_train),
                                                  member="train.tsv", convert="pairs_tsv"),
                                           Output("test.txt", zip_remote, sha(converted_test), len(converted_test),
                                                  member="test.tsv", convert="pairs_tsv")),
                                origin="o", terms="t", checked="c"),
    }


@pytest.fixture
def mirror(tmp_path):
    """A file:// mirror holding every toy dataset as <mirror>/<name>/<upstream file name>."""
    sources = toy_sources()
    root = tmp_path / "mirror"
    for name, source in sources.items():
        (root / name).mkdir(parents=True)
        for remote in source.remotes:
            data = {"train.txt": TRAIN, "test.txt": TEST}.get(remote.file_name) or \
                toy_sources.archives[remote.file_name]  # type: ignore[attr-defined]
            (root / name / remote.file_name).write_bytes(data)
    return root, sources


def test_downloads_direct_archive_and_converted_files(tmp_path, mirror):
    root, sources = mirror
    dest = tmp_path / "data"
    for name in sources:
        got = download_dataset(name, dest, mirror=root.as_uri(), sources=sources)
        assert set(got) == {r.file_name for r in sources[name].remotes}
        files = sorted(p.name for p in (dest / name).iterdir() if not p.name.startswith("."))
        assert files == ["test.txt", "train.txt"]
        assert not list((dest / name).glob("*.part"))  # archives are removed once their members are out
    assert (dest / "toytar" / "train.txt").read_bytes() == TRAIN
    assert (dest / "toyzip" / "train.txt").read_bytes() == b"0 2 1\n1 5\n"  # ascending users, items in row order
    assert (dest / "toy" / "test.txt").read_bytes() == TEST
    # present and verified: nothing is fetched again
    assert download_dataset("toy", dest, mirror=root.as_uri(), sources=sources) == {}


def test_resumes_from_the_partial_file(tmp_path, mirror):
    root, sources = mirror
    folder = tmp_path / "data" / "toy"
    folder.mkdir(parents=True)
    remote = sources["toy"].outputs[0].remote
    part = dl._part_path(folder, remote)
    part.write_bytes(TRAIN[:10_000])  # an earlier, interrupted download
    got = download_dataset("toy", tmp_path / "data", mirror=root.as_uri(), sources=sources)
    assert got["train.txt"] == len(TRAIN) - 10_000  # only the rest was transferred
    assert (folder / "train.txt").read_bytes() == TRAIN and not part.exists()


def test_a_foreign_partial_file_is_fetched_again_from_zero(tmp_path, mirror):
    root, sources = mirror
    folder = tmp_path / "data" / "toy"
    folder.mkdir(parents=True)
    dl._part_path(folder, sources["toy"].outputs[0].remote).write_bytes(b"x" * 100)
    got = download_dataset("toy", tmp_path / "data", mirror=root.as_uri(), sources=sources)
    assert got["train.txt"] == len(TRAIN) - 100 + len(TRAIN)  # the resumed attempt, then one from zero
    assert (folder / "train.txt").read_bytes() == TRAIN


def test_interrupted_download_keeps_its_partial_file_and_the_rerun_completes_it(tmp_path, mirror, monkeypatch):
    root, sources = mirror
    real = dl._open_from

    class Broken(io.BytesIO):
        def read(self, n=-1):
            if self.tell() >= 5_000:
                raise ConnectionResetError("connection reset by peer")
            return super().read(min(n, 5_000 - self.tell()))

    monkeypatch.setattr(dl, "_open_from", lambda url, offset, timeout: (Broken(TRAIN), False))
    with pytest.raises(DownloadError) as info:
        download_dataset("toy", tmp_path / "data", mirror=root.as_uri(), sources=sources)
    folder = tmp_path / "data" / "toy"
    part = dl._part_path(folder, sources["toy"].outputs[0].remote)
    assert str(info.value) == (f"{root.as_uri()}/toy/train.txt: interrupted after 5,000 of {len(TRAIN):,} bytes "
                               f"(connection reset by peer); run the same command again to resume from {part}")
    assert part.stat().st_size == 5_000 and not (folder / "train.txt").exists()  # never a half-written final file
    monkeypatch.setattr(dl, "_open_from", real)
    got = download_dataset("toy", tmp_path / "data", mirror=root.as_uri(), sources=sources)
    assert got["train.txt"] == len(TRAIN) - 5_000 and (folder / "train.txt").read_bytes() == TRAIN


def test_wrong_bytes_are_discarded_and_named(tmp_path, mirror):
    root, sources = mirror
    (root / "toy" / "test.txt").write_bytes(b"0 9\n")
    with pytest.raises(DataFormatError) as info:
        download_dataset("toy", tmp_path / "data", mirror=root.as_uri(), sources=sources)
    assert str(info.value) == (f"{root.as_uri()}/toy/test.txt: expected {len(TEST):,} bytes with sha256 {sha(TEST)}, "
                               f"got 4 bytes; the file was discarded (a changed upstream file or a wrong --mirror)")
    folder = tmp_path / "data" / "toy"
    assert not (folder / "test.txt").exists() and not list(folder.glob("*.part"))
    assert (folder / "train.txt").read_bytes() == TRAIN  # the verified file is kept


def test_existing_final_file_with_other_content_is_never_replaced(tmp_path, mirror):
    root, sources = mirror
    folder = tmp_path / "data" / "toy"
    folder.mkdir(parents=True)
    (folder / "train.txt").write_bytes(b"mine\n")
    with pytest.raises(FileExistsError, match=r"train.txt exists but is not the toy file .*move it away or choose "
                                              r"another --dest"):
        download_dataset("toy", tmp_path / "data", mirror=root.as_uri(), sources=sources)
    assert (folder / "train.txt").read_bytes() == b"mine\n"


class _RangeHandler(http.server.BaseHTTPRequestHandler):
    """Serves TRAIN at /toy/train.txt, honouring ``Range: bytes=N-`` unless the server says to ignore it."""

    ignore_range = False
    requests: list = []

    def do_GET(self):  # noqa: N802
        data = TRAIN if self.path.endswith("/train.txt") else TEST if self.path.endswith("/test.txt") else None
        if data is None:
            self.send_error(404)
            return
        rng = self.headers.get("Range")
        type(self).requests.append(rng)
        start = int(rng.split("=")[1].rstrip("-")) if rng and not self.ignore_range else 0
        self.send_response(206 if start else 200)
        self.send_header("Content-Length", str(len(data) - start))
        self.end_headers()
        self.wfile.write(data[start:])

    def log_message(self, *args):
        pass


@pytest.mark.netns  # starts an HTTP server: inside the loopback-only namespace (tests/loopback.py)
@pytest.mark.parametrize("ignore_range", [False, True])
def test_http_range_resume_and_servers_that_ignore_it(tmp_path, ignore_range):
    handler = type("H", (_RangeHandler,), {"ignore_range": ignore_range, "requests": []})
    try:
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    except OSError as err:
        pytest.skip(f"no loopback server here ({err})")
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        sources = toy_sources()
        folder = tmp_path / "data" / "toy"
        folder.mkdir(parents=True)
        dl._part_path(folder, sources["toy"].outputs[0].remote).write_bytes(TRAIN[:1234])
        got = download_dataset("toy", tmp_path / "data", mirror=f"http://127.0.0.1:{server.server_port}",
                               sources=sources)
    finally:
        server.shutdown()
    assert handler.requests[0] == "bytes=1234-"
    assert got["train.txt"] == (len(TRAIN) if ignore_range else len(TRAIN) - 1234)
    assert (folder / "train.txt").read_bytes() == TRAIN


# ----------------------------------------------------------------- the CLI
def test_cli_download_from_a_mirror(tmp_path, mirror, monkeypatch, capsys):
    root, sources = mirror
    monkeypatch.setattr(dl, "SOURCES", {**SOURCES, **sources})
    dest = tmp_path / "data"
    assert main(["download", "toy", "--dest", str(dest), "--mirror", root.as_uri()]) == 0
    out = capsys.readouterr().out
    assert f"toy is ready in {dest / 'toy'} (train.txt, test.txt, sha256 verified)" in out
    assert f"use it with --data-dir {dest}" in out and "terms: toy terms" in out


def test_cli_download_lastfm_says_it_is_embedded(capsys):
    assert main(["download", "lastfm"]) == 0
    assert capsys.readouterr().out.startswith("lastfm is embedded in rankrobust (rankrobust/data/embedded/lastfm): "
                                              "--dataset lastfm needs no download.")


def test_cli_download_errors_are_one_line(tmp_path, capsys):
    assert main(["download", "yelp2019"]) == 2
    err = capsys.readouterr().err
    assert err == ("rankrobust download: error: no download source for dataset 'yelp2019' (did you mean 'yelp2018'?); "
                   "datasets with one: yelp2018, gowalla, ml, ml-100k, lastfm\n")
    assert main(["download", "gowalla", "--dest", str(tmp_path), "--mirror", (tmp_path / "none").as_uri()]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"rankrobust download: error: {(tmp_path / 'none').as_uri()}/gowalla/train.txt: not found")
    assert "Traceback" not in err


def test_dataset_not_found_names_the_download_command(tmp_path):
    with pytest.raises(FileNotFoundError) as info:
        load_dataset("gowalla", data_dir=tmp_path)
    assert "Download it with `rankrobust download gowalla --dest DIR` and pass --data-dir DIR" in str(info.value)


# ----------------------------------------------------------------- the built-in hashes against the local copies
def _shared(name: str) -> Path:
    root = shared_data_dir()
    if root is None or not (root / name / "train.txt.gz").exists():
        pytest.skip(f"../shared/data/{name} not here")
    return root / name


@pytest.mark.parametrize("name", ["yelp2018", "gowalla", "lastfm"])
def test_builtin_sources_verify_the_local_copy(tmp_path, name):
    """A mirror made from ../shared/data (gunzipped: the upstream bytes) passes the built-in size and sha256."""
    local = _shared(name)
    (tmp_path / "mirror" / name).mkdir(parents=True)
    for output in SOURCES[name].outputs:
        data = gzip.decompress((local / f"{output.name}.gz").read_bytes())
        (tmp_path / "mirror" / name / output.remote.file_name).write_bytes(data)
    download_dataset(name, tmp_path / "data", mirror=(tmp_path / "mirror").as_uri())
    if name != "lastfm":
        ds = load_dataset(name, data_dir=tmp_path / "data", valid_is_test=True)
        assert ds.train.nnz > 0 and ds.test.nnz > 0


def test_builtin_ml100k_source_converts_to_the_local_copy(tmp_path):
    """The IR-Benchmark zip (kept beside the shared copy) converts to exactly the shared LightGCN files."""
    local = _shared("ml-100k")
    archive = local / "irbench_movielens-100k_proc.zip"
    if not archive.exists():
        pytest.skip("the IR-Benchmark zip is not in ../shared/data/ml-100k")
    (tmp_path / "mirror" / "ml-100k").mkdir(parents=True)
    (tmp_path / "mirror" / "ml-100k" / "proc.zip").write_bytes(archive.read_bytes())
    download_dataset("ml-100k", tmp_path / "data", mirror=(tmp_path / "mirror").as_uri())
    for split in ("train", "test"):
        assert (tmp_path / "data" / "ml-100k" / f"{split}.txt").read_bytes() == \
            gzip.decompress((local / f"{split}.txt.gz").read_bytes())


def test_builtin_ml_members_are_the_local_copy():
    """ml's archive is not kept locally: its members' built-in sha256 are those of the shared copy."""
    local = _shared("ml")
    for output in SOURCES["ml"].outputs:
        data = gzip.decompress((local / f"{output.name}.gz").read_bytes())
        assert (sha(data), len(data)) == (output.sha256, output.size)


# ----------------------------------------------------------------- issue 25: early end, endless stream, links, --dest
def test_a_stream_that_ends_early_keeps_its_partial_file_and_says_so(tmp_path, mirror, monkeypatch):
    """A server closing the connection halfway (a clean EOF, no error) is an interruption, not wrong bytes."""
    root, sources = mirror
    real = dl._open_from
    monkeypatch.setattr(dl, "_open_from", lambda url, offset, timeout: (io.BytesIO(TRAIN[:5_000]), False))
    with pytest.raises(DownloadError) as info:
        download_dataset("toy", tmp_path / "data", mirror=root.as_uri(), sources=sources)
    part = dl._part_path(tmp_path / "data" / "toy", sources["toy"].outputs[0].remote)
    assert f"interrupted after 5,000 of {len(TRAIN):,} bytes" in str(info.value)
    assert "run the same command again to resume" in str(info.value) and "wrong --mirror" not in str(info.value)
    assert part.stat().st_size == 5_000
    monkeypatch.setattr(dl, "_open_from", real)
    got = download_dataset("toy", tmp_path / "data", mirror=root.as_uri(), sources=sources)
    assert got["train.txt"] == len(TRAIN) - 5_000


def test_an_endless_stream_is_cut_one_chunk_past_the_expected_size(tmp_path, mirror, monkeypatch):
    root, sources = mirror
    reads = []

    class Endless(io.RawIOBase):
        def read(self, n=-1):
            reads.append(n)
            return b"x" * n

    monkeypatch.setattr(dl, "_CHUNK", 4096)
    monkeypatch.setattr(dl, "_open_from", lambda url, offset, timeout: (Endless(), False))
    with pytest.raises(DataFormatError, match="the stream went on"):
        download_dataset("toy", tmp_path / "data", mirror=root.as_uri(), sources=sources)
    assert sum(reads) <= len(TRAIN) + 2 * 4096  # stopped at the expected size + one chunk
    assert not list((tmp_path / "data" / "toy").glob("*.part"))


def test_a_planted_link_as_partial_file_or_lock_is_refused_never_written(tmp_path, mirror):
    root, sources = mirror
    folder = tmp_path / "data" / "toy"
    folder.mkdir(parents=True)
    outside = tmp_path / "outside.txt"
    outside.write_bytes(b"precious\n")
    part = dl._part_path(folder, sources["toy"].outputs[0].remote)
    part.symlink_to(outside)
    with pytest.raises(FileExistsError, match=rf"^{re.escape(str(part))} is a symbolic link \(to {outside}\)"):
        download_dataset("toy", tmp_path / "data", mirror=root.as_uri(), sources=sources)
    assert outside.read_bytes() == b"precious\n"
    part.unlink()
    (folder / ".download.lock").unlink()
    (folder / ".download.lock").symlink_to(outside)
    with pytest.raises(FileExistsError, match="download.lock is a symbolic link"):
        download_dataset("toy", tmp_path / "data", mirror=root.as_uri(), sources=sources)
    assert outside.read_bytes() == b"precious\n"


def test_cli_download_dest_a_file_or_unwritable_is_one_line(tmp_path, mirror, monkeypatch, capsys):
    root, sources = mirror
    monkeypatch.setattr(dl, "SOURCES", {**SOURCES, **sources})
    afile = tmp_path / "afile"
    afile.write_text("x")
    assert main(["download", "toy", "--dest", str(afile), "--mirror", root.as_uri()]) == 2
    assert capsys.readouterr().err == (f"rankrobust download: error: --dest {afile} is a file, not a folder; give a "
                                       f"folder (NAME/ goes inside it)\n")

    def read_only(self, *args, **kwargs):
        raise OSError(30, "Read-only file system", str(self))

    monkeypatch.setattr(Path, "mkdir", read_only)
    assert main(["download", "toy", "--dest", str(tmp_path / "ro"), "--mirror", root.as_uri()]) == 2
    err = capsys.readouterr().err
    assert err == (f"rankrobust download: error: cannot write {tmp_path / 'ro' / 'toy'} (Read-only file system); "
                   f"choose a writable folder with --dest\n")


def test_the_mirror_download_gives_files_the_umask_mode(tmp_path):
    from rankrobust.safe_io import file_mode

    src = tmp_path / "mirror" / "toy"
    src.mkdir(parents=True)
    for name in ("train.txt.gz", "test.txt.gz"):
        (src / name).write_bytes(gzip.compress(b"0 1\n"))
    folder = dl.download("toy", tmp_path / "data", (tmp_path / "mirror").as_uri(), sha256={
        n: sha((src / n).read_bytes()) for n in ("train.txt.gz", "test.txt.gz")})
    assert all((folder / n).stat().st_mode & 0o777 == file_mode() for n in ("train.txt.gz", "test.txt.gz"))


class _HalfHandler(_RangeHandler):
    """Declares the whole file's Content-Length, sends half of it and closes the connection."""

    def do_GET(self):  # noqa: N802
        self.send_response(200)
        self.send_header("Content-Length", str(len(TRAIN)))
        self.end_headers()
        self.wfile.write(TRAIN[:len(TRAIN) // 2])
        self.wfile.flush()
        self.close_connection = True


@pytest.mark.netns  # starts an HTTP server: inside the loopback-only namespace (tests/loopback.py)
def test_http_server_closing_halfway_keeps_the_partial_file(tmp_path):
    try:
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _HalfHandler)
    except OSError as err:
        pytest.skip(f"no loopback server here ({err})")
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        sources = toy_sources()
        with pytest.raises(DownloadError, match=rf"interrupted after {len(TRAIN) // 2:,} of {len(TRAIN):,} bytes"):
            download_dataset("toy", tmp_path / "data", mirror=f"http://127.0.0.1:{server.server_port}",
                             sources=sources)
    finally:
        server.shutdown()
    assert dl._part_path(tmp_path / "data" / "toy", sources["toy"].outputs[0].remote).stat().st_size == len(TRAIN) // 2
