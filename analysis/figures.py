"""The paper's eight figures, regenerated from sweep stores (`rankrobust figures`).

Each figure is found by the sweeps it needs (recognised by the sweep name's
prefix, e.g. ``noisy-positives``), drawn by one function of
`analysis.plots`, and written as PNG and PDF with a sidecar ``.txt`` naming the
command and the store(s) it came from.  A figure whose sweep is missing is
skipped with a message; nothing is half-written (files go through temp names).

=====  ==========================  ==================================================
 no.    file                        needs (sweep name prefix)
=====  ==========================  ==================================================
 1      fig1-loss-comparison        loss-comparison
 2      fig2-noisy-positives        noisy-positives
 3      fig3-noisy-negatives        noisy-negatives
 4      fig4-popularity-groups      loss-comparison (run option fairness)
 5      fig5-variance-epochs        variance (run option track_variance)
 6      fig6-tau-ratio              tau-ratio
 7      fig7-tsne                   noisy-positives (SL, BSL at r = 0, 0.2, 0.4)
 8      fig8-dro                    noisy-positives (a SL run; gradient shares)
=====  ==========================  ==================================================
"""
from __future__ import annotations

import json
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402

from analysis import plots  # noqa: E402
from rankrobust import runs  # noqa: E402
from rankrobust.store import load_store  # noqa: E402


class MissingData(Exception):
    """A sweep lacks what a figure needs (named in the message)."""


@dataclass
class Sweep:
    """A sweep folder with its spec name and finished runs."""

    path: Path
    name: str
    store: pd.DataFrame

    @property
    def done(self) -> pd.DataFrame:
        return self.store[self.store["status"] == runs.STATUS_DONE]


def open_sweeps(dirs: list[Path]) -> dict[str, Sweep]:
    """Sweeps keyed by kind (the part of the spec name before the dataset)."""
    found: dict[str, Sweep] = {}
    for d in dirs:
        record = d / "sweep.json"
        name = json.loads(record.read_text())["name"] if record.exists() else d.name
        for kind in ("loss-comparison", "noisy-positives", "noisy-negatives", "tau-ratio", "variance"):
            if name.startswith(kind):
                found[kind] = Sweep(d, name, load_store(d))
    return found


# ------------------------------------------------------------------ tidy data for each figure
def accuracy_frame(sweep: Sweep) -> pd.DataFrame:
    """Long table (model, loss, metric, value) of test Recall@20 and NDCG@20."""
    df = sweep.done.rename(columns={"model.name": "model", "loss.name": "loss"})
    long = df.melt(id_vars=["model", "loss"], value_vars=["test.recall@20", "test.ndcg@20"],
                   var_name="metric", value_name="value")
    long["metric"] = long["metric"].str.replace("test.", "", regex=False)
    return long


def noise_frame(sweep: Sweep, axis: str) -> pd.DataFrame:
    """Long table (loss, <axis>, metric, value) of test metrics against a noise axis."""
    df = sweep.done.rename(columns={"loss.name": "loss"})
    long = df.melt(id_vars=["loss", axis], value_vars=["test.recall@20", "test.ndcg@20"],
                   var_name="metric", value_name="value")
    long["metric"] = long["metric"].str.replace("test.", "", regex=False)
    return long


def group_frame(sweep: Sweep, model: str = "mf", k: int = 20) -> pd.DataFrame:
    """Per-popularity-group Recall@k (loss, group, recall) from the runs' fairness.parquet."""
    rows = []
    done = sweep.done
    if "model.name" in done:
        done = done[done["model.name"] == model]
    for _, run in done.iterrows():
        path = Path(run["run_dir"]) / "fairness.parquet"
        if not path.exists():
            continue
        fair = pd.read_parquet(path)
        sel = fair[(fair["scope"] == "group") & (fair["metric"] == "recall") & (fair["k"] == k)
                   & (fair["mode"] == "interactions")]
        rows.append(pd.DataFrame({"loss": run["loss.name"], "group": sel["group"].astype(int),
                                  "recall": sel["value"]}))
    if not rows:
        raise MissingData(f"{sweep.path}: no fairness.parquet in its runs (sweep option fairness: true)")
    return pd.concat(rows, ignore_index=True)


def variance_frame(sweep: Sweep) -> pd.DataFrame:
    """(epoch, tau, neg_var, pos_mean) from the runs' variance.csv."""
    rows = []
    for _, run in sweep.done.iterrows():
        path = Path(run["run_dir"]) / "variance.csv"
        if path.exists():
            v = pd.read_csv(path)
            rows.append(pd.DataFrame({"epoch": v["epoch"], "tau": run["loss.tau"], "neg_var": v["neg_var"],
                                      "pos_mean": v["pos_mean"]}))
    if not rows:
        raise MissingData(f"{sweep.path}: no variance.csv in its runs (sweep option track_variance: true)")
    return pd.concat(rows, ignore_index=True)


