"""ALFWorld on alfworld's own TextWorld engine (optional extra: `pip install -e '.[alfworld]'`).

`envs.alfworld.generator` writes synthetic, planner-checked ALFRED-domain games in ALFWorld's
folder layout; `envs.alfworld.env.ALFWorldEnv` (registered as "alfworld") plays those or the real
ALFWorld games from `$ALFWORLD_DATA`. Names below are imported on first access, so
`python -m envs.alfworld.generator` runs without a double import; the engine itself is imported
only when an env or a game is built, and a missing extra raises ImportError with the install command.
"""
import importlib

_EXPORTS = {"ALFWorldEnv": "envs.alfworld.env", "success_by_task_type": "envs.alfworld.env",
            "INSTALL_HINT": "envs.alfworld.generator", "TASK_TYPES": "envs.alfworld.generator",
            "generate": "envs.alfworld.generator"}
__all__ = list(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'envs.alfworld' has no attribute {name!r}")
