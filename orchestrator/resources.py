"""Ray start-up and resource pools (placement groups) for worker groups.

Placement: *split* = each role gets its own `ResourcePool`; *colocated* = several `WorkerGroup`s
share one pool (each asking a fraction of a bundle), or one group hosts several roles per actor.

Nodes: a pool is one placement group with one bundle per device (a GPU, or `cpus_per_bundle` CPUs
on a CPU cluster) and one worker rank per bundle. Its `strategy` decides how the bundles spread
over the nodes (Ray's placement strategies):
    PACK           as few nodes as possible, more where one is full (the default; config
                   `resources.strategy`)
    SPREAD         over as many nodes as possible, best effort
    STRICT_PACK    all on one node, or the pool is not created: for ranks that must share a node
                   (tensor-parallel engine ranks, NVLink / shared-memory groups)
    STRICT_SPREAD  one bundle per node, or the pool is not created
Addresses are never fixed here: each worker finds its own node's address when it starts, and rank
0 of a group publishes the rendezvous on its node (orchestrator/worker_group.py, workers/dist.py).
"""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from workers.quiet import PYTHON_WARNINGS

REPO_ROOT = Path(__file__).resolve().parents[1]

# Environment every worker process gets (see shared/reference/stack.md for why each one).
WORKER_ENV = {
    "OMP_NUM_THREADS": "1",                 # 1 thread per rank beats oversubscription
    "TORCH_COMPILE_DISABLE": "1",           # vLLM's first logprobs call would compile for 2-27 s
    "VLLM_ENABLE_V1_MULTIPROCESSING": "0",  # in-process engine: 2-3 s start instead of ~20 s
    # No VLLM_HOST_IP / MASTER_ADDR: every worker sets them for its own node when it starts
    # (loopback on a single node; orchestrator/worker_group.py).
    "HF_HUB_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
    "TRANSFORMERS_VERBOSITY": os.environ.get("TRANSFORMERS_VERBOSITY", "error"),
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    # Known-harmless library notices are dropped at their source (workers/quiet.py says why each).
    "VLLM_LOGGING_CONFIG_PATH": os.environ.get("VLLM_LOGGING_CONFIG_PATH", str(REPO_ROOT / "workers" / "vllm_logging.json")),
    "PYTHONWARNINGS": os.environ.get("PYTHONWARNINGS", PYTHON_WARNINGS),
}


def worker_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """WORKER_ENV + PYTHONPATH with the repo root first (so workers import the project) + extra."""
    paths = [str(REPO_ROOT)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    env = {**WORKER_ENV, "PYTHONPATH": os.pathsep.join(dict.fromkeys(paths))}
    env.update({k: str(v) for k, v in (extra or {}).items()})
    return env


def init_ray(address: str = "local", num_cpus: int | None = None, object_store_mb: int = 512,
             dashboard: bool = False, **kwargs: Any):
    """Start (address="local") or join ("auto", "ray://host:port", "ip:port") a Ray cluster.

    A local cluster listens on 127.0.0.1 only. If Ray is already initialized it is reused as-is.
    Returns the `ray` module.
    """
    # Ray reads this flag when it is first imported; set it before the import below.
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    import ray
    if ray.is_initialized():
        return ray
    runtime_env = {"env_vars": worker_env()}
    if address == "local":
        from ray._private import ray_constants
        # Ray may have been imported before the flag was set (then the driver would pick the
        # machine's external address): apply the same loopback-only choice explicitly.
        if os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] == "0":
            ray_constants.ENABLE_RAY_CLUSTER = False
        ray.init(address="local", num_cpus=num_cpus, object_store_memory=object_store_mb * 1024**2,
                 include_dashboard=dashboard, dashboard_host="127.0.0.1",
                 runtime_env=runtime_env, **kwargs)
    else:
        # Joining: the cluster's resources and object store were fixed when it started.
        ray.init(address=address, runtime_env=runtime_env, **kwargs)
    return ray


