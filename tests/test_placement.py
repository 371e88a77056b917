"""Placement on Ray's default resources for this machine: helper actors (env actors) run in a share
reserved inside the trainer's placement group, so they are scheduled even when the trainer's bundles
take every CPU; an actor that cannot be scheduled fails fast, naming what it asked and what the
cluster has. (The session cluster has the machine's own CPU count, as `hyflow train` does.)"""
from __future__ import annotations

import time

import pytest
import ray

from envs.manager import EnvManager
from orchestrator.resources import ResourcePool, SchedulingError
from orchestrator.tasks import empty_batch_reason, samples_to_batch
from orchestrator.worker_group import WorkerGroup

ENV = "tests.agent_envs:CounterEnv"


class Idle:
    def ping(self) -> int:
        return 1


def _all_cpus_pool(ray_cluster, name: str) -> ResourcePool:
    """A pool whose bundles hold every CPU of the cluster (as 2 ranks x 1 CPU on 2 cores)."""
    total = int(ray_cluster.cluster_resources()["CPU"])
    return ResourcePool(total, cpus_per_bundle=1.0, name=name)


def test_envs_fit_in_the_reserve_when_the_pool_takes_every_cpu(ray_cluster):
    pool = _all_cpus_pool(ray_cluster, "full")
    try:
        assert ray_cluster.available_resources().get("CPU", 0) == 0  # nothing left outside the pool
        workers = WorkerGroup(pool, Idle, {}, name="workers", num_cpus_per_worker=0.9)
        workers.wait_ready(timeout_s=120)
        slots = pool.helper_slots(0.1)
        opts = slots.take(12)
        # 12 actors over the bundles, round-robin; the shares add up to at most the reserve.
        per_bundle = -(-12 // pool.n_bundles)
        assert all(o["num_cpus"] == pytest.approx(int(0.1 / per_bundle * 1e4) / 1e4) for o in opts)
        assert [o["scheduling_strategy"].placement_group_bundle_index for o in opts[:3]] == \
               [i % pool.n_bundles for i in range(3)]
        with pytest.raises(RuntimeError, match=r"helper actors do not fit in the 0\.0\d* CPU left"):
            slots.take(10_000)  # the reserve was handed out once
        t0 = time.monotonic()
        envs = EnvManager(ENV, {}, n_groups=3, group_size=4, actor_options=opts)
        first = envs.reset(seeds=[1, 2, 3])
        assert len(first) == 12 and not any(r.info.get("env_error") for r in first)
        assert time.monotonic() - t0 < 60
        envs.close()
        workers.shutdown()
    finally:
        pool.shutdown()


def test_env_actor_that_cannot_be_scheduled_fails_fast(ray_cluster):
    pool = _all_cpus_pool(ray_cluster, "hog")
    try:
        t0 = time.monotonic()
        with pytest.raises(SchedulingError) as err:
            EnvManager(ENV, {}, n_groups=1, group_size=2, num_cpus=0.1, schedule_timeout_s=3)
        assert time.monotonic() - t0 < 30
        msg = str(err.value)
        assert "2 actor(s) could not be scheduled" in msg and "each asks {'CPU': 0.1}" in msg
        assert "available {}" in msg or "available {'CPU': 0.0}" in msg
        assert f"of total {{'CPU': {float(ray_cluster.cluster_resources()['CPU'])}}}" in msg
    finally:
        pool.shutdown()


def test_worker_that_cannot_be_scheduled_names_the_bundle(ray_cluster):
    pool = ResourcePool(1, cpus_per_bundle=0.5, name="small")
    try:
        group = WorkerGroup(pool, Idle, {}, name="too-big", num_cpus_per_worker=0.5)
        crowd = WorkerGroup(pool, Idle, {}, name="crowd", num_cpus_per_worker=0.5)  # the bundle is full
        group.wait_ready(timeout_s=60)
        with pytest.raises(SchedulingError, match=r"WorkerGroup 'crowd': 1 actor\(s\) could not be scheduled; "
                                                  r"each asks \{'CPU': 0\.5, 'inside': \"a bundle \{'CPU': 0\.5\} of "
                                                  r"pool 'small'\"\}"):
            _layouts_fast(crowd)
    finally:
        pool.shutdown()


def _layouts_fast(group):
    from orchestrator.resources import await_actors
    await_actors(group._actors, group._layout_refs, f"WorkerGroup {group.name!r}", group._asked, 300,
                 schedule_timeout_s=3)


def test_empty_agent_batch_says_why():
    class Envs:
        env_name, step_timeout_s = "webshop", 60.0
    episodes = [{"error": "reset timed out after 60s"}, {"error": "reset timed out after 60s"}]
    msg = empty_batch_reason(episodes, Envs())
    assert msg.startswith("the agent rollout produced no step samples: 2 of 2 env resets failed "
                          "(first: reset timed out after 60s)")
    assert "env.step_timeout_s=60" in msg
    with pytest.raises(ValueError, match="no step samples"):
        samples_to_batch([], episodes, 0, 0)
