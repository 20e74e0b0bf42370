"""Refuse, before anything is allocated, a run whose memory needs are absurd for its device.

`check_memory(cfg, shape, n_pairs, device)` (called once by
`rankrobust.experiment.run_experiment`, after the data is loaded and before the
model is built) estimates the bytes of the run's large blocks from the config
and the dataset's shape (`estimate_memory`) and raises `ConfigError` when
they exceed the device's whole memory (CUDA: the GPU's; CPU: physical RAM),
naming the config key(s) of the largest block and how to fix it::

    model.dim = 100,000,000 is too large: the embedding tables (…) would need about 11.9 TiB and one
    batch's [1,024 × 65 × 100,000,000] gathered negative embeddings would need about 72.6 TiB, more
    than the 23.5 GiB of memory of cpu; lower model.dim (--dim)

The estimates are deliberately rough (within a small factor): they only
separate runs that cannot possibly fit from the rest, so a run that passes can
still run out of memory, never the other way round.  Huge *ids* never get this
far: user files are remapped to contiguous ids and registered datasets refuse
files whose ids are mostly unused (`rankrobust.data.registry`), so the shape
is that of the ids that occur.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from rankrobust.config import ConfigError, RunConfig
from rankrobust.evaluate import BLOCK_ROWS, chunk_rows
from rankrobust.sampling import negative_kind
from rankrobust.scoring import choose_scorer, dense_bytes

__all__ = ["MemoryBlock", "estimate_memory", "device_memory", "check_memory", "format_bytes"]

FLOAT = 4  # float32 bytes
INDEX = 8  # int64 bytes
#: copies of the embedding tables alive at once: weights, gradient, Adam's two moments, the best epoch's
#: copy and the final / normalised tables read at evaluation
EMBEDDING_COPIES = 7
#: [B, M, d] blocks of the gather scorer alive at once (gathered rows, their gradient, normalised rows)
GATHER_BLOCKS = 3
#: [n_users + n_items, d] tables of one graph propagation alive at once (`rankrobust.kernels.propagate_layers`,
#: which saves only the adjacency for the backward pass): the concatenated input, the previous and the new layer,
#: the running sum (the output), the kept layer (XSimGCL) and the sign buffer of XSimGCL's noise; the backward
#: pass holds as many (the output's gradient, the scaled one, the running product and its next value)
PROPAGATION_TABLES = 6
#: bytes of the normalised adjacency per training pair: Â holds each pair twice (user → item and item → user),
#: each entry a float32 value and an int32 column index (`rankrobust.models.normalized_adjacency`)
ADJACENCY_PAIR_BYTES = 2 * (FLOAT + 4)
#: how to shrink what one config key sizes
FIXES = {"model.dim": "lower model.dim (--dim)", "train.batch_size": "lower train.batch_size (--batch-size)",
         "train.num_negatives": "lower train.num_negatives (--negatives)",
         "train.eval_chunk": "lower train.eval_chunk (--set train.eval_chunk=N)",
         "model.layers": "lower model.layers (--layers)"}


@dataclass(frozen=True)
class MemoryBlock:
    """One large allocation of a run: the config ``keys`` (and ``values``) that size it, what it is, bytes, fix."""

    keys: tuple[str, ...]
    values: tuple[int, ...]
    what: str
    bytes: int
    fix: str

    def named(self) -> str:
        """``model.dim = 64`` or ``train.batch_size × train.num_negatives × model.dim = 1024 × 64 × 64``."""
        return f"{' × '.join(self.keys)} = {' × '.join(f'{v:,}' for v in self.values)}"


def format_bytes(n: float) -> str:
    """``1536`` → ``1.5 KiB``."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if n < 1024 or unit == "PiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} PiB"


