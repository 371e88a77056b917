"""The FoR reasoning tasks: Game24, BlocksWorld, PrOntoQA-style. Generators, exact verifiers
(hand-written right and wrong solutions, hostile text), partial energies on hand-computed states."""
from __future__ import annotations

import builtins
import hashlib
import itertools
import math
import time
from pathlib import Path

import pytest

from envs import blocksworld as bw
from envs import game24 as g24
from envs import prontoqa as pq

DATA = Path(g24.__file__).resolve().parent / "data"


# ============================================================================ Game24

def test_game24_data_is_the_tot_csv_with_its_license():
    assert hashlib.sha256((DATA / "24.csv").read_bytes()).hexdigest() == \
        "b9f12b3e36d987a3c714c4cef17d89a137d7c59da26532fcfb93b4821d8111b5"
    lic = (DATA / "LICENSE-tree-of-thoughts").read_text()
    assert "MIT License" in lic and "Copyright (c) 2023 Shunyu Yao" in lic


def test_game24_splits():
    allp = g24.load_puzzles("all")
    assert len(allp) == 1362
    assert allp[0] == g24.Puzzle((1, 1, 4, 6), 1) and allp[-1] == g24.Puzzle((2, 3, 5, 12), 1362)
    test = g24.load_puzzles("test")
    assert len(test) == 100 and [p.rank for p in test] == list(range(901, 1001))
    assert test[0].numbers == (4, 5, 6, 10) and test[0].text == "4 5 6 10"
    val, train = g24.load_puzzles("val"), g24.load_puzzles("train")
    assert len(val) == 20 and len(train) == 1362 - 120
    assert sorted(p.rank for p in train + val + test) == list(range(1, 1363))
    with pytest.raises(ValueError, match="split must be one of"):
        g24.load_puzzles("dev")


def test_game24_solvable_multisets_of_1_to_13_are_exactly_the_csv():
    # Independent ground truth: 4nums.com lists every solvable 4-multiset of 1..13 (1,362 of 1,820).
    csv_set = {p.numbers for p in g24.load_puzzles()}
    mine = {c for c in itertools.combinations_with_replacement(range(1, 14), 4) if g24.solvable(c)}
    assert mine == csv_set
    for known in ["1 1 1 1", "1 1 1 2", "13 13 13 13", (1, 1, 2, 2)]:
        assert not g24.solvable(known) and g24.solve(known) == [] and g24.gold_steps(known) is None


def test_game24_solver_on_a_sample_and_solutions_verify():
    sample = g24.load_puzzles()[::50] + g24.load_puzzles("test")[:5]
    for p in sample:
        sols = g24.solve(p.numbers)
        assert sols and len(sols) == len(set(sols)), p
        assert all(g24.check_solution(p.numbers, s) for s in sols), p
        assert g24.check_steps(p.numbers, g24.gold_steps(p.numbers)), p
    assert "6 / (1 - (3 / 4))" in g24.solve("1 3 4 6")  # the only way: 6 / (1 - 3/4)
    assert g24.solve("1 3 4 6") == ["6 / (1 - (3 / 4))"]


@pytest.mark.parametrize("numbers,expr", [
    ("4 9 10 13", "(10 - 4) * (13 - 9)"),
    ("4 9 10 13", "(10 − 4) × (13 − 9)"),
    ("4 9 10 13", "Answer: (10-4)x(13-9) = 24"),
    ((1, 3, 4, 6), "6 / (1 - 3 / 4)"),
    ("1 3 4 6", "6 ÷ (1 − 3 ÷ 4)"),
    ("1 1 4 6", "4 * 6 * 1 * 1"),
    ("1 1 4 6", "(6 + 1 - 1) * 4"),
    ("3 3 8 8", "8 / (3 - 8 / 3)"),
])
def test_game24_correct_expressions(numbers, expr):
    assert g24.check_solution(numbers, expr)


