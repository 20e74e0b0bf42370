"""The metrics rankrobust reports: one registry, and the definitions of the top-K metrics (docs/METRICS.md).

Every metric is an entry of `METRICS` (a `Metric`): its name, whether it is
**per-user** (one value per evaluated user, averaged over the users; the
per-user values are written to ``per_user.parquet``, so two runs can be
paired user by user) or **global** (one value per run over all users' lists,
e.g. coverage), its cutoffs, which direction is better, and what it needs:

- ``topk``: the ranked lists L_u (``EvalResult.topk``, −1 = padding)
- ``truth``: the held-out items T_u (hits ``L_u,r ∈ T_u`` and |T_u|)
- ``popularity``: φ(i), `rankrobust.data.popularity.item_popularity` variant ``"clean"``
- ``propensity``: the IPS weights w_i = 1 / max(φ_i, 1)^γ (``train.ips_gamma``; absent when it is unset)

A metric with ``cutoffs = RUN_KS`` is computed at every K of the run's
``train.ks`` and stored as ``split.name@K`` (``test.ndcg@20``); a probe's
metric (``cutoffs = PROBE_K``: the fairness probe's, registered by
``analysis/fairness.py``) is one value ``section.name`` (``fairness.aplt``).
The results table, ``results --compare-metric`` (per-user metrics only: a
global one has no per-user values to pair), the store's bootstrap intervals
and the figures read these declarations, never the column names.

Who computes what: the five hit metrics (`HIT_METRICS`) on every evaluation,
validation included, by the evaluator in one pass over the hit matrix
(`metrics_from_hits`); every other entry with a ``compute`` on the test
evaluation only, by `compute_metrics` (``rankrobust.experiment``), each when
what it needs is there.  Adding a metric is one `register_metric` call
(docs/EXTENDING.md, "A metric").

The discount of NDCG is `ndcg_discount` (the one definition; IPS-NDCG and
the fairness probe's per-group NDCG use it too).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Mapping, Sequence, Union

import numpy as np
import torch
from torch import Tensor

from rankrobust.data.interactions import Interactions

__all__ = [
    "HIT_METRICS",
    "METRICS",
    "Metric",
    "MetricInputs",
    "NEEDS",
    "PROBE_K",
    "RUN_KS",
    "UnknownMetric",
    "get_metric",
    "metric_inputs",
    "metrics_from_hits",
    "ndcg_discount",
    "parse_metric",
    "per_user_metrics",
    "register_metric",
    "compute_metrics",
    "csr_rows",
    ]

#: what a metric may need, and where it comes from
NEEDS: dict[str, str] = {
    "topk": "the ranked top-K lists of the evaluated users (EvalResult.topk)",
    "truth": "the held-out items of each evaluated user (the hits and |T_u|)",
    "popularity": "item popularity φ(i), item_popularity variant 'clean'",
    "propensity": "IPS weights w_i = 1 / max(φ_i, 1)^γ (only when train.ips_gamma is set)",
}
#: ``Metric.cutoffs``: at every K of the run's ``train.ks`` (``name@K``), or once, at the probe's own K
RUN_KS, PROBE_K = "run_ks", "probe_k"
#: the metrics the evaluator computes on every evaluation from the hit matrix, in ``per_user``'s column order
HIT_METRICS: tuple[str, ...] = ("recall", "precision", "ndcg", "hit", "mrr")


def ndcg_discount(k_max: int, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float64) -> Tensor:
    """The DCG discount of ranks 1..k_max, [k_max]: d_r = 1 / log2(r + 1) (Järvelin & Kekäläinen 2002).

    The one definition of NDCG's discount in rankrobust: NDCG@K, IPS-NDCG@K
    and the fairness probe's per-group NDCG all use it.
    """
    return 1.0 / torch.log2(torch.arange(2, k_max + 2, device=device, dtype=dtype))


def csr_rows(indptr: np.ndarray, indices: np.ndarray, users: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(row position in ``users`` [nnz'], item id [nnz']) of the CSR rows of ``users``.

    Vectorised gather of several CSR rows: ``repeat`` the row position by the
    row length and offset into ``indices``.
    """
    starts = indptr[users]
    lens = indptr[users + 1] - starts
    total = int(lens.sum())
    rows = np.repeat(np.arange(len(users), dtype=np.int64), lens)
    offsets = np.arange(total, dtype=np.int64) - np.repeat(np.cumsum(lens) - lens, lens)
    return rows, indices[np.repeat(starts, lens) + offsets]


