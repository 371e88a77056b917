"""Game of 24: puzzles, an exact solver, a step checker, a safe expression verifier, energies.

Puzzles: the 1,362 Tree-of-Thoughts puzzles (`data/24.csv`, MIT, (c) 2023 Shunyu Yao, see
`data/LICENSE-tree-of-thoughts`; ranked by human solve time) and `generate_puzzles` (random
multisets of 1..13 that the solver can solve).

Arithmetic is exact (`fractions.Fraction`) everywhere. Model text is only parsed (`ast.parse` of a
whitelisted character set, then a walk that accepts numbers, + - * / and parentheses); it is never
evaluated as Python.

Accepted operator spellings (expressions and steps): `+`; `-` and `−` (U+2212); `*`, `x`, `X` and
`×`; `/` and `÷`. In steps, numbers may be integers, fractions `p/q` or terminating decimals; a
fraction literal binds tighter than an operator, so write spaces around a division ("3/4 / 2").

Steps (the FoR/ToT format): "a op b = c (left: x y z)". The state of a trajectory is the multiset
of remaining numbers (a sorted tuple of Fractions).
"""
from __future__ import annotations

import ast
import csv
import math
import random
import re
from collections import Counter
from dataclasses import dataclass
from fractions import Fraction
from functools import lru_cache
from itertools import combinations_with_replacement
from pathlib import Path
from typing import Iterable, Sequence

DATA_FILE = Path(__file__).resolve().parent / "data" / "24.csv"
TARGET = Fraction(24)
# Partial-energy floor: E(s) = -log(EPS + 1[s can still reach 24]) -> 6.908 when it cannot,
# -log(1.001) = -0.0009995 when it can (so R = exp(-E) = 0.001 or 1.001).
EPS = 1e-3
MAX_EXPRESSION_CHARS = 200  # longer text is rejected before parsing (the parser recurses on nesting)
SPLITS = ("all", "train", "val", "test")
# ToT / FoR: test = the 100 puzzles at rows 900:1000 (hard ones, ranked by solve time).
_TEST = range(900, 1000)
# FoR's validation set: rows 10..19 and the 20th..11th from the end (1342..1351).
_VAL = list(range(10, 20)) + list(range(1342, 1352))


@dataclass(frozen=True)
class Puzzle:
    numbers: tuple[int, ...]  # sorted ascending
    rank: int | None = None   # 1-based rank in 24.csv; None for generated puzzles

    @property
    def text(self) -> str:
        return " ".join(map(str, self.numbers))


# ----------------------------------------------------------------------------- numbers

def _as_fraction(x) -> Fraction:
    if isinstance(x, bool):
        raise ValueError(f"numbers: not a number: {x!r}")
    if isinstance(x, (int, Fraction)):
        return Fraction(x)
    if isinstance(x, str):
        return Fraction(x.strip().replace("−", "-"))
    raise ValueError(f"numbers: not a number: {x!r}")


def parse_numbers(numbers: str | Iterable) -> tuple[Fraction, ...]:
    """"1 1 4 6", "1,1,4,6" or a sequence of ints / Fractions / strings -> sorted Fractions.
    ValueError naming the offending value."""
    if isinstance(numbers, Puzzle):
        numbers = numbers.numbers
    items = re.split(r"[\s,]+", numbers.strip()) if isinstance(numbers, str) else list(numbers)
    try:
        out = tuple(sorted(_as_fraction(x) for x in items if not (isinstance(x, str) and not x)))
    except (ValueError, ZeroDivisionError, TypeError) as e:
        raise ValueError(f"numbers: cannot parse {numbers!r}: {e}") from None
    if not out:
        raise ValueError(f"numbers: empty: {numbers!r}")
    return out


def format_number(x: Fraction | int) -> str:
    """Integers as "12", other rationals as "p/q" (exact; no rounding)."""
    x = Fraction(x)
    return str(x.numerator) if x.denominator == 1 else f"{x.numerator}/{x.denominator}"


# ----------------------------------------------------------------------------- data

