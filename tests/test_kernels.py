"""The fast path (custom autograd) equals the plain autograd path."""
import pytest
import torch

from rankrobust.kernels import gather_dot, normalize_rows, sampled_dot
from rankrobust.losses import get_loss
from rankrobust.models import build_model
from rankrobust.train import make_step
from tests.conftest import random_interactions


def test_gather_dot_gradcheck():
    g = torch.Generator().manual_seed(0)
    u = torch.randn(4, 3, dtype=torch.float64, generator=g, requires_grad=True)
    table = torch.randn(7, 3, dtype=torch.float64, generator=g, requires_grad=True)
    items = torch.randint(0, 7, (4, 5), generator=g)  # repeats included: gradients must accumulate
    assert torch.autograd.gradcheck(lambda a, b: gather_dot(a, b, items), (u, table))
    brute = torch.stack([torch.stack([u[b] @ table[items[b, m]] for m in range(5)]) for b in range(4)])
    torch.testing.assert_close(gather_dot(u, table, items), brute)


def test_normalize_rows_equals_f_normalize_with_gradients():
    """Value and gradient vs F.normalize in float64, a zero row and a row below eps included."""
    g = torch.Generator().manual_seed(2)
    x = torch.randn(6, 5, dtype=torch.float64, generator=g)
    x[2] = 0.0
    x[4] = 1e-14
    a = x.clone().requires_grad_()
    b = x.clone().requires_grad_()
    weights = torch.randn(6, 5, dtype=torch.float64, generator=g)
    (normalize_rows(a) * weights).sum().backward()
    (torch.nn.functional.normalize(b, dim=-1) * weights).sum().backward()
    torch.testing.assert_close(normalize_rows(x), torch.nn.functional.normalize(x, dim=-1))
    torch.testing.assert_close(a.grad, b.grad)
    y = torch.randn(4, 3, dtype=torch.float64, generator=g, requires_grad=True)
    assert torch.autograd.gradcheck(normalize_rows, (y,))


@pytest.mark.parametrize("b,m", [(4, 5), (1, 1), (6, 30)])
def test_sampled_dot_gradcheck_and_brute_force(b, m):
    """The CSR kernel: gradcheck in float64, and a loop of dot products; repeated ids within and across rows
    (30 columns from 7 items repeat) accumulate their gradients."""
    g = torch.Generator().manual_seed(b * 100 + m)
    u = torch.randn(b, 3, dtype=torch.float64, generator=g, requires_grad=True)
    table = torch.randn(7, 3, dtype=torch.float64, generator=g, requires_grad=True)
    items = torch.randint(0, 7, (b, m), generator=g)
    assert torch.autograd.gradcheck(lambda a, t: sampled_dot(a, t, items), (u, table))
    brute = torch.stack([torch.stack([u[r] @ table[items[r, k]] for k in range(m)]) for r in range(b)])
    torch.testing.assert_close(sampled_dot(u, table, items), brute)
    weights = torch.randn(b, m, dtype=torch.float64, generator=g)
    (sampled_dot(u, table, items) * weights).sum().backward()
    grad_table = torch.zeros(7, 3, dtype=torch.float64)
    for r in range(b):
        for k in range(m):
            grad_table[items[r, k]] += weights[r, k] * u[r].detach()
    torch.testing.assert_close(table.grad, grad_table)


@pytest.mark.parametrize("n_items", [500, 40_000])  # int16 and int32 sort keys of the table gradient
def test_sampled_dot_matches_gather_dot_and_only_asks_for_needed_gradients(n_items):
    g = torch.Generator().manual_seed(5)
    u = torch.randn(64, 16, generator=g, requires_grad=True)
    full = torch.randn(n_items, 16, dtype=torch.float64, generator=g, requires_grad=True)
    items = torch.randint(0, n_items, (64, 33), generator=g)
    items[:, 1] = items[:, 0]  # repeats
    weights = torch.randn(64, 33, dtype=torch.float64, generator=g)
    (sampled_dot(u.detach().double(), full, items) * weights).sum().backward()
    brute = torch.zeros_like(full).index_add_(0, items.reshape(-1),
                                              (weights[:, :, None] * u.detach().double()[:, None, :]).reshape(-1, 16))
    torch.testing.assert_close(full.grad, brute)
    table = full.detach().float()  # frozen table: no table gradient is built
    torch.testing.assert_close(sampled_dot(u, table, items), gather_dot(u, table, items), rtol=1e-5, atol=1e-5)
    sampled_dot(u, table, items).sum().backward()
    torch.testing.assert_close(u.grad, table[items].sum(1), rtol=1e-5, atol=1e-5)
    assert table.grad is None


@pytest.mark.parametrize("model_name", ["mf", "lightgcn"])
@pytest.mark.parametrize("loss,kw", [("sl", {"tau": 0.1}), ("bsl", {"mode": "paper", "tau1": 0.5, "tau2": 0.1}),
                                     ("bpr", {}), ("ccl", {"margin": 0.5, "neg_weight": 1.0})])
def test_fast_and_plain_steps_agree(model_name, loss, kw):
    train = random_interactions(30, 50, 0.1, seed=1)
    g = torch.Generator().manual_seed(3)
    users = torch.randint(0, 30, (16,), generator=g)
    pos = torch.randint(0, 50, (16,), generator=g)
    neg = torch.randint(0, 50, (16, 9), generator=g)
    results = []
    for fused in (True, False):
        model = build_model(model_name, train, dim=6, seed=0, fused=fused).double()
        step = make_step(model, get_loss(loss), kw, l2=1e-3)
        value, _ = step(users, pos, neg)
        value.backward()
        results.append((value.detach(), model.user_emb.grad.clone(), model.item_emb.grad.clone()))
    for fast, plain in zip(*results):
        torch.testing.assert_close(fast, plain, rtol=1e-10, atol=1e-12)


@pytest.mark.cuda
@pytest.mark.parametrize("kernel", [gather_dot, sampled_dot], ids=["gather", "sparse"])
def test_kernels_on_cuda_match_cpu(kernel):
    """The gather kernel and the sparse one (cuSPARSE SDDMM / SpMM) on CUDA: same gradients as on the CPU."""
    u = torch.randn(64, 16, dtype=torch.float64, requires_grad=True)
    table = torch.randn(100, 16, dtype=torch.float64, requires_grad=True)
    items = torch.randint(0, 100, (64, 20))
    kernel(u, table, items).square().sum().backward()
    uc = u.detach().cuda().requires_grad_()
    tc = table.detach().cuda().requires_grad_()
    kernel(uc, tc, items.cuda()).square().sum().backward()
    torch.testing.assert_close(uc.grad.cpu(), u.grad)
    torch.testing.assert_close(tc.grad.cpu(), table.grad)


def test_compile_failure_falls_back_to_eager(monkeypatch):
    from rankrobust import train as train_mod

    def broken_compile(fn, **kwargs):
        def run(*args):
            raise RuntimeError("no compiler here")
        return run

    monkeypatch.setattr(train_mod.torch, "compile", broken_compile)
    step = train_mod.maybe_compile(lambda x: x * 2, True, torch.device("cpu"))
    with pytest.warns(UserWarning, match="torch.compile failed"):
        assert step(torch.tensor(3.0)).item() == 6.0
    assert step(torch.tensor(4.0)).item() == 8.0  # stays eager, no second warning
