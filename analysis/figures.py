"""The paper's figures, regenerated from sweep stores (`rankrobust figures`).

Every figure is one `Figure` entry of the `FIGURES` registry:

- ``number`` and ``stem`` (the file name without extension),
- ``needs``: the sweep kinds it reads, each a spec-name prefix
  (``noisy-positives`` matches ``noisy-positives-lastfm-quick``),
- ``frame``: a function of the needed sweeps (in ``needs`` order) returning
  the tidy data (or a tuple of the plot's positional arguments),
- ``plot``: the `analysis.plots` function that draws that data,
- ``caption``: what the figure shows.

Everything else is derived from the registry: the sweep kinds `open_sweeps`
recognises (`sweep_kinds`), what `make_figures` draws or skips, the
``README.md`` it writes beside the figures (`figures_readme`) and the tests.
Each figure is written as PNG and PDF with a sidecar ``.txt`` naming the
command and the store(s) it came from.  A figure whose sweep is missing is
skipped with a message; nothing is half-written (files go through temp
names).  Run folders are read only through `rankrobust.runs` (`RunDir`,
`SweepDir`, `load_run`), never by file name.
"""
from __future__ import annotations

import functools
import os
import shlex
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.figure import Figure as MplFigure  # noqa: E402

from analysis import negative_share, plots  # noqa: E402
from analysis.fairness import migrate_metric_names  # noqa: E402
from analysis.popularity import popularity_terciles  # noqa: E402
from rankrobust import runs  # noqa: E402
from rankrobust.data.popularity import item_popularity  # noqa: E402
from rankrobust.metrics import METRICS, RUN_KS  # noqa: E402
from rankrobust.runs import RunDir, RunFolderError, SweepDir  # noqa: E402
from rankrobust.store import (BATCHING, EPOCHS, EPOCHS_RUN, LOSS, MODEL, NOISE_HELDOUT_FRACTION,  # noqa: E402
                              NOISE_NEG_POOL, NOISE_NEG_PROB, NOISE_POS_RATIO, NOISE_SEED, RUN_DIR, SEED, STATUS,
                              STOP_REASON, load_store, missing_cutoff, selection_cutoff)


class MissingData(Exception):
    """A sweep lacks what a figure needs (named in the message)."""


class UnnamedAxis(MissingData):
    """The runs a figure would draw as one point differ in a setting its frame does not name (`require_named`)."""


class NoSweeps(ValueError):
    """None of the folders given to `make_figures` is a usable sweep, so no figure can be drawn."""


#: where the sweep each figure needs is listed (tail of `NoSweeps`'s message)
FIGURES_README_HINT = "figures/README.md lists the sweep each figure needs"


@dataclass
class Sweep:
    """A sweep folder with its spec name and results store (one row per run)."""

    path: Path
    name: str
    store: pd.DataFrame

    @property
    def done(self) -> pd.DataFrame:
        """The store's rows of finished runs."""
        return self.store[self.store[STATUS] == runs.STATUS_DONE]

    @property
    def source(self) -> str | None:
        """The spec file the sweep was run from, as recorded (None when it was built from a dict)."""
        spec = SweepDir(self.path).spec() or {}
        return spec.get("source")


@dataclass(frozen=True)
class Figure:
    """One figure of the registry: what it needs, how its data is framed and drawn, and its caption.

    ``frame(*sweeps)`` receives the `Sweep` of each kind of ``needs``, in that
    order, and returns the plot's data: one object, or a tuple of the plot's
    positional arguments; it raises `MissingData` when a sweep lacks
    something.  ``plot(data)`` (or ``plot(*data)``) returns a matplotlib figure.

    ``caption`` is what the figure shows whatever the data (the README lists
    it); the caption written beside a drawn figure adds what *this* data holds
    (`Drawn.caption`: losses, backbones, settings, seeds, epochs, tuning, all
    read from the runs the frame drew, `caption_facts`).
    """

    number: int
    stem: str
    needs: tuple[str, ...]
    frame: Callable[..., Any]
    plot: Callable[..., MplFigure]
    caption: str

    def render(self, sweeps: Mapping[str, Sweep]) -> "Drawn":
        """Frame, draw and caption the figure from ``sweeps`` (KeyError if a needed kind is absent).

        A needed sweep without one finished run (stopped during its first
        cell) raises `MissingData` naming it: its store has no metric columns.
        """
        chosen = [sweeps[kind] for kind in self.needs]
        for sweep in chosen:
            if sweep.done.empty:
                raise MissingData(f"{sweep.path} has no finished run yet ({len(sweep.store)} run folder(s), none "
                                  f"done); rerun its `rankrobust sweep SPEC --out {sweep.path}`")
        data = self.frame(*chosen)
        fig = self.plot(*data) if isinstance(data, tuple) else self.plot(data)
        facts = caption_facts(data, chosen)
        return Drawn(fig, [s.path for s in chosen], data, facts, f"{self.caption} Drawn: {facts_sentence(facts)}.")

    def draw(self, sweeps: Mapping[str, Sweep]) -> tuple[MplFigure, list[Path]]:
        """The drawn figure and the sweep folders it came from (`render` without the data and caption)."""
        drawn = self.render(sweeps)
        return drawn.figure, drawn.sources


@dataclass
class Drawn:
    """A rendered registry figure: the matplotlib figure, the sweep folders, the data drawn, its facts and caption."""

    figure: MplFigure
    sources: list[Path]
    data: Any
    facts: dict[str, Any]
    caption: str


# ------------------------------------------------------------------ captions from the data drawn
#: store columns whose values are part of a run's configuration (the rest are results and timings)
CONFIG_PREFIXES = ("data.", "noise.", "model.", "loss.", "train.")
#: configuration columns that are not settings a figure compares: seeds (the replication unit) and file places
NOT_SETTINGS = (SEED, NOISE_SEED, "data.split_seed", "data.train_path", "data.test_path", "data.valid_path",
                "data.data_dir")
#: column-name parts that mark a run whose settings came from `rankrobust tune` (a tuned origin in its config)
TUNED_MARKERS = ("tuned", "tuning.", "origin")
#: the caption's words for an untuned run
UNTUNED = "untuned (documented defaults)"


def _frames(data: Any) -> list[pd.DataFrame]:
    items = data if isinstance(data, tuple) else (data,)
    return [d for d in items if isinstance(d, pd.DataFrame)]


def drawn_runs(data: Any, sweeps: Iterable[Sweep]) -> tuple[pd.DataFrame, bool]:
    """(store rows of the runs a figure's data came from, whether the data names its runs).

    The frames carry a ``run_dir`` column; the rows are the finished runs of
    ``sweeps`` it names.  A frame without one (a figure from elsewhere) gives
    its own rows, with ``loss``/``model``/``seed`` read as ``loss.name`` /
    ``model.name`` / ``train.seed``, and ``False``.
    """
    frames = _frames(data)
    named = [f for f in frames if RUN_DIR in f.columns]
    if named:
        dirs = set().union(*(set(f[RUN_DIR].dropna().astype(str)) for f in named))
        store = pd.concat([s.done for s in sweeps], ignore_index=True)
        return store[store[RUN_DIR].astype(str).isin(dirs)].reset_index(drop=True), True
    rename = {"loss": LOSS, "model": MODEL, "seed": SEED}
    rows = [f.rename(columns={k: v for k, v in rename.items() if v not in f.columns}) for f in frames]
    rows = [r[[c for c in r.columns if c in rename.values() or str(c).startswith(CONFIG_PREFIXES)]] for r in rows]
    runs = pd.concat(rows, ignore_index=True).drop_duplicates() if rows else pd.DataFrame()
    return runs.reset_index(drop=True), False


def _values(series: pd.Series) -> list:
    """Sorted distinct values, floats as plain numbers, strings lower-cased where they name a loss or backbone."""
    vals = pd.Series(series).dropna().unique().tolist()
    try:
        return sorted(vals)
    except TypeError:
        return sorted(vals, key=str)


