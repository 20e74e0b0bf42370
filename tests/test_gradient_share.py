"""In-training gradient accounting (analysis/gradient_share.py, PROTOCOLS.md §9).

g_k = B·|∂L/∂s⁺_k| summed over an epoch; ``pos_grad_share_noisy`` = Σ_noisy g / Σ g.
(a) SL: every g_k is 1/τ, so the share is the noisy pair fraction, for any
    batching, sampler and a last batch shorter than the others.
(b) BSL paper mode: g_k = |G|·softmax_G(s⁺/τ₁)_k within the user's group G of
    the batch; checked against `brute_force_share` and a derivation written here.
"""
import math
from collections import defaultdict

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from analysis.gradient_share import GradientAccountant, brute_force_share
from analysis.probes import GradientShareProbe
from rankrobust.experiment import load_data, prepare_data
from rankrobust.losses import bsl, sl
from rankrobust.probes import ProbeContext
from rankrobust.train import fit
from tests.test_train import tiny_config

CPU = torch.device("cpu")


# ---------------------------------------------------------------------------- (a) SL through real training
def accounted_fit(cfg):
    """`fit` with a started `GradientShareProbe`; returns (history, data, batch size)."""
    data, _ = prepare_data(cfg, load_data(cfg.data))
    n = data.train.nnz
    batch = next(b for b in (37, 41, 43, 47, 53) if n % b)  # the last batch is shorter
    cfg = cfg.with_overrides({"train.batch_size": batch})
    probe = GradientShareProbe()
    probe.start(ProbeContext(cfg, data, CPU))
    assert probe.active
    return fit(cfg, data, CPU, probes=[probe], progress=False).history, data, batch


@pytest.mark.parametrize("batching,sampler", [("pairs", "uniform"), ("users", "uniform"), ("pairs", "in_batch"),
                                              ("users", "in_batch")])
def test_sl_share_equals_noisy_pair_fraction_every_epoch(tmp_path, batching, sampler):
    cfg = tiny_config(tmp_path, noise={"pos_ratio": 0.3}, loss={"name": "sl", "tau": 0.2},
                      train={"epochs": 3, "eval_every": 3, "batching": batching, "sampler": sampler, "l2": 1e-3})
    history, data, batch = accounted_fit(cfg)
    assert data.train.nnz % batch != 0
    fraction = float(np.mean(data.noisy))
    assert 0 < fraction < 1 and len(history) == 3
    for row in history.itertuples():
        assert row.noisy_pair_fraction == pytest.approx(fraction, abs=1e-12)  # every pair seen once
        assert abs(row.pos_grad_share_noisy - row.noisy_pair_fraction) <= 1e-6, row


def test_bsl_share_differs_from_fraction_when_groups_are_large(tmp_path):
    """Not vacuous: with grouped positives (users batching) BSL paper mode shares the gradient by score."""
    cfg = tiny_config(tmp_path, noise={"pos_ratio": 0.3}, loss={"name": "bsl", "tau1": 0.1, "tau2": 0.2},
                      train={"epochs": 2, "eval_every": 2, "batching": "users", "lr": 0.05})
    history, _, _ = accounted_fit(cfg)
    assert (abs(history["pos_grad_share_noisy"] - history["noisy_pair_fraction"]) > 1e-4).any()


# ---------------------------------------------------------------------------- (b) BSL paper mode on hand-made batches
def derived_share(scores, users, noisy, tau1):
    """Per group G of equal users: g_k = |G|·exp(s_k/τ₁) / Σ_{k'∈G} exp(s_k'/τ₁); share = Σ_noisy g / Σ g."""
    groups = defaultdict(list)
    for k, u in enumerate(users):
        groups[u].append(k)
    g = [0.0] * len(scores)
    for members in groups.values():
        top = max(scores[k] / tau1 for k in members)
        weights = {k: math.exp(scores[k] / tau1 - top) for k in members}
        total = sum(weights.values())
        for k in members:
            g[k] = len(members) * weights[k] / total
    return sum(gk for gk, z in zip(g, noisy) if z) / sum(g), g


def accountant_share(pos, neg, users, index, noisy_all, loss, **kwargs):
    """Watch one batch, backward through ``loss``, read the accountant; returns (share, fraction, ∂L/∂s⁺)."""
    acc = GradientAccountant(noisy_all, "cpu")
    pos = pos.clone().requires_grad_(True)
    acc.watch(index, pos)
    loss(pos, neg, users=users, **kwargs).backward()
    out = acc.read(len(index))
    return out["pos_grad_share_noisy"], out["noisy_pair_fraction"], pos.grad


HAND_USERS = [0, 0, 0, 0, 1, 1, 2, 3, 3, 3, 4, 4]
HAND_NOISY = [1, 0, 0, 0, 0, 1, 1, 1, 0, 0, 1, 1]  # a lone noisy pair (user 2), an all-noisy group (user 4)
HAND_SCORES = [-0.6, 0.4, 0.7, 0.1, 0.9, -0.2, -0.5, -0.9, 0.3, 0.8, 0.2, -0.1]


