"""Sweep execution (rankrobust/sweeps/runner.py, cell.py): resumable, including a kill midway.

Spec parsing is tested in test_spec.py, the results store in test_store.py.
"""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from rankrobust import runs
from rankrobust.store import load_store
from rankrobust.sweeps import load_spec, pending_cells, run_sweep
from tests.conftest import REPO, random_interactions


def write_tiny_data(folder: Path, seed: int = 0) -> tuple[str, str]:
    """Train/test LightGCN files of a random 40 x 60 dataset."""
    folder.mkdir(parents=True, exist_ok=True)
    full = random_interactions(40, 60, 0.15, seed)
    from rankrobust.data import split_per_user, write_lightgcn

    train, test = split_per_user(full, (0.8, 0.2), seed=seed)
    write_lightgcn(train, folder / "train.txt")
    write_lightgcn(test, folder / "test.txt")
    return str(folder / "train.txt"), str(folder / "test.txt")


def tiny_spec(tmp_path: Path, losses=("sl", "bsl"), ratios=(0.0, 0.2), seeds=(0,), epochs=2, name="tiny") -> Path:
    train, test = write_tiny_data(tmp_path / "data")
    spec = {
        "name": name,
        "base": {"data": {"train_path": train, "test_path": test},
                 "model": {"dim": 8},
                 "train": {"epochs": epochs, "batch_size": 64, "num_negatives": 8, "device": "cpu",
                           "ks": [5, 20], "patience": 0}},
        "grid": {"loss.name": list(losses), "noise.pos_ratio": list(ratios)},
        "seeds": list(seeds),
        "overrides": [{"when": {"loss.name": "bsl"}, "set": {"loss.tau1": 0.5}}],
        "options": {"fairness": True},
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def test_run_resume_and_failures(tmp_path):
    spec = load_spec(tiny_spec(tmp_path))
    out = tmp_path / "out"
    report = run_sweep(spec, out, progress=False)
    assert report.done == 4 and not report.failed
    store = load_store(out)
    assert len(store) == 4 and (store["status"] == "done").all()
    assert {"loss.name", "noise.pos_ratio", "test.recall@20", "test.ndcg@20", "fairness.exposure_gini"} <= set(store.columns)
    # corrupt one run (interrupted: no status) and fail another on purpose; the rerun fixes the first only
    victim = Path(store.loc[0, "run_dir"])
    (victim / "status").unlink()
    again = run_sweep(spec, out, progress=False)
    assert again.skipped == 3 and again.done == 1
    assert (load_store(out)["status"] == "done").all()


def test_failing_run_is_recorded_and_sweep_continues(tmp_path):
    path = tiny_spec(tmp_path, losses=("sl",), ratios=(0.0, 0.2))
    spec_doc = yaml.safe_load(path.read_text())
    spec_doc["overrides"] = [{"when": {"noise.pos_ratio": 0.2}, "set": {"data.train_path": str(tmp_path / "gone.txt")}}]
    path.write_text(yaml.safe_dump(spec_doc))
    report = run_sweep(load_spec(path), tmp_path / "out", progress=False)
    store = load_store(tmp_path / "out")
    assert report.done == 1 and len(report.failed) == 1
    failed = store[store["status"] == "failed"]
    assert len(failed) == 1 and "gone.txt" in (Path(failed.iloc[0]["run_dir"]) / "status").read_text()


def test_kill_midway_then_resume(tmp_path):
    """SIGKILL the sweep process after some runs finished; the rerun completes with no loss or duplicates."""
    spec_path = tiny_spec(tmp_path, losses=("sl", "bsl", "bpr"), ratios=(0.0, 0.1, 0.2), epochs=4)
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-m", "rankrobust.cli", "sweep", str(spec_path), "--out", str(out),
                             "--quiet"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline:
        done = [p for p in (out / "runs").glob("*") if runs.read_status(p) == "done"] if (out / "runs").exists() else []
        if len(done) >= 2:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    finished_before = {p.name: (p / "metrics.json").read_text() for p in (out / "runs").glob("*")
                       if runs.read_status(p) == "done"}
    assert len(finished_before) >= 2
    spec = load_spec(spec_path)
    todo, done_count = pending_cells(spec, out)
    assert done_count == len(finished_before) and done_count + len(todo) == 9
    report = run_sweep(spec, out, progress=False)
    assert report.skipped == len(finished_before) and report.done == 9 - len(finished_before)
    store = load_store(out)
    assert len(store) == 9 and store["cell_id"].is_unique and (store["status"] == "done").all()
    for name, text in finished_before.items():  # finished runs were not redone
        assert (out / "runs" / name / "metrics.json").read_text() == text
    leftovers = [p for p in out.rglob("*.tmp")]
    assert not leftovers
    for run_dir in (out / "runs").iterdir():
        pd.read_parquet(run_dir / "per_user.parquet")  # every file readable


def test_edited_spec_reruns_changed_cells_only(tmp_path):
    path = tiny_spec(tmp_path)
    out = tmp_path / "out"
    run_sweep(load_spec(path), out, progress=False)
    doc = yaml.safe_load(path.read_text())
    doc["overrides"].append({"when": {"loss.name": "sl"}, "set": {"train.lr": 0.01}})
    path.write_text(yaml.safe_dump(doc))
    report = run_sweep(load_spec(path), out, progress=False)
    assert report.skipped == 2 and report.done == 2  # the two SL cells changed, the BSL cells did not
    store = load_store(out)
    assert (store.loc[store["loss.name"] == "sl", "train.lr"] == 0.01).all()


# ---------------------------------------------------------------------------- one sweep owns a folder (item 9)
def test_second_sweep_on_a_folder_is_refused_naming_the_owner(tmp_path, capsys):
    """A live owner (another process) blocks with its pid, host and start time; its dead lock file does not."""
    import socket

    from rankrobust.cli import main
    from rankrobust.runs import SweepDir
    from rankrobust.sweeps.runner import SweepLocked, lock_owner, locked

    spec_path = tiny_spec(tmp_path, losses=("sl",), ratios=(0.0,), epochs=1)
    out = tmp_path / "out"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys; from rankrobust.runs import SweepDir; "
         "from rankrobust.sweeps.runner import locked\n"
         f"with locked(SweepDir({str(out)!r})):\n    print('held', flush=True); sys.stdin.read()"],
        env={**os.environ, "PYTHONPATH": str(REPO)}, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        assert main(["sweep", str(spec_path), "--out", str(out), "--quiet"]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1
        assert f"{out} is in use by rankrobust sweep pid {holder.pid} on {socket.gethostname()} since " in err
        assert err.endswith("wait for it or choose another --out")
        assert not (out / "runs").exists()  # nothing was run
    finally:
        holder.kill()
        holder.wait()
    # the owner died: its lock file (with its dead pid) is left behind, does not block, and is overwritten
    assert lock_owner(SweepDir(out))["pid"] == holder.pid
    with locked(SweepDir(out)):
        assert lock_owner(SweepDir(out))["pid"] == os.getpid()
        with pytest.raises(SweepLocked, match=rf"in use by rankrobust sweep pid {os.getpid()} on "):
            run_sweep(load_spec(spec_path), out, progress=False)  # held in this process: refused too
    assert lock_owner(SweepDir(out)) is None  # emptied on release
    report = run_sweep(load_spec(spec_path), out, progress=False)
    assert report.done == 1


def test_leftover_lock_file_of_a_dead_pid_is_taken_over(tmp_path):
    import json as _json

    from rankrobust.runs import SweepDir
    from rankrobust.sweeps.runner import lock_owner, locked

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    sweep = SweepDir(tmp_path / "out")
    sweep.path.mkdir()
    sweep.lock_path.write_text(_json.dumps({"pid": dead.pid, "host": "somewhere", "started": 0}))
    with locked(sweep):
        assert lock_owner(sweep)["pid"] == os.getpid()


# ---------------------------------------------------------------------------- workers end with the sweep (item 10)
def child_pids(pid: int) -> list[int]:
    """Live (not zombie) processes whose parent is ``pid``."""
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                fields = (proc / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid and fields[0] != "Z":
                found.append(int(proc.name))
    return found


def alive(pid: int) -> bool:
    try:
        return (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
def test_workers_end_with_the_sweep(tmp_path, sig):
    """SIGTERM or SIGKILL to `sweep --jobs 2`: no worker survives it, and no cell starts afterwards."""
    spec_path = tiny_spec(tmp_path, losses=("sl", "bsl", "bpr"), ratios=(0.0, 0.1, 0.2), epochs=60)
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "rankrobust.cli", "sweep", str(spec_path), "--out", str(out),
                             "--jobs", "2", "--quiet"], env={**os.environ, "PYTHONPATH": str(REPO)},
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 120
        while time.time() < deadline:  # both workers are running a cell
            started = list((out / "runs").glob("*/config.json")) if (out / "runs").exists() else []
            if len(started) >= 2 and proc.poll() is None:
                break
            time.sleep(0.05)
        workers = child_pids(proc.pid)
        assert len(started) >= 2 and len(workers) >= 2, "the sweep did not start two workers"
        proc.send_signal(sig)
        proc.wait(timeout=30)
        deadline = time.time() + 5
        while time.time() < deadline and any(alive(p) for p in workers):
            time.sleep(0.05)
        assert not [p for p in workers if alive(p)], "a worker outlived the sweep"
        runs_then = sorted(p.name for p in (out / "runs").iterdir())
        time.sleep(1.0)
        assert sorted(p.name for p in (out / "runs").iterdir()) == runs_then  # no cell started since
        if sig == signal.SIGTERM:
            assert proc.returncode == 143
            err = proc.stderr.read()
            assert "stopped by SIGTERM" in err and "Traceback" not in err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


# ---------------------------------------------------------------------------- a dying worker fails one cell (item 11)
VICTIM = "loss.name=bsl__noise.pos_ratio=0.2__seed=0"  # the last cell: no new worker is needed after it


def run_or_die(config, run_dir, options, device=None):
    """A cell target that dies like a worker killed by the OOM killer on the VICTIM cell, midway."""
    from rankrobust.sweeps.cell import run_cell

    if Path(run_dir).name == VICTIM:
        os.kill(os.getpid(), signal.SIGKILL)
    return run_cell(config, run_dir, options, device)


def test_killed_worker_fails_only_its_cell(tmp_path, monkeypatch):
    import functools

    from rankrobust.sweeps import executors

    monkeypatch.setitem(executors.EXECUTORS, "local", functools.partial(executors.execute_local, target=run_or_die))
    spec = load_spec(tiny_spec(tmp_path, losses=("sl", "bsl"), ratios=(0.0, 0.2), epochs=2))
    out = tmp_path / "out"
    report = run_sweep(spec, out, jobs=2, progress=False)  # old: BrokenProcessPool aborted the whole sweep
    assert report.total == 4 and report.done == 3 and len(report.failed) == 1
    assert report.failed[0].startswith(VICTIM) and "worker process died (killed by signal 9" in report.failed[0]
    store = load_store(out).set_index("cell_id")
    assert len(store) == 4 and store.loc[VICTIM, "status"] == "failed"
    assert "worker process died (killed by signal 9, SIGKILL" in store.loc[VICTIM, "error"]
    assert (store.drop(VICTIM)["status"] == "done").all()
    monkeypatch.undo()
    again = run_sweep(spec, out, progress=False)  # the failed cell is redone on the next sweep
    assert again.skipped == 3 and again.done == 1 and (load_store(out)["status"] == "done").all()


# ---------------------------------------------------------------------------- results use the current cells (item 12)
def test_removed_seed_and_grid_value_leave_results_and_prune(tmp_path, capsys):
    from rankrobust.cli import main

    path = tiny_spec(tmp_path, losses=("sl",), ratios=(0.0, 0.2), seeds=(0, 1), epochs=1)
    out = tmp_path / "out"
    assert run_sweep(load_spec(path), out, progress=False).done == 4
    doc = yaml.safe_load(path.read_text())
    doc["seeds"], doc["grid"]["noise.pos_ratio"] = [0], [0.0]  # drop a seed and a grid value
    path.write_text(yaml.safe_dump(doc))
    report = run_sweep(load_spec(path), out, progress=False)
    assert report.total == 1 and report.skipped == 1 and len(report.stale) == 3
    assert "3 stale run folder(s)" in str(report) and "--prune" in str(report)
    store = load_store(out)  # old: all 4 runs, averaging two seeds and two noise ratios into the results
    assert store["cell_id"].tolist() == ["loss.name=sl__noise.pos_ratio=0.0__seed=0"]
    everything = load_store(out, include_stale=True)
    assert len(everything) == 4 and everything["stale"].sum() == 3 and not everything["outdated"].any()
    assert main(["results", str(out)]) == 0
    text = capsys.readouterr().out
    assert f"{out}: 1 runs 1 done" in text
    stale_lines = [line for line in text.splitlines() if "stale" in line]
    assert len(stale_lines) == 1 and "3 stale run folder(s)" in stale_lines[0]
    assert f"runs/loss.name=sl__noise.pos_ratio=0.0__seed=1" in stale_lines[0]
    assert f"rankrobust sweep {path} --out {out} --prune" in stale_lines[0]
    # --dry-run --prune lists and deletes nothing; --prune deletes only stale run folders (not a user's folder)
    keep = out / "runs" / "loss.name=sl__noise.pos_ratio=0.2__seed=0"
    (keep / "notes.txt").write_text("mine")
    assert main(["sweep", str(path), "--out", str(out), "--dry-run", "--prune"]) == 0
    assert "--prune would delete" in capsys.readouterr().out and len(list((out / "runs").iterdir())) == 4
    assert main(["sweep", str(path), "--out", str(out), "--prune", "--quiet"]) == 0
    assert "pruned 2 stale run folder(s)" in capsys.readouterr().out
    assert sorted(p.name for p in (out / "runs").iterdir()) == sorted([store["cell_id"][0], keep.name])
    assert (keep / "notes.txt").read_text() == "mine"


def test_runs_of_an_edited_spec_not_yet_rerun_are_outdated(tmp_path):
    """The spec changed a cell's config and the sweep stopped before redoing it: that run is not in results."""
    from rankrobust.runs import SweepDir
    from rankrobust.store import write_store
    from rankrobust.sweeps.runner import prepare_out

    path = tiny_spec(tmp_path, losses=("sl", "bsl"), ratios=(0.0,), epochs=1)
    out = tmp_path / "out"
    run_sweep(load_spec(path), out, progress=False)
    doc = yaml.safe_load(path.read_text())
    doc["overrides"].append({"when": {"loss.name": "sl"}, "set": {"train.lr": 0.01}})
    path.write_text(yaml.safe_dump(doc))
    prepare_out(load_spec(path), SweepDir(out))  # what a sweep does first, then killed before any cell ran
    write_store(out)
    assert load_store(out)["loss.name"].tolist() == ["bsl"]
    everything = load_store(out, include_stale=True).set_index("loss.name")
    assert everything["outdated"].to_dict() == {"bsl": False, "sl": True}


# ---------------------------------------------------------------------------- a damaged run is redone (item 13)
def test_truncated_metrics_is_reported_and_redone(tmp_path, capsys):
    import json

    from rankrobust.cli import main
    from rankrobust.runs import RunDir, RunFolderError
    from rankrobust.store import write_store
    from rankrobust.sweeps.cell import is_finished

    path = tiny_spec(tmp_path, losses=("sl",), ratios=(0.0, 0.2), epochs=1)
    spec = load_spec(path)
    out = tmp_path / "out"
    run_sweep(spec, out, progress=False)
    cell = spec.cells[0]
    run = RunDir(out / "runs" / cell.cell_id)
    text = (run.path / "metrics.json").read_text()
    (run.path / "metrics.json").write_text(text[: len(text) // 2])  # truncated (disk full, copy cut short)
    with pytest.raises(RunFolderError, match=r"metrics\.json is not valid JSON") as caught:
        run.metrics()  # old: a bare JSONDecodeError naming no file
    assert not isinstance(caught.value, json.JSONDecodeError) and str(run.path / "metrics.json") in str(caught.value)
    assert not is_finished(run, cell.config.to_dict())
    assert [c.cell_id for c in pending_cells(spec, out)[0]] == [cell.cell_id]
    store = write_store(out).set_index("cell_id")  # old: raised, so every later sweep stopped here
    assert store.loc[cell.cell_id, "status"] == "corrupt"
    assert "metrics.json" in store.loc[cell.cell_id, "error"]
    assert main(["results", str(out)]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if "unreadable" in line]
    assert len(lines) == 1 and str(run.path / "metrics.json") in lines[0]
    report = run_sweep(spec, out, progress=False)
    assert report.skipped == 1 and report.done == 1 and (load_store(out)["status"] == "done").all()


# ---------------------------------------------------------------------------- issue 25: a sign of progress early on
def _slow_cell(config, run_dir, options, device=None):
    """A stand-in for `run_cell`: one epoch's progress file written, then 1.5 s of 'training'."""
    from rankrobust.runs import RunDir

    folder = RunDir(run_dir)
    folder.path.mkdir(parents=True, exist_ok=True)
    folder.write_progress({"epoch": 1, "epochs": 3, "metric": "recall@20", "best": 0.5})
    time.sleep(1.5)
    return {"status": "done"}


@pytest.mark.parametrize("jobs", [1, 2])
def test_local_sweep_reports_running_cells_before_any_ends(tmp_path, jobs):
    """The bar used to sit at 0/N with no postfix until the first run ended (minutes): now the local executor
    sends the running cells' epoch and best validation value every poll, with one process or several."""
    from rankrobust.sweeps.executors import execute_local

    spec = load_spec(tiny_spec(tmp_path))
    seen: list[tuple[int, str]] = []
    finished: list[str] = []
    for cell, result in execute_local(spec, spec.cells[:2], runs.SweepDir(tmp_path / "out"), jobs,
                                      target=_slow_cell, on_progress=lambda t: seen.append((len(finished), t)),
                                      poll_seconds=0.2):
        assert result["status"] == "done"
        finished.append(cell.cell_id)
    before_first = [text for done, text in seen if done == 0]
    assert before_first, "no progress was reported while the first cells ran"
    want = (f"{jobs} running: epoch 1/3 (best recall@20 0.5000)" + (", 1/3 (0.5000)" if jobs == 2 else ""))
    assert want in before_first, before_first


def test_a_sweep_cell_records_its_epoch_and_best_validation_value(tmp_path):
    """`CellProbe` writes epoch, cap, metric and the best validation value so far (host values, per epoch)."""
    from rankrobust.sweeps.cell import run_cell
    from rankrobust.sweeps.executors import running_summary

    spec = load_spec(tiny_spec(tmp_path, losses=("sl",), ratios=(0.0,), epochs=2))
    cell = spec.cells[0]
    run_dir = tmp_path / "out" / "runs" / cell.cell_id
    assert run_cell(cell.config, str(run_dir), {})["status"] == "done"
    progress = runs.RunDir(run_dir).progress()
    epochs = pd.read_csv(run_dir / "epochs.csv")
    best = epochs["valid_recall@20"].max()
    assert progress == {"epoch": 2, "epochs": 2, "metric": "recall@20", "best": pytest.approx(best)}
    assert running_summary([str(run_dir)]) == f"1 running: epoch 2/2 (best recall@20 {best:.4f})"


def test_a_run_folder_planted_as_a_link_fails_its_cell_naming_the_link(tmp_path):
    """runs/<cell> as a symbolic link to a folder elsewhere: nothing is written or deleted there, and the cell's
    failure names the link (it used to read "OSError: Cannot call rmtree on a symbolic link")."""
    spec = load_spec(tiny_spec(tmp_path, losses=("sl",), ratios=(0.0, 0.2), epochs=1))
    out = tmp_path / "out"
    outside = tmp_path / "outside"
    (outside / "mine").mkdir(parents=True)
    (out / "runs").mkdir(parents=True)
    link = out / "runs" / spec.cells[0].cell_id
    link.symlink_to(outside)
    report = run_sweep(spec, out, progress=False)
    assert report.done == 1 and len(report.failed) == 1
    assert f"{link} is a symbolic link (to {outside})" in report.failed[0]
    assert sorted(p.name for p in outside.iterdir()) == ["mine"] and link.is_symlink()


def test_a_sweep_stopped_by_sigterm_leaves_a_store_listing_the_stopped_run(tmp_path):
    """SIGTERM while the first cell trains: its folder says failed, and the store lists it (it used to keep the
    empty table written at the start, so `results` printed '0 runs' beside a run folder)."""
    spec_path = tiny_spec(tmp_path, losses=("sl",), ratios=(0.0, 0.2), epochs=100000)
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "rankrobust.cli", "sweep", str(spec_path), "--out", str(out),
                             "--quiet"], env={**os.environ, "PYTHONPATH": str(REPO)},
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 120
        while time.time() < deadline and not list(out.glob("runs/*/config.json")):
            time.sleep(0.05)
        time.sleep(1.0)  # into training
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 143
    finally:
        if proc.poll() is None:
            proc.kill()
    store = load_store(out)
    assert store["status"].tolist() == ["failed"], store[["cell_id", "status"]]
    assert "stopped by SIGTERM" in (Path(store.loc[0, "run_dir"]) / "status").read_text()
