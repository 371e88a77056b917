"""PrOntoQA-style deductive reasoning: generated fictional ontologies, proofs, a proof checker.

An example: an entity ("Rex is a wumpus."), a chain of made-up concepts with "is-a" rules
(wumpus -> yumpus -> ...), one property rule per concept (some negated), a distractor rule (a
concept outside the entity's chain with the opposite of the queried property), and a query
"True or false: Rex is not wooden.". With h hops the proof applies h rules: h-1 "is-a" rules, then
the property rule of the last concept. The gold proof is PrOntoQA's chain of thought:
    Rex is a wumpus. Wumpuses are yumpuses. Rex is a yumpus. ... Yumpuses are not wooden.
    Rex is not wooden.
followed by the label ("True" / "False").

Proof checking: each sentence is parsed into a logical form, Rule(subject concept, object,
negated) or Fact(entity, object, negated), so "Every wumpus is a yumpus." and "Wumpuses are
yumpuses." are the same rule. A sentence is valid when its form is one of the context's facts or
rules, or it is a fact about the entity derived by one modus-ponens step: an established
"Rex is a C" (context or an earlier valid sentence) plus a context rule about C.
"""
from __future__ import annotations

import math
import random
import re
from dataclasses import dataclass, field
from typing import NamedTuple, Sequence

CONCEPTS = ("wumpus", "yumpus", "zumpus", "dumpus", "rompus", "numpus", "tumpus", "vumpus",
            "impus", "jompus", "gorpus", "shumpus", "lempus", "sterpus", "grimpus", "lorpus",
            "brimpus", "lumpus")
PROPERTIES = ("wooden", "metallic", "liquid", "transparent", "opaque", "bright", "dull", "small",
              "large", "hot", "cold", "sweet", "sour", "spicy", "bitter", "fruity", "floral",
              "earthy", "happy", "sad", "angry", "nervous", "kind", "mean", "feisty", "shy",
              "amenable", "aggressive", "luminous", "melodic", "muffled", "loud", "red", "blue",
              "brown", "orange")
NAMES = ("Rex", "Sally", "Max", "Alex", "Fae", "Wren", "Sam", "Polly", "Stella")
# FoR (prontoqa, get_ll_reward_rule_hard, "sum" mode): 20 per valid step while every earlier
# step was valid; log R = log(LAMBDA * sum_t r_t). EPS keeps the empty proof finite.
STEP_REWARD, LAMBDA, EPS = 20.0, 0.9, 1e-5
MAX_PROOF_CHARS = 20_000
INSTRUCTION = ("Given a list of facts, and a current claim, output one possible fact as the next "
               "step. Be sure to copy the exact sentences in the facts. Do not change any wording. "
               "Do not create your own words.")


class Rule(NamedTuple):
    subject: str   # concept (singular)
    obj: str       # concept or property
    negated: bool


class Fact(NamedTuple):
    entity: str    # lower-case name
    obj: str
    negated: bool


@dataclass(frozen=True)
class Example:
    entity: str
    facts: tuple[str, ...]           # the context sentences, shuffled (includes the entity fact)
    query: str                        # "True or false: Rex is not wooden."
    label: bool
    proof: tuple[str, ...]            # gold chain of thought (sentences)
    hops: int
    concepts: tuple[str, ...] = field(repr=False)
    properties: tuple[str, ...] = field(repr=False)

    @property
    def answer(self) -> str:
        return "True" if self.label else "False"


# ----------------------------------------------------------------------------- surface forms

def _a(word: str) -> str:
    return ("an " if word[0] in "aeiou" else "a ") + word


def _plural(concept: str) -> str:
    return concept + "es"  # every made-up concept ends in "us"


def rule_sentence(rule: Rule, concepts: Sequence[str], style: int = 0) -> str:
    """One of three PrOntoQA surface forms (style 0, 1, 2): "Every X is ...", "Each X is ...",
    "Xes are ..."."""
    neg = "not " if rule.negated else ""
    is_concept = rule.obj in concepts
    if style == 2:
        obj = _plural(rule.obj) if is_concept else rule.obj
        return f"{_plural(rule.subject).capitalize()} are {neg}{obj}."
    obj = _a(rule.obj) if is_concept else rule.obj
    return f"{('Every', 'Each')[style]} {rule.subject} is {neg}{obj}."


def fact_sentence(fact: Fact, concepts: Sequence[str]) -> str:
    obj = _a(fact.obj) if fact.obj in concepts else fact.obj
    return f"{fact.entity.capitalize()} is {'not ' if fact.negated else ''}{obj}."


_RULE_RE = re.compile(r"^(?:every|each) ([a-z-]+) is (not )?(?:(an?) )?([a-z-]+)$")
_PLURAL_RE = re.compile(r"^([a-z-]+) are (not )?([a-z-]+)$")
_FACT_RE = re.compile(r"^([a-z0-9-]+) is (not )?(?:(an?) )?([a-z-]+)$")


