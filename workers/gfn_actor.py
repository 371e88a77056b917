"""The GFlowNet actor: an ActorWorker whose update is a GFlowNet objective over finite action sets.

FoR on BlocksWorld (Yu et al. 2025): P_F(a|s) = softmax over the candidate actions A(s) of the LM's
sequence log-prob of each action's text after the prompt of s. The driver sends, per problem, one
"problem batch": every (state prompt, candidate action) row of every step of the problem's
trajectories, in the pack_sequences layout, plus where each row sits:

    tensors  gfn_flat [rows] = traj * T + step, gfn_slot [rows] = candidate index in A(s_step),
             gfn_chosen [rows] = 1 for the action the trajectory took
    meta     gfn_n_traj, gfn_T, gfn_log_r [n] (tempered), gfn_log_pb [n][T], gfn_mask [n][T]

`gfn_update` recomputes every candidate's log-prob under the current weights, forms log P_F of the
chosen actions (a softmax over each step's candidates), takes the objective and one optimizer step
through the backend's `train_step` in row micro-batches (two passes, see its docstring). Problems
are whole per rank (rank r takes problems r, r+W, ...), so each per-problem loss (a group mean for
VarGrad) is exact; each is weighted by its share of all trajectories, and FSDP's gradient mean over
ranks is undone by a factor W: the step equals one process minimizing the mean over all trajectories.
All problem batches of one call must share their widths (prompt and response columns).
"""
from __future__ import annotations

import torch
import torch.distributed as dist

from algorithms.gflownet import finite_action_logprob, tb_loss, vargrad_tb_loss
from orchestrator.batch import Batch
from orchestrator.worker_group import Dispatch, register
from workers.actor import ActorWorker
from workers.backends.base import length_order

OBJECTIVES = ("vargrad_tb", "tb")


def chosen_log_pf(seq_logprobs: torch.Tensor, flat: torch.Tensor, slot: torch.Tensor, chosen: torch.Tensor,
                  n_traj: int, T: int, mask: torch.Tensor) -> torch.Tensor:
    """log P_F [n_traj, T] of the chosen actions: a log-softmax over each step's candidates of their
    sequence log-probs (differentiable in seq_logprobs [rows]). Steps off `mask` get 0."""
    n_steps = n_traj * T
    if flat.numel() and (int(flat.min()) < 0 or int(flat.max()) >= n_steps):
        raise ValueError(f"gfn_flat must lie in [0, {n_steps}), got [{int(flat.min())}, {int(flat.max())}]")
    K = int(slot.max()) + 1 if slot.numel() else 1
    flat, slot = flat.long(), slot.long()
    logits = torch.zeros(n_steps, K, dtype=seq_logprobs.dtype, device=seq_logprobs.device)
    logits = logits.index_put((flat, slot), seq_logprobs)  # out of place: keeps the graph
    valid = torch.zeros(n_steps, K, dtype=torch.bool, device=seq_logprobs.device)
    valid[flat, slot] = True
    idx = torch.zeros(n_steps, dtype=torch.long, device=seq_logprobs.device)
    ch = chosen != 0
    idx[flat[ch]] = slot[ch]
    has_choice = torch.zeros(n_steps, dtype=torch.bool, device=seq_logprobs.device)
    has_choice[flat[ch]] = True
    m = mask.reshape(-1) != 0
    if (m & ~has_choice).any():
        raise ValueError("a real step (gfn_mask = 1) has no chosen candidate row (gfn_chosen = 1)")
    # Steps without rows (padding) get one dummy candidate: their log P_F is 0 and masked out.
    empty = ~valid.any(-1)
    valid[empty, 0] = True
    lp = finite_action_logprob(logits, idx, valid)
    return torch.where(m, lp, torch.zeros_like(lp)).reshape(n_traj, T)


