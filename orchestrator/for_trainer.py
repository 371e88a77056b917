"""Flow of Reasoning (Yu et al. 2025, §4 of algorithms.md): GFlowNet fine-tuning of the LLM policy.

    hyflow train configs/for_blocksworld.yaml          # for_.enabled: true selects this trainer
    hyflow train configs/for_game24.yaml               # for_.domain picks the task (envs/for_domains.py)
    hyflow train configs/for_prontoqa.yaml

A state is the problem plus the actions so far; A(s) is the domain's finite action set. The driver
scores each candidate's text with the actor's teacher-forced log-probs (no generation engine),
samples trajectories from softmax(candidates) with tempered and ε-uniform exploration, replays top
trajectories from a prioritized buffer, runs local search on the best one, and sends every
trajectory's candidate rows to the workers (workers/gfn_actor.py), which recompute log P_F with
grad and take the GFlowNet step.

log R = log max(R + λ·ll_bonus, floor) (FoR's augmented reward: ll_bonus from the base model's, i.e.
LoRA-off, log-likelihood of each chosen step), tempered by the schedule's τ_R with the domain's FoR
rule (`ForDomain.tempered_log_reward`: × τ_R on BlocksWorld, ÷ τ_R on PrOntoQA); log P_B =
−log |Pa(s')| on DAG domains, 0 on trees. Trajectories that do not draw the tempered P_F sample at
the domain's `untempered_pf_temp` (FoR: 1 on BlocksWorld, 0.7 on PrOntoQA); validation at its
`val_pf_temp`. Local search (FoR) runs on the freshly sampled problems only (a replayed problem has
no fresh best) and accepts each completion whose log R beats the fixed best of its fresh samples
(`local_search_round`, `algorithms.replay.accept_improving`).

Objectives: vargrad_tb (FoR), tb (per-problem log Z learned here on the driver with Adam from the
workers' gradients), db / subtb and the forward-looking fl_db / fl_subtb (Pan et al. 2023), whose
F̃(s) is the actor's scalar flow head and whose energies are the domain's partial energies, tempered
like log R (−log R at the terminal); and grpo, the RL baseline on the same sampler (group-normalised
untempered R, on-policy: `workers/gfn_actor.grpo_trajectory_loss`).

Metrics (FoR §4.5): accuracy (≥ 1 correct among k samples), diversity (distinct correct solutions per
solved problem), creativity (share of distinct correct validation solutions that the step-0 policy,
i.e. the base model, never found); on held-out problems (val/*) and, each step, on the training
problems' fresh samples (for/accuracy, for/diversity).

Checkpoints (`checkpoints/step_N/`): the actor (LoRA adapter + optimizer, flow head) and
trainer_state.json with the replay buffer (contents, order, RNG), log Z (+ its Adam state), the
data cursor, the sampling RNG and the creativity baseline: a restored trainer continues exactly.
"""
from __future__ import annotations

import logging
import math
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from algorithms.gflownet import epsilon_schedule, reward_temperature, tempered_probs, uniform_log_pb
from algorithms.replay import PrioritizedReplay, accept_improving, local_search_candidates
from envs.for_domains import ForDomain, make_domain
from orchestrator.batch import Batch
from orchestrator.checkpoint import checkpoint_dir, list_checkpoints, load_trainer_state, save_checkpoint
from orchestrator.config import Config, to_dict
from orchestrator.dumps import Dumps
from orchestrator.metrics import MetricsLog, Timer, console_line
from orchestrator.run_dir import open_run_dir
from orchestrator.model_prep import resolve_model_path
from orchestrator.recovery import note_dead_workers
from orchestrator.resources import ResourcePool, init_ray
from orchestrator.worker_group import WorkerGroup
from workers.gfn_actor import FLOW_OBJECTIVES, GFlowNetActorWorker
from workers.rollout import pack_sequences

