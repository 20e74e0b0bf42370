"""Popularity fairness of top-K recommendations (docs/PROTOCOLS.md §5).

Everything is computed from the evaluator's top-K matrix (``EvalResult.topk``,
``[n_eval, K_max]`` item ids, −1 = padding, ignored), its hit matrix and the
training item popularity, vectorised on the device with ``bincount``/scatter.

Definitions used here (φ(i) = training interaction count of item i, L_u the
top-K list of user u without padding, U the evaluated users, G groups):

- **Groups** (``popularity_groups``, defined in `analysis.popularity` with
  every other popularity notion): items sorted ascending by φ, cut into G
  groups of ≈ equal interactions (``mode="interactions"``, the default: group
  0 = many tail items, group G−1 = few head items) or equal item counts
  (``mode="items"``).
- **Recall@K(g)** = mean_u |L_u ∩ T_u ∩ g| / |T_u|;  **NDCG@K(g)** = mean_u
  (Σ_{r ≤ K, L_r ∈ T_u ∩ g} 1/log2(r+1)) / IDCG_u(K). Both sum over g to the
  evaluator's Recall@K / NDCG@K.
- **Conditional recall** (``recall_cond``, Zhu et al. 2020's P(R@K | g, y=1)) =
  Σ_u |L_u ∩ T_u ∩ g| / Σ_u |T_u ∩ g|  (NaN for a group without test items).
- **Recommendation rate** (``rec_rate``, Zhu et al.'s P(R@K | g)) =
  Σ_u |L_u ∩ g| / Σ_u |g \\ P_u| with P_u the user's training items (when the
  training matrix is given; otherwise the denominator is |U| · |g|).
- **ARP** = mean_u mean_{i ∈ L_u} φ(i) (raw counts). **APLT** = mean_u
  |L_u ∩ tail| / |L_u|, tail = `analysis.popularity.long_tail_mask` (every
  item outside the head covering 80 % of the interactions).  Users with an
  empty L_u are left out of both means.
- **exposure_gini** (was ``gini``): inequality of item exposure. c_i = number
  of top-K lists containing item i, for all n_items (unrecommended items count
  as 0), sorted ascending: Σ_j (2j − n − 1) c_(j) / (n Σ c), j = 1..n. 0 for
  uniform exposure, (n−1)/n when one item takes all exposure (higher = more
  concentrated).
- **Coverage** = |∪_u L_u| / n_items.
- **recall_cond_cv** (was ``pop_reo``) = std / mean over the G groups of the
  per-group recall passed in (``fairness_report`` passes the conditional
  recall ``recall_cond``, Zhu et al.'s P(R@K | g, y=1));
  **rec_rate_cv** (was ``pop_rsp``) = std / mean over the G groups of the
  recommendation rate ``rec_rate``. Population std (ddof = 0); groups whose
  value is undefined (NaN: no items, no test items, no candidates) are left
  out; 0 when every value is 0 (e.g. a model with no hit at all), NaN only
  when no group is defined.

The field's names, with the field's conventions (Elliot, Anelli et al. 2021;
the side-by-side table with sources is ``docs/METRICS.md``):

- **elliot_gini** = 1 − Σ_j (2j − n − 1) c_(j) / ((n − 1) Σ c): Elliot's
  ``Gini`` (a diversity score: 1 for uniform exposure, 0 when one item takes
  all) = 1 − exposure_gini · n / (n − 1).  NaN for n < 2 or no exposure.
- **elliot_pop_reo** / **elliot_pop_rsp**: Elliot's ``PopREO`` / ``PopRSP``, the
  same std / mean (ddof = 0) over *two* groups, the short head (the most popular
  items covering 80 % of the training interactions,
  `analysis.popularity.short_head_mask`) and the long tail (the rest):
  PopREO of the conditional recall Σ_u |L_u ∩ T_u ∩ g| / Σ_u |T_u ∩ g|, PopRSP
  of the rate Σ_u |L_u ∩ g| / Σ_u |g \\ P_u|.  As in Elliot, NaN when a group's
  rate is undefined (0/0) or both rates are 0 (no value is skipped).  Users:
  the evaluated users (non-empty T_u); test and training items are disjoint.

Renamed keys (``RENAMED_METRICS``): run folders and stores written before the
rename still load through `migrate_metric_names`.
"""
from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from analysis.popularity import GROUP_MODES, as_counts, head_groups, long_tail_mask, popularity_groups
from rankrobust.data.interactions import Interactions
from rankrobust.data.popularity import item_popularity
from rankrobust.evaluate import EvalResult, truth_membership
from rankrobust.metrics import PROBE_K, Metric, ndcg_discount, register_metric