def estimate_memory(cfg: RunConfig, n_users: int, n_items: int, n_pairs: int,
                    device: torch.device | str = "cpu") -> list[MemoryBlock]:
    """The run's large blocks, in bytes, from the config and the dataset's shape.

    ``n_users`` × ``n_items``: the shape of the training matrix; ``n_pairs``:
    training pairs (a batch holds at most that many).  Blocks (d = ``model.dim``,
    n = n_users + n_items, P = n_pairs, L = ``model.layers``):

    * the embedding tables with their optimiser state: ``EMBEDDING_COPIES · n · d · 4`` bytes;
    * a graph backbone's propagation (LightGCN, XSimGCL): ``PROPAGATION_TABLES · n · d · 4``
      (no layer is saved for the backward pass: the number of layers costs time, not
      memory) + the CSR adjacency ``ADJACENCY_PAIR_BYTES · P``; XSimGCL adds its noise
      buffer, one [n, d] table per layer (``L · n · d · 4``, named with ``model.layers``);
    * one training batch's score blocks (sized by ``train.batch_size`` and the sampler:
      ``num_negatives`` × ``model.dim`` for gathered negatives, the whole catalog for the
      dense and all-items paths, B × B in-batch);
    * one evaluation chunk: its reused [rows × n_items] float32 score buffer, rows =
      `rankrobust.evaluate.chunk_rows` (whole 64-user blocks, at most ``train.eval_chunk``;
      on a CPU sized to the cache, on a GPU to a share of its memory), plus the masked
      training pairs as int64 flat offsets (``8 · P``; no dense [rows × n_items] mask).
    """
    tc, opts = cfg.train, cfg.model.options
    dim = int(opts.dim)
    rows = n_users + n_items
    blocks = []
    layers = getattr(opts, "layers", None)
    blocks.append(MemoryBlock(("model.dim",), (dim,),
                              f"the embedding tables ({n_users:,} users + {n_items:,} items) with their gradients, "
                              f"optimiser state and copies", rows * dim * FLOAT * EMBEDDING_COPIES,
                              "lower model.dim (--dim)"))
    if layers is not None:  # a graph backbone: the propagation's tables and the adjacency
        blocks.append(MemoryBlock(("model.dim",), (dim,),
                                  f"the graph propagation's [{rows:,} × {dim:,}] tables and the adjacency "
                                  f"({int(n_pairs):,} training pairs)",
                                  PROPAGATION_TABLES * rows * dim * FLOAT + ADJACENCY_PAIR_BYTES * int(n_pairs),
                                  "lower model.dim (--dim)"))
    if layers is not None and cfg.model.name == "xsimgcl":  # its own block, so a huge model.layers is named
        blocks.append(MemoryBlock(("model.layers", "model.dim"), (int(layers), dim),
                                  f"XSimGCL's noise for {int(layers):,} layers of the [{rows:,} × {dim:,}] tables",
                                  int(layers) * rows * dim * FLOAT,
                                  "lower model.layers (--layers) or model.dim (--dim)"))
    b = max(1, min(int(tc.batch_size), int(n_pairs)))
    kind = negative_kind(tc.sampler)
    if kind == "in_batch":
        blocks.append(MemoryBlock(("train.batch_size",), (int(tc.batch_size),),
                                  f"one batch's [{b:,} × {b:,}] in-batch score blocks",
                                  4 * b * b * FLOAT + GATHER_BLOCKS * b * dim * FLOAT,
                                  "lower train.batch_size (--batch-size)"))
    elif kind == "all":
        bitmap = n_users * -(-n_items // 8) if getattr(tc.sampler_options, "mask_positives", False) else 0
        blocks.append(MemoryBlock(("train.batch_size",), (int(tc.batch_size),),
                                  f"one batch's [{b:,} × {n_items:,}] all-item score blocks",
                                  dense_bytes(b, n_items) + bitmap, "lower train.batch_size (--batch-size)"))
    else:
        m = int(tc.num_negatives or 1)
        scorer = choose_scorer(tc.scorer, n_items=n_items, num_negatives=m, dim=dim, batch_size=int(tc.batch_size),
                               device=device, bf16=tc.bf16).scorer  # as the trainer resolves it
        if scorer == "dense":
            blocks.append(MemoryBlock(("train.batch_size",), (int(tc.batch_size),),
                                      f"one batch's [{b:,} × {n_items:,}] dense score blocks (train.scorer = dense)",
                                      dense_bytes(b, n_items), "lower train.batch_size (--batch-size) or set "
                                                               "train.scorer=sparse"))
            blocks.append(MemoryBlock(("train.num_negatives", "train.batch_size"), (m, int(tc.batch_size)),
                                      f"one batch's [{b:,} × {m:,}] sampled negative ids", b * m * INDEX,
                                      f"lower train.num_negatives (--negatives; the catalog has {n_items:,} items)"))
        elif scorer == "sparse":  # CSR pattern: column ids, COO row ids, scores and their gradient
            blocks.append(MemoryBlock(("train.batch_size", "train.num_negatives"), (int(tc.batch_size), m),
                                      f"one batch's [{b:,} × {m + 1:,}] sparse score pattern (train.scorer = sparse)",
                                      b * (m + 1) * (2 * INDEX + 2 * FLOAT),
                                      "lower train.batch_size (--batch-size) or train.num_negatives (--negatives)"))
        else:
            blocks.append(MemoryBlock(("train.batch_size", "train.num_negatives", "model.dim"),
                                      (int(tc.batch_size), m, dim),
                                      f"one batch's [{b:,} × {m + 1:,} × {dim:,}] gathered negative embeddings",
                                      GATHER_BLOCKS * b * (m + 1) * dim * FLOAT + b * m * INDEX,
                                      "lower train.batch_size (--batch-size), train.num_negatives (--negatives) "
                                      "or model.dim (--dim)"))
    chunk = min(chunk_rows(n_items * FLOAT, device, int(tc.eval_chunk)),
                BLOCK_ROWS * max(1, -(-int(n_users) // BLOCK_ROWS)))  # as the evaluator chooses it
    blocks.append(MemoryBlock(("train.eval_chunk",), (int(tc.eval_chunk),),
                              f"one evaluation chunk's [{chunk:,} × {n_items:,}] score buffer and the masked pairs",
                              chunk * n_items * FLOAT + int(n_pairs) * INDEX, FIXES["train.eval_chunk"]))
    return blocks


def device_memory(device: torch.device | str) -> int | None:
    """Total bytes of memory of ``device`` (CUDA: the GPU's; CPU: physical RAM); None when unknown."""
    device = torch.device(device)
    if device.type == "cuda":
        return int(torch.cuda.get_device_properties(device).total_memory)
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return None


def check_memory(cfg: RunConfig, n_users: int, n_items: int, n_pairs: int, device: torch.device | str,
                 budget: int | None = None) -> list[MemoryBlock]:
    """Raise `ConfigError` when the run's blocks (`estimate_memory`) exceed ``budget`` bytes.

    ``budget`` defaults to the device's whole memory (`device_memory`; no
    check when unknown).  The message names the config key(s) of the largest
    block, their values, the estimate, the budget and the fix.  Returns the
    blocks when the run fits.
    """
    blocks = estimate_memory(cfg, n_users, n_items, n_pairs, device)
    budget = device_memory(device) if budget is None else budget
    total = sum(b.bytes for b in blocks)
    if budget is None or total <= budget:
        return blocks
    over = sorted((b for b in blocks if b.bytes > budget), key=lambda b: -b.bytes)
    where = f"more than the {format_bytes(budget)} of memory of {torch.device(device)}"
    if not over:  # no block alone is too large: name the largest
        worst = max(blocks, key=lambda b: b.bytes)
        raise ConfigError(f"{worst.named()}: the run needs about {format_bytes(total)} in all (the largest part, "
                          f"{format_bytes(worst.bytes)}, for {worst.what}), {where}; {worst.fix}")
    common = [k for k in over[0].keys if all(k in b.keys for b in over)]
    if len(over) > 1 and common:  # one key sizes every block that is too large (model.dim = 1e8): name it alone
        key = common[-1]
        value = dict(zip(over[0].keys, over[0].values))[key]
        parts = " and ".join(f"{b.what} would need about {format_bytes(b.bytes)}" for b in over)
        raise ConfigError(f"{key} = {value:,} is too large: {parts}, {where}; {FIXES.get(key, over[0].fix)}")
    worst = over[0]
    raise ConfigError(f"{worst.named()} needs about {format_bytes(worst.bytes)} for {worst.what}, {where}; {worst.fix}")
