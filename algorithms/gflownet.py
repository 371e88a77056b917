"""GFlowNet objectives and exploration helpers for multi-step reasoning (FoR-style training).

Layout: a batch of B trajectories s_0 → s_1 → … → s_L (L ≤ T transitions, padded to T).
``log_pf[b, t]`` = log P_F(s_{t+1} | s_t), ``log_pb[b, t]`` = log P_B(s_t | s_{t+1}),
``mask[b, t]`` = 1 for the L real transitions (a prefix of the row), state-valued tensors
(``log_flows``, ``log_flow_tilde``, ``energies``) are ``[B, T+1]`` over s_0 … s_T, of which
s_0 … s_L are real. Padding values never reach a loss or its gradient (they may be inf / nan).
A row's first state need not be the root: any window of a trajectory is a valid row for the
flow-based objectives (DB, SubTB, FL-DB, FL-SubTB), which is how they learn from partial data.

Objectives (each returns a 0-d loss tensor):
* TB (Malkin et al. 2022, Eq. 14): (log Z + Σ log P_F − log R − Σ log P_B)², mean over rows.
* VarGrad / log-variance TB (FoR, Yu et al. 2025 §3; Zhang et al. 2023): log Z replaced by the
  mean over the rows of the same problem of Φ = log R + Σ log P_B − Σ log P_F.
* DB (Bengio et al. 2021, "GFlowNet Foundations"): per transition
  (log F(s) + log P_F(s'|s) − log F(s') − log P_B(s|s'))², F(terminal) = R.
* SubTB(λ) (Madan et al. 2023, Eq. 8): Σ_{m<n} λ^{n−m} L_{m,n} / Σ_{m<n} λ^{n−m} per row.
* FL-DB / FL-SubTB (Pan et al. 2023, "Better Training of GFlowNets with Local Credit and
  Incomplete Trajectories", Eqs. 7 and 9): DB / SubTB with log F(s) = log F̃(s) − E(s), so that
  log F̃ = 0 at terminals (F(x) = R(x) = exp(−E(x))).
"""
from __future__ import annotations

import math
from typing import Callable

import torch

from .grpo import _group_index
from .registry import gfn_objectives as _GFN_OBJECTIVES
REWARD_TEMPERATURE_MODES = ("multiply", "divide")


def register_gfn_objective(name: str) -> Callable[[Callable], Callable]:
    """Decorator: register ``fn`` as the GFlowNet objective called ``name``."""
    return _GFN_OBJECTIVES.register(name)


def get_gfn_objective(name: str) -> Callable:
    """The objective registered as ``name``; KeyError listing the registered names otherwise."""
    return _GFN_OBJECTIVES.get(name)


def list_gfn_objectives() -> list[str]:
    """Sorted names of the registered GFlowNet objectives, plug-ins included."""
    return _GFN_OBJECTIVES.names()