__all__ = [
    "GROUP_MODES",  # re-exported from analysis.popularity (kept for old imports)
    "popularity_groups",  # re-exported from analysis.popularity
    "long_tail_mask",  # re-exported from analysis.popularity
    "group_metrics",
    "popularity_metrics",
    "elliot_popularity_metrics",
    "exposure_gini",
    "elliot_gini",
    "gini",  # the old name of exposure_gini (kept for old imports)
    "RENAMED_METRICS",
    "FAIRER",
    "migrate_metric_names",
    "fairness_report",
    "fairness_table",
    "report_to_long",
    "format_group_table",
]


#: metric keys renamed in issue 23 (old name → new): the old names collided with the field's (docs/METRICS.md)
RENAMED_METRICS = {"gini": "exposure_gini", "pop_reo": "recall_cond_cv", "pop_rsp": "rec_rate_cv"}
#: the metrics.json section (and store column prefix) the fairness probe writes
FAIRNESS_SECTION = "fairness"
#: which way each summary metric is fairer to unpopular items: +1 higher, −1 lower (docs/METRICS.md)
FAIRER = {"aplt": +1, "coverage": +1, "elliot_gini": +1, "arp": -1, "exposure_gini": -1, "recall_cond_cv": -1,
          "rec_rate_cv": -1, "elliot_pop_reo": -1, "elliot_pop_rsp": -1}
#: the formula of each summary metric, one line (the module docstring has the details)
FAIRNESS_FORMULAS = {
    "aplt": "mean_u |L_u ∩ long tail| / |L_u|", "coverage": "|∪_u L_u| / n_items at the probe's K",
    "elliot_gini": "Elliot's Gini diversity of item exposure (1 = uniform)", "arp": "mean_u mean_{i ∈ L_u} φ(i)",
    "exposure_gini": "Gini of item exposure (0 = uniform)",
    "recall_cond_cv": "std / mean over popularity groups of the conditional recall",
    "rec_rate_cv": "std / mean over popularity groups of the recommendation rate",
    "elliot_pop_reo": "Elliot's PopREO (head vs tail conditional recall)",
    "elliot_pop_rsp": "Elliot's PopRSP (head vs tail recommendation rate)"}
# the fairness probe's summary metrics are global (one value per run, over every user's list), in the registry
for _name, _sign in FAIRER.items():
    register_metric(Metric(_name, per_user=False, higher_is_better=_sign > 0, needs=frozenset({"topk", "truth",
                                                                                                "popularity"}),
                           formula=FAIRNESS_FORMULAS[_name], cutoffs=PROBE_K, section=FAIRNESS_SECTION),
                    replace=True)


def _gini_sum(exposure: np.ndarray | Tensor) -> tuple[float, int, float]:
    """(Σ_j (2j − n − 1) c_(j) over the ascending sort, n, Σ c) of a non-negative exposure vector."""
    c = torch.as_tensor(exposure).to(torch.float64).flatten()
    n = c.numel()
    s = float(c.sum()) if n else 0.0
    if n == 0 or s == 0.0:
        return float("nan"), n, s
    cs, _ = torch.sort(c)
    j = torch.arange(1, n + 1, dtype=torch.float64, device=c.device)
    return float(((2 * j - n - 1) * cs).sum()), n, s


