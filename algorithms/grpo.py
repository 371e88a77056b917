"""GRPO and Dr.GRPO outcome advantages.

GRPO (Shao et al. 2024, DeepSeekMath §4.1.2): for the G responses to one prompt with scores r_j,
A_i = (r_i − mean_j r_j) / (std_j r_j + ε), the same value on every response token.
Dr.GRPO (Liu et al. 2025, "Understanding R1-Zero-Like Training"): drop the std division,
A_i = r_i − mean_j r_j (its length-bias fix lives in the loss aggregation, see losses.aggregate).

Deviation from verl (``core_algos.compute_grpo_outcome_advantage``), kept on purpose: a group of
one response gets 0, where verl uses mean 0 and std 1, i.e. passes the raw score through (EasyR1
refuses rollout.n = 1 instead). One sample carries no group-relative signal, and a raw score would
mix an unnormalised scale into a normalised batch. It only matters at rollout.n = 1. A group whose
scores are all equal is set to exactly 0 (verl gets 0 up to float rounding of the mean).
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch

from .registry import register_advantage_estimator


def _group_index(group_ids: Any, batch_size: int) -> torch.Tensor:
    """Map arbitrary hashable group ids to dense indices 0..G-1 (first-seen order)."""
    if isinstance(group_ids, (torch.Tensor, np.ndarray)):
        if group_ids.ndim != 1:
            raise ValueError(f"group_ids must be 1-D, got shape {tuple(group_ids.shape)}")
        ids = group_ids.tolist()
    else:
        ids = list(group_ids)
    if len(ids) != batch_size:
        raise ValueError(f"group_ids has {len(ids)} entries but scores has {batch_size}")
    dense: dict[Any, int] = {}
    try:
        index = [dense.setdefault(g, len(dense)) for g in ids]
    except TypeError as e:
        raise TypeError(f"group_ids must hold hashable values: {e}") from None
    return torch.tensor(index, dtype=torch.long)


def compute_grpo_advantages(scores, group_ids, mask: torch.Tensor, norm_by_std: bool = True,
                            eps: float = 1e-6) -> torch.Tensor:
    """Group-normalised outcome advantages broadcast over each row's response tokens.

    scores [B] float; group_ids [B] hashable (list, numpy object array or tensor); mask [B, T].
    std is the unbiased one (torch.std). A group of size 1, or whose scores are all equal, gets 0
    (its std is undefined / zero, and it carries no learning signal).
    Returns [B, T] in the scores' float dtype (float32 for non-float input), 0 where mask is 0.
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

    # float64 so that mean/std of equal scores are exact enough to detect and small groups are stable
    r = scores.to(torch.float64)
    count = torch.zeros(n_groups, dtype=torch.float64, device=r.device).index_add_(
        0, idx, torch.ones_like(r))
    mean = torch.zeros_like(count).index_add_(0, idx, r) / count
    dev = r - mean[idx]
    if norm_by_std:
        var = torch.zeros_like(count).index_add_(0, idx, dev * dev) / (count - 1).clamp(min=1)
        adv = dev / (var.sqrt()[idx] + eps)
    else:
        adv = dev
    gmax = torch.full_like(count, -torch.inf).scatter_reduce(0, idx, r, "amax")
    gmin = torch.full_like(count, torch.inf).scatter_reduce(0, idx, r, "amin")
    degenerate = (count < 2) | (gmax == gmin)
    adv = torch.where(degenerate[idx], torch.zeros_like(adv), adv)

    # mask is 0/1; adv is finite, so the product is exactly 0 off the response
    return (adv[:, None] * mask.to(device=adv.device, dtype=torch.float64)).to(out_dtype)


@register_advantage_estimator("grpo")
def grpo_advantage(scores, group_ids, mask, norm_by_std: bool = True, eps: float = 1e-6):
    """Registered "grpo": compute_grpo_advantages (option norm_by_std, eps)."""
    return compute_grpo_advantages(scores, group_ids, mask, norm_by_std=norm_by_std, eps=eps)


@register_advantage_estimator("drgrpo")
def drgrpo_advantage(scores, group_ids, mask, eps: float = 1e-6):
    """Registered "drgrpo": GRPO without the std division (Dr.GRPO)."""
    return compute_grpo_advantages(scores, group_ids, mask, norm_by_std=False, eps=eps)
