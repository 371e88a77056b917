"""BlocksWorld (PlanBench style): problems, a STRIPS simulator, BFS planners, a plan verifier.

A state is a set of stacks (each bottom -> top) plus the block in the hand (or None). The four
STRIPS operators and their preconditions:
    pick up X            hand empty, X clear, X on the table   -> holding X
    unstack X from Y     hand empty, X clear, X on top of Y     -> holding X, Y clear
    put down X           holding X                              -> X on the table, hand empty
    stack X on top of Y  holding X, Y clear (Y != X)            -> X on Y, hand empty
Goals are "X is on top of Y" facts only (as in PlanBench's generated instances); a plan is correct
when every action's preconditions hold in turn and all goal facts hold at the end.

Text follows PlanBench / FoR: "[STATEMENT]\\nAs initial conditions I have that, the red block is
clear, ..., the hand is empty, ...\\nMy goal is to have that ...\\n\\nMy plan is as follows:\\n\\n
[PLAN]\\n<one action per line>\\n[PLAN END]".
"""
from __future__ import annotations

import math
import random
import re
from collections import deque
from dataclasses import dataclass
from typing import Iterable, Sequence

COLORS = ("red", "blue", "orange", "yellow", "white", "magenta", "black", "cyan", "green",
          "violet", "silver", "gold")
# Partial energy E(s) = -log(EPS + fraction of goal facts satisfied): 4.605 with none satisfied,
# -log(1.01) = -0.00995 with all (R = exp(-E) in [0.01, 1.01]).
EPS = 1e-2
MAX_PLAN_CHARS = 20_000
MAX_PLAN_STEPS = 64

Action = tuple  # ("pick up", x) | ("put down", x) | ("unstack", x, y) | ("stack", x, y)


@dataclass(frozen=True)
class State:
    stacks: frozenset  # frozenset of tuples of block names, bottom -> top
    holding: str | None = None

    @staticmethod
    def from_stacks(stacks: Iterable[Sequence[str]], holding: str | None = None) -> "State":
        return State(frozenset(tuple(s) for s in stacks if len(s)), holding)

    @property
    def blocks(self) -> tuple[str, ...]:
        held = (self.holding,) if self.holding else ()
        return tuple(sorted([b for s in self.stacks for b in s] + list(held)))

    def clear(self) -> list[str]:
        return sorted(s[-1] for s in self.stacks)

    def on(self) -> set[tuple[str, str]]:
        """All (x, y) with x directly on top of y."""
        return {(s[k + 1], s[k]) for s in self.stacks for k in range(len(s) - 1)}

    def on_table(self) -> list[str]:
        return sorted(s[0] for s in self.stacks)


@dataclass(frozen=True)
class Problem:
    init: State
    goal: tuple[tuple[str, str], ...]  # ("red", "blue"): the red block is on top of the blue block
    optimal_length: int
    gold_plan: tuple[str, ...]  # one optimal plan (action texts)


# ----------------------------------------------------------------------------- actions

def action_text(action: Action) -> str:
    kind = action[0]
    if kind == "pick up":
        return f"pick up the {action[1]} block"
    if kind == "put down":
        return f"put down the {action[1]} block"
    if kind == "unstack":
        return f"unstack the {action[1]} block from on top of the {action[2]} block"
    if kind == "stack":
        return f"stack the {action[1]} block on top of the {action[2]} block"
    raise ValueError(f"action: unknown kind {kind!r}")


_ACTION_RES = [
    (re.compile(r"^pick up the (\w+) block$"), "pick up"),
    (re.compile(r"^put down the (\w+) block$"), "put down"),
    (re.compile(r"^unstack the (\w+) block from on top of the (\w+) block$"), "unstack"),
    (re.compile(r"^stack the (\w+) block on top of the (\w+) block$"), "stack"),
]


def parse_action(text: str) -> Action | None:
    """"unstack the red block from on top of the yellow block" -> ("unstack", "red", "yellow").
    Case, surrounding whitespace, repeated spaces and a final period are tolerated; None otherwise
    (non-str, over 200 characters, any other text). Never raises; anchored regexes, linear."""
    if not isinstance(text, str) or len(text) > 200:
        return None
    t = " ".join(text.strip().lower().rstrip(".").split())
    for rx, kind in _ACTION_RES:
        m = rx.match(t)
        if m:
            return (kind, *m.groups())
    return None


