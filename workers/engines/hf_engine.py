"""`HFEngine`: a transformers `generate` rollout engine, the fallback when vLLM is unavailable.

Slower than vLLM (no paged KV cache, no continuous batching) but has no internals to track.
Log-probs of sampled tokens come from `generate`'s processed scores (temperature, top-k, top-p
applied), the same definition as `VLLMEngine` with `logprobs_mode="processed_logprobs"`; greedy
requests report raw log-probs. Weight updates copy into the live parameters in place.

LoRA adapter serving (`lora={"rank", "alpha", "dropout", "target_modules"}`): the first update that
carries adapter tensors (peft adapter names) injects peft LoRA layers into the model (lora.py), and
every such update copies the adapter into them; base tensors keep their HF names throughout.

Sync verification: the forward pass reads the parameters as they are, so every fingerprint is a
"raw" one over the live tensor (workers/engines/base.py).
"""
from __future__ import annotations

import torch

from workers.backends.lora import (LoraSpec, check_adapter_pairs, check_adapter_tensors, inject_lora, is_lora_name,
                                   model_name)
from workers.engines.base import Completion, RolloutEngine, SamplingSpec, fingerprint


def _as_list(x) -> list[int]:
    if x is None:
        return []
    return [int(v) for v in (x if isinstance(x, (list, tuple)) else [x])]


