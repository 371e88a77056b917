"""Name -> object registries filled by decorators and by installed plug-ins (entry points).

Shared (stdlib only) by the algorithm registry (algorithms/registry.py, group
``hyflow.algorithms``) and the env registry (envs/base.py, group ``hyflow.envs``):

    plugins = EntryPoints("hyflow.algorithms", "hyflow plug-in")
    losses = Registry("policy loss", plugins)
    @losses.register("ppo")              # ValueError if the name is taken by another object
    def ppo(...): ...
    losses.get("ppo")                    # KeyError listing the registered names
    losses.names()                       # every name, plug-ins loaded first

Several registries may share one entry-point group (`EntryPoints`): each entry point loads once for
the group. An entry point is a module (importing it runs its decorators), an object that `adopt`
registers itself (envs: a TextEnv subclass under the entry point's name), or a zero-argument
callable that registers when called; an object that is already registered is left alone. Entry
points load on the first lookup or listing, and again when a lookup misses (a plug-in installed
since is found). A plug-in that fails to load raises ImportError naming the entry point and group.
"""
from __future__ import annotations

import importlib.metadata
import inspect
from typing import Any, Callable


class EntryPoints:
    """The entry points of one group, each loaded once (`load`)."""

    def __init__(self, group: str, label: str):
        self.group, self.label = group, label
        self.registries: list[Registry] = []
        self.adopt: Callable[[str, Any], bool] | None = None  # (name, obj) -> True when it registered obj
        self._loaded: set[tuple[str, str]] = set()
        self._loading = False  # a plug-in that looks names up while being imported must not recurse
        self.scanned = False

    def load(self) -> None:
        if self._loading:
            return
        self._loading = True
        try:
            for ep in importlib.metadata.entry_points(group=self.group):
                key = (ep.name, ep.value)
                if key in self._loaded:
                    continue
                try:
                    obj = ep.load()
                    registered = any(obj is f for r in self.registries for f in r.table.values())
                    if not (registered or inspect.ismodule(obj) or (self.adopt and self.adopt(ep.name, obj))):
                        if callable(obj):
                            obj()
                except Exception as e:  # any failure inside a plug-in is reported against its name
                    raise ImportError(f"{self.label} entry point {ep.name!r} = {ep.value!r} (group {self.group!r}) "
                                      f"failed to load: {type(e).__name__}: {e}") from e
                self._loaded.add(key)
            self.scanned = True
        finally:
            self._loading = False


class Registry:
    """name -> object, for one kind of thing (module doc)."""

    def __init__(self, kind: str, plugins: EntryPoints, check: Callable[[str, Any], None] | None = None):
        self.kind, self.plugins, self.check = kind, plugins, check
        self.table: dict[str, Any] = {}
        plugins.registries.append(self)

    def register(self, name: str) -> Callable:
        if not isinstance(name, str) or not name:
            raise ValueError(f"{self.kind} name must be a non-empty string, got {name!r}")

        def decorator(obj):
            if self.check is not None:
                self.check(name, obj)
            existing = self.table.get(name)
            if existing is not None and existing is not obj:
                raise ValueError(f"{self.kind} {name!r} is already registered to "
                                 f"{getattr(existing, '__module__', '?')}.{getattr(existing, '__qualname__', existing)}")
            self.table[name] = obj
            return obj

        return decorator

    def get(self, name: str, known: Callable[[], list[str]] | None = None):
        if not self.plugins.scanned or name not in self.table:
            self.plugins.load()  # first lookup, or a miss: a plug-in installed since may provide it
        try:
            return self.table[name]
        except KeyError:
            raise KeyError(f"unknown {self.kind} {name!r}; registered: {(known or self.names)()}") from None

    def names(self) -> list[str]:
        self.plugins.load()
        return sorted(self.table)
