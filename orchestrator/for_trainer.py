"""Flow of Reasoning (Yu et al. 2025, §4 of algorithms.md) on BlocksWorld: GFlowNet fine-tuning.

    hyflow train configs/for_blocksworld.yaml          # for_.enabled: true selects this trainer

A state is the problem plus the actions so far; A(s) = the allowed actions not yet taken. The
driver scores each candidate's text with the actor's teacher-forced log-probs (no generation
engine: the action set is finite), samples trajectories from softmax(candidates) with tempered and
ε-uniform exploration, replays top trajectories from a prioritized buffer, runs local search on the
best one, and sends every trajectory's candidate rows to the workers (workers/gfn_actor.py), which
recompute log P_F with grad and take the GFlowNet step. log R = log max(for_reward, floor) · τ_R,
log P_B = −log |Pa(s')| (the state graph is a DAG). With objective tb a per-problem log Z is learned
here on the driver (Adam) from the gradients the workers return.

Checkpoints (`checkpoints/step_N/`): the actor (LoRA adapter + optimizer) and trainer_state.json with
the replay buffer (contents, order, RNG), log Z (+ its Adam state), the data cursor and the
sampling RNG: a restored trainer continues exactly.
"""
from __future__ import annotations

import logging
import math
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from algorithms.gflownet import epsilon_schedule, reward_temperature, temper_log_reward, tempered_probs, uniform_log_pb
from algorithms.replay import PrioritizedReplay, local_search
from envs import blocksworld as bw
from orchestrator.batch import Batch
from orchestrator.checkpoint import checkpoint_dir, load_trainer_state, save_checkpoint
from orchestrator.config import Config, save_yaml
from orchestrator.metrics import MetricsLog, Timer, console_line
from orchestrator.model_prep import resolve_model_path
from orchestrator.resources import ResourcePool, init_ray
from orchestrator.worker_group import WorkerGroup
from workers.gfn_actor import GFlowNetActorWorker
from workers.rollout import pack_sequences

log = logging.getLogger("hyflow")


# ------------------------------------------------------------------ the environment, on the driver
def walk(problem: bw.Problem, actions) -> list[bw.State]:
    """States s_0 … s_n along `actions` (texts); ValueError on an inapplicable one."""
    states = [problem.init]
    for a in actions:
        nxt = bw.apply(states[-1], bw.parse_action(a))
        if nxt is None:
            raise ValueError(f"action {a!r} is not applicable in its state")
        states.append(nxt)
    return states


def candidates(state: bw.State, taken) -> list[str]:
    """FoR's A(s): the allowed actions minus those already taken (all allowed if none is left)."""
    allowed = bw.allowed_actions(state)
    return [a for a in allowed if a not in taken] or allowed


def log_reward(problem: bw.Problem, actions, floor: float) -> float:
    """log max(for_reward(final state), floor) (untempered)."""
    return math.log(max(bw.for_reward(problem, walk(problem, actions)[-1]), floor))


def is_done(problem: bw.Problem, state: bw.State, n_actions: int, max_len: int) -> bool:
    return n_actions >= max_len or bw.is_goal(problem, state)


def prompt_text(problem: bw.Problem, actions) -> str:
    return bw.to_text(problem) + "".join(a + "\n" for a in actions)


class Cursor:
    """Problems served in batches, reshuffled each epoch (seeded): the resumable data cursor."""

    def __init__(self, size: int, batch_size: int, seed: int):
        if batch_size > size:
            raise ValueError(f"data.batch_size={batch_size} exceeds for_.num_problems={size}")
        self.size, self.batch_size, self.seed, self.epoch, self.position = size, batch_size, seed, 0, 0

    def next(self) -> list[int]:
        if self.position + self.batch_size > self.size:
            self.epoch, self.position = self.epoch + 1, 0
        order = np.random.default_rng([self.seed, self.epoch]).permutation(self.size)
        idx = order[self.position:self.position + self.batch_size]
        self.position += self.batch_size
        return [int(i) for i in idx]

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "position": self.position, "seed": self.seed, "size": self.size}

    def load_state_dict(self, s: dict) -> None:
        if (s["size"], s["seed"]) != (self.size, self.seed):
            raise ValueError(f"data cursor was saved for {s['size']} problems with seed {s['seed']}, "
                             f"this run has {self.size} with seed {self.seed}")
        self.epoch, self.position = int(s["epoch"]), int(s["position"])


