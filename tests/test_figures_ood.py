"""Figure 10 (IID vs OOD) and the OOD/IPS columns of the results store, on the miniature sweep."""
from __future__ import annotations

from analysis.figures import ood_frame, open_sweeps
from analysis.plots import plot_iid_vs_ood
from rankrobust.store import load_store
from tests.conftest import TINY_FOLDERS


def test_store_has_split_and_ips_columns(tiny_results):
    store = load_store(tiny_results / TINY_FOLDERS["loss-comparison-ood"])
    assert set(store["status"]) == {"done"} and len(store) == 4
    ood = store[store["data.split"] == "popularity"]
    iid = store[store["data.split"] == "given"]
    assert ood["split.test_item_gini"].notna().all() and iid.get("split.test_item_gini", iid["status"]).isna().all()
    assert (ood["split.test_item_gini"] < ood["split.given_test_item_gini"]).all()
    assert store["test.ips_ndcg@20"].notna().all() and store["test.ips_recall@5"].notna().all()


def test_fig10_frame_and_plot(tiny_results):
    sweeps = open_sweeps([tiny_results / TINY_FOLDERS["loss-comparison-ood"]])
    frame = ood_frame(sweeps["loss-comparison-ood"])
    assert set(frame["split"]) == {"IID", "OOD"} and set(frame["model"]) == {"mf", "xsimgcl"}
    assert set(frame["loss"]) == {"SL"} and frame["ndcg@20"].notna().all()
    fig = plot_iid_vs_ood(frame)
    assert len(fig.axes) == 3
