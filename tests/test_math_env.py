"""The math task: answer extraction, verification, the problem generator, reward plumbing."""
from __future__ import annotations

import json
import logging
import random
import re

import pytest

import envs.math as m
from envs.math import (MathProblem, build_prompt, compute_score, extract_answer, generate_problems,
                       verify)
from envs.rewards import load_reward_fn, score_batch

# ----------------------------------------------------------------------------- extraction


@pytest.mark.parametrize("text,expected", [
    ("The answer is 72.", "72"),
    ("so 5 + 3 = 8\n#### 8", "8"),
    ("#### 12 but later I think 13", "12"),                 # '####' beats a later number
    ("#### 1\nwait\n#### 2", "2"),                          # the last '####'
    ("\\boxed{5} and then 9", "5"),                         # boxed beats the last number
    ("\\boxed{5} ... #### 6 ... 7", "6"),                   # '####' beats boxed
    ("\\boxed{1} then \\boxed{2} then 3", "2"),             # the last boxed
    ("\\boxed{\\frac{7}{2}}", "3.5"),
    ("\\boxed{1{,}000}", "1000"),
    ("\\boxed{x} so 4", "4"),                               # a boxed without a number is skipped
    ("#### 1,000", "1000"),
    ("It costs $1,234,567.50 in total", "1234567.5"),
    ("#### $18", "18"),
    ("The result is -2", "-2"),
    ("#### -15", "-15"),
    ("5-2 is 3", "3"),
    ("x-2", "2"),                                           # a hyphen after a word is no minus
    ("3.50", "3.5"),
    ("7.0", "7"),
    ("#### 72.00", "72"),
    ("about 0.25 of it", "0.25"),
    ("the ratio is 7/2", "3.5"),
    ("one third is 1/3", "1/3"),
    ("split 1, 2, 3", "3"),                                 # a list, not thousands separators
    ("ends with 42.", "42"),
    ("#### 5/0", None),                                     # a division by zero is not an answer
    ("#### 7\n#### 5/0", None),                             # ... and no fallback to an earlier one
    ("\\boxed{\\frac{3}{0}} and 4", None),                    # the deciding boxed is not a number
    ("so 4, then 10/0", None),                              # the last number decides
    ("#### " + "1" * 101, None),                            # over MAX_NUMBER_CHARS: not a number
    ("#### " + "9" * 100, "9" * 100),                       # at the cap: still a number
    ("\\boxed{8} then \\boxed{" + "1 " * 201 + "}", "8"),    # over MAX_BOXED_CHARS: skipped
    ("\\boxed{\\boxed{6} x}", "6"),                        # nested: the last opener decides
    ("#### " + " " * 50 + "$ 12", "12"),
    ("H2O", None),
    ("no numbers here", None),
    ("", None),
    ("#### ", None),
])
def test_extract_answer(text, expected):
    assert extract_answer(text) == expected


def test_extract_answer_non_string_is_none():
    assert extract_answer(None) is None  # type: ignore[arg-type]


@pytest.mark.parametrize("response,truth,ok", [
    ("#### 72", "72", True),
    ("#### 72.0", "72", True),
    ("#### 72", "72.00", True),
    ("#### 3.5", "7/2", True),
    ("\\boxed{7/2}", "3.5", True),
    ("#### 1,000", "1000", True),
    ("I get 18 dollars", "18", True),
    ("#### 71", "72", False),
    ("#### -72", "72", False),
    ("no answer", "72", False),
    ("#### 72 ... no wait 73", "73", False),                # strict: '####' decides
    ("#### 0.3333", "1/3", False),                          # exact, no tolerance
])
def test_verify(response, truth, ok):
    assert verify(response, truth) is ok


def test_verify_lenient_accepts_any_candidate():
    resp = "#### 73 hmm, the boxed one: \\boxed{74}, finally 72"
    assert not verify(resp, "72")
    assert verify(resp, "72", strict=False)
    assert verify(resp, "74", strict=False)
    assert not verify(resp, "75", strict=False)


def test_verify_rejects_bad_ground_truth_and_non_string_response():
    with pytest.raises(ValueError, match="ground_truth is not a number: 'seven'"):
        verify("#### 7", "seven")
    assert verify(None, "7") is False  # type: ignore[arg-type]


