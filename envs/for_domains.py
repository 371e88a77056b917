"""Flow-of-Reasoning domains: a reasoning task as a GFlowNet state graph with finite action sets.

The FoR trainer (orchestrator/for_trainer.py) never branches on the task; it talks to a `ForDomain`:

    train, val = domain.problems(n_train, n_val, seed)     # once, at start; disjoint
    s = domain.init(p); taken = []
    while not domain.done(p, s, len(taken)):
        A = domain.candidates(p, s, taken)                  # non-empty; the policy picks one text
        s = domain.apply(p, s, a); taken.append(a)          # ValueError: a is not applicable in s
    R = domain.reward(p, s, taken)                          # terminal reward >= 0 (FoR's r1)
    E = domain.energy(p, s, taken)                          # partial energy of any state (FL-GFN)
    domain.correct(p, taken)                                # the task's public verifier

`prompt(p, taken)` is the text of a state; an action's text follows it (plus "\\n"), and log P_F(a|s)
= a softmax over A(s) of the LM's sequence log-probs (FoR). `tree` domains have log P_B = 0: the
GFlowNet state is the whole history (the objects are the action sequences), whatever part of it
the prompt shows; a DAG domain (tree = False) gives |Pa(s)| through `num_parents`.
`ll_bonus` is FoR's augmented reward from the base model's log-likelihood of each chosen step.

Per-domain FoR rules the trainer reads (so that it never branches on the domain), each citing the
FoR file/line it follows (Yu-Fangxu/FoR at 84c8f82):
    domain.tempered_log_reward(log_r, tau)   # log R · τ_R or log R / τ_R (reward_temp_mode)
    domain.untempered_pf_temp                # P_F temperature of the trajectories not drawing the tempered one
    domain.val_pf_temp                       # P_F temperature of validation samples
    domain.local_search_keep(n)              # actions of the best trajectory local search keeps
Every method is deterministic and pure; none raises on a well-formed trajectory.
"""
from __future__ import annotations

import math
from abc import ABC, abstractmethod
from fractions import Fraction
from typing import Any, Sequence

from algorithms.gflownet import REWARD_TEMPERATURE_MODES, temper_log_reward
from envs import blocksworld as bw
from envs import game24 as g24
from envs import prontoqa as pq


class ForDomain(ABC):
    name: str
    tree: bool = True
    reward_temp_mode: str = "multiply"  # see tempered_log_reward
    untempered_pf_temp: float = 1.0
    val_pf_temp: float = 1.0

    @abstractmethod
    def problems(self, n_train: int, n_val: int, seed: int) -> tuple[list, list]: ...

    @abstractmethod
    def init(self, problem) -> Any: ...

    @abstractmethod
    def candidates(self, problem, state, taken: Sequence[str]) -> list[str]: ...

    @abstractmethod
    def apply(self, problem, state, action: str) -> Any: ...

    @abstractmethod
    def done(self, problem, state, n_actions: int) -> bool: ...

    @abstractmethod
    def prompt(self, problem, taken: Sequence[str]) -> str: ...

    @abstractmethod
    def reward(self, problem, state, taken: Sequence[str]) -> float: ...

    @abstractmethod
    def energy(self, problem, state, taken: Sequence[str]) -> float: ...

    @abstractmethod
    def correct(self, problem, taken: Sequence[str]) -> bool: ...

    def num_parents(self, problem, state) -> int:
        return 1

    def state_text(self, problem, state) -> str:
        """A state as text, for the run's trajectory dumps and `hyflow view`."""
        return str(state)

    def ll_bonus(self, step_lls: Sequence[float], step_tokens: Sequence[int]) -> float:
        """FoR's likelihood term from the base model's log-likelihood of each chosen step
        (sequence log-prob ll_t over step_tokens[t] tokens); 0 for domains without one."""
        return 0.0

    def tempered_log_reward(self, log_r, tau: float):
        """The training target's log R under reward temperature tau (the trainer's schedule), by
        the domain's FoR rule: log R · tau ("multiply") or log R / tau ("divide"). Linear in log R,
        so the trainer tempers the FL partial energies the same way."""
        if self.reward_temp_mode not in REWARD_TEMPERATURE_MODES:
            raise ValueError(f"{self.name}: reward_temp_mode must be one of {list(REWARD_TEMPERATURE_MODES)}, "
                             f"got {self.reward_temp_mode!r}")
        return temper_log_reward(log_r, tau, self.reward_temp_mode)

    def local_search_keep(self, n_actions: int) -> int:
        """How many leading actions of the best trajectory (n_actions long) local search keeps
        before re-completing: half (FoR BlocksWorld `K = self.args.step // 2`,
        lightning_module_selection.py:610)."""
        return n_actions // 2

    def walk(self, problem, taken: Sequence[str]) -> list:
        """States s_0 … s_n along `taken`; ValueError on an inapplicable action."""
        states = [self.init(problem)]
        for a in taken:
            states.append(self.apply(problem, states[-1], a))
        return states