def _fmt(v: Any) -> str:
    return f"{v:g}" if isinstance(v, (float, np.floating)) else str(v)


def _cutoff_of(frames: list[pd.DataFrame]) -> list[int]:
    """The cutoffs K the frames draw: a ``k`` column, ``name@K`` columns or ``metric`` values."""
    ks: set[int] = set()
    for f in frames:
        if "k" in f.columns:
            ks |= {int(k) for k in f["k"].dropna()}
        names = [str(c) for c in f.columns]
        for col in ("metric", "accuracy_metric"):
            if col in f.columns:
                names += [str(m) for m in f[col].dropna().unique()]
        for name in names:
            head, at, tail = name.rpartition("@")
            entry = METRICS.get(head.split(".")[-1])  # a metric of the registry computed at the run's cutoffs
            if at and tail.isdigit() and entry is not None and entry.cutoffs == RUN_KS:
                ks.add(int(tail))
    return sorted(ks)


def _stop_counts(runs: pd.DataFrame) -> dict[str, int]:
    """How many drawn runs stopped for each reason (``stop_reason``; older stores: epochs_run vs train.epochs)."""
    if STOP_REASON in runs.columns and runs[STOP_REASON].notna().any():
        reasons = runs[STOP_REASON].fillna("unknown")
    elif {EPOCHS_RUN, EPOCHS} <= set(runs.columns):
        reasons = pd.Series(np.where(runs[EPOCHS_RUN] >= runs[EPOCHS], "epoch_cap", "early_stopping"))
    else:
        return {}
    return {str(k): int(v) for k, v in reasons.value_counts().sort_index().items()}


def _tuned(runs: pd.DataFrame) -> str:
    """`UNTUNED`, ``"tuned"`` or ``"k of n runs tuned"``, from columns recording a tuned origin (`TUNED_MARKERS`)."""
    cols = [c for c in runs.columns if any(m in str(c) for m in TUNED_MARKERS)]
    if not cols or runs.empty:
        return UNTUNED
    tuned = runs[cols].notna().any(axis=1)
    if tuned.all():
        return "tuned (settings from rankrobust tune)"
    return UNTUNED if not tuned.any() else f"{int(tuned.sum())} of {len(runs)} runs tuned"


def caption_facts(data: Any, sweeps: Iterable[Sweep]) -> dict[str, Any]:
    """What a figure's data holds, read from the runs it drew (`drawn_runs`); the fields of its caption.

    ``runs`` (count; None when the frame does not name its runs), ``losses``,
    ``models`` (sorted, lower case), ``settings`` (every configuration column
    that varies across the drawn runs other than loss, backbone and seeds →
    its sorted values), ``fixed_noise`` (noise settings shared by every run,
    when not 0: ratio, probability, and the false-negative pool and held-out
    share where false negatives are drawn), ``scores`` (score function → the
    losses drawn with it, when the runs use more than one), ``seeds`` ((fewest, most) seeds per
    setting, a setting being one value of every varying column), ``k`` (the
    cutoffs drawn), ``groups`` (popularity groups drawn, where the frame has
    them), ``epochs`` (the epoch caps), ``stops`` (runs per stop reason) and
    ``tuned``.
    """
    sweeps = list(sweeps)
    runs, named = drawn_runs(data, sweeps)
    frames = _frames(data)
    cols = [c for c in runs.columns if str(c).startswith(CONFIG_PREFIXES) and c not in NOT_SETTINGS]
    varying = [c for c in cols if runs[c].astype(str).nunique(dropna=False) > 1]
    # a setting is a column that varies beyond what the loss and backbone fix (a loss's own defaults are not one)
    ident = [c for c in (LOSS, MODEL) if c in varying]
    text = runs[varying].astype(str)
    settings = [c for c in varying if c not in ident
                and (not ident or text.groupby([text[i] for i in ident])[c].nunique().max() > 1)]
    varying = ident + settings
    facts: dict[str, Any] = {
        "runs": len(runs) if named else None,
        "losses": [str(v).lower() for v in _values(runs[LOSS])] if LOSS in runs else [],
        "models": [str(v).lower() for v in _values(runs[MODEL])] if MODEL in runs else [],
        "settings": {c: _values(runs[c]) for c in settings},
    }
    fixed = {}
    for c in (NOISE_POS_RATIO, NOISE_NEG_PROB):
        if c in runs and c not in varying and len(runs) and float(runs[c].iloc[0] or 0) != 0:
            fixed[c] = float(runs[c].iloc[0])
    fn = runs[runs[NOISE_NEG_PROB].astype(float) > 0] if NOISE_NEG_PROB in runs else runs.iloc[0:0]
    if len(fn) and NOISE_NEG_POOL in fn and NOISE_NEG_POOL not in varying:
        fixed[NOISE_NEG_POOL] = str(fn[NOISE_NEG_POOL].iloc[0])
    if len(fn) and NOISE_NEG_POOL in fn and (fn[NOISE_NEG_POOL] == "heldout").any() \
            and NOISE_HELDOUT_FRACTION in fn and NOISE_HELDOUT_FRACTION not in varying:
        fixed[NOISE_HELDOUT_FRACTION] = float(fn[NOISE_HELDOUT_FRACTION].iloc[0])
    facts["fixed_noise"] = fixed
    scores = {}
    if "model.score" in runs and runs["model.score"].nunique() > 1 and LOSS in runs:
        for score, part in runs.groupby(runs["model.score"].fillna("default").astype(str)):
            scores[score] = [str(v).lower() for v in _values(part[LOSS])]
    facts["scores"] = scores
    if SEED in runs and len(runs):
        seeds = runs.groupby(varying, dropna=False)[SEED].nunique() if varying else \
            pd.Series([runs[SEED].nunique()])
        facts["seeds"] = (int(seeds.min()), int(seeds.max()))
    else:
        facts["seeds"] = (0, 0)
    facts["k"] = _cutoff_of(frames)
    groups = [f["group"].nunique() for f in frames if "group" in f.columns]
    facts["groups"] = sorted(set(int(g) for g in groups))
    facts["epochs"] = [int(e) for e in _values(runs[EPOCHS])] if named and EPOCHS in runs else []
    facts["stops"] = _stop_counts(runs) if named else {}
    facts["tuned"] = _tuned(runs) if named else None
    return facts


def _listing(name: str, values: list, plural: str | None = None) -> str:
    return f"{name if len(values) == 1 else (plural or name + 's')} {', '.join(map(_fmt, values))}"


def facts_sentence(facts: Mapping[str, Any]) -> str:
    """The data part of a caption, from `caption_facts`: one clause per field, ``"; "`` between them."""
    parts = []
    if facts.get("runs") is not None:
        parts.append(f"{facts['runs']} run{'s' if facts['runs'] != 1 else ''}")
    if facts.get("losses"):
        parts.append(_listing("loss", facts["losses"], "losses"))
    if facts.get("models"):
        parts.append(_listing("backbone", facts["models"]))
    for col, vals in facts.get("settings", {}).items():
        parts.append(f"{col} = {', '.join(map(_fmt, vals))}")
    for col, val in facts.get("fixed_noise", {}).items():
        parts.append(f"{col} = {_fmt(val)} in every run")
    if facts.get("scores"):
        parts.append("score functions: " + ", ".join(f"{sc} ({', '.join(ls)})" for sc, ls in facts["scores"].items()))
    if facts.get("k"):
        parts.append(f"K = {', '.join(map(str, facts['k']))}")
    if facts.get("groups"):
        parts.append(f"{', '.join(map(str, facts['groups']))} popularity groups")
    lo, hi = facts.get("seeds", (0, 0))
    if hi:
        count = f"n = {lo}" if lo == hi else f"n = {lo}–{hi}"
        parts.append(f"seeds per setting {count}" + (": means only, no CI" if hi == 1 else
                                                      ("; no CI where n = 1" if lo == 1 else "")))
    if facts.get("epochs"):
        stops = facts.get("stops") or {}
        said = {"epoch_cap": "at the epoch cap", "early_stopping": "by early stopping", "time_limit": "at the time limit"}
        how = ", ".join(f"{v} {said.get(k, 'by ' + k.replace('_', ' '))}" for k, v in stops.items())
        parts.append(f"epoch cap {', '.join(map(str, facts['epochs']))}" + (f" (stopped: {how})" if how else ""))
    if facts.get("tuned"):
        parts.append(facts["tuned"])
    if facts.get("runs") is None:
        parts.append("epochs, stop reasons and tuning not recorded in the frame")
    return "; ".join(parts)


