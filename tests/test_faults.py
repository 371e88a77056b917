"""Dead workers replaced without losing a step (orchestrator/recovery.py, trainer.max_restarts).

Real worker processes are SIGKILLed by pid in the middle of a phase, found by watching the run:
- the rollout engine while it generates step 2: after step 1's checkpoint appears, the engine's next
  work is step 2's generation; the kill waits until the engine's process is busy;
- one FSDP rank while it updates step 2: rollouts/step_2.jsonl is written right before the update;
  the kill waits until the rank's process is busy.
Each run completes with every step once in metrics.jsonl, and generates and trains exactly what an
uninterrupted run does (the settings of test_resume.py: flat-logit model, rewards that differ within
a group, so the update moves the weights).
"""
from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections import deque
from pathlib import Path

import pytest
import ray
import torch

from orchestrator.config import load_config
from orchestrator.metrics import MetricsLog, read_metrics
from orchestrator.recovery import worker_died
from orchestrator.resources import ResourcePool
from orchestrator.trainer import Trainer
from orchestrator.worker_group import Dispatch, WorkerError, WorkerGroup, register
from tests.test_recipes import assert_all_cpus_released, shrink
from tests.test_resume import flat_model_dir  # noqa: F401 - the fixture
from workers.base import Worker

REPO = Path(__file__).resolve().parents[1]
TICK = os.sysconf("SC_CLK_TCK")


def _cfg(model_dir: str, out: Path, tmp_path: Path, *extra: str):
    return load_config(str(REPO / "configs/grpo_math.yaml"), [
        f"model.path={model_dir}", "trainer.total_steps=2", "trainer.save_every=1", f"trainer.output_dir={out}",
        *shrink("grpo_math.yaml", tmp_path), "rollout.max_new_tokens=12", "actor.lr=1e-3",
        "reward.function=tests.test_resume:varied_reward", *extra])


def trainer_group(trainer: Trainer):
    return next(g for g in trainer.w.groups if g.name == "trainer")


def pids(group) -> list[int]:
    """The worker processes' pids, from Ray's actor table (no call to the actors: they may be busy)."""
    from ray._private import state
    return [int(state.actors(actor_id=a._actor_id.hex())["Pid"]) for a in group.actors]


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK  # utime + stime of the whole process


class Killer(threading.Thread):
    """For each stage (ready, pid, busy_s) in turn: once `ready()` is true, SIGKILLs the process
    `pid()` as soon as it burns `busy_s` of CPU within 0.1 s (the phase is running in it)."""

    def __init__(self, *stages):
        super().__init__(daemon=True)
        self.stages, self.killed_at = stages, []  # wall time of each kill
        self.stop = threading.Event()

    def run(self) -> None:
        for ready, pid_of, busy_s in self.stages:
            while not ready():
                if self.stop.wait(0.005):
                    return
            pid, seen = pid_of(), deque()
            while not self.stop.is_set():
                now, cpu = time.monotonic(), cpu_seconds(pid)
                seen.append((now, cpu))
                while now - seen[0][0] > 0.1:
                    seen.popleft()
                if cpu - seen[0][1] >= busy_s:
                    os.kill(pid, signal.SIGKILL)
                    self.killed_at.append(time.time())
                    break
                time.sleep(0.005)


def _fit(trainer: Trainer, killer: Killer) -> None:
    killer.start()
    try:
        trainer.fit()
    finally:
        killer.stop.set()
        killer.join()


