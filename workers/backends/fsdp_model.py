"""Pure model-side helpers of the FSDP backend: sequence layout, response log-probs / values,
HF model loading for both model kinds, module lookup. Nothing here is a collective.

Model kinds (see base.py): "causal_lm" (the policy: `AutoModelForCausalLM`) and "value" (a critic:
the same backbone with a scalar head, `AutoModelForTokenClassification(num_labels=1)`).
"""
from __future__ import annotations

import copy
import inspect
import os
import shutil

import torch

from orchestrator.batch import Batch
from workers.backends.base import MODEL_KINDS
# Where HF models keep their decoder blocks (Llama/Qwen/Mistral, OPT, GPT-2/Falcon, GPT-NeoX).
LAYER_PATHS = ("model.layers", "model.decoder.layers", "transformer.h", "gpt_neox.layers")
# Prefixes that wrappers (FSDP1, activation checkpointing, torch.compile) add to state-dict keys.
WRAPPER_PREFIXES = ("_fsdp_wrapped_module.", "_checkpoint_wrapped_module.", "_orig_mod.")
LAYOUT_FIELDS = ("input_ids", "attention_mask", "position_ids", "responses")
VALUE_HEAD = "score"  # the scalar head's module name in HF *ForTokenClassification models
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json",
                   "merges.txt", "tokenizer.model", "added_tokens.json", "chat_template.jinja",
                   "chat_template.json")


def check_layout(batch: Batch) -> tuple[int, int]:
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


def drop_padding_columns(t: dict, r: int) -> tuple[dict, int]:
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
    if "response_segments" in t:
        keep["response_segments"] = t["response_segments"][:, :r_used]
    return keep, r_used


