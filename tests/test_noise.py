"""Noise injection and false-negative pools: exact counts, disjointness, seeding."""
from __future__ import annotations

import math
import sys
import types

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


# --------------------------------------------------------------------------- noise kinds (NOISE_KINDS)
def test_uniform_kind_gives_the_pairs_of_before_the_registry():
    """Seeds give the same injected pairs as the code before noise kinds existed (recorded with commit 2f5a879's
    rankrobust/noise.py): the exhaustive path (a dense case) and the sampling path (a sparse one)."""
    _, dense = add_noisy_positives(random_interactions(6, 12, 0.3, seed=1), 1.0, seed=5)
    assert sorted(pairs(dense)) == [
        (0, 1), (0, 3), (0, 8), (1, 2), (1, 3), (1, 5), (1, 8), (1, 11), (2, 0), (2, 1), (2, 6), (2, 8), (3, 2),
        (3, 4), (3, 8), (3, 10), (4, 1), (4, 2), (4, 5), (4, 10), (5, 2), (5, 3), (5, 4), (5, 8), (5, 9), (5, 11)]
    _, sparse = add_noisy_positives(random_interactions(30, 400, 0.05, seed=2), 0.5, seed=11, rounding="ceil",
                                    kind="uniform")
    u, i = sparse.to_pairs()
    assert sparse.nnz == 321 and list(zip(u[:12].tolist(), i[:12].tolist())) == [
        (0, 10), (0, 26), (0, 51), (0, 58), (0, 203), (0, 244), (0, 252), (0, 370), (0, 378), (1, 34), (1, 55),
        (1, 101)]


def successive_inclusion(weights: list[float], free: list[int], k: int) -> dict[int, float]:
    """P(item j among k successive draws ∝ w without replacement from ``free``), by enumerating every ordered
    draw sequence in float64 (the oracle of the popularity kind)."""
    out = {j: 0.0 for j in free}

    def walk(left: list[int], prob: float, depth: int, chosen: tuple[int, ...]) -> None:
        if depth == k:
            for j in chosen:
                out[j] += prob
            return
        total = sum(weights[j] for j in left)
        for j in left:
            if weights[j] > 0:
                walk([x for x in left if x != j], prob * weights[j] / total, depth + 1, chosen + (j,))

    walk(list(free), 1.0, 0, ())
    return out


@pytest.mark.parametrize("forbid,k", [([1, 4], 1), ([1, 4], 3), (list(range(4, 40)), 2)],
                         ids=["k=1", "k=3", "dense-path"])
def test_popularity_kind_matches_successive_sampling(forbid, k):
    """Many users with one row: the share of users drawing item j equals the exact inclusion probability of
    successive sampling ∝ φ_j^α among the free items (α = 1.5; a zero-popularity item is never drawn).  The
    first two draw ∝ φ^α with replacement and drop forbidden draws; the third forbids 36 of 40 items, with most
    of the weight, which takes the exhaustive (Efraimidis–Spirakis) path."""
    from rankrobust.noise import PopularityNoiseOptions

    n_users, n_items, alpha = 3000, 40, 1.5
    popularity = np.random.default_rng(0).integers(1, 10, n_items)
    popularity[3] = 0
    users = np.repeat(np.arange(n_users), len(forbid))
    train = Interactions.from_pairs(users, np.tile(forbid, n_users), n_users, n_items)
    ratio = k / len(forbid)
    w = popularity.astype(float) ** alpha
    first_draws = math.ceil(2 * k / (1 - w[forbid].sum() / w.sum())) + 8  # weighted_free_items' first round
    assert (first_draws > n_items) == (len(forbid) > 30)  # > n_items: the exhaustive path
    _, inj = add_noisy_positives(train, ratio, seed=3, kind="popularity", options=PopularityNoiseOptions(alpha),
                                 popularity=popularity)
    assert (inj.user_counts() == k).all()
    free = [j for j in range(n_items) if j not in forbid]
    expect = successive_inclusion((popularity.astype(float) ** alpha).tolist(), free, k)
    hits = inj.item_counts()
    assert hits[forbid].sum() == 0 and hits[3] == 0
    observed = np.array([hits[j] for j in free if expect[j] > 0])
    expected = np.array([expect[j] * n_users for j in free if expect[j] > 0])
    assert expected.sum() == pytest.approx(k * n_users)
    assert stats.chisquare(observed, expected * observed.sum() / expected.sum()).pvalue > 1e-3


