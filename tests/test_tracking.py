"""Tracking: TensorBoard event files and an offline wandb run in the run directory, read back with
independent readers (TensorBoard's EventAccumulator; the wandb file's LevelDB-log records parsed here)."""
from __future__ import annotations

import glob
import json

import pytest

from orchestrator.config import ConfigError, load_config
from orchestrator.metrics import MetricsLog

pytest.importorskip("tensorboard", reason="the tracking extra (bash scripts/setup.sh --test)")
pytest.importorskip("wandb", reason="the tracking extra (bash scripts/setup.sh --test)")

ROWS = [{"step": 0, "val/accuracy": 0.25}, {"step": 1, "reward/mean": 0.125, "actor/kl": 0.5, "sync/verified": True},
        {"step": 2, "reward/mean": 0.375, "actor/kl": None, "val/accuracy": 0.5}]


def wandb_history(path: str) -> list[dict]:
    """History records of a wandb .wandb file: ':W&B' + 3 header bytes, then LevelDB-log records
    (32 KiB blocks; 7-byte record headers: crc32, little-endian length, type FULL/FIRST/MIDDLE/LAST)."""
    from wandb.proto import wandb_internal_pb2 as pb
    data, pos, buf, out = open(path, "rb").read(), 7, b"", []
    assert data[:4] == b":W&B"
    while pos + 7 <= len(data):
        left = 32768 - pos % 32768
        length, kind = int.from_bytes(data[pos + 4:pos + 6], "little"), data[pos + 6]
        if left < 7 or (length == 0 and kind == 0):
            pos += left
            continue
        chunk, pos = data[pos + 7:pos + 7 + length], pos + 7 + length
        buf = chunk if kind in (1, 2) else buf + chunk
        if kind in (1, 4):
            rec = pb.Record()
            rec.ParseFromString(buf)
            if rec.WhichOneof("record_type") == "history":
                out.append({i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in rec.history.item})
    return out


def test_tensorboard_and_wandb_get_every_numeric_value(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    log = MetricsLog(tmp_path, loggers=["console", "tensorboard", "wandb"], experiment="trk", config={"a": 1})
    for row in ROWS:
        log.log(row)
    log.close()
    ea = EventAccumulator(str(tmp_path / "tensorboard"))
    ea.Reload()
    assert [(e.step, e.value) for e in ea.Scalars("reward/mean")] == [(1, 0.125), (2, 0.375)]
    assert [(e.step, e.value) for e in ea.Scalars("val/accuracy")] == [(0, 0.25), (2, 0.5)]
    assert [(e.step, e.value) for e in ea.Scalars("actor/kl")] == [(1, 0.5)]  # null is not a value
    assert "sync/verified" not in ea.Tags()["scalars"]  # booleans stay in metrics.jsonl only
    (run_file,) = glob.glob(str(tmp_path / "wandb" / "offline-run-*" / "run-*.wandb"))
    hist = wandb_history(run_file)
    assert [(h["_step"], h.get("reward/mean"), h.get("val/accuracy")) for h in hist] == \
           [(0, None, 0.25), (1, 0.125, None), (2, 0.375, 0.5)]
    assert [json.loads(line)["step"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()] == [0, 1, 2]


def test_unknown_logger_is_refused_naming_the_key():
    with pytest.raises(ConfigError, match=r"trainer.loggers\[1\]: expected one of \['console', 'tensorboard', "
                                          r"'wandb'\], got 'mlflow'"):
        load_config(None, ["trainer.loggers=[console,mlflow]"])
