"""`rankrobust figures` draws every figure of the `FIGURES` registry from sweep stores."""
from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest

from analysis import figures, plots
from analysis.figures import FIGURES, figures_readme, figures_readme_block, open_sweeps, sweep_kinds
from rankrobust.cli import main
from rankrobust.runs import SweepDir
from tests.conftest import REPO, TINY_FOLDERS


def _dirs(root, kinds=None):
    return [str(root / TINY_FOLDERS[k]) for k in (kinds or sweep_kinds())]


def _readme_stems(text: str) -> list[str]:
    """File stems of the generated figure table, in order."""
    block = text[text.index(figures.README_BEGIN):text.index(figures.README_END)]
    return re.findall(r"^\| (?:\d+) \| `([^`]+)` \|", block, flags=re.M)


def test_registry_is_consistent():
    numbers = [f.number for f in FIGURES]
    assert numbers == list(range(1, len(FIGURES) + 1))
    assert len({f.stem for f in FIGURES}) == len(FIGURES)
    for fig in FIGURES:
        assert fig.stem.startswith(f"fig{fig.number}-")
        assert isinstance(fig.needs, tuple) and fig.needs and fig.caption.strip()
    assert set(sweep_kinds()) == {k for f in FIGURES for k in f.needs}
    assert set(sweep_kinds()) <= set(TINY_FOLDERS), "every sweep kind needs a tiny sweep in tests/conftest.py"
    with pytest.raises(ValueError, match="unknown figure"):
        figures.select(["fig99-nothing"])


def test_every_registry_figure_is_drawn(tiny_results, tmp_path, capsys):
    out = tmp_path / "figs"
    assert main(["figures", *_dirs(tiny_results), "--out", str(out)]) == 0
    assert "skipped" not in capsys.readouterr().err
    assert sorted(p.stem for p in out.glob("*.png")) == sorted(f.stem for f in FIGURES)
    for fig in FIGURES:
        assert (out / f"{fig.stem}.pdf").stat().st_size > 1000
        sidecar = (out / f"{fig.stem}.txt").read_text()
        assert fig.caption in sidecar and "rankrobust figures" in sidecar
        assert sidecar.split("command: ")[1].splitlines()[0].endswith(f" --only {fig.number}")  # this figure alone
        for kind in fig.needs:
            assert str(SweepDir(tiny_results / TINY_FOLDERS[kind]).store_path) in sidecar
    readme = (out / "README.md").read_text()
    assert _readme_stems(readme) == [f.stem for f in FIGURES]
    for kind in sweep_kinds():  # the folders actually used are in the commands
        assert str(tiny_results / TINY_FOLDERS[kind]) in readme


def test_missing_sweeps_are_skipped(tiny_results, tmp_path, capsys):
    made = [f for f in FIGURES if f.needs == ("tau-ratio",)]
    other = next(f for f in FIGURES if "tau-ratio" not in f.needs)
    only = [x for f in made + [other] for x in ("--only", str(f.number))]
    assert main(["figures", str(tiny_results / TINY_FOLDERS["tau-ratio"]), "--out", str(tmp_path / "f"), *only]) == 0
    assert sorted(p.name for p in (tmp_path / "f").glob("*.png")) == sorted(f"{f.stem}.png" for f in made)
    assert f"skipped {other.stem}" in capsys.readouterr().err
    assert _readme_stems((tmp_path / "f" / "README.md").read_text()) == [f.stem for f in FIGURES]


def test_open_sweeps_takes_kinds_from_the_registry(tiny_results, capsys):
    sweeps = open_sweeps([*_dirs(tiny_results), tiny_results / "data"])
    assert set(sweeps) == set(sweep_kinds())
    for kind, sweep in sweeps.items():
        assert sweep.name.startswith(kind) and sweep.path == tiny_results / TINY_FOLDERS[kind]
    assert "ignored" in capsys.readouterr().err  # the data folder is no sweep


def test_readme_lists_exactly_the_registry():
    text = figures_readme()
    assert _readme_stems(text) == [f.stem for f in FIGURES]
    for fig in FIGURES:
        assert f"--only {fig.number}`" in text
    for kind in sweep_kinds():
        assert f"configs/sweeps/{kind}-lastfm-quick.yaml" in text
        assert (REPO / "configs" / "sweeps" / f"{kind}-lastfm-quick.yaml").exists()


def test_committed_readme_is_current():
    """figures/README.md holds the block `figures_readme_block()` generates.

    After changing the registry: ``python -m analysis.figures`` (from the repository root) refreshes it.
    """
    text = (REPO / "figures" / "README.md").read_text()
    block = text[text.index(figures.README_BEGIN):text.index(figures.README_END) + len(figures.README_END)]
    assert block + "\n" == figures_readme_block(), "stale figures/README.md: run `python -m analysis.figures`"


def test_update_readme_keeps_hand_written_text(tmp_path):
    path = tmp_path / "README.md"
    figures.update_readme(path, figures_readme_block())
    path.write_text(path.read_text().replace("# Figures\n", "# Figures\n\nhand-written intro\n") + "\nfindings\n")
    figures.update_readme(path, figures_readme_block(out="elsewhere"))
    text = path.read_text()
    assert "hand-written intro" in text and text.rstrip().endswith("findings")
    assert text.count(figures.README_BEGIN) == 1 and "--out elsewhere" in text


