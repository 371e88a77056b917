"""Small text envs for the agent-loop tests (imported by the env actors)."""
from __future__ import annotations

import time

from envs.base import TextEnv


class CounterEnv(TextEnv):
    """Reach `target` by actions 'inc'; the target comes from the seed. 'crash' raises, 'hang' sleeps."""

    def reset(self, seed=None):
        self.target, self.value = 2 + (seed or 0) % 3, 0
        return f"value 0, target {self.target}", self._info(False)

    def step(self, action_text):
        if action_text == "crash":
            raise RuntimeError("counter env exploded")
        if action_text == "hang":
            time.sleep(30)
        if action_text == "inc":
            self.value += 1
        won = self.value == self.target
        return f"value {self.value}, target {self.target}", (10.0 if won else 0.0), won, self._info(won)

    def _info(self, won):
        return {"won": won, "admissible_actions": ["inc", "wait"], "anchor": f"value {self.value}, target {self.target}",
                "task_type": f"target{self.target}", "task": "count up to the target"}
