"""Checkpoints: `checkpoints/step_N/` = `hf/` (an HF model folder), `actor/` (sharded model +
optimizer state), with PPO `critic/` and `critic_hf/`, and `trainer_state.json` (step, data
cursor, seeds, KL controller).

A checkpoint is written to `step_N.tmp/` and renamed when complete, so a crash mid-save never
leaves a half checkpoint that looks whole, and never touches the previous ones. On a multi-node
cluster the run directory must be on a filesystem every node sees.
"""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

STATE_FILE = "trainer_state.json"


def checkpoint_dir(run_dir: Path, step: int) -> Path:
    return Path(run_dir) / "checkpoints" / f"step_{step}"


def save_checkpoint(run_dir: Path, step: int, actor_group, trainer_state: dict, keep_last: int | None = None,
                    critic=None) -> Path:
    final = checkpoint_dir(run_dir, step)
    tmp = final.with_name(final.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    actor_group.save_hf(str(tmp / "hf"))
    actor_group.save(str(tmp / "actor"), True)
    if critic is not None:  # PPO: the value model too (sharded + an HF token-classification folder)
        critic.save(str(tmp / "critic"), True)
        critic.save_hf(str(tmp / "critic_hf"))
    (tmp / STATE_FILE).write_text(json.dumps({"step": step, **trainer_state}, indent=1))
    if final.exists():
        shutil.rmtree(final)
    tmp.rename(final)
    if keep_last:
        for old in list_checkpoints(run_dir)[:-keep_last]:
            shutil.rmtree(checkpoint_dir(run_dir, old), ignore_errors=True)
    return final


def list_checkpoints(run_dir: Path) -> list[int]:
    root = Path(run_dir) / "checkpoints"
    if not root.exists():
        return []
    steps = [int(m.group(1)) for p in root.iterdir() if (m := re.fullmatch(r"step_(\d+)", p.name)) and (p / STATE_FILE).exists()]
    return sorted(steps)


def load_trainer_state(run_dir: Path, step: int) -> dict:
    return json.loads((checkpoint_dir(run_dir, step) / STATE_FILE).read_text())
