"""Fast-path operations of the training step (custom autograd).

`gather_dot(u, table, items)` computes ``s[b, m] = <u[b], table[items[b, m]]>``.
Plain autograd saves the gathered [B, M, d] block for the backward pass and
scatters its gradient with an atomic ``index_put``; this version saves only
the inputs, re-gathers in the backward pass, and accumulates the table
gradient as one sparse × dense product ``G[n_items, B] @ u[B, d]``.  Same
numbers as the plain path (tested), less memory traffic on every device.

`sampled_dot(u, table, items)` computes the same scores without any
[B, M, d] block: the (positive and negative) columns of a batch are the
sparsity pattern of a CSR matrix [B, n_items], the scores are the sampled
dense-dense product ``(u @ table.T)`` on that pattern (SDDMM,
``torch.sparse.sampled_addmm``), and the backward pass is two sparse × dense
products (``G @ table`` and ``G.T @ u``, the transpose built by one stable
sort of the batch's item ids).  Work ∝ B·M·d, all of it on
operands that stay in cache (`rankrobust.scoring`, ``train.scorer = sparse``).

`normalize_rows(x)` is ``F.normalize(x, dim=-1)`` with a hand-written
backward (one projection instead of autograd's chain of a dozen element-wise
passes over the table; cosine scores normalise the whole item table every batch).

`CatalogColumns` scores against the whole catalog with one matrix product and
picks the columns (``train.scorer = dense``).

`row_infonce(a, b, weight)` is the InfoNCE of two [B, d] views with
row weights: one [B, B] logit block, exponentiated once and kept for the
backward pass, two products back with the row scalings on [B, d] (autograd's
masked logsumexp made about a dozen passes over the block).
`views_infonce(view1, view2, rows, weight, sizes, tau)` is XSimGCL's
cross-layer contrast in one autograd node: the rows of both views gathered
and normalised together, one such block per group of rows (a batch's users,
its items), 1/τ folded into the products, and no max shift when |logits| ≤ 1/τ
keeps every exponential a normal float.

`propagate_layers(adj, x, layers, ...)` is the graph propagation of LightGCN
and XSimGCL: the mean of the layers ``x_l = Â x_{l-1}`` (and one kept layer),
all layers in one forward pass that saves nothing but ``Â``, and a backward
pass of the same number of sparse × dense products (``Â`` is symmetric, so
its transpose is itself: no transposed copy, no saved layers).
"""
from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

# sparse CSR tensors are "beta" in torch; the three operations used here are covered by tests/test_kernels.py
warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta state", category=UserWarning)


def _unit_rows(x: Tensor, eps: float) -> tuple[Tensor, Tensor, Tensor]:
    """(y = x / max(‖x‖, eps), the divisor [..., 1], whether it is ‖x‖ itself [..., 1]): `normalize_rows`' forward."""
    raw = torch.linalg.vector_norm(x, dim=-1, keepdim=True)
    norm = raw.clamp_min(eps)
    return x / norm, norm, raw > eps


def _unit_rows_grad(grad: Tensor, y: Tensor, norm: Tensor, unclamped: Tensor, overwrite: bool = False) -> Tensor:
    """∂L/∂x = (g − y ⟨g, y⟩) / max(‖x‖, eps) of `_unit_rows` (a clamped norm is a constant: no radial term).

    Two passes over [..., d]; ``overwrite`` writes the result into ``grad`` (same numbers).
    """
    radial = torch.linalg.vecdot(grad, y).unsqueeze(-1) * unclamped
    return (grad.addcmul_ if overwrite else grad.addcmul)(y, radial, value=-1).div_(norm)


class _NormalizeRows(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, eps: float) -> Tensor:
        y, norm, unclamped = _unit_rows(x, eps)
        ctx.save_for_backward(y, norm, unclamped)
        return y

    @staticmethod
    def backward(ctx, grad: Tensor):
        return _unit_rows_grad(grad, *ctx.saved_tensors), None


def normalize_rows(x: Tensor, eps: float = 1e-12) -> Tensor:
    """Rows of ``x [..., d]`` divided by their L2 norms (at least ``eps``): ``F.normalize(x, dim=-1)``.

    Same value and gradient (∂y/∂x = (I − y yᵀ)/‖x‖, or I/eps for a row whose
    norm is below eps), with the backward pass as one projection.
    """
    return _NormalizeRows.apply(x, eps)


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


