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
                         with_entropy: bool = False, max_tokens: int | None = None
                         ) -> tuple[torch.Tensor, torch.Tensor | None]: ...

    def forward_values(self, batch: Batch, micro_batch_size: int, max_tokens: int | None = None) -> torch.Tensor:
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


def micro_batches(batch: Batch, rows: int, max_tokens: int | None = None) -> list[Batch]:
    """`batch` in length order, cut into consecutive micro-batches of at most `rows` rows and, with
    `max_tokens`, at most that many padded tokens each (rows x the longest sequence: what one
    forward/backward holds activations for); a sequence longer than `max_tokens` gets a
    micro-batch of its own. This is verl's `use_dynamic_bsz` / `ppo_max_token_len_per_gpu`: long
    agent turns or prompts do not multiply the memory of a micro-batch sized for short ones.

    With `max_tokens`, the ranks agree on the count (a collective when torch.distributed is up:
    every rank must call it): a rank that needs fewer micro-batches than another halves its
    costliest ones until the counts match, so every rank runs the same number of forwards (FSDP
    gathers the weights in each). The caller's loss scaling is per micro-batch, so the cut does not
    change the update."""
    if rows < 1:
        raise ValueError(f"micro-batch rows must be >= 1, got {rows}")
    if max_tokens is None:
        return batch.chunks_of(rows)
    if max_tokens < 1:
        raise ValueError(f"max_tokens per micro-batch must be >= 1, got {max_tokens}")
    lengths = batch["attention_mask"].sum(-1).tolist()
    bounds, start, longest = [], 0, 0
    for i, n in enumerate(lengths):
        wider = max(longest, n)
        if i > start and (i - start + 1 > rows or (i - start + 1) * wider > max_tokens):
            bounds.append((start, i))
            start, wider = i, n
        longest = wider
    if lengths:
        bounds.append((start, len(lengths)))
    want = _max_over_ranks(len(bounds))
    while len(bounds) < want:
        cost = [(b - a) * max(lengths[a:b]) if b - a > 1 else -1 for a, b in bounds]
        k = max(range(len(bounds)), key=cost.__getitem__)
        if cost[k] < 0:
            raise RuntimeError(f"{len(lengths)} rows cannot make the {want} micro-batches another rank needs")
        a, b = bounds[k]
        bounds[k:k + 1] = [(a, (a + b) // 2), ((a + b) // 2, b)]
    return [batch.select(slice(a, b)) for a, b in bounds]


def _max_over_ranks(value: int) -> int:
    from workers.dist import all_reduce_scalar
    return int(all_reduce_scalar(value, "max"))
