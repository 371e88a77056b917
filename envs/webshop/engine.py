"""WebShop's pages, search and click state machine in text mode (no Flask, no HTML).

Mirrors `web_agent_site` (verl-agent's vendored copy): `SimServer.receive` for the transitions and
the templates `search_page / results_page / item_page / {description,features,review}_page` for the
text, which upstream gets by joining the visible HTML strings with " [SEP] ". Here each page is
rendered straight to that list of strings (empty strings dropped), e.g.

    WebShop [SEP] Instruction: [SEP] <instr> [SEP] Search
    Instruction: [SEP] <instr> [SEP] Back to Search [SEP] Page 1 (Total results: 50) [SEP] Next >
        [SEP] B0... [SEP] <title> [SEP] $12.99 [SEP] ...            (10 per page; "< Prev" on page > 1)
    Instruction: [SEP] <instr> [SEP] Back to Search [SEP] < Prev [SEP] color [SEP] black [SEP] ...
        [SEP] <title> [SEP] Price: $12.99 [SEP] Rating: N.A. [SEP] Description [SEP] Features
        [SEP] Reviews [SEP] Buy Now

Clickables are the lower-cased button / product-link texts plus the option values, in page order
(`get_available_actions`). As upstream: a `search[...]` action runs from any page; `click[x]` needs x
among the clickables (and not "search"); anything else is a no-op. "Next >" is always shown on a
results page (verl-agent's template), so paging past the last result gives an empty page.

Search: BM25 (`rank_bm25.BM25Okapi` with Lucene's idf log(1 + (N - n + .5)/(n + .5)) and pyserini's
k1 = 0.9, b = 0.4) over the same per-product document upstream indexes; top SEARCH_RETURN_N = 50
products with a positive score, ties in catalog order. Deviation: Lucene's EnglishAnalyzer (Porter
stemmer) is replaced by lower-casing, Lucene's English stop words and a minimal plural stemmer.
Upstream's special queries ('<r>', '<a>', '<c>', '<q>') are not supported. The index is built once
per catalog fingerprint and kept in memory; pass `cache_dir` to also keep the tokenised corpus on
disk. Deviation: the done page shows only the thank-you line and the score (upstream also prints
hidden MTurk/debug fields).
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from rank_bm25 import BM25Okapi

from .catalog import Catalog
from .reward import get_reward

SEARCH_RETURN_N = 50
PRODUCT_WINDOW = 10
END_BUTTON, NEXT_PAGE, PREV_PAGE, BACK_TO_SEARCH = "Buy Now", "Next >", "< Prev", "Back to Search"
SUB_PAGES = ("Description", "Features", "Reviews")
SEP = " [SEP] "
_SUB_PAGE_KEYS = {t.lower(): t for t in SUB_PAGES}

_ACTION = re.compile(r"(.+)\[(.+)\]")  # upstream's pattern; parse_action gives its match linearly
# Lucene's EnglishAnalyzer stop set.
_LUCENE_STOP = frozenset("a an and are as at be but by for if in into is it no not of on or such "
                         "that the their then there these they this to was will with".split())
_TOKEN = re.compile(r"[a-z0-9]+(?:\.[0-9]+)?")


def parse_action(action: str) -> tuple[str, str | None]:
    r"""upstream parse_action: 'name[arg]' -> (name, arg), otherwise (action, None). Never raises on
    a str; linear in its length.

    Upstream is `re.match(r'(.+)\[(.+)\]', action)`, which backtracks quadratically on text with
    many "[" and no "]" (0.3 s at 8,000 characters). Same result without the regex: `.` stops at
    the first newline; the greedy argument ends at the last "]" of that line, and the greedy name
    at the last "[" that leaves both the name and the argument non-empty.
    """
    line = action.split("\n", 1)[0]
    close = line.rfind("]")
    open_ = line.rfind("[", 1, close - 1) if close >= 3 else -1
    return (action, None) if open_ < 1 else (line[:open_], line[open_ + 1:close])


def _stem(tok: str) -> str:
    # Lucene EnglishMinimalStemmer: plural s only.
    if len(tok) > 3 and tok.endswith("ies") and tok[-4] not in "ae":
        return tok[:-3] + "y"
    if len(tok) > 3 and tok.endswith("es") and tok[-3] not in "aeio":
        return tok[:-1]
    if len(tok) > 2 and tok.endswith("s") and tok[-2] not in "us":
        return tok[:-1]
    return tok


def tokenize(text: str) -> list[str]:
    return [_stem(t) for t in _TOKEN.findall(text.lower()) if t not in _LUCENE_STOP]


class _LuceneBM25(BM25Okapi):
    def _calc_idf(self, nd):
        for word, freq in nd.items():
            self.idf[word] = math.log(1.0 + (self.corpus_size - freq + 0.5) / (freq + 0.5))


class SearchEngine:
    """BM25 over a catalog's documents; `search(query)` -> up to 50 asins, best first."""
    _memory: dict[str, "SearchEngine"] = {}

    def __init__(self, asins: list[str], tokens: list[list[str]]):
        self.asins = asins
        # An empty document would make avgdl 0 for a one-product catalog: give it a dummy token.
        self.bm25 = _LuceneBM25([t or ["\x00"] for t in tokens], k1=0.9, b=0.4)

    @classmethod
    def for_catalog(cls, catalog: Catalog, cache_dir: str | Path | None = None) -> "SearchEngine":
        key = catalog.fingerprint
        if key in cls._memory:
            return cls._memory[key]
        path = Path(cache_dir) / f"webshop-bm25-{key[:24]}.json" if cache_dir else None
        docs = None
        if path is not None and path.exists():
            stored = json.loads(path.read_text())
            if stored.get("fingerprint") == key:
                docs = (stored["asins"], stored["tokens"])
        if docs is None:
            pairs = catalog.documents()
            docs = ([a for a, _ in pairs], [tokenize(t) for _, t in pairs])
            if path is not None:
                path.parent.mkdir(parents=True, exist_ok=True)
                tmp = path.with_suffix(".tmp")
                tmp.write_text(json.dumps({"fingerprint": key, "asins": docs[0],
                                           "tokens": docs[1]}))
                tmp.replace(path)
        engine = cls._memory[key] = cls(*docs)
        return engine

    def search(self, query: str, k: int = SEARCH_RETURN_N) -> list[str]:
        q = tokenize(query)
        if not q:
            return []
        scores = self.bm25.get_scores(q)
        order = np.lexsort((np.arange(len(scores)), -scores))  # score desc, then catalog order
        return [self.asins[i] for i in order[:k] if scores[i] > 0]


