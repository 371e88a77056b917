"""The Flow-of-Reasoning domains (envs/for_domains.py) against hand values and the task modules'
own solvers / verifiers: problem splits, random walks over candidates, gold trajectories,
rewards, energies, likelihood bonuses and make_domain. Pure CPU, no model, no Ray."""
from __future__ import annotations

import math
import random
from fractions import Fraction
from types import SimpleNamespace

import pytest

from envs import blocksworld as bw
from envs import game24 as g24
from envs import prontoqa as pq
from envs.for_domains import BlocksWorldDomain, ForDomain, Game24Domain, ProntoQADomain, make_domain

DOMAINS = {"blocksworld": lambda: BlocksWorldDomain((3, 4, 5), (2, 4), slack=2),
           "game24": lambda: Game24Domain("tot"), "prontoqa": lambda: ProntoQADomain((3, 4), slack=1)}


def _bound(domain: ForDomain, p) -> int:
    """The most actions a trajectory may take, from the domain's stopping rule."""
    if isinstance(domain, BlocksWorldDomain):
        return p.optimal_length + domain.slack
    if isinstance(domain, Game24Domain):
        return len(p.numbers) - 1
    return p.hops + domain.slack


def _follow(domain: ForDomain, p, actions):
    """Apply `actions` one by one, each checked to be among the candidates; the final state."""
    s, taken = domain.init(p), []
    for a in actions:
        assert not domain.done(p, s, len(taken))
        assert a in domain.candidates(p, s, taken), a
        s, taken = domain.apply(p, s, a), taken + [a]
    return s


# ----------------------------------------------------------------------------- all domains
@pytest.mark.parametrize("name", DOMAINS)
def test_problems_are_deterministic_sized_and_disjoint(name):
    """Same seed -> same split; sizes as asked; no problem in both train and val."""
    d = DOMAINS[name]()
    train, val = d.problems(12, 6, seed=3)
    assert (train, val) == d.problems(12, 6, seed=3)
    assert len(train) == 12 and len(val) == 6
    key = (lambda q: q.numbers) if name == "game24" else (lambda q: q)  # ToT puzzles carry a rank
    assert not {key(q) for q in train} & {key(q) for q in val}


@pytest.mark.parametrize("name", DOMAINS)
def test_random_walks_terminate_within_bound_through_candidates(name):
    """Uniform seeded walks: candidates non-empty until done, every pick is a candidate, the walk
    stops within the domain's bound, walk() replays it, reward >= 0 (BlocksWorld and Game24:
    the hand formula) and energy finite."""
    d, rng = DOMAINS[name](), random.Random(0)
    train, _ = d.problems(15, 5, seed=1)
    for p in train:
        for _ in range(4):
            s, taken = d.init(p), []
            while not d.done(p, s, len(taken)):
                assert len(taken) < _bound(d, p)
                cands = d.candidates(p, s, taken)
                assert cands
                taken.append(rng.choice(cands))
                s = d.apply(p, s, taken[-1])
            assert 1 <= len(taken) <= _bound(d, p)
            assert d.walk(p, taken)[-1] == s
            r = d.reward(p, s, taken)
            assert r >= 0 and math.isfinite(d.energy(p, s, taken))
            if name == "blocksworld":  # goal facts counted from the stacks here
                on = {(st[k + 1], st[k]) for st in s.stacks for k in range(len(st) - 1)}
                hit = sum(g in on for g in p.goal)
                assert r == pytest.approx(100.0 if hit == len(p.goal) else 10 * hit / len(p.goal))
            if name == "game24":
                assert r == (100.0 if s == (Fraction(24),) else 0.001)


@pytest.mark.parametrize("name", DOMAINS)
@pytest.mark.parametrize("junk", ["__import__('os')", "rm -rf /"])
def test_walk_rejects_garbage_naming_the_domain(name, junk):
    """An action that is no step of the task is a ValueError whose message names the domain."""
    d = DOMAINS[name]()
    p = d.problems(1, 1, seed=0)[0][0]
    with pytest.raises(ValueError, match=f"^{name}:"):
        d.walk(p, [junk])


# ----------------------------------------------------------------------------- BlocksWorld
def test_blocksworld_disjoint_split_at_scale():
    """BUG in BlocksWorldDomain.problems: the contract promises disjoint train / val, but it
    splits independent draws without deduplicating; default config, seed 1: train[49] == val[13]."""
    train, val = BlocksWorldDomain().problems(100, 50, seed=1)
    shared = [(train.index(p), val.index(p)) for p in set(train) & set(val)]
    assert not shared, f"train/val share problems at (train idx, val idx) {shared}"