def exposure_gini(exposure: np.ndarray | Tensor) -> float:
    """Inequality (Gini index) of a non-negative exposure vector [n] (all items included).

    ``Σ_j (2j − n − 1) c_(j) / (n Σ c)`` over the ascending sort, j = 1..n;
    0 for uniform exposure, (n−1)/n when one entry holds everything (higher =
    more concentrated); NaN for an all-zero vector.  Elliot's ``Gini`` is the
    other direction and normalisation: `elliot_gini`.
    """
    num, n, s = _gini_sum(exposure)
    return num / (n * s) if s else float("nan")


#: the old name of `exposure_gini`
gini = exposure_gini


def elliot_gini(exposure: np.ndarray | Tensor) -> float:
    """Elliot's ``Gini`` of a non-negative exposure vector [n] (all items included): a diversity score.

    ``1 − Σ_j (2j − n − 1) c_(j) / ((n − 1) Σ c)`` over the ascending sort,
    j = 1..n: 1 for uniform exposure, 0 when one entry holds everything;
    equals 1 − exposure_gini · n / (n − 1).  NaN for n < 2 or an all-zero vector.
    """
    num, n, s = _gini_sum(exposure)
    return 1.0 - num / ((n - 1) * s) if s and n > 1 else float("nan")


def _rel_std(values: np.ndarray) -> float:
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    if len(v) == 0:
        return float("nan")
    if v.mean() == 0:  # all values 0 (they are non-negative): no disparity
        return 0.0
    return float(v.std() / v.mean())


def _elliot_cv(values: np.ndarray) -> float:
    """np.std / np.mean of all values, as Elliot computes PopREO / PopRSP: NaN propagates, 0/0 is NaN."""
    v = np.asarray(values, dtype=np.float64)
    if len(v) == 0 or not np.all(np.isfinite(v)) or v.mean() == 0:
        return float("nan")
    return float(v.std() / v.mean())


def migrate_metric_names(obj):
    """Old fairness metric names → new ones (`RENAMED_METRICS`), for anything written before the rename.

    - a dict (a metrics.json ``fairness`` section, a ``fairness_report``
      summary): renamed keys (a new key already present wins);
    - a long fairness table (``fairness_table``: a ``metric`` column): renamed values;
    - a results store (columns ``fairness.<name>``): renamed columns; where
      one store mixes old and new runs, the new column is filled from the old.

    Anything else (or nothing to rename) is returned unchanged; never modified in place.
    """
    if isinstance(obj, dict):
        out = {}
        for key, value in obj.items():
            new = RENAMED_METRICS.get(key, key)
            if new != key and new in obj:
                continue
            out[new] = value
        return out
    if isinstance(obj, pd.DataFrame):
        if "metric" in obj.columns and obj["metric"].isin(list(RENAMED_METRICS)).any():
            return obj.assign(metric=obj["metric"].replace(RENAMED_METRICS))
        pairs = {f"{FAIRNESS_SECTION}.{old}": f"{FAIRNESS_SECTION}.{new}" for old, new in RENAMED_METRICS.items()}
        present = {old: new for old, new in pairs.items() if old in obj.columns}
        if not present:
            return obj
        out = obj.copy()
        for old, new in present.items():
            out[new] = out[new].combine_first(out[old]) if new in out.columns else out[old]
        return out.drop(columns=list(present))
    return obj


def _truth_keys(truth: Interactions, device: torch.device) -> Tensor:
    u, i = truth.to_pairs()
    return torch.as_tensor(u * truth.n_items + i, device=device)


def _rows_group_counts(mat: Interactions, users: np.ndarray, groups: Tensor, n_groups: int) -> Tensor:
    """[n_groups] number of (u, i) pairs of ``mat`` with u in ``users``, per group of i."""
    starts, ends = mat.indptr[users], mat.indptr[users + 1]
    lens = ends - starts
    offs = np.arange(int(lens.sum()), dtype=np.int64) - np.repeat(np.cumsum(lens) - lens, lens)
    items = torch.as_tensor(mat.indices[np.repeat(starts, lens) + offs], device=groups.device)
    return torch.bincount(groups[items], minlength=n_groups)[:n_groups]


