"""Step-wise multi-KB retrieval QA for Step-GRPO (R1-Router's training setup on a generated world).

World: `generate_world(seed)` makes fictional people, companies, cities and countries (names
built from syllables, so answers cannot be memorised). Facts are split between two knowledge bases
(see kb.py): the text passages hold where a person was born, whom they work for, who founded a
company (stated in both passages) and where it is headquartered; the table holds birth years,
founding years, industries, and each city's country, mayor and population.

Questions: `generate_examples(n, seed)` draws 2-4-hop questions from 11 templates in turn. A gold
trajectory is a list of `GoldStep(sub_question, kb, result, value)`: `kb` is "text" (result = the
BM25 top-1 passage), "table" (result = the row found by key, rendered) or "none" (an arithmetic
step; result = the computed value), followed by the answer. Every gold retrieval is run through
the real knowledge bases while generating, and a question is kept only if each step's top result
holds the fact it needs (as R1-Router keeps only trajectories that reach the answer).

Step states (teacher forcing, as R1-Router): `step_states(example)` gives one `StepState` per
step; state t shows the question and the gold sub-questions and results of steps < t, and carries
the gold label of step t (a sub-question + KB, or the final answer). `state_id` names the state,
so Step-GRPO groups the n rollouts sampled from it (`compute_step_grpo_advantages(scores,
state_ids, mask)`).

Responses (R1-Router's tags, parsed as its Easy-R1 `reward_score/step.py` does: see response.py):
    retrieval step:  <think>…</think><sub-question>…</sub-question><ret>KB</ret>
    answer step:     <think>…</think><answer>…</answer>
Tags are found case-insensitively (the text is lower-cased), the first pair of each, with any text
around them; a state reads only the tags of its kind. <ret> holds KB names (text, table, none)
separated by commas.

Rewards (R1-Router `ret_accuracy_reward` / `ans_accuracy_reward`), `score_step(state, response)`:
    retrieval state: 0 when a tag is missing, a <ret> item is not a KB name, or "none" is listed
                     with another item; else 0.5·cos(emb(sub-question), emb(gold sub-question))
                     + 0.5·1[<ret> holds exactly one item and it is the gold KB]
    answer state:    0 when a tag is missing; else the token recall of the answer against the gold
                     (SQuAD normalisation): 1 if the recall is 1 for a gold of ≤ 5 words (or
                     several golds), the recall itself for one gold of > 5 words, else 0.
    Responses longer than MAX_RESPONSE_CHARS score 0. emb = all-MiniLM-L6-v2 (kb.Embedder, an
    uncased model, so lower-casing the sub-question changes nothing; R1-Router used BGE-M3).
    Recall rewards long answers that list many names: that is R1-Router's reward. Deviations are
    listed in response.py.
`compute_score(data_source, solution_str, ground_truth, extra_info)` is the same reward with the
label carried by the row (verl signature), and `make_dataset(n_questions, seed)` the rows.
"""
from __future__ import annotations

import random
from dataclasses import asdict, dataclass
from typing import Sequence

from .kb import (KB_NAMES, Embedder, KnowledgeBases, Passage, TableKB, TextKB,
                 default_embedder)
from .response import (MAX_RESPONSE_CHARS, SHORT_GOLD_WORDS, Parsed, answer_reward,  # noqa: F401
                       normalize_answer, parse_response, ret_items_error, token_recall)

DATA_SOURCE = "hyflow/kbqa"

# ----------------------------------------------------------------------------- world

_ONSETS = "b br d dr f g gr h k l m n p r s st t tr v z".split()
_VOWELS = "a e i o u ai ei ou ia".split()
_CODAS = ["", "n", "r", "l", "s", "th", "x", "m", "nd", "rk"]
_COMPANY_SUFFIX = ["Labs", "Industries", "Systems", "Group", "Dynamics", "Foods", "Motors", "Media"]
_CITY_SUFFIX = ["mora", "vale", "stad", "holm", "ford", "grad", "wick", "port"]
_COUNTRY_SUFFIX = ["land", "ia", "stan", "mark"]
_ROLES = ["engineer", "accountant", "designer", "chemist", "pilot", "teacher", "lawyer", "nurse",
          "analyst", "architect"]
_INDUSTRIES = ["robotics", "textiles", "shipping", "pharmaceuticals", "software", "mining",
               "banking", "publishing", "aviation", "agriculture"]


@dataclass
class Person:
    name: str
    born_in: str
    works_for: str
    birth_year: int
    role: str
    founded: str | None = None


