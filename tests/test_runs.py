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
