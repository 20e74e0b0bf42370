"""Training loop, experiment runner and the `rankrobust` command, end to end on tiny data."""
import json

import pandas as pd
import pytest
import torch

from rankrobust import train as train_mod
from rankrobust.cli import main
from analysis.probes import probes_for
from rankrobust.config import config_from_dict, prune_inapplicable
from rankrobust.probes import Probe
from rankrobust.experiment import load_data, prepare_data, run_experiment
from rankrobust.train import TrainingDiverged, fit
from tests.test_sweep import write_tiny_data


def tiny_config(tmp_path, **sections):
    train, test = write_tiny_data(tmp_path / "data")
    tree = {"data": {"train_path": train, "test_path": test}, "model": {"dim": 8},
            "train": {"epochs": 3, "batch_size": 64, "num_negatives": 8, "device": "cpu", "ks": [5, 20],
                      "patience": 0}}
    for key, value in sections.items():
        tree.setdefault(key, {}).update(value)
    return config_from_dict(prune_inapplicable(tree)[0])  # the base serves every sampler (in_batch has no M)


@pytest.mark.parametrize("model,loss,sampler", [
    ("mf", "sl", "uniform"), ("mf", "bsl", "uniform_exclude"), ("lightgcn", "bsl", "in_batch"),
    ("mf", "bpr", "popularity"), ("lightgcn", "ccl", "uniform"),
])
def test_same_seed_same_numbers(tmp_path, model, loss, sampler):
    cfg = tiny_config(tmp_path, model={"name": model, "dropout": 0.1}, loss={"name": loss},
                      train={"sampler": sampler}, noise={"pos_ratio": 0.2, "neg_prob": 0.0 if sampler == "in_batch" else 0.2})
    data, _ = prepare_data(cfg, load_data(cfg.data))
    a = fit(cfg, data, torch.device("cpu"), progress=False)
    b = fit(cfg, data, torch.device("cpu"), progress=False)
    pd.testing.assert_frame_equal(a.history.drop(columns=["train_seconds", "eval_seconds"]),
                                  b.history.drop(columns=["train_seconds", "eval_seconds"]))
    assert a.test.metrics == b.test.metrics
    c = fit(cfg.with_overrides({"train.seed": 1}), data, torch.device("cpu"), progress=False)
    assert c.history["loss"].tolist() != a.history["loss"].tolist()


def test_nan_loss_fails_clearly(tmp_path, monkeypatch):
    cfg = tiny_config(tmp_path)
    monkeypatch.setattr(train_mod, "get_loss", lambda name: lambda pos, neg, **kw: (pos * float("nan")).mean())
    with pytest.raises(TrainingDiverged, match="became nan at epoch 1"):
        run_experiment(cfg, tmp_path / "run", progress=False)
    status = (tmp_path / "run" / "status").read_text()
    assert status.startswith("failed") and "TrainingDiverged" in status
    assert not (tmp_path / "run" / "metrics.json").exists()


def test_early_stopping_restores_best(tmp_path):
    cfg = tiny_config(tmp_path, train={"epochs": 30, "patience": 2, "lr": 0.05})
    calls = []

    class Recorder(Probe):
        def epoch_end(self, epoch, model, row):
            calls.append(epoch)

    data, _ = prepare_data(cfg, load_data(cfg.data))
    result = fit(cfg, data, torch.device("cpu"), progress=False, probes=(Recorder(),))
    assert calls == list(range(1, len(result.history) + 1))
    best = result.history["valid_recall@20"].max()
    assert result.valid.metrics["recall@20"] == pytest.approx(best)
    if result.stopped_early:
        assert len(result.history) - result.best_epoch == 2


def test_noise_is_recorded_and_masked(tmp_path):
    cfg = tiny_config(tmp_path, noise={"pos_ratio": 0.3})
    summary = run_experiment(cfg, tmp_path / "run", progress=False)
    noise = pd.read_parquet(tmp_path / "run" / "noise.parquet")
    assert len(noise) > 0 and set(noise["kind"]) == {"noisy_positive"}
    data = summary.data
    keys = set(zip(noise["user"], noise["item"]))
    tu, ti = data.test.to_pairs()
    assert not keys & set(zip(tu.tolist(), ti.tolist()))  # a fake positive is never a held-out true one
    topk = summary.fit.test.topk
    users = summary.fit.test.users
    for row, u in enumerate(users.tolist()):  # masked at test time: no training (noisy or clean) item recommended
        assert not set(topk[row].tolist()) & set(data.seen.row(u).tolist())


def test_run_directory_contents(tmp_path):
    cfg = tiny_config(tmp_path, loss={"name": "bsl"}, data={"valid_is_test": True})
    run_experiment(cfg, tmp_path / "run", progress=False, probes=probes_for(fairness=True, track_variance=True))
    names = {p.name for p in (tmp_path / "run").iterdir()}
    assert {"config.json", "metrics.json", "epochs.csv", "per_user.parquet", "noise.parquet", "model.pt",
            "fairness.parquet", "variance.csv", "status"} <= names
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["leaky_validation"] is True and any("valid = test" in w for w in metrics["warnings"])
    assert {"recall@20", "ndcg@20"} <= set(metrics["test"])
    weights = torch.load(tmp_path / "run" / "model.pt", weights_only=True)
    assert {"user_emb", "item_emb", "final_user", "final_item"} <= set(weights)
    with pytest.raises(FileExistsError, match="--overwrite"):
        run_experiment(cfg, tmp_path / "run", progress=False)


def test_cli_train_prints_table(tmp_path, capsys):
    train, test = write_tiny_data(tmp_path / "data")
    code = main(["train", "--set", f"data.train_path={train}", "--set", f"data.test_path={test}", "--loss", "bsl",
                 "--tau1", "0.5", "--tau2", "0.1", "--epochs", "2", "--negatives", "8", "--batch-size", "64",
                 "--device", "cpu", "--dim", "8", "--out", str(tmp_path / "run"), "--quiet", "--fairness"])
    out = capsys.readouterr().out
    assert code == 0 and "recall" in out and "ndcg" in out and "@20" in out and "group" in out
    cfg = json.loads((tmp_path / "run" / "config.json").read_text())
    assert cfg["loss"] == {**cfg["loss"], "name": "bsl", "tau1": 0.5, "tau2": 0.1}


@pytest.mark.parametrize("argv,needle", [
    (["train", "--nosie-pos", "0.2"], "did you mean '--noise-pos'"),
    (["trian"], "did you mean 'train'"),
])
def test_cli_typos_name_closest(argv, needle, capsys):
    with pytest.raises(SystemExit):
        main(argv)
    assert needle in capsys.readouterr().err


def test_cli_invalid_values(capsys):
    assert main(["train", "--loss", "bls", "--epochs", "1"]) == 2
    assert "did you mean 'bsl'" in capsys.readouterr().err
    assert main(["train", "--set", "train.epoch=3"]) == 2
    assert "did you mean 'epochs'" in capsys.readouterr().err


def test_cli_datasets(capsys):
    assert main(["datasets", "--no-stats"]) == 0
    out = capsys.readouterr().out
    assert "lastfm" in out and "yelp2018" in out
