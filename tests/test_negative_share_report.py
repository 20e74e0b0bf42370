"""Check (e) of dro-check and figure 11: negative-side share per loss and p, SL against BPR at matched p."""
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from analysis import negative_share
from analysis.figures import FIGURES, MissingData, Sweep

SHARE, FRACTION = negative_share.SHARE, negative_share.FRACTION


def fake_store() -> pd.DataFrame:
    rows = []
    for pool in ("train", "heldout"):
        for p in (0.0, 0.1, 0.3):
            for loss, boost in (("sl", 7.0), ("bpr", 2.7), ("dcl", 1.5), ("psl", 5.0)):
                for seed in (0, 1):
                    row = {"status": "done", "data.name": "lastfm", "model.name": "mf", "noise.neg_pool": pool,
                           "noise.neg_prob": p, "loss.name": loss, "train.seed": seed,
                           "run_dir": f"runs/{pool}-{p}-{loss}-{seed}"}
                    if p > 0:  # p = 0 runs have no negative-side accounting
                        share = boost * p / (boost * p + 1 - p) + 0.001 * seed
                        row.update({SHARE: share, FRACTION: p + 0.0005 * seed})
                    rows.append(row)
    rows.append({"status": "failed", "loss.name": "sl", "noise.neg_prob": 0.1})
    return pd.DataFrame(rows)


def test_rows_summary_and_reading():
    rows = negative_share.run_rows(fake_store())
    assert len(rows) == 2 * 2 * 4 * 2  # pools × p > 0 × losses × seeds; p = 0 and the failed run left out
    assert np.allclose(rows["ratio"], rows["share"] / rows["fraction"])
    cmp = negative_share.sl_vs_bpr(rows)
    assert len(cmp) == 4 and cmp["up_weights"].all()  # (train, heldout) × (0.1, 0.3)
    sl = rows[(rows["loss"] == "sl") & (rows["noise.neg_pool"] == "train") & (rows["noise.neg_prob"] == 0.1)]
    bpr = rows[(rows["loss"] == "bpr") & (rows["noise.neg_pool"] == "train") & (rows["noise.neg_prob"] == 0.1)]
    got = cmp[(cmp["noise.neg_pool"] == "train") & (cmp["noise.neg_prob"] == 0.1)]["sl_over_bpr"].item()
    assert got == pytest.approx(sl["ratio"].mean() / bpr["ratio"].mean())
    reversed_ = negative_share.sl_vs_bpr(rows, loss="bpr", reference="sl")
    assert not reversed_["up_weights"].any()
    lines = negative_share.report_lines(rows)
    assert "SL up-weights false negatives relative to BPR in 4 of 4 matched cells" in lines[-1]
    assert any("pool heldout" in line and "p = 0.3" in line for line in lines)


def test_report_without_accounting_or_without_bpr():
    empty = negative_share.run_rows(pd.DataFrame({"status": ["done"], "loss.name": ["sl"]}))
    assert empty.empty and "no run with negative-side gradient accounting" in negative_share.report_lines(empty)[0]
    rows = negative_share.run_rows(fake_store())
    only_sl = rows[rows["loss"] == "sl"]
    assert "cannot be tested here" in negative_share.report_lines(only_sl)[-1]


def test_none_share_rows_are_left_out():
    store = fake_store()
    store.loc[store["loss.name"] == "dcl", SHARE] = None  # a loss that does not read s⁻ records None
    rows = negative_share.run_rows(store)
    assert "dcl" not in set(rows["loss"])


def test_figure_entry_draws_with_a_caption_from_the_frame(tmp_path):
    (entry,) = [f for f in FIGURES if f.stem == "fig11-negative-share"]
    assert entry.needs == ("noisy-negatives",)
    sweep = Sweep(Path(tmp_path), "noisy-negatives-lastfm-quick", fake_store())
    drawn = entry.render({"noisy-negatives": sweep})
    fig = drawn.figure
    text = " ".join(t.get_text() for t in fig.texts)
    assert "32 runs" in drawn.caption and "Drawn:" in drawn.caption  # the registry's caption names the runs drawn
    assert "losses: bpr, dcl, psl, sl; pools: heldout, train; backbones: mf; p: 0.1, 0.3; seeds: 0, 1; n = 32 runs" \
        in text
    assert len(fig.get_axes()) == 2 * 3  # pools × families present (classic, softmax, denoising)
    empty = Sweep(Path(tmp_path), "noisy-negatives-x", fake_store().drop(columns=[SHARE, FRACTION]))
    with pytest.raises(MissingData, match="no run with negative-side gradient accounting"):
        entry.draw({"noisy-negatives": empty})


# ---------------------------------------------------------------------------- rankrobust dro-check, check (e)
def test_dro_check_e_on_one_run_and_across_runs(tmp_path, capsys):
    from analysis.probes import probes_for
    from rankrobust.cli import main
    from rankrobust.experiment import run_experiment
    from tests.test_train import tiny_config

    folders = []
    for loss in ("sl", "bpr"):
        cfg = tiny_config(tmp_path, loss={"name": loss}, noise={"neg_prob": 0.3}, train={"epochs": 3, "lr": 0.05})
        folders.append(tmp_path / loss)
        run_experiment(cfg, folders[-1], progress=False, probes=probes_for())
    assert main(["dro-check", str(folders[0])]) == 0
    out = capsys.readouterr().out
    assert "(e) negative-side gradient on false negatives (p = 0.3, pool train, sl)" in out
    assert "x uniform)" in out and "all checks passed" in out
    assert main(["dro-check", *map(str, folders)]) == 0  # across runs: check (e) only
    out = capsys.readouterr().out
    assert "Does SL's worst-case (DRO) weighting up-weight false negatives relative to BPR?" in out
    assert "matched cells" in out and "PASS" not in out
    clean = tmp_path / "clean"
    run_experiment(tiny_config(tmp_path, train={"epochs": 1}), clean, progress=False, probes=probes_for())
    assert main(["dro-check", str(clean)]) == 0
    assert "(e) skipped: the run has no false negatives" in capsys.readouterr().out