def parse_sentence(sentence: str, concepts: Sequence[str], properties: Sequence[str]):
    """Rule / Fact for a sentence over the given vocabulary, None when it is neither (or not a
    str). Never raises on any sentence; linear in its length (anchored regexes on single words)."""
    if not isinstance(sentence, str):
        return None
    t = " ".join(sentence.strip().lower().rstrip(".").split())
    concepts, properties = set(concepts), set(properties)

    def obj(word: str, article: bool, plural: bool) -> str | None:
        if plural and word.endswith("es") and word[:-2] in concepts:
            return word[:-2]
        if not plural and article and word in concepts:
            return word
        return word if not article and word in properties else None

    m = _RULE_RE.match(t)
    if m and m.group(1) in concepts:
        o = obj(m.group(4), bool(m.group(3)), False)
        return Rule(m.group(1), o, bool(m.group(2))) if o else None
    m = _PLURAL_RE.match(t)
    if m and m.group(1).endswith("es") and m.group(1)[:-2] in concepts:
        o = obj(m.group(3), False, m.group(3).endswith("es") and m.group(3) not in properties)
        return Rule(m.group(1)[:-2], o, bool(m.group(2))) if o else None
    m = _FACT_RE.match(t)
    if m and m.group(1) not in ("every", "each"):
        o = obj(m.group(4), bool(m.group(3)), False)
        return Fact(m.group(1), o, bool(m.group(2))) if o else None
    return None


# ----------------------------------------------------------------------------- generation

def generate_examples(n: int, hops: Sequence[int] = (3, 4, 5), seed: int = 0) -> list[Example]:
    """n examples, hops drawn from `hops` (each >= 1), labels balanced (ceil(n/2) True, in random
    order); deterministic for a seed."""
    if any(h < 1 or h + 3 > len(CONCEPTS) for h in hops):
        raise ValueError(f"hops must lie in 1..{len(CONCEPTS) - 3}, got {tuple(hops)}")
    rng = random.Random(seed)
    labels = [i % 2 == 0 for i in range(n)]
    rng.shuffle(labels)
    return [_example(rng, rng.choice(list(hops)), label) for label in labels]


def _example(rng: random.Random, h: int, label: bool) -> Example:
    # Chain c0 -> ... -> c_{h-1} -> c_h (one extra ancestor), plus a distractor concept d -> c_h.
    words = rng.sample(CONCEPTS, h + 2)
    chain, distractor = words[:h + 1], words[h + 1]
    props = rng.sample(PROPERTIES, h + 2)
    target, others = props[0], props[1:]
    entity = rng.choice(NAMES)
    e = entity.lower()
    neg = rng.random() < 0.5
    rules = [Rule(chain[i], chain[i + 1], False) for i in range(h)]
    rules.append(Rule(chain[h - 1], target, neg))                 # the rule the proof needs
    rules += [Rule(chain[i], others[i], rng.random() < 0.5)       # other concepts' properties
              for i in range(len(chain)) if i != h - 1]
    rules.append(Rule(distractor, target, not neg))               # the distractor rule
    rules.append(Rule(distractor, chain[-1], False))
    vocab = tuple(words)
    sentences = [rule_sentence(r, vocab, rng.randrange(3)) for r in rules]
    entity_fact = fact_sentence(Fact(e, chain[0], False), vocab)
    facts = sentences + [entity_fact]
    rng.shuffle(facts)
    by_rule = dict(zip(rules, sentences))
    proof = [entity_fact]
    for i in range(h - 1):
        proof += [by_rule[rules[i]], fact_sentence(Fact(e, chain[i + 1], False), vocab)]
    proof += [by_rule[rules[h]], fact_sentence(Fact(e, target, neg), vocab)]
    query_neg = neg if label else not neg
    query = "True or false: " + fact_sentence(Fact(e, target, query_neg), vocab)
    return Example(entity, tuple(facts), query, label, tuple(proof), h, vocab,
                   tuple(sorted(props)))


# ----------------------------------------------------------------------------- prompts

def to_prompt(example: Example, claim: str | None = None, index: int = 1,
              instruction: str | None = INSTRUCTION) -> str:
    """FoR's next-step prompt: "Facts i: ...\\nQuery i: ...\\nClaim i.1: <claim>\\nNext i.1:".
    The default claim is the entity fact (the first proof sentence)."""
    claim = example.proof[0] if claim is None else claim
    head = f"{instruction}\n\n" if instruction else ""
    return (f"{head}Facts {index}: {' '.join(example.facts)}\nQuery {index}: {example.query}\n"
            f"Claim {index}.1: {claim}\nNext {index}.1:")


def next_claim(example: Example, claim: str, fact: str) -> str | None:
    """The symbolic world model of FoR's PrOntoQA: the claim "Rex is a C" and a context rule about
    C give the new claim; None when the fact is not in the context or does not apply."""
    c, f = _parse(example, claim), _parse(example, fact)
    if not isinstance(c, Fact) or c.negated or not isinstance(f, Rule) or f.subject != c.obj:
        return None
    if f not in _context(example)[1]:
        return None
    return fact_sentence(Fact(c.entity, f.obj, f.negated), example.concepts)


