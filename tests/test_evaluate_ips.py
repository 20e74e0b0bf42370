"""IPS-weighted Recall/NDCG (`rankrobust.evaluate.ips_metrics`) against a brute-force float64 oracle."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from rankrobust.data import split_per_user
from rankrobust.evaluate import Evaluator, ips_metrics, ips_weights
from tests.conftest import random_interactions


def _setup(seed: int = 0):
    train, valid, test = split_per_user(random_interactions(25, 30, 0.3, seed=seed), (0.7, 0.1, 0.2), seed=seed)
    gen = torch.Generator().manual_seed(seed)
    U = torch.randn(25, 5, generator=gen, dtype=torch.float64)
    I = torch.randn(30, 5, generator=gen, dtype=torch.float64)
    ev = Evaluator(test, exclude=[train, valid], ks=(1, 5, 10, 40))
    return train, test, ev.evaluate(U, I)


def _oracle(result, test, pop, gamma, k):
    """Python loops: per user Σ_{hits ≤ k} w / Σ_{truth} w and the weighted DCG over the ideal weighted DCG."""
    w = [max(float(p), 1.0) ** -gamma for p in pop]
    rec, ndcg = [], []
    for row, u in enumerate(result.users.tolist()):
        truth = set(test.row(u).tolist())
        top = [i for i in result.topk[row].tolist()[:k]]
        hits = [(r, i) for r, i in enumerate(top) if i in truth]
        rec.append(sum(w[i] for _, i in hits) / sum(w[i] for i in truth))
        dcg = sum(w[i] / math.log2(r + 2) for r, i in hits)
        ideal = sorted((w[i] for i in truth), reverse=True)[:k]
        ndcg.append(dcg / sum(x / math.log2(r + 2) for r, x in enumerate(ideal)))
    return sum(rec) / len(rec), sum(ndcg) / len(ndcg)


def test_gamma_zero_is_the_plain_metrics():
    train, _, result = _setup()
    ips = ips_metrics(result, train.item_counts(), 0.0)
    for k in result.ks:
        assert ips[f"ips_recall@{k}"] == pytest.approx(result.metrics[f"recall@{k}"], abs=1e-12)
        assert ips[f"ips_ndcg@{k}"] == pytest.approx(result.metrics[f"ndcg@{k}"], abs=1e-12)


@pytest.mark.parametrize("gamma", [0.5, 1.0, 2.0])
def test_matches_brute_force(gamma):
    train, test, result = _setup(seed=1)
    pop = train.item_counts()
    ips = ips_metrics(result, pop, gamma)
    for k in result.ks:
        rec, ndcg = _oracle(result, test, pop, gamma, min(k, result.k_max))
        assert ips[f"ips_recall@{k}"] == pytest.approx(rec, abs=1e-12)
        assert ips[f"ips_ndcg@{k}"] == pytest.approx(ndcg, abs=1e-12)


def test_weights_floor_unseen_items_and_reject_negative_gamma():
    np.testing.assert_allclose(ips_weights(np.array([0, 1, 4]), 1.0), [1.0, 1.0, 0.25])
    with pytest.raises(ValueError):
        ips_weights(np.array([1]), -1.0)
