"""Per-phase deadlines (issue #11.8): a hung worker fails its call within the deadline of the call's
phase (rollout, train, sync, validation; `ray.timeout_*_s`), with an error naming the phase and the
rank, on real Ray actors. The weight sync's own wait (rank 0 waiting for the engines to load a
bucket) gets the sync deadline; an engine whose load hangs is a real RolloutWorker that blocks in
`load_weights` while a flag file exists.
"""
from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch

from orchestrator.batch import Batch
from orchestrator.config import ConfigError, load_config
from orchestrator.placement import generate_phase
from orchestrator.resources import ResourcePool
from orchestrator.worker_group import (Dispatch, WorkerError, WorkerGroup, in_phase, phase_deadline,
                                       register)
from workers.actor import ActorWorker
from workers.base import Worker
from workers.rollout import RolloutWorker
from workers.weight_sync import PUSH_GRACE_S

pytestmark = pytest.mark.timeout(300)

TRAIN_S, VALIDATION_S, SYNC_S = 1.5, 2.5, 8.0
MARGIN_S = 1.5  # the driver notices a silent rank within this of its deadline (loaded 2-core machine)


class Sleeper(Worker):
    @register()
    def nap(self, seconds: float) -> int:
        time.sleep(seconds)
        return self.rank

    @register(dispatch=Dispatch.ALL_TO_ALL)
    def nap_each(self, seconds: float) -> int:
        time.sleep(seconds)
        return self.rank

    @register(dispatch=Dispatch.DP_SPLIT)
    def generate(self, batch: Batch) -> Batch:
        time.sleep(batch.meta["sleep"])
        return batch

    @register()
    def deadline_seen(self, phase: str) -> float | None:
        return phase_deadline(phase)


@pytest.fixture(scope="module")
def sleepers(ray_cluster):
    pool = ResourcePool(2, cpus_per_bundle=0.25, name="deadline-pool")
    g = WorkerGroup(pool, Sleeper, name="sleepers", call_timeout_s=60,
                    deadlines={"train": TRAIN_S, "validation": VALIDATION_S, "rollout": 60},
                    phases={"nap": "train", "nap_each": "train", "generate": generate_phase})
    g.wait_ready(timeout_s=90)
    yield g
    g.shutdown()
    pool.shutdown()


def timed_failure(exc, pattern: str, fn, *args) -> tuple[float, BaseException]:
    t0 = time.monotonic()
    with pytest.raises(exc, match=pattern) as ei:
        fn(*args)
    return time.monotonic() - t0, ei.value


def drain(group) -> None:
    """Wait (phase 'call', 60 s) until the hung calls before it have ended."""
    assert group.deadline_seen("train") == [TRAIN_S, TRAIN_S]


def test_hung_call_fails_within_its_phase_deadline(sleepers):
    took, _ = timed_failure(TimeoutError, r"^phase 'train': sleepers\.nap: ranks \[0, 1\] did not answer within 1\.5s "
                                          r"\(ray\.timeout_train_s\)$", sleepers.nap, 5)
    assert TRAIN_S - 0.1 < took < TRAIN_S + MARGIN_S
    drain(sleepers)
    # Only rank 1 hangs: only rank 1 is named.
    took, _ = timed_failure(TimeoutError, r"^phase 'train': sleepers\.nap_each: rank 1 did not answer within 1\.5s",
                            sleepers.nap_each, [0, 5])
    assert took < TRAIN_S + MARGIN_S
    drain(sleepers)
    assert sleepers.nap(0.1) == [0, 1]  # a call within its deadline answers


def test_in_phase_gives_calls_that_phase_deadline(sleepers):
    with in_phase("validation"):
        took, _ = timed_failure(TimeoutError, r"^phase 'validation': sleepers\.nap: ranks \[0, 1\] did not answer "
                                              r"within 2\.5s \(ray\.timeout_validation_s\)$", sleepers.nap, 6)
    assert VALIDATION_S - 0.1 < took < VALIDATION_S + MARGIN_S
    drain(sleepers)
    # A phase this group has no deadline for waits call_timeout_s, and says which key that is.
    sleepers.call_timeout_s = 1.0
    try:
        with in_phase("sync"):
            timed_failure(TimeoutError, r"^phase 'sync': sleepers\.nap: ranks \[0, 1\] did not answer within 1s "
                                        r"\(ray\.call_timeout_s\)$", sleepers.nap, 4)
    finally:
        sleepers.call_timeout_s = 60
    drain(sleepers)
    with pytest.raises(ValueError, match="in_phase: the phase must be a non-empty string"):
        with in_phase(""):
            pass


