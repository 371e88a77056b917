"""The policy (actor) and reference workers: one process per data-parallel rank.

Each rank holds a `TrainingBackend` (FSDP2 by default). The driver calls the `@register`ed
methods on the whole group: batches are split by data-parallel rank and the outputs concatenated.
The reference worker is the same class with `trainable=False` (no optimizer), and usually
shares its process with the actor (colocated roles).
"""
from __future__ import annotations

import torch

import algorithms
from algorithms.losses import aggregate, kl_penalty, masked_mean
from orchestrator.batch import Batch
from orchestrator.worker_group import Dispatch, Execute, register
from workers.backends import build_backend
from workers.backends.base import length_order, micro_batches as split_micro
from workers.base import Worker
from workers.weight_sync import push_buckets

# Modes that average over the rows (with tokens) of the mini-batch: each micro-batch's loss is
# scaled by its share rows / global_rows. seq-mean-token-sum-norm is Dr.GRPO's (1/G)·Σ/T: without
# the share its scale would grow with the number of rows (verl divides by grad_accum likewise).
SEQ_MEAN = ("seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm")


class ActorWorker(Worker):
    def __init__(self, model_path: str, actor_cfg: dict, algo_cfg: dict | None = None,
                 trainable: bool = True, seed: int = 0):
        super().__init__()
        self.model_path, self.cfg, self.algo = model_path, dict(actor_cfg), dict(algo_cfg or {})
        self.trainable, self.seed = trainable, seed
        self.backend = None

    # ------------------------------------------------------------------ lifecycle
    @register(dispatch=Dispatch.ONE_TO_ALL)
    def setup(self) -> dict:
        self.backend, info = build_backend(self.cfg, self.model_path, self.seed, trainable=self.trainable)
        return info

    # ------------------------------------------------------------------ phases
    @register(dispatch=Dispatch.DP_SPLIT)
    def compute_logprobs(self, batch: Batch) -> Batch:
        """Log-probs of the response tokens (and their entropy) under the current weights."""
        temperature = batch.meta.get("temperature", 1.0)
        logprobs, entropy = self.backend.forward_logprobs(batch, self.cfg["micro_batch_size"], temperature,
                                                          with_entropy=batch.meta.get("with_entropy", False),
                                                          max_tokens=self.cfg.get("max_tokens_per_micro_batch"))
        out = Batch({"logprobs": logprobs})
        if entropy is not None:
            out["entropy"] = entropy
        return out

    @register(dispatch=Dispatch.DP_SPLIT)
    def update(self, batch: Batch) -> Batch:
        """PPO epochs over mini-batches of this rank's shard; one optimizer step per mini-batch.

        Losses are scaled so that summing gradients over micro-batches and averaging them over
        ranks (FSDP's reduce) gives exactly the loss aggregated over the *global* mini-batch:
        the same update one process would make on the whole batch. Metrics are returned as
        token-weighted contributions, so the driver's sum over ranks is the global mean.
        """
        c, world = self.cfg, self.dp_size
        policy_loss = algorithms.get_policy_loss(self.algo.get("policy_loss", "ppo_clip"))
        temperature = batch.meta.get("temperature", 1.0)
        # mini_batch_size counts samples over all ranks; agent batches vary in size, so the last
        # mini-batch may be smaller (every rank has an equal shard, hence as many mini-batches).
        mini = max(c["mini_batch_size"] // world, 1) if c["mini_batch_size"] else len(batch)
        token_mean = c["loss_agg"] == "token-mean"
        history: list[dict[str, float]] = []
        for _ in range(c["ppo_epochs"]):
            for mb in batch.chunks_of(mini):
                global_tokens = _all_reduce_sum(mb["response_mask"].sum().item())
                global_rows = _all_reduce_sum((mb["response_mask"].sum(-1) > 0).sum().item())
                # Similar lengths per micro-batch (less padding); the loss is a sum over the
                # mini-batch, so the grouping does not change the update.
                micro_batches = split_micro(mb.select(length_order(mb)), c["micro_batch_size"],
                                            c.get("max_tokens_per_micro_batch"))

                def loss_fn(micro: Batch, logprobs: torch.Tensor, entropy: torch.Tensor):
                    mask = micro["response_mask"].to(logprobs.dtype)
                    old = micro["old_logprobs"] if "old_logprobs" in micro else logprobs.detach()
                    # This micro-batch's share of the global mini-batch (the seq-mean modes, Dr.GRPO's
                    # token-sum-norm included, average over the rows that have tokens).
                    rows = (mask.sum(-1) > 0).sum().item()
                    row_share = rows / global_rows if c["loss_agg"] in SEQ_MEAN else 1.0
                    weight = mask.sum().item() / global_tokens * len(micro_batches)

                    def agg(x):
                        if token_mean:
                            return aggregate(x, mask, "token-mean", global_tokens=global_tokens)
                        return aggregate(x, mask, c["loss_agg"]) * row_share if rows else x.sum() * 0.0

                    pg_loss, m = policy_loss(logprobs, old, micro["advantages"], mask,
                                             clip_low=c["clip_ratio_low"], clip_high=c["clip_ratio_high"],
                                             dual_clip=c["dual_clip"], agg=c["loss_agg"],
                                             global_tokens=global_tokens if token_mean else None)
                    loss = pg_loss if token_mean else (pg_loss * row_share if rows else pg_loss * 0.0)
                    metrics = {"pg_loss": loss.item() * len(micro_batches),
                               "entropy": masked_mean(entropy.detach(), mask).item() * weight,
                               **{k: float(v) * weight for k, v in m.items()}}
                    if c["kl_coef"] > 0 and "ref_logprobs" in micro:
                        kl_tok = kl_penalty(logprobs, micro["ref_logprobs"], c["kl_estimator"])
                        loss = loss + c["kl_coef"] * agg(kl_tok)
                        metrics["kl"] = masked_mean(kl_tok.detach(), mask).item() * weight
                    if c["entropy_coef"]:
                        loss = loss - c["entropy_coef"] * agg(entropy)
                    return loss * world, metrics

                history.append(self.backend.train_step(micro_batches, loss_fn, temperature))
        out = {k: sum(h[k] for h in history) / len(history) for k in history[0]}
        return Batch(meta={f"metrics/rank{self.rank}": out})

    # ------------------------------------------------------------------ weights
    @register(dispatch=Dispatch.ONE_TO_ALL)
    def push_weights(self, rollout_actors: list, bucket_bytes: int, via: str = "object_store") -> dict:
        """Collective: gather full tensors bucket by bucket; rank 0 ships each bucket to every
        rollout replica through the object store (one copy, read by all) or, `via` "ipc", as a
        handle to the bucket on its device, and waits, within the sync deadline, for it to be
        loaded before gathering the next (workers/weight_sync.py)."""
        device = self.backend.device if via == "ipc" else "cpu"
        return push_buckets(self.backend.iter_param_buckets(bucket_bytes, device=device), self.rank,
                            rollout_actors, via=via)

    @register(dispatch=Dispatch.ONE_TO_ALL)
    def write_shared(self, layout) -> dict:
        """Collective: copy this rank's rows of the weights into the node's shared buffer
        (workers/shared_weights.py); returns what was written and how long it took."""
        import time

        from workers.shared_weights import tensor_views
        t0 = time.time()
        if getattr(self, "_shared", (None,))[0] != layout.path:  # map once per buffer
            self._shared = (layout.path, tensor_views(layout))
        written = self.backend.write_shared(self._shared[1], layout.aliases)
        return {"written": written, "seconds": time.time() - t0}

    @register(dispatch=Dispatch.ONE_TO_ALL)
    def save(self, path: str, with_optimizer: bool = True) -> None:
        self.backend.save(path, with_optimizer=with_optimizer)

    @register(dispatch=Dispatch.ONE_TO_ALL)
    def load(self, path: str, with_optimizer: bool = True) -> None:
        self.backend.load(path, with_optimizer=with_optimizer)

    @register(dispatch=Dispatch.ONE_TO_ALL)
    def save_hf(self, path: str) -> None:
        self.backend.save_hf(path)

    @register(dispatch=Dispatch.ONE_TO_ALL, execute=Execute.RANK_ZERO)
    def rank_info(self) -> dict:
        return {"rank": self.rank, "world_size": self.world_size}


def _all_reduce_sum(value: float) -> float:
    from workers.dist import all_reduce_scalar
    return all_reduce_scalar(value, "sum")