# ------------------------------------------------------------------ sweeps
def sweep_kind(name: str, kinds: Iterable[str] | None = None) -> str | None:
    """The kind of a sweep spec name: the longest of ``kinds`` (default `sweep_kinds`) it starts with, or None."""
    matches = [k for k in (sweep_kinds() if kinds is None else kinds) if name.startswith(k)]
    return max(matches, key=len) if matches else None


def open_sweeps(dirs: Iterable[str | Path]) -> dict[str, Sweep]:
    """Sweeps keyed by kind (a prefix of the spec name, from the registry's ``needs``).

    ``dirs``: sweep folders (each holding a results store).  A folder whose
    spec name matches no kind is reported on stderr and left out; of two
    folders of one kind the later wins (also reported).
    """
    found, ignored = _open_sweeps(dirs)
    for d, why in ignored:
        print(f"ignored {d}: {why}", file=sys.stderr)
    return found


def _open_sweeps(dirs: Iterable[str | Path]) -> tuple[dict[str, Sweep], list[tuple[Path, str]]]:
    """(sweeps keyed by kind, [(folder, why it was left out)]) of `open_sweeps`, without printing."""
    found: dict[str, Sweep] = {}
    ignored: list[tuple[Path, str]] = []
    for d in map(Path, dirs):
        missing = SweepDir(d).missing_store()
        if missing:
            ignored.append((d, missing))
            continue
        name = SweepDir(d).name()
        kind = sweep_kind(name)
        if kind is None:
            ignored.append((d, f"sweep {name!r} is none of the kinds the figures need (a figure finds its sweeps "
                               f"by the start of the spec name: {', '.join(sweep_kinds())})"))
            continue
        if kind in found:
            print(f"{d} replaces {found[kind].path} as the {kind} sweep", file=sys.stderr)
        found[kind] = Sweep(d, name, migrate_metric_names(load_store(d)))  # old fairness keys: docs/METRICS.md
    return found, ignored


# ------------------------------------------------------------------ tidy data for each figure
def figure_cutoff(sweep: Sweep, metrics: tuple[str, ...] = ("recall", "ndcg")) -> int:
    """The cutoff K a figure shows: the runs' selection cutoff (``train.metric``; 20 in the shipped specs).

    Raises `MissingData` naming the runs that did not compute
    ``test.<metric>@K`` for each of ``metrics`` and the cutoffs every run did
    compute (`rankrobust.store.missing_cutoff`): a figure never shows, or
    silently drops, a cutoff the runs did not compute.
    """
    k = selection_cutoff(sweep.done)
    problem = missing_cutoff(sweep.done, k, metrics)
    if problem:
        raise MissingData(f"{sweep.path}: {problem}")
    return k


def require_named(sweep: Sweep, rows: pd.DataFrame, named: Iterable[str]) -> None:
    """Refuse to average over a setting the figure does not show: `UnnamedAxis` (one line naming it) otherwise.

    ``rows``: the store rows a frame draws; ``named``: the store columns the
    frame keeps (its x axis, hues and panels: ``loss.name``, ``noise.pos_ratio``…).
    Rows that agree on every named column become one point, a mean over
    seeds; so every other configuration column (`CONFIG_PREFIXES`; seeds and
    file places, `NOT_SETTINGS`, excepted) must take one value among them.
    A column that varies only between named groups is fixed by them (τ of
    each loss).  A value missing in some rows (NaN: a key older runs lack)
    does not count as another value.
    """
    named = [c for c in named if c in rows.columns]
    cols = [c for c in rows.columns if str(c).startswith(CONFIG_PREFIXES) and c not in NOT_SETTINGS
            and c not in named]
    if rows.empty or not cols:
        return
    values = rows[cols].apply(lambda col: col.map(lambda v: None if _missing(v) else str(v)))
    within = values.groupby([rows[c].astype(str) for c in named], dropna=False).nunique() if named \
        else values.nunique().to_frame().T
    over = [c for c in cols if (within[c] > 1).any()]
    if over:
        seen = ", ".join(map(_fmt, _values(rows[over[0]])))
        also = f" (and {', '.join(over[1:])})" if len(over) > 1 else ""
        shown = ", ".join(named) or "nothing"
        raise UnnamedAxis(f"{sweep.path}: its runs differ in {over[0]} = {seen}{also}, which the figure does not "
                          f"show (it shows {shown}); it would average those runs as seeds: draw it from a sweep "
                          f"with one {over[0]}")


def _missing(value: Any) -> bool:
    """None or NaN (a store cell a run did not fill)."""
    return value is None or (isinstance(value, float) and np.isnan(value))


def _with_seed(done: pd.DataFrame) -> pd.DataFrame:
    """The store rows with a ``seed`` column (``train.seed``; NaN where the store has none)."""
    return done.assign(seed=done[SEED] if SEED in done else np.nan)


def accuracy_frame(sweep: Sweep) -> pd.DataFrame:
    """Long table (model, loss, seed, run_dir, metric, value) of test Recall@K and NDCG@K (K: `figure_cutoff`), one
    row per run and metric."""
    k = figure_cutoff(sweep)
    require_named(sweep, sweep.done, [MODEL, LOSS])
    df = _with_seed(sweep.done).rename(columns={MODEL: "model", LOSS: "loss"})
    long = df.melt(id_vars=["model", "loss", "seed", RUN_DIR], value_vars=[f"test.recall@{k}", f"test.ndcg@{k}"],
                   var_name="metric", value_name="value")
    long["metric"] = long["metric"].str.replace("test.", "", regex=False)
    return long


def noise_frame(sweep: Sweep, axis: str, split: str | None = None) -> pd.DataFrame:
    """Long table (loss, <axis>, seed, run_dir, metric, value) of test Recall@K and NDCG@K (`figure_cutoff`) against a
    noise axis.

    ``axis``: a store column such as ``noise.pos_ratio`` or ``noise.neg_prob``;
    ``split``: a further store column kept as is (``noise.neg_pool``), when the store has it.
    """
    k = figure_cutoff(sweep)
    require_named(sweep, sweep.done, [LOSS, axis] + ([split] if split else []))
    df = _with_seed(sweep.done).rename(columns={LOSS: "loss"})
    ids = ["loss", axis] + ([split] if split and split in df else []) + ["seed", RUN_DIR]
    long = df.melt(id_vars=ids, value_vars=[f"test.recall@{k}", f"test.ndcg@{k}"],
                   var_name="metric", value_name="value")
    long["metric"] = long["metric"].str.replace("test.", "", regex=False)
    return long


def group_frame(sweep: Sweep, model: str = "mf", k: int | None = None) -> pd.DataFrame:
    """Per-popularity-group Recall@k (loss, group, recall, k, seed, run_dir), one row per run and group.

    From each run's ``fairness`` table (interactions-mode groups of
    `analysis.popularity.popularity_groups`, group 0 = tail), runs of backbone
    ``model`` only.  ``k`` defaults to the runs' selection cutoff (the one the
    fairness probe measures, `figure_cutoff`); a run whose table lacks it
    raises `MissingData` naming the cutoffs it has.
    """
    k = figure_cutoff(sweep, ("recall",)) if k is None else int(k)
    rows = []
    done = sweep.done
    if MODEL in done:
        done = done[done[MODEL] == model]
    require_named(sweep, done, [MODEL, LOSS])
    for _, run in done.iterrows():
        fair = RunDir(run[RUN_DIR]).table("fairness", required=False)
        if fair is None:
            continue
        sel = fair[(fair["scope"] == "group") & (fair["metric"] == "recall") & (fair["k"] == k)
                   & (fair["mode"] == "interactions")]
        if sel.empty:
            raise MissingData(f"{run['run_dir']}: its fairness table has no per-group recall at k = {k} (it has "
                              f"k = {sorted(set(fair['k'].astype(int)))})")
        rows.append(pd.DataFrame({"loss": run[LOSS], "group": sel["group"].astype(int),
                                  "recall": sel["value"], "k": k, "seed": run.get(SEED),
                                  RUN_DIR: run[RUN_DIR]}))
    if not rows:
        raise MissingData(f"{sweep.path}: its runs have no fairness table (sweep option fairness: true)")
    return pd.concat(rows, ignore_index=True)


