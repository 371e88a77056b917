"""DeepSpeed ZeRO (stage 1, 2 or 3) training backend, behind the same `TrainingBackend` seam as FSDP2.

One `DeepSpeedBackend` per rank. The rank joins the torch.distributed group first (workers/dist.py,
gloo on CPU, with the group timeout of the failure contract); `deepspeed.initialize` then finds the
group initialized and wraps it (DeepSpeed's TorchBackend: no second group, same timeout).
The optimizer is torch AdamW handed to DeepSpeed as a client optimizer (ZeRO partitions its state);
DeepSpeed's CPU Adam would compile a C++ op (~60 s cold) for nothing we need.

Same contract as FSDPBackend (see fsdp.py, which this shares code with): loss scaling is the caller's
(ZeRO also *averages* gradients over ranks, so loss_fn returns its share of the global loss times
world_size); the micro-batches of one `train_step` accumulate gradients locally
(`managed_gradient_accumulation: false`, `backward(scale_wrt_gas=False)`), and `step()` is the
one boundary: reduce, clip by the global norm (`gradient_clipping`), AdamW step. A non-finite
norm skips the step (DeepSpeed's overflow check) and reports step_skipped=1.

ZeRO-3 partitions the parameters too; `iter_param_buckets` gathers them with
`deepspeed.zero.GatheredParameters`, one bucket of parameters at a time.
Checkpoints are DeepSpeed checkpoints (same world size and stage to load); a LoRA run saves the
adapter only (`exclude_frozen_parameters`) plus a peft adapter folder.

One-time cost: DeepSpeed's CPU comm backend JIT-compiles a shared-memory op on its first use on a
machine (30-50 s of CPU, cached under ~/.cache/torch_extensions). `python -m
workers.backends.deepspeed --warmup` builds it once (setup step); later processes load it in <1 s.
"""
from __future__ import annotations

import logging
import os
import time
from typing import Iterator

import torch
import torch.distributed as dist

from orchestrator.batch import Batch
from workers.backends.base import LossFn
from workers.backends.fsdp import DataParallelBackend
from workers.backends.fsdp_model import strip_prefixes
from workers.backends.lora import ADAPTER_SUBDIR, is_lora_name

log = logging.getLogger(__name__)

ZERO_STAGES = (1, 2, 3)
TAG = "hyflow"  # the checkpoint tag: one checkpoint per folder


def _name_accelerator() -> None:
    """Tell DeepSpeed the accelerator before it is imported; its auto-detection warns "unable to
    detect" on every CPU run (workers/quiet.py)."""
    import torch
    os.environ.setdefault("DS_ACCELERATOR", "cuda" if torch.cuda.is_available() else "cpu")


def warmup() -> str:
    """Build (or load from the cache) the op DeepSpeed compiles on CPU: the shared-memory comm op
    that every `deepspeed.init_distributed` / `deepspeed.initialize` loads. Returns its path."""
    _name_accelerator()
    from deepspeed.comm.torch import build_shm_op
    op = build_shm_op()
    return getattr(op, "__file__", "not built (the accelerator has no shm op)")


