"""End to end: the quickstart recipe (embedded model, vLLM, one 2-thread FSDP2 rank) for 2 steps via the CLI."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
CONTRACT = ["step", "reward/mean", "response_length/mean", "actor/kl", "actor/entropy", "actor/pg_loss",
            "timing/rollout_s", "timing/train_s", "timing/sync_s", "timing/step_s", "throughput/tokens_per_s",
            "sync/bytes", "sync/verified"]


@pytest.fixture(scope="module")
def quickstart_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("quickstart") / "run"
    cmd = [sys.executable, "-m", "orchestrator.cli", "train", str(REPO / "configs/quickstart.yaml"),
           "trainer.total_steps=2", f"trainer.output_dir={out}", "data.batch_size=4", "rollout.n=2",
           "rollout.max_new_tokens=48", "data.val_size=4", "trainer.progress=false"]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=900,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    return out, proc


def test_metrics_contract(quickstart_run):
    out, _ = quickstart_run
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    train_rows = [r for r in rows if "reward/mean" in r]
    assert [r["step"] for r in train_rows] == [1, 2]
    for row in train_rows:
        missing = [k for k in CONTRACT if k not in row]
        assert not missing, missing
        assert row["sync/verified"] is True
        assert 0.0 <= row["sync/max_abs_diff"] <= 1e-3
        # SmolLM2-135M in fp32 is ~538 MB; every sync moves all of it once.
        assert 500e6 < row["sync/bytes"] < 560e6
        assert 0.0 <= row["reward/mean"] <= 1.0
        assert 1 <= row["response_length/mean"] <= 48
        assert row["actor/entropy"] > 0
    assert "val/accuracy" in rows[0] and rows[0]["step"] == 0
    assert (out / "reward.png").stat().st_size > 1000
    cfg = yaml.safe_load((out / "config.yaml").read_text())
    assert cfg["trainer"]["total_steps"] == 2 and cfg["rollout"]["n"] == 2


def test_summary_counts_the_run(quickstart_run):
    out, proc = quickstart_run
    s = json.loads((out / "summary.json").read_text())
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in rows if "reward/mean" in r]
    assert s["steps"] == 2 and s["samples"] == 2 * 4 * 2  # steps x prompts x samples per prompt
    assert s["wall_s"] == pytest.approx(sum(r["timing/step_s"] for r in train))
    assert s["cpu_hours_reserved"] == pytest.approx(2 * s["wall_s"] / 3600)  # 1 rank x 2 CPUs held
    assert 0 < s["cpu_hours_busy"] <= s["cpu_hours_reserved"]
    assert s["tokens_generated"] == sum(r["cost/tokens_generated"] for r in train)
    assert "summary: 2 steps" in proc.stderr


def test_checkpoint_reloads_with_transformers(quickstart_run):
    import torch
    from transformers import AutoModelForCausalLM

    from orchestrator.model_prep import embedded_model_dir

    out, _ = quickstart_run
    ckpt = out / "checkpoints" / "step_2"
    state = json.loads((ckpt / "trainer_state.json").read_text())
    assert state["step"] == 2 and state["data"]["position"] == 8  # 2 steps x 4 prompts
    assert any((ckpt / "actor").iterdir())  # sharded model + optimizer state
    trained = AutoModelForCausalLM.from_pretrained(ckpt / "hf")
    base = AutoModelForCausalLM.from_pretrained(embedded_model_dir())
    t, b = dict(trained.named_parameters()), dict(base.named_parameters())
    assert t.keys() == b.keys()
    changed = sum(not torch.equal(t[k], b[k]) for k in t)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    if any(r.get("actor/grad_norm", 0) > 0 for r in rows):  # a step with signal moves (almost) every tensor
        assert changed > len(t) // 2, f"only {changed} of {len(t)} tensors changed after 2 updates"
    else:  # all groups had equal rewards: zero advantages, Adam leaves the weights exactly as they were
        assert changed == 0


def test_a_normal_run_prints_no_warning(quickstart_run):
    """Known-harmless library notices are dropped at their source (workers/quiet.py); what is left
    is Ray's start line and hyflow's own lines (README "What a normal run prints")."""
    from workers.quiet import KNOWN_HARMLESS
    _, proc = quickstart_run
    lines = [ln for ln in (proc.stdout + proc.stderr).splitlines() if ln.strip()]
    noisy = [ln for ln in lines if "warn" in ln.lower() or any(re.search(p, ln) for p, _ in KNOWN_HARMLESS)]
    assert not noisy, noisy
    unexplained = [ln for ln in lines if not re.search(r"Started a local Ray instance| hyflow: ", ln)]
    assert not unexplained, unexplained


def test_checkpoint_stores_tied_weights_once_and_readable(quickstart_run):
    from safetensors import safe_open
    out, _ = quickstart_run
    weights = out / "checkpoints" / "step_2" / "hf" / "model.safetensors"
    with safe_open(str(weights), "pt") as f:
        names = list(f.keys())
        numel = sum(int(np.prod(f.get_slice(n).get_shape())) for n in names)
    assert "lm_head.weight" not in names and "model.embed_tokens.weight" in names
    assert 134e6 < numel < 135e6, numel  # SmolLM2-135M: 134.5M parameters, the tied head once
    modes = {p.name: p.stat().st_mode & 0o777 for p in weights.parent.iterdir() if p.is_file()}
    assert len(set(modes.values())) == 1, modes  # model.safetensors is no longer 0600 among 0644 files


def test_eval_takes_the_step_folder_and_prints_clean_json(quickstart_run):
    out, _ = quickstart_run
    cmd = [sys.executable, "-m", "orchestrator.cli", "eval", str(REPO / "configs/quickstart.yaml"),
           "--checkpoint", str(out / "checkpoints" / "step_2"), "data.val_size=4", "rollout.max_new_tokens=16"]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout)  # stdout is the JSON alone: logs went to stderr
    assert result["model"] == str(out / "checkpoints" / "step_2" / "hf")
    assert result["val/n"] == 4 and 0.0 <= result["val/accuracy"] <= 1.0


def test_eval_names_what_a_wrong_folder_lacks(quickstart_run, tmp_path):
    out, _ = quickstart_run
    for folder, message in [(out, "neither it nor"), (tmp_path / "nope", "no such folder")]:
        proc = subprocess.run([sys.executable, "-m", "orchestrator.cli", "eval", str(REPO / "configs/quickstart.yaml"),
                               "--checkpoint", str(folder)], cwd=REPO, capture_output=True, text=True, timeout=120,
                              env={**os.environ, "PYTHONPATH": str(REPO)})
        assert proc.returncode == 2 and message in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "config.json").write_text("{}")
    proc = subprocess.run([sys.executable, "-m", "orchestrator.cli", "eval", str(REPO / "configs/quickstart.yaml"),
                           "--checkpoint", str(tmp_path / "half")], cwd=REPO, capture_output=True, text=True,
                          timeout=120, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == 2 and "lacks weights (*.safetensors), tokenizer files" in proc.stderr, proc.stderr
