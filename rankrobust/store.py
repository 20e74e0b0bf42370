"""The results store: one tidy table over all runs of a sweep, and its summaries.

``store.parquet`` has one row per run directory: every resolved config key
as a column (``loss.name``, ``noise.pos_ratio``, ``train.seed`` …), the run's
``status``, its metrics (``test.recall@20``, ``valid.ndcg@20``,
``fairness.gini`` …) and timings.  It is rebuilt from the run directories, so
it can never disagree with them.

Results use exactly the cells of the sweep's recorded spec (``sweep.json``):
`load_store` leaves out *stale* rows (run folders of cells no longer in the
spec: a removed seed or grid value) and *outdated* rows (a cell whose run was
made with another config, or from data files whose content differs from what
the last ``rankrobust sweep`` found: the spec or the data changed and the
sweep has not redone the cell yet);
``include_stale=True`` returns every row with ``stale`` / ``outdated`` columns.
A run folder whose files cannot be read has status ``corrupt`` and its
reason in ``error``.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from rankrobust import runs
from rankrobust.config import SECTIONS, OutdatedConfig, closest
from rankrobust.data.identity import recorded_digest
from rankrobust.data.registry import files_label
from rankrobust.metrics import METRICS, RUN_KS, parse_metric
from rankrobust.noise import outdated_noise_protocol
from rankrobust.runs import RunDir, RunFolderError, SweepDir, config_hash
from rankrobust.stats import (difference_of_drops, format_ci, hierarchical_bootstrap_ci, holm_family,
                              paired_seed_comparison, per_user_pooled_test, seed_mean_ci)


# --------------------------------------------------------------------------- column names
# The store's column names, written once: the store, the figures, the CLI and the analysis layer use these
# constants, never the strings.  A configuration column is ``section.key`` of config.json (`flatten`); a metric
# column is ``split.name@K`` (``test.recall@20``) or ``probe.key`` (``fairness.aplt``).
#: per run: the sweep cell, the run folder, the run's status (`runs.STATUS_DONE` …) and, when it failed, why
CELL_ID, RUN_DIR, STATUS, ERROR = "cell_id", "run_dir", "status", "error"
#: run identity (`load_store(include_stale=True)`): the canonical config's hash, a cell no longer in the spec, a
#: run of another config or data than the cell's, and why its config is not one this version makes
CONFIG_HASH, STALE, OUTDATED, OUTDATED_CONFIG = "config_hash", "stale", "outdated", "outdated_config"
#: how training ended: why it stopped (`rankrobust.train.STOP_REASONS`), epochs trained, the selected epoch, valid = test
STOP_REASON, EPOCHS_RUN, BEST_EPOCH, LEAKY_VALIDATION = "stop_reason", "epochs_run", "best_epoch", "leaky_validation"
#: configuration columns read by name across layers
LOSS, MODEL, SEED, DATASET = "loss.name", "model.name", "train.seed", "data.name"
EPOCHS, SELECTION_METRIC, BATCHING = "train.epochs", "train.metric", "train.batching"
NOISE_POS_RATIO, NOISE_POS_KIND = "noise.pos_ratio", "noise.pos_kind"
NOISE_NEG_PROB, NOISE_NEG_POOL, NOISE_HELDOUT_FRACTION = "noise.neg_prob", "noise.neg_pool", "noise.heldout_fraction"
NOISE_SEED = "noise.seed"


def selection_cutoff(frame: pd.DataFrame, default: int = 20) -> int:
    """The cutoff K of the runs' validation metric (``train.metric``, e.g. ``recall@10`` → 10).

    ``default`` when the store has no such column; the most common K when runs differ.
    """
    if SELECTION_METRIC not in frame or frame[SELECTION_METRIC].dropna().empty:
        return default
    ks = frame[SELECTION_METRIC].dropna().astype(str).str.partition("@")[2]
    ks = ks[ks.str.isdigit()]
    return int(ks.mode().iloc[0]) if len(ks) else default


def main_metrics(frame: pd.DataFrame) -> tuple[str, str]:
    """Test Recall@K and NDCG@K at the runs' selection cutoff (`selection_cutoff`): what `results` shows."""
    k = selection_cutoff(frame)
    return (f"test.recall@{k}", f"test.ndcg@{k}")


def computed_cutoffs(frame: pd.DataFrame, metrics: tuple[str, ...] = ("recall", "ndcg"),
                     split: str = "test") -> list[int]:
    """The cutoffs K at which every finished run of ``frame`` has ``split.<metric>@K`` for each of ``metrics``."""
    done = frame[frame[STATUS] == runs.STATUS_DONE] if STATUS in frame else frame
    found = {int(c.rsplit("@", 1)[1]) for c in frame.columns
             if c.startswith(f"{split}.") and "@" in c and c.rsplit("@", 1)[1].isdigit()}
    return sorted(k for k in found if all(f"{split}.{m}@{k}" in done and done[f"{split}.{m}@{k}"].notna().all()
                                          for m in metrics))


def missing_cutoff(frame: pd.DataFrame, k: int, metrics: tuple[str, ...] = ("recall", "ndcg"),
                   split: str = "test") -> str | None:
    """None when every finished run has ``split.<metric>@k`` for each of ``metrics``; else what is missing.

    The text names the columns, how many runs lack them, one of those runs,
    and the cutoffs every run did compute (`computed_cutoffs`), so a figure
    or table never shows a cutoff the runs did not compute (``train.ks``).
    """
    done = frame[frame[STATUS] == runs.STATUS_DONE] if STATUS in frame else frame
    cols = [f"{split}.{m}@{k}" for m in metrics]
    lacking = pd.Series(False, index=done.index)
    for col in cols:
        lacking |= done[col].isna() if col in done else True
    if done.empty or not lacking.any():
        return None
    example = done.loc[lacking, CELL_ID].iloc[0] if CELL_ID in done else "?"
    ks = computed_cutoffs(frame, metrics, split)
    return (f"{int(lacking.sum())} of {len(done)} finished runs did not compute {' and '.join(cols)} (e.g. "
            f"{example}; K = {k} is not in their train.ks); cutoffs every run computed: "
            f"{', '.join(map(str, ks)) if ks else 'none'}")