def variance_frame(sweep: Sweep) -> pd.DataFrame:
    """(epoch, tau, neg_var, pos_mean, seed, run_dir), one row per run and epoch, from the runs' ``variance`` tables.

    ``neg_var`` and ``pos_mean`` are statistics of the scores f; figure 5 also
    draws them on the logit scale f/τ (`plots.plot_variance_over_epochs`).
    """
    rows = []
    require_named(sweep, sweep.done, ["loss.tau"])
    for _, run in sweep.done.iterrows():
        v = RunDir(run[RUN_DIR]).table("variance", required=False)
        if v is not None:
            rows.append(pd.DataFrame({"epoch": v["epoch"], "tau": run["loss.tau"], "neg_var": v["neg_var"],
                                      "pos_mean": v["pos_mean"], "seed": run.get(SEED),
                                      RUN_DIR: run[RUN_DIR]}))
    if not rows:
        raise MissingData(f"{sweep.path}: its runs have no variance table (sweep option track_variance: true)")
    return pd.concat(rows, ignore_index=True)


def ratio_frame(sweep: Sweep) -> pd.DataFrame:
    """(model, r, ndcg@K, recall@K, seed, run_dir), one row per run of the BSL ratio sweep (K: `figure_cutoff`)."""
    k = figure_cutoff(sweep)
    require_named(sweep, sweep.done, [MODEL, "loss.r"])
    df = _with_seed(sweep.done)
    return pd.DataFrame({"model": df[MODEL], "r": df["loss.r"], f"ndcg@{k}": df[f"test.ndcg@{k}"],
                         f"recall@{k}": df[f"test.recall@{k}"], "seed": df["seed"], RUN_DIR: df[RUN_DIR]})


def tsne_frame(sweep: Sweep, ratios=(0.0, 0.2, 0.4), n_items: int = 600, seed: int = 0) -> pd.DataFrame:
    """t-SNE coordinates of item embeddings (loss, ratio, x, y, popularity) for SL and BSL (MF runs).

    The same seeded sample of ``n_items`` items is embedded for every run;
    ``popularity`` is the item's tercile (``tail`` / ``mid`` / ``head``, a third
    of the catalogue each) of the clean training counts,
    `analysis.popularity.popularity_terciles`.  One run per (loss, ratio): the
    first finished one (its ``seed`` and ``run_dir`` are columns).
    """
    from sklearn.manifold import TSNE

    done = sweep.done
    if MODEL in done:
        done = done[done[MODEL] == "mf"]
    rows = []
    terciles: dict[str, np.ndarray] = {}
    for loss in ("sl", "bsl"):
        for ratio in ratios:
            sel = done[(done[LOSS] == loss) & np.isclose(done[NOISE_POS_RATIO], ratio)]
            if sel.empty:
                continue
            run = runs.load_run(sel.iloc[0][RUN_DIR])
            items = run.tensors()["final_item"].numpy()
            rng = np.random.default_rng(seed)
            pick = np.sort(rng.choice(len(items), size=min(n_items, len(items)), replace=False))
            xy = TSNE(n_components=2, random_state=seed, init="pca",
                      perplexity=min(30.0, len(pick) - 1.0)).fit_transform(items[pick])
            key = repr(sorted(run.config["data"].items()))
            if key not in terciles:
                terciles[key] = popularity_terciles(_item_popularity(run))
            rows.append(pd.DataFrame({"loss": loss.upper(), "ratio": ratio, "x": xy[:, 0], "y": xy[:, 1],
                                      "popularity": terciles[key][pick], "seed": sel.iloc[0].get(SEED),
                                      RUN_DIR: sel.iloc[0][RUN_DIR]}))
    if not rows:
        raise MissingData(f"{sweep.path}: no SL/BSL runs at noise ratios {ratios}")
    return pd.concat(rows, ignore_index=True)


def _item_popularity(run: runs.Run) -> np.ndarray:
    """Clean training interaction count per item ``[n_items]`` of the run's dataset."""
    from rankrobust.config import config_from_dict
    from rankrobust.experiment import load_data

    return item_popularity(load_data(config_from_dict(run.config).data).train, "clean")


#: store columns of the noisy-positive gradient share: in training (docs/PROTOCOLS.md §9) and counterfactual (§7 d)
IN_TRAINING_SHARE = "gradient_accounting.pos_grad_share_noisy_best"
IN_TRAINING_FRACTION = "gradient_accounting.noisy_pair_fraction_best"
COUNTERFACTUAL_SHARE = {"sl": "gradient_share.sl_noisy_share", "bsl": "gradient_share.bsl_noisy_share"}
COUNTERFACTUAL_FRACTION = "gradient_share.noisy_fraction"


def gradient_share_frame(sweep: Sweep, measures: Iterable[str] = (plots.IN_TRAINING, plots.COUNTERFACTUAL)
                         ) -> pd.DataFrame:
    """Share of the positive-side gradient on noisy positives, SL and BSL runs, in long form.

    One row per run and measure with columns ``loss`` (``SL`` | ``BSL``),
    ``noise_ratio``, ``seed``, ``measure``, ``noisy_share`` and
    ``noisy_fraction``:

    - `plots.IN_TRAINING`: ``gradient_accounting.pos_grad_share_noisy_best``,
      what the optimiser applied over the best epoch's batches, next to the
      noisy pair fraction (``gradient_accounting.noisy_pair_fraction_best``);
    - `plots.COUNTERFACTUAL`: ``gradient_share.{sl,bsl}_noisy_share`` of the
      run's own loss, softmax(f/τ₁) over *all* of a user's positives on the
      final embeddings (never applied in training unless batches group a
      user's positives), next to ``gradient_share.noisy_fraction``.

    Runs without noisy positives (r = 0) and stores without a measure's
    columns contribute no rows for it; the frame may be empty.
    """
    done = sweep.done
    done = done[done[LOSS].isin(list(COUNTERFACTUAL_SHARE))]
    require_named(sweep, done, [LOSS, NOISE_POS_RATIO])
    parts = []
    for measure in measures:
        if measure == plots.IN_TRAINING:
            share = done[IN_TRAINING_SHARE] if IN_TRAINING_SHARE in done else None
            fraction = done.get(IN_TRAINING_FRACTION)
        elif measure == plots.COUNTERFACTUAL:
            cols = [COUNTERFACTUAL_SHARE[x] for x in done[LOSS]]
            present = [c in done for c in cols]
            share = None if not any(present) else pd.Series(
                [row[c] if ok else np.nan for (_, row), c, ok in zip(done.iterrows(), cols, present)],
                index=done.index, dtype=float)
            fraction = done.get(COUNTERFACTUAL_FRACTION)
        else:
            raise ValueError(f"unknown measure {measure!r}; use {plots.IN_TRAINING!r} or {plots.COUNTERFACTUAL!r}")
        if share is None:
            continue
        part = pd.DataFrame({"loss": done[LOSS].str.upper(), "noise_ratio": done[NOISE_POS_RATIO],
                             "seed": done.get(SEED), "measure": measure, "noisy_share": share,
                             "noisy_fraction": np.nan if fraction is None else fraction, RUN_DIR: done[RUN_DIR]})
        parts.append(part.dropna(subset=["noisy_share"]))
    columns = ["loss", "noise_ratio", "seed", "measure", "noisy_share", "noisy_fraction", RUN_DIR]
    return pd.concat(parts, ignore_index=True)[columns] if parts else pd.DataFrame(columns=columns)


