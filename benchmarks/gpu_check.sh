#!/usr/bin/env bash
# Every GPU measurement of the performance issue, in one run of under 10 minutes
# on one H100/H200; rows are appended to benchmarks/RESULTS.md (copied to $OUT).
#
# Prepare here (the yelp2018 files travel with the working tree, git-ignored):
#   mkdir -p .gpu_data && cp -r ../shared/data/yelp2018 ../shared/data/ml-100k .gpu_data/ && echo /.gpu_data/ >> .git/info/exclude
# Then on the device: carry [".gpu_data"], command "bash benchmarks/gpu_check.sh", timeout 600.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 RANKROBUST_DATA=${RANKROBUST_DATA:-$PWD/.gpu_data}
OUT=${OUT:-/tmp/rankrobust-gpu}
mkdir -p "$OUT"
nvidia-smi -L
python3 -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name())"

# 1. CUDA tests: no host sync in an epoch, determinism, CPU agreement, fast path
python3 -m pytest -q -m cuda tests/test_cuda.py tests/test_kernels.py tests/test_sampling.py tests/test_propagation.py 2>&1 | tee "$OUT/cuda-tests.log"

# 2. Seconds per epoch and per full evaluation, MF + SL, authors' setting (M=800, B=1024, d=64, cosine)
S="python3 benchmarks/speed.py --append --device cuda --dataset yelp2018 --epochs 3 --warmup 1 --evals 5"
MF="--model mf --loss sl --negatives 800 --batch-size 1024 --set loss.tau=0.11"
$S $MF --set train.fast=false --note "plain autograd path"
$S $MF --note "fast path (custom autograd)"
$S $MF --compile --note "fast path + torch.compile"
$S $MF --compile --set train.bf16=true --note "fast path + compile + bf16 autocast"
# LightGCN, 3 hops, in-batch negatives, batch 1024
$S --model lightgcn --layers 3 --sampler in_batch --loss sl --set loss.tau=0.15 --note "LightGCN 3 hops, in-batch"
$S --model lightgcn --layers 3 --sampler in_batch --loss sl --set loss.tau=0.15 --compile --note "LightGCN, compiled"

# 2a. Graph backbones on the CSR propagation (cuSPARSE SpMM forward and backward, rankrobust.kernels.propagate_layers):
# ms per batch beside the bare products (2L CSR products, + XSimGCL's InfoNCE products), the RecBole setting
G="python3 benchmarks/speed.py --append --device cuda --loss bpr --sampler uniform_exclude --negatives 1 --set model.score=dot --epochs 3 --warmup 1 --evals 5"
for D in ml-100k yelp2018; do
  $G --dataset $D --model lightgcn --layers 3 --note "CUDA CSR propagation"
  $G --dataset $D --model xsimgcl --layers 3 --note "CUDA CSR propagation + row_infonce"
done

# 2b. Scoring paths (rankrobust.scoring): gather vs auto in the same run, beside the matrix-product floor
SC="python3 benchmarks/speed.py --scorers --append --device cuda --dataset yelp2018 --epochs 2 --warmup 1 --set loss.tau=0.11"
$SC --negatives 800 --batch-size 1024 --note "authors' M"
$SC --negatives 64 --batch-size 1024 --note "few negatives"
$SC --negatives 800 --batch-size 1024 --set train.bf16=true --note "bf16"
$SC --model lightgcn --layers 3 --negatives 800 --batch-size 1024 --note "LightGCN 3 hops"
# the sparse scorer (SDDMM + SpMM through cuSPARSE): auto never picks it on CUDA until this row says it should
$SC --negatives 800 --batch-size 1024 --against sparse --note "second column: the sparse scorer"
$SC --negatives 64 --batch-size 1024 --against sparse --note "second column: the sparse scorer"
# the exact softmax over the whole catalog (every item but the positive and the user's training items)
$S --model mf --loss sl --sampler full --batch-size 1024 --set loss.tau=0.11 --note "full softmax (sampler full)"
$S --model lightgcn --layers 3 --loss sl --sampler full --batch-size 1024 --set loss.tau=0.15 --note "LightGCN, full softmax"

# 3. Convergence within 150 s of training, leaky protocol (authors) and proper validation
python3 benchmarks/reproduce.py --device cuda --time-limit 150 --valid-is-test --compile --append
python3 benchmarks/reproduce.py --device cuda --time-limit 150 --compile --append

# 4. A profile of the fast step for the record
python3 - <<'PY' 2>&1 | tee "$OUT/profile.txt"
import torch
from rankrobust.config import config_from_dict
from rankrobust.experiment import load_data, prepare_data
from rankrobust.train import Trainer
cfg = config_from_dict({"data": {"name": "yelp2018"}, "loss": {"name": "sl", "tau": 0.11},
                        "train": {"device": "cuda", "num_negatives": 800}})
data, _ = prepare_data(cfg, load_data(cfg.data))
tr = Trainer(cfg, data, torch.device("cuda"))
tr.n_batches = 50
tr.epoch().tolist()
with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA, torch.profiler.ProfilerActivity.CPU]) as p:
    tr.epoch().tolist()
print(p.key_averages().table(sort_by="cuda_time_total", row_limit=20))
PY
cp benchmarks/RESULTS.md "$OUT/RESULTS.md"