def ratio_frame(sweep: Sweep) -> pd.DataFrame:
    """(model, r, ndcg@20, recall@20) of the BSL ratio sweep."""
    df = sweep.done
    return pd.DataFrame({"model": df["model.name"], "r": df["loss.r"], "ndcg@20": df["test.ndcg@20"],
                         "recall@20": df["test.recall@20"]})


def tsne_frame(sweep: Sweep, ratios=(0.0, 0.2, 0.4), n_items: int = 600, seed: int = 0) -> pd.DataFrame:
    """t-SNE coordinates of item embeddings (loss, ratio, x, y, popularity group) for SL and BSL.

    The same seeded item sample is embedded for every run; items are coloured by
    popularity tercile (tail / mid / head) of the clean training data.
    """
    from sklearn.manifold import TSNE

    done = sweep.done
    if "model.name" in done:
        done = done[done["model.name"] == "mf"]
    rows = []
    for loss in ("sl", "bsl"):
        for ratio in ratios:
            sel = done[(done["loss.name"] == loss) & np.isclose(done["noise.pos_ratio"], ratio)]
            if sel.empty:
                continue
            run = runs.load_run(sel.iloc[0]["run_dir"])
            items = run.tensors()["final_item"].numpy()
            rng = np.random.default_rng(seed)
            pick = np.sort(rng.choice(len(items), size=min(n_items, len(items)), replace=False))
            xy = TSNE(n_components=2, random_state=seed, init="pca", perplexity=30).fit_transform(items[pick])
            pop = _item_popularity(run)[pick]
            tercile = np.digitize(pop, np.quantile(pop, [1 / 3, 2 / 3]))
            rows.append(pd.DataFrame({"loss": loss.upper(), "ratio": ratio, "x": xy[:, 0], "y": xy[:, 1],
                                      "popularity": np.array(["tail", "mid", "head"])[tercile]}))
    if not rows:
        raise MissingData(f"{sweep.path}: no SL/BSL runs at noise ratios {ratios}")
    return pd.concat(rows, ignore_index=True)


def _item_popularity(run: runs.Run) -> np.ndarray:
    from rankrobust.config import config_from_dict
    from rankrobust.experiment import load_data

    return load_data(config_from_dict(run.config).data).train.item_counts()


def dro_frames(sweep: Sweep, n_items: int = 200, seed: int = 0) -> tuple[pd.DataFrame, np.ndarray, np.ndarray,
                                                                         pd.DataFrame]:
    """Data of figure 8 from a noisy-positives sweep.

    (primal vs dual over η for one user's scores of a clean SL run; Q* and the
    autograd gradient of SL's negative term at the run's τ; gradient share on
    noisy positives of SL and BSL runs across noise ratios).
    """
    from analysis.dro import dro_dual, dro_primal, q_star, radius, sl_negative_grad

    done = sweep.done
    sl = done[done["loss.name"] == "sl"].sort_values("noise.pos_ratio")
    if sl.empty:
        raise MissingData(f"{sweep.path}: no finished SL run")
    run = runs.load_run(sl.iloc[0]["run_dir"])
    w = run.tensors()
    rng = np.random.default_rng(seed)
    u = int(rng.integers(w["final_user"].shape[0]))
    items = rng.choice(w["final_item"].shape[0], size=min(n_items, w["final_item"].shape[0]), replace=False)
    f = (w["final_item"][items].double() @ w["final_user"][u].double()).numpy()
    p0 = np.full(len(f), 1.0 / len(f))
    tau = float(run.config["loss"]["tau"])
    eta_max = 0.95 * np.log(len(f))
    etas = np.unique(np.concatenate([np.geomspace(1e-3, eta_max, 14), [radius(f, p0, tau)]]))
    pd_rows = [{"eta": e, "primal": dro_primal(f, p0, e)[0], "dual": dro_dual(f, p0, e)[0]} for e in etas]
    share_rows = []
    for _, r in done.iterrows():
        key = {"sl": "gradient_share.sl_noisy_share", "bsl": "gradient_share.bsl_noisy_share"}.get(r["loss.name"])
        if key and key in r and pd.notna(r[key]):
            share_rows.append({"loss": r["loss.name"].upper(), "noise_ratio": r["noise.pos_ratio"],
                               "noisy_share": r[key]})
    return (pd.DataFrame(pd_rows), q_star(f, p0, tau), sl_negative_grad(f, tau).numpy(),
            pd.DataFrame(share_rows))


