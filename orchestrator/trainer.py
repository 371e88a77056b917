"""The controller loop: one driver process dispatching phases to worker groups on Ray.

    hyflow train configs/quickstart.yaml trainer.total_steps=3

`Trainer.step` is the algorithm (GRPO / PPO / GiGPO ...):
generate + reward (a task: prompts or env episodes) -> ref / old log-probs, values ->
advantages (the registry's estimator) -> critic and actor updates -> sync weights.
Everything else (placement, setup, checkpoints, logging) is in `build_workers` and `fit`; dead
workers are replaced by `orchestrator/recovery.py`, called from `generate` and the loop.
"""
from __future__ import annotations

import inspect
import logging
from functools import partial
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

import algorithms
from algorithms.kl_control import make_kl_controller, mean_sequence_kl, token_rewards_with_kl
from orchestrator.batch import Batch
from orchestrator.checkpoint import checkpoint_dir, list_checkpoints, load_trainer_state, save_checkpoint
from orchestrator.config import Config, to_dict
from orchestrator.cost import step_costs, summarize, summary_line
from orchestrator.dumps import Dumps
from orchestrator.metrics import MetricsLog, Timer, console_line
from orchestrator.model_prep import resolve_model_path
from orchestrator.placement import Workers, build_workers
from orchestrator.recovery import Recovery
from orchestrator.run_dir import open_run_dir
from orchestrator.tasks import make_task, sampling_meta
from orchestrator.worker_group import WorkerError
from workers.rollout import trim_padding

log = logging.getLogger("hyflow")