def dro_frames(sweep: Sweep, n_items: int = 200, seed: int = 0) -> tuple[pd.DataFrame, np.ndarray, np.ndarray,
                                                                         pd.DataFrame]:
    """Data of the DRO checks from a noisy-positives sweep.

    Returns (``primal_dual``: columns eta, primal, dual over η for one seeded
    user's scores against ``n_items`` sampled items of the cleanest SL run;
    ``q`` [n_items]: Q* at the run's τ; ``grad`` [n_items]: the autograd
    gradient of SL's negative term; ``shares``: the *counterfactual*
    noisy-gradient shares of SL and BSL runs, `gradient_share_frame` with
    ``measures=(COUNTERFACTUAL,)``).  Figure 8 uses `dro_figure_frames`, which
    adds the in-training shares.
    """
    from analysis.dro import dro_dual, dro_primal, q_star, radius, sl_negative_grad

    done = sweep.done
    sl = done[done[LOSS] == "sl"].sort_values(NOISE_POS_RATIO)
    if sl.empty:
        raise MissingData(f"{sweep.path}: no finished SL run")
    run = runs.load_run(sl.iloc[0][RUN_DIR])
    w = run.tensors()
    rng = np.random.default_rng(seed)
    u = int(rng.integers(w["final_user"].shape[0]))
    items = rng.choice(w["final_item"].shape[0], size=min(n_items, w["final_item"].shape[0]), replace=False)
    f = (w["final_item"][items].double() @ w["final_user"][u].double()).numpy()
    p0 = np.full(len(f), 1.0 / len(f))
    tau = float(run.config["loss"]["tau"])
    eta_max = 0.95 * np.log(len(f))
    etas = np.unique(np.concatenate([np.geomspace(1e-3, eta_max, 14), [radius(f, p0, tau)]]))
    pd_rows = [{"eta": e, "primal": dro_primal(f, p0, e)[0], "dual": dro_dual(f, p0, e)[0],
               RUN_DIR: sl.iloc[0][RUN_DIR]} for e in etas]
    shares = gradient_share_frame(sweep, measures=(plots.COUNTERFACTUAL,))
    return pd.DataFrame(pd_rows), q_star(f, p0, tau), sl_negative_grad(f, tau).numpy(), shares


def dro_figure_frames(sweep: Sweep) -> tuple[pd.DataFrame, np.ndarray, np.ndarray, pd.DataFrame]:
    """Figure 8's data: `dro_frames` with the shares of both measures (`gradient_share_frame`).

    Stores recorded before in-training accounting existed give counterfactual rows only.
    """
    primal_dual, q, grad, _ = dro_frames(sweep)
    return primal_dual, q, grad, gradient_share_frame(sweep)


def batching_frame(sweep: Sweep, metric: str | None = None) -> pd.DataFrame:
    """Figure 9's data from a ``bsl-batching`` sweep: one row per finished run.

    Columns: ``loss`` (``SL`` | ``BSL``), ``batching`` (``train.batching``),
    ``noise_ratio`` (``noise.pos_ratio``), ``seed``, the metric without its
    ``test.`` prefix (default ``ndcg@K``, K: `figure_cutoff`), ``noisy_share``
    (``gradient_accounting.pos_grad_share_noisy_best``) and ``noisy_fraction``
    (``gradient_accounting.noisy_pair_fraction_best``); the last two are NaN
    for runs without noisy positives (r = 0).
    """
    done = sweep.done
    metric = f"test.ndcg@{figure_cutoff(sweep, ('ndcg',))}" if metric is None and not done.empty else metric
    needed = [LOSS, BATCHING, NOISE_POS_RATIO, metric or "test.ndcg@K"]
    missing = [c for c in needed if c not in done]
    if done.empty or missing:
        raise MissingData(f"{sweep.path}: no finished runs with columns {missing or needed}")
    if IN_TRAINING_SHARE not in done:
        raise MissingData(f"{sweep.path}: no in-training gradient accounting ({IN_TRAINING_SHARE}); "
                          "its runs predate it")
    require_named(sweep, done, [LOSS, BATCHING, NOISE_POS_RATIO])
    nan = pd.Series(np.nan, index=done.index)
    return pd.DataFrame({"loss": done[LOSS].str.upper(), "batching": done[BATCHING],
                         "noise_ratio": done[NOISE_POS_RATIO], "seed": done.get(SEED),
                         metric.removeprefix("test."): done[metric], "noisy_share": done[IN_TRAINING_SHARE],
                         "noisy_fraction": done.get(IN_TRAINING_FRACTION, nan),
                         RUN_DIR: done[RUN_DIR]}).reset_index(drop=True)


#: ``data.split`` value → label of the test it gives (docs/PROTOCOLS.md §11)
SPLIT_LABELS = {"given": "IID", "popularity": "OOD"}


def ood_frame(sweep: Sweep, metric: str | None = None) -> pd.DataFrame:
    """Figure 10's data from a ``loss-comparison-ood`` sweep: one row per finished run.

    Columns ``model``, ``loss`` (upper case), ``split`` (``IID`` for the given
    split, ``OOD`` for ``data.split = popularity``), ``seed`` and the metric
    without its ``test.`` prefix (default NDCG at the runs' cutoff, `figure_cutoff`).
    """
    done = sweep.done
    if metric is None and not done.empty:
        metric = f"test.ndcg@{figure_cutoff(sweep, ('ndcg',))}"
    metric = metric or "test.ndcg@20"
    needed = [MODEL, LOSS, "data.split", metric]
    missing = [c for c in needed if c not in done]
    if done.empty or missing:
        raise MissingData(f"{sweep.path}: no finished runs with columns {missing or needed}")
    require_named(sweep, done, [MODEL, LOSS, "data.split"])
    return pd.DataFrame({"model": done[MODEL], "loss": done[LOSS].str.upper(),
                         "split": done["data.split"].map(SPLIT_LABELS).fillna(done["data.split"]),
                         "seed": done.get(SEED),
                         metric.removeprefix("test."): done[metric], RUN_DIR: done[RUN_DIR]}).reset_index(drop=True)


def _column_at(df: pd.DataFrame, name: str) -> str:
    """The ``name@K`` column of a figure frame (the frames carry the cutoff they were made at)."""
    return next(c for c in df.columns if str(c).startswith(f"{name}@"))


def plot_groups(df: pd.DataFrame):
    """`plots.plot_group_recall` labelled with the frame's cutoff (`group_frame`'s ``k`` column)."""
    return plots.plot_group_recall(df, metric_label=f"Recall@{int(df['k'].iloc[0])}" if len(df) else "Recall@K")


def plot_ratio(df: pd.DataFrame):
    """`plots.plot_ratio_sensitivity` of the frame's ``ndcg@K`` column (`ratio_frame`)."""
    return plots.plot_ratio_sensitivity(df, metric=_column_at(df, "ndcg"))


def plot_batching(df: pd.DataFrame):
    """`plots.plot_bsl_batching` of the frame's ``ndcg@K`` (or other ``name@K``) column (`batching_frame`)."""
    known = {"loss", "batching", "noise_ratio", "seed", "noisy_share", "noisy_fraction", RUN_DIR}
    return plots.plot_bsl_batching(df, metric=next(c for c in df.columns if c not in known))


# ------------------------------------------------------------------ figures 1–3: losses grouped by family
def _families(losses: Iterable[str]) -> list[tuple[str, list[str]]]:
    """(family, losses present) in `rankrobust.losses.LOSS_FAMILIES` order; unknown losses go to ``other``."""
    from rankrobust.losses import LOSS_FAMILIES, loss_family

    present = list(dict.fromkeys(losses))
    out = [(fam, [x for x in names if x in present]) for fam, names in LOSS_FAMILIES.items()]
    other = [x for x in present if loss_family(x) == "other"]
    return [(fam, xs) for fam, xs in out + [("other", other)] if xs]