def _rows(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def _responses(run: Path, step: int) -> list[str]:
    return [json.loads(line)["response"] for line in (run / f"rollouts/step_{step}.jsonl").read_text().splitlines()]


def _assert_same_run(run: Path, ref: Path) -> None:
    """Every step once; the same samples, rewards, losses and final weights as the uninterrupted run."""
    from safetensors.torch import load_file
    rows, ref_rows = _rows(run), _rows(ref)
    assert [r["step"] for r in rows] == [0, 1, 2]
    for r, q in zip(rows[1:], ref_rows[1:]):
        for key in ("reward/mean", "response_length/mean", "sync/verified"):
            assert r[key] == q[key], (r["step"], key)
        for key in ("actor/pg_loss", "actor/grad_norm", "actor/entropy"):
            assert r[key] == pytest.approx(q[key], rel=1e-5, abs=1e-7), (r["step"], key)
    for step in (1, 2):
        assert _responses(run, step) == _responses(ref, step), f"step {step} generated something else"
    w, wr = (load_file(str(x / "checkpoints/step_2/hf/model.safetensors")) for x in (run, ref))
    assert w.keys() == wr.keys() and all(torch.equal(w[k], wr[k]) for k in w), "final weights differ"


@pytest.fixture(scope="module")
def reference(ray_cluster, flat_model_dir, tmp_path_factory) -> Path:  # noqa: F811
    """The uninterrupted run: 2 steps, a checkpoint after each."""
    tmp = tmp_path_factory.mktemp("faults_ref")
    trainer = Trainer(_cfg(flat_model_dir, tmp / "run", tmp))
    try:
        trainer.fit()
    finally:
        trainer.shutdown()
    w1, w2 = ((tmp / f"run/checkpoints/step_{s}/hf/model.safetensors") for s in (1, 2))
    from safetensors.torch import load_file
    a, b = load_file(str(w1)), load_file(str(w2))
    assert any(not torch.equal(a[k], b[k]) for k in a)  # step 2 moves the weights: a stale engine would show
    return tmp / "run"


def test_dead_engine_is_replaced_and_the_generation_redone(ray_cluster, flat_model_dir, reference, tmp_path):  # noqa: F811
    run = tmp_path / "run"
    trainer = Trainer(_cfg(flat_model_dir, run, tmp_path))
    try:
        [engine] = pids(trainer.w.rollout)
        # After step 1's checkpoint the engine's next work is step 2's generation (its weights: step 1's).
        killer = Killer(((run / "checkpoints/step_1").is_dir, lambda: engine, 0.03))
        _fit(trainer, killer)
        assert len(killer.killed_at) == 1
        [event] = trainer.recovery.events
        assert event["kind"] == "rollout engine" and event["after_step"] == 1 and "rollout.generate" in event["error"], event
        assert trainer.w.weight_sync.rollout is trainer.w.rollout  # the sync feeds the new engine
        assert pids(trainer.w.rollout) != [engine] and not Path(f"/proc/{engine}").exists()
    finally:
        trainer.shutdown()
    _assert_same_run(run, reference)
    assert [r["fault/restarts"] for r in _rows(run)] == [0, 0, 1]
    assert_all_cpus_released(ray_cluster)


def test_dead_trainer_rank_resumes_from_the_newest_checkpoint(ray_cluster, flat_model_dir, reference, tmp_path):  # noqa: F811
    run = tmp_path / "run"
    trainer = Trainer(_cfg(flat_model_dir, run, tmp_path))
    try:
        old = pids(trainer_group(trainer))
        killer = Killer(
            # 1. rank 1 during step 2's update (rollouts/step_2.jsonl is written right before it)
            ((run / "rollouts/step_2.jsonl").exists, lambda: old[1], 0.03),
            # 2. the new rank 1 while it saves step 2, after step 2's metrics row was logged
            ((run / "checkpoints/step_2.tmp").is_dir, lambda: pids(trainer_group(trainer))[1], 0.0))
        _fit(trainer, killer)
        assert len(killer.killed_at) == 2
        update, save = trainer.recovery.events
        assert update["kind"] == "trainer" and update["after_step"] == 1 and "actor.update" in update["error"], update
        assert save["kind"] == "trainer" and save["after_step"] == 2 and "actor.save" in save["error"], save
        assert not set(pids(trainer_group(trainer))) & set(old)  # all trainer ranks are new processes
        assert trainer.w.weight_sync.rollout is trainer.w.rollout
    finally:
        trainer.shutdown()
    # resumed from step 1's checkpoint: step 1 was not redone
    assert (run / "rollouts/step_1.jsonl").stat().st_mtime < killer.killed_at[0]
    _assert_same_run(run, reference)  # step 2's row of the saved-then-lost attempt is gone
    assert [r["fault/restarts"] for r in _rows(run)] == [0, 0, 2]
    assert_all_cpus_released(ray_cluster)


def test_dead_rank_without_checkpoints_stops_naming_save_every(ray_cluster, flat_model_dir, tmp_path):  # noqa: F811
    run = tmp_path / "run"
    trainer = Trainer(_cfg(flat_model_dir, run, tmp_path, "trainer.save_every=0", "trainer.total_steps=1"))
    try:
        [_, rank1] = pids(trainer_group(trainer))
        killer = Killer(((run / "rollouts/step_1.jsonl").exists, lambda: rank1, 0.03))
        with pytest.raises(WorkerError) as info:
            _fit(trainer, killer)
    finally:
        trainer.shutdown()
    assert "trainer.save_every=0" in "\n".join(getattr(info.value, "__notes__", [])), info.value
    assert trainer.recovery.restarts == 0
    assert_all_cpus_released(ray_cluster)


def test_restarts_past_the_limit_stop_the_run(ray_cluster, flat_model_dir, tmp_path):  # noqa: F811
    run = tmp_path / "run"
    trainer = Trainer(_cfg(flat_model_dir, run, tmp_path, "trainer.max_restarts=0", "trainer.total_steps=1"))
    try:
        [engine] = pids(trainer.w.rollout)
        with pytest.raises(WorkerError) as info:  # the engine's first work after start-up: step 1's generation
            _fit(trainer, Killer((lambda: True, lambda: engine, 0.03)))
    finally:
        trainer.shutdown()
    assert isinstance(info.value.cause, ray.exceptions.RayActorError) and "rollout.generate" in str(info.value)
    assert "trainer.max_restarts=0" in "\n".join(getattr(info.value, "__notes__", []))
    assert_all_cpus_released(ray_cluster)


# ------------------------------------------------------------------ what counts as a death
class Faulty(Worker):
    @register(dispatch=Dispatch.ONE_TO_ALL)
    def fail(self, how: str) -> None:
        if how == "raise":
            raise ValueError("a bug in the worker")
        if self.rank == 1:  # how == "peer": rank 1's process dies a moment later ...
            time.sleep(0.5)
            os._exit(1)
        raise RuntimeError("connection closed by peer")  # ... rank 0 fails first, as in a collective


def test_a_raise_is_not_a_death_but_a_dead_peer_is(ray_cluster):
    pool = ResourcePool(2, cpus_per_bundle=0.25, name="faulty")
    try:
        group = WorkerGroup(pool, Faulty, name="faulty")
        with pytest.raises(WorkerError) as raised:
            group.fail("raise")
        assert not worker_died(raised.value, [group], grace_s=1.0)  # a worker-side exception stops the run
        with pytest.raises(WorkerError) as peer:
            group.fail("peer")
        assert isinstance(peer.value.cause, RuntimeError)  # rank 0's error came first ...
        assert worker_died(peer.value, [group])  # ... but rank 1 is dead: a death
        group.shutdown()
    finally:
        pool.shutdown()


def test_metrics_truncate_in_place(tmp_path):
    log = MetricsLog(tmp_path)
    for step in (0, 1, 2, 3):
        log.log({"step": step, "x": step})
    log.truncate(1)
    log.log({"step": 2, "x": 20})
    assert [r["x"] for r in read_metrics(tmp_path / "metrics.jsonl")] == [0, 1, 20] == [r["x"] for r in log.rows]


def test_dead_for_rank_stops_the_run_with_a_note(ray_cluster, tiny_model_dir, tmp_path):
    """FoR does not replace workers: a dead rank stops it, saying how to continue."""
    from orchestrator.for_trainer import ForTrainer
    cfg = load_config(str(REPO / "configs/for_blocksworld.yaml"), [
        f"model.path={tiny_model_dir}", f"trainer.output_dir={tmp_path / 'run'}", "trainer.total_steps=1",
        "for_.num_problems=2", "data.batch_size=2", "for_.n_samples=2", "for_.local_search_tries=2",
        "for_.val_problems=1", "for_.val_samples=2", "actor.micro_batch_size=16", "trainer.progress=false"])
    trainer = ForTrainer(cfg)
    try:
        rank1 = pids(trainer.group)[1]
        with pytest.raises(WorkerError) as info:  # the ranks' first work: scoring the step-0 validation
            _fit(trainer, Killer((lambda: True, lambda: rank1, 0.03)))
    finally:
        trainer.shutdown()
    assert "trainer.resume=true" in "\n".join(getattr(info.value, "__notes__", [])), info.value
    assert_all_cpus_released(ray_cluster)