log = logging.getLogger("hyflow")


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
        keep_rows = open_run_dir(cfg)  # refuses a used folder unless resume / overwrite; before Ray starts
        if cfg.actor.lora_dropout > 0:  # the update's two passes must see the same function (gfn_actor.py)
            raise ValueError(f"actor.lora_dropout must be 0 for FoR training, got {cfg.actor.lora_dropout}")
        if f.ll_weight > 0 and cfg.actor.lora_rank == 0:
            raise ValueError("for_.ll_weight > 0 needs a LoRA actor (actor.lora_rank > 0): the likelihood reward "
                             "scores steps with the base model, the actor with its adapters disabled")
        self.model_path = resolve_model_path(cfg.model.path)
        self.tok = AutoTokenizer.from_pretrained(self.model_path)
        self.domain: ForDomain = make_domain(f)
        self.problems, self.val = self.domain.problems(f.num_problems, f.val_problems, cfg.data.seed)
        self.cursor = Cursor(len(self.problems), cfg.data.batch_size, cfg.data.seed)
        self.replay = PrioritizedReplay(f.buffer_size, seed=cfg.trainer.seed)
        self.rng = np.random.default_rng([cfg.trainer.seed, 1])
        self.log_z = torch.zeros(len(self.problems), requires_grad=True)
        self.logz_opt = torch.optim.Adam([self.log_z], lr=f.logz_lr)
        self.baseline: dict[int, list] | None = None  # creativity: correct val solutions at step 0
        self._ll_cache: dict[tuple, tuple[float, int]] = {}  # (prompt, action) -> base (ll, tokens)
        self.global_step = 0
        r, a = cfg.ray, cfg.actor
        ray = init_ray(address=r.address, num_cpus=r.num_cpus, object_store_mb=r.object_store_mb, dashboard=r.dashboard)
        gpus = 1.0 if ray.cluster_resources().get("GPU", 0) >= a.world_size else 0.0
        self.pool = ResourcePool(a.world_size, cpus_per_bundle=a.cpus_per_worker, gpus_per_bundle=gpus, name="for")
        actor_cfg = {**asdict(a), "dtype": cfg.model.dtype, "lora_sync": "merge",
                     "flow_head": f.objective in FLOW_OBJECTIVES, "flow_lr": f.flow_lr, "share_prefix": f.share_prefix}
        self.group = WorkerGroup(self.pool, {"actor": (GFlowNetActorWorker, dict(
            model_path=self.model_path, actor_cfg=actor_cfg, trainable=True, seed=cfg.trainer.seed))},
            name="for-trainer", num_cpus_per_worker=a.cpus_per_worker, num_gpus_per_worker=gpus,
            call_timeout_s=r.call_timeout_s)
        self.actor = self.group.role("actor")
        self.actor.setup()
        self.metrics = MetricsLog(self.run_dir, keep_through_step=keep_rows, loggers=cfg.trainer.loggers,
                                  experiment=cfg.trainer.experiment_name, config=to_dict(cfg))
        self.dumps = Dumps(self.run_dir, cfg.trainer.dump_rollouts_every, cfg.trainer.dump_max_chars)

    # ------------------------------------------------------------------ scoring and sampling
    def _tokens(self, pairs: list[tuple[str, str]]) -> tuple[list[list[int]], list[list[int]]]:
        return ([self.tok(p)["input_ids"] for p, _ in pairs],
                [self.tok(a + "\n", add_special_tokens=False)["input_ids"] for _, a in pairs])

    def _rows(self, pairs: list[tuple[str, str]], widths: tuple[int, int] | None = None) -> Batch:
        """(state prompt, action) pairs -> the pack_sequences layout (action tokens = response)."""
        prompts, acts = self._tokens(pairs)
        P, R = widths or (max(map(len, prompts)), max(map(len, acts)))
        return pack_sequences(prompts, acts, [[0.0] * len(x) for x in acts], P, R, self.tok.pad_token_id or 0)

    def score(self, pairs: list[tuple[str, str]], base: bool = False) -> torch.Tensor:
        """Sequence log-probs [len(pairs)] of each action after its prompt, under the actor (or,
        with base, under the base model: the actor with LoRA off)."""
        return self.actor.sequence_logprobs(self._rows(pairs), base)["seq"].double()

    def sample(self, pids: list[int], n: int, problems: list, epsilon: float, temp: float,
               temp_prob: float, base_temp: float = 1.0) -> dict[int, list[tuple]]:
        """n trajectories per problem from P_F, all trajectories advanced together (one scoring
        call per depth). A trajectory draws temperature `temp` with prob temp_prob, else base_temp
        (FoR: the domain's untempered_pf_temp)."""
        d = self.domain
        trajs = [(pid, []) for pid in pids for _ in range(n)]
        log_pf = [0.0] * len(trajs)  # Σ log P_F (temperature 1, no ε) of each sampled trajectory, for the dumps
        temps = [temp if self.rng.random() < temp_prob else base_temp for _ in trajs]
        states = [d.init(problems[pid]) for pid, _ in trajs]
        while True:
            live = [i for i, (pid, acts) in enumerate(trajs) if not d.done(problems[pid], states[i], len(acts))]
            if not live:
                break
            cands = {i: d.candidates(problems[trajs[i][0]], states[i], trajs[i][1]) for i in live}
            prompts = {i: d.prompt(problems[trajs[i][0]], trajs[i][1]) for i in live}
            pairs = [(prompts[i], c) for i in live for c in cands[i]]
            seq, k = self.score(pairs), 0
            for i in live:
                logits = seq[k:k + len(cands[i])]
                k += len(cands[i])
                p = tempered_probs(logits, temps[i], epsilon).numpy()
                choice = int(self.rng.choice(len(p), p=p / p.sum()))
                log_pf[i] += float(torch.log_softmax(torch.as_tensor(logits, dtype=torch.float64), -1)[choice])
                a = cands[i][choice]
                trajs[i][1].append(a)
                states[i] = d.apply(problems[trajs[i][0]], states[i], a)
        out: dict[int, list[tuple]] = {pid: [] for pid in pids}
        self.last_log_pf = {pid: [] for pid in pids}
        for (pid, acts), lp in zip(trajs, log_pf):
            out[pid].append(tuple(acts))
            self.last_log_pf[pid].append(lp)
        return out

    def _complete(self, problem):
        """Local search's completion: uniform random candidate actions until done."""
        d = self.domain

        def complete(prefix: tuple, rng: np.random.Generator) -> list[str]:
            acts, state = list(prefix), d.walk(problem, prefix)[-1]
            while not d.done(problem, state, len(acts)):
                c = d.candidates(problem, state, acts)
                acts.append(c[int(rng.integers(len(c)))])
                state = d.apply(problem, state, acts[-1])
            return acts[len(prefix):]
        return complete

    def log_rewards(self, items: list[tuple[int, tuple]]) -> list[float]:
        """Untempered log R = log max(R + λ·ll_bonus, floor) of (problem id, actions) items; the base
        model's step log-likelihoods for the bonus are scored in one call (and cached: the base
        model never changes)."""
        f, d = self.cfg.for_, self.domain
        if f.ll_weight > 0:
            need = sorted({(d.prompt(self.problems[p], acts[:t]), a) for p, acts in items
                           for t, a in enumerate(acts)} - self._ll_cache.keys())
            if need:
                lls = self.score(need, base=True).tolist()
                _, toks = self._tokens(need)
                self._ll_cache.update({k: (ll, len(tk)) for k, ll, tk in zip(need, lls, toks)})
        out = []
        for p, acts in items:
            prob = self.problems[p]
            r = d.reward(prob, d.walk(prob, acts)[-1], acts)
            if f.ll_weight > 0 and acts:
                steps = [self._ll_cache[(d.prompt(prob, acts[:t]), a)] for t, a in enumerate(acts)]
                r += f.ll_weight * d.ll_bonus([s[0] for s in steps], [s[1] for s in steps])
            out.append(math.log(max(r, f.reward_floor)))
        return out

    # ------------------------------------------------------------------ the training rows
    def problem_batches(self, problems: list, trajs: list[list[tuple]], log_r: list[list[float]],
                        reward_temp: float) -> list[Batch]:
        """One batch per problem (its candidate rows, `problem_rows`; log_r untempered), all packed
        to the same widths."""
        built = [problem_rows(self.domain, p, t, r, reward_temp) for p, t, r in zip(problems, trajs, log_r)]
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
        """ε, P_F temperature, replay probability and τ_R at this step: linear from [start, end]
        over the first schedule_frac of the run, then constant: the paper's stated schedules. (A
        deliberate deviation from FoR's code, whose per-epoch updates set each to one constant
        after the first epoch, e.g. `self.epsilon = start - (start - end) / (epochs // 2)`,
        BlocksWorld lightning_module_selection.py on_train_epoch_start.)"""
        f, s, n = self.cfg.for_, self.global_step, self.cfg.trainer.total_steps
        lin = lambda v: v[0] + (v[1] - v[0]) * min(s / (f.schedule_frac * n), 1.0)  # noqa: E731
        return {"epsilon": epsilon_schedule(s, n, *f.epsilon, f.schedule_frac),
                "pf_temp": lin(f.pf_temp), "use_buffer_prob": lin(f.use_buffer_prob),
                "reward_temp": reward_temperature(s, n, *f.reward_temp, f.schedule_frac)}

    def step(self) -> dict:
        f, t, d = self.cfg.for_, Timer(), self.domain
        sch = self.schedules()
        with t("step"):
            pids = self.cursor.next()
            replayed = [p for p in pids if p in self.replay and self.rng.random() < sch["use_buffer_prob"]]
            fresh = [p for p in pids if p not in replayed]
            with t("sample"):
                trajs = self.sample(fresh, f.n_samples, self.problems, sch["epsilon"], sch["pf_temp"], f.pf_temp_prob,
                                    d.untempered_pf_temp)
            sampled_log_pf = self.last_log_pf
            for p in replayed:
                trajs[p] = [item for _, _, item in self.replay.sample(p, f.n_samples)]
            lr = dict(zip(pids, self._split(self.log_rewards([(p, a) for p in pids for a in trajs[p]]),
                                            [len(trajs[p]) for p in pids])))
            n_ls = 0
            if f.local_search_tries:  # FoR: around the fresh samples' best, fresh problems only

                def propose(p: int, best: tuple) -> list[tuple]:
                    return local_search_candidates(best, self._complete(self.problems[p]), f.local_search_tries,
                                                   self.rng, d.local_search_keep(len(best)))
                for p, acc in local_search_round(fresh, trajs, lr, propose, self.log_rewards).items():
                    trajs[p] += [a for a, _ in acc]
                    lr[p] += [r for _, r in acc]
                    n_ls += len(acc)
            for p in pids:
                for acts, r in zip(trajs[p], lr[p]):
                    self.replay.add(p, acts, r, acts)
            if self.dumps.due(self.global_step + 1):
                self.dumps.write("rollouts", self.global_step + 1, self.trajectory_rows(
                    pids, trajs, lr, {p: sampled_log_pf.get(p, []) for p in fresh}, self.problems, replayed))
            tau = sch["reward_temp"] if f.objective != "grpo" else 1.0  # GRPO: the untempered R
            batches = self.problem_batches([self.problems[p] for p in pids], [trajs[p] for p in pids],
                                           [lr[p] for p in pids], tau)
            with t("train"):
                z = [float(self.log_z[p].detach()) for p in pids] if f.objective == "tb" else None
                outs = self.actor.gfn_update(batches, f.objective, z, f.subtb_lambda, f.gradient_sign)
            self._update_log_z(pids, outs)
        self.global_step += 1
        row = {"step": self.global_step, "for/loss": sum(o["loss"] for o in outs),
               "for/log_r_mean": float(np.mean([r for p in pids for r in lr[p]])),
               "for/replay_size": len(self.replay), "for/local_search_accepted": n_ls,
               "for/replayed_problems": len(replayed), "actor/grad_norm": outs[0]["grad_norm"],
               "for/log_z_mean": float(self.log_z.detach()[pids].mean()), **{f"for/{k}": v for k, v in sch.items()}}
        if f.objective in FLOW_OBJECTIVES:
            row["for/log_f0_mean"] = float(np.mean([v for o in outs for v in o["log_f0"].values()]))
        row.update(solution_metrics(correct_solutions({p: trajs[p][:f.n_samples] for p in fresh}, self.problems,
                                                      self.domain), "for"))
        row.update(t.times)
        return row

    def trajectory_rows(self, pids, trajs, log_r, log_pf, problems, replayed=()) -> list[dict]:
        """One "trajectory" row per trajectory (orchestrator/dumps.py); log_pf: the sampled ones'
        Σ log P_F (replayed and local-search ones have none)."""
        d, rows = self.domain, []
        for p in pids:
            prob = problems[p]
            for j, acts in enumerate(trajs[p]):
                lp = log_pf.get(p, [])
                rows.append({"kind": "trajectory", "problem": p, "actions": list(acts),
                             "states": [d.state_text(prob, s) for s in d.walk(prob, acts)],
                             "log_r": log_r[p][j], "log_pf": lp[j] if j < len(lp) else None,
                             "log_z": float(self.log_z[p].detach()) if problems is self.problems else None,
                             "correct": bool(d.correct(prob, acts)), "replayed": p in replayed})
        return rows

    @staticmethod
    def _split(values: list, sizes: list[int]) -> list[list]:
        out, k = [], 0
        for n in sizes:
            out.append(values[k:k + n])
            k += n
        return out

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
        """Held-out problems: k samples from P_F at the domain's val_pf_temp, no exploration."""
        if not self.val:
            return {}
        f, d = self.cfg.for_, self.domain
        trajs = self.sample(list(range(len(self.val))), f.val_samples, self.val, 0.0, d.val_pf_temp, 0.0,
                            d.val_pf_temp)
        correct = correct_solutions(trajs, self.val, self.domain)
        out = solution_metrics(correct, "val")
        if self.baseline is None:  # the first validation (step 0: LoRA B = 0, the base model) is the baseline
            self.baseline = {p: [list(a) for a in c] for p, c in correct.items()}
        out["val/creativity"] = creativity(correct, self.baseline)
        if self.dumps.every:  # log R without the likelihood bonus (the base model scores training problems only)
            val_lr = {p: [math.log(max(d.reward(q, d.walk(q, a)[-1], a), f.reward_floor)) for a in trajs[p]]
                      for p, q in enumerate(self.val)}
            self.dumps.write("val", self.global_step, self.trajectory_rows(
                list(trajs), trajs, val_lr, self.last_log_pf, self.val))
        return out

    # ------------------------------------------------------------------ checkpoints and the run
    def state_dict(self) -> dict:
        opt = self.logz_opt.state_dict()
        st = opt["state"].get(0, {})
        return {"step": self.global_step, "data": self.cursor.state_dict(), "replay": replay_to_json(self.replay),
                "rng": self.rng.bit_generator.state, "log_z": self.log_z.detach().tolist(),
                "log_z_adam": {k: (v.tolist() if torch.is_tensor(v) else v) for k, v in st.items()},
                "seed": self.cfg.trainer.seed,
                "baseline": None if self.baseline is None else {str(p): v for p, v in self.baseline.items()}}

    def save(self) -> Path:
        state = self.state_dict()
        state.pop("step")
        return save_checkpoint(self.run_dir, self.global_step, self.actor, state, keep_last=self.cfg.trainer.keep_last)

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
        self.baseline = None if s.get("baseline") is None else {int(p): v for p, v in s["baseline"].items()}
        self.global_step = int(s["step"])

    def fit(self) -> dict:
        """The run. FoR does not replace dead workers (orchestrator/recovery.py): a dead rank stops it,
        with a note on how to continue."""
        died = (f"a FoR trainer worker died, and the FoR trainer does not replace dead workers: continue the run "
                f"from its newest checkpoint with trainer.resume=true (trainer.save_every={self.cfg.trainer.save_every})")
        with note_dead_workers([self.group], died):
            return self._fit()

    def _fit(self) -> dict:
        from tqdm import tqdm
        from tqdm.contrib.logging import logging_redirect_tqdm

        cfg, last = self.cfg, {}
        if cfg.trainer.resume and list_checkpoints(self.run_dir):
            self.load(list_checkpoints(self.run_dir)[-1])
        if self.global_step == 0:
            self.metrics.log({"step": 0, **self.validate()})
        bar = tqdm(total=cfg.trainer.total_steps, initial=self.global_step, desc="train", unit="step",
                   disable=not cfg.trainer.progress, dynamic_ncols=True)
        with logging_redirect_tqdm():
            last = self._loop(bar)
        bar.close()
        ckpt = self.save()
        png = self.metrics.plot_reward(train_key="for/log_r_mean", train_label="mean log R (sampled)")
        log.info("done: checkpoint %s, reward curve %s", ckpt, png)
        return last

    def _loop(self, bar) -> dict:
        cfg, last = self.cfg, {}
        while self.global_step < cfg.trainer.total_steps:
            last = self.step()
            every = cfg.trainer.val_every
            if self.global_step == cfg.trainer.total_steps or (every and self.global_step % every == 0):
                last.update(self.validate())
            self.metrics.log(last)
            if self.global_step % cfg.trainer.log_every == 0:
                log.info(console_line(last))
            bar.update(1)
            bar.set_postfix(log_r=f"{last['for/log_r_mean']:.2f}", step_s=f"{last.get('timing/step_s', 0):.0f}")
            if cfg.trainer.save_every and self.global_step % cfg.trainer.save_every == 0 \
                    and self.global_step != cfg.trainer.total_steps:
                self.save()
        return last

    def shutdown(self) -> None:
        if getattr(self, "metrics", None) is not None:
            self.metrics.close()
        self.group.shutdown()
        self.pool.shutdown()


