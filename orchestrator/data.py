"""Prompt data on the driver: rows -> chat-templated token ids, and a resumable cursor.

A row is verl-shaped: {"prompt": chat messages, "data_source", "ground_truth", "extra_info"}.
Rows come from generated math problems (default), files (`data.train_path`, `data.val_path`:
jsonl, json, parquet, a `datasets` folder; orchestrator/data_files.py), or any `module:function(n, seed) -> rows` (`data.generator`, e.g. the
step states of the retrieval task). The cursor (epoch, position, shuffle seed) is all the state a
checkpoint needs to resume the stream exactly: epoch e's permutation is a pure function of (seed, e).
"""
from __future__ import annotations

import importlib
import logging

import numpy as np

from envs.math import build_prompt, generate_problems
from orchestrator.data_files import load_prompt_rows
from orchestrator.batch import Batch

log = logging.getLogger(__name__)


def load_rows(data_cfg) -> list[dict]:
    if data_cfg.generator:
        module, _, fn = data_cfg.generator.partition(":")
        if not fn:
            raise ValueError(f"data.generator must be 'module:function', got {data_cfg.generator!r}")
        rows = getattr(importlib.import_module(module), fn)(data_cfg.num_generated, seed=data_cfg.seed)
        for i, r in enumerate(rows[:1]):
            missing = {"prompt", "ground_truth"} - set(r)
            if missing:
                raise ValueError(f"data.generator {data_cfg.generator}: row {i} lacks {sorted(missing)}")
        return rows
    if data_cfg.train_path:
        return load_prompt_rows(data_cfg.train_path, "data.train_path", data_cfg.system_prompt)
    problems = generate_problems(data_cfg.num_generated, levels=tuple(data_cfg.difficulty), seed=data_cfg.seed)
    return [{"prompt": build_prompt(p, system_prompt=data_cfg.system_prompt), "data_source": p.data_source,
             "ground_truth": p.answer, "extra_info": None} for p in problems]


class PromptDataset:
    """Tokenized prompts + ground truths, served in shuffled batches with a resumable cursor."""

    def __init__(self, rows: list[dict], tokenizer, max_prompt_tokens: int, batch_size: int,
                 shuffle: bool = True, seed: int = 0, chat_template: bool = True, source: str = "data"):
        self.rows_, self.prompt_ids = [], []
        dropped = 0
        for r in rows:
            ids = encode_prompt(tokenizer, r["prompt"], chat_template)
            if len(ids) > max_prompt_tokens:
                dropped += 1
                continue
            self.rows_.append(r)
            self.prompt_ids.append(ids)
        if dropped:
            log.warning("%s: dropped %d of %d prompts longer than data.max_prompt_tokens=%d",
                        source, dropped, len(rows), max_prompt_tokens)
        if len(self.rows_) < batch_size:
            raise ValueError(f"{source}: {len(self.rows_)} usable prompts, fewer than data.batch_size={batch_size}")
        self.batch_size, self.shuffle, self.seed = batch_size, shuffle, seed
        self.epoch, self.position = 0, 0

    def __len__(self) -> int:
        return len(self.rows_)

    def _order(self, epoch: int) -> np.ndarray:
        if not self.shuffle:
            return np.arange(len(self.rows_))
        return np.random.default_rng([self.seed, epoch]).permutation(len(self.rows_))

    def next_batch(self) -> Batch:
        """The next `batch_size` prompts; a partial tail of an epoch is skipped (fixed batch shapes)."""
        if self.position + self.batch_size > len(self.rows_):
            self.epoch, self.position = self.epoch + 1, 0
        idx = self._order(self.epoch)[self.position:self.position + self.batch_size]
        self.position += self.batch_size
        return self.rows(idx)

    def rows(self, idx) -> Batch:
        rows = [self.rows_[i] for i in idx]
        return Batch(non_tensors={
            "prompt_ids": [self.prompt_ids[i] for i in idx],
            "ground_truth": [r["ground_truth"] for r in rows],
            "data_source": [r.get("data_source", "") for r in rows],
            "extra_info": [r.get("extra_info") for r in rows],
            # The GRPO group: the n samples of one prompt (for step states: of one state).
            "uid": [f"{self.epoch}-{r.get('state_id', int(i))}" for r, i in zip(rows, idx)],
        })

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "position": self.position, "seed": self.seed, "size": len(self.rows_)}

    def load_state_dict(self, state: dict) -> None:
        if state["size"] != len(self.rows_) or state["seed"] != self.seed:
            raise ValueError(f"data cursor was saved for {state['size']} prompts with seed {state['seed']}, "
                             f"this run has {len(self.rows_)} with seed {self.seed}")
        self.epoch, self.position = state["epoch"], state["position"]


def encode_prompt(tokenizer, messages: list[dict], chat_template: bool) -> list[int]:
    if chat_template and tokenizer.chat_template:
        ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
        if isinstance(ids, dict) or hasattr(ids, "keys"):  # BatchEncoding in some versions
            ids = ids["input_ids"]
        return list(ids)
    text = "\n\n".join(m["content"] for m in messages) + "\n"
    return tokenizer(text, add_special_tokens=True)["input_ids"]