def _real_dtype(device: torch.device) -> torch.dtype:
    """float64 where the device supports it (not MPS), else float32."""
    return torch.float32 if device.type == "mps" else torch.float64


def metrics_from_hits(hits: Tensor, n_truth: Tensor, ks: Sequence[int]) -> dict[str, Tensor]:
    """Per-user `HIT_METRICS` for every K from a hit matrix, on its device.

    With h_r = 1 when the item at rank r is in T_u and L = the top K:

    - Recall@K    = Σ_{r ≤ K} h_r / |T_u|
    - Precision@K = Σ_{r ≤ K} h_r / K            (K as asked, even when K > n_items)
    - NDCG@K      = Σ_{r ≤ K} h_r d_r ÷ Σ_{r ≤ min(K, |T_u|)} d_r, d_r = `ndcg_discount`
    - Hit@K       = 1 if Σ_{r ≤ K} h_r > 0 else 0
    - MRR@K       = 1 / rank of the first hit within K, 0 without a hit

    Args:
        hits: Bool [n, K_max], ``hits[u, r]`` = the item at rank r+1 is relevant.
        n_truth: Long [n], |T_u| (> 0).
        ks: cutoffs; a K larger than K_max uses the whole row (Precision still
            divides by K).

    Returns:
        ``{"recall@K": Tensor[n], "precision@K", "ndcg@K", "hit@K", "mrr@K"}``
        for every K, in float64 (float32 on MPS).
    """
    n, k_max = hits.shape
    dt = _real_dtype(hits.device)
    out: dict[str, Tensor] = {}
    if k_max == 0:  # no items at all
        zero = torch.zeros(n, dtype=dt, device=hits.device)
        for k in ks:
            for name in HIT_METRICS:
                out[f"{name}@{k}"] = zero.clone()
        return out
    h = hits.to(dt)
    disc = ndcg_discount(k_max, hits.device, dt)
    cum_hits = h.cumsum(1)                       # [n, K_max]
    cum_dcg = (h * disc).cumsum(1)               # [n, K_max]
    cum_idcg = disc.cumsum(0)                    # [K_max]
    # first hit rank (0-based), K_max when there is none
    pos = torch.arange(k_max, device=hits.device)
    first = torch.where(hits, pos, torch.full_like(pos, k_max)).amin(1)
    nt = n_truth.to(dt)
    for k in ks:
        kk = min(int(k), k_max)
        hk = cum_hits[:, kk - 1]
        ideal_len = torch.clamp(n_truth, max=kk).clamp_min(1) - 1
        out[f"recall@{k}"] = hk / nt
        out[f"precision@{k}"] = hk / float(k)
        out[f"ndcg@{k}"] = cum_dcg[:, kk - 1] / cum_idcg[ideal_len]
        out[f"hit@{k}"] = (hk > 0).to(dt)
        out[f"mrr@{k}"] = torch.where(first < kk, 1.0 / (first.to(dt) + 1.0), torch.zeros_like(nt))
    return out


# --------------------------------------------------------------------------- inputs and entries
@dataclass(frozen=True)
class MetricInputs:
    """What a metric's ``compute`` reads: one test evaluation and the item-side data (`metric_inputs`).

    ``n`` evaluated users, ``K_max`` = the widest cutoff (clipped to n_items).

    Attributes:
        topk: Long [n, K_max] ranked item ids, −1 = padding (device of the evaluation).
        hits: Bool [n, K_max], ``topk[u, r] ∈ T_u``.
        n_truth: Long [n], |T_u| > 0.
        users: int64 [n] evaluated user ids (host).
        truth: the held-out matrix the hits were taken against.
        n_items: catalogue size.
        popularity: float64 [n_items] φ(i) (``"popularity"``), or None.
        propensity: float64 [n_items] IPS weights w_i (``"propensity"``), or None.
    """

    topk: Tensor
    hits: Tensor
    n_truth: Tensor
    users: np.ndarray
    truth: Interactions
    n_items: int
    popularity: np.ndarray | None = None
    propensity: np.ndarray | None = None
    #: intermediate results shared by entries of one `compute_metrics` call (the IPS sums of both IPS metrics)
    shared: dict = field(default_factory=dict, compare=False, repr=False)

    def has(self, need: str) -> bool:
        """Is what ``need`` (a key of `NEEDS`) names available?"""
        return {"popularity": self.popularity is not None, "propensity": self.propensity is not None}.get(need, True)

    def top(self, k: int) -> tuple[Tensor, Tensor]:
        """(item ids [n, min(k, K_max)], valid [n, min(k, K_max)]) of the top k (valid = not padding)."""
        ids = self.topk[:, :min(int(k), self.topk.shape[1])]
        return ids, ids >= 0


