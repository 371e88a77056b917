"""The `RolloutEngine` seam: what generates text for the trainer.

Lifecycle (one engine per rollout worker process):
    engine = Engine(model_path, config)          # loads weights, allocates KV cache
    engine.generate(prompts, sampling)           # any number of times
    engine.score(sequences, starts)              # teacher-forced log-probs (sync verification)
    engine.begin_weight_update()                 # \
    engine.load_weights({hf_name: tensor, ...})  #  } one weight sync: buckets of HF-named full
    engine.finish_weight_update()                # /  tensors; the engine is unusable in between
                                                 #    (or `load_shared`: one shared-memory buffer laid
                                                 #    out by `plan_shared`, workers/shared_weights.py)
    engine.sleep() / engine.wake_up()            # free / restore memory while training (may be a no-op)
    engine.shutdown()

Failure contract: `load_weights` raises KeyError naming a tensor the model does not have;
`finish_weight_update` leaves the engine serving the new weights or raises. Nothing here checks
that the weights really changed: `workers.weight_sync` verifies every sync from outside.
Callers never branch on the engine type.

Weight fingerprints (what `workers.weight_sync` compares after every sync): for each HF-named
source tensor, `fingerprint(t, engine_dtype)` is computed from what was sent (`UpdateLedger`, in
the rollout worker as each bucket arrives) and the engine computes the same from what it holds
(`held_fingerprints`), after its own name mapping and repacking:
- a 2-D tensor W (out x in): X @ round(W)^T summed in float64, X a fixed 2 x in matrix of +-1
  (exact in every float dtype), round = the engine dtype's rounding: 2 numbers per output row. An
  engine whose linear weights are repacked into a kernel-private layout (vLLM on CPU) gets them by
  running its own kernel on X ("kernel" check), so the check covers what the forward pass really
  multiplies by; a packed tensor (qkv, gate_up) is compared per source slice of the output. A
  tensor the forward pass reads as it is gets fingerprinted directly ("raw" check).
- a 1-D tensor (norms, biases): the rounded values themselves.
The relative error ||held - sent|| / ||sent|| is within `fingerprint_tolerance(kind, dtype)`:
1e-9 for a raw check (the same values summed in float64), 1e-5 + 2 units of roundoff of the
engine dtype for a kernel check (the kernel sums in float32, ~2e-7 measured, and rounds its
output: 7.8e-3 in bf16). A random +-1 X keeps the relative norm of a perturbation
(E||X d||^2 = 2 ||d||^2), so a tensor off by more than the tolerance, relative to its norm, is
caught whatever it does to the model's outputs. For scale: one Adam step at lr 1e-6 changes a
SmolLM2-135M linear weight by 2.5e-6..2.1e-5 of its norm (median 5.3e-6): a raw check sees it,
an fp32 kernel check sees it once a few such steps add up.
"""
from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections import Counter
from dataclasses import dataclass, field

import torch


@dataclass
class SamplingSpec:
    max_new_tokens: int = 128
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = -1            # -1: off
    seed: int | None = None
    stop_token_ids: list[int] = field(default_factory=list)


@dataclass
class Completion:
    token_ids: list[int]       # generated tokens (including a final stop token when one was hit)
    logprobs: list[float]      # log-prob of each generated token under the sampling distribution
    finish_reason: str         # "stop" | "length"


class RolloutEngine(ABC):
    @abstractmethod
    def generate(self, prompts: list[list[int]], sampling: SamplingSpec) -> list[Completion]: ...

    @abstractmethod
    def score(self, sequences: list[list[int]], starts: list[int]) -> list[list[float]]:
        """log p(seq[t] | seq[:t]) for t in [start, len(seq)) of each sequence (temperature 1)."""

    @abstractmethod
    def begin_weight_update(self) -> None: ...

    @abstractmethod
    def load_weights(self, named_tensors: dict[str, torch.Tensor]) -> None: ...

    @abstractmethod
    def finish_weight_update(self) -> None: ...

    # ---- verification (workers.weight_sync) ------------------------------------------------
    @property
    def weight_dtype(self) -> torch.dtype:
        """The dtype the engine holds its weights in (fingerprints round to it)."""
        raise NotImplementedError(f"{type(self).__name__} does not report its weight dtype")

    def weight_names(self) -> tuple[set[str], dict[str, str]]:
        """(HF names a full update must bring, each once; {alias: name} for names that are the
        same engine tensor, e.g. a tied lm_head.weight, which an update may also send)."""
        raise NotImplementedError(f"{type(self).__name__} cannot list its weights")

    def plan_shared(self, directory: str):
        """The layout of a shared-memory weight buffer for this engine (workers/shared_weights.py);
        default: the HF tensors one after another, loaded through `load_weights`."""
        from workers.shared_weights import plan_layout
        names, aliases = self.weight_names()
        return plan_layout(self.weight_shapes(sorted(names)), aliases, self.weight_dtype, directory)

    def load_shared(self, layout, views: dict[str, torch.Tensor]) -> None:
        """Load a written shared buffer inside an open update (`views`: HF name -> its tensor)."""
        self.load_weights(dict(views))

    def weight_shapes(self, names: list[str]) -> dict[str, tuple[int, ...]]:
        """HF name -> shape of the tensor an update brings for it (KeyError for an unknown name)."""
        raise NotImplementedError(f"{type(self).__name__} cannot list its weights' shapes")

    def held_fingerprints(self, names: list[str]) -> dict[str, list[tuple[str, torch.Tensor, str]]]:
        """HF name -> [(where, fingerprint, "raw" | "kernel"), ...] of what the engine holds for it
        (several entries when the engine uses one source tensor in several places, e.g. a tied
        embedding as the input embedding and the output layer); [] when the engine ignores it."""
        raise NotImplementedError(f"{type(self).__name__} cannot fingerprint its weights")

    def unloaded_parameters(self) -> list[str]:
        """Engine-side parameters that the last update did not load (engines that track it)."""
        return []

    def sleep(self) -> None:  # default: nothing to free
        pass

    def wake_up(self) -> None:
        pass

    def shutdown(self) -> None:
        pass