class ResourcePool:
    """`n_bundles` equal bundles reserved as one Ray placement group; one worker rank per bundle."""

    def __init__(self, n_bundles: int, cpus_per_bundle: float = 1.0, gpus_per_bundle: float = 0.0,
                 strategy: str = "PACK", name: str = "pool", timeout_s: float = 60):
        import ray
        from ray.util.placement_group import placement_group
        if n_bundles < 1:
            raise ValueError(f"ResourcePool {name!r}: n_bundles must be >= 1, got {n_bundles}")
        if cpus_per_bundle < 0 or gpus_per_bundle < 0 or cpus_per_bundle + gpus_per_bundle == 0:
            raise ValueError(f"ResourcePool {name!r}: cpus_per_bundle={cpus_per_bundle} and "
                             f"gpus_per_bundle={gpus_per_bundle} must be >= 0 and not both 0")
        if strategy not in ("PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"):
            raise ValueError(f"ResourcePool {name!r}: unknown strategy {strategy!r}")
        self.name = name
        self.n_bundles = n_bundles
        self.cpus_per_bundle = float(cpus_per_bundle)
        self.gpus_per_bundle = float(gpus_per_bundle)
        self.strategy = strategy
        bundle = {"CPU": self.cpus_per_bundle}
        if self.gpus_per_bundle:
            bundle["GPU"] = self.gpus_per_bundle
        self.bundles = [dict(bundle) for _ in range(n_bundles)]
        self._bundle_nodes: list[str] | None = None
        self.pg = placement_group(self.bundles, strategy=strategy, name=f"{name}-{time.time_ns()}")
        ready, _ = ray.wait([self.pg.ready()], timeout=timeout_s)
        if not ready:
            ray.util.remove_placement_group(self.pg)
            asked = {k: v * n_bundles for k, v in bundle.items()}
            raise RuntimeError(
                f"ResourcePool {name!r}: placement group of {n_bundles} x {bundle} (total {asked}, "
                f"strategy {strategy}) not ready after {timeout_s}s; cluster has available "
                f"{_rounded(ray.available_resources())} of total {_rounded(ray.cluster_resources())}")

    @property
    def world_size(self) -> int:
        return self.n_bundles

    @property
    def single_node(self) -> bool:
        """All bundles on one node: the pool's workers then talk over loopback only."""
        return len(set(self.bundle_nodes())) == 1

    def strategy_for(self, bundle_index: int):
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy
        if not 0 <= bundle_index < self.n_bundles:
            raise IndexError(f"ResourcePool {self.name!r}: bundle_index {bundle_index} not in [0, {self.n_bundles})")
        return PlacementGroupSchedulingStrategy(
            placement_group=self.pg, placement_group_bundle_index=bundle_index,
            placement_group_capture_child_tasks=True)

    def bundle_nodes(self) -> list[str]:
        """Node id of each bundle (to derive LOCAL_RANK); fixed once the pool is ready."""
        if self._bundle_nodes is None:
            from ray.util.placement_group import placement_group_table
            table = placement_group_table(self.pg)["bundles_to_node_id"]
            self._bundle_nodes = [table[i] for i in range(self.n_bundles)]
        return list(self._bundle_nodes)

    def layout(self) -> str:
        """Where the bundles went, one node per line: 'node 3343d4dd (10.0.0.1): bundles [0, 1]'."""
        import ray
        ips = {n["NodeID"]: n.get("NodeManagerAddress", "?") for n in ray.nodes()}
        by_node: dict[str, list[int]] = {}
        for i, node in enumerate(self.bundle_nodes()):
            by_node.setdefault(node, []).append(i)
        return "; ".join(f"node {node[:8]} ({ips.get(node, '?')}): bundles {b}" for node, b in by_node.items())

    def helper_slots(self, cpus_per_bundle: float) -> "HelperSlots":
        """A share of every bundle set aside for small helper actors (env actors, ...): they are
        scheduled inside this pool, so they never wait for CPUs the pool has already taken."""
        return HelperSlots(self, cpus_per_bundle)

    def shutdown(self) -> None:
        import ray
        if self.pg is not None:
            ray.util.remove_placement_group(self.pg)
            self.pg = None

    def __repr__(self) -> str:
        return (f"ResourcePool({self.name!r}, {self.n_bundles} x CPU {self.cpus_per_bundle}"
                f"{f' GPU {self.gpus_per_bundle}' if self.gpus_per_bundle else ''}, {self.strategy})")


