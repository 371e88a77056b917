"""Where a step's samples come from: the seam between the controller loop and the task.

    task.collect(generate, step) -> (batch, metrics)   # rollouts with scores, in the trainer layout
    task.validate(generate) -> metrics                 # greedy, held-out
    task.state_dict() / load_state_dict()              # the data cursor, for checkpoints

`PromptTask`: single-turn prompts (math word problems, files) scored by a reward function.
`AgentTask`: multi-turn episodes in env groups (envs.agent_loop), one sample per env step, tagged
for GRPO / GiGPO (`uid` = group, `traj_ids`, `step_ids`, `anchors`, `step_rewards`).
`generate(prompts: Batch) -> Batch` is the rollout group's generate (sampling options in meta).
"""
from __future__ import annotations

import itertools
from collections import defaultdict

import numpy as np
import torch

from envs.agent_loop import AgentLoopConfig, run_episodes
from envs.base import VAL_SEED_BASE
from orchestrator.batch import Batch
from orchestrator.data import PromptDataset, encode_prompt, load_rows
from orchestrator.data_files import load_prompt_rows
from workers.reward import RewardFn
from workers.rollout import pack_sequences

TURN_SEEDS = 100_000  # a step's turns get sampling seeds step * TURN_SEEDS + turn


class PromptTask:
    """`reward_model`: a scorer of (prompt, response) rows (`score(batch) -> [B]`): the reward-model
    group (placement.Workers.reward_model) or a reward server (workers/remote_reward.py), or None.
    With one, a sample's reward is reward.function_weight x the function's score +
    reward.model.weight x the model's, and both are logged apart (reward/function_mean,
    reward/model_mean), so a policy that games the model shows against the rule. A row the model
    gives no finite score (a failed remote call) scores reward.crash_penalty, counted in
    reward/model_failed."""

    def __init__(self, cfg, tokenizer, sampling_meta, reward_model=None):
        d = cfg.data
        rows = load_rows(d)
        # Held-out rows: data.val_path's (data.val_size of them at most), else the source's last val_size.
        val_rows = load_prompt_rows(d.val_path, "data.val_path", d.system_prompt)[:d.val_size] if d.val_path else None
        n_val = 0 if val_rows is not None else min(d.val_size, len(rows) // 2)
        source = d.generator or d.train_path or "generated math problems"
        self.data = PromptDataset(rows[:len(rows) - n_val], tokenizer, d.max_prompt_tokens, d.batch_size,
                                  d.shuffle, d.seed, cfg.model.chat_template, source=source)
        # Held-out rows for greedy validation (the last val_size of the source).
        val_rows = val_rows if val_rows is not None else rows[len(rows) - n_val:]
        self.val = PromptDataset(val_rows, tokenizer, d.max_prompt_tokens, 1, False, d.seed, cfg.model.chat_template,
                                 source=d.val_path or source) if val_rows else None
        self.reward = RewardFn.from_config(cfg.reward, tokenizer)  # scored in worker processes, time-limited
        if reward_model is None and cfg.reward.remote_url:
            from workers.remote_reward import RemoteReward
            reward_model = RemoteReward.from_config(cfg.reward, tokenizer)
        self.reward_model, self.weights = reward_model, (cfg.reward.function_weight, cfg.reward.model.weight)
        self.crash_penalty = cfg.reward.crash_penalty
        self.n, self.sampling_meta, self.tok = cfg.rollout.n, sampling_meta, tokenizer
        self.val_rows: list[dict] = []  # the last validation's generations (dump rows)

    def collect(self, generate, step: int) -> tuple[Batch, dict]:
        prompts = self.data.next_batch().repeat(self.n)   # groups stay adjacent
        prompts.meta.update(self.sampling_meta(prompts["prompt_ids"], seed=step))
        batch = generate(prompts).union(prompts)
        metrics = self.score(batch)
        return batch, metrics

    def score(self, batch: Batch) -> dict:
        """batch["scores"] (and, with a reward model, "function_scores" and "model_scores")."""
        scores, metrics = self.reward(batch)
        if self.reward_model is None:
            batch["scores"] = scores
            return metrics
        rows = Batch({"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]},
                     {"prompt_ids": batch["prompt_ids"], "ground_truth": batch["ground_truth"]})
        model = self.reward_model.score(rows).float()
        failed = ~torch.isfinite(model)
        model = torch.where(failed, torch.full_like(model, self.crash_penalty), model)
        w_fn, w_model = self.weights
        batch["function_scores"], batch["model_scores"] = scores, model
        batch["scores"] = w_fn * scores + w_model * model
        return {**metrics, **getattr(self.reward_model, "metrics", {}), "reward/model_failed": int(failed.sum()),
                "reward/function_mean": scores.mean().item(), "reward/model_mean": model.mean().item(),
                "reward/model_std": model.std().item() if len(model) > 1 else 0.0}

    def validate(self, generate) -> dict:
        if self.val is None:
            return {}
        rows = self.val.rows(np.arange(len(self.val)))
        rows.meta.update(self.sampling_meta(rows["prompt_ids"], seed=0, greedy=True))
        out = generate(rows).union(rows)
        self.score(out)
        scores = out["function_scores"] if "function_scores" in out else out["scores"]
        self.val_rows = self.dump_rows(out)
        extra = {"val/model_score": out["model_scores"].mean().item()} if "model_scores" in out else {}
        return {"val/accuracy": scores.mean().item(), "val/n": len(rows), **extra}

    def dump_rows(self, batch: Batch) -> list[dict]:
        """One "sample" row per generation (orchestrator/dumps.py)."""
        mask = batch["response_mask"].bool()
        adv = batch["advantages"] if "advantages" in batch else None
        rows = []
        for i in range(len(batch)):
            m = mask[i]
            rows.append({"kind": "sample", "group": str(batch["uid"][i]),
                         "prompt": self.tok.decode(batch["prompt_ids"][i]),
                         "response": self.tok.decode(batch["responses"][i][m].tolist(), skip_special_tokens=True),
                         "reward": float(batch["scores"][i]),
                         "advantage": float(adv[i][m].mean()) if adv is not None and m.any() else None,
                         "length": int(m.sum()), "finish_reason": str(batch["finish_reason"][i]),
                         "data_source": str(batch["data_source"][i]), "ground_truth": str(batch["ground_truth"][i]),
                         **({"function_score": float(batch["function_scores"][i]),
                             "model_score": float(batch["model_scores"][i])} if "model_scores" in batch else {})})
        return rows

    def state_dict(self) -> dict:
        return self.data.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.data.load_state_dict(state)

    def close(self) -> None:
        self.reward.close()


class AgentTask:
    """`helpers`: a `HelperSlots` reserve of the trainer's placement group; the env actors run in
    it (None: they ask the cluster's free CPUs, `env.cpus_per_env` each)."""

    def __init__(self, cfg, tokenizer, sampling_meta, train: bool = True, helpers=None):
        from envs.base import get_env
        from envs.manager import EnvManager

        e = cfg.env
        self.cfg, self.tok, self.sampling_meta = cfg, tokenizer, sampling_meta
        factory = get_env(e.name) if ":" not in e.name else None
        if hasattr(factory, "prepare"):  # one-time, driver-side preparation (e.g. generating games)
            factory.prepare(**e.kwargs)
        self.loop = AgentLoopConfig(max_steps=e.max_steps, history_length=e.history_length,
                                    invalid_penalty=e.invalid_penalty, max_prompt_tokens=cfg.data.max_prompt_tokens)
        sizes = (cfg.data.batch_size * cfg.rollout.n if train else 0, e.val_groups)
        opts = helpers.take(sum(sizes)) if helpers is not None else None
        self.train_envs = EnvManager(e.name, e.kwargs, cfg.data.batch_size, cfg.rollout.n, e.cpus_per_env,
                                     e.step_timeout_s, opts and opts[:sizes[0]]) if train else None
        self.val_envs = EnvManager(e.name, e.kwargs, e.val_groups, 1, e.cpus_per_env, e.step_timeout_s,
                                   opts and opts[sizes[0]:]) if e.val_groups else None
        self.show_progress = cfg.trainer.progress
        self.episodes = 0  # the data cursor: groups played so far
        self.last: tuple[list, list] = ([], [])  # the last rollout's (step samples, episodes), for dumps
        self.val_rows: list[dict] = []

    def _play(self, envs, generate, seeds, greedy: bool, step: int):
        turn = itertools.count()

        def gen(prompt_ids: list[list[int]]):
            b = Batch(non_tensors={"prompt_ids": prompt_ids})
            # One seed per turn: with the step's seed on every turn, an env's row would draw the same
            # random numbers at each turn (one repeated action where the model barely conditions on
            # the observation). Still a function of (step, turn): a resumed run samples the same.
            b.meta.update(self.sampling_meta(prompt_ids, seed=step * TURN_SEEDS + next(turn), greedy=greedy))
            out = generate(b)
            mask = out["response_mask"].bool()
            return [(r[m].tolist(), lp[m].tolist(), f) for r, lp, m, f in
                    zip(out["responses"], out["rollout_logprobs"], mask, out["finish_reason"])]

        encode = lambda msgs: encode_prompt(self.tok, msgs, self.cfg.model.chat_template)  # noqa: E731
        decode = lambda ids: self.tok.decode(ids, skip_special_tokens=True)  # noqa: E731
        from tqdm import tqdm
        with tqdm(total=envs.size, desc="validation episodes" if greedy else "rollout episodes", unit="ep",
                  leave=False, disable=not self.show_progress, dynamic_ncols=True, position=1) as bar:
            def progress(done: int, total: int, turn: int) -> None:
                bar.set_postfix_str(f"turn {turn}/{self.loop.max_steps}")
                bar.update(done - bar.n)
            return run_episodes(envs, gen, encode, decode, seeds, self.loop, progress=progress)

    def collect(self, generate, step: int) -> tuple[Batch, dict]:
        g = self.cfg.data.batch_size
        seeds = [self.cfg.env.seed + self.episodes + k for k in range(g)]
        self.episodes += g
        samples, episodes = self._play(self.train_envs, generate, seeds, False, step)
        self.last = (samples, episodes)
        if not samples:
            raise RuntimeError(empty_batch_reason(episodes, self.train_envs))
        batch = samples_to_batch(samples, episodes, step, self.tok.pad_token_id or 0)
        metrics = episode_metrics(episodes, "env")
        metrics.update({"env/invalid_action_ratio": float(np.mean([not s.valid for s in samples])),
                        "env/errors": sum(s.info.get("env_error") is not None for s in samples)})
        return batch, metrics

    def validate(self, generate) -> dict:
        if self.val_envs is None:
            return {}
        seeds = [VAL_SEED_BASE + self.cfg.env.seed + k for k in range(self.cfg.env.val_groups)]  # disjoint from training
        samples, episodes = self._play(self.val_envs, generate, seeds, True, 0)
        self.val_rows = episode_rows(samples, episodes, None, self.tok)
        return episode_metrics(episodes, "val")

    def dump_rows(self, batch: Batch) -> list[dict]:
        """One "episode" row per trajectory of the last rollout, turn by turn (orchestrator/dumps.py)."""
        samples, episodes = self.last
        return episode_rows(samples, episodes, batch, self.tok)

    def state_dict(self) -> dict:
        return {"episodes": self.episodes}

    def load_state_dict(self, state: dict) -> None:
        self.episodes = int(state["episodes"])

    def close(self) -> None:
        """Kill the env actors (they hold Ray CPUs until then)."""
        for envs in (self.train_envs, self.val_envs):
            if envs is not None:
                envs.close()


def empty_batch_reason(episodes: list[dict], envs) -> str:
    """Why an agent rollout produced no step samples: every episode ended at reset."""
    errors = [e["error"] for e in episodes if e.get("error")]
    why = (f"{len(errors)} of {len(episodes)} env resets failed (first: {errors[0]})" if errors
           else f"all {len(episodes)} episodes were done at reset")
    return (f"the agent rollout produced no step samples: {why}. Env actors that cannot be scheduled or "
            f"that time out at reset end their episode (env {envs.env_name!r}, env.step_timeout_s="
            f"{envs.step_timeout_s:g}); check the env's kwargs and the cluster's free CPUs.")


def samples_to_batch(samples, episodes, step: int, pad_token_id: int) -> Batch:
    """Step samples -> the trainer layout: `step_rewards` = the env's reward for the step (GiGPO
    discounts them), `penalties` = the step's invalid-action penalty, `scores` = the trajectory's
    env return minus this step's penalty (verl-agent applies the penalty after discounting)."""
    if not samples:
        raise ValueError("samples_to_batch: no step samples (see empty_batch_reason)")
    ret = {e["traj"]: e["return"] for e in episodes}
    P = max(len(s.prompt_ids) for s in samples)
    R = max(max(len(s.response_ids) for s in samples), 1)
    b = pack_sequences([s.prompt_ids for s in samples], [s.response_ids for s in samples],
                       [s.logprobs for s in samples], P, R, pad_token_id)
    b.non_tensors.update({
        "uid": np.array([f"{step}-g{s.group}" for s in samples], dtype=object),
        "traj_ids": np.array([f"{step}-t{s.traj}" for s in samples], dtype=object),
        "step_ids": np.array([s.step for s in samples], dtype=object),
        "anchors": np.array([s.anchor for s in samples], dtype=object),
        "finish_reason": np.array([s.finish_reason for s in samples], dtype=object),
    })
    b["step_rewards"] = torch.tensor([s.env_reward for s in samples], dtype=torch.float32)
    b["penalties"] = torch.tensor([s.penalty for s in samples], dtype=torch.float32)
    b["scores"] = torch.tensor([ret[s.traj] - s.penalty for s in samples], dtype=torch.float32)
    return b


def episode_rows(samples, episodes, batch, tok) -> list[dict]:
    """Episodes with their turns; `batch` (the samples in order, with advantages) or None."""
    adv = None
    if batch is not None and "advantages" in batch:
        mask = batch["response_mask"].bool()
        adv = [float(a[m].mean()) if m.any() else 0.0 for a, m in zip(batch["advantages"], mask)]
    turns: dict[int, list] = defaultdict(list)
    for k, s in enumerate(samples):
        turns[s.traj].append({"observation": s.info.get("observation", ""), "action": s.info.get("action", ""),
                              "response": tok.decode(s.response_ids, skip_special_tokens=True),
                              "env_reward": s.env_reward, "penalty": s.penalty, "valid": s.valid,
                              "anchor": s.anchor, "advantage": adv[k] if adv is not None else None})
    return [{"kind": "episode", "group": str(e["group"]), "traj": e["traj"], "won": bool(e["won"]),
             "return": e["return"], "task_type": e["task_type"], "length": e["steps"], "turns": turns[e["traj"]]}
            for e in episodes]


def episode_metrics(episodes: list[dict], prefix: str) -> dict:
    out = {f"{prefix}/success_rate": float(np.mean([e["won"] for e in episodes])),
           f"{prefix}/return_mean": float(np.mean([e["return"] for e in episodes])),
           f"{prefix}/length_mean": float(np.mean([e["steps"] for e in episodes]))}
    by_type = defaultdict(list)
    for e in episodes:
        by_type[e["task_type"] or "all"].append(e["won"])
    out.update({f"{prefix}/success/{t}": float(np.mean(v)) for t, v in sorted(by_type.items())})
    scores = [e["task_score"] for e in episodes if isinstance(e.get("task_score"), (int, float))]
    if scores:
        out[f"{prefix}/task_score_mean"] = float(np.mean(scores))
    return out


def make_task(cfg, tokenizer, sampling_meta, train: bool = True, helpers=None, reward_model=None):
    if cfg.env.name:
        return AgentTask(cfg, tokenizer, sampling_meta, train=train, helpers=helpers)
    return PromptTask(cfg, tokenizer, sampling_meta, reward_model=reward_model)


RUN_SEEDS = 10**9  # run seed r (trainer.seed) shifts every call's sampling seed by r * RUN_SEEDS


def sampling_meta(rollout_cfg, eos_token_id: int, prompt_ids, seed: int, greedy: bool = False,
                  run_seed: int = 0) -> dict:
    """The rollout worker's sampling options for one generate call (greedy for validation).
    `seed` numbers the call inside a run (the step, or the step's turn); `run_seed` (trainer.seed)
    gives each run its own streams, so two seeds of one recipe do not draw the same samples from
    the same weights (run seed 0 keeps the streams of runs made before it existed)."""
    r = rollout_cfg
    return {"max_new_tokens": r.max_new_tokens, "temperature": 0.0 if greedy else r.temperature,
            "top_p": 1.0 if greedy else r.top_p, "top_k": -1 if greedy else r.top_k,
            "seed": seed + run_seed * RUN_SEEDS,
            "stop_token_ids": [eos_token_id], "prompt_width": max(len(p) for p in prompt_ids)}
