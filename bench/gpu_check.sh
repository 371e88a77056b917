#!/usr/bin/env bash
# The prepared GPU check: one short call on a lent CUDA machine (budget: minutes).
#   bash bench/gpu_check.sh
# Sets up the CUDA stack (scripts/setup.sh picks it where nvidia-smi works), then runs the tests
# marked `gpu` (CUDA vLLM in-place updates, the slice on NCCL) and writes the log to $OUT if set.
set -euo pipefail
cd "$(dirname "$0")/.."
nvidia-smi -L
bash scripts/setup.sh
log=${OUT:-/tmp}/gpu_check.log
.venv/bin/python -m pytest -m gpu -q -p no:cacheprovider -o addopts="" tests/test_gpu.py 2>&1 | tee "$log"
