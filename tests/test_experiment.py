"""One experiment end to end (rankrobust/experiment.py): run folder, noise, failures, group-size warning."""
import json
from pathlib import Path

import pandas as pd
import pytest
import torch

from analysis.probes import probes_for
from rankrobust import train as train_mod
from rankrobust.config import config_from_dict
from rankrobust.experiment import group_size_warning, run_experiment
from rankrobust.losses import score_only_entry
from rankrobust.train import TrainingDiverged
from tests.test_train import tiny_config


def test_nan_loss_fails_clearly(tmp_path, monkeypatch):
    cfg = tiny_config(tmp_path)
    def nan_loss(pos, neg, **kw):
        return (pos * float("nan")).mean()

    monkeypatch.setattr(train_mod.LOSSES, "entry", lambda name: score_only_entry(nan_loss))
    with pytest.raises(TrainingDiverged, match="became nan at epoch 1"):
        run_experiment(cfg, tmp_path / "run", progress=False)
    status = (tmp_path / "run" / "status").read_text()
    assert status.startswith("failed") and "TrainingDiverged" in status
    assert not (tmp_path / "run" / "metrics.json").exists()


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


# ---------------------------------------------------------------------------- group-size warning (PROTOCOLS §9)
def loss_config(**loss):
    return config_from_dict({"loss": loss})


@pytest.mark.parametrize("loss", [{"name": "bsl", "mode": "paper"}, {"name": "bsl", "mode": "multi"},
                                  {"name": "bsl"}, {"name": "bsl", "mode": "paper", "tau1": 0.5}])
def test_group_size_warning_fires_for_grouped_bsl(loss):
    cfg = loss_config(**loss)
    text = group_size_warning(cfg, 1.075)  # yelp2018 at B = 1024 under pairs batching
    assert text is not None and "1.07" in text and "train.batching=users" in text
    assert group_size_warning(cfg, 1.999) is not None
    assert group_size_warning(cfg, 2.0) is None
    assert group_size_warning(cfg, 8.0) is None


@pytest.mark.parametrize("loss", [{"name": "sl"}, {"name": "bsl", "mode": "reweight"}, {"name": "bpr"},
                                  {"name": "ccl"}])
@pytest.mark.parametrize("group_size", [1.0, 1.075, 8.0])
def test_group_size_warning_never_without_grouped_positive_term(loss, group_size):
    assert group_size_warning(loss_config(**loss), group_size) is None


def group_warnings(metrics: dict) -> list[str]:
    return [w for w in metrics["warnings"] if "group size" in w]


def test_group_size_warning_stored_in_metrics(tmp_path):
    """BSL + pairs batching with small batches (group size < 2) warns in metrics.json; users batching does not."""
    cfg = tiny_config(tmp_path, loss={"name": "bsl", "tau1": 0.5},
                      train={"epochs": 1, "batch_size": 16, "batching": "pairs"})
    pairs = run_experiment(cfg, tmp_path / "pairs", progress=False)
    stored = json.loads((tmp_path / "pairs" / "metrics.json").read_text())
    assert pairs.metrics["group_size_mean"] < 2
    assert stored["group_size_mean"] == pytest.approx(pairs.fit.history["group_size_mean"].mean())
    assert len(group_warnings(stored)) == 1

    users = run_experiment(cfg.with_overrides({"train.batching": "users", "train.positives_per_user": 8,
                                               "train.batch_size": 64}), tmp_path / "users", progress=False)
    stored = json.loads((tmp_path / "users" / "metrics.json").read_text())
    assert users.metrics["group_size_mean"] >= 2
    assert group_warnings(stored) == []


def test_unused_bf16_is_stored_in_metrics(tmp_path):
    """train.bf16 with the gather scorer on CPU: the run records that it had no effect; with dense it does not."""
    cfg = tiny_config(tmp_path, train={"epochs": 1, "bf16": True, "scorer": "gather", "device": "cpu"})
    run_experiment(cfg, tmp_path / "gather", progress=False)
    stored = json.loads((tmp_path / "gather" / "metrics.json").read_text())
    assert [w for w in stored["warnings"] if w.startswith("train.bf16 = true had no effect")]
    run_experiment(cfg.with_overrides({"train.scorer": "dense"}), tmp_path / "dense", progress=False)
    stored = json.loads((tmp_path / "dense" / "metrics.json").read_text())
    assert not [w for w in stored["warnings"] if "train.bf16" in w]