def test_blocksworld_gold_plan_reaches_goal():
    """Each generated gold plan goes through candidates, stops at the goal: R = 100, correct."""
    d = BlocksWorldDomain((3, 4, 5), (2, 4), slack=2)
    for p in d.problems(10, 0, seed=5)[0]:
        s = _follow(d, p, p.gold_plan)
        assert d.done(p, s, len(p.gold_plan)) and set(p.goal) <= bw.simulate(p, p.gold_plan).on()
        assert d.reward(p, s, p.gold_plan) == 100.0 and d.correct(p, p.gold_plan)
        assert d.energy(p, s, p.gold_plan) == pytest.approx(-math.log(1.01))


def test_blocksworld_hand_problem_partial_reward():
    """red, blue, orange on the table; goal red on blue on orange. Half the goal -> R = 5, not
    correct, E = -log(0.51); the 4-step plan -> R = 100; BFS agrees that 4 is optimal."""
    init = bw.State.from_stacks([["red"], ["blue"], ["orange"]])
    goal = (("blue", "orange"), ("red", "blue"))
    gold = ("pick up the blue block", "stack the blue block on top of the orange block",
            "pick up the red block", "stack the red block on top of the blue block")
    assert len(bw.bfs_plan(init, goal)) == 4
    p = bw.Problem(init, goal, 4, gold)
    d = BlocksWorldDomain(slack=0)
    half = ["pick up the red block", "stack the red block on top of the blue block"]
    s = _follow(d, p, half)
    assert not d.done(p, s, 2)
    assert d.reward(p, s, half) == pytest.approx(5.0) and not d.correct(p, half)
    assert d.energy(p, s, half) == pytest.approx(-math.log(0.51))
    wrong = half + ["unstack the red block from on top of the blue block", "put down the red block"]
    s = _follow(d, p, wrong)
    assert d.done(p, s, 4) and d.reward(p, s, wrong) == 0.0 and not d.correct(p, wrong)
    s = _follow(d, p, gold)
    assert d.reward(p, s, gold) == 100.0 and d.correct(p, gold)
    # an action already taken is not offered again while others apply
    taken = ["pick up the red block", "put down the red block"]
    s = d.walk(p, taken)[-1]
    assert "pick up the red block" not in d.candidates(p, s, taken)
    assert "pick up the blue block" in d.candidates(p, s, taken)


def test_blocksworld_prompt_shows_the_current_state_and_the_space_is_a_tree():
    """Two different 4-step histories reaching the same configuration give the same prompt, FoR's
    statement with the current state and the step (written out by hand); the initial state's
    prompt at step 0 differs; BlocksWorld is a tree domain (log P_B = 0, see the class docstring)."""
    init = bw.State.from_stacks([["red"], ["blue"], ["orange"]])
    goal = (("blue", "orange"), ("red", "blue"))
    p = bw.Problem(init, goal, 4, ())
    d = BlocksWorldDomain(slack=0)
    h1 = ["pick up the red block", "stack the red block on top of the blue block",
          "pick up the orange block", "put down the orange block"]
    h2 = ["pick up the orange block", "put down the orange block",
          "pick up the red block", "stack the red block on top of the blue block"]
    assert d.walk(p, h1)[-1] == d.walk(p, h2)[-1] and h1 != h2
    want = ("[STATEMENT]\nSTATE 4: As initial conditions I have that, the orange block is clear, the red block is "
            "clear, the hand is empty, the red block is on top of the blue block, the blue block is on the table "
            "and the orange block is on the table.\nMy goal is to have that the blue block is on top of the orange "
            "block and the red block is on top of the blue block.\n\nMy plan is as follows:\n\n[PLAN]\nACTION 4:\n")
    assert d.prompt(p, h1) == d.prompt(p, h2) == want
    assert d.prompt(p, []) == ("[STATEMENT]\nSTATE 0: As initial conditions I have that, the blue block is clear, the "
                               "orange block is clear, the red block is clear, the hand is empty, the blue block is on "
                               "the table, the orange block is on the table and the red block is on the table.\nMy goal "
                               "is to have that the blue block is on top of the orange block and the red block is on "
                               "top of the blue block.\n\nMy plan is as follows:\n\n[PLAN]\nACTION 0:\n")
    # back at the initial configuration after 2 steps: same state text, another step
    back = ["pick up the red block", "put down the red block"]
    assert d.prompt(p, back) == d.prompt(p, []).replace("STATE 0:", "STATE 2:").replace("ACTION 0:", "ACTION 2:")
    assert d.tree and d.num_parents(p, d.walk(p, h1)[-1]) == 1


