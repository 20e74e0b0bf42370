"""Recommender backbones: matrix factorisation, LightGCN and XSimGCL.

Both hold raw embeddings ``user_emb [n_users, d]`` and ``item_emb [n_items, d]``
(xavier-initialised) and expose the same three calls:

* ``propagate()`` → (U, I) the tables scores are computed from (identity for
  MF, the layer mean of sparse propagation for LightGCN);
* ``pair_scores(U, I, users [B], items [B, M])`` → [B, M] scores (dot or
  cosine), with dropout on the user rows while training;
* ``final_embeddings()`` → (U, I) such that ``U @ I.T`` are the evaluation
  scores (rows normalised for cosine);
* ``extra_loss(users, items)`` → an auxiliary loss added to the training loss
  (None for MF and LightGCN; XSimGCL's cross-layer InfoNCE).

Each backbone is registered once in ``MODELS`` with its options dataclass
(``dim``, ``score``, ``dropout`` for all; ``layers`` for LightGCN; ``layers``, ``eps``,
``cl_layer``, ``cl_tau``, ``cl_weight`` for XSimGCL);
`build_model` makes one from a name and options.
"""
from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import scipy.sparse as sp
import torch
import torch.nn.functional as F
from torch import nn

from rankrobust.data.interactions import Interactions
from rankrobust.kernels import (Workspace, gather_dot, normalize_rows, plain_gather_dot, propagate_layers,
                                views_infonce)
from rankrobust.registry import (ConfigError, Registry, choice, integers, log_uniform, non_negative, one_of, option,
                                 positive, uniform, unit_interval)

SCORES = ("cosine", "dot")