def stored_metrics(frame: pd.DataFrame, per_user: bool | None = None) -> list[str]:
    """The registered test metrics the store has a column of, as ``name@K`` (``ndcg@20``), in registry order.

    ``per_user`` True / False keeps only per-user / global metrics (`rankrobust.metrics.Metric.per_user`);
    the cutoffs are those some run computed (``test.name@K`` columns with a value).
    """
    ks = sorted({int(c.rsplit("@", 1)[1]) for c in frame.columns
                 if str(c).startswith("test.") and str(c).rsplit("@", 1)[-1].isdigit()})
    return [f"{key}@{k}" for key, entry in METRICS.items() if entry.section == "test" and entry.cutoffs == RUN_KS
            and (per_user is None or entry.per_user == per_user) for k in ks
            if entry.column(k) in frame and frame[entry.column(k)].notna().any()]


#: status of a run folder whose config.json or metrics.json cannot be read
STATUS_CORRUPT = "corrupt"
#: columns every loaded store has, even when empty
BASE_COLUMNS = (CELL_ID, RUN_DIR, STATUS)


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


#: metrics.json keys copied into the store as they are
RUN_KEYS = (BEST_EPOCH, EPOCHS_RUN, "train_seconds", "seconds_per_epoch", "wall_seconds", LEAKY_VALIDATION,
            "device", "group_size_mean")
#: metrics.json sections whose text entries are store columns too (where a sweep cell ran: host, Ray node, folder)
TEXT_SECTIONS = ("placement",)
#: `stop_reason` of a run that stopped at ``train.epochs``: not converged (shown as ``capped`` by `summarize`)
EPOCH_CAP = "epoch_cap"
#: `stop_reason` of a run that stopped when ``train.time_limit`` ran out
TIME_LIMIT = "time_limit"


def stop_reason(metrics: dict[str, Any], epochs_cap: Any) -> str | None:
    """Why a finished run stopped training (`rankrobust.train.STOP_REASONS`), also for runs that predate the record.

    ``metrics``: the run's ``metrics.json``; ``epochs_cap``: its config
    ``train.epochs``.  The recorded ``stop_reason`` when there is one; for
    older runs it is derived: ``stopped_early`` → ``"early_stopping"``, else
    ``epochs_run == train.epochs`` → ``"epoch_cap"``, else ``"time_limit"``
    (the only other way those runs could stop).  None when the run records
    neither (``epochs_run`` missing).  The one place the store learns it.
    """
    recorded = metrics.get(STOP_REASON)
    if isinstance(recorded, str) and recorded:
        return recorded
    if metrics.get("stopped_early"):
        return "early_stopping"
    epochs_run = metrics.get(EPOCHS_RUN)
    if epochs_run is None:
        return None
    if epochs_cap is not None and not pd.isna(epochs_cap) and int(epochs_run) == int(epochs_cap):
        return EPOCH_CAP
    return TIME_LIMIT


def origin_columns(origin: dict[str, Any] | None) -> dict[str, Any]:
    """Store columns saying where a run's tuned settings came from (its ``origin.json``); {} for an untuned run.

    ``origin.arm``, ``origin.file`` (the best file), ``origin.study``,
    ``origin.trial``, ``origin.objective`` and ``origin.value`` (the
    validation value that selected the settings).
    """
    if not isinstance(origin, dict):
        return {}
    study = origin.get("origin") if isinstance(origin.get("origin"), dict) else {}
    return {"origin.arm": origin.get("arm"), "origin.file": origin.get("file"), "origin.study": study.get("study"),
            "origin.trial": study.get("trial"), "origin.objective": study.get("objective"),
            "origin.value": study.get("value")}


def run_row(run_dir: str | Path | RunDir) -> dict[str, Any]:
    """One store row for a run directory: status, config keys, metrics, timings, warnings.

    Every numeric entry of every section of ``metrics.json`` (``valid``,
    ``test``, ``most_popular`` and the probes' sections such as ``fairness``
    or ``gradient_accounting``) becomes a column ``section.key``;
    ``stop_reason`` says why training ended (`stop_reason`: early stopping,
    epoch cap, time limit or a probe);
    The config columns are the keys of ``config.json`` as stored;
    ``config_hash`` fingerprints the run's config in canonical form
    (`RunDir.canonical_config`: migrated, every default filled: what run
    identity compares), or as stored when this version would not make it (an
    option removed without a migration; ``outdated_config`` says why in one
    line naming the key, and the run is outdated); ``data_hash`` fingerprints the
    content of the data files it read (`rankrobust.data.identity`; missing
    for runs that recorded none).  Runs on user files (``data.train_path``)
    get ``data.name`` = `files_label` of the train file instead of the unused
    default dataset name.  A folder whose
    ``config.json``, ``metrics.json`` or ``status`` cannot be read gets status
    ``corrupt`` and the reason (naming the file) in ``error``; it never raises.
    """
    folder = run_dir if isinstance(run_dir, RunDir) else RunDir(run_dir)
    row: dict[str, Any] = {CELL_ID: folder.path.name, RUN_DIR: str(folder.path)}
    try:
        status = folder.status()
        row[STATUS] = status or "unfinished"
        config: dict[str, Any] = {}
        try:
            config = folder.config()
            row.update(flatten(config))
            try:
                config = folder.canonical_config()  # run identity: defaults filled, migrated
            except OutdatedConfig as err:
                row[OUTDATED_CONFIG] = str(err)
            row[CONFIG_HASH] = config_hash(config)
            if row.get("data.train_path"):  # user files: label the run by them, not by the unused data.name
                row[DATASET] = files_label(row["data.train_path"])
        except FileNotFoundError:
            pass
        if status == runs.STATUS_DONE:
            metrics = folder.metrics()
            for section, values in metrics.items():
                if isinstance(values, dict) and section != "environment":
                    for key, value in values.items():
                        if isinstance(value, (int, float)) or (section in TEXT_SECTIONS and isinstance(value, str)):
                            row[f"{section}.{key}"] = value
            for key in RUN_KEYS:
                row[key] = metrics.get(key)
            row[STOP_REASON] = stop_reason(metrics, row.get(EPOCHS))
            row["outdated_protocol"] = outdated_noise_protocol(config, metrics)
            row.update(origin_columns(folder.origin()))
            row["data_hash"] = recorded_digest(metrics)
            warnings = metrics.get("warnings") or []
            row["warnings"] = " | ".join(map(str, warnings)) if isinstance(warnings, list) else str(warnings)
        elif status == runs.STATUS_FAILED:
            row[ERROR] = folder.failure()
    except (RunFolderError, OSError) as err:
        row = {CELL_ID: row[CELL_ID], RUN_DIR: row[RUN_DIR], STATUS: STATUS_CORRUPT, ERROR: str(err)}
    return row