#: per-user: K → float64 [n] values; global: K → one float (``PROBE_K`` metrics are computed by their probe)
Computed = Mapping[int, Union[np.ndarray, float]]


@dataclass(frozen=True)
class Metric:
    """One registered metric (see the module docstring).

    Attributes:
        name: the column stem (``ndcg`` → ``test.ndcg@20``; a probe's metric ``aplt`` → ``fairness.aplt``).
        per_user: one value per evaluated user (averaged; pairable user by user) or one per run (global).
        higher_is_better: the direction in which the metric is better (for fairness: fairer to unpopular items).
        needs: subset of `NEEDS`.
        formula: the definition, one line (shown by ``results`` and docs).
        compute: ``compute(inputs, ks) -> {K: values}`` (`Computed`); None when the evaluator (`HIT_METRICS`)
            or a probe computes it.
        cutoffs: `RUN_KS` (every K of ``train.ks``) or `PROBE_K` (once, at the probe's K).
        section: the ``metrics.json`` section / store column prefix (``test``; ``fairness`` for the probe's).
    """

    name: str
    per_user: bool
    higher_is_better: bool
    needs: frozenset[str]
    formula: str
    compute: Callable[[MetricInputs, Sequence[int]], Computed] | None = None
    cutoffs: str = RUN_KS
    section: str = "test"

    def __post_init__(self) -> None:
        unknown = set(self.needs) - set(NEEDS)
        if unknown:
            raise ValueError(f"metric {self.name!r} needs {sorted(unknown)}: not one of {list(NEEDS)}")
        if self.cutoffs not in (RUN_KS, PROBE_K):
            raise ValueError(f"metric {self.name!r}: cutoffs must be {RUN_KS!r} or {PROBE_K!r}, got {self.cutoffs!r}")

    @property
    def key(self) -> str:
        """Registry key: ``name`` for test metrics, ``section.name`` for the others (``fairness.coverage``)."""
        return self.name if self.section == "test" else f"{self.section}.{self.name}"

    def column(self, k: int | None = None) -> str:
        """Store column: ``test.ndcg@20`` (``RUN_KS``, needs ``k``) or ``fairness.aplt``."""
        if self.cutoffs == PROBE_K:
            return f"{self.section}.{self.name}"
        if k is None:
            raise ValueError(f"metric {self.name!r} is computed at every K of train.ks: give a K ({self.name}@K)")
        return f"{self.section}.{self.name}@{int(k)}"


#: every metric rankrobust can report, by `Metric.key`
METRICS: dict[str, Metric] = {}


class UnknownMetric(ValueError):
    """A metric name that is not registered (the message names the registered ones)."""


def register_metric(entry: Metric, *, replace: bool = False) -> Metric:
    """Add ``entry`` to `METRICS` (ValueError when its key is taken, unless ``replace``); returns it."""
    if entry.key in METRICS and not replace:
        raise ValueError(f"a metric {entry.key!r} is already registered")
    METRICS[entry.key] = entry
    return entry


def get_metric(key: str) -> Metric:
    """The entry of ``key`` (``ndcg``, ``fairness.aplt``); `UnknownMetric` naming the registered ones."""
    if key not in METRICS:
        from difflib import get_close_matches

        near = get_close_matches(key, list(METRICS), n=1)
        raise UnknownMetric(f"{key!r} is not a registered metric{f' (did you mean {near[0]!r}?)' if near else ''}; "
                            f"metrics: {', '.join(METRICS)}")
    return METRICS[key]