def problem_rows(domain: ForDomain, problem, trajs: list[tuple], log_r: list[float],
                 reward_temp: float) -> tuple[list, dict, dict]:
    """Every candidate row of every step of `trajs`: (pairs, row index tensors, meta) in
    gfn_actor.py's layout. log_r is untempered; meta carries log R and the energies E(s_t) (−log R
    at the end) tempered by the domain's rule (`ForDomain.tempered_log_reward`), and log P_B
    (0 on tree domains, −log |Pa(s_{t+1})| on DAG domains)."""
    d = domain
    T = max(len(t) for t in trajs)
    pairs, flat, slot, chosen = [], [], [], []
    log_pb = np.zeros((len(trajs), T))
    mask = np.zeros((len(trajs), T))
    energy = np.zeros((len(trajs), T + 1))
    tempered = [float(d.tempered_log_reward(r, reward_temp)) for r in log_r]
    for j, acts in enumerate(trajs):
        states = d.walk(problem, acts)
        for t, a in enumerate(acts):
            cands = d.candidates(problem, states[t], acts[:t])
            if a not in cands:
                raise ValueError(f"trajectory {acts} step {t}: {a!r} is not among its candidates")
            prompt = d.prompt(problem, acts[:t])
            for k, c in enumerate(cands):
                pairs.append((prompt, c))
                flat.append(j * T + t)
                slot.append(k)
                chosen.append(int(c == a))
            log_pb[j, t] = 0.0 if d.tree else float(uniform_log_pb(d.num_parents(problem, states[t + 1])))
            mask[j, t] = 1.0
            energy[j, t] = d.tempered_log_reward(d.energy(problem, states[t], acts[:t]), reward_temp)
        energy[j, len(acts)] = -tempered[j]
    index = {"gfn_flat": torch.tensor(flat), "gfn_slot": torch.tensor(slot), "gfn_chosen": torch.tensor(chosen)}
    meta = dict(gfn_n_traj=len(trajs), gfn_T=T, gfn_log_r=tempered, gfn_log_pb=log_pb.tolist(),
                gfn_mask=mask.tolist(), gfn_energy=energy.tolist())
    return pairs, index, meta


