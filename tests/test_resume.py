"""Resume: a run stopped after its step-1 checkpoint and continued with trainer.resume=true takes
the same step 2 as the run that never stopped (same samples, rewards, loss and update)."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

import tests.tiny as tiny
from orchestrator.config import load_config
from orchestrator.trainer import Trainer
from tests.test_recipes import assert_all_cpus_released, shrink

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def flat_model_dir(tmp_path_factory) -> str:
    """A tiny model with flat logits: its samples differ, so rewards differ within a group."""
    return tiny.build(tmp_path_factory.mktemp("flat_tiny_resume"), seed=3, embed_std=0.1)


def varied_reward(data_source, solution_str, ground_truth, extra_info=None) -> float:
    """Differs within a group (a tiny model never solves a problem): the advantages are not zero."""
    return float(len(solution_str) % 3)


def _run(tiny_model_dir, out: Path, tmp_path: Path, *extra: str) -> list[dict]:
    cfg = load_config(str(REPO / "configs/grpo_math.yaml"), [
        f"model.path={tiny_model_dir}", "trainer.total_steps=2", "trainer.save_every=1", f"trainer.output_dir={out}",
        *shrink("grpo_math.yaml", tmp_path), "rollout.max_new_tokens=12", "actor.lr=1e-3",
        "reward.function=tests.test_resume:varied_reward", *extra])
    trainer = Trainer(cfg)
    try:
        trainer.fit()
    finally:
        trainer.shutdown()
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_resume_continues_exactly(ray_cluster, flat_model_dir, tmp_path):
    tiny_model_dir = flat_model_dir
    a = tmp_path / "a"
    rows_a = _run(tiny_model_dir, a, tmp_path)
    step2_a = [r for r in rows_a if r["step"] == 2][-1]

    # b = a stopped right after its step-1 checkpoint
    b = tmp_path / "b"
    shutil.copytree(a, b)
    shutil.rmtree(b / "checkpoints/step_2")
    (b / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows_a if r["step"] <= 1))
    rows_b = _run(tiny_model_dir, b, tmp_path, "trainer.resume=true")
    assert [r["step"] for r in rows_b] == [r["step"] for r in rows_a]  # no second step 0, no step 1 again
    step2_b = rows_b[-1]
    for key in ("reward/mean", "response_length/mean", "sync/verified"):
        assert step2_b[key] == step2_a[key], key
    for key in ("actor/pg_loss", "actor/grad_norm", "actor/entropy"):
        assert step2_b[key] == pytest.approx(step2_a[key], rel=1e-5, abs=1e-7), key
    state_a = json.loads((a / "checkpoints/step_2/trainer_state.json").read_text())
    state_b = json.loads((b / "checkpoints/step_2/trainer_state.json").read_text())
    assert state_b == state_a  # data cursor and step
    # the weights after step 2 are bit-identical (so step 1's update and optimizer state came back)
    from safetensors.torch import load_file
    wa, wb = (load_file(str(x / "checkpoints/step_2/hf/model.safetensors")) for x in (a, b))
    w1 = load_file(str(a / "checkpoints/step_1/hf/model.safetensors"))
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    assert any(not torch.equal(wa[k], w1[k]) for k in wa)  # and step 2 did change them
    assert_all_cpus_released(ray_cluster)

    # resume with no checkpoint yet is a fresh start
    rows_c = _run(tiny_model_dir, tmp_path / "c", tmp_path, "trainer.resume=true", "trainer.total_steps=1")
    assert [r["step"] for r in rows_c] == [0, 1]