def test_popularity_kind_counts_caps_and_seeds():
    """Exact k_u, disjoint from train and exclude, capped at the free items of positive popularity; α = 0 is
    uniform over every free item (cold ones included); seeded."""
    from rankrobust.noise import PopularityNoiseOptions

    train = random_interactions(60, 90, 0.1, seed=6)
    exclude = random_interactions(60, 90, 0.05, seed=7).difference(train)
    popularity = train.item_counts()
    popularity[:30] = 0  # cold items
    opts = PopularityNoiseOptions(1.0)
    _, a = add_noisy_positives(train, 0.7, seed=1, exclude=exclude, kind="popularity", options=opts,
                               popularity=popularity)
    _, b = add_noisy_positives(train, 0.7, seed=1, exclude=exclude, kind="popularity", options=opts,
                               popularity=popularity)
    _, c = add_noisy_positives(train, 0.7, seed=2, exclude=exclude, kind="popularity", options=opts,
                               popularity=popularity)
    assert pairs(a) == pairs(b) and pairs(a) != pairs(c)
    assert not pairs(a) & (pairs(train) | pairs(exclude)) and (a.item_counts()[:30] == 0).all()
    forbidden = train.union(exclude)
    warm_free = [sum(1 for j in range(30, 90) if j not in set(forbidden.row(u))) for u in range(60)]
    want = [expected_count(len(train.row(u)), 0.7, "floor") for u in range(60)]
    assert a.user_counts().tolist() == [min(w, f) for w, f in zip(want, warm_free)]
    _, cold = add_noisy_positives(train, 3.0, seed=1, kind="popularity", options=PopularityNoiseOptions(0.0),
                                  popularity=popularity)
    assert cold.item_counts()[:30].sum() > 0


def test_unknown_noise_kind_names_the_valid_ones():
    from rankrobust.config import ConfigError, config_from_dict

    with pytest.raises(ConfigError, match=r"noise.pos_kind = 'popular' is not valid: unknown noise kind 'popular' "
                                          r"\(did you mean 'popularity'\?\); valid noise kinds are \['uniform', "
                                          r"'popularity'"):
        config_from_dict({"noise": {"pos_ratio": 0.2, "pos_kind": "popular"}})
    with pytest.raises(ConfigError, match="noise.pos_alpha does not apply to noise.pos_kind = 'uniform'; it is an "
                                          "option of noise kind popularity"):
        config_from_dict({"noise": {"pos_ratio": 0.2, "pos_alpha": 0.5}})


def test_popularity_kind_through_the_config_flags_and_recorded_table(tmp_path):
    """``--noise-kind popularity --noise-alpha 2`` configures the run; prepare_data weighs by the clean split's
    popularity and noise.parquet records each fake positive's φ; a config without pos_kind reads as uniform."""
    from rankrobust.config import canonical_config, config_flags, config_from_dict
    from rankrobust.data.popularity import item_popularity
    from rankrobust.experiment import load_data, prepare_data
    from tests.test_train import tiny_config

    flags = {f.flag: f for f in config_flags()}
    assert flags["--noise-kind"].key == "noise.pos_kind" and "uniform, popularity" in flags["--noise-kind"].help
    assert flags["--noise-alpha"].key == "noise.pos_alpha" and "(noise kind popularity; default 1.0)" in \
        flags["--noise-alpha"].help
    cfg = tiny_config(tmp_path, noise={"pos_ratio": 0.5, "pos_kind": "popularity", "pos_alpha": 2.0,
                                       "neg_pool": "heldout"})
    assert cfg.to_dict()["noise"]["pos_alpha"] == 2.0
    dataset = load_data(cfg.data)
    data, table = prepare_data(cfg, dataset)
    clean = item_popularity(dataset.train, "clean")
    rows = table[table["kind"] == "noisy_positive"]
    assert len(rows) == data.seen.nnz - dataset.train.nnz > 0
    assert (rows["popularity"].to_numpy() == clean[rows["item"].to_numpy()]).all()
    assert (rows["popularity"] > 0).all()
    uniform = tiny_config(tmp_path, noise={"pos_ratio": 0.5})
    _, plain = prepare_data(uniform, dataset)
    assert list(plain.columns) == ["user", "item", "kind"]
    old = uniform.to_dict()
    del old["noise"]["pos_kind"]
    assert canonical_config(old) == uniform.to_dict() and uniform.noise.pos_kind == "uniform"