def test_per_domain_for_rules():
    """Reward temperature, untempered / validation P_F temperatures and the local-search prefix
    per domain, as FoR's code (hand values): BlocksWorld and Game24 multiply log R, PrOntoQA
    divides it; an unknown rule is a ValueError naming the domain."""
    bwd, g, pqd = BlocksWorldDomain(), Game24Domain("generated"), ProntoQADomain()
    assert bwd.tempered_log_reward(math.log(100.0), 2.0) == pytest.approx(2 * 4.605170186)
    assert g.tempered_log_reward(math.log(100.0), 1.5) == pytest.approx(1.5 * 4.605170186)
    assert pqd.tempered_log_reward(math.log(36.0), 2.0) == pytest.approx(math.log(6.0))
    assert pqd.tempered_log_reward(-4.0, 4.0) == pytest.approx(-1.0)
    assert (bwd.untempered_pf_temp, bwd.val_pf_temp) == (1.0, 1.0) == (g.untempered_pf_temp, g.val_pf_temp)
    assert (pqd.untempered_pf_temp, pqd.val_pf_temp) == (0.7, 0.5)
    assert [bwd.local_search_keep(n) for n in (1, 2, 5, 6)] == [0, 1, 2, 3]
    assert [g.local_search_keep(n) for n in (3,)] == [1]
    assert [pqd.local_search_keep(n) for n in (0, 1, 3, 4)] == [0, 0, 2, 3]
    odd = BlocksWorldDomain()
    odd.reward_temp_mode = "power"
    with pytest.raises(ValueError, match=r"blocksworld: reward_temp_mode must be one of \['multiply', 'divide'\]"):
        odd.tempered_log_reward(1.0, 2.0)


def test_blocksworld_ll_bonus():
    """FoR's sum of -1/ll_t."""
    assert BlocksWorldDomain().ll_bonus([-2.0, -4.0], [3, 3]) == pytest.approx(0.75)


# ----------------------------------------------------------------------------- Game24
def _reaches_24(d, p, state, taken) -> bool:
    """Depth-first search over candidates (each checked by game24.check_step)."""
    if d.done(p, state, len(taken)):
        return state == (Fraction(24),)
    for a in d.candidates(p, state, taken):
        nxt = g24.check_step(state, a)
        assert nxt is not None and nxt == d.apply(p, state, a), a
        if _reaches_24(d, p, nxt, taken + [a]):
            return True
    return False


def _tot_and_hand_puzzles():
    train, val = Game24Domain("tot").problems(3, 2, seed=0)
    hand = [g24.Puzzle(n) for n in [(1, 1, 1, 1), (1, 1, 2, 3), (3, 3, 8, 8), (1, 5, 5, 5)]]
    return train + val + hand


def test_game24_search_over_candidates_matches_solver():
    """A state with only 24 is reachable through candidates iff game24.solvable (including
    (3,3,8,8) and (1,5,5,5), which need fractions, and the unsolvable (1,1,1,1), (1,1,2,3))."""
    d = Game24Domain()
    want = {(1, 1, 1, 1): False, (1, 1, 2, 3): False, (3, 3, 8, 8): True, (1, 5, 5, 5): True}
    puzzles = _tot_and_hand_puzzles()
    assert sum(g24.solvable(p.numbers) for p in puzzles) >= 5
    for p in puzzles:
        assert _reaches_24(d, p, d.init(p), []) == g24.solvable(p.numbers) == want.get(p.numbers, True)


def test_game24_candidates_are_the_nonnegative_combinations():
    """Distinct texts, at most 30 at 4 numbers, each valid; their next states are exactly the
    non-negative pairwise combinations (+, *, |a-b|, a/b, b/a) computed here."""
    d = Game24Domain()
    for p in _tot_and_hand_puzzles():
        s = d.init(p)
        cands = d.candidates(p, s, [])
        assert len(cands) == len(set(cands)) <= 30
        nexts = {g24.check_step(s, a) for a in cands}
        assert None not in nexts and all(min(n) >= 0 for n in nexts)
        want = set()
        for i in range(4):
            for j in range(i + 1, 4):
                a, b = s[i], s[j]
                rest = [s[k] for k in range(4) if k not in (i, j)]
                for v in [a + b, a * b, abs(a - b)] + ([a / b] if b else []) + ([b / a] if a else []):
                    want.add(tuple(sorted(rest + [v])))
        assert nexts == want
    # by hand, two numbers
    assert set(d.candidates(None, (Fraction(2), Fraction(3)), [])) == {
        "2 + 3 = 5 (left: 5)", "2 * 3 = 6 (left: 6)", "3 - 2 = 1 (left: 1)",
        "2 / 3 = 2/3 (left: 2/3)", "3 / 2 = 3/2 (left: 3/2)"}
    assert sorted(d.candidates(None, (Fraction(4), Fraction(4)), [])) == [
        "4 * 4 = 16 (left: 16)", "4 + 4 = 8 (left: 8)", "4 - 4 = 0 (left: 0)", "4 / 4 = 1 (left: 1)"]


