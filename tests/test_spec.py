"""Sweep specs (rankrobust/sweeps/spec.py): parsing, validation, grid expansion into cells."""
import pytest

from rankrobust.config import ConfigError
from rankrobust.sweeps import cell_id, load_spec, parse_spec
from tests.conftest import REPO
from tests.test_sweep import tiny_spec


def test_expansion_and_overrides(tmp_path):
    spec = load_spec(tiny_spec(tmp_path, seeds=(0, 1)))
    cells = spec.cells
    assert len(cells) == 2 * 2 * 2
    assert len({c.cell_id for c in cells}) == len(cells)
    bsl = [c for c in cells if c.values["loss.name"] == "bsl"]
    assert all(c.config.loss.options.tau1 == 0.5 for c in bsl)
    # SL takes no τ₁: the template's loss.tau1 is left out of SL cells (and of their config.json)
    assert all(getattr(c.config.loss.options, "tau1", None) is None for c in cells if c.values["loss.name"] == "sl")
    assert all("tau1" not in c.config.to_dict()["loss"] for c in cells if c.values["loss.name"] == "sl")
    assert {c.config.train.seed for c in cells} == {0, 1}


@pytest.mark.parametrize("bad,match", [
    ({"grid": {"loss.nme": ["sl"]}}, "did you mean 'name'"),
    ({"gird": {}}, "did you mean 'grid'"),
    ({"grid": {"loss.name": ["sl", "slx"]}}, "did you mean 'sl'"),
    ({"grid": {"loss.name": []}}, "non-empty"),
    ({"options": {"fairnes": True}}, "did you mean 'fairness'"),
])
def test_bad_specs_fail_early(bad, match):
    with pytest.raises(ConfigError, match=match):
        parse_spec({"name": "x", **bad})


def test_shipped_specs_parse():
    specs = sorted((REPO / "configs" / "sweeps").glob("*.yaml"))
    assert len(specs) >= 16
    for path in specs:
        spec = load_spec(path)
        assert spec.cells


def test_cell_ids_are_readable_and_filesystem_safe():
    assert cell_id({"loss.name": "sl", "noise.pos_ratio": 0.2}, 3) == "loss.name=sl__noise.pos_ratio=0.2__seed=3"
    assert "/" not in cell_id({"data.train_path": "a/b c.txt"}, 0)


def test_seeds_scalar_and_grid_order():
    spec = parse_spec({"name": "x", "grid": {"loss.name": ["sl", "bpr"], "train.lr": [0.1, 0.01]}, "seeds": 7})
    assert [c.seed for c in spec.cells] == [7] * 4
    assert [c.values for c in spec.cells] == [{"loss.name": "sl", "train.lr": 0.1}, {"loss.name": "sl", "train.lr": 0.01},
                                              {"loss.name": "bpr", "train.lr": 0.1},
                                              {"loss.name": "bpr", "train.lr": 0.01}]
    assert spec.record()["grid"] == spec.grid


def test_preset_base_and_missing_preset(tmp_path):
    preset = tmp_path / "p.yaml"
    preset.write_text("train: {epochs: 9, lr: 0.5}\n")
    spec = parse_spec({"name": "x", "base": {"preset": str(preset), "train": {"epochs": 2}}}, tmp_path / "s.yaml")
    (cell,) = spec.cells
    assert cell.config.train.epochs == 2 and cell.config.train.lr == 0.5
    with pytest.raises(ConfigError, match="preset 'gone.yaml' not found"):
        parse_spec({"name": "x", "base": {"preset": "gone.yaml"}})


def test_invalid_cell_names_the_cell():
    with pytest.raises(ConfigError, match=r"cell \{'train.lr': -1\.0\} seed 0: .*train.lr must be > 0"):
        parse_spec({"name": "x", "grid": {"train.lr": [0.1, -1.0]}})


def test_record_lists_every_cell_with_its_config_hash(tmp_path):
    """sweep.json records the spec's cells, so results can use exactly these (and tell stale runs apart)."""
    from rankrobust.runs import config_hash

    spec = load_spec(tiny_spec(tmp_path, seeds=(0, 1)))
    cells = spec.record()["cells"]
    assert list(cells) == [c.cell_id for c in spec.cells]
    assert all(cells[c.cell_id] == config_hash(c.config.to_dict()) for c in spec.cells)
    assert len(set(cells.values())) == len(cells)  # every cell's config differs (seed at least)
    assert config_hash(spec.cells[0].config.to_dict()) == config_hash(
        __import__("json").loads(spec.cells[0].config.to_json()))  # as read back from config.json


def test_unreadable_spec_path_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="cannot be read"):
        load_spec(tmp_path)  # a folder, not a file


# ---------------------------------------------------------------------------- issue 25: bounded YAML, same-config cells
def test_billion_laughs_spec_is_one_line_within_a_second(tmp_path):
    import time

    from tests.test_config import LAUGHS

    path = tmp_path / "laughs.yaml"
    path.write_text(LAUGHS)
    start = time.perf_counter()
    with pytest.raises(ConfigError, match=rf"^sweep spec {path}: the YAML document expands to more than 100,000"):
        load_spec(path)
    assert time.perf_counter() - start < 1.0


@pytest.mark.parametrize("seeds", [0.5, "0", [0, 1.5], [], [True]])
def test_seeds_that_are_not_whole_numbers_are_one_line(seeds):
    with pytest.raises(ConfigError, match=r"seeds must be a whole number or a non-empty list of whole numbers"):
        parse_spec({"name": "s", "grid": {"loss.name": ["sl"]}, "seeds": seeds})


def test_cells_that_resolve_to_the_same_config_run_once(tmp_path):
    """loss.tau acts for SL and not for BPR: the two BPR cells of each seed are one config, so one cell."""
    data = {"name": "s", "grid": {"loss.name": ["sl", "bpr"], "loss.tau": [0.1, 0.2]}, "seeds": [0, 1]}
    with pytest.warns(UserWarning, match=r"loss.tau does not act in some cells .* 2 cell\(s\) resolve to the same "
                                         r"config as another and run once, as that cell \(e.g. "
                                         r"loss.name=bpr__loss.tau=0.2__seed=0 is loss.name=bpr__loss.tau=0.1__seed=0\)"):
        spec = parse_spec(data)
    ids = [c.cell_id for c in spec.cells]
    assert ids == [cell_id({"loss.name": "sl", "loss.tau": t}, s) for t in (0.1, 0.2) for s in (0, 1)] + \
        [cell_id({"loss.name": "bpr", "loss.tau": 0.1}, s) for s in (0, 1)]
    hashes = [c.config.to_dict() for c in spec.cells]
    assert all(hashes.count(h) == 1 for h in hashes)  # every config once
    assert set(spec.record()["cells"]) == set(ids)  # the other BPR folder would be stale: left out of results
