"""The `RolloutEngine` seam: what generates text for the trainer.

Lifecycle (one engine per rollout worker process):
    engine = Engine(model_path, config)          # loads weights, allocates KV cache
    engine.generate(prompts, sampling)           # any number of times
    engine.score(sequences, starts)              # teacher-forced log-probs (sync verification)
    engine.begin_weight_update()                 # \
    engine.load_weights({hf_name: tensor, ...})  #  } one weight sync: buckets of HF-named full
    engine.finish_weight_update()                # /  tensors; the engine is unusable in between
    engine.sleep() / engine.wake_up()            # free / restore memory while training (may be a no-op)
    engine.shutdown()

Failure contract: `load_weights` raises KeyError naming a tensor the model does not have;
`finish_weight_update` leaves the engine serving the new weights or raises. Nothing here checks
that the weights really changed: `workers.weight_sync` verifies every sync from outside.
Callers never branch on the engine type.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field

import torch


@dataclass
class SamplingSpec:
    max_new_tokens: int = 128
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = -1            # -1: off
    seed: int | None = None
    stop_token_ids: list[int] = field(default_factory=list)


@dataclass
class Completion:
    token_ids: list[int]       # generated tokens (including a final stop token when one was hit)
    logprobs: list[float]      # log-prob of each generated token under the sampling distribution
    finish_reason: str         # "stop" | "length"


class RolloutEngine(ABC):
    @abstractmethod
    def generate(self, prompts: list[list[int]], sampling: SamplingSpec) -> list[Completion]: ...

    @abstractmethod
    def score(self, sequences: list[list[int]], starts: list[int]) -> list[list[float]]:
        """log p(seq[t] | seq[:t]) for t in [start, len(seq)) of each sequence (temperature 1)."""

    @abstractmethod
    def begin_weight_update(self) -> None: ...

    @abstractmethod
    def load_weights(self, named_tensors: dict[str, torch.Tensor]) -> None: ...

    @abstractmethod
    def finish_weight_update(self) -> None: ...

    def sleep(self) -> None:  # default: nothing to free
        pass

    def wake_up(self) -> None:
        pass

    def shutdown(self) -> None:
        pass