class HFEngine(RolloutEngine):
    def __init__(self, model_path: str, dtype: str = "float32", seed: int = 0, device: str | None = None,
                 lora: dict | None = None):
        from transformers import AutoModelForCausalLM

        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.model = AutoModelForCausalLM.from_pretrained(model_path, dtype=getattr(torch, dtype))
        self.model.to(self.device).eval()
        self.seed = seed
        self._calls = 0
        self._updating = False
        gen = self.model.generation_config
        self.eos_ids = _as_list(gen.eos_token_id) or _as_list(self.model.config.eos_token_id)
        pad = gen.pad_token_id if gen.pad_token_id is not None else self.model.config.pad_token_id
        self.pad_id = int(pad if pad is not None else (self.eos_ids[0] if self.eos_ids else 0))
        # Detached views sharing storage with the live parameters/buffers; tied names share one tensor.
        self._tensors = self.model.state_dict()
        # What a full update must bring: the parameters, each once (a tied head is an alias).
        self._expected = {n for n, _ in self.model.named_parameters()}
        ptrs = {self._tensors[n].data_ptr(): n for n in self._expected}
        self._aliases = {n: ptrs[t.data_ptr()] for n, t in self._tensors.items()
                         if n not in self._expected and t.data_ptr() in ptrs}
        self.lora = LoraSpec(**lora) if lora else None
        self._staged_adapter: dict[str, torch.Tensor] = {}
        self.adapter_id = 0  # updates that brought an adapter (0: none yet, the base model)

    # ---- generation -------------------------------------------------------------------------
    def _check_serving(self) -> None:
        if self._updating:
            raise RuntimeError("engine is between begin_weight_update and finish_weight_update")

    @torch.no_grad()
    def generate(self, prompts: list[list[int]], sampling: SamplingSpec) -> list[Completion]:
        from transformers import GenerationConfig

        self._check_serving()
        if sampling.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {sampling.max_new_tokens}")
        for i, p in enumerate(prompts):
            if not p:
                raise ValueError(f"prompts[{i}] is empty")
        width = max(len(p) for p in prompts)
        ids = torch.full((len(prompts), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, p in enumerate(prompts):  # left padding: generation continues at the right edge
            ids[i, width - len(p):] = torch.tensor(p)
            mask[i, width - len(p):] = 1
        stop = sorted(set(self.eos_ids) | set(sampling.stop_token_ids))
        greedy = sampling.temperature <= 1e-5
        cfg = GenerationConfig(
            max_new_tokens=sampling.max_new_tokens, min_new_tokens=0, do_sample=not greedy,
            temperature=1.0 if greedy else sampling.temperature, top_p=sampling.top_p,
            top_k=None if sampling.top_k in (-1, 0) else sampling.top_k,
            eos_token_id=stop or None, pad_token_id=self.pad_id,
            output_scores=True, return_dict_in_generate=True)
        self._calls += 1
        seed = sampling.seed if sampling.seed is not None else self.seed * 1_000_003 + self._calls
        devices = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):  # seeded without disturbing the caller's RNG
            torch.manual_seed(seed)
            out = self.model.generate(input_ids=ids.to(self.device), attention_mask=mask.to(self.device),
                                      generation_config=cfg)
        new = out.sequences[:, width:].cpu()
        # scores: one [batch, vocab] tensor per step, after the logits processors (the sampling dist.)
        logprobs = torch.stack([torch.log_softmax(s.float(), -1) for s in out.scores], 1).cpu()
        token_lp = logprobs.gather(-1, new.unsqueeze(-1)).squeeze(-1)
        stop_set = set(stop)
        result = []
        for i in range(len(prompts)):
            toks, lps, reason = [], [], "length"
            for t in range(new.shape[1]):
                tok = int(new[i, t])
                toks.append(tok)
                lps.append(float(token_lp[i, t]))
                if tok in stop_set:
                    reason = "stop"
                    break
            result.append(Completion(token_ids=toks, logprobs=lps, finish_reason=reason))
        return result

    @torch.no_grad()
    def score(self, sequences: list[list[int]], starts: list[int]) -> list[list[float]]:
        self._check_serving()
        if len(sequences) != len(starts):
            raise ValueError(f"starts has {len(starts)} entries for {len(sequences)} sequences")
        for i, (seq, st) in enumerate(zip(sequences, starts)):
            if not 1 <= st <= len(seq):
                raise ValueError(f"starts[{i}]={st} outside [1, {len(seq)}] (token 0 has no log-prob)")
        width = max(len(s) for s in sequences)
        ids = torch.full((len(sequences), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, s in enumerate(sequences):  # right padding: causal, so padding never reaches real tokens
            ids[i, :len(s)] = torch.tensor(s)
            mask[i, :len(s)] = 1
        logits = self.model(input_ids=ids.to(self.device), attention_mask=mask.to(self.device)).logits
        lp = torch.log_softmax(logits.float(), -1)[:, :-1].gather(-1, ids[:, 1:].to(self.device).unsqueeze(-1))
        lp = lp.squeeze(-1).cpu()
        return [lp[i, st - 1:len(s) - 1].tolist() for i, (s, st) in enumerate(zip(sequences, starts))]

    # ---- weight update ----------------------------------------------------------------------
    def begin_weight_update(self) -> None:
        self._updating = True

    @torch.no_grad()
    def load_weights(self, named_tensors: dict[str, torch.Tensor]) -> None:
        if not self._updating:
            raise RuntimeError("load_weights called before begin_weight_update")
        adapter = {k: v for k, v in named_tensors.items() if is_lora_name(k)}
        if adapter:
            if self.lora is None:
                raise KeyError(f"engine was built without LoRA; cannot load adapter tensor {next(iter(adapter))!r}")
            check_adapter_tensors(adapter, self.lora)
        named_tensors = {k: v for k, v in named_tensors.items() if k not in adapter}
        for name, t in named_tensors.items():  # check the whole bucket before touching anything
            if name not in self._tensors:
                raise KeyError(f"model has no tensor named {name!r}")
            if t.shape != self._tensors[name].shape:
                raise ValueError(f"tensor {name!r}: shape {tuple(t.shape)} != model's "
                                 f"{tuple(self._tensors[name].shape)}")
        # In-place copy (what load_state_dict does, minus its per-module hook walk); a tied name
        # writes the one shared tensor.
        for name, t in named_tensors.items():
            self._tensors[name].copy_(t)
        self._staged_adapter.update(adapter)

    @torch.no_grad()
    def finish_weight_update(self) -> None:
        if not self._updating:
            raise RuntimeError("finish_weight_update called before begin_weight_update")
        if self._staged_adapter:
            self._apply_adapter(self._staged_adapter)
            self._staged_adapter = {}
        self._updating = False

    # ---- verification -----------------------------------------------------------------------
    @property
    def weight_dtype(self) -> torch.dtype:
        return self.model.dtype

    def weight_names(self) -> tuple[set[str], dict[str, str]]:
        return set(self._expected), dict(self._aliases)

    def weight_shapes(self, names: list[str]) -> dict[str, tuple[int, ...]]:
        return {n: tuple(self._tensors[n].shape) for n in names}

    def held_fingerprints(self, names: list[str]) -> dict[str, list[tuple[str, torch.Tensor, str]]]:
        out = {}
        for name in names:
            if name not in self._tensors:
                raise KeyError(f"model has no tensor named {name!r}")
            out[name] = [(name, fingerprint(self._tensors[name], self._tensors[name].dtype), "raw")]
        return out

    def _apply_adapter(self, tensors: dict[str, torch.Tensor]) -> None:
        check_adapter_pairs(tensors)
        if self.adapter_id == 0:  # first adapter: add LoRA layers; base weights move to `base_layer`
            inject_lora(self.model, self.lora)
            self.model.to(self.device).eval()
        params = dict(self.model.named_parameters())
        targets = {}
        for name, t in tensors.items():
            inner = model_name(name)
            if inner not in params:
                raise KeyError(f"adapter tensor {name!r}: the model has no LoRA weight {inner!r}")
            if params[inner].shape != t.shape:
                raise ValueError(f"adapter tensor {name!r}: shape {tuple(t.shape)} != {tuple(params[inner].shape)}")
            targets[inner] = t
        for inner, t in targets.items():
            params[inner].copy_(t)
        self.adapter_id += 1