def apply(state: State, action: Action) -> State | None:
    """The successor state, or None when a precondition fails."""
    kind, x = action[0], action[1]
    stacks = set(state.stacks)
    top_of = {s[-1]: s for s in stacks}
    if kind in ("pick up", "unstack"):
        s = top_of.get(x)
        if state.holding is not None or s is None:
            return None
        if kind == "pick up" and len(s) != 1:
            return None
        if kind == "unstack" and (len(s) < 2 or s[-2] != action[2]):
            return None
        stacks.discard(s)
        if len(s) > 1:
            stacks.add(s[:-1])
        return State(frozenset(stacks), x)
    if state.holding != x:
        return None
    if kind == "put down":
        return State(frozenset(stacks | {(x,)}), None)
    if kind == "stack":
        s = top_of.get(action[2])
        if s is None or action[2] == x:
            return None
        stacks.discard(s)
        return State(frozenset(stacks | {s + (x,)}), None)
    return None


def applicable(state: State) -> list[Action]:
    """Every action whose preconditions hold, in a fixed order (unstack/pick up, then put
    down/stack, blocks by name)."""
    if state.holding is None:
        return [("pick up", s[0]) if len(s) == 1 else ("unstack", s[-1], s[-2])
                for s in sorted(state.stacks, key=lambda s: s[-1])]
    x = state.holding
    return [("put down", x)] + [("stack", x, y) for y in state.clear()]


def allowed_actions(state: State) -> list[str]:
    """FoR's finite action set A(s): texts of every applicable action (the caller removes actions
    already taken in the trajectory, as FoR does)."""
    return [action_text(a) for a in applicable(state)]


def num_parents(state: State) -> int:
    """|Pa(s)|: states with one action into `state` (uniform P_B = 1/|Pa(s)| on the DAG).
    Hand empty: the last action put down or stacked one of the clear blocks -> #clear.
    Holding X: X was picked up from the table or unstacked from any currently clear block
    -> 1 + #clear."""
    return len(state.stacks) + (1 if state.holding is not None else 0)


# ----------------------------------------------------------------------------- goals, rewards

def goal_fraction(problem: Problem, state: State) -> float:
    on = state.on()
    return sum(g in on for g in problem.goal) / len(problem.goal)


def is_goal(problem: Problem, state: State) -> bool:
    return set(problem.goal) <= state.on()


def partial_energy(problem: Problem, state: State, eps: float = EPS) -> float:
    """E(s) = -log(eps + fraction of goal facts satisfied in s)."""
    return -math.log(eps + goal_fraction(problem, state))


def for_reward(problem: Problem, state: State) -> float:
    """FoR's terminal reward: 100 if every goal fact holds, else 10 * fraction satisfied."""
    f = goal_fraction(problem, state)
    return 100.0 if f == 1.0 else 10.0 * f


# ----------------------------------------------------------------------------- planning

def _bfs(init: State) -> dict[State, int]:
    """Distance from `init` to every reachable state."""
    dist = {init: 0}
    queue = deque([init])
    while queue:
        s = queue.popleft()
        for a in applicable(s):
            t = apply(s, a)
            if t not in dist:
                dist[t] = dist[s] + 1
                queue.append(t)
    return dist


def bfs_plan(init: State, goal: Iterable[tuple[str, str]]) -> list[str] | None:
    """One optimal plan (action texts) from `init` to a state with all goal facts; None if
    unreachable. Deterministic: actions expand in `applicable` order."""
    goal = set(goal)
    parent: dict[State, tuple[State, Action] | None] = {init: None}
    queue = deque([init])
    while queue:
        s = queue.popleft()
        if goal <= s.on():
            plan = []
            while parent[s] is not None:
                s, a = parent[s]
                plan.append(action_text(a))
            return plan[::-1]
        for a in applicable(s):
            t = apply(s, a)
            if t not in parent:
                parent[t] = (s, a)
                queue.append(t)
    return None


