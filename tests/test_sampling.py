"""Negative samplers: shapes, exclusion, distributions, false-negative mixing, seeding."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from rankrobust.data.interactions import Interactions
from rankrobust.sampling import (
    SAMPLERS,
    negative_kind,
    FalseNegativeMixer,
    InBatchSampler,
    PopularitySampler,
    UniformExcludeSampler,
    UniformSampler,
    build_sampler,
)
from tests.conftest import random_interactions


def gen(seed: int = 0, device: str = "cpu") -> torch.Generator:
    return torch.Generator(device=device).manual_seed(seed)


def batch(train: Interactions, b: int = 64, seed: int = 0, device: str = "cpu"):
    users, items = (torch.as_tensor(a, device=device) for a in train.to_pairs())
    idx = torch.randint(0, len(users), (b,), generator=gen(seed), device=device)
    return users[idx], items[idx]


def member(train: Interactions, users: torch.Tensor, items: torch.Tensor) -> np.ndarray:
    """Brute force: is (users[b], items[b, j]) a pair of ``train``? -> bool [B, M]."""
    u, it = users.cpu().numpy(), items.cpu().numpy()
    return np.array([[j in set(train.row(int(uu)).tolist()) for j in row] for uu, row in zip(u, it)])


TRAIN = random_interactions(40, 25, 0.2, seed=1)


# --------------------------------------------------------------------------- shapes, devices
SAMPLED = [name for name in SAMPLERS if negative_kind(name) == "sampled"]


def _m(name: str, m: int) -> dict:
    """num_negatives for the samplers that take it (in_batch has M = B, full M = n_items)."""
    return {"num_negatives": m} if name in SAMPLED else {}


@pytest.mark.parametrize("name", SAMPLERS)
def test_shapes_dtypes_devices(name):
    s = build_sampler(name, train=TRAIN, n_items=TRAIN.n_items, device="cpu", **_m(name, 7))
    users, pos = batch(TRAIN, b=16)
    out = s(users, pos, gen())
    m = {"in_batch": 16, "full": 0}.get(name, 7)
    assert out.shape == (16, m) and out.dtype == torch.long and out.device == users.device
    if m:
        assert int(out.min()) >= 0 and int(out.max()) < TRAIN.n_items
    assert s.name == name and s.num_negatives == (7 if name in SAMPLED else None)
    assert s.negatives == negative_kind(name)


@pytest.mark.cuda
@pytest.mark.parametrize("name", SAMPLERS)
def test_on_cuda(name):
    s = build_sampler(name, train=TRAIN, n_items=TRAIN.n_items, device="cuda", **_m(name, 7),
                      fn_pool=TRAIN if name in SAMPLED else None, fn_prob=0.3 if name in SAMPLED else 0.0)
    users, pos = batch(TRAIN, b=16, device="cuda")
    out = s(users, pos, gen(device="cuda"))
    assert out.device.type == "cuda" and out.dtype == torch.long
    if name == "uniform_exclude":
        assert not member(TRAIN, users, out).any()


def test_in_batch_is_positives_broadcast():
    users, pos = batch(TRAIN, b=9)
    out = InBatchSampler()(users, pos, gen())
    assert out.shape == (9, 9)
    assert torch.equal(out, pos[None, :].expand(9, 9))
    assert torch.equal(out.diagonal(), pos)  # own positive included


# --------------------------------------------------------------------------- uniform_exclude
@st.composite
def csr(draw):
    n_users = draw(st.integers(1, 8))
    n_items = draw(st.integers(2, 12))
    rows = []
    for _ in range(n_users):
        kind = draw(st.sampled_from(["random", "dense", "single", "edge"]))
        if kind == "dense":  # all items but one
            hole = draw(st.integers(0, n_items - 1))
            row = [i for i in range(n_items) if i != hole]
        elif kind == "single":
            row = [draw(st.integers(0, n_items - 1))]
        elif kind == "edge":
            row = [0, n_items - 1]
        else:
            row = draw(st.lists(st.integers(0, n_items - 1), max_size=n_items - 1, unique=True))
        rows.append(row)
    users = np.repeat(np.arange(n_users), [len(r) for r in rows])
    items = np.concatenate([np.asarray(r, dtype=np.int64) for r in rows]) if users.size else np.zeros(0)
    return Interactions.from_pairs(users, items, n_users, n_items)


@settings(max_examples=60, deadline=None)
@given(train=csr(), seed=st.integers(0, 2**31 - 1))
def test_uniform_exclude_never_returns_a_training_positive(train, seed):
    full = np.flatnonzero(train.user_counts() == train.n_items)
    if len(full):  # e.g. the 'edge' row [0, 1] with 2 items: construction must refuse, naming the user
        with pytest.raises(ValueError, match=f"user {full[0]} "):
            UniformExcludeSampler(train, num_negatives=20)
        return
    s = UniformExcludeSampler(train, num_negatives=20)
    users = torch.arange(train.n_users).repeat(3)
    out = s(users, users, gen(seed))
    assert out.shape == (len(users), 20)
    assert int(out.min()) >= 0 and int(out.max()) < train.n_items
    assert not member(train, users, out).any()


def test_uniform_exclude_is_uniform_over_the_complement():
    train = Interactions.from_pairs([0, 0, 0, 1], [1, 2, 5, 0], 2, 8)
    s = UniformExcludeSampler(train, num_negatives=4000)
    out = s(torch.tensor([0, 1]), torch.tensor([1, 0]), gen(3)).numpy()
    for u, row in enumerate(out):
        allowed = np.setdiff1d(np.arange(8), train.row(u))
        counts = np.bincount(row, minlength=8)
        assert counts[train.row(u)].sum() == 0
        assert stats.chisquare(counts[allowed]).pvalue > 1e-3


def test_uniform_exclude_rejects_users_with_every_item():
    train = Interactions.from_pairs([0, 1, 1, 1], [2, 0, 1, 2], 2, 3)
    with pytest.raises(ValueError, match="user 1"):
        UniformExcludeSampler(train, 4)


# --------------------------------------------------------------------------- popularity
@pytest.mark.parametrize("alpha", [0.0, 0.5, 1.0, 2.0])
def test_popularity_frequencies(alpha):
    counts = np.array([0, 1, 2, 5, 10, 30, 3, 0, 7])
    s = PopularitySampler(counts, num_negatives=5000, alpha=alpha)
    out = s(torch.zeros(8, dtype=torch.long), torch.zeros(8, dtype=torch.long), gen(11)).numpy().ravel()
    freq = np.bincount(out, minlength=len(counts))
    expected = np.power(counts.astype(float), alpha)
    expected = expected / expected.sum()
    assert np.allclose(s.probs, expected)
    if alpha > 0:
        assert freq[counts == 0].sum() == 0
    support = expected > 0
    assert stats.chisquare(freq[support], expected[support] * len(out)).pvalue > 1e-3


def test_popularity_validation():
    with pytest.raises(ValueError):
        PopularitySampler(np.zeros(4), 3)
    with pytest.raises(ValueError):
        PopularitySampler(np.ones(4), 3, alpha=-1.0)


# --------------------------------------------------------------------------- false negatives
@pytest.mark.parametrize("p", [0.05, 0.3, 1.0])
def test_false_negative_share_and_origin(p):
    train = random_interactions(60, 200, 0.05, seed=2)
    pool = random_interactions(60, 200, 0.03, seed=5)
    empty_user = 7  # this user keeps its base negatives
    pu, pi = pool.to_pairs()
    pool = Interactions.from_pairs(pu[pu != empty_user], pi[pu != empty_user], 60, 200)
    mixer = FalseNegativeMixer(UniformExcludeSampler(train, 50), pool, p)
    users = torch.arange(60).repeat(4)
    out, replaced = mixer.sample_with_mask(users, users, gen(4))
    rep = replaced.numpy()
    in_pool = member(pool, users, out)
    assert in_pool[rep].all()  # replaced entries come from the user's pool row
    assert not member(train, users, out)[~rep].any()  # the rest are base (exclude) negatives
    assert not rep[(users == empty_user).numpy()].any()
    share = rep[(users != empty_user).numpy()].mean()
    n = rep[(users != empty_user).numpy()].size
    assert abs(share - p) <= 5 * np.sqrt(p * (1 - p) / n) + 1e-12
    assert torch.equal(mixer(users, users, gen(4)), out)


def test_false_negative_draws_are_uniform_over_pool_row():
    pool = Interactions.from_pairs([0, 0, 0, 0], [3, 4, 8, 9], 1, 10)
    mixer = FalseNegativeMixer(UniformSampler(10, 3000), pool, 1.0)
    out = mixer(torch.tensor([0]), torch.tensor([0]), gen(9)).numpy().ravel()
    counts = np.bincount(out, minlength=10)
    assert counts[[0, 1, 2, 5, 6, 7]].sum() == 0
    assert stats.chisquare(counts[[3, 4, 8, 9]]).pvalue > 1e-3


def test_false_negative_p0_is_the_base_sampler():
    base = UniformSampler(TRAIN.n_items, 6)
    users, pos = batch(TRAIN)
    assert torch.equal(FalseNegativeMixer(base, TRAIN, 0.0)(users, pos, gen(1)), base(users, pos, gen(1)))


def test_build_sampler_wraps_with_mixer():
    s = build_sampler("uniform", train=TRAIN, n_items=TRAIN.n_items, num_negatives=4, fn_pool=TRAIN, fn_prob=0.2)
    assert isinstance(s, FalseNegativeMixer) and s.num_negatives == 4 and s.name == "uniform+fn"
    with pytest.raises(ValueError, match="pool"):
        build_sampler("uniform", train=TRAIN, n_items=TRAIN.n_items, num_negatives=4, fn_prob=0.2)
    with pytest.raises(ValueError, match="in_batch"):
        build_sampler("in_batch", train=TRAIN, n_items=TRAIN.n_items, fn_pool=TRAIN,
                      fn_prob=0.2)


def test_build_sampler_unknown_name():
    with pytest.raises(ValueError, match="did you mean 'uniform_exclude'"):
        build_sampler("uniform_exlude", train=TRAIN, n_items=TRAIN.n_items, num_negatives=4)


# --------------------------------------------------------------------------- seeding
@pytest.mark.parametrize("name", ["uniform", "uniform_exclude", "popularity"])
@pytest.mark.parametrize("fn_prob", [0.0, 0.3])
def test_seeding_determinism(name, fn_prob):
    s = build_sampler(name, train=TRAIN, n_items=TRAIN.n_items, fn_pool=TRAIN, fn_prob=fn_prob, **_m(name, 32))
    users, pos = batch(TRAIN)
    a, b, c = s(users, pos, gen(5)), s(users, pos, gen(5)), s(users, pos, gen(6))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    g = gen(5)
    first, second = s(users, pos, g), s(users, pos, g)
    assert torch.equal(first, a) and not torch.equal(first, second)  # the generator advances
