"""ALFWorld as a hyflow `TextEnv`, played by alfworld's own TextWorld engine.

The engine stack is the one alfworld's `AlfredTWEnv` registers with textworld.gym: textworld's
`PddlEnv` (the ALFRED PDDL domain + grammar, Fast Downward underneath) wrapped by alfworld's
`AlfredDemangler` (entity ids -> "cabinet 1", "sinkbasin 1") and `AlfredInfos` (the game path), so
observations are ALFWorld's own strings:

    reset -> "-= Welcome to TextWorld, ALFRED! =-\\n\\nYou are in the middle of a room. Looking
              quickly around you, you see a cabinet 2, ..., and a toaster 1.\\n\\nYour task is to:
              put a clean mug in cabinet."
    step  -> "You arrive at cabinet 1. The cabinet 1 is closed." / "Nothing happens."

Games come from `data_dir` (a folder written by `envs.alfworld.generator`, or the real ALFWorld
data) or `$ALFWORLD_DATA` (`json_2.1.1/` under it when present), split `train` / `valid_seen` /
`valid_unseen`, collected like `AlfredTWEnv.collect_game_files` (a `traj_data.json` and a
`game.tw-pddl` marked solvable; `movable`/`Sliced` tasks skipped) and sorted, so every process sees
the same list. `reset(seed)` picks the game from the seed alone: the N envs of a GiGPO group given
one seed play the same game from the same first observation.

Rewards follow GiGPO / verl-agent: 10 when the task is done, else 0; `done` on success or after
`max_steps` (50) actions. info: won, admissible_actions (the engine's list without "help", as
verl-agent shows it), anchor (the raw observation text: verl-agent's GiGPO anchor), task_type (from
the game's folder name), gamefile, task (the goal sentence), action_valid (False when the engine
answered "Nothing happens."), truncated (step cap reached without success), step.
"""
from __future__ import annotations

import functools
import json
import os
import random
from collections import OrderedDict
from typing import Any, Iterable, Mapping

from envs.base import TextEnv, register_env
from envs.alfworld.generator import INSTALL_HINT, TASK_TYPES, import_alfworld

SPLITS = ("train", "valid_seen", "valid_unseen")
WIN_REWARD = 10.0
INVALID_FEEDBACK = "Nothing happens."
TASK_PREFIX = "Your task is to: "


def find_games(game_root: str, task_types: Iterable[str] = TASK_TYPES) -> list[str]:
    """Sorted `game.tw-pddl` paths under `game_root` that alfworld's loader would play (cached per
    process: the real train split is 3,553 files of ~70 KB that must be parsed for `solvable`)."""
    return list(_find_games(os.path.abspath(game_root), tuple(sorted(set(task_types)))))


@functools.lru_cache(maxsize=16)
def _find_games(game_root: str, task_types: tuple[str, ...]) -> tuple[str, ...]:
    wanted = set(task_types)
    games = []
    for root, _dirs, files in os.walk(game_root):
        if "traj_data.json" not in files or "game.tw-pddl" not in files:
            continue
        if "movable" in root or "Sliced" in root:  # AlfredTWEnv skips these too
            continue
        if task_type_of(root) not in wanted:
            continue
        path = os.path.join(root, "game.tw-pddl")
        with open(path) as f:
            if not json.load(f).get("solvable", False):
                continue
        games.append(path)
    return tuple(sorted(games))


def task_type_of(path: str) -> str:
    """The ALFWorld task type named by a game's folder ("<task_type>-<Obj>-...-<scene>/trial_*")."""
    for part in reversed(os.path.normpath(path).split(os.sep)):
        head = part.split("-", 1)[0]
        if head in TASK_TYPES:
            return head
    # Folders named otherwise: fall back to the trajectory file next to the game.
    traj = os.path.join(path if os.path.isdir(path) else os.path.dirname(path), "traj_data.json")
    if os.path.exists(traj):
        with open(traj) as f:
            return json.load(f).get("task_type", "unknown")
    return "unknown"