def plain_gather_dot(u: Tensor, table: Tensor, items: Tensor) -> Tensor:
    """`gather_dot` by plain autograd (``train.fast = false``): the [B, M, d] block is saved for backward."""
    return torch.bmm(table[items], u[:, :, None])[..., 0]


class _SampledDot(torch.autograd.Function):
    @staticmethod
    def forward(ctx, u: Tensor, table: Tensor, items: Tensor) -> Tensor:
        b, m = items.shape
        crow = torch.arange(0, b * m + 1, m, device=items.device)
        col = items.reshape(-1)
        pattern = torch.sparse_csr_tensor(crow, col, torch.zeros(b * m, dtype=u.dtype, device=u.device),
                                          (b, table.shape[0]), check_invariants=False)
        scores = torch.sparse.sampled_addmm(pattern, u, table.T, beta=0.0)  # beta·0 + u @ table.T on the pattern
        ctx.save_for_backward(u, table, items, crow)
        return scores.values().view(b, m)

    @staticmethod
    def backward(ctx, grad: Tensor):
        u, table, items, crow = ctx.saved_tensors
        b, m = items.shape
        values = grad.reshape(-1).to(u.dtype).contiguous()
        grad_u = grad_table = None
        if ctx.needs_input_grad[0]:  # ∂L/∂u = G [B, n_items] @ table, G the CSR of the score gradients
            g = torch.sparse_csr_tensor(crow, items.reshape(-1), values, (b, table.shape[0]), check_invariants=False)
            grad_u = g @ table
        if ctx.needs_input_grad[1]:  # ∂L/∂table = G.T @ u, G.T as CSR: the batch's slots sorted by item id
            n = table.shape[0]
            on_cpu = items.device.type == "cpu"
            key = torch.int16 if on_cpu and n < 2**15 else torch.int32  # narrower keys sort faster on the CPU
            item_ids, slots = torch.sort(items.reshape(-1).to(key), stable=True)  # stable: fixed sum order
            if on_cpu:  # row i of G.T holds the slots of item i: offsets = running count (bincount syncs on CUDA)
                crow_t = torch.zeros(n + 1, dtype=torch.int32)
                crow_t[1:] = torch.bincount(items.reshape(-1), minlength=n).cumsum(0)
            else:
                crow_t = torch.searchsorted(item_ids, torch.arange(n + 1, dtype=key, device=items.device),
                                            out_int32=True)
            rows = slots.to(torch.int32).div_(m, rounding_mode="floor")  # slot → its batch row
            g_t = torch.sparse_csr_tensor(crow_t, rows, values[slots], (n, b), check_invariants=False)
            grad_table = g_t @ u
        return grad_u, grad_table, None


def sampled_dot(u: Tensor, table: Tensor, items: Tensor) -> Tensor:
    """Scores ``[B, M]`` of rows ``u [B, d]`` against ``table[items]`` as a sampled dense-dense product.

    ``s[b, m] = <u[b], table[items[b, m]]>`` for ``table [N, d]`` and ``items
    [B, M]`` (repeated ids allowed; their gradients accumulate), computed as
    ``(u @ table.T)`` on the CSR pattern of ``items`` without materialising
    ``table[items]`` (module docstring).  Same numbers as `gather_dot` (tested
    in float64 with gradcheck).  Rows with more columns than the table has
    items (possible only with repeats) are beyond what torch's CSR kernels
    accept; they go through `gather_dot` (shapes only: no host sync).
    """
    if items.shape[1] > table.shape[0]:
        return gather_dot(u, table, items)
    return _SampledDot.apply(u, table, items)


