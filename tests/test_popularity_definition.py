"""The one definition of item popularity (rankrobust/data/popularity.py) and its callers."""
import numpy as np
import pytest

from rankrobust.data import Interactions
from rankrobust.data.popularity import POPULARITY_VARIANTS, item_popularity


def _oracle(users, items, n_items):
    """φ(i) = |{u : (u, i) ∈ M}| by Python loops over the distinct pairs."""
    phi = [0] * n_items
    for u, i in set(zip(users, items)):
        phi[i] += 1
    return phi


@pytest.mark.parametrize("variant", list(POPULARITY_VARIANTS))
def test_item_popularity_counts_users_per_item(variant):
    rng = np.random.default_rng(0)
    users, items = rng.integers(0, 9, 60), rng.integers(0, 13, 60)  # duplicates: a pair counts once
    inter = Interactions.from_pairs(users, items, 9, 13)
    phi = item_popularity(inter, variant)
    assert phi.dtype == np.int64 and phi.shape == (13,)
    assert phi.tolist() == _oracle(users.tolist(), items.tolist(), 13)


def test_unknown_variant_is_one_line_naming_the_valid_ones():
    with pytest.raises(ValueError, match=r"popularity variant must be one of \['clean', 'seen', 'trained', 'all'\], "
                                         r"got 'train'"):
        item_popularity(Interactions.from_pairs([0], [0], 1, 1), "train")


def test_variants_name_different_matrices_of_one_noisy_run(tmp_path):
    """In a run with noisy positives and a held-out pool the three training variants differ as documented:
    seen = clean + injected, trained = clean − pool + injected (item by item)."""
    from rankrobust.experiment import load_data, prepare_data
    from tests.test_train import tiny_config

    cfg = tiny_config(tmp_path, noise={"pos_ratio": 0.5, "neg_prob": 0.2, "neg_pool": "heldout"})
    dataset = load_data(cfg.data)
    data, _ = prepare_data(cfg, dataset)
    clean = item_popularity(dataset.train, "clean")
    injected = data.seen.difference(dataset.train)
    assert injected.nnz > 0 and data.fn_pool.nnz > 0
    assert (item_popularity(data.seen, "seen") == clean + injected.item_counts()).all()
    assert (item_popularity(data.train, "trained") == clean - data.fn_pool.item_counts()
            + injected.item_counts()).all()


def test_popularity_sampler_counts_the_trained_pairs(tmp_path):
    """The popularity negative sampler draws ∝ φ_trained (held-out pool out, noisy positives in)."""
    from rankrobust.experiment import load_data, prepare_data
    from rankrobust.sampling import build_sampler
    from tests.test_train import tiny_config

    cfg = tiny_config(tmp_path, noise={"pos_ratio": 0.5, "neg_prob": 0.2, "neg_pool": "heldout"},
                      train={"sampler": "popularity"})
    data, _ = prepare_data(cfg, load_data(cfg.data))
    sampler = build_sampler("popularity", train=data.train, options=cfg.train.sampler_options)
    sampler = getattr(sampler, "base", sampler)
    phi = np.asarray(_oracle(*data.train.to_pairs(), data.train.n_items), dtype=np.float64)
    assert np.allclose(sampler.probs, phi / phi.sum(), rtol=0, atol=1e-15)
