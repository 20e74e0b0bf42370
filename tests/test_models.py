import numpy as np
import pytest
import torch

from rankrobust.models import build_model, normalized_adjacency
from tests.conftest import random_interactions


def dense_lightgcn(train, user_emb, item_emb, layers):
    """Brute-force float64 LightGCN: dense adjacency, explicit degree normalisation."""
    n_u, n_i = train.shape
    a = np.zeros((n_u + n_i, n_u + n_i))
    for u in range(n_u):
        for i in train.row(u):
            a[u, n_u + i] = a[n_u + i, u] = 1.0
    deg = a.sum(1)
    norm = np.zeros_like(a)
    for x in range(len(a)):
        for y in range(len(a)):
            if a[x, y]:
                norm[x, y] = 1.0 / np.sqrt(deg[x] * deg[y])
    e = np.concatenate([user_emb, item_emb])
    layers_out = [e]
    for _ in range(layers):
        layers_out.append(norm @ layers_out[-1])
    mean = np.mean(layers_out, axis=0)
    return mean[:n_u], mean[n_u:]


@pytest.mark.parametrize("layers", [0, 1, 3])
def test_lightgcn_propagation_matches_dense(layers):
    train = random_interactions(7, 11, 0.25, seed=layers)
    model = build_model("lightgcn", train, dim=5, layers=layers, score="dot", seed=1).double()
    U, I = model.propagate()
    eu, ei = dense_lightgcn(train, model.user_emb.detach().numpy(), model.item_emb.detach().numpy(), layers)
    # the adjacency is stored in float32: agreement to float32 precision
    np.testing.assert_allclose(U.detach().numpy(), eu, rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(I.detach().numpy(), ei, rtol=1e-6, atol=1e-8)


def test_isolated_item_has_zero_row():
    train = random_interactions(4, 6, 0.0, seed=0)  # one item per user, some items untouched
    adj = normalized_adjacency(train).to_dense()
    untouched = set(range(6)) - set(train.indices.tolist())
    for i in untouched:
        assert torch.all(adj[4 + i] == 0)


@pytest.mark.parametrize("score", ["dot", "cosine"])
@pytest.mark.parametrize("name", ["mf", "lightgcn"])
def test_scores_agree_across_paths(name, score):
    train = random_interactions(9, 13, 0.3, seed=2)
    model = build_model(name, train, dim=4, score=score, seed=0).double().eval()
    U, I = model.score_tables()
    users = torch.tensor([0, 3, 3, 8])
    pos = torch.tensor([1, 2, 5, 12])
    pair = model.pair_scores(U, I, users, pos.expand(4, 4))
    inbatch = model.inbatch_scores(U, I, users, pos)
    torch.testing.assert_close(pair, inbatch)
    FU, FI = model.final_embeddings()
    full = FU @ FI.T
    torch.testing.assert_close(full[users][:, pos], inbatch)
    if score == "cosine":
        assert full.abs().max() <= 1 + 1e-9
    # brute force one score
    RU, RI = model.propagate()
    u, v = RU[3].detach().numpy(), RI[5].detach().numpy()
    expect = u @ v / (np.linalg.norm(u) * np.linalg.norm(v) if score == "cosine" else 1.0)
    assert abs(pair[1, 2].item() - expect) < 1e-12


def test_l2_penalty_matches_formula():
    train = random_interactions(5, 8, 0.3, seed=3)
    model = build_model("mf", train, dim=3, seed=0).double()
    users = torch.tensor([0, 4])
    items = torch.tensor([[1, 2, 3], [4, 4, 7]])
    u = model.user_emb.detach().numpy()
    v = model.item_emb.detach().numpy()
    expect = (sum((u[x] ** 2).sum() for x in [0, 4]) + sum((v[i] ** 2).sum() for i in [1, 2, 3, 4, 4, 7])) / 2 / 2
    assert abs(model.l2_penalty(users, items).item() - expect) < 1e-12


def test_l2_penalty_by_table_rows_equals_the_gathered_block():
    """More item slots than table rows (the squared-row-norm route): same value and gradients, repeats counted."""
    train = random_interactions(5, 8, 0.3, seed=3)
    users = torch.tensor([0, 4, 4])
    items = torch.tensor([[1, 2, 3, 3, 0], [4, 4, 7, 1, 1], [6, 5, 5, 5, 2]])  # 15 slots, 8 items
    fast, brute = (build_model("mf", train, dim=3, seed=0).double() for _ in range(2))
    fast.l2_penalty(users, items).backward()
    u, v = brute.user_emb[users], brute.item_emb[items.reshape(-1)]
    expect = (u.pow(2).sum() + v.pow(2).sum()) / 2 / 3  # the gathered block, by plain autograd
    expect.backward()
    torch.testing.assert_close(fast.l2_penalty(users, items), expect.detach())
    torch.testing.assert_close(fast.item_emb.grad, brute.item_emb.grad)
    torch.testing.assert_close(fast.user_emb.grad, brute.user_emb.grad)


def test_seeded_init_is_deterministic():
    train = random_interactions(5, 8, 0.3, seed=3)
    a = build_model("mf", train, seed=7)
    b = build_model("mf", train, seed=7)
    c = build_model("mf", train, seed=8)
    assert torch.equal(a.user_emb, b.user_emb) and not torch.equal(a.user_emb, c.user_emb)
