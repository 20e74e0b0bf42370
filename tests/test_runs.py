import os
import json

import pandas as pd
import pytest
import torch

from rankrobust import runs


def test_atomic_write_leaves_old_file_on_failure(tmp_path):
    target = tmp_path / "metrics.json"
    runs.write_json(target, {"a": 1})
    with pytest.raises(ValueError):
        runs.write_json(target, {"a": float("nan")})  # NaN is refused before anything is moved
    assert json.loads(target.read_text()) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]  # no temp files left


def test_atomic_path_cleans_up_on_exception(tmp_path):
    target = tmp_path / "x.parquet"
    with pytest.raises(RuntimeError):
        with runs.atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


def test_status_roundtrip(tmp_path):
    assert runs.read_status(tmp_path) is None
    runs.write_status(tmp_path, "failed", "Traceback: boom")
    assert runs.read_status(tmp_path) == "failed"
    assert "boom" in (tmp_path / "status").read_text()
    runs.write_status(tmp_path, "done")
    assert runs.read_status(tmp_path) == "done"
    with pytest.raises(ValueError):
        runs.write_status(tmp_path, "maybe")


def test_tensors_and_frames_roundtrip(tmp_path):
    runs.write_text(tmp_path / "config.json", "{}")
    runs.save_tensors(tmp_path / "model.pt", {"user_emb": torch.ones(2, 3)})
    runs.write_parquet(tmp_path / "per_user.parquet", pd.DataFrame({"user": [0, 1], "recall@20": [0.5, 1.0]}))
    run = runs.load_run(tmp_path)
    assert torch.equal(run.tensors()["user_emb"], torch.ones(2, 3))
    assert run.per_user()["recall@20"].tolist() == [0.5, 1.0]
    assert run.noise().empty


