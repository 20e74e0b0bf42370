#!/usr/bin/env bash
# Install rankrobust into ./.venv (created if missing) with the extras in $EXTRAS (default: dev).
#
# torch: where no NVIDIA GPU answers `nvidia-smi -L`, a CPU build is installed
# first (torch==$RANKROBUST_CPU_TORCH, default 2.13.0, optionally from the
# package index in $RANKROBUST_TORCH_INDEX), so a laptop or CI never pulls a
# multi-GB CUDA build; with a GPU, pip's default torch build is used.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
step() { echo "install: $*" >&2; }  # progress: pip runs quietly, some steps take minutes
[ -x .venv/bin/python ] || { step "creating .venv with $PYTHON"; "$PYTHON" -m venv .venv; }
PIP=".venv/bin/python -m pip"
step "upgrading pip"
$PIP install -q --upgrade pip
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    step "torch (CUDA build: a large download, often several minutes)"
    $PIP install -q "torch>=2.2"
  else
    step "torch ${RANKROBUST_CPU_TORCH:-2.13.0} (CPU build: about 200 MB, a minute or more)"
    $PIP install -q "torch==${RANKROBUST_CPU_TORCH:-2.13.0}" \
      ${RANKROBUST_TORCH_INDEX:+--index-url "$RANKROBUST_TORCH_INDEX"}
  fi
fi
step "rankrobust and its dependencies (extras: ${EXTRAS:-dev}; a few minutes on a fresh .venv)"
$PIP install -q -e ".[${EXTRAS:-dev}]"
echo "installed: $(.venv/bin/python -c 'import torch, rankrobust; print("rankrobust", rankrobust.__version__, "torch", torch.__version__)')"