class Trainer:
    def __init__(self, cfg: Config):
        from transformers import AutoTokenizer

        self.cfg, self.run_dir = cfg, Path(cfg.trainer.output_dir)
        keep_rows = open_run_dir(cfg)  # refuses a used folder unless resume / overwrite; before Ray starts
        self.model_path = resolve_model_path(cfg.model.path)
        self.tokenizer = AutoTokenizer.from_pretrained(self.model_path)
        self.advantage = algorithms.get_advantage_estimator(cfg.algorithm.advantage)
        self.sampling_meta = partial(sampling_meta, cfg.rollout, self.tokenizer.eos_token_id,
                                     run_seed=cfg.trainer.seed)
        self.build()
        self.metrics = MetricsLog(self.run_dir, keep_through_step=keep_rows, loggers=cfg.trainer.loggers,
                                  experiment=cfg.trainer.experiment_name, config=to_dict(cfg))
        self.dumps = Dumps(self.run_dir, cfg.trainer.dump_rollouts_every, cfg.trainer.dump_max_chars)
        self.global_step = 0
        self.recovery = Recovery(self)  # dead workers replaced (trainer.max_restarts)

    def build(self) -> None:
        """Workers, task and KL controller in their step-0 state (again after a dead trainer rank)."""
        cfg, a = self.cfg, self.cfg.algorithm
        self.kl_ctrl = (make_kl_controller(a.kl_ctrl, a.kl_reward_coef, a.kl_target, a.kl_horizon)
                        if a.kl_in_reward else None)
        # A value model exists exactly when the estimator asks for `values` (PPO's GAE).
        needs_values = "values" in inspect.signature(self.advantage).parameters
        self.w: Workers = build_workers(cfg, self.model_path, self.tokenizer, with_critic=needs_values)
        # Single-turn prompts or multi-turn env episodes (built after Ray is up: envs are actors).
        self.task = make_task(cfg, self.tokenizer, self.sampling_meta, helpers=self.w.helpers,
                              reward_model=self.w.reward_model)

    # ------------------------------------------------------------------ one step
    def step(self) -> dict:
        cfg, w, t = self.cfg, self.w, Timer()
        with t("step"):
            with t("rollout"):  # generation and scoring (for agents: whole episodes in the envs)
                batch, metrics = self.task.collect(self.generate, cfg.trainer.seed + self.global_step)
            if w.ref is not None:
                with t("ref"):
                    batch["ref_logprobs"] = w.ref.compute_logprobs(batch)["logprobs"]
            if self.needs_old_logprobs():
                with t("old_logprobs"):
                    batch["old_logprobs"] = w.actor.compute_logprobs(batch)["logprobs"]
            if w.critic is not None:
                with t("values"):
                    batch["values"] = w.critic.compute_values(batch)["values"]
            if self.kl_ctrl is not None:
                metrics.update(self.penalize_kl_in_reward(batch))
            adv = self.advantage(**self.advantage_inputs(batch))
            batch.update(adv if isinstance(adv, dict) else {"advantages": adv})
            if self.dumps.due(self.global_step + 1):  # what was generated, scored and credited
                self.dumps.write("rollouts", self.global_step + 1, self.task.dump_rows(batch))
            with t("train"):
                w.rollout.sleep()
                train = pad_with_masked_rows(batch, cfg.actor.world_size)  # equal shards, no extra loss
                if w.critic is not None:
                    metrics.update(rank_metrics(w.critic.update(train), "critic"))
                metrics.update(rank_metrics(w.actor.update(train), "actor"))
            with t("sync"):
                w.rollout.wake_up()
                sync = w.weight_sync.sync()
        self.global_step += 1
        return self.step_metrics(batch, metrics, sync, t.times)

    # ------------------------------------------------------------------ the run
    def fit(self) -> dict:
        from tqdm import tqdm
        from tqdm.contrib.logging import logging_redirect_tqdm

        cfg = self.cfg
        if cfg.trainer.resume and list_checkpoints(self.run_dir):
            self.load(list_checkpoints(self.run_dir)[-1])
        if self.global_step == 0:
            self.log_row({"step": 0, **self.validate()})
        bar = tqdm(desc="train", unit="step", initial=self.global_step, total=cfg.trainer.total_steps,
                   disable=not cfg.trainer.progress, dynamic_ncols=True)
        with logging_redirect_tqdm():  # metric lines print above the bar, not through it
            last = self._loop(bar)
        bar.close()
        ckpt = (checkpoint_dir(self.run_dir, self.global_step) if self.global_step in list_checkpoints(self.run_dir)
                else self.save())
        png = self.metrics.plot_reward()
        log.info(summary_line(summarize(self.metrics.rows, self.run_dir)))
        log.info("done: checkpoint %s, reward curve %s", ckpt, png)
        return last

    def _loop(self, bar) -> dict:
        last = {}
        while self.global_step < self.cfg.trainer.total_steps:
            try:
                last = self._advance()
            except WorkerError as e:
                self.recovery.restore(e)  # a dead worker: all rebuilt, back at the newest checkpoint; else raises
            bar.n = self.global_step
            bar.set_postfix(reward=f"{last.get('reward/mean', float('nan')):.3f}",
                            step_s=f"{last.get('timing/step_s', 0.0):.0f}")
        return last

    def _advance(self) -> dict:
        """One step, its validation, its metrics row and its checkpoint (the last step's too)."""
        cfg, last = self.cfg.trainer, self.step()
        if self.global_step == cfg.total_steps or (cfg.val_every and self.global_step % cfg.val_every == 0):
            last.update(self.validate())
        self.log_row(last)
        if self.global_step == cfg.total_steps or (cfg.save_every and self.global_step % cfg.save_every == 0):
            self.save()
        return last

    def validate(self) -> dict:
        """Greedy, held-out: math accuracy, or agent success rate (overall and per task type); the
        generations go to val/step_N.jsonl."""
        out = self.task.validate(self.generate)
        if self.dumps.every:
            self.dumps.write("val", self.global_step, self.task.val_rows)
        return out

    def generate(self, prompts: Batch) -> Batch:
        while True:
            try:
                return trim_padding(self.w.rollout.generate(prompts))
            except WorkerError as e:
                self.recovery.replace_engine(e)  # a dead engine: a new one, synced, and the call redone; else raises

    def save(self) -> Path:
        state = {"data": self.task.state_dict(), "seed": self.cfg.trainer.seed,
                 "kl_ctrl": self.kl_ctrl.state_dict() if self.kl_ctrl is not None else None}
        return save_checkpoint(self.run_dir, self.global_step, self.w.actor, state, critic=self.w.critic,
                               keep_last=self.cfg.trainer.keep_last)

    def load(self, step: int) -> None:
        """Continue from checkpoint `step` of this run directory: actor and critic (weights and
        optimizer), data cursor or episode count, KL controller, step; then the engine gets the
        restored weights (a verified sync). Rollout seeds derive from the step, so the run goes on
        as if it had not stopped."""
        s = load_trainer_state(self.run_dir, step)
        d = checkpoint_dir(self.run_dir, step)
        self.w.actor.load(str(d / "actor"), True)
        if self.w.critic is not None:
            self.w.critic.load(str(d / "critic"), True)
        self.task.load_state_dict(s["data"])
        if self.kl_ctrl is not None and s.get("kl_ctrl"):
            self.kl_ctrl.load_state_dict(s["kl_ctrl"])
        self.global_step = int(s["step"])
        self.w.weight_sync.sync()
        log.info("resumed from %s (step %d)", d, self.global_step)

    def log_row(self, row: dict) -> None:
        row["fault/restarts"] = self.recovery.restarts  # dead workers replaced so far
        self.metrics.log(row)
        if self.cfg.trainer.log_every and row["step"] % self.cfg.trainer.log_every == 0:
            log.info(console_line(row))

    # ------------------------------------------------------------------ helpers
    def needs_old_logprobs(self) -> bool:
        """With one PPO epoch over one mini-batch the policy is unchanged when the loss is taken,
        so old log-probs equal the detached current ones: skip the extra forward pass."""
        a = self.cfg.actor
        total = self.cfg.data.batch_size * self.cfg.rollout.n
        return (a.ppo_epochs > 1 or a.mini_batch_size not in (0, total)
                or self.cfg.algorithm.kl_in_reward)  # the in-reward KL is taken against the rollout policy

    def advantage_inputs(self, batch: Batch) -> dict:
        """What the registered estimator declares, by parameter name: batch fields (`scores`,
        `group_ids`, `mask`, `values`, `step_rewards`, ...) and `algorithm.*` options. The
        controller never looks at the estimator's name."""
        params = inspect.signature(self.advantage).parameters
        open_kwargs = any(p.kind is p.VAR_KEYWORD for p in params.values())
        fields = {"group_ids": "uid", "mask": "response_mask"}
        out = {}
        for name in ("scores", "group_ids", "mask", "values", "token_rewards", "step_rewards", "traj_ids",
                     "step_ids", "anchors", "step_state_ids", "penalties"):
            key = fields.get(name, name)
            if (name in params or open_kwargs) and key in batch:
                out[name] = batch[key]
        a = self.cfg.algorithm
        options = {"norm_by_std": a.norm_by_std, "eps": a.eps, "gamma": a.gamma, "lam": a.lam, "omega": a.omega,
                   "episode_stats": a.episode_stats}
        out.update({k: v for k, v in options.items() if k in params})
        missing = [n for n, p in params.items() if p.default is p.empty and n not in out
                   and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)]
        if missing:
            raise ValueError(f"advantage estimator {a.advantage!r} needs {missing}, which this run's batches "
                             f"do not carry (have {sorted(batch.keys())})")
        return out

    def step_metrics(self, batch: Batch, metrics: dict, sync, times: dict) -> dict:
        mask = batch["response_mask"]
        resp_len = mask.sum(-1).float()
        n_tokens = int(batch["attention_mask"].sum())
        row = {"step": self.global_step, "reward/mean": batch["scores"].mean().item(),
               "reward/std": batch["scores"].std().item() if len(batch) > 1 else 0.0,
               "response_length/mean": resp_len.mean().item(), "response_length/max": resp_len.max().item(),
               "response/clip_ratio": float(np.mean([f == "length" for f in batch["finish_reason"]])),
               "advantages/mean": batch["advantages"][mask.bool()].mean().item() if mask.any() else 0.0,
               "advantages/abs_max": batch["advantages"].abs().max().item(),
               **metrics}
        row.setdefault("actor/kl", 0.0)
        if "old_logprobs" in batch:
            diff = (batch["old_logprobs"] - batch["rollout_logprobs"]).abs() * mask
            row["rollout/logprob_diff_mean"] = (diff.sum() / mask.sum()).item()
        row.update(times)
        row["throughput/tokens_per_s"] = n_tokens / times["timing/step_s"]
        row["throughput/rollout_tokens_per_s"] = mask.sum().item() / times["timing/rollout_s"]
        pool = self.w.pool
        row.update(step_costs(times, self.w.shares, {"CPU": pool.cpus_per_bundle * pool.n_bundles,
                                                     "GPU": pool.gpus_per_bundle * pool.n_bundles}))
        row.update({"cost/samples": len(batch), "cost/tokens_generated": int(mask.sum()),
                    "cost/tokens_trained": n_tokens * self.cfg.actor.ppo_epochs})
        row.update({"sync/bytes": sync.bytes, "sync/buckets": sync.buckets, "sync/verified": sync.verified,
                    "sync/max_abs_diff": sync.max_abs_diff, "sync/transfer_s": sync.transfer_seconds,
                    "sync/gather_s": sync.gather_seconds, "sync/send_s": sync.send_seconds,
                    "sync/verify_s": sync.verify_seconds, "sync/checksum_max_rel_err": sync.checksum_max_rel_err,
                    "sync/probe_delta_max": sync.probe_delta_max, "sync/probe_delta_trainer": sync.probe_delta_trainer})
        return row

    def penalize_kl_in_reward(self, batch: Batch) -> dict:
        """Token rewards = score on the last token - beta * KL(old || ref) per token; beta from
        the fixed or adaptive controller (Ziegler et al. 2019), updated with this batch's KL."""
        a, mask = self.cfg.algorithm, batch["response_mask"]
        batch["token_rewards"], kl = token_rewards_with_kl(batch["scores"], mask, batch["old_logprobs"],
                                                           batch["ref_logprobs"], self.kl_ctrl.value,
                                                           kind=a.kl_reward_estimator)
        seq_kl = mean_sequence_kl(kl, mask)
        beta = self.kl_ctrl.value
        self.kl_ctrl.update(seq_kl, n_steps=len(batch))
        return {"reward/kl": seq_kl, "reward/kl_coef": beta}

    def shutdown(self) -> None:
        if getattr(self, "metrics", None) is not None:
            self.metrics.close()
        if getattr(self, "task", None) is not None:
            self.task.close()
        self.w.shutdown()


def pad_with_masked_rows(batch: Batch, divisor: int) -> Batch:
    """Pad to a multiple of `divisor` with copies of row 0 whose response mask is zero: every rank
    gets an equal shard and the padding adds nothing to any loss (agent batches vary in size)."""
    padded, pad = batch.pad_to_divisor(divisor)
    if pad:
        padded.tensors["response_mask"] = padded["response_mask"].clone()
        padded.tensors["response_mask"][-pad:] = 0
    return padded


def rank_metrics(out: Batch, prefix: str) -> dict:
    """Per-rank metrics of an update -> one row: grad_norm and lr are global already; the rest are
    per-rank contributions to a global mean, so they add up (the backend's scaled `loss` is dropped)."""
    ranks = [v for k, v in out.meta.items() if k.startswith("metrics/rank")]
    row = {}
    for k in ranks[0]:
        if k == "loss":
            continue
        vals = [r[k] for r in ranks]
        row[f"{prefix}/{k}"] = float(np.mean(vals)) if k in ("grad_norm", "lr", "step_skipped") else float(np.sum(vals))
    return row
