"""rankrobust beside RecBole 1.2.1: seconds per training epoch, side by side, as ratio rows of RESULTS.md.

    python benchmarks/peers.py --recbole-python /work/recbole-venv/bin/python --epochs 3 --reps 3 --append

The settings of the side-by-side (ml-100k, BPR loss, 1 uniform negative,
batch 1024, lr 1e-3, no weight decay, d = 64, dot scores; LightGCN with 3
layers), on both sides:

* RecBole runs in its own virtual environment (``torch==2.13.0 recbole==1.2.1``
  with ``setuptools<81 numpy==1.26.4 pandas==2.2.3 scipy==1.11.4``; never a
  dependency of rankrobust) through `benchmarks/recbole_epochs.py`, on atomic
  files this script writes from rankrobust's own copy of the data (train from
  ``train.txt.gz``, valid = test from ``test.txt.gz``, the BSL protocol) and on
  the configuration in `RECBOLE_CONFIG`;
* rankrobust trains on the same pairs (``data.valid_is_test``) with
  `rankrobust.train.Trainer` and the settings in `rankrobust_overrides`.

Each program is a fresh process with one thread (``OMP_NUM_THREADS=1
MKL_NUM_THREADS=1``), one process at a time; every repetition runs all
programs in a rotated order (rep r starts at program r), each timing
``--epochs`` epochs after ``--warmup`` untimed ones and reporting its median
epoch and its peak RSS.  A program's time is the median of its repetitions;
the rows give rankrobust / RecBole for BPR-MF and LightGCN, and rankrobust's
XSimGCL (3 layers, its default ε, λ, τ) / rankrobust's LightGCN.
``--worker NAME`` is the rankrobust side of one process (internal).
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
if str(HERE.parent) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(HERE.parent))

#: RecBole's configuration of the side-by-side (the yaml RecBole reads; paths filled in by `write_recbole_files`)
RECBOLE_CONFIG = {
    "dataset": "ml100k", "benchmark_filename": ["train", "valid", "test"],
    "load_col": {"inter": ["user_id", "item_id"]}, "USER_ID_FIELD": "user_id", "ITEM_ID_FIELD": "item_id",
    "eval_args": {"group_by": "user", "order": "RO", "mode": "full"}, "metrics": ["Recall", "NDCG"], "topk": [20],
    "valid_metric": "Recall@20", "train_batch_size": 1024, "eval_batch_size": 4096000, "learning_rate": 0.001,
    "weight_decay": 0.0, "stopping_step": 1000, "eval_step": 1,
    "train_neg_sample_args": {"distribution": "uniform", "sample_num": 1, "alpha": 1.0, "dynamic": False,
                              "candidate_num": 0},
    "embedding_size": 64, "seed": 2020, "reproducibility": True, "use_gpu": False, "device": "cpu",
    "show_progress": False, "worker": 0, "log_wandb": False, "metric_decimal_place": 6,
    "n_layers": 3, "reg_weight": 0.0,  # LightGCN's (BPR ignores them)
}

#: program name → (side, model); rankrobust's programs are timed by `--worker`, RecBole's by recbole_epochs.py
PROGRAMS = {"rankrobust-mf": ("rankrobust", "mf"), "recbole-bpr": ("recbole", "BPR"),
            "rankrobust-lightgcn": ("rankrobust", "lightgcn"), "recbole-lightgcn": ("recbole", "LightGCN"),
            "rankrobust-xsimgcl": ("rankrobust", "xsimgcl")}
#: the rows: (work, numerator program, denominator program)
RATIOS = (("BPR-MF ml-100k, s/epoch", "rankrobust-mf", "recbole-bpr"),
          ("LightGCN (3 layers) ml-100k, s/epoch", "rankrobust-lightgcn", "recbole-lightgcn"),
          ("XSimGCL (3 layers) / LightGCN (3 layers) ml-100k, s/epoch", "rankrobust-xsimgcl", "rankrobust-lightgcn"))
ONE_THREAD = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD": "1"}


def rankrobust_overrides(model: str, dataset: str) -> dict:
    """rankrobust's settings of the side-by-side (those of `RECBOLE_CONFIG`) as config overrides."""
    return {"data.name": dataset, "data.valid_is_test": True, "model.name": model, "model.dim": 64,
            "model.score": "dot", "model.layers": 3, "loss.name": "bpr", "train.sampler": "uniform_exclude",
            "train.num_negatives": 1, "train.batch_size": 1024, "train.lr": 1e-3, "train.l2": 0.0,
            "train.device": "cpu"}


def load(dataset: str):
    from rankrobust.config import config_from_template
    from rankrobust.experiment import load_data, prepare_data

    cfg = config_from_template(rankrobust_overrides("mf", dataset))
    return prepare_data(cfg, load_data(cfg.data))[0]


def write_recbole_files(dataset: str, folder: Path) -> Path:
    """RecBole's atomic files of ``dataset`` (train; valid = test) and its yaml in ``folder`` → the yaml's path."""
    import yaml

    data = load(dataset)
    name = RECBOLE_CONFIG["dataset"]
    (folder / name).mkdir(parents=True, exist_ok=True)
    for split, inter in (("train", data.train), ("valid", data.test), ("test", data.test)):
        users, items = inter.to_pairs()
        lines = "".join(f"{u}\t{i}\n" for u, i in zip(users.tolist(), items.tolist()))
        (folder / name / f"{name}.{split}.inter").write_text("user_id:token\titem_id:token\n" + lines)
    config = folder / "recbole.yaml"
    config.write_text(yaml.safe_dump({**RECBOLE_CONFIG, "data_path": str(folder),
                                      "checkpoint_dir": str(folder / "saved")}))
    return config