class DeepSpeedBackend(DataParallelBackend):
    """ZeRO-`zero_stage` + torch AdamW; `dtype` "bfloat16" uses DeepSpeed's bf16 mode (fp32 master
    weights). Other options as FSDPBackend (lr, betas, grad_clip, LoRA...)."""

    def __init__(self, zero_stage: int = 2, **kwargs):
        if zero_stage not in ZERO_STAGES:
            raise ValueError(f"zero_stage must be one of {list(ZERO_STAGES)}, got {zero_stage!r}")
        super().__init__(**kwargs)
        if self.dtype == torch.float16:
            raise ValueError("dtype 'float16' is not supported by the DeepSpeed backend (use float32 or bfloat16)")
        self.zero_stage = zero_stage
        self.engine = None

    def ds_config(self) -> dict:
        """The DeepSpeed config this backend runs with (batch sizes are nominal: train_step owns
        accumulation and the caller the loss scaling)."""
        cfg = {
            "train_micro_batch_size_per_gpu": 1,
            "gradient_accumulation_steps": 1,
            "train_batch_size": self.world_size,
            "managed_gradient_accumulation": False,
            "gradient_clipping": float(self.grad_clip or 0.0),
            # ZeRO-1/2 shard optimizer state and gradients only, and DeepSpeed refuses them without an
            # optimizer: a forward-only (reference) engine runs stage 0 there; ZeRO-3 still shards weights.
            "zero_optimization": {"stage": self.zero_stage if self.trainable or self.zero_stage == 3 else 0},
            "zero_allow_untested_optimizer": True,  # torch AdamW as the client optimizer
            "steps_per_print": 2**62,
            "wall_clock_breakdown": False,
        }
        if self.dtype == torch.bfloat16:
            cfg["bf16"] = {"enabled": True}
        return cfg

    # ------------------------------------------------------------------ setup
    def setup(self, model_path: str, trainable: bool, kind: str = "causal_lm") -> None:
        """Load the HF model of `kind` (LoRA-injected when lora_rank > 0) and hand it to
        `deepspeed.initialize` with AdamW over its trainable parameters (none when not trainable:
        a forward-only engine; ZeRO-3 still partitions the weights). Collective."""
        _name_accelerator()
        import deepspeed

        t0 = time.perf_counter()
        model = self._load_model(model_path, trainable, kind)  # joins the torch.distributed group
        model.train(trainable)
        kw = {}
        if trainable:
            self.optimizer = self._make_adamw([p for p in model.parameters() if p.requires_grad])
            kw["optimizer"] = self.optimizer
        self.engine, _, _, _ = deepspeed.initialize(model=model, config=self.ds_config(), **kw)
        if deepspeed.comm.get_world_size() != self.world_size:
            raise RuntimeError(f"DeepSpeed sees world size {deepspeed.comm.get_world_size()}, "
                               f"the process group {self.world_size}")
        self.model = self.engine.module
        self.timings["setup_s"] = time.perf_counter() - t0

    def _forward_module(self) -> torch.nn.Module:
        self._require_model()
        return self.engine

    # --------------------------------------------------------------- training
    def train_step(self, micro_batches: list[Batch], loss_fn: LossFn, temperature: float = 1.0) -> dict[str, float]:
        """Per micro-batch: forward through the engine, loss_fn, `engine.backward` (accumulates
        locally, unscaled); then `engine.step()`: reduce over ranks (mean), clip, AdamW. Collective.
        Same loss scaling and returned metrics as FSDPBackend.train_step."""
        self._check_train(micro_batches)
        engine = self.engine
        t0 = time.perf_counter()
        skipped_before = engine.skipped_steps
        sums: dict[str, float] = {}
        for mb in micro_batches:
            engine.backward(self._micro_step(engine, mb, loss_fn, temperature, sums), scale_wrt_gas=False)
        out = {k: v / len(micro_batches) for k, v in sums.items()}
        engine.step()
        norm = engine.get_global_grad_norm()
        grad_norm = float(norm) if norm is not None else float("nan")
        skipped = engine.skipped_steps > skipped_before
        if skipped:
            log.warning("non-finite grad norm %s: DeepSpeed skipped the optimizer step", grad_norm)
        self.timings["train_step_s"] = time.perf_counter() - t0
        out.update(grad_norm=grad_norm, lr=float(self.optimizer.param_groups[0]["lr"]), step_skipped=float(skipped))
        return out

    # ------------------------------------------------------------ weight sync
    def _gather_named(self, bucket_bytes: int, lora_only: bool, device="cpu") -> Iterator[tuple[str, torch.Tensor]]:
        """ZeRO-1/2 hold full parameters on every rank: plain copies. ZeRO-3 partitions them: each
        group of parameters up to ~bucket_bytes is gathered in one `GatheredParameters` (a
        collective), copied out, and released before the next group."""
        import deepspeed

        model = self._require_model()
        seen: set[int] = set()
        entries = []  # (name, tensor, bytes)
        for name, t in model.state_dict(keep_vars=True).items():
            if id(t) in seen or (lora_only and not is_lora_name(name)):
                continue
            seen.add(id(t))
            numel = t.ds_numel if hasattr(t, "ds_id") else t.numel()
            entries.append((strip_prefixes(name), t, numel * t.element_size()))
        groups, size = [[]], 0
        for e in entries:
            if groups[-1] and size + e[2] > bucket_bytes:
                groups.append([])
                size = 0
            groups[-1].append(e)
            size += e[2]
        for group in groups:
            partitioned = [t for _, t, _ in group if hasattr(t, "ds_id")]
            with deepspeed.zero.GatheredParameters(partitioned, modifier_rank=None, enabled=bool(partitioned)):
                copies = [(n, self._copy(t, device)) for n, t, _ in group]
            yield from copies

    def _copy(self, t: torch.Tensor, device="cpu") -> torch.Tensor:
        dtype = self.dtype if t.is_floating_point() else t.dtype
        return t.detach().to(device, dtype, copy=True)

    # ------------------------------------------------------------ checkpoints
    def save(self, path: str, with_optimizer: bool = True) -> None:
        """A DeepSpeed checkpoint in the folder `path` (module + ZeRO optimizer partitions; the
        optimizer state is always written when there is one: `with_optimizer` matters on load).
        A LoRA run saves only the adapter and writes a peft adapter folder `path/adapter`.
        Collective."""
        self._require_model()
        self.engine.save_checkpoint(str(path), tag=TAG, exclude_frozen_parameters=self.lora is not None)
        if self.lora is not None:
            self._write_adapter_folder(os.path.join(path, ADAPTER_SUBDIR))
        dist.barrier()

    def load(self, path: str, with_optimizer: bool = True) -> None:
        """Restore what `save` wrote (same world size and ZeRO stage). Collective."""
        self._require_model()
        if not os.path.isdir(os.path.join(path, TAG)):
            raise FileNotFoundError(f"no DeepSpeed checkpoint (tag {TAG!r}) in {path}")
        loaded, _ = self.engine.load_checkpoint(
            str(path), tag=TAG, load_module_strict=self.lora is None,
            load_optimizer_states=with_optimizer and self.optimizer is not None, load_lr_scheduler_states=False)
        if loaded is None:
            raise RuntimeError(f"DeepSpeed could not load the checkpoint in {path}")

    def save_hf(self, path: str) -> None:
        """Rank 0 writes an HF folder of the full weights (gathered bucket by bucket under ZeRO-3;
        LoRA merged in) and, for LoRA, the peft adapter folder `path/adapter`. Collective."""
        self._export_hf(path)


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--warmup", action="store_true",
                        help="build DeepSpeed's CPU shared-memory comm op once (cached in ~/.cache/torch_extensions)")
    args = parser.parse_args(argv)
    if not args.warmup:
        parser.print_help()
        return 2
    t0 = time.perf_counter()
    where = warmup()
    print(f"DeepSpeed ops ready in {time.perf_counter() - t0:.1f} s: {where}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
