"""The loss contract (rankrobust/losses/base.py `LossBatch`): what a loss reads, declared; the probes and the
analysis read the declaration (gradient accounting for every loss, no τ borrowed from another loss)."""
from __future__ import annotations

import json

import pytest
import torch

from analysis.dro_run import check_run, positive_temperature, temperature
from analysis.probes import accounting_lines, probes_for
from rankrobust import losses
from rankrobust.cli import main
from rankrobust.config import config_from_dict
from rankrobust.experiment import load_data, prepare_data, run_experiment
from rankrobust.losses import LOSS_INPUTS, LOSSES, LossBatch, LossEntry, apply_loss, loss_reads
from rankrobust.models import MF
from rankrobust.registry import NoOptions
from rankrobust.train import Trainer, make_step
from tests.test_sweep import write_tiny_data
from tests.test_train import tiny_config


def _model(n_users=6, n_items=10, dim=4):
    return MF(n_users, n_items, dim, score="cosine", generator=torch.Generator().manual_seed(0))


def _ids(b=5, m=3, n_users=6, n_items=10):
    gen = torch.Generator().manual_seed(1)
    return (torch.randint(0, n_users, (b,), generator=gen), torch.randint(0, n_items, (b,), generator=gen),
            torch.randint(0, n_items, (b, m), generator=gen))


def test_every_loss_declares_fields_the_batch_has():
    for entry in LOSSES.entries():
        assert entry.reads and entry.reads <= set(LOSS_INPUTS), entry.name
        assert entry.family != "other", entry.name
    with pytest.raises(ValueError, match="LossBatch does not have"):
        LossEntry("x", lambda b: b, NoOptions, "", reads={"pos", "embeddings"})


def test_score_only_losses_get_the_scores_they_got_before():
    """The boundary (`apply_loss`) calls a score-only loss exactly as the trainer used to: same value."""
    model = _model()
    users, pos, neg = _ids()
    for name in ("sl", "bsl", "bpr"):
        entry = LOSSES.entry(name)
        kwargs = {"mode": "multi", "tau": 0.2, "r": 1.0} if name == "bsl" else {}
        loss, pos_scores = make_step(model, entry, kwargs, l2=0.0)(users, pos, neg)
        U, I = model.score_tables()
        u = model.user_rows(U, users)
        s_pos, s_neg = (u * I[pos]).sum(1), torch.einsum("bd,bmd->bm", u, I[neg])
        direct = entry.target(s_pos, s_neg, users=users if name == "bsl" else None, **kwargs)
        assert torch.allclose(loss, direct, atol=1e-6) and torch.allclose(pos_scores, s_pos, atol=1e-6)


def test_fields_are_lazy_declared_and_consistent():
    model = _model()
    users, pos, neg = _ids()
    U, I = model.score_tables()
    calls = []

    def scores():
        calls.append(1)
        from rankrobust.scoring import score_batch
        return score_batch(model, U, I, users, pos, neg, negatives="sampled")

    batch = LossBatch(users, pos, scores=scores, tables=(U, I), popularity=torch.arange(10.0),
                      final_embeddings=model.final_embeddings)
    assert batch.user_rows.shape == (5, 4) and batch.pos_rows.shape == (5, 4) and not calls  # rows: no scoring
    assert torch.allclose(batch.pos, (model.user_rows(U, users) * batch.pos_rows).sum(1), atol=1e-6)
    assert batch.neg.shape == (5, 3) and batch.neg_rows.shape == (5, 3, 4) and len(calls) == 1  # scored once
    assert batch.neg_mask is None and torch.equal(batch.neg_items, neg) and torch.equal(batch.users, users)
    first = batch.final_embeddings()
    assert batch.final_embeddings() is first and first[0].shape == (6, 4) and not first[0].requires_grad
    narrow = LossBatch(users, pos, scores=scores, tables=(U, I), reads=frozenset({"pos_rows"}))
    with pytest.raises(AttributeError, match="does not declare it"):
        narrow.user_rows  # noqa: B018