# ------------------------------------------------------------------------------- validation
def _steps(log_pf: torch.Tensor, log_pb: torch.Tensor, mask: torch.Tensor,
           prefix: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(log P_F, log P_B) zeroed off-mask, and the bool mask; checks shapes (and prefix form)."""
    if not isinstance(log_pf, torch.Tensor) or log_pf.ndim != 2:
        raise ValueError(f"log_pf must be a [B, T] tensor, got "
                         f"{tuple(log_pf.shape) if hasattr(log_pf, 'shape') else type(log_pf)}")
    for name, t in (("log_pb", log_pb), ("mask", mask)):
        if not isinstance(t, torch.Tensor) or t.shape != log_pf.shape:
            shape = tuple(t.shape) if hasattr(t, "shape") else type(t).__name__
            raise ValueError(f"{name} shape {shape} != log_pf shape {tuple(log_pf.shape)}")
    m = mask.to(device=log_pf.device) != 0
    if prefix and (m[:, 1:] & ~m[:, :-1]).any():
        raise ValueError("mask must mark a prefix of each row (1…1 0…0): transitions are "
                         "indexed by their source state")
    zero = torch.zeros((), dtype=log_pf.dtype, device=log_pf.device)
    return torch.where(m, log_pf, zero), torch.where(m, log_pb.to(log_pf.dtype), zero), m


def _per_row(x, name: str, like: torch.Tensor, allow_scalar: bool = False) -> torch.Tensor:
    """x as a [B] tensor of like's dtype (a scalar is broadcast when allowed)."""
    t = torch.as_tensor(x, dtype=like.dtype, device=like.device)
    if allow_scalar and t.ndim == 0:
        return t.expand(like.shape[0])
    if t.shape != (like.shape[0],):
        raise ValueError(f"{name} must have shape [B] = ({like.shape[0]},), "
                         f"got {tuple(t.shape)}")
    return t


def _states(x, name: str, like: torch.Tensor) -> torch.Tensor:
    """A [B, T+1] state-valued tensor in like's dtype."""
    B, T = like.shape
    if not isinstance(x, torch.Tensor) or x.shape != (B, T + 1):
        shape = tuple(x.shape) if hasattr(x, "shape") else type(x).__name__
        raise ValueError(f"{name} must have shape [B, T+1] = ({B}, {T + 1}), got {shape}")
    return x.to(dtype=like.dtype, device=like.device)


def _done(done, like: torch.Tensor) -> torch.Tensor:
    if done is None:
        return torch.ones(like.shape[0], dtype=torch.bool, device=like.device)
    d = torch.as_tensor(done, device=like.device)
    if d.shape != (like.shape[0],):
        raise ValueError(f"done must have shape [B] = ({like.shape[0]},), got {tuple(d.shape)}")
    return d != 0


def _state_masks(m: torch.Tensor, done: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(real states s_0…s_L [B, T+1], the last state s_L where the row is complete)."""
    L = m.sum(-1)
    idx = torch.arange(m.shape[1] + 1, device=m.device)
    return idx[None, :] <= L[:, None], (idx[None, :] == L[:, None]) & done[:, None]


# ------------------------------------------------------------------------------- objectives
@register_gfn_objective("tb")
def tb_loss(log_pf, log_pb, log_r, log_z, mask) -> torch.Tensor:
    """Trajectory balance with a learned log Z (Malkin et al. 2022, Eq. 14):
    mean_b (log Z_b + Σ_t log P_F − log R_b − Σ_t log P_B)². log_z: [B] (e.g. a per-problem
    head) or a scalar."""
    pf, pb, _ = _steps(log_pf, log_pb, mask)
    r = _per_row(log_r, "log_r", pf)
    z = _per_row(log_z, "log_z", pf, allow_scalar=True)
    return ((z + pf.sum(-1) - r - pb.sum(-1)) ** 2).mean()


@register_gfn_objective("vargrad_tb")
def vargrad_tb_loss(log_pf, log_pb, log_r, mask, group_ids) -> torch.Tensor:
    """Log-variance TB (FoR's objective): Φ_b = log R_b + Σ log P_B − Σ log P_F, loss =
    mean_b (Φ_b − mean_{b' in group(b)} Φ_b')². The group mean plays log Z (the TB optimum of
    log Z given the current policy), so no partition function is learned; a singleton group
    contributes 0. group_ids: [B] hashable problem ids."""
    pf, pb, _ = _steps(log_pf, log_pb, mask)
    phi = _per_row(log_r, "log_r", pf) + pb.sum(-1) - pf.sum(-1)
    idx = _group_index(group_ids, phi.shape[0]).to(phi.device)
    n = int(idx.max()) + 1 if idx.numel() else 0
    count = torch.zeros(n, dtype=phi.dtype, device=phi.device).index_add_(
        0, idx, torch.ones_like(phi))
    mean = torch.zeros_like(count).index_add_(0, idx, phi) / count
    return ((phi - mean[idx]) ** 2).mean()


def _db_core(pf, pb, log_f, m, terminal, terminal_value) -> torch.Tensor:
    """Mean over real transitions of (log F(s_t) + log P_F − log F(s_{t+1}) − log P_B)², with
    log F replaced by terminal_value where ``terminal``."""
    state_ok, _ = _state_masks(m, torch.zeros(m.shape[0], dtype=torch.bool, device=m.device))
    zero = torch.zeros((), dtype=pf.dtype, device=pf.device)
    f = torch.where(terminal, terminal_value, torch.where(state_ok, log_f, zero))
    resid = f[:, :-1] + pf - f[:, 1:] - pb
    sq = torch.where(m, resid * resid, zero)
    return sq.sum() / m.sum().clamp(min=1)


def _subtb_core(pf, pb, log_f, m, terminal, terminal_value, lam: float) -> torch.Tensor:
    """SubTB(λ) over all pairs m < n of real states of each row, then the mean over rows."""
    if not lam > 0:
        raise ValueError(f"lam must be > 0, got {lam}")
    state_ok, _ = _state_masks(m, torch.zeros(m.shape[0], dtype=torch.bool, device=m.device))
    zero = torch.zeros((), dtype=pf.dtype, device=pf.device)
    f = torch.where(terminal, terminal_value, torch.where(state_ok, log_f, zero))
    # with C_k = Σ_{t<k} (log P_F − log P_B): L_{m,n} = ((f_m − C_m) − (f_n − C_n))²
    c = torch.cat([torch.zeros_like(pf[:, :1]), torch.cumsum(pf - pb, -1)], dim=-1)
    a = f - c
    resid = a[:, :, None] - a[:, None, :]
    i = torch.arange(f.shape[1], device=f.device)
    gap = (i[None, :] - i[:, None]).to(pf.dtype)
    pair = (gap > 0)[None] & state_ok[:, :, None] & state_ok[:, None, :]
    w = torch.where(pair, torch.as_tensor(lam, dtype=pf.dtype) ** gap.clamp(min=0), zero)
    wsum = w.sum((1, 2))
    per_row = (w * resid * resid).sum((1, 2)) / wsum.clamp(min=torch.finfo(pf.dtype).tiny)
    has = wsum > 0
    return torch.where(has, per_row, zero).sum() / has.sum().clamp(min=1)


@register_gfn_objective("db")
def db_loss(log_pf, log_pb, log_flows, log_r, mask, done=None) -> torch.Tensor:
    """Detailed balance (Bengio et al. 2021): mean over real transitions of
    (log F(s) + log P_F(s'|s) − log F(s') − log P_B(s|s'))², where log F(s_L) := log R for a row
    whose last state is terminal (done [B], default all). log_flows [B, T+1]; log_r [B] (unused
    for rows that are not done: their last flow is the learned one)."""
    pf, pb, m = _steps(log_pf, log_pb, mask, prefix=True)
    f = _states(log_flows, "log_flows", pf)
    _, terminal = _state_masks(m, _done(done, pf))
    return _db_core(pf, pb, f, m, terminal, _per_row(log_r, "log_r", pf)[:, None])


@register_gfn_objective("subtb")
def subtb_loss(log_pf, log_pb, log_flows, mask, lam: float = 0.9, log_r=None,
               done=None) -> torch.Tensor:
    """Sub-trajectory balance (Madan et al. 2023): per row Σ_{m<n} λ^{n−m} L_{m,n} /
    Σ_{m<n} λ^{n−m} over its real states, L_{m,n} = (log F(s_m) + Σ_{m≤k<n} log P_F −
    log F(s_n) − Σ_{m≤k<n} log P_B)²; mean over rows. log_flows [B, T+1] must hold log R at the
    terminal state, or pass log_r [B] to have it written there (for rows that are done)."""
    pf, pb, m = _steps(log_pf, log_pb, mask, prefix=True)
    f = _states(log_flows, "log_flows", pf)
    _, terminal = _state_masks(m, _done(done, pf))
    if log_r is None:
        return _subtb_core(pf, pb, f, m, torch.zeros_like(terminal), f, lam)
    return _subtb_core(pf, pb, f, m, terminal, _per_row(log_r, "log_r", pf)[:, None], lam)


def _fl_log_flows(log_flow_tilde, energies, pf, m):
    """(log F = log F̃ − E, −E) as [B, T+1]; E must be finite on the real states."""
    ft = _states(log_flow_tilde, "log_flow_tilde", pf)
    e = _states(energies, "energies", pf)
    state_ok, _ = _state_masks(m, torch.zeros(m.shape[0], dtype=torch.bool, device=m.device))
    if not torch.isfinite(e[state_ok]).all():
        raise ValueError("energies must be finite at the real states s_0..s_L of every row")
    return ft - e, -e


@register_gfn_objective("fl_db")
def fl_db_loss(log_pf, log_pb, log_flow_tilde, energies, mask, done=None) -> torch.Tensor:
    """Forward-looking DB (Pan et al. 2023, Eq. 7): mean over real transitions of
    (log F̃(s) + log P_F(s'|s) + E(s') − E(s) − log F̃(s') − log P_B(s|s'))², with log F̃ := 0 at
    the last state of a row that is done (complete: s_L terminal). Rows that are not done (cut
    before the terminal) contribute all their transitions with the learned F̃(s_L); no reward
    is needed, only the energies E(s_0…s_T) [B, T+1]. done [B] defaults to all complete."""
    pf, pb, m = _steps(log_pf, log_pb, mask, prefix=True)
    f, neg_e = _fl_log_flows(log_flow_tilde, energies, pf, m)
    _, terminal = _state_masks(m, _done(done, pf))
    return _db_core(pf, pb, f, m, terminal, neg_e)


@register_gfn_objective("fl_subtb")
def fl_subtb_loss(log_pf, log_pb, log_flow_tilde, energies, mask, done=None,
                  lam: float = 0.9) -> torch.Tensor:
    """Forward-looking SubTB(λ) (Pan et al. 2023, Eq. 9): SubTB with log F(s) = log F̃(s) − E(s),
    i.e. L_{m,n} = (log F̃(s_m) − E(s_m) + Σ log P_F − log F̃(s_n) + E(s_n) − Σ log P_B)²,
    log F̃ := 0 at the last state of rows that are done; λ weighting as subtb_loss."""
    pf, pb, m = _steps(log_pf, log_pb, mask, prefix=True)
    f, neg_e = _fl_log_flows(log_flow_tilde, energies, pf, m)
    _, terminal = _state_masks(m, _done(done, pf))
    return _subtb_core(pf, pb, f, m, terminal, neg_e, lam)


# --------------------------------------------------------------------- log P_F / log P_B
def step_logprob_from_tokens(token_logprobs: torch.Tensor, step_mask: torch.Tensor,
                             num_steps: int | None = None) -> torch.Tensor:
    """A step's log P_F = the sum of its tokens' log-probs (a step is generated autoregressively).

    step_mask is either an integer [B, T_tok] step index per token (−1: the token belongs to no
    step, e.g. prompt / observation / padding; ``num_steps`` defaults to max index + 1) or a 0/1
    [B, S, T_tok] membership mask. Returns [B, S]; a step with no tokens gets 0.
    """
    lp = token_logprobs
    if not isinstance(lp, torch.Tensor) or lp.ndim != 2:
        raise ValueError("token_logprobs must be a [B, T_tok] tensor")
    zero = torch.zeros((), dtype=lp.dtype, device=lp.device)
    if step_mask.ndim == 3:
        if step_mask.shape[0] != lp.shape[0] or step_mask.shape[2] != lp.shape[1]:
            raise ValueError(f"step_mask [B, S, T_tok] shape {tuple(step_mask.shape)} does not "
                             f"match token_logprobs {tuple(lp.shape)}")
        member = step_mask.to(lp.device) != 0
        return torch.where(member, lp[:, None, :], zero).sum(-1)
    if step_mask.shape != lp.shape:
        raise ValueError(f"step_mask shape {tuple(step_mask.shape)} != token_logprobs shape "
                         f"{tuple(lp.shape)} (or give a [B, S, T_tok] membership mask)")
    if step_mask.dtype.is_floating_point or step_mask.dtype == torch.bool:
        raise ValueError("a [B, T_tok] step_mask must hold integer step indices (-1 = no step), "
                         f"got dtype {step_mask.dtype}")
    ids = step_mask.to(device=lp.device, dtype=torch.long)
    if (ids < -1).any():
        raise ValueError("step_mask indices must be >= -1")
    s = int(ids.max()) + 1 if num_steps is None else int(num_steps)
    if ids.numel() and int(ids.max()) >= s:
        raise ValueError(f"step_mask has index {int(ids.max())} >= num_steps {s}")
    valid = ids >= 0
    out = torch.zeros(lp.shape[0], s + 1, dtype=lp.dtype, device=lp.device)
    # tokens of no step go to a scratch column s, dropped below
    out = out.scatter_add(1, torch.where(valid, ids, s), torch.where(valid, lp, zero))
    return out[:, :s]


def finite_action_logprob(candidate_seq_logprobs: torch.Tensor, chosen: torch.Tensor,
                          candidate_mask: torch.Tensor | None = None,
                          temperature: float = 1.0) -> torch.Tensor:
    """log P_F of the chosen action over a finite candidate set (FoR BlocksWorld): log softmax
    over the valid candidates of their sequence log-probs / temperature, at ``chosen`` [B].
    candidate_seq_logprobs, candidate_mask: [B, K]. Returns [B]."""
    x = candidate_seq_logprobs
    if not isinstance(x, torch.Tensor) or x.ndim != 2:
        raise ValueError("candidate_seq_logprobs must be a [B, K] tensor")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    valid = (torch.ones_like(x, dtype=torch.bool) if candidate_mask is None
             else candidate_mask.to(x.device) != 0)
    if valid.shape != x.shape:
        raise ValueError(f"candidate_mask shape {tuple(valid.shape)} != candidate_seq_logprobs "
                         f"shape {tuple(x.shape)}")
    ch = torch.as_tensor(chosen, device=x.device).long()
    if ch.shape != (x.shape[0],):
        raise ValueError(f"chosen must have shape [B] = ({x.shape[0]},), got {tuple(ch.shape)}")
    if ((ch < 0) | (ch >= x.shape[1])).any():
        raise ValueError(f"chosen indices must lie in [0, {x.shape[1]})")
    if not valid.gather(1, ch[:, None]).all():
        raise ValueError("chosen points at a candidate that candidate_mask rules out")
    logits = torch.where(valid, x / temperature, torch.full((), -math.inf, dtype=x.dtype))
    return torch.log_softmax(logits, -1).gather(1, ch[:, None]).squeeze(1)


def tree_log_pb(log_pf: torch.Tensor) -> torch.Tensor:
    """log P_B for tree-shaped generation (each state has one parent, e.g. text appended step by
    step): 0 everywhere, shaped like log_pf."""
    return torch.zeros_like(log_pf)


def uniform_log_pb(num_parents) -> torch.Tensor:
    """log P_B(s|s') = −log |Pa(s')| for DAG domains with a uniform backward policy (FoR)."""
    n = torch.as_tensor(num_parents)
    if n.is_floating_point():
        if not torch.equal(n, n.round()):
            raise ValueError("num_parents must be whole numbers")
    else:
        n = n.to(torch.float32)
    if (n < 1).any():
        raise ValueError(f"num_parents must be >= 1, got min {n.min().item()}")
    return -torch.log(n)


# -------------------------------------------------------------------- schedules / sampling
def _linear(step: int, total: int, start: float, end: float, frac: float) -> float:
    if not total > 0:
        raise ValueError(f"total must be > 0, got {total}")
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}")
    if not 0 < frac <= 1:
        raise ValueError(f"frac must be in (0, 1], got {frac}")
    progress = min(step / (frac * total), 1.0)
    return start + (end - start) * progress


def reward_temperature(step: int, total: int, start: float = 1.0, end: float = 2.0,
                       frac: float = 0.5) -> float:
    """FoR's reward temperature: linear from start to end over the first frac·total steps, then
    constant end. Apply it with ``temper_log_reward``."""
    return _linear(step, total, start, end, frac)


def temper_log_reward(log_r, temperature: float, mode: str = "multiply"):
    """log R · τ ("multiply": R^τ, FoR BlocksWorld — τ↑ sharpens the target) or log R / τ
    ("divide": R^{1/τ}, FoR PrOntoQA — τ↑ flattens it)."""
    if mode not in REWARD_TEMPERATURE_MODES:
        raise ValueError(f"unknown reward temperature mode {mode!r}; choose one of "
                         f"{list(REWARD_TEMPERATURE_MODES)}")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    return log_r * temperature if mode == "multiply" else log_r / temperature


def epsilon_schedule(step: int, total: int, start: float, end: float, frac: float) -> float:
    """ε for ε-uniform exploration: linear start → end over the first frac·total steps, then end
    (FoR: 0.3 or 0.5 → 0.01 over the first half)."""
    for name, v in (("start", start), ("end", end)):
        if not 0 <= v <= 1:
            raise ValueError(f"{name} must be in [0, 1], got {v}")
    return _linear(step, total, start, end, frac)


def tempered_probs(logits: torch.Tensor, temperature: float = 1.0, epsilon: float = 0.0,
                   mask: torch.Tensor | None = None) -> torch.Tensor:
    """Sampling distribution (1 − ε)·softmax(logits / τ) + ε·uniform over the valid actions
    (mask, default: the finite logits) along the last dim."""
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if not 0 <= epsilon <= 1:
        raise ValueError(f"epsilon must be in [0, 1], got {epsilon}")
    valid = torch.isfinite(logits) if mask is None else mask.to(logits.device) != 0
    if valid.shape != logits.shape:
        raise ValueError(f"mask shape {tuple(valid.shape)} != logits shape {tuple(logits.shape)}")
    if not valid.any(-1).all():
        raise ValueError("every row needs at least one valid action")
    neg_inf = torch.full((), -math.inf, dtype=logits.dtype, device=logits.device)
    p = torch.softmax(torch.where(valid, logits / temperature, neg_inf), -1)
    u = valid.to(logits.dtype) / valid.sum(-1, keepdim=True)
    return (1 - epsilon) * p + epsilon * u
