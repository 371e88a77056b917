"""The run directory (`trainer.output_dir`): what a run may find there, and what it writes first.

    resume_step = open_run_dir(cfg)   # before Ray starts: refuse, clear, or prepare a resume

- A fresh run needs an empty (or absent) folder. A non-empty one is refused unless
  `trainer.resume=true` (continue from its newest checkpoint) or `trainer.overwrite=true` (delete
  hyflow's outputs there first; files hyflow did not write are left alone).
- A fresh run writes `config.yaml`, the resolved config. A resumed run keeps the original and
  appends the command it was started with, and any keys it changed, to `resumed.jsonl`.
- Returns the last step whose metrics rows a resume keeps: its newest checkpoint's step, or -1 when
  it has none (it starts over); None for a fresh start. `MetricsLog` drops the later rows
  (orchestrator/metrics.py), so no step is logged twice.
"""
from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path

from orchestrator.checkpoint import list_checkpoints, remove_stale_tmp
from orchestrator.config import ConfigError, load_config, save_yaml, to_dict

# Everything a run writes at the top of its folder (overwrite removes exactly these).
RUN_OUTPUTS = ("config.yaml", "resumed.jsonl", "metrics.jsonl", "reward.png", "summary.json", "checkpoints",
               "rollouts", "val", "tensorboard", "wandb")


def open_run_dir(cfg) -> int | None:
    t = cfg.trainer
    run = Path(t.output_dir)
    if run.exists() and not run.is_dir():
        raise ConfigError(f"trainer.output_dir: {run} exists and is not a folder")
    entries = sorted(p.name for p in run.iterdir()) if run.is_dir() else []
    if entries and not (t.resume or t.overwrite):
        shown = ", ".join(entries[:5]) + (", ..." if len(entries) > 5 else "")
        raise ConfigError(f"trainer.output_dir: {run} is not empty ({shown}); continue that run with "
                          f"trainer.resume=true, or replace it with trainer.overwrite=true")
    run.mkdir(parents=True, exist_ok=True)
    if t.overwrite and not t.resume:
        for name in RUN_OUTPUTS:
            p = run / name
            if p.is_dir():
                shutil.rmtree(p)
            elif p.exists():
                p.unlink()
    remove_stale_tmp(run)
    steps = list_checkpoints(run) if t.resume else []
    if t.resume and (run / "config.yaml").is_file():
        _record_resume(cfg, run, steps[-1] if steps else None)
    else:
        save_yaml(cfg, run / "config.yaml")
    return steps[-1] if steps else (-1 if t.resume else None)


def _record_resume(cfg, run: Path, step: int | None) -> None:
    """Keep the original config.yaml; log the resumed command and the keys it changes."""
    try:
        original = _flat(to_dict(load_config(str(run / "config.yaml"))))
    except (ConfigError, FileNotFoundError) as e:
        raise ConfigError(f"trainer.resume: the run's {run / 'config.yaml'} no longer loads: {e}") from None
    now = _flat(to_dict(cfg))
    changed = {k: {"was": original.get(k), "now": v} for k, v in now.items() if original.get(k) != v}
    row = {"time": time.strftime("%Y-%m-%dT%H:%M:%S"), "command": sys.argv, "from_step": step, "changed": changed}
    with open(run / "resumed.jsonl", "a") as f:
        f.write(json.dumps(row) + "\n")


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict) and k != "kwargs":
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[prefix + k] = v
    return out
