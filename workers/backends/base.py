"""The `TrainingBackend` seam: how one rank holds, runs and updates a (sharded) model.

Lifecycle (one backend object per rank, inside a worker process that already joined the
torch.distributed process group):
    backend = Backend(config)
    backend.setup(model_path, trainable=True, kind="causal_lm")  # collective: load, shard, optimizer
    backend.forward_logprobs(batch, ...)         # collective, no grad (kind="causal_lm")
    backend.forward_values(batch, ...)           # collective, no grad (kind="value")
    backend.train_step(micro_batches, loss_fn)   # collective: backward per micro-batch, clip, step
    backend.iter_param_buckets(bucket_bytes)     # collective: full HF-named tensors, bucket by bucket
    backend.save(dir) / backend.load(dir)        # collective: sharded model + optimizer state
    backend.save_hf(dir)                         # collective; rank 0 writes an HF model folder

Sequence layout of a batch (see orchestrator/batch.py): `input_ids` [B, P+R] = left-padded
prompt + right-padded response, `attention_mask` [B, P+R], `position_ids` [B, P+R],
`responses` [B, R], `response_mask` [B, R]. Log-probs are for the R response positions.

Model kinds: "causal_lm" is the policy (or reference) LM; "value" is a critic: the same backbone
with a scalar head. Its value at response position j is the head's output at sequence position
P-1+j — the state before response token j, the same position whose logits give token j's log-prob.

Failure contract: every collective runs under the process group's timeout, so a dead peer raises
instead of hanging. Code outside the backends never branches on which backend it holds.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Callable, Iterator

import torch

from orchestrator.batch import Batch

# loss_fn(micro_batch, logprobs [b, R], entropy [b, R]) -> (loss to backward, metrics to average)
# for a causal LM; loss_fn(micro_batch, values [b, R], None) for a value model.
LossFn = Callable[[Batch, torch.Tensor, torch.Tensor | None], tuple[torch.Tensor, dict[str, float]]]
MODEL_KINDS = ("causal_lm", "value")


class TrainingBackend(ABC):
    model: torch.nn.Module

    @abstractmethod
    def setup(self, model_path: str, trainable: bool, kind: str = "causal_lm") -> None: ...

    @abstractmethod
    def forward_logprobs(self, batch: Batch, micro_batch_size: int, temperature: float = 1.0,
                         with_entropy: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]: ...

    def forward_values(self, batch: Batch, micro_batch_size: int) -> torch.Tensor:
        """Values [B, R] of a kind="value" model (padding positions 0). Not abstract, so that a
        backend without value models still builds; it fails here, by name."""
        raise NotImplementedError(f"{type(self).__name__} does not support value models (forward_values)")

    @abstractmethod
    def train_step(self, micro_batches: list[Batch], loss_fn: LossFn, temperature: float = 1.0) -> dict[str, float]: ...

    @abstractmethod
    def iter_param_buckets(self, bucket_bytes: int, payload: str | None = None,
                           device="cpu") -> Iterator[dict[str, torch.Tensor]]: ...

    @abstractmethod
    def save(self, path: str, with_optimizer: bool = True) -> None: ...

    @abstractmethod
    def load(self, path: str, with_optimizer: bool = True) -> None: ...

    @abstractmethod
    def save_hf(self, path: str) -> None: ...


def length_order(batch: Batch) -> torch.Tensor:
    """Row order by sequence length (stable), so micro-batches hold similar lengths and each
    pays only for its own width (backends drop all-padding columns per micro-batch)."""
    return torch.argsort(batch["attention_mask"].sum(-1), stable=True)