def resolve_game_root(data_dir: str | None, split: str) -> str:
    """`data_dir/split`, or `$ALFWORLD_DATA[/json_2.1.1]/split`; FileNotFoundError naming the path."""
    if data_dir is None:
        base = os.environ.get("ALFWORLD_DATA") or os.path.expanduser("~/.cache/alfworld")
        data_dir = os.path.join(base, "json_2.1.1") if os.path.isdir(os.path.join(base, "json_2.1.1")) else base
        source = "$ALFWORLD_DATA"
    else:
        source = "data_dir"
    root = os.path.join(data_dir, split)
    if not os.path.isdir(root):
        raise FileNotFoundError(
            f"ALFWorld split folder {root!r} (from {source}, split={split!r}) does not exist; generate "
            f"games with `python -m envs.alfworld.generator --out DIR --per-type N --split {split}` "
            f"and pass data_dir=DIR, or point ALFWORLD_DATA at the real ALFWorld data")
    return root


@register_env("alfworld")
class ALFWorldEnv(TextEnv):
    """One ALFWorld episode at a time on the real engine; see the module docstring."""

    def __init__(self, data_dir: str | None = None, split: str = "train", max_steps: int = 50,
                 task_types: Iterable[str] | None = None, selection: str = "random",
                 win_reward: float = WIN_REWARD, generate_per_type: int = 0, generate_seed: int = 0):
        # generate_per_type / generate_seed are for `prepare` (driver side); ignored here.
        data_dir = os.path.expanduser(data_dir) if data_dir else data_dir
        if not isinstance(max_steps, int) or max_steps < 1:
            raise ValueError(f"max_steps must be a positive int, got {max_steps!r}")
        if selection not in ("random", "sequential"):
            raise ValueError(f"selection must be 'random' or 'sequential', got {selection!r}")
        task_types = tuple(task_types) if task_types is not None else TASK_TYPES
        unknown = [t for t in task_types if t not in TASK_TYPES]
        if unknown:
            raise ValueError(f"task_types: unknown {unknown}; known: {list(TASK_TYPES)}")
        engine = import_alfworld()  # ImportError with the install command when the extra is missing
        self._textworld, self._demangler, self._infos = engine[3], engine[4], engine[5]
        self.game_root = resolve_game_root(data_dir, split)
        self.games = find_games(self.game_root, task_types)
        if not self.games:
            raise FileNotFoundError(f"no playable ALFWorld games (game.tw-pddl + traj_data.json, "
                                    f"task types {list(task_types)}) under {self.game_root!r}")
        self.split, self.max_steps, self.selection = split, max_steps, selection
        self.win_reward = float(win_reward)
        self._env = None                # the wrapped textworld PddlEnv, built on first reset
        self._loaded: str | None = None
        self._next = 0                  # game cursor for reset(seed=None)
        self.gamefile: str | None = None
        self._steps = 0
        self._done = True

    @classmethod
    def prepare(cls, data_dir: str | None = None, split: str = "train", generate_per_type: int = 0,
                generate_seed: int = 0, **_) -> None:
        """Driver-side, once before the env actors start: with `generate_per_type` > 0 and no games
        under `data_dir/split`, generate that many solvable games per task type there (so a recipe
        runs as written without the ALFWorld download)."""
        if not generate_per_type or data_dir is None:
            return
        root = os.path.join(os.path.expanduser(data_dir), split)
        if os.path.isdir(root) and find_games(root, TASK_TYPES):
            return
        from envs.alfworld.generator import generate
        generate(os.path.expanduser(data_dir), generate_per_type, seed=generate_seed, split=split)

    @property
    def num_games(self) -> int:
        return len(self.games)

    def game_for_seed(self, seed: int) -> str:
        """The game `reset(seed)` plays: a seeded draw ("random") or `seed % num_games` ("sequential")."""
        if self.selection == "sequential":
            return self.games[seed % len(self.games)]
        return self.games[random.Random(seed).randrange(len(self.games))]

    def _load(self, gamefile: str) -> None:
        """Make `gamefile` current. One engine per env, re-loaded on a game change: every PddlEnv
        dlopens its own ~34 MB copy of Fast Downward and never releases it."""
        if self._env is None:
            tw = self._textworld
            infos = tw.EnvInfos(won=True, admissible_commands=True, extras=["gamefile"])
            from textworld.envs.pddl.pddl import PddlEnv
            pddl = PddlEnv(infos)
            self._env = self._infos(self._demangler(shuffle=False)(pddl))
        if self._loaded != gamefile:
            self._loaded = None
            self._env.load(gamefile)
            self._loaded = gamefile

    def reset(self, seed: int | None = None) -> tuple[str, dict[str, Any]]:
        if seed is None:
            gamefile = self.games[self._next % len(self.games)]
            self._next += 1
        else:
            gamefile = self.game_for_seed(int(seed))
        self._load(gamefile)
        state = self._env.reset()
        self.gamefile, self._steps, self._done = gamefile, 0, False
        obs = state.feedback
        self._task = obs.split(TASK_PREFIX, 1)[1].strip() if TASK_PREFIX in obs else ""
        info = self._make_info(state, obs, action_valid=True, truncated=False)
        return obs, info

    def step(self, action_text: str) -> tuple[str, float, bool, dict[str, Any]]:
        """(observation, reward, done, info) after one command. Any str is a command: it is
        lower-cased and its whitespace collapsed (linear), then the engine answers; text that is not
        a command gets "Nothing happens." (info["action_valid"] False). TypeError for a non-str,
        RuntimeError before reset() or after the episode ended; nothing else is raised."""
        if self._env is None or self._done:
            raise RuntimeError("ALFWorldEnv.step called before reset() or after the episode ended")
        if not isinstance(action_text, str):
            raise TypeError(f"action_text must be str, got {type(action_text).__name__}")
        # ALFWorld commands are lower-case single-spaced ("go to cabinet 1"); verl-agent lower-cases too.
        command = " ".join(action_text.lower().split())
        state, _score, _ = self._env.step(command)
        self._steps += 1
        obs = state.feedback
        won = bool(state["won"])
        truncated = not won and self._steps >= self.max_steps
        self._done = won or truncated
        info = self._make_info(state, obs, action_valid=obs != INVALID_FEEDBACK, truncated=truncated)
        return obs, (self.win_reward if won else 0.0), self._done, info

    def _make_info(self, state, obs: str, action_valid: bool, truncated: bool) -> dict[str, Any]:
        return {
            "won": bool(state["won"]),
            "admissible_actions": [c for c in state["admissible_commands"] if c != "help"],
            "anchor": obs,
            "task_type": task_type_of(self.gamefile),
            "gamefile": self.gamefile,
            "task": self._task,
            "action_valid": action_valid,
            "truncated": truncated,
            "step": self._steps,
        }

    def walkthrough(self) -> list[str] | None:
        """The current game's stored expert plan (the generator's planner plan), or None."""
        if self.gamefile is None:
            raise RuntimeError("walkthrough() needs a game: call reset() first")
        with open(self.gamefile) as f:
            return json.load(f).get("walkthrough")

    def close(self) -> None:
        if self._env is not None:
            self._env.close()
        self._env, self._loaded, self._done = None, None, True


