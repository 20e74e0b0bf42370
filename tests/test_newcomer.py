"""A newcomer's first hour (issue 25): own data is not labelled lastfm, a run says what it read and whether it
is kept, results folders resolve as documented, figures stay out of the tracked folder, the CLI's help."""
from __future__ import annotations

import json

from rankrobust import load_run
from rankrobust.cli import main
from rankrobust.config import canonical_config, config_from_dict
from tests.test_sweep import write_tiny_data

TINY = ["--epochs", "1", "--negatives", "8", "--batch-size", "64", "--device", "cpu", "--dim", "8", "--quiet"]


def test_own_data_is_not_labelled_lastfm(tmp_path, capsys):
    """config.json and load_run(...).config hold data.name null beside the files; the console names them."""
    train, test = write_tiny_data(tmp_path / "data")
    out = tmp_path / "run"
    assert main(["train", "--set", f"data.train_path={train}", "--set", f"data.test_path={test}", *TINY,
                 "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    stored = json.loads((out / "config.json").read_text())
    assert stored["data"]["name"] is None and stored["data"]["train_path"] == str(train)
    assert load_run(out).config["data"]["name"] is None
    assert f"train {train}" in printed and f"test {test}" in printed


def test_own_data_runs_stored_with_lastfm_keep_their_identity():
    """A run stored before the rule (data.name lastfm beside train_path) is the same run as one made now."""
    now = config_from_dict({"data": {"train_path": "a.txt", "test_path": "b.txt"}}).to_dict()
    before = {"schema": 2, **now, "data": {**now["data"], "name": "lastfm"}}
    assert canonical_config(before) == now


def test_train_without_out_says_so(tmp_path, capsys):
    train, test = write_tiny_data(tmp_path / "data")
    assert main(["train", "--set", f"data.train_path={train}", "--set", f"data.test_path={test}", *TINY]) == 0
    captured = capsys.readouterr()
    assert "no --out: this run is printed, not saved" in captured.err
    assert "nothing written (no --out)" in captured.out


def test_csv_without_header_names_the_header(tmp_path, capsys):
    train, test = tmp_path / "train.csv", tmp_path / "test.csv"
    train.write_text("0,5\n0,6\n1,5\n")
    test.write_text("user,item\n0,7\n")
    assert main(["train", "--set", f"data.train_path={train}", "--set", f"data.test_path={test}", *TINY]) == 2
    assert "start the file with the line 'user,item'" in capsys.readouterr().err


def test_results_dir_reads_a_relative_variable_against_the_shell_folder(tmp_path, monkeypatch):
    """`export RANKROBUST_RESULTS=results` in the repository root, notebook kernel in notebooks/: root/results."""
    from rankrobust import RESULTS_ENV, results_dir

    (tmp_path / "results").mkdir()
    (tmp_path / "notebooks").mkdir()
    monkeypatch.chdir(tmp_path / "notebooks")
    monkeypatch.setenv("PWD", str(tmp_path))
    monkeypatch.setenv(RESULTS_ENV, "results")
    assert results_dir() == tmp_path / "results"
    (tmp_path / "notebooks" / "results").mkdir()  # the working folder wins where it has one
    assert results_dir() == tmp_path / "notebooks" / "results"


def test_results_dir_falls_back_per_sweep_with_a_note(tmp_path, monkeypatch, capsys):
    from rankrobust import EXAMPLES_DIR, RESULTS_ENV, results_dir

    monkeypatch.setenv(RESULTS_ENV, str(tmp_path))
    (tmp_path / "np-quick").mkdir()
    (tmp_path / "np-quick" / "store.parquet").write_bytes(b"")
    assert results_dir("np-quick") == tmp_path / "np-quick"
    assert capsys.readouterr().err == ""
    assert results_dir("bsl-batching-quick") == EXAMPLES_DIR / "bsl-batching-quick"
    note = capsys.readouterr().err
    assert "has no sweep 'bsl-batching-quick'" in note and str(EXAMPLES_DIR / "bsl-batching-quick") in note
    monkeypatch.delenv(RESULTS_ENV)
    assert results_dir("np-quick") == EXAMPLES_DIR / "np-quick"


def test_help_version_and_defaults(capsys):
    import pytest

    with pytest.raises(SystemExit):
        main(["--version"])
    assert capsys.readouterr().out.startswith("rankrobust ")
    from rankrobust.cli import build_parser

    helps = {name: sub.format_help() for name, sub in build_parser()._subparsers._group_actions[0].choices.items()}
    assert "seed of the run (default 0)" in " ".join(helps["train"].split())
    for needle in ("default 1", "(default local)", "--seeds", "--device"):
        assert needle in " ".join(helps["sweep"].split())
    assert "default 1e-06" in " ".join(helps["dro-check"].split())
    assert "results/figures" in " ".join(helps["figures"].split()) and "--list" in helps["figures"]
    assert "--csv" in helps["results"]


def test_figures_default_out_is_beside_the_sweeps_and_list(tmp_path, capsys):
    import shutil

    from rankrobust import EXAMPLES_DIR

    assert main(["figures", "--list"]) == 0
    assert "fig9-bsl-batching" in capsys.readouterr().out
    shutil.copytree(EXAMPLES_DIR / "var-quick", tmp_path / "results" / "var-quick")
    assert main(["figures", str(tmp_path / "results" / "var-quick"), "--only", "5"]) == 0
    assert (tmp_path / "results" / "figures" / "fig5-variance-epochs.png").is_file()
    assert "drawing fig5-variance-epochs" in capsys.readouterr().err


def test_figures_list_shows_each_captions_lead_whole(capsys):
    """--list used to cut captions at the first ';', inside parentheses ("(code parameter r, mode reweight"):
    each figure's lead now ends at a ';' or sentence end outside parentheses, with every parenthesis closed."""
    from analysis.figures import FIGURES, caption_summary

    assert main(["figures", "--list"]) == 0
    listed = " ".join(capsys.readouterr().out.split())  # unwrapped
    for fig in FIGURES:
        lead = caption_summary(fig.caption)
        assert lead and fig.caption.startswith(lead) and lead in listed, fig.stem
        assert lead.count("(") == lead.count(")"), (fig.stem, lead)
        rest = fig.caption[len(lead):]
        assert rest == "" or rest[0] in ";.", (fig.stem, rest[:20])
    assert "(code parameter r, mode reweight; r = 1 is SL), per backbone" in listed
    assert "(one run each, the first finished; no aggregation over seeds), coloured by popularity tercile" in listed
    assert caption_summary("A (b; c). D e; f.") == "A (b; c)" and caption_summary("A b (c. D)") == "A b (c. D)"


def test_results_csv(tmp_path, capsys):
    from rankrobust import EXAMPLES_DIR

    csv = tmp_path / "out" / "np.csv"
    assert main(["results", str(EXAMPLES_DIR / "np-quick"), "--compare", "sl", "bsl", "--csv", str(csv)]) == 0
    assert csv.is_file() and (tmp_path / "out" / "np-compare.csv").is_file()
    assert "test.ndcg@20 mean" in csv.read_text().splitlines()[0]


def test_sweep_seeds_and_device_override(tmp_path):
    from rankrobust.sweeps import load_spec

    spec = load_spec("configs/sweeps/untuned/noisy-positives-lastfm-quick.yaml", seeds=[7], device="cpu")
    assert spec.seeds == [7] and {c.config.train.seed for c in spec.cells} == {7}
    assert {c.config.train.device for c in spec.cells} == {"cpu"}


def test_datasets_suggests_download(capsys):
    assert main(["datasets", "--no-stats", "--data-dir", "/nonexistent-folder"]) == 0
    assert "rankrobust download NAME" in capsys.readouterr().out


def test_citations_point_to_files_and_sections_a_clone_has():
    """Every tracked text file (code, configs, docs, notebooks, shipped examples) cites only what a clone holds:
    no ../shared/PROTOCOLS.md, every docs/NAME.md exists, every PROTOCOLS.md §N is a section of
    docs/PROTOCOLS.md, every README "Section" names a README heading (a config cited README "Noise", which is
    not one)."""
    import re
    import subprocess
    from pathlib import Path

    import pytest

    repo = Path(__file__).resolve().parents[1]
    try:
        listed = subprocess.run(["git", "ls-files"], cwd=repo, capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout")
    files = [repo / f for f in listed.splitlines() if not f.startswith(("results/", "tests/"))
             and f.endswith((".py", ".md", ".yaml", ".yml", ".ipynb", ".sh", ".json", ".toml"))]
    sections = len(re.findall(r"(?m)^## \d+\.", (repo / "docs" / "PROTOCOLS.md").read_text()))
    headings = re.findall(r"(?m)^#+ (.+)$", (repo / "README.md").read_text())
    problems = []
    for path in files:
        if not path.is_file():
            continue
        text = path.read_text(errors="replace").replace('\\"', '"')
        name = path.relative_to(repo)
        problems += [f"{name}: cites {m}" for m in re.findall(r"(?:\.\./)+shared/PROTOCOLS\.md", text)]
        problems += [f"{name}: cites {m}, not in the repository" for m in set(re.findall(r"\bdocs/[\w./-]+\.md", text))
                     if not (repo / m).is_file()]
        problems += [f"{name}: cites PROTOCOLS.md §{n}, which has {sections} sections"
                     for n in set(re.findall(r"PROTOCOLS\.md ?§ ?(\d+)", text)) if not 1 <= int(n) <= sections]
        problems += [f'{name}: cites README "{s}", not a README heading'
                     for s in set(re.findall(r'README:? "(\w[^"\n]{2,80})"', text))
                     if not any(h.startswith(s) for h in headings)]
    assert sections >= 13 and not problems, "\n".join(problems)


def test_figures_of_sweeps_at_the_repository_root_do_not_default_to_the_committed_folder():
    """`rankrobust sweep ... --out np-quick` at the root of a checkout, then `rankrobust figures np-quick`: the
    default folder beside the sweep was the committed figures/ (overwritten); it is results/figures there."""
    from pathlib import Path

    from rankrobust.cli import default_figures_dir

    repo = Path(__file__).resolve().parents[1]
    assert default_figures_dir([str(repo / "np-quick")]) == repo / "results" / "figures"
    assert default_figures_dir([str(repo / "results" / "np-quick")]) == repo / "results" / "figures"
    assert default_figures_dir(["/tmp/x/np-quick", "/tmp/x/lc-quick"]) == Path("/tmp/x/figures")
    from rankrobust import EXAMPLES_DIR  # the shipped examples live in the package: never write figures there

    assert default_figures_dir([str(EXAMPLES_DIR / "lc-quick")]) == Path.cwd() / "results" / "figures"


def test_examples_readme_names_the_spec_each_example_was_made_with():
    """The examples' README gave the tuned specs' commands (configs/sweeps/NAME.yaml) for stores that the untuned
    specs made (their sweep.json: configs/sweeps/untuned/NAME.yaml): each row's command is its recorded spec's."""
    from rankrobust import EXAMPLES_DIR

    text = (EXAMPLES_DIR / "README.md").read_text()
    for folder in sorted(p for p in EXAMPLES_DIR.iterdir() if (p / "sweep.json").is_file()):
        source = json.loads((folder / "sweep.json").read_text())["source"]
        row = next(line for line in text.splitlines() if line.startswith(f"| `{folder.name}` |"))
        assert f"`rankrobust sweep {source} --out results/" in row, folder.name  # --out: the folder that made it
