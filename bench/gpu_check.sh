#!/usr/bin/env bash
# The prepared GPU check: one short call on a lent CUDA machine (budget: minutes).
#   bash bench/gpu_check.sh
# No setup: the lent machine reaches no registry and has torch, transformers, peft and pytest but
# no ray, vllm or deepspeed, so this runs the Ray-free GPU parts with its own python3
# (bench/gpu_check.py: FSDP2 on NCCL in fp32 and bf16 against the bare floor, prefix packing, the
# shared-memory sync into an in-process HF engine) and prints one JSON line (also $OUT/gpu_check.json).
set -euo pipefail
cd "$(dirname "$0")/.."
nvidia-smi -L
PYTHONPATH=. HF_HUB_OFFLINE=1 timeout 480 python3 bench/gpu_check.py "$@"
