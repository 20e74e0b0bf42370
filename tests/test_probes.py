"""Probes (rankrobust/probes.py, analysis/probes.py) and the training batches they see (PROTOCOLS.md §9).

- the hooks: order, what they receive, where their outputs land in the run folder;
- the probes of the analysis layer (`probes_for`, gradient accounting on or off);
- what a batch is: ``pairs`` batching is the historical randperm loop (checked
  against a reference loop built from the `Trainer`'s own parts), ``users``
  batching visits every pair once with groups of about K, and in-batch
  negatives leave out a user's own other positives (checked by brute force).
"""
import json
from collections import Counter

import numpy as np
import pandas as pd
import pytest
import torch

from analysis.probes import FairnessProbe, FinalShareProbe, GradientShareProbe, VarianceProbe, probes_for
from rankrobust.batching import expected_group_size_pairs
from rankrobust.config import config_from_dict
from rankrobust.data.interactions import Interactions
from rankrobust.experiment import load_data, prepare_data, run_experiment
from rankrobust.losses import sl
from rankrobust.probes import Probe, ProbeOutput
from rankrobust.train import Trainer, TrainData, fit
from tests.test_train import tiny_config

CPU = torch.device("cpu")


# ---------------------------------------------------------------------------- the hooks
class Recorder(Probe):
    """Records every hook call; adds a column, a metrics section, a table and an extra object."""

    name = "recorder"
    wants_batches = True

    def __init__(self):
        self.calls, self.indices = [], []

    def start(self, ctx):
        self.calls.append("start")
        self.ctx = ctx

    def batch(self, view):
        self.calls.append("batch")
        assert view.pos_scores.requires_grad and view.pos_scores.shape == view.index.shape
        self.indices.append(view.index.clone())
        self.views_ok = getattr(self, "views_ok", True) and bool(
            (view.users == self.trainer_users[view.index]).all() and (view.items == self.trainer_items[view.index]).all())

    def epoch_end(self, epoch, model, row):
        self.calls.append(f"epoch_end {epoch}")
        assert "loss" in row and "group_size_mean" in row
        return {"recorded_batches": self.calls.count("batch")}

    def finish(self, ctx, result):
        self.calls.append("finish")
        return ProbeOutput(metrics={"epochs": len(result.history)},
                           tables={"variance": pd.DataFrame({"x": [1.0]})}, extra={"recorder": self})


class Quiet(Probe):
    name = "quiet"

    def batch(self, view):
        raise AssertionError("batch() is only called for probes with wants_batches")