@pytest.mark.parametrize("tau1,tau2", [(0.1, 0.1), (0.5, 0.1), (1.0, 2.0)])
def test_bsl_paper_share_on_a_hand_made_batch(tau1, tau2):
    b = len(HAND_USERS)
    # the batch's pairs sit at scattered positions of a larger epoch: the accountant indexes by position
    index = torch.tensor([5, 17, 2, 9, 11, 0, 14, 3, 8, 19, 12, 6])
    noisy_all = np.zeros(20, dtype=bool)
    noisy_all[index.numpy()] = np.array(HAND_NOISY, dtype=bool)
    noisy_all[[1, 4]] = True  # noisy pairs outside the batch must not count
    pos = torch.tensor(HAND_SCORES, dtype=torch.float64)
    neg = torch.linspace(-1, 1, b * 5, dtype=torch.float64).reshape(b, 5)
    users = torch.tensor(HAND_USERS)
    share, fraction, grad = accountant_share(pos, neg, users, index, noisy_all, bsl, mode="paper", tau1=tau1, tau2=tau2)

    derived, g = derived_share(HAND_SCORES, HAND_USERS, HAND_NOISY, tau1)
    assert share == pytest.approx(derived, abs=1e-12)
    assert share == pytest.approx(brute_force_share(np.array(HAND_SCORES), np.array(HAND_USERS),
                                                    np.array(HAND_NOISY, dtype=bool), loss="bsl", tau1=tau1), abs=1e-12)
    assert fraction == pytest.approx(sum(HAND_NOISY) / b)
    # the gradient itself: ∂L/∂s⁺_k = −g_k / (τ₁·B)
    assert torch.allclose(grad, -torch.tensor(g, dtype=torch.float64) / (tau1 * b), rtol=0, atol=1e-14)
    assert share != pytest.approx(fraction, abs=1e-3)  # groups of several positives: shared by score


def test_sl_share_on_the_same_batch_is_the_fraction():
    pos = torch.tensor(HAND_SCORES, dtype=torch.float64)
    neg = torch.linspace(-1, 1, len(pos) * 5, dtype=torch.float64).reshape(len(pos), 5)
    index = torch.arange(len(pos))
    share, fraction, _ = accountant_share(pos, neg, torch.tensor(HAND_USERS), index, np.array(HAND_NOISY, dtype=bool),
                                          sl, tau=0.3)
    assert share == pytest.approx(fraction, abs=1e-14) == pytest.approx(sum(HAND_NOISY) / len(pos))


def test_bsl_with_lone_positives_is_the_fraction():
    """Groups of one (every user once in the batch): BSL paper mode's share is the noisy fraction, as SL's."""
    users = torch.arange(len(HAND_SCORES))
    pos = torch.tensor(HAND_SCORES, dtype=torch.float64)
    neg = torch.zeros(len(pos), 3, dtype=torch.float64)
    share, fraction, _ = accountant_share(pos, neg, users, torch.arange(len(pos)), np.array(HAND_NOISY, dtype=bool),
                                          bsl, mode="paper", tau1=0.2, tau2=0.1)
    assert share == pytest.approx(fraction, abs=1e-14)


def test_batches_of_different_sizes_weigh_pairs_equally():
    """g is scaled by the batch size, so an epoch of a full and a short batch still gives SL the pair fraction."""
    noisy = np.array([1, 0, 0, 0, 0, 0, 1, 1, 0, 0], dtype=bool)
    acc = GradientAccountant(noisy, "cpu")
    for index in (torch.arange(0, 7), torch.arange(7, 10)):
        pos = torch.zeros(len(index), dtype=torch.float64, requires_grad=True)
        acc.watch(index, pos)
        sl(pos, torch.zeros(len(index), 4, dtype=torch.float64), tau=0.5).backward()
    out = acc.read(10)
    assert out["noisy_pair_fraction"] == pytest.approx(0.3)
    assert out["pos_grad_share_noisy"] == pytest.approx(0.3, abs=1e-14)
    assert acc.sums.tolist() == [0.0, 0.0, 0.0]  # read resets


def test_scores_without_grad_are_not_watched():
    acc = GradientAccountant(np.ones(3, dtype=bool), "cpu")
    acc.watch(torch.arange(3), torch.zeros(3))
    assert acc.read(3) == {"noisy_pair_fraction": 0.0, "pos_grad_share_noisy": pytest.approx(float("nan"), nan_ok=True)}


batches = st.integers(2, 16).flatmap(lambda b: st.tuples(
    st.lists(st.integers(0, 4), min_size=b, max_size=b),
    st.lists(st.floats(-1, 1), min_size=b, max_size=b),
    st.lists(st.booleans(), min_size=b, max_size=b),
    st.floats(0.05, 2.0)))


@settings(max_examples=60, deadline=None)
@given(batches)
def test_bsl_paper_share_property(batch):
    users, scores, noisy, tau1 = batch
    if not any(noisy):
        noisy[0] = True
    b = len(users)
    share, _, _ = accountant_share(torch.tensor(scores, dtype=torch.float64), torch.zeros(b, 2, dtype=torch.float64),
                                   torch.tensor(users), torch.arange(b), np.array(noisy), bsl, mode="paper",
                                   tau1=tau1, tau2=0.1)
    assert share == pytest.approx(derived_share(scores, users, noisy, tau1)[0], abs=1e-12)
    assert share == pytest.approx(brute_force_share(np.array(scores), np.array(users), np.array(noisy), loss="bsl",
                                                    tau1=tau1), abs=1e-12)
