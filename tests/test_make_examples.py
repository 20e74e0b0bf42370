"""scripts/make_examples.py: its refusals (one line naming the file and the fix, exit 2), its default size
limit (the shipped examples fit under it) and the README's "command that made it" column."""
from __future__ import annotations

import importlib.util
import shutil
import sys
from pathlib import Path

import pandas as pd
import pytest

from rankrobust import EXAMPLES_DIR, SweepDir
from tests.conftest import REPO, _tiny_sweep, write_tiny_split

SCRIPT = REPO / "scripts" / "make_examples.py"


def _load():
    spec = importlib.util.spec_from_file_location("make_examples", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


make_examples = _load()


@pytest.fixture(scope="module")
def one_sweep(tmp_path_factory) -> Path:
    """A results folder holding one finished one-run sweep as ``np-quick`` (the first folder the script reads)."""
    root = tmp_path_factory.mktemp("results")
    data = write_tiny_split(root / "data", 20, 30, 0.2)
    _tiny_sweep(root, data, "noisy-positives-tiny", {"loss.name": ["sl"]})
    assert SweepDir(root / "np-quick").spec_path.is_file()
    return root


def refusal(capsys, argv: list[str]) -> str:
    """Run the script's main on ``argv``; assert it refused with exit 2 and one stderr line; return that line."""
    with pytest.raises(SystemExit) as stop:
        make_examples.main(argv)
    assert stop.value.code == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def test_missing_src_is_named_first(tmp_path, capsys):
    line = refusal(capsys, [str(tmp_path / "nowhere"), "--out", str(tmp_path / "ex")])
    assert line.startswith(f"make_examples.py: error: SRC {tmp_path / 'nowhere'} does not exist"), line
    assert "no sweep folder" not in line
    assert not (tmp_path / "ex").exists()


def test_src_file_is_not_a_folder(tmp_path, capsys):
    (tmp_path / "results").write_text("")
    line = refusal(capsys, [str(tmp_path / "results"), "--out", str(tmp_path / "ex")])
    assert f"SRC {tmp_path / 'results'} is not a folder" in line


def test_sweep_folder_without_sweep_json(one_sweep, tmp_path, capsys):
    src = tmp_path / "results"
    shutil.copytree(one_sweep / "np-quick", src / "np-quick")
    (src / "np-quick" / SweepDir.SPEC).unlink()
    line = refusal(capsys, [str(src), "--out", str(tmp_path / "ex")])
    assert f"{src / 'np-quick' / SweepDir.SPEC} is missing" in line
    assert f"rankrobust sweep SPEC --out {src / 'np-quick'}" in line
    assert not (tmp_path / "ex").exists() and not list(tmp_path.glob(".ex.*"))


@pytest.mark.parametrize("damage", ["{not json", "[1, 2]"], ids=["truncated", "not-an-object"])
def test_damaged_sweep_json(one_sweep, tmp_path, capsys, damage):
    src = tmp_path / "results"
    shutil.copytree(one_sweep / "np-quick", src / "np-quick")
    (src / "np-quick" / SweepDir.SPEC).write_text(damage)
    line = refusal(capsys, [str(src), "--out", str(tmp_path / "ex")])
    assert str(src / "np-quick" / SweepDir.SPEC) in line and "rankrobust sweep SPEC --out" in line


def test_damaged_store(one_sweep, tmp_path, capsys):
    src = tmp_path / "results"
    shutil.copytree(one_sweep / "np-quick", src / "np-quick")
    (src / "np-quick" / SweepDir.STORE).write_bytes(b"not parquet")
    line = refusal(capsys, [str(src), "--out", str(tmp_path / "ex")])
    assert str(src / "np-quick" / SweepDir.STORE) in line


def test_default_size_limit_holds_the_shipped_examples():
    args = make_examples.arguments().parse_args(["results"])
    assert args.max_mb == make_examples.MAX_MB == 8.0
    if not SweepDir(EXAMPLES_DIR / "lc-quick").store_path.exists():
        pytest.skip(f"{EXAMPLES_DIR} is not populated")
    assert make_examples.folder_bytes(EXAMPLES_DIR) <= args.max_mb * 1e6


def test_readme_command_names_the_folder_that_ran_the_sweep(tmp_path):
    """SRC/np-quick may be a link to the folder the sweep actually ran in (results/np-v2): name that one."""
    (tmp_path / "np-v2").mkdir()
    (tmp_path / "np-quick").symlink_to(tmp_path / "np-v2", target_is_directory=True)
    store = pd.DataFrame({"run_dir": [], "status": []})
    facts = [{"example": make_examples.EXAMPLES[0], "source": tmp_path / "np-quick",
              "spec": {"name": "noisy-positives-lastfm-quick",
                       "source": "configs/sweeps/noisy-positives-lastfm-quick.yaml"},
              "store": store, "done": store, "tables": {}, "weights_cell": None}]
    text = make_examples.readme(facts, None, 0)
    row = next(line for line in text.splitlines() if line.startswith("| `np-quick`"))
    assert "`rankrobust sweep configs/sweeps/noisy-positives-lastfm-quick.yaml --out results/np-v2`" in row
    assert "results/np-quick" not in row