class _CatalogColumns(torch.autograd.Function):
    @staticmethod
    def forward(ctx, u: Tensor, table: Tensor, workspace: Tensor, *columns: Tensor) -> tuple[Tensor, ...]:
        ctx.save_for_backward(u, table, *columns)
        ctx.workspace = workspace
        cast = workspace.dtype != u.dtype
        u_w, t_w = (u.to(workspace.dtype), table.to(workspace.dtype)) if cast else (u, table)
        scores = torch.mm(u_w, t_w.T, out=workspace)  # [B, n_items] into the reused buffer
        return tuple(scores.gather(1, c).to(u.dtype) for c in columns)

    @staticmethod
    def backward(ctx, *grads: Tensor | None):
        u, table, *columns = ctx.saved_tensors
        ws = ctx.workspace.zero_()
        for c, g in zip(columns, grads):  # ∂L/∂scores; repeated columns (within and across blocks) accumulate
            if g is not None:
                ws.scatter_add_(1, c, g.to(ws.dtype))
        cast = ws.dtype != u.dtype
        t_w, u_w = (table.to(ws.dtype), u.to(ws.dtype)) if cast else (table, u)
        grad_u = (ws @ t_w).to(u.dtype) if ctx.needs_input_grad[0] else None
        grad_table = (ws.T @ u_w).to(table.dtype) if ctx.needs_input_grad[1] else None
        return (grad_u, grad_table, None) + (None,) * len(columns)


class Workspace:
    """A [rows, cols] block allocated once and handed out again for every batch.

    ``take(rows, cols, dtype, device)`` returns a [rows, cols] view of one flat
    buffer with at least rows · cols elements (reallocated only when a larger
    block, or another dtype or device, is asked for: a smaller last batch, or
    a block whose shape changes from batch to batch, reuses it).  A
    fresh large block per batch costs a page fault per 4 KiB page on
    allocators that return large blocks to the system (glibc does).  The
    block is overwritten by the next ``take``: use it for tensors that die with
    the training step; autograd refuses a backward pass through a saved block
    that was overwritten (version counter), so misuse fails loudly.
    """

    def __init__(self) -> None:
        self._flat: Tensor | None = None

    def take(self, rows: int, cols: int, dtype: torch.dtype, device: torch.device) -> Tensor:
        flat = self._flat
        if flat is None or flat.numel() < rows * cols or flat.dtype != dtype or flat.device != device:
            flat = self._flat = torch.empty(rows * cols, dtype=dtype, device=device)
        return flat[: rows * cols].view(rows, cols)


class CatalogColumns:
    """``s[b, m] = <u[b], table[columns[b, m]]>`` through the full product ``u @ table.T``, in a reused buffer.

    The same numbers as ``(u @ table.T).gather(1, columns)`` (tested), but the
    [B, n_items] score block and its gradient live in one workspace allocated
    once per shape and reused by every batch: a fresh block per batch costs a
    page fault per 4 KiB page on allocators that return large blocks to the
    system (glibc does), which was about a fifth of a dense CPU batch.  The
    workspace is scratch only (the backward pass needs the columns, not the
    scores), so it is safe for any number of forward passes before a backward
    pass, but not for two threads at once.  ``dtype`` (e.g. bfloat16) is the
    precision of the products; the result has ``u``'s dtype.
    """

    def __init__(self, dtype: torch.dtype | None = None) -> None:
        self.dtype = dtype
        self._workspace = Workspace()

    def __call__(self, u: Tensor, table: Tensor, columns: Tensor) -> Tensor:
        """``[B, K]`` scores of ``u [B, d]`` against ``table [n_items, d]`` at ``columns [B, K]``."""
        return self.blocks(u, table, columns)[0]

    def pairs(self, u: Tensor, table: Tensor, pos: Tensor, neg: Tensor) -> tuple[Tensor, Tensor]:
        """Positive scores ``[B]`` (column ``pos [B]``) and negative scores ``[B, M]`` (columns ``neg [B, M]``).

        The same numbers as ``self(u, table, cat([pos[:, None], neg], 1))`` split
        into its first column and the rest, without building the [B, 1 + M]
        id block or the zero-filled gradients of the two slices.
        """
        p, n = self.blocks(u, table, pos[:, None], neg)
        return p[:, 0], n

    def blocks(self, u: Tensor, table: Tensor, *columns: Tensor) -> tuple[Tensor, ...]:
        """One ``[B, K_i]`` score block per ``columns[i] [B, K_i]``, all from one product ``u @ table.T``."""
        dtype = self.dtype or u.dtype
        ws = self._workspace.take(u.shape[0], table.shape[0], dtype, u.device)
        return _CatalogColumns.apply(u, table, ws, *columns)



