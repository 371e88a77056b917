"""Rollout engines behind the `RolloutEngine` seam; `make_engine` picks one by name.

Engine modules import vLLM / transformers lazily, so importing this package stays cheap.
"""
from __future__ import annotations

from workers.engines.base import Completion, RolloutEngine, SamplingSpec

ENGINE_KINDS = ("vllm", "hf")


def make_engine(kind: str, model_path: str, **kw) -> RolloutEngine:
    """Build a rollout engine: kind "vllm" -> VLLMEngine, "hf" -> HFEngine; `kw` go to its constructor."""
    if kind == "vllm":
        from workers.engines.vllm_engine import VLLMEngine
        return VLLMEngine(model_path, **kw)
    if kind == "hf":
        from workers.engines.hf_engine import HFEngine
        return HFEngine(model_path, **kw)
    raise ValueError(f"engine kind must be one of {ENGINE_KINDS}, got {kind!r}")


__all__ = ["Completion", "ENGINE_KINDS", "RolloutEngine", "SamplingSpec", "make_engine"]
