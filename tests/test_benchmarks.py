"""The benchmark scripts run end to end on the embedded data and write their rows where they belong."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from benchmarks.speed import append_row

REPO = Path(__file__).resolve().parents[1]


def test_append_row_goes_to_the_sections_first_table(tmp_path):
    """Rows of a section go to its own table, not to a table under one of its ### parts (a past misfiling)."""
    results = tmp_path / "RESULTS.md"
    results.write_text("## Scorers\n\ntext\n\n| a | b |\n|---|---|\n| 1 | 2 |\n\nnote\n\n### Peak memory\n\n"
                       "| c |\n|---|\n| 9 |\n\n## Next\n\n| x |\n|---|\n")
    append_row("Scorers", "| 3 | 4 |", results)
    lines = results.read_text().splitlines()
    assert lines[lines.index("| 1 | 2 |") + 1] == "| 3 | 4 |"
    assert lines[lines.index("| 9 |") + 1] == ""


def _run(*args: str, returncode: int = 0) -> str:
    done = subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True, timeout=300,
                          env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin", "HOME": str(Path.home())})
    assert done.returncode == returncode, done.stderr[-2000:]
    return done.stdout if returncode == 0 else done.stderr


def test_speed_scorers_and_memory_scripts_print_their_rows():
    out = _run("benchmarks/speed.py", "--scorers", "--dataset", "lastfm", "--device", "cpu", "--epochs", "1",
               "--batches", "2", "--against", "sparse")
    row = out.strip().splitlines()[-1]
    assert row.startswith("| ") and "(sparse)" in row and "lastfm" in row
    out = _run("benchmarks/memory.py", "--dataset", "lastfm", "--negatives", "16", "--scorer", "sparse",
               "--batches", "2")
    assert "M = 16, scorer sparse" in out.strip().splitlines()[-1]


def test_benchmark_scripts_end_a_bad_option_in_one_line():
    err = _run("benchmarks/memory.py", "--dataset", "lastfm", "--scorer", "fast", returncode=2)
    assert err.strip().splitlines() == [err.strip()] and err.startswith("memory.py: error: train.scorer must be")
    err = _run("benchmarks/speed.py", "--scorers", "--dataset", "nosuch", returncode=2)
    assert "Traceback" not in err and err.startswith("speed.py: error: data.name")


_AUTHORS_LOG = """2023-11-04 12:44:30,116 - [INFO] - {'dataset': 'ml'}
2023-11-04 12:45:03,086 - [INFO] - E:0|train_time: 22.77, VALID_time: 0.43, losses:0.2256, best_valid(recall@20): -inf
valid \t N@5: 0.01, R@5: 0.002, P@5: 0.01
valid \t N@20: 0.0100, R@20: 0.0200, P@20: 0.0050

2023-11-04 12:45:24,988 - [INFO] - E:1|train_time: 21.49, VALID_time: 0.36, losses:0.0197, best_valid(recall@20): 0.02
valid \t N@20: 0.0300, R@20: 0.0500, P@20: 0.0100

2023-11-04 12:45:25,000 - [INFO] - start to test!!
TEST \t N@5: 0.02, R@5: 0.01, P@5: 0.02
TEST \t N@20: 0.0310, R@20: 0.0510, P@20: 0.0110
"""


def test_authors_log_is_parsed_and_compared_with_a_run(tmp_path):
    """`authors_log.py`: their E:k is epoch k + 1, the R@20 / N@20 of the valid and TEST blocks are read, and the
    comparison with a run folder prints the gaps; a file that is not such a log ends in one line."""
    from benchmarks.authors_log import parse_authors_log
    from rankrobust.runs import RunDir

    frame, test = parse_authors_log(_AUTHORS_LOG)
    assert frame.to_dict("list") == {"epoch": [1, 2], "valid_recall@20": [0.02, 0.05], "valid_ndcg@20": [0.01, 0.03]}
    assert test == {"recall@20": 0.051, "ndcg@20": 0.031}
    (tmp_path / "authors.log").write_text(_AUTHORS_LOG)
    run = tmp_path / "run"
    run.mkdir()
    (run / RunDir.TABLES["epochs"]).write_text("epoch,loss,valid_recall@20\n1,0.5,0.03\n2,0.4,0.045\n")
    (run / RunDir.METRICS).write_text('{"test": {"recall@20": 0.06, "ndcg@20": 0.04}}')
    out = _run("benchmarks/authors_log.py", str(tmp_path / "authors.log"), str(run), "--epochs", "1,2")
    assert "    1           0.0300  0.0200  +0.0100" in out and "    2           0.0450  0.0500  -0.0050" in out
    assert "largest |gap| over epochs 1-40: 0.0100 (epoch 1)" in out
    assert "ours: 2 epochs, best valid Recall@20 0.0450 at epoch 2" in out
    assert "test Recall@20 / NDCG@20: ours 0.0600 / 0.0400, theirs 0.0510 / 0.0310" in out
    err = _run("benchmarks/authors_log.py", str(run / RunDir.METRICS), str(run), returncode=2)
    assert err.strip().splitlines() == [err.strip()] and "not a log of the authors' code" in err


def test_data_dir_reaches_the_memory_and_reproduce_scripts(tmp_path):
    """`--data-dir` (as the scripts' own "not found" advice says) is where both scripts look for the data."""
    for script, args in (("benchmarks/memory.py", ("--dataset", "ml-100k")),
                         ("benchmarks/reproduce.py", ("--config", "configs/mf-ml-sl.yaml", "--time-limit", "1"))):
        err = _run(script, *args, "--data-dir", str(tmp_path / "nowhere"), returncode=2)
        assert err.strip().splitlines() == [err.strip()] and "not found" in err and str(tmp_path / "nowhere") in err


def test_tune_pruning_specs_are_valid_and_differ_only_in_the_pruner():
    """The two studies of benchmarks/tune_pruning.py: same arms, budget and seed; median pruner vs none."""
    from benchmarks.tune_pruning import spec_for
    from rankrobust.tuning.spec import parse_tune_spec

    median, none = (parse_tune_spec(spec_for(kind, ["sl", "bsl"], 3)) for kind in ("median", "none"))
    assert [a.label for a in median.arms] == [a.label for a in none.arms] == ["mf-sl", "mf-bsl"]
    assert median.trials == none.trials == 3 and median.seed == none.seed
    assert median.pruner["kind"] == "median" and none.pruner["kind"] == "none"
    assert none.arms[1].config.loss.options.mode == "paper"
