"""Seconds per RecBole training epoch, printed as one JSON line (run by benchmarks/peers.py in RecBole's venv).

    TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1 RECBOLE_VENV/bin/python benchmarks/recbole_epochs.py \\
        --model LightGCN --data-dir DIR --config base.yaml --config lightgcn.yaml --epochs 3 --warmup 1

RecBole's own pipeline (`recbole.quick_start.run_recbole` up to ``trainer.fit``):
config, seed, dataset, split from the benchmark files, model, trainer; then
``warmup`` untimed and ``epochs`` timed calls of ``trainer._train_epoch``, the
call RecBole's ``fit`` times for its "training [time: …]" log line (negative
sampling, forward, backward, optimiser step; no evaluation).  Imports RecBole
and torch only, never rankrobust: it runs in RecBole's own environment.
"""
from __future__ import annotations

import argparse
import json
import resource
import time


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True, help="RecBole model name (BPR, LightGCN)")
    p.add_argument("--dataset", default="ml100k")
    p.add_argument("--data-dir", required=True, help="folder holding DATASET/DATASET.{train,valid,test}.inter")
    p.add_argument("--saved-dir", default="/tmp/recbole-saved")
    p.add_argument("--config", action="append", default=[], help="RecBole yaml file (repeatable)")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    args = p.parse_args()

    import torch
    from recbole.config import Config
    from recbole.data import create_dataset, data_preparation
    from recbole.utils import get_model, get_trainer, init_seed

    config = Config(model=args.model, dataset=args.dataset, config_file_list=args.config,
                    config_dict={"data_path": args.data_dir, "checkpoint_dir": args.saved_dir,
                                 "epochs": args.warmup + args.epochs})
    init_seed(config["seed"], config["reproducibility"])
    dataset = create_dataset(config)
    train_data, _, _ = data_preparation(config, dataset)
    init_seed(config["seed"] + config["local_rank"], config["reproducibility"])
    model = get_model(config["model"])(config, train_data._dataset).to(config["device"])
    trainer = get_trainer(config["MODEL_TYPE"], config["model"])(config, model)
    times = []
    for epoch in range(args.warmup + args.epochs):
        t0 = time.perf_counter()
        trainer._train_epoch(train_data, epoch)
        if epoch >= args.warmup:
            times.append(time.perf_counter() - t0)
    print(json.dumps({"program": f"RecBole {args.model}", "epoch_s": times, "batches": len(train_data),
                      "threads": torch.get_num_threads(),
                      "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


if __name__ == "__main__":
    main()
