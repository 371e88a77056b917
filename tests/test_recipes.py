"""Every recipe under configs/ loads, and runs one step end to end on the tiny model (same code
path as `hyflow train`, shrunk by overrides); each estimator's advantages reach the update."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from orchestrator.config import load_config
from orchestrator.trainer import Trainer

REPO = Path(__file__).resolve().parents[1]
RECIPES = sorted(p.name for p in (REPO / "configs").glob("*.yaml"))


def test_every_recipe_starts_with_its_command():
    for name in RECIPES:
        first = (REPO / "configs" / name).read_text().splitlines()[0]
        assert first == f"# hyflow train configs/{name}", (name, first)


def assert_all_cpus_released(ray, timeout_s: float = 15.0):
    """Trainer.shutdown returns every Ray CPU (workers, placement groups and env actors)."""
    import time
    deadline = time.monotonic() + timeout_s
    while ray.available_resources().get("CPU", 0) < ray.cluster_resources()["CPU"]:
        assert time.monotonic() < deadline, f"leaked: {ray.available_resources()} of {ray.cluster_resources()}"
        time.sleep(0.5)


def shrink(name: str, tmp_path: Path) -> list[str]:
    """Overrides that keep a recipe's algorithm and task but make one step take seconds."""
    out = ["rollout.max_new_tokens=8", "data.val_size=0", "rollout.kv_cache_gb=0.25", "trainer.progress=false",
           "weight_sync.bucket_mb=4", "actor.micro_batch_size=2", "data.batch_size=2"]
    if "alfworld" in name or "webshop" in name:
        out += ["env.max_steps=2", "env.val_groups=1", "rollout.max_new_tokens=12", "rollout.max_model_len=1024",
                "data.max_prompt_tokens=1000"]  # the tiny model has 1024 positions
    if "alfworld" in name:
        pytest.importorskip("alfworld", reason="the alfworld extra (bash scripts/setup.sh --test)")
        out += [f"env.kwargs.data_dir={tmp_path / 'games'}", "env.kwargs.generate_per_type=1"]
    if "webshop" in name:
        out += ["env.kwargs.num_products=60"]
    if "ppo" not in name:
        out += ["rollout.n=2"]
    return out


# quickstart: test_quickstart.py; Flow of Reasoning (its own trainer, for_*.yaml): test_for.py
@pytest.mark.parametrize("name", [n for n in RECIPES if n != "quickstart.yaml" and not n.startswith("for_")])
def test_recipe_runs_one_step(name, ray_cluster, tiny_model_dir, tmp_path):
    cfg = load_config(str(REPO / "configs" / name), [
        f"model.path={tiny_model_dir}", "trainer.total_steps=1", f"trainer.output_dir={tmp_path / 'run'}",
        *shrink(name, tmp_path)])
    trainer = Trainer(cfg)
    try:
        trainer.fit()
    finally:
        trainer.shutdown()
    assert_all_cpus_released(ray_cluster)
    run = tmp_path / "run"
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    step = [r for r in rows if r["step"] == 1][0]
    assert step["sync/verified"] is True
    assert (run / "checkpoints/step_1/hf/config.json").exists()
    if cfg.actor.kl_coef > 0 or cfg.algorithm.kl_in_reward:
        assert step["timing/ref_s"] > 0  # the reference policy ran
    if cfg.algorithm.kl_in_reward:
        assert step["reward/kl_coef"] == cfg.algorithm.kl_reward_coef and step["reward/kl"] >= 0
    if cfg.algorithm.advantage == "gae":  # the critic was built, trained and checkpointed
        assert step["timing/values_s"] > 0 and step["critic/vf_loss"] >= 0 and "critic/vf_clipfrac" in step
        assert (run / "checkpoints/step_1/critic_hf/config.json").exists()
    if cfg.env.name:  # agent recipes: episodes ran in the env actors, success reported per task type
        assert 0 <= step["env/success_rate"] <= 1 and step["env/length_mean"] >= 1
        assert any(k.startswith("val/success/") for k in step)


@pytest.mark.parametrize("backend,mode", [("fsdp", "adapter"), ("deepspeed", "merge")])
def test_lora_run_through_the_trainer(backend, mode, ray_cluster, tiny_model_dir, tmp_path):
    """LoRA + the chosen sync mode wired end to end: the engine serves the trained adapter (or the
    merged weights) and every sync is verified against the trainer."""
    cfg = load_config(str(REPO / "configs/grpo_math.yaml"), [
        f"model.path={tiny_model_dir}", "trainer.total_steps=1", f"trainer.output_dir={tmp_path / 'run'}",
        f"actor.backend={backend}", "actor.lora_rank=8", f"weight_sync.lora_mode={mode}", "actor.kl_coef=0",
        *shrink("grpo_math.yaml", tmp_path)])
    trainer = Trainer(cfg)
    try:
        trainer.fit()
    finally:
        trainer.shutdown()
    assert_all_cpus_released(ray_cluster)
    run = tmp_path / "run"
    step = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()][-1]
    assert step["sync/verified"] is True
    full = 3219776 * 4  # the tiny model's fp32 bytes
    assert (step["sync/bytes"] < full / 5) if mode == "adapter" else (step["sync/bytes"] == full)
    assert (run / "checkpoints/step_1/hf/adapter/adapter_config.json").exists()