def test_data_notes_and_oversampling_reach_metrics(tmp_path):
    """A test file sharing pairs with train, and more negatives than items: both in metrics.json → warnings."""
    cfg = tiny_config(tmp_path, train={"epochs": 1, "num_negatives": 70})  # the tiny catalog has 60 items
    train = Path(cfg.data.train_path).read_text().splitlines()
    shared = tmp_path / "test-with-train-pair.txt"
    shared.write_text(Path(cfg.data.test_path).read_text().rstrip("\n") + "\n" + train[0].split()[0] + " "
                      + train[0].split()[1] + "\n")
    run_experiment(cfg.with_overrides({"data.test_path": str(shared)}), tmp_path / "run", progress=False)
    stored = json.loads((tmp_path / "run" / "metrics.json").read_text())["warnings"]
    assert any(w.startswith(f"{shared}: ") and "in train (scored as hits" in w for w in stored)
    assert any(w.startswith("train.num_negatives = 70 is at least the catalog's 60 items") for w in stored)


# ---------------------------------------------------------------------------- evidence the run actually has
def all_keys(tree):
    if isinstance(tree, dict):
        for key, value in tree.items():
            yield key
            yield from all_keys(value)


def test_cutoffs_other_than_20(tmp_path):
    """ks = [5, 10], metric recall@10: nothing downstream (most-popular baseline, fairness, gradient accounting,
    variance) asks for a cutoff the run did not compute."""
    cfg = tiny_config(tmp_path, noise={"pos_ratio": 0.2},
                      train={"ks": [5, 10], "metric": "recall@10", "epochs": 2})
    summary = run_experiment(cfg, tmp_path / "run", progress=False,
                             probes=probes_for(fairness=True, track_variance=True))
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert (tmp_path / "run" / "status").read_text().startswith("done")
    assert not [k for k in all_keys(metrics) if "@20" in k]
    assert set(metrics["most_popular"]) == {"recall@5", "recall@10", "ndcg@5", "ndcg@10"}
    assert {"recall@10", "ndcg@10"} <= set(metrics["fairness"])
    assert "gradient_accounting" in metrics and "valid_recall@10" in summary.fit.history
    fairness = pd.read_parquet(tmp_path / "run" / "fairness.parquet")
    assert set(fairness["k"]) == {10}
    from analysis.fairness import fairness_report

    with pytest.raises(ValueError, match=r"k = 20 was not evaluated \(this evaluation has ks = \[5, 10\]\)"):
        fairness_report(summary.fit.test, summary.data.seen, k=20)  # was: top-10 numbers labelled @20


def test_empty_test_split_fails_the_run_before_training(tmp_path):
    from tests.test_train import write_files

    train, test = write_files(tmp_path / "data", [str(u) for u in range(40)])
    cfg = tiny_config(tmp_path).with_overrides({"data.train_path": train, "data.test_path": test})
    with pytest.raises(ValueError, match=r"test split has no user with a test item.*check data\.test_path"):
        run_experiment(cfg, tmp_path / "run", progress=False)
    status = (tmp_path / "run" / "status").read_text()
    assert status.startswith("failed") and "EmptySplitError" in status
    assert not (tmp_path / "run" / "metrics.json").exists() and not (tmp_path / "run" / "epochs.csv").exists()


def test_user_files_record_their_original_ids(tmp_path):
    """Runs on user files keep the map from the run's ids back to the files' ids (table ``ids``)."""
    from rankrobust.runs import RunDir

    (tmp_path / "tr.csv").write_text("user,item\nu1,a\nu1,b\nu2,b\nu2,c\nu3,a\nu3,c\nu3,d\n")
    (tmp_path / "te.csv").write_text("user,item\nu1,c\nu2,d\nu3,b\n")
    cfg = config_from_dict({"data": {"train_path": str(tmp_path / "tr.csv"), "test_path": str(tmp_path / "te.csv"),
                                     "valid_is_test": True},
                            "model": {"dim": 4}, "train": {"epochs": 1, "device": "cpu", "ks": [1, 2],
                                                           "metric": "recall@2", "num_negatives": 2}})
    run_experiment(cfg, tmp_path / "run", progress=False)
    ids = RunDir(tmp_path / "run").table("ids")
    assert ids[ids["kind"] == "user"]["original"].tolist() == ["u1", "u2", "u3"]
    assert ids[ids["kind"] == "item"]["original"].tolist() == ["a", "b", "c", "d"]
    assert ids.groupby("kind")["id"].apply(list).to_dict() == {"item": [0, 1, 2, 3], "user": [0, 1, 2]}
