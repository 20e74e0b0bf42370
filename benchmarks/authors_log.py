"""Compare a run's validation curve with a training log of the BSL authors' code (`junkangwu/BSL`, logs/).

    python benchmarks/authors_log.py AUTHORS.log RUN_DIR [--epochs 9,20,38] [--first 40]

The authors' logs hold, per epoch, a line ``E:k|train_time: …`` (k counted from
0, so ``E:k`` ends epoch k + 1) followed by ``valid`` lines with N@K / R@K /
P@K, and a final ``TEST`` block for the restored best epoch.  RUN_DIR is a
rankrobust run folder (its ``epochs.csv`` has ``valid_recall@20`` for every
validated epoch, its ``metrics.json`` the test metrics).  Prints the two
validation Recall@20 curves at the chosen epochs, the largest gap over the
first ``--first`` epochs both validated, each side's best epoch and value, and
the test Recall@20 / NDCG@20 of both.  Reads text only; nothing is trained.
"""
from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `benchmarks` importable when run as a script

from benchmarks.speed import run_script
from rankrobust.runs import RunDir

_EPOCH = re.compile(r"E:(\d+)\|")
_METRIC = re.compile(r"(N|R)@20: ([0-9.]+)")


def parse_authors_log(text: str) -> tuple[pd.DataFrame, dict[str, float]]:
    """(per-epoch frame with ``epoch`` (from 1), ``valid_recall@20``, ``valid_ndcg@20``; test metrics).

    Raises ValueError when the text holds no epoch line (not one of the authors' logs).
    """
    rows, test, epoch, block = [], {}, None, None
    for line in text.splitlines():
        if (m := _EPOCH.search(line)) is not None:
            epoch, block = int(m.group(1)) + 1, "valid"
            continue
        if line.startswith("TEST"):
            block = "test"
        elif not line.startswith("valid"):
            continue
        found = dict(_METRIC.findall(line))
        if "R" not in found:
            continue
        values = {"recall@20": float(found["R"]), "ndcg@20": float(found["N"])}
        if block == "test":
            test = values
        elif epoch is not None:
            rows.append({"epoch": epoch, **{f"valid_{k}": v for k, v in values.items()}})
    if not rows:
        raise ValueError("no 'E:k|' epoch line with a 'valid … R@20' line after it: not a log of the authors' code")
    return pd.DataFrame(rows).drop_duplicates("epoch", keep="last"), test


def _epoch_list(text: str) -> list[int]:
    """``--epochs``: comma-separated epoch numbers (argparse type)."""
    try:
        return [int(e) for e in text.split(",") if e.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be comma-separated integers, got {text!r}") from None


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("log", type=Path, help="a log of the authors' code")
    p.add_argument("run", type=Path, help="a rankrobust run folder (epochs.csv, metrics.json)")
    p.add_argument("--epochs", default="9,20,38", type=_epoch_list,
                   help="epochs to print side by side (comma-separated)")
    p.add_argument("--first", type=int, default=40, help="largest gap over the first N common epochs")
    args = p.parse_args()
    if not args.log.is_file():
        what = "is a folder, not a log file" if args.log.is_dir() else "not found"
        raise FileNotFoundError(f"{args.log} {what} (give a log of the authors' code, e.g. from junkangwu/BSL logs/)")
    if not args.run.is_dir():
        raise FileNotFoundError(f"{args.run} is not a run folder ({'a file' if args.run.exists() else 'no such folder'}; "
                                f"give the --out folder of a finished rankrobust run)")
    theirs, their_test = parse_authors_log(args.log.read_text(errors="replace"))
    run = RunDir(args.run)
    ours, test = run.table("epochs"), run.metrics().get("test")  # FileNotFoundError / RunFolderError name the file
    if "valid_recall@20" not in ours or not test:
        raise ValueError(f"{args.run} is not a finished run validated on recall@20 (epochs.csv needs "
                         f"valid_recall@20, metrics.json a test section)")
    ours = ours.dropna(subset=["valid_recall@20"])[["epoch", "valid_recall@20"]]
    both = ours.merge(theirs, on="epoch", suffixes=("_ours", "_theirs"))
    wanted = [e for e in args.epochs if e in set(both["epoch"])]
    if not wanted:
        print(f"(none of epochs {','.join(map(str, args.epochs))} was validated in both runs; see --epochs)")
    else:
        print("epoch  valid R@20 ours  theirs  gap")
    for e in wanted:
        row = both[both["epoch"] == e]
        if len(row):
            a, b = row["valid_recall@20_ours"].iloc[0], row["valid_recall@20_theirs"].iloc[0]
            print(f"{e:5d}  {a:15.4f}  {b:6.4f}  {a - b:+.4f}")
    early = both[both["epoch"] <= args.first]
    if len(early):
        gap = (early["valid_recall@20_ours"] - early["valid_recall@20_theirs"]).abs()
        print(f"largest |gap| over epochs 1-{args.first}: {gap.max():.4f} (epoch {int(early['epoch'][gap.idxmax()])})")
    for name, frame, col in (("ours", ours, "valid_recall@20"), ("theirs", theirs, "valid_recall@20")):
        best = frame.loc[frame[col].idxmax()]
        print(f"{name}: {int(frame['epoch'].max())} epochs, best valid Recall@20 {best[col]:.4f} at epoch {int(best['epoch'])}")
    print(f"test Recall@20 / NDCG@20: ours {test['recall@20']:.4f} / {test['ndcg@20']:.4f}"
          + (f", theirs {their_test['recall@20']:.4f} / {their_test['ndcg@20']:.4f}" if their_test else ""))


if __name__ == "__main__":
    run_script(main)
