"""Seconds per training epoch and per full evaluation for one dataset/model/loss/device.

    python benchmarks/speed.py --dataset lastfm --model mf --loss sl --epochs 3
    python benchmarks/speed.py --dataset yelp2018 --negatives 64 --epochs 1 --append

Times ``--epochs`` training epochs after ``--warmup`` untimed ones (compilation
and caches) and ``--evals`` full-ranking evaluations of all test users; prints
a table row and, with ``--append``, adds it to benchmarks/RESULTS.md with the
machine, torch version and date.

For the graph backbones (``--model lightgcn`` or ``xsimgcl``) the row goes to
the "Graph backbones" table, per batch and beside its floor: the bare sparse
products of one training step, ``2·L`` products ``Â @ X`` of the CSR
adjacency with an [n_users + n_items, d] table (L forward, L backward), plus
for XSimGCL the six [B, d] × [d, B] products of its two InfoNCE terms
(forward and two gradients each; on the CPU they run on the batch's distinct
ids only, so an XSimGCL batch can come close to this floor); ``--batches K`` times only the first K
batches of each epoch (large graphs).

``--scorers`` instead compares the two scoring paths of `rankrobust.scoring`
in one run (``python benchmarks/speed.py --scorers --dataset ml-100k
--negatives 256``): a ``gather`` trainer and an ``auto`` trainer, same seed,
their epochs interleaved (so both see the same machine load), and beside them
the compute floor: a bare forward + backward of the dense path's matrix
products ([B, d] × [d, n_items] and its two gradient products) for the same
number of batches.  The row gives both epoch times, the speed-up, and how far
the ``auto`` epoch is from the floor.

``--evaluation`` times the full-ranking evaluation of every test user
(``python benchmarks/speed.py --evaluation --dataset yelp2018 --threads 1,2
--old-evaluator ../eval-old/rankrobust/evaluate.py``): the evaluator as the
trainer builds it, on seeded random [n, d] embeddings, interleaved with its
compute floor (the bare product of the same users' rows with every item, in
the evaluator's [64 × d] × [d × n_items] blocks into one reused buffer: the
FLOPs of the evaluation and nothing else) and, when ``--old-evaluator`` names
the ``rankrobust/evaluate.py`` of an older checkout (a ``git worktree`` of an
earlier commit), the older evaluator on the same embeddings; one row per
thread count (section "Evaluation").
"""
from __future__ import annotations

import argparse
import datetime as dt
import importlib.util
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

from rankrobust.config import ConfigError, config_from_template, parse_override
from rankrobust.experiment import load_data, prepare_data
from rankrobust.train import Trainer, resolve_device

RESULTS = Path(__file__).with_name("RESULTS.md")


