"""benchmarks/peers.py: RecBole's files hold rankrobust's pairs; the rankrobust side reports its epochs (no RecBole needed)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import yaml

from benchmarks.peers import RECBOLE_CONFIG, load, write_recbole_files

REPO = Path(__file__).resolve().parents[1]


def _pairs(path: Path) -> set[tuple[int, int]]:
    header, *lines = path.read_text().splitlines()
    assert header == "user_id:token\titem_id:token"
    return {tuple(int(v) for v in line.split("\t")) for line in lines}


def test_recbole_files_hold_the_same_pairs(tmp_path):
    config = yaml.safe_load(write_recbole_files("lastfm", tmp_path).read_text())
    data = load("lastfm")
    name = RECBOLE_CONFIG["dataset"]
    assert config["data_path"] == str(tmp_path) and config["train_batch_size"] == 1024
    for split, inter in (("train", data.train), ("valid", data.test), ("test", data.test)):
        users, items = inter.to_pairs()
        assert _pairs(tmp_path / name / f"{name}.{split}.inter") == set(zip(users.tolist(), items.tolist()))


def test_worker_reports_its_epochs():
    done = subprocess.run([sys.executable, "benchmarks/peers.py", "--worker", "lightgcn", "--dataset", "lastfm",
                           "--epochs", "1", "--warmup", "0"], cwd=REPO, capture_output=True, text=True, timeout=300,
                          env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin", "HOME": str(Path.home())})
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["program"] == "rankrobust lightgcn" and len(report["epoch_s"]) == 1 and report["epoch_s"][0] > 0
    assert report["batches"] == -(-load("lastfm").train.nnz // 1024) and report["threads"] == 1
    assert report["peak_rss_mib"] > 0


def test_unknown_program_is_one_line():
    done = subprocess.run([sys.executable, "benchmarks/peers.py", "--programs", "rankrobust-mf,nope"], cwd=REPO,
                          capture_output=True, text=True, timeout=300,
                          env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin", "HOME": str(Path.home())})
    assert done.returncode == 2 and done.stderr.strip().splitlines() == [
        f"peers.py: error: --programs: unknown nope; choose from {', '.join(__import__('benchmarks.peers').peers.PROGRAMS)}"]