def test_hook_order_and_outputs(tmp_path):
    cfg = tiny_config(tmp_path, train={"epochs": 2, "batch_size": 64})
    rec = Recorder()
    data, _ = prepare_data(cfg, load_data(cfg.data))
    u, i = data.train.to_pairs()
    rec.trainer_users, rec.trainer_items = torch.as_tensor(u), torch.as_tensor(i)
    summary = run_experiment(cfg, tmp_path / "run", progress=False, probes=[rec, Quiet()])
    n_batches = -(-data.train.nnz // 64)
    assert rec.calls == ["start", *["batch"] * n_batches, "epoch_end 1", *["batch"] * n_batches, "epoch_end 2",
                         "finish"]
    assert rec.views_ok and rec.ctx.run_dir.path == tmp_path / "run" and rec.ctx.cfg is cfg
    epochs = pd.read_csv(tmp_path / "run" / "epochs.csv")
    assert epochs["recorded_batches"].tolist() == [n_batches, 2 * n_batches]
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["recorder"] == {"epochs": 2} and "quiet" not in metrics
    assert pd.read_csv(tmp_path / "run" / "variance.csv")["x"].tolist() == [1.0]
    assert summary.extra["recorder"] is rec


def test_probes_for():
    assert [type(p) for p in probes_for()] == [GradientShareProbe, FinalShareProbe]
    assert [type(p) for p in probes_for(fairness=True, track_variance=True)] == [
        GradientShareProbe, FinalShareProbe, FairnessProbe, VarianceProbe]
    assert len({id(p) for p in probes_for() + probes_for()}) == 4  # fresh instances: no state shared between runs


def test_gradient_accounting_off_without_noise_on_with_noise(tmp_path):
    clean = run_experiment(tiny_config(tmp_path, train={"epochs": 1}), progress=False, probes=probes_for())
    assert "gradient_accounting" not in clean.metrics and "gradient_share" not in clean.metrics
    assert "pos_grad_share_noisy" not in clean.fit.history
    noisy = run_experiment(tiny_config(tmp_path, noise={"pos_ratio": 0.2}, train={"epochs": 2}), progress=False,
                           probes=probes_for())
    acc = noisy.metrics["gradient_accounting"]
    assert set(acc) == {f"{c}_{w}" for c in ("noisy_pair_fraction", "pos_grad_share_noisy", "group_size_mean")
                        for w in ("best", "mean")} | {"best_epoch"}
    assert acc["noisy_pair_fraction_best"] == pytest.approx(float(np.mean(noisy.data.noisy)))
    assert acc["pos_grad_share_noisy_mean"] == pytest.approx(noisy.fit.history["pos_grad_share_noisy"].mean())
    assert "gradient_share" in noisy.metrics


# ---------------------------------------------------------------------------- docs/EXTENDING.md, example 4: a probe
class PositiveScoreProbe(Probe):
    """Mean positive score s⁺ over each epoch's training pairs (an ``epochs.csv`` column)."""

    name = "positive_score"
    wants_batches = True

    def start(self, ctx):
        self.sums = torch.zeros(2, dtype=torch.float64, device=ctx.device)  # Σ s⁺, number of pairs

    def batch(self, view):  # device tensors only: no .item(), no host sync
        s = view.pos_scores.detach().to(torch.float64)
        self.sums += torch.stack([s.sum(), torch.tensor(s.numel(), dtype=torch.float64, device=s.device)])

    def epoch_end(self, epoch, model, row):
        total, n = self.sums.tolist()  # the one read per epoch
        self.sums.zero_()
        return {"pos_score_mean": total / n}

    def finish(self, ctx, result):
        return ProbeOutput(metrics={"last": float(result.history["pos_score_mean"].iloc[-1])})


def test_example_probe(tmp_path):
    scores = []

    class Collect(Probe):
        wants_batches = True

        def batch(self, view):
            scores.append(view.pos_scores.detach().double())

    cfg = tiny_config(tmp_path, train={"epochs": 1})
    summary = run_experiment(cfg, tmp_path / "run", progress=False, probes=[PositiveScoreProbe(), Collect()])
    expected = float(torch.cat(scores).mean())
    assert pd.read_csv(tmp_path / "run" / "epochs.csv")["pos_score_mean"].tolist() == pytest.approx([expected])
    assert summary.metrics["positive_score"] == {"last": pytest.approx(expected)}


# ---------------------------------------------------------------------------- (d) pairs batching = the reference loop
def reference_epoch(t: Trainer) -> tuple[torch.Tensor, float]:
    """The historical loop written out: randperm with the trainer's generator, batches of B, the same draws.

    Returns (mean batch loss, mean same-user group size per pair counted with a Counter).
    """
    t.model.train()
    n, b = t.users.shape[0], t.batch_size
    order = torch.randperm(n, generator=t.generator, device=t.device)
    total, batches, group_pairs = torch.zeros(()), 0, 0
    for start in range(0, n, b):
        idx = order[start:start + b]
        users, pos = t.users[idx], t.items[idx]
        neg = t.sampler(users, pos, t.generator)
        loss, _ = t.step(users, pos, neg)
        t.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        t.optimizer.step()
        total += loss.detach()
        batches += 1
        counts = Counter(users.tolist())
        group_pairs += sum(counts[u] for u in users.tolist())
    return total / batches, group_pairs / n


@pytest.mark.parametrize("loss,sampler", [("sl", "uniform"), ("bsl", "popularity"), ("bpr", "in_batch")])
def test_pairs_batching_is_the_reference_loop(tmp_path, loss, sampler):
    cfg = tiny_config(tmp_path, loss={"name": loss}, noise={"neg_prob": 0.0 if sampler == "in_batch" else 0.2},
                      train={"batch_size": 50, "batching": "pairs", "sampler": sampler, "epochs": 2})
    data, _ = prepare_data(cfg, load_data(cfg.data))
    assert data.train.nnz % 50 != 0  # a short last batch
    trainer = Trainer(cfg, data, CPU)
    got = [trainer.epoch() for _ in range(2)]
    oracle = Trainer(cfg, data, CPU)
    want = [reference_epoch(oracle) for _ in range(2)]
    for (loss_got, group_got), (loss_want, group_want) in zip(got, want):
        assert torch.equal(loss_got, loss_want)
        assert float(group_got) == pytest.approx(group_want, rel=1e-6)
    for p, q in zip(trainer.model.parameters(), oracle.model.parameters()):
        assert torch.equal(p, q)


# ---------------------------------------------------------------------------- (e) users batching
def many_pairs_data(n_users=200, n_items=60, per_user=24, seed=0) -> TrainData:
    rng = np.random.default_rng(seed)
    items = np.concatenate([rng.choice(n_items, per_user + 2, replace=False) for _ in range(n_users)]).reshape(
        n_users, per_user + 2)
    users = np.repeat(np.arange(n_users), per_user)
    train = Interactions.from_pairs(users, items[:, :per_user].ravel(), n_users, n_items)
    valid = Interactions.from_pairs(np.arange(n_users), items[:, per_user], n_users, n_items)
    test = Interactions.from_pairs(np.arange(n_users), items[:, per_user + 1], n_users, n_items)
    return TrainData(train=train, seen=train, valid=valid, test=test)


class IndexCounter(Probe):
    wants_batches = True

    def __init__(self):
        self.epochs, self.current = [], []

    def batch(self, view):
        self.current.append(view.index.clone())

    def epoch_end(self, epoch, model, row):
        self.epochs.append((torch.cat(self.current), row["group_size_mean"], [len(i) for i in self.current]))
        self.current = []


def test_users_batching_visits_every_pair_once_in_groups_of_k():
    k, b = 8, 64
    data = many_pairs_data()
    cfg = config_from_dict({"model": {"dim": 4}, "loss": {"name": "sl"},
                            "train": {"epochs": 2, "batch_size": b, "batching": "users", "positives_per_user": k,
                                      "num_negatives": 2, "device": "cpu", "ks": [5, 20], "patience": 0,
                                      "eval_every": 2}})
    counter = IndexCounter()
    fit(cfg, data, CPU, probes=[counter], progress=False)
    n = data.train.nnz
    assert len(counter.epochs) == 2
    for seen, group_size, sizes in counter.epochs:
        assert torch.equal(torch.sort(seen).values, torch.arange(n))  # every pair exactly once
        assert sizes == [b] * (n // b)
        # all chunks are full and aligned with the batches: every pair has ≥ K of its user's pairs in its batch;
        # more only when two chunks of one user meet in a batch (rare with 200 users)
        assert k <= group_size < k + 0.6
    assert expected_group_size_pairs(data.train.user_counts(), b) < 1.4  # what pairs batching would give
    first, second = counter.epochs[0][0], counter.epochs[1][0]
    assert not torch.equal(first, second)  # reshuffled every epoch


# ---------------------------------------------------------------------------- (f) in-batch negatives, users batching
def test_in_batch_negatives_leave_out_own_other_positives(tmp_path):
    cfg = tiny_config(tmp_path, loss={"name": "sl", "tau": 0.2}, model={"score": "cosine"},
                      train={"sampler": "in_batch", "batching": "users", "positives_per_user": 4, "batch_size": 24})
    data, _ = prepare_data(cfg, load_data(cfg.data))
    trainer = Trainer(cfg, data, CPU)
    trainer.model.double()
    trainer.model.train()
    order = trainer.order(trainer.users, trainer.batching_options, torch.Generator().manual_seed(3))
    idx = order[:24]
    users, pos = trainer.users[idx], trainer.items[idx]
    assert max(Counter(users.tolist()).values()) >= 3  # users with several positives in the batch
    neg = trainer.sampler(users, pos, trainer.generator)
    loss, _ = trainer.step(users, pos, neg)
    assert loss.dtype == torch.float64

    with torch.no_grad():
        U = torch.nn.functional.normalize(trainer.model.user_emb, dim=1)
        I = torch.nn.functional.normalize(trainer.model.item_emb, dim=1)
        rows, unmasked = [], []
        for k in range(24):
            keep = [c for c in range(24) if users[c] != users[k]]  # other users' positives only (PROTOCOLS §2)
            s_pos = (U[users[k]] * I[pos[k]]).sum()
            s_neg = torch.stack([(U[users[k]] * I[pos[c]]).sum() for c in keep])
            rows.append(sl(s_pos[None], s_neg[None, :], tau=0.2))
            all_neg = torch.stack([(U[users[k]] * I[pos[c]]).sum() for c in range(24)])
            unmasked.append(sl(s_pos[None], all_neg[None, :], tau=0.2))
        brute = torch.stack(rows).mean()
    loss = float(loss.detach())
    assert loss == pytest.approx(float(brute), abs=1e-12)
    assert loss != pytest.approx(float(torch.stack(unmasked).mean()), abs=1e-6)  # the mask matters here
