"""GiGPO: group-in-group policy optimisation for multi-step agents.

Feng et al. 2025, "Group-in-Group Policy Optimization for LLM Agent Training" (arXiv 2505.10978).
A group holds N trajectories of the same task from identical env copies; every step of every
trajectory is one batch row (a step-sample). Per step-sample:
* episode return R(τ) = Σ_t r_t; episode advantage A^E = (R(τ_i) − mean) / F_norm   (Eq. 3);
* step return R_t = Σ_{k≥t} γ^{k−t} r_k                                              (Eq. 5);
* anchor-state groups: step-samples of one group whose env state (anchor) is the same, at any
  time step of any trajectory                                                        (Eq. 4/6);
* step advantage A^S = (R_t − mean_{anchor group} R) / F_norm                         (Eq. 7);
* A = A^E + ω·A^S                                                                    (Eq. 8).
F_norm = std + eps ("GiGPO w/ std", norm_by_std=True) or 1 ("w/o std"), std unbiased (torch.std).
A singleton or all-equal group (episode or anchor) gets 0. With no repeated state A^S = 0 and
GiGPO is GRPO on the episode returns.

Controller call (registry convention): ``get_advantage_estimator("gigpo")(scores=batch["scores"],
group_ids=batch["uid"], mask=batch["response_mask"], step_rewards=batch["step_rewards"],
traj_ids=batch["traj_ids"], step_ids=batch["step_ids"], anchors=batch["anchors"], gamma=...,
omega=..., norm_by_std=..., episode_stats=..., eps=...)`` -> [B, T]. ``scores`` is unused: in
verl-agent's layout it holds the episode reward copied onto every step, which GiGPO rebuilds from
``step_rewards`` (the env reward of each step), so the step rewards are required.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from .grpo import compute_grpo_advantages
from .registry import register_advantage_estimator

EPISODE_STATS = ("step_samples", "trajectories")


def to_hashable(x: Any) -> Any:
    """A hashable key for an anchor observation; equal observations give equal keys.

    str / numbers / other hashables pass through (numpy scalars become Python scalars); numpy
    arrays and torch tensors -> (dtype, shape, raw bytes) (object arrays element-wise); dicts ->
    their items sorted by key repr (so key order does not matter); lists / tuples -> tuples and
    sets -> frozensets of converted elements. Anything else unhashable raises TypeError.
    """
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    if isinstance(x, np.ndarray):
        if x.dtype == object:
            return ("ndarray", x.shape, tuple(to_hashable(e) for e in x.ravel()))
        return ("ndarray", x.dtype.str, x.shape, np.ascontiguousarray(x).tobytes())
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, dict):
        return ("dict", tuple(sorted(((to_hashable(k), to_hashable(v)) for k, v in x.items()),
                                     key=lambda kv: repr(kv[0]))))
    if isinstance(x, (list, tuple)):
        return tuple(to_hashable(e) for e in x)
    if isinstance(x, (set, frozenset)):
        return frozenset(to_hashable(e) for e in x)
    hash(x)  # raises TypeError for other unhashable objects
    return x


def _as_list(name: str, values: Any, n: int, rows: bool = False) -> list:
    """`values` as a Python list of n entries (rows=True keeps array rows as arrays)."""
    if isinstance(values, (torch.Tensor, np.ndarray)):
        if values.ndim == 0:
            raise ValueError(f"{name} must have one entry per step-sample, got a 0-d array")
        out = list(values) if rows else values.tolist()
    else:
        out = list(values)
    if len(out) != n:
        raise ValueError(f"{name} has {len(out)} entries but step_rewards has {n}")
    return out


def _dense(name: str, keys: list) -> torch.Tensor:
    """Dense first-seen indices 0..G-1 of hashable keys."""
    index: dict[Any, int] = {}
    try:
        return torch.tensor([index.setdefault(k, len(index)) for k in keys], dtype=torch.long)
    except TypeError as e:
        raise TypeError(f"{name} must hold hashable values: {e}") from None


def _group_norm(values: list[float], ids: torch.Tensor, norm_by_std: bool, eps: float
                ) -> torch.Tensor:
    """Per-group (x − mean) / F_norm of a float list, as [n] float64 (GRPO's normalisation)."""
    x = torch.tensor(values, dtype=torch.float64)
    return compute_grpo_advantages(x, ids, torch.ones(len(values), 1), norm_by_std=norm_by_std,
                                   eps=eps)[:, 0]


def compute_gigpo_advantages(step_rewards, traj_ids, step_ids, group_ids, anchors,
                             mask: torch.Tensor, gamma: float = 0.95, omega: float = 1.0,
                             norm_by_std: bool = True, episode_stats: str = "step_samples",
                             eps: float = 1e-6) -> torch.Tensor:
    """GiGPO advantages A^E + ω·A^S, one row per step-sample, broadcast over its response tokens.

    step_rewards [B] env reward of each step; traj_ids [B] trajectory of each row; step_ids [B]
    integer time index of the step in its trajectory (unique per trajectory; rows may come in any
    order, and a missing time index contributes no reward, the exponent is k − t); group_ids [B]
    task group (a trajectory lies in one group); anchors [B] env state of the step (hashable, or a
    numpy array / tensor / dict / list, keyed with ``to_hashable``); mask [B, T].
    episode_stats: "step_samples" takes the episode mean/std over all step-samples of the group
    (verl-agent's code: a trajectory with T steps counts T times); "trajectories" over the N
    trajectory returns (the paper's Eq. 3). Returns [B, T] in step_rewards' float dtype (float32
    otherwise), 0 where mask is 0.
    """
    rewards = torch.as_tensor(step_rewards)
    if rewards.ndim != 1:
        raise ValueError(f"step_rewards must be 1-D [B], got shape {tuple(rewards.shape)}")
    if not torch.isfinite(rewards).all():
        raise ValueError("step_rewards contains non-finite values")
    out_dtype = rewards.dtype if rewards.is_floating_point() else torch.float32
    B = rewards.shape[0]
    if not isinstance(mask, torch.Tensor) or mask.ndim != 2 or mask.shape[0] != B:
        shape = tuple(mask.shape) if hasattr(mask, "shape") else type(mask).__name__
        raise ValueError(f"mask must be a [B, T] tensor with B = {B}, got {shape}")
    if not 0.0 <= gamma <= 1.0:
        raise ValueError(f"gamma must be in [0, 1], got {gamma}")
    if not omega >= 0.0:
        raise ValueError(f"omega must be >= 0, got {omega}")
    if episode_stats not in EPISODE_STATS:
        raise ValueError(f"episode_stats must be one of {list(EPISODE_STATS)}, "
                         f"got {episode_stats!r}")
    trajs = _as_list("traj_ids", traj_ids, B)
    steps = _as_list("step_ids", step_ids, B)
    groups = _as_list("group_ids", group_ids, B)
    obs = _as_list("anchors", anchors, B, rows=True)
    r = rewards.to(torch.float64).tolist()
    for i, s in enumerate(steps):
        if isinstance(s, bool) or not isinstance(s, (int, np.integer)):
            raise ValueError(f"step_ids[{i}] must be an integer time index, got {s!r}")
    traj_index = _dense("traj_ids", trajs).tolist()
    group_index = _dense("group_ids", groups)

    # rows of each trajectory, its group, and no repeated time index
    rows_of: dict[int, list[int]] = {}
    group_of: dict[int, int] = {}
    for i, (t, g) in enumerate(zip(traj_index, group_index.tolist())):
        rows_of.setdefault(t, []).append(i)
        if group_of.setdefault(t, g) != g:
            first = rows_of[t][0]
            raise ValueError(f"traj_ids: trajectory {trajs[i]!r} spans two groups (group_ids "
                             f"{groups[first]!r} and {groups[i]!r})")
    episode_return: dict[int, float] = {}
    step_return = [0.0] * B
    for t, rows in rows_of.items():
        rows.sort(key=lambda i: steps[i])
        for a, b in zip(rows, rows[1:]):
            if steps[a] == steps[b]:
                raise ValueError(f"step_ids: trajectory {trajs[a]!r} has step id {steps[a]} twice")
        episode_return[t] = math.fsum(r[i] for i in rows)                      # Eq. 3's R(τ)
        g, nxt = 0.0, None
        for i in reversed(rows):                                               # Eq. 5, backwards
            g = r[i] + (gamma ** (nxt - steps[i]) * g if nxt is not None else 0.0)
            step_return[i], nxt = g, steps[i]

    if episode_stats == "step_samples":
        a_ep = _group_norm([episode_return[t] for t in traj_index], group_index, norm_by_std, eps)
    else:
        order = list(rows_of)                       # dense traj index -> one entry per trajectory
        per_traj = _group_norm([episode_return[t] for t in order],
                               torch.tensor([group_of[t] for t in order]), norm_by_std, eps)
        a_ep = per_traj[torch.tensor(traj_index)]
    try:
        keys = [(g, to_hashable(o)) for g, o in zip(group_index.tolist(), obs)]   # Eq. 4/6
    except TypeError as e:
        raise TypeError(f"anchors must be hashable or numpy arrays / tensors / dicts / lists: "
                        f"{e}") from None
    a_step = _group_norm(step_return, _dense("anchors", keys), norm_by_std, eps)   # Eq. 7
    adv = a_ep + omega * a_step                                                    # Eq. 8
    return (adv[:, None] * mask.to(dtype=torch.float64, device="cpu")).to(
        device=mask.device, dtype=out_dtype)


@register_advantage_estimator("gigpo")
def gigpo_advantage(scores, group_ids, mask, step_rewards, traj_ids, step_ids, anchors,
                    gamma: float = 0.95, omega: float = 1.0, norm_by_std: bool = True,
                    episode_stats: str = "step_samples", eps: float = 1e-6):
    """Registered "gigpo": compute_gigpo_advantages; scores is unused (see the module doc)."""
    return compute_gigpo_advantages(step_rewards, traj_ids, step_ids, group_ids, anchors, mask,
                                    gamma=gamma, omega=omega, norm_by_std=norm_by_std,
                                    episode_stats=episode_stats, eps=eps)
