"""DirectAU (rankrobust/losses/directau.py) against a float64 oracle written from the paper, value and gradient.

Wang et al., KDD 2022: L = ℓ_align + γ·(ℓ_unif(users) + ℓ_unif(items))/2 on
L2-normalised rows, ℓ_align = mean_k ‖ũ_k − ĩ_k‖², ℓ_unif = log mean over the
distinct pairs a < b of the batch's rows of exp(−2‖x̃_a − x̃_b‖²), duplicates
kept (docs/LOSSES.md "DirectAU").
"""
from __future__ import annotations

import math

import pytest
import torch

from rankrobust.losses import LOSSES, LossBatch, apply_loss, loss_reads
from rankrobust.losses.directau import directau


# --------------------------------------------------------------------------- the oracle: Python loops, float64
def _unit(v: list[float]) -> list[float]:
    n = math.sqrt(sum(x * x for x in v))
    return [x / n for x in v]


def _sq_dist(a: list[float], b: list[float]) -> float:
    return sum((x - y) ** 2 for x, y in zip(a, b))


def oracle(users: list[list[float]], items: list[list[float]], gamma: float) -> float:
    """DirectAU of one batch of rows (lists of floats), from the paper's formulas with explicit loops."""
    u, i = [_unit(r) for r in users], [_unit(r) for r in items]
    b = len(u)
    align = sum(_sq_dist(u[k], i[k]) for k in range(b)) / b

    def unif(rows):
        if len(rows) < 2:
            return 0.0
        pairs = [math.exp(-2.0 * _sq_dist(rows[a], rows[c])) for a in range(len(rows)) for c in range(a + 1, len(rows))]
        return math.log(sum(pairs) / len(pairs))

    return align + gamma * (unif(u) + unif(i)) / 2


def oracle_gradient(users, items, gamma, h=1e-6):
    """Central finite differences of `oracle` in float64 → (∂L/∂users, ∂L/∂items) as nested lists."""
    grads = []
    for side in (0, 1):
        rows = [users, items][side]
        g = [[0.0] * len(rows[0]) for _ in rows]
        for r in range(len(rows)):
            for c in range(len(rows[0])):
                plus = [list(x) for x in rows]
                minus = [list(x) for x in rows]
                plus[r][c] += h
                minus[r][c] -= h
                args_p = (plus, items) if side == 0 else (users, plus)
                args_m = (minus, items) if side == 0 else (users, minus)
                g[r][c] = (oracle(*args_p, gamma) - oracle(*args_m, gamma)) / (2 * h)
        grads.append(g)
    return grads


# --------------------------------------------------------------------------- helpers
def batch_of(U: torch.Tensor, I: torch.Tensor, users: torch.Tensor, items: torch.Tensor) -> LossBatch:
    """The LossBatch the training step would build for these pairs, declaring DirectAU's reads."""
    def no_scores():
        raise AssertionError("DirectAU must not compute scores")

    return LossBatch(users, items, scores=no_scores, tables=(U, I), reads=loss_reads("directau"))


def _tables(n_users=4, n_items=6, d=3, seed=0):
    gen = torch.Generator().manual_seed(seed)
    U = torch.randn(n_users, d, generator=gen, dtype=torch.float64, requires_grad=True)
    I = torch.randn(n_items, d, generator=gen, dtype=torch.float64, requires_grad=True)
    return U, I


# --------------------------------------------------------------------------- tests
@pytest.mark.parametrize("gamma", [1.0, 0.3, 5.0])
def test_value_and_gradient_match_the_oracle(gamma):
    U, I = _tables()
    users = torch.tensor([0, 1, 1, 3, 2])  # user 1 twice: duplicates are kept as rows
    items = torch.tensor([5, 0, 2, 2, 4])  # item 2 twice
    loss = apply_loss(LOSSES.entry("directau"), batch_of(U, I, users, items), {"gamma": gamma})
    rows_u, rows_i = U.detach()[users].tolist(), I.detach()[items].tolist()
    assert loss.item() == pytest.approx(oracle(rows_u, rows_i, gamma), abs=1e-12)
    loss.backward()
    # ∂L/∂rows from the oracle, summed into each id's table row (the gather's backward)
    gu, gi = (torch.tensor(g, dtype=torch.float64) for g in oracle_gradient(rows_u, rows_i, gamma))
    assert torch.allclose(U.grad, torch.zeros_like(U).index_add_(0, users, gu), atol=1e-7)
    assert torch.allclose(I.grad, torch.zeros_like(I).index_add_(0, items, gi), atol=1e-7)


