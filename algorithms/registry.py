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

from typing import Callable

from orchestrator.plugins import EntryPoints, Registry  # stdlib only

ENTRY_POINT_GROUP = "hyflow.algorithms"


def _callable(kind: str) -> Callable[[str, object], None]:
    def check(name: str, fn) -> None:
        if not callable(fn):
            raise TypeError(f"{kind} {name!r} must be callable, got {type(fn).__name__}")
    return check


_PLUGINS = EntryPoints(ENTRY_POINT_GROUP, "hyflow plug-in")
_ADVANTAGE_ESTIMATORS = Registry("advantage estimator", _PLUGINS, _callable("advantage estimator"))
_POLICY_LOSSES = Registry("policy loss", _PLUGINS, _callable("policy loss"))
gfn_objectives = Registry("GFlowNet objective", _PLUGINS, _callable("GFlowNet objective"))  # algorithms/gflownet.py


def load_plugins() -> None:
    """Load every not-yet-loaded entry point of group ``hyflow.algorithms``."""
    _PLUGINS.load()


def register_advantage_estimator(name: str) -> Callable[[Callable], Callable]:
    """Decorator: register ``fn`` as the advantage estimator called ``name``."""
    return _ADVANTAGE_ESTIMATORS.register(name)


def register_policy_loss(name: str) -> Callable[[Callable], Callable]:
    """Decorator: register ``fn`` as the policy loss called ``name``."""
    return _POLICY_LOSSES.register(name)


def get_advantage_estimator(name: str) -> Callable:
    """The estimator registered as ``name``; KeyError listing the registered names otherwise."""
    return _ADVANTAGE_ESTIMATORS.get(name)


def get_policy_loss(name: str) -> Callable:
    """The policy loss registered as ``name``; KeyError listing the registered names otherwise."""
    return _POLICY_LOSSES.get(name)


def list_advantage_estimators() -> list[str]:
    """Sorted names of all advantage estimators, plug-ins included."""
    return _ADVANTAGE_ESTIMATORS.names()


def list_policy_losses() -> list[str]:
    """Sorted names of all policy losses, plug-ins included."""
    return _POLICY_LOSSES.names()
