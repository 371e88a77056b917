"""Prompt data on the driver: problems -> chat-templated token ids, and a resumable cursor.

The cursor (epoch, position, shuffle seed) is all the state a checkpoint needs to resume the
data stream exactly: the permutation of epoch e is a pure function of (seed, e).
"""
from __future__ import annotations

import logging

import numpy as np

from envs.math import MathProblem, build_prompt, generate_problems, load_problems
from orchestrator.batch import Batch

log = logging.getLogger(__name__)


def load_task_problems(data_cfg) -> list[MathProblem]:
    if data_cfg.train_path:
        return load_problems(data_cfg.train_path)
    return generate_problems(data_cfg.num_generated, levels=tuple(data_cfg.difficulty), seed=data_cfg.seed)


class PromptDataset:
    """Tokenized prompts + ground truths, served in shuffled batches with a resumable cursor."""

    def __init__(self, problems: list[MathProblem], tokenizer, max_prompt_tokens: int, batch_size: int,
                 shuffle: bool = True, seed: int = 0, system_prompt: str | None = None,
                 chat_template: bool = True, source: str = "data"):
        self.problems, self.prompt_ids = [], []
        dropped = 0
        for p in problems:
            ids = encode_prompt(tokenizer, build_prompt(p, system_prompt=system_prompt), chat_template)
            if len(ids) > max_prompt_tokens:
                dropped += 1
                continue
            self.problems.append(p)
            self.prompt_ids.append(ids)
        if dropped:
            log.warning("%s: dropped %d of %d prompts longer than data.max_prompt_tokens=%d",
                        source, dropped, len(problems), max_prompt_tokens)
        if len(self.problems) < batch_size:
            raise ValueError(f"{source}: {len(self.problems)} usable prompts, fewer than data.batch_size={batch_size}")
        self.batch_size, self.shuffle, self.seed = batch_size, shuffle, seed
        self.epoch, self.position = 0, 0

    def __len__(self) -> int:
        return len(self.problems)

    def _order(self, epoch: int) -> np.ndarray:
        if not self.shuffle:
            return np.arange(len(self.problems))
        return np.random.default_rng([self.seed, epoch]).permutation(len(self.problems))

    def next_batch(self) -> Batch:
        """The next `batch_size` prompts; a partial tail of an epoch is skipped (fixed batch shapes)."""
        if self.position + self.batch_size > len(self.problems):
            self.epoch, self.position = self.epoch + 1, 0
        idx = self._order(self.epoch)[self.position:self.position + self.batch_size]
        self.position += self.batch_size
        return self.rows(idx)

    def rows(self, idx) -> Batch:
        probs = [self.problems[i] for i in idx]
        return Batch(non_tensors={
            "prompt_ids": [self.prompt_ids[i] for i in idx],
            "question": [p.question for p in probs],
            "ground_truth": [p.answer for p in probs],
            "data_source": [p.data_source for p in probs],
            "uid": [f"{self.epoch}-{int(i)}" for i in idx],
        })

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "position": self.position, "seed": self.seed, "size": len(self.problems)}

    def load_state_dict(self, state: dict) -> None:
        if state["size"] != len(self.problems) or state["seed"] != self.seed:
            raise ValueError(f"data cursor was saved for {state['size']} prompts with seed {state['seed']}, "
                             f"this run has {len(self.problems)} with seed {self.seed}")
        self.epoch, self.position = state["epoch"], state["position"]


def encode_prompt(tokenizer, messages: list[dict], chat_template: bool) -> list[int]:
    if chat_template and tokenizer.chat_template:
        ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
        if isinstance(ids, dict) or hasattr(ids, "keys"):  # BatchEncoding in some versions
            ids = ids["input_ids"]
        return list(ids)
    text = "\n\n".join(m["content"] for m in messages) + "\n"
    return tokenizer(text, add_special_tokens=True)["input_ids"]
