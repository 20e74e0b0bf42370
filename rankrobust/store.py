"""The results store: one tidy table over all runs of a sweep, and its summaries.

``store.parquet`` has one row per run directory: every resolved config key
as a column (``loss.name``, ``noise.pos_ratio``, ``train.seed`` …), the run's
``status``, its metrics (``test.recall@20``, ``valid.ndcg@20``,
``fairness.gini`` …) and timings.  It is rebuilt from the run directories, so
it can never disagree with them.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from rankrobust import runs

MAIN_METRICS = ("test.recall@20", "test.ndcg@20")


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` → ``{"a.b": 1}``; lists become JSON strings."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, name + "."))
        elif isinstance(value, (list, tuple)):
            flat[name] = json.dumps(value)
        else:
            flat[name] = value
    return flat


def run_row(run_dir: Path) -> dict[str, Any]:
    """One store row for a run directory (status, config, metrics, timings)."""
    status = runs.read_status(run_dir)
    row: dict[str, Any] = {"cell_id": run_dir.name, "run_dir": str(run_dir), "status": status or "unfinished"}
    config_path = run_dir / "config.json"
    if config_path.exists():
        row.update(flatten(json.loads(config_path.read_text())))
    if status == runs.STATUS_DONE:
        metrics = json.loads((run_dir / "metrics.json").read_text())
        for section in ("valid", "test", "fairness", "gradient_share"):
            for key, value in (metrics.get(section) or {}).items():
                if isinstance(value, (int, float)):
                    row[f"{section}.{key}"] = value
        for key in ("best_epoch", "epochs_run", "train_seconds", "seconds_per_epoch", "wall_seconds",
                    "leaky_validation", "device"):
            row[key] = metrics.get(key)
    elif status == runs.STATUS_FAILED:
        detail = (run_dir / "status").read_text().strip().splitlines()
        row["error"] = detail[-1] if len(detail) > 1 else ""
    return row


def collect(sweep_dir: str | Path) -> pd.DataFrame:
    """The store of ``sweep_dir`` built from ``sweep_dir/runs/*`` (sorted by cell id)."""
    root = Path(sweep_dir) / "runs"
    rows = [run_row(p) for p in sorted(root.iterdir()) if p.is_dir()] if root.exists() else []
    return pd.DataFrame(rows)


def write_store(sweep_dir: str | Path) -> pd.DataFrame:
    """Rebuild ``store.parquet`` atomically and return it."""
    frame = collect(sweep_dir)
    runs.write_parquet(Path(sweep_dir) / "store.parquet", frame)
    return frame


def load_store(sweep_dir: str | Path) -> pd.DataFrame:
    """Read ``store.parquet`` of a sweep folder (or a path to the parquet itself)."""
    path = Path(sweep_dir)
    path = path if path.suffix == ".parquet" else path / "store.parquet"
    if not path.exists():
        raise FileNotFoundError(f"no results store at {path}; run `rankrobust sweep SPEC --out {path.parent}` first")
    return pd.read_parquet(path)


def grid_axes(sweep_dir: str | Path, frame: pd.DataFrame | None = None) -> list[str]:
    """The sweep's grid keys (from ``sweep.json``), falling back to columns that vary."""
    record = Path(sweep_dir) / "sweep.json"
    if record.exists():
        return [k for k in json.loads(record.read_text())["grid"]]
    if frame is None:
        return []
    config_cols = [c for c in frame.columns if c.split(".")[0] in ("data", "noise", "model", "loss", "train")]
    return [c for c in config_cols if c != "train.seed" and frame[c].nunique(dropna=False) > 1]


def summarize(frame: pd.DataFrame, axes: list[str], metrics=MAIN_METRICS) -> pd.DataFrame:
    """Mean, std and count over seeds of ``metrics`` for each cell of ``axes`` (finished runs only)."""
    done = frame[frame["status"] == runs.STATUS_DONE]
    metrics = [m for m in metrics if m in done.columns]
    if done.empty or not metrics:
        return pd.DataFrame()
    grouped = done.groupby(axes, dropna=False, sort=True)[metrics] if axes else done[metrics].groupby(lambda _: "all")
    table = grouped.agg(["mean", "std", "count"])
    return table


def format_summary(table: pd.DataFrame) -> str:
    """``mean ± std (n)`` per metric, one line per cell."""
    if table.empty:
        return "(no finished runs)"
    out = pd.DataFrame(index=table.index)
    for metric in table.columns.get_level_values(0).unique():
        m, s, n = table[(metric, "mean")], table[(metric, "std")].fillna(0.0), table[(metric, "count")]
        out[metric] = [f"{a:.4f} ± {b:.4f} (n={int(c)})" if c > 1 else f"{a:.4f} (n=1)" for a, b, c in zip(m, s, n)]
    return out.to_string()


def holm(pvalues: np.ndarray) -> np.ndarray:
    """Holm–Bonferroni adjusted p-values (monotone, capped at 1)."""
    p = np.asarray(pvalues, dtype=float)
    order = np.argsort(p)
    m = len(p)
    adjusted = np.empty(m)
    running = 0.0
    for rank, idx in enumerate(order):
        running = max(running, (m - rank) * p[idx])
        adjusted[idx] = min(1.0, running)
    return adjusted


def compare_losses(frame: pd.DataFrame, axes: list[str], a: str, b: str, metric: str = "ndcg@20",
                   loss_key: str = "loss.name") -> pd.DataFrame:
    """Paired test of loss ``a`` vs ``b`` across users, per cell and seed, Holm-corrected across cells.

    For every cell of the other axes and every seed present for both losses,
    the per-user ``metric`` of the two runs (same users: same data and seed)
    are paired and compared with the Wilcoxon signed-rank test (two-sided).
    """
    done = frame[(frame["status"] == runs.STATUS_DONE) & frame[loss_key].isin([a, b])]
    others = [x for x in axes if x != loss_key] + ["train.seed"]
    rows = []
    for key, group in done.groupby(others, dropna=False, sort=True):
        by_loss = {row[loss_key]: row["run_dir"] for _, row in group.iterrows()}
        if a not in by_loss or b not in by_loss:
            continue
        ua = pd.read_parquet(Path(by_loss[a]) / "per_user.parquet")[["user", metric]]
        ub = pd.read_parquet(Path(by_loss[b]) / "per_user.parquet")[["user", metric]]
        paired = ua.merge(ub, on="user", suffixes=(f"_{a}", f"_{b}"))
        xa, xb = paired[f"{metric}_{a}"].to_numpy(), paired[f"{metric}_{b}"].to_numpy()
        diff = xb - xa
        p = float(stats.wilcoxon(xa, xb).pvalue) if np.any(diff != 0) else 1.0
        key = key if isinstance(key, tuple) else (key,)
        rows.append({**dict(zip(others, key)), "users": len(paired), f"{metric} {a}": xa.mean(),
                     f"{metric} {b}": xb.mean(), "diff": diff.mean(), "p": p})
    table = pd.DataFrame(rows)
    if not table.empty:
        table["p_holm"] = holm(table["p"].to_numpy())
    return table