def normalized_adjacency(train: Interactions, device: torch.device | str = "cpu",
                         dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Symmetric-normalised bipartite adjacency Â = D^-1/2 A D^-1/2 as a sparse CSR tensor.

    Shape [n_users + n_items, n_users + n_items]; nodes are users then items;
    A = [[0, R], [Rᵀ, 0]] with R the [n_users, n_items] training matrix, D its
    degrees.  Built once with scipy (vectorised); isolated nodes get zero rows.
    CSR is the layout torch's CPU kernel (MKL) and cuSPARSE multiply a dense
    [n, d] table with fastest (ml-100k, one core: 0.4–0.5 ms against 9–10 ms
    for COO), with int32 indices where they fit (the CPU kernel converts int64
    ones at every call); it is also what the backward pass multiplies with,
    since Âᵀ = Â (`rankrobust.kernels.propagate_layers`).
    """
    r = train.to_scipy()
    adj = sp.bmat([[None, r], [r.T, None]], format="csr", dtype=np.float64)
    deg = np.asarray(adj.sum(axis=1)).ravel()
    inv_sqrt = np.zeros_like(deg)
    nz = deg > 0
    inv_sqrt[nz] = deg[nz] ** -0.5
    d = sp.diags(inv_sqrt)
    norm = (d @ adj @ d).tocsr()
    norm.sort_indices()
    index = torch.int32 if max(norm.nnz, norm.shape[0]) < 2**31 else torch.int64
    return torch.sparse_csr_tensor(torch.as_tensor(norm.indptr, dtype=index),
                                   torch.as_tensor(norm.indices, dtype=index),
                                   torch.as_tensor(norm.data, dtype=dtype), size=norm.shape,
                                   check_invariants=True).to(device)


class Recommender(nn.Module):
    """Shared parts of MF and LightGCN: embeddings, scoring, L2 term."""

    def __init__(self, n_users: int, n_items: int, dim: int = 64, score: str = "cosine",
                 dropout: float = 0.0, generator: torch.Generator | None = None, fused: bool = True) -> None:
        super().__init__()
        self.fused = fused
        if score not in ("cosine", "dot"):
            raise ValueError(f"score must be 'cosine' or 'dot', got {score!r}")
        self.n_users, self.n_items, self.dim = n_users, n_items, dim
        self.score = score
        self.user_emb = nn.Parameter(torch.empty(n_users, dim))
        self.item_emb = nn.Parameter(torch.empty(n_items, dim))
        nn.init.xavier_uniform_(self.user_emb, generator=generator)
        nn.init.xavier_uniform_(self.item_emb, generator=generator)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def __deepcopy__(self, memo: dict) -> "Recommender":
        """A deep copy (``copy.deepcopy(model)``, e.g. to keep the best epoch's model) that shares the graph.

        Parameters, optimiser-visible state and every other attribute are copied as
        `nn.Module` would; a sparse CSR buffer (the normalised adjacency of LightGCN /
        XSimGCL, built once from the training data and never written) is shared, not
        copied: torch cannot deep-copy a CSR tensor ("Cannot access storage of
        SparseCsrTensorImpl"), and ``.to(device)`` on either model replaces the buffer
        rather than writing into it, so sharing is safe.
        """
        for buffer in self._buffers.values():
            if buffer is not None and buffer.layout == torch.sparse_csr:
                memo[id(buffer)] = buffer
        copied = self.__class__.__new__(self.__class__)
        memo[id(self)] = copied
        for key, value in self.__dict__.items():
            copied.__dict__[key] = copy.deepcopy(value, memo)
        return copied

    def propagate(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(U [n_users, d], I [n_items, d]) before normalisation; MF: the raw tables."""
        return self.user_emb, self.item_emb

    def split_nodes(self, table: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(users [n_users, d], items [n_items, d]) of a [n_users + n_items, d] node table (users first).

        One ``split``: its backward pass is one concatenation of the two gradients, where two
        slices would each allocate a zero-filled [n_users + n_items, d] gradient, to be added.
        """
        users, items = table.split([self.n_users, self.n_items])
        return users, items

    def _prepare(self, x: torch.Tensor) -> torch.Tensor:
        return normalize_rows(x) if self.score == "cosine" else x

    def score_tables(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(U, I) from `propagate`, with the item table normalised once for cosine.

        Normalising the [n_items, d] table is far cheaper than normalising the
        gathered [B, M, d] block (forward and backward); user rows are
        normalised after gathering so that dropout acts on the raw embedding.
        """
        U, I = self.propagate()
        return U, self._prepare(I)

    def user_rows(self, U: torch.Tensor, users: torch.Tensor) -> torch.Tensor:
        """The batch's user rows [B, d] as scores use them: ``U[users]``, dropout (training), normalised."""
        return self._prepare(self.dropout(U[users]))

    def pair_scores(self, U: torch.Tensor, I: torch.Tensor, users: torch.Tensor,
                    items: torch.Tensor) -> torch.Tensor:
        """Scores of ``users [B]`` against ``items [B, M]`` → [B, M]; (U, I) from `score_tables`."""
        u = self.user_rows(U, users)
        return (gather_dot if self.fused else plain_gather_dot)(u, I, items)

    def inbatch_scores(self, U: torch.Tensor, I: torch.Tensor, users: torch.Tensor,
                       pos_items: torch.Tensor) -> torch.Tensor:
        """All-pairs scores of the batch's users [B] against its positives [B] → [B, B].

        Row b, column c is f(users[b], pos_items[c]); the diagonal is each row's positive.
        Equals ``pair_scores(U, I, users, pos_items.expand(B, B))`` at B·d instead of B²·d memory.
        """
        return self.user_rows(U, users) @ I[pos_items].T

    def l2_penalty(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """The authors' L2 term (‖u‖² + Σ‖items‖²)/2/B on the raw embeddings of the batch.

        ``users [B]``, ``items [B, 1 + M]`` (positive first, then negatives).
        Σ‖items‖² counts a repeated item once per occurrence.  When the batch
        names more item slots than the table has rows, each row's squared norm
        is weighted by its count in the batch (`torch.bincount`) instead of
        gathering the [B, 1 + M, d] embedding block (same value and gradient;
        ml with 800 negatives: 2048 × 801 × 64 floats against 3,043 × 64).
        """
        u = self.user_emb[users]
        n_items = self.item_emb.shape[0]
        if items.numel() > n_items:
            counts = torch.bincount(items.reshape(-1), minlength=n_items).to(self.item_emb.dtype)
            item_sq = (counts @ self.item_emb.pow(2).sum(1))
        else:
            item_sq = self.item_emb[items].pow(2).sum()
        return (u.pow(2).sum() + item_sq) / 2 / users.shape[0]

    def extra_loss(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor | None:
        """Auxiliary training loss of the backbone for this batch (added to the main loss), or None.

        ``users [B]``, ``items [B, 1 + M]`` as in `l2_penalty`.  MF and LightGCN have none; the
        trainer calls it only on a backbone that overrides it (so the [B, 1 + M] ids are not built for nothing).
        """
        return None

    @torch.no_grad()
    def final_embeddings(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(U, I) with ``U @ I.T`` = evaluation scores (normalised rows for cosine)."""
        U, I = self.propagate()
        return self._prepare(U).detach(), self._prepare(I).detach()


class MF(Recommender):
    """Matrix factorisation: f(u, i) = <e_u, e_i> (or cosine)."""


class LightGCN(Recommender):
    """LightGCN: mean of ``layers + 1`` propagations over the normalised bipartite graph.

    The adjacency is built once from the training interactions (CSR); each call
    of ``propagate`` is ``layers`` sparse × dense products forward and as many
    backward, no layer saved for the backward pass (`rankrobust.kernels.propagate_layers`).
    """

    def __init__(self, train: Interactions, dim: int = 64, layers: int = 3, score: str = "cosine",
                 dropout: float = 0.0, generator: torch.Generator | None = None, fused: bool = True) -> None:
        super().__init__(train.n_users, train.n_items, dim, score, dropout, generator, fused)
        self.layers = layers
        self.register_buffer("adjacency", normalized_adjacency(train), persistent=False)

    def propagate(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(U, I): the mean of Â^l [users; items] over l = 0..layers, split into users and items."""
        mean = propagate_layers(self.adjacency, torch.cat([self.user_emb, self.item_emb]), self.layers)
        return self.split_nodes(mean)


def _first_occurrence(ids: torch.Tensor) -> torch.Tensor:
    """Bool [B]: True where ``ids[k]`` did not occur at an earlier position (a mask, no host sync).

    A stable sort puts the repeats of an id in their batch order, so an id's
    first position is the one whose sorted predecessor differs: O(B log B), no [B, B] comparison.
    """
    ordered, order = torch.sort(ids, stable=True)
    new = torch.ones_like(ordered, dtype=torch.bool)
    new[1:] = ordered[1:] != ordered[:-1]
    return torch.empty_like(new).scatter_(0, order, new)


def _distinct(ids: torch.Tensor, n: int) -> torch.Tensor:
    """The distinct values of ``ids`` (< n), ascending, found by marking them in an [n] mask (torch.unique sorts: slower)."""
    present = torch.zeros(n, dtype=torch.bool, device=ids.device)
    present[ids] = True
    return present.nonzero().squeeze(1)


def unique_infonce(view1: torch.Tensor, view2: torch.Tensor, ids: torch.Tensor | tuple[torch.Tensor, ...],
                   tau: float, compact: bool | None = None,
                   blocks: Sequence[Workspace] | None = None) -> torch.Tensor:
    """InfoNCE between two views of the *distinct* ``ids`` of a batch → scalar.

    ``view1``, ``view2``: [n, d] tables; ``ids``: [B] row ids (repeats allowed), or a
    tuple of such groups, whose losses are summed in the tuple's order.
    Over the set S of distinct ids of a group, with a = normalize(view1[s]), b = normalize(view2[s]):
    ``mean_{s∈S} −log softmax_{t∈S}(a_s·b_t / τ)[s]`` (XSimGCL's cross-layer InfoNCE on
    the unique users / items of the batch), by `rankrobust.kernels.views_infonce` (one autograd node).
    The rows of all groups are gathered and normalised in one pass (one [n, d] gradient
    per view in the backward pass, not one per group); each group keeps its own
    [|S|, |S|] block, so the sum over groups is the sum of separate calls.
    ``compact`` (default: on the CPU) computes each loss on the |S| distinct rows (found by marking
    them in an [n] mask: an [|S|, |S|] block, (|S|/B)² of the work); otherwise duplicates are masked rather than
    removed (``torch.unique`` would sync a GPU with the host): a repeated id has weight 0 as
    a row and is left out as a column of the [B, B] block.  Same value either way (up to
    the order of float sums).  ``blocks``: one `Workspace` per group (its [|S|, |S|] block),
    reused from step to step (`rankrobust.kernels.views_infonce`).
    """
    groups = (ids,) if isinstance(ids, torch.Tensor) else tuple(ids)
    if compact is None:
        compact = groups[0].device.type == "cpu"
    if compact:
        groups = tuple(_distinct(g, view1.shape[0]) for g in groups)
        weights = [torch.full(g.shape, 1.0 / g.shape[0], dtype=view1.dtype, device=g.device) for g in groups]
    else:
        firsts = [_first_occurrence(g) for g in groups]
        weights = [f.to(view1.dtype) / f.sum().clamp_min(1).to(view1.dtype) for f in firsts]
    rows = groups[0] if len(groups) == 1 else torch.cat(groups)
    weight = weights[0] if len(weights) == 1 else torch.cat(weights)
    return views_infonce(view1, view2, rows, weight, tuple(g.shape[0] for g in groups), tau, masked=not compact,
                         blocks=None if blocks is None else tuple(blocks))


class XSimGCL(Recommender):
    """XSimGCL (Yu et al., TKDE 2023; docs/PROTOCOLS.md §11): noisy LightGCN propagation + cross-layer InfoNCE.

    Propagation: e⁽⁰⁾ = [users; items], e⁽ˡ⁾ = Â e⁽ˡ⁻¹⁾ for l = 1..L, and while
    *training* e⁽ˡ⁾ ← e⁽ˡ⁾ + ε · sign(e⁽ˡ⁾) ⊙ normalize(Δ), Δ ~ U(0, 1) row-wise; the
    table is the mean of layers 1..L (no layer-0 term, unlike LightGCN).  The
    auxiliary loss (`extra_loss`) is λ · [InfoNCE_τcl(final, layer l*) over the
    batch's distinct users + the same over its distinct positive items], both
    views from the *same* noisy propagation the batch's scores came from.  In
    ``eval()`` (and in `final_embeddings` always) there is neither noise nor
    auxiliary loss.  The noise is drawn from a generator owned by the model,
    seeded from the run's seed (through the init generator), created on the
    embeddings' device at first use: same seed and device → same draws.
    """

    def __init__(self, train: Interactions, dim: int = 64, layers: int = 2, eps: float = 0.1, cl_layer: int = 1,
                 cl_tau: float = 0.1, cl_weight: float = 0.2, score: str = "cosine", dropout: float = 0.0,
                 generator: torch.Generator | None = None, fused: bool = True) -> None:
        super().__init__(train.n_users, train.n_items, dim, score, dropout, generator, fused)
        if layers < 1 or not 1 <= cl_layer <= layers:
            raise ValueError(f"XSimGCL needs layers >= 1 and 1 <= cl_layer <= layers, got layers={layers}, "
                             f"cl_layer={cl_layer}")
        self.layers, self.eps, self.cl_layer = layers, float(eps), cl_layer
        self.cl_tau, self.cl_weight = float(cl_tau), float(cl_weight)
        self.register_buffer("adjacency", normalized_adjacency(train), persistent=False)
        # drawn after the xavier init, so the init is that of the other backbones with the same seed
        self.noise_seed = int(torch.randint(0, 2**62, (1,), generator=generator)) if generator is not None else 0
        self._noise_generator: torch.Generator | None = None
        self._cl_views: tuple[torch.Tensor, torch.Tensor] | None = None
        self._noise: torch.Tensor | None = None  # `noise`'s buffer
        self._sign: torch.Tensor | None = None  # sign(Â e⁽ˡ⁻¹⁾) of `layer_embeddings`' perturbation
        # the [B, B] blocks of the two InfoNCE terms (users, items), reused every step
        self._infonce_blocks = (Workspace(), Workspace())

    def noise_generator(self, device: torch.device) -> torch.Generator:
        """The model's noise generator on ``device`` (created and seeded with ``noise_seed`` at first use)."""
        gen = self._noise_generator
        if gen is None or gen.device != device:
            gen = self._noise_generator = torch.Generator(device=device).manual_seed(self.noise_seed)
        return gen

    def layer_embeddings(self, noisy: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean of layers 1..L, layer l*) as [n_users + n_items, d] tables; ``noisy`` adds the perturbation.

        One pass of `rankrobust.kernels.propagate_layers` (``first = 1``, ``keep = l*``); the noise
        of all layers is drawn before it, in one call (`noise`), layer 1's numbers first.
        """
        x = torch.cat([self.user_emb, self.item_emb])
        perturb = None
        if noisy:
            noise = iter(self.noise(x))

            def perturb(h: torch.Tensor) -> torch.Tensor:  # h + ε·sign(h) ⊙ normalize(Δ): no gradient through sign
                sign = torch.sign(h, out=self._sign)  # into one reused [n, d] buffer
                return h.addcmul_(sign, next(noise))  # in place: h is the fresh product Â e⁽ˡ⁻¹⁾
        return propagate_layers(self.adjacency, x, self.layers, first=1, keep=self.cl_layer, perturb=perturb)

    def noise(self, x: torch.Tensor) -> torch.Tensor:
        """ε · normalize(Δ) [layers, n, d] for one noisy propagation of ``x [n, d]``, Δ ~ U(0, 1) row-wise.

        All layers' Δ in one draw from the model's generator (the same numbers, in the same
        order, as one [n, d] draw per layer: the CPU and CUDA generators fill a tensor in
        element order), scaled by ε / max(‖Δ‖, 1e-12) row by row in one pass, into one buffer reused across steps
        (the propagation only reads it; nothing keeps it for the backward pass).
        """
        shape = (self.layers, *x.shape)
        buf = self._noise
        if buf is None or buf.shape != shape or buf.dtype != x.dtype or buf.device != x.device:
            buf = self._noise = torch.empty(shape, dtype=x.dtype, device=x.device)
            self._sign = torch.empty_like(x)
        torch.rand(shape, generator=self.noise_generator(x.device), dtype=x.dtype, device=x.device, out=buf)
        scale = torch.linalg.vector_norm(buf, dim=-1, keepdim=True).clamp_min_(1e-12).reciprocal_().mul_(self.eps)
        return buf.mul_(scale)  # Δ · (ε / ‖Δ‖): one pass over the [layers, n, d] draws

    def propagate(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Training: the noisy layer mean (keeping the views for `extra_loss`); eval: the clean layer mean."""
        noisy = self.training and self.eps > 0
        mean, contrast = self.layer_embeddings(noisy)
        self._cl_views = (mean, contrast) if self.training and self.cl_weight > 0 else None
        return self.split_nodes(mean)

    def extra_loss(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor | None:
        """λ · (InfoNCE over the batch's distinct users + over its distinct positives ``items[:, 0]``).

        The views are those of the last training `propagate` (the batch's own
        scores); None in eval mode, with λ = 0, or before any training propagate.
        """
        views, self._cl_views = self._cl_views, None  # used once: the graph is not kept past the step
        if not self.training or views is None:
            return None
        final, contrast = views  # [n_users + n_items, d]: item i is row n_users + i (no slices: no
        n = self.n_users          # zero-filled [n_users + n_items, d] gradient per slice in the backward pass)
        return self.cl_weight * unique_infonce(final, contrast, (users, items[:, 0] + n), self.cl_tau,
                                               blocks=self._infonce_blocks)

    @torch.no_grad()
    def final_embeddings(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Evaluation tables: the clean (noise-free) layer mean, whatever the module's mode."""
        mean, _ = self.layer_embeddings(noisy=False)
        U, I = self.split_nodes(mean)
        return self._prepare(U).detach(), self._prepare(I).detach()


# --------------------------------------------------------------------------- registry
MODELS: Registry = Registry("model")


@dataclass
class ModelOptions:
    NOT_SEARCHED: ClassVar[dict[str, str]] = {
        "dim": "the model's capacity and cost: every arm gets the same d (set it in the study's base config)"}
    dim: int = option(64, "embedding size d", check=positive, flag="--dim")
    score: str = option("cosine", "score function: cosine or dot", check=one_of(*SCORES), flag="--score",
                        search=choice(*SCORES))
    dropout: float = option(0.0, "dropout on user embeddings while training", check=unit_interval,
                            flag="--dropout", search=uniform(0.0, 0.5))


@dataclass
class LightGCNOptions(ModelOptions):
    layers: int = option(3, "LightGCN propagation layers (hops)", check=non_negative, flag="--layers",
                         search=integers(1, 4))


@MODELS.register("mf", ModelOptions)
def _make_mf(train: Interactions, options: ModelOptions, generator: torch.Generator, fused: bool) -> Recommender:
    """Matrix factorisation: f(u, i) = <e_u, e_i> (or cosine)."""
    return MF(train.n_users, train.n_items, options.dim, options.score, options.dropout, generator, fused)


@MODELS.register("lightgcn", LightGCNOptions)
def _make_lightgcn(train: Interactions, options: LightGCNOptions, generator: torch.Generator,
                   fused: bool) -> Recommender:
    """LightGCN: mean of layers + 1 propagations over the normalised user–item graph."""
    return LightGCN(train, options.dim, options.layers, options.score, options.dropout, generator, fused)


@dataclass
class XSimGCLOptions(ModelOptions):
    NOT_SEARCHED: ClassVar[dict[str, str]] = {
        **ModelOptions.NOT_SEARCHED,
        "cl_layer": "fixed at the paper's l* = 1, which every searched number of layers admits"}
    layers: int = option(2, "propagation layers L (XSimGCL: mean of layers 1..L, no layer-0 term)",
                         check=positive, flag="--layers", search=integers(1, 4))
    eps: float = option(0.1, "XSimGCL noise magnitude ε added at every layer in training", check=non_negative,
                        flag="--eps", search=log_uniform(0.01, 0.5))
    cl_layer: int = option(1, "XSimGCL layer l* contrasted with the final embeddings (1..layers)", check=positive,
                           flag="--cl-layer")
    cl_tau: float = option(0.1, "temperature τ_cl of XSimGCL's cross-layer InfoNCE", check=positive,
                           flag="--cl-tau", search=log_uniform(0.05, 1.0))
    cl_weight: float = option(0.2, "weight λ of XSimGCL's cross-layer InfoNCE", check=non_negative,
                              flag="--cl-weight", search=log_uniform(0.01, 1.0))

    def validate(self) -> None:
        if self.cl_layer > self.layers:
            raise ConfigError(f"model.cl_layer = {self.cl_layer} must be at most model.layers = {self.layers}")


@MODELS.register("xsimgcl", XSimGCLOptions)
def _make_xsimgcl(train: Interactions, options: XSimGCLOptions, generator: torch.Generator,
                  fused: bool) -> Recommender:
    """XSimGCL: noisy LightGCN propagation without layer 0, plus a cross-layer InfoNCE (PSL's third backbone)."""
    return XSimGCL(train, options.dim, options.layers, options.eps, options.cl_layer, options.cl_tau,
                   options.cl_weight, options.score, options.dropout, generator, fused)


def build_model(name: str, train: Interactions, options=None, *, seed: int = 0,
                device: torch.device | str = "cpu", fused: bool = True, **values) -> Recommender:
    """Create the backbone registered as ``name`` with seeded xavier init, moved to ``device``.

    ``options`` is the entry's options dataclass; alternatively give its fields
    as keywords (``build_model("lightgcn", train, dim=8, layers=2)``).
    ``fused`` selects the fast-path scorer (`rankrobust.kernels.gather_dot`).
    Unknown names or options raise ValueError (`ConfigError`).
    """
    entry = MODELS.entry(name)
    if options is None:
        options = entry.make_options(**values)
    gen = torch.Generator().manual_seed(seed)
    return entry.target(train, options, gen, fused).to(device)
