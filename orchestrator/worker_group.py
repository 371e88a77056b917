"""Single-controller worker groups: one Ray actor per pool bundle, methods called on all ranks.

A worker class marks its methods with `@register(dispatch, execute, blocking)`. The group turns each
one into a driver-side method that (1) dispatches the arguments to ranks, (2) runs the method on
the chosen ranks, (3) collects the answers:

    Dispatch.ONE_TO_ALL  same args to every rank              -> [output of rank 0, 1, ...]
    Dispatch.DP_SPLIT    every Batch arg padded + split into dp_size chunks (chunk i to the
                         ranks with dp_rank i)                -> outputs of the output ranks,
                         Batches/tensors concatenated in dp-rank order, padding removed
    Dispatch.ALL_TO_ALL  each arg a list of world_size items, item i to rank i -> [outputs]
    Execute.RANK_ZERO    only rank 0 runs (ONE_TO_ALL args)   -> rank 0's output

Colocated roles: `WorkerGroup(pool, {"actor": (ActorCls, kw), "ref": (RefCls, kw)})` builds ONE
actor per bundle holding an instance of each role class (same process: shared memory and process
group); call them as `group.role("actor").compute_logprobs(batch)`.

Nodes and rendezvous: every worker sets VLLM_HOST_IP to its own node's address when it starts
(loopback when the pool is on one node; `workers.dist.host_address`). Rank 0 reserves the
rendezvous (its node's address and a port it keeps open) and every rank finds it in MASTER_ADDR /
MASTER_PORT before its first method runs, so `init_distributed()` joins across nodes
(`rendezvous=False` for groups that never form a process group, e.g. independent engine replicas).

Phases and deadlines: each call belongs to a phase (`phases`: method -> phase name, or a function
of the call's args; `in_phase(name)` around calls overrides it, e.g. the weight sync's probes) and
waits at most that phase's deadline (`deadlines`: phase -> seconds; other phases and methods
without one wait `call_timeout_s`). A silent rank fails the call with a `TimeoutError` naming the
phase, the method and the ranks, e.g. "phase 'sync': rollout.weight_report: rank 0 did not answer
within 600s (ray.timeout_sync_s)". Workers find their deadlines with `phase_deadline(phase)`.
"""
from __future__ import annotations

import contextlib
import contextvars
import enum
import os
import time
from dataclasses import dataclass
from typing import Any, Callable

import ray
import torch

from orchestrator.batch import Batch
from orchestrator.resources import ResourcePool, await_actors, worker_env

SINGLE_ROLE = "main"
_SPEC_ATTR = "__hyflow_register__"

# ---- phases and deadlines -------------------------------------------------------------------------
DEFAULT_PHASE = "call"  # a call outside the phases a group was given: ray.call_timeout_s
# The config key that sets each phase's deadline (named in timeout errors).
DEADLINE_KEYS = {"rollout": "ray.timeout_rollout_s", "train": "ray.timeout_train_s", "sync": "ray.timeout_sync_s",
                 "validation": "ray.timeout_validation_s", DEFAULT_PHASE: "ray.call_timeout_s"}
_phase: contextvars.ContextVar[str | None] = contextvars.ContextVar("hyflow_phase", default=None)