def test_a_loss_reading_no_score_never_scores_and_returns_no_scores():
    model = _model()
    users, pos, neg = _ids()
    step = make_step(model, LOSSES.entry("directau"), {"gamma": 1.0}, l2=1e-3, with_negatives=True)
    loss, pos_scores, neg_scores, neg_mask = step(users, pos, neg)
    assert pos_scores is None and neg_scores is None and neg_mask is None and loss.requires_grad
    loss.backward()
    assert model.user_emb.grad[users].abs().sum() > 0


def test_popularity_and_final_embeddings_reach_a_loss_that_declares_them(tmp_path, monkeypatch):
    """An embedding loss registered for the test reads popularity and the final embeddings through the trainer."""
    seen = {}

    def popular_pull(batch: LossBatch) -> torch.Tensor:
        seen["popularity"] = batch.popularity
        seen["final"] = batch.final_embeddings()[1]
        return -(batch.pos_rows.sum(1) * batch.popularity[batch.pos_items]).mean()

    entry = LossEntry("popular_pull", popular_pull, NoOptions, "", reads={"pos_rows", "pos_items", "popularity",
                                                                          "final_embeddings"})
    monkeypatch.setattr(LOSSES, "_entries", {**LOSSES._entries, "popular_pull": entry})
    cfg = tiny_config(tmp_path, loss={"name": "popular_pull"}, train={"epochs": 1})
    data, _ = prepare_data(cfg, load_data(cfg.data))
    trainer = Trainer(cfg, data, torch.device("cpu"))
    trainer.epoch()
    assert torch.equal(seen["popularity"], torch.as_tensor(data.train.item_counts(), dtype=torch.float32))
    assert seen["final"].shape == (data.train.n_items, cfg.model.options.dim)


def test_no_temperature_is_borrowed():
    def cfg(**loss):
        return config_from_dict({"loss": loss})

    assert temperature(cfg(name="bpr")) is None and positive_temperature(cfg(name="bpr")) is None
    assert temperature(cfg(name="directau")) is None and positive_temperature(cfg(name="directau")) is None
    assert temperature(cfg(name="sl", tau=0.3)) == 0.3


@pytest.mark.parametrize("name", LOSSES.names())
def test_gradient_accounting_works_or_says_it_does_not_apply(tmp_path, name):
    """Every registered loss, both sides on: a share in [0, 1] where the loss reads that side's scores, else a
    'not applicable' reason (never 0.0), and the lines `rankrobust train` prints are built without error."""
    cfg = tiny_config(tmp_path, loss={"name": name}, noise={"pos_ratio": 0.2, "neg_prob": 0.2},
                      train={"epochs": 2})
    summary = run_experiment(cfg, tmp_path / "run", progress=False, probes=probes_for())
    acc = summary.metrics["gradient_accounting"]
    reads = loss_reads(name)
    for side, field, key in (("positive", "pos", "pos_grad_share_noisy_best"),
                             ("negative", "neg", "neg_grad_share_fn_best")):
        if field in reads:
            assert f"{side}_side_not_applicable" not in acc
            assert acc[key] is None or 0.0 <= acc[key] <= 1.0, (name, side)
        else:
            assert key not in acc and name in acc[f"{side}_side_not_applicable"]
    if "pos" in reads:
        assert 0.0 <= acc["pos_grad_share_noisy_best"] <= 1.0  # every loss reading s⁺ has a gradient on it
    lines = accounting_lines(acc)
    assert len(lines) == 2
    share = summary.metrics["gradient_share"]
    assert ("bsl_noisy_share" in share) == (positive_temperature(cfg) is not None)


def test_directau_run_end_to_end_cli_and_dro_check(tmp_path, capsys):
    """`rankrobust train --loss directau` with noisy positives and false negatives prints 'not applicable'
    (no crash on None), and `dro-check` says which checks need a τ this loss does not have."""
    train, test = write_tiny_data(tmp_path / "data")
    out = tmp_path / "run"
    code = main(["train", "--set", f"data.train_path={train}", "--set", f"data.test_path={test}", "--loss",
                 "directau", "--gamma", "0.5", "--epochs", "2", "--negatives", "8", "--batch-size", "64",
                 "--device", "cpu", "--dim", "8", "--noise-pos", "0.2", "--noise-neg", "0.2", "--out", str(out),
                 "--quiet"])
    text = capsys.readouterr().out
    assert code == 0 and "positive side: not applicable" in text and "negative side: not applicable" in text
    acc = json.loads((out / "metrics.json").read_text())["gradient_accounting"]
    assert set(acc) == {"positive_side_not_applicable", "negative_side_not_applicable"}
    report, ok = check_run(out)
    assert ok and "not applicable for loss directau" in report and "SL's default" not in report
    assert "in training: not applicable" in report


