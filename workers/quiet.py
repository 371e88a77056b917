"""Known-harmless log lines of the stack, dropped at their source (each with the reason it is harmless).

A normal run prints what hyflow logs plus the progress bars. Everything below is printed by a
library on every run, is expected on this setup and says nothing about the run; README "What a
normal run prints" lists them. Anything not listed here still prints.

- vLLM's logger: `VLLM_LOGGING_CONFIG_PATH` points at `workers/vllm_logging.json`,
  vLLM's own handler and format plus the `KnownHarmless` filter. Set for every worker (WORKER_ENV).
- Python warnings: `PYTHON_WARNINGS` below, for every worker.
- C++ warnings of the CPU engine (vLLM's NUMA binding notice): `TORCH_CPP_LOG_LEVEL=ERROR`, for
  the rollout engine's process only.
"""
from __future__ import annotations

import logging
import os
import re

# (pattern, why it is harmless here)
KNOWN_HARMLESS = [
    (r"The global random seed is set to", "hyflow seeds the engine on purpose (reproducible rollouts)"),
    (r"Enforce eager set, disabling torch\.compile", "eager mode is chosen: no compile stalls on CPU"),
    (r"TORCH_COMPILE_DISABLE is set", "set on purpose: the first log-prob call would compile for 2-27 s"),
    (r"Inductor compilation was disabled by user settings", "follows from the two above"),
    (r"Triton is (not installed|installed, but doesn't include CPU backend)", "no Triton on CPU; vLLM-CPU uses its own kernels"),
    (r"Model Runner V2 requires Triton", "the V1 model runner is vLLM-CPU's normal path"),
    (r"is not found in LD_PRELOAD", "a tcmalloc/iomp performance hint; rollout is measured at 1.02x raw vLLM without them"),
    (r"OMP_NUM_THREADS=\d+ is set; leaving Torch threads", "hyflow sets the engine's threads on purpose"),
    (r"CPU backend doesn't allow to use `torch\.set_num_threads`", "vLLM pins its threads; later calls are no-ops"),
    (r"Reset SSM cache type to float32 for accelerated GDN mamba backend",
     "vLLM-CPU's platform check on CPUs with AVX-512 BF16 (vllm/platforms/cpu.py), printed for any model: it "
     "sets the mamba SSM state cache's dtype, which a model without mamba layers (SmolLM2, Llama) never allocates"),
    (r"Unknown vLLM environment variable detected: VLLM_DIST_IDENT",
     "vLLM-CPU's own variable (set by its CPU worker, v1/worker/cpu_worker.py), flagged when the engine checks the environment again"),
]
_RE = re.compile("|".join(f"(?:{p})" for p, _ in KNOWN_HARMLESS))

# Python warnings of the stack that are harmless here (`-W`-style filters; see the module doc).
PYTHON_WARNINGS = ",".join([
    "ignore:`torch.distributed.reduce_op` is deprecated:FutureWarning",  # vLLM's triton shim touches the old alias
    # The value / reward-model heads return HF's logits view; hyflow never modifies it in place
    # (workers/backends/fsdp_model.py response_values), which is what the warning is about.
    "ignore:FSDP2-wrapped module (FSDPLlamaForTokenClassification) returned a view tensor:UserWarning",
])


# Only for the rollout engine's process: vLLM-CPU's NUMA binding notice is a C++ warning (c10 logging).
ENGINE_ENV = {"TORCH_CPP_LOG_LEVEL": "ERROR"}


class KnownHarmless(logging.Filter):
    """Drops the records whose message matches KNOWN_HARMLESS."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a bad format string is not ours to hide
            return True
        return not _RE.search(message)


def vllm_logging_config_path() -> str:
    return os.path.join(os.path.dirname(os.path.abspath(__file__)), "vllm_logging.json")


def configure_vllm_logging() -> None:
    """Apply vllm_logging.json now, before `import vllm`: vLLM applies it only when an engine starts,
    and what it logs while importing would otherwise reach Python's bare last-resort handler."""
    import json
    import logging.config
    with open(os.environ.get("VLLM_LOGGING_CONFIG_PATH") or vllm_logging_config_path(), encoding="utf-8") as f:
        logging.config.dictConfig(json.load(f))
