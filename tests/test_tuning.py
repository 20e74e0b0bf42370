"""rankrobust.tuning: tune specs, the Optuna engine (pruning, resume, workers), best files, results, Ray Tune."""
from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import textwrap
import time
import zlib
from pathlib import Path

import pytest
import yaml

from rankrobust.cli import main
from rankrobust.config import ConfigError
from rankrobust.runs import RunDir, read_status
from rankrobust.tuning.spec import parse_tune_spec
from rankrobust.tuning.study import TrialResult, TuneDir, make_storage, open_study, run_tune

REPO = Path(__file__).resolve().parents[1]


def write_data(folder: Path) -> tuple[str, str]:
    from rankrobust.data import split_per_user, write_lightgcn

    from conftest import random_interactions

    folder.mkdir(parents=True, exist_ok=True)
    train, test = split_per_user(random_interactions(50, 80, 0.15, seed=0), (0.8, 0.2), seed=0)
    write_lightgcn(train, folder / "train.txt")
    write_lightgcn(test, folder / "test.txt")
    return str(folder / "train.txt"), str(folder / "test.txt")


def spec_doc(tmp_path: Path, losses=("sl",), trials=4, epochs=4, **tune) -> dict:
    """A tiny tune spec (MF, dim 8, a 50 x 80 dataset, patience 2)."""
    train, test = write_data(tmp_path / "data")
    return {"name": "tiny",
            "base": {"data": {"train_path": train, "test_path": test}, "model": {"name": "mf", "dim": 8},
                     "train": {"epochs": epochs, "batch_size": 64, "num_negatives": 8, "device": "cpu",
                               "ks": [5, 20], "patience": 2}},
            "arms": {"loss.name": list(losses)},
            "tune": {"trials": trials, **tune}}


def studies(out: Path, spec) -> dict:
    storage = make_storage(TuneDir(out).storage_url)
    return {arm.label: open_study(spec, arm, storage) for arm in spec.arms}


# ----------------------------------------------------------------------------- fake trials (no training)
def lr_trial(cfg, run_dir: Path, report) -> TrialResult:
    """Known optimum: valid = -(log10 lr + 2.5)^2, best at lr = 10^-2.5; test favours the opposite end."""
    run_dir.mkdir(parents=True, exist_ok=True)
    value = -(math.log10(cfg.train.lr) + 2.5) ** 2
    return TrialResult(valid=value, test=-value, epochs=1)


def marking_trial(cfg, run_dir: Path, report) -> TrialResult:
    """Marks each start in its run folder, sleeps briefly: for worker and resume tests."""
    run_dir.mkdir(parents=True, exist_ok=True)
    with open(run_dir / "starts", "a") as f:
        f.write(f"{os.getpid()}\n")
    for epoch in range(1, 4):
        time.sleep(0.1)
        report(cfg.train.lr, epoch)
    return TrialResult(valid=cfg.train.lr, test=0.0, epochs=3)


