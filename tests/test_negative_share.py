"""Negative-side gradient accounting: neg_grad_share_fn and fn_slot_fraction."""
import json
import math

import numpy as np
import pandas as pd
import pytest
import torch

from analysis.gradient_share import NegativeAccountant, brute_force_negative_share
from analysis.probes import GradientShareProbe, accounting_lines, probes_for
from rankrobust import train as train_mod
from rankrobust.config import config_from_dict
from rankrobust.experiment import load_data, prepare_data, run_experiment
from rankrobust.losses import get_loss
from rankrobust.probes import Probe
from rankrobust.sampling import UniformSampler, sample_with_fn_mask
from rankrobust.train import Trainer
from tests.test_train import tiny_config

LOSSES = {  # SL, BPR, BSL (paper mode) and two successors
    "sl": {"tau": 0.1},
    "bpr": {},
    "bsl": {"mode": "paper", "tau1": 0.5, "tau2": 0.1},
    "psl": {"tau": 0.05},
    "dcl": {},
}


def hand_made_batch(with_mask: bool):
    """B = 6 pairs of 3 users (so BSL groups), M = 5 slots; false negatives score high, as they do once learnt."""
    rng = np.random.default_rng(7)
    users = torch.tensor([0, 0, 1, 2, 2, 2])
    pos = torch.tensor(rng.uniform(0.2, 0.9, 6), dtype=torch.float64)
    neg = rng.uniform(-0.5, 0.3, (6, 5))
    fn = np.zeros((6, 5), dtype=bool)
    fn[[0, 1, 2, 3, 5, 5], [1, 4, 0, 2, 0, 3]] = True
    neg[fn] = rng.uniform(0.4, 0.9, fn.sum())
    mask = None
    if with_mask:  # some slots are no negatives (in-batch: the user's own positives)
        mask = np.ones((6, 5), dtype=bool)
        mask[[0, 2, 4], [4, 3, 0]] = False
        mask[0, 1] = False  # a false negative in a masked slot counts nowhere
    return users, pos, torch.tensor(neg, dtype=torch.float64), torch.tensor(fn), \
        None if mask is None else torch.tensor(mask)


def loss_kwargs(name: str) -> dict:
    cfg = config_from_dict({"loss": {"name": name, **LOSSES[name]}})
    return cfg.loss.kwargs()


@pytest.mark.parametrize("with_mask", [False, True])
@pytest.mark.parametrize("name", list(LOSSES))
def test_share_equals_float64_brute_force(name, with_mask):
    users, pos, neg, fn, mask = hand_made_batch(with_mask)
    loss_fn, kwargs = get_loss(name), loss_kwargs(name)
    leaf = neg.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(loss_fn(pos, leaf, users=users, neg_mask=mask, **kwargs), leaf)
    want_share, want_fraction = brute_force_negative_share(grad.numpy(), fn.numpy(),
                                                           None if mask is None else mask.numpy())
    assert 0 < want_share < 1
    accountant = NegativeAccountant("cpu")
    scores = neg.clone().requires_grad_(True)
    accountant.watch(scores, fn, mask)
    loss_fn(pos, scores, users=users, neg_mask=mask, **kwargs).backward()
    got = accountant.read()
    assert got["neg_grad_share_fn"] == pytest.approx(want_share, rel=1e-12, abs=1e-15)
    assert got["fn_slot_fraction"] == pytest.approx(want_fraction, rel=1e-12)
    assert accountant.sums.abs().sum() == 0  # reset after reading


def test_sl_up_weights_high_scoring_false_negatives_more_than_bpr():
    """The DRO reading on the hand-made batch: softmax(s⁻/τ) puts more than the slot share on false negatives."""
    users, pos, neg, fn, _ = hand_made_batch(False)
    shares = {}
    for name in ("sl", "bpr"):
        accountant = NegativeAccountant("cpu")
        scores = neg.clone().requires_grad_(True)
        accountant.watch(scores, fn)
        get_loss(name)(pos, scores, users=users, neg_mask=None, **loss_kwargs(name)).backward()
        shares[name] = accountant.read()
    fraction = shares["sl"]["fn_slot_fraction"]
    assert shares["sl"]["neg_grad_share_fn"] > shares["bpr"]["neg_grad_share_fn"] > fraction


