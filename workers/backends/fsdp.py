"""FSDP2 training backend: an HF model sharded with `fully_shard` over all ranks of the group.

Two model kinds (fsdp_model.py): "causal_lm" (policy / reference: log-probs) and "value" (critic:
per-token values from a scalar head). Both shard, train, checkpoint and export the same way.

One `FSDPBackend` per rank. Each decoder layer is its own FSDP2 unit (unsharded only while it
runs), the root unit holds the rest (embeddings, final norm, lm_head or value head — tied weights
stay one parameter inside one unit). Works on CPU (gloo) and CUDA (nccl), and with a single rank.

All methods of `FSDPBackend` are collectives: every rank must call them in the same order with
the same number of micro-batches, and each collective runs under the process group's timeout
(see workers/dist.py), so a dead peer raises instead of hanging.

LoRA (lora_rank > 0, causal_lm only): peft LoRA layers are injected before sharding (lora.py);
only they are trainable and in the optimizer. `lora_sync` picks what `iter_param_buckets` yields:
"merge" = full merged weights (W + B·A·alpha/r, HF names), "adapter" = the adapter tensors only
(peft adapter names) for engines that serve the adapter. Checkpoints hold the adapter (plus a peft
adapter folder); `save_hf` writes the merged model and the adapter folder (lora.ADAPTER_SUBDIR).

`DataParallelBackend` holds what the FSDP and DeepSpeed backends share: forward passes over
length-sorted micro-batches, rank agreement checks, the weight-sync payload and the HF export.
"""
from __future__ import annotations

import logging
import math
import os
import time
from typing import Iterator

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict, get_state_dict,
                                                     set_model_state_dict, set_state_dict)
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard
from torch.distributed.tensor import DTensor

from orchestrator.batch import Batch
from workers import dist as hdist
from workers.backends.base import LossFn, TrainingBackend, length_order, micro_batches
# response_logprobs / response_values are pure and also imported from here by callers and tests.
from workers.backends.fsdp_model import (MODEL_KINDS, TOKENIZER_FILES, check_layout, find_layers,  # noqa: F401
                                         load_hf_model, response_logprobs, response_values, strip_prefixes,
                                         write_hf_folder)
from workers.backends.lora import (ADAPTER_SUBDIR, SYNC_MODES, LoraSpec, adapter_name, bucketize, inject_lora,
                                   is_lora_name, merge_lora, write_adapter)

log = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
EXPORT_BUCKET_BYTES = 256 * 2**20  # save_hf gathers the full weights in pieces of this size


def _unique_state(model: torch.nn.Module):
    """(state-dict name, tensor) pairs, a tied tensor once under its first name."""
    seen: set[int] = set()
    for name, t in model.state_dict(keep_vars=True).items():
        if id(t) not in seen:
            seen.add(id(t))
            yield name, t


