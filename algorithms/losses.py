"""Token-level loss pieces: masked statistics, loss aggregation, PPO clip, value-clipped critic
loss, KL estimators, entropy.

Masks are 0/1 (bool, int or float) with the shape of the per-token tensor. Values at masked-out
positions never reach a result (they may be inf/nan padding), not even through gradients.

Deviations from verl (``core_algos.agg_loss`` + ``dp_actor``), kept on purpose:
* The seq-mean modes (seq-mean-token-sum-norm included) count only rows with at least one
  response token; verl's seq-mean-token-sum-norm divides by all rows of the mini-batch (its
  1/grad_accum). The two differ only on the all-masked padding rows hyflow adds to give every rank
  an equal shard, which are not samples.
* seq-mean-token-sum-norm's default constant is T = mask.shape[1], the response width of the batch.
  verl's rollout pads to max_response_length, so its T is a true constant; hyflow's driver trims
  all-padding columns (workers/rollout.trim_padding), so the default T is the step's longest
  response. Pass ``norm_const`` (e.g. rollout.max_new_tokens) for Dr.GRPO's fixed constant.
"""
from __future__ import annotations

import torch

from .registry import register_policy_loss

AGG_MODES = ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm")
KL_KINDS = {"k1": "k1", "kl": "k1", "k2": "k2", "mse": "k2", "k3": "k3", "low_var_kl": "k3"}


