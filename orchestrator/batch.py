"""The batch container passed on every driver <-> worker call.

A `Batch` holds rows: `tensors` (torch tensors sharing the leading dimension B), `non_tensors`
(numpy object arrays with the same leading dimension: strings, dicts, ids) and `meta` (plain
values that belong to the whole batch, e.g. temperature or the global step). It pickles as-is, so
Ray moves it between processes; large batches travel as object refs.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

import numpy as np
import torch


def _as_object_array(values: Any) -> np.ndarray:
    if isinstance(values, np.ndarray):
        return values
    arr = np.empty(len(values), dtype=object)
    arr[:] = list(values)
    return arr


@dataclass
class Batch:
    tensors: dict[str, torch.Tensor] = field(default_factory=dict)
    non_tensors: dict[str, np.ndarray] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.non_tensors = {k: _as_object_array(v) for k, v in self.non_tensors.items()}
        sizes = {k: v.shape[0] for k, v in self.tensors.items()}
        sizes.update({k: len(v) for k, v in self.non_tensors.items()})
        if len(set(sizes.values())) > 1:
            raise ValueError(f"Batch fields disagree on the batch size: {sizes}")

    # ------------------------------------------------------------------ access
    def __len__(self) -> int:
        for v in self.tensors.values():
            return v.shape[0]
        for v in self.non_tensors.values():
            return len(v)
        return 0

    def __contains__(self, key: str) -> bool:
        return key in self.tensors or key in self.non_tensors

    def __getitem__(self, key: str) -> torch.Tensor | np.ndarray:
        if key in self.tensors:
            return self.tensors[key]
        if key in self.non_tensors:
            return self.non_tensors[key]
        raise KeyError(f"{key!r} is not in the batch (have {sorted(self.keys())})")

    def __setitem__(self, key: str, value: Any) -> None:
        n = len(self)
        is_tensor = isinstance(value, torch.Tensor)
        size = value.shape[0] if is_tensor else len(value)
        if self.keys() and size != n:
            raise ValueError(f"{key!r} has {size} rows, the batch has {n}")
        if is_tensor:
            self.non_tensors.pop(key, None)
            self.tensors[key] = value
        else:
            self.tensors.pop(key, None)
            self.non_tensors[key] = _as_object_array(value)

    def update(self, fields: dict) -> None:
        for k, v in fields.items():
            self[k] = v

    def keys(self) -> list[str]:
        return list(self.tensors) + list(self.non_tensors)

    # ------------------------------------------------------------- reshaping
    def select(self, index: int | slice | Sequence[int] | np.ndarray | torch.Tensor) -> "Batch":
        """Rows by slice or index array (an int keeps the row dimension)."""
        if isinstance(index, int):
            index = slice(index, index + 1)
        if isinstance(index, slice):
            t_idx = n_idx = index
        else:
            n_idx = np.asarray(index, dtype=np.int64)
            t_idx = torch.as_tensor(n_idx, dtype=torch.long)
        return Batch(
            {k: v[t_idx] for k, v in self.tensors.items()},
            {k: v[n_idx] for k, v in self.non_tensors.items()},
            dict(self.meta),
        )

    def split(self, n_chunks: int) -> list["Batch"]:
        """n equal chunks in row order (the length must divide: pad first with pad_to_divisor)."""
        n = len(self)
        if n_chunks <= 0 or n % n_chunks:
            raise ValueError(f"cannot split {n} rows into {n_chunks} equal chunks; pad_to_divisor first")
        size = n // n_chunks
        return [self.select(slice(i * size, (i + 1) * size)) for i in range(n_chunks)]

    def chunks_of(self, size: int) -> list["Batch"]:
        """Consecutive chunks of `size` rows (the last may be shorter)."""
        if size <= 0:
            raise ValueError(f"chunk size must be positive, got {size}")
        return [self.select(slice(i, i + size)) for i in range(0, len(self), size)]

    @staticmethod
    def concat(batches: Iterable["Batch"]) -> "Batch":
        batches = [b for b in batches]
        if not batches:
            return Batch()
        first = batches[0]
        for b in batches[1:]:
            if set(b.tensors) != set(first.tensors) or set(b.non_tensors) != set(first.non_tensors):
                raise ValueError(f"cannot concat batches with different keys: {first.keys()} vs {b.keys()}")
        tensors = {k: torch.cat([b.tensors[k] for b in batches]) for k in first.tensors}
        non_tensors = {k: np.concatenate([b.non_tensors[k] for b in batches]) for k in first.non_tensors}
        meta: dict[str, Any] = {}
        for b in batches:
            meta.update(b.meta)
        return Batch(tensors, non_tensors, meta)

    def repeat(self, n: int, interleave: bool = True) -> "Batch":
        """Each row n times: [a a b b] with interleave (GRPO groups stay adjacent), else [a b a b]."""
        if interleave:
            idx = np.repeat(np.arange(len(self)), n)
        else:
            idx = np.tile(np.arange(len(self)), n)
        return self.select(idx)

    def pad_to_divisor(self, divisor: int) -> tuple["Batch", int]:
        """Append copies of the first rows so that len % divisor == 0; returns (batch, pad)."""
        pad = (-len(self)) % divisor
        if pad == 0:
            return self, 0
        if len(self) == 0:
            raise ValueError("cannot pad an empty batch")
        idx = np.concatenate([np.arange(len(self)), np.arange(pad) % len(self)])
        return self.select(idx), pad

    def unpad(self, pad: int) -> "Batch":
        return self if pad == 0 else self.select(slice(0, len(self) - pad))

    def union(self, other: "Batch") -> "Batch":
        """Columns of both (same rows); a key in both must hold equal values."""
        if len(self) != len(other) and self.keys() and other.keys():
            raise ValueError(f"union of batches with {len(self)} and {len(other)} rows")
        out = Batch(dict(self.tensors), dict(self.non_tensors), {**self.meta, **other.meta})
        for k, v in other.tensors.items():
            if k in out.tensors and not torch.equal(out.tensors[k], v):
                raise ValueError(f"union: tensor {k!r} differs between the batches")
            out.tensors[k] = v
        for k, v in other.non_tensors.items():
            if k in out.non_tensors and not np.array_equal(out.non_tensors[k], v):
                raise ValueError(f"union: field {k!r} differs between the batches")
            out.non_tensors[k] = v
        return out

    def to(self, device: str | torch.device) -> "Batch":
        return Batch({k: v.to(device) for k, v in self.tensors.items()}, dict(self.non_tensors), dict(self.meta))

    def __repr__(self) -> str:
        t = ", ".join(f"{k}{tuple(v.shape)}:{str(v.dtype).replace('torch.', '')}" for k, v in self.tensors.items())
        return f"Batch(len={len(self)}, tensors=[{t}], non_tensors={list(self.non_tensors)}, meta={list(self.meta)})"


def pack_sequences(prompts: list[list[int]], responses: list[list[int]], logprobs: list[list[float]],
                   prompt_width: int, response_width: int, pad_token_id: int) -> Batch:
    """Left-pad prompts, right-pad responses, and build the masks and positions the trainer uses."""
    b = len(prompts)
    P, R = prompt_width, response_width
    input_ids = torch.full((b, P + R), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((b, P + R), dtype=torch.long)
    resp_logprobs = torch.zeros((b, R), dtype=torch.float32)
    for i, (p, r, lp) in enumerate(zip(prompts, responses, logprobs)):
        if len(p) > P or len(r) > R:
            raise ValueError(f"row {i}: prompt {len(p)} / response {len(r)} tokens exceed widths {P} / {R}")
        input_ids[i, P - len(p):P] = torch.tensor(p, dtype=torch.long)
        attention_mask[i, P - len(p):P] = 1
        if r:
            input_ids[i, P:P + len(r)] = torch.tensor(r, dtype=torch.long)
            attention_mask[i, P:P + len(r)] = 1
            resp_logprobs[i, :len(r)] = torch.tensor(lp, dtype=torch.float32)
    position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
    return Batch({
        "input_ids": input_ids, "attention_mask": attention_mask, "position_ids": position_ids,
        "responses": input_ids[:, P:].clone(), "response_mask": attention_mask[:, P:].clone(),
        "rollout_logprobs": resp_logprobs,
    })


def trim_padding(batch: Batch) -> Batch:
    """Drop prompt columns that are padding in every row (left) and response columns likewise
    (right), so training does not pay for the widest possible shapes."""
    P = batch["input_ids"].shape[1] - batch["responses"].shape[1]
    prompt_mask = batch["attention_mask"][:, :P]
    left = int((prompt_mask.sum(0) == 0).long().cumprod(0).sum().item())
    r_used = int(batch["response_mask"].sum(0).nonzero().max().item()) + 1 if batch["response_mask"].any() else 1
    out = Batch(dict(batch.tensors), dict(batch.non_tensors), dict(batch.meta))
    for k in ("input_ids", "attention_mask", "position_ids"):
        out.tensors[k] = batch[k][:, left:P + r_used]
    for k, v in batch.tensors.items():
        if k not in ("input_ids", "attention_mask", "position_ids") and v.dim() == 2 and v.shape[1] == batch["responses"].shape[1]:
            out.tensors[k] = v[:, :r_used]
    return out
