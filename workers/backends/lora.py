"""LoRA helpers shared by the training backends and the rollout engines (pure: no collectives).

A LoRA run injects peft LoRA layers into the plain HF model (`inject_lora`: no `PeftModel`
wrapper, so the backends shard and call the HF model exactly as without LoRA). Inside the model a
LoRA module `m` holds `m.base_layer.weight` (frozen) and `m.lora_A.default.weight` [r, in],
`m.lora_B.default.weight` [out, r] (trainable); its output is base(x) + B·A·dropout(x)·alpha/r.

Three views of the same weights:
- model names (`model.layers.0.self_attn.q_proj.lora_A.default.weight`): what the backends hold;
- merged HF names (`model.layers.0.self_attn.q_proj.weight` = W + B·A·alpha/r): `merge_lora`,
  what a full-weight sync and the merged export carry;
- adapter names, peft's saved format (`base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight`):
  `adapter_name`, what an adapter folder (`write_adapter`, reloadable with `PeftModel.from_pretrained`)
  and an adapter-only sync carry.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Iterable, Iterator

import torch

DEFAULT_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
ADAPTER_SUBDIR = "adapter"          # save_hf / save put the peft adapter folder here
SYNC_MODES = ("merge", "adapter")   # weight_sync.lora_mode
ADAPTER_PREFIX = "base_model.model."
ADAPTER_FILE, ADAPTER_CONFIG = "adapter_model.safetensors", "adapter_config.json"


@dataclass
class LoraSpec:
    """LoRA hyper-parameters (config keys actor.lora_rank / lora_alpha / lora_dropout / lora_target_modules)."""
    rank: int
    alpha: float = 16.0
    dropout: float = 0.0
    target_modules: list[str] = field(default_factory=lambda: list(DEFAULT_TARGETS))

    def __post_init__(self) -> None:
        if not isinstance(self.rank, int) or self.rank < 1:
            raise ValueError(f"lora_rank must be a positive int, got {self.rank!r}")
        if not self.alpha > 0:
            raise ValueError(f"lora_alpha must be > 0, got {self.alpha}")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"lora_dropout must be in [0, 1), got {self.dropout}")
        self.target_modules = list(self.target_modules)
        if not self.target_modules or not all(isinstance(t, str) and t for t in self.target_modules):
            raise ValueError(f"lora_target_modules must be a non-empty list of module names, "
                             f"got {self.target_modules!r}")

    @property
    def scaling(self) -> float:
        return self.alpha / self.rank

    @classmethod
    def from_options(cls, rank: int, alpha: float, dropout: float, target_modules) -> "LoraSpec | None":
        """None when rank is 0 (LoRA off)."""
        if rank == 0:
            return None
        return cls(rank, float(alpha), float(dropout), list(target_modules or DEFAULT_TARGETS))

    def peft_config(self, base_model_path: str | None = None):
        from peft import LoraConfig
        return LoraConfig(r=self.rank, lora_alpha=self.alpha, lora_dropout=self.dropout,
                          target_modules=list(self.target_modules), task_type="CAUSAL_LM",
                          base_model_name_or_path=base_model_path)

    def to_dict(self) -> dict:
        return {"rank": self.rank, "alpha": self.alpha, "dropout": self.dropout,
                "target_modules": list(self.target_modules)}


def inject_lora(model: torch.nn.Module, spec: LoraSpec) -> int:
    """Add LoRA layers to `model` in place (peft's initialisation: A Kaiming-uniform, B = 0, so the
    model is unchanged) and freeze everything else; returns the number of trainable parameters.
    peft raises ValueError when no module matches `target_modules`."""
    from peft import inject_adapter_in_model

    inject_adapter_in_model(spec.peft_config(), model)
    n = 0
    for name, p in model.named_parameters():
        p.requires_grad_(is_lora_name(name))
        n += p.numel() if p.requires_grad else 0
    if n == 0:
        raise ValueError(f"LoRA added no trainable parameters (target_modules={spec.target_modules})")
    return n


def is_lora_name(name: str) -> bool:
    return ".lora_A." in name or ".lora_B." in name or ".lora_embedding_" in name


def adapter_name(model_name: str) -> str:
    """Model name of a LoRA weight -> its name in peft's saved adapter format."""
    if ".lora_embedding_" in model_name:
        raise ValueError(f"{model_name}: LoRA on embeddings is not supported (target linear layers)")
    for part in (".lora_A.", ".lora_B."):
        if part in model_name:
            head, tail = model_name.split(part, 1)
            tail = tail.split(".", 1)[1] if "." in tail else tail  # drop the adapter name ("default")
            return f"{ADAPTER_PREFIX}{head}{part}{tail}"
    raise ValueError(f"{model_name} is not a LoRA weight")


def model_name(adapter_tensor_name: str, adapter: str = "default") -> str:
    """Inverse of `adapter_name`: peft's saved name -> the name inside a LoRA-injected model."""
    if not adapter_tensor_name.startswith(ADAPTER_PREFIX):
        raise ValueError(f"{adapter_tensor_name!r} is not an adapter-format name (prefix {ADAPTER_PREFIX!r})")
    name = adapter_tensor_name[len(ADAPTER_PREFIX):]
    for part in (".lora_A.", ".lora_B."):
        if part in name:
            head, tail = name.split(part, 1)
            return f"{head}{part}{adapter}.{tail}"
    raise ValueError(f"{adapter_tensor_name!r} is not a LoRA weight")