# ---- weight fingerprints ---------------------------------------------------------------------------
FINGERPRINT_ROWS = 2
_SIGNS: dict[int, torch.Tensor] = {}


def fingerprint_signs(width: int) -> torch.Tensor:
    """The fixed FINGERPRINT_ROWS x width matrix of +-1 (float64) both sides multiply by."""
    x = _SIGNS.get(width)
    if x is None:
        g = torch.Generator().manual_seed(0x5EED + width)
        x = _SIGNS[width] = (torch.randint(0, 2, (FINGERPRINT_ROWS, width), generator=g) * 2 - 1).double()
    return x


_CHUNK = 1 << 22  # elements converted to float64 at a time (bounded memory for large tensors)


@torch.no_grad()
def fingerprint(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """What an engine holding `t` in `dtype` must reproduce (see the module docstring), in float64:
    the rounded values for a 1-D tensor, X @ round(t)^T (FINGERPRINT_ROWS x rows) otherwise.
    The sums run in float64, so two fingerprints of the same values agree to ~1e-15 whatever the
    summation order (and a GPU cannot use TF32 for them)."""
    r = t.detach().to(dtype)
    if r.dim() <= 1:
        return r.double().reshape(-1).cpu()
    r = r.reshape(-1, r.shape[-1])
    x = fingerprint_signs(r.shape[1]).to(r.device)
    step = max(1, _CHUNK // r.shape[1])
    return torch.cat([x @ r[i:i + step].double().T for i in range(0, r.shape[0], step)], 1).cpu()


def fingerprint_tolerance(kind: str, dtype: torch.dtype) -> float:
    """Relative tolerance of a fingerprint comparison (see the module docstring)."""
    if kind == "raw":
        return 1e-9  # the same values summed in float64: only the summation order differs
    if kind == "kernel":
        # the kernel sums in float32 (relative error ~2e-7 measured) and rounds its output to the
        # engine dtype (at most 1 unit of roundoff; eps = 2 units)
        return 1e-5 + torch.finfo(dtype).eps
    raise ValueError(f"fingerprint kind must be 'raw' or 'kernel', got {kind!r}")


def relative_error(held: torch.Tensor, sent: torch.Tensor) -> float:
    """||held - sent|| / ||sent|| in float64 (inf for a shape mismatch, nan when held has NaN)."""
    if held.shape != sent.shape:
        return float("inf")
    h, s = held.double(), sent.double()
    return ((h - s).norm() / s.norm().clamp_min(1e-30)).item()


class UpdateLedger:
    """What one weight update sent: how often each HF name came, and its `fingerprint` in the
    engine's dtype (computed as each bucket arrives; `seconds` is the time that took)."""

    def __init__(self, dtype: torch.dtype):
        self.dtype = dtype
        self.counts: Counter[str] = Counter()
        self.fingerprints: dict[str, torch.Tensor] = {}
        self.seconds = 0.0

    def add(self, named_tensors: dict[str, torch.Tensor], skip=lambda name: False) -> None:
        t0 = time.perf_counter()
        for name, t in named_tensors.items():
            if skip(name):
                continue
            self.counts[name] += 1
            self.fingerprints[name] = fingerprint(t, self.dtype)
        self.seconds += time.perf_counter() - t0


def weight_report(engine: RolloutEngine, ledger: UpdateLedger, full: bool) -> dict:
    """Compare what `ledger` says was sent with what `engine` holds now (after the update):
        missing     names a full update must bring that were not sent (full=True only)
        duplicates  names sent more than once in the update
        unloaded    engine parameters the update did not load (full=True, engines that track it)
        checks      [(where, relative error, tolerance, kind)] per engine tensor (or slice)
        seconds     time of this comparison; ledger_seconds: fingerprinting what was sent
    """
    t0 = time.perf_counter()
    expected, aliases = engine.weight_names()
    sent = dict(ledger.counts)
    refs = dict(ledger.fingerprints)
    checks: list[tuple[str, float, float, str]] = []
    for alias, name in aliases.items():
        if alias in refs:
            if name in refs:  # both sent: the trainer's tie must hold, the engine keeps one tensor
                checks.append((f"{alias} (tied to {name}, as sent)", relative_error(refs[alias], refs[name]),
                               fingerprint_tolerance("raw", ledger.dtype), "raw"))
            else:
                refs[name] = refs[alias]
    names = sorted({aliases.get(n, n) for n in sent})
    held = engine.held_fingerprints(names)
    dtype = engine.weight_dtype
    for name in names:
        for where, fp, kind in held.get(name, []):
            checks.append((where, relative_error(fp, refs[name]), fingerprint_tolerance(kind, dtype), kind))
    return {"missing": sorted(expected - set(names)) if full else [],
            "duplicates": sorted(n for n, c in sent.items() if c > 1),
            "unloaded": engine.unloaded_parameters() if full else [],
            "checks": checks, "sent": len(sent), "dtype": str(dtype).replace("torch.", ""),
            "seconds": time.perf_counter() - t0, "ledger_seconds": ledger.seconds}