def segment_attention(attention_mask: torch.Tensor, segments: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The additive 4-D mask [b, 1, L, L] of a prefix-packed row (workers/prefix_pack.py): causal,
    no padding, and a response token sees the prompt and the earlier tokens of its own segment only,
    so each segment is scored as if it followed the prompt alone. A padding query sees itself (no
    all-masked softmax row)."""
    b, L = attention_mask.shape
    r = segments.shape[1]
    seg = torch.cat([torch.zeros(b, L - r, dtype=segments.dtype, device=segments.device), segments], 1)
    real = attention_mask.bool()
    causal = torch.ones(L, L, dtype=torch.bool, device=real.device).tril()
    allowed = causal & real[:, None, :] & ((seg[:, None, :] == 0) | (seg[:, None, :] == seg[:, :, None]))
    allowed |= torch.eye(L, dtype=torch.bool, device=real.device)
    mask = torch.zeros(b, 1, L, L, dtype=dtype, device=real.device)
    return mask.masked_fill_(~allowed[:, None], torch.finfo(dtype).min)


def segment_sources(segments: torch.Tensor) -> torch.Tensor:
    """[b, R] index of the kept logits that predict each response token: its left neighbour's
    (j) inside a segment, the last prompt token's (0) for a segment's first token."""
    j = torch.arange(segments.shape[1], device=segments.device).expand_as(segments)
    same = torch.zeros_like(segments, dtype=torch.bool)
    same[:, 1:] = segments[:, 1:] == segments[:, :-1]
    return torch.where(same, j, torch.zeros_like(j))


def _finish(x: torch.Tensor, t: dict, r: int, r_full: int) -> torch.Tensor:
    """Zero the padding positions (whether or not their column was dropped) and pad back to R."""
    x = x * t["attention_mask"][:, -r:].to(x.dtype)
    return torch.nn.functional.pad(x, (0, r_full - r)) if r < r_full else x


def response_logprobs(model: torch.nn.Module, batch: Batch, temperature: float = 1.0,
                      with_entropy: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Log-probs [b, R] of `responses` (and the entropy [b, R]) under `model` at `temperature`.

    Pure: works on a plain HF model or an FSDP2-sharded one, grad mode is the caller's. The token
    at response position j is predicted by the logits at sequence position P-1+j; only those R
    positions go through the lm_head (`logits_to_keep`), the softmax runs in float32. Columns that
    are padding in every row are not computed; padding positions report 0.

    A prefix-packed batch (a `response_segments` tensor, workers/prefix_pack.py) holds several
    responses of one prompt per row, one after another: they attend to the prompt and to their own
    segment only (`segment_attention`), and a segment's first token is predicted by the last
    prompt token. Each token's log-prob then equals that of the unpacked (prompt, response) row.
    """
    _, r_full = check_layout(batch)
    if not temperature > 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    t, r = drop_padding_columns(batch.tensors, r_full)
    kwargs = {}
    if "logits_to_keep" in inspect.signature(model.forward).parameters:
        kwargs["logits_to_keep"] = r + 1  # positions P-1 .. P+R-1; the last one predicts nothing we need
    segments = t.get("response_segments")
    mask = t["attention_mask"]
    if segments is not None:
        mask = segment_attention(mask, segments, next(model.parameters()).dtype)
    out = model(input_ids=t["input_ids"], attention_mask=mask, position_ids=t["position_ids"],
                use_cache=False, **kwargs)
    logits = out.logits[:, -(r + 1):-1].float()
    if temperature != 1.0:
        logits = logits / temperature
    lse = torch.logsumexp(logits, dim=-1)
    tokens = t["responses"].long()
    entropy = None
    if segments is None:
        logprobs = logits.gather(-1, tokens.unsqueeze(-1)).squeeze(-1) - lse
    else:
        src = segment_sources(segments)
        rows = torch.arange(len(tokens), device=tokens.device)[:, None]
        logprobs = logits[rows, src, tokens] - lse.gather(1, src)
    if with_entropy:
        # -(p * logp).sum() == lse - (p * logits).sum(): no second [b, R, V] log-softmax tensor
        entropy = lse - (torch.softmax(logits, dim=-1) * logits).sum(-1)
        if segments is not None:
            entropy = entropy.gather(1, segment_sources(segments))
    return _finish(logprobs, t, r, r_full), (None if entropy is None else _finish(entropy, t, r, r_full))


def response_values(model: torch.nn.Module, batch: Batch) -> torch.Tensor:
    """Values [b, R] (float32) of a value model (scalar head, output `.logits` [b, L, 1]).

    Same alignment as `response_logprobs`: V at response position j is the head's output at
    sequence position P-1+j, i.e. the state *before* response token j is emitted (the prompt plus
    tokens < j). Pure; grad mode is the caller's; padding positions report 0.
    """
    _, r_full = check_layout(batch)
    t, r = drop_padding_columns(batch.tensors, r_full)
    out = model(input_ids=t["input_ids"], attention_mask=t["attention_mask"], position_ids=t["position_ids"],
                use_cache=False)
    logits = out.logits
    if logits.dim() != 3 or logits.shape[-1] != 1:
        raise ValueError(f"a value model must output logits [b, L, 1], got {tuple(logits.shape)} "
                         f"from {type(model).__name__} (load it with kind='value')")
    values = logits[:, -(r + 1):-1, 0].float()
    return _finish(values, t, r, r_full)


def load_hf_model(path: str, kind: str, dtype: torch.dtype, seed: int,
                  value_head_std: float | None = None) -> torch.nn.Module:
    """The HF model of `kind` from the folder `path`, on CPU, unsharded.

    kind="value": the backbone with a 1-output token-classification head, classifier dropout off
    (dropout on the value head would make V noisy and the update irreproducible). When the folder
    has no head yet (a policy checkpoint), the head is initialized here, deterministically from
    `seed` and identically on every rank: weight ~ N(0, std²) with std = value_head_std, by default
    1/(hidden+1) (OpenRLHF's choice: initial values ≈ 0 but a non-zero gradient into the backbone
    from the first step; std 0 gives an all-zero head, whose first step moves only the head);
    bias 0. A folder that already has a head (a saved critic) keeps its weights.
    """
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForTokenClassification

    if kind not in MODEL_KINDS:
        raise ValueError(f"model kind must be one of {list(MODEL_KINDS)}, got {kind!r}")
    if kind == "causal_lm":
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
        model.config.use_cache = False
        return model
    config = AutoConfig.from_pretrained(path, num_labels=1)
    config.classifier_dropout = 0.0  # a config attribute, not a from_pretrained kwarg (Llama rejects it)
    config.use_cache = False
    model, info = AutoModelForTokenClassification.from_pretrained(path, config=config, dtype=dtype,
                                                                  output_loading_info=True)
    head = getattr(model, VALUE_HEAD, None)
    if not isinstance(head, torch.nn.Linear) or head.out_features != 1:
        raise ValueError(f"{type(model).__name__} has no 1-output linear head {VALUE_HEAD!r}")
    missing = set(info["missing_keys"])
    head_keys = {f"{VALUE_HEAD}.weight", f"{VALUE_HEAD}.bias"}
    if missing - head_keys:
        raise ValueError(f"value model from {path}: backbone weights missing from the checkpoint: "
                         f"{sorted(missing - head_keys)[:5]}")
    if missing:
        std = 1.0 / (head.in_features + 1) if value_head_std is None else float(value_head_std)
        if not std >= 0:
            raise ValueError(f"value_head_std must be >= 0, got {value_head_std}")
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            if f"{VALUE_HEAD}.weight" in missing:
                head.weight.copy_(torch.randn(head.weight.shape, generator=g, dtype=torch.float32) * std)
            if head.bias is not None and f"{VALUE_HEAD}.bias" in missing:
                head.bias.zero_()
    return model


def find_layers(model: torch.nn.Module) -> torch.nn.ModuleList:
    for path in LAYER_PATHS:
        mod = model
        for part in path.split("."):
            mod = getattr(mod, part, None)
            if mod is None:
                break
        if isinstance(mod, torch.nn.ModuleList) and len(mod) > 0:
            return mod
    raise ValueError(f"cannot find the decoder layers of {type(model).__name__}: tried {', '.join(LAYER_PATHS)}")


def strip_prefixes(name: str) -> str:
    for prefix in WRAPPER_PREFIXES:
        name = name.replace(prefix, "")
    return name


def copy_tokenizer_files(src_dir: str, dst_dir: str) -> None:
    for name in TOKENIZER_FILES:
        src = os.path.join(src_dir, name)
        if os.path.isfile(src):
            shutil.copy2(src, os.path.join(dst_dir, name))


def write_hf_folder(path: str, state_dict: dict[str, torch.Tensor], model: torch.nn.Module, model_path: str,
                    architecture: str | None = None) -> None:
    """An HF model folder from full HF-named tensors: model.safetensors, config.json (architecture:
    given, else type(model); pass the class name from before sharding, FSDP2 renames classes),
    generation config, tokenizer files of `model_path`. Written directly with safetensors, so a
    sharded or LoRA-injected `model` is only asked for its config. A tied head must be absent
    from `state_dict` (the config ties it)."""
    from safetensors.torch import save_file

    os.makedirs(path, exist_ok=True)
    weights = os.path.join(path, "model.safetensors")
    save_file({k: v.contiguous() for k, v in state_dict.items()}, weights, metadata={"format": "pt"})
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(weights, 0o666 & ~umask)  # safetensors creates it 0600; the rest of the folder is 0644
    config = copy.deepcopy(model.config)
    config.architectures = [architecture or type(model).__name__]
    config.save_pretrained(path)
    gen = getattr(model, "generation_config", None)
    if gen is not None and getattr(model, "can_generate", lambda: False)():
        gen.save_pretrained(path)
    copy_tokenizer_files(model_path, path)
