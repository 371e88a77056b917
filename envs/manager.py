"""Runs text envs in parallel as Ray actors (a fraction of a CPU each), in groups.

    manager = EnvManager("webshop", {"num_products": 300}, n_groups=4, group_size=8)
    # the env: a registry name, or "package.module:EnvClass" importable in the actors
    first = manager.reset(seeds=[11, 12, 13, 14])   # env i plays seed seeds[i // group_size]
    out = manager.step({0: "search[red shoes]", 5: "click[b0123]"})   # only the envs given
    manager.close()

The N members of a group get the same seed and so the same task and initial state: what GRPO
and GiGPO compare. Failure contract: an env whose `reset`/`step` raises, or does not answer
within `step_timeout_s`, ends its episode (done=True, reward 0, `info["env_error"]` holds the
reason) and is counted in `errors`; its actor is replaced at the next reset. The others go on.

Placement: by default each env actor asks `num_cpus` of the cluster's free CPUs. Inside a trainer,
pass `actor_options` (one `{num_cpus, scheduling_strategy}` per env, e.g. from
`ResourcePool.helper_slots(...).take(n)`) so the envs run in a share reserved in the trainer's
placement group and never wait for CPUs the trainer's workers hold. Envs that cannot be scheduled
fail the constructor within `schedule_timeout_s` with an error naming the resources asked for and
those the cluster has.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import ray


@dataclass
class EnvResult:
    observation: str
    reward: float
    done: bool
    info: dict[str, Any] = field(default_factory=dict)


class _EnvHost:
    """One env per actor process; errors are returned, not raised, so one env cannot stop a batch."""

    def __init__(self, name: str, kwargs: dict):
        if ":" in name:  # "package.module:EnvClass", importable in the actor's process
            import importlib
            module, attr = name.split(":", 1)
            self.env = getattr(importlib.import_module(module), attr)(**kwargs)
        else:
            from envs.base import make_env
            self.env = make_env(name, **kwargs)

    def reset(self, seed: int) -> tuple:
        obs, info = self.env.reset(seed)
        return obs, 0.0, False, info

    def step(self, action: str) -> tuple:
        return self.env.step(action)

    def ready(self) -> bool:
        return True


class EnvManager:
    def __init__(self, env_name: str, env_kwargs: dict | None, n_groups: int, group_size: int,
                 num_cpus: float = 0.1, step_timeout_s: float = 60.0, actor_options: list[dict] | None = None,
                 schedule_timeout_s: float = 60.0):
        from orchestrator.resources import await_actors

        if n_groups < 1 or group_size < 1:
            raise ValueError(f"need n_groups >= 1 and group_size >= 1, got {n_groups} and {group_size}")
        self.env_name, self.env_kwargs = env_name, dict(env_kwargs or {})
        self.n_groups, self.group_size = n_groups, group_size
        self.num_cpus, self.step_timeout_s = num_cpus, step_timeout_s
        if actor_options is not None and len(actor_options) != self.size:
            raise ValueError(f"actor_options has {len(actor_options)} entries for {self.size} envs")
        self._options = actor_options or [{"num_cpus": num_cpus}] * self.size
        self.errors = 0
        self._remote = ray.remote(max_restarts=0)(_EnvHost)
        self._actors: list = [self._spawn(i) for i in range(self.size)]
        self._broken: set[int] = set()
        # Fail fast when Ray cannot place the envs (a reset would only time out, env by env).
        ready = [a.ready.remote() for a in self._actors]
        await_actors(self._actors, ready, f"env {env_name!r} ({self.size} actors)",
                     {"CPU": self._options[0]["num_cpus"]}, timeout_s=max(schedule_timeout_s, step_timeout_s),
                     schedule_timeout_s=schedule_timeout_s)

    @property
    def size(self) -> int:
        return self.n_groups * self.group_size

    def group_of(self, env_index: int) -> int:
        return env_index // self.group_size

    def _spawn(self, i: int):
        return self._remote.options(**self._options[i]).remote(self.env_name, self.env_kwargs)

    def reset(self, seeds: list[int]) -> list[EnvResult]:
        """Start an episode in every env; env i plays `seeds[i // group_size]`."""
        if len(seeds) != self.n_groups:
            raise ValueError(f"reset needs one seed per group ({self.n_groups}), got {len(seeds)}")
        for i in sorted(self._broken):  # replace actors that crashed or hung last time
            ray.kill(self._actors[i])  # no-op when already killed
            self._actors[i] = self._spawn(i)
        self._broken.clear()
        calls = {i: self._actors[i].reset.remote(int(seeds[self.group_of(i)])) for i in range(self.size)}
        out = self._collect(calls, "reset")
        return [out[i] for i in range(self.size)]

    def step(self, actions: dict[int, str]) -> dict[int, EnvResult]:
        calls = {i: self._actors[i].step.remote(a) for i, a in actions.items()}
        return self._collect(calls, "step")

    def _collect(self, calls: dict[int, Any], what: str) -> dict[int, EnvResult]:
        out: dict[int, EnvResult] = {}
        pending = {ref: i for i, ref in calls.items()}
        deadline = time.monotonic() + self.step_timeout_s
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=len(pending),
                                timeout=max(0.0, deadline - time.monotonic()))
            if not ready:
                break
            for ref in ready:
                i = pending.pop(ref)
                try:
                    obs, reward, done, info = ray.get(ref)
                    out[i] = EnvResult(obs, float(reward), bool(done), dict(info))
                except Exception as e:  # noqa: BLE001 - an env crash ends that episode only
                    out[i] = self._failed(i, f"{what} raised {type(e).__name__}: {_first_line(e)}")
        for ref, i in pending.items():  # a hung env: its actor is killed now and replaced at reset
            ray.kill(self._actors[i])
            out[i] = self._failed(i, f"{what} timed out after {self.step_timeout_s:g}s")
        return out

    def _failed(self, i: int, reason: str) -> EnvResult:
        self.errors += 1
        self._broken.add(i)
        return EnvResult("", 0.0, True, {"env_error": reason, "won": False, "admissible_actions": [],
                                          "anchor": "", "task_type": "error"})

    def close(self) -> None:
        for a in self._actors:
            ray.kill(a)
        self._actors = []


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[-1] if text else ""
