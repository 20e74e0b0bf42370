"""Data identity (issue 10, item 7): every run records a fingerprint of each data file it read, the dataset
cache is keyed by it, a sweep re-runs cells whose data changed, and runs on user files are labelled by them."""
from __future__ import annotations

import hashlib
import json
import os

import pytest

from rankrobust.config import config_from_dict
from rankrobust.data import split_per_user, write_lightgcn
from rankrobust.data import identity
from rankrobust.data.identity import current_digest, fingerprint, identity_digest
from rankrobust.experiment import load_data, run_experiment
from rankrobust.runs import RunDir, SweepDir
from rankrobust.store import load_store, store_problems
from rankrobust.sweeps import parse_spec, run_sweep
from rankrobust.sweeps.runner import data_digests, prepare_out
from tests.conftest import random_interactions


def write_data(folder, seed=0, n_users=40, n_items=60):
    """train.txt / test.txt of a random dataset in ``folder``; returns their paths (str)."""
    folder.mkdir(parents=True, exist_ok=True)
    train, test = split_per_user(random_interactions(n_users, n_items, 0.15, seed), (0.8, 0.2), seed=0)
    write_lightgcn(train, folder / "train.txt")
    write_lightgcn(test, folder / "test.txt")
    return str(folder / "train.txt"), str(folder / "test.txt")


def tiny_tree(train, test):
    return {"data": {"train_path": train, "test_path": test}, "model": {"dim": 8},
            "train": {"epochs": 1, "batch_size": 64, "num_negatives": 4, "device": "cpu", "ks": [5, 20],
                      "patience": 0}}


def sha(path):
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def test_run_records_size_and_sha256_of_every_file_it_read(tmp_path):
    train, test = write_data(tmp_path / "myset")
    valid = tmp_path / "myset" / "valid.txt"
    write_lightgcn(split_per_user(random_interactions(40, 60, 0.05, 3), (1.0,), seed=0)[0], valid)
    tree = tiny_tree(train, test)
    tree["data"]["valid_path"] = str(valid)
    run_experiment(config_from_dict(tree), tmp_path / "run", progress=False)
    files = RunDir(tmp_path / "run").metrics()["data_files"]
    assert set(files) == {"train", "test", "valid"}
    for split, path in (("train", train), ("test", test), ("valid", str(valid))):
        assert files[split] == {"path": os.path.realpath(path), "size": os.path.getsize(path), "sha256": sha(path)}


def test_registered_dataset_runs_record_their_files(tmp_path):
    cfg = config_from_dict({"model": {"dim": 8}, "train": {"epochs": 1, "device": "cpu"}})
    summary = run_experiment(cfg, progress=False)
    files = summary.metrics["data_files"]
    assert set(files) == {"train", "valid", "test"}  # the embedded lastfm ships its validation split
    assert all(f["sha256"] == sha(f["path"]) and f["path"].endswith(f"lastfm/{s}.txt.gz") for s, f in files.items())


def test_rewritten_file_is_read_again_not_served_from_the_cache(tmp_path):
    train, test = write_data(tmp_path / "d", seed=0)
    dc = config_from_dict(tiny_tree(train, test)).data
    first = load_data(dc)
    assert load_data(dc) is first  # unchanged files: the cached dataset
    stat = os.stat(train)
    new_train, _ = split_per_user(random_interactions(40, 60, 0.3, seed=7), (0.8, 0.2), seed=0)
    write_lightgcn(new_train, train)
    os.utime(train, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # even with the old mtime restored
    second = load_data(dc)
    assert second is not first and second.train.nnz + second.valid.nnz == new_train.nnz


def test_each_file_is_hashed_once_per_stat_signature(tmp_path, monkeypatch):
    path = tmp_path / "f.txt"
    path.write_text("0 1 2\n")
    calls = []
    real = identity.sha256_file
    monkeypatch.setattr(identity, "sha256_file", lambda p, *a, **k: calls.append(p) or real(p, *a, **k))
    first = fingerprint(path)
    assert fingerprint(path) == first and len(calls) == 1  # reused
    path.write_text("0 1 3\n")  # same size, new content
    second = fingerprint(path)
    assert len(calls) == 2 and second.sha256 == sha(path) != first.sha256 and second.size == first.size


def test_identity_digest_ignores_paths_and_follows_content():
    a = {"train": {"path": "/x/train.txt", "size": 3, "sha256": "ab"}}
    assert identity_digest(a) == identity_digest({"train": {"path": "/moved/train.txt", "size": 3, "sha256": "ab"}})
    assert identity_digest(a) != identity_digest({"train": {"path": "/x/train.txt", "size": 3, "sha256": "cd"}})


def _spec(train, test, name="ident"):
    return parse_spec({"name": name, "base": tiny_tree(train, test), "grid": {"loss.name": ["sl", "bpr"]},
                       "seeds": [0]})


def test_sweep_reruns_the_cells_whose_data_file_was_rewritten(tmp_path):
    train, test = write_data(tmp_path / "d", seed=0)
    spec = _spec(train, test)
    out = tmp_path / "sweep"
    first = run_sweep(spec, out, progress=False)
    assert (first.done, first.skipped) == (2, 0)
    again = run_sweep(spec, out, progress=False)
    assert (again.done, again.skipped) == (0, 2)  # same files: nothing to redo
    write_data(tmp_path / "d", seed=5)  # rewritten at the same paths
    rerun = run_sweep(_spec(train, test), out, progress=False)
    assert (rerun.done, rerun.skipped) == (2, 0)  # the changed fingerprint makes every cell outdated
    store = load_store(out)
    digest = current_digest(spec.cells[0].config.data)
    assert len(store) == 2 and (store["data_hash"] == digest).all()
    for run_dir in store["run_dir"]:
        assert RunDir(run_dir).metrics()["data_files"]["train"]["sha256"] == sha(train)


def test_results_leave_out_runs_made_from_older_data(tmp_path):
    train, test = write_data(tmp_path / "d", seed=0)
    spec = _spec(train, test)
    out = tmp_path / "sweep"
    run_sweep(spec, out, progress=False)
    write_data(tmp_path / "d", seed=5)
    prepare_out(spec, SweepDir(out))  # a sweep started on the new data (then killed before any cell ran)
    assert json.loads((out / "sweep.json").read_text())["data"] == data_digests(spec)
    assert load_store(out).empty
    full = load_store(out, include_stale=True)
    assert full["outdated"].all() and not full["stale"].any()
    (line,) = store_problems(full, out)
    assert line.startswith("2 outdated run(s) left out (made with another config than the current spec's, or from "
                           "data files that have changed since)")


def test_runs_on_user_files_are_labelled_by_the_files_not_the_default_dataset(tmp_path):
    train, test = write_data(tmp_path / "myset")
    out = tmp_path / "sweep"
    run_sweep(_spec(train, test), out, progress=False)
    store = load_store(out)
    assert (store["data.name"] == "myset/train").all()
    assert load_data(config_from_dict(tiny_tree(train, test)).data).name == "myset/train"


def test_missing_user_file_names_its_key(tmp_path):
    train, _ = write_data(tmp_path / "d")
    cfg = config_from_dict(tiny_tree(train, str(tmp_path / "d" / "nope.txt")))
    with pytest.raises(FileNotFoundError, match=r"nope.txt: no such file \(data.test_path\); check the path"):
        run_experiment(cfg, progress=False)
