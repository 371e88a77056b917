"""Training backends behind the `TrainingBackend` seam (base.py); pick one by name."""
from __future__ import annotations

from typing import Any

from workers.backends.base import TrainingBackend

BACKENDS = ("fsdp",)


def make_backend(name: str, **cfg: Any) -> TrainingBackend:
    """A backend by name with its config as keyword arguments, e.g. make_backend("fsdp", lr=1e-6)."""
    if name == "fsdp":
        from workers.backends.fsdp import FSDPBackend  # imported lazily: pulls torch.distributed + transformers
        return FSDPBackend(**cfg)
    raise ValueError(f"unknown training backend {name!r}; available: {', '.join(BACKENDS)}")
