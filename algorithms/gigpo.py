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

Invalid-action penalty (verl-agent's order, ``ray_trainer.py``): the env rewards alone make R(τ)
and the discounted step returns; then ``apply_invalid_action_penalty`` subtracts each row's own
penalty p_i (coef · [action invalid]) from that row's episode score, R(τ) − p_i, and from its step
return, R_t − p_i. So the penalty lowers only the invalid step's advantage and is not discounted
back into earlier steps (folding it into the step reward would blame the valid steps).

Controller call (registry convention): ``get_advantage_estimator("gigpo")(scores=batch["scores"],
group_ids=batch["uid"], mask=batch["response_mask"], step_rewards=batch["step_rewards"],
traj_ids=batch["traj_ids"], step_ids=batch["step_ids"], anchors=batch["anchors"],
penalties=batch["penalties"], gamma=..., omega=..., norm_by_std=..., episode_stats=..., eps=...)``
-> [B, T]. ``step_rewards`` is the env reward of each step only (no penalty folded in) and
``penalties`` the invalid-action penalty of each step (>= 0, 0 for a valid action). ``scores`` is
unused: in verl-agent's layout it holds the episode reward copied onto every step, which GiGPO
rebuilds from ``step_rewards``, so the step rewards are required.

Deviations from verl-agent (``gigpo/core_gigpo.py``), kept on purpose:
* An episode group with a single entry (one row; one trajectory in "trajectories" mode) gets
  A^E = 0 apart from the penalty (verl-agent: mean 0, std 1, i.e. the raw score), as hyflow's GRPO
  does: one sample carries no relative signal. Only matters at group size 1.
* episode_stats="trajectories" (the paper's Eq. 3; verl-agent's default is the step-sample stats)
  takes mean/std over the unpenalised R(τ), one per trajectory (verl-agent's per-trajectory mode
  takes each trajectory's first row, penalised or not, which depends on row order). Each row then
  normalises its own penalised score. Where those R(τ) are degenerate (one trajectory, or all
  equal) the std is 0 and (R(τ) − p_i − mean)/(0 + eps) would turn a 0.1 penalty into −1e5, so
  there F_norm = 1 and the row gets exactly −p_i.
* Anchors are keyed with dtype and shape (``to_hashable``), so arrays of equal bytes but another
  shape do not alias (verl-agent flattens them to a tuple of values).
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


def _penalty_list(penalties: Any, n: int) -> list[float]:
    """`penalties` ([B], finite, >= 0; None = zeros) as a list of n Python floats."""
    if penalties is None:
        return [0.0] * n
    try:
        p = torch.as_tensor(penalties)
    except (TypeError, ValueError, RuntimeError) as e:
        raise ValueError(f"penalties must be a 1-D [B] tensor of numbers: {e}") from None
    if p.ndim != 1 or p.shape[0] != n:
        raise ValueError(f"penalties must be a 1-D [B] tensor with B = {n} (one per step-sample), "
                         f"got shape {tuple(p.shape)}")
    if p.dtype == torch.bool or p.is_complex():
        raise ValueError(f"penalties must hold real numbers, got dtype {p.dtype}")
    p = p.to(torch.float64)
    if not torch.isfinite(p).all():
        raise ValueError("penalties contains non-finite values")
    if (p < 0).any():
        i = int(torch.nonzero(p < 0)[0])
        raise ValueError(f"penalties must be >= 0 (they are subtracted), got {p[i].item():g} at "
                         f"row {i}")
    return p.tolist()


def _trajectory_norm(episode_return: dict[int, float], group_of: dict[int, int],
                     traj_index: list[int], pen: list[float], norm_by_std: bool, eps: float
                     ) -> torch.Tensor:
    """episode_stats="trajectories": per row (R(τ_i) − p_i − mean_g) / F_norm, mean/std over the
    group's unpenalised trajectory returns (one each); degenerate groups use F_norm = 1."""
    order = list(episode_return)
    if not order:
        return torch.zeros(0, dtype=torch.float64)
    values = torch.tensor([episode_return[t] for t in order], dtype=torch.float64)
    groups = torch.tensor([group_of[t] for t in order], dtype=torch.long)
    n = int(groups.max()) + 1
    count = torch.zeros(n, dtype=torch.float64).index_add_(0, groups, torch.ones_like(values))
    mean = torch.zeros(n, dtype=torch.float64).index_add_(0, groups, values) / count
    dev = values - mean[groups]
    var = torch.zeros(n, dtype=torch.float64).index_add_(0, groups, dev * dev)
    var = var / (count - 1).clamp(min=1)
    gmax = torch.full((n,), -math.inf, dtype=torch.float64).scatter_reduce(0, groups, values, "amax")
    gmin = torch.full((n,), math.inf, dtype=torch.float64).scatter_reduce(0, groups, values, "amin")
    degenerate = (count < 2) | (gmax == gmin)
    scale = torch.where(degenerate, torch.ones_like(var), var.sqrt() + eps) if norm_by_std \
        else torch.ones_like(var)
    dev = torch.where(degenerate[groups], torch.zeros_like(dev), dev)   # exact 0, no rounding
    pos = {t: k for k, t in enumerate(order)}
    rows = torch.tensor([pos[t] for t in traj_index])
    return (dev[rows] - torch.tensor(pen, dtype=torch.float64)) / scale[groups[rows]]


def compute_gigpo_advantages(step_rewards, traj_ids, step_ids, group_ids, anchors,
                             mask: torch.Tensor, gamma: float = 0.95, omega: float = 1.0,
                             norm_by_std: bool = True, episode_stats: str = "step_samples",
                             eps: float = 1e-6, penalties=None) -> torch.Tensor:
    """GiGPO advantages A^E + ω·A^S, one row per step-sample, broadcast over its response tokens.

    step_rewards [B] env reward of each step (no invalid-action penalty in it); traj_ids [B]
    trajectory of each row; step_ids [B] integer time index of the step in its trajectory (unique
    per trajectory; rows may come in any order, and a missing time index contributes no reward,
    the exponent is k − t); group_ids [B] task group (a trajectory lies in one group); anchors [B]
    env state of the step (hashable, or a numpy array / tensor / dict / list, keyed with
    ``to_hashable``); mask [B, T]; penalties [B] invalid-action penalty of each row (>= 0; None =
    zeros), subtracted after discounting from the row's episode score and its step return (see
    the module doc).
    episode_stats: "step_samples" takes the episode mean/std over the penalised scores
    R(τ) − p_i of all step-samples of the group (verl-agent's code: a trajectory with T steps
    counts T times); "trajectories" over the N unpenalised trajectory returns (the paper's Eq. 3),
    each row normalising its own penalised score. Anchor groups use the penalised step returns.
    Returns [B, T] in step_rewards' float dtype (float32 otherwise), 0 where mask is 0.
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
    pen = _penalty_list(penalties, B)
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

    # verl-agent's apply_invalid_action_penalty: after discounting, each row's own penalty only
    if episode_stats == "step_samples":
        a_ep = _group_norm([episode_return[t] - p for t, p in zip(traj_index, pen)], group_index,
                           norm_by_std, eps)
    else:
        a_ep = _trajectory_norm(episode_return, group_of, traj_index, pen, norm_by_std, eps)
    try:
        keys = [(g, to_hashable(o)) for g, o in zip(group_index.tolist(), obs)]   # Eq. 4/6
    except TypeError as e:
        raise TypeError(f"anchors must be hashable or numpy arrays / tensors / dicts / lists: "
                        f"{e}") from None
    a_step = _group_norm([g - p for g, p in zip(step_return, pen)], _dense("anchors", keys),
                         norm_by_std, eps)                                         # Eq. 7
    adv = a_ep + omega * a_step                                                    # Eq. 8
    return (adv[:, None] * mask.to(dtype=torch.float64, device="cpu")).to(
        device=mask.device, dtype=out_dtype)


@register_advantage_estimator("gigpo")
def gigpo_advantage(scores, group_ids, mask, step_rewards, traj_ids, step_ids, anchors,
                    penalties=None, gamma: float = 0.95, omega: float = 1.0,
                    norm_by_std: bool = True, episode_stats: str = "step_samples",
                    eps: float = 1e-6):
    """Registered "gigpo": compute_gigpo_advantages; scores is unused (see the module doc)."""
    return compute_gigpo_advantages(step_rewards, traj_ids, step_ids, group_ids, anchors, mask,
                                    gamma=gamma, omega=omega, norm_by_std=norm_by_std,
                                    episode_stats=episode_stats, eps=eps, penalties=penalties)
