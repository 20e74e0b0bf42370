"""The fast evaluator (issue 26) against a float64 brute-force oracle, its determinism (issue 25) and the
validation user sample.

The oracle is written from the definitions alone: dense scores, masked items set to −∞ (NaN too), a stable
full sort (score descending, ties by ascending item id), the top K of the finite scores, and Recall, Precision,
NDCG, Hit and MRR computed one user at a time in plain Python.  The evaluator under test never sorts a whole
row: it must agree with the oracle exactly, with ties, whatever its chunk size, group size or thread count.
"""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rankrobust.config import ConfigError, config_from_template
from rankrobust.data.interactions import Interactions
from rankrobust.evaluate import BLOCK_ROWS, Evaluator, chunk_rows, default_group_size, sample_users
from rankrobust.experiment import run_experiment

KS = (1, 2, 5, 10)


def random_matrix(rng: np.random.Generator, n_users: int, n_items: int, density: float) -> Interactions:
    u, i = np.nonzero(rng.random((n_users, n_items)) < density)
    return Interactions.from_pairs(u, i, n_users, n_items)


def setup(seed: int, n_users: int, n_items: int, d: int = 3, tie_levels: int | None = 3,
          dtype=torch.float64, train_density: float = 0.3):
    """Train / valid masks, a test set with empty rows, and embeddings.

    ``tie_levels``: embeddings drawn from {0, …, tie_levels − 1} (integer scores: many exact ties, exact in
    float32 and float64); None: Gaussian embeddings (no ties).  Rows 0 and 1 of test are emptied (users with
    no test item), and user 2 gets every item masked but one.
    """
    rng = np.random.default_rng(seed)
    train = random_matrix(rng, n_users, n_items, train_density)
    valid = random_matrix(rng, n_users, n_items, 0.05)
    test = random_matrix(rng, n_users, n_items, 0.15).difference(train)
    keep = np.ones((n_users, n_items), dtype=bool)
    keep[: min(2, n_users)] = False
    u, i = test.to_pairs()
    ok = keep[u, i]
    test = Interactions.from_pairs(u[ok], i[ok], n_users, n_items)
    if n_users > 2 and n_items > 1:  # user 2: every item but the last masked by train
        u, i = train.to_pairs()
        extra = np.arange(n_items - 1)
        train = Interactions.from_pairs(np.concatenate([u, np.full(n_items - 1, 2)]),
                                        np.concatenate([i, extra]), n_users, n_items)
        valid = valid.difference(train)
    g = torch.Generator().manual_seed(seed)
    if tie_levels is None:
        U = torch.randn(n_users, d, generator=g, dtype=torch.float64)
        I = torch.randn(n_items, d, generator=g, dtype=torch.float64)
    else:
        U = torch.randint(0, tie_levels, (n_users, d), generator=g).double()
        I = torch.randint(0, tie_levels, (n_items, d), generator=g).double()
    return train, valid, test, U.to(dtype), I.to(dtype)


def oracle(S: np.ndarray, truth: Interactions, exclude, ks, users=None):
    """{user: ranked list} and {user: {metric: value}} by definition, from the dense scores ``S``."""
    lists, out = {}, {}
    for u in range(truth.n_users) if users is None else users:
        T = set(truth.row(u).tolist())
        if not T:
            continue
        s = S[u].astype(np.float64).copy()
        s[np.isnan(s)] = -np.inf
        for ex in exclude:
            s[ex.row(u)] = -np.inf
        order = [int(i) for i in np.argsort(-s, kind="stable") if s[i] > -np.inf]  # ties: ascending id
        lists[u] = order
        m = {}
        for k in ks:
            rel = [1 if i in T else 0 for i in order[:k]]
            h = sum(rel)
            m[f"recall@{k}"] = h / len(T)
            m[f"precision@{k}"] = h / k
            dcg = sum(r / math.log2(p + 2) for p, r in enumerate(rel))
            m[f"ndcg@{k}"] = dcg / sum(1 / math.log2(p + 2) for p in range(min(k, len(T))))
            m[f"hit@{k}"] = float(h > 0)
            first = next((p for p, r in enumerate(rel) if r), None)
            m[f"mrr@{k}"] = 0.0 if first is None else 1 / (first + 1)
        out[u] = m
    return lists, out