def test_greedy_generation_gets_the_validation_deadline(sleepers):
    def batch(**meta) -> Batch:
        return Batch({"x": torch.zeros(2)}, meta=meta)
    # Sampled generation: the rollout deadline (60 s) lets a 3 s call finish.
    assert len(sleepers.generate(batch(temperature=1.0, sleep=3.0))) == 2
    # Greedy generation (how the trainer validates): the validation deadline.
    took, _ = timed_failure(TimeoutError, r"^phase 'validation': sleepers\.generate: ranks \[0, 1\] did not answer "
                                          r"within 2\.5s", sleepers.generate, batch(temperature=0.0, sleep=5.0))
    assert took < VALIDATION_S + MARGIN_S
    drain(sleepers)
    # A batch that names its phase gets that one.
    timed_failure(TimeoutError, r"^phase 'train': sleepers\.generate: ranks \[0, 1\] did not answer within 1\.5s",
                  sleepers.generate, batch(temperature=1.0, sleep=4.0, phase="train"))
    drain(sleepers)


def test_workers_see_their_group_deadlines(sleepers):
    assert sleepers.deadline_seen("validation") == [VALIDATION_S] * 2
    assert sleepers.deadline_seen("sync") == [None, None]  # not given to this group
    assert sleepers.deadline("sync") == 60 and sleepers.deadline("train") == TRAIN_S
    with pytest.raises(ValueError, match=r"WorkerGroup 'bad': deadline of phase 'sync' must be > 0, got 0"):
        WorkerGroup(sleepers.pool, Sleeper, name="bad", deadlines={"sync": 0})


def test_deadline_keys_are_validated():
    cfg = load_config(None)
    assert (cfg.ray.timeout_rollout_s, cfg.ray.timeout_train_s, cfg.ray.timeout_sync_s,
            cfg.ray.timeout_validation_s, cfg.ray.call_timeout_s) == (1800, 1800, 600, 1800, 1800)
    with pytest.raises(ConfigError, match=r"^ray\.timeout_sync_s: must be > 0, got 0\.0$"):
        load_config(None, ["ray.timeout_sync_s=0"])


# ---- the weight sync --------------------------------------------------------------------------------
class HangingRollout(RolloutWorker):
    """A real rollout worker whose `load_weights` blocks while the flag file exists."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.flag: str | None = None

    @register()
    def hang_while(self, flag: str | None) -> None:
        self.flag = flag

    def load_weights(self, named_tensors):
        while self.flag and Path(self.flag).exists():
            time.sleep(0.05)
        return super().load_weights(named_tensors)


@pytest.fixture(scope="module")
def hung_sync(ray_cluster, tiny_model_dir, tmp_path_factory):
    from transformers import AutoTokenizer

    from workers.weight_sync import BucketedWeightSync, make_probe

    cfg = load_config(None, ["actor.world_size=1", "actor.micro_batch_size=4"])
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    pool = ResourcePool(1, cpus_per_bundle=1.0, name="deadline-sync")
    kw = dict(model_path=tiny_model_dir, actor_cfg=vars(cfg.actor))
    deadlines = {"sync": SYNC_S}
    trainer = WorkerGroup(pool, {"actor": (ActorWorker, kw)}, name="ws",
                          num_cpus_per_worker=0.4, call_timeout_s=240, deadlines=deadlines,
                          phases={"push_weights": "sync"})
    rollout = WorkerGroup(pool, HangingRollout, dict(model_path=tiny_model_dir, engine="vllm",
                                                     engine_kwargs=dict(max_model_len=128, kv_cache_gb=0.0625)),
                          name="ws-rollout", num_cpus_per_worker=0.4, call_timeout_s=240, deadlines=deadlines,
                          rendezvous=False)
    pending = rollout.submit("setup")
    trainer.role("actor").setup()
    pending.get()
    probe = make_probe(tok("Question: 12 + 7?\nAnswer:")["input_ids"], tok(" 19")["input_ids"], tok.pad_token_id or 0)
    sync = BucketedWeightSync(trainer.role("actor"), rollout, 1 << 20, probe)
    flag = tmp_path_factory.mktemp("hang") / "hang"
    yield sync, rollout, flag
    flag.unlink(missing_ok=True)
    for g in (rollout, trainer):
        g.shutdown()
    pool.shutdown()


def test_weight_sync_with_a_hung_engine_load_fails_naming_the_sync_phase(hung_sync):
    sync, rollout, flag = hung_sync
    assert sync.sync().verified  # the push works when nothing hangs
    flag.touch()
    rollout.hang_while(str(flag))
    # Rank 0's own wait for the engine (ActorWorker.push_weights -> weight_sync.push_buckets): the
    # error names the sync phase and the engine's rank, and arrives before the driver's wait for
    # the push (deadline + grace) runs out.
    took, err = timed_failure(WorkerError, r"^phase 'sync': ws\.actor\.push_weights failed on rank 0: TimeoutError: "
                                           r"phase 'sync': rollout rank 0 did not load weight bucket 1 within 8s",
                              sync.sync)
    assert isinstance(err.cause, TimeoutError)
    assert SYNC_S - 0.1 < took < SYNC_S + PUSH_GRACE_S
    print(f"\nhung engine load: the sync failed after {took:.1f}s: {err}")
    flag.unlink()
    rollout.hang_while(None)  # answers once the hung load has finished
