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
import inspect
from abc import ABC, abstractmethod
from typing import Any, Callable

from orchestrator.plugins import EntryPoints, Registry

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


def _check_factory(name: str, factory) -> None:
    if not callable(factory):
        raise TypeError(f"env {name!r} must be a TextEnv subclass or a factory, got {type(factory).__name__}")


def _adopt(name: str, obj) -> bool:
    """An entry point that is a TextEnv subclass registers under the entry point's name."""
    if inspect.isclass(obj) and issubclass(obj, TextEnv):
        register_env(name)(obj)
        return True
    return False


_PLUGINS = EntryPoints(ENTRY_POINT_GROUP, "hyflow env plug-in")
_PLUGINS.adopt = _adopt
_ENVS = Registry("env", _PLUGINS, _check_factory)


def register_env(name: str) -> Callable[[Callable[..., TextEnv]], Callable[..., TextEnv]]:
    """Decorator: register a TextEnv subclass (or a factory returning one) as `name`."""
    return _ENVS.register(name)


def load_plugins() -> None:
    """Load every not-yet-loaded entry point of group ``hyflow.envs``."""
    _PLUGINS.load()


def get_env(name: str) -> Callable[..., TextEnv]:
    """The factory registered as `name`; KeyError listing the known names otherwise."""
    if name not in _ENVS.table and name in _BUILTIN_ENVS:
        importlib.import_module(_BUILTIN_ENVS[name])
    return _ENVS.get(name, known=list_envs)


def make_env(name: str, **kwargs) -> TextEnv:
    """Build the env registered as `name` with `kwargs`; TypeError if it is not a TextEnv."""
    env = get_env(name)(**kwargs)
    if not isinstance(env, TextEnv):
        raise TypeError(f"env {name!r} factory returned {type(env).__name__}, not a TextEnv")
    return env


def list_envs() -> list[str]:
    """Sorted names of all envs: built-ins (imported or not) and plug-ins."""
    return sorted(set(_ENVS.names()) | set(_BUILTIN_ENVS))