def group_metrics(
    result: EvalResult | Tensor,
    groups: Tensor | np.ndarray,
    k: int,
    *,
    users: Tensor | np.ndarray | None = None,
    truth: Interactions | None = None,
    item_counts: np.ndarray | Tensor | None = None,
    train: Interactions | None = None,
    n_groups: int | None = None,
) -> pd.DataFrame:
    """Per-group accuracy and exposure at cutoff ``k`` (one row per group).

    Args:
        result: an ``EvalResult`` (uses its ``topk``, ``hits``, ``users``,
            ``truth``), or a top-K LongTensor [n, ≥k] (then ``users`` [n] and
            ``truth`` are required; −1 entries are padding).
        groups: LongTensor [n_items] group id per item (``popularity_groups``).
        k: cutoff.  With an ``EvalResult`` it must be ≤ the largest K evaluated
            (``result.ks``); with a raw top-K it is clipped to the width of
            ``topk`` only where that width is ``n_items`` (every item ranked).
            A cutoff the evaluation did not compute raises ValueError rather
            than reporting top-K_max numbers under the name @k.
        item_counts: [n_items] training popularity, for the group's
            interaction totals (default: from ``train`` if given, else zeros).
        train: training matrix; makes ``rec_rate`` exclude each user's own
            training items from its candidates (Zhu et al.).
        n_groups: number of groups (default ``groups.max() + 1``).

    Returns:
        DataFrame with columns ``group``, ``n_items``, ``n_interactions``,
        ``interaction_share``, ``pop_min``, ``pop_max``, ``n_truth`` (test pairs
        in g), ``n_hits``, ``n_recs`` (top-K slots holding items of g),
        ``rec_share`` (n_recs / all slots), ``candidates``, ``rec_rate``
        (n_recs / candidates), ``recall`` and ``ndcg`` (contributions that sum
        to Recall@K / NDCG@K), ``recall_cond`` (n_hits / n_truth). See the
        module docstring for the formulas.
    """
    if isinstance(result, EvalResult):
        topk, users_t, truth = result.topk, result.users, result.truth
        if truth is None:
            raise ValueError("EvalResult has no truth; pass a top-K tensor with users= and truth=")
        hits_full = result.hits
    else:
        if users is None or truth is None:
            raise ValueError("with a raw top-K tensor, pass users= and truth=")
        topk = result
        users_t = torch.as_tensor(users, device=topk.device)
        hits_full = None
    device = topk.device
    groups = torch.as_tensor(groups, device=device).to(torch.int64)
    G = int(n_groups if n_groups is not None else (int(groups.max()) + 1 if groups.numel() else 1))
    n_items = truth.n_items
    if groups.numel() != n_items:
        raise ValueError(f"groups has {groups.numel()} entries, expected n_items = {n_items}")
    if isinstance(result, EvalResult) and int(k) > max(result.ks):
        raise ValueError(f"cutoff k = {k} was not evaluated (this evaluation has ks = {list(result.ks)}); "
                         f"use one of them, e.g. the run's train.metric cutoff")
    if int(k) > topk.shape[1] and topk.shape[1] < n_items:
        raise ValueError(f"cutoff k = {k} is wider than the top-K matrix ({topk.shape[1]} columns of {n_items} "
                         f"items)")
    kk = min(int(k), topk.shape[1])
    top = topk[:, :kk]
    valid = top >= 0
    if hits_full is None:
        hits = truth_membership(_truth_keys(truth, device), n_items, users_t, top)
    else:
        hits = hits_full[:, :kk] & valid
    users_np = users_t.cpu().numpy().astype(np.int64)
    n_eval = len(users_np)
    n_truth_u = torch.as_tensor(truth.user_counts()[users_np], device=device)
    if n_eval and int(n_truth_u.min()) == 0:
        raise ValueError("every evaluated user needs a non-empty truth row")

    dt = torch.float32 if device.type == "mps" else torch.float64
    g = groups[top.clamp_min(0)].flatten()
    hf = hits.to(dt)
    # recall / NDCG contributions
    disc = ndcg_discount(kk, device, dt)
    idcg_cum = disc.cumsum(0) if kk else torch.ones(1, device=device, dtype=dt)
    ideal_len = torch.clamp(n_truth_u, max=max(kk, 1)).clamp_min(1) - 1
    idcg = idcg_cum[ideal_len]
    w_rec = (hf / n_truth_u.to(dt).unsqueeze(1)).flatten()
    w_dcg = (hf * disc / idcg.unsqueeze(1)).flatten()
    # contributions are means over the evaluated users: with none they are undefined (NaN, as the totals), never 0
    denom = n_eval if n_eval else float("nan")
    recall = torch.bincount(g, weights=w_rec, minlength=G)[:G] / denom
    ndcg = torch.bincount(g, weights=w_dcg, minlength=G)[:G] / denom
    n_hits = torch.bincount(g, weights=hf.flatten(), minlength=G)[:G]
    n_recs = torch.bincount(g, weights=valid.to(dt).flatten(), minlength=G)[:G]
    # item side
    g_items = torch.bincount(groups, minlength=G)[:G].to(dt)
    if item_counts is None:
        item_counts = item_popularity(train, "seen") if train is not None else np.zeros(n_items, np.int64)
    ic = as_counts(item_counts, device)
    n_inter = torch.bincount(groups, weights=ic.to(dt), minlength=G)[:G]
    big = torch.iinfo(torch.int64).max
    pop_min = torch.full((G,), big, dtype=torch.int64, device=device).scatter_reduce(0, groups, ic, "amin")
    pop_max = torch.full((G,), -1, dtype=torch.int64, device=device).scatter_reduce(0, groups, ic, "amax")
    # truth and candidates per group over the evaluated users
    n_truth_g = _rows_group_counts(truth, users_np, groups, G).to(dt)
    cand = n_eval * g_items
    if train is not None:
        cand = cand - _rows_group_counts(train, users_np, groups, G).to(dt)

    cols = {
        "n_items": g_items, "n_interactions": n_inter, "pop_min": pop_min, "pop_max": pop_max,
        "n_truth": n_truth_g, "n_hits": n_hits, "n_recs": n_recs, "candidates": cand,
        "recall": recall, "ndcg": ndcg,
    }
    host = {name: t.cpu().numpy() for name, t in cols.items()}
    df = pd.DataFrame({"group": np.arange(G, dtype=np.int64)})
    for name in ("n_items", "n_interactions", "n_truth", "n_hits", "n_recs", "candidates"):
        df[name] = host[name].round().astype(np.int64)
    tot_inter = host["n_interactions"].sum()
    df.insert(3, "interaction_share", host["n_interactions"] / tot_inter if tot_inter > 0 else np.nan)
    empty = host["n_items"] == 0
    df.insert(4, "pop_min", np.where(empty, -1, host["pop_min"]).astype(np.int64))
    df.insert(5, "pop_max", host["pop_max"].astype(np.int64))
    tot_recs = host["n_recs"].sum()
    with np.errstate(divide="ignore", invalid="ignore"):
        df.insert(df.columns.get_loc("n_recs") + 1, "rec_share", host["n_recs"] / tot_recs if tot_recs > 0 else np.nan)
        df["rec_rate"] = np.where(host["candidates"] > 0, host["n_recs"] / np.maximum(host["candidates"], 1), np.nan)
        df["recall"] = host["recall"].astype(np.float64)
        df["ndcg"] = host["ndcg"].astype(np.float64)
        df["recall_cond"] = np.where(host["n_truth"] > 0, host["n_hits"] / np.maximum(host["n_truth"], 1), np.nan)
    return df