def parse_metric(text: str) -> tuple[Metric, int | None]:
    """``"ndcg@20"`` / ``"test.ndcg@20"`` → (entry, 20); ``"fairness.aplt"`` → (entry, None).

    `UnknownMetric` for an unregistered name, ValueError for a missing or malformed K (its message does not
    repeat ``text``: the caller names the option and value it came from).
    """
    text = str(text).removeprefix("test.")
    name, at, k = text.partition("@")
    entry = get_metric(name)
    if entry.cutoffs == PROBE_K:
        if at:
            raise ValueError(f"{entry.key} is computed once at its probe's K: write it without @K")
        return entry, None
    if not k.isdigit() or int(k) < 1:
        raise ValueError(f"{name} is computed at every K of train.ks; write {name}@K with a whole K >= 1")
    return entry, int(k)


def per_user_metrics() -> list[str]:
    """Keys of the registered per-user metrics, in registration order."""
    return [key for key, entry in METRICS.items() if entry.per_user]


# --------------------------------------------------------------------------- the computed entries
def _fsum_mean(values: np.ndarray) -> float:
    """Exactly rounded mean (`math.fsum`, as the evaluator's), NaN over zero users."""
    return math.fsum(values) / len(values) if len(values) else float("nan")


def _ips_parts(inp: MetricInputs, ks: Sequence[int]) -> dict[int, tuple[np.ndarray, np.ndarray, np.ndarray,
                                                                         np.ndarray]]:
    """K → (Σ_{hits ≤ K} w, Σ_{T_u} w, DCG_w@K, IDCG_w@K), each float64 [n], for the IPS metrics.

    The numerators on the evaluation's device; the per-user denominators with
    one sort and ``bincount`` over the truth pairs on the host (the ideal list
    puts T_u's largest weights first).
    """
    n, k_max = inp.hits.shape
    w = inp.propensity
    device = inp.topk.device
    dt = _real_dtype(device)
    w_dev = torch.as_tensor(w, dtype=dt, device=device)
    hit_w = torch.where(inp.hits, w_dev[inp.topk.clamp_min(0)], torch.zeros((), dtype=dt, device=device))
    cum_w = hit_w.cumsum(1).cpu().numpy().astype(np.float64) if k_max else np.zeros((n, 0))
    cum_dcg = ((hit_w * ndcg_discount(k_max, device, dt)).cumsum(1).cpu().numpy().astype(np.float64) if k_max
               else np.zeros((n, 0)))
    rows, items = csr_rows(inp.truth.indptr, inp.truth.indices, inp.users)
    tw = w[items]
    order = np.lexsort((-tw, rows))
    rows, tw = rows[order], tw[order]
    rank = np.arange(len(rows)) - np.searchsorted(rows, np.arange(n))[rows]
    total = np.bincount(rows, weights=tw, minlength=n)
    disc = ndcg_discount(max(k_max, 1)).numpy()
    out = {}
    for k in ks:
        kk = min(int(k), k_max)
        inside = rank < kk
        idcg = np.bincount(rows[inside], weights=tw[inside] * disc[rank[inside]], minlength=n)
        out[int(k)] = (cum_w[:, kk - 1] if kk else np.zeros(n), total,
                       cum_dcg[:, kk - 1] if kk else np.zeros(n), idcg)
    return out


def _ips_shared(inp: MetricInputs, ks: Sequence[int]):
    """`_ips_parts` of ``inp`` at ``ks``, computed once for both IPS metrics."""
    key = ("ips", tuple(int(k) for k in ks))
    if key not in inp.shared:
        inp.shared[key] = _ips_parts(inp, ks)
    return inp.shared[key]


def _ips_recall(inp: MetricInputs, ks: Sequence[int]) -> Computed:
    return {k: hit / total for k, (hit, total, _, _) in _ips_shared(inp, ks).items()}


def _ips_ndcg(inp: MetricInputs, ks: Sequence[int]) -> Computed:
    return {k: np.divide(dcg, idcg, out=np.zeros(len(dcg)), where=idcg > 0)
            for k, (_, _, dcg, idcg) in _ips_shared(inp, ks).items()}