def machine(device: torch.device) -> str:
    """A short name of the machine the numbers come from."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    threads = torch.get_num_threads()
    return f"CPU {platform.processor() or platform.machine()}, {threads} thread{'s' if threads > 1 else ''}"


def run_script(main: Callable[[], None]) -> None:
    """Run a benchmark script's ``main``: a bad option, an unknown name or a missing dataset ends in one
    line on stderr and exit code 2, as the ``rankrobust`` command does, not in a traceback."""
    try:
        main()
    except (ConfigError, FileNotFoundError, ValueError, RuntimeError) as err:
        print(f"{Path(sys.argv[0]).name}: error: {err}", file=sys.stderr)
        sys.exit(2)


def with_note(text: str, note: str) -> str:
    """``text`` and, when given, ``; note`` (the notes cell of a row)."""
    return f"{text}; {note}" if note else text


def append_row(section: str, row: str, path: Path = RESULTS) -> None:
    """Insert ``row`` at the end of the first table under the ``## {section}`` heading of RESULTS.md
    (before any sub-heading: a ``###`` part of the section keeps its own table)."""
    lines = path.read_text().splitlines()
    start = next(n for n, line in enumerate(lines) if line.startswith(f"## {section}"))
    end = start + 1
    last_table = None
    while end < len(lines) and not lines[end].startswith("#"):
        if lines[end].startswith("|"):
            last_table = end
        end += 1
    lines.insert((last_table if last_table is not None else end - 1) + 1, row)
    path.write_text("\n".join(lines) + "\n")


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", default="lastfm")
    p.add_argument("--data-dir")
    p.add_argument("--model", default="mf")
    p.add_argument("--loss", default="sl")
    p.add_argument("--sampler", default="uniform")
    p.add_argument("--negatives", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=1024)
    p.add_argument("--layers", type=int, default=3)
    p.add_argument("--device", default="auto")
    p.add_argument("--compile", action="store_true")
    p.add_argument("--epochs", type=int, default=2, help="timed epochs")
    p.add_argument("--warmup", type=int, default=0, help="untimed epochs before timing")
    p.add_argument("--evals", type=int, default=3, help="timed full evaluations")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--append", action="store_true", help="append the row to benchmarks/RESULTS.md")
    p.add_argument("--note", default="", help="free text for the RESULTS.md row")
    p.add_argument("--scorers", action="store_true", help="compare train.scorer gather vs auto, and the floor")
    p.add_argument("--against", default="auto", choices=["auto", "sparse", "dense"],
                   help="with --scorers: the scorer timed against gather (default auto, as the trainer resolves it)")
    p.add_argument("--batches", type=int, default=0,
                   help="with --scorers or a graph model: time only the first N batches of each epoch (0: whole epochs)")
    p.add_argument("--evaluation", action="store_true",
                   help="time full evaluations of all test users beside the bare product (section Evaluation)")
    p.add_argument("--old-evaluator", metavar="PATH",
                   help="with --evaluation: an older rankrobust/evaluate.py timed on the same embeddings")
    p.add_argument("--threads", default="", help="with --evaluation: thread counts, e.g. 1,2 (default: as set)")
    args = p.parse_args()

    overrides = {"data.name": args.dataset, "data.data_dir": args.data_dir, "model.name": args.model,
                 "model.layers": args.layers, "loss.name": args.loss, "train.sampler": args.sampler,
                 "train.num_negatives": args.negatives, "train.batch_size": args.batch_size,
                 "train.device": args.device, "train.compile": args.compile}
    overrides.update(dict(parse_override(s) for s in args.set))
    cfg = config_from_template(overrides)  # --layers and --negatives only where they apply
    device = resolve_device(cfg.train.device)
    data, _ = prepare_data(cfg, load_data(cfg.data))
    if args.scorers:
        compare_scorers(cfg, data, device, args)
        return
    if args.evaluation:
        compare_evaluation(cfg, data, device, args)
        return
    trainer = Trainer(cfg, data, device)
    if args.model in GRAPH_MODELS:
        graph_row(cfg, data, trainer, device, args)
        return
    for _ in range(args.warmup):
        trainer.epoch().tolist()
    epoch_times = []
    for _ in range(args.epochs):
        sync(device)
        t0 = time.perf_counter()
        trainer.epoch().tolist()
        sync(device)
        epoch_times.append(time.perf_counter() - t0)
    trainer.test()  # warm the evaluator
    eval_times = []
    for _ in range(args.evals):
        sync(device)
        t0 = time.perf_counter()
        trainer.test()
        sync(device)
        eval_times.append(time.perf_counter() - t0)
    m = {"in_batch": "batch", "full": "all items"}.get(args.sampler, args.negatives)
    scorer = f", scorer {trainer.scorer.scorer}" if trainer.scorer is not None else ""
    settings = (f"{args.model}+{args.loss}, {args.sampler} M={m}{scorer}, "
                f"B={args.batch_size}, d={cfg.model.options.dim}, {cfg.model.options.score}"
                + (", compiled" if args.compile else "") + (f", {', '.join(args.set)}" if args.set else ""))
    row = (f"| {dt.date.today()} | {machine(device)} | torch {torch.__version__} | {args.dataset} | {settings} | "
           f"{statistics.median(epoch_times):.3f} | {statistics.median(eval_times):.3f} | "
           f"{with_note(f'{data.train.nnz:,} pairs, {trainer.n_batches} batches', args.note)} |")
    print("| date | machine | torch | dataset | settings | s/epoch (median) | s/full eval (median) | notes |")
    print(row)
    if args.append:
        append_row("Speed", row)


def timed(fn, device: torch.device) -> float:
    """Seconds of one call of ``fn`` (device work included)."""
    sync(device)
    t0 = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - t0


def floor_epoch(n_batches: int, batch_size: int, n_items: int, dim: int, device: torch.device,
                dtype: torch.dtype = torch.float32) -> float:
    """Seconds of the dense path's bare matrix products for one epoch: per batch the forward
    [B, d] × [d, n_items] and the backward's two products (∂/∂users, ∂/∂items), in ``dtype``, nothing else."""
    gen = torch.Generator(device=device).manual_seed(0)
    users = torch.randn(batch_size, dim, device=device, generator=gen).to(dtype).requires_grad_()
    items = torch.randn(n_items, dim, device=device, generator=gen).to(dtype).requires_grad_()
    grad = torch.randn(batch_size, n_items, device=device, generator=gen).to(dtype)

    def epoch() -> None:
        for _ in range(n_batches):
            (users @ items.T).backward(grad)

    epoch()  # warm
    return timed(epoch, device)


GRAPH_MODELS = ("lightgcn", "xsimgcl")


def graph_floor_batch(model, batch_size: int, device: torch.device, reps: int = 20) -> float:
    """Median seconds of one training step's bare graph products (module docstring): 2·L CSR products
    ``Â @ X [n, d]``, and for XSimGCL six [B, d] × [d, B] products; nothing else."""
    adj, layers, dim = model.adjacency, model.layers, model.dim
    gen = torch.Generator(device=device).manual_seed(0)
    x = torch.randn(adj.shape[0], dim, device=device, generator=gen)
    contrastive = getattr(model, "cl_weight", 0) > 0
    a = torch.randn(batch_size, dim, device=device, generator=gen)

    def step() -> None:
        for _ in range(2 * layers):
            adj @ x
        if contrastive:
            for _ in range(6):
                a @ a.T

    step()  # warm
    return statistics.median(timed(step, device) for _ in range(reps))


def graph_row(cfg, data, trainer: Trainer, device: torch.device, args) -> None:
    """Milliseconds per training batch of a graph backbone beside its floor, and seconds per full
    evaluation; prints (and appends to "Graph backbones") one row."""
    full = trainer.n_batches
    if args.batches:
        trainer.n_batches = min(full, args.batches)
    for _ in range(args.warmup):
        trainer.epoch().tolist()
    epochs = [timed(lambda: trainer.epoch().tolist(), device) for _ in range(args.epochs)]
    batch_ms = statistics.median(epochs) / trainer.n_batches * 1e3
    floor_ms = graph_floor_batch(trainer.model, cfg.train.batch_size, device) * 1e3
    trainer.test()  # warm the evaluator
    eval_s = statistics.median(timed(trainer.test, device) for _ in range(args.evals))
    opts = cfg.model.options
    settings = (f"{cfg.model.name} L={opts.layers}, {cfg.loss.name}, {cfg.train.sampler} M={cfg.train.num_negatives}, "
                f"B={cfg.train.batch_size}, d={opts.dim}, {opts.score}"
                + (f", {', '.join(args.set)}" if args.set else ""))
    span = (f"whole epochs ({full} batches), s/epoch {statistics.median(epochs):.3f}" if trainer.n_batches == full
            else f"first {trainer.n_batches} of {full} batches")
    graph = f"{trainer.model.adjacency.shape[0]:,} nodes, {trainer.model.adjacency.values().numel():,} nonzeros"
    row = (f"| {dt.date.today()} | {machine(device)} | torch {torch.__version__} | {cfg.data.name} | {settings} | "
           f"{batch_ms:.1f} | {floor_ms:.1f} | {batch_ms / floor_ms:.1f}× | {eval_s:.3f} | "
           f"{with_note(f'{span}, median of {args.epochs}; {graph}', args.note)} |")
    print("| date | machine | torch | dataset | settings | ms/batch | floor ms/batch | batch / floor | "
          "s/full eval | notes |")
    print(row)
    if args.append:
        append_row("Graph backbones", row)


def compare_scorers(cfg, data, device: torch.device, args) -> None:
    """Interleaved epochs of a ``gather`` and an ``auto`` trainer, and the floor; prints (and appends) a row."""
    trainers = {name: Trainer(cfg.with_overrides({"train.scorer": scorer}), data, device)
                for name, scorer in (("gather", "gather"), ("auto", args.against))}
    if args.batches:
        for trainer in trainers.values():
            trainer.n_batches = min(trainer.n_batches, args.batches)
    for trainer in trainers.values():
        for _ in range(args.warmup):
            trainer.epoch().tolist()
    times: dict[str, list[float]] = {name: [] for name in trainers}
    floors = []
    auto = trainers["auto"]
    for _ in range(args.epochs):
        for name, trainer in trainers.items():
            times[name].append(timed(lambda: trainer.epoch().tolist(), device))
        floors.append(floor_epoch(auto.n_batches, cfg.train.batch_size, data.train.n_items,
                                  cfg.model.options.dim, device,
                                  torch.bfloat16 if cfg.train.bf16 and device.type == "cpu" else torch.float32))
    n = auto.n_batches
    gather_ms, auto_ms, floor_ms = (statistics.median(t) / n * 1e3 for t in (times["gather"], times["auto"], floors))
    choice = auto.scorer
    settings = (f"{cfg.model.name}+{cfg.loss.name}, {cfg.train.sampler} M={cfg.train.num_negatives}, "
                f"B={cfg.train.batch_size}, d={cfg.model.options.dim}, n_items={data.train.n_items:,}"
                + (", bf16 products" if cfg.train.bf16 else ""))
    span = f"{n} batches (whole epochs)" if n == math.ceil(data.train.nnz / cfg.train.batch_size) else \
        f"first {n} batches of each epoch"
    row = (f"| {dt.date.today()} | {machine(device)} | torch {torch.__version__} | {cfg.data.name} | {settings} | "
           f"{gather_ms:.1f} | {auto_ms:.1f} ({choice.scorer}) | {gather_ms / auto_ms:.1f}× | {floor_ms:.1f} | "
           f"{auto_ms / floor_ms:.1f}× | {with_note(f'{span}, median of {args.epochs} interleaved rounds', args.note)} |")
    print("| date | machine | torch | dataset | settings | ms/batch gather | ms/batch auto (choice) | speed-up | "
          "ms/batch floor | auto / floor | notes |")
    print(row)
    if args.append:
        append_row("Scorers", row)


def load_evaluator_module(path: str | Path):
    """The module of an older ``rankrobust/evaluate.py`` (a checkout of an earlier commit), imported on its own."""
    spec = importlib.util.spec_from_file_location("older_evaluate", Path(path))
    if spec is None or spec.loader is None:
        raise FileNotFoundError(f"--old-evaluator {path}: not a Python file")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def compare_evaluation(cfg, data, device: torch.device, args) -> None:
    """Full evaluations of all test users, the bare product and (optionally) an older evaluator, interleaved
    ``--evals`` rounds per thread count; prints (and appends) one row per thread count.

    Wall seconds (median) and process CPU seconds (median; a load-independent check of the one-thread rows)
    of each, the speed-up over the older evaluator, the distance to the floor, the largest difference of any
    metric between the two evaluators, and the machine's load average during the rounds.
    """
    from rankrobust.evaluate import BLOCK_ROWS, Evaluator

    exclude = [data.seen] if data.leaky else [data.seen, data.valid]
    build = dict(ks=cfg.train.ks, chunk_size=cfg.train.eval_chunk, device=device)
    older = load_evaluator_module(args.old_evaluator) if args.old_evaluator else None
    dim = int(cfg.model.options.dim)
    gen = torch.Generator().manual_seed(cfg.train.seed)
    U = torch.randn(data.test.n_users, dim, generator=gen).to(device)
    I = torch.randn(data.test.n_items, dim, generator=gen).to(device)
    items_t = I.T.contiguous()
    buf = torch.empty((BLOCK_ROWS, I.shape[0]), device=device)
    threads = [int(t) for t in args.threads.split(",") if t] or [torch.get_num_threads()]
    print("| date | machine | torch | dataset | work | s/eval | s/eval before | before / now | s floor | now / floor "
          "| notes |")
    for n_threads in threads:
        torch.set_num_threads(n_threads)  # before the evaluator is built: its chunk size follows the threads
        now = Evaluator(data.test, exclude, **build)
        before = older.Evaluator(data.test, exclude, **build) if older is not None else None
        rows = now.users

        def floor() -> None:
            for a in range(0, rows.shape[0], BLOCK_ROWS):
                block = U.index_select(0, rows[a:a + BLOCK_ROWS])
                torch.mm(block, items_t, out=buf[:block.shape[0]])

        runs = {"now": lambda: now.evaluate(U, I), "floor": floor}
        if before is not None:
            runs["before"] = lambda: before.evaluate(U, I)
        for fn in runs.values():  # warm: allocator, caches
            fn()
        wall: dict[str, list[float]] = {name: [] for name in runs}
        cpu: dict[str, list[float]] = {name: [] for name in runs}
        load0 = os.getloadavg()[0]
        for _ in range(args.evals):
            for name, fn in runs.items():
                c0 = time.process_time()
                wall[name].append(timed(fn, device))
                cpu[name].append(time.process_time() - c0)
        load1 = os.getloadavg()[0]
        med = {name: statistics.median(t) for name, t in wall.items()}
        med_cpu = {name: statistics.median(t) for name, t in cpu.items()}
        diff = ""
        if before is not None:
            a, b = now.evaluate(U, I).metrics, before.evaluate(U, I).metrics
            diff = f"; largest metric difference to before {max(abs(a[k] - b[k]) for k in a):.1e}"
        work = (f"{now.n_eval:,} test users × {now.n_items:,} items, d={dim}, K={now.k_max}, chunk {now.chunk_size}, "
                f"groups of {now.group}")
        notes = (f"median of {args.evals} interleaved rounds; CPU s now {med_cpu['now']:.2f}, floor "
                 f"{med_cpu['floor']:.2f}" + (f", before {med_cpu['before']:.2f}" if before is not None else "")
                 + f"{diff}; load average {load0:.1f} → {load1:.1f}")
        old_s = f"{med['before']:.3f}" if before is not None else "—"
        ratio = f"{med['before'] / med['now']:.1f}×" if before is not None else "—"
        row = (f"| {dt.date.today()} | {machine(device)} | torch {torch.__version__} | {cfg.data.name} | {work} | "
               f"{med['now']:.3f} | {old_s} | {ratio} | {med['floor']:.3f} | {med['now'] / med['floor']:.1f}× | "
               f"{with_note(notes, args.note)} |")
        print(row, flush=True)
        if args.append:
            append_row("Evaluation", row)


if __name__ == "__main__":
    run_script(main)