@contextlib.contextmanager
def in_phase(name: str):
    """Every group call made inside the block (on any group) counts toward phase `name`: its
    deadline and its name in errors, whatever the method (e.g. the weight sync's probe log-probs
    are a 'sync' call of the trainer's `compute_logprobs`, otherwise a 'train' one)."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"in_phase: the phase must be a non-empty string, got {name!r}")
    token = _phase.set(name)
    try:
        yield
    finally:
        _phase.reset(token)


def _deadline_var(phase: str) -> str:
    return f"HYFLOW_DEADLINE_{phase.upper()}_S"


def phase_deadline(phase: str, default: float | None = None) -> float | None:
    """Worker side: the deadline in seconds of `phase` that the worker's group was given (its
    environment), else `default`. For waits inside a worker, e.g. rank 0 waiting for the engines
    to load a weight bucket during 'sync'."""
    raw = os.environ.get(_deadline_var(phase))
    return float(raw) if raw else default


def _ranks_text(ranks: list[int]) -> str:
    return f"rank {ranks[0]}" if len(ranks) == 1 else f"ranks {ranks}"


class Dispatch(enum.Enum):
    ONE_TO_ALL = "one_to_all"
    DP_SPLIT = "dp_split"
    ALL_TO_ALL = "all_to_all"


class Execute(enum.Enum):
    ALL = "all"
    RANK_ZERO = "rank_zero"


@dataclass(frozen=True)
class MethodSpec:
    dispatch: Dispatch = Dispatch.ONE_TO_ALL
    execute: Execute = Execute.ALL
    blocking: bool = True


def register(dispatch: Dispatch = Dispatch.ONE_TO_ALL, execute: Execute = Execute.ALL,
             blocking: bool = True) -> Callable:
    """Mark a worker method as callable from the group (the spec is stored on the function)."""
    if not isinstance(dispatch, Dispatch):
        raise TypeError(f"register: dispatch must be a Dispatch, got {dispatch!r}")
    if not isinstance(execute, Execute):
        raise TypeError(f"register: execute must be an Execute, got {execute!r}")
    if execute is Execute.RANK_ZERO and dispatch is not Dispatch.ONE_TO_ALL:
        raise ValueError(f"register: execute=RANK_ZERO needs dispatch=ONE_TO_ALL, got {dispatch}")

    def mark(fn: Callable) -> Callable:
        setattr(fn, _SPEC_ATTR, MethodSpec(dispatch, execute, bool(blocking)))
        return fn
    return mark


def registered_methods(cls: type) -> dict[str, MethodSpec]:
    """name -> spec of every @register'ed method of cls, inherited ones included."""
    out = {}
    for name in dir(cls):
        spec = getattr(getattr(cls, name, None), _SPEC_ATTR, None)
        if isinstance(spec, MethodSpec):
            out[name] = spec
    return out


class WorkerError(RuntimeError):
    """A worker method raised (or its actor died); `.cause` is the worker-side exception."""

    def __init__(self, message: str, rank: int, cause: BaseException | None):
        super().__init__(message)
        self.rank = rank
        self.cause = cause


@ray.remote
class _WorkerHost:
    """The Ray actor of one rank: builds each role object and runs its methods on request."""

    def __init__(self, roles: dict[str, tuple[type, dict]], single_node: bool = True):
        from workers.dist import host_address
        # This node's address (loopback on a single node), before any role imports vLLM.
        self.addr = host_address(single_node)
        os.environ["VLLM_HOST_IP"] = self.addr
        if not single_node:
            os.environ["HYFLOW_BIND_ADDR"] = self.addr  # every listener of this process, gloo's too
        self._rendezvous: tuple[str, int] | None = None
        self.roles = {}
        for name, (cls, kwargs) in roles.items():
            try:
                self.roles[name] = cls(**kwargs)
            except Exception as e:  # name the role: several may share this process
                raise RuntimeError(f"role {name!r} ({cls.__name__}): {type(e).__name__}: {e}") from e

    def layout(self) -> dict[str, tuple[int, int, bool]]:
        """role -> (dp_rank, dp_size, is_output_rank), defaulting to plain data parallelism."""
        rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
        return {name: (int(getattr(obj, "dp_rank", rank)), int(getattr(obj, "dp_size", world)),
                       bool(getattr(obj, "is_output_rank", True)))
                for name, obj in self.roles.items()}

    def reserve_rendezvous(self) -> tuple[str, int]:
        """Rank 0: (this node's address, a port held open on it) for the group's process group."""
        from workers.dist import reserve_rendezvous
        return reserve_rendezvous(self.addr)

    def _join(self, rendezvous: tuple[str, int] | None) -> None:
        if rendezvous is not None and self._rendezvous != tuple(rendezvous):
            self._rendezvous = tuple(rendezvous)
            os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = rendezvous[0], str(rendezvous[1])

    def where(self, rendezvous: tuple[str, int] | None = None) -> dict:
        """Where this rank runs and the addresses it uses."""
        self._join(rendezvous)
        env = {k: os.environ.get(k) for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT",
                                              "VLLM_HOST_IP", "HYFLOW_BIND_ADDR")}
        return {"node_id": ray.get_runtime_context().get_node_id(), "node_ip": ray.util.get_node_ip_address(),
                "pid": os.getpid(), **env}

    def call(self, role: str, method: str, args: list, kwargs: dict,
             rendezvous: tuple[str, int] | None = None) -> Any:
        # `rendezvous` is rank 0's reservation (a top-level ref: Ray resolves it before the call
        # runs), published as MASTER_ADDR / MASTER_PORT before the first method.
        self._join(rendezvous)
        # Batches travel as object refs nested in args (put once per chunk on the driver);
        # Ray does not resolve nested refs, so fetch them here.
        args = [ray.get(a) if isinstance(a, ray.ObjectRef) else a for a in args]
        kwargs = {k: ray.get(v) if isinstance(v, ray.ObjectRef) else v for k, v in kwargs.items()}
        return getattr(self.roles[role], method)(*args, **kwargs)