def _row_share(name: str, t: torch.Tensor, rank: int, world_size: int) -> tuple[str, torch.Tensor, int | None]:
    """A tensor every rank holds whole: this rank's `torch.chunk` share of its rows (None: none)."""
    if t.dim() == 0:
        return name, t, 0 if rank == 0 else None
    step = -(-t.shape[0] // world_size)
    return name, t[rank * step:(rank + 1) * step], (rank * step if rank * step < t.shape[0] else None)


class DataParallelBackend(TrainingBackend):
    """What the FSDP2 and DeepSpeed backends share. A subclass sets `self.model` (the HF module,
    LoRA-injected when enabled), implements `_forward_module` (what to call for a forward) and
    `_gather_named` (full tensors, lazily, every rank in the same order), plus setup / train_step /
    save / load / save_hf."""

    def __init__(self, lr: float = 1e-6, weight_decay: float = 0.0, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, grad_clip: float | None = 1.0, dtype: str = "float32",
                 gradient_checkpointing: bool = False, seed: int = 0, value_head_std: float | None = None,
                 lora_rank: int = 0, lora_alpha: float = 16.0, lora_dropout: float = 0.0,
                 lora_target_modules: list[str] | None = None, lora_sync: str = "merge"):
        if dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
        if not lr >= 0:
            raise ValueError(f"lr must be >= 0, got {lr}")
        if lora_sync not in SYNC_MODES:
            raise ValueError(f"lora_sync must be one of {list(SYNC_MODES)}, got {lora_sync!r}")
        self.lr, self.weight_decay, self.betas, self.eps = lr, weight_decay, tuple(betas), eps
        self.grad_clip, self.dtype = grad_clip, DTYPES[dtype]
        self.gradient_checkpointing, self.seed = gradient_checkpointing, seed
        self.value_head_std = value_head_std  # kind="value" only; see fsdp_model.load_hf_model
        self.lora = LoraSpec.from_options(lora_rank, lora_alpha, lora_dropout, lora_target_modules)
        # What a weight sync carries (iter_param_buckets' default payload).
        self.sync_payload = "adapter" if self.lora is not None and lora_sync == "adapter" else "full"
        self.kind = "causal_lm"
        self.model: torch.nn.Module | None = None
        self.optimizer: torch.optim.Optimizer | None = None
        self.trainable = False
        self.timings: dict[str, float] = {}

    def _load_model(self, model_path: str, trainable: bool, kind: str) -> torch.nn.Module:
        """Common part of setup: join the group, seed, load the HF model of `kind`, inject LoRA,
        freeze what does not train. Returns the unsharded model."""
        if kind not in MODEL_KINDS:
            raise ValueError(f"model kind must be one of {list(MODEL_KINDS)}, got {kind!r}")
        if self.lora is not None and kind != "causal_lm":
            raise ValueError(f"LoRA (lora_rank={self.lora.rank}) is supported for kind 'causal_lm' only, got {kind!r}")
        self.rank, self.world_size = hdist.init_distributed()
        if os.environ.get("OMP_NUM_THREADS", "").isdigit():
            torch.set_num_threads(max(1, int(os.environ["OMP_NUM_THREADS"])))
        torch.manual_seed(self.seed)
        self.device = hdist.device()
        self.model_path, self.trainable, self.kind = str(model_path), trainable, kind
        model = load_hf_model(self.model_path, kind, self.dtype, self.seed, self.value_head_std)
        self.architecture = type(model).__name__  # before any wrapper renames the class
        if self.lora is not None:
            self.timings["lora_trainable_params"] = inject_lora(model, self.lora)
        if trainable and self.gradient_checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if not trainable:
            model.requires_grad_(False)
        return model

    def _make_adamw(self, params: list) -> torch.optim.Optimizer:
        kw = dict(lr=self.lr, betas=self.betas, eps=self.eps, weight_decay=self.weight_decay)
        try:  # fused AdamW: ~3x faster step on CPU (stack.md); not every device/dtype has it
            return torch.optim.AdamW(params, fused=True, **kw)
        except (RuntimeError, ValueError) as e:
            log.warning("fused AdamW unavailable (%s); using the foreach implementation", e)
            return torch.optim.AdamW(params, **kw)

    def _require_model(self) -> torch.nn.Module:
        if self.model is None:
            raise RuntimeError(f"{type(self).__name__}.setup() must run before this call")
        return self.model

    def _forward_module(self) -> torch.nn.Module:
        return self._require_model()

    def _to_device(self, batch: Batch) -> Batch:
        if self.device.type == "cpu":
            return batch
        return batch.to(self.device)

    def _same_on_all_ranks(self, value: int, what: str) -> None:
        """Fail fast (instead of deadlocking in a later collective) when ranks disagree."""
        t = torch.tensor([value, -value], dtype=torch.long, device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        if t[0].item() != -t[1].item():
            raise RuntimeError(f"ranks disagree on the {what}: between {-t[1].item()} and {t[0].item()}")

    def _require_kind(self, kind: str, what: str) -> torch.nn.Module:
        self._require_model()
        if self.kind != kind:
            raise RuntimeError(f"{what} needs a model of kind {kind!r}; this backend holds a {self.kind!r} model")
        return self._forward_module()

    # -------------------------------------------------------------- inference
    def _sorted_forward(self, batch: Batch, micro_batch_size: int, fn, max_tokens: int | None = None) -> list[torch.Tensor]:
        """fn(micro_batch) -> tuple of [b, R] tensors, over length-sorted micro-batches (similar
        lengths share one: less padding computed; at most `max_tokens` padded tokens each, see
        base.micro_batches); outputs on CPU, back in the batch's row order."""
        check_layout(batch)
        order = length_order(batch)
        chunks = micro_batches(batch.select(order), micro_batch_size, max_tokens)
        self._same_on_all_ranks(len(chunks), "number of forward micro-batches")
        outs = [[t.cpu() for t in fn(self._to_device(mb))] for mb in chunks]
        inverse = torch.empty_like(order)
        inverse[order] = torch.arange(len(order))
        return [torch.cat(col)[inverse] for col in zip(*outs)]

    @torch.no_grad()
    def forward_logprobs(self, batch: Batch, micro_batch_size: int, temperature: float = 1.0,
                         with_entropy: bool = False, max_tokens: int | None = None
                         ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Log-probs (and entropy) [B, R] on CPU for this rank's rows, micro-batch by micro-batch.

        Collective: every rank must call it with the same number of micro-batches."""
        model = self._require_kind("causal_lm", "forward_logprobs")
        outs = self._sorted_forward(batch, micro_batch_size, lambda mb: [
            t for t in response_logprobs(model, mb, temperature, with_entropy) if t is not None], max_tokens)
        return outs[0], (outs[1] if with_entropy else None)

    @torch.no_grad()
    def forward_values(self, batch: Batch, micro_batch_size: int, max_tokens: int | None = None) -> torch.Tensor:
        """Values [B, R] (float32, CPU) of a kind="value" model for this rank's rows; V at response
        position j is the head at sequence position P-1+j (fsdp_model.response_values); padding 0.

        Collective: every rank must call it with the same number of micro-batches."""
        model = self._require_kind("value", "forward_values")
        return self._sorted_forward(batch, micro_batch_size, lambda mb: [response_values(model, mb)], max_tokens)[0]

    def _micro_step(self, model, mb: Batch, loss_fn: LossFn, temperature: float, sums: dict) -> torch.Tensor:
        """Forward one micro-batch with grad and apply loss_fn; adds its metrics to `sums`."""
        mb = self._to_device(mb)
        if self.kind == "value":
            loss, metrics = loss_fn(mb, response_values(model, mb), None)
        else:
            logprobs, entropy = response_logprobs(model, mb, temperature, with_entropy=True)
            loss, metrics = loss_fn(mb, logprobs, entropy)
        metrics = {"loss": float(loss.detach()), **{k: float(v) for k, v in metrics.items()}}
        for k, v in metrics.items():
            sums[k] = sums.get(k, 0.0) + v
        return loss

    def _check_train(self, micro_batches: list[Batch]) -> torch.nn.Module:
        model = self._require_model()
        if self.optimizer is None:
            raise RuntimeError("train_step needs a backend set up with trainable=True")
        if not micro_batches:
            raise ValueError("train_step needs at least one micro-batch")
        self._same_on_all_ranks(len(micro_batches), "number of micro-batches")
        return model

    def set_lr(self, lr: float) -> None:
        """Set the learning rate of every parameter group (for a driver-side schedule)."""
        if self.optimizer is None:
            raise RuntimeError("set_lr needs a backend set up with trainable=True")
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    # ------------------------------------------------------------ weight sync
    def _gather_named(self, bucket_bytes: int, lora_only: bool, device="cpu") -> Iterator[tuple[str, torch.Tensor]]:
        """(model name, full detached tensor on `device`) in state-dict order, a tied weight once
        under its first name; gathered lazily (collective: every rank runs it to the end)."""
        raise NotImplementedError

    def iter_param_buckets(self, bucket_bytes: int, payload: str | None = None,
                           device="cpu") -> Iterator[dict[str, torch.Tensor]]:
        """The weights an engine needs, bucket by bucket (dicts of detached tensors on `device`: the
        CPU for the object store, the backend's own device for an IPC handle).

        payload "full" (default without LoRA or with lora_sync="merge"): full HF-named weights, LoRA
        merged in; "adapter" (default with lora_sync="adapter"): only the LoRA tensors, under peft
        adapter names. Collective: every rank must run the generator to the end; only rank 0 needs
        the values. A tied weight comes once under its first name (model.embed_tokens.weight). A
        bucket holds tensors up to ~bucket_bytes (a larger one gets a bucket of its own); a rank
        holds at most one bucket plus the tensor being gathered besides its shard.
        """
        self._require_model()
        if bucket_bytes <= 0:
            raise ValueError(f"bucket_bytes must be positive, got {bucket_bytes}")
        payload = payload or self.sync_payload
        if payload == "adapter":
            if self.lora is None:
                raise ValueError("payload 'adapter' needs a LoRA backend (lora_rank > 0)")
            named = ((adapter_name(n), t) for n, t in self._gather_named(bucket_bytes, True, device))
        elif payload == "full":
            named = self._gather_named(bucket_bytes, False, device)
            if self.lora is not None:
                named = merge_lora(named, self.lora.scaling)
        else:
            raise ValueError(f"payload must be 'full' or 'adapter', got {payload!r}")
        yield from bucketize(named, bucket_bytes)

    def _local_named(self) -> Iterator[tuple[str, torch.Tensor, int | None]]:
        """(model name, the rows this rank writes, first row or None) for a shared-memory sync, every
        rank in the same order; `lora_A` whole on every rank (the merge needs it). Default: from the
        gathered tensors (collective), each rank taking its `torch.chunk` share of the rows."""
        for name, t in self._gather_named(EXPORT_BUCKET_BYTES, lora_only=False):
            yield (name, t, 0) if ".lora_A." in name else _row_share(name, t, self.rank, self.world_size)

    def write_shared(self, views: dict[str, torch.Tensor], aliases: dict[str, str]) -> list[tuple[str, int, int]]:
        """Collective (workers/shared_weights.py): copy the rows of the full-weight payload (LoRA
        merged) this rank holds into `views` (HF name -> tensor of a mapped shared buffer, in the
        engine's dtype). Returns what was written: (HF name, first element, element count)."""
        self._require_model()
        if self.sync_payload != "full":
            raise ValueError(f"a shared-memory sync carries full weights, not the {self.sync_payload!r} payload "
                             f"(weight_sync.lora_mode=adapter goes through the object store)")
        first: dict[str, int | None] = {}

        def named():
            for name, t, row0 in self._local_named():
                first[name] = row0
                yield name, t

        stream = merge_lora(named(), self.lora.scaling) if self.lora is not None else named()
        written = []
        for name, t in stream:
            prefix, _, leaf = name.rpartition(".")
            row0 = first[name] if name in first else first[f"{prefix}.base_layer.{leaf}"]  # a merged LoRA layer
            if row0 is None or t.numel() == 0:
                continue
            dst = views.get(aliases.get(name, name))
            if dst is None:
                raise KeyError(f"the engine has no tensor named {name!r} (shared-memory weight sync)")
            fits = (dst.numel() == t.numel() if t.dim() == 0 or dst.dim() == 0 else
                    tuple(t.shape[1:]) == tuple(dst.shape[1:]) and row0 + t.shape[0] <= dst.shape[0])
            if not fits:
                raise ValueError(f"tensor {name!r}: {tuple(t.shape)} from row {row0} does not fit the engine's "
                                 f"{tuple(dst.shape)} (shared-memory weight sync)")
            start = row0 * (dst.numel() // dst.shape[0]) if dst.dim() else 0
            dst.view(-1)[start:start + t.numel()].copy_(t.detach().reshape(-1))
            written.append((name, start, t.numel()))
        return written

    def _collect(self, payload: str) -> dict[str, torch.Tensor]:
        """All tensors of `payload` on rank 0 ({} elsewhere). Collective."""
        out: dict[str, torch.Tensor] = {}
        for bucket in self.iter_param_buckets(EXPORT_BUCKET_BYTES, payload):
            if self.rank == 0:
                out.update(bucket)
        return out

    def _write_adapter_folder(self, path: str) -> None:
        """Rank 0 writes the peft adapter folder `path` (LoRA runs). Collective (gathers)."""
        tensors = self._collect("adapter")
        if self.rank == 0:
            write_adapter(path, tensors, self.lora, self.model_path)

    def _export_hf(self, path: str) -> None:
        """Rank 0 writes an HF folder of the full (merged) weights and, for LoRA, the adapter folder
        `path/adapter`. Collective; returns once both are complete on every rank."""
        model = self._require_model()
        full = self._collect("full")
        if self.rank == 0:
            write_hf_folder(path, full, model, self.model_path, self.architecture)
        del full
        if self.lora is not None:
            self._write_adapter_folder(os.path.join(path, ADAPTER_SUBDIR))
        dist.barrier()


class FSDPBackend(DataParallelBackend):
    """FSDP2 + torch AdamW. `dtype` is the parameter (and compute) dtype; log-softmax is float32."""

    # ------------------------------------------------------------------ setup
    def setup(self, model_path: str, trainable: bool, kind: str = "causal_lm") -> None:
        """Load the HF model of `kind` (LoRA-injected when lora_rank > 0), shard it (layers, then
        root), build AdamW over the trainable parameters when trainable. Collective.
        kind="value" adds a scalar head (fsdp_model.load_hf_model: init from `seed`)."""
        t0 = time.perf_counter()
        model = self._load_model(model_path, trainable, kind)
        mesh = init_device_mesh(self.device.type, (self.world_size,))
        for layer in find_layers(model):
            fully_shard(layer, mesh=mesh)
        fully_shard(model, mesh=mesh)  # moves every parameter to this rank's shard on self.device
        model.train(trainable)
        self.model = model
        if trainable:
            self.optimizer = self._make_adamw([p for p in model.parameters() if p.requires_grad])
        self.timings["setup_s"] = time.perf_counter() - t0

    # --------------------------------------------------------------- training
    def train_step(self, micro_batches: list[Batch], loss_fn: LossFn, temperature: float = 1.0) -> dict[str, float]:
        """zero_grad; per micro-batch forward with grad, loss_fn, backward; clip by the global grad
        norm; AdamW step. Collective. The forward depends on the model kind: a causal LM calls
        loss_fn(mb, logprobs, entropy) (at `temperature`), a value model loss_fn(mb, values, None).

        Scaling is the caller's job: FSDP2 *averages* gradients over ranks (reduce-scatter mean)
        and micro-batch gradients add up, so to get the gradient of a global mean, loss_fn must
        return sum(per-token loss of this micro-batch) / global_token_count * world_size.
        Returns loss_fn's metrics averaged over this rank's micro-batches, plus `loss` (same
        average, unless loss_fn reports one), `grad_norm` (global, before clipping), `lr` and
        `step_skipped` (1.0 when the norm was not finite and the update was skipped).
        """
        model = self._check_train(micro_batches)
        t0 = time.perf_counter()
        self.optimizer.zero_grad(set_to_none=True)
        sums: dict[str, float] = {}
        for mb in micro_batches:
            self._micro_step(model, mb, loss_fn, temperature, sums).backward()
        out = {k: v / len(micro_batches) for k, v in sums.items()}

        grad_norm = self._clip_grad_norm()
        skipped = not math.isfinite(grad_norm)
        if skipped:  # a NaN/inf update would poison every parameter; drop this step instead
            log.warning("non-finite grad norm %s: skipping the optimizer step", grad_norm)
        else:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.timings["train_step_s"] = time.perf_counter() - t0
        out.update(grad_norm=grad_norm, lr=float(self.optimizer.param_groups[0]["lr"]),
                   step_skipped=float(skipped))
        return out

    def _clip_grad_norm(self) -> float:
        """Global L2 norm of all gradients; scale them to `grad_clip` if above (torch's formula).

        FSDP2 grads are DTensors sharded over the one 1-D mesh: each rank sums the squares of
        its own shard and one all-reduce gives the global sum. Plain (replicated) grads count once.
        """
        sharded = torch.zeros((), dtype=torch.float32, device=self.device)
        replicated = torch.zeros((), dtype=torch.float32, device=self.device)
        grads = []
        for p in self.model.parameters():
            if p.grad is None:
                continue
            g = p.grad.to_local() if isinstance(p.grad, DTensor) else p.grad
            grads.append(g)
            sq = g.detach().float().pow(2).sum()
            if isinstance(p.grad, DTensor):
                sharded += sq
            else:
                replicated += sq
        dist.all_reduce(sharded, op=dist.ReduceOp.SUM)
        total = (sharded + replicated).sqrt()
        if self.grad_clip and self.grad_clip > 0 and torch.isfinite(total):
            coef = torch.clamp(self.grad_clip / (total + 1e-6), max=1.0)
            for g in grads:
                g.mul_(coef.to(g.dtype))
        return float(total)


    # ------------------------------------------------------------ weight sync
    def _local_named(self) -> Iterator[tuple[str, torch.Tensor, int | None]]:
        """Shard(0) DTensors (FSDP2's layout): this rank's rows as they are, no collective; only
        `lora_A` and any other layout are all-gathered."""
        from torch.distributed.tensor._utils import compute_local_shape_and_global_offset

        for name, t in _unique_state(self._require_model()):
            name = strip_prefixes(name)
            if not isinstance(t, DTensor):
                yield _row_share(name, t.detach(), self.rank, self.world_size)
            elif ".lora_A." in name:
                yield name, t.full_tensor().detach(), 0
            elif len(t.placements) == 1 and t.placements[0].is_shard(0):
                _, offset = compute_local_shape_and_global_offset(t.shape, t.device_mesh, t.placements)
                yield name, t.to_local().detach(), offset[0]
            else:
                yield _row_share(name, t.full_tensor().detach(), self.rank, self.world_size)

    def _gather_named(self, bucket_bytes: int, lora_only: bool, device="cpu") -> Iterator[tuple[str, torch.Tensor]]:
        """Each DTensor all-gathered on its own, when the consumer asks for it (collective)."""
        for name, tensor in _unique_state(self._require_model()):
            if lora_only and not is_lora_name(name):
                continue
            full = tensor.full_tensor() if isinstance(tensor, DTensor) else tensor
            yield strip_prefixes(name), full.detach().to(device, self.dtype if full.is_floating_point() else full.dtype)

    # ------------------------------------------------------------ checkpoints
    def _dcp_state(self, with_optimizer: bool) -> dict:
        model = self._require_model()
        if with_optimizer:
            if self.optimizer is None:
                raise ValueError("with_optimizer=True needs a backend set up with trainable=True")
            msd, osd = get_state_dict(model, self.optimizer)
            state = {"model": msd, "optim": osd}
        else:
            state = {"model": get_model_state_dict(model)}
        if self.lora is not None:  # the frozen base is the model folder: keep only the adapter
            state["model"] = {k: v for k, v in state["model"].items() if is_lora_name(k)}
        return state

    def save(self, path: str, with_optimizer: bool = True) -> None:
        """Sharded model (+ optimizer) state to the folder `path` with torch DCP. Collective.
        A LoRA run saves only the adapter (and its optimizer state), plus a peft adapter folder
        `path/adapter` that `PeftModel.from_pretrained(base, path/adapter)` loads."""
        dcp.save(self._dcp_state(with_optimizer), checkpoint_id=str(path))
        if self.lora is not None:
            self._write_adapter_folder(os.path.join(path, ADAPTER_SUBDIR))
            dist.barrier()

    def load(self, path: str, with_optimizer: bool = True) -> None:
        """Restore what `save` wrote (same world size or another: DCP reshards). Collective."""
        if not os.path.isdir(path):
            raise FileNotFoundError(f"no checkpoint folder at {path}")
        state = self._dcp_state(with_optimizer)
        dcp.load(state, checkpoint_id=str(path))
        # A LoRA state holds the adapter only: the base weights stay as loaded from the model folder.
        opts = StateDictOptions(strict=self.lora is None)
        if with_optimizer:
            set_state_dict(self.model, self.optimizer, model_state_dict=state["model"],
                           optim_state_dict=state["optim"], options=opts)
        else:
            set_model_state_dict(self.model, state["model"], options=opts)

    def save_hf(self, path: str) -> None:
        """Gather the full weights to rank 0 bucket by bucket, which writes an HF folder
        (safetensors with a tied weight stored once + config + the tokenizer files of model_path).
        A LoRA run writes the merged weights there and the peft adapter folder to `path/adapter`.
        Collective; returns once the folder is complete."""
        self._export_hf(path)
