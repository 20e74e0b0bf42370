"""Tests of rankrobust.data: readers, errors, splits, registry, embedded lastfm, download."""
from __future__ import annotations

import gzip
import hashlib
import pickle
import re
import warnings

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import REPO, random_interactions, require_shared
from rankrobust.data import (
    DataFormatError,
    DataNotFoundError,
    Dataset,
    Interactions,
    carve_validation,
    dataset_stats,
    download,
    list_datasets,
    load_dataset,
    load_files,
    read_lightgcn,
    read_table,
    split_per_user,
    write_lightgcn,
)
from rankrobust.data.registry import EMBEDDED_DIR, KNOWN_SHA256

FAST = settings(max_examples=40, deadline=None)


def write_text(path, text: str):
    """Write ``text`` to ``path`` (gzip when the name ends in .gz) and return the path."""
    data = text.encode()
    path.write_bytes(gzip.compress(data) if path.suffix == ".gz" else data)
    return path


def same(a: Interactions, b: Interactions) -> bool:
    return a.shape == b.shape and np.array_equal(a.indptr, b.indptr) and np.array_equal(a.indices, b.indices)


@st.composite
def interactions(draw, max_users=30, max_items=40):
    n_users = draw(st.integers(1, max_users))
    n_items = draw(st.integers(1, max_items))
    density = draw(st.floats(0.0, 1.0))
    seed = draw(st.integers(0, 2**31 - 1))
    rng = np.random.default_rng(seed)
    u, i = np.nonzero(rng.random((n_users, n_items)) < density)
    return Interactions.from_pairs(u, i, n_users, n_items)


# ------------------------------------------------------------------- errors
def test_error_message_names_file_line_and_problem():
    e = DataFormatError("train.txt.gz", "item id 'x3' is not a non-negative integer", 17)
    assert str(e) == "train.txt.gz line 17: item id 'x3' is not a non-negative integer"
    assert isinstance(e, ValueError)
    assert (e.path, e.line) == ("train.txt.gz", 17)
    assert str(DataFormatError("a.txt", "file is empty")) == "a.txt: file is empty"
    back = pickle.loads(pickle.dumps(e))
    assert str(back) == str(e) and back.line == 17
    nf = pickle.loads(pickle.dumps(DataNotFoundError("x: gone")))
    assert isinstance(nf, FileNotFoundError) and str(nf) == "x: gone"


# ------------------------------------------------------------------ readers
@pytest.mark.parametrize("name", ["data.txt", "data.txt.gz"])
def test_read_lightgcn_plain_and_gz(tmp_path, name):
    path = write_text(tmp_path / name, "0 1 2 3\n1 0\n\n2\n3 5 4\n")
    u, i = read_lightgcn(path)
    assert u.dtype == np.int64 and i.dtype == np.int64
    assert u.tolist() == [0, 0, 0, 1, 3, 3]
    assert i.tolist() == [1, 2, 3, 0, 5, 4]


def test_read_lightgcn_gzip_detected_by_magic_and_whitespace_variants(tmp_path):
    path = tmp_path / "noext"
    path.write_bytes(gzip.compress(b"0\t1  2\r\n1 3"))  # tabs, CRLF, no final newline
    u, i = read_lightgcn(path)
    assert u.tolist() == [0, 0, 1] and i.tolist() == [1, 2, 3]


@given(interactions())
@FAST
def test_lightgcn_round_trip(tmp_path_factory, inter):
    path = tmp_path_factory.mktemp("rt") / "x.txt.gz"
    write_lightgcn(inter, path)
    back = Interactions.from_pairs(*read_lightgcn(path), *inter.shape) if inter.nnz else None
    if inter.nnz:
        assert same(back, inter)
    else:
        with pytest.raises(DataFormatError, match="empty"):
            read_lightgcn(path)


def test_write_lightgcn_is_deterministic(tmp_path):
    inter = random_interactions(20, 15, 0.3, seed=1)
    write_lightgcn(inter, tmp_path / "a.txt.gz")
    write_lightgcn(inter, tmp_path / "b.txt.gz")
    assert (tmp_path / "a.txt.gz").read_bytes() == (tmp_path / "b.txt.gz").read_bytes()
    assert not list(tmp_path.glob("*.tmp"))


