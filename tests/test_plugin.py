"""A third-party estimator package, pip-installed into a temporary location, trains one step."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def plugin_path(tmp_path_factory) -> Path:
    target = tmp_path_factory.mktemp("site")
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                    "--target", str(target), str(REPO / "examples/plugin_algorithm")], check=True)
    assert any(p.name.startswith("hyflow_mean_baseline") and p.suffix == ".dist-info" for p in target.iterdir())
    return target


def train(tiny_model_dir, out: Path, extra_path: Path | None):
    cmd = [sys.executable, "-m", "orchestrator.cli", "train", str(REPO / "configs/quickstart.yaml"),
           f"model.path={tiny_model_dir}", "algorithm.advantage=mean_baseline", "trainer.total_steps=1",
           f"trainer.output_dir={out}", "data.batch_size=2", "rollout.n=2", "rollout.max_new_tokens=8",
           "data.val_size=0", "rollout.kv_cache_gb=0.25", "trainer.progress=false", "weight_sync.bucket_mb=4"]
    path = os.pathsep.join([str(REPO)] + ([str(extra_path)] if extra_path else []))
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "PYTHONPATH": path})


def test_unregistered_estimator_fails_naming_the_registered_ones(tiny_model_dir, tmp_path):
    proc = train(tiny_model_dir, tmp_path / "run", None)
    assert proc.returncode != 0
    assert "unknown advantage estimator 'mean_baseline'" in proc.stderr and "'grpo'" in proc.stderr


def test_entry_point_estimator_trains_one_step(plugin_path, tiny_model_dir, tmp_path):
    proc = train(tiny_model_dir, tmp_path / "run", plugin_path)
    assert proc.returncode == 0, proc.stderr[-4000:]
    rows = [json.loads(line) for line in (tmp_path / "run/metrics.jsonl").read_text().splitlines()]
    step = [r for r in rows if r["step"] == 1][0]
    assert step["sync/verified"] is True and "advantages/mean" in step
    # mean_baseline: A = r - mean(r) with 0/1 rewards, so max |A| = max(m, 1 - m) for a mixed
    # batch (m = reward/mean) and 0 when all rewards are equal.
    m = step["reward/mean"]
    assert step["advantages/abs_max"] == pytest.approx(max(m, 1 - m) if 0 < m < 1 else 0.0, abs=1e-6)
