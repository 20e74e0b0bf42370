"""The training loop (rankrobust/train.py) on tiny data: reproducibility, early stopping.

The experiment runner is tested in test_experiment.py, the command in test_cli.py.
"""
import pandas as pd
import pytest
import torch

from rankrobust.config import config_from_dict, prune_inapplicable
from rankrobust.probes import Probe
from rankrobust.experiment import load_data, prepare_data
from rankrobust.train import fit
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