def plot_loss_families(df: pd.DataFrame):
    """Figure 1 with any number of losses: one panel per metric, the losses on the x axis grouped by family
    (family names under the axis, thin lines between families), one bar colour per backbone; mean and 95 % CI
    over seeds (`plots.seed_ci`), the seeds per bar written under the figure.

    ``df``: `accuracy_frame` (model, loss, metric, value).
    """
    import seaborn as sns

    order = [x for _, xs in _families(df["loss"]) for x in xs]
    groups = _families(df["loss"])
    metrics = list(dict.fromkeys(df["metric"]))
    with sns.axes_style(plots.STYLE), sns.plotting_context(plots.CONTEXT):
        fig, axes = plt.subplots(len(metrics), 1, figsize=(max(6.0, 0.7 * len(order) + 2), 3.6 * len(metrics)),
                                 squeeze=False)
        for ax, metric in zip(axes[:, 0], metrics):
            sns.barplot(data=df[df["metric"] == metric], x="loss", y="value", hue="model", order=order,
                        errorbar=plots.seed_ci, ax=ax)
            start = 0
            for fam, xs in groups:
                if start:
                    ax.axvline(start - 0.5, color="grey", linewidth=0.8)
                ax.text(start + (len(xs) - 1) / 2, -0.3, fam, transform=ax.get_xaxis_transform(), ha="center",
                        va="top", fontsize="small", style="italic")
                start += len(xs)
            ax.tick_params(axis="x", labelrotation=35)
            for label in ax.get_xticklabels():
                label.set_horizontalalignment("right")
            ax.set_xlabel("")
            ax.set_ylabel(f"test {metric}")
            ax.set_title(metric)
            ax.legend(title="backbone", fontsize="small", loc="upper left", bbox_to_anchor=(1.0, 1.0))
        fig.tight_layout()
        plots.annotate_seeds(fig, plots.seed_counts(df, ["metric", "model", "loss"], "value"))
    return fig


def plot_noise_families(df: pd.DataFrame, x: str, *, xlabel: str | None = None, split: str | None = None):
    """Figures 2–3 with any number of losses: one column per loss family (SL, dashed grey, repeated in every
    family's panel as the reference), one row per metric and, when the frame has a ``split`` column with
    several values (figure 3: ``noise.neg_pool`` train | heldout), per value of it, side by side.

    ``df``: `noise_frame` (loss, ``x``, metric, value[, ``split``]); mean and 95 % CI band over seeds
    (`plots.seed_ci`), the seeds per point written under the figure.
    """
    import seaborn as sns

    groups = _families(df["loss"])
    metrics = list(dict.fromkeys(df["metric"]))
    splits = [None]
    if split and split in df and df[split].nunique() > 1:  # the train pool first, then heldout, then any other
        splits = sorted(dict.fromkeys(df[split]), key=lambda v: ({"train": 0, "heldout": 1}.get(v, 2), str(v)))
    rows = [(m, sp) for sp in splits for m in metrics]
    with sns.axes_style(plots.STYLE), sns.plotting_context(plots.CONTEXT):
        fig, axes = plt.subplots(len(rows), len(groups), figsize=(3.6 * len(groups), 2.9 * len(rows)),
                                 squeeze=False, sharex=True)
        for r, (metric, sp) in enumerate(rows):
            part = df[df["metric"] == metric]
            if sp is not None:
                part = part[part[split] == sp]
            for c, (fam, names) in enumerate(groups):
                ax = axes[r, c]
                ref = part[part["loss"] == "sl"] if "sl" not in names else part.iloc[0:0]
                if not ref.empty:
                    sns.lineplot(data=ref, x=x, y="value", color="grey", linestyle="--", errorbar=None, ax=ax,
                                 label="sl (ref.)")
                sns.lineplot(data=part[part["loss"].isin(names)], x=x, y="value", hue="loss", hue_order=names,
                             style="loss", style_order=names, markers=True, dashes=False, errorbar=plots.seed_ci,
                             ax=ax)
                where = f"{split.split('.')[-1]} = {sp}" if sp is not None else ""
                ax.set_title(f"{fam}{' · ' + where if where else ''}", fontsize="medium")
                ax.set_xlabel(xlabel or x)
                ax.set_ylabel(f"test {metric}" if c == 0 else "")
                ax.legend(fontsize="x-small", loc="best")
        fig.tight_layout()
        keys = ["metric", "loss", x] + ([split] if split and split in df else [])
        plots.annotate_seeds(fig, plots.seed_counts(df, keys, "value"))
    return fig


#: the fairness metrics figure 12 sets against accuracy, in this order, where the store has them (docs/METRICS.md)
FAIRNESS_VS_ACCURACY = ("aplt", "recall_cond_cv", "elliot_pop_reo", "exposure_gini")


def fairness_accuracy_frame(sweep: Sweep, metrics: Iterable[str] = FAIRNESS_VS_ACCURACY) -> pd.DataFrame:
    """Figure 12's data: test NDCG@K and fairness metrics of every finished run, long over the fairness metrics.

    Columns ``model``, ``score`` (``model.score``, the score function; ``"default"``
    where the store has no such column), ``loss``, ``seed``, ``run_dir``,
    ``accuracy_metric`` (``ndcg@K``, K: `figure_cutoff`, the cutoff the
    fairness probe measures too), ``accuracy``, ``fairness_metric`` (a name of
    ``metrics`` present in the store as ``fairness.<name>``, old names migrated,
    `analysis.fairness.migrate_metric_names`) and ``fairness``.  Raises
    `MissingData` when the runs have none of ``metrics``.
    """
    k = figure_cutoff(sweep, ("ndcg",))
    require_named(sweep, sweep.done, [MODEL, "model.score", LOSS])
    done = _with_seed(migrate_metric_names(sweep.done))
    present = [m for m in metrics if f"fairness.{m}" in done and done[f"fairness.{m}"].notna().any()]
    if not present:
        raise MissingData(f"{sweep.path}: its runs have no fairness metrics {list(metrics)} (sweep option "
                          f"fairness: true)")
    base = pd.DataFrame({"model": done[MODEL] if MODEL in done else "default",
                         "score": done["model.score"].fillna("default") if "model.score" in done else "default",
                         "loss": done[LOSS], "seed": done["seed"], RUN_DIR: done[RUN_DIR],
                         "accuracy_metric": f"ndcg@{k}", "accuracy": done[f"test.ndcg@{k}"]})
    parts = [base.assign(fairness_metric=m, fairness=done[f"fairness.{m}"].to_numpy(dtype=float)) for m in present]
    return pd.concat(parts, ignore_index=True).dropna(subset=["fairness", "accuracy"]).reset_index(drop=True)


# ------------------------------------------------------------------ the registry
#: how the captions name the cutoff: the figures use the runs' selection cutoff K (`figure_cutoff`)
K_NOTE = "K: the runs' selection cutoff, train.metric (20 in the shipped specs)"
#: how every figure aggregates seeds (`plots.seed_ci`; the seeds per point are written under each figure)
CI_NOTE = "mean over seeds with a 95 % t-CI (none from one seed; n under the figure)"