@dataclass
class PageState:
    """Everything a page depends on; equal states render equal text."""
    page: str = "search"  # search | results | item | sub | done
    keywords: tuple[str, ...] = ()
    page_num: int = 1
    asin: str | None = None
    options: dict[str, str] = field(default_factory=dict)
    sub_page: str | None = None
    score: float | None = None


class WebShopEngine:
    """One shopping session for one goal: `act(action)` -> (reward score or None, done, valid)."""

    def __init__(self, catalog: Catalog, search: SearchEngine, goal: dict[str, Any]):
        self.catalog, self.search_engine, self.goal = catalog, search, goal
        self.instruction = goal["instruction_text"]
        self.state = PageState()
        self.reward_info: dict[str, Any] = {}
        self._results: list[str] = []
        self._results_key: tuple[str, ...] | None = None
        self._render()

    # ---------------------------------------------------------------- rendering
    def _render(self) -> None:
        s, instr = self.state, ["Instruction:", self.instruction]
        clickables: dict[str, tuple[str, Any]] = {}

        def button(text, kind="button"):
            clickables[text.lower()] = (kind, text)
            return text

        if s.page == "search":
            parts = ["WebShop", *instr, button("Search")]
        elif s.page == "results":
            products = self._results[(s.page_num - 1) * PRODUCT_WINDOW:s.page_num * PRODUCT_WINDOW]
            parts = [*instr, button(BACK_TO_SEARCH),
                     f"Page {s.page_num} (Total results: {len(self._results)})"]
            if s.page_num > 1:
                parts.append(button(PREV_PAGE))
            parts.append(button(NEXT_PAGE))
            for asin in products:
                p = self.catalog.by_asin[asin]
                clickables[asin.lower()] = ("product", asin)
                parts += [asin, p["Title"], p["Price"]]
        elif s.page == "item":
            p = self.catalog.by_asin[s.asin]
            parts = [*instr, button(BACK_TO_SEARCH), button(PREV_PAGE)]
            for name, values in p["options"].items():
                parts += [name, *values]
            parts += [p["Title"], f"Price: {p['Price']}", f"Rating: {p['Rating']}",
                      *(button(t) for t in SUB_PAGES), button(END_BUTTON)]
            for name, values in p["options"].items():  # radio inputs come after the buttons
                for v in values:
                    clickables[v] = ("option", name)
        elif s.page == "sub":
            p = self.catalog.by_asin[s.asin]
            parts = [*instr, button(BACK_TO_SEARCH), button(PREV_PAGE)]
            if s.sub_page == "Description":
                parts.append(p["Description"])
            elif s.sub_page == "Features":
                parts += p["BulletPoints"]
            else:
                for r in p["Reviews"]:
                    parts += [f'"{r["title"]}"', str(r["score"]), r["body"]]
        else:  # done
            parts = ["Thank you for shopping with us!", "Your score (min 0.0, max 1.0)",
                     str(s.score)]
        self.observation = SEP.join(t for t in (str(x).strip() for x in parts) if t)
        self.clickables = clickables

    def available_actions(self) -> dict[str, Any]:
        return {"has_search_bar": self.state.page == "search",
                "clickables": list(self.clickables)}

    # ---------------------------------------------------------------- transitions
    def _run_search(self, keywords: tuple[str, ...], page_num: int) -> None:
        if keywords != self._results_key:  # search is deterministic: reuse results when paging
            self._results = self.search_engine.search(" ".join(keywords))
            self._results_key = keywords
        self.state = PageState("results", keywords, page_num)

    def act(self, action: str) -> tuple[float | None, bool, bool]:
        """Apply `action`; returns (score if the episode ended by buying, done, action_valid)."""
        s = self.state
        if s.page == "done":
            return None, True, False
        name, arg = parse_action(action)
        arg = arg.lower() if arg is not None else None
        score, done = None, False
        if name == "search" and arg:
            self._run_search(tuple(arg.split(" ")), 1)
        elif name == "click" and arg in self.clickables and arg != "search":
            kind, payload = self.clickables[arg]
            if arg == END_BUTTON.lower():
                score, self.reward_info = self._buy()
                self.state = PageState("done", s.keywords, s.page_num, s.asin, dict(s.options),
                                       score=score)
                done = True
            elif arg == BACK_TO_SEARCH.lower():
                self.state = PageState()
            elif arg == NEXT_PAGE.lower() and s.page == "results":
                self._run_search(s.keywords, s.page_num + 1)
            elif arg == PREV_PAGE.lower() and s.page == "results":
                self._run_search(s.keywords, s.page_num - 1)
            elif arg == PREV_PAGE.lower() and s.page == "sub":
                self.state = PageState("item", s.keywords, s.page_num, s.asin, s.options)
            elif arg == PREV_PAGE.lower() and s.page == "item":
                self._run_search(s.keywords, s.page_num)  # back to results; options cleared
            elif arg in _SUB_PAGE_KEYS:
                self.state = PageState("sub", s.keywords, s.page_num, s.asin, s.options,
                                       sub_page=_SUB_PAGE_KEYS[arg])
            elif kind == "product":
                self.state = PageState("item", s.keywords, s.page_num, payload, s.options)
            elif kind == "option":
                self.state = PageState("item", s.keywords, s.page_num, s.asin,
                                       {**s.options, payload: arg})
        else:
            return None, False, False
        self._render()
        return score, done, True

    def _buy(self) -> tuple[float, dict[str, Any]]:
        s = self.state
        product = self.catalog.by_asin[s.asin]
        return get_reward(product, self.goal, self.catalog.prices[s.asin], s.options)