def _accumulate(total: Tensor | None, owned: bool, h: Tensor) -> tuple[Tensor, bool]:
    """(total + h, owned') without writing into a tensor this module does not own.

    ``total`` None → h itself (not owned: it may be a layer or a caller's gradient); owned → added in
    place; otherwise a new sum, owned from then on.  The sums equal plain ``total + h``.
    """
    if total is None:
        return h, False
    if owned:
        return total.add_(h), True
    return total + h, True

class _PropagateLayers(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, adj: Tensor, layers: int, first: int, keep: int | None,
                perturb: Callable[[Tensor], Tensor] | None) -> Tensor | tuple[Tensor, Tensor]:
        ctx.set_materialize_grads(False)  # an unused output (the kept layer without a contrastive loss) costs nothing
        ctx.save_for_backward(adj)
        ctx.layers, ctx.first, ctx.keep = layers, first, keep
        with torch.autocast(x.device.type, enabled=False):  # the propagation stays in the table's precision
            h = x
            total = x if first == 0 else None
            owned = False  # whether `total` is a sum made here (added to in place) or still x or a layer
            kept = None
            for layer in range(1, layers + 1):
                h = adj @ h
                if perturb is not None:
                    h = perturb(h)
                if layer >= first:
                    total, owned = _accumulate(total, owned, h)
                if layer == keep:
                    kept = h
            mean = total.div_(layers - first + 1) if owned else total / (layers - first + 1)
        return mean if keep is None else (mean, kept)

    @staticmethod
    def backward(ctx, grad_mean: Tensor | None, grad_kept: Tensor | None = None):
        (adj,) = ctx.saved_tensors
        layers, first, keep = ctx.layers, ctx.first, ctx.keep
        scaled = grad_mean / (layers - first + 1) if grad_mean is not None else None
        # ∂L/∂x = Σ_l (Âᵀ)^l G_l with G_l the gradient reaching layer l; Horner: G_0 + Â(G_1 + Â(G_2 + …)), Âᵀ = Â
        # sums made here are added to in place (same values); `scaled` and `grad_kept` are read, never written
        h, owned = None, False
        with torch.autocast(adj.device.type, enabled=False):
            for layer in range(layers, -1, -1):
                if h is not None:
                    h, owned = adj @ h, True
                for g in (scaled if layer >= first else None, grad_kept if layer == keep else None):
                    if g is not None:
                        h, owned = _accumulate(h, owned, g)
        return h, None, None, None, None, None


def propagate_layers(adj: Tensor, x: Tensor, layers: int, first: int = 0, keep: int | None = None,
                     perturb: Callable[[Tensor], Tensor] | None = None) -> Tensor | tuple[Tensor, Tensor]:
    """Mean of the propagated layers ``x_first .. x_layers`` of ``x [n, d]`` over a symmetric ``adj [n, n]``.

    ``x_0 = x`` and ``x_l = perturb(Â x_{l-1})`` for l = 1..L (``perturb`` defaults to
    the identity); returns ``mean = Σ_{l=first}^{L} x_l / (L − first + 1)`` [n, d], and
    with ``keep = l*`` (1 ≤ l* ≤ L) the pair ``(mean, x_{l*})``.  LightGCN is
    ``first = 0`` (He et al., SIGIR 2020, eq. 8 with α_l = 1/(L+1)); XSimGCL is
    ``first = 1``, ``keep = l*`` and ``perturb(h) = h + ε·sign(h) ⊙ normalize(Δ)``
    (docs/PROTOCOLS.md §11).

    ``perturb`` must add a term whose gradient with respect to ``h`` is zero (as
    ``sign`` has almost everywhere): the backward pass treats it as a constant, so
    the map is affine and ``∂L/∂x = Σ_l Â^l G_l`` (``Âᵀ = Â``), G_l the gradient
    reaching layer l, computed as ``G_0 + Â(G_1 + Â(G_2 + …))``: L sparse × dense
    products, nothing saved from the forward pass but ``adj``.  ``adj`` may be any
    layout ``adj @ x`` accepts (CSR is the fast one: `rankrobust.models.normalized_adjacency`)
    and must be symmetric (not checked: the bipartite D^-1/2 A D^-1/2 is).  Autocast is
    off inside: the products run in ``x``'s dtype, which must be ``adj``'s.
    Same values and gradients as the layer loop under plain autograd (tests/test_propagation.py).
    """
    if layers < 0 or not 0 <= first <= max(layers, 0) or (keep is not None and not 1 <= keep <= layers):
        raise ValueError(f"propagate_layers needs 0 <= first <= layers and 1 <= keep <= layers, got "
                         f"layers={layers}, first={first}, keep={keep}")
    return _PropagateLayers.apply(x, adj, layers, first, keep, perturb)