def assert_matches_oracle(res, lists, ref, k_max):
    assert res.users.tolist() == sorted(ref)
    assert res.metrics["n_users"] == len(ref)
    topk = res.topk.numpy()
    per_user = res.per_user.set_index("user")
    for row, u in enumerate(res.users.tolist()):
        expect = lists[u][:k_max]
        assert topk[row].tolist() == expect + [-1] * (k_max - len(expect)), u
        for name, v in ref[u].items():
            assert per_user.loc[u, name] == pytest.approx(v, abs=1e-12), (u, name)
    for name in (ref[next(iter(ref))] if ref else {}):
        assert res.metrics[name] == pytest.approx(np.mean([m[name] for m in ref.values()]), abs=1e-12)


# --------------------------------------------------------------------------------- against the oracle
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**31 - 1), n_users=st.integers(3, 25), n_items=st.integers(2, 120),
       chunk=st.integers(1, 9), group=st.sampled_from([None, 1, 2, 3, 7]), ties=st.sampled_from([None, 2, 3, 6]))
def test_equals_bruteforce_oracle_with_ties(seed, n_users, n_items, chunk, group, ties):
    """Float64: ranking and every metric equal the oracle's, ties (integer scores) and empty rows included."""
    train, valid, test, U, I = setup(seed, n_users, n_items, tie_levels=ties)
    ev = Evaluator(test, [train, valid], ks=KS, chunk_size=chunk, group_size=group)
    res = ev.evaluate(U, I)
    lists, ref = oracle((U @ I.T).numpy(), test, [train, valid], KS)
    assert 0 not in ref and 1 not in ref  # users without a test item are not evaluated
    assert_matches_oracle(res, lists, ref, ev.k_max)


@pytest.mark.parametrize("ties", [None, 2, 4])
def test_grouped_path_on_a_larger_catalogue(ties):
    """The default grouping (G groups of g > 1) on 2,000 items, float32, against the oracle on the same scores."""
    train, valid, test, U, I = setup(7, 60, 2000, d=4, tie_levels=ties, dtype=torch.float32, train_density=0.02)
    ev = Evaluator(test, [train, valid], ks=(5, 20, 50), chunk_size=16)
    assert ev.group > 1 and ev.n_groups >= 51
    res = ev.evaluate(U, I)
    lists, ref = oracle((U @ I.T).numpy(), test, [train, valid], (5, 20, 50))
    assert_matches_oracle(res, lists, ref, ev.k_max)


def test_tied_rows_take_the_exact_path(monkeypatch):
    """Rows tied at the group boundary are ranked again (and still equal the oracle): with integer scores many
    are; with distinct scores only a user with fewer than K + 1 unmasked items (user 2, one item left)."""
    flagged = []
    original = Evaluator._rank_again

    def spy(self, positions, *args):
        flagged.extend(self.users[torch.as_tensor(positions, dtype=torch.long)].tolist())
        return original(self, positions, *args)

    monkeypatch.setattr(Evaluator, "_rank_again", spy)
    for ties in (2, None):
        flagged.clear()
        train, valid, test, U, I = setup(3, 30, 400, tie_levels=ties, train_density=0.05)
        ev = Evaluator(test, [train], ks=(5,), group_size=4, chunk_size=8)
        res = ev.evaluate(U, I)
        assert 2 in res.users.tolist()
        if ties is None:
            assert flagged == [2]
        else:
            assert len(flagged) > 5
        lists, ref = oracle((U @ I.T).numpy(), test, [train], (5,))
        assert_matches_oracle(res, lists, ref, 5)


def test_nan_and_overflowing_scores_count_as_minus_infinity():
    """A NaN score is never recommended; a float32 product that overflows ranks by its float32 value."""
    train, valid, test, U, I = setup(4, 20, 300, tie_levels=None, dtype=torch.float32, train_density=0.05)
    I = I.clone()
    I[5] = float("nan")
    I[7] *= 1e37          # scores ±inf in float32
    U = U * 10.0
    ev = Evaluator(test, [train], ks=(5, 10), group_size=3, chunk_size=4)
    res = ev.evaluate(U, I)
    lists, ref = oracle((U @ I.T).numpy(), test, [train], (5, 10))
    assert 5 not in res.topk.unique().tolist()
    assert_matches_oracle(res, lists, ref, 10)