def local_search_round(pids: list[int], trajs: dict[int, list[tuple]], log_r: dict[int, list[float]],
                       propose, score) -> dict[int, list[tuple[tuple, float]]]:
    """FoR's local search over the problems `pids` (the trainer passes the freshly sampled ones):
    `propose(pid, best)` gives the completions around the problem's best trajectory (highest log R
    of trajs[pid], the first on ties); `score([(pid, actions), ...])` their untempered log Rs (one
    call for all); a completion is accepted when its log R beats that fixed best. Returns pid ->
    the accepted (actions, log_r), in proposal order."""
    props = {p: propose(p, trajs[p][int(np.argmax(log_r[p]))]) for p in pids}
    flat = score([(p, a) for p in pids for a in props[p]]) if pids else []
    out, k = {}, 0
    for p in pids:
        out[p] = accept_improving(props[p], flat[k:k + len(props[p])], max(log_r[p]))
        k += len(props[p])
    return out


def correct_solutions(trajs: dict[int, list[tuple]], problems: list, domain: ForDomain) -> dict[int, list[tuple]]:
    """problem id -> its distinct sampled solutions that the domain's verifier accepts (sorted)."""
    return {p: sorted({a for a in ts if domain.correct(problems[p], a)}) for p, ts in trajs.items()}


def solution_metrics(correct: dict[int, list[tuple]], prefix: str) -> dict:
    """accuracy = share of problems with >= 1 correct solution among their samples; diversity = mean
    number of distinct correct solutions per solved problem (NaN: none sampled/solved)."""
    solved = [len(c) for c in correct.values() if c]
    return {f"{prefix}/accuracy": (len(solved) / len(correct)) if correct else float("nan"),
            f"{prefix}/diversity": float(np.mean(solved)) if solved else float("nan")}


def creativity(correct: dict[int, list], baseline: dict[int, list]) -> float:
    """FoR's creativity: the share of distinct correct solutions (over all problems) that the
    baseline's samples never found; NaN when there is no correct solution."""
    total = sum(len(c) for c in correct.values())
    novel = sum(len({tuple(a) for a in c} - {tuple(b) for b in baseline.get(p, [])}) for p, c in correct.items())
    return novel / total if total else float("nan")