#: exponents below this are raised to it in `row_infonce` (e^-80 ≈ 1.8e-35: beside the row's largest
#: term, 1, it is below the resolution of float32 and float64): the CPU's exp is about 50× slower on
#: arguments whose result is denormal, and several times slower on −inf, than on ordinary ones
_EXP_FLOOR = -80.0


def _infonce_forward(a: Tensor, b: Tensor, weight: Tensor, alpha: float, masked: bool, bound: float | None,
                     sizes: tuple[int, ...], blocks: Sequence[Workspace] | None) -> tuple[Tensor, list[Tensor], Tensor]:
    """Σ_G −Σ_{r∈G} w_r log softmax_{c∈G}(S)[r, c=r], S = α a bᵀ per group G of ``sizes`` rows → (loss, probs, total).

    Per group one [B, B] block (in its `Workspace` when given): E = exp(S − m) with m the row
    maximum (exponents below `_EXP_FLOOR` raised to it), or m = 0 when ``bound`` ≥ max |a_r·b_c|
    is known, no column is masked and 2α·bound < 80 (then every e^{S} is a normal float and there
    is neither the max nor the subtraction pass).  ``probs`` = the blocks E, ``total`` [R, 1] their row
    sums (softmax P = E / total); the loss terms are w_r (S_rr − m_r − log total_r), read off the
    block's diagonal before exponentiation; a row with w_r = 0 counts for nothing and, when
    ``masked``, its column is left out of every softmax.
    """
    r = a.shape[0]
    keep = weight > 0 if masked else None
    unshifted = not masked and bound is not None and 2 * alpha * bound * (1 + 1e-3) < -_EXP_FLOOR
    total, diag = a.new_empty(r, 1), a.new_empty(r)
    probs, start = [], 0
    for g, n in enumerate(sizes):
        part = slice(start, start + n)
        out = a.new_empty(n, n) if blocks is None else blocks[g].take(n, n, a.dtype, a.device)
        logits = torch.addmm(out, a[part], b[part].T, beta=0, alpha=alpha, out=out)  # α on the product: no pass
        if keep is not None:
            logits.masked_fill_(~keep[None, part], float("-inf"))
        if not unshifted:  # in place: the block shifted and exponentiated once; no −inf or denormal exponent
            top = logits.amax(dim=1, keepdim=True)  # finite for a weighted row (its own column is kept)
            if keep is not None:
                top.masked_fill_(~torch.isfinite(top), 0.0)
            logits.sub_(top)
        diag[part] = logits.diagonal()  # S_rr − m_r, before any floor
        if not unshifted:
            logits.clamp_(min=_EXP_FLOOR)
        block = logits.exp_()
        if keep is not None:
            block.mul_(keep[part])
        torch.sum(block, dim=1, keepdim=True, out=total[part])
        probs.append(block)
        start += n
    per_row = diag - total.log().squeeze(1)
    if keep is not None:  # a row left out (weight 0) may have −inf − log 0
        per_row = torch.where(keep, per_row, torch.zeros_like(per_row))
    terms = weight * per_row
    loss = None
    for part in terms.split(sizes):  # one sum per group, as separate calls would add them
        loss = part.sum() if loss is None else loss + part.sum()
    return -loss, probs, total


