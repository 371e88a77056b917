"""The PPO critic (value model) worker: one process per data-parallel rank.

Each rank holds a `TrainingBackend` set up with kind="value" (the policy backbone plus a scalar
head, see workers/backends/fsdp_model.py) and its own AdamW. The driver calls the `@register`ed
methods on the whole group, like the actor's:

    critic.setup()
    batch["values"]  = critic.compute_values(batch)["values"]       # V_old, before any update
    adv, returns     = compute_gae(token_rewards, batch["values"], mask, gamma, lam)   # driver
    batch["returns"] = returns
    critic.update(batch)                                             # value-clipped regression
"""
from __future__ import annotations


import torch

from algorithms.losses import value_loss
from orchestrator.batch import Batch
from orchestrator.worker_group import Dispatch, register
from workers.actor import SEQ_MEAN, _all_reduce_sum
from workers.backends import build_backend
from workers.backends.base import length_order, micro_batches as split_micro
from workers.base import Worker

REQUIRED_CFG = ("lr", "weight_decay", "betas", "grad_clip", "ppo_epochs", "mini_batch_size", "micro_batch_size",
                "cliprange_value", "loss_agg")
UPDATE_FIELDS = ("response_mask", "values", "returns")


class CriticWorker(Worker):
    """critic_cfg: lr, weight_decay, betas, grad_clip, ppo_epochs, mini_batch_size (samples per
    optimizer step over all ranks, 0 = the whole batch), micro_batch_size (per rank and forward),
    cliprange_value (ε_v, None = no value clipping), loss_agg (losses.AGG_MODES); optional backend
    ("fsdp"), dtype ("float32"), gradient_checkpointing (False), value_head_std (None: 1/(hidden+1))."""

    def __init__(self, model_path: str, critic_cfg: dict, seed: int = 0):
        super().__init__()
        missing = [k for k in REQUIRED_CFG if k not in critic_cfg]
        if missing:
            raise ValueError(f"critic config is missing {missing} (have {sorted(critic_cfg)})")
        self.model_path, self.cfg, self.seed = model_path, dict(critic_cfg), seed
        self.backend = None

    # ------------------------------------------------------------------ lifecycle
    @register(dispatch=Dispatch.ONE_TO_ALL)
    def setup(self) -> dict:
        self.backend, info = build_backend(self.cfg, self.model_path, self.seed, trainable=True, kind="value")
        return info

    # ------------------------------------------------------------------ phases
    @register(dispatch=Dispatch.DP_SPLIT)
    def compute_values(self, batch: Batch) -> Batch:
        """V(s_t) [B, R] per response position (padding 0) under the current critic weights."""
        return Batch({"values": self.backend.forward_values(batch, self.cfg["micro_batch_size"],
                                                            self.cfg.get("max_tokens_per_micro_batch"))})

    @register(dispatch=Dispatch.DP_SPLIT)
    def update(self, batch: Batch) -> Batch:
        """PPO epochs over mini-batches of this rank's shard; one optimizer step per mini-batch.
        Needs `values` (V_old: the values the advantages were computed with) and `returns`.

        As in ActorWorker.update, each micro-batch's loss is its share of the loss aggregated over
        the *global* mini-batch, times world_size (FSDP averages gradients over ranks), so the
        update equals the one a single process makes on the whole mini-batch. Metrics are
        per-rank contributions: their sum over ranks is the global mean (grad_norm, lr: global).
        """
        c, world = self.cfg, self.dp_size
        for name in UPDATE_FIELDS:
            if name not in batch.tensors:
                raise ValueError(f"critic update: batch is missing the tensor field {name!r} (have {sorted(batch.keys())})")
        if c["mini_batch_size"] % world:
            raise ValueError(f"critic.mini_batch_size={c['mini_batch_size']} is not divisible by the {world} ranks")
        # Samples over all ranks; agent batches vary in size, so the last mini-batch may be smaller.
        mini = max(c["mini_batch_size"] // world, 1) if c["mini_batch_size"] else len(batch)
        agg, token_mean = c["loss_agg"], c["loss_agg"] == "token-mean"
        history: list[dict[str, float]] = []
        for _ in range(c["ppo_epochs"]):
            for mb in batch.chunks_of(mini):
                global_tokens = _all_reduce_sum(mb["response_mask"].sum().item())
                global_rows = _all_reduce_sum((mb["response_mask"].sum(-1) > 0).sum().item())
                if global_tokens == 0:  # same on every rank: all raise, none hangs
                    raise ValueError("critic update: a mini-batch has no response tokens (response_mask all 0)")
                micro_batches = split_micro(mb.select(length_order(mb)), c["micro_batch_size"],
                                            c.get("max_tokens_per_micro_batch"))

                def loss_fn(micro: Batch, values: torch.Tensor, _unused):
                    mask = micro["response_mask"]
                    rows = int((mask.sum(-1) > 0).sum())
                    # This micro-batch's share of the global mini-batch loss (see actor.update).
                    share = rows / global_rows if agg in SEQ_MEAN else 1.0
                    loss, m = value_loss(values, micro["values"], micro["returns"], mask, c["cliprange_value"],
                                         agg=agg, global_tokens=global_tokens if token_mean else None)
                    loss = loss * share
                    weight = mask.sum().item() / global_tokens * len(micro_batches)
                    metrics = {"vf_loss": loss.item() * len(micro_batches),
                               **{k: float(v) * weight for k, v in m.items()}}
                    return loss * world, metrics

                history.append(self.backend.train_step(micro_batches, loss_fn))
        out = {k: sum(h[k] for h in history) / len(history) for k in history[0]}
        return Batch(meta={f"metrics/rank{self.rank}": out})

    # ------------------------------------------------------------------ checkpoints
    @register(dispatch=Dispatch.ONE_TO_ALL)
    def save(self, path: str, with_optimizer: bool = True) -> None:
        self.backend.save(path, with_optimizer=with_optimizer)

    @register(dispatch=Dispatch.ONE_TO_ALL)
    def load(self, path: str, with_optimizer: bool = True) -> None:
        self.backend.load(path, with_optimizer=with_optimizer)

    @register(dispatch=Dispatch.ONE_TO_ALL)
    def save_hf(self, path: str) -> None:
        """An HF *ForTokenClassification folder (num_labels=1, head included): setup() on it
        resumes this critic, head and all."""
        self.backend.save_hf(path)
