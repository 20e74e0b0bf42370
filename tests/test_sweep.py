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
    assert {"loss.name", "noise.pos_ratio", "test.recall@20", "test.ndcg@20", "fairness.gini"} <= set(store.columns)
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