def load_puzzles(split: str = "all", path: str | Path = DATA_FILE) -> list[Puzzle]:
    """The ToT 24.csv puzzles. split: "all" (1,362), "test" (rows 900:1000, the ToT/FoR test
    set), "val" (FoR's 20: rows 10:20 and 1342:1352), "train" (all rows in neither)."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    puzzles = [Puzzle(tuple(sorted(int(v) for v in r["Puzzles"].split())), int(r["Rank"]))
               for r in rows]
    if split == "test":
        return [puzzles[i] for i in _TEST]
    if split == "val":
        return [puzzles[i] for i in _VAL]
    if split == "train":
        held = set(_TEST) | set(_VAL)
        return [p for i, p in enumerate(puzzles) if i not in held]
    return puzzles


def generate_puzzles(n: int, seed: int = 0, low: int = 1, high: int = 13) -> list[Puzzle]:
    """n distinct solvable 4-number multisets drawn uniformly from low..high (deterministic for
    a seed). ValueError when fewer than n solvable multisets exist."""
    pool = [c for c in combinations_with_replacement(range(low, high + 1), 4) if solvable(c)]
    if not 0 <= n <= len(pool):
        raise ValueError(f"n must be in 0..{len(pool)} (solvable multisets of {low}..{high}), got {n}")
    return [Puzzle(c) for c in random.Random(seed).sample(pool, n)]


# ----------------------------------------------------------------------------- solver

def _combine(a: Fraction, b: Fraction):
    """(op, result, swapped) for every way to combine a and b; swapped means "b op a"."""
    yield "+", a + b, False
    yield "*", a * b, False
    yield "-", a - b, False
    yield "-", b - a, True
    if b:
        yield "/", a / b, False
    if a:
        yield "/", b / a, True


@lru_cache(maxsize=None)
def _solvable_key(key: tuple[Fraction, ...]) -> bool:
    if len(key) == 1:
        return key[0] == TARGET
    for i in range(len(key)):
        for j in range(i + 1, len(key)):
            rest = key[:i] + key[i + 1:j] + key[j + 1:]
            for _, v, _ in _combine(key[i], key[j]):
                if _solvable_key(tuple(sorted(rest + (v,)))):
                    return True
    return False


def solvable(numbers) -> bool:
    """Whether + - * / (exact, each number used once) can make 24. Cached by sorted multiset."""
    return _solvable_key(parse_numbers(numbers))


def _expr(a: str, op: str, b: str) -> str:
    if op in "+*" and b < a:  # commutative: one canonical operand order, fewer duplicates
        a, b = b, a
    return f"({a} {op} {b})"


@lru_cache(maxsize=4096)
def _solve_key(key: tuple[Fraction, ...]) -> tuple[str, ...]:
    found: set[str] = set()

    def rec(items: list[tuple[Fraction, str]]) -> None:
        if len(items) == 1:
            if items[0][0] == TARGET:
                e = items[0][1]
                found.add(e[1:-1] if e.startswith("(") else e)
            return
        for i in range(len(items)):
            for j in range(i + 1, len(items)):
                (a, ea), (b, eb) = items[i], items[j]
                rest = items[:i] + items[i + 1:j] + items[j + 1:]
                for op, v, swapped in _combine(a, b):
                    rec(rest + [(v, _expr(eb, op, ea) if swapped else _expr(ea, op, eb))])

    rec([(x, format_number(x)) for x in key])
    return tuple(sorted(found))


def solve(numbers) -> list[str]:
    """Every distinct fully parenthesized solution expression (operands of + and * in a canonical
    order, outer parentheses dropped), sorted; [] when unsolvable. Cached by sorted multiset."""
    key = parse_numbers(numbers)
    return list(_solve_key(key)) if _solvable_key(key) else []


def _next_solvable(state: tuple[Fraction, ...]):
    """The first (a, op, b, next_state) whose next_state can still make 24, or None; steps with
    a negative result only when no other step works (they read unnaturally)."""
    for allow_negative in (False, True):
        for i in range(len(state)):
            for j in range(i + 1, len(state)):
                rest = state[:i] + state[i + 1:j] + state[j + 1:]
                for op, v, swapped in _combine(state[i], state[j]):
                    nxt = tuple(sorted(rest + (v,)))
                    if (v >= 0 or allow_negative) and _solvable_key(nxt):
                        a, b = (state[j], state[i]) if swapped else (state[i], state[j])
                        return a, op, b, nxt
    return None


def gold_steps(numbers) -> list[str] | None:
    """One solution as step lines "a op b = c (left: ...)" (the last leaves "24"); None if none."""
    state = parse_numbers(numbers)
    if not _solvable_key(state):
        return None
    steps = []
    while len(state) > 1:
        a, op, b, state = _next_solvable(state)
        steps.append(format_step(a, op, b, state))
    return steps


# ----------------------------------------------------------------------------- steps

_NUM = r"[-−]?\d+(?:\.\d+)?(?:/\d+)?"
_NUM_RE = re.compile(_NUM)
_OP = r"[-+*/x×÷−]"
# The "left" list is captured as `[^()]*` and split afterwards: a repeated group of numbers with
# optional separators, ((?:NUM[\s,]*)*), splits a digit run in exponentially many ways when the
# match fails ("(left: 111...1x)"). "(?:\.\s*)?" rather than "\.?\s*" after "\s*": no two
# adjacent \s* (quadratic on a run of spaces). Every part is linear in the (capped) line length.
_STEP_RE = re.compile(rf"^\s*({_NUM})\s*({_OP})\s*({_NUM})\s*=\s*({_NUM})\s*"
                      rf"\(\s*left\s*:([^()]*)\)\s*(?:\.\s*)?$", re.IGNORECASE)
_OPS = {"+": "+", "-": "-", "−": "-", "*": "*", "x": "*", "X": "*", "×": "*", "/": "/", "÷": "/"}


def format_step(a, op: str, b, remaining) -> str:
    """"a op b = c (left: ...)" with exact numbers; remaining is the multiset after the step."""
    c = {"+": a + b, "-": a - b, "*": a * b, "/": Fraction(a) / b if b else None}[op]
    left = " ".join(format_number(x) for x in sorted(remaining))
    return f"{format_number(a)} {op} {format_number(b)} = {format_number(c)} (left: {left})"


def check_step(remaining, step_text: str) -> tuple[Fraction, ...] | None:
    """The new remaining multiset (sorted Fractions) if `step_text` is a valid step from
    `remaining`: a and b are available (as a multiset), a op b == c exactly, and "left" lists
    exactly remaining - {a, b} + {c}. None for anything else (never raises on bad text; linear in
    the text, which is capped at MAX_EXPRESSION_CHARS)."""
    try:
        if not isinstance(step_text, str) or len(step_text) > MAX_EXPRESSION_CHARS:
            return None
        m = _STEP_RE.match(step_text)
        if not m:
            return None
        a, b, c = (_as_fraction(m.group(k)) for k in (1, 3, 4))
        op = _OPS[m.group(2)]
        if op == "/" and b == 0:
            return None
        if {"+": a + b, "-": a - b, "*": a * b, "/": a / b if b else None}[op] != c:
            return None
        pool = Counter(parse_numbers(remaining))
        pool.subtract([a, b])
        if any(v < 0 for v in pool.values()):
            return None
        pool[c] += 1
        left = re.split(r"[\s,]+", m.group(5).strip()) if m.group(5).strip() else []
        if not all(_NUM_RE.fullmatch(x) for x in left):
            return None
        claimed = Counter(_as_fraction(x) for x in left)
        if +pool != claimed:
            return None
        return tuple(sorted(claimed.elements()))
    except (ValueError, ZeroDivisionError, TypeError, OverflowError):
        return None


def check_steps(numbers, steps_text: str | Sequence[str]) -> bool:
    """A whole step trajectory: every non-empty line a valid step, ending with only 24 left.
    False for anything else (bad numbers, non-str lines, more than 16 steps); never raises on the
    steps; linear in their length (each line goes through check_step)."""
    try:
        lines = steps_text.splitlines() if isinstance(steps_text, str) else list(steps_text)
        state = parse_numbers(numbers)
        if not all(isinstance(ln, str) for ln in lines):
            return False
        lines = [ln for ln in lines if ln.strip()]
        if not lines or len(lines) > 16:
            return False
        for ln in lines:
            state = check_step(state, ln)
            if state is None:
                return False
        return state == (TARGET,)
    except (ValueError, TypeError, AttributeError):
        return False


# ----------------------------------------------------------------------------- expressions

_EXPR_CHARS = re.compile(r"^[0-9+\-*/() \t]*$")
# An optional "Answer:" prefix and "= 24" suffix, stripped in two anchored steps (a single
# `^\s*(?:answer:)?(.*?)\s*(?:=24)?\s*$` backtracks cubically over runs of spaces).
_ANSWER_PREFIX_RE = re.compile(r"answer\s*:", re.IGNORECASE)
_ANSWER_SUFFIX_RE = re.compile(r"=\s*24\s*\.?$")
_BINOPS = {ast.Add: "+", ast.Sub: "-", ast.Mult: "*", ast.Div: "/"}


def _walk(node: ast.AST, used: list[int]) -> None:
    """Accept only int literals and + - * / nodes; collect the literals into `used`."""
    if isinstance(node, ast.BinOp) and type(node.op) in _BINOPS:
        _walk(node.left, used)
        _walk(node.right, used)
    elif isinstance(node, ast.Constant) and type(node.value) is int:
        used.append(node.value)
    else:  # names, calls, attributes, unary minus, **, //, %, floats, strings, ...
        raise ValueError(f"disallowed syntax: {type(node).__name__}")


def _value(node: ast.AST) -> Fraction:
    if isinstance(node, ast.Constant):
        return Fraction(node.value)
    a, b = _value(node.left), _value(node.right)
    op = _BINOPS[type(node.op)]
    if op == "/" and b == 0:
        raise ZeroDivisionError("division by zero")
    return {"+": a + b, "-": a - b, "*": a * b, "/": a / b if b else None}[op]


def _parse(expression: str) -> tuple[ast.AST, list[int]]:
    if not isinstance(expression, str):
        raise ValueError(f"expression must be a str, got {type(expression).__name__}")
    if len(expression) > MAX_EXPRESSION_CHARS:
        raise ValueError(f"expression longer than {MAX_EXPRESSION_CHARS} characters")
    body = expression.strip()
    prefix = _ANSWER_PREFIX_RE.match(body)
    if prefix:
        body = body[prefix.end():]
    suffix = _ANSWER_SUFFIX_RE.search(body)
    if suffix:
        body = body[:suffix.start()]
    for src, dst in (("−", "-"), ("×", "*"), ("x", "*"), ("X", "*"), ("÷", "/")):
        body = body.replace(src, dst)
    # The whitelist runs before the parser sees anything: no letters, quotes, dots or brackets.
    if not body.strip() or not _EXPR_CHARS.match(body):
        raise ValueError(f"expression has characters other than digits, + - * / ( ): {expression!r}")
    try:
        tree = ast.parse(body.strip(), mode="eval")
    except (SyntaxError, MemoryError, RecursionError, ValueError) as e:
        raise ValueError(f"expression does not parse: {e}") from None
    used: list[int] = []
    _walk(tree.body, used)
    return tree.body, used


def parse_expression(expression: str) -> ast.AST:
    """The AST of a Game24 expression (optional "Answer:" prefix, optional "= 24" suffix).
    ValueError (and nothing else) for anything other than integers, + - * / and parentheses, or
    text over MAX_EXPRESSION_CHARS; the text is whitelisted before Python's parser sees it."""
    return _parse(expression)[0]