def test_evaluate_scores_matches_the_oracle_and_leaves_scores_alone():
    train, valid, test, U, I = setup(9, 15, 90, tie_levels=3)
    S = (U @ I.T).float()
    S0 = S.clone()
    res = Evaluator(test, [train, valid], ks=KS, chunk_size=4, group_size=2).evaluate_scores(lambda users: S[users])
    assert torch.equal(S, S0)
    lists, ref = oracle(S.numpy(), test, [train, valid], KS)
    assert_matches_oracle(res, lists, ref, max(KS))


# --------------------------------------------------------------------------------- determinism (issue 25)
def permuted_embeddings(n_users: int, n_items: int, d: int = 64, seed: int = 0):
    """Every item holds the same d numbers (magnitudes 1 to 10^6) in another order: the exact scores of a user
    tie, and the float32 ones differ only by the order in which the product sums, so a product that sums in
    another order for another chunk size ranks the items otherwise (the old evaluator did, issue 25)."""
    g = torch.Generator().manual_seed(seed)
    v = torch.randn(d, generator=g) * torch.logspace(0, 6, d)
    I = torch.stack([v[torch.randperm(d, generator=g)] for _ in range(n_items)])
    U = torch.randn(n_users, d, generator=g).abs() + 1.0
    return U, I


@pytest.mark.parametrize("case", ["permuted", "gaussian"])
def test_bit_identical_across_chunk_sizes_groups_and_threads(case):
    """Same embeddings → the same top-K, hits and metrics to the last bit, whatever the chunking and threads."""
    rng = np.random.default_rng(1)
    n_users, n_items = 230, 3000
    train = random_matrix(rng, n_users, n_items, 0.01)
    test = random_matrix(rng, n_users, n_items, 0.01).difference(train)
    if case == "permuted":
        U, I = permuted_embeddings(n_users, n_items)
    else:
        U, I = setup(11, n_users, n_items, d=16, tie_levels=None, dtype=torch.float32)[3:]
    threads = torch.get_num_threads()
    results = []
    try:
        for n_threads in (1, 2):
            torch.set_num_threads(n_threads)
            for chunk in (1, 3, 64, 128, 10_000):
                for group in (None, 1, 5):
                    ev = Evaluator(test, [train], ks=(5, 20, 50), chunk_size=chunk, group_size=group)
                    results.append(((n_threads, chunk, group), ev.evaluate(U, I)))
    finally:
        torch.set_num_threads(threads)
    (_, first), rest = results[0], results[1:]
    for key, r in rest:
        assert torch.equal(r.topk, first.topk), key
        assert torch.equal(r.hits, first.hits), key
        assert r.metrics == first.metrics, key  # == on floats: bit-identical
        assert r.per_user.equals(first.per_user), key


def test_means_do_not_depend_on_the_order_of_the_users():
    """The mean is exactly rounded (math.fsum): permuting the users permutes nothing in the metrics."""
    train, valid, test, U, I = setup(12, 80, 500, tie_levels=None, train_density=0.05)
    res = Evaluator(test, [train], ks=(10,)).evaluate(U, I)
    perm = np.random.default_rng(0).permutation(len(res.per_user))
    for name in ("recall@10", "ndcg@10", "mrr@10"):
        values = res.per_user[name].to_numpy()
        assert res.metrics[name] == math.fsum(values[perm]) / len(values)


def test_no_host_transfer_inside_the_chunk_loop(monkeypatch):
    """The number of device→host reads is the same for 1 chunk as for 5: none happens per chunk."""
    counted = ("cpu", "item", "tolist", "numpy", "__bool__", "__int__", "__float__", "__index__")
    count = {"n": 0}
    for name in counted:
        original = getattr(torch.Tensor, name)

        def wrapper(self, *args, _original=original, **kwargs):
            count["n"] += 1
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, wrapper)
    train, valid, test, U, I = setup(13, 302, 600, tie_levels=None, train_density=0.05)
    reads = {}
    for chunk in (10_000, 64):
        ev = Evaluator(test, [train], ks=(5, 10), chunk_size=chunk, group_size=4)
        assert len(ev._chunks) == (1 if chunk == 10_000 else 5)  # 300 evaluated users
        count["n"] = 0
        ev.evaluate(U, I)
        reads[chunk] = count["n"]
    assert reads[64] == reads[10_000]


