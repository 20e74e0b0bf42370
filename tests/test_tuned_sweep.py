"""Sweeps at tuned settings: ``tuned: DIR`` in a sweep spec (rankrobust/sweeps/spec.py).

The best files are written by hand here, in the format the tuning engine
writes (``DIR/best/<arm>.yaml``: arm, values, settings, origin), so these
tests do not depend on the engine.
"""
from pathlib import Path

import pytest
import yaml

from rankrobust.config import ConfigError
from rankrobust.store import load_store
from rankrobust.runs import RunDir, SweepDir
from rankrobust.sweeps import load_spec, run_sweep
from tests.test_sweep import tiny_spec


def write_best(folder: Path, arm: str, values: dict, settings: dict, **origin) -> Path:
    """One best file as the tuning engine writes it."""
    path = folder / "best" / f"{arm}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    record = {"study": str(folder.absolute() / "study.db"), "study_name": arm, "trial": 17,
              "objective": "valid.ndcg@20", "value": 0.41, "direction": "maximize", "noise": "clean", **origin}
    path.write_text(yaml.safe_dump({"arm": arm, "values": values, "settings": settings, "origin": record}))
    return path


def tuned_spec(tmp_path: Path, tuned: str = "tuning", losses=("sl", "bsl"), ratios=(0.0,), **edits) -> Path:
    """`tiny_spec` with ``tuned:`` and without its override rule unless given."""
    path = tiny_spec(tmp_path, losses=losses, ratios=ratios)
    spec = yaml.safe_load(path.read_text())
    spec["tuned"] = tuned
    spec["overrides"] = edits.pop("overrides", [])
    spec.update(edits)
    path.write_text(yaml.safe_dump(spec))
    return path


def two_arms(tmp_path: Path) -> Path:
    folder = tmp_path / "tuning"
    write_best(folder, "mf-sl", {"model.name": "mf", "loss.name": "sl"},
               {"loss.tau": 0.21, "train.lr": 0.0013, "model.score": "dot"}, trial=17)
    write_best(folder, "mf-bsl", {"model.name": "mf", "loss.name": "bsl"},
               {"loss.tau1": 0.3, "loss.tau2": 0.07, "train.lr": 0.002}, trial=4)
    return folder


def one_line(err) -> str:
    text = str(err.value)
    assert "\n" not in text, text
    return text


def test_cells_take_their_arms_settings_and_record_the_origin(tmp_path):
    folder = two_arms(tmp_path)
    spec = load_spec(tuned_spec(tmp_path))  # relative to the spec file's folder
    assert spec.tuned == folder.absolute()
    by_loss = {c.values["loss.name"]: c for c in spec.cells}
    sl, bsl = by_loss["sl"].config, by_loss["bsl"].config
    assert (sl.loss.options.tau, sl.train.lr, sl.model.options.score) == (0.21, 0.0013, "dot")
    assert (bsl.loss.options.tau1, bsl.loss.options.tau2, bsl.train.lr) == (0.3, 0.07, 0.002)
    assert by_loss["sl"].origin["arm"] == "mf-sl" and by_loss["sl"].origin["origin"]["trial"] == 17
    record = spec.record()
    assert record["tuned"]["dir"] == str(folder.absolute())
    assert record["tuned"]["cells"] == {c.cell_id: c.origin["arm"] for c in spec.cells}
    assert record["tuned"]["arms"]["mf-bsl"]["settings"]["loss.tau1"] == 0.3
    assert "origins" not in record["options"]


def test_grid_and_override_rules_win_over_tuned_settings(tmp_path):
    two_arms(tmp_path)
    path = tuned_spec(tmp_path, losses=("sl",), grid={"loss.name": ["sl"], "loss.tau": [0.05, 0.5]},
                      overrides=[{"when": {"loss.tau": 0.5}, "set": {"train.lr": 0.004}}])
    cells = {c.values["loss.tau"]: c.config for c in load_spec(path).cells}
    assert cells[0.05].loss.options.tau == 0.05 and cells[0.05].train.lr == 0.0013  # the axis wins, lr is tuned
    assert cells[0.5].train.lr == 0.004 and cells[0.5].model.options.score == "dot"  # the rule wins


def test_changed_settings_make_the_cell_a_new_config(tmp_path):
    folder = two_arms(tmp_path)
    before = load_spec(tuned_spec(tmp_path)).record()["cells"]
    write_best(folder, "mf-sl", {"model.name": "mf", "loss.name": "sl"}, {"loss.tau": 0.3}, trial=40)
    after = load_spec(tuned_spec(tmp_path)).record()["cells"]
    changed = [k for k in before if before[k] != after[k]]
    assert len(changed) == 1 and "loss.name=sl" in changed[0]


