"""FoR-style exploration memory: a per-problem prioritized replay buffer and local search.

PrioritizedReplay (FoR, Yu et al. 2025 §3.3, ``replay_buffer.py``): per problem, the top
``buffer_size`` unique trajectories by log R; replayed with probability ∝ softmax(log R).
local_search (FoR §3.3): keep a prefix of the best fresh trajectory (by default its first half),
re-complete the rest, and keep every completion whose log R beats that best trajectory's.
"""
from __future__ import annotations

import copy
import heapq
import math
from typing import Any, Callable, Hashable, Sequence

import numpy as np


class PrioritizedReplay:
    """Per problem, a min-heap of the top-``buffer_size`` unique trajectories by log R.

    Uniqueness is by a caller-given hashable ``key`` (e.g. the tuple of actions): re-adding a key
    that is held is ignored. When full, the lowest log R leaves first (the oldest among equals).
    Sampling uses the buffer's own numpy Generator, so ``state_dict`` / ``load_state_dict``
    reproduce the exact sample sequence.
    """

    def __init__(self, buffer_size: int = 50, seed: int | None = None):
        if not isinstance(buffer_size, int) or buffer_size < 1:
            raise ValueError(f"buffer_size must be a positive int, got {buffer_size!r}")
        self.buffer_size = buffer_size
        self._rng = np.random.default_rng(seed)
        self._heaps: dict[Hashable, list[tuple[float, int, Hashable, Any]]] = {}
        self._keys: dict[Hashable, set] = {}
        self._counter = 0  # insertion order: heap tie-break and a layout-free sampling order

    def __len__(self) -> int:
        return sum(len(h) for h in self._heaps.values())

    def __contains__(self, problem_id) -> bool:
        return problem_id in self._heaps

    def size(self, problem_id) -> int:
        """Number of trajectories held for ``problem_id`` (0 if none)."""
        return len(self._heaps.get(problem_id, ()))

    def add(self, problem_id: Hashable, key: Hashable, log_r: float, item: Any) -> bool:
        """Offer a trajectory; True if it is now held (new key and within the top-k)."""
        log_r = float(log_r)
        if math.isnan(log_r) or log_r == math.inf:  # −inf (R = 0) is allowed
            raise ValueError(f"log_r must be < inf and not nan, got {log_r} for problem "
                             f"{problem_id!r}, key {key!r}")
        heap = self._heaps.setdefault(problem_id, [])
        keys = self._keys.setdefault(problem_id, set())
        try:
            if key in keys:
                return False
        except TypeError:
            raise TypeError(f"replay key must be hashable, got {type(key).__name__}") from None
        entry = (log_r, self._counter, key, item)
        self._counter += 1
        if len(heap) < self.buffer_size:
            heapq.heappush(heap, entry)
            keys.add(key)
            return True
        # full: the new entry competes with the current minimum (it may itself be the one out)
        out = heapq.heappushpop(heap, entry)
        if out is entry:
            return False
        keys.discard(out[2])
        keys.add(key)
        return True

    def entries(self, problem_id) -> list[tuple[Hashable, float, Any]]:
        """(key, log_r, item) of ``problem_id``, in insertion order."""
        return [(k, r, it) for r, _, k, it in sorted(self._heaps.get(problem_id, ()),
                                                     key=lambda e: e[1])]

    def sample(self, problem_id, n: int) -> list[tuple[Hashable, float, Any]]:
        """n draws with replacement, P(entry) = softmax(log R) over the problem's entries.
        Returns (key, log_r, item) tuples; KeyError if the problem has none."""
        if not isinstance(n, int) or n < 0:
            raise ValueError(f"n must be a non-negative int, got {n!r}")
        if not self._heaps.get(problem_id):
            raise KeyError(f"replay buffer holds nothing for problem {problem_id!r}")
        entries = self.entries(problem_id)
        log_r = np.array([e[1] for e in entries], dtype=np.float64)
        if np.isneginf(log_r).all():  # all rewards 0: fall back to uniform
            p = np.full(len(entries), 1.0 / len(entries))
        else:
            p = np.exp(log_r - log_r.max())
            p /= p.sum()
        idx = self._rng.choice(len(entries), size=n, replace=True, p=p)
        return [entries[i] for i in idx]

    def state_dict(self) -> dict:
        """A deep copy of the contents, the insertion counter and the RNG state."""
        return {"buffer_size": self.buffer_size, "counter": self._counter,
                "heaps": copy.deepcopy(self._heaps),
                "rng": copy.deepcopy(self._rng.bit_generator.state)}

    def load_state_dict(self, state: dict) -> None:
        """Restore exactly what ``state_dict`` saved (contents, order, RNG)."""
        missing = {"buffer_size", "counter", "heaps", "rng"} - set(state)
        if missing:
            raise KeyError(f"replay state_dict lacks {sorted(missing)}")
        rng = np.random.default_rng()
        if state["rng"].get("bit_generator") != type(rng.bit_generator).__name__:
            raise ValueError(f"replay state_dict rng is {state['rng'].get('bit_generator')!r}, "
                             f"expected {type(rng.bit_generator).__name__!r}")
        rng.bit_generator.state = copy.deepcopy(state["rng"])
        heaps = copy.deepcopy(state["heaps"])
        for pid, heap in heaps.items():
            if len(heap) > state["buffer_size"]:
                raise ValueError(f"replay state_dict problem {pid!r} holds {len(heap)} entries "
                                 f"> buffer_size {state['buffer_size']}")
            heapq.heapify(heap)
        self.buffer_size = int(state["buffer_size"])
        self._counter = int(state["counter"])
        self._heaps = heaps
        self._keys = {pid: {e[2] for e in heap} for pid, heap in heaps.items()}
        self._rng = rng


