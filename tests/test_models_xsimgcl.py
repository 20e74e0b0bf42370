"""XSimGCL (rankrobust.models.XSimGCL, PROTOCOLS.md §11) against float64 brute-force references."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from rankrobust.config import ConfigError, config_from_dict
from rankrobust.data import Interactions
from rankrobust.models import MODELS, LightGCN, XSimGCL, build_model, unique_infonce
from tests.conftest import epoch_without_host_sync, random_interactions


def _graph() -> Interactions:
    inter = random_interactions(7, 9, 0.3, seed=3)
    # an isolated item (no interaction): its row of the adjacency is zero
    users, items = inter.to_pairs()
    keep = items != 8
    return Interactions.from_pairs(users[keep], items[keep], 7, 9)


def _dense_adjacency(train: Interactions) -> np.ndarray:
    """Â = D^-1/2 A D^-1/2 of the bipartite graph, built densely in float64 (isolated nodes: zero rows)."""
    n_u, n_i = train.shape
    r = np.zeros((n_u, n_i))
    u, i = train.to_pairs()
    r[u, i] = 1.0
    a = np.block([[np.zeros((n_u, n_u)), r], [r.T, np.zeros((n_i, n_i))]])
    deg = a.sum(1)
    inv = np.where(deg > 0, 1.0 / np.sqrt(np.where(deg > 0, deg, 1.0)), 0.0)
    return inv[:, None] * a * inv[None, :]


def _dense_layers(train: Interactions, e0: np.ndarray, layers: int) -> list[np.ndarray]:
    """[e⁽¹⁾, …, e⁽ᴸ⁾] with e⁽ˡ⁾ = Â e⁽ˡ⁻¹⁾ in float64."""
    a_hat = _dense_adjacency(train)
    out, x = [], e0
    for _ in range(layers):
        x = a_hat @ x
        out.append(x)
    return out


def _float64(model, train: Interactions):
    """The model in float64 with the adjacency rebuilt in float64 (the library stores it in float32)."""
    model = model.double()
    model.adjacency = torch.as_tensor(_dense_adjacency(train)).to_sparse()
    return model


def _model(train: Interactions, seed: int = 0, **options) -> XSimGCL:
    opts = {"dim": 6, "layers": 3, "score": "dot", **options}
    return _float64(build_model("xsimgcl", train, seed=seed, **opts), train)


def test_adjacency_matches_the_dense_reference():
    train = _graph()
    model = build_model("xsimgcl", train, dim=4)
    np.testing.assert_allclose(model.adjacency.to_dense().numpy(), _dense_adjacency(train), rtol=1e-6, atol=1e-7)


def test_registered_with_psl_defaults():
    entry = MODELS.entry("xsimgcl")
    opts = entry.make_options()
    assert (opts.eps, opts.cl_layer, opts.cl_tau, opts.cl_weight) == (0.1, 1, 0.1, 0.2)
    cfg = config_from_dict({"model": {"name": "xsimgcl", "eps": 0.05, "cl_weight": 0.0}})
    assert cfg.model.options.eps == 0.05 and cfg.to_dict()["model"]["cl_tau"] == 0.1
    with pytest.raises(ConfigError, match="cl_layer"):
        config_from_dict({"model": {"name": "xsimgcl", "layers": 2, "cl_layer": 3}})
    with pytest.raises(ConfigError, match="does not apply"):
        config_from_dict({"model": {"name": "mf", "eps": 0.1}})


@pytest.mark.parametrize("layers", [1, 2, 3])
def test_no_noise_no_aux_is_lightgcn_without_layer0(layers):
    train = _graph()
    model = _model(train, layers=layers, eps=0.0, cl_weight=0.0)
    model.train()
    e0 = torch.cat([model.user_emb, model.item_emb]).detach().numpy()
    ref = np.mean(_dense_layers(train, e0, layers), axis=0)
    U, I = model.propagate()
    got = torch.cat([U, I]).detach().numpy()
    np.testing.assert_allclose(got, ref, rtol=1e-12, atol=1e-14)
    assert model.extra_loss(torch.tensor([0, 1]), torch.tensor([[0], [1]])) is None
    # the same relation to LightGCN itself: (L + 1)·mean_LightGCN − e⁽⁰⁾ = L·mean_XSimGCL
    lgc = _float64(LightGCN(train, dim=6, layers=layers, score="dot"), train)
    with torch.no_grad():
        lgc.user_emb.copy_(model.user_emb)
        lgc.item_emb.copy_(model.item_emb)
    lu, li = lgc.propagate()
    lgc_mean = torch.cat([lu, li]).detach().numpy()
    np.testing.assert_allclose((layers + 1) * lgc_mean - e0, layers * got, rtol=1e-10, atol=1e-13)
    # cosine evaluation tables are the normalised rows
    cos = _model(train, layers=layers, eps=0.0, cl_weight=0.0, score="cosine")
    fu, fi = cos.final_embeddings()
    ref_cos = np.mean(_dense_layers(train, torch.cat([cos.user_emb, cos.item_emb]).detach().numpy(), layers), axis=0)
    norm = np.linalg.norm(ref_cos, axis=1, keepdims=True)
    ref_cos = np.divide(ref_cos, norm, out=np.zeros_like(ref_cos), where=norm > 0)
    np.testing.assert_allclose(torch.cat([fu, fi]).numpy(), ref_cos, rtol=1e-10, atol=1e-12)


def _infonce_oracle(v1: np.ndarray, v2: np.ndarray, ids: list[int], tau: float) -> float:
    """Python loops over the distinct ids: mean of −log softmax_t(cos(v1_s, v2_t)/τ)[s]."""
    uniq = sorted(set(ids))

    def unit(x):
        n = math.sqrt(sum(float(c) ** 2 for c in x))
        return [float(c) / n for c in x]

    a = {s: unit(v1[s]) for s in uniq}
    b = {t: unit(v2[t]) for t in uniq}
    total = 0.0
    for s in uniq:
        logits = [sum(x * y for x, y in zip(a[s], b[t])) / tau for t in uniq]
        m = max(logits)
        lse = m + math.log(sum(math.exp(z - m) for z in logits))
        total += -(logits[uniq.index(s)] - lse)
    return total / len(uniq)


def test_aux_loss_is_the_cross_layer_infonce_of_the_same_propagation():
    train = _graph()
    tau, lam = 0.1, 0.2
    model = _model(train, layers=3, cl_layer=2, eps=0.1, cl_tau=tau, cl_weight=lam)
    model.train()
    users = torch.tensor([0, 3, 3, 5, 0, 6, 2])
    items = torch.tensor([[1, 4], [1, 0], [7, 2], [3, 3], [5, 1], [1, 8], [0, 6]])
    U, I = model.score_tables()
    final, contrast = (v.detach().numpy() for v in model._cl_views)
    n = train.n_users
    np.testing.assert_array_equal(np.concatenate([U.detach().numpy(), I.detach().numpy()]), final)
    # the l*-th layer of the same noisy pass: re-running the layers from e⁽⁰⁾ with the same noise reproduces it
    loss = model.extra_loss(users, items)
    ref = lam * (_infonce_oracle(final[:n], contrast[:n], users.tolist(), tau)
                 + _infonce_oracle(final[n:], contrast[n:], items[:, 0].tolist(), tau))
    assert float(loss.detach()) == pytest.approx(ref, rel=1e-12, abs=1e-12)
    loss.backward()  # differentiable, finite
    assert torch.isfinite(model.user_emb.grad).all() and model.user_emb.grad.abs().sum() > 0
    assert model.extra_loss(users, items) is None  # the views are used once


def test_unique_infonce_ignores_duplicates_and_stays_finite():
    gen = torch.Generator().manual_seed(0)
    v1 = torch.randn(10, 4, generator=gen, dtype=torch.float64)
    v2 = torch.randn(10, 4, generator=gen, dtype=torch.float64)
    ids = torch.tensor([4, 2, 4, 4, 9, 2, 0])
    got = unique_infonce(v1, v2, ids, 0.01)
    assert torch.isfinite(got)
    assert float(got) == pytest.approx(_infonce_oracle(v1.numpy(), v2.numpy(), ids.tolist(), 0.01), rel=1e-10)
    assert float(unique_infonce(v1, v2, torch.tensor([4, 2, 9, 0]), 0.01)) == pytest.approx(float(got), rel=1e-12)


def test_noise_is_off_in_eval_and_seeded_in_training():
    train = _graph()
    model = _model(train, eps=0.2)
    clean = torch.cat(model.layer_embeddings(noisy=False)[:1]).detach()
    model.eval()
    for _ in range(2):
        U, I = model.propagate()
        torch.testing.assert_close(torch.cat([U, I]).detach(), clean, rtol=0, atol=0)
    assert model.extra_loss(torch.tensor([0]), torch.tensor([[0]])) is None
    model.train()
    a = torch.cat(model.propagate()).detach()
    b = torch.cat(model.propagate()).detach()
    assert not torch.equal(a, clean) and not torch.equal(a, b)  # fresh noise every call
    # the perturbation of one layer: ε · sign(e) ⊙ (a unit vector with non-negative entries)
    one = _model(train, layers=1, eps=0.2)
    one.train()
    diff = torch.cat(one.propagate()).detach() - torch.cat(one.layer_embeddings(noisy=False)[:1]).detach()
    base = one.layer_embeddings(noisy=False)[0].detach()
    live = base.abs().min(dim=1).values > 0  # rows without a zero entry (the isolated item's row is all zero)
    torch.testing.assert_close(diff[live].norm(dim=1), torch.full((int(live.sum()),), 0.2, dtype=torch.float64))
    assert bool((diff * torch.sign(base) >= 0).all()) and float(diff[~live].abs().sum()) == 0.0
    fu, fi = model.final_embeddings()  # evaluation tables are clean whatever the mode
    torch.testing.assert_close(torch.cat([fu, fi]), clean, rtol=0, atol=0)
    # same seed → same draws; another seed → other draws (and the same init as other backbones)
    twin, other = _model(train, eps=0.2), _model(train, seed=1, eps=0.2)
    twin.train()
    other.train()
    torch.testing.assert_close(torch.cat(twin.propagate()).detach(), a, rtol=0, atol=0)
    assert not torch.equal(torch.cat(other.propagate()).detach(), a)
    mf = build_model("mf", train, seed=0, dim=6, score="dot").double()
    torch.testing.assert_close(mf.user_emb, twin.user_emb)


@pytest.mark.parametrize("sampler,batching", [("uniform", "pairs"), ("uniform_exclude", "users"),
                                              ("popularity", "pairs"), ("in_batch", "users"), ("full", "pairs")])
def test_trains_with_every_sampler_and_batching(tmp_path, sampler, batching):
    from rankrobust.data import split_per_user, write_lightgcn
    from rankrobust.experiment import run_experiment

    train, test = split_per_user(random_interactions(30, 40, 0.2, seed=1), (0.8, 0.2), seed=0)
    write_lightgcn(train, tmp_path / "train.txt")
    write_lightgcn(test, tmp_path / "test.txt")
    cfg = config_from_dict({"data": {"train_path": str(tmp_path / "train.txt"), "test_path": str(tmp_path / "test.txt")},
                            "model": {"name": "xsimgcl", "dim": 8},
                            "loss": {"name": "bsl" if batching == "users" else "sl"},
                            "train": {"epochs": 2, "batch_size": 32, "device": "cpu", "sampler": sampler,
                                      "batching": batching, "ks": [5, 10], "metric": "recall@10",
                                      **({"num_negatives": 4} if sampler in ("uniform", "uniform_exclude", "popularity")
                                         else {})}})
    first = run_experiment(cfg, progress=False)
    assert math.isfinite(first.metrics["test"]["ndcg@10"]) and first.fit.history["loss"].notna().all()
    if sampler == "uniform":  # seeded noise: the same seed gives the same losses
        again = run_experiment(cfg, progress=False)
        assert first.fit.history["loss"].tolist() == again.fit.history["loss"].tolist()


@pytest.mark.cuda
@pytest.mark.parametrize("sampler", ["uniform", "in_batch", "full"])
def test_cuda_epoch_has_no_host_sync_and_is_seeded(sampler):
    from rankrobust.experiment import load_data, prepare_data
    from rankrobust.train import Trainer

    train = {"device": "cuda", "sampler": sampler, **({"num_negatives": 64} if sampler == "uniform" else {})}
    cfg = config_from_dict({"model": {"name": "xsimgcl"}, "loss": {"name": "sl"}, "train": train})
    data, _ = prepare_data(cfg, load_data(cfg.data))
    means = []
    for _ in range(2):
        means.append(epoch_without_host_sync(Trainer(cfg, data, torch.device("cuda"))).cpu())
    assert torch.isfinite(means[0]).all()
    # same seed, same noise draws: equal up to the non-deterministic sparse-product reductions of CUDA
    assert means[0].tolist() == pytest.approx(means[1].tolist(), rel=1e-5)


def test_float32_training_step_is_within_1e6_of_the_float64_oracle():
    """A float32 XSimGCL step (the library's precision): the training loss (scores + λ·InfoNCE) and the gradient
    of the embeddings, against the same step in float64 by plain autograd with the model's own noise draws
    (dense Â, F.normalize, logsumexp over the distinct ids): within 1e-6 relative (gradients: of their
    largest entry)."""
    import torch.nn.functional as F

    train = random_interactions(60, 80, 0.15, seed=4)
    model = build_model("xsimgcl", train, dim=16, layers=3, cl_layer=1, eps=0.1, cl_tau=0.1, cl_weight=0.2,
                        score="dot", seed=5)
    model.train()
    gen = torch.Generator().manual_seed(6)
    users, items = torch.randint(0, 60, (48,), generator=gen), torch.randint(0, 80, (48, 1), generator=gen)
    U, I = model.propagate()
    noise = model._noise.double()  # ε·normalize(Δ) of this propagation, in layer order
    loss = U.pow(2).sum() + I.sin().sum() + model.extra_loss(users, items)
    loss.backward()

    a_hat = torch.as_tensor(_dense_adjacency(train))
    e0 = torch.cat([model.user_emb, model.item_emb]).detach().double().requires_grad_()
    layers, h = [], e0
    for layer in range(3):
        h = a_hat @ h
        h = h + torch.sign(h).detach() * noise[layer]
        layers.append(h)
    mean = torch.stack(layers).mean(0)

    def infonce(a, b, ids):  # over the distinct ids
        ids = torch.unique(ids)
        logits = F.normalize(a[ids], dim=1) @ F.normalize(b[ids], dim=1).T / 0.1
        return -(logits.diagonal() - torch.logsumexp(logits, 1)).mean()

    n = train.n_users
    ref = (mean[:n].pow(2).sum() + mean[n:].sin().sum()
           + 0.2 * (infonce(mean[:n], layers[0][:n], users) + infonce(mean[n:], layers[0][n:], items[:, 0])))
    ref.backward()
    assert abs(float(loss.detach()) - float(ref.detach())) <= 1e-6 * abs(float(ref.detach()))
    grad = torch.cat([model.user_emb.grad, model.item_emb.grad]).double()
    assert float((grad - e0.grad).abs().max()) <= 1e-6 * float(e0.grad.abs().max())