def collect(sweep_dir: str | Path) -> pd.DataFrame:
    """The store of ``sweep_dir`` built from its run folders (sorted by cell id).

    ``run_dir`` is stored relative to the sweep folder (``runs/<cell id>``), so
    a sweep folder can be moved or shipped; `load_store` makes it absolute.
    """
    sweep = SweepDir(sweep_dir)
    rows = [run_row(d) for d in sweep.run_dirs()]
    for row in rows:
        row[RUN_DIR] = str(Path(row[RUN_DIR]).relative_to(sweep.path))
    frame = pd.DataFrame(rows)
    if OUTDATED_CONFIG not in frame:  # present in every store written now (`_fill_outdated_config`)
        frame[OUTDATED_CONFIG] = pd.Series(None, index=frame.index, dtype=object)
    return frame


def write_store(sweep_dir: str | Path) -> pd.DataFrame:
    """Rebuild the sweep's store atomically and return it."""
    frame = collect(sweep_dir)
    runs.write_parquet(SweepDir(sweep_dir).store_path, frame)
    return frame


def load_store(sweep_dir: str | Path, include_stale: bool = False) -> pd.DataFrame:
    """Read the results store of a sweep folder (or a path to the parquet file itself).

    By default only the runs of the sweep's current cells: rows of cells that
    are not in the recorded spec (``sweep.json``; stale) or whose config differs
    from the recorded cell's (outdated) are left out.  ``include_stale=True``
    returns every row, with boolean columns ``stale`` and ``outdated``.  A
    store without a recorded spec counts every row as current.  A missing
    store raises FileNotFoundError, a damaged store or ``sweep.json``
    `RunFolderError`, each naming the file and the fix.
    """
    path = Path(sweep_dir)
    path = path if path.suffix == ".parquet" else SweepDir(path).store_path
    folder = path.parent
    if not path.exists():
        if Path(sweep_dir).suffix == ".parquet":
            raise FileNotFoundError(f"no results store at {path}; run `rankrobust sweep SPEC --out {folder}` first")
        raise FileNotFoundError(SweepDir(sweep_dir).missing_store())
    if not path.is_file():
        raise RunFolderError(f"{path} is a folder, not a results store; pass the sweep folder that holds it ({folder})")
    try:
        frame = pd.read_parquet(path)
    except Exception as err:  # pyarrow raises ArrowInvalid, OSError, ...
        text = str(err).strip().splitlines()
        raise RunFolderError(f"{path} is not a readable results store ({text[0] if text else type(err).__name__}); "
                             f"rebuild it from the run folders with `rankrobust sweep SPEC --out {folder}` "
                             f"(finished runs are not redone)") from None
    for column in BASE_COLUMNS:
        if column not in frame:
            frame[column] = pd.Series(dtype=object)
    frame[RUN_DIR] = [_run_path(folder, d) for d in frame[RUN_DIR]]
    _fill_stop_reason(frame)
    _fill_outdated_config(frame)
    stale, outdated = _not_current(folder, frame)
    if include_stale:
        return frame.assign(stale=stale, outdated=outdated)
    return frame[~(stale | outdated)].reset_index(drop=True)


def cells_progress(folder: str | Path, frame: pd.DataFrame) -> str | None:
    """``3 of 4 cells done; missing: <cell ids>; …`` for a sweep whose recorded cells are not all done, else None.

    ``frame``: the current rows of the folder's store (`load_store`); the cells
    are those of the recorded spec (``sweep.json``; None without one).  A
    cell counts as done when its row's status is ``done``.
    """
    cells = SweepDir(folder).cells()
    if not cells:
        return None
    def key(name: str) -> str:  # an old record may list a cell's grid keys in another order than its folder name
        return "__".join(sorted(str(name).split("__")))

    done = {key(c) for c in frame.loc[frame[STATUS] == runs.STATUS_DONE, CELL_ID]} if len(frame) else set()
    missing = [c for c in cells if key(c) not in done]
    if not missing:
        return None
    shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
    return (f"{len(cells) - len(missing)} of {len(cells)} cells done; missing: {shown}; rerun `rankrobust sweep "
            f"SPEC --out {folder}` to run them")