def popularity_metrics(
    topk: Tensor,
    item_counts: np.ndarray | Tensor,
    groups: Tensor | np.ndarray,
    k: int,
    per_group_recall: Sequence[float] | np.ndarray | Tensor,
    *,
    group_candidates: Sequence[float] | np.ndarray | None = None,
    head_share: float = 0.8,
    n_groups: int | None = None,
) -> dict[str, float]:
    """Popularity-bias summary of top-K lists.

    Args:
        topk: LongTensor [n_users, ≥k] item ids (−1 = padding, ignored); the
            first ``k`` columns are used.
        item_counts: [n_items] training popularity φ.
        groups: [n_items] popularity group per item.
        per_group_recall: [G] per-group recall used for ``recall_cond_cv`` (NaN =
            undefined group, skipped).
        group_candidates: [G] denominators of the recommendation rate (Zhu et
            al.: Σ_u |g \\ P_u|); default |g| (the constant |U| cancels).
        head_share: interaction share covered by the head (0.8).

    Returns:
        ``{"arp", "aplt", "exposure_gini", "elliot_gini", "coverage",
        "recall_cond_cv", "rec_rate_cv"}`` as floats, with the definitions of
        the module docstring (the two-group Elliot PopREO / PopRSP need the test
        set and the training matrix: `elliot_popularity_metrics`).
    """
    device = topk.device
    c = as_counts(item_counts, device)
    n_items = c.numel()
    groups = torch.as_tensor(groups, device=device).to(torch.int64)
    G = int(n_groups if n_groups is not None else (int(groups.max()) + 1 if groups.numel() else 1))
    dt = torch.float32 if device.type == "mps" else torch.float64
    top = topk[:, : min(int(k), topk.shape[1])]
    valid = top >= 0
    safe = top.clamp_min(0)
    vf = valid.to(dt)
    n_valid = vf.sum(1)
    has = n_valid > 0
    tail = long_tail_mask(c, head_share)
    arp_u = (c[safe].to(dt) * vf).sum(1) / n_valid.clamp_min(1)
    aplt_u = (tail[safe].to(dt) * vf).sum(1) / n_valid.clamp_min(1)
    exposure = torch.bincount(safe.flatten(), weights=vf.flatten(), minlength=n_items)[:n_items]
    recs_g = torch.bincount(groups[safe].flatten(), weights=vf.flatten(), minlength=G)[:G]
    size_g = torch.bincount(groups, minlength=G)[:G].to(dt)
    n_has = has.sum()
    out = torch.stack([
        torch.where(has, arp_u, 0).sum() / n_has.clamp_min(1),
        torch.where(has, aplt_u, 0).sum() / n_has.clamp_min(1),
        (exposure > 0).sum().to(dt) / max(n_items, 1),
        n_has.to(dt),
    ]).cpu().numpy()
    if group_candidates is None:
        cand = size_g.cpu().numpy()
    else:
        cand = np.asarray(group_candidates, dtype=np.float64)
    recs = recs_g.cpu().numpy()
    with np.errstate(divide="ignore", invalid="ignore"):
        rate = np.where(cand > 0, recs / np.maximum(cand, 1e-300), np.nan)
    pgr = torch.as_tensor(per_group_recall).cpu().numpy() if isinstance(per_group_recall, Tensor) else np.asarray(per_group_recall, dtype=np.float64)
    nan = float("nan")
    return {
        "arp": float(out[0]) if out[3] > 0 else nan,
        "aplt": float(out[1]) if out[3] > 0 else nan,
        "exposure_gini": exposure_gini(exposure),
        "elliot_gini": elliot_gini(exposure),
        "coverage": float(out[2]),
        "recall_cond_cv": _rel_std(pgr),
        "rec_rate_cv": _rel_std(rate),
    }