# ------------------------------------------------------------------ JSON-safe state of the replay buffer
def replay_to_json(rb: PrioritizedReplay) -> dict:
    s = rb.state_dict()
    return {**s, "heaps": [[pid, [[r, c, list(k), list(it)] for r, c, k, it in heap]] for pid, heap in s["heaps"].items()]}


def replay_from_json(s: dict) -> dict:
    heaps = {int(pid): [(float(r), int(c), tuple(k), tuple(it)) for r, c, k, it in heap] for pid, heap in s["heaps"]}
    return {**s, "heaps": heaps}


class ForTrainer:
    def __init__(self, cfg: Config):
        from transformers import AutoTokenizer

        self.cfg, f = cfg, cfg.for_
        self.run_dir = Path(cfg.trainer.output_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        save_yaml(cfg, self.run_dir / "config.yaml")
        if cfg.actor.lora_dropout > 0:  # the update's two passes must see the same function (gfn_actor.py)
            raise ValueError(f"actor.lora_dropout must be 0 for FoR training, got {cfg.actor.lora_dropout}")
        self.model_path = resolve_model_path(cfg.model.path)
        self.tok = AutoTokenizer.from_pretrained(self.model_path)
        probs = bw.generate_problems(f.num_problems + f.val_problems, f.n_blocks, f.plan_lengths, seed=cfg.data.seed)
        self.problems, self.val = probs[:f.num_problems], probs[f.num_problems:]
        self.cursor = Cursor(len(self.problems), cfg.data.batch_size, cfg.data.seed)
        self.replay = PrioritizedReplay(f.buffer_size, seed=cfg.trainer.seed)
        self.rng = np.random.default_rng([cfg.trainer.seed, 1])
        self.log_z = torch.zeros(len(self.problems), requires_grad=True)
        self.logz_opt = torch.optim.Adam([self.log_z], lr=f.logz_lr)
        self.global_step = 0
        r, a = cfg.ray, cfg.actor
        ray = init_ray(address=r.address, num_cpus=r.num_cpus, object_store_mb=r.object_store_mb, dashboard=r.dashboard)
        gpus = 1.0 if ray.cluster_resources().get("GPU", 0) >= a.world_size else 0.0
        self.pool = ResourcePool(a.world_size, cpus_per_bundle=a.cpus_per_worker, gpus_per_bundle=gpus, name="for")
        actor_cfg = {**asdict(a), "dtype": cfg.model.dtype, "lora_sync": "merge"}
        self.group = WorkerGroup(self.pool, {"actor": (GFlowNetActorWorker, dict(
            model_path=self.model_path, actor_cfg=actor_cfg, trainable=True, seed=cfg.trainer.seed))},
            name="for-trainer", num_cpus_per_worker=a.cpus_per_worker, num_gpus_per_worker=gpus,
            call_timeout_s=r.call_timeout_s)
        self.actor = self.group.role("actor")
        self.actor.setup()
        self.metrics = MetricsLog(self.run_dir)

    # ------------------------------------------------------------------ scoring and sampling
    def _tokens(self, pairs: list[tuple[str, str]]) -> tuple[list[list[int]], list[list[int]]]:
        return ([self.tok(p)["input_ids"] for p, _ in pairs],
                [self.tok(a + "\n", add_special_tokens=False)["input_ids"] for _, a in pairs])

    def _rows(self, pairs: list[tuple[str, str]], widths: tuple[int, int] | None = None) -> Batch:
        """(state prompt, action) pairs -> the pack_sequences layout (action tokens = response)."""
        prompts, acts = self._tokens(pairs)
        P, R = widths or (max(map(len, prompts)), max(map(len, acts)))
        return pack_sequences(prompts, acts, [[0.0] * len(x) for x in acts], P, R, self.tok.pad_token_id or 0)

    def score(self, pairs: list[tuple[str, str]]) -> torch.Tensor:
        """Sequence log-probs [len(pairs)] of each action after its prompt, under the actor."""
        batch = self._rows(pairs)
        lp = self.actor.compute_logprobs(batch)["logprobs"]
        return (lp * batch["response_mask"]).sum(-1).double()

    def sample(self, pids: list[int], n: int, problems: list, epsilon: float, temp: float,
               temp_prob: float) -> dict[int, list[tuple]]:
        """n trajectories per problem from P_F, all trajectories advanced together (one scoring
        call per depth). A trajectory draws temperature `temp` with prob temp_prob (else 1)."""
        slack = self.cfg.for_.slack
        trajs = [(pid, []) for pid in pids for _ in range(n)]
        temps = [temp if self.rng.random() < temp_prob else 1.0 for _ in trajs]
        states = [problems[pid].init for pid, _ in trajs]
        while True:
            live = [i for i, (pid, acts) in enumerate(trajs)
                    if not is_done(problems[pid], states[i], len(acts), problems[pid].optimal_length + slack)]
            if not live:
                break
            cands = {i: candidates(states[i], trajs[i][1]) for i in live}
            pairs = [(prompt_text(problems[trajs[i][0]], trajs[i][1]), c) for i in live for c in cands[i]]
            seq, k = self.score(pairs), 0
            for i in live:
                logits = seq[k:k + len(cands[i])]
                k += len(cands[i])
                p = tempered_probs(logits, temps[i], epsilon).numpy()
                a = cands[i][int(self.rng.choice(len(p), p=p / p.sum()))]
                trajs[i][1].append(a)
                states[i] = bw.apply(states[i], bw.parse_action(a))
        out: dict[int, list[tuple]] = {pid: [] for pid in pids}
        for pid, acts in trajs:
            out[pid].append(tuple(acts))
        return out

    def _complete(self, problem: bw.Problem):
        """Local search's completion: uniform random allowed, untaken actions until done."""
        max_len = problem.optimal_length + self.cfg.for_.slack

        def complete(prefix: tuple, rng: np.random.Generator) -> list[str]:
            acts, state = list(prefix), walk(problem, prefix)[-1]
            while not is_done(problem, state, len(acts), max_len):
                c = candidates(state, acts)
                acts.append(c[int(rng.integers(len(c)))])
                state = bw.apply(state, bw.parse_action(acts[-1]))
            return acts[len(prefix):]
        return complete

    # ------------------------------------------------------------------ the training rows
    def problem_rows(self, problem: bw.Problem, trajs: list[tuple], log_r: list[float]) -> tuple[list, dict, dict]:
        """Every candidate row of every step of `trajs`: (pairs, row index tensors, meta) in
        gfn_actor.py's layout."""
        T = max(len(t) for t in trajs)
        pairs, flat, slot, chosen = [], [], [], []
        log_pb = np.zeros((len(trajs), T))
        mask = np.zeros((len(trajs), T))
        for j, acts in enumerate(trajs):
            states = walk(problem, acts)
            for t, a in enumerate(acts):
                cands = candidates(states[t], acts[:t])
                if a not in cands:
                    raise ValueError(f"trajectory {acts} step {t}: {a!r} is not among its candidates")
                prompt = prompt_text(problem, acts[:t])
                for k, c in enumerate(cands):
                    pairs.append((prompt, c))
                    flat.append(j * T + t)
                    slot.append(k)
                    chosen.append(int(c == a))
                log_pb[j, t] = float(uniform_log_pb(bw.num_parents(states[t + 1])))
                mask[j, t] = 1.0
        index = {"gfn_flat": torch.tensor(flat), "gfn_slot": torch.tensor(slot), "gfn_chosen": torch.tensor(chosen)}
        meta = dict(gfn_n_traj=len(trajs), gfn_T=T, gfn_log_r=list(log_r), gfn_log_pb=log_pb.tolist(),
                    gfn_mask=mask.tolist())
        return pairs, index, meta

    def problem_batches(self, problems: list[bw.Problem], trajs: list[list[tuple]],
                        log_r: list[list[float]]) -> list[Batch]:
        """One batch per problem (its candidate rows), all packed to the same widths."""
        built = [self.problem_rows(p, t, r) for p, t, r in zip(problems, trajs, log_r)]
        toks = [self._tokens(pairs) for pairs, _, _ in built]
        widths = (max(len(x) for pr, _ in toks for x in pr), max(len(x) for _, ac in toks for x in ac))
        out = []
        for pairs, index, meta in built:
            b = self._rows(pairs, widths)
            b.update(index)
            b.meta.update(meta)
            out.append(b)
        return out

    # ------------------------------------------------------------------ one step
    def schedules(self) -> dict:
        f, s, n = self.cfg.for_, self.global_step, self.cfg.trainer.total_steps
        lin = lambda v: v[0] + (v[1] - v[0]) * min(s / (f.schedule_frac * n), 1.0)  # noqa: E731
        return {"epsilon": epsilon_schedule(s, n, *f.epsilon, f.schedule_frac),
                "pf_temp": lin(f.pf_temp), "use_buffer_prob": lin(f.use_buffer_prob),
                "reward_temp": reward_temperature(s, n, *f.reward_temp, f.schedule_frac)}

    def step(self) -> dict:
        f, t = self.cfg.for_, Timer()
        sch = self.schedules()
        with t("step"):
            pids = self.cursor.next()
            replayed = [p for p in pids if p in self.replay and self.rng.random() < sch["use_buffer_prob"]]
            fresh = [p for p in pids if p not in replayed]
            with t("sample"):
                trajs = self.sample(fresh, f.n_samples, self.problems, sch["epsilon"], sch["pf_temp"], f.pf_temp_prob)
            for p in replayed:
                trajs[p] = [item for _, _, item in self.replay.sample(p, f.n_samples)]
            lr = {p: [log_reward(self.problems[p], a, f.reward_floor) for a in trajs[p]] for p in pids}
            n_ls = 0
            if f.local_search_tries:
                for p in pids:
                    best = int(np.argmax(lr[p]))
                    for acts, r in local_search(trajs[p][best], lambda a, p=p: log_reward(self.problems[p], a, f.reward_floor),
                                                self._complete(self.problems[p]), f.local_search_tries, self.rng,
                                                best_log_r=lr[p][best]):
                        trajs[p].append(tuple(acts))
                        lr[p].append(r)
                        n_ls += 1
            for p in pids:
                for acts, r in zip(trajs[p], lr[p]):
                    self.replay.add(p, acts, r, acts)
            batches = self.problem_batches([self.problems[p] for p in pids], [trajs[p] for p in pids],
                                           [[temper_log_reward(r, sch["reward_temp"]) for r in lr[p]] for p in pids])
            with t("train"):
                z = [float(self.log_z[p].detach()) for p in pids] if f.objective == "tb" else None
                outs = self.actor.gfn_update(batches, f.objective, z)
            self._update_log_z(pids, outs)
        self.global_step += 1
        row = {"step": self.global_step, "for/loss": sum(o["loss"] for o in outs),
               "for/log_r_mean": float(np.mean([r for p in pids for r in lr[p]])),
               "for/replay_size": len(self.replay), "for/local_search_accepted": n_ls,
               "for/replayed_problems": len(replayed), "actor/grad_norm": outs[0]["grad_norm"],
               "for/log_z_mean": float(self.log_z.detach()[pids].mean()), **{f"for/{k}": v for k, v in sch.items()}}
        row.update(plan_metrics({p: trajs[p][:f.n_samples] for p in fresh}, self.problems, "for"))
        row.update(t.times)
        return row

    def _update_log_z(self, pids: list[int], outs: list[dict]) -> None:
        """tb: an Adam step on log Z from the workers' gradients (summed over ranks). vargrad_tb: log Z
        is implicit; keep the group mean of Φ (its optimum under the current policy) as the estimate."""
        if self.cfg.for_.objective == "tb":
            grad = torch.zeros_like(self.log_z)
            for o in outs:
                for i, g in o["log_z_grad"].items():
                    grad[pids[int(i)]] += g
            self.log_z.grad = grad
            self.logz_opt.step()
            self.logz_opt.zero_grad(set_to_none=True)
        else:
            with torch.no_grad():
                for o in outs:
                    for i, v in o["phi_mean"].items():
                        self.log_z[pids[int(i)]] = v

    def validate(self) -> dict:
        """Held-out problems: k samples from P_F at temperature 1, no exploration."""
        if not self.val:
            return {}
        f = self.cfg.for_
        trajs = self.sample(list(range(len(self.val))), f.val_samples, self.val, 0.0, 1.0, 0.0)
        return plan_metrics(trajs, self.val, "val")

    # ------------------------------------------------------------------ checkpoints and the run
    def state_dict(self) -> dict:
        opt = self.logz_opt.state_dict()
        st = opt["state"].get(0, {})
        return {"step": self.global_step, "data": self.cursor.state_dict(), "replay": replay_to_json(self.replay),
                "rng": self.rng.bit_generator.state, "log_z": self.log_z.detach().tolist(),
                "log_z_adam": {k: (v.tolist() if torch.is_tensor(v) else v) for k, v in st.items()},
                "seed": self.cfg.trainer.seed}

    def save(self) -> Path:
        state = self.state_dict()
        state.pop("step")
        return save_checkpoint(self.run_dir, self.global_step, self.actor, state)

    def load(self, step: int) -> None:
        """Restore checkpoint `step` of this run directory: actor, buffer, log Z, cursor, RNG."""
        s = load_trainer_state(self.run_dir, step)
        self.actor.load(str(checkpoint_dir(self.run_dir, step) / "actor"), True)
        self.cursor.load_state_dict(s["data"])
        self.replay.load_state_dict(replay_from_json(s["replay"]))
        self.rng.bit_generator.state = s["rng"]
        if len(s["log_z"]) != len(self.problems):
            raise ValueError(f"checkpoint log_z has {len(s['log_z'])} problems, this run {len(self.problems)}")
        with torch.no_grad():
            self.log_z.copy_(torch.tensor(s["log_z"]))
        if s["log_z_adam"]:
            opt = self.logz_opt.state_dict()
            opt["state"] = {0: {k: torch.tensor(v) for k, v in s["log_z_adam"].items()}}
            self.logz_opt.load_state_dict(opt)
        self.global_step = int(s["step"])

    def fit(self) -> dict:
        cfg, last = self.cfg, {}
        self.metrics.log({"step": self.global_step, **self.validate()})
        while self.global_step < cfg.trainer.total_steps:
            last = self.step()
            every = cfg.trainer.val_every
            if self.global_step == cfg.trainer.total_steps or (every and self.global_step % every == 0):
                last.update(self.validate())
            self.metrics.log(last)
            if self.global_step % cfg.trainer.log_every == 0:
                log.info(console_line(last))
            if cfg.trainer.save_every and self.global_step % cfg.trainer.save_every == 0 \
                    and self.global_step != cfg.trainer.total_steps:
                self.save()
        log.info("done: checkpoint %s", self.save())
        return last

    def shutdown(self) -> None:
        self.group.shutdown()
        self.pool.shutdown()


def plan_metrics(trajs: dict[int, list[tuple]], problems: list, prefix: str) -> dict:
    """accuracy = share of problems with >= 1 correct plan among their samples (check_plan);
    diversity = mean number of distinct correct plans per solved problem (NaN: none sampled/solved)."""
    correct = {p: {a for a in ts if bw.check_plan(problems[p], list(a))} for p, ts in trajs.items()}
    solved = [len(c) for c in correct.values() if c]
    return {f"{prefix}/accuracy": (len(solved) / len(trajs)) if trajs else float("nan"),
            f"{prefix}/diversity": float(np.mean(solved)) if solved else float("nan")}
