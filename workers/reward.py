"""Rule-based rewards on the driver: decode responses, call the user's reward function per row.

The reward function has the verl-compatible signature documented in envs/rewards.py:
`compute_score(data_source, solution_str, ground_truth, extra_info) -> float | dict`.
A crash or a non-numeric result gives `reward.crash_penalty` for that row and is counted in
`reward/crashed`; it never stops training.
"""
from __future__ import annotations

import logging

import numpy as np
import torch

from envs.rewards import load_reward_fn, score_batch
from orchestrator.batch import Batch

log = logging.getLogger(__name__)


class RewardFn:
    def __init__(self, spec: str, tokenizer, crash_penalty: float = 0.0):
        self.fn, self.spec = load_reward_fn(spec), spec
        self.tokenizer, self.crash_penalty = tokenizer, crash_penalty

    def decode(self, batch: Batch) -> list[str]:
        resp, mask = batch["responses"], batch["response_mask"].bool()
        return self.tokenizer.batch_decode([r[m].tolist() for r, m in zip(resp, mask)], skip_special_tokens=True)

    def __call__(self, batch: Batch) -> tuple[torch.Tensor, dict]:
        texts = self.decode(batch)
        extra = batch["extra_info"] if "extra_info" in batch else [None] * len(batch)
        scores, extra_metrics, n_crashed = score_batch(self.fn, batch["data_source"], texts, batch["ground_truth"],
                                                       extra, self.crash_penalty)
        if n_crashed:
            log.warning("reward function %s failed on %d of %d rows (scored %g)", self.spec, n_crashed,
                        len(batch), self.crash_penalty)
        metrics = {"reward/crashed": n_crashed}
        for k, v in extra_metrics.items():
            vals = [x for x in v if isinstance(x, (int, float))]
            if vals:
                metrics[f"reward/{k}"] = float(np.mean(vals))
        return torch.tensor(scores, dtype=torch.float32), metrics
