"""Name -> function registries for advantage estimators and policy losses.

Calling conventions (keyword arguments only, so a registered function declares what it needs):

* **Advantage estimator**: ``fn(scores=..., group_ids=..., mask=..., **algorithm_options)``
  -> advantages ``[B, T]``. ``scores`` is ``[B]`` float (one outcome score per response),
  ``group_ids`` ``[B]`` hashable ids (rows with the same id answer the same prompt / task), ``mask``
  the ``[B, T]`` response mask. Estimators that need more batch fields (critic values, step
  returns, anchor states, ...) take them as further keyword arguments named like the batch field.
* **Policy loss**: ``fn(logprobs=..., old_logprobs=..., advantages=..., mask=..., **loss_options)``
  -> ``(loss: 0-d tensor, metrics: dict[str, 0-d tensor])``.

Third-party plug-ins: a distribution declares entry points in the group ``hyflow.algorithms``.
Each entry point is either a module (importing it runs its ``@register_...`` decorators) or a
zero-argument callable that registers when called (a callable that is itself already a registered
function is left alone). Entry points are loaded on the first lookup or listing, and again when a
lookup misses (so plug-ins installed later are found). A plug-in that fails to load raises
``ImportError`` naming the entry point.
"""
from __future__ import annotations

import importlib.metadata
import inspect
from typing import Callable

ENTRY_POINT_GROUP = "hyflow.algorithms"

_ADVANTAGE_ESTIMATORS: dict[str, Callable] = {}
_POLICY_LOSSES: dict[str, Callable] = {}
_loaded_entry_points: set[tuple[str, str]] = set()
_loading = False  # guards against a plug-in that looks names up while being imported
_scanned = False  # entry points have been loaded once


def _register(table: dict[str, Callable], kind: str, name: str) -> Callable[[Callable], Callable]:
    if not isinstance(name, str) or not name:
        raise ValueError(f"{kind} name must be a non-empty string, got {name!r}")

    def decorator(fn: Callable) -> Callable:
        if not callable(fn):
            raise TypeError(f"{kind} {name!r} must be callable, got {type(fn).__name__}")
        existing = table.get(name)
        if existing is not None and existing is not fn:
            raise ValueError(f"{kind} {name!r} is already registered to "
                             f"{getattr(existing, '__module__', '?')}."
                             f"{getattr(existing, '__qualname__', existing)}")
        table[name] = fn
        return fn

    return decorator


def load_plugins() -> None:
    """Load every not-yet-loaded entry point of group ``hyflow.algorithms``."""
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
                registered = any(obj is f for f in (*_ADVANTAGE_ESTIMATORS.values(),
                                                    *_POLICY_LOSSES.values()))
                if not inspect.ismodule(obj) and callable(obj) and not registered:
                    obj()
            except Exception as e:  # any failure inside a plug-in is reported against its name
                raise ImportError(f"hyflow plug-in entry point {ep.name!r} = {ep.value!r} "
                                  f"(group {ENTRY_POINT_GROUP!r}) failed to load: "
                                  f"{type(e).__name__}: {e}") from e
            _loaded_entry_points.add(key)
        _scanned = True
    finally:
        _loading = False


def _get(table: dict[str, Callable], kind: str, name: str) -> Callable:
    if not _scanned or name not in table:
        load_plugins()  # first lookup, or a miss: a plug-in installed since may provide it
    try:
        return table[name]
    except KeyError:
        raise KeyError(f"unknown {kind} {name!r}; registered: {sorted(table)}") from None


def register_advantage_estimator(name: str) -> Callable[[Callable], Callable]:
    """Decorator: register ``fn`` as the advantage estimator called ``name``."""
    return _register(_ADVANTAGE_ESTIMATORS, "advantage estimator", name)


def register_policy_loss(name: str) -> Callable[[Callable], Callable]:
    """Decorator: register ``fn`` as the policy loss called ``name``."""
    return _register(_POLICY_LOSSES, "policy loss", name)


def get_advantage_estimator(name: str) -> Callable:
    """The estimator registered as ``name``; KeyError listing the registered names otherwise."""
    return _get(_ADVANTAGE_ESTIMATORS, "advantage estimator", name)


def get_policy_loss(name: str) -> Callable:
    """The policy loss registered as ``name``; KeyError listing the registered names otherwise."""
    return _get(_POLICY_LOSSES, "policy loss", name)


def list_advantage_estimators() -> list[str]:
    """Sorted names of all advantage estimators, plug-ins included."""
    load_plugins()
    return sorted(_ADVANTAGE_ESTIMATORS)


def list_policy_losses() -> list[str]:
    """Sorted names of all policy losses, plug-ins included."""
    load_plugins()
    return sorted(_POLICY_LOSSES)