def test_loss_that_ignores_negative_scores_records_nan():
    users, pos, neg, fn, _ = hand_made_batch(False)
    accountant = NegativeAccountant("cpu")
    p = pos.clone().requires_grad_(True)
    scores = neg.clone().requires_grad_(True)
    accountant.watch(scores, fn)
    (p.sum() + 0 * scores.detach().sum()).backward()  # s⁻ never reached
    out = accountant.read()
    assert math.isnan(out["neg_grad_share_fn"]) and out["fn_slot_fraction"] == pytest.approx(6 / 30)
    accountant.watch(None, fn)  # no negative side in the view: nothing recorded, nothing raised
    accountant.watch(scores, None)
    assert math.isnan(accountant.read()["fn_slot_fraction"])


def test_sample_with_fn_mask_draws_as_the_sampler():
    from rankrobust.sampling import FalseNegativeMixer
    from tests.test_sampling import TRAIN

    users = torch.arange(20) % TRAIN.n_users
    base = UniformSampler(TRAIN.n_items, 16)
    neg, mask = sample_with_fn_mask(base, users, users, torch.Generator().manual_seed(1))
    assert mask is None and torch.equal(neg, base(users, users, torch.Generator().manual_seed(1)))
    mixer = FalseNegativeMixer(base, TRAIN, 0.4)
    neg, mask = sample_with_fn_mask(mixer, users, users, torch.Generator().manual_seed(1))
    assert mask.dtype == torch.bool and mask.shape == neg.shape and mask.any()
    assert torch.equal(neg, mixer(users, users, torch.Generator().manual_seed(1)))


class _Capture(Probe):
    """Keeps the first batch view of the first epoch and checks that its negatives are the loss's."""

    wants_batches = True
    wants_negatives = True

    def __init__(self, seen: list):
        self.views, self.seen = [], seen

    def batch(self, view):
        self.views.append(view)


@pytest.mark.parametrize("scorer", ["gather", "sparse", "dense"])
def test_view_holds_the_scores_the_loss_receives(tmp_path, monkeypatch, scorer):
    seen = []
    real = train_mod.apply_loss

    def recording(entry, batch, kwargs):  # the one boundary between the step and the loss
        seen.append(batch.neg)
        return real(entry, batch, kwargs)

    monkeypatch.setattr(train_mod, "apply_loss", recording)
    cfg = tiny_config(tmp_path, train={"scorer": scorer, "epochs": 1}, noise={"neg_prob": 0.3})
    data, _ = prepare_data(cfg, load_data(cfg.data))
    trainer = Trainer(cfg, data, torch.device("cpu"))
    probe = _Capture(seen)
    trainer.probes = [probe]
    trainer.epoch()
    assert len(probe.views) == trainer.n_batches == len(seen)
    for view, neg in zip(probe.views, seen):
        assert view.neg_scores is neg and view.neg_scores.requires_grad
        assert view.fn_mask.shape == neg.shape and view.fn_mask.dtype == torch.bool
        assert view.neg_mask is None  # sampled negatives: every slot is one


def test_shares_agree_across_scorers(tmp_path):
    shares = {}
    for scorer in ("gather", "sparse", "dense"):
        cfg = tiny_config(tmp_path, train={"scorer": scorer, "epochs": 1}, noise={"neg_prob": 0.3})
        data, _ = prepare_data(cfg, load_data(cfg.data))
        trainer = Trainer(cfg, data, torch.device("cpu"))
        probe = GradientShareProbe()
        from rankrobust.probes import ProbeContext
        probe.start(ProbeContext(cfg, data, torch.device("cpu")))
        trainer.probes = [probe]
        trainer.epoch()
        shares[scorer] = probe.epoch_end(1, trainer.model, {})
    for scorer in ("sparse", "dense"):
        assert shares[scorer]["fn_slot_fraction"] == shares["gather"]["fn_slot_fraction"]
        assert shares[scorer]["neg_grad_share_fn"] == pytest.approx(shares["gather"]["neg_grad_share_fn"], rel=1e-4)


