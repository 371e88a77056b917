"""Training backends behind the `TrainingBackend` seam (base.py); pick one by name.

    make_backend("fsdp", lr=1e-6)                          # torch FSDP2
    make_backend("deepspeed", zero_stage=3, lr=1e-6)       # DeepSpeed ZeRO-1/2/3
    make_backend(cfg["backend"], **backend_options(cfg))   # from an actor/critic config section
"""
from __future__ import annotations

from typing import Any

from workers.backends.base import TrainingBackend

BACKENDS = ("fsdp", "deepspeed")
# Config keys (actor / critic sections) that are backend constructor options; `backend_options`
# forwards those present. zero_stage only reaches the DeepSpeed backend.
COMMON_OPTIONS = ("lr", "weight_decay", "betas", "eps", "grad_clip", "dtype", "gradient_checkpointing", "seed",
                  "value_head_std", "lora_rank", "lora_alpha", "lora_dropout", "lora_target_modules", "lora_sync")
BACKEND_OPTIONS = {"fsdp": COMMON_OPTIONS, "deepspeed": COMMON_OPTIONS + ("zero_stage",)}


def make_backend(name: str, **cfg: Any) -> TrainingBackend:
    """A backend by name with its config as keyword arguments, e.g. make_backend("fsdp", lr=1e-6)."""
    if name == "fsdp":
        from workers.backends.fsdp import FSDPBackend  # imported lazily: pulls torch.distributed + transformers
        return FSDPBackend(**cfg)
    if name == "deepspeed":
        from workers.backends.deepspeed import DeepSpeedBackend  # lazily: importing deepspeed takes seconds
        return DeepSpeedBackend(**cfg)
    raise ValueError(f"unknown training backend {name!r}; available: {', '.join(BACKENDS)}")


def backend_options(cfg: dict, backend: str | None = None) -> dict:
    """The constructor options of `backend` (default cfg["backend"], else "fsdp") found in a config
    section dict; betas become a tuple and lora_target_modules a list."""
    name = backend or cfg.get("backend", "fsdp")
    if name not in BACKEND_OPTIONS:
        raise ValueError(f"unknown training backend {name!r}; available: {', '.join(BACKENDS)}")
    out = {k: cfg[k] for k in BACKEND_OPTIONS[name] if k in cfg}
    if "betas" in out:
        out["betas"] = tuple(out["betas"])
    if out.get("lora_target_modules") is not None:
        out["lora_target_modules"] = list(out["lora_target_modules"])
    return out


def build_backend(cfg: dict, model_path: str, seed: int, trainable: bool = True, kind: str = "causal_lm"):
    """Join the process group, then build and set up the backend named by cfg["backend"] with the
    options found in `cfg` (what every model-holding worker does first). Returns (backend, info)."""
    import time

    import torch

    from workers.dist import init_distributed

    t0 = time.time()
    init_distributed()
    torch.manual_seed(seed)
    backend = make_backend(cfg.get("backend", "fsdp"), **{**backend_options(cfg), "seed": seed})
    backend.setup(model_path, trainable=trainable, kind=kind)
    n_params = sum(p.numel() for p in backend.model.parameters())
    return backend, {"setup_s": time.time() - t0, "local_params": n_params}