# ------------------------------------------------------------------ drawing and saving
def save_figure(fig: plt.Figure, out: Path, stem: str, sources: list[Path], what: str) -> list[Path]:
    """Write ``stem.png``, ``stem.pdf`` and ``stem.txt`` (command and stores) atomically."""
    paths = []
    for ext in ("png", "pdf"):
        target = out / f"{stem}.{ext}"
        with runs.atomic_path(target) as tmp:
            fig.savefig(tmp, format=ext, dpi=150, bbox_inches="tight")
        paths.append(target)
    plt.close(fig)
    command = "rankrobust figures " + " ".join(shlex.quote(str(s)) for s in sources) + f" --out {shlex.quote(str(out))}"
    runs.write_text(out / f"{stem}.txt",
                    f"{what}\n\ncommand: {command}\nstores:\n" + "".join(f"  {s / 'store.parquet'}\n" for s in sources))
    paths.append(out / f"{stem}.txt")
    return paths


def _fig1(s):
    sw = s["loss-comparison"]
    return plots.plot_loss_bars(accuracy_frame(sw)), [sw.path], "Test Recall@20 and NDCG@20 of six losses per backbone."


def _fig2(s):
    sw = s["noisy-positives"]
    return (plots.plot_metric_panels(noise_frame(sw, "noise.pos_ratio"), x="noise.pos_ratio",
                                     xlabel="noisy-positive ratio r"),
            [sw.path], "Recall@20 and NDCG@20 against the ratio r of injected noisy positives, one line per loss.")


def _fig3(s):
    sw = s["noisy-negatives"]
    return (plots.plot_metric_panels(noise_frame(sw, "noise.neg_prob"), x="noise.neg_prob",
                                     xlabel="false-negative probability p"),
            [sw.path], "Recall@20 and NDCG@20 against the false-negative probability p, one line per loss.")


def _fig4(s):
    sw = s["loss-comparison"]
    return (plots.plot_group_recall(group_frame(sw)), [sw.path],
            "Per-popularity-group Recall@20 (10 groups of equal interactions; 0 = tail) by loss, MF backbone.")


def _fig5(s):
    sw = s["variance"]
    return (plots.plot_variance_over_epochs(variance_frame(sw)), [sw.path],
            "Sampled-negative score variance and positive score mean over epochs for SL at several temperatures.")


def _fig6(s):
    sw = s["tau-ratio"]
    return (plots.plot_ratio_sensitivity(ratio_frame(sw)), [sw.path],
            "NDCG@20 of BSL against the ratio tau1/tau2 (code parameter r; r = 1 is SL), per backbone.")


def _fig7(s):
    sw = s["noisy-positives"]
    return (plots.plot_tsne(tsne_frame(sw)), [sw.path],
            "t-SNE of item embeddings (MF) for SL and BSL at 0 / 20% / 40% noisy positives, by popularity tercile.")


def _fig8(s):
    sw = s["noisy-positives"]
    primal_dual, q, grad, shares = dro_frames(sw)
    return (plots.plot_dro_figure(primal_dual, q, grad, shares), [sw.path],
            "DRO equivalence on a trained SL model: primal vs dual over the KL radius, Q* vs the autograd "
            "gradient of SL's negative term, and the share of positive-side gradient on noisy positives "
            "for SL vs BSL across noise ratios.")


#: stem → (number, sweep kind it needs, drawing function)
FIGURES: dict[str, tuple[int, str, Callable]] = {
    "fig1-loss-comparison": (1, "loss-comparison", _fig1),
    "fig2-noisy-positives": (2, "noisy-positives", _fig2),
    "fig3-noisy-negatives": (3, "noisy-negatives", _fig3),
    "fig4-popularity-groups": (4, "loss-comparison", _fig4),
    "fig5-variance-epochs": (5, "variance", _fig5),
    "fig6-tau-ratio": (6, "tau-ratio", _fig6),
    "fig7-tsne": (7, "noisy-positives", _fig7),
    "fig8-dro": (8, "noisy-positives", _fig8),
}


def make_figures(dirs: list[Path], out: Path, only: list[str] | None = None) -> list[Path]:
    """Draw every figure whose sweeps are among ``dirs`` into ``out``; returns the written paths.

    ``only``: figure numbers (``"2"``) or stems (``"fig2-noisy-positives"``).
    """
    sweeps = open_sweeps(dirs)
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for stem, (number, kind, draw) in FIGURES.items():
        if only and str(number) not in only and stem not in only:
            continue
        if kind not in sweeps:
            print(f"skipped {stem}: needs a {kind} sweep folder", file=sys.stderr)
            continue
        try:
            fig, sources, what = draw(sweeps)
        except MissingData as err:
            print(f"skipped {stem}: {err}", file=sys.stderr)
            continue
        written += save_figure(fig, out, stem, sources, what)
    return written
