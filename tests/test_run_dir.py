"""Run directories and checkpoints: nothing lost, nothing mixed up, nothing loaded unverified.

Real files in tmp folders; the checkpoint writer is a plain object with the worker group's save
interface that writes real files (the Ray/FSDP path is covered by test_resume.py)."""
from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from orchestrator.checkpoint import (MANIFEST, CheckpointError, checkpoint_dir, list_checkpoints,
                                     load_trainer_state, remove_stale_tmp, save_checkpoint, verify_checkpoint)
from orchestrator.config import ConfigError, load_config, save_yaml
from orchestrator.metrics import MetricsLog, read_metrics
from orchestrator.run_dir import open_run_dir


def cfg(run: Path, *overrides: str):
    return load_config(None, [f"trainer.output_dir={run}", *overrides])


def test_fresh_run_refuses_a_used_folder_naming_both_keys(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text('{"step": 0}\n')
    with pytest.raises(ConfigError) as err:
        open_run_dir(cfg(run))
    msg = str(err.value)
    assert msg.startswith(f"trainer.output_dir: {run} is not empty (metrics.jsonl)")
    assert "trainer.resume=true" in msg and "trainer.overwrite=true" in msg
    assert (run / "metrics.jsonl").read_text() == '{"step": 0}\n'  # untouched


def test_fresh_run_in_an_empty_or_new_folder(tmp_path):
    assert open_run_dir(cfg(tmp_path / "new" / "run")) is None
    assert load_config(str(tmp_path / "new" / "run" / "config.yaml")).trainer.output_dir == str(tmp_path / "new" / "run")


def test_overwrite_removes_only_hyflow_outputs(tmp_path):
    run = tmp_path / "run"
    (run / "checkpoints" / "step_3").mkdir(parents=True)
    (run / "metrics.jsonl").write_text('{"step": 0}\n')
    (run / "notes.txt").write_text("mine")
    assert open_run_dir(cfg(run, "trainer.overwrite=true")) is None
    assert sorted(p.name for p in run.iterdir()) == ["config.yaml", "notes.txt"]


def test_resume_keeps_config_and_records_the_command(tmp_path, monkeypatch):
    run = tmp_path / "run"
    first = cfg(run, "trainer.total_steps=4")
    open_run_dir(first)
    original = (run / "config.yaml").read_text()
    _fake_checkpoint(run, 2)
    monkeypatch.setattr("sys.argv", ["hyflow", "train", "x.yaml", "trainer.resume=true", "trainer.total_steps=6"])
    assert open_run_dir(cfg(run, "trainer.total_steps=6", "trainer.resume=true")) == 2
    assert (run / "config.yaml").read_text() == original
    rec = [json.loads(line) for line in (run / "resumed.jsonl").read_text().splitlines()]
    assert len(rec) == 1 and rec[0]["from_step"] == 2 and rec[0]["command"][-1] == "trainer.total_steps=6"
    assert rec[0]["changed"] == {"trainer.total_steps": {"was": 4, "now": 6},
                                 "trainer.resume": {"was": False, "now": True}}


def test_resume_without_checkpoint_starts_over(tmp_path):
    run = tmp_path / "run"
    open_run_dir(cfg(run))
    (run / "metrics.jsonl").write_text('{"step": 0}\n{"step": 1}\n')
    assert open_run_dir(cfg(run, "trainer.resume=true")) == -1
    assert MetricsLog(run, keep_through_step=-1).rows == [] and (run / "metrics.jsonl").read_text() == ""


def test_resume_rewrites_metrics_through_the_checkpoint_step(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(json.dumps({"step": s, "reward/mean": s / 10}) + "\n" for s in range(6)))
    log = MetricsLog(tmp_path, keep_through_step=3)
    assert [r["step"] for r in log.rows] == [0, 1, 2, 3]
    assert [r["step"] for r in read_metrics(path)] == [0, 1, 2, 3]  # rewritten on disk, not just in memory
    log.log({"step": 4, "reward/mean": 0.9})
    assert [r["step"] for r in read_metrics(path)] == [0, 1, 2, 3, 4]  # each step exactly once
    assert not (tmp_path / "metrics.jsonl.tmp").exists()


def test_torn_last_line_is_dropped_with_a_warning(tmp_path, caplog):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 0}\n{"step": 1}\n{"step": 2, "rew')  # disk full mid-write
    with caplog.at_level(logging.WARNING, logger="hyflow"):
        log = MetricsLog(tmp_path, keep_through_step=5)
    assert [r["step"] for r in log.rows] == [0, 1]
    assert "dropped a torn last line" in caplog.text
    assert path.read_text() == '{"step": 0}\n{"step": 1}\n'


def test_a_bad_line_in_the_middle_is_an_error(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 0}\nnot json\n{"step": 2}\n')
    with pytest.raises(ValueError, match=r"metrics.jsonl: line 2 is not JSON"):
        read_metrics(path)


# ---------------------------------------------------------------------------------- checkpoints
class FilesWriter:
    """The save interface of the actor group (save_hf / save), writing real files."""

    def __init__(self, payload: bytes = b"weights", fail: bool = False):
        self.payload, self.fail = payload, fail

    def save_hf(self, path: str) -> None:
        Path(path).mkdir(parents=True)
        (Path(path) / "model.safetensors").write_bytes(self.payload)

    def save(self, path: str, with_optimizer: bool) -> None:
        if self.fail:
            raise OSError("No space left on device")
        Path(path).mkdir(parents=True)
        (Path(path) / ".metadata").write_bytes(b"dcp metadata")
        (Path(path) / "__0_0.distcp").write_bytes(self.payload * 3)


def _fake_checkpoint(run: Path, step: int, payload: bytes = b"weights") -> Path:
    return save_checkpoint(run, step, FilesWriter(payload), {"data": {"position": step}})


def test_checkpoint_has_a_manifest_and_verifies(tmp_path):
    d = _fake_checkpoint(tmp_path, 1)
    manifest = json.loads((d / MANIFEST).read_text())["files"]
    assert sorted(manifest) == ["actor/.metadata", "actor/__0_0.distcp", "hf/model.safetensors", "trainer_state.json"]
    import hashlib
    assert manifest["hf/model.safetensors"]["sha256"] == hashlib.sha256(b"weights").hexdigest()
    verify_checkpoint(d)
    assert load_trainer_state(tmp_path, 1)["data"] == {"position": 1}


@pytest.mark.parametrize("tamper, message", [
    (lambda d: (d / "actor" / ".metadata").write_bytes(b"cos\nsystem\n(S'echo pwned'\ntR."),
     "actor/.metadata does not match its sha256"),
    (lambda d: (d / "actor" / "evil.pkl").write_bytes(b"x"), "not listed: ['actor/evil.pkl']"),
    (lambda d: (d / "hf" / "model.safetensors").unlink(), "missing: ['hf/model.safetensors']"),
    (lambda d: (d / MANIFEST).unlink(), "no manifest.json; refusing to load"),
])
def test_a_checkpoint_that_differs_from_its_manifest_is_refused(tmp_path, tamper, message):
    d = _fake_checkpoint(tmp_path, 1)
    tamper(d)
    with pytest.raises(CheckpointError, match=message.replace("[", r"\[").replace("]", r"\]").replace(".", r"\.")):
        load_trainer_state(tmp_path, 1)


def test_resaving_a_step_keeps_the_old_copy_until_the_new_one_is_complete(tmp_path):
    _fake_checkpoint(tmp_path, 2, b"old")
    with pytest.raises(OSError, match="No space left"):
        save_checkpoint(tmp_path, 2, FilesWriter(b"new", fail=True), {"data": {}})
    d = checkpoint_dir(tmp_path, 2)
    assert (d / "hf" / "model.safetensors").read_bytes() == b"old"  # the previous copy is intact
    verify_checkpoint(d)
    assert (tmp_path / "checkpoints" / "step_2.tmp").exists()
    assert remove_stale_tmp(tmp_path) == ["step_2.tmp"]
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step_2"]
    _fake_checkpoint(tmp_path, 2, b"new")
    assert (d / "hf" / "model.safetensors").read_bytes() == b"new" and list_checkpoints(tmp_path) == [2]


def test_an_old_copy_whose_new_one_never_landed_is_restored(tmp_path):
    d = _fake_checkpoint(tmp_path, 2)
    d.rename(d.with_name("step_2.old"))  # crash between moving the old copy aside and the rename
    remove_stale_tmp(tmp_path)
    assert list_checkpoints(tmp_path) == [2]
    verify_checkpoint(d)


def test_keep_last(tmp_path):
    for step in (1, 2, 3, 4):
        save_checkpoint(tmp_path, step, FilesWriter(), {"data": {}}, keep_last=2)
    assert list_checkpoints(tmp_path) == [3, 4]
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step_3", "step_4"]


def test_save_yaml_roundtrip_used_by_run_dir(tmp_path):
    c = cfg(tmp_path / "r", "trainer.keep_last=2")
    save_yaml(c, tmp_path / "c.yaml")
    assert load_config(str(tmp_path / "c.yaml")).trainer.keep_last == 2