def _masked(x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(x with masked-out entries replaced by 0, mask as x's dtype)."""
    if mask.shape != x.shape:
        raise ValueError(f"mask shape {tuple(mask.shape)} != tensor shape {tuple(x.shape)}")
    m = mask.to(dtype=x.dtype, device=x.device)
    # where() (not x * m) so that inf/nan padding neither leaks into values nor into gradients
    return torch.where(m != 0, x, torch.zeros((), dtype=x.dtype, device=x.device)), m


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim=None) -> torch.Tensor:
    """Mean of x over mask != 0 (over `dim`, or everything); 0 where nothing is masked in."""
    xs, m = _masked(x, mask)
    total = xs.sum() if dim is None else xs.sum(dim)
    count = m.sum() if dim is None else m.sum(dim)
    return torch.where(count > 0, total / count.clamp(min=1), torch.zeros_like(total))


def masked_whiten(x: torch.Tensor, mask: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """(x − mean) / sqrt(var + eps) with mean and unbiased variance over mask != 0; 0 off-mask.

    Used to normalise advantages over the whole batch (e.g. REINFORCE++).
    """
    xs, m = _masked(x, mask)
    n = m.sum()
    if n < 2:
        raise ValueError(f"masked_whiten needs at least 2 unmasked elements, mask has {int(n)}")
    mean = xs.sum() / n
    dev = torch.where(m != 0, xs - mean, torch.zeros_like(xs))
    var = (dev * dev).sum() / (n - 1)
    return dev * torch.rsqrt(var + eps)


def aggregate(loss_mat: torch.Tensor, mask: torch.Tensor, mode: str = "token-mean",
              norm_const: float | None = None, global_tokens: float | None = None) -> torch.Tensor:
    """Reduce a [B, T] per-token loss to a scalar.

    * "token-mean": Σ_{i,t} m·L / Σ m. With ``global_tokens`` the divisor is that number instead:
      a data-parallel rank (or micro-batch) passes the token count of the whole mini-batch over
      all ranks, so the per-rank losses *sum* to the exact global token-mean. If the gradient
      reduction averages over ranks (FSDP / DDP default), scale the loss by the world size.
    * "seq-mean-token-mean": mean over rows of each row's token mean.
    * "seq-mean-token-sum": mean over rows of each row's token sum.
      (Both seq-mean modes average over rows with at least one token; padding rows are ignored.)
    * "seq-mean-token-sum-norm": (1/G)·Σ_{i,t} m·L / norm_const over the G rows with at least one
      token; norm_const defaults to T = mask.shape[1]. Dr.GRPO's constant normaliser (Liu et al.
      2025: GRPO's 1/|o_i| replaced by a constant, no length bias), equal to verl's per-micro-batch
      Σ/T scaled by 1/grad_accum. Like the other seq-mean modes, a data-parallel rank (or
      micro-batch) scales its result by its share rows/global_rows of the mini-batch (see
      workers/actor.py), so the loss scale does not grow with the number of rows.
    """
    if mode not in AGG_MODES:
        raise ValueError(f"unknown loss aggregation mode {mode!r}; choose one of {list(AGG_MODES)}")
    if loss_mat.ndim != 2:
        raise ValueError(f"loss_mat must be [B, T], got shape {tuple(loss_mat.shape)}")
    if global_tokens is not None and mode != "token-mean":
        raise ValueError(f"global_tokens only applies to mode 'token-mean', not {mode!r}")
    if norm_const is not None and mode != "seq-mean-token-sum-norm":
        raise ValueError(f"norm_const only applies to mode 'seq-mean-token-sum-norm', not {mode!r}")
    xs, m = _masked(loss_mat, mask)
    if mode == "token-mean":
        if global_tokens is None:
            return masked_mean(loss_mat, mask)
        if not global_tokens > 0:
            raise ValueError(f"global_tokens must be > 0, got {global_tokens}")
        return xs.sum() / global_tokens
    row_tokens = m.sum(-1)
    row = xs.sum(-1)
    if mode == "seq-mean-token-sum-norm":
        norm = mask.shape[1] if norm_const is None else norm_const
        if not norm > 0:
            raise ValueError(f"norm_const must be > 0, got {norm}")
        row = row / norm
    if mode == "seq-mean-token-mean":
        row = row / row_tokens.clamp(min=1)
    return masked_mean(row, row_tokens > 0)


@register_policy_loss("ppo_clip")
def ppo_clip_loss(logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor,
                  mask: torch.Tensor, clip_low: float = 0.2, clip_high: float = 0.2,
                  dual_clip: float | None = 3.0, agg: str = "token-mean",
                  global_tokens: float | None = None, norm_const: float | None = None,
                  ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """PPO clipped surrogate (Schulman et al. 2017, Eq. 7) with dual clip (Ye et al. 2020,
    "Mastering Complex Control in MOBA Games with Deep RL").

    ρ = exp(logp − old); L = max(−A·ρ, −A·clip(ρ, 1−clip_low, 1+clip_high)) per token;
    for A < 0 with dual_clip = c: L = min(L, −c·A). Aggregated with ``aggregate(agg, ...)``.
    Metrics (detached, over this call's masked tokens): clipfrac (the clipped branch is strictly
    larger), dual_clipfrac (the dual-clip bound is taken), ppo_kl (mean of old − logp).
    """
    if not (0 <= clip_low < 1 and clip_high >= 0):
        raise ValueError(f"need 0 <= clip_low < 1 and clip_high >= 0, got {clip_low}, {clip_high}")
    if dual_clip is not None and not dual_clip > 1:
        raise ValueError(f"dual_clip must be > 1 (or None), got {dual_clip}")
    for name, t in (("old_logprobs", old_logprobs), ("advantages", advantages), ("mask", mask)):
        if t.shape != logprobs.shape:
            raise ValueError(f"{name} shape {tuple(t.shape)} != logprobs shape "
                             f"{tuple(logprobs.shape)}")
    valid = mask.to(logprobs.device) != 0
    zero = torch.zeros((), dtype=logprobs.dtype, device=logprobs.device)
    # zero off-mask (padding may be ±inf) and bound log ρ so exp() cannot overflow
    log_ratio = torch.where(valid, logprobs - old_logprobs, zero).clamp(-20.0, 20.0)
    adv = torch.where(valid, advantages.to(logprobs.dtype), zero)
    ratio = torch.exp(log_ratio)
    loss_unclipped = -adv * ratio
    loss_clipped = -adv * ratio.clamp(1.0 - clip_low, 1.0 + clip_high)
    loss = torch.maximum(loss_unclipped, loss_clipped)
    clipped = loss_clipped > loss_unclipped
    dual = torch.zeros_like(clipped)
    if dual_clip is not None:
        bound = -dual_clip * adv
        dual = (adv < 0) & (bound < loss)
        loss = torch.where(dual, bound, loss)
    metrics = {
        "clipfrac": masked_mean(clipped.to(logprobs.dtype), mask).detach(),
        "dual_clipfrac": masked_mean(dual.to(logprobs.dtype), mask).detach(),
        "ppo_kl": masked_mean(-log_ratio, mask).detach(),
    }
    return aggregate(loss, mask, agg, norm_const=norm_const, global_tokens=global_tokens), metrics


def value_loss(values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor,
               clip_range_value: float | None, agg: str = "token-mean", global_tokens: float | None = None,
               norm_const: float | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Value-clipped critic loss (the PPO baselines / verl form): per token
    ½·max((V − R)², (clip(V, V_old − ε_v, V_old + ε_v) − R)²), aggregated with ``aggregate(agg)``.

    The clipped branch keeps the critic from moving a value far from the one the advantages were
    computed with; ``clip_range_value=None`` gives the plain ½(V − R)². Metrics (detached, over this
    call's masked tokens): vf_clipfrac (the clipped error is strictly larger), vpred_mean (mean V).
    """
    if clip_range_value is not None and not clip_range_value >= 0:
        raise ValueError(f"clip_range_value must be >= 0 (or None), got {clip_range_value}")
    for name, t in (("old_values", old_values), ("returns", returns), ("mask", mask)):
        if t.shape != values.shape:
            raise ValueError(f"{name} shape {tuple(t.shape)} != values shape {tuple(values.shape)}")
    valid = mask.to(values.device) != 0
    zero = torch.zeros((), dtype=values.dtype, device=values.device)
    v = torch.where(valid, values, zero)
    ret = torch.where(valid, returns.to(values.dtype), zero)
    err = (v - ret) ** 2
    clipped = torch.zeros_like(valid)
    if clip_range_value is not None:
        old = torch.where(valid, old_values.to(values.dtype), zero)
        v_clip = old + (v - old).clamp(-clip_range_value, clip_range_value)
        err_clip = (v_clip - ret) ** 2
        clipped = err_clip > err
        err = torch.maximum(err, err_clip)
    metrics = {"vf_clipfrac": masked_mean(clipped.to(values.dtype), mask).detach(),
               "vpred_mean": masked_mean(values.detach(), mask)}
    return 0.5 * aggregate(err, mask, agg, norm_const=norm_const, global_tokens=global_tokens), metrics


def kl_penalty(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, kind: str = "k3") -> torch.Tensor:
    """Per-token KL(π‖π_ref) estimate from sampled-token log-probs (Schulman 2020, "Approximating
    KL divergence"): k1 = logp − ref; k2 = ½(logp − ref)²; k3 = exp(ref − logp) − (ref − logp) − 1,
    clamped to [−10, 10]. Aliases: kl = k1, mse = k2, low_var_kl = k3."""
    if kind not in KL_KINDS:
        raise ValueError(f"unknown KL kind {kind!r}; choose one of {sorted(KL_KINDS)}")
    if ref_logprobs.shape != logprobs.shape:
        raise ValueError(f"ref_logprobs shape {tuple(ref_logprobs.shape)} != logprobs shape "
                         f"{tuple(logprobs.shape)}")
    diff = logprobs - ref_logprobs
    kind = KL_KINDS[kind]
    if kind == "k1":
        return diff
    if kind == "k2":
        return 0.5 * diff * diff
    # bound the exponent first: exp overflow would give inf and a nan gradient through the clamp
    # (any |ref − logp| ≥ 20 is already far past the ±10 clamp, so values are unchanged)
    z = (-diff).clamp(-20.0, 20.0)
    return (torch.exp(z) - z - 1.0).clamp(-10.0, 10.0)


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """Entropy −Σ_v p_v log p_v over the last dim, as logsumexp(l) − Σ_v p_v·l_v (stable for large
    logits; −inf logits, i.e. banned tokens, contribute 0). Half/bfloat16 input is computed and
    returned in float32."""
    if logits.dtype in (torch.float16, torch.bfloat16):
        logits = logits.float()
    # −inf -> the most negative finite value: same softmax, but p·l is 0·finite instead of 0·inf
    logits = logits.masked_fill(torch.isneginf(logits), torch.finfo(logits.dtype).min)
    # shift by the row max: H is shift-invariant, and the two terms below stay O(log V) instead of
    # O(max logit), so they do not cancel catastrophically
    logits = logits - logits.max(dim=-1, keepdim=True).values.detach()
    p = torch.softmax(logits, dim=-1)
    return torch.logsumexp(logits, dim=-1) - (p * logits).sum(-1)