@pytest.mark.parametrize("numbers,expr", [
    ("4 9 10 13", "(10 + 4) * (13 - 9)"),          # 56
    ("4 9 10 13", "(10 - 4) * (13 - 9) * 1"),      # an extra number
    ("1 1 4 6", "4 * 6"),                          # numbers missing
    ("1 1 4 6", "4 * 6 * 1 * 1 * 1"),              # a number used twice
    ("4 9 10 13", "(10 - 4) * (13 - 9) = 25"),     # wrong claimed value
    ("1 1 4 6", "(6 - 1 - 1) * 4 + 0"),            # a number not in the puzzle
    ("1 1 1 1", "(1 - 1) / (1 - 1)"),              # division by zero
    ("1 1 4 6", "-(1 - 1) + 4 * 6"),               # unary minus is not an operation of the game
    ("1 1 4 6", "4.0 * 6 * 1 * 1"),                # decimals are not puzzle numbers
    ("1 1 4 6", "4 * 6 * 1 // 1"),
    ("1 1 4 6", "4 * 6 * 1 % 1"),
    ("1 1 4 6", ""),
])
def test_game24_incorrect_expressions(numbers, expr):
    assert not g24.check_solution(numbers, expr)


def test_game24_hostile_text_is_rejected_without_running_anything(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(builtins, "eval", lambda *a, **k: calls.append(("eval", a)))
    monkeypatch.setattr(builtins, "exec", lambda *a, **k: calls.append(("exec", a)))
    marker = tmp_path / "PWNED"
    hostile = [
        f"__import__('pathlib').Path({str(marker)!r}).touch()",
        f"open({str(marker)!r}, 'w').write('x')",
        "globals().__setitem__('PWNED_GLOBAL', 1)",
        "exec('import os')", "eval('1+1')", "(lambda: 24)()", "().__class__.__bases__[0]",
        "[24][0]", "{24}", "'24'", "24 if True else 0", "x", "X * x",
        "9**9**9", "9 ** 9 ** 9 ** 9 * 1 * 1 * 4", "2**10000",
        "1+" * 50_000 + "1", "(" * 99 + "24" + ")" * 99, "(" * 300 + "24" + ")" * 300,
        "\x00", "٢٤", "２４", "\udcff", "24\n__import__('os')", "24; import os", "0x18",
        None, 24, 24.0, b"24", ["24"], object(),
    ]
    t0 = time.perf_counter()
    for h in hostile:
        assert g24.check_solution("1 1 4 6", h) is False, repr(h)[:60]
    assert time.perf_counter() - t0 < 2.0  # nothing like 9**9**9 was computed
    assert calls == []
    assert not marker.exists()
    assert "PWNED_GLOBAL" not in globals() and "PWNED_GLOBAL" not in vars(g24)
    # Hostile *numbers* argument: False, not an exception.
    assert g24.check_solution(None, "4 * 6 * 1 * 1") is False
    assert g24.check_solution("a b c", "4 * 6 * 1 * 1") is False


def test_game24_steps():
    s1 = g24.check_step("4 9 10 13", "10 - 4 = 6 (left: 6 9 13)")
    assert s1 == (6, 9, 13)
    s2 = g24.check_step(s1, "13 - 9 = 4 (left: 4 6)")
    assert s2 == (4, 6)
    assert g24.check_step(s2, "4 × 6 = 24 (left: 24)") == (24,)
    # fractions and decimals are exact
    from fractions import Fraction as F
    assert g24.check_step("3 3 8 8", "8 / 3 = 8/3 (left: 3 8 8/3)") == (F(8, 3), 3, 8)
    assert g24.check_step((3, F(8, 3), 8), "3 - 8/3 = 1/3 (left: 1/3 8)") == (F(1, 3), 8)
    assert g24.check_step((F(1, 3), 8), "8 / 1/3 = 24 (left: 24)") == (24,)
    assert g24.check_step("1 2", "1 / 2 = 0.5 (left: 0.5)") == (F(1, 2),)
    bad = [
        ("4 9 10 13", "10 - 4 = 7 (left: 7 9 13)"),      # arithmetic
        ("4 9 10 13", "10 - 5 = 5 (left: 4 5 9 13)"),    # 5 not available
        ("4 9 10 13", "10 - 4 = 6 (left: 6 9)"),         # bookkeeping drops 13
        ("4 9 10 13", "10 - 4 = 6 (left: 6 9 13 4)"),    # bookkeeping keeps 4
        ("4 6 9", "4 + 4 = 8 (left: 8 6 9)"),            # 4 used twice
        ("0 4 9", "4 / 0 = 0 (left: 0 9)"),              # division by zero
        ("1 3", "1 / 3 = 0.333 (left: 0.333)"),          # rounded, not exact
        ("4 9 10 13", "10 - 4 = 6"),                     # no "left"
        ("4 9 10 13", None), ("4 9 10 13", "__import__('os')"),
    ]
    for rem, step in bad:
        assert g24.check_step(rem, step) is None, step
    assert g24.check_steps("4 9 10 13", ["10 - 4 = 6 (left: 6 9 13)", "13 - 9 = 4 (left: 4 6)",
                                         "4 * 6 = 24 (left: 24)"])
    assert not g24.check_steps("4 9 10 13", "10 - 4 = 6 (left: 6 9 13)\n13 - 9 = 4 (left: 4 6)")
    assert not g24.check_steps("4 9 10 13", "10 - 4 = 6 (left: 6 9 13)\n6 + 9 = 15 (left: 13 15)\n"
                                            "13 + 15 = 28 (left: 28)")
    assert not g24.check_steps("4 9 10 13", ["10 - 4 = 6 (left: 6 9 13)", None, "13 - 9 = 4 (left: 4 6)",
                                             "4 * 6 = 24 (left: 24)"])
    assert g24.format_step(8, "/", F(1, 3), (24,)) == "8 / 1/3 = 24 (left: 24)"


def test_game24_partial_energy_and_rewards():
    solvable_e, dead_e = -math.log(1.001), -math.log(0.001)  # eps = 1e-3
    assert g24.partial_energy([4, 6]) == pytest.approx(solvable_e, abs=1e-12)
    assert g24.partial_energy([4, 7]) == pytest.approx(dead_e, abs=1e-12)  # 4+7, 4*7, 7-4, ... != 24
    assert g24.partial_energy("24") == pytest.approx(solvable_e, abs=1e-12)
    assert g24.partial_energy("23") == pytest.approx(dead_e, abs=1e-12)
    assert g24.partial_energy("1 1 1 1") == pytest.approx(6.907755278982137, abs=1e-12)
    assert g24.partial_energy("1 3 4 6", eps=0.5) == pytest.approx(-math.log(1.5))
    assert g24.for_reward([24]) == 100.0 and g24.for_reward([23]) == 0.001 and g24.for_reward([4, 6]) == 0.001
    assert g24.compute_score("game24", "Let me think.\n(10 - 4) * (13 - 9) = 24", "4 9 10 13") == 1.0
    assert g24.compute_score("game24", "(10 - 4) * (13 - 9) = 24\nthat's it", "4 9 10 13") == 0.0


def test_game24_generator():
    a, b = g24.generate_puzzles(20, seed=3), g24.generate_puzzles(20, seed=3)
    assert a == b and a != g24.generate_puzzles(20, seed=4)
    assert len({p.numbers for p in a}) == 20
    for p in a:
        assert len(p.numbers) == 4 and list(p.numbers) == sorted(p.numbers)
        assert all(1 <= x <= 13 for x in p.numbers) and g24.solvable(p.numbers) and p.rank is None
    with pytest.raises(ValueError, match="n must be in 0..1362"):
        g24.generate_puzzles(1363)
    with pytest.raises(ValueError, match="numbers: cannot parse"):
        g24.solvable("1 2 x 4")


@pytest.mark.slow
def test_game24_solver_finds_every_csv_puzzle():
    g24._solve_key.cache_clear()
    t0 = time.perf_counter()
    counts = [len(g24.solve(p.numbers)) for p in g24.load_puzzles()]
    print(f"solve 1362 puzzles: {time.perf_counter() - t0:.1f} s, median {sorted(counts)[681]} exprs")
    assert min(counts) >= 1


# ============================================================================ BlocksWorld

S = bw.State.from_stacks


def _hand_problem() -> bw.Problem:
    # red on yellow, blue and yellow on the table; goal: red on blue.
    init = S([["yellow", "red"], ["blue"]])
    return bw.Problem(init, (("red", "blue"),), 2, ("unstack the red block from on top of the yellow block",
                                                    "stack the red block on top of the blue block"))


def test_blocksworld_actions_and_preconditions():
    s = S([["yellow", "red"], ["blue"]])
    assert bw.parse_action("  Unstack the RED block from on top of the yellow  block. ") == ("unstack", "red", "yellow")
    assert bw.parse_action("stack the red block on top of the blue block") == ("stack", "red", "blue")
    assert bw.parse_action("put down the red block") == ("put down", "red")
    assert bw.parse_action("pick up the blue block") == ("pick up", "blue")
    assert bw.parse_action("pick the blue block") is None and bw.parse_action(None) is None
    for a in [("unstack", "red", "yellow"), ("stack", "a", "b"), ("put down", "x"), ("pick up", "y")]:
        assert bw.parse_action(bw.action_text(a)) == a
    assert bw.allowed_actions(s) == ["pick up the blue block",
                                     "unstack the red block from on top of the yellow block"]
    assert bw.apply(s, ("pick up", "red")) is None            # red is not on the table
    assert bw.apply(s, ("pick up", "yellow")) is None         # yellow is not clear
    assert bw.apply(s, ("unstack", "red", "blue")) is None    # red is not on blue
    assert bw.apply(s, ("put down", "red")) is None           # hand is empty
    held = bw.apply(s, ("unstack", "red", "yellow"))
    assert held == bw.State(frozenset({("yellow",), ("blue",)}), "red")
    assert bw.apply(held, ("pick up", "blue")) is None        # hand is full
    assert bw.apply(held, ("stack", "red", "red")) is None
    assert bw.apply(held, ("stack", "blue", "yellow")) is None  # not holding blue
    assert bw.allowed_actions(held) == ["put down the red block", "stack the red block on top of the blue block",
                                        "stack the red block on top of the yellow block"]
    assert bw.apply(held, ("stack", "red", "blue")) == S([["blue", "red"], ["yellow"]])


def test_blocksworld_text_format_and_parse():
    p = _hand_problem()
    expected = ("[STATEMENT]\nAs initial conditions I have that, the blue block is clear, the red block is clear, "
                "the hand is empty, the red block is on top of the yellow block, the blue block is on the table "
                "and the yellow block is on the table.\nMy goal is to have that the red block is on top of the "
                "blue block.\n\nMy plan is as follows:\n\n[PLAN]\n")
    assert bw.to_text(p) == expected
    full = bw.to_text(p, p.gold_plan)
    assert full == expected + ("unstack the red block from on top of the yellow block\n"
                               "stack the red block on top of the blue block\n[PLAN END]")
    assert bw.parse_problem(full) == p
    with pytest.raises(ValueError, match="statement: unknown fact"):
        bw.parse_problem(expected.replace("the hand is empty", "the hand is sticky"))
    with pytest.raises(ValueError, match="statement: expected"):
        bw.parse_problem("hello")


def test_blocksworld_check_plan_hand_written():
    p = _hand_problem()
    good = "[PLAN]\nunstack the red block from on top of the yellow block\nstack the red block on top of the blue block\n[PLAN END]"
    assert bw.check_plan(p, good)
    assert bw.check_plan(p, ["Unstack the red block from on top of the yellow block.",
                             "stack the red block on top of the blue block"])
    longer = ("unstack the red block from on top of the yellow block\nput down the red block\n"
              "pick up the red block\nstack the red block on top of the blue block")
    assert bw.check_plan(p, longer)  # not optimal, still correct
    assert not bw.check_plan(p, "pick up the red block\nstack the red block on top of the blue block")  # precondition
    assert not bw.check_plan(p, "unstack the red block from on top of the yellow block\nput down the red block")  # goal
    assert not bw.check_plan(p, "unstack the red block from on top of the yellow block\n"
                                "stack the red block on top of the purple block")  # unknown block
    assert not bw.check_plan(p, "unstack the red block from on top of the yellow block\nI think so\n"
                                "stack the red block on top of the blue block")  # junk line
    assert not bw.check_plan(p, "")
    assert not bw.check_plan(p, [good.splitlines()[1], None, good.splitlines()[2]])  # a non-str line
    for hostile in [None, 5, b"x", {"a": 1}, "\x00" * 100, "[PLAN]\n" * 100_000, ["pick up the red block", None],
                    "unstack the red block from on top of the yellow block\n" * 100, "\udcff", object()]:
        assert bw.check_plan(p, hostile) is False


def _brute_force_shortest(problem: bw.Problem, max_len: int) -> tuple[int | None, set]:
    """Independent reference: every action sequence (in text) up to max_len, via check_plan on
    text only; returns the shortest length that reaches the goal and the plans of that length."""
    frontier = [((), problem.init)]
    for n in range(1, max_len + 1):
        nxt, hits = [], set()
        for plan, s in frontier:
            for a in bw.allowed_actions(s):
                t = bw.apply(s, bw.parse_action(a))
                nxt.append((plan + (a,), t))
                if bw.check_plan(problem, list(plan + (a,))):
                    hits.add(plan + (a,))
        if hits:
            return n, hits
        frontier = nxt
    return None, set()


@pytest.mark.parametrize("k", [3, 4, 5])
def test_blocksworld_generator_plan_lengths_are_optimal(k):
    for L in (2, 4, 6):
        probs = bw.generate_problems(2, n_blocks=(k,), plan_lengths=(L,), seed=10 * k + L)
        for p in probs:
            assert len(p.init.blocks) == k and p.optimal_length == L and len(p.gold_plan) == L
            assert bw.check_plan(p, bw.to_text(p, p.gold_plan))
            assert bw.parse_problem(bw.to_text(p)).init == p.init
            if k <= 4 or L <= 4:  # brute force up to 6 steps is cheap for small problems
                n, plans = _brute_force_shortest(p, L)
                assert n == L
                opt = bw.optimal_plans(p, limit=1000)
                assert set(opt) == plans and p.gold_plan in plans
            else:
                assert all(bw.check_plan(p, list(x)) and len(x) == L for x in bw.optimal_plans(p))


def test_blocksworld_generator_deterministic_and_bad_args():
    a = bw.generate_problems(12, seed=7)
    assert a == bw.generate_problems(12, seed=7) and a != bw.generate_problems(12, seed=8)
    assert {p.optimal_length for p in a} <= {2, 4, 6} and {len(p.init.blocks) for p in a} <= {3, 4, 5}
    assert all(p.init.holding is None and p.goal for p in a)
    with pytest.raises(ValueError, match="no 3-block problem with optimal length 3"):
        bw.generate_problems(1, n_blocks=(3,), plan_lengths=(3,), max_tries=5)
    with pytest.raises(ValueError, match="n_blocks must lie in"):
        bw.generate_problems(1, n_blocks=(1,))


def test_blocksworld_optimal_plans_limit():
    p = bw.generate_problems(1, n_blocks=(4,), plan_lengths=(6,), seed=1)[0]
    allp = bw.optimal_plans(p, limit=1000)
    assert bw.optimal_plans(p, limit=1) == allp[:1]
    assert len(set(allp)) == len(allp)


def test_blocksworld_num_parents_hand_and_brute_force():
    assert bw.num_parents(S([["yellow", "red"], ["blue"]])) == 2         # put down blue | stack red on yellow
    assert bw.num_parents(bw.State(frozenset({("yellow",), ("blue",)}), "red")) == 3  # pick up | unstack from yellow/blue
    assert bw.num_parents(S([["a", "b", "c"]])) == 1
    # Reference: in-degree over the whole 4-block state graph.
    seen, todo, indeg = {S([["a"], ["b"], ["c"], ["d"]])}, [S([["a"], ["b"], ["c"], ["d"]])], {}
    while todo:
        s = todo.pop()
        for a in bw.allowed_actions(s):
            t = bw.apply(s, bw.parse_action(a))
            indeg[t] = indeg.get(t, 0) + 1
            if t not in seen:
                seen.add(t)
                todo.append(t)
    assert len(seen) == 73 + 4 * 13  # 4-block arrangements + (held block x 3-block arrangements)
    assert all(bw.num_parents(s) == indeg[s] for s in seen)


def test_blocksworld_partial_energy_and_for_reward():
    p = bw.Problem(S([["a"], ["b"], ["c"]]), (("a", "b"), ("b", "c")), 4, ())
    s0, s1, s2 = S([["a"], ["b"], ["c"]]), S([["c", "b"], ["a"]]), S([["c", "b", "a"]])
    assert bw.partial_energy(p, s0) == pytest.approx(-math.log(0.01))      # eps = 0.01
    assert bw.partial_energy(p, s1) == pytest.approx(-math.log(0.51))
    assert bw.partial_energy(p, s2) == pytest.approx(-math.log(1.01))
    assert bw.partial_energy(p, s1, eps=0.0) == pytest.approx(math.log(2))
    assert (bw.for_reward(p, s0), bw.for_reward(p, s1), bw.for_reward(p, s2)) == (0.0, 5.0, 100.0)


# ============================================================================ PrOntoQA

def _hand_example() -> pq.Example:
    facts = ("Each wumpus is a yumpus.", "Yumpuses are zumpuses.", "Every zumpus is not wooden.",
             "Every dumpus is wooden.", "Wumpuses are bright.", "Dumpuses are zumpuses.", "Rex is a wumpus.")
    proof = ("Rex is a wumpus.", "Each wumpus is a yumpus.", "Rex is a yumpus.", "Yumpuses are zumpuses.",
             "Rex is a zumpus.", "Every zumpus is not wooden.", "Rex is not wooden.")
    return pq.Example("Rex", facts, "True or false: Rex is not wooden.", True, proof, 3,
                      ("wumpus", "yumpus", "zumpus", "dumpus"), ("bright", "wooden"))


def test_prontoqa_parse_sentences():
    c, p = ("wumpus", "yumpus"), ("wooden",)
    for s in ["Every wumpus is a yumpus.", "Each wumpus is a yumpus.", "Wumpuses are yumpuses."]:
        assert pq.parse_sentence(s, c, p) == pq.Rule("wumpus", "yumpus", False)
    assert pq.parse_sentence("Wumpuses are not wooden.", c, p) == pq.Rule("wumpus", "wooden", True)
    assert pq.parse_sentence("Rex is not wooden.", c, p) == pq.Fact("rex", "wooden", True)
    assert pq.parse_sentence("Rex is a yumpus.", c, p) == pq.Fact("rex", "yumpus", False)
    for s in ["Rex is a wooden.", "Rex is yumpus.", "Every cat is a yumpus.", "Rex is metallic.", ""]:
        assert pq.parse_sentence(s, c, p) is None, s


def test_prontoqa_check_proof_hand_written():
    ex = _hand_example()
    gold = "\n".join(ex.proof) + "\nTrue"
    assert pq.check_proof(ex, gold)
    assert pq.check_proof(ex, " ".join(ex.proof) + " The answer is true.")
    # FoR's Claim / Next format and other surface forms of the same rules
    assert pq.check_proof(ex, "Claim 1.1: Rex is a wumpus.\nNext 1.1: Every wumpus is a yumpus.\n"
                              "Claim 1.2: Rex is a yumpus.\nNext 1.2: Each yumpus is a zumpus.\n"
                              "Claim 1.3: Rex is a zumpus.\nNext 1.3: Zumpuses are not wooden.\n"
                              "Claim 1.4: Rex is not wooden.\nNext 1.4: Finish.\nAnswer: True")
    # rules need not be restated: derivations one hop at a time from the context
    assert pq.check_proof(ex, "Rex is a yumpus. Rex is a zumpus. Rex is not wooden. True")
    wrong = [
        "\n".join(ex.proof) + "\nFalse",                                            # label
        "\n".join(ex.proof),                                                        # no label
        "Rex is a wumpus. Rex is a zumpus. Rex is not wooden. True",               # skips a hop
        "Rex is a wumpus. Wumpuses are zumpuses. Rex is a zumpus. Rex is not wooden. True",  # invented rule
        "Rex is a wumpus. Every dumpus is wooden. Rex is wooden. False",            # distractor misapplied
        "Rex is a wumpus. True",                                                    # never concludes
        "Rex is a dumpus. Rex is a zumpus. Rex is not wooden. True",                # invented fact
        "Rex is a wumpus. Rex is a yumpus. I am sure. Rex is a zumpus. Rex is not wooden. True",
        "True",
    ]
    for w in wrong:
        assert not pq.check_proof(ex, w), w
    for hostile in [None, 7, b"True", {"x": 1}, "\x00" * 50, "True " * 10_000, ["Rex is a wumpus.", None, "True"],
                    "\udcff True", object()]:
        assert pq.check_proof(ex, hostile) is False


def test_prontoqa_prompt_and_world_model():
    ex = _hand_example()
    assert pq.to_prompt(ex, instruction=None) == (
        "Facts 1: Each wumpus is a yumpus. Yumpuses are zumpuses. Every zumpus is not wooden. "
        "Every dumpus is wooden. Wumpuses are bright. Dumpuses are zumpuses. Rex is a wumpus.\n"
        "Query 1: True or false: Rex is not wooden.\nClaim 1.1: Rex is a wumpus.\nNext 1.1:")
    assert pq.to_prompt(ex).startswith(pq.INSTRUCTION + "\n\nFacts 1: ")
    assert pq.next_claim(ex, "Rex is a wumpus.", "Each wumpus is a yumpus.") == "Rex is a yumpus."
    assert pq.next_claim(ex, "Rex is a zumpus.", "Every zumpus is not wooden.") == "Rex is not wooden."
    assert pq.next_claim(ex, "Rex is a wumpus.", "Yumpuses are zumpuses.") is None     # does not apply
    assert pq.next_claim(ex, "Rex is a wumpus.", "Wumpuses are zumpuses.") is None     # not in the context


def test_prontoqa_partial_energy():
    ex = _hand_example()
    e0 = -math.log(0.9 * 1e-5)
    assert pq.partial_energy(ex, "") == pytest.approx(e0) == pytest.approx(11.618285980628055)
    one = "Rex is a wumpus. Each wumpus is a yumpus. Rex is a yumpus."
    assert pq.valid_steps(ex, one) == 1
    assert pq.partial_energy(ex, one) == pytest.approx(-math.log(0.9 * (20 + 1e-5)))
    assert pq.valid_steps(ex, one + " Rex is a yumpus.") == 1                 # repeats earn nothing
    assert pq.valid_steps(ex, "Rex is a wumpus. Rex is a zumpus. Rex is a yumpus.") == 0  # stops at the invalid step
    assert pq.partial_energy(ex, "\n".join(ex.proof)) == pytest.approx(-math.log(0.9 * (60 + 1e-5)))
    assert pq.partial_energy(ex, "\n".join(ex.proof), lam=1.0, eps=0.0) == pytest.approx(-math.log(60))
    assert pq.valid_steps(ex, None) == 0


def test_prontoqa_generator():
    a = pq.generate_examples(30, seed=5)
    assert a == pq.generate_examples(30, seed=5) and a != pq.generate_examples(30, seed=6)
    assert {e.hops for e in a} == {3, 4, 5} and sum(e.label for e in a) == 15
    for e in a:
        assert len(e.proof) == 2 * e.hops + 1 and e.proof[0] in e.facts
        assert e.query.startswith("True or false: " + e.entity + " is ")
        assert pq.check_proof(e, pq.gold_text(e))
        assert not pq.check_proof(e, "\n".join(e.proof) + ("\nFalse" if e.label else "\nTrue"))
        assert pq.valid_steps(e, pq.gold_text(e)) == e.hops
        claim = e.proof[0]
        for i in range(e.hops):  # the world model replays the gold proof
            claim = pq.next_claim(e, claim, e.proof[2 * i + 1])
            assert claim == e.proof[2 * i + 2]
        # the distractor: some context rule states the opposite of the proof's conclusion
        concl = pq.parse_sentence(e.proof[-1], e.concepts, e.properties)
        rules = [pq.parse_sentence(f, e.concepts, e.properties) for f in e.facts]
        assert any(isinstance(r, pq.Rule) and r.obj == concl.obj and r.negated != concl.negated for r in rules)
    with pytest.raises(ValueError, match="hops must lie in"):
        pq.generate_examples(1, hops=(0,))
