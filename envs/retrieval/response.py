"""Parsing a Step-GRPO response and scoring its parts, as R1-Router's Easy-R1 `reward_score/step.py`.

Use:
    p = parse_response(text, "ret")     # Parsed or None: <think>, <sub-question> and <ret> found
    ret_items_error(p.kbs)              # None when every <ret> item is a KB name, else why not
    p = parse_response(text, "ans")     # <think> and <answer> found
    answer_reward(p.answer, golds)      # (reward, recall)

Tags (R1-Router `ret_accuracy_reward` / `ans_accuracy_reward`): the text is lower-cased, then each
tag pair is found as `re.search(r"<tag>(.*?)</tag>", text, re.DOTALL)` would find it: the first
opener that has a closer after it, up to the first closer after that opener, contents stripped.
Text around and between the tags is allowed, the tags may come in any order and repeat (the first
pair counts), and a response may carry both kinds of tags (each state reads only the tags it
needs). Implemented with `str.find` (the leftmost opener is the only one that can match: a later
opener has no closer after it when the first has none), so parsing is linear in the length.

<ret> items: the content split at commas, each stripped; R1-Router's step reward is 0 when any
item is not a KB name or "none" is listed with another item (`ret_items_error`).

Deviations, with reasons:
- KB names are text / table / none (this task's knowledge bases) where R1-Router's are
  'text retriever', 'text image retriever', 'table retriever', 'none'.
- Responses over MAX_RESPONSE_CHARS score 0 (R1-Router has no cap; ours bounds parsing time and
  the embedder's input; rollouts are capped by max_tokens far below it anyway).
- The answer recall uses SQuAD normalisation (lower case, no punctuation, no articles a/an/the,
  whitespace tokens). R1-Router normalises VQA-style (punctuation rules, number words -> digits,
  'none' -> '0', contractions, articles an/the) and tokenises with NLTK's word_tokenize; NLTK is
  not a dependency here, and this task's answers are names, years and integers (digits, never
  number words), on which both give the same tokens except punctuation inside a word. A gold's
  length (≤ 5 words: all-or-nothing) is counted after normalisation (R1-Router: `split(" ")` of
  the raw gold), so "the" does not count. With several golds R1-Router takes the recall of the
  best-F1 gold, here the best recall (the generated questions have one gold each).
"""
from __future__ import annotations

import re
import string
from collections import Counter
from dataclasses import dataclass
from typing import Sequence

from .kb import KB_NAMES

MAX_RESPONSE_CHARS = 20_000
SHORT_GOLD_WORDS = 5
_PUNCT = frozenset(string.punctuation)
_ARTICLES_RE = re.compile(r"\b(a|an|the)\b")


@dataclass(frozen=True)
class Parsed:
    """The tags a response holds for one kind of step (contents lower-cased and stripped)."""
    kind: str                 # "ret" | "ans"
    think: str
    sub_question: str = ""
    kbs: tuple[str, ...] = ()  # the <ret> items: content split at commas, stripped, in order
    answer: str = ""


def _search(text: str, tag: str) -> str | None:
    """Content of the first <tag>...</tag> as `re.search(r"<tag>(.*?)</tag>", text, re.S)` finds
    it (stripped), or None. Linear: two `str.find` calls."""
    opener, closer = f"<{tag}>", f"</{tag}>"
    i = text.find(opener)
    if i < 0:
        return None
    j = text.find(closer, i + len(opener))
    return None if j < 0 else text[i + len(opener):j].strip()


def parse_response(text, kind: str | None = None) -> Parsed | None:
    """The step a response writes, or None when it lacks the tags (module doc).

    kind="ret" needs <think>, <sub-question> and <ret>; kind="ans" needs <think> and <answer>;
    kind=None tries "ret" then "ans". Returns None for a non-str or a text over
    MAX_RESPONSE_CHARS. Never raises on any response; ValueError for an unknown `kind`.
    """
    if kind not in (None, "ret", "ans"):
        raise ValueError(f"kind must be 'ret', 'ans' or None, got {kind!r}")
    if not isinstance(text, str) or len(text) > MAX_RESPONSE_CHARS:
        return None
    low = text.lower()
    think = _search(low, "think")
    if think is None:
        return None
    if kind in (None, "ret"):
        sub_question, ret = _search(low, "sub-question"), _search(low, "ret")
        if sub_question is not None and ret is not None:
            return Parsed("ret", think, sub_question, tuple(item.strip() for item in ret.split(",")))
    if kind in (None, "ans"):
        answer = _search(low, "answer")
        if answer is not None:
            return Parsed("ans", think, answer=answer)
    return None


def ret_items_error(items: Sequence[str]) -> str | None:
    """None when the <ret> items are valid for R1-Router's reward (every item a KB name, "none"
    alone), else a short reason. The reward is 0 for invalid items."""
    for item in items:
        if item == "none" and len(items) > 1:
            return "<ret> lists 'none' with another item"
        if item not in KB_NAMES:
            return f"<ret> item {item[:40]!r} is not a KB name {KB_NAMES}"
    return None


def normalize_answer(s: str) -> str:
    """SQuAD normalisation: lower case, no punctuation, no articles, single spaces."""
    s = "".join(ch for ch in s.lower() if ch not in _PUNCT)
    s = _ARTICLES_RE.sub(" ", s)
    return " ".join(s.split())


def token_recall(prediction: str, gold: str) -> float:
    """Share of the gold's normalised tokens (with multiplicity) found in the prediction."""
    g = normalize_answer(gold).split()
    if not g:
        return 0.0
    common = Counter(normalize_answer(prediction).split()) & Counter(g)
    return sum(common.values()) / len(g)


def answer_reward(prediction: str, golds: Sequence[str]) -> tuple[float, float]:
    """(reward, best recall): 1 if the recall is 1 and the gold is short (≤ 5 words) or there are
    several golds; the recall for a single long gold; else 0 (R1-Router). ValueError when `golds`
    holds no string."""
    golds = [g for g in golds if isinstance(g, str)]
    if not golds:
        raise ValueError("answers must hold at least one gold answer string")
    recall = max(token_recall(prediction, g) for g in golds)
    if len(golds) == 1 and len(normalize_answer(golds[0]).split()) > SHORT_GOLD_WORDS:
        return recall, recall
    return (1.0 if recall == 1.0 else 0.0), recall