def local_search_candidates(best_actions: Sequence, complete_fn: Callable[[tuple, np.random.Generator], Sequence],
                            n_tries: int, rng: np.random.Generator, keep: int | None = None) -> list[tuple]:
    """FoR local search, proposal half: keep the first ``keep`` actions of the best trajectory
    (default ⌊len/2⌋: FoR BlocksWorld ``K = self.args.step // 2``, lightning_module_selection.py:610)
    and re-complete the rest ``n_tries`` times with ``complete_fn(prefix, rng)`` (returns the
    actions after the prefix). Returns the n_tries full action tuples, in order."""
    best_actions = tuple(best_actions)
    if not best_actions:
        raise ValueError("best_actions is empty: nothing to search around")
    if not isinstance(n_tries, int) or n_tries < 0:
        raise ValueError(f"n_tries must be a non-negative int, got {n_tries!r}")
    keep = len(best_actions) // 2 if keep is None else keep
    if not isinstance(keep, int) or not 0 <= keep <= len(best_actions):
        raise ValueError(f"keep must be an int in [0, {len(best_actions)}], got {keep!r}")
    prefix = best_actions[:keep]
    return [prefix + tuple(complete_fn(prefix, rng)) for _ in range(n_tries)]


def accept_improving(candidates: Sequence[tuple], log_rs: Sequence[float], best_log_r: float) -> list[tuple[tuple, float]]:
    """FoR local search, acceptance half: accept every candidate whose log R beats ``best_log_r``
    (the best log R among the problem's fresh samples). The bar is fixed: each try is compared
    with the same best, as FoR does (``if log_reward > best_reward`` with best_reward unchanged in
    the loop: BlocksWorld lightning_module_selection.py:231, PrOntoQA lightning_module.py:222), so
    an accepted try does not raise it and equal tries are all accepted (FoR trains each one);
    nan never passes. Returns the accepted (actions, log_r), in order."""
    best, accepted = float(best_log_r), []
    for actions, log_r in zip(candidates, log_rs):
        if float(log_r) > best:
            accepted.append((tuple(actions), float(log_r)))
    return accepted


def local_search(best_actions: Sequence, log_r_fn: Callable[[tuple], float],
                 complete_fn: Callable[[tuple, np.random.Generator], Sequence], n_tries: int,
                 rng: np.random.Generator, best_log_r: float | None = None, keep: int | None = None,
                 ) -> list[tuple[tuple, float]]:
    """FoR local search: `local_search_candidates` (keeping ``keep`` actions, default half) then
    `accept_improving` against ``best_log_r`` (default log_r_fn(best_actions)). Returns the
    accepted (actions tuple, log_r) in order."""
    cands = local_search_candidates(best_actions, complete_fn, n_tries, rng, keep)
    best = float(log_r_fn(tuple(best_actions))) if best_log_r is None else float(best_log_r)
    return accept_improving(cands, [float(log_r_fn(a)) for a in cands], best)