def check_solution(numbers, expression) -> bool:
    """True iff `expression` uses exactly the puzzle's numbers (as a multiset) with + - * / and
    parentheses and evaluates exactly to 24. Never raises and never evaluates Python: any other
    input (None, names, calls, attributes, **, unary minus, decimals, over-long text) -> False."""
    try:
        tree, used = _parse(expression)
        if Counter(map(Fraction, used)) != Counter(parse_numbers(numbers)):
            return False
        return _value(tree) == TARGET  # only after the multiset check: operands are bounded
    except (ValueError, ZeroDivisionError, TypeError, RecursionError, MemoryError, AttributeError):
        return False


# ----------------------------------------------------------------------------- rewards

def partial_energy(remaining, eps: float = EPS) -> float:
    """E(s) = -log(eps + 1[remaining numbers can still make 24]) (forward-looking GFlowNets).
    A single remaining number "can make 24" iff it is 24."""
    return -math.log(eps + (1.0 if solvable(remaining) else 0.0))


def for_reward(remaining) -> float:
    """FoR's Game24 terminal reward: 100 if the last remaining number is 24, else 0.001."""
    return 100.0 if parse_numbers(remaining) == (TARGET,) else 0.001


def compute_score(data_source: str, solution_str: str, ground_truth: str,
                  extra_info: dict | None = None) -> float:
    """verl-style reward (see envs.rewards): ground_truth = the puzzle ("1 1 4 6"); 1.0 when the
    last non-empty line of the response is a correct expression, else 0.0."""
    if not isinstance(solution_str, str):
        return 0.0
    lines = [ln for ln in solution_str.strip().splitlines() if ln.strip()]
    return 1.0 if lines and check_solution(ground_truth, lines[-1]) else 0.0
