"""KL to the reference policy as a per-token reward penalty, and the controllers of its weight β.

PPO with a critic (Ziegler et al. 2019, "Fine-Tuning Language Models from Human Preferences";
Ouyang et al. 2022) puts the KL in the reward instead of the loss: token t of row i gets
r_{i,t} = score_i·[t is the row's last response token] − β·KL_{i,t}, KL estimated per sampled token
from the rollout-time (old) and reference log-probs. GAE then spreads these rewards over tokens.

β is fixed (`FixedKLController`) or adapted to a KL target (`AdaptiveKLController`, Ziegler et al.
2019 §2.2): e = clip(KL/target − 1, −0.2, 0.2), β ← β·(1 + e·n_steps/horizon), where n_steps is the
number of samples since the last update (the batch size) and KL the batch's mean per-sequence KL.

Deviation from verl (``ray_trainer.apply_kl_penalty``), kept on purpose: the batch KL the adaptive
controller tracks (``mean_sequence_kl``) leaves out rows without response tokens, where verl
averages them in as 0; hyflow pads batches to the world size with such masked rows, which are
not samples and would otherwise pull the tracked KL down. Otherwise as verl: the controllers'
update rule, and k1 (log π_old − log π_ref) as the default in-reward estimator.
"""
from __future__ import annotations

import torch

from .gae import outcome_token_rewards
from .losses import kl_penalty


def token_rewards_with_kl(scores, mask: torch.Tensor, old_logprobs: torch.Tensor, ref_logprobs: torch.Tensor,
                          kl_coef: float, kind: str = "k1") -> tuple[torch.Tensor, torch.Tensor]:
    """(token_rewards [B, T], kl [B, T]): each row's score on its last response token minus
    kl_coef·KL per token; KL is `losses.kl_penalty(old_logprobs, ref_logprobs, kind)` (k1 by default,
    the classic log π_old − log π_ref). Both are 0 off the mask (padding may hold garbage)."""
    if not kl_coef >= 0:
        raise ValueError(f"kl_coef must be >= 0, got {kl_coef}")
    rewards = outcome_token_rewards(scores, mask)
    for name, t in (("old_logprobs", old_logprobs), ("ref_logprobs", ref_logprobs)):
        if t.shape != mask.shape:
            raise ValueError(f"{name} shape {tuple(t.shape)} != mask shape {tuple(mask.shape)}")
    valid = mask != 0
    zero = torch.zeros((), dtype=rewards.dtype, device=rewards.device)
    kl = torch.where(valid, kl_penalty(old_logprobs.to(rewards.dtype), ref_logprobs.to(rewards.dtype), kind), zero)
    return rewards - kl_coef * kl, kl


def mean_sequence_kl(kl: torch.Tensor, mask: torch.Tensor) -> float:
    """The batch KL the adaptive controller tracks: mean over rows of each row's token-mean KL
    (rows without response tokens are left out; 0 when there are none)."""
    m = (mask != 0).to(kl.dtype)
    tokens = m.sum(-1)
    rows = tokens > 0
    if not rows.any():
        return 0.0
    per_row = (torch.where(m != 0, kl, torch.zeros_like(kl)).sum(-1) / tokens.clamp(min=1))[rows]
    return float(per_row.mean())


class FixedKLController:
    """β stays at `coef`; `update` is a no-op (kept so the trainer treats both kinds alike)."""

    def __init__(self, coef: float):
        if not coef >= 0:
            raise ValueError(f"kl coef must be >= 0, got {coef}")
        self.value = float(coef)

    def update(self, current_kl: float, n_steps: int) -> float:
        return self.value

    def state_dict(self) -> dict:
        return {"value": self.value}

    def load_state_dict(self, state: dict) -> None:
        self.value = float(state["value"])


class AdaptiveKLController:
    """β adapted toward a KL target (Ziegler et al. 2019): see the module docstring."""

    def __init__(self, init_coef: float, target: float, horizon: float):
        if not init_coef > 0:
            raise ValueError(f"adaptive kl init_coef must be > 0, got {init_coef}")
        if not target > 0:
            raise ValueError(f"adaptive kl target must be > 0, got {target}")
        if not horizon > 0:
            raise ValueError(f"adaptive kl horizon must be > 0, got {horizon}")
        self.value, self.target, self.horizon = float(init_coef), float(target), float(horizon)

    def update(self, current_kl: float, n_steps: int) -> float:
        """One controller step after a batch of `n_steps` samples whose mean KL was `current_kl`;
        returns the new β."""
        if n_steps < 0:
            raise ValueError(f"n_steps must be >= 0, got {n_steps}")
        error = min(max(float(current_kl) / self.target - 1.0, -0.2), 0.2)
        self.value *= 1.0 + error * n_steps / self.horizon
        return self.value

    def state_dict(self) -> dict:
        return {"value": self.value, "target": self.target, "horizon": self.horizon}

    def load_state_dict(self, state: dict) -> None:
        self.value, self.target, self.horizon = float(state["value"]), float(state["target"]), float(state["horizon"])


def make_kl_controller(kind: str, coef: float, target: float | None = None,
                       horizon: float | None = None) -> FixedKLController | AdaptiveKLController:
    """"fixed" -> FixedKLController(coef); "adaptive" -> AdaptiveKLController(coef, target, horizon)."""
    if kind == "fixed":
        return FixedKLController(coef)
    if kind == "adaptive":
        if target is None or horizon is None:
            raise ValueError("an adaptive KL controller needs target and horizon")
        return AdaptiveKLController(coef, target, horizon)
    raise ValueError(f"unknown KL controller {kind!r}; choose 'fixed' or 'adaptive'")