@dataclass
class Company:
    name: str
    founder: str
    hq: str
    founded_year: int
    industry: str


@dataclass
class City:
    name: str
    country: str
    mayor: str
    population: int


@dataclass
class World:
    seed: int
    people: dict[str, Person]
    companies: dict[str, Company]
    cities: dict[str, City]
    countries: list[str]
    kbs: KnowledgeBases


class _Names:
    """Unique syllable words; every generated word is distinct from all others (any kind)."""

    def __init__(self, rng: random.Random):
        self.rng, self.used = rng, set()

    def word(self, syllables: int, suffix: str = "") -> str:
        for _ in range(10_000):
            w = "".join(self.rng.choice(_ONSETS) + self.rng.choice(_VOWELS) for _ in range(syllables))
            w = (w + (suffix or self.rng.choice(_CODAS))).capitalize()
            if w.lower() not in self.used and len(w) >= 4:
                self.used.add(w.lower())
                return w
        raise RuntimeError("ran out of generated names")  # pragma: no cover (space is ~10^6)


def generate_world(seed: int, n_people: int = 120, n_companies: int = 40, n_cities: int = 16,
                   n_countries: int = 6) -> World:
    """A fictional world, deterministic for its arguments. Founders are distinct people and work
    for a company other than their own; every mayor is a founder (so the 4-hop "company founded by
    the mayor" question exists for every person)."""
    if not (n_countries >= 1 and n_cities >= 1 and n_companies >= 2 and n_people >= n_companies
            and n_companies >= n_cities):
        raise ValueError(f"need n_people >= n_companies >= max(2, n_cities) >= 1, n_countries >= 1; "
                         f"got {n_people}, {n_companies}, {n_cities}, {n_countries}")
    rng = random.Random(seed)
    names = _Names(rng)
    countries = [names.word(2, rng.choice(_COUNTRY_SUFFIX)) for _ in range(n_countries)]
    city_names = [names.word(2, rng.choice(_CITY_SUFFIX)) for _ in range(n_cities)]
    company_names = [f"{names.word(2)} {rng.choice(_COMPANY_SUFFIX)}" for _ in range(n_companies)]
    person_names = [f"{names.word(2)} {names.word(rng.choice((2, 3)))}" for _ in range(n_people)]

    people = {p: Person(p, rng.choice(city_names), rng.choice(company_names), rng.randint(1930, 1999),
                        rng.choice(_ROLES)) for p in person_names}
    founders = rng.sample(person_names, n_companies)
    companies = {}
    for k, f in zip(company_names, founders):
        by = people[f].birth_year
        companies[k] = Company(k, f, rng.choice(city_names), min(2023, by + rng.randint(22, 60)),
                               rng.choice(_INDUSTRIES))
        people[f].founded = k
        if people[f].works_for == k:  # the founder works elsewhere: one passage, one company name
            people[f].works_for = rng.choice([c for c in company_names if c != k])
    mayors = rng.sample(founders, n_cities)
    cities = {c: City(c, rng.choice(countries), m, rng.randint(20, 2000) * 1000)
              for c, m in zip(city_names, mayors)}

    passages = []
    for p in people.values():
        text = f"{p.name} was born in {p.born_in} and works for {p.works_for} as {_article(p.role)}."
        if p.founded:
            text += f" {p.name} founded {p.founded}."
        passages.append(Passage(f"person:{p.name}", p.name, text))
    for k in companies.values():
        passages.append(Passage(f"company:{k.name}", k.name,
                                f"{k.name} was founded by {k.founder} and is headquartered in {k.hq}."))
    rows: dict[str, dict] = {}
    for p in people.values():
        rows[p.name] = {"type": "person", "birth year": p.birth_year}
    for c in cities.values():
        rows[c.name] = {"type": "city", "country": c.country, "mayor": c.mayor, "population": c.population}
    for k in companies.values():
        rows[k.name] = {"type": "company", "founded": k.founded_year, "industry": k.industry}
    return World(seed, people, companies, cities, countries,
                 KnowledgeBases(TextKB(passages), TableKB(rows)))


def _article(word: str) -> str:
    return ("an " if word[0] in "aeiou" else "a ") + word


# ----------------------------------------------------------------------------- questions

@dataclass(frozen=True)
class GoldStep:
    sub_question: str
    kb: str       # "text" | "table" | "none"
    result: str   # what the KB returned (passage, rendered row); the computed value for "none"
    value: str    # the fact this step establishes