# ----------------------------------------------------------------------------- BlocksWorld
class BlocksWorldDomain(ForDomain):
    """PlanBench BlocksWorld (FoR §4). A(s) = applicable actions not yet taken; stop at the goal or
    after optimal + slack actions; R = 100 at the goal else 10 · goal fraction; ll bonus Σ_t −1/ll_t
    (FoR's λ = 1.5). Reward temperature multiplies log R and untempered trajectories sample P_F at
    temperature 1 (FoR lightning_module_selection.py:247 `LOG_R * self.reward_temperature`, :176
    `pf_temp = 1.0`); validation at temperature 1 without ε (its test/validation sampling).

    Prompt and P_B. The prompt shows the *current* block configuration and the step number in
    FoR's statement template ("STATE t: As initial conditions I have that, <state>" ... "ACTION t:",
    lightning_module_selection.py:496-510 `add_time` + `<init_state>` = the current state), so P_F
    depends on (configuration, step) and two histories that reach the same configuration in as many
    steps see the same prompt. The GFlowNet itself is the tree of action sequences (log P_B = 0),
    because the objects are plans, not configurations: FoR's reward is a function of the plan (the
    likelihood bonus scores every step) and its metrics count distinct plans; the exclusion of
    taken actions from A(s) also makes P_F depend on the history. With log P_B = 0 the sampler
    targets P(plan) ∝ R(plan) exactly; uniform P_B = 1/|Pa(configuration)| would instead need R to
    be a function of the configuration, and at depth t it would spread mass over parents that are
    not reachable in t steps (at t = 1 the only parent is s_0). This is also what FoR's code
    computes: it passes the last sample's scalar log_bf (`log_bf=log_bf`, :257, not LOG_BF) to its
    log-variance TB, where a constant cancels in the batch mean.

    Deviations kept (reasons): no PlanBench intro and no 1-shot example before the statement (FoR
    prepends both, several hundred tokens; hyflow's default model is SmolLM2-135M on 2 CPU cores, where every
    candidate row carries the prompt); the exact symbolic world model instead of the LLM-predicted
    transitions; one prompt for P_F and the likelihood bonus (FoR scores the bonus with a 4-shot
    prompt); A(s) without taken actions for sampling *and* training (FoR samples without them,
    :501, but trains a softmax over all applicable actions): the trained P_F is the one sampled."""
    name = "blocksworld"

    def __init__(self, n_blocks: Sequence[int] = (3, 4, 5), plan_lengths: Sequence[int] = (2,), slack: int = 0):
        self.n_blocks, self.plan_lengths, self.slack = list(n_blocks), list(plan_lengths), slack

    def problems(self, n_train, n_val, seed):
        """Distinct problems (the generator draws independently, so it can repeat one): draw
        more until n_train + n_val distinct ones, kept in draw order."""
        need, k = n_train + n_val, n_train + n_val
        while True:
            probs = list(dict.fromkeys(bw.generate_problems(k, self.n_blocks, self.plan_lengths, seed=seed)))
            if len(probs) >= need:
                return probs[:n_train], probs[n_train:need]
            if k >= 64 * max(need, 1):
                raise ValueError(f"blocksworld: only {len(probs)} distinct problems with n_blocks={self.n_blocks}, "
                                 f"plan_lengths={self.plan_lengths}; asked for {need}")
            k *= 2

    def init(self, problem):
        return problem.init

    def candidates(self, problem, state, taken):
        allowed = bw.allowed_actions(state)
        return [a for a in allowed if a not in taken] or allowed

    def apply(self, problem, state, action):
        act = bw.parse_action(action)
        nxt = bw.apply(state, act) if act is not None else None
        if nxt is None:
            raise ValueError(f"blocksworld: action {action!r} is not applicable")
        return nxt

    def done(self, problem, state, n_actions):
        return n_actions >= problem.optimal_length + self.slack or bw.is_goal(problem, state)

    def prompt(self, problem, taken):
        """FoR's statement with the current configuration as the initial conditions and the step
        t = len(taken) (see the class docstring); the action text follows "ACTION t:\\n"."""
        t, state = len(taken), self.walk(problem, taken)[-1]
        return (f"[STATEMENT]\nSTATE {t}: As initial conditions I have that, {bw.describe_state(state)}.\n"
                f"My goal is to have that {bw.describe_goal(problem.goal)}.\n\nMy plan is as follows:\n\n"
                f"[PLAN]\nACTION {t}:\n")

    def reward(self, problem, state, taken):
        return bw.for_reward(problem, state)

    def state_text(self, problem, state) -> str:
        return bw.describe_state(state)

    def energy(self, problem, state, taken):
        return bw.partial_energy(problem, state)

    def correct(self, problem, taken):
        return bw.check_plan(problem, list(taken))

    def ll_bonus(self, step_lls, step_tokens):
        return float(sum(-1.0 / min(ll, -1e-6) for ll in step_lls))