def check_adapter_tensors(tensors: dict[str, torch.Tensor], spec: LoraSpec) -> None:
    """KeyError for a name that is not an adapter LoRA weight of a target module, ValueError for
    a rank that is not spec.rank; both name the tensor."""
    for name, t in tensors.items():
        if not name.startswith(ADAPTER_PREFIX) or not (".lora_A." in name or ".lora_B." in name):
            raise KeyError(f"{name!r} is not an adapter-format LoRA tensor name")
        module = name.split(".lora_")[0].rsplit(".", 1)[-1]
        if module not in spec.target_modules:
            raise KeyError(f"{name!r}: module {module!r} is not in lora target_modules {spec.target_modules}")
        r = t.shape[0] if ".lora_A." in name else t.shape[-1]
        if t.dim() != 2 or r != spec.rank:
            raise ValueError(f"tensor {name!r}: shape {tuple(t.shape)} does not have LoRA rank {spec.rank}")


def check_adapter_pairs(tensors: dict[str, torch.Tensor]) -> None:
    """ValueError when a module has lora_A without lora_B or the reverse (an incomplete adapter)."""
    a = {n.replace(".lora_A.", ".") for n in tensors if ".lora_A." in n}
    b = {n.replace(".lora_B.", ".") for n in tensors if ".lora_B." in n}
    if a != b:
        odd = sorted(a ^ b)
        raise ValueError(f"incomplete LoRA adapter: {len(odd)} modules lack lora_A or lora_B, e.g. {odd[:2]}")


def merge_lora(named: Iterable[tuple[str, torch.Tensor]], scaling: float) -> Iterator[tuple[str, torch.Tensor]]:
    """(model name, full tensor) pairs of a LoRA model -> (HF name, tensor) of the merged model:
    each LoRA module's `base_layer.weight`, `lora_A`, `lora_B` (adjacent in state-dict order, but
    any order works) become one `weight` = W + B·A·scaling, computed in float32 and cast back."""
    pending: dict[str, dict[str, torch.Tensor]] = {}
    for name, t in named:
        if ".base_layer." in name:
            prefix, leaf = name.split(".base_layer.", 1)
            if leaf != "weight":  # the bias is unchanged by LoRA
                yield f"{prefix}.{leaf}", t
                continue
            key = "W"
        elif ".lora_A." in name or ".lora_B." in name:
            part = ".lora_A." if ".lora_A." in name else ".lora_B."
            prefix, key = name.split(part, 1)[0], part[1:-1]
        elif ".lora_embedding_" in name:
            raise ValueError(f"{name}: LoRA on embeddings is not supported (target linear layers)")
        else:
            yield name, t
            continue
        parts = pending.setdefault(prefix, {})
        parts[key] = t
        if len(parts) == 3:
            del pending[prefix]
            w, a, b = parts["W"], parts["lora_A"], parts["lora_B"]
            merged = w.float() + (b.float() @ a.float()) * scaling
            yield f"{prefix}.weight", merged.to(w.dtype)
    if pending:
        raise ValueError(f"incomplete LoRA modules (need base_layer.weight, lora_A, lora_B): {sorted(pending)[:3]}")


def bucketize(named: Iterable[tuple[str, torch.Tensor]], bucket_bytes: int) -> Iterator[dict[str, torch.Tensor]]:
    """Group (name, tensor) pairs into dicts of up to ~bucket_bytes (a larger tensor alone)."""
    if bucket_bytes <= 0:
        raise ValueError(f"bucket_bytes must be positive, got {bucket_bytes}")
    bucket: dict[str, torch.Tensor] = {}
    size = 0
    for name, t in named:
        nbytes = t.numel() * t.element_size()
        if bucket and size + nbytes > bucket_bytes:
            yield bucket
            bucket, size = {}, 0
        bucket[name] = t
        size += nbytes
    if bucket:
        yield bucket


def write_adapter(path: str, tensors: dict[str, torch.Tensor], spec: LoraSpec, base_model_path: str) -> None:
    """A peft adapter folder (adapter_config.json + adapter_model.safetensors) from adapter-named
    tensors; `PeftModel.from_pretrained(base, path)` and vLLM's `LoRARequest` read it."""
    from safetensors.torch import save_file

    for name in tensors:
        if not name.startswith(ADAPTER_PREFIX) or not is_lora_name(name):
            raise ValueError(f"{name!r} is not an adapter-format LoRA tensor name")
    os.makedirs(path, exist_ok=True)
    save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, os.path.join(path, ADAPTER_FILE),
              metadata={"format": "pt"})
    spec.peft_config(str(base_model_path)).save_pretrained(path)


def read_adapter_config(path: str) -> dict:
    with open(os.path.join(path, ADAPTER_CONFIG)) as f:
        return json.load(f)
