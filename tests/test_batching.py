"""Epoch orders for `pairs` / `users` batching and same-user group statistics (PROTOCOLS.md §9)."""
from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from rankrobust.batching import (
    BATCHINGS,
    expected_group_size_pairs,
    group_size_mean,
    own_positive_mask,
    pairs_order,
    users_order,
)


def gen(seed: int = 0, device: str = "cpu") -> torch.Generator:
    return torch.Generator(device=device).manual_seed(seed)


def csr_users(counts) -> torch.Tensor:
    """Users of the pairs in CSR order (as ``Interactions.to_pairs()``) for per-user counts."""
    return torch.as_tensor(np.repeat(np.arange(len(counts), dtype=np.int64), counts))


def runs(seq) -> list[tuple[int, int]]:
    """Maximal runs of equal values: [(value, length), ...]."""
    out: list[tuple[int, int]] = []
    for v in seq:
        if out and out[-1][0] == v:
            out[-1] = (v, out[-1][1] + 1)
        else:
            out.append((v, 1))
    return out


def expected_chunks(n: int, k: int) -> Counter:
    c = Counter({k: n // k}) if n // k else Counter()
    if n % k:
        c[n % k] += 1
    return c


def reconstructed_chunks(seq_users, k: int) -> dict[int, Counter]:
    """Split every maximal same-user run of length L = aK + r into a chunks of K and one of r."""
    out: dict[int, Counter] = {}
    for u, length in runs(seq_users):
        c = out.setdefault(u, Counter())
        if length // k:
            c[k] += length // k
        if length % k:
            c[length % k] += 1
    return out


def brute_group_sizes(users) -> list[int]:
    return [sum(1 for v in users if v == u) for u in users]


user_counts = st.lists(st.integers(1, 25), min_size=1, max_size=12)


def test_batchings_constant():
    assert tuple(BATCHINGS) == ("pairs", "users")


# ---------------------------------------------------------------------------- pairs_order
@pytest.mark.parametrize("n", [0, 1, 7, 1000])
def test_pairs_order_is_randperm(n):
    g1, g2 = gen(123), gen(123)
    assert torch.equal(pairs_order(n, g1, "cpu"), torch.randperm(n, generator=g2, device="cpu"))
    # the generators advanced identically
    assert torch.equal(torch.rand(3, generator=g1), torch.rand(3, generator=g2))


# ---------------------------------------------------------------------------- users_order
@settings(max_examples=40, deadline=None)
@given(counts=user_counts, k=st.integers(1, 10), seed=st.integers(0, 2**31 - 1), shuffle_input=st.booleans())
def test_users_order_permutation_and_chunks(counts, k, seed, shuffle_input):
    users = csr_users(counts)
    if shuffle_input:  # any input order works: the result indexes pair_users
        users = users[torch.randperm(len(users), generator=gen(seed + 1))]
    order = users_order(users, k, gen(seed))
    n = len(users)
    assert order.dtype == torch.long and order.shape == (n,)
    assert sorted(order.tolist()) == list(range(n))  # every pair exactly once
    seq = users[order].tolist()
    got = reconstructed_chunks(seq, k)
    want = {u: expected_chunks(c, k) for u, c in enumerate(counts)}
    assert got == want


def test_users_order_k1_and_large_k():
    counts = [1, 5, 3, 12]
    users = csr_users(counts)
    # K >= every n_u: each user is one contiguous run
    seq = users[users_order(users, 50, gen(0))].tolist()
    assert sorted(length for _, length in runs(seq)) == sorted(counts)
    # K = 1: still a permutation
    assert sorted(users_order(users, 1, gen(0)).tolist()) == list(range(sum(counts)))


def test_users_order_empty():
    out = users_order(torch.zeros(0, dtype=torch.long), 4, gen(0))
    assert out.shape == (0,) and out.dtype == torch.long


def test_users_order_is_random_within_and_across_users():
    """Within-user contents and the chunk order both vary with the seed (the short chunk is not always last)."""
    counts = [10, 10]  # K = 4: chunks 4, 4, 2 per user
    users = csr_users(counts)
    first_chunks, short_first = set(), 0
    for seed in range(60):
        order = users_order(users, 4, gen(seed))
        first_chunks.add(tuple(sorted(order[:4].tolist())) if users[order[:4]].unique().numel() == 1 else None)
        u0 = users[order[0]].item()
        pos = [p for p, v in enumerate(users[order].tolist()) if v == u0]
        first_len = next((i for i in range(1, len(pos)) if pos[i] != pos[i - 1] + 1), len(pos))
        short_first += first_len % 4 == 2
    assert len(first_chunks) > 10
    assert 0 < short_first < 60


def test_users_order_seeded():
    users = csr_users(np.random.default_rng(0).integers(1, 40, size=50))
    a = users_order(users, 8, gen(7))
    b = users_order(users, 8, gen(7))
    c = users_order(users, 8, gen(8))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


@pytest.mark.parametrize("bad", [0, -3, 2.0, "4", True, None])
def test_users_order_bad_k(bad):
    with pytest.raises(ValueError, match="positives_per_user"):
        users_order(csr_users([3, 4]), bad, gen(0))


def test_users_order_accepts_numpy_int():
    assert users_order(csr_users([3, 4]), np.int64(2), gen(0)).shape == (7,)


def test_users_batches_group_sizes():
    """Cut into batches of B: groups are whole chunks (or pieces at batch edges), mean group ~ K."""
    k, b = 8, 256
    rng = np.random.default_rng(1)
    # users with at most K pairs form exactly one chunk: every in-batch group is <= K
    small = rng.integers(1, k + 1, size=400)
    users = csr_users(small)
    seq = users[users_order(users, k, gen(3))]
    for start in range(0, len(seq), b):
        sizes = brute_group_sizes(seq[start:start + b].tolist())
        assert max(sizes) <= k
    # all users with many pairs: mean group size over pairs close to K
    many = rng.integers(40, 120, size=200)
    users = csr_users(many)
    seq = users[users_order(users, k, gen(4))]
    sizes = []
    for start in range(0, len(seq) - b + 1, b):  # full batches
        batch = seq[start:start + b]
        bs = brute_group_sizes(batch.tolist())
        assert group_size_mean(batch).item() == pytest.approx(np.mean(bs))
        sizes += bs
    assert np.mean(sizes) > 0.8 * k
    # pairs batching on the same data: groups follow §9's closed form, far below K
    seq_p = users[pairs_order(len(users), gen(4), "cpu")]
    g_pairs = np.mean([group_size_mean(seq_p[s:s + b]).item() for s in range(0, len(seq_p) - b + 1, b)])
    assert g_pairs == pytest.approx(expected_group_size_pairs(many, b), rel=0.1)
    assert g_pairs < 0.5 * k


# ---------------------------------------------------------------------------- group sizes
@settings(max_examples=50, deadline=None)
@given(users=st.lists(st.integers(0, 6), min_size=1, max_size=40))
def test_group_size_mean_brute_force(users):
    got = group_size_mean(torch.tensor(users, dtype=torch.long))
    assert got.dim() == 0 and got.dtype.is_floating_point
    assert got.item() == pytest.approx(np.mean(brute_group_sizes(users)), rel=1e-6)


def test_group_size_mean_extremes():
    assert group_size_mean(torch.arange(10)).item() == 1.0
    assert group_size_mean(torch.full((10,), 3)).item() == 10.0


def test_expected_group_size_pairs_monte_carlo():
    counts = np.random.default_rng(5).integers(1, 60, size=30)
    n, b, reps = int(counts.sum()), 64, 4000
    users = csr_users(counts)
    want = expected_group_size_pairs(counts, b)
    g = gen(11)
    # reps uniform B-subsets of the N pairs
    idx = torch.rand((reps, n), generator=g, dtype=torch.float64).argsort(dim=1)[:, :b]
    sub = users[idx]  # [reps, B]
    same = (sub[:, :, None] == sub[:, None, :]).sum(dim=2).to(torch.float64)  # [reps, B] group size per pair
    per_batch = same.mean(dim=1)
    mc, se = per_batch.mean().item(), per_batch.std().item() / np.sqrt(reps)
    assert abs(mc - want) < 4 * se + 1e-3
    assert want > 1.5  # the check is not trivially near 1
    # and group_size_mean agrees with the brute-force count on some of these batches
    for r in range(5):
        assert group_size_mean(sub[r]).item() == pytest.approx(per_batch[r].item())


def test_expected_group_size_pairs_edge_cases():
    assert expected_group_size_pairs(np.ones(100, dtype=int), 32) == 1.0  # one pair per user
    assert expected_group_size_pairs([5], 3) == pytest.approx(3.0)  # single user: whole batch
    assert expected_group_size_pairs([1], 8) == 1.0
    # B >= N: the batch is everything, group size n_u, weighted mean Σ n_u² / N
    assert expected_group_size_pairs([2, 3, 0], 100) == pytest.approx((4 + 9) / 5)
    with pytest.raises(ValueError, match="batch_size"):
        expected_group_size_pairs([2, 3], 0)


# ---------------------------------------------------------------------------- in-batch mask
@settings(max_examples=50, deadline=None)
@given(users=st.lists(st.integers(0, 5), min_size=0, max_size=30))
def test_own_positive_mask_brute_force(users):
    mask = own_positive_mask(torch.tensor(users, dtype=torch.long))
    b = len(users)
    assert mask.dtype == torch.bool and mask.shape == (b, b)
    want = [[c != k and users[c] == users[k] for c in range(b)] for k in range(b)]
    assert mask.tolist() == want


@pytest.mark.cuda
def test_cuda_orders_and_stats():
    dev = "cuda"
    counts = np.random.default_rng(2).integers(1, 30, size=40)
    users = csr_users(counts).to(dev)
    order = users_order(users, 4, gen(0, dev))
    assert order.device.type == "cuda"
    assert torch.equal(order.sort().values, torch.arange(len(users), device=dev))
    assert torch.equal(order, users_order(users, 4, gen(0, dev)))
    got = reconstructed_chunks(users[order].tolist(), 4)
    assert got == {u: expected_chunks(c, 4) for u, c in enumerate(counts)}
    assert torch.equal(pairs_order(50, gen(1, dev), dev), torch.randperm(50, generator=gen(1, dev), device=dev))
    batch = users[order[:64]]
    assert group_size_mean(batch).device.type == "cuda"
    assert group_size_mean(batch).item() == pytest.approx(np.mean(brute_group_sizes(batch.tolist())))
    assert own_positive_mask(batch).cpu().tolist() == own_positive_mask(batch.cpu()).tolist()