@dataclass(frozen=True)
class Example:
    qid: str
    question: str
    answer: str
    steps: tuple[GoldStep, ...]
    template: str
    subjects: tuple[str, ...]  # the entities the question names (to re-derive the answer)

    @property
    def hops(self) -> int:
        return len(self.steps)


class _Reject(Exception):
    """A gold retrieval did not return the needed fact: the question is skipped."""


def _text(w: World, subq: str, subject: str, value: str) -> GoldStep:
    hits = w.kbs.text.search(subq, k=1)
    if not hits or hits[0].title != subject or value not in hits[0].text:
        raise _Reject(subq)
    return GoldStep(subq, "text", hits[0].text, value)


def _table(w: World, subq: str, key: str, column: str) -> GoldStep:
    row = w.kbs.table.search(subq)
    if row is None or row["key"] != key or column not in row:
        raise _Reject(subq)
    return GoldStep(subq, "table", TableKB.render(row), str(row[column]))


def _gap(a: GoldStep, b: GoldStep) -> GoldStep:
    lo, hi = sorted((int(a.value), int(b.value)))
    return GoldStep(f"How many years are there between {lo} and {hi}?", "none", str(hi - lo), str(hi - lo))


# Each template: (name, subject kind, build(world, subject) -> (question, steps)). Steps run the
# real retrieval; the last step's value is the answer.
def _t_birth_country(w, p):
    s1 = _text(w, f"Where was {p} born?", p, w.people[p].born_in)
    return f"In which country was {p} born?", [s1, _table(w, f"Which country is {s1.value} in?", s1.value, "country")]


def _t_employer_founded(w, p):
    s1 = _text(w, f"Which company does {p} work for?", p, w.people[p].works_for)
    return (f"In what year was the company that {p} works for founded?",
            [s1, _table(w, f"In what year was {s1.value} founded?", s1.value, "founded")])


def _t_hq_mayor(w, k):
    s1 = _text(w, f"Where is {k} headquartered?", k, w.companies[k].hq)
    return (f"Who is the mayor of the city where {k} is headquartered?",
            [s1, _table(w, f"Who is the mayor of {s1.value}?", s1.value, "mayor")])


def _t_founder_birth(w, k):
    s1 = _text(w, f"Who founded {k}?", k, w.companies[k].founder)
    return (f"In what year was the founder of {k} born?",
            [s1, _table(w, f"In what year was {s1.value} born?", s1.value, "birth year")])


def _t_employer_country(w, p):
    s1 = _text(w, f"Which company does {p} work for?", p, w.people[p].works_for)
    s2 = _text(w, f"Where is {s1.value} headquartered?", s1.value, w.companies[s1.value].hq)
    return (f"In which country is the company that {p} works for headquartered?",
            [s1, s2, _table(w, f"Which country is {s2.value} in?", s2.value, "country")])


def _t_founder_city_mayor(w, k):
    s1 = _text(w, f"Who founded {k}?", k, w.companies[k].founder)
    s2 = _text(w, f"Where was {s1.value} born?", s1.value, w.people[s1.value].born_in)
    return (f"Who is the mayor of the city where the founder of {k} was born?",
            [s1, s2, _table(w, f"Who is the mayor of {s2.value}?", s2.value, "mayor")])


def _t_age_gap(w, pair):
    p1, p2 = pair
    s1 = _table(w, f"In what year was {p1} born?", p1, "birth year")
    s2 = _table(w, f"In what year was {p2} born?", p2, "birth year")
    return f"How many years older is {p1} than {p2}?", [s1, s2, _gap(s1, s2)]


def _t_company_gap(w, pair):
    k1, k2 = pair
    s1 = _table(w, f"In what year was {k1} founded?", k1, "founded")
    s2 = _table(w, f"In what year was {k2} founded?", k2, "founded")
    return f"How many years before {k2} was {k1} founded?", [s1, s2, _gap(s1, s2)]


def _t_founder_age(w, k):
    s1 = _text(w, f"Who founded {k}?", k, w.companies[k].founder)
    s2 = _table(w, f"In what year was {s1.value} born?", s1.value, "birth year")
    s3 = _table(w, f"In what year was {k} founded?", k, "founded")
    return f"How many years after the birth of its founder was {k} founded?", [s1, s2, s3, _gap(s2, s3)]


