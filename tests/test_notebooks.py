"""The notebooks: real .ipynb sources stored without outputs, importing only rankrobust's public face,
running top to bottom on the miniature sweeps and, from a copy of notebooks/ with RANKROBUST_RESULTS
unset, on the example sweeps shipped in rankrobust/examples/ (as on a fresh clone)."""
from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import pytest

from rankrobust import EXAMPLES_DIR, RESULTS_ENV, SweepDir
from tests.conftest import REPO

nbformat = pytest.importorskip("nbformat", reason="notebook tests need the dev extra (nbformat)")
nbclient = pytest.importorskip("nbclient", reason="notebook tests need the dev extra (nbclient)")

NOTEBOOKS = sorted((REPO / "notebooks").glob("*.ipynb"))
IDS = [p.stem for p in NOTEBOOKS]
#: the sweep folders notebooks read from results_dir() (as in results/ and rankrobust/examples/)
FOLDERS = ("np-quick", "lc-quick", "var-quick", "bsl-batching-quick")
STRIP = ("jupyter nbconvert --clear-output --ClearMetadataPreprocessor.enabled=True "
         "--ClearMetadataPreprocessor.preserve_nb_metadata_mask=kernelspec --inplace notebooks/*.ipynb")


def code_sources(path: Path) -> list[str]:
    nb = json.loads(path.read_text())
    return ["".join(c["source"]) if isinstance(c["source"], list) else c["source"]
            for c in nb["cells"] if c["cell_type"] == "code"]


def folders_read(path: Path) -> list[str]:
    """The sweep folders a notebook names in its code (``RESULTS / "np-quick"``)."""
    code = "\n".join(code_sources(path))
    return [f for f in FOLDERS if f'"{f}"' in code]


def execute(path: Path, cwd: Path) -> nbformat.NotebookNode:
    """Run a notebook top to bottom with ``cwd`` as its working folder; return it with its outputs."""
    nb = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(cwd)}})
    client.execute()
    return nb


def outputs_text(nb) -> str:
    return "\n".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
                     if o.get("output_type") == "stream")


def assert_shows_figure(nb, name: str) -> None:
    images = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
              if "image/png" in o.get("data", {})]
    assert images, f"{name} shows no figure"


def test_four_notebooks_exist():
    assert [p.name[:2] for p in NOTEBOOKS] == ["01", "02", "03", "04"]
    assert not (REPO / "scripts" / "make_notebooks.py").exists(), "the .ipynb files are the notebooks' only source"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_notebook_stored_without_outputs(path):
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    dirty = [i for i, c in enumerate(nb.cells) if c.cell_type == "code"
             and (c.outputs or c.execution_count is not None or "execution" in c.metadata)]
    assert not dirty, f"{path.name}: code cells {dirty} carry outputs, execution counts or timings; " \
                      f"strip them with `{STRIP}` (or the git filter described in .gitattributes)"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_notebook_imports_only_the_public_face(path):
    deep = [line.strip() for src in code_sources(path) for line in src.splitlines()
            if re.match(r"\s*(from|import)\s+rankrobust\.", line)]
    assert not deep, f"{path.name} imports rankrobust submodules (use `from rankrobust import ...`): {deep}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_notebook_reads_results_dir(path):
    nb = nbformat.read(path, as_version=4)
    assert nb.cells[0].cell_type == "markdown" and RESULTS_ENV in nb.cells[0].source, \
        f"{path.name}: the first cell must say where results come from ({RESULTS_ENV}, shipped examples)"
    first = code_sources(path)[0]
    assert re.search(r"^from rankrobust import results_dir\b", first, re.M), \
        f"{path.name}: the first code cell must start from `from rankrobust import results_dir, ...`"
    assert "RESULTS = results_dir()" in first, f"{path.name}: read `RESULTS = results_dir()` in the first code cell"
    assert folders_read(path), f"{path.name} names none of the sweep folders {FOLDERS}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_notebook_runs(path, tiny_results, monkeypatch):
    """(a) top to bottom on the miniature sweeps (RANKROBUST_RESULTS = tiny_results)."""
    missing = [f for f in folders_read(path) if not SweepDir(tiny_results / f).store_path.exists()]
    if missing:
        pytest.skip(f"the tiny_results fixture (tests/conftest.py) has no {', '.join(missing)} folder yet")
    monkeypatch.setenv(RESULTS_ENV, str(tiny_results))
    monkeypatch.setenv("PYTHONPATH", str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    nb = execute(path, path.parent)
    assert_shows_figure(nb, path.name)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_notebook_runs_on_shipped_examples(path, tmp_path, monkeypatch):
    """(b) as on a fresh clone: RANKROBUST_RESULTS unset, run from a copy of notebooks/ elsewhere."""
    missing = [f for f in folders_read(path) if not SweepDir(EXAMPLES_DIR / f).store_path.exists()]
    if missing:
        pytest.skip(f"{EXAMPLES_DIR} is not populated ({', '.join(missing)} missing); "
                    f"run `python scripts/make_examples.py SRC` with SRC holding the finished quick sweeps as "
                    f"np-quick, lc-quick, var-quick and bsl-batching-quick (links to their folders will do)")
    copy = tmp_path / "notebooks"
    shutil.copytree(path.parent, copy)
    monkeypatch.delenv(RESULTS_ENV, raising=False)
    monkeypatch.setenv("PYTHONPATH", str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    nb = execute(copy / path.name, copy)
    assert f"reading sweeps from {EXAMPLES_DIR}" in outputs_text(nb), "results_dir() did not fall back to the examples"
    assert_shows_figure(nb, path.name)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_notebook_falls_back_per_sweep(path, tmp_path, monkeypatch):
    """(c) as after `export RANKROBUST_RESULTS=results` in a clone with no sweep run yet: the relative value is
    read against the shell's folder ($PWD), and every sweep the folder lacks comes from the shipped examples,
    with a note."""
    missing = [f for f in folders_read(path) if not SweepDir(EXAMPLES_DIR / f).store_path.exists()]
    if missing:
        pytest.skip(f"{EXAMPLES_DIR} is not populated ({', '.join(missing)} missing)")
    copy = tmp_path / "notebooks"
    shutil.copytree(path.parent, copy)
    (tmp_path / "results").mkdir()
    monkeypatch.setenv(RESULTS_ENV, "results")
    monkeypatch.setenv("PWD", str(tmp_path))
    monkeypatch.setenv("PYTHONPATH", str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    nb = execute(copy / path.name, copy)
    text = outputs_text(nb)
    assert f"reading sweeps from {tmp_path / 'results'}" in text
    for folder in folders_read(path):
        assert f"has no sweep {folder!r}" in text and str(EXAMPLES_DIR / folder) in text
    assert_shows_figure(nb, path.name)
