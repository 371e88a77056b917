"""WorkerGroup / ResourcePool on real Ray actors: dispatch modes, colocated roles, errors, placement."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from orchestrator.batch import Batch
from orchestrator.resources import REPO_ROOT, ResourcePool
from orchestrator.worker_group import (Dispatch, Execute, Pending, WorkerError, WorkerGroup,
                                       register, registered_methods)
from workers.base import Worker

pytestmark = pytest.mark.timeout(120)

# Module-level state shared by the role objects that live in one worker process.
SHARED: dict = {}


def row_fn(x: torch.Tensor) -> torch.Tensor:
    return x * x + 1


class EchoWorker(Worker):
    def __init__(self, tag: str = "none"):
        super().__init__()
        self.tag, self.bumps, self.seen = tag, 0, []

    @register()
    def whoami(self):
        env = {k: os.environ.get(k) for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR",
                                              "MASTER_PORT", "OMP_NUM_THREADS", "EXTRA")}
        return {"rank": self.rank, "world": self.world_size, "tag": self.tag, "env": env,
                "pythonpath": os.environ.get("PYTHONPATH", "").split(os.pathsep), "pid": os.getpid()}

    @register(execute=Execute.RANK_ZERO)
    def bump(self):
        self.bumps += 1
        return f"bumped on {self.rank}"

    @register()
    def bumps_seen(self):
        return self.bumps

    @register(dispatch=Dispatch.ALL_TO_ALL)
    def take(self, item, scale=1):
        return (self.rank, item * scale)

    @register(dispatch=Dispatch.DP_SPLIT)
    def square(self, batch: Batch, offset: int = 0):
        self.seen.append(batch["x"].tolist())
        out = Batch({"y": row_fn(batch["x"]) + offset},
                    {"dp_rank": [self.dp_rank] * len(batch), "id": batch["id"]})
        return out

    @register(dispatch=Dispatch.DP_SPLIT)
    def row_sums(self, batch: Batch):
        return batch["m"].sum(dim=1)

    @register(dispatch=Dispatch.DP_SPLIT)
    def twice(self, batch: Batch):
        return batch.repeat(2)

    @register()
    def last_seen(self):
        return self.seen[-1]

    @register()
    def fail(self, msg):
        if self.rank == 1:
            raise ValueError(msg)
        return "ok"

    @register()
    def nap(self, seconds):
        start = time.time()
        time.sleep(seconds)
        return (start, time.time())

    @register(blocking=False)
    def nap_async(self, seconds):
        return self.nap(seconds)

    def placement_group_id(self):
        import ray
        return ray.get_runtime_context().get_placement_group_id()

    def unregistered(self, a, b=0):
        return self.rank * 100 + a + b


class ActorRole(Worker):
    @register()
    def pid(self):
        return os.getpid()

    @register()
    def publish(self):
        SHARED["from_actor"] = f"actor rank {self.rank} pid {os.getpid()}"
        return True


class TPRole(Worker):
    """Model-parallel shape: every rank is in one dp group (sees the whole batch), rank 0 answers."""

    def __init__(self, scale: float):
        super().__init__()
        self.scale, self.seen = scale, None

    dp_rank = property(lambda self: 0)
    dp_size = property(lambda self: 1)
    is_output_rank = property(lambda self: self.rank == 0)

    @register()
    def pid(self):
        return os.getpid()

    @register()
    def read_shared(self):
        return SHARED.get("from_actor")

    @register(dispatch=Dispatch.DP_SPLIT)
    def scaled(self, batch: Batch):
        self.seen = len(batch)
        return batch["x"] * self.scale + self.rank  # rank-dependent: shows which rank was collected

    @register()
    def rows_seen(self):
        return self.seen


def make_batch(n: int) -> Batch:
    return Batch({"x": torch.arange(n, dtype=torch.float32) + 0.5},
                 {"id": [f"row{i}" for i in range(n)]})


@pytest.fixture(scope="module")
def group(ray_cluster):
    pool = ResourcePool(2, cpus_per_bundle=0.5, name="echo-pool")
    g = WorkerGroup(pool, EchoWorker, {"tag": "t1"}, name="echo", env={"EXTRA": "yes"})
    g.wait_ready(timeout_s=90)
    yield g
    g.shutdown()
    pool.shutdown()


# ----------------------------------------------------------------------------- dispatch modes
def test_one_to_all_env_and_unregistered(group):
    out = group.whoami()
    assert [o["rank"] for o in out] == [0, 1]
    assert [o["env"]["RANK"] for o in out] == ["0", "1"]
    assert all(o["world"] == 2 and o["tag"] == "t1" for o in out)
    port = out[0]["env"]["MASTER_PORT"]
    for o in out:
        assert o["env"]["LOCAL_RANK"] == o["env"]["RANK"]  # one node: local rank == rank
        assert o["env"]["MASTER_ADDR"] == "127.0.0.1" and o["env"]["MASTER_PORT"] == port
        assert o["env"]["OMP_NUM_THREADS"] == "1" and o["env"]["EXTRA"] == "yes"
        assert o["pythonpath"][0] == str(REPO_ROOT)
    assert 1024 <= int(port) < 65536
    assert out[0]["pid"] != out[1]["pid"]
    # One node: every worker is on loopback (its VLLM_HOST_IP set by the worker itself at start, no
    # HYFLOW_BIND_ADDR), and rank 0's rendezvous port is held by rank 0 (multi-node: test_multinode.py).
    where = group.where()
    assert [w["pid"] for w in where] == [o["pid"] for o in out] and len({w["node_id"] for w in where}) == 1
    assert all(w["VLLM_HOST_IP"] == "127.0.0.1" and w["HYFLOW_BIND_ADDR"] is None for w in where)
    assert all((w["MASTER_ADDR"], w["MASTER_PORT"]) == ("127.0.0.1", port) for w in where)
    import psutil
    held = [c.laddr for c in psutil.Process(out[0]["pid"]).net_connections(kind="tcp") if c.status == psutil.CONN_LISTEN]
    assert ("127.0.0.1", int(port)) in [(a.ip, a.port) for a in held]
    assert group.execute_all("unregistered", 3, b=4) == [7, 107]
    assert group.world_size == 2 and len(group.actors) == 2


def test_rank_zero_runs_only_on_rank_zero(group):
    before = group.bumps_seen()
    assert group.bump() == "bumped on 0"
    assert group.bump() == "bumped on 0"
    assert group.bumps_seen() == [before[0] + 2, before[1]] and before[1] == 0


def test_all_to_all_gives_item_i_to_rank_i(group):
    assert group.take(["a", "b"], scale=[2, 3]) == [(0, "aa"), (1, "bbb")]
    with pytest.raises(ValueError, match=r"echo\.take: ALL_TO_ALL argument 0 must be a list of 2 items.*of 3"):
        group.take(["a", "b", "c"], scale=[1, 1])


def test_dp_split_pads_splits_and_restores_order(group):
    batch = make_batch(5)
    out = group.square(batch, offset=10)
    assert isinstance(out, Batch) and len(out) == 5
    assert torch.equal(out["y"], row_fn(batch["x"]) + 10)
    assert list(out["id"]) == [f"row{i}" for i in range(5)]
    assert list(out["dp_rank"]) == [0, 0, 0, 1, 1]
    # 5 rows over 2 ranks: padded to 6 with a copy of row 0, 3 rows each.
    assert group.last_seen() == [[0.5, 1.5, 2.5], [3.5, 4.5, 0.5]]


def test_dp_split_tensor_output_and_multi_row_outputs(group):
    m = torch.arange(15, dtype=torch.float32).reshape(5, 3)
    assert torch.equal(group.row_sums(Batch({"m": m})), m.sum(dim=1))
    batch = make_batch(5)
    out = group.twice(batch)  # 2 output rows per input row: 2 * 1 padding rows dropped
    assert torch.equal(out["x"], batch.repeat(2)["x"])
    with pytest.raises(ValueError, match=r"echo\.square: DP_SPLIT Batch arguments differ in length \[3, 5\]"):
        group.square(make_batch(5), offset=make_batch(3))


def test_worker_exception_names_method_and_rank(group):
    with pytest.raises(WorkerError, match=r"echo\.fail failed on rank 1: ValueError: boom") as ei:
        group.fail("boom")
    assert isinstance(ei.value.cause, ValueError) and ei.value.rank == 1
    assert group.whoami()[1]["rank"] == 1  # the actor survived the exception


def test_call_timeout_names_method_and_ranks(group):
    group.call_timeout_s = 1.5  # the module's group, so no new actors are started for this
    try:
        t0 = time.monotonic()
        # No phases given to this group: every call is phase 'call', under ray.call_timeout_s
        # (per-phase deadlines: tests/test_deadlines.py).
        with pytest.raises(TimeoutError, match=r"^phase 'call': echo\.nap: ranks \[0, 1\] did not answer within "
                                               r"1\.5s \(ray\.call_timeout_s\)$"):
            group.nap(3)
        assert 1.4 < time.monotonic() - t0 < 2.9
    finally:
        group.call_timeout_s = 60
    assert group.bumps_seen()[1] == 0  # queued behind the nap, answered once it ended


class BrokenInit(Worker):
    def __init__(self, path: str):
        super().__init__()
        raise FileNotFoundError(f"no model at {path}")


def test_worker_init_failure_is_reported_by_rank(ray_cluster):
    pool = ResourcePool(1, cpus_per_bundle=0.25, name="broken-pool")
    g = WorkerGroup(pool, BrokenInit, {"path": "/nonexistent/model"}, name="broken")
    try:
        with pytest.raises(WorkerError, match=r"broken \(actor start-up\): rank 0 failed to start: RuntimeError: role 'main' \(BrokenInit\): FileNotFoundError: no model at /nonexistent/model$"):
            g.wait_ready(timeout_s=90)
    finally:
        g.shutdown()
        pool.shutdown()


def test_shut_down_group_refuses_calls(ray_cluster):
    pool = ResourcePool(1, cpus_per_bundle=0.25, name="short-pool")
    g = WorkerGroup(pool, EchoWorker, name="short")
    g.shutdown()
    pool.shutdown()
    with pytest.raises(RuntimeError, match="'short' is shut down"):
        g.whoami()


# ------------------------------------------------------------------------------ colocated roles
def test_colocated_roles_share_one_process(ray_cluster):
    pool = ResourcePool(2, cpus_per_bundle=0.5, name="roles-pool")
    g = WorkerGroup(pool, {"actor": (ActorRole, None), "tp": (TPRole, {"scale": 3.0})}, name="roles")
    try:
        actor_pids, tp_pids = g.role("actor").pid(), g.role("tp").pid()
        assert actor_pids == tp_pids and actor_pids[0] != actor_pids[1]
        assert g.role("actor").publish() == [True, True]
        assert g.role("tp").read_shared() == [f"actor rank {r} pid {actor_pids[r]}" for r in range(2)]
        # TP-shaped role: dp_size 1, so both ranks get all 5 rows; only rank 0's answer returns.
        batch = make_batch(5)
        assert torch.equal(g.role("tp").scaled(batch), batch["x"] * 3.0)
        assert g.role("tp").rows_seen() == [5, 5]
        assert not hasattr(g.role("actor"), "scaled")
        with pytest.raises(KeyError, match="no role 'critic'"):
            g.role("critic")
        with pytest.raises(ValueError, match=r"has roles \['actor', 'tp'\]"):
            g.execute_all("pid")
    finally:
        g.shutdown()
        pool.shutdown()


# ---------------------------------------------------------------------------------- placement
def test_colocated_and_split_placement_overlap_non_blocking(ray_cluster):
    """g1 + g2 share one pool's bundle (colocated placement), g3 has its own pool (split)."""
    shared, own = ResourcePool(1, cpus_per_bundle=0.5, name="shared"), ResourcePool(1, cpus_per_bundle=0.25, name="own")
    groups = [WorkerGroup(shared, EchoWorker, {"tag": "g1"}, name="g1", num_cpus_per_worker=0.25),
              WorkerGroup(shared, EchoWorker, {"tag": "g2"}, name="g2", num_cpus_per_worker=0.25),
              WorkerGroup(own, EchoWorker, {"tag": "g3"}, name="g3")]
    try:
        for g in groups:
            g.wait_ready(timeout_s=90)
        pending = [g.nap_async(1.0) for g in groups]
        assert all(isinstance(p, Pending) for p in pending)
        spans = [p.get()[0] for p in pending]
        assert max(s for s, _ in spans) < min(e for _, e in spans)  # the three naps overlapped
        assert pending[0].done() and pending[0].get() == [spans[0]]
        assert [_pg_of(g) for g in groups] == [[shared.pg.id.hex()]] * 2 + [[own.pg.id.hex()]]
        assert [g.whoami()[0]["tag"] for g in groups] == ["g1", "g2", "g3"]
        ports = {g.whoami()[0]["env"]["MASTER_PORT"] for g in groups}
        assert len(ports) == 3  # each group gets its own rendezvous port
    finally:
        for x in (*groups, shared, own):
            x.shutdown()