FIGURES: tuple[Figure, ...] = (
    Figure(1, "fig1-loss-comparison", ("loss-comparison",), accuracy_frame, plot_loss_families,
           f"Test Recall@K and NDCG@K of each loss per backbone, losses grouped by family "
           f"(rankrobust.losses.LOSS_FAMILIES); bars: {CI_NOTE}; {K_NOTE}."),
    Figure(2, "fig2-noisy-positives", ("noisy-positives",),
           functools.partial(noise_frame, axis=NOISE_POS_RATIO),
           functools.partial(plot_noise_families, x=NOISE_POS_RATIO, xlabel="noisy-positive ratio r"),
           f"Recall@K and NDCG@K against the ratio r of injected noisy positives, one line per loss, one panel "
           f"per loss family (SL dashed grey as the reference in every panel); {CI_NOTE}; {K_NOTE}."),
    Figure(3, "fig3-noisy-negatives", ("noisy-negatives",),
           functools.partial(noise_frame, axis=NOISE_NEG_PROB, split=NOISE_NEG_POOL),
           functools.partial(plot_noise_families, x=NOISE_NEG_PROB, xlabel="false-negative probability p",
                             split=NOISE_NEG_POOL),
           "Recall@K and NDCG@K against the false-negative probability p, one line per loss, one panel per loss "
           "family (SL dashed grey as the reference); with both false-negative pools swept, the train pool (a "
           "user's own training positives) and the heldout pool (a share noise.heldout_fraction of them held "
           f"out of training) side by side, one row each; {CI_NOTE}; {K_NOTE}."),
    Figure(4, "fig4-popularity-groups", ("loss-comparison",), group_frame, plot_groups,
           "Per-popularity-group Recall@K by loss, MF backbone: groups of equal training interactions, "
           f"0 = tail (analysis.popularity.popularity_groups); bars: {CI_NOTE}; needs the sweep option fairness; "
           f"{K_NOTE}."),
    Figure(5, "fig5-variance-epochs", ("variance",), variance_frame, plots.plot_variance_over_epochs,
           "Sampled-negative score variance and mean positive score over epochs, one line per temperature tau; "
           "top: the scores f, bottom: the logits f/tau the softmax sees (Var f / tau^2 and mean f / tau), on "
           f"which the order of the temperatures can reverse; {CI_NOTE}; needs the sweep option track_variance."),
    Figure(6, "fig6-tau-ratio", ("tau-ratio",), ratio_frame, plot_ratio,
           "NDCG@K of BSL against the ratio tau1/tau2 (code parameter r, mode reweight; r = 1 is SL), "
           f"per backbone; {CI_NOTE}; {K_NOTE}."),
    Figure(7, "fig7-tsne", ("noisy-positives",), tsne_frame, plots.plot_tsne,
           "t-SNE of item embeddings (MF) for SL and BSL at the noisy-positive ratios 0, 0.2 and 0.4 the sweep "
           "has (one run each, the first finished; no aggregation over seeds), coloured by popularity tercile "
           "(a third of the catalogue each by clean training count; analysis.popularity.popularity_terciles)."),
    Figure(8, "fig8-dro", ("noisy-positives",), dro_figure_frames, plots.plot_dro_figure,
           "DRO equivalence on a trained SL model: primal vs dual over the KL radius; Q* vs the autograd "
           "gradient of SL's negative term; share of the positive-side gradient on noisy positives for SL "
           "and BSL across noise ratios r. Solid: in training (what the optimiser applied over the best "
           "epoch's batches); dashed: counterfactual on the final embeddings (softmax(f/tau1) over all of a "
           "user's positives at once, which training never applied unless batches grouped a user's "
           "positives); grey dotted: the noisy fraction uniform weights give; shares: " + CI_NOTE + ". The first "
           "two panels use one run (the SL run with the fewest noisy positives). Stores without in-training "
           "accounting show the counterfactual only, titled so."),
    Figure(9, "fig9-bsl-batching", ("bsl-batching",), batching_frame, plot_batching,
           "BSL's positive side at work, SL vs BSL with shuffled-pair batches (pairs) or user-grouped batches "
           "(users). Left: test NDCG@K against the noisy-positive ratio r, " + CI_NOTE + ". Right: "
           "in-training share of the positive-side gradient on noisy positives at the best epoch, with the "
           "noisy pair fraction dashed (SL's share equals it; BSL can only fall below it when a batch holds "
           f"several positives of a user); r = 0 has no noisy pairs and is left out; {K_NOTE}."),
    Figure(10, "fig10-iid-vs-ood", ("loss-comparison-ood",), ood_frame, plots.plot_iid_vs_ood,
           "Test NDCG@K per loss and backbone on the given split (IID) and on the "
           "popularity-shift split (OOD: test interactions drawn with probability proportional to 1/pop(i), "
           "README: \"XSimGCL and the popularity-shift (OOD) test\"), " + CI_NOTE + "; right: the OOD/IID "
           f"ratio of the means; {K_NOTE}."),
    Figure(11, "fig11-negative-share", ("noisy-negatives",),
           functools.partial(negative_share.frame, missing=MissingData), negative_share.plot,
           "Share of the negative-side gradient on false negatives (sum of |dL/ds-| over false-negative slots / "
           "over all slots, at the best epoch, in training) against the false-negative probability p, one line "
           "per loss (mean and 95% t-CI over seeds), one panel per loss family and pool (train, heldout); SL dashed "
           "grey as the reference, the false-negative slot fraction (uniform weights) dotted; above it a loss "
           "up-weights false negatives. The losses, pools, seeds and run count drawn are printed under the "
           "figure; needs a noisy-negatives sweep run with the gradient-accounting probe (every sweep has it)."),
    Figure(12, "fig12-fairness-vs-accuracy", ("loss-comparison",), fairness_accuracy_frame,
           plots.plot_accuracy_vs_fairness,
           "Fairness at matched accuracy: test NDCG@K (x) against popularity-fairness metrics (y, one row each: "
           "aplt, recall_cond_cv, elliot_pop_reo, exposure_gini where the store has them; docs/METRICS.md), one "
           "point per loss at its " + CI_NOTE.replace("a 95 % t-CI", "95 % t-CIs both ways") + ", one panel per "
           "backbone and score function (losses are compared only under one score function); dashed: the Pareto "
           "front, the losses no other loss beats on both accuracy and fairness; needs the sweep option "
           f"fairness; {K_NOTE}."),
)


def sweep_kinds() -> tuple[str, ...]:
    """Every sweep kind some figure needs, in registry order (what `open_sweeps` recognises)."""
    return tuple(dict.fromkeys(kind for fig in FIGURES for kind in fig.needs))


def caption_summary(caption: str) -> str:
    """A caption's lead: the text up to its first ``;`` or sentence end (``. `` + capital, or the last ``.``)
    outside parentheses, so a parenthesis opened in it is always closed (``(code parameter r, mode reweight;
    r = 1 is SL)`` stays whole).  The whole caption when it has no such boundary."""
    depth = 0
    for i, char in enumerate(caption):
        depth += {"(": 1, ")": -1}.get(char, 0)
        if depth:
            continue
        if char == ";":
            return caption[:i]
        if char == "." and (i + 1 == len(caption) or caption[i + 1:i + 3].startswith(" ")
                            and caption[i + 2:i + 3].isupper()):
            return caption[:i]
    return caption


def figure_list(width: int = 100) -> str:
    """``rankrobust figures --list``: each figure's number, stem, the sweeps it needs and its caption's lead
    (`caption_summary`), wrapped at ``width`` characters."""
    lines = []
    for fig in FIGURES:
        needs = " and ".join(f"a {kind} sweep (configs/sweeps/{kind}-*.yaml)" for kind in fig.needs)
        lead = textwrap.fill(caption_summary(fig.caption), width, initial_indent="    ", subsequent_indent="    ",
                             break_on_hyphens=False)
        lines.append(f"{fig.number:>2}  {fig.stem}\n    needs {needs}\n{lead}")
    return "\n".join(lines)


def select(only: Iterable[str] | None = None) -> list[Figure]:
    """Registry entries named in ``only`` (numbers ``"2"`` or stems ``"fig2-noisy-positives"``); all when None.

    ValueError naming the known figures for a name that matches none.
    """
    if not only:
        return list(FIGURES)
    keys = {str(k) for k in only}
    known = {str(f.number) for f in FIGURES} | {f.stem for f in FIGURES}
    unknown = sorted(keys - known)
    if unknown:
        raise ValueError(f"unknown figure(s) {unknown}; known: {', '.join(f.stem for f in FIGURES)}")
    return [f for f in FIGURES if str(f.number) in keys or f.stem in keys]