def _t_boss_birth_population(w, p):
    s1 = _text(w, f"Which company does {p} work for?", p, w.people[p].works_for)
    s2 = _text(w, f"Who founded {s1.value}?", s1.value, w.companies[s1.value].founder)
    s3 = _text(w, f"Where was {s2.value} born?", s2.value, w.people[s2.value].born_in)
    return (f"What is the population of the city where the founder of the company that {p} works for "
            f"was born?", [s1, s2, s3, _table(w, f"What is the population of {s3.value}?", s3.value, "population")])


def _t_mayor_company_industry(w, p):
    s1 = _text(w, f"Where was {p} born?", p, w.people[p].born_in)
    s2 = _table(w, f"Who is the mayor of {s1.value}?", s1.value, "mayor")
    s3 = _text(w, f"Which company was founded by {s2.value}?", s2.value, w.people[s2.value].founded)
    return (f"In which industry is the company founded by the mayor of the city where {p} was born?",
            [s1, s2, s3, _table(w, f"What industry is {s3.value} in?", s3.value, "industry")])


TEMPLATES = {
    "birth_country": ("person", _t_birth_country),
    "employer_founded": ("person", _t_employer_founded),
    "hq_mayor": ("company", _t_hq_mayor),
    "founder_birth": ("company", _t_founder_birth),
    "employer_country": ("person", _t_employer_country),
    "founder_city_mayor": ("company", _t_founder_city_mayor),
    "age_gap": ("older_person_pair", _t_age_gap),
    "company_gap": ("older_company_pair", _t_company_gap),
    "founder_age": ("company", _t_founder_age),
    "boss_birth_population": ("person", _t_boss_birth_population),
    "mayor_company_industry": ("person", _t_mayor_company_industry),
}


def _subjects(w: World, kind: str, rng: random.Random, limit: int) -> list:
    if kind == "person":
        pool = list(w.people)
    elif kind == "company":
        pool = list(w.companies)
    else:  # ordered pairs (older, younger) with different years, sampled (the full set is large)
        names, year = ((list(w.people), lambda x: w.people[x].birth_year) if kind == "older_person_pair"
                       else (list(w.companies), lambda x: w.companies[x].founded_year))
        pool = sorted({(a, b) for a, b in (rng.sample(names, 2) for _ in range(4 * limit))
                       if year(a) < year(b)})
    rng.shuffle(pool)
    return pool


def generate_examples(n: int, seed: int = 0, world: World | None = None) -> list[Example]:
    """`n` distinct questions (templates in turn, subjects shuffled), deterministic for `seed`.
    ValueError when the world cannot supply `n` distinct verified questions."""
    if not isinstance(n, int) or n < 0:
        raise ValueError(f"n must be a non-negative int, got {n!r}")
    w = world if world is not None else generate_world(seed)
    rng = random.Random(f"kbqa-questions-{seed}")
    queues = {name: iter(_subjects(w, kind, rng, n)) for name, (kind, _) in TEMPLATES.items()}
    out: list[Example] = []
    seen: set[str] = set()
    while len(out) < n and queues:
        for name in list(queues):
            if len(out) == n:
                break
            for subject in queues[name]:
                try:
                    question, steps = TEMPLATES[name][1](w, subject)
                except _Reject:
                    continue
                if question not in seen:
                    break
            else:
                del queues[name]
                continue
            seen.add(question)
            subj = subject if isinstance(subject, tuple) else (subject,)
            out.append(Example(f"kbqa-s{seed}-q{len(out)}", question, steps[-1].value, tuple(steps), name, subj))
    if len(out) < n:
        raise ValueError(f"the seed-{seed} world supplies only {len(out)} distinct questions, asked for {n}")
    return out


# ----------------------------------------------------------------------------- step states

@dataclass(frozen=True)
class StepState:
    state_id: str
    example_id: str
    step_index: int
    question: str
    history: tuple[GoldStep, ...]
    kind: str                         # "ret" (write a sub-question + KB) or "ans" (final answer)
    answers: tuple[str, ...]
    gold_sub_question: str | None = None
    gold_kb: str | None = None
    hops: int = 0
    template: str = ""


def step_states(example: Example) -> list[StepState]:
    """Teacher-forced states: one per gold step (kind "ret") and one for the answer (kind "ans")."""
    out = []
    for t in range(len(example.steps) + 1):
        gold = example.steps[t] if t < len(example.steps) else None
        out.append(StepState(f"{example.qid}#{t}", example.qid, t, example.question, example.steps[:t],
                             "ret" if gold else "ans", (example.answer,),
                             gold.sub_question if gold else None, gold.kb if gold else None,
                             example.hops, example.template))
    return out


