"""Two GiGPO iterations on generated ALFWorld games with the embedded model: real Ray, the real
ALFWorld engine in env actors, vLLM rollout, 2 FSDP2 ranks (the gigpo_alfworld recipe, shrunk)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from orchestrator.config import load_config
from orchestrator.trainer import Trainer
from tests.test_quickstart import CONTRACT

REPO = Path(__file__).resolve().parents[1]


def test_two_gigpo_iterations_on_alfworld(ray_cluster, tmp_path):
    pytest.importorskip("alfworld", reason="the alfworld extra (bash scripts/setup.sh --test)")
    cfg = load_config(str(REPO / "configs/gigpo_alfworld.yaml"), [
        "trainer.total_steps=2", f"trainer.output_dir={tmp_path / 'run'}", "trainer.progress=false",
        f"env.kwargs.data_dir={tmp_path / 'games'}", "env.kwargs.generate_per_type=1",
        "env.max_steps=2", "env.val_groups=2", "data.batch_size=1", "rollout.n=2", "rollout.max_new_tokens=48",
        "actor.micro_batch_size=2", "weight_sync.bucket_mb=128"])
    trainer = Trainer(cfg)
    try:
        trainer.fit()
    finally:
        trainer.shutdown()
    from tests.test_recipes import assert_all_cpus_released
    assert_all_cpus_released(ray_cluster)  # env actors included
    rows = [json.loads(line) for line in (tmp_path / "run/metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if r["step"] >= 1]
    assert [r["step"] for r in steps] == [1, 2]
    for r in steps:
        assert not [k for k in CONTRACT if k not in r], [k for k in CONTRACT if k not in r]
        assert r["sync/verified"] is True and 0 <= r["env/success_rate"] <= 1
        assert any(k.startswith("env/success/") for k in r)         # per task type
        assert 1 <= r["env/length_mean"] <= 2 and r["env/errors"] == 0
    assert any(k.startswith("val/success/") for k in rows[0])       # step 0: before training
    games = list((tmp_path / "games/train").iterdir())
    assert len(games) == 6                                           # one per task type, generated