def _infonce_backward(grad: Tensor, a: Tensor, b: Tensor, weight: Tensor, alpha: float, probs: list[Tensor],
                      total: Tensor, sizes: tuple[int, ...], grad_a: Tensor | None,
                      grad_b: Tensor | None) -> None:
    """∂L/∂a, ∂L/∂b [R, d] of `_infonce_forward`'s loss, written into ``grad_a`` / ``grad_b`` (None: not wanted).

    ∂L/∂S_rc = g w_r (P_rc − δ_rc), P = E / total, so with s_r = α g w_r and k_r = s_r / total_r:
    ∂L/∂a = k ⊙ (E b) − s ⊙ b and ∂L/∂b = Eᵀ (k ⊙ a) − s ⊙ a: two products per group with the
    saved blocks as they are, and the row scalings on [R, d] (no pass over a [B, B] block).
    """
    s = (grad * alpha * weight)[:, None]
    k = s / total
    ka = a * k if grad_b is not None else None
    start = 0
    for block, n in zip(probs, sizes):
        part = slice(start, start + n)
        if grad_a is not None:
            torch.mm(block, b[part], out=grad_a[part])
        if grad_b is not None:
            torch.mm(block.T, ka[part], out=grad_b[part])
        start += n
    if grad_a is not None:
        grad_a.mul_(k).addcmul_(b, s, value=-1)
    if grad_b is not None:
        grad_b.addcmul_(a, s, value=-1)


class _RowInfoNCE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, a: Tensor, b: Tensor, weight: Tensor, masked: bool, block: Workspace | None,
                bound: float | None) -> Tensor:
        sizes = (a.shape[0],)
        loss, probs, total = _infonce_forward(a, b, weight, 1.0, masked, bound, sizes,
                                              None if block is None else (block,))
        ctx.save_for_backward(a, b, weight, total, *probs)
        return loss

    @staticmethod
    def backward(ctx, grad: Tensor):
        a, b, weight, total, *probs = ctx.saved_tensors
        grad_a = torch.empty_like(a) if ctx.needs_input_grad[0] else None
        grad_b = torch.empty_like(b) if ctx.needs_input_grad[1] else None
        _infonce_backward(grad, a, b, weight, 1.0, probs, total, (a.shape[0],), grad_a, grad_b)
        return grad_a, grad_b, None, None, None, None


def row_infonce(a: Tensor, b: Tensor, weight: Tensor, masked: bool = True, block: Workspace | None = None,
                bound: float | None = None) -> Tensor:
    """Weighted InfoNCE ``−Σ_r w_r log softmax_{c: w_c > 0}(a_r · b_c)[r]`` → scalar.

    ``a, b [B, d]`` (temperature and normalisation already applied: logits are
    ``a @ b.T``), ``weight [B]`` ≥ 0: row r counts with weight w_r, and only the
    columns of rows with w_c > 0 enter the softmax (a row's own column is among
    them when w_r > 0).  Forward: one product and one exponentiation of the
    [B, B] block, max-shifted (the log-sum-exp of each row), with exponents
    below −80 raised to −80 (a change below float64's resolution; no denormals); backward:
    ``∂L/∂logits = w_r (P_rc − δ_rc)`` applied through two products with the saved
    exponentials and [B, d] row scalings (`_infonce_backward`).
    ``masked=False`` promises that every weight is positive (no column to leave
    out) and skips the masking passes.  ``block``: a `Workspace` for the [B, B] block
    (no fresh block per call; it must not be shared by two calls whose backward passes
    are both pending).  ``bound`` ≥ max |a_r · b_c|, when the caller knows one (1/τ for
    unit rows over τ): on the unmasked path with 2·bound < 80 the exponentials are taken
    unshifted (all normal floats; no max and no subtraction pass).  Same value and
    gradients as the masked ``torch.logsumexp`` under autograd (tests).
    """
    return _RowInfoNCE.apply(a, b, weight, masked, block, bound)


