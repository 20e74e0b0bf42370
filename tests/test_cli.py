"""The `rankrobust` command (rankrobust/cli.py): flags from the registries, typos, train end to end."""
import json
import re
from pathlib import Path

import pytest

from rankrobust.cli import build_parser, main, train_config
from rankrobust.config import ConfigError
from tests.test_sweep import write_tiny_data


def test_cli_train_prints_table(tmp_path, capsys):
    train, test = write_tiny_data(tmp_path / "data")
    code = main(["train", "--set", f"data.train_path={train}", "--set", f"data.test_path={test}", "--loss", "bsl",
                 "--tau1", "0.5", "--tau2", "0.1", "--epochs", "2", "--negatives", "8", "--batch-size", "64",
                 "--device", "cpu", "--dim", "8", "--out", str(tmp_path / "run"), "--quiet", "--fairness"])
    out = capsys.readouterr().out
    assert code == 0 and "recall" in out and "ndcg" in out and "@20" in out and "group" in out
    cfg = json.loads((tmp_path / "run" / "config.json").read_text())
    assert cfg["loss"] == {**cfg["loss"], "name": "bsl", "tau1": 0.5, "tau2": 0.1}


@pytest.mark.parametrize("argv,needle", [
    (["train", "--nosie-pos", "0.2"], "did you mean '--noise-pos'"),
    (["trian"], "did you mean 'train'"),
])
def test_cli_typos_name_closest(argv, needle, capsys):
    with pytest.raises(SystemExit):
        main(argv)
    assert needle in capsys.readouterr().err


def test_cli_invalid_values(capsys):
    assert main(["train", "--loss", "bls", "--epochs", "1"]) == 2
    assert "did you mean 'bsl'" in capsys.readouterr().err
    assert main(["train", "--set", "train.epoch=3"]) == 2
    assert "did you mean 'epochs'" in capsys.readouterr().err


def test_cli_datasets(capsys):
    assert main(["datasets", "--no-stats"]) == 0
    out = capsys.readouterr().out
    assert "lastfm" in out and "yelp2018" in out


# ---------------------------------------------------------------------------- train_config (no training)
def parsed(*argv: str):
    return train_config(build_parser().parse_args(["train", *argv]))


def test_train_config_merges_only_what_was_written():
    """``--loss bpr`` on the default config is fine (SL's default τ is not carried over)."""
    cfg = parsed("--loss", "bpr", "--epochs", "3")
    assert cfg.loss.name == "bpr" and cfg.train.epochs == 3
    assert cfg.to_dict()["loss"] == {"name": "bpr"}


def test_train_config_rejects_option_of_another_entry():
    with pytest.raises(ConfigError, match=r"loss\.tau does not apply to loss\.name = 'bpr'; it is an option of loss .*bsl"):
        parsed("--loss", "bpr", "--tau", "0.2")


def test_train_config_order_config_then_flags_then_set(tmp_path):
    preset = tmp_path / "x.yaml"
    preset.write_text("train: {epochs: 7, lr: 0.5}\nloss: {name: sl, tau: 0.3}\n")
    cfg = parsed("--config", str(preset), "--epochs", "5", "--set", "train.epochs=4", "--tau", "0.2")
    assert cfg.train.epochs == 4 and cfg.train.lr == 0.5 and cfg.loss.options.tau == 0.2


def test_cli_train_other_cutoffs(tmp_path, capsys):
    """ks = [5, 10] with metric recall@10 (a valid config) prints end to end, with every probe on."""
    train, test = write_tiny_data(tmp_path / "data")
    code = main(["train", "--set", f"data.train_path={train}", "--set", f"data.test_path={test}",
                 "--set", "train.ks=[5,10]", "--set", "train.metric=recall@10", "--noise-pos", "0.2",
                 "--epochs", "2", "--negatives", "8", "--batch-size", "64", "--device", "cpu", "--dim", "8",
                 "--out", str(tmp_path / "run"), "--quiet", "--fairness", "--track-variance"])
    captured = capsys.readouterr()
    out = captured.out
    assert code == 0, captured.err
    assert "@20" not in out and "@10" in out
    assert "most-popular baseline (test): recall@10 " in out and ", ndcg@10 " in out
    assert "best epoch 2 of 2" in out or "best epoch 1 of 2" in out
    assert "in-training share of positive-side gradient" in out and "per popularity group" in out
    assert "recall@10=" in out and "run written to" in out


