"""The training loop (rankrobust/train.py) on tiny data: reproducibility, early stopping.

The experiment runner is tested in test_experiment.py, the command in test_cli.py.
"""
import math

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


# ---------------------------------------------------------------------------- model selection on real evidence only
def scripted_fit(tmp_path, monkeypatch, values, **train):
    """`fit` whose validation rounds return ``values`` in turn (NaN afterwards); also returns the weights seen.

    Each epoch only shifts the user embeddings by 1 (distinct weights per epoch, no training cost).
    """
    from types import SimpleNamespace

    from rankrobust import train as train_mod

    cfg = tiny_config(tmp_path, train=train)
    data, _ = prepare_data(cfg, load_data(cfg.data))
    weights = []

    def epoch(self, on_batch=None):
        with torch.no_grad():
            self.model.user_emb.add_(1.0)
        return torch.tensor([0.5, 1.0])

    def validate(self):
        weights.append(self.model.user_emb.detach().clone())
        value = values[len(weights) - 1] if len(weights) <= len(values) else float("nan")
        return SimpleNamespace(metrics={cfg.train.metric: value})

    monkeypatch.setattr(train_mod.Trainer, "epoch", epoch)
    monkeypatch.setattr(train_mod.Trainer, "validate", validate)
    return fit(cfg, data, torch.device("cpu"), progress=False), weights


def validated_epochs(result):
    return result.history.dropna(subset=["valid_recall@20"])["epoch"].tolist()


def test_patience_counts_validation_rounds(tmp_path, monkeypatch):
    """eval_every 2, patience 2: best round at epoch 4, two rounds without improvement (6, 8), stop at 8."""
    result, weights = scripted_fit(tmp_path, monkeypatch, [0.1, 0.3, 0.2, 0.25, 0.9, 0.9],
                                   epochs=20, eval_every=2, patience=2)
    assert validated_epochs(result) == [2, 4, 6, 8]
    assert result.stopped_early and len(result.history) == 8
    assert result.best_epoch == 4 and result.best_valid == 0.3
    assert torch.equal(result.model.user_emb.detach(), weights[1])  # the weights validated at epoch 4


def test_no_early_stop_before_the_first_validation(tmp_path, monkeypatch):
    """The issue's case: patience 2, eval_every 5, 10 epochs (it stopped at epoch 2 with 'best epoch 0')."""
    result, weights = scripted_fit(tmp_path, monkeypatch, [0.2, 0.1], epochs=10, eval_every=5, patience=2)
    assert validated_epochs(result) == [5, 10]
    assert not result.stopped_early and len(result.history) == 10
    assert result.best_epoch == 5
    assert torch.equal(result.model.user_emb.detach(), weights[0])


def test_no_early_stop_before_the_first_validation_real(tmp_path):
    cfg = tiny_config(tmp_path, train={"epochs": 6, "eval_every": 3, "patience": 1})
    data, _ = prepare_data(cfg, load_data(cfg.data))
    result = fit(cfg, data, torch.device("cpu"), progress=False)
    assert len(result.history) == 6 and validated_epochs(result) == [3, 6] and result.best_epoch in (3, 6)
    best = result.history.set_index("epoch").loc[result.best_epoch, "valid_recall@20"]
    assert result.valid.metrics["recall@20"] == pytest.approx(best)  # the restored model is the best validated one


def test_time_limit_validates_the_last_epoch(tmp_path):
    """A time limit shorter than one evaluation interval: the epoch it stops at is validated and selected."""
    cfg = tiny_config(tmp_path, train={"epochs": 10, "eval_every": 5, "patience": 2, "time_limit": 1e-9})
    data, _ = prepare_data(cfg, load_data(cfg.data))
    result = fit(cfg, data, torch.device("cpu"), progress=False)
    assert len(result.history) == 1 and result.best_epoch == 1 and not result.stopped_early
    assert validated_epochs(result) == [1]
    assert result.valid.metrics["recall@20"] == pytest.approx(result.history["valid_recall@20"].iloc[0])


def test_final_epoch_is_always_validated(tmp_path, monkeypatch):
    result, _ = scripted_fit(tmp_path, monkeypatch, [0.1, 0.2, 0.3], epochs=7, eval_every=3, patience=0)
    assert validated_epochs(result) == [3, 6, 7] and result.best_epoch == 7