def _run_path(folder: Path, stored: Any) -> str:
    """A store's ``run_dir`` entry as a path: relative entries (``runs/<cell id>``) are read from ``folder``.

    Stores of the previous layout hold absolute paths, those of the folder the
    sweep ran in: a copied or moved sweep folder would read the original's runs
    (changed since, or gone).  An absolute ``…/runs/<cell id>`` is therefore
    read as ``folder/runs/<cell id>``, the store's own run; any other absolute
    path is kept as it is.
    """
    path = Path(str(stored))
    if path.is_absolute() and path.parent.name == SweepDir.RUNS:
        return str(folder / SweepDir.RUNS / path.name)
    return str(folder / path)


def _fill_stop_reason(frame: pd.DataFrame) -> None:
    """Give a store written before runs recorded ``stop_reason`` that column, read from the runs' metrics.json.

    Only finished rows lacking it are read (one small file per run); an
    unreadable metrics.json leaves None (that run is reported corrupt elsewhere).
    """
    if STOP_REASON not in frame:
        frame[STOP_REASON] = pd.Series(None, index=frame.index, dtype=object)
    todo = frame.index[(frame[STATUS] == runs.STATUS_DONE) & frame[STOP_REASON].isna()]
    if not len(todo):
        return
    frame[STOP_REASON] = frame[STOP_REASON].astype(object)
    caps = frame[EPOCHS] if EPOCHS in frame else pd.Series(None, index=frame.index)
    for i in todo:  # one metrics.json per run (runs, not users)
        try:
            frame.at[i, STOP_REASON] = stop_reason(RunDir(frame.at[i, RUN_DIR]).metrics(), caps.at[i])
        except (RunFolderError, OSError):
            pass


def _fill_outdated_config(frame: pd.DataFrame) -> None:
    """Give a store written before run identity used canonical forms its ``outdated_config`` column: why a run's
    config is not one this version would make (`RunDir.canonical_config`), None for the others.

    Only stores lacking the column are read (one config.json per row); an unreadable one leaves None (that run
    is reported corrupt elsewhere).
    """
    if OUTDATED_CONFIG in frame:
        return
    reasons: list[str | None] = []
    for run_dir, status in zip(frame[RUN_DIR], frame[STATUS]):
        reason = None
        if status not in (STATUS_CORRUPT, "unfinished"):
            try:
                RunDir(run_dir).canonical_config()
            except OutdatedConfig as err:
                reason = str(err)
            except (RunFolderError, OSError):
                pass
        reasons.append(reason)
    frame[OUTDATED_CONFIG] = pd.Series(reasons, index=frame.index, dtype=object)


def _same_run(run_dir: Any, recorded: str) -> bool:
    """True when the run folder's config has the recorded hash in one of its identities (`RunDir.identity_hashes`:
    canonical form, or the stored form that records made before canonical forms hold)."""
    try:
        return recorded in RunDir(run_dir).identity_hashes()
    except (RunFolderError, OSError):
        return False


