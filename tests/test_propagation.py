"""Graph propagation (rankrobust.kernels.propagate_layers, models.normalized_adjacency) against float64 oracles.

The oracle is the propagation as it was before the CSR path, written here
independently: a dense Â = D^-1/2 A D^-1/2 built with numpy, the layer loop
``x_l = Â x_{l-1}`` under plain autograd, the mean of the layers.  Graphs are
small and random, with isolated users and items (zero rows of Â).
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from rankrobust.data import Interactions
from rankrobust.kernels import propagate_layers
from rankrobust.models import build_model, normalized_adjacency


def _graph(seed: int, n_users: int = 9, n_items: int = 12, density: float = 0.3) -> Interactions:
    """A random bipartite graph whose last user and last two items have no interaction."""
    rng = np.random.default_rng(seed)
    mask = rng.random((n_users, n_items)) < density
    mask[-1, :] = False
    mask[:, -2:] = False
    u, i = np.nonzero(mask)
    return Interactions.from_pairs(u, i, n_users, n_items)


def _dense_adjacency(train: Interactions) -> np.ndarray:
    """Â of the bipartite graph in float64, entry by entry: 1/sqrt(deg(x) deg(y)) on each edge, 0 elsewhere."""
    n_u, n_i = train.shape
    n = n_u + n_i
    edges = np.zeros((n, n), dtype=bool)
    for u, i in zip(*train.to_pairs()):
        edges[u, n_u + i] = edges[n_u + i, u] = True
    deg = edges.sum(1)
    out = np.zeros((n, n))
    for x, y in zip(*np.nonzero(edges)):
        out[x, y] = 1.0 / np.sqrt(deg[x] * deg[y])
    return out


def _dense_layers(a_hat: torch.Tensor, x: torch.Tensor, layers: int, perturb=None) -> list[torch.Tensor]:
    """[x_0, x_1, …, x_L] by plain autograd on the dense matrix."""
    out = [x]
    for _ in range(layers):
        h = a_hat @ out[-1]
        out.append(perturb(h) if perturb is not None else h)
    return out


def test_adjacency_is_csr_and_equals_the_dense_oracle():
    train = _graph(0)
    adj = normalized_adjacency(train, dtype=torch.float64)
    assert adj.layout == torch.sparse_csr and adj.dtype == torch.float64
    dense = adj.to_dense().numpy()
    oracle = _dense_adjacency(train)
    np.testing.assert_allclose(dense, oracle, rtol=1e-15, atol=0)
    np.testing.assert_array_equal(dense, dense.T)  # the backward pass relies on Âᵀ = Â
    n_u = train.n_users
    assert not dense[n_u - 1].any() and not dense[-1].any() and not dense[-2].any()  # isolated nodes: zero rows
    # the default float32 table is the float64 one rounded
    np.testing.assert_allclose(normalized_adjacency(train).to_dense().numpy(), oracle, rtol=1e-7, atol=0)


@pytest.mark.parametrize("layers, first, keep", [(0, 0, None), (1, 0, None), (3, 0, None), (1, 1, 1), (3, 1, 1),
                                                  (3, 1, 3), (2, 1, None), (4, 2, 3)])
def test_layers_and_gradients_equal_the_dense_loop(layers, first, keep):
    train = _graph(layers + 10 * first)
    adj = normalized_adjacency(train, dtype=torch.float64)
    a_hat = torch.as_tensor(_dense_adjacency(train))
    gen = torch.Generator().manual_seed(layers)
    x0 = torch.randn(adj.shape[0], 5, dtype=torch.float64, generator=gen)
    g_mean = torch.randn(x0.shape, dtype=torch.float64, generator=gen)
    g_kept = torch.randn(x0.shape, dtype=torch.float64, generator=gen)

    x = x0.clone().requires_grad_()
    out = propagate_layers(adj, x, layers, first=first, keep=keep)
    mean, kept = out if keep is not None else (out, None)
    loss = (mean * g_mean).sum() + ((kept * g_kept).sum() if kept is not None else 0)
    loss.backward()

    ref_x = x0.clone().requires_grad_()
    ref = _dense_layers(a_hat, ref_x, layers)
    ref_mean = torch.stack(ref[first:]).mean(0)
    ref_loss = (ref_mean * g_mean).sum() + ((ref[keep] * g_kept).sum() if keep is not None else 0)
    ref_loss.backward()

    torch.testing.assert_close(mean, ref_mean, rtol=1e-12, atol=1e-13)
    if keep is not None:
        torch.testing.assert_close(kept, ref[keep], rtol=1e-12, atol=1e-13)
    torch.testing.assert_close(x.grad, ref_x.grad, rtol=1e-12, atol=1e-13)


@pytest.mark.parametrize("keep", [None, 2])
def test_gradcheck(keep):
    adj = normalized_adjacency(_graph(3, 5, 6, 0.4), dtype=torch.float64)
    x = torch.randn(adj.shape[0], 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0),
                    requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: propagate_layers(adj, t, 3, first=1, keep=keep), (x,))


def test_only_the_kept_layer_used():
    """The gradient of a loss on the kept layer alone (the mean's gradient is None) is Â^{l*}ᵀ g."""
    train = _graph(5)
    adj = normalized_adjacency(train, dtype=torch.float64)
    a_hat = torch.as_tensor(_dense_adjacency(train))
    x = torch.randn(adj.shape[0], 4, dtype=torch.float64, requires_grad=True)
    g = torch.randn(adj.shape[0], 4, dtype=torch.float64)
    _, kept = propagate_layers(adj, x, 3, first=1, keep=2)
    (kept * g).sum().backward()
    torch.testing.assert_close(x.grad, a_hat.T @ (a_hat.T @ g), rtol=1e-12, atol=1e-13)


def test_perturbation_is_a_constant_of_the_backward_pass():
    """XSimGCL's sign-noise: values and gradients as the dense loop under autograd (sign has zero gradient)."""
    train = _graph(7)
    adj = normalized_adjacency(train, dtype=torch.float64)
    a_hat = torch.as_tensor(_dense_adjacency(train))
    x0 = torch.randn(adj.shape[0], 6, dtype=torch.float64, generator=torch.Generator().manual_seed(1))

    def noise(seed):
        gen = torch.Generator().manual_seed(seed)
        return lambda h: h + 0.1 * torch.sign(h) * F.normalize(torch.rand(h.shape, generator=gen, dtype=h.dtype), dim=-1)

    x = x0.clone().requires_grad_()
    mean, kept = propagate_layers(adj, x, 3, first=1, keep=1, perturb=noise(4))
    (mean.pow(2).sum() + kept.sin().sum()).backward()
    ref_x = x0.clone().requires_grad_()
    ref = _dense_layers(a_hat, ref_x, 3, perturb=noise(4))
    ref_mean = torch.stack(ref[1:]).mean(0)
    (ref_mean.pow(2).sum() + ref[1].sin().sum()).backward()
    torch.testing.assert_close(mean, ref_mean, rtol=1e-12, atol=1e-13)
    torch.testing.assert_close(kept, ref[1], rtol=1e-12, atol=1e-13)
    torch.testing.assert_close(x.grad, ref_x.grad, rtol=1e-12, atol=1e-13)


def _float64(model, train: Interactions):
    model = model.double()
    model.adjacency = normalized_adjacency(train, dtype=torch.float64)
    return model


@pytest.mark.parametrize("layers", [0, 1, 3])
def test_lightgcn_tables_and_gradients_equal_the_dense_oracle(layers):
    train = _graph(20 + layers)
    model = _float64(build_model("lightgcn", train, dim=4, layers=layers, score="dot", seed=2), train)
    U, I = model.propagate()
    (U.pow(3).sum() + I.cos().sum()).backward()

    a_hat = torch.as_tensor(_dense_adjacency(train))
    e0 = torch.cat([model.user_emb, model.item_emb]).detach().requires_grad_()
    ref = torch.stack(_dense_layers(a_hat, e0, layers)).mean(0)
    n_u = train.n_users
    (ref[:n_u].pow(3).sum() + ref[n_u:].cos().sum()).backward()
    torch.testing.assert_close(torch.cat([U, I]), ref, rtol=1e-12, atol=1e-13)
    torch.testing.assert_close(torch.cat([model.user_emb.grad, model.item_emb.grad]), e0.grad, rtol=1e-12, atol=1e-13)
    FU, FI = model.final_embeddings()  # evaluation: the same propagation, no graph kept
    torch.testing.assert_close(torch.cat([FU, FI]), ref.detach(), rtol=1e-12, atol=1e-13)
    assert not FU.requires_grad


@pytest.mark.parametrize("name", ["mf", "lightgcn", "xsimgcl"])
def test_deepcopy_copies_parameters_and_shares_the_graph(name):
    """copy.deepcopy of any backbone works (a CSR buffer cannot be deep-copied by torch): same outputs, own
    parameters, one shared adjacency."""
    import copy

    train = _graph(21)
    model = build_model(name, train, dim=4, seed=3)
    twin = copy.deepcopy(model)
    for a, b in zip(model.final_embeddings(), twin.final_embeddings()):
        assert torch.equal(a, b)
    with torch.no_grad():
        twin.item_emb.add_(1.0)
    assert not torch.equal(model.item_emb, twin.item_emb)
    assert getattr(twin, "adjacency", None) is getattr(model, "adjacency", None)


def test_xsimgcl_noisy_step_equals_the_dense_oracle_with_the_same_draws():
    """Training propagation (noise from the model's seeded generator) and the contrastive views, values and grads."""
    train = _graph(30)
    model = _float64(build_model("xsimgcl", train, dim=5, layers=3, cl_layer=2, eps=0.2, score="dot", seed=4), train)
    model.train()
    U, I = model.propagate()
    users, items = torch.tensor([0, 2, 2, 5]), torch.tensor([[1], [3], [7], [1]])
    (U.pow(2).sum() + I.sin().sum() + model.extra_loss(users, items)).backward()

    a_hat = torch.as_tensor(_dense_adjacency(train))
    gen = torch.Generator().manual_seed(model.noise_seed)  # the model's draws, in the same order

    def perturb(h):
        return h + 0.2 * torch.sign(h) * F.normalize(torch.rand(h.shape, generator=gen, dtype=h.dtype), dim=-1)

    e0 = torch.cat([model.user_emb, model.item_emb]).detach().requires_grad_()
    ref = _dense_layers(a_hat, e0, 3, perturb)
    mean = torch.stack(ref[1:]).mean(0)
    n_u, tau = train.n_users, 0.1

    def infonce(a, b, ids):  # over the distinct ids, brute force
        ids = torch.unique(ids)
        logits = F.normalize(a[ids], dim=1) @ F.normalize(b[ids], dim=1).T / tau
        return -(logits.diagonal() - torch.logsumexp(logits, 1)).mean()

    aux = 0.2 * (infonce(mean[:n_u], ref[2][:n_u], users) + infonce(mean[n_u:], ref[2][n_u:], items[:, 0]))
    (mean[:n_u].pow(2).sum() + mean[n_u:].sin().sum() + aux).backward()
    torch.testing.assert_close(torch.cat([U, I]), mean, rtol=1e-12, atol=1e-13)
    torch.testing.assert_close(torch.cat([model.user_emb.grad, model.item_emb.grad]), e0.grad, rtol=1e-11, atol=1e-12)


def test_bad_arguments_raise():
    adj = normalized_adjacency(_graph(0))
    x = torch.zeros(adj.shape[0], 2)
    for kwargs in ({"layers": -1}, {"layers": 2, "first": 3}, {"layers": 2, "keep": 0}, {"layers": 2, "keep": 3}):
        with pytest.raises(ValueError, match="propagate_layers needs"):
            propagate_layers(adj, x, **kwargs)


# --------------------------------------------------------------------------- XSimGCL's contrastive loss
def test_first_occurrence_equals_the_brute_force_scan():
    from rankrobust.models import _first_occurrence

    ids = torch.tensor([5, 3, 5, 0, 3, 3, 9, 0, 1])
    expect = [ids[k].item() not in ids[:k].tolist() for k in range(len(ids))]
    assert _first_occurrence(ids).tolist() == expect
    rng = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 40, (300,), generator=rng)
    assert _first_occurrence(ids).tolist() == [ids[k].item() not in ids[:k].tolist() for k in range(len(ids))]