SYSTEM_PROMPT = (
    "You answer multi-hop questions one step at a time using knowledge bases.\n"
    "Knowledge bases:\n"
    "- text: short passages about people and companies, searched by keywords.\n"
    "- table: one row per person, city and company with numbers and categories, looked up by name.\n"
    "- none: no retrieval; the step can be answered from what is already known (e.g. arithmetic).\n"
    "At each step, either ask the next sub-question and choose one knowledge base:\n"
    "<think>your reasoning</think><sub-question>one question</sub-question><ret>text, table or none</ret>\n"
    "or, when you know enough, give the final answer:\n"
    "<think>your reasoning</think><answer>the short answer</answer>")


def build_prompt(state: StepState, system_prompt: str | None = SYSTEM_PROMPT) -> list[dict]:
    """Chat messages: the system message with the format, then the question and the previous
    steps (gold sub-question, KB and result) as the user message."""
    lines = [f"Question: {state.question}"]
    if state.history:
        lines.append("\nPrevious steps:")
        for i, s in enumerate(state.history, 1):
            lines.append(f"Step {i}: <sub-question>{s.sub_question}</sub-question><ret>{s.kb}</ret>")
            lines.append(f"Result: {s.result}")
    lines.append("\nWrite the next step.")
    msgs = [{"role": "system", "content": system_prompt}] if system_prompt else []
    return msgs + [{"role": "user", "content": "\n".join(lines)}]


def gold_response(state: StepState) -> str:
    """The reference answer at `state` in the response format (a short fixed <think>): what a
    supervised warm-up teaches (bench/learning_retrieval.py), and what scores 1.0 (ans) or
    0.5 + 0.5 cos(gold, gold) = 1.0 (ret)."""
    if state.kind == "ans":
        return f"<think>The previous steps give the answer.</think><answer>{state.answers[0]}</answer>"
    return (f"<think>One more fact is needed.</think><sub-question>{state.gold_sub_question}</sub-question>"
            f"<ret>{state.gold_kb}</ret>")


# ----------------------------------------------------------------------------- rewards

def score_step(state: StepState, response_text, embedder: Embedder | None = None) -> tuple[float, dict]:
    """(reward, info) of one response at `state` (module doc). Never raises on the response;
    ValueError on a malformed state. info: kind, format_ok (the tags of the state's kind were found
    and the <ret> items are valid), and kb_correct + cos (ret) or recall (ans), or error."""
    if state.kind not in ("ret", "ans"):
        raise ValueError(f"state.kind must be 'ret' or 'ans', got {state.kind!r}")
    if state.kind == "ret" and (state.gold_kb not in KB_NAMES or not state.gold_sub_question):
        raise ValueError(f"retrieval state {state.state_id!r} needs gold_sub_question and gold_kb in "
                         f"{KB_NAMES}, got {state.gold_sub_question!r}, {state.gold_kb!r}")
    info: dict = {"kind": state.kind, "format_ok": False}
    parsed = parse_response(response_text, state.kind)
    if parsed is None:
        needs = "<think>, <sub-question>, <ret>" if state.kind == "ret" else "<think>, <answer>"
        return 0.0, {**info, "error": f"unparseable: a {state.kind} step needs {needs}"}
    if state.kind == "ans":
        reward, recall = answer_reward(parsed.answer, state.answers)
        return reward, {**info, "format_ok": True, "recall": recall}
    error = ret_items_error(parsed.kbs)
    if error is not None:  # R1-Router: any non-KB item (or "none" with another) -> the whole reward 0
        return 0.0, {**info, "error": error}
    info["format_ok"] = True
    emb = embedder or default_embedder()
    emb.pin([state.gold_sub_question])
    cos = emb.cosine(parsed.sub_question, state.gold_sub_question)
    kb_ok = len(parsed.kbs) == 1 and parsed.kbs[0] == state.gold_kb
    return 0.5 * cos + 0.5 * float(kb_ok), {**info, "cos": cos, "kb_correct": kb_ok}


def warm_embeddings(states: Sequence[StepState], embedder: Embedder | None = None) -> int:
    """Embed every gold sub-question once (batched) and keep it cached; returns how many."""
    golds = [s.gold_sub_question for s in states if s.kind == "ret"]
    (embedder or default_embedder()).pin(golds)
    return len(set(golds))


# ----------------------------------------------------------------------------- verl rows

