"""User-replaceable reward functions (verl-compatible) and safe batch scoring.

The documented signature a custom reward must have:

    def compute_score(data_source: str, solution_str: str, ground_truth: str,
                      extra_info: dict | None = None) -> float | dict

It is called with keyword arguments, once per response. A dict return must hold "score" (a finite
number); its other keys become per-row metrics. `envs.math.compute_score` is the default
(1.0 when the answer verifies, else 0.0). Load a replacement with `load_reward_fn("module:function")`
or `load_reward_fn("path/to/file.py:function")`.

`score_batch` never raises because of what a model wrote: a reward function that raises, or returns
something that is not a finite number, gives the row `crash_penalty` and is counted.
"""
from __future__ import annotations

import hashlib
import importlib
import importlib.util
import inspect
import logging
import math
import numbers
from pathlib import Path
from typing import Callable, Sequence

log = logging.getLogger(__name__)

DEFAULT_REWARD_FN = "envs.math:compute_score"
RewardFn = Callable[..., "float | dict"]
_ARGS = dict(data_source="", solution_str="", ground_truth="", extra_info=None)


def _load_file(spec: str, file_part: str):
    path = Path(file_part).expanduser().resolve()
    if not path.is_file():
        raise ValueError(f"reward function spec {spec!r}: file {path} does not exist")
    # A unique module name per path, so two files named reward.py do not overwrite each other.
    name = f"hyflow_reward_{hashlib.sha1(str(path).encode()).hexdigest()[:12]}"
    mspec = importlib.util.spec_from_file_location(name, path)
    if mspec is None or mspec.loader is None:
        raise ValueError(f"reward function spec {spec!r}: cannot import {path}")
    module = importlib.util.module_from_spec(mspec)
    try:
        mspec.loader.exec_module(module)
    except Exception as e:  # the user's file failed to import: say which and why
        raise ValueError(f"reward function spec {spec!r}: importing {path} failed: "
                         f"{type(e).__name__}: {e}") from e
    return module


def load_reward_fn(spec: str) -> RewardFn:
    """Resolve "module:function" or "path/to/file.py:function" to a callable that accepts the
    reward keywords (data_source, solution_str, ground_truth, extra_info). ValueError otherwise."""
    if not isinstance(spec, str) or spec.count(":") < 1:
        raise ValueError(f"reward function spec {spec!r}: expected 'module:function' "
                         f"or 'path/to/file.py:function'")
    target, func_name = spec.rsplit(":", 1)
    if not target or not func_name.isidentifier():
        raise ValueError(f"reward function spec {spec!r}: expected 'module:function' "
                         f"or 'path/to/file.py:function'")
    if target.endswith(".py") or "/" in target or "\\" in target:
        module = _load_file(spec, target)
    else:
        try:
            module = importlib.import_module(target)
        except ImportError as e:
            raise ValueError(f"reward function spec {spec!r}: cannot import module "
                             f"'{target}': {e}") from e
    fn = getattr(module, func_name, None)
    if fn is None:
        raise ValueError(f"reward function spec {spec!r}: '{target}' has no attribute '{func_name}'")
    if not callable(fn):
        raise ValueError(f"reward function spec {spec!r}: '{func_name}' is not callable "
                         f"(it is a {type(fn).__name__})")
    try:
        inspect.signature(fn).bind(**_ARGS)
    except TypeError as e:
        raise ValueError(f"reward function spec {spec!r}: '{func_name}' does not accept the "
                         f"keywords {list(_ARGS)}: {e}") from e
    except ValueError:
        pass  # builtins without a signature: let calls decide
    return fn


def _as_score(value) -> float:
    """A finite float from a reward return value; TypeError/ValueError otherwise."""
    if isinstance(value, dict):
        if "score" not in value:
            raise ValueError(f"returned a dict without 'score' (keys {sorted(value)})")
        value = value["score"]
    if not isinstance(value, numbers.Real):  # bool, int, float and numpy scalars are Real
        raise TypeError(f"returned {type(value).__name__}, not a number")
    score = float(value)
    if not math.isfinite(score):
        raise ValueError(f"returned a non-finite score {score}")
    return score


class ScoredBatch(tuple):
    """(scores, extra_metrics, n_crashed), plus `.first_error` (str | None) for logging."""

    first_error: str | None

    def __new__(cls, scores, extra_metrics, n_crashed, first_error):
        obj = super().__new__(cls, (scores, extra_metrics, n_crashed))
        obj.first_error = first_error
        return obj


def score_batch(fn: RewardFn, data_sources: Sequence[str], solutions: Sequence[str],
                ground_truths: Sequence[str], extra_infos: Sequence[dict | None] | None,
                crash_penalty: float) -> ScoredBatch:
    """Score each row with `fn`; returns (scores, extra_metrics, n_crashed).

    extra_metrics maps every non-"score" key any dict return had to a list aligned with the rows
    (None where a row did not report it or crashed). A crashed row scores `crash_penalty`.
    """
    n = len(solutions)
    if extra_infos is None:
        extra_infos = [None] * n
    lens = {"data_sources": len(data_sources), "ground_truths": len(ground_truths),
            "extra_infos": len(extra_infos)}
    for name, k in lens.items():
        if k != n:
            raise ValueError(f"score_batch: {name} has {k} rows but solutions has {n}")
    scores: list[float] = []
    metrics: dict[str, list] = {}
    n_crashed, first_error = 0, None
    for i in range(n):
        try:
            out = fn(data_source=data_sources[i], solution_str=solutions[i],
                     ground_truth=ground_truths[i], extra_info=extra_infos[i])
            score = _as_score(out)
        except Exception as e:  # any failure of the user's function is a crashed row
            n_crashed += 1
            if first_error is None:
                first_error = f"row {i}: {type(e).__name__}: {e}"
            scores.append(float(crash_penalty))
            continue
        scores.append(score)
        if isinstance(out, dict):
            for key, val in out.items():
                if key != "score":
                    metrics.setdefault(key, [None] * n)[i] = val
    if n_crashed:
        log.warning("reward function failed on %d of %d rows (scored %s); first: %s",
                    n_crashed, n, crash_penalty, first_error)
    return ScoredBatch(scores, metrics, n_crashed, first_error)
