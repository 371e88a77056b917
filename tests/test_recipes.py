"""Every recipe under configs/ loads, and runs one step end to end on the tiny model (same code
path as `hyflow train`, shrunk by overrides); each estimator's advantages reach the update."""
from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest

from orchestrator.config import load_config
from orchestrator.trainer import Trainer
from tests import tiny

REPO = Path(__file__).resolve().parents[1]
RECIPES = sorted(p.name for p in (REPO / "configs").glob("*.yaml"))


RM_RECIPES = [n for n in RECIPES if (REPO / "configs" / n).read_text().startswith("# hyflow train-rm ")]


def test_every_recipe_starts_with_its_command():
    for name in RECIPES:
        first = (REPO / "configs" / name).read_text().splitlines()[0]
        command = "train-rm" if name in RM_RECIPES else "train"
        assert first == f"# hyflow {command} configs/{name}", (name, first)


def header_overrides(name: str) -> list[str]:
    """The `key=value` overrides a recipe's header comment suggests (its GPU-sized line and the
    lines that continue it), placeholders filled with plausible values."""
    out, on = [], False
    for line in (REPO / "configs" / name).read_text().splitlines():
        if not line.startswith("#"):
            break
        text = line.lstrip("#").strip()
        on = "GPU-sized" in text or (on and "=" in text and not text.startswith("("))
        if on:
            for tok in text.split():
                if re.fullmatch(r"[a-z_]+(\.[a-z_0-9]+)+=\S+", tok):
                    key, value = tok.split("=", 1)
                    value = {"<GPUs>": "8", "$ALFWORLD_DATA": "/data/alfworld"}.get(value, value)
                    out.append(f"{key}={'/models/x' if value.startswith('<') else value}")
    return out


@pytest.mark.parametrize("name", RECIPES)
def test_every_recipe_header_validates(name):
    """Every override a recipe's header suggests loads (a header that lies costs a user a GPU start)."""
    overrides = header_overrides(name)
    if "quickstart" in name or "math" in name or "webshop" in name or "alfworld" in name or "for_" in name:
        assert overrides, f"{name}: no GPU-sized overrides found in its header"
    load_config(str(REPO / "configs" / name), overrides)


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
    if "alfworld" in name or "webshop" in name or name == "grpo_retrieval.yaml":  # agent recipes
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
@pytest.mark.parametrize("name", [n for n in RECIPES if n != "quickstart.yaml" and not n.startswith("for_")
                                  and n not in RM_RECIPES])  # train-rm recipes: test_reward_model.py
def test_recipe_runs_one_step(name, ray_cluster, tiny_model_dir, tmp_path):
    # RLHF recipes: a reward model on the tiny backbone (a random head), as train-rm exports one.
    rm = ([f"reward.model.path={tiny.build_reward_model(tmp_path / 'rm', tiny_model_dir)}"]
          if "_rm_" in name else [])
    cfg = load_config(str(REPO / "configs" / name), [
        f"model.path={tiny_model_dir}", "trainer.total_steps=1", f"trainer.output_dir={tmp_path / 'run'}",
        *shrink(name, tmp_path), *rm])
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
    if cfg.reward.model.path:  # the reward model scored every sample; the rule is logged beside it
        w = cfg.reward
        assert math.isfinite(step["reward/model_mean"]) and step["reward/model_std"] > 0
        assert 0 <= step["reward/function_mean"] <= 1
        assert step["reward/mean"] == pytest.approx(w.function_weight * step["reward/function_mean"]
                                                    + w.model.weight * step["reward/model_mean"], abs=1e-5)
    assert_dumps_match_metrics(run, step, cfg)
    if name in ("grpo_math.yaml", "gigpo_webshop.yaml"):
        assert_view_shows_the_rollouts(run, tmp_path)


def assert_view_shows_the_rollouts(run: Path, tmp_path: Path) -> None:
    """`hyflow view` of this real run, loaded in headless Chromium: the dumped responses (or the
    episodes' actions) are in the rendered page."""
    import subprocess
    from orchestrator.view import main as view_main
    from tests.test_view import CHROMIUM, FLAGS, _Tree
    if not CHROMIUM.exists():
        return
    assert view_main([str(run), "--out", str(tmp_path / "view.html")]) == 0
    res = subprocess.run([str(CHROMIUM), *FLAGS, f"--user-data-dir={tmp_path / 'profile'}", "--dump-dom",
                          (tmp_path / "view.html").as_uri() + "#src=rollouts&step=1"],
                         capture_output=True, text=True, timeout=120)
    tree = _Tree()
    tree.feed(res.stdout)
    body = tree.root.one("body")
    assert body.attrs.get("data-ready") == "1", res.stderr[-2000:]
    text = body.text()
    dump = [json.loads(line) for line in (run / "rollouts" / "step_1.jsonl").read_text().splitlines()]
    # The tiny random model may answer with whitespace only: look for each row's longest line of
    # text (prompt and response; observation and action), whichever has one.
    def longest_line(*texts: str) -> str:
        return max((ln.strip() for t in texts for ln in t.splitlines()), key=len, default="")[:40]
    shown = [longest_line(d["prompt"], d["response"]) for d in dump if d["kind"] == "sample"]
    shown += [longest_line(t["observation"], t["action"]) for d in dump if d["kind"] == "episode" for t in d["turns"]]
    assert shown and all(shown) and any(s in text for s in shown), (shown, text[:2000])


def assert_dumps_match_metrics(run: Path, step: dict, cfg) -> None:
    """rollouts/step_1.jsonl holds what the step trained on: its rewards (or episode returns and
    successes) average to the logged metrics; every sample / turn has text and an advantage."""
    dump = [json.loads(line) for line in (run / "rollouts" / "step_1.jsonl").read_text().splitlines()]
    if cfg.env.name:
        assert {d["kind"] for d in dump} == {"episode"}
        assert len(dump) == cfg.data.batch_size * cfg.rollout.n
        assert sum(d["won"] for d in dump) / len(dump) == pytest.approx(step["env/success_rate"])
        assert sum(d["return"] for d in dump) / len(dump) == pytest.approx(step["env/return_mean"])
        assert sum(d["length"] for d in dump) / len(dump) == pytest.approx(step["env/length_mean"])
        turns = [t for d in dump for t in d["turns"]]
        assert len(turns) == sum(d["length"] for d in dump)
        assert all(isinstance(t["advantage"], float) and isinstance(t["observation"], str) for t in turns)
    else:
        assert {d["kind"] for d in dump} == {"sample"}
        assert len(dump) == cfg.data.batch_size * cfg.rollout.n
        assert sum(d["reward"] for d in dump) / len(dump) == pytest.approx(step["reward/mean"], abs=1e-6)
        assert sum(d["length"] for d in dump) / len(dump) == pytest.approx(step["response_length/mean"])
        assert all(d["prompt"] and isinstance(d["advantage"], float) for d in dump)
        groups = {}
        for d in dump:
            groups.setdefault(d["group"], []).append(d)
        assert all(len(g) == cfg.rollout.n for g in groups.values())


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
