"""Run identity (issue 24, item 2): stored configs are compared in canonical form.

`rankrobust.config.canonical_config` migrates a stored ``config.json``
(`MIGRATIONS`, by its ``"schema"``) and fills every default; sweeps
(`is_finished`), the store (``config_hash``, outdated rows) and the dry run
compare that form, so an option added with a default equal to the old
behaviour never makes stored runs outdated.
"""
import json
import math
from pathlib import Path

import pandas as pd
import pytest
import yaml

from rankrobust import config as config_module
from rankrobust.cli import main
from rankrobust.config import (CONFIG_SCHEMA, MIGRATIONS, Migration, OutdatedConfig, RunConfig, canonical_config,
                               config_from_dict, option_defaults, stored_config)
from rankrobust.runs import RunDir, SweepDir, config_hash
from rankrobust.store import load_store, run_row, store_problems, write_store
from rankrobust.sweeps.cell import is_finished, unfinished_reason
from rankrobust.sweeps.runner import pending_cells, stale_run_names
from rankrobust.sweeps.spec import parse_spec

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "rankrobust" / "examples"
#: the np-quick example as shipped until 2026-12 (config, metrics and status of its 20 runs, its store and spec
#: record): runs written before five options and BCE's temperature existed, kept to test that old runs stay done
OLD_NP_QUICK = Path(__file__).parent / "data" / "np-quick-2026-11"
SNAPSHOT = Path(__file__).parent / "data" / "option_defaults.json"


def example_spec(folder: Path) -> dict:
    """The sweep an example store ran, as the shipped spec file defines its cells today.

    The recorded grid values and seeds (``sweep.json``) on the shipped spec
    (``configs/sweeps/*-quick.yaml``, the record's ``source``): base and
    override rules from the file, grid keys in the file's order (the record
    keeps them sorted; cell ids follow the spec's order).  The shipped specs
    have since gained grid values (losses, backbones) the examples never ran.
    """
    record = SweepDir(folder).spec()
    data = yaml.safe_load((REPO / record["source"]).read_text())
    assert set(record["grid"]) <= set(data["grid"]), f"{folder.name}: recorded grid keys not in {record['source']}"
    data["grid"] = {k: record["grid"][k] for k in data["grid"] if k in record["grid"]}
    data["seeds"] = record["seeds"]
    if "tuned" in data:  # relative to the spec file, which a test writes elsewhere
        data["tuned"] = str((REPO / record["source"]).parent / data["tuned"])
    return data


def fingerprint(folder: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(folder.rglob("*"))
            if p.is_file()}


@pytest.mark.parametrize("name", ["np-quick", "bsl-batching-quick", "lc-quick", "var-quick", OLD_NP_QUICK])
def test_example_stores_resume_as_done(name, recwarn):
    """"Resume as done": on the current code, every cell of the example's sweep (`example_spec`) is done
    (`pending_cells`: 0 to run, the count equals the run folders), no run folder is stale, and the store
    shows every run as current (not stale, not outdated, no problem line).  The old np-quick's runs predate
    five options (data.split, data.ood_test_fraction, train.ips_gamma, train.deterministic, train.scorer; their
    defaults are the old behaviour) and BCE's temperature (migrated to τ = 1, the old behaviour).  Nothing is
    written."""
    folder = EXAMPLES / name
    before = fingerprint(folder)
    spec = parse_spec(example_spec(folder), REPO / SweepDir(folder).spec()["source"])
    sweep = SweepDir(folder)
    todo, done = pending_cells(spec, sweep)
    assert [c.cell_id for c in todo] == [] and done == len(sweep.run_dirs()) == len(spec.cells)
    assert stale_run_names(spec, sweep) == []
    full = load_store(folder, include_stale=True)
    assert len(full) == done and not full["stale"].any() and not full["outdated"].any()
    assert store_problems(full, folder) == []
    assert fingerprint(folder) == before


def test_example_dry_run_says_all_done(tmp_path, capsys, recwarn):
    """`rankrobust sweep SPEC --out rankrobust/examples/np-quick --dry-run` with the example's sweep: all done."""
    for folder, runs in ((EXAMPLES / "np-quick", 105), (OLD_NP_QUICK, 20)):
        path = tmp_path / "np-quick.yaml"
        path.write_text(yaml.safe_dump(example_spec(folder)))
        before = fingerprint(folder)
        assert main(["sweep", str(path), "--out", str(folder), "--dry-run"]) == 0
        assert f"{runs} runs, {runs} done, 0 to run" in capsys.readouterr().out
        assert fingerprint(folder) == before