def test_no_probe_no_extra_work(tmp_path, monkeypatch):
    cfg = tiny_config(tmp_path, train={"epochs": 1}, noise={"neg_prob": 0.3})
    data, _ = prepare_data(cfg, load_data(cfg.data))
    trainer = Trainer(cfg, data, torch.device("cpu"))

    def refuse(*args, **kwargs):
        raise AssertionError("the watched step or the false-negative mask was built without a probe wanting it")

    trainer.watched_step = refuse
    monkeypatch.setattr(train_mod, "sample_with_fn_mask", refuse)
    trainer.epoch()
    probe = GradientShareProbe()  # positive side only: the step is watched, the mask is not drawn
    cfg2 = tiny_config(tmp_path, train={"epochs": 1}, noise={"pos_ratio": 0.2})
    data2, _ = prepare_data(cfg2, load_data(cfg2.data))
    trainer2 = Trainer(cfg2, data2, torch.device("cpu"))
    from rankrobust.probes import ProbeContext
    probe.start(ProbeContext(cfg2, data2, torch.device("cpu")))
    assert probe.wants_batches and not probe.wants_negatives
    trainer2.probes = [probe]
    trainer2.epoch()


@pytest.mark.parametrize("loss,p", [("sl", 0.3), ("bpr", 0.1)])
def test_end_to_end_columns_and_metrics(tmp_path, loss, p):
    cfg = tiny_config(tmp_path, loss={"name": loss}, noise={"neg_prob": p},
                      train={"epochs": 3, "num_negatives": 32})
    out = tmp_path / "run"
    summary = run_experiment(cfg, out, progress=False, probes=probes_for())
    epochs = pd.read_csv(out / "epochs.csv")
    for column in ("neg_grad_share_fn", "fn_slot_fraction"):
        assert column in epochs and epochs[column].between(0, 1).all()
    assert "pos_grad_share_noisy" not in epochs  # no noisy positives: that side is off
    assert epochs["fn_slot_fraction"].to_numpy() == pytest.approx(p, abs=0.03)
    acc = json.loads((out / "metrics.json").read_text())["gradient_accounting"]
    assert {f"{c}_{w}" for c in ("neg_grad_share_fn", "fn_slot_fraction") for w in ("best", "last", "mean")} <= set(acc)
    assert acc["neg_grad_share_fn_last"] == pytest.approx(epochs["neg_grad_share_fn"].iloc[-1])
    assert acc == summary.metrics["gradient_accounting"]
    assert any("negative-side gradient on false negatives" in line for line in accounting_lines(acc))


def test_loss_ignoring_negatives_records_none_end_to_end(tmp_path, monkeypatch):
    """A loss declared as reading s⁻ whose value does not depend on it: the hook never fires, the share is None."""
    real = train_mod.apply_loss

    def positives_only(entry, batch, kwargs):
        return -batch.pos.mean()

    monkeypatch.setattr(train_mod, "apply_loss", positives_only)
    cfg = tiny_config(tmp_path, noise={"neg_prob": 0.2, "pos_ratio": 0.2}, train={"epochs": 2})
    summary = run_experiment(cfg, tmp_path / "run", progress=False, probes=probes_for())
    acc = summary.metrics["gradient_accounting"]
    assert acc["neg_grad_share_fn_best"] is None and acc["neg_grad_share_fn_mean"] is None
    assert acc["fn_slot_fraction_best"] == pytest.approx(0.2, abs=0.05)
    assert acc["pos_grad_share_noisy_best"] is not None  # the positive side still works beside it
    lines = accounting_lines(acc)
    assert len(lines) == 2 and "n/a" in lines[1] and "does not read them" in lines[1]
    assert real is not positives_only


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("scorer,bf16", [("gather", False), ("sparse", False), ("dense", True)])
def test_watched_epoch_has_no_host_sync_on_cuda(scorer, bf16):
    """Both sides of the accounting on (noisy positives and false negatives): still no host sync per batch."""
    from rankrobust.probes import ProbeContext
    from tests.conftest import epoch_without_host_sync

    cfg = config_from_dict({"train": {"device": "cuda", "num_negatives": 64, "scorer": scorer, "bf16": bf16},
                            "noise": {"neg_prob": 0.2, "pos_ratio": 0.2}})
    data, _ = prepare_data(cfg, load_data(cfg.data))
    trainer = Trainer(cfg, data, torch.device("cuda"))
    probe = GradientShareProbe()
    probe.start(ProbeContext(cfg, data, torch.device("cuda")))
    trainer.probes = [probe]
    epoch_without_host_sync(trainer)
    out = probe.epoch_end(1, trainer.model, {})
    assert 0 <= out["neg_grad_share_fn"] <= 1 and out["fn_slot_fraction"] == pytest.approx(0.2, abs=0.02)
    assert 0 <= out["pos_grad_share_noisy"] <= 1