def success_by_task_type(results: Iterable[Mapping[str, Any]]) -> dict[str, dict[str, float]]:
    """Per-task-type success counts for `hyflow eval`.

    `results`: one mapping per episode with `task_type` (str) and `won` (bool), e.g. the final
    step's info. Returns {task_type: {"episodes", "successes", "success_rate"}} in ALFWorld's task
    order (other types after, sorted), plus "all" over every episode.
    """
    counts: dict[str, list[int]] = {}
    for i, r in enumerate(results):
        for key in ("task_type", "won"):
            if key not in r:
                raise KeyError(f"results[{i}] has no {key!r} field (keys: {sorted(r)})")
        c = counts.setdefault(str(r["task_type"]), [0, 0])
        c[0] += 1
        c[1] += int(bool(r["won"]))
    order = [t for t in TASK_TYPES if t in counts] + sorted(t for t in counts if t not in TASK_TYPES)
    out: dict[str, dict[str, float]] = OrderedDict()
    for t in order + ["all"]:
        n, k = (counts[t] if t != "all" else
                [sum(c[0] for c in counts.values()), sum(c[1] for c in counts.values())])
        out[t] = {"episodes": n, "successes": k, "success_rate": (k / n) if n else 0.0}
    return out


__all__ = ["ALFWorldEnv", "success_by_task_type", "find_games", "task_type_of", "SPLITS",
           "INSTALL_HINT", "WIN_REWARD"]