def test_recorded_spec_reads_bce_at_todays_default():
    """The np-quick record's own spec leaves BCE's τ unset, which reads as today's default 0.1: those five
    cells are different runs from the stored ones (τ = 1 then), so they are pending and the rest done.  This
    is why a default that changes behaviour needs a migration and why the example test uses the shipped spec."""
    folder = OLD_NP_QUICK
    record = SweepDir(folder).spec()
    spec = parse_spec({k: record[k] for k in ("name", "base", "grid", "seeds", "overrides", "options")})
    todo, done = pending_cells(spec, SweepDir(folder))
    assert done == 15 and {c.config.loss.name for c in todo} == {"bce"}
    assert {c.config.loss.options.tau for c in todo} == {0.1}
    assert all(unfinished_reason(SweepDir(folder).run(c.cell_id), c.config.to_dict()) == "made with another config"
               for c in todo)
    stored = SweepDir(folder).run(todo[0].cell_id)
    assert stored.config()["loss"] == {"name": "bce"} and stored.canonical_config()["loss"] == {"name": "bce",
                                                                                                "tau": 1.0}


# --------------------------------------------------------------------------- canonical form
def old_config(cfg: RunConfig, *missing: str) -> dict:
    """``cfg`` as a version-1 ``config.json`` written before the dotted options ``missing`` existed."""
    tree = cfg.to_dict()
    for key in missing:
        section, _, name = key.partition(".")
        del tree[section][name]
    return tree


def done_run(folder: Path, tree: dict) -> RunDir:
    run = RunDir(folder)
    run.prepare()
    run.write_config(json.dumps(tree))
    run.write_metrics({"test": {"recall@20": 0.5}})
    run.finish()
    return run


def test_config_missing_a_defaulted_option_matches_its_canonical_form(tmp_path):
    cfg = config_from_dict({"loss": {"name": "sl", "tau": 0.2}, "train": {"epochs": 3}})
    old = old_config(cfg, "train.scorer", "data.split", "train.deterministic")
    assert "schema" not in old and canonical_config(old) == cfg.to_dict()
    assert config_hash(canonical_config(old)) == config_hash(cfg.to_dict()) != config_hash(old)
    run = done_run(tmp_path / "run", old)
    assert is_finished(run, cfg.to_dict()) and unfinished_reason(run, cfg.to_dict()) is None
    assert not is_finished(run, cfg.with_overrides({"loss.tau": 0.3}).to_dict())
    row = run_row(run)  # the store's hash is of the canonical form, its columns as stored
    assert "train.scorer" not in row and row["config_hash"] == config_hash(cfg.to_dict())
    assert row.get("outdated_config") is None


def test_bce_without_tau_is_migrated_to_the_old_behaviour():
    old = old_config(config_from_dict({"loss": {"name": "bce"}}), "loss.tau")
    assert canonical_config(old)["loss"] == {"name": "bce", "tau": 1.0}  # version 1: plain logits
    assert canonical_config({**old, "schema": 2})["loss"] == {"name": "bce", "tau": 0.1}  # today's layout
    assert canonical_config(config_from_dict({"loss": {"name": "bce", "tau": 0.3}}).to_dict())["loss"]["tau"] == 0.3
    sl = old_config(config_from_dict({"loss": {"name": "sl"}}), "loss.tau")
    assert canonical_config(sl)["loss"]["tau"] == 0.1  # the rule is BCE's only


def test_schema_is_written_read_and_stripped(tmp_path):
    from tests.test_sweep import write_tiny_data
    from rankrobust.experiment import run_experiment

    train, test = write_tiny_data(tmp_path / "data")
    cfg = config_from_dict({"data": {"train_path": train, "test_path": test}, "model": {"dim": 8},
                            "train": {"epochs": 1, "num_negatives": 4, "batch_size": 64, "device": "cpu"}})
    run_experiment(cfg, tmp_path / "run", progress=False)
    run = RunDir(tmp_path / "run")
    assert run.stored_config()["schema"] == CONFIG_SCHEMA == stored_config(cfg)["schema"]
    assert "schema" not in run.config() and run.config() == cfg.to_dict() == run.canonical_config()
    assert config_from_dict(run.stored_config()).to_dict() == cfg.to_dict()
    assert is_finished(run, cfg.to_dict())
    with pytest.raises(OutdatedConfig, match="newer rankrobust"):
        canonical_config({**cfg.to_dict(), "schema": CONFIG_SCHEMA + 1})
    with pytest.raises(OutdatedConfig, match="not a config schema"):
        canonical_config({**cfg.to_dict(), "schema": "2"})