@pytest.mark.parametrize("content, line, problem", [
    ("0 1 2\n1 2 x3\n", 2, "item id 'x3' is not a non-negative integer"),
    ("0 1\n1 2\n2 -4 5\n", 3, "item id '-4' is negative"),
    ("0 1\n-1 2\n", 2, "user id '-1' is negative"),
    ("0 1\n1 2.5\n", 2, "item id '2.5' is not a non-negative integer"),
    ("0 1\n\n\nu7 2\n", 4, "user id 'u7' is not a non-negative integer"),
    ("0 1,2,3\n", 1, "item id '1,2,3' is not a non-negative integer"),
    ("user item\n0 1\n", 1, "user id 'user' is not a non-negative integer"),
    ("0 1\n1 12345678901234567890\n", 2, "item id '12345678901234567890' is too large"),
])
@pytest.mark.parametrize("suffix", [".txt", ".txt.gz"])
def test_read_lightgcn_bad_token(tmp_path, content, line, problem, suffix):
    path = write_text(tmp_path / f"train{suffix}", content)
    with pytest.raises(DataFormatError) as info:
        read_lightgcn(path)
    msg = str(info.value)
    assert msg.startswith(f"{path} line {line}: ")
    assert f"train{suffix}" in msg and problem in msg
    assert info.value.line == line


@pytest.mark.parametrize("content", ["", "\n\n  \n"])
def test_read_lightgcn_empty_file(tmp_path, content):
    path = write_text(tmp_path / "empty.txt", content)
    with pytest.raises(DataFormatError, match=r"empty\.txt: file is empty"):
        read_lightgcn(path)


def test_read_lightgcn_missing_file_and_bad_gzip(tmp_path):
    missing = tmp_path / "nope" / "train.txt.gz"
    with pytest.raises(FileNotFoundError, match=re.escape(str(missing))):
        read_lightgcn(missing)
    bad = tmp_path / "bad.txt.gz"
    bad.write_bytes(b"\x1f\x8bnot really gzip")
    with pytest.raises(DataFormatError, match=r"bad\.txt\.gz: not a valid gzip file"):
        read_lightgcn(bad)


def test_read_table_csv_string_ids_and_maps(tmp_path):
    path = write_text(tmp_path / "log.csv", "user,item,timestamp\nbob,song-b,3\namy,song-a,1\nbob,song-a,2\n")
    t = read_table(path)
    assert t.user_ids.tolist() == ["amy", "bob"] and t.item_ids.tolist() == ["song-a", "song-b"]
    assert t.users.tolist() == [1, 0, 1] and t.items.tolist() == [1, 0, 0]
    assert t.timestamps.tolist() == [3, 1, 2]
    # ids map back to the originals
    assert [(t.user_ids[u], t.item_ids[i]) for u, i in zip(t.users, t.items)] == \
        [("bob", "song-b"), ("amy", "song-a"), ("bob", "song-a")]
    inter = t.to_interactions()
    assert inter.shape == (2, 2) and inter.nnz == 3


def test_read_table_tsv_gz_int_ids_custom_columns(tmp_path):
    path = write_text(tmp_path / "log.tsv.gz", "uid\tiid\n10\t7\n3\t7\n10\t100\n")
    t = read_table(path, user_col="uid", item_col="iid")
    assert t.user_ids.tolist() == [3, 10] and t.item_ids.tolist() == [7, 100]  # sorted numerically
    assert t.timestamps is None
    assert t.users.tolist() == [1, 0, 1] and t.items.tolist() == [0, 0, 1]


def test_read_table_parquet_and_sniffed_separator(tmp_path):
    frame = pd.DataFrame({"user": ["a", "b", "a"], "item": [5, 6, 6], "timestamp": [1.0, 2.0, 3.0]})
    frame.to_parquet(tmp_path / "log.parquet")
    t = read_table(tmp_path / "log.parquet")
    assert t.users.tolist() == [0, 1, 0] and t.item_ids.tolist() == [5, 6] and t.timestamps.tolist() == [1, 2, 3]
    path = write_text(tmp_path / "log.dat", "user;item\nx;1\ny;2\n")
    t2 = read_table(path)
    assert t2.user_ids.tolist() == ["x", "y"] and t2.item_ids.tolist() == [1, 2]