def _pg_of(g: WorkerGroup) -> list[str]:
    return g.execute_all("placement_group_id")


def test_pool_too_big_fails_fast_naming_resources(ray_cluster):
    t0 = time.monotonic()
    total = ray_cluster.cluster_resources()["CPU"]  # the machine's CPU count
    with pytest.raises(RuntimeError, match=rf"ResourcePool 'too-big'.*64\.0.*available \{{'CPU': .*total \{{'CPU': {total}"):
        ResourcePool(1, cpus_per_bundle=64, name="too-big", timeout_s=3)
    assert time.monotonic() - t0 < 8


# --------------------------------------------------------------------------------- no Ray needed
def test_register_validation():
    with pytest.raises(ValueError, match="RANK_ZERO needs dispatch=ONE_TO_ALL"):
        register(dispatch=Dispatch.DP_SPLIT, execute=Execute.RANK_ZERO)
    with pytest.raises(TypeError, match="dispatch must be a Dispatch"):
        register(dispatch="dp_split")
    specs = registered_methods(EchoWorker)
    assert specs["square"].dispatch is Dispatch.DP_SPLIT and specs["bump"].execute is Execute.RANK_ZERO
    assert specs["nap_async"].blocking is False and "unregistered" not in specs


def test_init_ray_starts_on_loopback_and_passes_env(tmp_path):
    """Fresh driver process (not this session's cluster): local start, loopback, worker env."""
    code = (
        "import os, ray\n"
        "from orchestrator.resources import init_ray\n"
        "r = init_ray(num_cpus=1, object_store_mb=100)\n"
        "assert init_ray() is r\n"
        "@ray.remote(num_cpus=0)\n"
        "def env():\n"
        "    return ray.util.get_node_ip_address(), os.environ['OMP_NUM_THREADS'], os.environ['PYTHONPATH']\n"
        "ip, omp, pp = ray.get(env.remote())\n"
        "print('RESULT', ray.get_runtime_context().gcs_address, ip, omp, pp.split(os.pathsep)[0])\n"
        "ray.shutdown()\n")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER")}
    env["PYTHONPATH"] = str(REPO_ROOT)
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=100)
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = [l for l in proc.stdout.splitlines() if l.startswith("RESULT")][0].split()
    assert line[1].startswith("127.0.0.1:") and line[2] == "127.0.0.1"
    assert line[3] == "1" and Path(line[4]) == REPO_ROOT
