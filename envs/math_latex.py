"""A reward for LaTeX / MATH-style answers, through HF's `math-verify` (a well-kept parser and
sympy-based checker: fractions, radicals, intervals, sets, units, \\boxed{} answers).

    reward:
      function: envs.math_latex:compute_score    # verl signature; ground_truth e.g. "\\frac{1}{2}"

The response's tail (the last `MAX_CHARS` characters: where a final answer is) is parsed, so a
call is bounded in input size; math-verify's own timeouts (signal-based) apply when called on a
main thread, and the reward's per-call time limit (`reward.timeout_s`) applies everywhere. Returns
1.0 or 0.0, never raises (a malformed answer scores 0).
"""
from __future__ import annotations

import threading

MAX_CHARS = 2000


def compute_score(data_source, solution_str, ground_truth, extra_info=None) -> float:
    from math_verify import parse, verify

    if not isinstance(solution_str, str) or ground_truth is None:
        return 0.0
    main = threading.current_thread() is threading.main_thread()
    limit = {} if main else {"parsing_timeout": None}
    gold_text = str(ground_truth)
    if "$" not in gold_text and "\\boxed" not in gold_text:
        gold_text = f"${gold_text}$"
    try:
        gold = parse(gold_text, **limit)
        answer = parse(solution_str[-MAX_CHARS:], **limit)
        if not gold or not answer:
            return 0.0
        return 1.0 if verify(gold, answer, **({} if main else {"timeout_seconds": None})) else 0.0
    except Exception:  # noqa: BLE001 - a malformed answer (or a checker error) scores 0
        return 0.0
