"""FSDP2 training backend: an HF causal LM sharded with `fully_shard` over all ranks of the group.

One `FSDPBackend` per rank. Each decoder layer is its own FSDP2 unit (unsharded only while it
runs), the root unit holds the rest (embeddings, final norm, lm_head — tied weights stay one
parameter inside one unit). Works on CPU (gloo) and CUDA (nccl), and with a single rank.

All methods except the pure `response_logprobs` are collectives: every rank must call them in
the same order with the same number of micro-batches, and each collective runs under the
process group's timeout (see workers/dist.py), so a dead peer raises instead of hanging.
"""
from __future__ import annotations

import inspect
import logging
import math
import os
import shutil
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
from workers.backends.base import LossFn, TrainingBackend, length_order

log = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# Where HF causal LMs keep their decoder blocks (Llama/Qwen/Mistral, OPT, GPT-2/Falcon, GPT-NeoX).
LAYER_PATHS = ("model.layers", "model.decoder.layers", "transformer.h", "gpt_neox.layers")
# Prefixes that wrappers (FSDP1, activation checkpointing, torch.compile) add to state-dict keys.
WRAPPER_PREFIXES = ("_fsdp_wrapped_module.", "_checkpoint_wrapped_module.", "_orig_mod.")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json",
                   "merges.txt", "tokenizer.model", "added_tokens.json", "chat_template.jinja",
                   "chat_template.json")
LAYOUT_FIELDS = ("input_ids", "attention_mask", "position_ids", "responses")


def _check_layout(batch: Batch) -> tuple[int, int]:
    """Validate the sequence layout (see base.py); returns (P, R)."""
    for name in LAYOUT_FIELDS:
        if name not in batch.tensors:
            raise ValueError(f"batch is missing the tensor field {name!r} (have {sorted(batch.keys())})")
    ids, resp = batch.tensors["input_ids"], batch.tensors["responses"]
    if ids.dim() != 2 or resp.dim() != 2:
        raise ValueError(f"input_ids and responses must be 2-D, got {tuple(ids.shape)} and {tuple(resp.shape)}")
    for name in ("attention_mask", "position_ids"):
        if batch.tensors[name].shape != ids.shape:
            raise ValueError(f"{name} has shape {tuple(batch.tensors[name].shape)}, input_ids {tuple(ids.shape)}")
    r = resp.shape[1]
    p = ids.shape[1] - r
    if r < 1 or p < 1:
        raise ValueError(f"responses width {r} leaves prompt width {p} in input_ids of width {ids.shape[1]}; "
                         "both must be >= 1")
    return p, r