# ------------------------------------------------------------------ README
#: the quick lastfm sweep folders the project's commands use (kinds not listed: ``results/<kind>-quick``)
QUICK_FOLDERS = {"noisy-positives": "np-quick", "noisy-negatives": "nn-quick", "loss-comparison": "lc-quick",
                 "tau-ratio": "tr-quick", "variance": "var-quick", "loss-comparison-ood": "ood-quick"}
README = "README.md"
README_BEGIN = ("<!-- BEGIN generated by analysis.figures.figures_readme() from the FIGURES registry; "
                "edit the registry, not this block -->")
README_END = "<!-- END generated -->"


def _shown(path: str | Path) -> str:
    """``path`` relative to the working directory when it lies below it, else as given."""
    p = Path(path)
    if p.is_absolute():
        try:
            return str(p.relative_to(Path.cwd()))
        except ValueError:
            return str(p)
    return os.path.normpath(str(p))


def _quote(path: str | Path) -> str:
    return shlex.quote(_shown(path))


def _sweep_folders(sweeps: Mapping[str, Sweep] | None) -> dict[str, tuple[str, str | None]]:
    """kind → (folder, spec file or None) for every kind: the opened sweep's, else the quick lastfm default."""
    out: dict[str, tuple[str, str | None]] = {}
    for kind in sweep_kinds():
        if sweeps and kind in sweeps:
            sw = sweeps[kind]
            out[kind] = (_shown(sw.path), _shown(sw.source) if sw.source else None)
        else:
            out[kind] = (f"results/{QUICK_FOLDERS.get(kind, kind + '-quick')}",
                         f"configs/sweeps/{kind}-lastfm-quick.yaml")
    return out


def figures_readme_block(sweeps: Mapping[str, Sweep] | None = None, out: str | Path = "figures") -> str:
    """The generated part of the figures README, between `README_BEGIN` and `README_END`.

    A table of every `FIGURES` entry (number, file stem, sweep kinds needed
    with their folders, caption, the command that makes it alone) and the
    commands that make every sweep and every figure.  ``sweeps`` (kind →
    `Sweep`, from `open_sweeps`) supplies the folders and spec files actually
    used; kinds not in it get the quick lastfm defaults
    (``configs/sweeps/<kind>-lastfm-quick.yaml`` into ``results/...``).
    """
    folders = _sweep_folders(sweeps)
    o = _quote(out)
    lines = [README_BEGIN, "", "## The figures", "",
             "| no. | file | needs sweeps | what it shows | make it alone |", "|---|---|---|---|---|"]
    for fig in FIGURES:
        needs = ", ".join(f"`{kind}` ({folders[kind][0]})" for kind in fig.needs)
        command = " ".join(["rankrobust figures", *(_quote(folders[k][0]) for k in fig.needs),
                            "--out", o, "--only", str(fig.number)])
        caption = fig.caption.replace("|", "\\|")
        lines.append(f"| {fig.number} | `{fig.stem}` | {needs} | {caption} | `{command}` |")
    lines += ["", "Each figure is saved as `<file>.png` and `<file>.pdf`; `<file>.txt` beside it names the "
                  "command and the store(s) it came from.", "",
              "## How they are made", "", "From the repository root, after `bash scripts/install.sh`:", "",
              "```bash"]
    for kind, (folder, spec) in folders.items():
        lines.append(f"rankrobust sweep {_quote(spec)} --out {_quote(folder)}" if spec else
                     f"# {kind}: {folder} (its spec file was not recorded)")
    lines += [" ".join(["rankrobust figures", *(_quote(f) for f, _ in folders.values()), "--out", o]), "```",
              "", README_END]
    return "\n".join(lines) + "\n"


def figures_readme(sweeps: Mapping[str, Sweep] | None = None, out: str | Path = "figures") -> str:
    """A complete README.md for a figures folder: a title and `figures_readme_block`.

    `make_figures` writes it, or, where the folder's README.md already has a
    generated block, replaces only that block (hand-written text around it stays).
    """
    return "# Figures\n\n" + figures_readme_block(sweeps, out)


def update_readme(path: Path, block: str) -> str:
    """Write ``block`` into the README at ``path`` atomically and return the new text.

    The text between `README_BEGIN` and `README_END` (markers included) is
    replaced; a README without the markers gets the block appended; a missing
    README is created with a title and the block.
    """
    if path.exists():
        text = path.read_text()
        start, end = text.find(README_BEGIN), text.find(README_END)
        if start >= 0 and end > start:
            new = text[:start] + block.rstrip("\n") + text[end + len(README_END):]
        else:
            new = text.rstrip("\n") + "\n\n" + block
    else:
        new = "# Figures\n\n" + block
    runs.write_text(path, new.rstrip("\n") + "\n")
    return new


# ------------------------------------------------------------------ drawing and saving
def save_figure(fig: MplFigure, out: Path, stem: str, sources: list[Path], what: str,
                number: int | None = None) -> list[Path]:
    """Write ``stem.png``, ``stem.pdf`` and ``stem.txt`` (caption, command, stores) atomically; returns the paths.

    The command written is the one that redraws this figure alone (``--only number`` when given).
    """
    paths = []
    for ext in ("png", "pdf"):
        target = out / f"{stem}.{ext}"
        with runs.atomic_path(target) as tmp:
            fig.savefig(tmp, format=ext, dpi=150, bbox_inches="tight")
        paths.append(target)
    plt.close(fig)
    command = "rankrobust figures " + " ".join(_quote(s) for s in sources) + f" --out {_quote(out)}"
    if number is not None:
        command += f" --only {number}"
    stores = "".join(f"  {_shown(SweepDir(s).store_path)}\n" for s in sources)
    runs.write_text(out / f"{stem}.txt", f"{what}\n\ncommand: {command}\nstores:\n{stores}")
    paths.append(out / f"{stem}.txt")
    return paths


def make_figures(dirs: list[Path], out: Path, only: list[str] | None = None) -> list[Path]:
    """Draw every registry figure whose sweeps are among ``dirs`` into ``out``; returns the written paths.

    ``only``: figure numbers (``"2"``) or stems (``"fig2-noisy-positives"``).
    When none of ``dirs`` is a usable sweep, `NoSweeps` (a ValueError) names
    each folder and why, and nothing is written.
    Figures whose sweeps are missing, or whose sweeps lack data
    (`MissingData`, a missing or damaged run file), are skipped with a
    message on stderr; the others are still drawn.  ``out/README.md``
    gets the generated list of every figure (`figures_readme_block`), with the
    sweep folders used here, keeping any hand-written text around it.
    """
    chosen = select(only)
    sweeps, ignored = _open_sweeps(dirs)
    if not sweeps:  # nothing can be drawn: one error line, and no README of an empty folder
        why = "; ".join(reason if str(d) in reason else f"{d}: {reason}" for d, reason in ignored)
        raise NoSweeps(f"no figure can be drawn: {why} ({FIGURES_README_HINT})")
    for d, reason in ignored:
        print(f"ignored {d}: {reason}", file=sys.stderr)
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for fig in chosen:
        absent = [kind for kind in fig.needs if kind not in sweeps]
        if absent:
            print(f"skipped {fig.stem}: needs a {' and a '.join(absent)} sweep folder", file=sys.stderr)
            continue
        print(f"drawing {fig.stem} ...", file=sys.stderr, flush=True)  # a figure over many runs takes a while
        try:
            drawn = fig.render(sweeps)
        except (MissingData, FileNotFoundError, RunFolderError) as err:  # e.g. run files a shipped example omits
            print(f"skipped {fig.stem}: {err}", file=sys.stderr)
            continue
        written += save_figure(drawn.figure, out, fig.stem, drawn.sources, drawn.caption, fig.number)
    update_readme(out / README, figures_readme_block(sweeps, out))
    written.append(out / README)
    return written


if __name__ == "__main__":  # python -m analysis.figures [README]: refresh a README's generated block
    target = Path(sys.argv[1] if len(sys.argv) > 1 else "figures/README.md")
    update_readme(target, figures_readme_block())
    print(f"updated the generated block of {target}")
