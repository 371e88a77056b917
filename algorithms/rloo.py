"""RLOO: REINFORCE with a leave-one-out baseline.

Kool, van Hoof, Welling 2019, "Buy 4 REINFORCE Samples, Get a Baseline for Free!" (the
leave-one-out estimator); Ahmadian et al. 2024, "Back to Basics" (RLOO): for the k responses to
one prompt,
A_i = r_i − 1/(k−1) Σ_{j≠i} r_j, the same value on every response token.

Deviation from verl (``core_algos.compute_rloo_outcome_advantage``), kept on purpose: a group of
one response gets 0 (verl leaves the raw score; EasyR1 refuses rollout.n = 1): with no other
sample there is no baseline. It only matters at rollout.n = 1.

Controller call (registry convention): ``get_advantage_estimator("rloo")(scores=batch["scores"],
group_ids=batch["uid"], mask=batch["response_mask"])`` -> [B, T].
"""
from __future__ import annotations

import torch

from .grpo import _group_index
from .registry import register_advantage_estimator


def compute_rloo_advantages(scores, group_ids, mask: torch.Tensor) -> torch.Tensor:
    """Leave-one-out advantages broadcast over each row's response tokens.

    scores [B] float; group_ids [B] hashable (list, numpy object array or tensor); mask [B, T].
    A singleton group (no other sample to form a baseline) and a group whose scores are all equal
    get exactly 0. Returns [B, T] in the scores' float dtype (float32 otherwise), 0 where mask is 0.
    """
    scores = torch.as_tensor(scores)
    if scores.ndim != 1:
        raise ValueError(f"scores must be 1-D [B], got shape {tuple(scores.shape)}")
    out_dtype = scores.dtype if scores.is_floating_point() else torch.float32
    if not torch.isfinite(scores).all():
        raise ValueError("scores contains non-finite values")
    if not isinstance(mask, torch.Tensor) or mask.ndim != 2 or mask.shape[0] != scores.shape[0]:
        shape = tuple(mask.shape) if hasattr(mask, "shape") else type(mask).__name__
        raise ValueError(f"mask must be a [B, T] tensor with B = {scores.shape[0]}, got {shape}")
    idx = _group_index(group_ids, scores.shape[0]).to(scores.device)
    n_groups = int(idx.max()) + 1 if idx.numel() else 0

    r = scores.to(torch.float64)
    count = torch.zeros(n_groups, dtype=torch.float64, device=r.device).index_add_(
        0, idx, torch.ones_like(r))
    total = torch.zeros_like(count).index_add_(0, idx, r)
    # mean of the others: (group sum − own) / (k − 1); clamp only guards singletons (zeroed below)
    adv = r - (total[idx] - r) / (count[idx] - 1).clamp(min=1)
    gmax = torch.full_like(count, -torch.inf).scatter_reduce(0, idx, r, "amax")
    gmin = torch.full_like(count, torch.inf).scatter_reduce(0, idx, r, "amin")
    # equal scores: the rounding in (sum − own)/(k−1) must not leave a tiny non-zero advantage
    degenerate = (count < 2) | (gmax == gmin)
    adv = torch.where(degenerate[idx], torch.zeros_like(adv), adv)
    return (adv[:, None] * mask.to(device=adv.device, dtype=torch.float64)).to(out_dtype)


@register_advantage_estimator("rloo")
def rloo_advantage(scores, group_ids, mask):
    """Registered "rloo": compute_rloo_advantages."""
    return compute_rloo_advantages(scores, group_ids, mask)