def response_logprobs(model: torch.nn.Module, batch: Batch, temperature: float = 1.0,
                      with_entropy: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Log-probs [b, R] of `responses` (and the entropy [b, R]) under `model` at `temperature`.

    Pure: works on a plain HF model or an FSDP2-sharded one, grad mode is the caller's. The token
    at response position j is predicted by the logits at sequence position P-1+j; only those R
    positions go through the lm_head (`logits_to_keep`), the softmax runs in float32. Columns that
    are padding in every row are not computed; padding positions report 0.
    """
    _, r_full = _check_layout(batch)
    if not temperature > 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    t, r = _drop_padding_columns(batch.tensors, r_full)
    kwargs = {}
    if "logits_to_keep" in inspect.signature(model.forward).parameters:
        kwargs["logits_to_keep"] = r + 1  # positions P-1 .. P+R-1; the last one predicts nothing we need
    out = model(input_ids=t["input_ids"], attention_mask=t["attention_mask"], position_ids=t["position_ids"],
                use_cache=False, **kwargs)
    logits = out.logits[:, -(r + 1):-1].float()
    if temperature != 1.0:
        logits = logits / temperature
    lse = torch.logsumexp(logits, dim=-1)
    logprobs = logits.gather(-1, t["responses"].long().unsqueeze(-1)).squeeze(-1) - lse
    entropy = None
    if with_entropy:
        # -(p * logp).sum() == lse - (p * logits).sum(): no second [b, R, V] log-softmax tensor
        entropy = lse - (torch.softmax(logits, dim=-1) * logits).sum(-1)
    # Padding positions report 0, whether or not their column was dropped above.
    valid = t["attention_mask"][:, -r:].to(logprobs.dtype)
    logprobs = logprobs * valid
    entropy = None if entropy is None else entropy * valid
    if r < r_full:
        logprobs = torch.nn.functional.pad(logprobs, (0, r_full - r))
        entropy = None if entropy is None else torch.nn.functional.pad(entropy, (0, r_full - r))
    return logprobs, entropy


def _drop_padding_columns(t: dict, r: int) -> tuple[dict, int]:
    """Slice off columns that are padding in every row: leading prompt padding (left-padded) and
    trailing response padding. Micro-batches of similar lengths then cost only their own width.
    Positions are explicit (`position_ids`), so dropping leading pad columns changes nothing."""
    attn = t["attention_mask"]
    p = attn.shape[1] - r
    used = attn.bool().any(0)
    left = int(used[:p].long().argmax()) if used[:p].any() else p
    r_used = int(used[p:].nonzero().max()) + 1 if used[p:].any() else 1
    if left == 0 and r_used == r:
        return t, r
    keep = {k: v[:, left:p + r_used] for k, v in t.items() if k in ("input_ids", "attention_mask", "position_ids")}
    keep["responses"] = t["responses"][:, :r_used]
    return keep, r_used


def _find_layers(model: torch.nn.Module) -> torch.nn.ModuleList:
    for path in LAYER_PATHS:
        mod = model
        for part in path.split("."):
            mod = getattr(mod, part, None)
            if mod is None:
                break
        if isinstance(mod, torch.nn.ModuleList) and len(mod) > 0:
            return mod
    raise ValueError(f"cannot find the decoder layers of {type(model).__name__}: tried {', '.join(LAYER_PATHS)}")


def _strip_prefixes(name: str) -> str:
    for prefix in WRAPPER_PREFIXES:
        name = name.replace(prefix, "")
    return name


class FSDPBackend(TrainingBackend):
    """FSDP2 + torch AdamW. `dtype` is the parameter (and compute) dtype; log-softmax is float32."""

    def __init__(self, lr: float = 1e-6, weight_decay: float = 0.0, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, grad_clip: float | None = 1.0, dtype: str = "float32",
                 gradient_checkpointing: bool = False, seed: int = 0):
        if dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
        if not lr >= 0:
            raise ValueError(f"lr must be >= 0, got {lr}")
        self.lr, self.weight_decay, self.betas, self.eps = lr, weight_decay, tuple(betas), eps
        self.grad_clip, self.dtype = grad_clip, DTYPES[dtype]
        self.gradient_checkpointing, self.seed = gradient_checkpointing, seed
        self.model: torch.nn.Module | None = None
        self.optimizer: torch.optim.Optimizer | None = None
        self.trainable = False
        self.timings: dict[str, float] = {}

    # ------------------------------------------------------------------ setup
    def setup(self, model_path: str, trainable: bool) -> None:
        """Load the HF model, shard it (layers, then root), build AdamW when trainable. Collective."""
        from transformers import AutoModelForCausalLM

        t0 = time.perf_counter()
        self.rank, self.world_size = hdist.init_distributed()
        if os.environ.get("OMP_NUM_THREADS", "").isdigit():
            torch.set_num_threads(max(1, int(os.environ["OMP_NUM_THREADS"])))
        torch.manual_seed(self.seed)
        self.device = hdist.device()
        self.model_path, self.trainable = str(model_path), trainable

        model = AutoModelForCausalLM.from_pretrained(self.model_path, dtype=self.dtype)
        model.config.use_cache = False
        if trainable and self.gradient_checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if not trainable:
            model.requires_grad_(False)
        mesh = init_device_mesh(self.device.type, (self.world_size,))
        for layer in _find_layers(model):
            fully_shard(layer, mesh=mesh)
        fully_shard(model, mesh=mesh)  # moves every parameter to this rank's shard on self.device
        model.train(trainable)
        self.model = model

        if trainable:
            params = [p for p in model.parameters() if p.requires_grad]
            kw = dict(lr=self.lr, betas=self.betas, eps=self.eps, weight_decay=self.weight_decay)
            try:  # fused AdamW: ~3x faster step on CPU (stack.md); not every device/dtype has it
                self.optimizer = torch.optim.AdamW(params, fused=True, **kw)
            except (RuntimeError, ValueError) as e:
                log.warning("fused AdamW unavailable (%s); using the foreach implementation", e)
                self.optimizer = torch.optim.AdamW(params, **kw)
        self.timings["setup_s"] = time.perf_counter() - t0

    def _require_model(self) -> torch.nn.Module:
        if self.model is None:
            raise RuntimeError("FSDPBackend.setup() must run before this call")
        return self.model

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

    # -------------------------------------------------------------- inference
    @torch.no_grad()
    def forward_logprobs(self, batch: Batch, micro_batch_size: int, temperature: float = 1.0,
                         with_entropy: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Log-probs (and entropy) [B, R] on CPU for this rank's rows, micro-batch by micro-batch.

        Collective: every rank must call it with the same number of micro-batches."""
        model = self._require_model()
        _check_layout(batch)
        order = length_order(batch)  # similar lengths share a micro-batch: less padding computed
        chunks = batch.select(order).chunks_of(micro_batch_size)
        self._same_on_all_ranks(len(chunks), "number of forward micro-batches")
        lps, ents = [], []
        for mb in chunks:
            lp, ent = response_logprobs(model, self._to_device(mb), temperature, with_entropy)
            lps.append(lp.cpu())
            if with_entropy:
                ents.append(ent.cpu())
        inverse = torch.empty_like(order)
        inverse[order] = torch.arange(len(order))
        return torch.cat(lps)[inverse], (torch.cat(ents)[inverse] if with_entropy else None)

    # --------------------------------------------------------------- training
    def train_step(self, micro_batches: list[Batch], loss_fn: LossFn, temperature: float = 1.0) -> dict[str, float]:
        """zero_grad; per micro-batch forward (log-probs + entropy with grad), loss_fn, backward;
        clip by the global grad norm; AdamW step. Collective.

        Scaling is the caller's job: FSDP2 *averages* gradients over ranks (reduce-scatter mean)
        and micro-batch gradients add up, so to get the gradient of a global mean, loss_fn must
        return sum(per-token loss of this micro-batch) / global_token_count * world_size.
        Returns loss_fn's metrics averaged over this rank's micro-batches, plus `loss` (same
        average, unless loss_fn reports one), `grad_norm` (global, before clipping), `lr` and
        `step_skipped` (1.0 when the norm was not finite and the update was skipped).
        """
        model = self._require_model()
        if self.optimizer is None:
            raise RuntimeError("train_step needs a backend set up with trainable=True")
        if not micro_batches:
            raise ValueError("train_step needs at least one micro-batch")
        self._same_on_all_ranks(len(micro_batches), "number of micro-batches")
        t0 = time.perf_counter()
        self.optimizer.zero_grad(set_to_none=True)
        sums: dict[str, float] = {}
        for mb in micro_batches:
            mb = self._to_device(mb)
            logprobs, entropy = response_logprobs(model, mb, temperature, with_entropy=True)
            loss, metrics = loss_fn(mb, logprobs, entropy)
            loss.backward()
            metrics = {"loss": float(loss.detach()), **{k: float(v) for k, v in metrics.items()}}
            for k, v in metrics.items():
                sums[k] = sums.get(k, 0.0) + v
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

    def set_lr(self, lr: float) -> None:
        """Set the learning rate of every parameter group (for a driver-side schedule)."""
        if self.optimizer is None:
            raise RuntimeError("set_lr needs a backend set up with trainable=True")
        for group in self.optimizer.param_groups:
            group["lr"] = lr

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
    def iter_param_buckets(self, bucket_bytes: int) -> Iterator[dict[str, torch.Tensor]]:
        """Full HF-named weights, bucket by bucket (dicts of detached CPU tensors in the model dtype).

        Collective: every rank must run the generator to the end (each step all-gathers the
        next tensors); only rank 0 needs to use the values. A tied weight is yielded once under
        its first name (model.embed_tokens.weight, not lm_head.weight). A bucket holds tensors up
        to ~bucket_bytes (one larger tensor gets a bucket of its own) and is dropped here before
        the next one is gathered, so a rank holds at most one full bucket besides its shard.
        """
        model = self._require_model()
        if bucket_bytes <= 0:
            raise ValueError(f"bucket_bytes must be positive, got {bucket_bytes}")
        seen: set[int] = set()
        bucket: dict[str, torch.Tensor] = {}
        size = 0
        for name, tensor in model.state_dict(keep_vars=True).items():
            if id(tensor) in seen:
                continue
            seen.add(id(tensor))
            nbytes = tensor.numel() * self.dtype.itemsize
            if bucket and size + nbytes > bucket_bytes:
                yield bucket
                bucket, size = {}, 0
            full = tensor.full_tensor() if isinstance(tensor, DTensor) else tensor
            full = full.detach().to("cpu", self.dtype if full.is_floating_point() else full.dtype)
            bucket[_strip_prefixes(name)] = full
            size += nbytes
        if bucket:
            yield bucket

    # ------------------------------------------------------------ checkpoints
    def _dcp_state(self, with_optimizer: bool) -> dict:
        model = self._require_model()
        if with_optimizer:
            if self.optimizer is None:
                raise ValueError("with_optimizer=True needs a backend set up with trainable=True")
            msd, osd = get_state_dict(model, self.optimizer)
            return {"model": msd, "optim": osd}
        return {"model": get_model_state_dict(model)}

    def save(self, path: str, with_optimizer: bool = True) -> None:
        """Sharded model (+ optimizer) state to the folder `path` with torch DCP. Collective."""
        dcp.save(self._dcp_state(with_optimizer), checkpoint_id=str(path))

    def load(self, path: str, with_optimizer: bool = True) -> None:
        """Restore what `save` wrote (same world size or another: DCP reshards). Collective."""
        if not os.path.isdir(path):
            raise FileNotFoundError(f"no checkpoint folder at {path}")
        state = self._dcp_state(with_optimizer)
        dcp.load(state, checkpoint_id=str(path))
        if with_optimizer:
            set_state_dict(self.model, self.optimizer, model_state_dict=state["model"],
                           optim_state_dict=state["optim"])
        else:
            set_model_state_dict(self.model, state["model"])

    def save_hf(self, path: str) -> None:
        """Gather the full weights to rank 0, which writes an HF folder (safetensors + config +
        the tokenizer files of model_path). Collective; returns once the folder is complete."""
        model = self._require_model()
        sd = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        if self.rank == 0:
            os.makedirs(path, exist_ok=True)
            model.save_pretrained(path, state_dict=sd, safe_serialization=True)
            for name in TOKENIZER_FILES:
                src = os.path.join(self.model_path, name)
                if os.path.isfile(src):
                    shutil.copy2(src, os.path.join(path, name))
        del sd
        dist.barrier()
