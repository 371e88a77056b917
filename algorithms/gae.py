"""Generalized Advantage Estimation for PPO with a critic.

GAE (Schulman et al. 2016, "High-Dimensional Continuous Control Using GAE", §3, Eq. 16):
δ_t = r_t + γ V(s_{t+1}) − V(s_t),  A_t = Σ_k (γλ)^k δ_{t+k};  critic targets R_t = A_t + V(s_t).

Controller call (registry convention, see registry): ``get_advantage_estimator("gae")(
scores=batch["scores"], group_ids=batch["uid"], mask=batch["response_mask"], values=batch["values"],
token_rewards=batch["token_rewards"] (optional), gamma=..., lam=..., whiten=...)`` -> [B, T].
Without ``token_rewards`` the outcome score sits on each row's last response token. A controller
that trains the critic calls ``compute_gae`` itself: it also returns the critic targets.
"""
from __future__ import annotations

import torch

from .losses import masked_whiten
from .registry import register_advantage_estimator


def _check_token_tensor(name: str, x, mask: torch.Tensor) -> torch.Tensor:
    x = torch.as_tensor(x)
    if x.shape != mask.shape:
        raise ValueError(f"{name} shape {tuple(x.shape)} != mask shape {tuple(mask.shape)}")
    if not torch.isfinite(torch.where(mask != 0, x, torch.zeros_like(x))).all():
        raise ValueError(f"{name} contains non-finite values on the response mask")
    return x


def _check_mask(mask) -> torch.Tensor:
    if not isinstance(mask, torch.Tensor) or mask.ndim != 2:
        shape = tuple(mask.shape) if hasattr(mask, "shape") else type(mask).__name__
        raise ValueError(f"mask must be a [B, T] tensor, got {shape}")
    return mask


def outcome_token_rewards(scores, mask: torch.Tensor) -> torch.Tensor:
    """[B, T] token rewards: scores[i] on row i's last response token, 0 elsewhere (a row with an
    empty mask gets nothing). dtype: scores' float dtype (float32 otherwise)."""
    mask = _check_mask(mask)
    scores = torch.as_tensor(scores, device=mask.device)
    if scores.shape != (mask.shape[0],):
        raise ValueError(f"scores must be [B] with B = {mask.shape[0]}, got {tuple(scores.shape)}")
    dtype = scores.dtype if scores.is_floating_point() else torch.float32
    m = mask != 0
    pos = torch.arange(mask.shape[1], device=mask.device)
    last = torch.where(m, pos, torch.full_like(pos, -1)).max(dim=1).values      # -1: empty row
    rewards = torch.zeros(mask.shape, dtype=dtype, device=mask.device)
    rows = torch.nonzero(last >= 0).squeeze(1)
    rewards[rows, last[rows]] = scores[rows].to(dtype)
    return rewards


def compute_gae(token_rewards, values, mask: torch.Tensor, gamma: float, lam: float
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """Raw (not whitened) GAE advantages and critic returns, both [B, T], 0 off the mask.

    The backward recursion walks over response tokens only: a masked-out position is skipped (its
    reward and value are ignored, they may be padding garbage), so V after a row's last response
    token is 0 whatever follows, and leading or interior gaps (e.g. observation tokens of a
    multi-turn response) carry V and A through unchanged. Output dtype: token_rewards' float dtype
    (float32 for non-float input); computed in float64.
    """
    mask = _check_mask(mask)
    if not (0.0 <= gamma <= 1.0):
        raise ValueError(f"gamma must be in [0, 1], got {gamma}")
    if not (0.0 <= lam <= 1.0):
        raise ValueError(f"lam must be in [0, 1], got {lam}")
    token_rewards = _check_token_tensor("token_rewards", token_rewards, mask)
    values = _check_token_tensor("values", values, mask)
    out_dtype = token_rewards.dtype if token_rewards.is_floating_point() else torch.float32
    m = mask.to(token_rewards.device) != 0
    zero = torch.zeros((), dtype=torch.float64, device=m.device)
    r = torch.where(m, token_rewards.to(torch.float64), zero)
    v = torch.where(m, values.to(device=m.device, dtype=torch.float64), zero)

    B, T = m.shape
    adv = torch.zeros(B, T, dtype=torch.float64, device=m.device)
    next_value = torch.zeros(B, dtype=torch.float64, device=m.device)  # V after the last token
    next_adv = torch.zeros_like(next_value)
    for t in reversed(range(T)):
        delta = r[:, t] + gamma * next_value - v[:, t]
        a_t = delta + gamma * lam * next_adv
        # off-mask positions leave the carried state untouched (skip, not reset)
        next_adv = torch.where(m[:, t], a_t, next_adv)
        next_value = torch.where(m[:, t], v[:, t], next_value)
        adv[:, t] = torch.where(m[:, t], a_t, zero)
    returns = torch.where(m, adv + v, zero)
    return adv.to(out_dtype), returns.to(out_dtype)


@register_advantage_estimator("gae")
def gae_advantage(scores, group_ids, mask, values, token_rewards=None, gamma: float = 1.0,
                  lam: float = 1.0, whiten: bool = True):
    """Registered "gae": {"advantages": compute_gae advantages, whitened over the batch's response
    tokens with losses.masked_whiten unless whiten=False, "returns": the raw returns (the critic's
    targets)}. group_ids is unused (no grouping in PPO)."""
    if token_rewards is None:
        token_rewards = outcome_token_rewards(scores, mask)
    adv, returns = compute_gae(token_rewards, values, mask, gamma, lam)
    return {"advantages": masked_whiten(adv, mask) if whiten else adv, "returns": returns}