def test_a_tiny_tuned_sweep_records_the_origin_in_each_run_folder(tmp_path):
    two_arms(tmp_path)
    spec = load_spec(tuned_spec(tmp_path, losses=("sl",)))
    out = SweepDir(tmp_path / "out")
    assert run_sweep(spec, out.path, progress=False).done == 1
    (cell,) = spec.cells
    run = out.run(cell.cell_id)
    assert run.status() == "done" and run.config()["loss"]["tau"] == 0.21
    origin = run.origin()
    assert origin["arm"] == "mf-sl" and origin["settings"]["train.lr"] == 0.0013
    assert origin["origin"]["objective"] == "valid.ndcg@20" and origin["origin"]["trial"] == 17
    assert origin["file"].endswith("best/mf-sl.yaml")
    assert out.spec()["tuned"]["cells"] == {cell.cell_id: "mf-sl"}
    assert RunDir(tmp_path / "untuned").origin() is None
    store = load_store(out.path)  # the store says which study and trial each run's settings came from
    assert store.loc[0, "origin.arm"] == "mf-sl" and store.loc[0, "origin.trial"] == 17


def test_a_cell_matching_no_arm_or_two_is_one_line_naming_the_arms(tmp_path):
    folder = tmp_path / "tuning"
    write_best(folder, "mf-sl", {"model.name": "mf", "loss.name": "sl"}, {"loss.tau": 0.2})
    with pytest.raises(ConfigError) as err:
        load_spec(tuned_spec(tmp_path))
    text = one_line(err)
    assert "'loss.name': 'bsl'" in text and "matches no tuned arm" in text and "(arms: mf-sl {" in text
    write_best(folder, "any-sl", {"loss.name": "sl"}, {"loss.tau": 0.3})
    with pytest.raises(ConfigError) as err:
        load_spec(tuned_spec(tmp_path, losses=("sl",)))
    text = one_line(err)
    assert "matches 2 tuned arms" in text and "any-sl" in text and "mf-sl" in text


@pytest.mark.parametrize("content, message", [
    ("arm: [unclosed", "not valid YAML at line"),
    ("- a list", "must be a mapping"),
    (yaml.safe_dump({"arm": "mf-sl", "values": {"loss.name": "sl"}, "settings": {}}),
     "lacks origin: it has arm, settings, values; a best file has exactly arm, values, settings, origin"),
    (yaml.safe_dump({"arm": "other", "values": {"loss.name": "sl"}, "settings": {}, "origin": {}}),
     "differs from the file's name"),
    (yaml.safe_dump({"arm": "mf-sl", "values": {"los.name": "sl"}, "settings": {}, "origin": {}}),
     "'los.name' is not a config key"),
    (yaml.safe_dump({"arm": "mf-sl", "values": {"loss.name": "sl"}, "settings": {}, "origin": {}, "x": 1}),
     "unknown key(s) x"),
])
def test_a_malformed_best_file_is_one_line_naming_it(tmp_path, content, message):
    path = tmp_path / "tuning" / "best" / "mf-sl.yaml"
    path.parent.mkdir(parents=True)
    path.write_text(content)
    with pytest.raises(ConfigError) as err:
        load_spec(tuned_spec(tmp_path, losses=("sl",)))
    text = one_line(err)
    assert str(path.absolute()) in text and message in text


def test_a_missing_or_empty_tuning_folder_is_one_line(tmp_path):
    with pytest.raises(ConfigError) as err:
        load_spec(tuned_spec(tmp_path, tuned="nowhere"))
    assert "nowhere is not a folder" in one_line(err)
    (tmp_path / "tuning" / "best").mkdir(parents=True)
    with pytest.raises(ConfigError) as err:
        load_spec(tuned_spec(tmp_path))
    assert "holds no best files" in one_line(err) and str(tmp_path / "tuning" / "best") in str(err.value)


def test_a_tuned_setting_that_acts_in_no_cell_is_an_error(tmp_path):
    write_best(tmp_path / "tuning", "mf-sl", {"model.name": "mf", "loss.name": "sl"}, {"loss.tau1": 0.2})
    with pytest.raises(ConfigError) as err:
        load_spec(tuned_spec(tmp_path, losses=("sl",)))
    assert "loss.tau1 (set in tuned" in one_line(err)


def test_the_store_names_the_origin_of_tuned_runs(tmp_path):
    """A tuned sweep's store has origin.* columns (arm, study, trial, objective); an untuned run has none."""
    from rankrobust.store import origin_columns

    record = {"arm": "mf-sl", "file": "/t/best/mf-sl.yaml", "settings": {"loss.tau": 0.2},
              "origin": {"study": "/t/study.db", "trial": 17, "objective": "valid.ndcg@20", "value": 0.41}}
    assert origin_columns(record) == {"origin.arm": "mf-sl", "origin.file": "/t/best/mf-sl.yaml",
                                      "origin.study": "/t/study.db", "origin.trial": 17,
                                      "origin.objective": "valid.ndcg@20", "origin.value": 0.41}
    assert origin_columns(None) == {}
