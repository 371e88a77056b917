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

import os
from contextlib import contextmanager

from safetensors.torch import load_file, save_file

from algorithms.gflownet import (db_loss, finite_action_logprob, fl_db_loss, fl_subtb_loss, subtb_loss, tb_loss,
                                 vargrad_tb_loss)
from orchestrator.batch import Batch
from orchestrator.worker_group import Dispatch, register
from workers.actor import ActorWorker
from workers.backends.base import length_order
from workers.prefix_pack import pack_by_prompt, segment_sums, token_weights

OBJECTIVES = ("vargrad_tb", "tb", "db", "subtb", "fl_db", "fl_subtb", "grpo")
FLOW_OBJECTIVES = ("db", "subtb", "fl_db", "fl_subtb")  # need F̃(s): the flow head
FLOW_HEAD_FILE = "flow_head.safetensors"


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


def chosen_log_flows(row_flows: torch.Tensor, flat: torch.Tensor, chosen: torch.Tensor, n_traj: int,
                     T: int) -> torch.Tensor:
    """log F̃ [n_traj, T+1] of the states s_0..s_{T-1} from the rows of their chosen actions (each
    row's prompt is its state; differentiable in row_flows [rows]); s_T and padding get 0 (the
    terminal boundary log F̃(x) = 0 of every complete trajectory)."""
    ch = chosen != 0
    flat = flat.long()[ch]
    state = (flat // T) * (T + 1) + flat % T
    out = torch.zeros(n_traj * (T + 1), dtype=row_flows.dtype, device=row_flows.device)
    return out.index_put((state,), row_flows[ch]).reshape(n_traj, T + 1)


def problem_objective(objective: str, log_pf: torch.Tensor, log_pb: torch.Tensor, log_r: torch.Tensor,
                      mask: torch.Tensor, log_z: torch.Tensor | None = None, log_flow: torch.Tensor | None = None,
                      energies: torch.Tensor | None = None, lam: float = 0.9) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss = mean over the problem's trajectories, Φ = log R + Σ log P_B − Σ log P_F [n] detached).
    vargrad_tb: the group mean of Φ plays log Z; tb: log_z is the problem's learned scalar; db /
    subtb: log_flow [n, T+1] = log F(s) (log F(s_0) plays log Z; log R at the terminal);
    fl_db / fl_subtb: log_flow = log F̃(s) and energies [n, T+1] = E(s_t), the last real one −log R;
    grpo: the RL baseline on the same sampler (FoR vs GRPO, bench/learning.py for)."""
    phi = (log_r + (log_pb * mask).sum(-1) - (log_pf * mask).sum(-1)).detach()
    if objective == "grpo":
        return grpo_trajectory_loss(log_pf, log_r, mask), phi
    if objective == "vargrad_tb":
        return vargrad_tb_loss(log_pf, log_pb, log_r, mask, [0] * log_pf.shape[0]), phi
    if objective == "tb":
        if log_z is None:
            raise ValueError("objective 'tb' needs log_z")
        return tb_loss(log_pf, log_pb, log_r, log_z, mask), phi
    if objective in FLOW_OBJECTIVES and log_flow is None:
        raise ValueError(f"objective {objective!r} needs log_flow (actor flow_head)")
    if objective == "db":
        return db_loss(log_pf, log_pb, log_flow, log_r, mask), phi
    if objective == "subtb":
        return subtb_loss(log_pf, log_pb, log_flow, mask, lam, log_r=log_r), phi
    if objective in ("fl_db", "fl_subtb"):
        if energies is None:
            raise ValueError(f"objective {objective!r} needs the state energies (gfn_energy)")
        if objective == "fl_db":
            return fl_db_loss(log_pf, log_pb, log_flow, energies, mask), phi
        return fl_subtb_loss(log_pf, log_pb, log_flow, energies, mask, lam=lam), phi
    raise ValueError(f"unknown GFlowNet objective {objective!r}; choose one of {list(OBJECTIVES)}")


def grpo_trajectory_loss(log_pf: torch.Tensor, log_r: torch.Tensor, mask: torch.Tensor,
                         eps: float = 1e-6) -> torch.Tensor:
    """GRPO over one problem's n trajectories of the candidate-step policy, the baseline FoR is
    compared with at equal samples: A_i = (R_i − mean R) / (std R + eps) over the group (verl's
    GRPO: unbiased std, eps 1e-6), R_i = exp(log_r_i), and the loss −mean_i A_i · Σ_t log P_F(a_t|s_t).
    Its gradient is GRPO's clipped surrogate at ratio 1 (one on-policy update per batch, as the FoR
    trainer makes; sequence-level, each trajectory's steps summed: its actions are whole steps).
    A group of one trajectory, or of equal rewards, has A = 0."""
    r = log_r.exp()
    adv = r - r.mean()
    if r.numel() > 1:
        adv = adv / (r.std() + eps)
    return -(adv.detach() * (log_pf * mask).sum(-1)).mean()


class GFlowNetActorWorker(ActorWorker):
    """ActorWorker + `gfn_update` (a GFlowNet step), `base_logprobs` (LoRA off) and
    `param_checksums` (what changed). With actor_cfg["flow_head"], a scalar head log F̃(s) =
    w·h(s) + b reads the final hidden state h(s) at the last prompt token of each state (zero-
    initialised, replicated on every rank, its own Adam at actor_cfg["flow_lr"]; saved beside the
    backend checkpoint). Its loss gradient also flows into the LLM (LoRA) through h(s)."""

    @register(dispatch=Dispatch.ONE_TO_ALL)
    def setup(self) -> dict:
        info = super().setup()
        self.flow_head, self._capturing, self._captured = None, False, []
        if self.cfg.get("flow_head"):
            model = self.backend.model
            decoder = model.get_decoder()
            hidden = int(model.config.hidden_size)
            self.flow_head = torch.nn.Linear(hidden, 1, dtype=torch.float32)
            torch.nn.init.zeros_(self.flow_head.weight)
            torch.nn.init.zeros_(self.flow_head.bias)
            self.flow_opt = torch.optim.Adam(self.flow_head.parameters(), lr=float(self.cfg.get("flow_lr", 1e-3)))
            decoder.norm.register_forward_hook(self._capture)
        return info

    def _capture(self, module, inputs, output) -> None:
        if self._capturing:  # only while gfn_update asks
            self._captured.append(output)

    @contextmanager
    def _flows_on(self, on: bool):
        self._capturing, self._captured = on, []
        try:
            yield self._captured
        finally:
            self._capturing, self._captured = False, []

    def _state_flows(self, hidden: torch.Tensor, micro: Batch) -> torch.Tensor:
        """log F̃ [b] of each row's state from the final hidden states [b, L', H] of its forward:
        the last prompt token sits R_used + 1 from the end (the backend drops all-padding columns
        at both ends, see fsdp_model.drop_padding_columns)."""
        R = micro["responses"].shape[1]
        used = micro["attention_mask"][:, -R:].bool().any(0)
        r_used = int(used.nonzero().max()) + 1 if used.any() else 1
        return self.flow_head(hidden[:, -(r_used + 1)].float()).squeeze(-1)

    @register(dispatch=Dispatch.DP_SPLIT)
    def base_logprobs(self, batch: Batch) -> Batch:
        """Log-probs of the response tokens under the base model (LoRA adapters off): FoR's
        likelihood reward. Needs a LoRA actor (without one the base model is gone)."""
        if not int(self.cfg.get("lora_rank", 0)):
            raise ValueError("base_logprobs needs a LoRA actor (actor.lora_rank > 0): the base model is the "
                             "LLM with its adapters disabled")
        with adapters_disabled(self.backend.model):
            logprobs, _ = self.backend.forward_logprobs(batch, self.cfg["micro_batch_size"])
        return Batch({"logprobs": logprobs})

    @register(dispatch=Dispatch.DP_SPLIT)
    def sequence_logprobs(self, batch: Batch, base: bool = False) -> Batch:
        """Sequence log-prob [rows] of each (state prompt, action) row under the actor (base: with
        its LoRA adapters off), prefix-packed like the update unless share_prefix is off."""
        units, seq_of, _, _ = _units(_layout_only(batch), bool(self.cfg.get("share_prefix", True)))
        if base and not int(self.cfg.get("lora_rank", 0)):
            raise ValueError("base scores need a LoRA actor (actor.lora_rank > 0): the base model is the "
                             "LLM with its adapters disabled")
        with adapters_disabled(self.backend.model) if base else _nothing():
            lp, _ = self.backend.forward_logprobs(units, self.cfg["micro_batch_size"])
        return Batch({"seq": seq_of(lp.double().cpu())})

    @register(dispatch=Dispatch.ONE_TO_ALL)
    def gfn_update(self, problems: list[Batch], objective: str, log_z: list[float] | None = None,
                   lam: float = 0.9, sign: float = 1.0) -> dict:
        """One optimizer step on the GFlowNet objective over all `problems` (problem batches of equal
        widths; every rank gets the list and takes problems rank, rank+W, ...). log_z[i]: problem
        i's log Z (objective tb). Flow objectives (db, subtb, fl_db, fl_subtb) need the flow head
        and, for fl_*, meta gfn_energy [n][T+1]. Returns this rank's contributions: `loss` (they sum
        over ranks to the global mean loss), `log_z_grad` {i: dL/dlogZ_i}, `phi_mean` {i: mean Φ}
        and `log_f0` {i: mean log F̃(s_0)} of its problems, the global `grad_norm` / `step_skipped` of
        the LLM and, with the flow head, its (rank-averaged) `flow_grad_norm`. `sign=-1` reverses every
        gradient the objective gives (LLM, flow head, log Z): a check that a learning run can fail.

        The backend runs "units": with share_prefix (default) one prefix-packed row per distinct
        state prompt, holding each of its distinct candidates once (workers/prefix_pack.py: the
        prompt is encoded once for all its candidates, and a state repeated across trajectories
        once), else the rows themselves. Two passes, so that memory is bounded by
        actor.micro_batch_size units whatever the number of candidates: (1) every row's sequence
        log-prob (and flow) without grad -> the exact objective and its gradients g_row = dL/d(seq
        log-prob of the row), f_row = dL/d(log F̃ of the row's state), through the candidate
        softmaxes; (2) train_step over unit micro-batches on the surrogate Σ_rows g_row · seq_row +
        f_row · flow_row (per token: each token of a unit weighted by the g of the rows it scores),
        whose parameter gradient equals dL/dθ (chain rule; the weights are the same in both passes,
        which needs a dropout-free forward: the FoR trainer requires actor.lora_dropout = 0).
        """
        if objective not in OBJECTIVES:
            raise ValueError(f"unknown GFlowNet objective {objective!r}; choose one of {list(OBJECTIVES)}")
        if not problems:
            raise ValueError("gfn_update needs at least one problem batch")
        if objective == "tb" and (log_z is None or len(log_z) != len(problems)):
            raise ValueError(f"objective 'tb' needs one log_z per problem ({len(problems)}), got {log_z!r}")
        flows = objective in FLOW_OBJECTIVES
        if flows and self.flow_head is None:
            raise ValueError(f"objective {objective!r} needs the flow head: build the actor with flow_head=True")
        world, rank, mbs = self.world_size, self.rank, int(self.cfg["micro_batch_size"])
        total_traj = sum(int(p.meta["gfn_n_traj"]) for p in problems)
        mine = list(range(rank, len(problems), world))
        sizes = [len(problems[i]) for i in mine]
        rows = Batch.concat([_layout_only(problems[i]) for i in mine]) if mine else _layout_only(problems[0])
        # What the backend runs: the rows themselves, or (share_prefix) one prefix-packed row per
        # distinct state prompt holding each of its distinct candidates once (workers/prefix_pack.py).
        units, seq_of, weights_of, unit_of_row = _units(rows, bool(self.cfg.get("share_prefix", True)))
        n_real = len(units) if mine else 0
        # Equal unit counts on every rank (the backend's collectives need equal micro-batch counts):
        # pad with copies of a unit whose surrogate weights are 0.
        n_max = int(_all_reduce_max(n_real))
        units = Batch.concat(([units] if n_real else []) + [units.select([0])] * (n_max - n_real))

        # Pass 1: the objective and its gradient w.r.t. each row's sequence log-prob (and flow).
        # Units go in length order, which the backend keeps (stable sort), so the captured
        # hidden states line up with them (checked).
        order = length_order(units)
        sorted_units = units.select(order)
        chunks = sorted_units.chunks_of(mbs)
        with self._flows_on(flows) as captured:
            lp_sorted, _ = self.backend.forward_logprobs(sorted_units, mbs)
            unit_flow = torch.zeros(len(units), dtype=torch.float64)
            if flows:
                if len(captured) != len(chunks) or any(h.shape[0] != len(c) for h, c in zip(captured, chunks)):
                    raise RuntimeError(f"flow head: captured {[h.shape[0] for h in captured]} rows, the micro-batches "
                                       f"hold {[len(c) for c in chunks]}")
                with torch.no_grad():
                    unit_flow[order] = torch.cat([self._state_flows(h, c) for h, c in zip(captured, chunks)]).double().cpu()
        lp = torch.zeros_like(lp_sorted)
        lp[order] = lp_sorted
        seq_all = seq_of(lp[:n_real].double().cpu()) if n_real else torch.zeros(0, dtype=torch.float64)
        row_flow = unit_flow[unit_of_row]
        coef = torch.zeros(len(seq_all), dtype=torch.float64)
        fcoef = torch.zeros(len(seq_all), dtype=torch.float64)
        out = {"loss": 0.0, "log_z_grad": {}, "phi_mean": {}, "log_f0": {}}
        start = 0
        for i, size in zip(mine, sizes):
            mb, m = problems[i], problems[i].meta
            n, T = int(m["gfn_n_traj"]), int(m["gfn_T"])
            seq = seq_all[start:start + size].clone().requires_grad_(True)
            mask = torch.tensor(m["gfn_mask"], dtype=torch.float64)
            log_pf = chosen_log_pf(seq, mb["gfn_flat"], mb["gfn_slot"], mb["gfn_chosen"], n, T, mask)
            z = torch.tensor(float(log_z[i]), dtype=torch.float64, requires_grad=True) if objective == "tb" else None
            fl, log_flow, energies = None, None, None
            if flows:
                fl = row_flow[start:start + size].clone().requires_grad_(True)
                log_flow = chosen_log_flows(fl, mb["gfn_flat"], mb["gfn_chosen"], n, T)
                if objective.startswith("fl_"):
                    energies = torch.tensor(m["gfn_energy"], dtype=torch.float64)
                out["log_f0"][i] = float(log_flow[:, 0].detach().mean())
            loss, phi = problem_objective(objective, log_pf, torch.tensor(m["gfn_log_pb"], dtype=torch.float64),
                                          torch.tensor(m["gfn_log_r"], dtype=torch.float64), mask, z,
                                          log_flow, energies, lam)
            share = n / total_traj  # this problem's part of the mean over all trajectories
            (loss * share * sign).backward()
            coef[start:start + size] = seq.grad
            if fl is not None and fl.grad is not None:
                fcoef[start:start + size] = fl.grad
            out["loss"] += float(loss.detach()) * share
            out["phi_mean"][i] = float(phi.mean())
            if z is not None:
                out["log_z_grad"][i] = float(z.grad)
            start += size
        tok = torch.zeros(units["responses"].shape, dtype=torch.float64)
        unit_f = torch.zeros(len(units), dtype=torch.float64)
        if n_real:
            tok[:n_real] = weights_of(coef)
            unit_f.index_add_(0, unit_of_row, fcoef)
        units["gfn_coef"] = tok.float()      # per token: d objective / d its log-prob
        units["gfn_fcoef"] = unit_f.float()  # per unit (state): d objective / d its log F~

        # Pass 2: gradients of the surrogate, accumulated over micro-batches. FSDP averages
        # gradients over ranks, so each rank's part is scaled by W (the head's own gradient is
        # averaged over ranks below, the same way).
        def loss_fn(micro: Batch, logprobs: torch.Tensor, entropy: torch.Tensor):
            loss = (micro["gfn_coef"].to(logprobs.dtype) * logprobs).sum()
            if flows:
                state_flows = self._state_flows(captured.pop(), micro)
                loss = loss + (micro["gfn_fcoef"].to(state_flows.dtype) * state_flows).sum()
            return loss * world, {}

        with self._flows_on(flows) as captured:
            stats = self.backend.train_step(units.select(order).chunks_of(mbs), loss_fn)
        if flows:
            out["flow_grad_norm"] = self._flow_head_step(world)
        out.update(grad_norm=stats["grad_norm"], step_skipped=stats["step_skipped"])
        return out

    def _flow_head_step(self, world: int) -> float:
        """The head's gradient, averaged over ranks like FSDP's, then its Adam step; returns the
        gradient's norm."""
        for p in self.flow_head.parameters():
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            if dist.is_initialized() and world > 1:
                dist.all_reduce(p.grad)
            p.grad /= world
        norm = float(torch.sqrt(sum((p.grad.double() ** 2).sum() for p in self.flow_head.parameters())))
        self.flow_opt.step()
        self.flow_opt.zero_grad(set_to_none=True)
        return norm

    @register(dispatch=Dispatch.ONE_TO_ALL)
    def save(self, path: str, with_optimizer: bool = True) -> None:
        super().save(path, with_optimizer)
        if self.flow_head is not None and self.rank == 0:
            state = {f"head.{k}": v.detach().clone() for k, v in self.flow_head.state_dict().items()}
            if with_optimizer:
                for k, v in self.flow_opt.state_dict()["state"].get(0, {}).items():
                    state[f"adam.weight.{k}"] = torch.as_tensor(v).clone()
                for k, v in self.flow_opt.state_dict()["state"].get(1, {}).items():
                    state[f"adam.bias.{k}"] = torch.as_tensor(v).clone()
            save_file(state, os.path.join(path, FLOW_HEAD_FILE))

    @register(dispatch=Dispatch.ONE_TO_ALL)
    def load(self, path: str, with_optimizer: bool = True) -> None:
        super().load(path, with_optimizer)
        if self.flow_head is None:
            return
        file = os.path.join(path, FLOW_HEAD_FILE)
        if not os.path.exists(file):
            raise FileNotFoundError(f"{file}: the checkpoint has no flow head (was it saved with objective "
                                    f"{'/'.join(FLOW_OBJECTIVES)}?)")
        state = load_file(file)
        self.flow_head.load_state_dict({k[5:]: v for k, v in state.items() if k.startswith("head.")})
        if with_optimizer and any(k.startswith("adam.") for k in state):
            opt = self.flow_opt.state_dict()
            opt["state"] = {i: {k.split(".")[-1]: v for k, v in state.items() if k.startswith(f"adam.{name}.")}
                            for i, name in enumerate(("weight", "bias"))}
            self.flow_opt.load_state_dict(opt)

    @register(dispatch=Dispatch.ONE_TO_ALL)
    def param_checksums(self) -> dict[str, tuple[float, float]]:
        """name -> (sum, sum of squares) of this rank's local shard of each parameter (float64),
        the flow head's as flow_head.*: compare two calls to see which parameters an update changed."""
        named = list(self.backend.model.named_parameters())
        if self.flow_head is not None:
            named += [(f"flow_head.{k}", v) for k, v in self.flow_head.named_parameters()]
        out = {}
        for name, p in named:
            t = p.to_local() if hasattr(p, "to_local") else p
            t = t.detach().double()
            out[name] = (float(t.sum()), float((t * t).sum()))
        return out


@contextmanager
def adapters_disabled(model: torch.nn.Module):
    """Run `model` with every peft LoRA layer off (the base model), then switch them back on."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    layers = [m for m in model.modules() if isinstance(m, BaseTunerLayer)]
    for m in layers:
        m.enable_adapters(False)
    try:
        yield
    finally:
        for m in layers:
            m.enable_adapters(True)


@contextmanager
def _nothing():
    yield


def _units(rows: Batch, share_prefix: bool):
    """(units the backend runs, per-token log-probs [units] -> sequence log-probs [rows], row
    weights [rows] -> per-token weights [units] (the adjoint), unit of each row [rows])."""
    if share_prefix:
        units, index = pack_by_prompt(rows, pad_token_id=0)  # the pad id never reaches the model
        return (units, lambda lp: segment_sums(lp, units, index), lambda w: token_weights(w, units, index),
                index.packed_row[index.unique_of_row])
    mask = rows["response_mask"].double()
    return rows, lambda lp: (lp * mask).sum(-1), lambda w: w[:, None] * mask, torch.arange(len(rows))


def _layout_only(batch: Batch) -> Batch:
    """The sequence-layout tensors of a problem batch (drops the gfn_* row indices)."""
    return Batch({k: v for k, v in batch.tensors.items() if not k.startswith("gfn_")})


def _all_reduce_max(value: int) -> int:
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return value
    t = torch.tensor([int(value)], dtype=torch.long)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return int(t.item())