def test_read_table_errors(tmp_path):
    path = write_text(tmp_path / "log.csv", "userid,item\n1,2\n")
    with pytest.raises(DataFormatError) as info:
        read_table(path)
    msg = str(info.value)
    assert "log.csv" in msg and "'user'" in msg and "columns present: 'userid', 'item'" in msg

    path = write_text(tmp_path / "header_only.csv", "user,item\n")
    with pytest.raises(DataFormatError, match=r"header_only\.csv: table has no rows"):
        read_table(path)
    path = write_text(tmp_path / "blank.csv", "")
    with pytest.raises(DataFormatError, match=r"blank\.csv: file is empty"):
        read_table(path)
    path = write_text(tmp_path / "hole.csv", "user,item\n1,2\n\n3,\n")
    with pytest.raises(DataFormatError, match=r"hole\.csv line 4: missing item id"):
        read_table(path)
    with pytest.raises(FileNotFoundError, match="absent.csv"):
        read_table(tmp_path / "absent.csv")


# ------------------------------------------------------------------- splits
FRACTIONS = st.sampled_from([(0.8, 0.1, 0.1), (0.7, 0.1, 0.2), (0.5, 0.5), (1.0,), (0.9, 0.1), (0.6, 0.0, 0.4),
                             (0.25, 0.25, 0.25, 0.25)])


@given(interactions(), FRACTIONS, st.integers(0, 2**32 - 1))
@FAST
def test_split_per_user_is_a_partition(inter, fractions, seed):
    parts = split_per_user(inter, fractions, seed)
    assert len(parts) == len(fractions)
    assert all(p.shape == inter.shape for p in parts)
    assert sum(p.nnz for p in parts) == inter.nnz  # disjoint, given the union below
    union = parts[0]
    for p in parts[1:]:
        union = union.union(p)
    assert same(union, inter)
    # per-user sizes: cumulative cut points within one item of n * cumsum(fractions)
    n = inter.user_counts()
    sizes = np.stack([p.user_counts() for p in parts], axis=1)
    cum = np.cumsum(sizes, axis=1)
    target = n[:, None] * np.cumsum(fractions)[None, :]
    assert (np.abs(cum - target) <= 1.0 + 1e-9).all()
    assert (sizes[n > 0, 0] >= 1).all()  # every user with items keeps one in the first part
    # seeded determinism
    again = split_per_user(inter, fractions, seed)
    assert all(same(a, b) for a, b in zip(parts, again))


def test_split_fractions_are_close_to_target():
    inter = random_interactions(50, 400, 0.25, seed=3)
    train, valid, test = split_per_user(inter, (0.8, 0.1, 0.1), seed=0)
    n = inter.user_counts()
    assert np.abs(train.user_counts() - 0.8 * n).max() <= 1
    assert np.abs(valid.user_counts() - 0.1 * n).max() <= 1
    assert np.abs(test.user_counts() - 0.1 * n).max() <= 1


@given(st.integers(0, 2**31), st.integers(0, 2**31))
@settings(max_examples=20, deadline=None)
def test_split_different_seeds_differ(seed_a, seed_b):
    if seed_a == seed_b:
        return
    inter = random_interactions(30, 60, 0.5, seed=7)  # ~900 pairs: a collision is practically impossible
    a = split_per_user(inter, (0.8, 0.2), seed_a)
    b = split_per_user(inter, (0.8, 0.2), seed_b)
    assert not same(a[1], b[1])


def test_split_small_users_and_bad_fractions():
    inter = Interactions.from_pairs([0, 1, 1, 2, 2, 2], [0, 0, 1, 0, 1, 2], 4, 3)  # user 3 has no items
    train, valid, test = split_per_user(inter, (0.8, 0.1, 0.1), seed=0)
    assert train.user_counts().tolist() == [1, 2, 2, 0]
    assert (valid.user_counts() + test.user_counts()).tolist() == [0, 0, 1, 0]
    for bad in [(0.5, 0.4), (1.2, -0.2), (), (float("nan"), 1.0)]:
        with pytest.raises(ValueError, match="fractions"):
            split_per_user(inter, bad, seed=0)


