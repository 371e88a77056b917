"""Rollout and validation dumps: what the model generated, as JSON lines in the run directory.

    rollouts/step_N.jsonl   the samples of training step N (N = 1, 2, ...)
    val/step_N.jsonl        the validation generations after step N (N = 0: before training)

Every line is one object with a `kind` (the schema `hyflow view` reads, orchestrator/view.py):
- "sample" (single-turn): step, group, prompt, response, reward, advantage (mean over the response
  tokens), length (tokens), finish_reason, data_source, ground_truth;
- "episode" (agents): step, group, traj, won, return, task_type, length (turns) and `turns`, each
  {observation, action, response, env_reward, penalty, valid, anchor, advantage};
- "trajectory" (FoR): step, problem, actions, states, log_r, log_pf, log_z, correct, replayed.
Tasks render their own rows (`task.dump_rows`); this module clips text and writes the files.
Text longer than `trainer.dump_max_chars` keeps its head and tail around the marker
`…[truncated N chars]…` (N = the characters cut), so files stay small and say where they were cut.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

TEXT_KEYS = ("prompt", "response", "observation", "action", "ground_truth")


def clip(text, cap: int):
    """`text` if it fits in `cap` characters, else its head and tail around the truncation marker."""
    if not isinstance(text, str) or cap <= 0 or len(text) <= cap:
        return text
    cut = len(text) - cap
    head = cap - cap // 3
    return f"{text[:head]}…[truncated {cut} chars]…{text[len(text) - cap // 3:]}"


def _plain(v):
    if hasattr(v, "item") and getattr(v, "ndim", 0) == 0:
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def _clip_row(row: dict, cap: int) -> dict:
    out = {}
    for k, v in row.items():
        if k in TEXT_KEYS:
            v = clip(v if isinstance(v, str) or v is None else str(v), cap)
        elif k == "turns":
            v = [_clip_row(t, cap) for t in v]
        elif k in ("actions", "states"):
            v = [clip(x, cap) for x in v]
        out[k] = _plain(v)
    return out


class Dumps:
    """Writes dump files into a run directory; `every` = 0 turns training dumps off."""

    def __init__(self, run_dir: Path, every: int = 1, max_chars: int = 2000):
        self.run_dir, self.every, self.max_chars = Path(run_dir), every, max_chars

    def due(self, step: int) -> bool:
        return bool(self.every) and step % self.every == 0

    def write(self, folder: str, step: int, rows: list[dict]) -> Path | None:
        if not rows:
            return None
        return write_jsonl(self.run_dir / folder / f"step_{step}.jsonl", rows, self.max_chars, step)


def write_jsonl(path: Path, rows: list[dict], max_chars: int = 2000, step: int | None = None) -> Path:
    """Dump rows (clipped; with `step` when given) to the JSON-lines file `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for row in rows:
            row = {"step": step, **row} if step is not None else row
            f.write(json.dumps(_clip_row(row, max_chars), ensure_ascii=False) + "\n")
    return path