def test_extending_embedding_loss_example(monkeypatch, tmp_path):
    """docs/EXTENDING.md section 1's embedding loss, run as written in a copy of LOSSES: value and gradient
    against a float64 oracle, trained through the trainer without scoring, gradient accounting not applicable."""
    import math
    import sys
    import types

    from tests.test_noise import _extending_block

    monkeypatch.setattr(LOSSES, "_entries", dict(LOSSES._entries))
    module = types.ModuleType("extending_embedding_loss")  # dataclasses look their module up in sys.modules
    monkeypatch.setitem(sys.modules, module.__name__, module)
    exec(compile(_extending_block("**A loss on embeddings**"), "docs/EXTENDING.md#1", "exec"), module.__dict__)
    entry = LOSSES.entry("cosine_spread")
    assert entry.reads == {"user_rows", "pos_rows"} and entry.family == "alignment-uniformity"

    gen = torch.Generator().manual_seed(0)
    U = torch.randn(4, 3, generator=gen, dtype=torch.float64, requires_grad=True)
    I = torch.randn(5, 3, generator=gen, dtype=torch.float64, requires_grad=True)
    users, items = torch.tensor([0, 2, 2, 3]), torch.tensor([1, 4, 0, 1])

    def oracle(Ul, Il, w):
        def cos(a, b):
            return sum(x * y for x, y in zip(a, b)) / math.sqrt(sum(x * x for x in a) * sum(y * y for y in b))
        u, i = [Ul[k] for k in users.tolist()], [Il[j] for j in items.tolist()]
        b = len(u)
        pull = sum(1 - cos(u[k], i[k]) for k in range(b)) / b
        push = sum(cos(i[a], i[c]) ** 2 for a in range(b) for c in range(b) if a != c) / (b * (b - 1))
        return pull + w * push

    batch = LossBatch(users, items, scores=lambda: None, tables=(U, I), reads=entry.reads)
    value = apply_loss(entry, batch, {"spread": 2.0})
    assert value.item() == pytest.approx(oracle(U.tolist(), I.tolist(), 2.0), abs=1e-12)
    value.backward()
    h = 1e-6
    for table, grad, side in ((U, U.grad, 0), (I, I.grad, 1)):
        for r in range(table.shape[0]):
            for c in range(table.shape[1]):
                plus, minus = [U.tolist(), I.tolist()], [U.tolist(), I.tolist()]
                plus[side][r][c] += h
                minus[side][r][c] -= h
                fd = (oracle(*plus, 2.0) - oracle(*minus, 2.0)) / (2 * h)
                assert grad[r, c].item() == pytest.approx(fd, abs=1e-7)

    cfg = tiny_config(tmp_path, loss={"name": "cosine_spread", "spread": 2.0}, noise={"pos_ratio": 0.2},
                      train={"epochs": 1})
    summary = run_experiment(cfg, tmp_path / "run", progress=False, probes=probes_for())
    assert "cosine_spread" in summary.metrics["gradient_accounting"]["positive_side_not_applicable"]


@pytest.mark.cuda
@pytest.mark.parametrize("loss,sampler", [("directau", "uniform"), ("directau", "in_batch"), ("sl", "uniform")])
def test_epoch_through_the_batch_has_no_host_sync_on_cuda(loss, sampler):
    """The batch context adds no host sync per batch (skipped without a GPU; lastfm, 64 negatives)."""
    from tests.conftest import epoch_without_host_sync

    train = {"device": "cuda", "sampler": sampler, **({"num_negatives": 64} if sampler != "in_batch" else {})}
    cfg = config_from_dict({"train": train, "loss": {"name": loss}})
    data, _ = prepare_data(cfg, load_data(cfg.data))
    mean = epoch_without_host_sync(Trainer(cfg, data, torch.device("cuda")))
    assert torch.isfinite(mean).all().item()