@given(interactions(), st.sampled_from([0.1, 0.2, 0.5, 0.9]), st.integers(0, 1000))
@FAST
def test_carve_validation(inter, fraction, seed):
    rest, valid = carve_validation(inter, fraction, seed)
    assert rest.nnz + valid.nnz == inter.nnz and same(rest.union(valid), inter)
    n = inter.user_counts()
    assert (rest.user_counts()[n >= 1] >= 1).all()  # single-item users keep their item in train
    assert (np.abs(valid.user_counts() - fraction * n) <= 1 + 1e-9).all()
    r2, v2 = carve_validation(inter, fraction, seed)
    assert same(r2, rest) and same(v2, valid)


def test_carve_validation_edges():
    inter = random_interactions(10, 20, 0.3, seed=0)
    rest, valid = carve_validation(inter, 0.0)
    assert same(rest, inter) and valid.nnz == 0 and valid.shape == inter.shape
    for bad in (-0.1, 1.0, 1.5):
        with pytest.raises(ValueError, match="fraction"):
            carve_validation(inter, bad)


def test_dataset_stats():
    inter = Interactions.from_pairs([0, 0, 0, 1, 2], [0, 1, 2, 0, 0], 4, 5)
    s = dataset_stats(inter)
    assert (s["users"], s["items"], s["interactions"]) == (4, 5, 5)
    assert s["density"] == pytest.approx(5 / 20)
    assert (s["active_users"], s["active_items"]) == (3, 3)
    assert s["mean_per_user"] == pytest.approx(5 / 3) and s["median_per_user"] == 1
    assert (s["min_per_user"], s["max_per_user"], s["max_per_item"]) == (1, 3, 3)
    assert 0 < s["item_gini"] < 1
    empty = dataset_stats(Interactions.empty(3, 2))
    assert empty["interactions"] == 0 and empty["mean_per_user"] == 0.0


def test_dataset_shape_check_and_stats():
    a = random_interactions(5, 6, 0.5, seed=0)
    with pytest.raises(ValueError, match="shape"):
        Dataset("x", a, Interactions.empty(5, 7), a)
    tr, va = carve_validation(a, 0.3, seed=0)
    ds = Dataset("x", tr, va, Interactions.empty(5, 6))
    assert (ds.n_users, ds.n_items) == (5, 6)
    s = ds.stats()
    assert s["train"] == tr.nnz and s["valid"] == va.nnz and s["test"] == 0
    assert s["all"]["interactions"] == a.nnz and s["leaky_validation"] is False


# --------------------------------------------------------- embedded lastfm
def test_embedded_lastfm():
    ds = load_dataset("lastfm")
    assert ds.name == "lastfm" and not ds.leaky_validation
    assert (ds.n_users, ds.n_items) == (1812, 2762)
    assert (ds.train.nnz, ds.valid.nnz, ds.test.nnz) == (56199, 7063, 6976)
    in_train = ds.train.item_counts() > 0
    assert in_train[ds.valid.indices].all() and in_train[ds.test.indices].all()
    assert (ds.train.user_counts() > 0).all()
    for a, b in ((ds.train, ds.valid), (ds.train, ds.test), (ds.valid, ds.test)):
        assert a.difference(b).nnz == a.nnz  # no overlap
    leaky = load_dataset("LastFM", valid_is_test=True)
    assert leaky.leaky_validation and same(leaky.valid, leaky.test)
    assert same(leaky.train, ds.train.union(ds.valid))


def test_embedded_lastfm_files_match_readme():
    readme = (EMBEDDED_DIR / "lastfm" / "README.md").read_text()
    for split in ("train", "valid", "test"):
        digest = hashlib.sha256((EMBEDDED_DIR / "lastfm" / f"{split}.txt.gz").read_bytes()).hexdigest()
        assert digest in readme, f"{split}.txt.gz changed without rebuilding its README"
    assert "non-commercial" in readme and "HetRec" in readme and "scripts/build_lastfm.py" in readme