def optimal_plans(problem: Problem, limit: int = 100) -> list[tuple[str, ...]]:
    """Up to `limit` distinct optimal plans (for diversity metrics), in a fixed order."""
    dist = _bfs(problem.init)
    n = problem.optimal_length
    out: list[tuple[str, ...]] = []

    def rec(s: State, path: list[str]) -> None:
        if len(out) >= limit:
            return
        if len(path) == n:
            if is_goal(problem, s):
                out.append(tuple(path))
            return
        for a in applicable(s):
            t = apply(s, a)
            if dist[t] == len(path) + 1:  # stay on shortest paths from init
                rec(t, path + [action_text(a)])

    rec(problem.init, [])
    return out


def _random_state(blocks: Sequence[str], rng: random.Random) -> State:
    """Blocks dropped in random order onto the table or onto a random clear stack top."""
    order = list(blocks)
    rng.shuffle(order)
    stacks: list[list[str]] = []
    for b in order:
        k = rng.randrange(len(stacks) + 1)
        if k == len(stacks):
            stacks.append([b])
        else:
            stacks[k].append(b)
    return State.from_stacks(stacks)


def generate_problems(n: int, n_blocks: Sequence[int] = (3, 4, 5),
                      plan_lengths: Sequence[int] = (2, 4, 6), seed: int = 0,
                      max_tries: int = 200) -> list[Problem]:
    """n problems; each draws a block count from n_blocks and a length L from plan_lengths, a
    random initial state, and a goal = every "on" fact of a random hand-empty state at BFS
    distance L whose facts cannot be reached sooner (so the optimal plan has exactly L steps).
    Deterministic for a seed. ValueError when no such problem is found (e.g. odd L)."""
    if any(not 2 <= k <= len(COLORS) for k in n_blocks):
        raise ValueError(f"n_blocks must lie in 2..{len(COLORS)}, got {tuple(n_blocks)}")
    if any(L < 1 for L in plan_lengths):
        raise ValueError(f"plan_lengths must be >= 1, got {tuple(plan_lengths)}")
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        k, length = rng.choice(list(n_blocks)), rng.choice(list(plan_lengths))
        for _ in range(max_tries):
            blocks = sorted(rng.sample(COLORS, k), key=COLORS.index)
            init = _random_state(blocks, rng)
            dist = _bfs(init)  # insertion order is deterministic (fixed action order)
            targets = [s for s, d in dist.items() if d == length and s.holding is None]
            rng.shuffle(targets)
            problem = None
            for target in targets:
                goal = tuple(sorted(target.on()))
                if goal and min(d for s, d in dist.items() if set(goal) <= s.on()) == length:
                    problem = Problem(init, goal, length, tuple(bfs_plan(init, goal)))
                    break
            if problem is not None:
                out.append(problem)
                break
        else:
            raise ValueError(f"no {k}-block problem with optimal length {length} in {max_tries} tries")
    return out


# ----------------------------------------------------------------------------- text

def _join(parts: list[str]) -> str:
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


def describe_state(state: State) -> str:
    """PlanBench fact list: clear blocks, the hand, "on top of" facts (top-down), table facts."""
    parts = [f"the {b} block is clear" for b in state.clear()]
    parts.append("the hand is empty" if state.holding is None else f"I am holding the {state.holding} block")
    for s in sorted(state.stacks, key=lambda s: s[-1]):
        parts += [f"the {s[k]} block is on top of the {s[k - 1]} block" for k in range(len(s) - 1, 0, -1)]
    parts += [f"the {b} block is on the table" for b in state.on_table()]
    return _join(parts)


def describe_goal(goal: Iterable[tuple[str, str]]) -> str:
    return _join([f"the {x} block is on top of the {y} block" for x, y in goal])


def to_text(problem: Problem, plan: Sequence[str] | None = None) -> str:
    """The PlanBench statement; with a plan, its lines and "[PLAN END]" follow "[PLAN]"."""
    head = (f"[STATEMENT]\nAs initial conditions I have that, {describe_state(problem.init)}.\n"
            f"My goal is to have that {describe_goal(problem.goal)}.\n\nMy plan is as follows:\n\n[PLAN]\n")
    return head if plan is None else head + "".join(p + "\n" for p in plan) + "[PLAN END]"