def test_load_run_rejects_non_run(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a run directory"):
        runs.load_run(tmp_path)


# ---------------------------------------------------------------------------- damaged files name themselves (item 13)
@pytest.mark.parametrize("text,match", [("{\"test\": {\"ndcg", "is not valid JSON"), ("", "is empty"),
                                        ("[1, 2]", "holds a JSON list")])
def test_damaged_json_raises_naming_the_file(tmp_path, text, match):
    run = runs.RunDir(tmp_path / "run")
    run.prepare()
    run.write_config("{}")
    (run.path / "metrics.json").write_text(text)
    with pytest.raises(runs.RunFolderError, match=match) as caught:
        run.metrics()
    assert not isinstance(caught.value, json.JSONDecodeError)
    assert str(run.path / "metrics.json") in str(caught.value) and "run it again" in str(caught.value)
    (run.path / "config.json").write_text("{")
    with pytest.raises(runs.RunFolderError, match=r"config\.json is not valid JSON"):
        run.config()
    with pytest.raises(runs.RunFolderError, match=r"config\.json"):
        runs.load_run(run.path)
    sweep = runs.SweepDir(tmp_path)
    sweep.spec_path.write_text("{\"name\": ")
    with pytest.raises(runs.RunFolderError, match=r"sweep\.json is not valid JSON.*rankrobust sweep SPEC --out"):
        sweep.spec()


def test_damaged_table_and_weights_name_the_file(tmp_path):
    run = runs.RunDir(tmp_path)
    (tmp_path / "per_user.parquet").write_bytes(b"PAR1 not really")
    (tmp_path / "model.pt").write_bytes(b"\x00\x01")
    with pytest.raises(runs.RunFolderError, match=r"per_user\.parquet cannot be read"):
        run.table("per_user")
    with pytest.raises(runs.RunFolderError, match=r"model\.pt cannot be read"):
        run.tensors()


# ---------------------------------------------------------------------------- --overwrite replaces a run (item 14)
def old_run(folder) -> runs.RunDir:
    """A finished run with every kind of file, plus a temp file a killed write left."""
    run = runs.RunDir(folder)
    run.prepare()
    run.write_config('{"old": true}')
    run.write_metrics({"test": {"ndcg@20": 0.5}})
    for name in run.TABLES:
        run.write_table(name, pd.DataFrame({"user": [0]}))
    run.save_tensors({"user_emb": torch.ones(1)})
    (run.path / ".metrics.json.abc123.tmp").write_text("half")
    run.finish()
    return run


def test_overwrite_leaves_only_the_new_runs_files(tmp_path):
    run = old_run(tmp_path / "run")
    with pytest.raises(FileExistsError, match="--overwrite"):
        runs.RunDir(run.path).prepare()
    run.prepare(overwrite=True)  # old: metrics, weights, fairness of the previous run stayed beside the new run
    assert list(run.path.iterdir()) == [] and run.status() is None and run.metrics() == {}
    run.write_config('{"new": true}')
    run.fail("Traceback\nValueError: the new run failed")
    assert sorted(p.name for p in run.path.iterdir()) == ["config.json", "status"]
    assert not run.has_table("fairness") and not (run.path / "model.pt").exists()


def test_a_failed_attempt_is_replaced_without_overwrite(tmp_path):
    """A refused or crashed run (status 'failed') holds nothing worth keeping: a plain rerun replaces it;
    a finished run, or a failed one beside a user's files, still needs --overwrite / is never emptied."""
    run = runs.RunDir(tmp_path / "run")
    run.prepare()
    run.write_config('{"model": {"dim": 100000000}}')
    run.fail("Traceback\nConfigError: model.dim = 100,000,000 is too large")
    run.prepare()  # old: "already holds files; pass --overwrite"
    assert list(run.path.iterdir()) == []
    (run.path / "notes.txt").write_text("mine")
    run.fail("Traceback\nValueError: again")
    with pytest.raises(FileExistsError, match="not a run's"):
        run.prepare()
    with pytest.raises(FileExistsError, match="--overwrite"):
        runs.RunDir(old_run(tmp_path / "done").path).prepare()


def test_overwrite_refuses_a_folder_with_files_that_are_not_a_runs(tmp_path):
    run = old_run(tmp_path)  # as with `--out .`
    (tmp_path / "notes.txt").write_text("mine")
    (tmp_path / "data").mkdir()
    before = sorted(p.name for p in tmp_path.iterdir())
    with pytest.raises(FileExistsError, match=r"not a run's \(data/, notes\.txt\).*nothing was removed"):
        run.prepare(overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # old: the run files went, silently


def test_overwritten_run_without_fairness_has_no_fairness_table(tmp_path):
    """`train --overwrite` without --fairness over a run with it: no fairness.parquet or section is left over."""
    from analysis.probes import probes_for
    from rankrobust.config import config_from_dict
    from rankrobust.experiment import run_experiment
    from tests.test_sweep import write_tiny_data

    train, test = write_tiny_data(tmp_path / "data")
    cfg = config_from_dict({"data": {"train_path": train, "test_path": test}, "model": {"dim": 8},
                            "train": {"epochs": 1, "batch_size": 64, "num_negatives": 8, "device": "cpu",
                                      "ks": [5, 20], "patience": 0}})
    out = tmp_path / "run"
    run_experiment(cfg, out, progress=False, probes=probes_for(fairness=True))
    assert runs.RunDir(out).has_table("fairness")
    run_experiment(cfg, out, progress=False, overwrite=True, probes=())
    assert not runs.RunDir(out).has_table("fairness") and "fairness" not in runs.RunDir(out).metrics()


# ---------------------------------------------------------------------------- a file given for a folder
def test_a_file_given_for_a_run_folder_names_the_folder_to_pass(tmp_path):
    """A run's own file names its folder; any other file says what to pass; never 'delete the run folder'."""
    run = runs.RunDir(tmp_path / "demo")
    run.prepare()
    run.write_config("{}")
    run.write_metrics({})
    run.finish()
    given = run.path / "metrics.json"
    for read in (runs.load_run, runs.read_status, lambda p: runs.RunDir(p).config(),
                 lambda p: runs.RunDir(p).metrics(), lambda p: runs.RunDir(p).table("per_user"),
                 lambda p: runs.RunDir(p).tensors()):
        with pytest.raises(runs.RunFolderError) as err:
            read(given)
        assert str(err.value) == f"{given} is a file, not a run folder: pass the folder that holds it ({run.path})"
    (tmp_path / "notes.md").write_text("x")
    with pytest.raises(runs.RunFolderError, match=r"notes\.md is a file, not a run folder: pass a run folder "
                                                  r"\(one written by `rankrobust train --out DIR`\)$"):
        runs.load_run(tmp_path / "notes.md")
    sweep = runs.SweepDir(tmp_path / "sw")
    sweep.write_spec({"name": "x"})
    with pytest.raises(runs.RunFolderError, match=r"sweep\.json is a file of the sweep folder .*sw, not a run "
                                                  r"folder: pass one of its runs"):
        runs.load_run(sweep.spec_path)
    with pytest.raises(runs.RunFolderError, match=r"sweep\.json is a file, not a sweep folder: pass the folder "
                                                  r"that holds it"):
        runs.SweepDir(sweep.spec_path).spec()


# ---------------------------------------------------------------------------- issue 25: links, modes, run lock
def _umask() -> int:
    old = os.umask(0o022)
    os.umask(old)
    return old


def test_written_files_get_the_umask_mode_not_0600(tmp_path):
    runs.write_json(tmp_path / "metrics.json", {"a": 1})
    runs.write_parquet(tmp_path / "t.parquet", pd.DataFrame({"a": [1]}))
    for name in ("metrics.json", "t.parquet"):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o666 & ~_umask()


def test_a_symlinked_run_folder_is_refused_never_written_through(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (tmp_path / "run").symlink_to(outside)
    run = runs.RunDir(tmp_path / "run")
    for write in (lambda: run.fail("boom"), lambda: run.prepare(), lambda: run.write_metrics({}),
                  lambda: run.locked().__enter__()):
        with pytest.raises(runs.LinkRefused, match=rf"^{tmp_path / 'run'} is a symbolic link \(to {outside}\)"):
            write()
    assert list(outside.iterdir()) == []


def test_a_symlinked_sweep_lock_is_refused_and_its_target_kept(tmp_path):
    from rankrobust.sweeps.runner import locked

    target = tmp_path / "precious.txt"
    target.write_text("keep me\n")
    sweep = runs.SweepDir(tmp_path / "out")
    sweep.path.mkdir()
    sweep.lock_path.symlink_to(target)
    with pytest.raises(runs.LinkRefused, match=r"\.sweep\.lock is a symbolic link"):
        with locked(sweep):
            pass
    assert target.read_text() == "keep me\n"


def test_a_run_folder_is_locked_while_a_run_writes_it(tmp_path):
    run = runs.RunDir(tmp_path / "run")
    with run.locked():
        with pytest.raises(runs.RunLocked, match=rf"^{tmp_path / 'run'} is being written by rankrobust run pid "
                                                 rf"{os.getpid()} on .*; wait for it to end or choose another --out"):
            with run.locked():
                pass
        run.prepare(overwrite=True)  # the holder itself prepares the folder: its lock file is kept
        assert (run.path / runs.RunDir.LOCK).exists()
    assert list(run.path.iterdir()) == []  # released: the lock file is gone
    with run.locked():  # and can be taken again
        pass


def test_a_second_train_into_a_locked_run_folder_stops_at_once(tmp_path):
    from rankrobust.config import config_from_dict
    from rankrobust.experiment import run_experiment

    run = runs.RunDir(tmp_path / "run")
    run.path.mkdir()
    run.write_config('{"mine": true}')
    run.finish()
    with run.locked():  # another process writing it
        with pytest.raises(runs.RunLocked):
            run_experiment(config_from_dict({"train": {"epochs": 1}}), run.path, progress=False, overwrite=True)
    assert run.config() == {"mine": True} and run.status() == "done"  # untouched