def test_game24_rewards_energies_and_prompt():
    """8/(3-8/3): a path to 24 gives R = 100, correct, E = -log(1.001); a dead end R = 0.001,
    E = -log(0.001); the intermediate solvable state has E = -log(1.001)."""
    d, p = Game24Domain(), g24.Puzzle((3, 3, 8, 8))
    path = ["8 / 3 = 8/3 (left: 8/3 3 8)", "3 - 8/3 = 1/3 (left: 1/3 8)", "8 / 1/3 = 24 (left: 24)"]
    states, s = d.walk(p, path), _follow(d, p, path)
    assert s == states[-1] == (Fraction(24),) and d.done(p, s, 3)
    assert d.reward(p, s, path) == 100.0 and d.correct(p, path) and g24.check_steps(p.numbers, path)
    assert d.energy(p, s, path) == pytest.approx(-math.log(1.001))
    assert d.energy(p, states[1], path[:1]) == pytest.approx(-math.log(1.001))
    dead = ["3 + 3 = 6 (left: 6 8 8)", "8 + 8 = 16 (left: 6 16)", "6 + 16 = 22 (left: 22)"]
    s = _follow(d, p, dead)
    assert d.done(p, s, 3) and d.reward(p, s, dead) == pytest.approx(0.001) and not d.correct(p, dead)
    assert d.energy(p, s, dead) == pytest.approx(-math.log(0.001))
    assert d.energy(p, d.walk(p, dead[:1])[-1], dead[:1]) == pytest.approx(-math.log(0.001))
    assert "Input: 3 3 8 8\nSteps:\n" in d.prompt(p, [])
    assert d.prompt(p, path[:1]).endswith("Steps:\n" + path[0] + "\n")
    for q in d.problems(5, 0, 0)[0]:  # the solver's gold steps are candidates too
        assert d.correct(q, g24.gold_steps(q.numbers))
        assert d.reward(q, _follow(d, q, g24.gold_steps(q.numbers)), []) == 100.0


def test_game24_ll_bonus_sources_and_bad_source():
    """exp(mean token ll)^(1/0.7); "generated" puzzles are distinct solvable 4-multisets; a bad
    source names for_.game24_source."""
    assert Game24Domain().ll_bonus([-1.0, -2.0], [2, 4]) == pytest.approx(math.exp(-0.5) ** (1 / 0.7))
    d = Game24Domain("generated")
    train, val = d.problems(8, 4, seed=7)
    assert (train, val) == d.problems(8, 4, seed=7) and (train, val) != d.problems(8, 4, seed=8)
    assert all(len(p.numbers) == 4 and g24.solvable(p.numbers) for p in train + val)
    assert len({p.numbers for p in train + val}) == 12
    with pytest.raises(ValueError, match=r"for_\.game24_source"):
        Game24Domain("csv")


# ----------------------------------------------------------------------------- PrOntoQA
def _examples():
    d = ProntoQADomain((3, 4), slack=1)
    train, val = d.problems(10, 4, seed=11)
    assert {p.hops for p in train + val} == {3, 4} and {p.label for p in train} == {True, False}
    return d, train + val


def test_prontoqa_gold_chain():
    """The gold proof's rules, through candidates, re-derive its claims; done after `hops`
    steps, correct, R = 0.9 (1e-5 + 20 hops + 20 hops for deciding the query), E = -log R;
    an intermediate state's energy counts its derivations only; proof_text is the gold proof plus
    the example's label ("True" / "False"; both labels occur, see _examples)."""
    d, examples = _examples()
    for p in examples:
        rules, claims = list(p.proof[1::2]), list(p.proof[2::2])
        assert len(rules) == p.hops
        states = d.walk(p, rules)
        assert [st[0] for st in states[1:]] == claims and _follow(d, p, rules) == states[-1]
        s = states[-1]
        assert d.done(p, s, p.hops) and d.correct(p, rules) and pq.check_proof(p, d.proof_text(p, rules))
        r = 0.9 * (1e-5 + 20 * p.hops + 20 * p.hops)
        assert d.reward(p, s, rules) == pytest.approx(r)
        assert d.energy(p, s, rules) == pytest.approx(-math.log(r))
        assert d.energy(p, states[1], rules[:1]) == pytest.approx(-math.log(0.9 * (1e-5 + 20)))
        assert d.proof_text(p, rules).splitlines() == list(p.proof) + [p.answer]
        assert d.prompt(p, rules[:1]).endswith(f"Claim 1.1: {claims[0]}\nNext 1.1: ")


