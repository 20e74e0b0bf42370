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