class HelperSlots:
    """Scheduling options for helper actors inside a pool's reserved share.

        slots = pool.helper_slots(0.1)                  # 0.1 CPU of each bundle, not given to workers
        opts = slots.take(12)                           # 12 actors: [{num_cpus, scheduling_strategy}]
        ray.remote(MyEnv).options(**opts[0]).remote()

    The reserve of each bundle is split evenly among the actors placed on it (round-robin over the
    bundles). `take` hands out the reserve once: a second call gets only what is left, and asking
    for more than is left raises, naming what was asked and what is left.
    """

    MIN_CPUS = 1e-3  # Ray's resource granularity is 1e-4; keep well above it

    def __init__(self, pool: ResourcePool, cpus_per_bundle: float):
        if not 0 < cpus_per_bundle <= pool.cpus_per_bundle:
            raise ValueError(f"HelperSlots: cpus_per_bundle must be in (0, {pool.cpus_per_bundle}], got {cpus_per_bundle}")
        self.pool, self.cpus_per_bundle = pool, float(cpus_per_bundle)
        self.left = [self.cpus_per_bundle] * pool.n_bundles

    def take(self, n_actors: int) -> list[dict]:
        n = self.pool.n_bundles
        if n_actors < 1:
            raise ValueError(f"HelperSlots.take: n_actors must be >= 1, got {n_actors}")
        per_bundle = -(-n_actors // n)
        share = min(self.left) / per_bundle
        share = int(share * 1e4) / 1e4  # Ray rounds to 1e-4: round down so the sum fits
        if share < self.MIN_CPUS:
            raise RuntimeError(
                f"pool {self.pool.name!r}: {n_actors} helper actors do not fit in the {min(self.left):.4f} CPU "
                f"left of the reserved {self.cpus_per_bundle} CPU per bundle ({n} bundles); "
                f"lower the number of envs or raise the reserve")
        counts = [len(range(b, n_actors, n)) for b in range(n)]
        self.left = [left - c * share for left, c in zip(self.left, counts)]
        return [{"num_cpus": share, "scheduling_strategy": self.pool.strategy_for(i % n)} for i in range(n_actors)]


class SchedulingError(RuntimeError):
    """Ray cannot place an actor: the resources it asks for are not free anywhere in the cluster."""


def unplaced(actors: list) -> list[int]:
    """Indices of `actors` that Ray has not placed on any worker yet (state PENDING_CREATION with
    no process): waiting for resources, as opposed to placed and still running `__init__`."""
    from ray._private import state
    out = []
    for i, actor in enumerate(actors):
        info = state.actors(actor_id=actor._actor_id.hex()) or {}
        if info.get("State") in ("PENDING_CREATION", "DEPENDENCIES_UNREADY") and not info.get("Pid"):
            out.append(i)
    return out


def scheduling_error(label: str, n_waiting: int, asked: dict) -> SchedulingError:
    import ray
    return SchedulingError(
        f"{label}: {n_waiting} actor(s) could not be scheduled; each asks {asked}, the cluster has "
        f"available {_rounded(ray.available_resources())} of total {_rounded(ray.cluster_resources())}")


def await_actors(actors: list, ready_refs: list, label: str, asked: dict, timeout_s: float,
                 schedule_timeout_s: float = 60.0) -> None:
    """Wait until each actor's `ready_refs[i]` (a call queued behind its `__init__`) is done (its
    value or error is then read by the caller). Fails fast with a `SchedulingError` naming the resources asked and those the cluster has
    when an actor is still unplaced after `schedule_timeout_s`; a `TimeoutError` after `timeout_s`."""
    import ray
    t0 = time.monotonic()
    waiting = list(ready_refs)
    while waiting:
        elapsed = time.monotonic() - t0
        if elapsed >= timeout_s:
            return  # the caller's own wait names the silent ones
        _, waiting = ray.wait(waiting, num_returns=len(waiting), timeout=min(2.0, timeout_s - elapsed))
        if waiting and time.monotonic() - t0 >= schedule_timeout_s:
            index = {ref: i for i, ref in enumerate(ready_refs)}
            stuck = unplaced([actors[index[r]] for r in waiting])
            if stuck:
                raise scheduling_error(label, len(stuck), asked)


def _rounded(resources: dict[str, float]) -> dict[str, float]:
    """CPU/GPU only (Ray also lists node and placement-group bookkeeping resources)."""
    keep = ("CPU", "GPU")
    return {k: round(v, 2) for k, v in sorted(resources.items()) if k in keep}
