"""`rankrobust figures` draws all eight figures from sweep stores."""
from rankrobust.cli import main


def test_all_eight_figures(tiny_results, tmp_path, capsys):
    dirs = [str(tiny_results / d) for d in ("np-quick", "nn-quick", "lc-quick", "tr-quick", "var-quick")]
    assert main(["figures", *dirs, "--out", str(tmp_path / "figs")]) == 0
    pngs = sorted(p.stem for p in (tmp_path / "figs").glob("*.png"))
    assert len(pngs) == 8 and pngs[0].startswith("fig1") and pngs[-1].startswith("fig8")
    for stem in pngs:
        assert (tmp_path / "figs" / f"{stem}.pdf").stat().st_size > 1000
        sidecar = (tmp_path / "figs" / f"{stem}.txt").read_text()
        assert "rankrobust figures" in sidecar and "store.parquet" in sidecar


def test_missing_sweeps_are_skipped(tiny_results, tmp_path, capsys):
    assert main(["figures", str(tiny_results / "tr-quick"), "--out", str(tmp_path / "f"), "--only", "6",
                 "--only", "2"]) == 0
    assert [p.name for p in (tmp_path / "f").glob("*.png")] == ["fig6-tau-ratio.png"]
    assert "skipped fig2-noisy-positives" in capsys.readouterr().err
