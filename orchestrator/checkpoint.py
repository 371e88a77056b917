"""Checkpoints: `checkpoints/step_N/` = `hf/` (an HF model folder), `actor/` (sharded model +
optimizer state), with PPO `critic/` and `critic_hf/`, `trainer_state.json` (step, data cursor,
seeds, KL controller) and `manifest.json` (the sha256 of every other file).

    save_checkpoint(run_dir, step, actor_group, state, keep_last=3)   # atomic, durable
    verify_checkpoint(checkpoint_dir(run_dir, step))                  # before anything loads it

Durability: a checkpoint is written to `step_N.tmp/`, every file and folder in it is fsynced, the
manifest is written, and only then is it renamed to `step_N/` (and the parent fsynced). A crash
mid-save leaves a `.tmp` folder that the next start removes (`remove_stale_tmp`), never a half
checkpoint that looks whole. Re-saving a step moves the old copy aside and deletes it only once the
new one is in place. `keep_last=k` deletes all but the newest k checkpoints after a save.

Trust: DCP metadata and DeepSpeed checkpoints are read through pickle, so loading a checkpoint can
run code. Every file is checked against the manifest before any load, and a checkpoint whose
files differ (or that has no manifest) is refused with `CheckpointError`. Load checkpoints only
from a source you trust: the manifest catches corruption and tampering after the save, not a
manifest written by someone else. On a multi-node cluster the run directory must be on a
filesystem every node sees.
"""
from __future__ import annotations

import json
import logging
import os
import re
import shutil
from pathlib import Path

from orchestrator.model_prep import sha256_file as _sha256

STATE_FILE = "trainer_state.json"
MANIFEST = "manifest.json"
log = logging.getLogger("hyflow")


class CheckpointError(RuntimeError):
    """A checkpoint is missing, incomplete or does not match its manifest."""


def checkpoint_dir(run_dir: Path, step: int) -> Path:
    return Path(run_dir) / "checkpoints" / f"step_{step}"


def save_checkpoint(run_dir: Path, step: int, actor_group, trainer_state: dict, keep_last: int | None = None,
                    critic=None, extra: dict | None = None) -> Path:
    """Write checkpoint `step`. `extra`: {relative file name: bytes} written beside the state."""
    final = checkpoint_dir(run_dir, step)
    tmp = final.with_name(final.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    actor_group.save_hf(str(tmp / "hf"))
    actor_group.save(str(tmp / "actor"), True)
    if critic is not None:  # PPO: the value model too (sharded + an HF token-classification folder)
        critic.save(str(tmp / "critic"), True)
        critic.save_hf(str(tmp / "critic_hf"))
    for name, data in (extra or {}).items():
        (tmp / name).write_bytes(data)
    (tmp / STATE_FILE).write_text(json.dumps({"step": step, **trainer_state}, indent=1))
    write_manifest(tmp)
    _fsync_tree(tmp)
    aside = final.with_name(final.name + ".old")
    if final.exists():
        shutil.rmtree(aside, ignore_errors=True)
        final.rename(aside)
    tmp.rename(final)
    _fsync_dir(final.parent)
    shutil.rmtree(aside, ignore_errors=True)
    if keep_last:
        for old in list_checkpoints(run_dir)[:-keep_last]:
            shutil.rmtree(checkpoint_dir(run_dir, old), ignore_errors=True)
    return final


def list_checkpoints(run_dir: Path) -> list[int]:
    """Steps of the complete checkpoints (a state file and a manifest), oldest first."""
    root = Path(run_dir) / "checkpoints"
    if not root.exists():
        return []
    steps = [int(m.group(1)) for p in root.iterdir() if (m := re.fullmatch(r"step_(\d+)", p.name))
             and (p / STATE_FILE).exists() and (p / MANIFEST).exists()]
    return sorted(steps)


def remove_stale_tmp(run_dir: Path) -> list[str]:
    """Delete `step_N.tmp` folders a crashed save left; restore a `step_N.old` whose new copy never
    landed. Returns the names removed."""
    root = Path(run_dir) / "checkpoints"
    removed = []
    if not root.exists():
        return removed
    for p in sorted(root.iterdir()):
        if re.fullmatch(r"step_\d+\.tmp", p.name):
            shutil.rmtree(p, ignore_errors=True)
            removed.append(p.name)
        elif re.fullmatch(r"step_\d+\.old", p.name):
            final = p.with_name(p.name.removesuffix(".old"))
            if final.exists():
                shutil.rmtree(p, ignore_errors=True)
                removed.append(p.name)
            else:
                p.rename(final)
    if removed:
        log.warning("removed incomplete checkpoint folders from an interrupted save: %s", ", ".join(removed))
    return removed


def load_trainer_state(run_dir: Path, step: int) -> dict:
    """The trainer state of checkpoint `step`, after verifying the whole checkpoint."""
    d = checkpoint_dir(run_dir, step)
    verify_checkpoint(d)
    return json.loads((d / STATE_FILE).read_text())


# ------------------------------------------------------------------------------ manifest
def _files(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST)


def write_manifest(folder: Path) -> dict:
    files = {name: {"sha256": _sha256(folder / name), "bytes": (folder / name).stat().st_size}
             for name in _files(folder)}
    manifest = {"version": 1, "files": files}
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=1))
    return manifest


def verify_checkpoint(folder: Path) -> None:
    """Every file listed with its sha256, and no file that is not listed; else CheckpointError."""
    folder = Path(folder)
    if not folder.is_dir():
        raise CheckpointError(f"checkpoint {folder}: no such folder")
    mpath = folder / MANIFEST
    if not mpath.is_file():
        raise CheckpointError(f"checkpoint {folder}: no {MANIFEST}; refusing to load a checkpoint that "
                              f"cannot be verified (DCP / DeepSpeed loads go through pickle)")
    try:
        listed = json.loads(mpath.read_text())["files"]
    except (ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f"checkpoint {folder}: unreadable {MANIFEST}: {e}") from None
    present = set(_files(folder))
    extra = sorted(present - set(listed))
    missing = sorted(set(listed) - present)
    if extra or missing:
        raise CheckpointError(f"checkpoint {folder}: files differ from {MANIFEST}"
                              f"{f'; not listed: {extra[:5]}' if extra else ''}{f'; missing: {missing[:5]}' if missing else ''}")
    for name, entry in listed.items():
        if _sha256(folder / name) != entry["sha256"]:
            raise CheckpointError(f"checkpoint {folder}: {name} does not match its sha256 in {MANIFEST}")


# ------------------------------------------------------------------------------ fsync
def _fsync_tree(folder: Path) -> None:
    for p in folder.rglob("*"):
        if p.is_file():
            fd = os.open(p, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
    for d in [folder, *(p for p in folder.rglob("*") if p.is_dir())]:
        _fsync_dir(d)


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