def test_cli_empty_test_split_is_a_clear_error(tmp_path, capsys):
    train, _ = write_tiny_data(tmp_path / "data")
    test = tmp_path / "data" / "empty_test.txt"
    test.write_text("".join(f"{u}\n" for u in range(40)))  # user lines without items
    code = main(["train", "--set", f"data.train_path={train}", "--set", f"data.test_path={test}",
                 "--epochs", "2", "--device", "cpu", "--quiet", "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code == 2
    assert "rankrobust train: error: test split has no user with a test item after masking" in err
    assert "data.test_path" in err and "empty_test.txt" in err


def test_cli_patience_waits_for_validation(tmp_path, capsys):
    """--patience 2 --set train.eval_every=5 --epochs 10 validates at 5 and 10 (it used to stop at epoch 2)."""
    train, test = write_tiny_data(tmp_path / "data")
    code = main(["train", "--set", f"data.train_path={train}", "--set", f"data.test_path={test}",
                 "--patience", "2", "--set", "train.eval_every=5", "--epochs", "10", "--negatives", "8",
                 "--batch-size", "64", "--device", "cpu", "--dim", "8", "--quiet", "--out", str(tmp_path / "run")])
    out = capsys.readouterr().out
    assert code == 0
    assert "best epoch 5 of 10" in out or "best epoch 10 of 10" in out
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["best_epoch"] in (5, 10) and metrics["epochs_run"] == 10 and not metrics["stopped_early"]


def test_cli_datasets_prints_counts_as_integers(tmp_path, capsys):
    """Counts are integers even when some datasets are not there (no 1812.0), '-' where not loaded."""
    assert main(["datasets", "--data-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    lastfm = next(line for line in out.splitlines() if line.lstrip().startswith("lastfm"))
    assert " 1812 " in lastfm and " 2762 " in lastfm and ".0 " not in out
    assert not re.search(r"\b\d+\.0\b", out) and "NaN" not in out


def test_user_facing_text_cites_no_unshipped_protocols_file(capsys):
    """Help texts and figure captions point to README sections, not PROTOCOLS.md (not in a clone)."""
    from analysis.figures import FIGURES

    parser = build_parser()
    sub = next(a for a in parser._actions if a.choices and "figures" in a.choices).choices
    texts = [parser.format_help()] + [p.format_help() for p in sub.values()]
    texts += [f.caption for f in FIGURES]
    assert not [t for t in texts if "PROTOCOLS" in t]
    assert any('README: "XSimGCL and the popularity-shift (OOD) test"' in t for t in texts)


def test_results_on_a_shipped_store_prints_seed_level_cis_and_capped_runs(capsys):
    """bsl-batching-quick (tuned, early stopping): 5 seeds per cell, none capped, one Holm family per table; the
    np-quick example shipped until 2026-12 (tests/data): one seed, 18 of 20 runs at their 15-epoch cap, warned."""
    from rankrobust import EXAMPLES_DIR

    store = str(EXAMPLES_DIR / "bsl-batching-quick")
    assert main(["results", store, "--compare", "loss.name=bsl,train.batching=pairs",
                 "loss.name=bsl,train.batching=users", "--robustness", "sl", "bsl"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"bsl +0\.0 +pairs +0\.\d{4} \[0\.\d{4}, 0\.\d{4}\] n=5 .* bootstrap\+t +0/5", out)
    assert re.search(r"sl +0\.0 +pairs .* n=5 +t +0/5", out)
    assert "finished runs stopped at their epoch cap" not in out and "compared runs stopped at" not in out
    assert "p_holm: one Holm family of 3 tests" in out and "p_holm: one Holm family of 4 tests" in out
    old = str(Path(__file__).parent / "data" / "np-quick-2026-11")
    assert main(["results", old, "--compare", "sl", "bsl"]) == 0
    out = capsys.readouterr().out
    assert "warning: 18 of 20 finished runs stopped at their epoch cap" in out
    assert "warning: 10 of 10 compared runs stopped at their epoch cap: not converged" in out
    assert main(["results", old]) == 0
    out = capsys.readouterr().out
    assert "(n=1, no CI)" in out and re.search(r"\n +0\.3 +0\.3123 \(n=1, no CI\) .* 0/1", out)  # bce, early stopped
    assert "18 of 20 finished runs stopped at their epoch cap" in out


# ---------------------------------------------------------------------------- issue 25: one-line errors, SIGTERM
def test_results_metric_that_is_not_numeric_is_one_line(capsys):
    from rankrobust import EXAMPLES_DIR

    assert main(["results", str(EXAMPLES_DIR / "np-quick"), "--metric", "status"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("rankrobust results: error: --metric 'status' is not a numeric metric column of the store")
    assert err.count("\n") == 1


def test_results_names_the_cells_not_done(tmp_path, capsys):
    import shutil

    import pandas as pd

    from rankrobust import EXAMPLES_DIR

    folder = tmp_path / "np"
    shutil.copytree(EXAMPLES_DIR / "np-quick", folder)
    store = pd.read_parquet(folder / "store.parquet")
    gone = store["cell_id"].iloc[0]
    store.iloc[1:].to_parquet(folder / "store.parquet")
    assert main(["results", str(folder)]) == 0
    out = capsys.readouterr().out
    assert f"note: {len(store) - 1} of {len(store)} cells done; missing: {gone}; rerun `rankrobust sweep SPEC " \
           f"--out {folder}` to run them" in out


def test_sigterm_during_train_marks_the_run_failed_and_a_plain_rerun_replaces_it(tmp_path, monkeypatch, capsys):
    import os
    import signal

    import analysis.probes
    from rankrobust.probes import Probe
    from rankrobust.runs import RunDir

    class Kill(Probe):
        name = "kill"

        def epoch_end(self, epoch, model, row):
            os.kill(os.getpid(), signal.SIGTERM)

    train, test = write_tiny_data(tmp_path / "data")
    monkeypatch.setattr(analysis.probes, "probes_for", lambda **kw: [Kill()])
    args = ["train", "--set", f"data.train_path={train}", "--set", f"data.test_path={test}", "--epochs", "3",
            "--dim", "8", "--device", "cpu", "--quiet", "--out", str(tmp_path / "run")]
    assert main(args) == 143
    assert "rankrobust train: stopped by SIGTERM;" in capsys.readouterr().err
    run = RunDir(tmp_path / "run")
    assert run.status() == "failed" and run.failure().endswith("stopped by SIGTERM")
    monkeypatch.setattr(analysis.probes, "probes_for", lambda **kw: [])
    assert main(args) == 0 and run.status() == "done"  # a plain rerun replaces the stopped attempt


def test_sweep_out_a_single_run_folder_is_refused(tmp_path, capsys):
    from tests.test_sweep import tiny_spec

    spec = tiny_spec(tmp_path)
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text("{}\n")
    (run / "status").write_text("done\n")
    assert main(["sweep", str(spec), "--out", str(run), "--quiet"]) == 2
    assert capsys.readouterr().err == (f"rankrobust sweep: error: --out {run} is a single run folder (it holds "
                                       f"config.json), not a sweep folder; choose another --out for the sweep\n")
    assert sorted(p.name for p in run.iterdir()) == ["config.json", "status"]


def test_an_out_folder_the_user_linked_is_followed_once(tmp_path, capsys):
    """`--out results` where results -> /scratch/... (the user's own link) writes into the real folder."""
    from rankrobust.cli import main

    real = tmp_path / "scratch"
    real.mkdir()
    (tmp_path / "results").symlink_to(real)
    rc = main(["train", "--dataset", "lastfm", "--epochs", "1", "--dim", "8", "--quiet",
               "--out", str(tmp_path / "results" / "run")])
    assert rc == 0, capsys.readouterr().err
    assert (real / "run" / "status").read_text().startswith("done")


def test_compare_with_one_seed_says_no_seed_level_test_and_shows_the_per_user_view(capsys):
    """One seed per cell: the Holm family used to come out empty ("one Holm family of 0 tests") with no word why.
    Now one line says a seed-level test needs >= 2 matched seeds, and the per-user view follows, labelled as
    secondary; where the runs have no per-user tables, one line says so."""
    from rankrobust import EXAMPLES_DIR

    old = Path(__file__).parent / "data" / "np-quick-2026-11"  # the one-seed np-quick example until 2026-12
    assert main(["results", str(old), "--compare", "sl", "bsl"]) == 0
    out = capsys.readouterr().out
    assert "Holm family of 0 tests" not in out
    assert "no test: a seed-level test needs >= 2 matched seeds per cell and these cells have at most 1" in out
    assert re.search(r"secondary: per-user, pooled over 1 seeds: .*not a substitute for one\)\n +noise\.pos_ratio "
                     r"+seeds +users +diff +p +p_holm\n", out)
    assert main(["results", str(old), "--robustness", "sl", "bsl"]) == 0
    out = capsys.readouterr().out
    assert "Holm family of 0 tests" not in out and "needs >= 2 matched seeds" in out
    assert main(["results", str(old), "--compare", "sl", "bpr"]) == 0  # BPR's runs kept no per_user tables
    out = capsys.readouterr().out
    assert "needs >= 2 matched seeds" in out and "(no per-user view either: " in out
    assert main(["results", str(EXAMPLES_DIR / "bsl-batching-quick"), "--compare", "sl", "bsl"]) == 0  # 5 seeds
    out = capsys.readouterr().out
    assert "p_holm: one Holm family of" in out and "needs >= 2 matched seeds" not in out and "secondary" not in out


def test_rankrobusts_own_warnings_print_as_one_line(tmp_path):
    """A grid axis acting in some cells warns; the CLI used to print it as 'FILE:LINE: UserWarning: ...' plus the
    source line.  rankrobust's warnings are one 'warning: ...' line; other libraries' keep Python's form."""
    import subprocess
    import sys
    import warnings

    from rankrobust.cli import _format_warning

    spec = tmp_path / "g.yaml"
    spec.write_text("name: g\nbase: {train: {epochs: 1}}\ngrid: {loss.name: [sl, bpr], loss.tau: [0.1, 0.2]}\n"
                    "seeds: [0]\n")
    done = subprocess.run([sys.executable, "-m", "rankrobust.cli", "sweep", str(spec), "--out", str(tmp_path / "out"),
                           "--dry-run"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "g: 3 runs, 0 done, 3 to run" in done.stdout
    assert done.stderr.startswith("warning: sweep g: loss.tau does not act in some cells") and "UserWarning" not in \
        done.stderr and done.stderr.count("\n") == 1
    import rankrobust.sweeps.spec as spec_module

    text = _format_warning(UserWarning("sweep g: loss.tau does not act"), UserWarning, spec_module.__file__, 336)
    assert text == "warning: sweep g: loss.tau does not act\n"
    assert "UserWarning" in _format_warning(UserWarning("x"), UserWarning, warnings.__file__, 1)


def test_a_flag_value_of_the_wrong_type_is_one_line_saying_how_to_write_it(capsys):
    """`--negatives 1e9` used to print argparse's 25-line usage block above "invalid int value: '1e9'"."""
    for argv, line in ((["train", "--negatives", "1e9"], "--negatives '1e9' is not a whole number; write it as "
                                                          "1000000000"),
                       (["train", "--dim", "1.5"], "--dim '1.5' is not a whole number; write a whole number"),
                       (["train", "--lr", "abc"], "--lr 'abc' is not a number; write a number"),
                       (["sweep", "s.yaml", "--out", "o", "--jobs", "two"], "--jobs 'two' is not a whole number")):
        with pytest.raises(SystemExit) as stop:
            main(argv)
        err = capsys.readouterr().err
        assert stop.value.code == 2 and err.count("\n") == 1 and "usage:" not in err, err
        assert err.startswith(f"rankrobust {argv[0]}: error: {line}"), err


def test_holm_family_line_names_cells_without_a_test():
    import pandas as pd

    from rankrobust.cli import _holm_family

    nan = float("nan")
    assert _holm_family(pd.DataFrame({"seeds": [3, 3], "p": [0.1, 0.2]})) == "p_holm: one Holm family of 2 tests"
    assert _holm_family(pd.DataFrame({"seeds": [3, 1], "p": [0.1, nan]})) == (
        "p_holm: one Holm family of 1 tests (1 cell(s) with fewer than 2 matched seeds have no test)")
    assert _holm_family(pd.DataFrame({"seeds": [1, 1], "p": [nan, nan]})).startswith(
        "no test: a seed-level test needs >= 2 matched seeds per cell and these cells have at most 1")


@pytest.mark.parametrize("args, words", [
    (["--compare", "sl", "bslx"], "did you mean 'bsl'?"),
    (["--compare", "foo=1", "bsl"], "no column 'foo'"),
    (["--compare", "sl", "bsl", "--compare-metric", "coverage@20"], "global metric"),
    (["--robustness", "sl", "bsl", "--noise-axis", "loss.name"], "not a noise axis"),
    (["--per-user"], "goes with --compare"),
    (["--compare", "sl", "sl"], "--compare sl sl: both arms are the same runs"),
    (["--compare", "loss.name=bsl", "bsl"], "--compare loss.name=bsl bsl: both arms are the same runs"),
    (["--robustness", "bsl", "bsl"], "--robustness bsl bsl: both arms are the same runs"),
    (["--compare", "sl", "bsl", "--compare-metric", "ndcg"],
     "--compare-metric 'ndcg': ndcg is computed at every K of train.ks; write ndcg@K"),
])
def test_results_refuses_a_bad_comparison_before_printing_anything(args, words, capsys):
    """A mistyped arm, metric or noise axis used to print the whole summary table and then the error line."""
    from rankrobust import EXAMPLES_DIR

    assert main(["results", str(EXAMPLES_DIR / "np-quick"), *args]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and len(captured.err.strip().splitlines()) == 1 and words in captured.err


def test_figures_out_a_file_is_one_line(tmp_path, capsys):
    from rankrobust import EXAMPLES_DIR

    target = tmp_path / "afile.txt"
    target.write_text("keep me")
    assert main(["figures", str(EXAMPLES_DIR / "lc-quick"), "--out", str(target)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "is a file, not a folder" in err and target.read_text() == "keep me"