_FACT_RES = [
    (re.compile(r"^the (\w+) block is clear$"), "clear"),
    (re.compile(r"^the hand is empty$"), "handempty"),
    (re.compile(r"^i am holding the (\w+) block$"), "holding"),
    (re.compile(r"^the (\w+) block is on top of the (\w+) block$"), "on"),
    (re.compile(r"^the (\w+) block is on the table$"), "ontable"),
]


def _facts(text: str) -> list[tuple]:
    out = []
    for part in re.split(r",\s*|\s+and\s+", text.strip().rstrip(".")):
        part = " ".join(part.lower().split())
        for rx, kind in _FACT_RES:
            m = rx.match(part)
            if m:
                out.append((kind, *m.groups()))
                break
        else:
            raise ValueError(f"statement: unknown fact {part!r}")
    return out


def parse_problem(text: str) -> Problem:
    """A Problem from a PlanBench statement (the part before [PLAN]); the optimal plan is
    recomputed by BFS. ValueError naming the bad part."""
    m = re.search(r"as initial conditions i have that,?(.*?)\n\s*my goal is to have that(.*?)(?:\n|$)",
                  text, re.IGNORECASE | re.DOTALL)
    if not m:
        raise ValueError("statement: expected 'As initial conditions I have that, ...' and 'My goal is to have that ...'")
    init_facts, goal_facts = _facts(m.group(1)), _facts(m.group(2))
    below = {f[1]: f[2] for f in init_facts if f[0] == "on"}
    holding = next((f[1] for f in init_facts if f[0] == "holding"), None)
    stacks = []
    for base in (f[1] for f in init_facts if f[0] == "ontable"):
        stack = [base]
        above = {y: x for x, y in below.items()}
        while stack[-1] in above:
            stack.append(above[stack[-1]])
        stacks.append(stack)
    init = State.from_stacks(stacks, holding)
    if len(init.blocks) != len(set(init.blocks)) or sum(map(len, stacks)) != len(below) + len(stacks):
        raise ValueError("statement: initial facts do not describe a set of stacks on the table")
    goal = tuple(sorted((f[1], f[2]) for f in goal_facts if f[0] == "on"))
    if not goal or len(goal) != len(goal_facts):
        raise ValueError("statement: the goal must be 'X is on top of Y' facts")
    plan = bfs_plan(init, goal)
    if plan is None:
        raise ValueError("statement: the goal is unreachable")
    return Problem(init, goal, len(plan), tuple(plan))


# ----------------------------------------------------------------------------- verification

def plan_lines(plan_text: str | Sequence[str]) -> list[str]:
    """The action lines of a plan: the text after "[PLAN]" (if present) up to "[PLAN END]",
    non-empty lines stripped."""
    if isinstance(plan_text, str):
        text = plan_text
        if "[PLAN]" in text:
            text = text.split("[PLAN]", 1)[1]
        text = text.split("[PLAN END]", 1)[0]
        lines = text.splitlines()
    else:
        lines = list(plan_text)
        if not all(isinstance(ln, str) for ln in lines):
            raise TypeError("plan: every line must be a str")
    return [ln.strip() for ln in lines if ln.strip()]


def simulate(problem: Problem, plan_text: str | Sequence[str]) -> State | None:
    """The final state after every action line, or None if a line does not parse, names an
    unknown block or violates a precondition."""
    state = problem.init
    for line in plan_lines(plan_text):
        action = parse_action(line)
        if action is None or any(b not in state.blocks for b in action[1:]):
            return None
        state = apply(state, action)
        if state is None:
            return None
    return state


def check_plan(problem: Problem, plan_text) -> bool:
    """True iff every line of the plan is a valid action in turn and all goal facts hold at the
    end. Never raises on bad input (non-strings, unknown blocks, junk lines -> False)."""
    try:
        if isinstance(plan_text, str) and len(plan_text) > MAX_PLAN_CHARS:
            return False
        if not isinstance(plan_text, (str, list, tuple)) or len(plan_lines(plan_text)) > MAX_PLAN_STEPS:
            return False
        final = simulate(problem, plan_text)
        return final is not None and is_goal(problem, final)
    except (ValueError, TypeError, AttributeError, KeyError, IndexError):
        return False
