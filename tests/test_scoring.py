"""Scoring paths (rankrobust.scoring): sparse = dense = gather, all-items negatives = brute-force softmax, auto's choice."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from rankrobust.experiment import load_data, prepare_data
from rankrobust.loss_state import make_loss_state
from rankrobust.losses import LOSSES
from rankrobust.models import build_model
from rankrobust.sampling import FalseNegativeMixer, UniformSampler
from rankrobust import scoring
from rankrobust.kernels import CatalogColumns
from rankrobust.scoring import PositivesBitmap, choose_scorer
from rankrobust.train import Trainer, fit, make_step
from tests.conftest import random_interactions
from tests.test_train import tiny_config

TRAIN = random_interactions(30, 50, 0.1, seed=1)


def _batch(seed: int = 3, b: int = 16, m: int = 9):
    """A batch whose negatives repeat items (within and across rows), some of them false negatives."""
    g = torch.Generator().manual_seed(seed)
    users = torch.randint(0, TRAIN.n_users, (b,), generator=g)
    users[1] = users[0]  # a user twice: the grouped losses see a group
    pos = torch.randint(0, TRAIN.n_items, (b,), generator=g)
    mixer = FalseNegativeMixer(UniformSampler(TRAIN.n_items, m), TRAIN, 0.3)
    neg = mixer(users, pos, g)
    neg[:, -1] = neg[:, 0]  # a duplicate in every row
    return users, pos, neg


def _step_outputs(model_name: str, loss: str, scorer: str, fused: bool = True):
    entry = LOSSES.entry(loss)
    options = entry.make_options()
    kwargs = options.loss_kwargs() if hasattr(options, "loss_kwargs") else {
        k: getattr(options, k) for k in entry.option_names}
    model = build_model(model_name, TRAIN, dim=6, seed=0).double()
    state = make_loss_state(options, TRAIN, "cpu")
    if state is not None:
        state = state.double()
    step = make_step(model, entry, kwargs, l2=1e-3, scorer=scorer, fused=fused, loss_state=state)
    value, pos_scores = step(*_batch())
    value.backward()
    scores = None if pos_scores is None else pos_scores.detach()  # None: the loss reads no score (DirectAU)
    return value.detach(), scores, model.user_emb.grad.clone(), model.item_emb.grad.clone()


@pytest.mark.parametrize("model_name", ["mf", "lightgcn"])
@pytest.mark.parametrize("loss", list(LOSSES))
def test_every_scorer_gives_the_same_loss_and_gradients(model_name, loss):
    """float64, duplicated negatives and false negatives mixed in: the paths agree to rounding with the
    gather path by plain autograd (the [B, M, d] block and autograd's own backward)."""
    plain = _step_outputs(model_name, loss, scorer="gather", fused=False)
    for scorer in ("gather", "sparse", "dense"):
        for a, b in zip(_step_outputs(model_name, loss, scorer=scorer), plain):
            assert (a is None) == (b is None)
            if a is not None:
                torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def _brute_full_softmax(model, users, pos, tau: float, train=None) -> float:
    """mean_k [−s(u_k, i⁺_k)/τ + log Σ_{i ≠ i⁺_k (, i ∉ train row)} exp(s(u_k, i)/τ)], cosine, loops in float64."""
    U = model.user_emb.detach().double().numpy()
    V = model.item_emb.detach().double().numpy()
    rows = train.to_scipy().tolil().rows if train is not None else None
    total = 0.0
    for u, p in zip(users.tolist(), pos.tolist()):
        cos = [float(U[u] @ V[i] / (np.linalg.norm(U[u]) * np.linalg.norm(V[i]))) for i in range(V.shape[0])]
        negatives = [cos[i] for i in range(V.shape[0]) if i != p and (rows is None or i not in rows[u])]
        top = max(negatives)
        total += -cos[p] / tau + top / tau + math.log(sum(math.exp((c - top) / tau) for c in negatives))
    return total / len(users)


@pytest.mark.parametrize("mask_positives", [False, True])
def test_all_items_negatives_are_the_exact_softmax(mask_positives):
    model = build_model("mf", TRAIN, dim=5, seed=2).double()
    users, pos, _ = _batch(seed=5, b=6)
    positives = PositivesBitmap(TRAIN) if mask_positives else None
    step = make_step(model, LOSSES["sl"], {"tau": 0.2, "include_pos": False}, l2=0.0, negatives="all",
                     positives=positives)
    value, _ = step(users, pos, torch.empty(6, 0, dtype=torch.long))
    expected = _brute_full_softmax(model, users, pos, 0.2, TRAIN if mask_positives else None)
    assert value.item() == pytest.approx(expected, rel=1e-12)


def test_positives_bitmap_rows_are_the_training_rows():
    bitmap = PositivesBitmap(TRAIN)
    users = torch.tensor([0, 7, 7, 29])
    dense = torch.as_tensor(TRAIN.to_scipy().toarray() > 0)
    assert torch.equal(bitmap.rows(users), dense[users])


def test_auto_picks_dense_for_a_small_catalog_and_sparse_for_a_huge_one_with_few_negatives():
    small = choose_scorer("auto", n_items=1_000, num_negatives=256, dim=64, batch_size=1024, threads=1)
    huge = choose_scorer("auto", n_items=5_000_000, num_negatives=16, dim=64, batch_size=1024, threads=1)
    assert small.scorer == "dense" and small.estimate_dense_ms < small.estimate_sparse_ms < small.estimate_gather_ms
    assert huge.scorer == "sparse" and huge.estimate_sparse_ms < huge.estimate_gather_ms < huge.estimate_dense_ms
    # lastfm with 64 negatives (measured: sparse 4.3 ms, dense 11.3 ms, gather 18.2 ms per batch at one thread)
    lastfm = choose_scorer("auto", n_items=2_762, num_negatives=64, dim=64, batch_size=1024, threads=1)
    assert lastfm.scorer == "sparse" and lastfm.estimate_sparse_ms < lastfm.estimate_dense_ms
    assert choose_scorer("gather", n_items=1_000, num_negatives=256, dim=64, batch_size=1024).scorer == "gather"


def test_auto_prices_threads_and_leaves_sparse_out_on_cuda(monkeypatch):
    """The products scale with threads, the sparse kernels do not; CUDA's sparse path is not measured."""
    one, many = (choose_scorer("auto", n_items=2_762, num_negatives=64, dim=64, batch_size=1024, threads=t)
                 for t in (1, 8))
    assert many.estimate_dense_ms == pytest.approx(one.estimate_dense_ms / 8, rel=1e-3)
    assert many.estimate_sparse_ms == one.estimate_sparse_ms
    monkeypatch.setattr(scoring, "_memory_budget", lambda device: 1 << 40)  # no GPU needed to price one
    gpu = choose_scorer("auto", n_items=5_000_000, num_negatives=16, dim=64, batch_size=1024, device="cuda")
    assert gpu.scorer == "gather" and gpu.estimate_sparse_ms is None


def test_an_explicit_scorer_far_slower_than_the_best_is_warned_about():
    from rankrobust.scoring import slow_choice_warning

    slow = choose_scorer("gather", n_items=1_000, num_negatives=256, dim=64, batch_size=1024, threads=1)
    warning = slow_choice_warning(slow.to_dict())
    assert warning is not None and "train.scorer = 'gather' was set" in warning and "'dense'" in warning
    assert slow_choice_warning(choose_scorer("auto", n_items=1_000, num_negatives=256, dim=64,
                                             batch_size=1024).to_dict()) is None
    assert slow_choice_warning(None) is None
    # more negatives than items: the sparse kernel gathers, and its estimate says so
    over = choose_scorer("sparse", n_items=100, num_negatives=500, dim=64, batch_size=1024, threads=1)
    assert over.estimate_sparse_ms == over.estimate_gather_ms and slow_choice_warning(over.to_dict())


def test_bf16_without_a_product_it_applies_to_is_warned_about():
    """On CPU train.bf16 acts on the dense and all-items products only; elsewhere the run says it did nothing."""
    from rankrobust.scoring import unused_bf16_warning

    sparse = choose_scorer("auto", n_items=38_048, num_negatives=64, dim=64, batch_size=1024, bf16=True, threads=2)
    dense = choose_scorer("dense", n_items=1_000, num_negatives=256, dim=64, batch_size=1024, bf16=True)
    warning = unused_bf16_warning(True, "cpu", "sampled", sparse.to_dict())
    assert warning is not None and f"{sparse.scorer!r}" in warning and "train.scorer=dense" in warning
    in_batch = unused_bf16_warning(True, "cpu", "in_batch", None)
    assert "in_batch" in in_batch and "train.scorer" not in in_batch  # the scorer cannot be set for in-batch
    assert unused_bf16_warning(True, "cpu", "sampled", dense.to_dict()) is None
    assert unused_bf16_warning(True, "cpu", "all", None) is None
    assert unused_bf16_warning(True, "cuda", "sampled", sparse.to_dict()) is None  # autocast of the whole step
    assert unused_bf16_warning(False, "cpu", "sampled", sparse.to_dict()) is None


def test_as_many_negatives_as_items_is_warned_about():
    from rankrobust.scoring import oversampling_warning

    text = oversampling_warning(100_000, 2_762)
    assert text is not None and "100,000" in text and "2,762" in text and "train.sampler=full" in text
    assert oversampling_warning(2_762, 2_762) is not None
    assert oversampling_warning(2_761, 2_762) is None


def test_auto_never_picks_dense_blocks_beyond_the_memory_budget():
    """A catalog whose [B, n_items] blocks would not fit in a quarter of memory is never scored densely."""
    choice = choose_scorer("auto", n_items=10**10, num_negatives=4096, dim=8, batch_size=4096)
    assert choice.scorer != "dense" and "exceed" in choice.reason


@pytest.mark.parametrize("sampler", ["uniform", "full"])
def test_runs_record_the_scorer_and_train_with_all_items(tmp_path, sampler):
    from rankrobust.experiment import run_experiment

    cfg = tiny_config(tmp_path, loss={"name": "sl"}, train={"sampler": sampler, "epochs": 2})
    summary = run_experiment(cfg, tmp_path / "run", device="cpu", progress=False)
    scorer = summary.metrics["scorer"]
    if sampler == "full":
        assert scorer is None  # all-items negatives have one path
    else:
        assert scorer["scorer"] in ("dense", "sparse", "gather") and scorer["requested"] == "auto"
    assert summary.metrics["test"]["recall@20"] > 0


def test_full_sampler_refuses_false_negative_noise(tmp_path):
    from rankrobust.config import ConfigError

    with pytest.raises(ConfigError, match="noise.neg_prob needs a sampled-negative sampler, not train.sampler = 'full'"):
        tiny_config(tmp_path, train={"sampler": "full"}, noise={"neg_prob": 0.1})


def test_dense_and_gather_training_give_the_same_run(tmp_path):
    """Same seed: an epoch by either path gives the same losses (float32 rounding aside)."""
    cfg = tiny_config(tmp_path, loss={"name": "bsl"}, train={"epochs": 2})
    data, _ = prepare_data(cfg, load_data(cfg.data))
    runs = [fit(cfg.with_overrides({"train.scorer": s}), data, torch.device("cpu"), progress=False) for s in
            ("gather", "sparse", "dense")]
    for other in runs[1:]:
        np.testing.assert_allclose(other.history["loss"], runs[0].history["loss"], rtol=1e-4)


def test_trainer_resolves_auto_per_run(tmp_path):
    cfg = tiny_config(tmp_path, train={"scorer": "auto"})
    data, _ = prepare_data(cfg, load_data(cfg.data))
    trainer = Trainer(cfg, data, torch.device("cpu"))
    expected = choose_scorer("auto", n_items=data.train.n_items, num_negatives=8, dim=8, batch_size=64)
    assert trainer.scorer == expected and trainer.scorer.requested == "auto"
    big = Trainer(cfg.with_overrides({"train.num_negatives": data.train.n_items * 4}), data, torch.device("cpu"))
    assert big.scorer.scorer == "dense"  # more negatives than items: one product of the whole catalog


def test_bf16_products_stay_close_to_float32():
    """train.bf16 on CPU: the catalog products in bfloat16 give scores within bfloat16 rounding of float32."""
    from rankrobust.scoring import catalog_scores

    g = torch.Generator().manual_seed(0)
    u = torch.nn.functional.normalize(torch.randn(32, 16, generator=g), dim=1).requires_grad_()
    items = torch.nn.functional.normalize(torch.randn(100, 16, generator=g), dim=1)
    cols = torch.randint(0, 100, (32, 7), generator=g)
    exact = catalog_scores(u, items, columns=cols)
    low = catalog_scores(u, items, torch.bfloat16, columns=cols)
    assert low.dtype == torch.float32 and low.shape == (32, 7)
    torch.testing.assert_close(low, exact, atol=2e-2, rtol=0)  # cosines, 8-bit mantissa
    low.sum().backward()
    torch.testing.assert_close(u.grad, torch.zeros(32, 100).scatter_add_(1, cols, torch.ones(32, 7)) @ items,
                               atol=5e-2, rtol=2e-2)


def test_catalog_columns_gradcheck_and_workspace_reuse():
    """The reused-workspace kernel: gradcheck in float64 with repeated columns, a smaller last batch, and a
    second forward before the first backward (the workspace is scratch only)."""
    g = torch.Generator().manual_seed(1)
    cols = CatalogColumns()
    table = torch.randn(11, 4, dtype=torch.float64, generator=g, requires_grad=True)
    for b in (6, 6, 3):
        u = torch.randn(b, 4, dtype=torch.float64, generator=g, requires_grad=True)
        idx = torch.randint(0, 11, (b, 5), generator=g)
        idx[:, 1] = idx[:, 0]
        assert torch.autograd.gradcheck(lambda x, t: cols(x, t, idx), (u, table))
    u1, u2 = (torch.randn(6, 4, dtype=torch.float64, generator=g, requires_grad=True) for _ in range(2))
    idx = torch.randint(0, 11, (6, 5), generator=g)
    first, second = cols(u1, table, idx), cols(u2, table, idx)
    first.sum().backward()
    torch.testing.assert_close(u1.grad, torch.zeros(6, 11, dtype=torch.float64).scatter_add_(
        1, idx, torch.ones(6, 5, dtype=torch.float64)) @ table.detach())
    torch.testing.assert_close(second, (u2 @ table.T).gather(1, idx))


@pytest.mark.parametrize("sampler", ["full", "in_batch"])
def test_scorer_is_refused_where_it_cannot_act(tmp_path, sampler):
    from rankrobust.config import ConfigError

    with pytest.raises(ConfigError, match=f"train.scorer = 'dense' applies to sampled negatives only; "
                                          f"train.sampler = '{sampler}' has one scoring path"):
        tiny_config(tmp_path, train={"sampler": sampler, "scorer": "dense"})


def test_catalog_columns_pairs_equal_one_block_and_gradcheck():
    """`CatalogColumns.pairs` (positive and negative blocks from one product) = the [B, 1 + M] block split, in
    float64, with the positive repeated among the negatives; gradcheck, and only one of the two outputs used."""
    g = torch.Generator().manual_seed(2)
    cols = CatalogColumns()
    table = torch.randn(9, 3, dtype=torch.float64, generator=g, requires_grad=True)
    u = torch.randn(5, 3, dtype=torch.float64, generator=g, requires_grad=True)
    pos = torch.randint(0, 9, (5,), generator=g)
    neg = torch.randint(0, 9, (5, 4), generator=g)
    neg[:, 2] = pos  # a false negative: the positive's column twice in one row
    p, n = cols.pairs(u, table, pos, neg)
    block = (u @ table.T).gather(1, torch.cat([pos[:, None], neg], 1))
    torch.testing.assert_close(p, block[:, 0])
    torch.testing.assert_close(n, block[:, 1:])
    w = torch.randn(5, 4, dtype=torch.float64, generator=g)
    (p.exp().sum() + (n * w).sum()).backward()
    want_u, want_t = torch.autograd.grad(block[:, 0].exp().sum() + (block[:, 1:] * w).sum(), (u, table),
                                         retain_graph=True)
    torch.testing.assert_close(u.grad, want_u)
    torch.testing.assert_close(table.grad, want_t)
    assert torch.autograd.gradcheck(lambda x, t: cols.pairs(x, t, pos, neg), (u.detach().requires_grad_(),
                                                                               table.detach().requires_grad_()))
    only_neg = torch.autograd.grad(cols.pairs(u, table, pos, neg)[1].sum(), u)[0]  # the positive's grad is None
    torch.testing.assert_close(only_neg, torch.autograd.grad(block[:, 1:].sum(), u)[0])
