"""Dead workers replaced without losing a step (`trainer.max_restarts`, default 3).

    trainer.recovery.replace_engine(err)   # Trainer.generate: a dead rollout engine -> a new one, synced
    trainer.recovery.restore(err)          # Trainer._loop: a dead trainer rank -> all workers rebuilt,
                                           # the run back at its newest checkpoint

A worker *died* when its Ray actor process is gone: `WorkerError.cause` is a `RayActorError`
(ActorDiedError, ActorUnavailableError). A rank that raised only because a peer died under it (a
collective's "connection closed") counts too: the groups are checked for a dead actor before the
error is let through. A worker-side Python exception is not a death: it stops the run as before.

- Dead engine, during generation: the rollout group is shut down and built again on the same
  placement bundles, the weight sync is pointed at it and pushes the trainer's current weights
  (verified), and the generate call is redone. Requests are seeded from the step, so the step's
  samples are the ones the dead engine would have produced.
- Dead trainer rank (actor, reference and critic share processes; their process group is broken):
  every worker and the task (its env actors live in the placement group's reserve) are shut down
  and built again, and the run continues from its newest checkpoint (`Trainer.load`), or from step
  0 when `trainer.save_every` has not produced one yet. `metrics.jsonl` drops the rows logged after
  that step, so each step appears once. Needs `trainer.save_every > 0`. An engine found dead
  outside generation (sleep, weight sync) is handled this way too.
- Every restart is logged with its cause and counted (`fault/restarts` in every metrics row, since
  the process started). Past `trainer.max_restarts` the original error is raised with a note.
"""
from __future__ import annotations

import logging
import time
from contextlib import contextmanager

import ray

from orchestrator.checkpoint import list_checkpoints
from orchestrator.worker_group import WorkerError

log = logging.getLogger("hyflow")


def is_death(exc: BaseException | None) -> bool:
    """A Ray actor whose process is gone (not one that failed to start: that is its own error)."""
    return isinstance(exc, ray.exceptions.RayActorError) and not getattr(exc, "actor_init_failed", False)


def actor_dead(actor) -> bool:
    from ray._private import state
    info = state.actors(actor_id=actor._actor_id.hex()) or {}
    return info.get("State") == "DEAD"


def worker_died(err: BaseException, groups: list, grace_s: float = 5.0) -> bool:
    """Whether `err` (a failed worker call) comes from a dead worker of `groups`. A rank whose peer
    died in a collective raises a plain error, possibly before Ray has marked the peer dead: wait up
    to `grace_s` for a dead actor in the groups before calling it a worker-side exception."""
    if not isinstance(err, WorkerError):
        return False
    if is_death(err.cause):
        return True
    deadline = time.monotonic() + grace_s
    while True:
        if any(actor_dead(a) for g in groups for a in g.actors):
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.25)


@contextmanager
def note_dead_workers(groups: list, hint: str):
    """For a loop that does not replace workers (FoR): a dead worker's error gets `hint` as a note."""
    try:
        yield
    except WorkerError as e:
        if worker_died(e, groups):
            e.add_note(hint)
        raise


def one_line(err: BaseException, limit: int = 400) -> str:
    text = " ".join(str(err).split())
    return text if len(text) <= limit else text[:limit] + " ..."


class Recovery:
    def __init__(self, trainer):
        self.t = trainer
        self.limit = trainer.cfg.trainer.max_restarts
        self.restarts = 0
        self.events: list[dict] = []  # {"after_step", "kind", "error"} per restart

    def replace_engine(self, err: BaseException) -> None:
        """After `rollout.generate` failed: re-raises `err` unless an engine died; else a new rollout
        group on the same bundles, with the trainer's current weights (a verified sync)."""
        t = self.t
        if not worker_died(err, [t.w.rollout], grace_s=0):  # replicas share no collective
            raise err
        self._count(err, "rollout engine", "replacing the rollout engines and redoing the generation")
        w, old = t.w, t.w.rollout
        old.shutdown()
        from orchestrator.placement import rollout_group
        new = rollout_group(t.cfg, w.pool, t.model_path, t.tokenizer)
        new.setup()
        w.groups[w.groups.index(old)] = w.rollout = new
        w.weight_sync.rollout = new  # the sync pushes to, and verifies, the new engines
        w.weight_sync.sync()
        if t.cfg.rollout.dtype == t.cfg.model.dtype:
            w.weight_sync.check()  # absolute: the new engine serves exactly the trainer's weights

    def restore(self, err: BaseException) -> None:
        """After a step failed: re-raises `err` unless a worker died; else every worker and the task
        built again, and the run back at its newest checkpoint (step 0 before the first one)."""
        t = self.t
        if not worker_died(err, t.w.groups):
            raise err
        if not t.cfg.trainer.save_every:
            err.add_note("trainer.save_every=0: this run keeps no checkpoint to resume from, so a dead trainer "
                         "worker cannot be replaced; set trainer.save_every > 0 to survive one")
            raise err
        steps = list_checkpoints(t.run_dir)
        self._count(err, "trainer", f"rebuilding the workers, resuming from "
                                    f"{f'checkpoint step {steps[-1]}' if steps else 'step 0 (no checkpoint yet)'}")
        t.task.close()
        t.w.shutdown()
        t.build()  # the step-0 state: workers, task, KL controller
        t.global_step = 0
        if steps:
            t.load(steps[-1])
        t.metrics.truncate(t.global_step)  # the rows of the lost steps go; the redone steps log them again

    def _count(self, err: BaseException, kind: str, action: str) -> None:
        if self.restarts >= self.limit:
            err.add_note(f"trainer.max_restarts={self.limit}: the limit of worker restarts was hit "
                         f"({self.restarts} done), so this {kind} death stops the run")
            raise err
        self.restarts += 1
        step = self.t.global_step
        self.events.append({"after_step": step, "kind": kind, "error": one_line(err)})
        log.warning("worker restart %d of at most %d, after step %d: a %s worker died (%s); %s", self.restarts,
                    self.limit, step, kind, one_line(err), action)