def elliot_popularity_metrics(
    result: EvalResult,
    train: Interactions,
    k: int,
    *,
    item_counts: np.ndarray | Tensor | None = None,
    head_share: float = 0.8,
) -> tuple[pd.DataFrame, dict[str, float]]:
    """Elliot's ``PopREO`` and ``PopRSP``: two groups, the short head and the long tail.

    The groups are `analysis.popularity.head_groups` (0 = long tail, 1 = short
    head: the most popular items covering ``head_share`` of the training
    interactions ``item_counts``, default ``train.item_counts()``); the rates
    are `group_metrics`' ``recall_cond`` (Σ_u |L_u ∩ T_u ∩ g| / Σ_u |T_u ∩ g|)
    and ``rec_rate`` (Σ_u |L_u ∩ g| / Σ_u |g \\ P_u|, P_u = the user's row of
    ``train``) over the evaluated users at cutoff ``k``, from the same top-K
    matrix as every other metric here.

    Returns:
        (the two-row `group_metrics` table, ``{"elliot_pop_reo", "elliot_pop_rsp"}``):
        np.std / np.mean (ddof = 0) of the two rates, NaN when a rate is
        undefined or both are 0 (as Elliot's division gives).
    """
    counts = item_popularity(train, "seen") if item_counts is None else item_counts
    groups = head_groups(counts, head_share, device=result.topk.device)
    gdf = group_metrics(result, groups, k, item_counts=counts, train=train, n_groups=2)
    return gdf, {"elliot_pop_reo": _elliot_cv(gdf["recall_cond"].to_numpy()),
                 "elliot_pop_rsp": _elliot_cv(gdf["rec_rate"].to_numpy())}


