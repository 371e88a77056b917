"""The math-verify reward on MATH-style answers (values checked by hand)."""
from __future__ import annotations

import threading
import time

import pytest

from envs.math_latex import compute_score

pytest.importorskip("math_verify")


@pytest.mark.parametrize("response,truth,expected", [
    ("so the answer is $\\boxed{\\frac{1}{2}}$", "\\frac{1}{2}", 1.0),
    ("so the answer is $\\boxed{0.5}$", "\\frac{1}{2}", 1.0),          # equal values, other forms
    ("$\\boxed{\\sqrt{8}}$", "2\\sqrt{2}", 1.0),
    ("$\\boxed{(1, 3]}$", "(1,3]", 1.0),
    ("$\\boxed{\\frac{1}{3}}$", "\\frac{1}{2}", 0.0),
    ("I don't know", "\\frac{1}{2}", 0.0),
    ("$\\boxed{\\frac{1}{2}$", "\\frac{1}{2}", 0.0),                    # unclosed: not an answer
    (None, "1", 0.0),
])
def test_math_verify_reward(response, truth, expected):
    assert compute_score("math", response, truth) == expected


def test_off_the_main_thread_and_bounded_input():
    out = {}
    worker = threading.Thread(target=lambda: out.update(r=compute_score("math", "x" * 100_000 + "$\\boxed{3}$", "3")))
    t0 = time.monotonic()
    worker.start()
    worker.join(30)
    assert out["r"] == 1.0 and time.monotonic() - t0 < 10