def problem_objective(objective: str, log_pf: torch.Tensor, log_pb: torch.Tensor, log_r: torch.Tensor,
                      mask: torch.Tensor, log_z: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss = mean over the problem's trajectories, Φ = log R + Σ log P_B − Σ log P_F [n] detached).
    vargrad_tb: the group mean of Φ plays log Z; tb: log_z is the problem's learned scalar."""
    phi = (log_r + (log_pb * mask).sum(-1) - (log_pf * mask).sum(-1)).detach()
    if objective == "vargrad_tb":
        return vargrad_tb_loss(log_pf, log_pb, log_r, mask, [0] * log_pf.shape[0]), phi
    if objective == "tb":
        if log_z is None:
            raise ValueError("objective 'tb' needs log_z")
        return tb_loss(log_pf, log_pb, log_r, log_z, mask), phi
    raise ValueError(f"unknown GFlowNet objective {objective!r}; choose one of {list(OBJECTIVES)}")


class GFlowNetActorWorker(ActorWorker):
    """ActorWorker + `gfn_update` (a GFlowNet step) + `param_checksums` (what changed)."""

    @register(dispatch=Dispatch.ONE_TO_ALL)
    def gfn_update(self, problems: list[Batch], objective: str, log_z: list[float] | None = None) -> dict:
        """One optimizer step on the GFlowNet objective over all `problems` (problem batches of equal
        widths; every rank gets the list and takes problems rank, rank+W, ...). log_z[i]: problem
        i's log Z (objective tb). Returns this rank's contributions: `loss` (they sum over ranks to
        the global mean loss), `log_z_grad` {i: dL/dlogZ_i} and `phi_mean` {i: mean Φ} of its
        problems, and the backend's global `grad_norm` / `step_skipped`.

        Two passes, so that memory is bounded by actor.micro_batch_size rows whatever the number
        of candidates: (1) every row's sequence log-prob without grad -> the exact objective and
        its gradient g_row = dL/d(seq log-prob of the row), through the candidate softmaxes;
        (2) train_step over row micro-batches on the surrogate Σ_rows g_row · seq_row, whose
        parameter gradient equals dL/dθ (chain rule; the weights are the same in both passes,
        which needs a dropout-free forward: the FoR trainer requires actor.lora_dropout = 0).
        """
        if objective not in OBJECTIVES:
            raise ValueError(f"unknown GFlowNet objective {objective!r}; choose one of {list(OBJECTIVES)}")
        if not problems:
            raise ValueError("gfn_update needs at least one problem batch")
        if objective == "tb" and (log_z is None or len(log_z) != len(problems)):
            raise ValueError(f"objective 'tb' needs one log_z per problem ({len(problems)}), got {log_z!r}")
        world, rank, mbs = self.world_size, self.rank, int(self.cfg["micro_batch_size"])
        total_traj = sum(int(p.meta["gfn_n_traj"]) for p in problems)
        mine = list(range(rank, len(problems), world))
        sizes = [len(problems[i]) for i in mine]
        rows = Batch.concat([_layout_only(problems[i]) for i in mine]) if mine else None
        # Equal row counts on every rank (the backend's collectives need equal micro-batch counts):
        # pad with copies of a row whose surrogate coefficient is 0.
        n_max = int(_all_reduce_max(len(rows) if rows is not None else 0))
        filler = _layout_only(problems[mine[0] if mine else 0]).select([0])
        n_real = len(rows) if rows is not None else 0
        rows = Batch.concat(([rows] if rows is not None else []) + [filler] * (n_max - n_real))

        # Pass 1: the objective and its gradient w.r.t. each row's sequence log-prob.
        lp, _ = self.backend.forward_logprobs(rows, mbs)
        seq_all = (lp * rows["response_mask"].to(lp.dtype)).sum(-1).double()
        coef = torch.zeros(len(rows), dtype=torch.float64)
        out = {"loss": 0.0, "log_z_grad": {}, "phi_mean": {}}
        start = 0
        for i, size in zip(mine, sizes):
            mb, m = problems[i], problems[i].meta
            n, T = int(m["gfn_n_traj"]), int(m["gfn_T"])
            seq = seq_all[start:start + size].clone().requires_grad_(True)
            mask = torch.tensor(m["gfn_mask"], dtype=torch.float64)
            log_pf = chosen_log_pf(seq, mb["gfn_flat"], mb["gfn_slot"], mb["gfn_chosen"], n, T, mask)
            z = torch.tensor(float(log_z[i]), dtype=torch.float64, requires_grad=True) if objective == "tb" else None
            loss, phi = problem_objective(objective, log_pf, torch.tensor(m["gfn_log_pb"], dtype=torch.float64),
                                          torch.tensor(m["gfn_log_r"], dtype=torch.float64), mask, z)
            share = n / total_traj  # this problem's part of the mean over all trajectories
            (loss * share).backward()
            coef[start:start + size] = seq.grad
            out["loss"] += float(loss) * share
            out["phi_mean"][i] = float(phi.mean())
            if z is not None:
                out["log_z_grad"][i] = float(z.grad)
            start += size
        rows["gfn_coef"] = coef.float()

        # Pass 2: gradients of the surrogate, accumulated over row micro-batches. FSDP averages
        # gradients over ranks, so each rank's part is scaled by W.
        def loss_fn(micro: Batch, logprobs: torch.Tensor, entropy: torch.Tensor):
            seq_mb = (logprobs * micro["response_mask"].to(logprobs.dtype)).sum(-1)
            return (micro["gfn_coef"].to(seq_mb.dtype) * seq_mb).sum() * world, {}

        stats = self.backend.train_step(rows.select(length_order(rows)).chunks_of(mbs), loss_fn)
        out.update(grad_norm=stats["grad_norm"], step_skipped=stats["step_skipped"])
        return out

    @register(dispatch=Dispatch.ONE_TO_ALL)
    def param_checksums(self) -> dict[str, tuple[float, float]]:
        """name -> (sum, sum of squares) of this rank's local shard of each parameter (float64):
        compare two calls to see which parameters an update changed."""
        out = {}
        for name, p in self.backend.model.named_parameters():
            t = p.to_local() if hasattr(p, "to_local") else p
            t = t.detach().double()
            out[name] = (float(t.sum()), float((t * t).sum()))
        return out



def _layout_only(batch: Batch) -> Batch:
    """The sequence-layout tensors of a problem batch (drops the gfn_* row indices)."""
    return Batch({k: v for k, v in batch.tensors.items() if not k.startswith("gfn_")})


def _all_reduce_max(value: int) -> int:
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return value
    t = torch.tensor([int(value)], dtype=torch.long)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return int(t.item())