# ---------------------------------------------------------------- registry
def test_list_datasets():
    infos = {d.name: d for d in list_datasets()}
    assert set(infos) >= {"lastfm", "yelp2018", "gowalla", "ml", "ml-100k"}
    assert infos["lastfm"].available and infos["lastfm"].embedded
    assert all(d.description for d in infos.values())


@pytest.mark.parametrize("name, close", [("yelp", "yelp2018"), ("lastfn", "lastfm"), ("gowala", "gowalla")])
def test_unknown_dataset_suggests_closest(name, close):
    with pytest.raises(ValueError, match=f"did you mean '{close}'"):
        load_dataset(name)


def test_missing_external_dataset_says_where_it_looked(tmp_path):
    with pytest.raises(FileNotFoundError) as info:
        load_dataset("gowalla", data_dir=tmp_path)
    msg = str(info.value)
    assert str(tmp_path / "gowalla") in msg and "--data-dir" in msg and "RANKROBUST_DATA" in msg
    assert "download" in msg
    infos = {d.name: d for d in list_datasets(data_dir=tmp_path)}
    assert not infos["gowalla"].available and infos["gowalla"].where == str(tmp_path / "gowalla")


def _fake_external(root, name="ml-100k", n_users=40, n_items=30, seed=0, plain=False):
    inter = random_interactions(n_users, n_items, 0.3, seed=seed)
    train, test = split_per_user(inter, (0.8, 0.2), seed=seed)
    folder = root / name
    folder.mkdir(parents=True)
    suffix = ".txt" if plain else ".txt.gz"
    write_lightgcn(train, folder / f"train{suffix}")
    write_lightgcn(test, folder / f"test{suffix}")
    return train, test


@pytest.mark.parametrize("plain", [False, True])
def test_external_dataset_via_env_var(tmp_path, monkeypatch, plain):
    train, test = _fake_external(tmp_path, plain=plain)
    monkeypatch.setenv("RANKROBUST_DATA", str(tmp_path))
    ds = load_dataset("ml-100k", valid_fraction=0.2, seed=3)
    assert (ds.n_users, ds.n_items) == train.union(test).shape
    assert same(ds.test, test) and same(ds.train.union(ds.valid), train)
    assert ds.train.nnz + ds.valid.nnz == train.nnz
    assert abs(ds.valid.nnz - 0.2 * train.nnz) <= 0.05 * train.nnz + 40
    assert same(load_dataset("ml-100k", valid_fraction=0.2, seed=3).valid, ds.valid)
    assert not same(load_dataset("ml-100k", valid_fraction=0.2, seed=4).valid, ds.valid)
    leaky = load_dataset("ml-100k", valid_is_test=True)
    assert leaky.leaky_validation and same(leaky.train, train) and same(leaky.valid, test)
    assert {d.name: d.available for d in list_datasets()}["ml-100k"]


def test_load_files_lightgcn_shape_is_max_over_splits(tmp_path):
    tr = write_text(tmp_path / "tr.txt", "0 1 2\n1 0\n")
    te = write_text(tmp_path / "te.txt.gz", "0 3\n1 7\n")
    va = write_text(tmp_path / "va.txt", "1 2\n5\n")  # user 5 has a line but no items
    ds = load_files(tr, te, valid=va, name="mine")
    # user files are remapped jointly (issue 10, item 5): users {0, 1} (5 has no item), items {0, 1, 2, 3, 7}
    assert ds.name == "mine" and (ds.n_users, ds.n_items) == (2, 5)
    assert ds.item_ids.tolist() == [0, 1, 2, 3, 7] and ds.user_ids.tolist() == [0, 1]
    assert ds.valid.row(1).tolist() == [2] and ds.train.nnz == 3
    carved = load_files(tr, te, valid_fraction=0.5, seed=1)
    assert carved.train.nnz + carved.valid.nnz == 3 and (carved.n_users, carved.n_items) == (2, 5)
    leaky = load_files(tr, te, valid=va, valid_is_test=True)
    assert leaky.leaky_validation and leaky.train.nnz == 4 and same(leaky.valid, leaky.test)


