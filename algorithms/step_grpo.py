"""Step-GRPO (R1-Router; Peng et al. 2025, arXiv 2505.22095; code OpenBMB/R1-Router on EasyR1).

Each training row is one step state of a multi-step trajectory (teacher-forced gold prefix); n
rollouts are sampled from that state and scored with the step-specific reward r_{i,t}. The
advantage is GRPO's (DeepSeekMath §4.1.2) inside the group of rollouts from the same step state:
Â_{i,t} = (r_{i,t} − mean_j r_{j,t}) / (std_j r_{j,t} + ε), broadcast over that step's response
tokens; no credit flows between steps (each step is a one-step bandit given its prefix).

Deviation, kept on purpose: a step state with a single rollout gets 0, as hyflow's GRPO (see
grpo.py); the verl-family reference either passes the raw score (verl: mean 0, std 1) or refuses
rollout.n = 1 (EasyR1). It only matters at rollout.n = 1.

Controller call (registry convention): ``get_advantage_estimator("step_grpo")(
scores=batch["scores"], group_ids=batch["uid"], mask=batch["response_mask"],
step_state_ids=batch["step_state_ids"] (optional), norm_by_std=..., eps=...)`` -> [B, T].
``scores`` are the step scores. Without ``step_state_ids`` the groups are ``group_ids``: R1-Router
gives every step row its own uid before repeating it n times, so uid already names the step state.
"""
from __future__ import annotations

import numpy as np
import torch

from .grpo import compute_grpo_advantages
from .registry import register_advantage_estimator


def compute_step_grpo_advantages(step_scores, step_state_ids, mask: torch.Tensor,
                                 norm_by_std: bool = True, eps: float = 1e-6) -> torch.Tensor:
    """GRPO advantages with the rollouts from one step state as the group.

    step_scores [B] float; step_state_ids [B] hashable; mask [B, T]. A singleton step state or one
    whose scores are all equal gets 0. Returns [B, T] (scores' float dtype), 0 off the mask.
    """
    n_scores = len(torch.as_tensor(step_scores).reshape(-1))
    n_ids = len(step_state_ids.tolist() if isinstance(step_state_ids, (torch.Tensor, np.ndarray))
                else list(step_state_ids))
    if n_ids != n_scores:   # checked here so the message names this function's fields
        raise ValueError(f"step_state_ids has {n_ids} entries but step_scores has {n_scores}")
    return compute_grpo_advantages(step_scores, step_state_ids, mask, norm_by_std=norm_by_std,
                                   eps=eps)


@register_advantage_estimator("step_grpo")
def step_grpo_advantage(scores, group_ids, mask, step_state_ids=None, norm_by_std: bool = True,
                        eps: float = 1e-6):
    """Registered "step_grpo": compute_step_grpo_advantages(scores, step_state_ids or group_ids)."""
    ids = group_ids if step_state_ids is None else step_state_ids
    return compute_step_grpo_advantages(scores, ids, mask, norm_by_std=norm_by_std, eps=eps)