def test_compute_score_and_prompt():
    assert compute_score("x", "so #### 9", "9") == 1.0
    assert compute_score("x", "so #### 8", "9", {"a": 1}) == 0.0
    p = MathProblem("What is 2+2?", "4", 1, "t")
    msgs = build_prompt(p, "End with '#### <number>'.", "Be brief.")
    assert msgs == [{"role": "system", "content": "Be brief."},
                    {"role": "user", "content": "What is 2+2?\nEnd with '#### <number>'."}]
    assert build_prompt(p, None, None) == [{"role": "user", "content": "What is 2+2?"}]
    # the defaults: the template's own system message, the question then the instruction
    assert build_prompt(p) == [{"role": "user", "content": "What is 2+2?\n" + m.DEFAULT_INSTRUCTION}]


def test_canonical_number():
    assert [m.canonical_number(s) for s in ["1,000", "$5", "3.50", "-0.50", "7.0", "2/4", "10/3"]] == \
        ["1000", "5", "3.5", "-0.5", "7", "0.5", "10/3"]
    # terminating decimals: digits = max(power of 2, power of 5) in the denominator
    assert [m.canonical_number(s) for s in ["1/8", "-3/40", "7/625", "1/1024", "0.000100"]] == \
        ["0.125", "-0.075", "0.0112", "0.0009765625", "0.0001"]
    with pytest.raises(ValueError, match="not a number: 'abc'"):
        m.canonical_number("abc")

# ----------------------------------------------------------------------------- generator


def test_generator_deterministic_unique_and_levelled():
    a = generate_problems(300, levels=(1, 2, 3), seed=7)
    assert a == generate_problems(300, levels=(1, 2, 3), seed=7)
    assert a != generate_problems(300, levels=(1, 2, 3), seed=8)
    assert len({p.question for p in a}) == 300
    assert [p.level for p in a[:6]] == [1, 2, 3, 1, 2, 3]
    assert all(p.data_source == m.SYNTHETIC_SOURCE and int(p.answer) >= 0 for p in a)
    assert all(len(m.TEMPLATES[lv]) >= 10 for lv in (1, 2, 3))
    # every template of a level shows up in a few hundred draws (names differ, text differs)
    assert len({p.question.split()[-3] for p in a}) > 10


def test_generator_bad_arguments():
    with pytest.raises(ValueError, match="levels must be"):
        generate_problems(3, levels=(4,))
    with pytest.raises(ValueError, match="n must be >= 0"):
        generate_problems(-1)
    assert generate_problems(0) == []


def _ints(q: str) -> list[int]:
    return [int(x) for x in re.findall(r"\d+", q)]


# Independent answers, recomputed from the numbers in the question text.
INDEPENDENT = {
    m.l1_buy_more: lambda a, b: a + b,
    m.l1_give_away: lambda a, b: a - b,
    m.l1_bags: lambda a, b: a * b,
    m.l1_share: lambda a, b: a // b,
    m.l1_younger: lambda a, b: a - b,
    m.l2_times_as_many: lambda a, b: a * (1 + b),
    m.l2_money_left: lambda a, b, p: a - b * p,
    m.l2_bus: lambda a, b, k: a - b + k,
    m.l3_legs: lambda a, b, four, two: a * four + b * two,
    m.l3_two_purchases: lambda a, b, p, d, q: a - b * p - d * q,
    m.l3_tickets_change: lambda a, b, ad, ch, pay: pay - a * ad - b * ch,
    m.l3_boxes_share: lambda a, b, k, d: (a * b - k) // d,
}


@pytest.mark.parametrize("template", list(INDEPENDENT), ids=lambda t: t.__name__)
def test_template_answers_match_question(template):
    r = random.Random(3)
    for _ in range(50):
        q, ans = template(m._Ctx(r))
        assert ans == INDEPENDENT[template](*_ints(q)), q


def test_hand_checked_problems():
    # Read by hand from generate_problems(3, levels=(1, 2, 3), seed=1) and solved on paper.
    ps = generate_problems(3, levels=(1, 2, 3), seed=1)
    assert [(p.question, p.answer, p.level) for p in ps] == [
        ("Liam has 3 bags with 2 stickers in each bag. How many stickers does Liam have in total?",
         "6", 1),                                                            # 3 * 2
        ("Lily buys 5 packs of crayons with 5 crayons in each pack. She loses 24 of them. "
         "How many crayons does Lily have now?", "1", 2),                    # 5 * 5 - 24
        ("Ava has 49 dollars. She buys 6 notebooks at 2 dollars each and 5 apples at 2 dollars "
         "each. How many dollars does Ava have left?", "27", 3),             # 49 - 12 - 10
    ]