def test_fig8_shares_in_training_and_counterfactual(tiny_results, tmp_path):
    sweep = open_sweeps(_dirs(tiny_results, ["noisy-positives"]))["noisy-positives"]
    shares = figures.gradient_share_frame(sweep)
    assert set(shares["measure"]) == {plots.IN_TRAINING, plots.COUNTERFACTUAL}
    assert set(shares["loss"]) == {"SL", "BSL"} and (shares["noise_ratio"] > 0).all()
    sl = shares[(shares["loss"] == "SL") & (shares["measure"] == plots.IN_TRAINING)]
    np.testing.assert_allclose(sl["noisy_share"], sl["noisy_fraction"], rtol=1e-9)  # PROTOCOLS §9: SL's share
    _, _, _, old = figures.dro_frames(sweep)
    assert set(old["measure"]) == {plots.COUNTERFACTUAL}  # what notebooks read: counterfactual only

    # a store from before in-training accounting: counterfactual only, and the panel says so
    legacy = figures.Sweep(sweep.path, sweep.name,
                           sweep.store.drop(columns=[c for c in sweep.store if c.startswith("gradient_accounting.")]))
    pd_, q, grad, cf = figures.dro_figure_frames(legacy)
    assert set(cf["measure"]) == {plots.COUNTERFACTUAL}
    fig = plots.plot_dro_figure(pd_, q, grad, cf)
    assert "counterfactual only" in fig.axes[2].get_title()
    fig.savefig(tmp_path / "legacy.png", dpi=50)


def test_fig9_frame(tiny_results):
    sweep = open_sweeps(_dirs(tiny_results, ["bsl-batching"]))["bsl-batching"]
    df = figures.batching_frame(sweep)
    assert len(df) == len(sweep.done) == 8
    assert set(zip(df["loss"], df["batching"])) == {(a, b) for a in ("SL", "BSL") for b in ("pairs", "users")}
    clean = df[df["noise_ratio"] == 0]
    assert clean["noisy_share"].isna().all() and clean["noisy_fraction"].isna().all()
    noisy = df[df["noise_ratio"] > 0]
    assert noisy["noisy_share"].between(0, 1).all() and noisy["noisy_fraction"].gt(0).all()
    sl = noisy[noisy["loss"] == "SL"]
    np.testing.assert_allclose(sl["noisy_share"], sl["noisy_fraction"], rtol=1e-9)
    with pytest.raises(figures.MissingData, match="in-training"):
        figures.batching_frame(figures.Sweep(sweep.path, sweep.name, sweep.store.drop(
            columns=[figures.IN_TRAINING_SHARE])))
    assert isinstance(df, pd.DataFrame)


def test_no_usable_sweep_is_one_error_line(tiny_results, tmp_path, capsys):
    """Nothing can be drawn: one error line naming each folder and what to pass, exit 2, nothing written."""
    run = next((tiny_results / TINY_FOLDERS["tau-ratio"] / "runs").iterdir())
    out = tmp_path / "figs"
    assert main(["figures", str(tmp_path / "nope"), str(run), str(run / "metrics.json"), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "skipped" not in err and "ignored" not in err
    assert err.startswith(f"rankrobust figures: error: no figure can be drawn: {tmp_path / 'nope'} does not exist; "
                          f"pass a sweep folder (one written by `rankrobust sweep SPEC --out DIR`")
    assert f"{run} is a single run folder" in err and f"its metrics are in {run / 'metrics.json'}" in err
    assert f"{run / 'metrics.json'} is a file of the single run folder" in err
    assert err.endswith("(figures/README.md lists the sweep each figure needs)")
    assert not out.exists()
    # one usable folder among them: the others are ignored with a line each and the figures are drawn
    assert main(["figures", str(tmp_path / "nope"), str(tiny_results / TINY_FOLDERS["tau-ratio"]), "--out",
                 str(out), "--only", "fig1-loss-comparison"]) == 0
    assert f"ignored {tmp_path / 'nope'}: {tmp_path / 'nope'} does not exist" in capsys.readouterr().err


def test_figures_of_a_sweep_stopped_in_its_first_cell_skip_it_in_one_line(tmp_path, capsys):
    """No finished run: no metric columns in the store; the figure is skipped naming the folder (no KeyError)."""
    from rankrobust.cli import main
    from rankrobust.runs import SweepDir
    from rankrobust.store import write_store
    from rankrobust.sweeps import load_spec
    from rankrobust.sweeps.runner import prepare_out
    from tests.test_sweep import tiny_spec

    spec = load_spec(tiny_spec(tmp_path, name="noisy-positives-stopped"))
    sweep = SweepDir(tmp_path / "out")
    sweep.path.mkdir()
    prepare_out(spec, sweep)
    cell = spec.cells[0]
    sweep.run(cell.cell_id).path.mkdir(parents=True)
    sweep.run(cell.cell_id).write_config(cell.config.to_json())  # stopped before its status
    write_store(sweep.path)
    assert main(["figures", str(sweep.path), "--out", str(tmp_path / "figs"), "--only", "2"]) == 0
    err = capsys.readouterr().err
    assert f"skipped fig2-noisy-positives: {sweep.path} has no finished run yet" in err
    assert f"note: {sweep.path}: 0 of {len(spec.cells)} cells done; missing: " in err