# ----------------------------------------------------------------------------- spec
@pytest.mark.parametrize("change, words", [
    (lambda d: d.update(arms={"loss.name": ["sl", "nope"]}), "nope"),
    (lambda d: d.update(arms={"loss.nam": ["sl"]}), "loss.nam"),
    (lambda d: d["tune"].update(trials=0), "tune.trials"),
    (lambda d: d["tune"].update(objective="test.ndcg@20"), "test split"),
    (lambda d: d["tune"].update(nosie="clean"), "tune.nosie"),
    (lambda d: d.update(bogus=1), "bogus"),
    (lambda d: d["base"]["train"].update(patience=0), "train.patience"),
])
def test_bad_spec_is_one_clear_line(tmp_path, capsys, change, words):
    doc = spec_doc(tmp_path)
    change(doc)
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(doc))
    assert main(["tune", str(path), "--out", str(tmp_path / "out"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and words in err and "Traceback" not in err


def test_malformed_yaml_spec_is_one_line(tmp_path, capsys):
    path = tmp_path / "broken.yaml"
    path.write_text("name: b\narms: {loss.name: [sl]\ntune: {trials: 2}\n")  # unclosed flow mapping
    assert main(["tune", str(path), "--out", str(tmp_path / "out"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "not valid YAML" in err and "at line 3" in err


def test_empty_search_space_is_refused(tmp_path, capsys):
    from rankrobust.config import config_from_dict, search_space

    keys = list(search_space(config_from_dict({"loss": {"name": "sl"}})))
    doc = spec_doc(tmp_path, exclude=keys)
    with pytest.raises(ConfigError, match="empty search space"):
        parse_tune_spec(doc)
    path = tmp_path / "empty.yaml"
    path.write_text(yaml.safe_dump(doc))
    assert main(["tune", str(path), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "arm sl: empty search space" in err


def test_arms_labels_values_and_trial_base(tmp_path):
    doc = spec_doc(tmp_path, losses=("sl", "bpr"), noise="clean")
    doc["arms"] = {"model.name": ["mf"], "loss.name": ["sl", "bpr"]}
    doc["base"]["noise"] = {"pos_ratio": 0.2}
    spec = parse_tune_spec(doc)
    assert [a.label for a in spec.arms] == ["mf-sl", "mf-bpr"]
    sl = spec.arms[0]
    assert sl.values["loss.name"] == "sl" and sl.values["model.name"] == "mf" and "data.name" in sl.values
    assert sl.config.train.metric == "ndcg@20" and sl.config.noise.pos_ratio == 0.0  # clean: noise reset
    assert "loss.tau" in sl.space and "loss.tau" not in spec.arms[1].space  # BPR is never searched over tau
    doc["tune"]["noise"] = "cell"
    assert parse_tune_spec(doc).arms[0].config.noise.pos_ratio == 0.2  # cell: the arm's own noise


# ----------------------------------------------------------------------------- the engine on fake trials
def test_toy_objective_optimum_is_found(tmp_path):
    spec = parse_tune_spec(spec_doc(tmp_path, trials=30, pruner="none", sampler={"n_startup_trials": 8}))
    out = tmp_path / "out"
    run_tune(spec, out, progress=False, trial_fn=lr_trial)
    best = yaml.safe_load((out / "best" / "sl.yaml").read_text())
    assert abs(math.log10(best["settings"]["train.lr"]) + 2.5) < 0.3
    assert set(best["settings"]) == set(spec.arms[0].space)
    assert best["origin"]["objective"] == "valid.ndcg@20" and best["origin"]["direction"] == "maximize"
    assert best["origin"]["noise"] == "clean" and best["origin"]["study_name"] == "sl"
    protocol = json.loads((out / "protocol.json").read_text())["arms"]["sl"]
    assert protocol["budget"] == 30 and "train.lr" in protocol["space"]
    assert protocol["seed"] == protocol["sampler"]["seed"] == zlib.crc32(b"sl")  # tune.seed 0 + crc32(label)
    trials = studies(out, spec)["sl"].trials
    assert trials[0].user_attrs.get("prior") and trials[0].params["train.lr"] == 1e-3  # the prior is trial 0


def test_selection_never_reads_test(tmp_path):
    """test = -valid: the test split would pick the worst trial; the best file follows validation."""
    spec = parse_tune_spec(spec_doc(tmp_path, trials=8, pruner="none"))
    out = tmp_path / "out"
    run_tune(spec, out, progress=False, trial_fn=lr_trial)
    study = studies(out, spec)["sl"]
    by_valid = max(study.trials, key=lambda t: t.value)
    by_test = max(study.trials, key=lambda t: t.user_attrs["test_value"])
    assert by_valid.number != by_test.number
    best = yaml.safe_load((out / "best" / "sl.yaml").read_text())
    assert best["origin"]["trial"] == by_valid.number and best["settings"] == by_valid.params


def test_pruner_stops_the_clearly_worst_curve(tmp_path):
    """Trials report a flat curve at their lr: the median pruner stops those below the running median."""
    spec = parse_tune_spec(spec_doc(tmp_path, trials=10, pruner={"kind": "median", "n_startup_trials": 2,
                                                                 "n_warmup_steps": 1}))
    out = tmp_path / "out"

    def curve_trial(cfg, run_dir, report):
        value = cfg.train.lr
        for epoch in range(1, 11):
            if report(value, epoch):
                return TrialResult(valid=value, pruned=True, epochs=epoch)
        return TrialResult(valid=value, epochs=10)

    run_tune(spec, out, progress=False, trial_fn=curve_trial)
    trials = studies(out, spec)["sl"].trials
    pruned = [t for t in trials if t.state.name == "PRUNED"]
    complete = [t for t in trials if t.state.name == "COMPLETE"]
    assert pruned and len(pruned) + len(complete) == 10
    worst = min(trials, key=lambda t: t.params["train.lr"])
    assert worst.state.name == "PRUNED" and max(worst.intermediate_values) < 10


def test_two_workers_share_one_study(tmp_path):
    spec = parse_tune_spec(spec_doc(tmp_path, losses=("sl", "bpr"), trials=5, pruner="none"))
    out = tmp_path / "out"
    run_tune(spec, out, jobs=2, progress=False, trial_fn=marking_trial)
    for label, study in studies(out, spec).items():
        finished = [t for t in study.trials if t.state.name in ("COMPLETE", "PRUNED")]
        assert len(finished) == 5 and len(study.trials) == 5, label
        assert len({t.number for t in finished}) == 5
        folders = sorted((out / "trials" / label).iterdir())
        assert [f.name for f in folders] == [f"{n:04d}" for n in range(5)]
        assert all(len((f / "starts").read_text().split()) == 1 for f in folders)  # none ran twice
        pids = {(f / "starts").read_text().strip() for f in folders}
        assert len(pids) == 2, f"{label}: trials ran in {pids}"  # both workers took trials


def test_kill_and_rerun_continues_the_study(tmp_path):
    """SIGKILL the driver mid-trial; the rerun marks that trial FAIL, redoes it, and repeats nothing complete."""
    doc = spec_doc(tmp_path, trials=6, pruner="none")
    spec_path = tmp_path / "spec.yaml"
    spec_path.write_text(yaml.safe_dump(doc))
    out = tmp_path / "out"
    script = tmp_path / "drive.py"
    script.write_text(textwrap.dedent(f"""
        import os, sys, time
        sys.path[:0] = [{str(REPO)!r}]
        from rankrobust.tuning import load_tune_spec
        from rankrobust.tuning.study import TrialResult, run_tune

        def slow(cfg, run_dir, report):
            run_dir.mkdir(parents=True, exist_ok=True)
            with open(run_dir / "starts", "a") as f:
                f.write("x\\n")
            time.sleep(float(os.environ.get("TRIAL_SECONDS", "0.1")))
            (run_dir / "done").write_text("")
            return TrialResult(valid=cfg.train.lr, test=0.0, epochs=1)

        run_tune(load_tune_spec({str(spec_path)!r}), {str(out)!r}, progress=False, trial_fn=slow)
    """))
    env = {**os.environ, "TRIAL_SECONDS": "0.6", "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, str(script)], env=env)
    deadline = time.time() + 120
    trials = out / "trials" / "sl"
    while time.time() < deadline:  # wait for 2 finished trials and a third one started
        # a start counts once its line is written (a kill between open and write would leave it empty)
        started = [d for d in trials.iterdir() if (d / "starts").exists() and (d / "starts").read_text()] \
            if trials.exists() else []
        if len([d for d in started if (d / "done").exists()]) >= 2 and any(not (d / "done").exists() for d in started):
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    spec = parse_tune_spec(doc)
    before = {t.number: t.state.name for t in studies(out, spec)["sl"].trials}
    assert "RUNNING" in before.values() and list(before.values()).count("COMPLETE") >= 2
    killed = next(n for n, s in before.items() if s == "RUNNING")
    env["TRIAL_SECONDS"] = "0.01"
    assert subprocess.run([sys.executable, str(script)], env=env).returncode == 0
    after = studies(out, spec)["sl"].trials
    states = {t.number: t.state.name for t in after}
    assert states[killed] == "FAIL"
    assert sum(s == "COMPLETE" for s in states.values()) == 6  # the budget, not counting the failed trial
    assert all(states[n] == "COMPLETE" for n, s in before.items() if s == "COMPLETE")
    for d in trials.iterdir():  # no trial ran twice
        assert len((d / "starts").read_text().split()) == 1, d
    retried = [t for t in after if t.number > killed and t.params == after[killed].params]
    assert retried, "the killed trial's parameters are tried again"


# ----------------------------------------------------------------------------- real training
def test_tune_command_end_to_end(tmp_path, capsys):
    """Real tiny trials: run folders, pruning by probe, best file = best valid of metrics.json, results and plots."""
    doc = spec_doc(tmp_path, losses=("sl", "bpr"), trials=3, epochs=5,
                   pruner={"kind": "median", "n_startup_trials": 1, "n_warmup_steps": 1})
    spec_path = tmp_path / "spec.yaml"
    spec_path.write_text(yaml.safe_dump(doc))
    out = tmp_path / "out"
    assert main(["tune", str(spec_path), "--out", str(out), "--quiet"]) == 0
    text = capsys.readouterr().out
    assert "test (label only, not used for selection)" in text and "sl" in text and "bpr" in text
    spec = parse_tune_spec(doc)
    for label, study in studies(out, spec).items():
        assert len([t for t in study.trials if t.state.name in ("COMPLETE", "PRUNED")]) == 3
        for t in study.trials:
            run = RunDir(out / t.user_attrs["run_dir"])
            assert read_status(run.path) == "done"
            metrics = run.metrics()
            assert run.config()["train"]["metric"] == "ndcg@20"
            if t.state.name == "COMPLETE":
                assert t.value == pytest.approx(metrics["valid"]["ndcg@20"])
                assert t.user_attrs["test_value"] == pytest.approx(metrics["test"]["ndcg@20"])
            else:
                assert metrics["stop_reason"] == "stopped_by_probe"
        best = yaml.safe_load((out / "best" / f"{label}.yaml").read_text())
        assert list(best) == ["arm", "values", "settings", "origin"]
        assert best["origin"]["value"] == pytest.approx(study.best_value)
        assert best["origin"]["study"] == str(out.absolute() / "study.db")
    assert (out / "plots" / "sl-history.png").exists()
    # a rerun has nothing left to do and changes nothing
    before = (out / "best" / "sl.yaml").read_text()
    assert main(["tune", str(spec_path), "--out", str(out), "--quiet"]) == 0
    assert (out / "best" / "sl.yaml").read_text() == before
    assert main(["tune-results", str(out), "--no-plots"]) == 0
    assert main(["tune-results", str(tmp_path)]) == 2


def test_pruning_probe_stops_fit_cleanly(tmp_path):
    from rankrobust.tuning.study import train_trial

    spec = parse_tune_spec(spec_doc(tmp_path, epochs=6))
    cfg = spec.arms[0].trial_config(spec.arms[0].prior())
    seen = []

    def report(value, epoch):
        seen.append(epoch)
        return epoch == 2

    result = train_trial(cfg, tmp_path / "run", report)
    assert result.pruned and result.epochs == 2 and seen == [1, 2]
    assert RunDir(tmp_path / "run").metrics()["stop_reason"] == "stopped_by_probe"


def test_shipped_specs_parse():
    for path in sorted((REPO / "configs" / "tune").glob("*.yaml")):
        from rankrobust.tuning import load_tune_spec

        spec = load_tune_spec(path)
        assert spec.arms and spec.trials >= 1, path


# ----------------------------------------------------------------------------- Ray Tune
@pytest.mark.netns
def test_ray_tune_path_in_process(tmp_path):
    pytest.importorskip("ray.tune")
    import ray

    from rankrobust.tuning.ray_tune import run_tune_ray

    doc = spec_doc(tmp_path, losses=("sl",), trials=3, epochs=4,
                   pruner={"kind": "halving", "min_resource": 1, "reduction_factor": 2})
    spec = parse_tune_spec(doc)
    out = tmp_path / "out"
    ray.init(address="local", num_cpus=2, include_dashboard=False)  # never another session's cluster
    try:
        run_tune_ray(spec, out, progress=False)
    finally:
        ray.shutdown()
    study = studies(out, spec)["sl"]
    finished = [t for t in study.trials if t.state.name in ("COMPLETE", "PRUNED")]
    assert len(finished) == 3
    best = yaml.safe_load((out / "best" / "sl.yaml").read_text())
    assert best["origin"]["value"] == pytest.approx(study.best_value)
    for t in study.trials:
        assert (out / t.user_attrs["run_dir"] / "config.json").exists()


def test_asks_draw_new_settings_and_a_failed_prior_is_tried_again(tmp_path):
    """Every ask reseeds the arm's sampler by the trials asked so far (two workers or a rerun never repeat the
    same random draw), and the documented settings come back when their first trial failed."""
    import optuna

    from rankrobust.tuning.study import TuneDir, _ask, make_storage, open_study

    spec = parse_tune_spec(spec_doc(tmp_path, losses=("sl",), trials=8, epochs=2))
    arm = spec.arms[0]
    folder = TuneDir(tmp_path / "out")
    folder.path.mkdir(parents=True)
    study = open_study(spec, arm, make_storage(folder.storage_url))
    first = _ask(spec, arm, study, folder)
    assert first.user_attrs.get("prior")
    study.tell(first, state=optuna.trial.TrialState.FAIL)
    again = _ask(spec, arm, study, folder)
    assert again.user_attrs.get("prior") and again.params == first.params
    study.tell(again, 0.1)
    drawn = []
    for _ in range(5):
        t = _ask(spec, arm, study, folder)
        drawn.append(tuple(sorted(t.params.items())))
        study.tell(t, 0.1)
    assert len(set(drawn)) == len(drawn)


def test_a_diverged_trial_counts_against_the_budget(tmp_path):
    """A NaN loss is the settings' own outcome: the trial is PRUNED with a `diverged` note, not FAIL and retried,
    so an arm whose settings diverge gets no extra trials; tune-results shows the count."""
    from rankrobust.train import TrainingDiverged
    from rankrobust.tuning.results import format_table, tune_table
    from rankrobust.tuning.study import TuneDir

    spec = parse_tune_spec(spec_doc(tmp_path, trials=6, pruner="none", sampler={"n_startup_trials": 3}))
    out = tmp_path / "out"
    started = []

    def diverging_above(cfg, run_dir: Path, report) -> TrialResult:
        run_dir.mkdir(parents=True, exist_ok=True)
        started.append(cfg.train.lr)
        report(0.1, 1)
        if cfg.train.lr > 1e-3:
            raise TrainingDiverged(f"training loss became nan at epoch 2 (lr={cfg.train.lr})")
        return TrialResult(valid=-cfg.train.lr, test=0.0, epochs=2)

    run_tune(spec, out, progress=False, trial_fn=diverging_above)
    trials = studies(out, spec)["sl"].trials
    diverged = [t for t in trials if "diverged" in t.user_attrs]
    assert len(started) == len(trials) == 6  # nothing retried, nothing beyond the budget
    assert diverged and all(t.state.name == "PRUNED" and t.params["train.lr"] > 1e-3 for t in diverged)
    assert not [t for t in trials if t.state.name == "FAIL"]
    table = tune_table(TuneDir(out))
    assert int(table.loc[0, "diverged"]) == len(diverged) and "diverged" in format_table(table)


def edit_records(out: Path, edit) -> None:
    """Apply ``edit(label, record)`` to the ``protocol`` attribute of every study in ``out/study.db`` (in place)."""
    storage = make_storage(TuneDir(out).storage_url)
    for frozen in storage.get_all_studies():
        record = frozen.user_attrs["protocol"]
        edit(frozen.study_name, record)
        storage.set_study_user_attr(storage.get_study_id_from_name(frozen.study_name), "protocol", record)


def with_base(doc: dict, **train) -> dict:
    """``doc`` with ``train`` settings changed in its base."""
    return {**doc, "base": {**doc["base"], "train": {**doc["base"]["train"], **train}}}


def test_a_study_started_before_a_new_option_continues_and_a_changed_setting_is_refused(tmp_path, capsys):
    """A record written before an option existed (its default = the old behaviour) still matches; an arm
    added to the spec is tuned beside the old ones; a changed base setting is refused in one line naming it."""
    doc = spec_doc(tmp_path, trials=2, pruner="none")
    out = tmp_path / "out"
    run_tune(parse_tune_spec(doc), out, progress=False, trial_fn=lr_trial)
    # as an older rankrobust recorded it: no train.valid_users
    edit_records(out, lambda label, record: record["config"]["train"].pop("valid_users"))
    grown = {**doc, "arms": {"loss.name": ["sl", "bpr"]}}
    run_tune(parse_tune_spec(grown), out, progress=False, trial_fn=lr_trial)
    assert set(json.loads((out / "protocol.json").read_text())["arms"]) == {"sl", "bpr"}
    assert len(studies(out, parse_tune_spec(grown))["bpr"].trials) == 2
    changed = with_base(grown, num_negatives=4)
    with pytest.raises(ConfigError, match="arm sl was tuned with another config [(]train.num_negatives 8 → 4[)]"):
        run_tune(parse_tune_spec(changed), out, progress=False, trial_fn=lr_trial)


# ----------------------------------------------------------------------------- resuming: the protocol record
@pytest.fixture
def tune_cli(tmp_path, capsys, monkeypatch):
    """``rankrobust tune`` with fake trials (`lr_trial`): ``tune_cli(doc, out)`` → (exit code, stderr)."""
    import functools

    import rankrobust.tuning.study as study_module

    monkeypatch.setattr(study_module, "run_tune", functools.partial(study_module.run_tune, trial_fn=lr_trial))

    def call(doc: dict, out: Path, *extra: str) -> tuple[int, str]:
        path = tmp_path / "spec.yaml"
        path.write_text(yaml.safe_dump(doc))
        capsys.readouterr()
        code = main(["tune", str(path), "--out", str(out), "--quiet", *extra])
        return code, capsys.readouterr().err.strip()

    return call


def finished(out: Path) -> dict[str, int]:
    from rankrobust.tuning.study import study_records

    return {label: r.finished for label, r in study_records(TuneDir(out), make_storage(TuneDir(out).storage_url)).items()}


@pytest.mark.parametrize("damage", ["delete the file", "delete arms", "delete the arm's entry"])
def test_a_changed_protocol_is_refused_whatever_protocol_json_says(tmp_path, tune_cli, damage):
    """The record is each study's own attribute: deleting protocol.json, its arms or an arm's entry does not let
    a rerun with a changed base setting continue the old studies; a rerun of the original spec rebuilds it."""
    doc = spec_doc(tmp_path, losses=("sl", "bpr"), trials=2, pruner="none")
    out = tmp_path / "out"
    assert tune_cli(doc, out)[0] == 0
    path = out / "protocol.json"
    record = json.loads(path.read_text())
    if damage == "delete the file":
        path.unlink()
    else:
        if damage == "delete arms":
            del record["arms"]
        else:
            del record["arms"]["sl"]
        path.write_text(json.dumps(record))
    code, err = tune_cli(with_base(doc, num_negatives=16), out)
    assert code == 2 and len(err.splitlines()) == 1, err
    assert "arm sl was tuned with another config (train.num_negatives 8 → 16)" in err
    assert finished(out) == {"sl": 2, "bpr": 2}  # no trial of the changed protocol
    assert tune_cli(doc, out)[0] == 0
    rebuilt = json.loads(path.read_text())
    assert set(rebuilt["arms"]) == {"sl", "bpr"} and rebuilt["name"] == "tiny"
    assert rebuilt["arms"]["sl"]["config"]["train"]["num_negatives"] == 8


def test_a_budget_below_the_finished_trials_is_refused(tmp_path, tune_cli):
    """tune.trials below an arm's finished trials (also when adding an arm) is refused, creating nothing; a larger
    budget continues the studies."""
    doc = spec_doc(tmp_path, losses=("sl", "bpr"), trials=3, pruner="none")
    out = tmp_path / "out"
    assert tune_cli(doc, out)[0] == 0
    lower = {**doc, "tune": {**doc["tune"], "trials": 1}}
    code, err = tune_cli(lower, out)
    assert code == 2 and len(err.splitlines()) == 1
    assert ("arm sl has budget 3 recorded and 3 finished trials; tune.trials 1 would give arms unequal budgets; "
            "use tune.trials >= 3") in err
    added = {**lower, "arms": {"loss.name": ["bce"]}}  # a new arm with a smaller budget than the others had
    code, err = tune_cli(added, out)
    assert code == 2 and "3 finished trials; tune.trials 1" in err
    assert finished(out) == {"sl": 3, "bpr": 3}  # no study for bce
    more = {**doc, "tune": {**doc["tune"], "trials": 4}}
    assert tune_cli(more, out)[0] == 0
    assert finished(out) == {"sl": 4, "bpr": 4}


def test_inserting_or_reordering_arms_keeps_every_arm_seed(tmp_path, tune_cli):
    """An arm keeps the seed its study recorded; a new arm's seed is tune.seed + crc32(label), wherever it stands;
    a changed tune.seed is refused; a refused rerun leaves no study for the new arm."""
    doc = spec_doc(tmp_path, losses=("sl", "bpr"), trials=2, pruner="none", seed=7)
    out = tmp_path / "out"
    assert tune_cli(doc, out)[0] == 0
    seeds = {label: s.user_attrs["protocol"]["seed"] for label, s in studies(out, parse_tune_spec(doc)).items()}
    assert seeds == {label: 7 + zlib.crc32(label.encode()) for label in ("sl", "bpr")}
    refused = with_base({**doc, "arms": {"loss.name": ["bce", "sl"]}}, num_negatives=16)
    assert tune_cli(refused, out)[0] == 2
    assert set(finished(out)) == {"sl", "bpr"}  # checked before any study was created
    reordered = {**doc, "arms": {"loss.name": ["bce", "bpr", "sl"]}}
    code, err = tune_cli(reordered, out)
    assert code == 0, err
    from rankrobust.tuning.study import study_seed

    spec = parse_tune_spec(reordered)
    now = {a.label: study_seed(spec, a, studies(out, spec)[a.label]) for a in spec.arms}
    assert now == {**seeds, "bce": 7 + zlib.crc32(b"bce")}
    assert json.loads((out / "protocol.json").read_text())["arms"]["sl"]["sampler"]["seed"] == seeds["sl"]
    other_seed = {**reordered, "tune": {**reordered["tune"], "seed": 8}}
    code, err = tune_cli(other_seed, out)
    assert code == 2 and "was tuned with another tune_seed (7 → 8)" in err


def test_studies_seeded_by_arm_index_continue_with_their_seeds(tmp_path, tune_cli):
    """A folder recorded when seeds were tune.seed + arm index (no tune_seed in the record) accepts a rerun with an
    arm inserted at the front; its arms keep seeds 3 and 4 and their TPE draws (tune.seed + 1000 index + asks)."""
    import optuna

    from rankrobust.tuning.study import make_sampler

    doc = spec_doc(tmp_path, losses=("sl", "bpr"), trials=2, pruner="none", seed=3)
    out = tmp_path / "out"
    assert tune_cli(doc, out)[0] == 0

    def legacy(label, record):
        record.pop("tune_seed", None)
        record["seed"] = record["sampler"]["seed"] = 3 + ["sl", "bpr"].index(label)

    edit_records(out, legacy)
    inserted = {**doc, "arms": {"loss.name": ["bce", "sl", "bpr"]}}
    code, err = tune_cli(inserted, out)
    assert code == 0, err
    records = json.loads((out / "protocol.json").read_text())["arms"]
    assert {k: (r["seed"], r["tune_seed"]) for k, r in records.items() if k != "bce"} == {"sl": (3, 3), "bpr": (4, 3)}
    spec = parse_tune_spec(inserted)
    state = make_sampler(spec, 4, 5)._rng.rng.get_state()[1]  # bpr (index 1) after 5 asks
    assert (state == optuna.samplers.TPESampler(seed=3 + 1000 * 1 + 5)._rng.rng.get_state()[1]).all()
    assert tune_cli({**inserted, "tune": {**doc["tune"], "seed": 4}}, out)[0] == 2


REAL_STUDY = REPO / "results" / "tune-lastfm-quick-v2"


@pytest.mark.skipif(not (REAL_STUDY / "study.db").exists(), reason="the real lastfm-quick study is not here")
def test_the_real_lastfm_quick_study_continues_with_its_seeds(tmp_path):
    """The protocol check (no trials) accepts configs/tune/lastfm-quick.yaml on a copy of the real study, arms
    keeping their recorded seeds 0..17."""
    import shutil

    from rankrobust.tuning import load_tune_spec
    from rankrobust.tuning.study import check_protocol

    for name in ("study.db", "protocol.json"):
        shutil.copy(REAL_STUDY / name, tmp_path / name)
    spec = load_tune_spec(REPO / "configs" / "tune" / "lastfm-quick.yaml")
    folder = TuneDir(tmp_path)
    plan, records = check_protocol(spec, folder, make_storage(folder.storage_url))
    assert {label: p["seed"] for label, p in plan.items()} == {a.label: a.index for a in spec.arms}
    assert all(records[a.label].finished == spec.trials for a in spec.arms)


@pytest.mark.parametrize("content", ['{"name": "tiny", "arms": "x"}', '{"name": "tiny", "arms": {"sl": "x"}}',
                                     '["a list"]', '{"name": "tiny", "ar', '{"name": "tiny", "arms": []}',
                                     '{"name": 3, "arms": {}}', '{"arms": {}}', '{"name": "tiny", "source": 1}',
                                     '{"name": "tiny", "storage": ["x"]}'])
def test_a_protocol_json_of_the_wrong_shape_is_one_line(tmp_path, capsys, tune_cli, content):
    doc = spec_doc(tmp_path, trials=1, pruner="none")
    out = tmp_path / "out"
    assert tune_cli(doc, out)[0] == 0
    (out / "protocol.json").write_text(content)
    for code, err in (tune_cli(doc, out),
                      (main(["tune-results", str(out), "--no-plots"]), capsys.readouterr().err.strip())):
        assert code == 2 and len(err.splitlines()) == 1 and "Traceback" not in err, err
        assert str(out / "protocol.json") in err and "delete it: `rankrobust tune` rebuilds it" in err


def test_tune_results_reads_the_studies_records(tmp_path, capsys, tune_cli):
    """tune-results works without protocol.json (each study's own record) and writes none."""
    doc = spec_doc(tmp_path, losses=("sl", "bpr"), trials=2, pruner="none")
    out = tmp_path / "out"
    assert tune_cli(doc, out)[0] == 0
    (out / "protocol.json").unlink()
    assert main(["tune-results", str(out), "--no-plots"]) == 0
    text = capsys.readouterr().out
    assert "sl" in text and "bpr" in text and "valid.ndcg@20" in text
    assert not (out / "protocol.json").exists()


def test_tune_results_of_a_presets_folder_is_one_line_and_creates_no_database(tmp_path, capsys, tune_cli):
    """A presets folder (best files and protocol.json, no study.db, as configs/tuned/...) is refused in one line
    naming the study of its best files; tune-results creates no database there or in any other folder."""
    import shutil

    doc = spec_doc(tmp_path, losses=("sl", "bpr"), trials=2, pruner="none")
    out = tmp_path / "out"
    assert tune_cli(doc, out)[0] == 0
    presets = tmp_path / "presets"
    shutil.copytree(out / "best", presets / "best")
    shutil.copy(out / "protocol.json", presets / "protocol.json")
    capsys.readouterr()
    assert main(["tune-results", str(presets)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "holds tuned presets" in err and str(out.absolute() / "study.db") in err
    assert sorted(p.name for p in presets.iterdir()) == ["best", "protocol.json"]
    assert main(["tune-results", str(tmp_path / "data")]) == 2 and not (tmp_path / "data" / "study.db").exists()


def test_a_protocol_json_without_source_or_arms_is_rebuilt(tmp_path, tune_cli):
    """Only ``name`` is required: a protocol.json without ``source`` or ``arms`` is rebuilt from the studies."""
    doc = spec_doc(tmp_path, trials=1, pruner="none")
    out = tmp_path / "out"
    assert tune_cli(doc, out)[0] == 0
    (out / "protocol.json").write_text('{"name": "tiny"}')
    assert tune_cli(doc, out)[0] == 0
    rebuilt = json.loads((out / "protocol.json").read_text())
    assert set(rebuilt["arms"]) == {"sl"} and rebuilt["source"] and rebuilt["storage"] == "study.db"


def test_a_garbage_protocol_json_alone_is_refused_creating_nothing(tmp_path, tune_cli):
    doc = spec_doc(tmp_path, trials=1, pruner="none")
    out = tmp_path / "gp"
    out.mkdir()
    (out / "protocol.json").write_text("not json {")
    code, err = tune_cli(doc, out)
    assert code == 2 and len(err.splitlines()) == 1 and str(out / "protocol.json") in err, err
    assert [p.name for p in out.iterdir()] == ["protocol.json"]  # no study.db, no lock file


def folder_bytes(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("same_name", [False, True])
def test_a_presets_folder_is_refused_before_anything_is_written(tmp_path, tune_cli, same_name):
    """``tune --out`` a presets folder (best/ + protocol.json, no study.db: a copy of configs/tuned/...) is one
    line naming its tuning; its files stay as they were and no database or lock is created."""
    import shutil

    doc = spec_doc(tmp_path, trials=1, pruner="none")
    presets = tmp_path / "presets"
    shipped = REPO / "configs" / "tuned" / "backbones-lastfm-quick"
    if shipped.is_dir() and not same_name:
        shutil.copytree(shipped, presets)
        name = "backbones-lastfm-quick"
    else:
        assert tune_cli(doc, tmp_path / "out")[0] == 0
        shutil.copytree(tmp_path / "out" / "best", presets / "best")
        shutil.copy(tmp_path / "out" / "protocol.json", presets / "protocol.json")
        name = "tiny"
        if not same_name:
            record = json.loads((presets / "protocol.json").read_text())
            name = record["name"] = "backbones-lastfm-quick"
            (presets / "protocol.json").write_text(json.dumps(record))
    before = folder_bytes(presets)
    code, err = tune_cli(doc, presets)
    assert code == 2 and len(err.splitlines()) == 1, err
    assert f"{presets} holds the presets of tuning {name!r} (no study.db); choose another --out" in err
    assert folder_bytes(presets) == before


def test_another_storage_is_refused_and_a_finished_run_is_never_overwritten(tmp_path, tune_cli):
    """A folder tuned with its own study.db refuses a rerun naming another --storage (and the other way round),
    creating no study there; independently, a trial never runs into a trial folder holding a finished run."""
    from rankrobust.runs import STATUS_DONE, write_status

    doc = spec_doc(tmp_path, trials=2, pruner="none")
    out = tmp_path / "out"
    assert tune_cli(doc, out)[0] == 0
    before = folder_bytes(out / "trials")
    other = tmp_path / "other.db"
    code, err = tune_cli(doc, out, "--storage", f"sqlite:///{other}")
    assert code == 2 and len(err.splitlines()) == 1, err
    assert f"{out} was tuned with storage study.db, not sqlite:///{other}; rerun without --storage" in err
    assert not other.exists() and folder_bytes(out / "trials") == before
    elsewhere = tmp_path / "elsewhere"
    assert tune_cli(doc, elsewhere, "--storage", f"sqlite:///{other}")[0] == 0
    assert json.loads((elsewhere / "protocol.json").read_text())["storage"] == f"sqlite:///{other}"
    code, err = tune_cli(doc, elsewhere)
    assert code == 2 and f"rerun with --storage sqlite:///{other}" in err
    assert TuneDir(tmp_path).storage_label("postgresql://me:secret@db/x") == "postgresql://me:***@db/x"

    fresh = tmp_path / "fresh"  # a trial folder of some other study, no record of it anywhere
    run = TuneDir(fresh).trial_dir("sl", 0)
    run.mkdir(parents=True)
    write_status(run, STATUS_DONE)
    with pytest.raises(ConfigError, match=f"{run} already holds a finished run.*not overwritten"):
        run_tune(parse_tune_spec(doc), fresh, progress=False, trial_fn=marking_trial)
    assert sorted(p.name for p in run.iterdir()) == ["status"]


def test_a_recorded_budget_is_never_lowered_and_the_check_holds_the_lock(tmp_path, tune_cli):
    """tune.trials below an arm's recorded budget is refused even before its trials finish (a second driver
    started with a smaller budget); the protocol is checked and recorded under the folder's lock."""
    import threading

    from rankrobust.tuning.study import _flock, record_protocol

    doc = spec_doc(tmp_path, losses=("sl", "bpr"), trials=5, pruner="none")
    out = tmp_path / "out"
    out.mkdir()
    record_protocol(parse_tune_spec(doc), TuneDir(out), make_storage(TuneDir(out).storage_url))  # trials 5 started
    code, err = tune_cli({**doc, "tune": {**doc["tune"], "trials": 2}}, out)
    assert code == 2 and len(err.splitlines()) == 1, err
    assert "arm sl has budget 5 recorded and 0 finished trials; tune.trials 2 would give arms unequal budgets" in err
    assert finished(out) == {"sl": 0, "bpr": 0}

    later = tmp_path / "later"
    later.mkdir()
    done = threading.Event()
    with _flock(TuneDir(later).lock_path):  # another driver's bookkeeping
        thread = threading.Thread(target=lambda: (run_tune(parse_tune_spec(doc), later, progress=False,
                                                           trial_fn=lr_trial), done.set()))
        thread.start()
        time.sleep(1.0)
        assert not (later / "study.db").exists() and not (later / "protocol.json").exists()
    thread.join(60)
    assert done.is_set() and finished(later) == {"sl": 5, "bpr": 5}


@pytest.mark.parametrize("damage", ["empty", "garbage", "truncated"])
def test_a_damaged_study_db_is_one_line(tmp_path, capsys, tune_cli, damage):
    """A 0-byte, garbage or truncated study.db: `tune` and `tune-results` say in one line that the file is not a
    readable Optuna database (exit 2), never a traceback."""
    doc = spec_doc(tmp_path, losses=("sl", "bpr"), trials=3, pruner="none")
    out = tmp_path / "out"
    assert tune_cli(doc, out)[0] == 0
    db = out / "study.db"
    data = db.read_bytes()
    db.write_bytes({"empty": b"", "garbage": b"not a database " * 200, "truncated": data[:len(data) // 2]}[damage])
    capsys.readouterr()
    calls = [(main(["tune-results", str(out), "--no-plots"]), capsys.readouterr().err.strip())]
    if damage != "empty":  # tune creates its tables in an empty file
        calls.append(tune_cli(doc, out))
    for code, err in calls:
        assert code == 2 and len(err.splitlines()) == 1 and "Traceback" not in err, err
        assert f"{db} is not a readable Optuna database (" in err and "start the tuning over" in err
