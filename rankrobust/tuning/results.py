"""What a tune folder found: the per-arm table of ``rankrobust tune-results`` and the study plots.

The table has, per arm: the best validation value (the objective), the test
value of that same trial shown as a label only (it played no part in choosing
it), trials complete / pruned (of which diverged: a NaN loss, counted against
the budget) / failed, the best parameters and the wall
time of its trials.  The plots are Optuna's matplotlib visualisations:
``plots/<arm>-history.png`` (optimisation history) and
``plots/<arm>-importance.png`` (parameter importance; only with at least two
complete trials and one parameter that varied).
"""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import pandas as pd

from rankrobust.config import ConfigError
from rankrobust.tuning.study import TuneDir, _optuna, counts, readable_storage, study_records

__all__ = ["TEST_LABEL", "tune_table", "format_table", "write_plots", "require_tune_folder", "read_storage"]

#: the column header of the test value: it is never used for selection
TEST_LABEL = "test (label only, not used for selection)"


def require_tune_folder(path: str | Path, storage_url: str | None = None) -> TuneDir:
    """The `TuneDir` at ``path``; ConfigError naming the fix when it holds no study (nothing is created).

    A folder of presets (``best/<arm>.yaml`` and protocol.json, no study.db, e.g. ``configs/tuned/...``) is
    refused with the study its best files name (``origin.study``): tune-results reads studies, not presets.
    """
    from rankrobust.sweeps.spec import load_tuned

    folder = TuneDir(path)
    if folder.path.is_file():
        raise ConfigError(f"{folder.path} is a file, not a tune folder: pass the folder written by "
                          f"`rankrobust tune SPEC --out DIR`")
    if storage_url is not None or folder.study_path.exists():
        return folder
    if any((folder.path / "best").glob("*.yaml")):
        origins = sorted({str(arm.origin.get("study")) for arm in load_tuned(folder.path)})
        raise ConfigError(f"{folder.path} holds tuned presets (best/<arm>.yaml), not a study; their study is "
                          f"{' and '.join(origins)}: pass the folder holding it (or the URL with --storage)")
    raise ConfigError(f"{folder.path} is not a tune folder (no {TuneDir.STUDY}); pass the folder written by "
                      f"`rankrobust tune SPEC --out DIR`")


def read_storage(folder: TuneDir, storage_url: str | None = None):
    """The folder's study storage opened for reading: a SQLite file read-only (never created); another URL as is.

    A damaged database is one ConfigError line naming it (`readable_storage`).
    """
    optuna = _optuna()
    url = storage_url or folder.storage_url
    if url.startswith("sqlite:///"):
        path = Path(url[len("sqlite:///"):])
        if not path.is_file():
            raise ConfigError(f"{path} does not exist: pass the database of `rankrobust tune --storage`")
        url, name = f"sqlite:///file:{path.absolute()}?mode=ro&uri=true", str(path)
    else:
        name = folder.storage_label(url)
    return readable_storage(lambda: optuna.storages.RDBStorage(url), name)


def _studies(folder: TuneDir, storage_url: str | None = None) -> list[tuple[str, dict[str, Any], Any]]:
    """(arm label, recorded protocol or {}, study) for every study of the folder (`study_records`)."""
    optuna = _optuna()
    storage = read_storage(folder, storage_url)
    return [(label, record.protocol or {}, optuna.load_study(study_name=label, storage=storage))
            for label, record in study_records(folder, storage).items()]


def tune_table(folder: TuneDir, storage_url: str | None = None) -> pd.DataFrame:
    """One row per arm: objective, best valid value, its test label, trial counts, best params, wall time (s)."""
    from optuna.trial import TrialState

    rows = []
    for label, record, study in _studies(folder, storage_url):
        c = counts(study)
        trials = study.get_trials(deepcopy=False)
        wall = sum((t.datetime_complete - t.datetime_start).total_seconds() for t in trials
                   if t.datetime_complete is not None and t.datetime_start is not None)
        best = study.best_trial if c["complete"] else None
        rows.append({"arm": label, "objective": record.get("objective"), "best valid": best.value if best else None,
                     TEST_LABEL: best.user_attrs.get("test_value") if best else None,
                     "trial": best.number if best else None,
                     "complete": c["complete"], "pruned": c["pruned"], "diverged": c["diverged"], "failed": c["failed"],
                     "running": sum(t.state == TrialState.RUNNING for t in trials),
                     "budget": record.get("budget"), "best params": best.params if best else {},
                     "wall s": round(wall, 1)})
    return pd.DataFrame(rows)


def format_table(table: pd.DataFrame) -> str:
    """The table as text: one line per arm, parameters as ``key=value`` with 4 significant digits."""
    if table.empty:
        return "no arm has trials yet"
    shown = table.copy()
    shown["best params"] = shown["best params"].map(
        lambda p: ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in p.items()) or "-")
    for col in ("best valid", TEST_LABEL):
        shown[col] = shown[col].map(lambda v: "-" if v is None or pd.isna(v) else f"{v:.4f}")
    shown["trial"] = shown["trial"].map(lambda v: "-" if v is None or pd.isna(v) else str(int(v)))
    shown = shown.drop(columns=[c for c in ("running", "diverged") if not (table[c] > 0).any()])
    return shown.to_string(index=False)


def write_plots(folder: TuneDir, storage_url: str | None = None) -> list[Path]:
    """Optimisation history and parameter importance per arm (``plots/``); returns the files written.

    The importance plot is skipped for an arm with fewer than two complete
    trials or no parameter that took two values.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.trial import TrialState
    from optuna.visualization import matplotlib as ovm

    written = []
    for label, _, study in _studies(folder, storage_url):
        complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if not complete:
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            plots = [("history", lambda: ovm.plot_optimization_history(study))]
            varied = {k for t in complete for k in t.params if len({repr(u.params.get(k)) for u in complete}) > 1}
            if len(complete) >= 2 and varied:
                plots.append(("importance", lambda: ovm.plot_param_importances(study)))
            for kind, make in plots:
                path = folder.plot_path(label, kind)
                path.parent.mkdir(parents=True, exist_ok=True)
                try:
                    ax = make()
                except (ValueError, RuntimeError, ZeroDivisionError):  # e.g. importance of a degenerate study
                    plt.close("all")
                    continue
                fig = ax.figure if hasattr(ax, "figure") else ax.flat[0].figure
                fig.suptitle(f"{label}", fontsize=9)
                fig.tight_layout()
                fig.savefig(path, dpi=100)
                plt.close(fig)
                written.append(path)
    return written