def state_label(state: StepState) -> tuple[str, dict]:
    """(ground_truth, extra_info) carrying what score_step needs: the gold sub-question (ret) or
    answer (ans) as ground truth; kind, gold KB, answers and ids in extra_info (JSON-safe)."""
    gt = state.gold_sub_question if state.kind == "ret" else state.answers[0]
    extra = {"state_id": state.state_id, "example_id": state.example_id, "kind": state.kind,
             "gold_kb": state.gold_kb, "answers": list(state.answers), "step_index": state.step_index,
             "hops": state.hops, "template": state.template, "question": state.question}
    return gt, extra


def state_from_label(ground_truth: str, extra_info: dict) -> StepState:
    """The StepState (without history) that `state_label` describes; ValueError naming the field."""
    if not isinstance(extra_info, dict):
        raise ValueError(f"extra_info must be a dict with 'kind', got {type(extra_info).__name__}")
    kind = extra_info.get("kind")
    if kind not in ("ret", "ans"):
        raise ValueError(f"extra_info['kind'] must be 'ret' or 'ans', got {kind!r}")
    if not isinstance(ground_truth, str) or not ground_truth:
        raise ValueError(f"ground_truth must be a non-empty string, got {ground_truth!r}")
    answers = extra_info.get("answers")
    answers = tuple(answers) if isinstance(answers, (list, tuple)) and answers else (ground_truth,)
    if kind == "ret":
        if extra_info.get("gold_kb") not in KB_NAMES:
            raise ValueError(f"extra_info['gold_kb'] must be one of {KB_NAMES}, got {extra_info.get('gold_kb')!r}")
        return StepState(str(extra_info.get("state_id", "")), str(extra_info.get("example_id", "")),
                         int(extra_info.get("step_index", 0)), str(extra_info.get("question", "")), (),
                         "ret", answers, ground_truth, extra_info["gold_kb"])
    return StepState(str(extra_info.get("state_id", "")), str(extra_info.get("example_id", "")),
                     int(extra_info.get("step_index", 0)), str(extra_info.get("question", "")), (),
                     "ans", answers)


def compute_score(data_source: str, solution_str: str, ground_truth: str,
                  extra_info: dict | None = None) -> dict:
    """verl-signature step reward: {"score", "format_ok", and "ret_cos" + "ret_kb_correct" or
    "ans_recall"} (the extra keys become per-row metrics)."""
    state = state_from_label(ground_truth, extra_info)
    reward, info = score_step(state, solution_str)
    out = {"score": reward, "format_ok": float(info["format_ok"])}
    if info["format_ok"]:
        if state.kind == "ret":
            out.update(ret_cos=info["cos"], ret_kb_correct=float(info["kb_correct"]))
        else:
            out["ans_recall"] = info["recall"]
    return out


def make_dataset(n_questions: int, seed: int = 0, system_prompt: str | None = SYSTEM_PROMPT) -> list[dict]:
    """One row per step state of `n_questions` generated questions: {"prompt": chat messages,
    "data_source", "ground_truth", "extra_info", "state_id"}, in question then step order."""
    return _rows(generate_examples(n_questions, seed), system_prompt)


def _rows(examples: Sequence[Example], system_prompt: str | None = SYSTEM_PROMPT) -> list[dict]:
    rows = []
    for ex in examples:
        for st in step_states(ex):
            gt, extra = state_label(st)
            rows.append({"prompt": build_prompt(st, system_prompt), "data_source": DATA_SOURCE,
                         "ground_truth": gt, "extra_info": extra, "state_id": st.state_id})
    return rows


def split_examples(n_questions: int, seed: int = 0, val_questions: int = 32,
                   world: World | None = None) -> tuple[list[Example], list[Example]]:
    """(training questions, held-out questions): `generate_examples(n_questions, seed)` with the
    last `val_questions` held out (the kbqa env's validation questions, env.py)."""
    if not 0 <= val_questions < n_questions:
        raise ValueError(f"val_questions must be in [0, n_questions={n_questions}), got {val_questions}")
    examples = generate_examples(n_questions, seed, world)
    return examples[:n_questions - val_questions], examples[n_questions - val_questions:]


def train_rows(n_questions: int, seed: int = 0, val_questions: int = 32) -> list[dict]:
    """`make_dataset`'s rows for the training questions of `split_examples` only (a `data.generator`:
    Step-GRPO then never sees the kbqa env's held-out questions)."""
    train, _ = split_examples(n_questions, seed, val_questions)
    return _rows(train)


def example_to_dict(example: Example) -> dict:
    """A JSON-safe dict of an example (for dumping a dataset to inspect)."""
    d = asdict(example)
    d["hops"] = example.hops
    return d