def worker(model: str, dataset: str, epochs: int, warmup: int) -> None:
    """Time rankrobust's epochs in this process; print one JSON line (as recbole_epochs.py does)."""
    import torch

    from rankrobust.config import config_from_template
    from rankrobust.train import Trainer

    cfg = config_from_template(rankrobust_overrides(model, dataset))
    trainer = Trainer(cfg, load(dataset), torch.device("cpu"))
    times = []
    for epoch in range(warmup + epochs):
        t0 = time.perf_counter()
        trainer.epoch().tolist()
        if epoch >= warmup:
            times.append(time.perf_counter() - t0)
    print(json.dumps({"program": f"rankrobust {model}", "epoch_s": times, "batches": trainer.n_batches,
                      "threads": torch.get_num_threads(),
                      "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


def run_program(name: str, args, config: Path, folder: Path) -> dict:
    """One fresh one-thread process of program ``name`` → its JSON report (epoch_s, batches, threads, peak_rss_mib)."""
    side, model = PROGRAMS[name]
    if side == "rankrobust":
        cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", model, "--dataset", args.dataset]
    else:
        cmd = [args.recbole_python, str(HERE / "recbole_epochs.py"), "--model", model, "--data-dir", str(folder),
               "--config", str(config), "--saved-dir", str(folder / "saved")]
    cmd += ["--epochs", str(args.epochs), "--warmup", str(args.warmup)]
    env = {**os.environ, **ONE_THREAD, "PYTHONPATH": str(HERE.parent)}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=folder)
    if proc.returncode != 0:
        raise RuntimeError(f"{name} failed (exit {proc.returncode}): {proc.stderr.strip().splitlines()[-1:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def machine_name() -> str:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.machine()) if Path("/proc/cpuinfo").exists() \
        else platform.machine()
    return f"{os.cpu_count()}-core {platform.machine()} ({cpu}), 1 thread per process"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--recbole-python", default=os.environ.get("RECBOLE_PYTHON", "/work/recbole-venv/bin/python"),
                   help="python of RecBole's own virtual environment")
    p.add_argument("--dataset", default="ml-100k")
    p.add_argument("--programs", default=",".join(PROGRAMS), help=f"comma-separated subset of {', '.join(PROGRAMS)}")
    p.add_argument("--epochs", type=int, default=3, help="timed epochs per process")
    p.add_argument("--warmup", type=int, default=1, help="untimed epochs per process")
    p.add_argument("--reps", type=int, default=3, help="rotated repetitions (at least 3 for a row)")
    p.add_argument("--append", action="store_true", help="append the ratio rows to benchmarks/RESULTS.md")
    p.add_argument("--note", default="", help="free text for the rows (e.g. what else ran on the machine)")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        worker(args.worker, args.dataset, args.epochs, args.warmup)
        return
    names = args.programs.split(",")
    unknown = [n for n in names if n not in PROGRAMS]
    if unknown:
        raise ValueError(f"--programs: unknown {', '.join(unknown)}; choose from {', '.join(PROGRAMS)}")
    if any(PROGRAMS[n][0] == "recbole" for n in names) and not Path(args.recbole_python).exists():
        raise FileNotFoundError(f"--recbole-python {args.recbole_python} does not exist: build RecBole's venv "
                                "(module docstring) or pass its python")
    if args.append and args.reps < 3:
        raise ValueError(f"--append needs --reps >= 3 (got {args.reps})")
    folder = Path(tempfile.mkdtemp(prefix="rankrobust-peers-"))
    config = write_recbole_files(args.dataset, folder)
    per_rep: dict[str, list[float]] = {n: [] for n in names}
    rss: dict[str, list[float]] = {n: [] for n in names}
    for rep in range(args.reps):
        for name in names[rep % len(names):] + names[:rep % len(names)]:
            report = run_program(name, args, config, folder)
            per_rep[name].append(statistics.median(report["epoch_s"]))
            rss[name].append(report["peak_rss_mib"])
            print(f"rep {rep}: {name:22s} {per_rep[name][-1]:.3f} s/epoch (median of {args.epochs}), "
                  f"{report['batches']} batches, {report['threads']} thread(s)", flush=True)
    median = {n: statistics.median(t) for n, t in per_rep.items()}
    rows = []
    for work, num, den in RATIOS:
        if num in median and den in median:
            peak = " / ".join(f"{max(rss[n]):.0f}" for n in (num, den))
            notes = (f"median of {args.reps} rotated reps × {args.epochs} epochs (after {args.warmup} warm-up); "
                     f"reps {', '.join(f'{t:.3f}' for t in per_rep[num])} vs "
                     f"{', '.join(f'{t:.3f}' for t in per_rep[den])}")
            rows.append(f"| {dt.date.today()} | {machine_name()} | {work} | {num} {median[num]:.3f} | "
                        f"{den} {median[den]:.3f} | {median[num] / median[den]:.2f} | {peak} | "
                        f"{notes}{f'; {args.note}' if args.note else ''} |")
    print("| date | machine | work | program s/epoch | against s/epoch | ratio | peak RSS MiB | notes |")
    print("\n".join(rows))
    if args.append:
        from benchmarks.speed import append_row

        for row in rows:
            append_row("Peers", row)


if __name__ == "__main__":
    from benchmarks.speed import run_script

    run_script(main)