def test_prontoqa_inapplicable_first_rule_ends_the_trajectory():
    """The second gold rule does not apply to the entity fact: done, R = 0.9e-5, not correct;
    a non-rule sentence of the context is no candidate and also ends it."""
    d, examples = _examples()
    for p in examples:
        bad = p.proof[3]
        assert bad in d.candidates(p, d.init(p), [])
        s = d.walk(p, [bad])[-1]
        assert d.done(p, s, 1) and not d.correct(p, [bad])
        assert d.reward(p, s, [bad]) == pytest.approx(0.9e-5)
        assert p.proof[0] not in d.candidates(p, d.init(p), [])
        assert d.done(p, d.walk(p, [p.proof[0]])[-1], 1)


def test_prontoqa_wrong_property_earns_no_query_bonus():
    """Gold rule 1, then the property rule of the second chain concept (not the query's
    property): done after 2 steps, two valid derivations but no bonus, not correct."""
    d, examples = _examples()
    for p in examples:
        c1 = pq._parse(p, p.proof[2]).obj  # the entity's second concept
        rule = next(s for s in p.facts if isinstance(f := pq._parse(p, s), pq.Rule)
                    and f.subject == c1 and f.obj in p.properties)
        assert rule not in p.proof
        taken = [p.proof[1], rule]
        s = _follow(d, p, taken)
        assert pq._parse(p, s[0]).obj in p.properties and d.done(p, s, 2)
        assert d.reward(p, s, taken) == pytest.approx(0.9 * (1e-5 + 40))
        assert not d.correct(p, taken)
        assert d.proof_text(p, taken).endswith("\nFalse")


# ----------------------------------------------------------------------------- make_domain
def test_make_domain():
    """Each domain from a config-like object with its keys; an unknown name is a ValueError."""
    cfg = dict(n_blocks=[3], plan_lengths=[2], slack=1, game24_source="generated", hops=[4])
    bwd = make_domain(SimpleNamespace(domain="blocksworld", **cfg))
    assert isinstance(bwd, BlocksWorldDomain) and (bwd.n_blocks, bwd.plan_lengths, bwd.slack) == ([3], [2], 1)
    assert all(len(p.init.blocks) == 3 and p.optimal_length == 2 for p in bwd.problems(3, 1, 0)[0])
    g = make_domain(SimpleNamespace(domain="game24", **cfg))
    assert isinstance(g, Game24Domain) and g.source == "generated"
    pqd = make_domain(SimpleNamespace(domain="prontoqa", **cfg))
    assert isinstance(pqd, ProntoQADomain) and pqd.hops == [4] and pqd.slack == 1
    assert {p.hops for p in pqd.problems(3, 1, 0)[0]} == {4}
    with pytest.raises(ValueError, match=r"for_\.domain.*sudoku"):
        make_domain(SimpleNamespace(domain="sudoku", **cfg))


def test_prontoqa_overshooting_chain_scores_below_the_proof():
    """Walking past the query's concept to the extra ancestor and ending on its property is all
    valid steps, but earns less than the proof (no query bonus) and is not correct."""
    d, examples = _examples()
    for p in examples:
        rules = list(p.proof[1::2])
        isa = [r for r in rules[:-1]]
        last = pq._parse(p, p.proof[-1 - 1 - 1])  # the claim before the property step: "X is a c_{h-1}"
        up = next(s for s in p.facts if isinstance(f := pq._parse(p, s), pq.Rule)
                  and f.subject == last.obj and f.obj in p.concepts)
        top = pq._parse(p, up).obj
        prop = next(s for s in p.facts if isinstance(f := pq._parse(p, s), pq.Rule)
                    and f.subject == top and f.obj in p.properties)
        taken = isa + [up, prop]
        s = d.walk(p, taken)[-1]
        assert s[1] and s[2] == p.hops + 1 and d.done(p, s, len(taken))
        gold = d.walk(p, rules)[-1]
        assert d.reward(p, s, taken) < d.reward(p, gold, rules) and not d.correct(p, taken)