# ----------------------------------------------------------------------------- Game24
GAME24_INSTRUCTION = ("Use numbers and basic arithmetic operations (+ - * /) to obtain 24. Each step, "
                      "choose two of the remaining numbers to obtain a new number.\n")


class Game24Domain(ForDomain):
    """Game of 24 (FoR §4): three steps "a op b = c (left: ...)" on the remaining multiset; the
    prompt holds the steps so far (a tree: log P_B = 0). A(s) = every distinct step with a
    non-negative result (+, *, larger − smaller, a/b, b/a). R = 100 when 24 is left, else 0.001;
    energy −log(0.001 + 1[the rest can still make 24]); ll bonus = exp(mean token ll)^(1/0.7).

    Deviation kept: FoR-BlocksWorld-style training on Game24. FoR's Game24 is offline TB over
    fixed trajectories (Game24/data/train.json) with one global log Z and no reward temperature
    (Game24/lightning_module.py:264 `torch.log(rewards + ll_rewards)` goes straight into tb_loss);
    hyflow samples online over the enumerated candidates with replay, local search and a
    per-problem log Z (so no training-trajectory file is needed, and log Z need not fit puzzles of
    different difficulty at once). Its reward temperature follows BlocksWorld's rule (multiply,
    untempered P_F at 1); configs/for_game24.yaml sets it to [1, 1], FoR's Game24 (none)."""
    name = "game24"

    def __init__(self, source: str = "tot"):
        if source not in ("tot", "generated"):
            raise ValueError(f"for_.game24_source must be 'tot' or 'generated', got {source!r}")
        self.source = source

    def problems(self, n_train, n_val, seed):
        if self.source == "generated":
            probs = g24.generate_puzzles(n_train + n_val, seed=seed)
            return probs[:n_train], probs[n_train:]
        train, val = g24.load_puzzles("train"), g24.load_puzzles("val")
        if n_train > len(train) or n_val > len(val):
            raise ValueError(f"game24: asked {n_train} train / {n_val} val puzzles, the ToT splits hold "
                             f"{len(train)} / {len(val)}")
        return train[:n_train], val[:n_val]  # ranked by human solve time: the easiest first

    def init(self, problem):
        return tuple(Fraction(x) for x in problem.numbers)

    def candidates(self, problem, state, taken):
        out, seen = [], set()
        for i in range(len(state)):
            for j in range(i + 1, len(state)):
                rest = state[:i] + state[i + 1:j] + state[j + 1:]
                for op, v, swapped in g24._combine(state[i], state[j]):
                    if v < 0:
                        continue
                    a, b = (state[j], state[i]) if swapped else (state[i], state[j])
                    text = g24.format_step(a, op, b, tuple(sorted(rest + (v,))))
                    if text not in seen:
                        seen.add(text)
                        out.append(text)
        return out

    def apply(self, problem, state, action):
        nxt = g24.check_step(state, action)
        if nxt is None:
            raise ValueError(f"game24: {action!r} is not a valid step from {[g24.format_number(x) for x in state]}")
        return nxt

    def done(self, problem, state, n_actions):
        return len(state) <= 1

    def prompt(self, problem, taken):
        return GAME24_INSTRUCTION + f"Input: {problem.text}\nSteps:\n" + "".join(a + "\n" for a in taken)

    def reward(self, problem, state, taken):
        return g24.for_reward(state)

    def energy(self, problem, state, taken):
        return g24.partial_energy(state)

    def correct(self, problem, taken):
        return g24.check_steps(problem.numbers, list(taken))

    def ll_bonus(self, step_lls, step_tokens):
        n = sum(step_tokens)
        return math.exp(sum(step_lls) / n) ** (1 / 0.7) if n else 0.0


