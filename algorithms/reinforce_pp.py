"""REINFORCE++: discounted token returns, normalised over the whole batch.

Hu et al. 2025, "REINFORCE++" (arXiv 2501.03262): token rewards r_t (outcome score on the last
token, minus β·KL(t) per token when the KL penalty is in the reward — the caller composes that),
return-to-go G_t = Σ_{k≥t} γ^{k−t} r_k (the per-token advantage, Eq. 8 in v9's numbering), then
global advantage normalisation A = (G − mean_batch G) / std_batch G (Eq. 10) over all response
tokens of the batch, not per prompt group.

Deviations from verl (``core_algos.compute_reinforce_plus_plus_outcome_advantage``), kept on
purpose: (1) the return recursion skips masked-out positions and carries the return through them
(as GAE does), where verl resets it at every masked position; the two agree on single-turn rows
(mask 1…1 0…0), and only multi-turn rows with observation tokens inside the response differ, where
verl would cut the credit at each observation. (2) The whitening is (G − mean)/(std + eps) with
eps = 1e-6, GRPO's form, where verl uses (G − mean)·rsqrt(var + 1e-8); the same except when the
variance is near 0, and all-equal returns (or fewer than 2 tokens, where verl raises) give 0.
The KL-in-reward penalty of the paper is composed by the caller (kl_control.token_rewards_with_kl,
k1 in the REINFORCE++ recipe).

Controller call (registry convention): ``get_advantage_estimator("reinforce_pp")(
scores=batch["scores"], group_ids=batch["uid"], mask=batch["response_mask"],
token_rewards=batch["token_rewards"] (optional), gamma=..., eps=...)`` -> [B, T]. Without
``token_rewards`` the outcome score sits on each row's last response token.
"""
from __future__ import annotations

import torch

from .gae import compute_gae, outcome_token_rewards
from .registry import register_advantage_estimator


def compute_reinforce_pp_advantages(token_rewards, mask: torch.Tensor, gamma: float = 1.0,
                                    eps: float = 1e-6) -> torch.Tensor:
    """[B, T] advantages: per-row discounted return over the response tokens, whitened with the
    masked mean and unbiased std over every response token of the batch: (G − mean)/(std + eps).

    Masked-out positions are skipped by the return recursion (their rewards are ignored) and get 0.
    If all response-token returns are equal (or there are fewer than 2) the advantages are 0.
    Output dtype: token_rewards' float dtype (float32 otherwise).
    """
    token_rewards = torch.as_tensor(token_rewards)
    # the return-to-go is GAE with V ≡ 0 and λ = 1: δ_t = r_t, A_t = Σ_k γ^k r_{t+k}
    zeros = torch.zeros(token_rewards.shape, dtype=torch.float64, device=token_rewards.device)
    returns, _ = compute_gae(token_rewards.to(torch.float64), zeros, mask, gamma, 1.0)
    out_dtype = token_rewards.dtype if token_rewards.is_floating_point() else torch.float32
    m = mask.to(returns.device) != 0
    g = returns[m]
    if g.numel() < 2 or bool((g == g[0]).all()):
        return torch.zeros(returns.shape, dtype=out_dtype, device=returns.device)
    mean = g.mean()
    std = g.std()          # unbiased (n − 1), as torch.std
    adv = torch.where(m, (returns - mean) / (std + eps), torch.zeros_like(returns))
    return adv.to(out_dtype)


@register_advantage_estimator("reinforce_pp")
def reinforce_pp_advantage(scores, group_ids, mask, token_rewards=None, gamma: float = 1.0,
                           eps: float = 1e-6):
    """Registered "reinforce_pp": compute_reinforce_pp_advantages; group_ids is unused (the
    normalisation is global)."""
    if token_rewards is None:
        token_rewards = outcome_token_rewards(scores, mask)
    return compute_reinforce_pp_advantages(token_rewards, mask, gamma=gamma, eps=eps)
