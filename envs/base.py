"""The interface every multi-turn text environment implements, and the name -> env registry.

A `TextEnv` is one episode at a time, single-threaded, and knows nothing of Ray or the trainer
(the env pool / agent loop drive it):

    obs, info = env.reset(seed)                 # same seed -> same task and same first page
    obs, reward, done, info = env.step(action)  # action: the text the policy chose, e.g. "click[buy now]"
    env.close()

`info` always carries:
    won                 bool: the episode ended in success (GiGPO / verl-agent `success_rate`)
    admissible_actions  list[str]: the actions the env offers now ([] when it has no such list)
    anchor              str: the state key GiGPO groups steps on; two envs in the same state give
                        the same anchor (for WebShop: the page text with the instruction stripped)
    task_type           str: a task family for per-type metrics (ALFWorld task type, WebShop category)
and may carry `task_score` (the env's own graded score), `action_valid` (False when the action was
not understood or not available, so it was a no-op) and `truncated` (stopped by a step cap).

Registry: `@register_env("name")` on a TextEnv subclass (or any factory returning one),
`make_env(name, **kwargs)`, `list_envs()`. Built-in envs live in modules imported on first use
(`_BUILTIN_ENVS`). Third-party envs come from installed distributions through entry points of group
``hyflow.envs``: each entry point is a module (importing it runs its `@register_env`), a TextEnv
subclass (registered under the entry point's name), or a zero-argument callable that registers when
called. Entry points load on the first lookup or listing, and again when a lookup misses; a plug-in
that fails to load raises ImportError naming the entry point. Unknown names raise KeyError listing
the known ones.
"""
from __future__ import annotations

import importlib
import importlib.metadata
import inspect
from abc import ABC, abstractmethod
from typing import Any, Callable

ENTRY_POINT_GROUP = "hyflow.envs"

# name -> module that registers it when imported (kept lazy: envs can have heavy dependencies).
_BUILTIN_ENVS: dict[str, str] = {
    "webshop": "envs.webshop",
    "alfworld": "envs.alfworld.env",
    "kbqa": "envs.retrieval.env",
}

# Validation episodes play seeds VAL_SEED_BASE + k (orchestrator/tasks.py), training ones the seeds
# below it: an env with held-out tasks tells the two apart by the seed (envs/retrieval/env.py).
VAL_SEED_BASE = 10**6

_ENVS: dict[str, Callable[..., "TextEnv"]] = {}
_loaded_entry_points: set[tuple[str, str]] = set()
_loading = False  # a plug-in that looks names up while being imported must not recurse
_scanned = False


class TextEnv(ABC):
    """One text environment instance; see the module docstring for the `info` contract."""

    @abstractmethod
    def reset(self, seed: int | None = None) -> tuple[str, dict[str, Any]]:
        """Start an episode; the same seed gives the same task and the same first observation."""

    @abstractmethod
    def step(self, action_text: str) -> tuple[str, float, bool, dict[str, Any]]:
        """Apply one action; returns (observation, reward, done, info)."""

    def close(self) -> None:
        """Release resources (files, subprocesses). Default: nothing to release."""

    def __enter__(self) -> "TextEnv":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def register_env(name: str) -> Callable[[Callable[..., TextEnv]], Callable[..., TextEnv]]:
    """Decorator: register a TextEnv subclass (or a factory returning one) as `name`."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"env name must be a non-empty string, got {name!r}")

    def decorator(factory: Callable[..., TextEnv]) -> Callable[..., TextEnv]:
        if not callable(factory):
            raise TypeError(f"env {name!r} must be a TextEnv subclass or a factory, "
                            f"got {type(factory).__name__}")
        existing = _ENVS.get(name)
        if existing is not None and existing is not factory:
            raise ValueError(f"env {name!r} is already registered to "
                             f"{getattr(existing, '__module__', '?')}."
                             f"{getattr(existing, '__qualname__', existing)}")
        _ENVS[name] = factory
        return factory

    return decorator


def load_plugins() -> None:
    """Load every not-yet-loaded entry point of group ``hyflow.envs``."""
    global _loading, _scanned
    if _loading:
        return
    _loading = True
    try:
        for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
            key = (ep.name, ep.value)
            if key in _loaded_entry_points:
                continue
            try:
                obj = ep.load()
                registered = any(obj is f for f in _ENVS.values())
                if inspect.isclass(obj) and issubclass(obj, TextEnv):
                    if not registered:
                        register_env(ep.name)(obj)
                elif not inspect.ismodule(obj) and callable(obj) and not registered:
                    obj()
            except Exception as e:  # any failure inside a plug-in is reported against its name
                raise ImportError(f"hyflow env plug-in entry point {ep.name!r} = {ep.value!r} "
                                  f"(group {ENTRY_POINT_GROUP!r}) failed to load: "
                                  f"{type(e).__name__}: {e}") from e
            _loaded_entry_points.add(key)
        _scanned = True
    finally:
        _loading = False


def get_env(name: str) -> Callable[..., TextEnv]:
    """The factory registered as `name`; KeyError listing the known names otherwise."""
    if name not in _ENVS and name in _BUILTIN_ENVS:
        importlib.import_module(_BUILTIN_ENVS[name])
    if not _scanned or name not in _ENVS:
        load_plugins()  # first lookup, or a miss: a plug-in installed since may provide it
    try:
        return _ENVS[name]
    except KeyError:
        raise KeyError(f"unknown env {name!r}; registered: {list_envs()}") from None


def make_env(name: str, **kwargs) -> TextEnv:
    """Build the env registered as `name` with `kwargs`; TypeError if it is not a TextEnv."""
    env = get_env(name)(**kwargs)
    if not isinstance(env, TextEnv):
        raise TypeError(f"env {name!r} factory returned {type(env).__name__}, not a TextEnv")
    return env


def list_envs() -> list[str]:
    """Sorted names of all envs: built-ins (imported or not) and plug-ins."""
    load_plugins()
    return sorted(set(_ENVS) | set(_BUILTIN_ENVS))