def _not_current(folder: Path, frame: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """(stale, outdated) masks of the store's rows against the cells recorded in ``folder/sweep.json``.

    A row is outdated when its ``config_hash`` differs from the recorded cell's and no identity of its run's
    config has the recorded hash either (`_same_run`: the store or the record may predate canonical forms), when
    this version would not make its config (``outdated_config``), when its data files changed, or when it was
    trained under an older noise protocol.
    """
    n = len(frame)
    ids = [str(i) for i in frame[CELL_ID]]
    cells = SweepDir(folder).current_cells(ids)
    if cells is None:
        return np.zeros(n, bool), np.zeros(n, bool)
    stale = np.array([i not in cells for i in ids], dtype=bool)
    hashes = frame[CONFIG_HASH] if CONFIG_HASH in frame else [None] * n
    outdated = np.array([i in cells and cells[i] is not None and isinstance(h, str) and h != cells[i]
                         and not _same_run(d, cells[i]) for i, h, d in zip(ids, hashes, frame[RUN_DIR])],
                        dtype=bool)
    outdated |= np.array([i in cells and isinstance(r, str) for i, r in zip(ids, frame[OUTDATED_CONFIG])],
                         dtype=bool) \
        if OUTDATED_CONFIG in frame else np.zeros(n, bool)
    data = SweepDir(folder).recorded_data()  # the data's identity when the last sweep started
    digests = frame["data_hash"] if "data_hash" in frame else [None] * n
    other_data = np.array([isinstance(data.get(i), str) and isinstance(d, str) and d != data[i]
                           for i, d in zip(ids, digests)], dtype=bool)
    protocol = frame["outdated_protocol"].fillna(False).astype(bool).to_numpy() if "outdated_protocol" in frame \
        else np.zeros(n, bool)  # trained on data the current noise protocol prepares otherwise
    return stale, outdated | other_data | protocol


def store_problems(frame: pd.DataFrame, sweep_dir: str | Path) -> list[str]:
    """One line per kind of problem in a store loaded with ``include_stale=True``: stale, outdated, corrupt runs.

    Each line says how many runs, names one run folder and the fix.
    """
    folder = Path(sweep_dir)
    folder = folder.parent if folder.suffix == ".parquet" else folder
    record = SweepDir(folder).spec() or {}
    command = f"rankrobust sweep {record.get('source') or 'SPEC'} --out {folder}"
    lines = []

    def first(mask: np.ndarray) -> str:
        run = Path(frame.loc[mask, RUN_DIR].iloc[0])
        return str(run.relative_to(folder)) if run.is_relative_to(folder) else str(run)

    if STALE in frame and frame[STALE].any():
        mask = frame[STALE].to_numpy(bool)
        lines.append(f"{mask.sum()} stale run folder(s) left out (cells not in the current spec, sweep.json), "
                     f"e.g. {first(mask)}; delete them with `{command} --prune`")
    unreadable = np.array([isinstance(r, str) for r in frame[OUTDATED_CONFIG]], dtype=bool) \
        if OUTDATED_CONFIG in frame and OUTDATED in frame else np.zeros(len(frame), bool)
    unreadable &= frame[OUTDATED].to_numpy(bool) if OUTDATED in frame else unreadable
    if unreadable.any():  # one line naming the key, from `RunDir.canonical_config`
        reason = str(frame.loc[unreadable, OUTDATED_CONFIG].iloc[0])
        lines.append(f"{unreadable.sum()} outdated run(s) left out (made with options this version does not "
                     f"have), e.g. {reason}; rerun `{command}` to redo them")
    if OUTDATED in frame and (frame[OUTDATED].to_numpy(bool) & ~unreadable).any():
        mask = frame[OUTDATED].to_numpy(bool) & ~unreadable
        lines.append(f"{mask.sum()} outdated run(s) left out (made with another config than the current spec's, or "
                     f"from data files that have changed since), e.g. {first(mask)}; rerun `{command}` to redo them")
    current = ~(frame.get(STALE, pd.Series(False, index=frame.index)).to_numpy(bool)
                | frame.get(OUTDATED, pd.Series(False, index=frame.index)).to_numpy(bool))
    corrupt = current & (frame[STATUS] == STATUS_CORRUPT).to_numpy()
    if corrupt.any():
        reason = str(frame.loc[corrupt, ERROR].iloc[0]) if ERROR in frame else ""
        lines.append(f"{corrupt.sum()} run(s) unreadable and left out (`{command}` redoes them), e.g. {reason}")
    return lines


def grid_axes(sweep_dir: str | Path, frame: pd.DataFrame | None = None) -> list[str]:
    """The sweep's grid keys (from its recorded spec), falling back to config columns that vary."""
    record = SweepDir(sweep_dir).spec()
    if record is not None:
        return list(record["grid"])
    if frame is None:
        return []
    config_cols = [c for c in frame.columns if c.split(".")[0] in SECTIONS]
    return [c for c in config_cols if c != SEED and frame[c].nunique(dropna=False) > 1]


#: interval methods of `summarize` (column ``ci_method``)
CI_T = "t"
CI_BOOTSTRAP = "bootstrap+t"
#: what `format_summary` prints under the table
SUMMARY_LEGEND = (f"mean [95% CI] over seeds (the unit is the seed); ci: {CI_T} = t-interval over seed means, "
                  f"{CI_BOOTSTRAP} = hierarchical\nbootstrap (seeds, then users) widened to hold the t-interval; "
                  f"capped: runs that stopped at their epoch cap (train.epochs), not converged")


def _seed_key(frame: pd.DataFrame) -> pd.Series:
    """The seed of each row (``train.seed``; the row position when the store has no seed column)."""
    return frame[SEED] if SEED in frame else pd.Series(np.arange(len(frame)), index=frame.index)


def _per_user_column(metric: str) -> str | None:
    """The per-user table's column of a store metric (``test.ndcg@20`` → ``ndcg@20``).

    None unless ``metric`` is a test column of a metric registered as per-user
    (`rankrobust.metrics`: a global metric such as ``test.coverage@20`` has no
    per-user values).
    """
    if not metric.startswith("test.") or "@" not in metric:
        return None
    try:
        entry, k = parse_metric(metric)
    except ValueError:  # UnknownMetric included: not a registered metric
        return None
    return f"{entry.name}@{k}" if entry.per_user else None


def _read_per_user(run_dirs, columns: list[str]) -> dict[str, pd.DataFrame] | None:
    """run_dir → its per-user table (``user`` and those of ``columns`` it has); None when any run lacks the table.

    A per-user file that exists but cannot be read raises `RunFolderError` (naming it).
    """
    tables = {}
    for run_dir in run_dirs:
        table = RunDir(run_dir).table("per_user", required=False)
        if table is None:
            return None
        tables[run_dir] = table[["user", *(c for c in columns if c in table)]]
    return tables


def summarize(frame: pd.DataFrame, axes: list[str], metrics=None, level: float = 0.95, n_boot: int = 2000,
              per_user: bool = True, rng: int = 0) -> pd.DataFrame:
    """Per cell of ``axes`` (finished runs only): mean over seeds of each metric, its CI, and stopped-run counts.

    Columns (two levels): for each of ``metrics`` (default `main_metrics`:
    test Recall@K and NDCG@K at the runs' selection cutoff) ``mean`` (over
    the cell's runs, one per seed), ``lo``/``hi`` (the ``level`` interval),
    ``std`` (over seeds, ddof = 1), ``n_seeds`` and ``ci_method``: ``"t"`` =
    `rankrobust.stats.seed_mean_ci` (t-interval over seed means), or, when
    ``per_user`` and every run of the cell has its per-user table with the
    metric (``per_user.parquet``, test metrics), ``"bootstrap+t"`` = the
    hierarchical bootstrap interval (`rankrobust.stats.hierarchical_bootstrap_ci`,
    ``n_boot`` replicates, seeded by ``rng``) widened to contain the
    t-interval (with few seeds the percentile bootstrap alone covers less
    than ``level``).  One seed: ``lo = hi = NaN`` (no CI).  Then ``("runs",
    "n")``, ``("runs", "capped")`` = runs whose ``stop_reason`` is
    ``epoch_cap`` (not converged) and ``("runs", "time_limit")``.
    An unreadable per-user file raises `RunFolderError`.
    """
    metrics = main_metrics(frame) if metrics is None else metrics
    done = frame[frame[STATUS] == runs.STATUS_DONE]
    metrics = [m for m in metrics if m in done.columns]
    axes = [a for a in axes if a in done.columns]
    if done.empty or not metrics:
        return pd.DataFrame()
    reasons = done[STOP_REASON] if STOP_REASON in done else pd.Series(None, index=done.index, dtype=object)
    user_cols = [c for c in map(_per_user_column, metrics) if c] if per_user and RUN_DIR in done else []
    groups = done.groupby(axes, dropna=False, sort=True) if axes else [("all", done)]
    rows, index = [], []
    for key, cell in groups:
        tables = _read_per_user(cell[RUN_DIR], user_cols) if user_cols else None
        row: dict[tuple[str, str], Any] = {}
        for metric in metrics:
            values = cell[metric].astype(float)
            mean, lo, hi, n = seed_mean_ci(values, level)
            method, column = CI_T, _per_user_column(metric)
            if tables is not None and column and n > 1 and all(column in t for t in tables.values()):
                finite = values.notna()
                boot = {d: tables[d][column].to_numpy(float) for d in cell.loc[finite, RUN_DIR]}
                _, blo, bhi = hierarchical_bootstrap_ci(boot, n_boot=n_boot, level=level, rng=rng)
                lo, hi, method = min(lo, blo), max(hi, bhi), CI_BOOTSTRAP
            row.update({(metric, "mean"): mean, (metric, "lo"): lo, (metric, "hi"): hi,
                        (metric, "std"): values.std(ddof=1) if n > 1 else np.nan, (metric, "n_seeds"): n,
                        (metric, "ci_method"): method})
        cell_reasons = reasons.loc[cell.index]
        row.update({("runs", "n"): len(cell), ("runs", "capped"): int((cell_reasons == EPOCH_CAP).sum()),
                    ("runs", "time_limit"): int((cell_reasons == TIME_LIMIT).sum())})
        rows.append(row)
        index.append(key)
    table = pd.DataFrame(rows, index=pd.MultiIndex.from_tuples(index, names=axes) if len(axes) > 1
                         else pd.Index([k[0] if isinstance(k, tuple) else k for k in index], name=axes[0] if axes
                                       else None))
    table.columns = pd.MultiIndex.from_tuples(table.columns)
    return table


def format_summary(table: pd.DataFrame, legend: bool = True) -> str:
    """``mean [lo, hi] n=S`` per metric (``mean (n=1, no CI)`` for one seed), the CI method and capped runs per cell.

    ``capped`` is ``k/n``: k of the cell's n runs stopped at their epoch cap;
    ``time_limit`` appears when some run stopped on ``train.time_limit``.
    ``legend`` adds `SUMMARY_LEGEND` under the table.
    """
    if table.empty:
        return "(no finished runs)"
    out = pd.DataFrame(index=table.index)
    metrics = [m for m in table.columns.get_level_values(0).unique() if m != "runs"]
    for metric in metrics:
        t = table[metric]
        out[metric] = [format_ci(m, lo, hi, int(n)) for m, lo, hi, n in zip(t["mean"], t["lo"], t["hi"], t["n_seeds"])]
    methods = table[[(m, "ci_method") for m in metrics]].astype(str)
    out["ci"] = ["/".join(dict.fromkeys(r)) for r in methods.itertuples(index=False)]
    out["capped"] = [f"{int(c)}/{int(n)}" for c, n in zip(table[("runs", "capped")], table[("runs", "n")])]
    if table[("runs", "time_limit")].any():
        out["time_limit"] = [f"{int(c)}/{int(n)}" for c, n in zip(table[("runs", "time_limit")], table[("runs", "n")])]
    return out.to_string() + (f"\n{SUMMARY_LEGEND}" if legend else "")


def capped_warning(capped: int, total: int) -> str | None:
    """The warning line when ``capped`` of ``total`` compared runs stopped at their epoch cap (None when none did)."""
    if not capped:
        return None
    return (f"{capped} of {total} compared runs stopped at their epoch cap: not converged; train to early stopping "
            f"(raise train.epochs, keep train.patience)")


def parse_arm(text: str, default_key: str = LOSS) -> dict[str, Any]:
    """An arm of a comparison: ``"bsl"`` (a value of ``default_key``) or ``"loss.name=bsl,train.batching=users"``."""
    arm: dict[str, Any] = {}
    for part in str(text).split(","):
        key, sep, value = part.partition("=")
        if not sep:
            key, value = default_key, part
        arm[key.strip()] = _typed(value.strip())
    return arm


def _typed(text: str) -> Any:
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return {"true": True, "false": False}.get(text.lower(), text)


def arm_label(arm: dict[str, Any]) -> str:
    return ",".join(f"{v}" if k == LOSS else f"{k.split('.')[-1]}={v}" for k, v in arm.items())


def _select(frame: pd.DataFrame, arm: dict[str, Any]) -> pd.Series:
    mask = pd.Series(True, index=frame.index)
    for key, value in arm.items():
        if key not in frame:
            raise ValueError(f"the store has no column {key!r}; columns that vary: "
                             f"{[c for c in frame.columns if frame[c].nunique() > 1][:12]}")
        col = frame[key]
        mask &= np.isclose(col.astype(float), float(value)) if isinstance(value, (int, float)) and \
            not isinstance(value, bool) and pd.api.types.is_numeric_dtype(col) else (col == value)
    return mask


def check_arm(frame: pd.DataFrame, arm: dict[str, Any]) -> None:
    """ValueError in one line when a value an arm names occurs in no run of ``frame``, listing the values that do.

    Each ``key=value`` of the arm is checked on its own (a combination that no
    run has, of values that each occur, is not an error here: no cell pairs).
    """
    for key, value in arm.items():
        if key not in frame or _select(frame, {key: value}).any():
            continue  # a missing column is `_select`'s error
        present = sorted({str(v) for v in frame[key].dropna()})
        raise ValueError(f"no run of the store has {key} = {value!r}{closest(value, present)}; values of {key} "
                         f"there: {', '.join(present) if present else 'none'}")


def _metric_column(metric: str | None, frame: pd.DataFrame) -> str:
    """The store column of a comparison metric: ``ndcg@20`` → ``test.ndcg@20``; default test NDCG@K (`selection_cutoff`)."""
    metric = f"ndcg@{selection_cutoff(frame)}" if metric is None else str(metric)
    return metric if "." in metric.partition("@")[0] else f"test.{metric}"


def _arm_cells(done: pd.DataFrame, arm: dict[str, Any], others: list[str], label: str) -> dict[tuple, pd.DataFrame]:
    """Cell (values of ``others``) → the arm's runs there, indexed by seed; ValueError when a seed repeats in a cell."""
    rows = done[_select(done, arm)].assign(_seed=lambda f: _seed_key(f))
    cells = {}
    for key, group in (rows.groupby(others, dropna=False, sort=True) if others else [((), rows)]):
        key = key if isinstance(key, tuple) else (key,)
        if group["_seed"].duplicated().any():
            seed = group.loc[group["_seed"].duplicated(), "_seed"].iloc[0]
            raise ValueError(f"arm {label} has {int((group['_seed'] == seed).sum())} runs of seed {seed} in the cell "
                             f"{dict(zip(others, key))}: name the key that tells them apart in the arm (key=value)")
        cells[key] = group.set_index("_seed")
    return cells


def _capped(*groups: pd.DataFrame) -> int:
    return int(sum((g[STOP_REASON] == EPOCH_CAP).sum() for g in groups if STOP_REASON in g))


def _count_runs(table: pd.DataFrame, used: list[pd.DataFrame]) -> pd.DataFrame:
    """Record in ``table.attrs`` how many distinct runs the table compares (``runs``) and how many are ``capped``."""
    rows = pd.concat(used).drop_duplicates(RUN_DIR) if used else pd.DataFrame(columns=[RUN_DIR])
    table.attrs.update(runs=len(rows), capped=_capped(rows))
    return table


def _comparison_row(result, la: str, lb: str, metric: str, what: str = "") -> dict[str, Any]:
    return {"seeds": result.n, f"{what}{metric} {la}": result.mean_a, f"{what}{metric} {lb}": result.mean_b,
            "diff": result.diff, "ci_lo": result.lo, "ci_hi": result.hi, "d_z": result.d_z, "p": result.p,
            **({"p_perm": result.p_perm} if np.isfinite(result.p_perm) else {})}


def _finish(table: pd.DataFrame) -> pd.DataFrame:
    """One Holm family over the table's p-values (column ``p_holm`` after ``p``/``p_perm``)."""
    if table.empty:
        return table
    table.insert(table.columns.get_loc("p_perm" if "p_perm" in table else "p") + 1, "p_holm",
                 holm_family(table["p"].to_numpy()))
    return table


def _comparison_runs(frame: pd.DataFrame, metric: str | None, a: dict[str, Any],
                     b: dict[str, Any]) -> tuple[str, pd.DataFrame]:
    """(metric column, finished runs) of a comparison of arms ``a`` and ``b``; `check_arm` on both when any run is done."""
    column = _metric_column(metric, frame)
    done = frame[frame[STATUS] == runs.STATUS_DONE]
    if not done.empty:
        check_arm(frame, a)
        check_arm(frame, b)
    return column, done


def compare_runs(frame: pd.DataFrame, axes: list[str], a: dict[str, Any], b: dict[str, Any],
                 metric: str | None = None, level: float = 0.95, permutation: bool = False) -> pd.DataFrame:
    """Arm ``b`` vs arm ``a`` per cell, over matched seeds (the unit is the seed), one Holm family for the table.

    An arm fixes some config keys (``{"loss.name": "bsl", "train.batching": "users"}``).
    In each cell of the other grid axes, runs of the two arms with the same
    seed are paired (same noise draw, same data); ``metric`` is a store
    column (``test.ndcg@20``; ``ndcg@20`` means the test one; default test
    NDCG@K at the runs' selection cutoff).  One row per cell with a matched
    seed: the other axes, ``seeds`` (n), both arms' means over those seeds,
    ``diff`` = mean of b − a, its ``level`` t-interval ``ci_lo``/``ci_hi``,
    Cohen's ``d_z``, ``p`` of the paired t-test over seeds
    (`rankrobust.stats.paired_seed_comparison`; ``p_perm``, the exact
    sign-flip test, with ``permutation=True``), ``p_holm`` (Holm over the
    rows of this table: one declared family), ``runs`` compared and how
    many of them are ``capped`` (stopped at their epoch cap; ``table.attrs``
    ``runs``/``capped`` count the distinct runs of the whole table).  One seed per
    cell: no CI, no p.  A value the store lacks: ValueError naming the
    values it has.
    """
    column, done = _comparison_runs(frame, metric, a, b)
    if done.empty:
        return pd.DataFrame()
    if column not in done:
        raise ValueError(f"the store has no column {column!r}")
    others = [x for x in axes if x not in set(a) | set(b) and x != SEED]
    la, lb = arm_label(a), arm_label(b)
    left, right = _arm_cells(done, a, others, la), _arm_cells(done, b, others, lb)
    rows, used = [], []
    for key in [k for k in left if k in right]:  # in the groupby's sorted order
        ga, gb = left[key], right[key]
        seeds = sorted(set(ga.index) & set(gb.index))
        if not seeds:
            continue
        result = paired_seed_comparison(ga.loc[seeds, column].to_dict(), gb.loc[seeds, column].to_dict(),
                                        level=level, permutation=permutation)
        rows.append({**dict(zip(others, key)), **_comparison_row(result, la, lb, column.removeprefix("test.")),
                     "runs": 2 * len(seeds), "capped": _capped(ga.loc[seeds], gb.loc[seeds])})
        used += [ga.loc[seeds], gb.loc[seeds]]
    return _count_runs(_finish(pd.DataFrame(rows)), used)


def compare_losses(frame: pd.DataFrame, axes: list[str], a: str, b: str, metric: str | None = None,
                   loss_key: str = LOSS, **options) -> pd.DataFrame:
    """Loss ``b`` vs loss ``a`` per cell over matched seeds (see `compare_runs`)."""
    return compare_runs(frame, axes, {loss_key: a}, {loss_key: b}, metric=metric, **options)


def noise_axis(frame: pd.DataFrame, axes: list[str]) -> str:
    """The grid axis a robustness comparison steps along: the one numeric ``noise.*`` axis with several values.

    ValueError naming the candidates when there is none or more than one.
    """
    done = frame[frame[STATUS] == runs.STATUS_DONE]
    found = [x for x in axes if x.startswith("noise.") and x in done and pd.api.types.is_numeric_dtype(done[x])
             and done[x].nunique() > 1]
    if len(found) != 1:
        raise ValueError(f"{'no' if not found else 'more than one'} numeric noise axis with several values among the "
                         f"grid axes ({', '.join(found) if found else ', '.join(axes) or 'none'}); name one "
                         f"with --noise-axis")
    return found[0]


def compare_drops(frame: pd.DataFrame, axes: list[str], a: dict[str, Any], b: dict[str, Any],
                  noise: str | None = None, metric: str | None = None, level: float = 0.95,
                  permutation: bool = False) -> pd.DataFrame:
    """Robustness of arm ``b`` vs arm ``a``: the difference of their drops from the clean cell, over matched seeds.

    ``noise`` is the noise axis (default `noise_axis`); its smallest value is
    the clean level.  For every other noise level and cell of the remaining
    axes: drop = metric(clean) − metric(noisy) per seed for each arm, and
    ``diff`` = mean over seeds of drop_a − drop_b
    (`rankrobust.stats.difference_of_drops`; positive: ``b`` loses less),
    with ``ci_lo``/``ci_hi``, ``d_z``, ``p`` (paired t-test over seeds),
    ``p_holm`` (one Holm family: every row of the table), ``runs`` (the
    four runs per seed) and ``capped`` (``table.attrs`` as in `compare_runs`: a
    clean run serves several rows but counts once there).  Columns ``drop <metric> <arm>`` are
    the arms' mean drops.
    """
    column, done = _comparison_runs(frame, metric, a, b)
    if done.empty:
        return pd.DataFrame()
    noise = noise or noise_axis(frame, axes)
    if noise not in done:
        raise ValueError(f"the store has no column {noise!r}")
    others = [x for x in axes if x not in set(a) | set(b) and x not in (SEED, noise)]
    la, lb = arm_label(a), arm_label(b)
    clean = done[noise].min()
    rows, used = [], []
    for level_value in sorted(v for v in done[noise].dropna().unique() if v != clean):
        at = {noise: level_value}
        at_clean = {noise: clean}
        cells = [_arm_cells(done[_select(done, x)], arm, others, label) for x, arm, label in
                 ((at_clean, a, la), (at, a, la), (at_clean, b, lb), (at, b, lb))]
        for key in [k for k in cells[0] if all(k in c for c in cells[1:])]:
            groups = [c[key] for c in cells]
            seeds = sorted(set.intersection(*(set(g.index) for g in groups)))
            if not seeds:
                continue
            result = difference_of_drops(*(g.loc[seeds, column].to_dict() for g in groups), level=level,
                                         permutation=permutation)
            rows.append({**dict(zip(others, key)), noise: level_value,
                         **_comparison_row(result, la, lb, column.removeprefix("test."), what="drop "),
                         "runs": 4 * len(seeds), "capped": _capped(*(g.loc[seeds] for g in groups))})
            used += [g.loc[seeds] for g in groups]
    return _count_runs(_finish(pd.DataFrame(rows)), used)


def compare_runs_per_user(frame: pd.DataFrame, axes: list[str], a: dict[str, Any], b: dict[str, Any],
                          metric: str | None = None) -> pd.DataFrame:
    """The secondary view of `compare_runs`: per cell, per-user b − a averaged over matched seeds, one Wilcoxon test.

    Reads each compared run's per-user table; per cell
    `rankrobust.stats.per_user_pooled_test` (its unit is the user, so it
    ignores training variance: label it as secondary).  Columns: the other
    axes, ``view`` ("secondary: per-user, pooled over N seeds"), ``seeds``,
    ``users``, ``diff`` (mean over users), ``p`` and ``p_holm`` (one family:
    the table).  A missing per-user table, or one without the metric's column, raises FileNotFoundError naming it.
    """
    column = _metric_column(metric, frame).removeprefix("test.")
    done = frame[frame[STATUS] == runs.STATUS_DONE]
    if done.empty:
        return pd.DataFrame()
    check_arm(frame, a)
    check_arm(frame, b)
    others = [x for x in axes if x not in set(a) | set(b) and x != SEED]
    left, right = _arm_cells(done, a, others, arm_label(a)), _arm_cells(done, b, others, arm_label(b))

    def users(group: pd.DataFrame, seeds: list) -> dict:
        out = {}
        for s in seeds:
            table = RunDir(group.at[s, RUN_DIR]).table("per_user")
            if column not in table:  # a run written before its per-user values were kept (IPS before issue 24)
                raise FileNotFoundError(f"{group.at[s, RUN_DIR]}/per_user.parquet has no column {column!r} (the "
                                        f"run predates per-user {column.partition('@')[0]} values); rerun it")
            out[s] = table[["user", column]].rename(columns={column: "value"})
        return out

    rows = []
    for key in [k for k in left if k in right]:  # in the groupby's sorted order
        seeds = sorted(set(left[key].index) & set(right[key].index))
        if seeds:
            result = per_user_pooled_test(users(left[key], seeds), users(right[key], seeds))
            rows.append({**dict(zip(others, key)), **result})
    return _finish(pd.DataFrame(rows))
