"""Write notebooks/01-03 from the cell sources below (run after editing them).

    python scripts/make_notebooks.py

The notebooks read the quick lastfm sweep folders under ../results (or
$RANKROBUST_RESULTS): np-quick, nn-quick, lc-quick, tr-quick, var-quick.
"""
from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

HERE = Path(__file__).resolve().parents[1] / "notebooks"

SETUP = """%matplotlib inline
import os
from pathlib import Path

import pandas as pd

RESULTS = Path(os.environ.get("RANKROBUST_RESULTS", "../results"))
print("reading sweeps from", RESULTS.resolve())"""

NOTEBOOKS = {
    "01-explore-sweep.ipynb": [
        ("md", "# 01 · Explore a sweep\n\nLoad the results store of the quick noisy-positives sweep "
               "(`rankrobust sweep configs/sweeps/noisy-positives-lastfm-quick.yaml --out results/np-quick`), "
               "slice it with pandas, and plot it."),
        ("code", SETUP),
        ("code", "from rankrobust.store import load_store, grid_axes, summarize, format_summary, compare_losses\n\n"
                 "sweep = RESULTS / \"np-quick\"\nstore = load_store(sweep)\naxes = grid_axes(sweep, store)\n"
                 "print(axes, len(store), \"runs\")\n"
                 "store[axes + [\"status\", \"test.recall@20\", \"test.ndcg@20\", \"best_epoch\", \"train_seconds\"]]"),
        ("md", "Mean ± std over seeds for every cell (one seed in the quick sweep):"),
        ("code", "print(format_summary(summarize(store, axes)))"),
        ("md", "Slicing is plain pandas: e.g. the relative drop of Recall@20 from r = 0 to each noise level, per loss."),
        ("code", "done = store[store.status == \"done\"]\n"
                 "table = done.pivot_table(index=\"noise.pos_ratio\", columns=\"loss.name\", values=\"test.recall@20\")\n"
                 "(table / table.iloc[0]).round(3)"),
        ("code", "from analysis import plots\n\n"
                 "tidy = done.rename(columns={\"loss.name\": \"loss\"})\n"
                 "fig = plots.plot_metric_vs_noise(tidy, metric=\"test.ndcg@20\", x=\"noise.pos_ratio\")\nfig"),
        ("md", "Paired test across users of SL vs BSL in every cell (Wilcoxon signed-rank, Holm-corrected):"),
        ("code", "compare_losses(store, axes, \"sl\", \"bsl\")"),
    ],
    "02-fairness-variance.ipynb": [
        ("md", "# 02 · Popularity fairness and prediction variance\n\nPer-group recall from the loss-comparison "
               "sweep (`lc-quick`), score statistics over epochs from the variance sweep (`var-quick`), and the "
               "second-order expansion of SL's negative term (PROTOCOLS.md §5–6)."),
        ("code", SETUP),
        ("code", "from analysis import plots\nfrom analysis.figures import group_frame, open_sweeps, variance_frame\n\n"
                 "sweeps = open_sweeps([RESULTS / \"lc-quick\", RESULTS / \"var-quick\"])\n"
                 "groups = group_frame(sweeps[\"loss-comparison\"])\n"
                 "groups.pivot_table(index=\"group\", columns=\"loss\", values=\"recall\").round(4)"),
        ("code", "plots.plot_group_recall(groups)"),
        ("md", "Popularity metrics of each run (ARP, APLT, Gini of exposure, coverage, PopREO, PopRSP):"),
        ("code", "lc = sweeps[\"loss-comparison\"].done\n"
                 "cols = [c for c in lc.columns if c.startswith(\"fairness.\")]\n"
                 "lc[[\"model.name\", \"loss.name\", \"test.recall@20\"] + cols].round(4)"),
        ("md", "Score statistics recorded every epoch (`--track-variance`) for SL at several τ: smaller τ "
               "penalises the variance of negative scores more strongly."),
        ("code", "var = variance_frame(sweeps[\"variance\"])\nplots.plot_variance_over_epochs(var)"),
        ("md", "The exact term τ log E exp(f/τ) against E f + Var f/(2τ): the error shrinks like 1/τ²."),
        ("code", "import torch\nfrom analysis.variance import expansion_error\n\n"
                 "f = torch.randn(2000, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) * 0.3\n"
                 "err = expansion_error(f, [0.1, 0.2, 0.5, 1, 2, 5, 10])\nerr"),
        ("code", "plots.plot_expansion_error(err)"),
    ],
    "03-dro-equivalence.ipynb": [
        ("md", "# 03 · SL and BSL as distributionally robust optimisation\n\nChecks (a)–(c) of PROTOCOLS.md §7 "
               "on random score vectors, then the same quantities on a trained model of the quick "
               "noisy-positives sweep (`np-quick`), and check (d): how much positive-side gradient SL and BSL "
               "put on injected noisy positives."),
        ("code", SETUP),
        ("code", "from analysis.dro import dro_report, run_checks\n\nprint(dro_report(run_checks(n=(5, 20), seeds=(0,))))"),
        ("code", "from analysis import plots\nfrom analysis.figures import dro_frames, open_sweeps\n\n"
                 "sweep = open_sweeps([RESULTS / \"np-quick\"])[\"noisy-positives\"]\n"
                 "primal_dual, q, grad, shares = dro_frames(sweep)\nprimal_dual.round(6)"),
        ("code", "plots.plot_dro_primal_dual(primal_dual)"),
        ("code", "plots.plot_qstar_vs_gradient(q, grad)"),
        ("md", "Check (d): SL weights a user's positives uniformly, so the share on noisy positives equals their "
               "fraction; BSL's softmax(f/τ₁) over the positives gives low-scored (likely noisy) ones less."),
        ("code", "shares.pivot_table(index=\"noise_ratio\", columns=\"loss\", values=\"noisy_share\").round(4)"),
        ("code", "plots.plot_noisy_gradient_share(shares)"),
    ],
}


def main() -> None:
    HERE.mkdir(exist_ok=True)
    for name, cells in NOTEBOOKS.items():
        nb = new_notebook(cells=[new_markdown_cell(src) if kind == "md" else new_code_cell(src)
                                 for kind, src in cells])
        nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
        nbformat.write(nb, HERE / name)
        print(HERE / name)


if __name__ == "__main__":
    main()