def _put(value: Any) -> Any:
    return ray.put(value) if isinstance(value, (Batch, torch.Tensor)) else value


def _gather(label: str, ranks: list[int], refs: list, timeout_s: float, phase: str | None = None,
            key: str | None = None) -> list:
    """Values of refs (one per rank); fails fast on the first worker error, names silent ranks
    (and the phase and the config key of its deadline, when given)."""
    if phase is not None:
        label = f"phase {phase!r}: {label}"
    index = {ref: i for i, ref in enumerate(refs)}
    values: list = [None] * len(refs)
    waiting = list(refs)
    deadline = time.monotonic() + timeout_s
    while waiting and (left := deadline - time.monotonic()) > 0:
        ready, waiting = ray.wait(waiting, num_returns=1, timeout=left)
        for ref in ready:
            i = index[ref]
            try:
                values[i] = ray.get(ref)
            except ray.exceptions.RayTaskError as e:
                cause = e.cause
                raise WorkerError(f"{label} failed on rank {ranks[i]}: {type(cause).__name__}: {cause}",
                                  ranks[i], cause) from e
            except ray.exceptions.RayActorError as e:
                if getattr(e, "actor_init_failed", False):
                    # The message is the remote traceback; its last line is the exception itself.
                    last = str(e).strip().splitlines()[-1]
                    raise WorkerError(f"{label}: rank {ranks[i]} failed to start: {last}", ranks[i], e) from e
                raise WorkerError(f"{label}: rank {ranks[i]} died: {e}", ranks[i], e) from e
            except ray.exceptions.RayError as e:  # object lost, ...
                raise WorkerError(f"{label}: rank {ranks[i]} failed: {type(e).__name__}: {e}",
                                  ranks[i], e) from e
    if waiting:
        silent = sorted(ranks[index[r]] for r in waiting)
        raise TimeoutError(f"{label}: {_ranks_text(silent)} did not answer within {timeout_s:g}s"
                           f"{f' ({key})' if key else ''}")
    return values


class Pending:
    """A call in flight; `.get()` waits for every rank (at most its phase's deadline, counted
    from `.get()`) and returns the collected value."""

    def __init__(self, label: str, ranks: list[int], refs: list, collect: Callable[[list], Any],
                 timeout_s: float, phase: str | None = None, key: str | None = None):
        self.label, self.ranks, self.refs = label, ranks, refs
        self._collect, self._timeout_s = collect, timeout_s
        self.phase, self._key = phase, key
        self._done, self._value = False, None

    @property
    def timeout_s(self) -> float:
        """The deadline `.get()` applies by default."""
        return self._timeout_s

    def done(self) -> bool:
        ready, _ = ray.wait(self.refs, num_returns=len(self.refs), timeout=0)
        return len(ready) == len(self.refs)

    def get(self, timeout_s: float | None = None) -> Any:
        if not self._done:
            t = self._timeout_s if timeout_s is None else timeout_s
            self._value = self._collect(_gather(self.label, self.ranks, self.refs, t, self.phase, self._key))
            self._done = True
        return self._value

    def __repr__(self) -> str:
        return f"Pending({self.label}, ranks={self.ranks})"