def test_patience_starts_at_the_first_round_with_a_value(tmp_path, monkeypatch):
    result, weights = scripted_fit(tmp_path, monkeypatch, [float("nan"), 0.2, 0.1, 0.3],
                                   epochs=5, eval_every=1, patience=1)
    assert result.stopped_early and len(result.history) == 3 and result.best_epoch == 2
    assert torch.equal(result.model.user_emb.detach(), weights[1])


def test_no_validation_value_is_an_error(tmp_path, monkeypatch):
    with pytest.raises(RuntimeError, match="no validation round gave a value of recall@20"):
        scripted_fit(tmp_path, monkeypatch, [], epochs=3, eval_every=1, patience=0)


# ---------------------------------------------------------------------------- evaluation splits with nobody to evaluate
def write_files(folder, test_lines):
    """Tiny train file (from `write_tiny_data`) with a test file of the given lines."""
    train, _ = write_tiny_data(folder)
    test = folder / "bad_test.txt"
    test.write_text("".join(line + "\n" for line in test_lines))
    return train, str(test)


def run_split_config(tmp_path, train_path, test_path, **data):
    return config_from_dict({"data": {"train_path": train_path, "test_path": test_path, **data},
                             "model": {"dim": 8},
                             "train": {"epochs": 2, "batch_size": 64, "num_negatives": 8, "device": "cpu",
                                       "ks": [5, 20], "patience": 0}})


def fit_before_training(cfg):
    """`fit` that records training epochs (there must be none when the data cannot be evaluated)."""
    epochs = []

    class Recorder(Probe):
        def epoch_end(self, epoch, model, row):
            epochs.append(epoch)

    data, _ = prepare_data(cfg, load_data(cfg.data))
    try:
        fit(cfg, data, torch.device("cpu"), progress=False, probes=(Recorder(),))
    finally:
        assert epochs == []


def test_test_file_without_items_is_an_error(tmp_path):
    from rankrobust.train import EmptySplitError

    train, test = write_files(tmp_path / "data", [str(u) for u in range(40)])  # user lines without items
    cfg = run_split_config(tmp_path, train, test)
    with pytest.raises(EmptySplitError, match=r"^test split has no user with a test item after masking "
                                              r"\(no user has a test item\); check data\.test_path \(.*bad_test"):
        fit_before_training(cfg)


def test_test_items_all_masked_is_an_error(tmp_path, recwarn):
    from rankrobust.train import EmptySplitError

    train, _ = write_tiny_data(tmp_path / "data")
    cfg = run_split_config(tmp_path, train, train)  # the test items are the training items: all masked
    with pytest.raises(EmptySplitError, match=r"test split has no user with a test item after masking \(\d+ users "
                                              r"have test items, but every one of them is masked"):
        fit_before_training(cfg)


def test_empty_validation_split_is_an_error(tmp_path):
    from rankrobust.train import EmptySplitError

    train, test = write_tiny_data(tmp_path / "data")
    cfg = run_split_config(tmp_path, train, test, valid_fraction=0.0)
    with pytest.raises(EmptySplitError, match=r"validation split has no user with a validation item after masking "
                                              r".*data\.valid_fraction = 0\.0"):
        fit_before_training(cfg)


# ---------------------------------------------------------------------------- in-batch negatives (make_step)
class ScoreMatrixModel:
    """Stands in for a backbone in `make_step`: the in-batch score matrix is the given leaf S [B, B]."""

    def __init__(self, S):
        self.S = S

    def score_tables(self):
        return None, None

    def inbatch_scores(self, U, I, users, pos):
        return self.S

    def l2_penalty(self, users, items):
        raise AssertionError("l2 is 0")

    def extra_loss(self, users, items):
        return None


def _sig(x):
    return 1.0 / (1.0 + math.exp(-x))


def _softmax(xs):
    m = max(xs)
    e = [math.exp(x - m) for x in xs]
    return [v / sum(e) for v in e]


S3 = [[0.9, 0.85, -0.4],
      [0.2, -0.3, 0.95],
      [-0.7, 0.5, 0.1]]