def _extending_block(heading: str) -> str:
    """The first ```python block after ``heading`` in docs/EXTENDING.md, as written there."""
    from pathlib import Path

    text = (Path(__file__).parent.parent / "docs" / "EXTENDING.md").read_text()
    section = text[text.index(heading):]
    start = section.index("```python\n") + len("```python\n")
    return section[start:section.index("```", start)]


def test_extending_noise_kind_example(monkeypatch, tmp_path):
    """docs/EXTENDING.md section 6, run as written in a copy of NOISE_KINDS: the ``tail`` kind draws ∝ (φ+1)^−β
    (exact law, many users with one row), parses from config and flags, and records its table through
    prepare_data; nothing is left registered after the test."""
    from rankrobust.config import ConfigError, config_flags, config_from_dict
    from rankrobust.experiment import load_data, prepare_data
    from rankrobust.noise import NOISE_KINDS
    from tests.test_train import tiny_config

    monkeypatch.setattr(NOISE_KINDS, "_entries", dict(NOISE_KINDS._entries))
    module = types.ModuleType("extending_noise_kind")  # dataclasses look their module up in sys.modules
    monkeypatch.setitem(sys.modules, module.__name__, module)
    exec(compile(_extending_block("## 6. A noise kind"), "docs/EXTENDING.md#6", "exec"), module.__dict__)
    namespace = module.__dict__
    assert NOISE_KINDS.names()[-1] == "tail"

    n_users, n_items, beta = 3000, 30, 2.0
    popularity = np.random.default_rng(1).integers(0, 12, n_items)
    forbid = [0, 5, 7]
    train = Interactions.from_pairs(np.repeat(np.arange(n_users), 3), np.tile(forbid, n_users), n_users, n_items)
    _, inj = add_noisy_positives(train, 2 / 3, seed=0, kind="tail", options=namespace["TailNoiseOptions"](beta),
                                 popularity=popularity)
    free = [j for j in range(n_items) if j not in forbid]
    expect = successive_inclusion(((popularity + 1.0) ** -beta).tolist(), free, 2)
    hits = inj.item_counts()
    assert (inj.user_counts() == 2).all() and hits[forbid].sum() == 0
    observed, expected = hits[free], np.array([expect[j] for j in free]) * n_users
    assert stats.chisquare(observed, expected * observed.sum() / expected.sum()).pvalue > 1e-3

    flags = {f.flag: f for f in config_flags()}
    assert "tail" in flags["--noise-kind"].help and flags["--tail-beta"].key == "noise.tail_beta"
    with pytest.raises(ConfigError, match="it is an option of noise kind tail"):
        config_from_dict({"noise": {"pos_ratio": 0.2, "tail_beta": 2.0}})
    cfg = tiny_config(tmp_path, noise={"pos_ratio": 0.5, "pos_kind": "tail", "tail_beta": 2.0})
    assert cfg.to_dict()["noise"]["tail_beta"] == 2.0
    dataset = load_data(cfg.data)
    _, table = prepare_data(cfg, dataset)
    _, uniform = prepare_data(tiny_config(tmp_path, noise={"pos_ratio": 0.5}), dataset)
    assert list(table.columns) == ["user", "item", "kind", "popularity"] and len(table) == len(uniform)
    assert table["popularity"].mean() < dataset.train.item_counts()[uniform["item"].to_numpy()].mean()


def test_extending_noise_kind_is_gone_after_the_test():
    from rankrobust.noise import NOISE_KINDS

    assert "tail" not in NOISE_KINDS