def _coverage(inp: MetricInputs, ks: Sequence[int]) -> Computed:
    out = {}
    for k in ks:
        ids, valid = inp.top(k)
        shown = torch.zeros(inp.n_items, dtype=torch.bool, device=ids.device)
        shown[ids[valid]] = True
        out[int(k)] = int(shown.sum()) / inp.n_items if inp.n_items else float("nan")
    return out


#: the evaluator's metrics (`metrics_from_hits` computes them; every one is better higher)
_HIT_FORMULAS = {
    "recall": "|L ∩ T_u| / |T_u|",
    "precision": "|L ∩ T_u| / K",
    "ndcg": "Σ_{r ≤ K, L_r ∈ T_u} d_r ÷ Σ_{r ≤ min(K, |T_u|)} d_r, d_r = 1/log2(r+1)",
    "hit": "1 if L ∩ T_u ≠ ∅ else 0",
    "mrr": "1 / rank of the first hit within K (0 without one)",
}
for _name in HIT_METRICS:
    register_metric(Metric(_name, per_user=True, higher_is_better=True, needs=frozenset({"topk", "truth"}),
                           formula=_HIT_FORMULAS[_name]))
_IPS_NEEDS = frozenset({"topk", "truth", "propensity"})
register_metric(Metric("ips_recall", per_user=True, higher_is_better=True, needs=_IPS_NEEDS, compute=_ips_recall,
                       formula="Σ_{i ∈ L ∩ T_u} w_i / Σ_{i ∈ T_u} w_i, w_i = 1/max(φ_i, 1)^γ "
                               "(docs/PROTOCOLS.md §11)"))
register_metric(Metric("ips_ndcg", per_user=True, higher_is_better=True, needs=_IPS_NEEDS, compute=_ips_ndcg,
                       formula="Σ_{r ≤ K, L_r ∈ T_u} w_{L_r} d_r ÷ Σ_{r ≤ min(K, |T_u|)} w_(r) d_r, T_u's "
                               "weights sorted descending (docs/PROTOCOLS.md §11)"))
register_metric(Metric("coverage", per_user=False, higher_is_better=True, needs=frozenset({"topk"}),
                       compute=_coverage,
                       formula="|∪_u L_u@K| / n_items (share of the catalogue some user is shown)"))


# --------------------------------------------------------------------------- computing them
def metric_inputs(result, popularity: np.ndarray | None = None,
                  propensity: np.ndarray | None = None) -> MetricInputs:
    """`MetricInputs` of an ``EvalResult`` (needs its ``truth``), with the item-side arrays given."""
    if result.truth is None:
        raise ValueError("the evaluation has no truth matrix: metrics need the held-out items")
    def as_f64(a):
        return None if a is None else np.asarray(a, dtype=np.float64)

    return MetricInputs(result.topk, result.hits, result.n_truth, result.users.cpu().numpy().astype(np.int64),
                        result.truth, int(result.truth.n_items), as_f64(popularity), as_f64(propensity))


def compute_metrics(inp: MetricInputs, ks: Sequence[int],
                 only: Sequence[str] | None = None) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    """Every registered test metric with a ``compute`` (not the evaluator's) whose needs ``inp`` has.

    Returns (``{"name@K": value}`` for ``metrics.json``: per-user metrics
    averaged over the users (exactly rounded), global ones as computed;
    ``{"name@K": float64 [n]}``: the per-user values, for ``per_user.parquet``).
    ``only`` restricts to those keys.  Metrics whose needs are missing (IPS
    without ``train.ips_gamma``) are left out.
    """
    means: dict[str, float] = {}
    per_user: dict[str, np.ndarray] = {}
    for key, entry in METRICS.items():
        if (entry.compute is None or entry.section != "test" or (only is not None and key not in only)
                or not all(inp.has(need) for need in entry.needs)):
            continue
        for k, values in entry.compute(inp, ks).items():
            column = f"{entry.name}@{k}"
            if entry.per_user:
                per_user[column] = np.asarray(values, dtype=np.float64)
                means[column] = _fsum_mean(per_user[column])
            else:
                means[column] = float(values)
    return means, per_user
