"""Fast-path operations of the training step (custom autograd).

`gather_dot(u, table, items)` computes ``s[b, m] = <u[b], table[items[b, m]]>``.
Plain autograd saves the gathered [B, M, d] block for the backward pass and
scatters its gradient with an atomic ``index_put``; this version saves only
the inputs, re-gathers in the backward pass, and accumulates the table
gradient as one sparse × dense product ``G[n_items, B] @ u[B, d]``.  Same
numbers as the plain path (tested), less memory traffic on every device.
"""
from __future__ import annotations

import torch
from torch import Tensor


class _GatherDot(torch.autograd.Function):
    @staticmethod
    def forward(ctx, u: Tensor, table: Tensor, items: Tensor) -> Tensor:
        ctx.save_for_backward(u, table, items)
        return torch.bmm(table[items], u[:, :, None])[..., 0]

    @staticmethod
    def backward(ctx, grad: Tensor):
        u, table, items = ctx.saved_tensors
        grad_u = grad_table = None
        if ctx.needs_input_grad[0]:
            grad_u = torch.bmm(grad[:, None, :], table[items])[:, 0]
        if ctx.needs_input_grad[1]:
            b, m = items.shape
            rows = torch.arange(b, device=items.device).repeat_interleave(m)
            coo = torch.sparse_coo_tensor(torch.stack([items.reshape(-1), rows]), grad.reshape(-1).to(u.dtype),
                                          (table.shape[0], b), check_invariants=False)
            grad_table = torch.sparse.mm(coo, u).to(table.dtype)
        return grad_u, grad_table, None


def gather_dot(u: Tensor, table: Tensor, items: Tensor) -> Tensor:
    """Scores ``[B, M]`` of rows ``u [B, d]`` against ``table[items]`` (``table [N, d]``, ``items [B, M]``)."""
    return _GatherDot.apply(u, table, items)