# ----------------------------------------------------------------------------- PrOntoQA
class ProntoQADomain(ForDomain):
    """PrOntoQA-style deduction (FoR §4): the state is the current claim (FoR's prompt shows the
    facts, the query and the claim); A(s) = the context's rules not yet used. The symbolic world
    model (prontoqa.next_claim) gives the next claim; an inapplicable rule ends the trajectory, as
    does a claim about a property or hops + slack steps. Reward: FoR's rule reward (sum mode)
    λ·(ε + 20·k), k = valid derivations while every earlier step was valid, plus 20·hops when the
    last claim decides the query (its property, either polarity). Without that term a chain that
    walks past the query's concept and ends on another property scores as much as the proof
    (a deliberate deviation from FoR's reward, which has no such term).

    FoR PrOntoQA rules (prontoqa/lightning_module.py): the reward temperature *divides* log R
    (:236 `LOG_R * (1 / self.reward_temperature)`: τ_R 1 → 2 flattens the target), untempered
    trajectories sample P_F at 0.7 (:154 `pf_temp = 0.7`), validation samples at 0.5 (:469
    `temperature=0.5` in validation_step, after one greedy sample), and local search keeps all but
    the last action of the best trajectory (:607 `if step < len(past_actions)-1`). Deviations kept
    (reasons): P_F samples from the softmax of the summed token log-probs it trains (FoR samples
    from mean-token log-probs, :749, but trains the sum, :1001); A(s) without used rules for
    sampling and training (FoR trains a softmax over all rules); the symbolic world model and rule
    checks instead of the LLM world model and the gold-plan checks of FoR's local search."""
    name = "prontoqa"
    reward_temp_mode, untempered_pf_temp, val_pf_temp = "divide", 0.7, 0.5

    def __init__(self, hops: Sequence[int] = (3,), slack: int = 1):
        self.hops, self.slack = list(hops), slack

    def problems(self, n_train, n_val, seed):
        probs = pq.generate_examples(n_train + n_val, self.hops, seed=seed)
        return probs[:n_train], probs[n_train:]

    def init(self, problem):
        return (problem.proof[0], True, 0)  # (claim, every step valid so far, valid derivations)

    def _rules(self, problem) -> list[str]:
        return [s for s in problem.facts if isinstance(_form(problem, s), pq.Rule)]

    def candidates(self, problem, state, taken):
        rules = self._rules(problem)
        return [r for r in rules if r not in taken] or rules

    def apply(self, problem, state, action):
        if action not in problem.facts:
            raise ValueError(f"prontoqa: {action!r} is not a sentence of the context")
        claim, ok, k = state
        nxt = pq.next_claim(problem, claim, action) if ok else None
        if nxt is None:
            return (claim, False, k)
        return (nxt, True, k + 1)

    def _concludes(self, problem, claim: str) -> bool:
        q, c = _form(problem, problem.query.split(":", 1)[1]), _form(problem, claim)
        return isinstance(c, pq.Fact) and c.entity == q.entity and c.obj == q.obj

    def done(self, problem, state, n_actions):
        claim, ok, _ = state
        return (not ok or n_actions >= problem.hops + self.slack
                or _form(problem, claim).obj in problem.properties)

    def prompt(self, problem, taken):
        return pq.to_prompt(problem, self.walk(problem, taken)[-1][0]) + " "

    def reward(self, problem, state, taken):
        bonus = problem.hops if self._concludes(problem, state[0]) else 0
        return pq.LAMBDA * (pq.EPS + pq.STEP_REWARD * (state[2] + bonus))

    def energy(self, problem, state, taken):
        """−log of the reward so far: partial credit for each valid derivation (the bonus only
        ever lands on a terminal state: deciding the query ends the trajectory)."""
        return -math.log(self.reward(problem, state, taken))

    def proof_text(self, problem, taken: Sequence[str]) -> str:
        """The proof the trajectory stands for: the entity fact, each (rule, derived claim) while
        valid, and the label its last claim gives ("True" when it is the query, else "False")."""
        lines, claim = [problem.proof[0]], problem.proof[0]
        for a in taken:
            nxt = pq.next_claim(problem, claim, a)
            if nxt is None:
                break
            lines += [a, nxt]
            claim = nxt
        q = problem.query.split(":", 1)[1].strip()
        return "\n".join(lines + ["True" if _form(problem, claim) == _form(problem, q) else "False"])

    def correct(self, problem, taken):
        return pq.check_proof(problem, self.proof_text(problem, taken))

    def local_search_keep(self, n_actions):
        """All but the last action (FoR prontoqa/lightning_module.py:607)."""
        return max(n_actions - 1, 0)


def _form(example, sentence: str):
    """The logical form of a PrOntoQA sentence (prontoqa.parse_sentence): Rule, Fact or None."""
    return pq.parse_sentence(sentence, example.concepts, example.properties)


DOMAINS = {"blocksworld": BlocksWorldDomain, "game24": Game24Domain, "prontoqa": ProntoQADomain}


def make_domain(for_cfg) -> ForDomain:
    """The domain named by for_.domain, built from its keys of the for_ config section."""
    if for_cfg.domain == "blocksworld":
        return BlocksWorldDomain(for_cfg.n_blocks, for_cfg.plan_lengths, for_cfg.slack)
    if for_cfg.domain == "game24":
        return Game24Domain(for_cfg.game24_source)
    if for_cfg.domain == "prontoqa":
        return ProntoQADomain(for_cfg.hops, for_cfg.slack)
    raise ValueError(f"for_.domain must be one of {sorted(DOMAINS)}, got {for_cfg.domain!r}")