def test_load_files_tables_remap_jointly(tmp_path):
    tr = write_text(tmp_path / "tr.csv", "user,item\nbob,x\namy,y\namy,x\n")
    te = write_text(tmp_path / "te.csv", "user,item\nbob,z\n")
    ds = load_files(tr, te, valid_fraction=0.0)
    assert (ds.n_users, ds.n_items) == (2, 3)  # amy=0, bob=1; x=0, y=1, z=2
    assert ds.train.row(0).tolist() == [0, 1] and ds.train.row(1).tolist() == [0]
    assert ds.test.row(1).tolist() == [2]
    with pytest.raises(ValueError, match="mix"):
        load_files(tr, write_text(tmp_path / "te.txt", "0 1\n"))


def test_load_files_bad_file_names_it(tmp_path):
    tr = write_text(tmp_path / "tr.txt", "0 1\n")
    te = write_text(tmp_path / "te.txt", "0 2\n1 oops\n")
    with pytest.raises(DataFormatError, match=r"te\.txt line 2: item id 'oops'"):
        load_files(tr, te)


# ------------------------------------------------ external (shared) datasets
EXPECTED = {  # users, items, train, test (shared/data/README.md)
    "yelp2018": (31668, 38048, 1237259, 324147),
    "gowalla": (29858, 40981, 810128, 217242),
    "ml": (6022, 3043, 796244, 99455),
}


@pytest.mark.parametrize("name", list(EXPECTED))
def test_shared_dataset(name):
    root = require_shared(name)
    users, items, n_train, n_test = EXPECTED[name]
    ds = load_dataset(name, data_dir=root, seed=0)
    assert (ds.n_users, ds.n_items) == (users, items)
    assert ds.train.nnz + ds.valid.nnz == n_train and ds.test.nnz == n_test
    assert ds.valid.nnz == pytest.approx(0.1 * n_train, rel=0.1)
    assert ds.train.difference(ds.test).nnz == ds.train.nnz
    if name == "ml":  # the smallest: also check the authors' leaky protocol
        leaky = load_dataset(name, data_dir=root, valid_is_test=True)
        assert leaky.leaky_validation and leaky.train.nnz == n_train and same(leaky.valid, leaky.test)


# ----------------------------------------------------------------- download
def _remote(tmp_path, name="toy"):
    remote = tmp_path / "remote"
    inter = random_interactions(12, 9, 0.4, seed=5)
    train, test = split_per_user(inter, (0.8, 0.2), seed=0)
    (remote / name).mkdir(parents=True)
    write_lightgcn(train, remote / name / "train.txt.gz")
    write_lightgcn(test, remote / name / "test.txt.gz")
    digests = {f: hashlib.sha256((remote / name / f).read_bytes()).hexdigest() for f in ("train.txt.gz", "test.txt.gz")}
    return remote, digests, train, test


def test_download_file_url_verified(tmp_path):
    remote, digests, train, test = _remote(tmp_path)
    dest = tmp_path / "data"
    folder = download("toy", dest, remote.as_uri(), sha256=digests)
    assert folder == dest / "toy"
    assert sorted(p.name for p in folder.iterdir()) == ["test.txt.gz", "train.txt.gz"]
    for f in digests:
        assert (folder / f).read_bytes() == (remote / "toy" / f).read_bytes()
    ds = load_files(folder / "train.txt.gz", folder / "test.txt.gz", valid_fraction=0.0)
    assert same(ds.test, Interactions.from_pairs(*test.to_pairs(), *ds.test.shape))


def test_download_wrong_sha256_leaves_nothing(tmp_path):
    remote, digests, _, _ = _remote(tmp_path)
    dest = tmp_path / "data"
    wrong = dict(digests, **{"test.txt.gz": "0" * 64})
    with pytest.raises(DataFormatError, match="sha256 mismatch") as info:
        download("toy", dest, remote.as_uri(), sha256=wrong)
    assert "test.txt.gz" in str(info.value)
    assert not (dest / "toy").exists()  # not even the train file, which did match
    # an existing folder keeps its old files and gains no partial ones
    (dest / "toy").mkdir(parents=True)
    (dest / "toy" / "train.txt.gz").write_bytes(b"old")
    with pytest.raises(DataFormatError):
        download("toy", dest, remote.as_uri(), sha256=wrong)
    assert [p.name for p in (dest / "toy").iterdir()] == ["train.txt.gz"]
    assert (dest / "toy" / "train.txt.gz").read_bytes() == b"old"