# ----------------------------------------------------------------------------- rewards


def test_load_reward_fn_module_and_file(tmp_path):
    assert load_reward_fn("envs.math:compute_score") is compute_score
    f = tmp_path / "my_reward.py"
    f.write_text("def score(data_source, solution_str, ground_truth, extra_info=None):\n"
                 "    return {'score': float(len(solution_str)), 'len': len(solution_str)}\n"
                 "NOT_FN = 3\n"
                 "def two_args(a, b):\n    return 0.0\n")
    fn = load_reward_fn(f"{f}:score")
    assert fn(data_source="d", solution_str="abc", ground_truth="1") == {"score": 3.0, "len": 3}
    with pytest.raises(ValueError, match="has no attribute 'nope'"):
        load_reward_fn(f"{f}:nope")
    with pytest.raises(ValueError, match="'NOT_FN' is not callable"):
        load_reward_fn(f"{f}:NOT_FN")
    with pytest.raises(ValueError, match="'two_args' does not accept the keywords"):
        load_reward_fn(f"{f}:two_args")


def test_load_reward_fn_errors(tmp_path):
    with pytest.raises(ValueError, match="'no_colon': expected 'module:function'"):
        load_reward_fn("no_colon")
    with pytest.raises(ValueError, match="cannot import module 'no_such_mod_xyz'"):
        load_reward_fn("no_such_mod_xyz:f")
    with pytest.raises(ValueError, match="does not exist"):
        load_reward_fn(f"{tmp_path}/missing.py:f")
    broken = tmp_path / "broken.py"
    broken.write_text("raise RuntimeError('boom at import')\n")
    with pytest.raises(ValueError, match="importing .*broken.py failed: RuntimeError: boom at import"):
        load_reward_fn(f"{broken}:f")


def test_score_batch_crashes_and_dicts(caplog):
    def fn(data_source, solution_str, ground_truth, extra_info=None):
        if solution_str == "crash":
            raise ZeroDivisionError("bad row")
        if solution_str == "nan":
            return float("nan")
        if solution_str == "str":
            return "1.0"
        if solution_str == "nokey":
            return {"acc": 1}
        if solution_str == "dict":
            return {"score": 0.5, "acc": 1, "fmt": extra_info["k"]}
        return compute_score(data_source, solution_str, ground_truth)

    sols = ["#### 3", "crash", "dict", "nan", "#### 4", "str", "nokey", "dict"]
    with caplog.at_level(logging.WARNING, logger="envs.rewards"):
        res = score_batch(fn, ["d"] * 8, sols, ["3"] * 8, [{"k": i} for i in range(8)], crash_penalty=-1.0)
    scores, metrics, n_crashed = res
    assert scores == [1.0, -1.0, 0.5, -1.0, 0.0, -1.0, -1.0, 0.5]
    assert n_crashed == 4
    assert metrics == {"acc": [None, None, 1, None, None, None, None, 1],
                       "fmt": [None, None, 2, None, None, None, None, 7]}
    assert res.first_error == "row 1: ZeroDivisionError: bad row"
    assert "failed on 4 of 8 rows" in caplog.text and "bad row" in caplog.text


def test_score_batch_clean_and_length_mismatch():
    scores, metrics, n = score_batch(compute_score, ["d", "d"], ["#### 1", "\\boxed{2}"], ["1", "3"], None, 0.0)
    assert (scores, metrics, n) == ([1.0, 0.0], {}, 0)
    # numpy scalars and bools count as numbers
    import numpy as np
    scores, _, n = score_batch(lambda **kw: np.float32(0.25) if kw["solution_str"] else True,
                               ["d", "d"], ["x", ""], ["1", "1"], None, 0.0)
    assert (scores, n) == ([0.25, 1.0], 0)
    with pytest.raises(ValueError, match="ground_truths has 1 rows but solutions has 2"):
        score_batch(compute_score, ["d", "d"], ["a", "b"], ["1"], None, 0.0)
