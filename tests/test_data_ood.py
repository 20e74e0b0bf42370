"""The popularity-shift (OOD) split: seeded, disjoint, covering, and flatter in item popularity than IID."""
from __future__ import annotations

import numpy as np
import pytest

from rankrobust.config import ConfigError, config_from_dict
from rankrobust.data import Interactions, load_dataset, split_per_user
from rankrobust.data.splits import (
    OOD_TEST_FRACTION,
    apply_split,
    gini,
    popularity_shift_split,
)
from rankrobust.experiment import load_data


def _power_law(n_users: int = 300, n_items: int = 400, seed: int = 0) -> Interactions:
    """Users with 5–30 items each, items drawn ∝ rank^-1 (a long tail)."""
    rng = np.random.default_rng(seed)
    p = 1.0 / np.arange(1, n_items + 1)
    p /= p.sum()
    users, items = [], []
    for u in range(n_users):
        chosen = rng.choice(n_items, size=rng.integers(5, 31), replace=False, p=p)
        users += [u] * len(chosen)
        items += chosen.tolist()
    return Interactions.from_pairs(np.array(users), np.array(items), n_users, n_items)


def _pairs(inter: Interactions) -> set[tuple[int, int]]:
    return set(zip(*(a.tolist() for a in inter.to_pairs())))


def test_gini():
    assert gini(np.array([3, 3, 3])) == pytest.approx(0.0)
    assert gini(np.array([0, 0, 0, 10])) == pytest.approx(0.75)
    assert gini(np.array([])) == 0.0


def test_split_is_seeded_disjoint_covering_and_flatter():
    inter = _power_law()
    rest, test = popularity_shift_split(inter, 0.2, seed=0)
    again_rest, again_test = popularity_shift_split(inter, 0.2, seed=0)
    assert _pairs(test) == _pairs(again_test) and _pairs(rest) == _pairs(again_rest)
    assert _pairs(popularity_shift_split(inter, 0.2, seed=1)[1]) != _pairs(test)
    assert not _pairs(rest) & _pairs(test)
    assert _pairs(rest) | _pairs(test) == _pairs(inter)
    assert 0.18 <= test.nnz / inter.nnz <= 0.2 + 1e-9
    # every user and item of the data keeps a training interaction
    assert ((rest.user_counts() > 0) == (inter.user_counts() > 0)).all()
    assert ((rest.item_counts() > 0) == (inter.item_counts() > 0)).all()
    # the IID test of the same share (per user, uniform) keeps the long tail; the OOD test is much flatter
    _, iid_test = split_per_user(inter, (0.8, 0.2), seed=0)
    g_iid, g_ood = gini(iid_test.item_counts()), gini(test.item_counts())
    assert g_ood < g_iid - 0.25, (g_ood, g_iid)
    # popular items are under-represented relative to their share of the data, tail items over-represented
    pop = inter.item_counts()
    head, tail = pop >= np.quantile(pop, 0.9), pop <= np.quantile(pop, 0.5)
    share = lambda x, m: x.item_counts()[m].sum() / x.nnz
    assert share(test, head) < share(inter, head) and share(test, tail) > share(inter, tail)


def test_apply_split_on_lastfm_records_and_carves_validation():
    ds = load_dataset("lastfm")
    ood = apply_split(ds, "popularity", test_fraction=OOD_TEST_FRACTION, valid_fraction=0.1, seed=0)
    assert apply_split(ds, "given") is ds
    parts = [_pairs(ood.train), _pairs(ood.valid), _pairs(ood.test)]
    assert not parts[0] & parts[1] and not parts[0] & parts[2] and not parts[1] & parts[2]
    assert parts[0] | parts[1] | parts[2] == _pairs(ds.train) | _pairs(ds.valid) | _pairs(ds.test)
    rec = ood.split
    assert rec["kind"] == "popularity" and rec["seed"] == 0 and rec["test"] == ood.test.nnz
    assert rec["test_item_gini"] == pytest.approx(gini(ood.test.item_counts()))
    assert rec["given_test_item_gini"] == pytest.approx(gini(ds.test.item_counts()))
    assert rec["test_item_gini"] < rec["given_test_item_gini"] - 0.3
    assert apply_split(ds, "popularity", seed=0).split["test_digest"] == rec["test_digest"]
    assert apply_split(ds, "popularity", seed=1).split["test_digest"] != rec["test_digest"]
    leaky = apply_split(load_dataset("lastfm", valid_is_test=True), "popularity", seed=0)
    assert leaky.leaky_validation and leaky.valid is leaky.test
    with pytest.raises(ValueError, match="split must be one of"):
        apply_split(ds, "temporal")


def test_config_option_and_cached_loading():
    cfg = config_from_dict({"data": {"name": "lastfm", "split": "popularity", "ood_test_fraction": 0.3}})
    ds = load_data(cfg.data)
    assert ds.split["test_fraction_target"] == 0.3 and abs(ds.split["test_fraction"] - 0.3) < 0.01
    assert load_data(cfg.data) is ds  # cached by the frozen DataConfig
    assert load_data(config_from_dict({}).data).split is None
    with pytest.raises(ConfigError, match="data.split"):
        config_from_dict({"data": {"split": "popular"}})
    with pytest.raises(ConfigError, match="ood_test_fraction"):
        config_from_dict({"data": {"ood_test_fraction": 1.0}})
