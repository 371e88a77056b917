"""The rollout worker: one process per engine replica, behind the `RolloutEngine` seam.

`generate` takes prompt token ids (non-tensor `prompt_ids`) and returns the padded sequence
layout the trainer consumes (see workers/backends/base.py): the prompt left-padded to
`meta["prompt_width"]`, the response right-padded to `meta["max_new_tokens"]`, so shards from
all replicas concatenate; the driver trims all-padding columns afterwards.
"""
from __future__ import annotations

import os
import time

import torch

from orchestrator.batch import Batch, pack_sequences, trim_padding  # noqa: F401 (re-exported)
from orchestrator.worker_group import Dispatch, Execute, register
from workers.base import Worker
from workers.dist import bind_gloo
from workers.engines import make_engine
from workers.backends.lora import is_lora_name
from workers.engines.base import SamplingSpec, UpdateLedger, weight_report
from workers.engines.vllm_engine import check_named_tensors
from workers.shared_weights import SHM_DIR, create_buffer, remove_buffer, tensor_views


class RolloutWorker(Worker):
    def __init__(self, model_path: str, engine: str = "vllm", engine_kwargs: dict | None = None,
                 pad_token_id: int = 0, seed: int = 0):
        super().__init__()
        self.model_path, self.engine_kind = model_path, engine
        self.engine_kwargs = dict(engine_kwargs or {})
        self.pad_token_id, self.seed = pad_token_id, seed
        self.engine = None
        self._ledger: UpdateLedger | None = None  # what the current / last weight update sent
        self._ledger_open = False

    @register(dispatch=Dispatch.ONE_TO_ALL)
    def setup(self) -> dict:
        t0 = time.time()
        # vLLM's in-process engine creates gloo groups of its own: their listeners go where ours go
        # (loopback on a single node; workers/dist.py).
        bind_gloo()
        # vLLM disables torch.set_num_threads for its whole process; give the engine the cores
        # this worker was granted (the trainers are idle while it generates).
        self.engine = make_engine(self.engine_kind, self.model_path, seed=self.seed + self.rank, **self.engine_kwargs)
        return {"setup_s": time.time() - t0, "pid": os.getpid()}

    @register(dispatch=Dispatch.DP_SPLIT)
    def generate(self, batch: Batch) -> Batch:
        m = batch.meta
        spec = SamplingSpec(max_new_tokens=m["max_new_tokens"], temperature=m["temperature"], top_p=m["top_p"],
                            top_k=m["top_k"], seed=None if m.get("seed") is None else m["seed"] * 1000 + self.rank,
                            stop_token_ids=list(m["stop_token_ids"]))
        prompts = [list(p) for p in batch["prompt_ids"]]
        t0 = time.time()
        completions = self.engine.generate(prompts, spec)
        gen_s = time.time() - t0
        out = pack_sequences(prompts, [c.token_ids for c in completions], [c.logprobs for c in completions],
                             m["prompt_width"], m["max_new_tokens"], self.pad_token_id)
        out.non_tensors["finish_reason"] = [c.finish_reason for c in completions]
        out.meta[f"gen_s/rank{self.rank}"] = gen_s
        return out

    @register(dispatch=Dispatch.ONE_TO_ALL)
    def score(self, sequences: list[list[int]], starts: list[int]) -> list[list[float]]:
        return self.engine.score(sequences, starts)

    # Weight sync: called by the trainer's rank 0 (load_weights) and the driver (begin/finish).
    # With `fingerprints` (the sync's verification), every base tensor that arrives is fingerprinted
    # in the engine's dtype, for `weight_report` to compare with what the engine holds afterwards.
    @register(dispatch=Dispatch.ONE_TO_ALL)
    def begin_weight_update(self, fingerprints: bool = True) -> None:
        self.engine.begin_weight_update()
        if self._ledger is None or not self._ledger_open:  # an update left open keeps its ledger
            self._ledger = UpdateLedger(self.engine.weight_dtype) if fingerprints else None
        self._ledger_open = True

    def load_weights(self, named_tensors: dict[str, torch.Tensor]) -> int:
        self.engine.load_weights(named_tensors)  # checks names and shapes first
        if self._ledger is not None:
            self._ledger.add(named_tensors, skip=is_lora_name)
        return len(named_tensors)

    def load_ipc(self, handle: tuple, meta: list) -> int:
        """One bucket by handle (workers/ipc_weights.py): map the trainer's buffer, load from views
        of it (checks and fingerprints as for load_weights), drop the mapping before returning."""
        from workers.ipc_weights import open_bucket
        views = open_bucket(handle, meta)
        try:
            return self.load_weights(views)
        finally:
            if any(v.is_cuda for v in views.values()):
                torch.cuda.synchronize()  # the copies out of the trainer's memory are done
            del views

    # Same-node sync (workers/shared_weights.py): the trainer ranks write one shared buffer, every
    # replica loads from views of it, in one call (checks and fingerprints as for load_weights).
    @register(dispatch=Dispatch.ONE_TO_ALL, execute=Execute.RANK_ZERO)
    def plan_shared(self, directory: str = SHM_DIR):
        """The buffer's layout, in this engine's terms (every replica holds the same model)."""
        return self.engine.plan_shared(directory)

    @register(dispatch=Dispatch.ONE_TO_ALL, execute=Execute.RANK_ZERO)
    def create_shared(self, layout) -> None:
        create_buffer(layout)

    @register(dispatch=Dispatch.ONE_TO_ALL, execute=Execute.RANK_ZERO)
    def remove_shared(self, layout) -> None:
        remove_buffer(layout)

    @register(dispatch=Dispatch.ONE_TO_ALL)
    def load_shared(self, layout) -> float:
        t0 = time.time()
        if getattr(self, "_shared", (None,))[0] != layout.path:  # map once per buffer
            self._shared = (layout.path, tensor_views(layout))
        views = self._shared[1]
        check_named_tensors(views, self.engine.weight_shapes(sorted(views)))
        self.engine.load_shared(layout, views)
        if self._ledger is not None:  # what arrived, in HF names: the same fingerprints as load_weights
            self._ledger.add(views, skip=is_lora_name)
        return time.time() - t0

    @register(dispatch=Dispatch.ONE_TO_ALL)
    def finish_weight_update(self) -> None:
        self.engine.finish_weight_update()
        self._ledger_open = False

    @register(dispatch=Dispatch.ONE_TO_ALL)
    def weight_report(self, full: bool = True) -> dict:
        """What the last update sent vs what the engine holds (workers.engines.base.weight_report);
        `full`: the update had to bring every base tensor (not an adapter-only update)."""
        if self._ledger is None or self._ledger_open:
            raise RuntimeError(f"rollout replica {self.rank}: no finished weight update with fingerprints to report on")
        return weight_report(self.engine, self._ledger, full)

    @register(dispatch=Dispatch.ONE_TO_ALL)
    def sleep(self) -> None:
        self.engine.sleep()

    @register(dispatch=Dispatch.ONE_TO_ALL)
    def wake_up(self) -> None:
        self.engine.wake_up()

    @register(dispatch=Dispatch.ONE_TO_ALL)
    def close_engine(self) -> None:
        if self.engine is not None:
            self.engine.shutdown()
            self.engine = None
