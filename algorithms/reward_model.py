"""The reward-model objective: Bradley–Terry on preference pairs, with an optional margin and
reward centering. Pure functions on tensors (torch only).

    loss, metrics = bradley_terry_loss(r_chosen, r_rejected, margin=0.0, center_coef=0.0)

    loss = mean_i[ -log σ(r_chosen_i - r_rejected_i - margin_i) ]
           + center_coef · mean_i[ (r_chosen_i + r_rejected_i)² ]

The margin (a float, or one value per pair) asks the chosen reward to beat the rejected one by at
least that much (Llama 2's margin loss). Centering (Eisenstein et al. 2023; TRL's
`center_rewards_coefficient`) pins the rewards' mean near 0: the Bradley–Terry term is blind to a
constant shift, so without it the scale's origin drifts freely. Same formula as TRL's RewardTrainer.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def bradley_terry_loss(chosen: torch.Tensor, rejected: torch.Tensor, margin: float | torch.Tensor = 0.0,
                       center_coef: float = 0.0) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Mean pairwise loss over the N pairs and detached metrics:

    `accuracy` (share of pairs with r_chosen > r_rejected, ties count as wrong), `margin` (mean
    r_chosen - r_rejected), `chosen` / `rejected` (mean rewards), `bt_loss` (the Bradley–Terry
    term alone). chosen and rejected are [N] (or [N, 1]) rewards of the same pairs, in order.
    """
    chosen, rejected = _flat(chosen, "chosen"), _flat(rejected, "rejected")
    if chosen.shape != rejected.shape:
        raise ValueError(f"chosen has {chosen.numel()} rewards, rejected {rejected.numel()}: one each per pair")
    if chosen.numel() == 0:
        raise ValueError("bradley_terry_loss needs at least one pair")
    if not center_coef >= 0:
        raise ValueError(f"center_coef must be >= 0, got {center_coef}")
    m = torch.as_tensor(margin, dtype=chosen.dtype, device=chosen.device)
    if m.dim() > 0 and m.shape != chosen.shape:
        raise ValueError(f"margin has shape {tuple(m.shape)}; give a number or one value per pair ({chosen.numel()})")
    diff = chosen - rejected
    bt = -F.logsigmoid(diff - m).mean()
    loss = bt + center_coef * ((chosen + rejected) ** 2).mean() if center_coef else bt
    with torch.no_grad():
        metrics = {"bt_loss": bt.detach(), "accuracy": (diff > 0).float().mean(), "margin": diff.mean(),
                   "chosen": chosen.mean(), "rejected": rejected.mean()}
    return loss, metrics


def _flat(x: torch.Tensor, name: str) -> torch.Tensor:
    if x.dim() == 2 and x.shape[1] == 1:
        return x[:, 0]
    if x.dim() != 1:
        raise ValueError(f"{name} rewards must be [N] or [N, 1], got shape {tuple(x.shape)}")
    return x