def _concat_dp(label: str, outputs: list, n_padded: int, pad: int) -> Any:
    """Batches / tensors joined in dp order minus the padding rows; anything else as a list.

    A rank may answer k rows per input row (e.g. k samples per prompt): k * pad rows are dropped.
    """
    if all(isinstance(o, Batch) for o in outputs):
        out = Batch.concat(outputs)
    elif all(isinstance(o, torch.Tensor) and o.dim() > 0 for o in outputs):
        out = torch.cat(outputs)
    else:
        return outputs
    n = len(out)
    if pad == 0:
        return out
    if n % n_padded:
        raise ValueError(f"{label}: {n} output rows do not map onto {n_padded} padded input rows; "
                         f"cannot remove the {pad} padding rows")
    keep = n - pad * (n // n_padded)
    return out.select(slice(0, keep)) if isinstance(out, Batch) else out[:keep]


class RoleView:
    """The registered methods of one role of a group, as driver-side methods."""

    def __init__(self, group: "WorkerGroup", role: str):
        self._group, self._role = group, role
        for name, spec in group._specs[role].items():
            setattr(self, name, self._bind(name, spec))

    def _bind(self, name: str, spec: MethodSpec) -> Callable:
        def method(*args, **kwargs):
            return self._group._invoke(self._role, name, spec, args, kwargs)
        method.__name__ = name
        return method

    def execute_all(self, method_name: str, *args, **kwargs) -> list:
        """Call any method (registered or not) on every rank with the same args; list of outputs."""
        return self._group._invoke(self._role, method_name, MethodSpec(), args, kwargs)

    def submit(self, method_name: str, *args, **kwargs) -> "Pending":
        """A registered method without waiting: its dispatch and collect, returned as a Pending."""
        spec = self._group._specs[self._role][method_name]
        return self._group._invoke(self._role, method_name, MethodSpec(spec.dispatch, spec.execute, False), args, kwargs)


class WorkerGroup:
    """One `_WorkerHost` actor per bundle of `pool`, hosting one or several role objects."""

    def __init__(self, pool: ResourcePool, worker_cls: type | dict[str, tuple[type, dict | None]],
                 init_kwargs: dict | None = None, name: str = "workers",
                 num_cpus_per_worker: float | None = None, num_gpus_per_worker: float | None = None,
                 env: dict[str, str] | None = None, call_timeout_s: float = 1800,
                 max_concurrency: int = 1, bundle_indices: list[int] | None = None,
                 deadlines: dict[str, float] | None = None,
                 phases: dict[str, str | Callable[[tuple, dict], str]] | None = None,
                 rendezvous: bool = True):
        if isinstance(worker_cls, dict):
            if init_kwargs is not None:
                raise ValueError(f"WorkerGroup {name!r}: with several roles, give each role's kwargs "
                                 f"in the dict, not init_kwargs")
            roles = {}
            for role, entry in worker_cls.items():
                if not (isinstance(entry, tuple) and len(entry) == 2 and isinstance(entry[0], type)):
                    raise TypeError(f"WorkerGroup {name!r}: role {role!r} must be (class, kwargs), got {entry!r}")
                roles[role] = (entry[0], dict(entry[1] or {}))
            if not roles:
                raise ValueError(f"WorkerGroup {name!r}: no roles given")
        elif isinstance(worker_cls, type):
            roles = {SINGLE_ROLE: (worker_cls, dict(init_kwargs or {}))}
        else:
            raise TypeError(f"WorkerGroup {name!r}: worker_cls must be a class or a role dict, got {worker_cls!r}")
        self.name, self.pool, self.call_timeout_s = name, pool, call_timeout_s
        self.deadlines = {str(k): float(v) for k, v in (deadlines or {}).items()}
        for phase, seconds in self.deadlines.items():
            if not seconds > 0:
                raise ValueError(f"WorkerGroup {name!r}: deadline of phase {phase!r} must be > 0, got {seconds}")
        self.phases = dict(phases or {})
        self._specs = {role: registered_methods(cls) for role, (cls, _) in roles.items()}
        self._single = len(roles) == 1 and SINGLE_ROLE in roles

        num_cpus = pool.cpus_per_bundle if num_cpus_per_worker is None else num_cpus_per_worker
        num_gpus = pool.gpus_per_bundle if num_gpus_per_worker is None else num_gpus_per_worker
        # One rank per bundle of the pool, or per chosen bundle (e.g. rollout replicas on the
        # first bundles of the trainer's pool).
        bundles = list(range(pool.world_size)) if bundle_indices is None else list(bundle_indices)
        if not bundles or any(not 0 <= b < pool.world_size for b in bundles):
            raise ValueError(f"WorkerGroup {name!r}: bundle_indices {bundle_indices} not within the "
                             f"pool's {pool.world_size} bundles")
        nodes = [pool.bundle_nodes()[b] for b in bundles]
        single_node = pool.single_node
        deadline_env = {_deadline_var(p): s for p, s in self.deadlines.items()}
        self._actors = []
        self._asked = {"CPU": num_cpus, **({"GPU": num_gpus} if num_gpus else {}),
                       "inside": f"a bundle {pool.bundles[0]} of pool {pool.name!r}"}
        for rank, bundle in enumerate(bundles):
            local_rank = nodes[:rank].count(nodes[rank])  # rank among the bundles on its node
            env_vars = worker_env({**(env or {}), **deadline_env, "RANK": rank, "WORLD_SIZE": len(bundles),
                                   "LOCAL_RANK": local_rank})
            self._actors.append(_WorkerHost.options(
                num_cpus=num_cpus, num_gpus=num_gpus, max_concurrency=max_concurrency,
                scheduling_strategy=pool.strategy_for(bundle), runtime_env={"env_vars": env_vars},
            ).remote(roles, single_node))
        # Rank 0 publishes (its node's address, a port it holds); every call carries the ref, so
        # each rank has MASTER_ADDR / MASTER_PORT before its first method. Non-blocking.
        self._rendezvous = self._actors[0].reserve_rendezvous.remote() if rendezvous else None
        # Asked now, read on first need: construction stays non-blocking, so several groups start
        # their (slow-importing) actors in parallel.
        self._layout_refs = [a.layout.remote() for a in self._actors]
        self._layouts: list[dict] | None = None
        self._views = {role: RoleView(self, role) for role in roles}
        if self._single:
            for method_name in self._specs[SINGLE_ROLE]:
                if hasattr(WorkerGroup, method_name):
                    raise ValueError(f"WorkerGroup {name!r}: worker method {method_name!r} clashes "
                                     f"with a WorkerGroup attribute; rename it")
                setattr(self, method_name, getattr(self._views[SINGLE_ROLE], method_name))

    # ------------------------------------------------------------------ public
    @property
    def actors(self) -> list:
        return list(self._actors)

    @property
    def world_size(self) -> int:
        return len(self._actors)

    @property
    def roles(self) -> list[str]:
        return list(self._views)

    def role(self, name: str) -> RoleView:
        if name not in self._views:
            raise KeyError(f"WorkerGroup {self.name!r} has no role {name!r} (roles: {self.roles})")
        return self._views[name]

    def submit(self, method_name: str, *args, **kwargs) -> Pending:
        return self._views[SINGLE_ROLE].submit(method_name, *args, **kwargs)

    def execute_all(self, method_name: str, *args, **kwargs) -> list:
        if not self._single:
            raise ValueError(f"WorkerGroup {self.name!r} has roles {self.roles}: use "
                             f"group.role(name).execute_all(...)")
        return self._views[SINGLE_ROLE].execute_all(method_name, *args, **kwargs)

    def wait_ready(self, timeout_s: float | None = None) -> None:
        """Block until every actor is scheduled and its role objects are built."""
        self._get_layouts(timeout_s)

    def deadline(self, phase: str) -> float:
        """Seconds a call of `phase` waits: its deadline, else `call_timeout_s`."""
        return self.deadlines.get(phase, self.call_timeout_s)

    def where(self) -> list[dict]:
        """Per rank: node id, node address, pid, and RANK / LOCAL_RANK / MASTER_ADDR / MASTER_PORT /
        VLLM_HOST_IP / HYFLOW_BIND_ADDR as that rank sees them."""
        refs = [a.where.remote(self._rendezvous) for a in self._actors]
        return _gather(f"{self.name}.where", list(range(self.world_size)), refs, self.call_timeout_s)

    def shutdown(self) -> None:
        for actor in self._actors:
            ray.kill(actor)
        self._actors = []

    def __repr__(self) -> str:
        return f"WorkerGroup({self.name!r}, world_size={self.world_size}, roles={self.roles}, pool={self.pool!r})"

    # ---------------------------------------------------------------- internals
    def _label(self, role: str, method: str) -> str:
        return f"{self.name}.{method}" if self._single else f"{self.name}.{role}.{method}"

    def _phase_of(self, method: str, args: tuple, kwargs: dict) -> tuple[str, float, str]:
        """(phase, its deadline, the config key that sets it) of one call: `in_phase` around the
        call, else the group's phase table, else DEFAULT_PHASE."""
        phase = _phase.get()
        if phase is None:
            entry = self.phases.get(method, DEFAULT_PHASE)
            phase = entry(args, kwargs) if callable(entry) else entry
        key = DEADLINE_KEYS.get(phase if phase in self.deadlines else DEFAULT_PHASE)
        return phase, self.deadline(phase), key

    def _get_layouts(self, timeout_s: float | None = None) -> list[dict]:
        if self._layouts is None:
            t = self.call_timeout_s if timeout_s is None else timeout_s
            await_actors(self._actors, self._layout_refs, f"WorkerGroup {self.name!r}", self._asked, t)
            layouts = _gather(f"{self.name} (actor start-up)", list(range(self.world_size)),
                              self._layout_refs, t)
            for role in self.roles:
                sizes = {lay[role][1] for lay in layouts}
                if len(sizes) != 1:
                    raise ValueError(f"WorkerGroup {self.name!r} role {role!r}: ranks disagree on dp_size {sizes}")
                dp_size = sizes.pop()
                for dp in range(dp_size):
                    outs = [r for r, lay in enumerate(layouts) if lay[role][0] == dp and lay[role][2]]
                    if len(outs) != 1:
                        raise ValueError(f"WorkerGroup {self.name!r} role {role!r}: dp_rank {dp} has "
                                         f"{len(outs)} output ranks {outs}, need exactly 1")
            self._layouts = layouts
        return self._layouts

    def _invoke(self, role: str, method: str, spec: MethodSpec, args: tuple, kwargs: dict) -> Any:
        if not self._actors:
            raise RuntimeError(f"WorkerGroup {self.name!r} is shut down")
        label = self._label(role, method)
        phase, timeout_s, key = self._phase_of(method, args, kwargs)
        world = self.world_size
        collect: Callable[[list], Any] = list
        if spec.execute is Execute.RANK_ZERO:
            ranks = [0]
            calls = [([_put(a) for a in args], {k: _put(v) for k, v in kwargs.items()})]
            collect = lambda outs: outs[0]  # noqa: E731
        elif spec.dispatch is Dispatch.ONE_TO_ALL:
            ranks = list(range(world))
            # Put once; every rank gets the same refs.
            calls = [([_put(a) for a in args], {k: _put(v) for k, v in kwargs.items()})] * world
        elif spec.dispatch is Dispatch.ALL_TO_ALL:
            ranks = list(range(world))
            for key, value in [*enumerate(args), *kwargs.items()]:
                if not isinstance(value, (list, tuple)) or len(value) != world:
                    raise ValueError(f"{label}: ALL_TO_ALL argument {key!r} must be a list of "
                                     f"{world} items (one per rank), got {type(value).__name__}"
                                     f"{f' of {len(value)}' if isinstance(value, (list, tuple)) else ''}")
            calls = [([_put(a[r]) for a in args], {k: _put(v[r]) for k, v in kwargs.items()})
                     for r in range(world)]
        else:
            ranks, calls, collect = self._dp_split(role, label, args, kwargs)
        refs = [self._actors[r].call.remote(role, method, a, k, self._rendezvous) for r, (a, k) in zip(ranks, calls)]
        pending = Pending(label, ranks, refs, collect, timeout_s, phase, key)
        return pending.get() if spec.blocking else pending

    def _dp_split(self, role: str, label: str, args: tuple, kwargs: dict):
        """Per-rank args + a collect function. Needs each rank's dp layout: the first DP_SPLIT
        call waits for the actors to start (even with blocking=False); later calls use the cache,
        so the dp layout must be fixed once the role objects are built."""
        layout = [lay[role] for lay in self._get_layouts()]
        dp_size = layout[0][1]
        sizes = {len(v) for v in [*args, *kwargs.values()] if isinstance(v, Batch)}
        if len(sizes) > 1:
            raise ValueError(f"{label}: DP_SPLIT Batch arguments differ in length {sorted(sizes)}")
        n = sizes.pop() if sizes else 0
        pad = (-n) % dp_size

        def chunks(value: Any) -> list:
            if not isinstance(value, Batch):
                return [value] * dp_size
            padded, _ = value.pad_to_divisor(dp_size)
            return [ray.put(c) for c in padded.split(dp_size)]

        arg_chunks = [chunks(a) for a in args]
        kwarg_chunks = {k: chunks(v) for k, v in kwargs.items()}
        ranks = list(range(self.world_size))
        calls = [([c[layout[r][0]] for c in arg_chunks], {k: c[layout[r][0]] for k, c in kwarg_chunks.items()})
                 for r in ranks]

        def collect(outs: list) -> Any:
            by_dp = {layout[r][0]: out for r, out in zip(ranks, outs) if layout[r][2]}
            return _concat_dp(label, [by_dp[d] for d in range(dp_size)], n + pad, pad)
        return ranks, calls, collect