def fairness_report(
    eval_result: EvalResult,
    train: Interactions,
    k: int = 20,
    n_groups: int = 10,
    mode: str = "interactions",
) -> tuple[pd.DataFrame, dict[str, float]]:
    """Per-group table and popularity summary of one evaluation at cutoff ``k``.

    Groups come from the training popularity (``popularity_groups``).
    ``recall_cond_cv`` summarises the conditional per-group recall
    ``recall_cond`` and ``rec_rate_cv`` the candidate-normalised ``rec_rate``
    over the ``n_groups`` groups (Zhu et al. 2020's REO / RSP with G groups);
    ``elliot_pop_reo`` / ``elliot_pop_rsp`` are the same over the two groups
    of Elliot (short head, long tail; `elliot_popularity_metrics`).

    Returns:
        (``group_metrics`` DataFrame, dict with ``arp``, ``aplt``,
        ``exposure_gini``, ``elliot_gini``, ``coverage``, ``recall_cond_cv``,
        ``rec_rate_cv``, ``elliot_pop_reo``, ``elliot_pop_rsp``, ``recall@k``
        and ``ndcg@k`` (sum of the group contributions) and ``n_users``;
        docs/METRICS.md has them side by side).
    """
    counts = item_popularity(train, "seen")
    device = eval_result.topk.device
    groups = popularity_groups(counts, n_groups, mode, device=device)
    gdf = group_metrics(eval_result, groups, k, item_counts=counts, train=train, n_groups=n_groups)
    summary = popularity_metrics(
        eval_result.topk, counts, groups, k, gdf["recall_cond"].to_numpy(),
        group_candidates=gdf["candidates"].to_numpy(), n_groups=n_groups,
    )
    summary.update(elliot_popularity_metrics(eval_result, train, k, item_counts=counts)[1])
    summary[f"recall@{k}"] = float(gdf["recall"].sum())
    summary[f"ndcg@{k}"] = float(gdf["ndcg"].sum())
    summary["n_users"] = float(eval_result.users.numel())
    return gdf, summary


#: group-table columns written to the long table (integers are cast to float).
LONG_GROUP_COLUMNS = (
    "n_items", "n_interactions", "interaction_share", "pop_min", "pop_max", "n_truth", "n_hits",
    "n_recs", "rec_share", "candidates", "rec_rate", "recall", "ndcg", "recall_cond",
)


def report_to_long(group_df: pd.DataFrame, summary: dict[str, float], k: int, mode: str, n_groups: int) -> pd.DataFrame:
    """One ``fairness_report`` in long form (see ``fairness_table`` for the columns)."""
    g = group_df.melt(id_vars=["group"], value_vars=[c for c in LONG_GROUP_COLUMNS if c in group_df],
                      var_name="metric", value_name="value")
    g.insert(0, "scope", "group")
    names = [m[: -len(f"@{k}")] if m.endswith(f"@{k}") else m for m in summary]  # "recall@20" -> "recall"
    o = pd.DataFrame({"scope": "overall", "group": -1, "metric": names, "value": list(summary.values())})
    df = pd.concat([o, g], ignore_index=True)
    df.insert(0, "mode", mode)
    df.insert(1, "n_groups", int(n_groups))
    df.insert(2, "k", int(k))
    return df.astype({"mode": str, "n_groups": np.int64, "k": np.int64, "scope": str,
                      "group": np.int64, "metric": str, "value": np.float64})