def test_download_missing_remote_and_unverified(tmp_path):
    remote, digests, _, _ = _remote(tmp_path)
    with pytest.raises(FileNotFoundError):
        download("absent", tmp_path / "d1", remote.as_uri())
    assert not (tmp_path / "d1" / "absent").exists()
    with pytest.warns(UserWarning, match="not verified"):
        download("toy", tmp_path / "d2", remote.as_uri())
    with pytest.raises(ValueError, match="invalid dataset name"):
        download("../evil", tmp_path, remote.as_uri())


def test_known_sha256_table_covers_the_external_datasets():
    for name in ("yelp2018", "gowalla", "ml", "ml-100k"):
        assert set(KNOWN_SHA256[name]) == {"train.txt.gz", "test.txt.gz"}
        assert all(re.fullmatch(r"[0-9a-f]{64}", v) for v in KNOWN_SHA256[name].values())


@pytest.mark.parametrize("name", ["ml-100k"])
def test_download_known_hash_from_shared(tmp_path, name):
    root = require_shared(name)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the known hashes are used: no 'not verified' warning
        folder = download(name, tmp_path, root.as_uri())
    assert (folder / "train.txt.gz").read_bytes() == (root / name / "train.txt.gz").read_bytes()


def test_repo_holds_no_restricted_data():
    for top in ("rankrobust", "tests", "scripts", "configs", "benchmarks", "docs"):
        for name in ("yelp2018", "gowalla", "ml", "ml-100k"):
            found = list((REPO / top).glob(f"**/{name}/train.txt*"))
            assert not found, f"{name} data must not live in the repository: {found}"


def test_same_interactions_however_ids_are_spelled(tmp_path):
    """LightGCN files with id gaps (items 0, 25, 50, ...) load as the same matrix as contiguous ids."""
    from tests.conftest import random_interactions

    train, test = random_interactions(12, 40, 0.2, seed=3), random_interactions(12, 40, 0.05, seed=4)
    test = test.difference(train)

    def write(inter, path, scale_u, scale_i):
        rows = [f"{u * scale_u} " + " ".join(str(i * scale_i) for i in inter.row(u)) for u in range(inter.n_users)
                if len(inter.row(u))]
        return write_text(path, "\n".join(rows) + "\n")

    plain = load_files(write(train, tmp_path / "a.txt", 1, 1), write(test, tmp_path / "b.txt", 1, 1))
    gapped = load_files(write(train, tmp_path / "c.txt", 7, 25), write(test, tmp_path / "d.txt", 7, 25))
    assert plain.train.shape == gapped.train.shape
    for split in ("train", "valid", "test"):
        assert same(getattr(plain, split), getattr(gapped, split)), split
    assert gapped.item_ids.tolist() == [25 * i for i in plain.item_ids.tolist()]


def test_table_ids_match_by_value_across_files(tmp_path):
    """A train CSV with ids 3 and a test CSV with ids 3.0 refer to the same user and item."""
    (tmp_path / "tr.csv").write_text("user,item\n3,1\n3,2\n4,1\n4,5\n")
    (tmp_path / "te.csv").write_text("user,item\n3.0,5.0\n4.0,2.0\n")
    ds = load_files(tmp_path / "tr.csv", tmp_path / "te.csv", valid_fraction=0.0)
    assert (ds.n_users, ds.n_items) == (2, 3) and ds.user_ids.tolist() == [3, 4]
    assert ds.test.row(0).tolist() == [2] and ds.test.row(1).tolist() == [1]


def test_mostly_cold_test_users_are_refused(tmp_path):
    """Test users absent from train (ids written differently) are an error naming the cause."""
    (tmp_path / "tr.csv").write_text("user,item\nu1,a\nu2,b\n")
    (tmp_path / "te.csv").write_text("user,item\nU1,a\nU2,b\n")
    with pytest.raises(DataFormatError, match="have no training interaction"):
        load_files(tmp_path / "tr.csv", tmp_path / "te.csv")


