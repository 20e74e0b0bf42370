"""Noise injection and false-negative pools: exact counts, disjointness, seeding."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from rankrobust.data.interactions import Interactions
from rankrobust.noise import add_noisy_positives, false_negative_pool, heldout_false_negative_pool, noise_table
from tests.conftest import random_interactions


def pairs(x: Interactions) -> set[tuple[int, int]]:
    u, i = x.to_pairs()
    return set(zip(u.tolist(), i.tolist()))


def expected_count(n: int, ratio: float, rounding: str) -> int:
    x = round(ratio * n, 9)
    return math.floor(x) if rounding == "floor" else math.ceil(x)


# --------------------------------------------------------------------------- noisy positives
@settings(max_examples=40, deadline=None)
@given(n_users=st.integers(1, 30), n_items=st.integers(2, 60), density=st.floats(0.01, 0.9),
       ratio=st.sampled_from([0.0, 0.1, 0.2, 0.3, 0.5, 1.0, 3.0]), rounding=st.sampled_from(["floor", "ceil"]),
       with_exclude=st.booleans(), seed=st.integers(0, 10_000))
def test_noisy_positives_properties(n_users, n_items, density, ratio, rounding, with_exclude, seed):
    train = random_interactions(n_users, n_items, density, seed)
    exclude = random_interactions(n_users, n_items, 0.1, seed + 1).difference(train) if with_exclude else None
    noisy, injected = add_noisy_positives(train, ratio, seed=seed, rounding=rounding, exclude=exclude)
    assert injected.shape == noisy.shape == train.shape
    inj, tr = pairs(injected), pairs(train)
    ex = pairs(exclude) if exclude is not None else set()
    assert not inj & tr and not inj & ex
    assert pairs(noisy) == tr | inj
    assert injected.nnz == len(inj)  # no duplicates
    forbidden = train if exclude is None else train.union(exclude)
    for u in range(n_users):
        want = expected_count(len(train.row(u)), ratio, rounding)
        free = n_items - len(forbidden.row(u))
        assert len(injected.row(u)) == min(want, free)


def test_exact_counts_floor_and_ceil():
    train = random_interactions(200, 300, 0.05, seed=3)
    counts = train.user_counts()
    for rounding, fn in (("floor", np.floor), ("ceil", np.ceil)):
        _, injected = add_noisy_positives(train, 0.3, seed=0, rounding=rounding)
        assert np.array_equal(injected.user_counts(), fn(np.round(0.3 * counts, 9)).astype(int))


def test_binary_rounding_is_not_off_by_one():
    train = Interactions.from_pairs(np.zeros(30, dtype=int), np.arange(30), 1, 100)  # 0.1 · 30 = 3.0000000000000004
    for rounding in ("floor", "ceil"):
        assert add_noisy_positives(train, 0.1, seed=0, rounding=rounding)[1].nnz == 3


def test_zero_ratio_injects_nothing():
    train = random_interactions(20, 30, 0.2, seed=4)
    noisy, injected = add_noisy_positives(train, 0.0, seed=0, rounding="ceil")
    assert injected.nnz == 0 and pairs(noisy) == pairs(train)


def test_too_few_free_items_takes_all_of_them():
    train = Interactions.from_pairs([0, 0, 0, 0, 1], [0, 1, 2, 3, 0], 2, 6)
    exclude = Interactions.from_pairs([0], [4], 2, 6)
    _, injected = add_noisy_positives(train, 1.0, seed=0, exclude=exclude)
    assert injected.row(0).tolist() == [5] and len(injected.row(1)) == 1


def test_seeded_determinism():
    train = random_interactions(50, 80, 0.1, seed=5)
    a = add_noisy_positives(train, 0.5, seed=7)[1]
    b = add_noisy_positives(train, 0.5, seed=7)[1]
    c = add_noisy_positives(train, 0.5, seed=8)[1]
    assert pairs(a) == pairs(b) and pairs(a) != pairs(c)


def test_injected_items_are_uniform_over_free_items():
    # one user, 3 positives, ratio 1 -> 3 items out of 17 free; every free item equally likely
    train = Interactions.from_pairs([0, 0, 0], [2, 9, 15], 1, 20)
    free = np.setdiff1d(np.arange(20), [2, 9, 15])
    hits = np.zeros(20, dtype=int)
    for seed in range(600):
        hits[add_noisy_positives(train, 1.0, seed=seed)[1].indices] += 1
    assert hits[[2, 9, 15]].sum() == 0
    assert stats.chisquare(hits[free]).pvalue > 1e-3


def test_dense_rows_use_the_exhaustive_path_uniformly():
    # 10 free items, 8 wanted (2k >= free): still uniform and without replacement
    train = Interactions.from_pairs(np.zeros(8, dtype=int), np.arange(0, 16, 2), 1, 18)
    hits = np.zeros(18, dtype=int)
    for seed in range(300):
        inj = add_noisy_positives(train, 1.0, seed=seed)[1]
        assert inj.nnz == 8
        hits[inj.indices] += 1
    free = np.setdiff1d(np.arange(18), train.indices)
    assert hits[train.indices].sum() == 0
    assert stats.chisquare(hits[free]).pvalue > 1e-3


def test_bad_arguments():
    train = random_interactions(5, 10, 0.2, seed=0)
    with pytest.raises(ValueError):
        add_noisy_positives(train, -0.1, seed=0)
    with pytest.raises(ValueError):
        add_noisy_positives(train, 0.1, seed=0, rounding="round")
    with pytest.raises(ValueError):
        add_noisy_positives(train, 0.1, seed=0, exclude=Interactions.empty(5, 11))


# --------------------------------------------------------------------------- false-negative pools
@settings(max_examples=30, deadline=None)
@given(n_users=st.integers(1, 30), n_items=st.integers(2, 80), density=st.floats(0.01, 0.9),
       fraction=st.sampled_from([0.1, 0.2, 0.5, 0.9]), seed=st.integers(0, 10_000))
def test_heldout_pool_properties(n_users, n_items, density, fraction, seed):
    train = random_interactions(n_users, n_items, density, seed)
    reduced, pool = heldout_false_negative_pool(train, fraction=fraction, seed=seed)
    assert not pairs(reduced) & pairs(pool)
    assert pairs(reduced) | pairs(pool) == pairs(train)
    for u in range(n_users):
        n = len(train.row(u))
        assert len(reduced.row(u)) >= 1
        assert len(pool.row(u)) == min(math.floor(round(fraction * n, 9)), n - 1)


def test_heldout_pool_seeded():
    train = random_interactions(40, 100, 0.2, seed=1)
    a = heldout_false_negative_pool(train, 0.1, seed=3)[1]
    b = heldout_false_negative_pool(train, 0.1, seed=3)[1]
    c = heldout_false_negative_pool(train, 0.1, seed=4)[1]
    assert pairs(a) == pairs(b) and pairs(a) != pairs(c)
    assert a.nnz == np.floor(np.round(0.1 * train.user_counts(), 9)).sum()


def test_false_negative_pool_kinds():
    train = random_interactions(20, 50, 0.3, seed=2)
    t, p = false_negative_pool(train, kind="train")
    assert t is train and p is train
    t, p = false_negative_pool(train, kind="heldout", fraction=0.2, seed=1)
    assert pairs(t) | pairs(p) == pairs(train) and p.nnz > 0
    with pytest.raises(ValueError, match="train"):
        false_negative_pool(train, kind="held")


# --------------------------------------------------------------------------- table
def test_noise_table():
    inj = Interactions.from_pairs([0, 2, 2], [5, 1, 3], 3, 6)
    df = noise_table(inj, "noisy_positive")
    assert list(df.columns) == ["user", "item", "kind"]
    assert df[["user", "item"]].values.tolist() == [[0, 5], [2, 1], [2, 3]]
    assert (df["kind"] == "noisy_positive").all()
    assert df["user"].dtype == np.int64 and df["item"].dtype == np.int64
    empty = noise_table(Interactions.empty(3, 6), "none")
    assert len(empty) == 0 and list(empty.columns) == ["user", "item", "kind"]
    assert isinstance(pd.concat([df, empty], ignore_index=True), pd.DataFrame)


def test_pair_mask_matches_brute_force():
    from rankrobust.data import Interactions
    from rankrobust.noise import pair_mask

    train = random_interactions(20, 30, 0.2, seed=4)
    users, items = train.to_pairs()
    rng = np.random.default_rng(0)
    pick = rng.choice(len(users), size=15, replace=False)
    mask = pair_mask(train, Interactions.from_pairs(users[pick], items[pick], *train.shape))
    expect = np.array([(u, i) in set(zip(users[pick], items[pick])) for u, i in zip(users, items)])
    assert (mask == expect).all()
    assert not pair_mask(train, train.empty(*train.shape)).any()