def _masked_infonce(a, b, weight):
    """The loss as autograd's masked logsumexp: −Σ_r w_r (s_rr − logsumexp_{c: w_c > 0} s_rc)."""
    logits = (a @ b.T).masked_fill(~(weight > 0)[None, :], float("-inf"))
    row = logits.diagonal() - torch.logsumexp(logits, dim=1)
    return -(weight * torch.where(weight > 0, row, torch.zeros_like(row))).sum()


@pytest.mark.parametrize("scale", [1.0, 100.0])  # 100: logits far beyond exp's range without the max shift
def test_row_infonce_equals_the_masked_logsumexp(scale):
    from rankrobust.kernels import row_infonce

    gen = torch.Generator().manual_seed(3)
    a0 = torch.randn(12, 4, dtype=torch.float64, generator=gen) * scale
    b0 = torch.randn(12, 4, dtype=torch.float64, generator=gen)
    weight = torch.rand(12, dtype=torch.float64, generator=gen) * (torch.rand(12, generator=gen) > 0.3)
    a, b, ra, rb = (t.clone().requires_grad_() for t in (a0, b0, a0, b0))
    got, ref = row_infonce(a, b, weight), _masked_infonce(ra, rb, weight)
    (3 * got).backward()
    (3 * ref).backward()
    torch.testing.assert_close(got, ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(a.grad, ra.grad, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(b.grad, rb.grad, rtol=1e-10, atol=1e-12)
    if scale == 1.0:
        assert torch.autograd.gradcheck(lambda x, y: row_infonce(x, y, weight), (a0.clone().requires_grad_(),
                                                                                 b0.clone().requires_grad_()))


@pytest.mark.parametrize("tau", [0.1, 0.02])  # 2/τ below 80 (exponentials unshifted) and above it (max-shifted)
def test_row_infonce_block_reuse_and_the_bound(tau):
    """A reused [B, B] block changes no bit of the loss or its gradients (over two steps, the second reusing
    the block of the first); the bound |a·b| ≤ 1/τ (unshifted exponentials when 2/τ < 80) agrees with the
    max-shifted path to float32's resolution, and both with the float64 masked logsumexp."""
    from rankrobust.kernels import Workspace, normalize_rows, row_infonce

    gen = torch.Generator().manual_seed(5)
    block = Workspace()
    for n in (40, 25):
        a0 = normalize_rows(torch.randn(n, 8, generator=gen)) / tau
        b0 = normalize_rows(torch.randn(n, 8, generator=gen))
        weight = torch.full((n,), 1.0 / n)
        runs = []
        for blk, bound in ((block, 1 / tau), (None, 1 / tau), (None, None)):
            a, b = a0.clone().requires_grad_(), b0.clone().requires_grad_()
            loss = row_infonce(a, b, weight, False, blk, bound)
            loss.backward()
            runs.append((loss.detach(), a.grad, b.grad))
        assert all(torch.equal(x, y) for x, y in zip(runs[0], runs[1]))
        torch.testing.assert_close(runs[0], runs[2], rtol=2e-6, atol=1e-7)
        a, b = a0.double().requires_grad_(), b0.double().requires_grad_()
        oracle = _masked_infonce(a, b, weight.double())
        oracle.backward()
        for got in runs[::2]:  # float32 against float64: within 1e-5 of each tensor's largest entry
            for g, r in zip(got, (oracle.detach(), a.grad, b.grad)):
                assert float((g.double() - r).abs().max()) <= 1e-5 * float(r.abs().max())


def _views_oracle(view1, view2, rows, weight, sizes, tau):
    """Plain autograd, group by group: F.normalize of the gathered rows, then the masked logsumexp InfoNCE."""
    total = 0
    for r, w in zip(rows.split(sizes), weight.split(sizes)):
        total = total + _masked_infonce(F.normalize(view1[r], dim=1) / tau, F.normalize(view2[r], dim=1), w)
    return total


def _views_case(seed: int, dtype=torch.float64):
    """Two [15, 4] views (one zero row), three groups of rows with repeats, weights with zeros (left-out rows)."""
    gen = torch.Generator().manual_seed(seed)
    v1 = torch.randn(15, 4, dtype=dtype, generator=gen)
    v2 = torch.randn(15, 4, dtype=dtype, generator=gen)
    v1[6] = 0.0  # a zero row: its norm is clamped
    rows = torch.tensor([3, 7, 3, 0, 14, 6, 2, 9, 11, 2, 5, 5, 1])
    sizes = (5, 3, 5)
    weight = torch.rand(13, dtype=dtype, generator=gen) * (torch.rand(13, generator=gen) > 0.25)
    weight[[0, 5, 8]] = 0.5  # every group keeps at least one weighted row
    return v1, v2, rows, weight, sizes


@pytest.mark.parametrize("tau", [0.5, 0.01])  # unshifted exponentials on the unmasked path; max-shifted
@pytest.mark.parametrize("masked", [True, False])
def test_views_infonce_equals_the_autograd_oracle(tau, masked):
    """`views_infonce` (one node: gather, normalise, per-group InfoNCE) against plain float64 autograd."""
    from rankrobust.kernels import Workspace, views_infonce

    v1, v2, rows, weight, sizes = _views_case(1)
    if not masked:  # the unmasked path promises positive weights
        weight = weight + 0.1
    blocks = [Workspace() for _ in sizes]
    a, b, ra, rb = (t.clone().requires_grad_() for t in (v1, v2, v1, v2))
    for _ in range(2):  # the second call reuses the blocks of the first
        a.grad = b.grad = None
        got = views_infonce(a, b, rows, weight, sizes, tau, masked=masked, blocks=blocks)
        (3 * got).backward()
    ref = _views_oracle(ra, rb, rows, weight, sizes, tau)
    (3 * ref).backward()
    torch.testing.assert_close(got, ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(b.grad, rb.grad, rtol=1e-10, atol=1e-12)
    live = torch.arange(15) != 6
    torch.testing.assert_close(a.grad[live], ra.grad[live], rtol=1e-10, atol=1e-12)
    # the zero row's gradient is ∂L/∂y / eps (eps = 1e-12), here 0 up to float64 rounding of ∂L/∂y (∝ 1/τ) × 1e12
    torch.testing.assert_close(a.grad[6], ra.grad[6], rtol=1e-10, atol=1e-3 / min(tau, 1.0))
    smooth = v1.clone()
    smooth[6] = 1.0  # finite differences need a differentiable point (a zero row's norm is clamped)
    assert torch.autograd.gradcheck(lambda x, y: views_infonce(x, y, rows, weight, sizes, tau, masked=masked),
                                    (smooth.requires_grad_(), v2.clone().requires_grad_()))


def test_views_infonce_in_float32_is_within_its_resolution_of_the_oracle():
    """At XSimGCL's scale (two groups of a few hundred unit rows, τ = 0.1) the float32 loss and gradients are
    within 1e-6 relative of the float64 autograd oracle (gradients: relative to their largest entry)."""
    from rankrobust.kernels import views_infonce

    gen = torch.Generator().manual_seed(7)
    v1, v2 = torch.randn(900, 64, generator=gen), torch.randn(900, 64, generator=gen)
    rows = torch.cat([torch.randperm(400, generator=gen)[:300], 400 + torch.randperm(500, generator=gen)[:350]])
    sizes = (300, 350)
    weight = torch.cat([torch.full((300,), 1 / 300), torch.full((350,), 1 / 350)])
    a, b = v1.clone().requires_grad_(), v2.clone().requires_grad_()
    got = views_infonce(a, b, rows, weight, sizes, 0.1, masked=False)
    got.backward()
    ra, rb = v1.double().requires_grad_(), v2.double().requires_grad_()
    ref = _views_oracle(ra, rb, rows, weight.double(), sizes, 0.1)
    ref.backward()
    assert abs(float(got.detach()) - float(ref.detach())) <= 1e-6 * abs(float(ref.detach()))
    for g, r in ((a.grad, ra.grad), (b.grad, rb.grad)):
        assert float((g.double() - r).abs().max()) <= 1e-6 * float(r.abs().max())


def test_views_infonce_rejects_inconsistent_groups():
    from rankrobust.kernels import views_infonce

    v1, v2, rows, weight, _ = _views_case(2)
    with pytest.raises(ValueError, match="must add up to the 13 rows"):
        views_infonce(v1, v2, rows, weight, (5, 3, 4), 0.1)
    with pytest.raises(ValueError, match="one weight"):
        views_infonce(v1, v2, rows, weight[:-1], (5, 3, 5), 0.1)


# --------------------------------------------------------------------------- CUDA (skipped without a GPU)
@pytest.mark.cuda
@pytest.mark.parametrize("keep", [None, 2])
def test_cuda_csr_propagation_equals_the_cpu_one(keep):
    train = _graph(40, 30, 40, 0.1)
    adj = normalized_adjacency(train, dtype=torch.float64)
    x = torch.randn(adj.shape[0], 8, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    g = torch.randn(adj.shape[0], 8, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    results = []
    for device in ("cpu", "cuda"):
        xd = x.to(device).requires_grad_()
        out = propagate_layers(adj.to(device), xd, 3, first=1 if keep else 0, keep=keep)
        mean, kept = out if keep else (out, None)
        ((mean * g.to(device)).sum() + (kept.sum() if kept is not None else 0)).backward()
        results.append((mean.detach().cpu(), xd.grad.cpu()))
    torch.testing.assert_close(results[1], results[0], rtol=1e-12, atol=1e-12)


@pytest.mark.cuda
@pytest.mark.parametrize("model", ["lightgcn", "xsimgcl"])
def test_cuda_graph_epoch_has_no_host_sync(model):
    from rankrobust.config import config_from_dict
    from rankrobust.experiment import load_data, prepare_data
    from rankrobust.train import Trainer
    from tests.conftest import epoch_without_host_sync

    cfg = config_from_dict({"model": {"name": model, "layers": 3}, "loss": {"name": "bpr"},
                            "train": {"device": "cuda", "num_negatives": 1, "sampler": "uniform_exclude"}})
    data, _ = prepare_data(cfg, load_data(cfg.data))
    mean = epoch_without_host_sync(Trainer(cfg, data, torch.device("cuda")))
    assert torch.isfinite(mean).all().item()


@pytest.mark.parametrize("tau", [0.01, 0.5])
def test_compact_and_masked_infonce_agree_with_the_unique_ids_oracle(tau):
    from rankrobust.models import unique_infonce

    gen = torch.Generator().manual_seed(2)
    v1 = torch.randn(15, 4, dtype=torch.float64, generator=gen)
    v2 = torch.randn(15, 4, dtype=torch.float64, generator=gen)
    ids = torch.tensor([3, 7, 3, 0, 14, 7, 7, 2, 0, 9])
    grads = []
    for compact in (True, False, "oracle"):
        a, b = v1.clone().requires_grad_(), v2.clone().requires_grad_()
        if compact == "oracle":  # brute force over the distinct ids
            s = torch.tensor(sorted(set(ids.tolist())))
            logits = F.normalize(a[s], dim=1) @ F.normalize(b[s], dim=1).T / tau
            loss = -(logits.diagonal() - torch.logsumexp(logits, 1)).mean()
        else:
            loss = unique_infonce(a, b, ids, tau, compact=compact)
        loss.backward()
        grads.append((loss.detach(), a.grad, b.grad))
    for got in grads[:2]:
        torch.testing.assert_close(got, grads[2], rtol=1e-10, atol=1e-12)