def hand_gradient(loss, hyper):
    """∂L/∂S by hand for a batch of B = 3 distinct users, L = mean over the 3 rows; row k: positive S[k][k],
    negatives the other users' positives S[k][c], c ≠ k (2 of them).  Formulas per loss:

    bpr     ℓ_k = ½ Σ_{c≠k} softplus(s_kc − s_kk):  ∂/∂s_kc = ⅓·½·σ(s_kc − s_kk),  ∂/∂s_kk = −Σ_{c≠k} ∂/∂s_kc
    bce     ℓ_k = softplus(−s_kk) + Σ_{c≠k} softplus(s_kc):  ∂/∂s_kk = −⅓σ(−s_kk),  ∂/∂s_kc = ⅓σ(s_kc)
    mse     ℓ_k = ½(s_kk − 1)² + ½ Σ_{c≠k} s_kc²:  ∂/∂s_kk = ⅓(s_kk − 1),  ∂/∂s_kc = ⅓s_kc
    ccl     ℓ_k = relu(1 − s_kk) + (w/2) Σ_{c≠k} relu(s_kc − m):  ∂/∂s_kk = −⅓[s_kk < 1],  ∂/∂s_kc = ⅓(w/2)[s_kc > m]
    sl      ℓ_k = −s_kk/τ + log Σ_{c≠k} e^{s_kc/τ}:  ∂/∂s_kk = −1/(3τ),  ∂/∂s_kc = p_kc/(3τ), p = softmax_{c≠k}(s/τ)
    sl+pos  ℓ_k = −s_kk/τ + log Σ_c e^{s_kc/τ} (all 3):  ∂/∂s_kk = (q_kk − 1)/(3τ),  ∂/∂s_kc = q_kc/(3τ),
            q = softmax over the whole row
    bsl paper (one positive per user: the group log-mean-exp is s_kk/τ₁)
            ℓ_k = −s_kk/τ₁ + (τ₂/τ₁) log Σ_{c≠k} e^{s_kc/τ₂}:  ∂/∂s_kk = −1/(3τ₁),  ∂/∂s_kc = p_kc/(3τ₁),
            p = softmax_{c≠k}(s/τ₂)
    bsl reweight  ℓ_k = −s_kk/τ + r log Σ_{c≠k} e^{s_kc/τ}:  ∂/∂s_kk = −1/(3τ),  ∂/∂s_kc = r·p_kc/(3τ)
    bsl multi     ℓ_k = −s_kk/τ + r (log Σ_{c≠k} e^{s_kc/τ} − log 2): the same gradient as reweight
    """
    B = 3
    G = [[0.0] * B for _ in range(B)]
    for k in range(B):
        others = [c for c in range(B) if c != k]
        s, row = S3[k][k], S3[k]
        if loss == "bpr":
            for c in others:
                G[k][c] = (1 / 3) * 0.5 * _sig(row[c] - s)
            G[k][k] = -sum(G[k][c] for c in others)
        elif loss == "bce":
            G[k][k] = -(1 / 3) * _sig(-s)
            for c in others:
                G[k][c] = (1 / 3) * _sig(row[c])
        elif loss == "mse":
            G[k][k] = (1 / 3) * (s - 1)
            for c in others:
                G[k][c] = (1 / 3) * row[c]
        elif loss == "ccl":
            m, w = hyper["margin"], hyper["neg_weight"]
            G[k][k] = -(1 / 3) * (1.0 if s < 1 else 0.0)
            for c in others:
                G[k][c] = (1 / 3) * (w / 2) * (1.0 if row[c] > m else 0.0)
        elif loss == "sl" and hyper.get("include_pos"):
            t = hyper["tau"]
            q = _softmax([x / t for x in row])
            for c in range(B):
                G[k][c] = (q[c] - (1.0 if c == k else 0.0)) / (3 * t)
        else:
            if loss == "sl":
                t_pos, t_neg, weight = hyper["tau"], hyper["tau"], 1.0
            elif hyper["mode"] == "paper":
                t_pos, t_neg, weight = hyper["tau1"], hyper["tau2"], hyper["tau2"] / hyper["tau1"]
            else:  # reweight, multi
                t_pos, t_neg, weight = hyper["tau"], hyper["tau"], hyper["r"]
            p = _softmax([row[c] / t_neg for c in others])
            G[k][k] = -1 / (3 * t_pos)
            for c, pc in zip(others, p):
                G[k][c] = weight * pc / (3 * t_neg)
    return torch.tensor(G, dtype=torch.float64)


