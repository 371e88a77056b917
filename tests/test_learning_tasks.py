"""The learning benches' toy env, by hand (tests/learning_tasks.py)."""
from __future__ import annotations

import pytest

from tests.learning_tasks import CodeCorridor


def test_code_corridor_moves_only_on_its_cells_digit_alone():
    env = CodeCorridor("395")
    assert env.reset()[0] == "cell 0 of 3"
    walk = [("3911", 0), ("3000", 1), ("1234", 1), ("99", 2), ("5 and 3", 2), ("x5", 3)]
    for action, pos in walk:
        obs, reward, done, info = env.step(action)
        assert obs == f"cell {pos} of 3" and info["anchor"] == obs
        assert (reward, done) == ((1.0, True) if pos == 3 else (0.0, False))
    with pytest.raises(ValueError, match="distinct digits"):
        CodeCorridor("33")