# --------------------------------------------------------------------------------- chunk size, group size
def test_chunk_rows_are_whole_blocks_within_the_cap():
    assert chunk_rows(4 * 38_048, "cpu", cap=4096) % BLOCK_ROWS == 0
    assert chunk_rows(4 * 38_048, "cpu", cap=1) == BLOCK_ROWS  # one block at least
    assert chunk_rows(4, "cpu", cap=5 * BLOCK_ROWS + 3) == 5 * BLOCK_ROWS
    assert chunk_rows(4 * 10**9, "cpu", cap=4096) == BLOCK_ROWS


def test_default_group_size():
    assert default_group_size(38_048, 50) == round(math.sqrt(38_048 / 51))
    assert default_group_size(60, 50) == 1      # too few groups to see the K-th: whole rows
    assert default_group_size(10, 0) == 1


# --------------------------------------------------------------------------------- the validation sample
def test_sample_users_is_seeded_sorted_and_within_the_evaluated_users():
    rng = np.random.default_rng(0)
    valid = random_matrix(rng, 500, 40, 0.02)
    users = np.flatnonzero(valid.user_counts() > 0)
    a, b, c = sample_users(valid, 50, 3), sample_users(valid, 50, 3), sample_users(valid, 50, 4)
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    assert len(a) == 50 and np.all(np.diff(a) > 0) and np.isin(a, users).all()
    assert np.array_equal(sample_users(valid, 10**6, 3), users)
    with pytest.raises(ValueError):
        sample_users(valid, 0, 3)


def test_evaluator_on_a_user_list_equals_the_oracle_on_those_users():
    train, valid, test, U, I = setup(21, 40, 150, tie_levels=3)
    chosen = [0, 3, 5, 8, 13, 21, 34]  # 0 has no test item: not evaluated
    ev = Evaluator(test, [train], ks=KS, users=chosen, chunk_size=3, group_size=2)
    res = ev.evaluate(U, I)
    lists, ref = oracle((U @ I.T).numpy(), test, [train], KS, users=chosen)
    assert_matches_oracle(res, lists, ref, max(KS))
    with pytest.raises(ValueError):
        Evaluator(test, [train], users=[40])


def test_valid_users_option():
    cfg = config_from_template({"train.valid_users": 100})
    assert cfg.train.valid_users == 100 and cfg.to_dict()["train"]["valid_users"] == 100
    assert config_from_template({}).train.valid_users is None
    with pytest.raises(ConfigError, match="train.valid_users"):
        config_from_template({"train.valid_users": 0})


def test_validation_sample_is_recorded_and_test_always_uses_every_user(tmp_path):
    """One epoch (the same model either way): validation on 300 sampled users, test on all, identical to the
    test metrics of the run without a sample; config.json and metrics.json record the sample."""
    base = {"data.name": "lastfm", "train.epochs": 1, "train.patience": 0, "train.device": "cpu"}
    full = run_experiment(config_from_template(base), tmp_path / "full", progress=False)
    sampled = run_experiment(config_from_template({**base, "train.valid_users": 300}), tmp_path / "sampled",
                             progress=False)
    n_valid = int(np.count_nonzero(full.data.valid.user_counts()))
    n_test = int(np.count_nonzero(full.data.test.user_counts()))
    assert full.metrics["valid"]["n_users"] == n_valid and "valid_sample" not in full.metrics
    assert sampled.metrics["valid"]["n_users"] == 300 < n_valid
    assert sampled.metrics["valid_sample"] == {"users": 300, "of": n_valid, "seed": 0}
    assert sampled.metrics["test"]["n_users"] == full.metrics["test"]["n_users"] == n_test
    assert sampled.metrics["test"] == full.metrics["test"]  # bit-identical: the sample never reaches test
    stored = json.loads((tmp_path / "sampled" / "metrics.json").read_text())
    assert stored["valid_sample"]["users"] == 300
    assert json.loads((tmp_path / "sampled" / "config.json").read_text())["train"]["valid_users"] == 300
    assert sampled.fit.test.per_user.equals(full.fit.test.per_user) and len(sampled.fit.test.per_user) == n_test
    assert sampled.metrics["valid"]["ndcg@20"] != full.metrics["valid"]["ndcg@20"]  # validation did use the sample
    assert set(sampled.fit.valid.users.tolist()) < set(full.fit.valid.users.tolist())