def fairness_table(
    source: pd.DataFrame | EvalResult,
    other: dict[str, float] | Interactions,
    k: int = 20,
    *,
    mode: str = "interactions",
    n_groups: int | None = None,
    ks: Iterable[int] | None = None,
    modes: Iterable[str] | None = None,
) -> pd.DataFrame:
    """Tidy long table of fairness reports, ready for ``fairness.parquet``.

    Two call forms:

    - ``fairness_table(group_df, summary, k=20, mode="interactions")``: the
      long form of one ``fairness_report`` output (``n_groups`` defaults to
      ``len(group_df)``).
    - ``fairness_table(eval_result, train, ks=(10, 20), modes=("interactions",
      "items"), n_groups=10)``: runs ``fairness_report`` for every (mode, k)
      (``ks`` defaults to ``(k,)``, ``modes`` to ``(mode,)``) and stacks them.

    Columns: ``mode`` (str, grouping mode), ``n_groups`` (int), ``k`` (int),
    ``scope`` (``"overall"`` or ``"group"``), ``group`` (int, −1 for overall
    rows), ``metric`` (str: an overall key of ``fairness_report`` with the
    ``@k`` suffix dropped — ``recall``/``ndcg`` are then the overall totals —
    or a column of ``group_metrics``), ``value`` (float64). Add run identifiers
    as columns before concatenating several runs.
    """
    if isinstance(source, pd.DataFrame):
        if not isinstance(other, dict):
            raise TypeError("fairness_table(group_df, summary, ...): summary must be the dict of fairness_report")
        return report_to_long(source, other, k, mode, int(n_groups if n_groups is not None else len(source)))
    if not isinstance(source, EvalResult) or not isinstance(other, Interactions):
        raise TypeError("fairness_table takes (group_df, summary) or (EvalResult, train Interactions)")
    G = int(n_groups if n_groups is not None else 10)
    parts = []
    for md in (modes if modes is not None else (mode,)):
        for kk in (ks if ks is not None else (k,)):
            gdf, summary = fairness_report(source, other, k=kk, n_groups=G, mode=md)
            parts.append(report_to_long(gdf, summary, kk, md, G))
    return pd.concat(parts, ignore_index=True)


def format_group_table(df: pd.DataFrame, summary: dict[str, float] | None = None) -> str:
    """A fixed-width console table of a ``group_metrics`` DataFrame (plus summary line)."""
    cols = [
        ("group", "group", "{:d}"), ("n_items", "items", "{:d}"), ("n_interactions", "inter", "{:d}"),
        ("pop_min", "pop_min", "{:d}"), ("pop_max", "pop_max", "{:d}"), ("rec_share", "rec_share", "{:.4f}"),
        ("rec_rate", "rec_rate", "{:.2e}"), ("recall", "recall", "{:.5f}"), ("ndcg", "ndcg", "{:.5f}"),
        ("recall_cond", "recall|g", "{:.5f}"),
    ]
    cols = [c for c in cols if c[0] in df]
    cells = [[h for _, h, _ in cols]]
    for _, row in df.iterrows():
        line = []
        for name, _, fmt in cols:
            v = row[name]
            if pd.isna(v):
                line.append("-")
            else:
                line.append(fmt.format(int(v)) if fmt == "{:d}" else fmt.format(float(v)))
        cells.append(line)
    sums = {"n_items": "{:d}", "n_interactions": "{:d}", "rec_share": "{:.4f}", "recall": "{:.5f}", "ndcg": "{:.5f}"}
    total = [("sum" if name == "group" else (sums[name].format(int(df[name].sum())) if sums.get(name) == "{:d}"
              else sums[name].format(float(df[name].sum())) if name in sums else "")) for name, _, _ in cols]
    cells.append(total)
    widths = [max(len(r[j]) for r in cells) for j in range(len(cols))]
    lines = ["  ".join(c.rjust(w) for c, w in zip(r, widths)) for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    lines.insert(len(lines) - 1, "  ".join("-" * w for w in widths))
    if summary:
        lines.append(", ".join(f"{key}={val:.4g}" for key, val in summary.items()))
    return "\n".join(lines)