def test_renamed_option_is_migrated(monkeypatch):
    """A rename rule (here a made-up schema 3 renaming train.rate to train.lr) moves the stored value."""
    rule = Migration(CONFIG_SCHEMA + 1, "rename", "train.rate", to="train.lr", doc="test rename")
    monkeypatch.setattr(config_module, "MIGRATIONS", (*MIGRATIONS, rule))
    monkeypatch.setattr(config_module, "CONFIG_SCHEMA", CONFIG_SCHEMA + 1)
    cfg = config_from_dict({"train": {"lr": 0.05}})
    old = old_config(cfg, "train.lr")
    old["train"]["rate"] = 0.05
    assert canonical_config({**old, "schema": CONFIG_SCHEMA}) == cfg.to_dict()
    assert canonical_config(old) == cfg.to_dict()  # version 1 gets every rule, in order
    with pytest.raises(OutdatedConfig, match="train.rate"):  # a file of the new schema has no old name
        canonical_config({**old, "schema": CONFIG_SCHEMA + 1})
    both = {**cfg.to_dict(), "schema": CONFIG_SCHEMA}
    both["train"] = {**both["train"], "rate": 0.1}
    with pytest.raises(OutdatedConfig, match="both are set"):
        canonical_config(both)


def test_removed_option_with_a_rule(monkeypatch):
    """A remove rule: the value the code still behaves as is dropped; any other makes the run outdated."""
    rule = Migration(CONFIG_SCHEMA + 1, "remove", "train.legacy", value=False, doc="always off now")
    monkeypatch.setattr(config_module, "MIGRATIONS", (*MIGRATIONS, rule))
    monkeypatch.setattr(config_module, "CONFIG_SCHEMA", CONFIG_SCHEMA + 1)
    cfg = config_from_dict({})
    kept = {**cfg.to_dict(), "schema": CONFIG_SCHEMA}
    kept["train"] = {**kept["train"], "legacy": False}
    assert canonical_config(kept) == cfg.to_dict()
    kept["train"]["legacy"] = True
    with pytest.raises(OutdatedConfig, match=r"train.legacy = True: option removed"):
        canonical_config(kept)


def test_removed_option_without_a_rule_makes_the_run_outdated(tmp_path, capsys, recwarn):
    """A stored option this version does not know: no traceback anywhere, the run is outdated, and the sweep's
    dry run and the store's problems say so in one line naming the key."""
    from tests.test_sweep import write_tiny_data

    train, test = write_tiny_data(tmp_path / "data")
    spec_path = tmp_path / "spec.yaml"
    spec_path.write_text(yaml.safe_dump({
        "name": "identity", "base": {"data": {"train_path": train, "test_path": test}, "model": {"dim": 8},
                                     "train": {"epochs": 1, "num_negatives": 4, "device": "cpu"}},
        "grid": {"loss.name": ["sl", "bpr"]}, "seeds": [0]}))
    spec = parse_spec(yaml.safe_load(spec_path.read_text()), spec_path)
    out = SweepDir(tmp_path / "out")
    from rankrobust.sweeps.runner import prepare_out

    prepare_out(spec, out, {c.cell_id: None for c in spec.cells})
    for cell in spec.cells:
        tree = stored_config(cell.config)
        if cell.config.loss.name == "sl":
            tree["train"]["warmup"] = 3  # an option removed since, without a migration
        done_run(out.run(cell.cell_id).path, tree)
    sl = next(c for c in spec.cells if c.config.loss.name == "sl")
    with pytest.raises(OutdatedConfig) as err:
        out.run(sl.cell_id).canonical_config()
    text = str(err.value)
    assert "train.warmup" in text and "\n" not in text and "valid keys" not in text
    reason = unfinished_reason(out.run(sl.cell_id), sl.config.to_dict())
    assert reason.startswith("outdated: ") and "train.warmup" in reason
    todo, done = pending_cells(spec, out)
    assert [c.cell_id for c in todo] == [sl.cell_id] and done == 1
    assert main(["sweep", str(spec_path), "--out", str(out.path), "--dry-run"]) == 0
    printed = capsys.readouterr().out
    assert "2 runs, 1 done, 1 to run" in printed and "train.warmup" in printed
    write_store(out.path)
    full = load_store(out.path, include_stale=True)
    row = full.set_index("cell_id").loc[sl.cell_id]
    assert row["outdated"] and "train.warmup" in row["outdated_config"]
    assert load_store(out.path)["cell_id"].tolist() == [c.cell_id for c in spec.cells if c is not sl]
    problems = store_problems(full, out.path)
    assert len(problems) == 1 and "train.warmup" in problems[0] and "options this version does not have" in problems[0]