def test_test_pairs_in_train_and_cold_users_are_notes_naming_the_test_file(tmp_path):
    """Odd but not fatal test files are recorded on the Dataset (for metrics.json), not raised as raw warnings."""
    (tmp_path / "tr.csv").write_text("user,item\nu1,a\nu1,b\nu2,b\nu2,c\nu3,a\nu3,c\n")
    (tmp_path / "te.csv").write_text("user,item\nu1,a\nu2,a\nu3,b\nu4,c\n")  # (u1, a) is in train; u4 is cold
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ds = load_files(tmp_path / "tr.csv", tmp_path / "te.csv", valid_fraction=0.0)
    te = str(tmp_path / "te.csv")
    assert len(ds.notes) == 2 and all(note.startswith(f"{te}: ") for note in ds.notes)
    assert "1 test pair also occurs in train" in ds.notes[0] and "1 of 4 test users has no" in ds.notes[1]
    (tmp_path / "clean.csv").write_text("user,item\nu1,c\nu2,a\nu3,b\n")
    assert load_files(tmp_path / "tr.csv", tmp_path / "clean.csv", valid_fraction=0.0).notes == ()


def test_data_dir_with_a_lastfm_folder_says_the_embedded_copy_was_read(tmp_path):
    (tmp_path / "lastfm").mkdir()
    note = load_dataset("lastfm", data_dir=tmp_path).notes
    assert len(note) == 1 and f"{tmp_path / 'lastfm'} was not read" in note[0] and "data.train_path" in note[0]
    assert load_dataset("lastfm", data_dir=tmp_path / "elsewhere").notes == ()


def test_a_dataset_folder_missing_one_split_names_it(tmp_path):
    (tmp_path / "ml-100k").mkdir()
    (tmp_path / "ml-100k" / "train.txt").write_text("0 1 2\n1 0\n")
    with pytest.raises(DataNotFoundError, match=r"incomplete in .*ml-100k: .*train.txt is there but test.txt\(.gz\) "
                                                r"is not; restore it \(`rankrobust download ml-100k"):
        load_dataset("ml-100k", data_dir=tmp_path)
    with pytest.raises(DataNotFoundError, match="not found"):  # nothing there at all: the general message
        load_dataset("ml-100k", data_dir=tmp_path / "nothing")


def test_a_user_item_rating_timestamp_file_is_not_read_as_lightgcn(tmp_path):
    """MovieLens u.data rows (user item rating timestamp, users repeating): ratings would become item ids."""
    from rankrobust.data.readers import read_lightgcn

    path = tmp_path / "u.data.txt"
    path.write_text("1\t5\t3\t881250949\n1\t7\t4\t881250950\n2\t5\t1\t881250951\n")
    with pytest.raises(DataFormatError, match=r"every line holds 4 numbers and user ids repeat across lines: a table "
                                              r"of 'user item rating timestamp' rows, not LightGCN lines"):
        read_lightgcn(path)
    path.write_text("1 5 3 8\n2 5 1 9\n")  # one line per user: LightGCN, however many items
    assert read_lightgcn(path)[1].tolist() == [5, 3, 8, 5, 1, 9]


def test_a_dataset_downloaded_into_the_default_folder_is_found_without_flags(tmp_path, monkeypatch):
    """`rankrobust download NAME` puts NAME/ in ./data by default; `--dataset NAME` then finds it there."""
    from rankrobust.data.registry import DOWNLOAD_DIR, resolve_data_dir

    folder = tmp_path / DOWNLOAD_DIR / "ml-100k"
    folder.mkdir(parents=True)
    (folder / "train.txt").write_text("0 0 1 2\n1 1 2 3\n2 0 3 4\n")
    (folder / "test.txt").write_text("0 3\n1 4\n2 1\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("RANKROBUST_DATA", raising=False)
    assert resolve_data_dir() == tmp_path / DOWNLOAD_DIR
    ds = load_dataset("ml-100k", valid_is_test=True)
    assert (ds.train.n_users, ds.train.n_items) == (3, 5)