# ----------------------------------------------------------------------------- checking

def _parse(example: Example, sentence: str):
    return parse_sentence(sentence, example.concepts, example.properties)


def _context(example: Example) -> tuple[set[Fact], set[Rule]]:
    forms = [_parse(example, s) for s in example.facts]
    return {f for f in forms if isinstance(f, Fact)}, {r for r in forms if isinstance(r, Rule)}


# No two \s* around an optional piece ("\s*[\d.]*\s*", "so\s*,?\s*"): on a run of n spaces
# that fails to match they try n^2 splits. The forms below accept the same strings in linear time.
_PREFIX_RE = re.compile(r"^(?:claim|next|step)\s*(?:[\d.]+\s*)?:\s*", re.IGNORECASE)
_LABEL_RE = re.compile(r"^(?:(?:so\s*(?:,\s*)?)?the answer is|answer\s*:)?\s*(true|false)\s*\.?$",
                       re.IGNORECASE)


def split_proof(proof_text: str | Sequence[str]) -> tuple[list[str], str | None]:
    """(sentences, label) from a proof: sentences split at ". " and newlines, "Claim 1.2:" /
    "Next 1.2:" / "Step 3:" prefixes and "Finish." dropped; the label is the last sentence when it
    reads "True" / "False" / "The answer is true." / "Answer: False" (lower-cased), else None."""
    text = proof_text if isinstance(proof_text, str) else "\n".join(proof_text)
    parts = [p.strip() for p in re.split(r"(?<=\.)\s+|\n", text)]
    parts = [_PREFIX_RE.sub("", p).strip() for p in parts]
    parts = [p for p in parts if p and p.lower().rstrip(".") != "finish"]
    label = None
    if parts and _LABEL_RE.match(parts[-1]):
        label = _LABEL_RE.match(parts.pop()).group(1).lower()
    return parts, label


def _replay(example: Example, sentences: Sequence[str]) -> tuple[int, int, set[Fact]]:
    """(number of valid sentences before the first invalid one, new derivations among them,
    established entity facts)."""
    ctx_facts, ctx_rules = _context(example)
    known = set(ctx_facts)
    valid = derived = 0
    for s in sentences:
        form = _parse(example, s)
        if form is None:
            break
        if isinstance(form, Rule):
            if form not in ctx_rules:
                break
        elif form not in known:
            premise = Fact(form.entity, None, False)
            if not any(r.obj == form.obj and r.negated == form.negated
                       and premise._replace(obj=r.subject) in known for r in ctx_rules):
                break
            known.add(form)
            derived += 1
        valid += 1
    return valid, derived, known


def check_proof(example: Example, proof_text) -> bool:
    """True iff the stated label equals the example's label, every sentence is valid (context or
    one modus-ponens step), and the proof establishes the queried property of the entity (or its
    negation) matching the label. False for bad input (non-str/sequence, over MAX_PROOF_CHARS);
    never raises on the proof; linear in its length."""
    try:
        if not isinstance(proof_text, (str, list, tuple)):
            return False
        if isinstance(proof_text, str) and len(proof_text) > MAX_PROOF_CHARS:
            return False
        sentences, label = split_proof(proof_text)
        if label is None or (label == "true") != example.label or not sentences:
            return False
        valid, _, known = _replay(example, sentences)
        if valid != len(sentences):
            return False
        q = _parse(example, example.query.split(":", 1)[1])
        concluded = q in known or q._replace(negated=not q.negated) in known
        consistent = (q in known) == example.label
        return concluded and consistent
    except (ValueError, TypeError, AttributeError, IndexError):
        return False


def valid_steps(example: Example, proof_text) -> int:
    """New valid derivations ("Rex is a yumpus.") before the first invalid sentence; restating
    context sentences is valid but earns nothing. 0 for bad input (non-str/sequence, a text over
    MAX_PROOF_CHARS); never raises on the proof."""
    if isinstance(proof_text, str) and len(proof_text) > MAX_PROOF_CHARS:
        return 0
    try:
        sentences, _ = split_proof(proof_text)
        return _replay(example, sentences)[1]
    except (ValueError, TypeError, AttributeError):
        return 0


def partial_energy(example: Example, proof_text, lam: float = LAMBDA, eps: float = EPS) -> float:
    """E(s) = -log(lam * (eps + 20 * k)), k = valid_steps so far (FoR's rule reward: 20 per valid
    step while every earlier step was valid, log R = log(lam * sum r_t))."""
    return -math.log(lam * (eps + STEP_REWARD * valid_steps(example, proof_text)))


def gold_text(example: Example) -> str:
    """The gold proof followed by the label, one sentence per line."""
    return "\n".join(example.proof + (example.answer,))
