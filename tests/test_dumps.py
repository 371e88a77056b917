"""Dump files: text clipping keeps head and tail and says how much it cut; rows are re-read from disk."""
from __future__ import annotations

import json

import pytest

from orchestrator.dumps import Dumps, clip


def test_clip_keeps_head_and_tail_and_names_the_cut():
    text = "A" * 500 + "B" * 1000 + "C" * 500
    out = clip(text, 300)
    assert out.startswith("A" * 200) and out.endswith("C" * 100)
    assert "…[truncated 1700 chars]…" in out
    assert clip("short", 300) == "short" and clip(None, 10) is None


def test_write_rows_clips_nested_text_and_skips_empty(tmp_path):
    d = Dumps(tmp_path, every=2, max_chars=100)
    assert d.due(4) and not d.due(3) and not Dumps(tmp_path, every=0).due(2)
    path = d.write("rollouts", 4, [
        {"kind": "episode", "won": True, "return": float("nan"),
         "turns": [{"observation": "o" * 150, "action": "go", "advantage": 0.5}]},
        {"kind": "trajectory", "actions": ["x" * 150], "states": ["s"], "log_r": 1.0}])
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    assert path == tmp_path / "rollouts" / "step_4.jsonl"
    assert rows[0]["step"] == 4 and rows[0]["return"] is None  # non-finite -> null
    assert "…[truncated 50 chars]…" in rows[0]["turns"][0]["observation"]
    assert rows[1]["actions"][0].startswith("x" * 67) and "truncated 50 chars" in rows[1]["actions"][0]
    assert d.write("val", 0, []) is None and not (tmp_path / "val").exists()


@pytest.mark.parametrize("cap", [100, 2000])
def test_clip_length_is_bounded(cap):
    out = clip("z" * 100_000, cap)
    assert len(out) <= cap + len("…[truncated 100000 chars]…")
