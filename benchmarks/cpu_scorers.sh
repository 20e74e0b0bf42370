#!/usr/bin/env bash
# The CPU rows of the "Scorers" table in benchmarks/RESULTS.md, in one run (about 10 minutes on 2 cores).
# Run it on a quiet machine: `bash benchmarks/cpu_scorers.sh` (rows are appended; datasets from
# $RANKROBUST_DATA or ../shared/data).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
S="$PY benchmarks/speed.py --scorers --append --device cpu --warmup 1"
$S --dataset ml-100k --negatives 256 --batch-size 2048 --epochs 3
$S --dataset ml-100k --negatives 256 --batch-size 1024 --epochs 3
$S --dataset lastfm --negatives 64 --batch-size 1024 --epochs 3
$S --dataset ml --negatives 800 --batch-size 2048 --epochs 3 --batches 30
$S --dataset yelp2018 --negatives 800 --batch-size 2048 --epochs 3 --batches 10
$S --dataset yelp2018 --negatives 64 --batch-size 2048 --epochs 3 --batches 10
# bfloat16 matrix products (train.bf16=true; AMX / AVX512-bf16 CPUs)
$S --dataset ml-100k --negatives 256 --batch-size 2048 --epochs 3 --set train.bf16=true
$S --dataset lastfm --negatives 64 --batch-size 1024 --epochs 3 --set train.bf16=true
$S --dataset ml --negatives 800 --batch-size 2048 --epochs 3 --batches 30 --set train.bf16=true