INBATCH_CASES = [
    ("bpr", {}), ("bce", {"tau": 1.0}), ("mse", {}), ("ccl", {"margin": 0.3, "neg_weight": 2.0}),
    ("sl", {"tau": 0.2}), ("sl", {"tau": 0.2, "include_pos": True}),
    ("bsl", {"mode": "paper", "tau1": 0.5, "tau2": 0.2}),
    ("bsl", {"mode": "reweight", "tau": 0.2, "r": 1.3}), ("bsl", {"mode": "multi", "tau": 0.2, "r": 1.3}),
]


def inbatch_step(loss, hyper, S, users):
    from rankrobust.losses import get_loss
    from rankrobust.train import make_step

    step = make_step(ScoreMatrixModel(S), get_loss(loss), hyper, l2=0.0, negatives="in_batch")
    empty = torch.zeros(len(users), 0, dtype=torch.long)
    return step(torch.tensor(users), torch.arange(len(users)), empty)


@pytest.mark.parametrize("loss,hyper", INBATCH_CASES)
def test_in_batch_negatives_are_the_other_rows_positives(loss, hyper):
    """The gradient w.r.t. the [3, 3] in-batch score matrix of 3 distinct users equals the hand formulas:
    the diagonal (each row's own positive) gets only the positive-side gradient, for every loss."""
    S = torch.tensor(S3, dtype=torch.float64, requires_grad=True)
    value, pos_scores = inbatch_step(loss, hyper, S, [7, 2, 5])
    assert torch.equal(pos_scores.detach(), S.detach().diagonal())
    value.backward()
    assert torch.allclose(S.grad, hand_gradient(loss, hyper), rtol=1e-12, atol=1e-14), (S.grad, loss, hyper)


@pytest.mark.parametrize("loss,hyper", INBATCH_CASES)
@pytest.mark.parametrize("users", [[4], [4, 4, 4]])
def test_in_batch_rows_without_negatives_stay_finite(loss, hyper, users):
    """A batch of one user (one pair, or several of the same user) leaves no negative in any row."""
    b = len(users)
    S = torch.tensor([r[:b] for r in S3[:b]], dtype=torch.float64, requires_grad=True)
    value, _ = inbatch_step(loss, hyper, S, users)
    value.backward()
    assert torch.isfinite(value) and torch.isfinite(S.grad).all()
    off_diagonal = ~torch.eye(b, dtype=torch.bool)
    assert (S.grad[off_diagonal] == 0).all()


def test_in_batch_bce_on_a_real_batch_matches_brute_force(tmp_path):
    """Trainer step with in-batch negatives (users batching: several positives per user) against a float64 brute
    force whose negatives are the positives of the OTHER users only (own positive and own other positives out)."""
    from collections import Counter

    from rankrobust.train import Trainer

    cfg = tiny_config(tmp_path, loss={"name": "bce", "tau": 1.0}, model={"score": "cosine"},
                      train={"sampler": "in_batch", "batching": "users", "positives_per_user": 4, "batch_size": 24})
    data, _ = prepare_data(cfg, load_data(cfg.data))
    trainer = Trainer(cfg, data, torch.device("cpu"))
    trainer.model.double()
    trainer.model.train()
    idx = trainer.order(trainer.users, trainer.batching_options, torch.Generator().manual_seed(3))[:24]
    users, pos = trainer.users[idx], trainer.items[idx]
    assert max(Counter(users.tolist()).values()) >= 3
    loss, _ = trainer.step(users, pos, trainer.sampler(users, pos, trainer.generator))
    with torch.no_grad():
        U = torch.nn.functional.normalize(trainer.model.user_emb, dim=1)
        I = torch.nn.functional.normalize(trainer.model.item_emb, dim=1)
        total = 0.0
        for k in range(24):
            s = lambda c: float((U[users[k]] * I[pos[c]]).sum())  # noqa: E731
            total += math.log1p(math.exp(-s(k))) + sum(math.log1p(math.exp(s(c))) for c in range(24)
                                                       if users[c] != users[k])
    assert float(loss.detach()) == pytest.approx(total / 24, abs=1e-12)