class _ViewsInfoNCE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, view1: Tensor, view2: Tensor, rows: Tensor, weight: Tensor, sizes: tuple[int, ...], tau: float,
                masked: bool, blocks: Sequence[Workspace] | None, eps: float) -> Tensor:
        x = view1.new_empty(2, rows.shape[0], view1.shape[1])  # [view1[rows]; view2[rows]]: one buffer,
        torch.index_select(view1, 0, rows, out=x[0])           # normalised in one pass
        torch.index_select(view2, 0, rows, out=x[1])
        y, norm, unclamped = _unit_rows(x, eps)
        loss, probs, total = _infonce_forward(y[0], y[1], weight, 1 / tau, masked, 1.0, sizes, blocks)  # |a·b| ≤ 1
        ctx.save_for_backward(rows, weight, y, norm, unclamped, total, *probs)
        ctx.sizes, ctx.tau, ctx.shapes = sizes, tau, (view1.shape, view2.shape)
        return loss

    @staticmethod
    def backward(ctx, grad: Tensor):
        rows, weight, y, norm, unclamped, total, *probs = ctx.saved_tensors
        need1, need2 = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        grad_y = torch.zeros_like(y) if not (need1 and need2) else torch.empty_like(y)
        _infonce_backward(grad, y[0], y[1], weight, 1 / ctx.tau, probs, total, ctx.sizes,
                          grad_y[0] if need1 else None, grad_y[1] if need2 else None)
        grad_x = _unit_rows_grad(grad_y, y, norm, unclamped, overwrite=True)  # both normalisations in one pass
        # the gathers' backward: an index_add into a zero [n, d] gradient (repeated rows accumulate)
        grad1 = grad_x.new_zeros(ctx.shapes[0]).index_add_(0, rows, grad_x[0]) if need1 else None
        grad2 = grad_x.new_zeros(ctx.shapes[1]).index_add_(0, rows, grad_x[1]) if need2 else None
        return grad1, grad2, None, None, None, None, None, None, None


def views_infonce(view1: Tensor, view2: Tensor, rows: Tensor, weight: Tensor, sizes: Sequence[int], tau: float,
                  masked: bool = True, blocks: Sequence[Workspace] | None = None, eps: float = 1e-12) -> Tensor:
    """Cross-view InfoNCE of groups of rows of two tables, in one autograd node → scalar.

    ``view1, view2 [n, d]``; ``rows [R]`` row ids, the concatenation of groups of
    ``sizes`` (Σ sizes = R); ``weight [R]`` ≥ 0.  With a = normalize(view1[rows]) and
    b = normalize(view2[rows]) (rows divided by max(‖·‖, eps)), split into the groups G:
    ``Σ_G Σ_{r∈G} −w_r log softmax_{c∈G: w_c>0}(a_r · b_c / τ)[r]`` (each group is one
    `row_infonce` of a/τ and b; ``masked`` as there).  This is XSimGCL's cross-layer contrast
    (Yu et al., TKDE 2023: the InfoNCE between the final and the l*-th layer's embeddings of a
    batch's users, plus that of its items, temperature τ), gathered, normalised and contrasted
    in one node, the per-row work (normalisation, log-sum-exp, diagonal, row scalings of the
    gradient) done once for all rows of both views: the same numbers as ``normalize_rows`` +
    `row_infonce` per group under autograd up to the order of float operations (tests).  1/τ
    scales the products (GEMM's α); with unit rows |a·b/τ| ≤ 1/τ, so for τ > 1/40 the
    exponentials need no max shift (`_infonce_forward`).  Backward: two products per group,
    the normalisation's projection (I − ŷŷᵀ)/‖x‖ on [2, R, d], and one index_add into a zero
    [n, d] gradient per view (repeated row ids accumulate).  ``blocks``: one `Workspace` per
    group for its [|G|, |G|] block, reused from step to step.  Raises ValueError when ``sizes``
    do not add up to ``rows``' length, ``weight`` is not one per row, or the views' widths differ.
    """
    sizes = tuple(int(n) for n in sizes)
    if sum(sizes) != rows.shape[0] or weight.shape != rows.shape or view1.shape[1:] != view2.shape[1:]:
        raise ValueError(f"views_infonce: sizes {sizes} must add up to the {rows.shape[0]} rows, one weight "
                         f"each (got {tuple(weight.shape)} weights), on views of equal width (got "
                         f"{tuple(view1.shape)} and {tuple(view2.shape)})")
    return _ViewsInfoNCE.apply(view1, view2, rows, weight, sizes, tau, masked, blocks, eps)