def test_recorded_hashes_before_and_after_canonical_forms(tmp_path):
    """sweep.json → cells may hold the hash of the stored dict (records made before canonical forms) or of the
    canonical form; the store may be older or newer than the record.  Every pairing of the same run is current;
    a run of another config is outdated."""
    cfg = config_from_dict({"loss": {"name": "sl"}, "train": {"epochs": 3}})
    old = old_config(cfg, "train.scorer", "train.ips_gamma")
    folder = SweepDir(tmp_path / "sweep")
    done_run(folder.run("a").path, old)
    done_run(folder.run("b").path, old_config(cfg.with_overrides({"train.epochs": 4}), "train.scorer",
                                              "train.ips_gamma"))

    def outdated(recorded: str, store: str) -> dict:
        folder.write_spec({"name": "s", "grid": {}, "seeds": [0], "cells": {"a": recorded, "b": recorded}})
        frame = write_store(folder.path)
        if store == "old":  # a store written before canonical forms: the stored dict's hash, no outdated_config
            frame = frame.drop(columns=["outdated_config"]).assign(
                config_hash=[config_hash(RunDir(folder.path / d).config()) for d in frame["run_dir"]])
            frame.to_parquet(folder.store_path, index=False)
        full = load_store(folder.path, include_stale=True)
        return dict(zip(full["cell_id"], full["outdated"]))

    for recorded in (config_hash(old), config_hash(cfg.to_dict())):
        for store in ("new", "old"):
            assert outdated(recorded, store) == {"a": False, "b": True}, (recorded, store)


# --------------------------------------------------------------------------- the rules themselves
def test_option_defaults_match_their_snapshot():
    """Every option's default equals its frozen snapshot (tests/data/option_defaults.json).

    A stored config written before an option existed gets that option's *current* default when it is read
    (`canonical_config`), which is right only while the default is the behaviour the code had before.
    """
    frozen = json.loads(SNAPSHOT.read_text())
    now = json.loads(json.dumps(option_defaults()))
    changed = {k: (frozen[k], now[k]) for k in frozen if k in now and not _same(frozen[k], now[k])}
    assert not changed, (
        f"option defaults changed: {', '.join(f'{k}: {a!r} -> {b!r}' for k, (a, b) in changed.items())}. Runs "
        f"stored before such an option existed would now read as made with the new default. Add a "
        f"Migration(schema=CONFIG_SCHEMA + 1, kind='default', key=..., value=<old default>) to "
        f"rankrobust.config.MIGRATIONS, raise CONFIG_SCHEMA, then update {SNAPSHOT.relative_to(REPO)} "
        f"(python -c 'import json; from rankrobust.config import option_defaults; "
        f"print(json.dumps(option_defaults(), indent=1, sort_keys=True))' > {SNAPSHOT.relative_to(REPO)})")
    added = sorted(set(now) - set(frozen))
    assert not added, (
        f"new options {', '.join(added)}: if a default is not what the code did before the option existed, add a "
        f"'default' Migration with the old behaviour to rankrobust.config.MIGRATIONS (and raise CONFIG_SCHEMA); "
        f"then add them to {SNAPSHOT.relative_to(REPO)} (regenerate it as the docstring of this test says)")
    removed = sorted(set(frozen) - set(now))
    assert not removed, (
        f"options removed or renamed: {', '.join(removed)}: add a 'rename' or 'remove' Migration to "
        f"rankrobust.config.MIGRATIONS (stored runs that set them are outdated otherwise), raise CONFIG_SCHEMA, "
        f"then regenerate {SNAPSHOT.relative_to(REPO)}")


def _same(a, b) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return a == b or (math.isnan(a) and math.isnan(b))
    return a == b


def test_migrations_are_ordered_and_versioned():
    assert [m.schema for m in MIGRATIONS] == sorted(m.schema for m in MIGRATIONS)
    assert all(1 < m.schema <= CONFIG_SCHEMA for m in MIGRATIONS)
    assert all(m.kind in ("default", "rename", "remove") and m.doc for m in MIGRATIONS)
    assert all(m.to for m in MIGRATIONS if m.kind == "rename")
    defaults = option_defaults()
    for m in MIGRATIONS:  # a default rule's option exists today (for the entries its `when` names)
        if m.kind == "default":
            entry = dict(m.when).get(f"{m.key.partition('.')[0]}.name")
            section, _, name = m.key.partition(".")
            assert (f"{section}.{entry}.{name}" if entry else m.key) in defaults, m