def test_duplicates_are_kept_and_scale_is_ignored():
    """A duplicated row is a pair at distance 0 (exp(0) = 1 in the mean); rows are normalised first."""
    U, I = _tables()
    users, items = torch.tensor([0, 0, 1]), torch.tensor([1, 2, 3])
    once = (apply_loss(LOSSES.entry("directau"), batch_of(U, I, users, items), {"gamma": 1.0})).item()
    assert once == pytest.approx(oracle(U.detach()[users].tolist(), I.detach()[items].tolist(), 1.0), abs=1e-12)
    from rankrobust.losses.directau import uniformity

    a, b = (_unit(r) for r in U.detach()[:2].tolist())
    three_pairs = math.log((1.0 + 2 * math.exp(-2 * _sq_dist(a, b))) / 3)  # (0,0') at distance 0, (0,1), (0',1)
    assert float(uniformity(U.detach()[users])) == pytest.approx(three_pairs, abs=1e-12)
    assert float(uniformity(U.detach()[:2])) == pytest.approx(-2 * _sq_dist(a, b), abs=1e-12)  # de-duplicated: other
    scaled = (apply_loss(LOSSES.entry("directau"), batch_of(U * 7.0, I * 0.1, users, items), {"gamma": 1.0})).item()
    assert scaled == pytest.approx(once, abs=1e-12)


def test_one_pair_has_no_uniformity_term_and_stays_finite():
    U, I = _tables()
    loss = apply_loss(LOSSES.entry("directau"), batch_of(U, I, torch.tensor([2]), torch.tensor([3])), {"gamma": 2.0})
    loss.backward()
    assert loss.item() == pytest.approx(oracle([U.detach()[2].tolist()], [I.detach()[3].tolist()], 2.0), abs=1e-12)
    assert torch.isfinite(U.grad).all() and torch.isfinite(I.grad).all()
    # all rows equal: every pair at distance 0, ℓ_unif = log 1 = 0, finite gradient
    same = torch.ones(4, 3, dtype=torch.float64, requires_grad=True)
    ids = torch.tensor([0, 1, 2, 3])
    value = directau(batch_of(same, same, ids, ids), gamma=1.0)
    value.backward()
    assert value.item() == pytest.approx(0.0, abs=1e-12) and torch.isfinite(same.grad).all()


def test_declares_what_it_reads_and_never_scores():
    assert loss_reads("directau") == {"user_rows", "pos_rows"}
    assert not LOSSES.entry("directau").score_only
    U, I = _tables()
    batch = LossBatch(torch.tensor([0, 1]), torch.tensor([0, 1]), scores=lambda: None, tables=(U, I),
                      reads=loss_reads("directau"))
    with pytest.raises(AttributeError, match="does not declare it"):
        batch.pos  # noqa: B018 - reading an undeclared field is refused
    with pytest.raises(ValueError, match="gamma"):
        directau(batch, gamma=0.0)


def test_float32_matches_float64():
    U, I = _tables(n_users=50, n_items=80, d=16, seed=3)
    gen = torch.Generator().manual_seed(1)
    users, items = torch.randint(0, 50, (64,), generator=gen), torch.randint(0, 80, (64,), generator=gen)
    high = directau(batch_of(U, I, users, items), gamma=1.0)
    low = directau(batch_of(U.detach().float(), I.detach().float(), users, items), gamma=1.0)
    assert low.item() == pytest.approx(high.item(), abs=1e-5)
