"""WebShop (Yao et al. 2022) text mode, offline: the same pages, actions and purchase reward as
`WebAgentTextEnv(observation_mode="text")`, over a generated catalog or the real data files.

    env = make_env("webshop", num_products=300, catalog_seed=0, split="train")
    obs, info = env.reset(seed=7)        # "WebShop [SEP] Instruction: [SEP] i need ... [SEP] Search"
    obs, r, done, info = env.step("search[long lasting deodorant]")
    obs, r, done, info = env.step("click[b0...]")  # ... "click[buy now]" ends the episode

Goals: `catalog.goals` (shuffled with the catalog seed); `split="test"` is goals [0, num_test_goals),
"train" the rest, "all" everything (verl-agent: val 0-499, train 500+). `reset(seed)` picks a goal
of the split with `random.Random(seed)`, or `reset(goal_idx=i)` takes goal i of the split, so
every member of a GiGPO group gets the same goal and the same pages.

Rewards: `reward_mode="score"` gives the WebShop score (0..1) at purchase; "gigpo" gives 10 if won
else 0 (verl-agent's `WebshopWorker`). Either way `info["task_score"]` is the raw score and
`info["won"]` is done and score == 1.0. `info["anchor"]` is the page with the instruction stripped,
formatted as verl-agent's `WebshopEnvironmentManager.format_obs` ("'part' [SEP] 'part' ..."), which
is also what its prompts show. As upstream, choosing an option does not change the page text, so
item pages before and after an option click share an anchor. Steps after the end are no-ops
(done, reward 0); `max_steps` ends an episode early with `info["truncated"]`.
`data_dir` loads the real files (`load_webshop_dir`; `human_goals=True` for items_human_ins.json).
See engine.py and reward.py for the deliberate deviations from upstream.
"""
from __future__ import annotations

import random
from pathlib import Path
from typing import Any

from ..base import TextEnv, register_env
from .catalog import Catalog, generate_catalog, load_webshop_dir, load_webshop_files
from .engine import SEP, SearchEngine, WebShopEngine, parse_action
from .reward import get_reward

__all__ = ["WebShopEnv", "Catalog", "generate_catalog", "load_webshop_files", "load_webshop_dir",
           "get_reward", "parse_action", "strip_instruction", "admissible_actions"]

REWARD_MODES = ("score", "gigpo")
SPLITS = ("all", "train", "test")


def strip_instruction(observation: str, instruction: str) -> str:
    """verl-agent `format_obs`: the parts after the instruction, each quoted; the whole text when
    the instruction is not on the page (the done page)."""
    parts = observation.split(SEP)
    try:
        i = parts.index(instruction)
    except ValueError:
        return observation
    return SEP.join(f"'{p}'" for p in parts[i + 1:])


def admissible_actions(available: dict[str, Any]) -> list[str]:
    """verl-agent `format_avail_actions`: "search[<your query>]" when there is a search bar, then
    "click[x]" for every clickable."""
    actions = ["search[<your query>]"] if available["has_search_bar"] else []
    return actions + [f"click[{c}]" for c in available["clickables"]]


@register_env("webshop")
class WebShopEnv(TextEnv):
    """WebShop text env; see the module docstring."""

    def __init__(self, catalog: Catalog | None = None, *, data_dir: str | Path | None = None,
                 human_goals: bool = False, num_products: int = 300, catalog_seed: int = 0,
                 split: str = "all",
                 num_test_goals: int = 500, reward_mode: str = "score",
                 max_steps: int | None = None, cache_dir: str | Path | None = None):
        if reward_mode not in REWARD_MODES:
            raise ValueError(f"reward_mode must be one of {REWARD_MODES}, got {reward_mode!r}")
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        if max_steps is not None and max_steps < 1:
            raise ValueError(f"max_steps must be >= 1 or None, got {max_steps}")
        if catalog is None:
            catalog = (load_webshop_dir(data_dir, human=human_goals) if data_dir is not None
                       else generate_catalog(num_products, catalog_seed))
        self.catalog = catalog
        self.search_engine = SearchEngine.for_catalog(catalog, cache_dir)
        goals = catalog.goals
        if split != "all":
            if len(goals) <= num_test_goals:
                raise ValueError(f"split={split!r} needs more than num_test_goals="
                                 f"{num_test_goals} goals; the catalog has {len(goals)}")
            goals = goals[:num_test_goals] if split == "test" else goals[num_test_goals:]
        if not goals:
            raise ValueError("the catalog has no goals (no product has an instruction)")
        self.goals = goals
        self.reward_mode, self.max_steps = reward_mode, max_steps
        self._engine: WebShopEngine | None = None
        self._steps = 0
        self._done = False
        self._rng = random.Random()

    # ------------------------------------------------------------------ TextEnv
    def reset(self, seed: int | None = None, *, goal_idx: int | None = None
              ) -> tuple[str, dict[str, Any]]:
        if goal_idx is None:
            goal_idx = (random.Random(seed) if seed is not None else self._rng).randrange(
                len(self.goals))
        if not 0 <= goal_idx < len(self.goals):
            raise IndexError(f"goal_idx {goal_idx} out of range for {len(self.goals)} goals")
        self.goal_idx = goal_idx
        self._engine = WebShopEngine(self.catalog, self.search_engine, self.goals[goal_idx])
        self._steps, self._done, self._won, self._score = 0, False, False, 0.0
        return self._engine.observation, self._info(won=False, score=0.0, valid=True)

    def step(self, action_text: str) -> tuple[str, float, bool, dict[str, Any]]:
        if self._engine is None:
            raise RuntimeError("call reset() before step()")
        if not isinstance(action_text, str):
            raise TypeError(f"action_text must be a str, got {type(action_text).__name__}")
        if self._done:
            return self._engine.observation, 0.0, True, self._info(
                won=self._won, score=self._score, valid=False)
        score, done, valid = self._engine.act(action_text)
        self._steps += 1
        truncated = not done and self.max_steps is not None and self._steps >= self.max_steps
        self._score = float(score) if score is not None else 0.0
        self._won = bool(done and self._score == 1.0)
        self._done = done or truncated
        if not done:
            reward = 0.0
        elif self.reward_mode == "gigpo":
            reward = 10.0 if self._won else 0.0
        else:
            reward = self._score
        info = self._info(won=self._won, score=self._score, valid=valid)
        if truncated:
            info["truncated"] = True
        return self._engine.observation, reward, self._done, info

    # ------------------------------------------------------------------ helpers
    def get_available_actions(self) -> dict[str, Any]:
        """upstream `get_available_actions()`: {"has_search_bar": bool, "clickables": [...]}."""
        if self._engine is None:
            raise RuntimeError("call reset() first")
        return self._engine.available_actions()

    @property
    def instruction(self) -> str:
        return self._engine.instruction

    @property
    def goal(self) -> dict[str, Any]:
        return self._engine.goal

    def _info(self, *, won: bool, score: float, valid: bool) -> dict[str, Any]:
        e = self._engine
        available = e.available_actions()
        info = {"won": won, "task_score": score, "action_valid": valid,
                "admissible_actions": admissible_actions(available),
                "available_actions": available,
                "anchor": strip_instruction(e.observation, e.instruction),
                "task_type": e.goal["category"], "instruction": e.instruction,
                "goal_idx": self.goal_idx, "steps": self._steps}
        if e.state.page == "done":
            info["reward_info"] = dict(e.reward_info)
        return info
