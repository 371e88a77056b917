"""The reward-model worker: a scalar head on the policy backbone, trained on preference pairs and
used to score (prompt, response) sequences. One process per data-parallel rank.

Built by `hyflow train-rm` (orchestrator/rm_train.py) as a Ray worker group; the group calls:

    rm.setup()                          # the backbone + scalar head (kind="value") on the TrainingBackend
    scores = rm.score(batch)            # DP_SPLIT: input_ids + attention_mask rows -> [B] float32
    rm.train_pairs(pairs)               # DP_SPLIT: one optimizer step on pairs (chosen_ids, rejected_ids)
    rm.save_hf(path)                    # an HF folder AutoModelForSequenceClassification loads

The score of a sequence is the head's output at its last token that is not the pad token (real
tokens only: attention_mask 1) — exactly what HF's *ForSequenceClassification picks ("the
rightmost token that is not pad_token_id"), so the exported folder scores as this worker does.
`score` takes any padding layout, e.g. a rollout batch (left-padded prompt + right-padded
response): a reward worker group for PPO/GRPO runs calls it on the same batches.

How the head is reused: the backend holds the critic's model kind "value" (a token-classification
head, workers/backends/fsdp_model.py), whose value at response position 0 is the head at the
position just before the response. So each sequence is re-laid out as its tokens (left-padded)
plus one dummy response token: the "value" of that dummy is the head at the last real token
(causal attention: the dummy changes nothing before it). The head's bias is frozen at 0: the
HF sequence-classification head has none (and Bradley–Terry is blind to it anyway).
"""
from __future__ import annotations

import torch
import torch.distributed as dist

from algorithms.reward_model import bradley_terry_loss
from orchestrator.batch import Batch
from orchestrator.worker_group import Dispatch, register
from workers.backends import build_backend
from workers.backends.fsdp_model import VALUE_HEAD, strip_prefixes, write_hf_folder
from workers.base import Worker

EXPORT_BUCKET_BYTES = 256 * 2**20
REQUIRED_CFG = ("micro_batch_size", "margin", "center_coef")


# ------------------------------------------------------------------ layout (pure)
def real_tokens(input_ids: torch.Tensor, attention_mask: torch.Tensor, pad_token_id: int | None) -> list[list[int]]:
    """Each row's scored tokens: the real ones (attention_mask 1), in order, up to the last one
    that is not `pad_token_id` (HF's choice; trailing pad-id tokens, e.g. an EOS that doubles as
    pad, cannot change the head there: attention is causal)."""
    if input_ids.shape != attention_mask.shape or input_ids.dim() != 2:
        raise ValueError(f"input_ids {tuple(input_ids.shape)} and attention_mask {tuple(attention_mask.shape)} "
                         "must be the same [B, L] shape")
    out = []
    for i, (ids, mask) in enumerate(zip(input_ids.tolist(), attention_mask.tolist())):
        seq = [t for t, m in zip(ids, mask) if m]
        end = len(seq)
        while pad_token_id is not None and end > 0 and seq[end - 1] == pad_token_id:
            end -= 1
        if end == 0:
            raise ValueError(f"row {i} has no token to score (no real token other than the pad id {pad_token_id})")
        out.append(seq[:end])
    return out


def score_layout(seqs: list[list[int]], pad_token_id: int | None) -> Batch:
    """Sequences -> the "value" layout whose single response position reads the head at each
    sequence's last token: input_ids [B, L+1] = left-padded tokens + one dummy token (attended,
    never read before), responses [B, 1] = the dummy."""
    if not seqs or any(len(s) == 0 for s in seqs):
        raise ValueError("score_layout needs at least one sequence, none of them empty")
    pad = 0 if pad_token_id is None else int(pad_token_id)
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width + 1), pad, dtype=torch.long)
    mask = torch.zeros((len(seqs), width + 1), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, width - len(s):width] = torch.tensor(s, dtype=torch.long)
        mask[i, width - len(s):] = 1
    return Batch({"input_ids": ids, "attention_mask": mask, "position_ids": (mask.cumsum(-1) - 1).clamp(min=0),
                  "responses": ids[:, width:], "response_mask": mask[:, width:]})


def pad_right(seqs: list[list[int]], pad_token_id: int | None) -> Batch:
    """Token lists -> input_ids / attention_mask rows (right-padded), what `score` takes."""
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), 0 if pad_token_id is None else int(pad_token_id), dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, :len(s)] = torch.tensor(s, dtype=torch.long)
        mask[i, :len(s)] = 1
    return Batch({"input_ids": ids, "attention_mask": mask})


def sequence_classification_arch(config) -> str:
    """The HF *ForSequenceClassification class name for a config's model type (what the exported
    folder's config.json names), or a ValueError when transformers has none."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES
    name = MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES.get(config.model_type)
    if name is None:
        raise ValueError(f"model type {config.model_type!r} has no AutoModelForSequenceClassification class; "
                         "a reward model of it cannot be exported")
    return name


def check_exportable(model: torch.nn.Module) -> str:
    """The sequence-classification class whose weights are exactly this value model's minus the
    head bias (checked on the meta device: no memory); raises naming the keys that differ."""
    from transformers import AutoModelForSequenceClassification
    arch = sequence_classification_arch(model.config)
    with torch.device("meta"):
        target = AutoModelForSequenceClassification.from_config(model.config)
    want = set(target.state_dict())
    have = {strip_prefixes(k) for k in model.state_dict()} - {f"{VALUE_HEAD}.bias"}
    if want != have:
        raise ValueError(f"{arch} does not hold the same weights as the value model: only in {arch}: "
                         f"{sorted(want - have)[:5]}, only in the value model: {sorted(have - want)[:5]}")
    return arch


# ------------------------------------------------------------------ the worker
class RewardModelWorker(Worker):
    """rm_cfg: micro_batch_size (pairs per forward/backward on each rank; scoring runs
    2 x that many sequences per forward), margin, center_coef, and the backend options
    (backend, lr, weight_decay, betas, grad_clip, dtype, gradient_checkpointing, zero_stage,
    value_head_std: see workers/backends). pad_token_id: the tokenizer's (the exported config's)."""

    def __init__(self, model_path: str, rm_cfg: dict, pad_token_id: int | None, seed: int = 0,
                 trainable: bool = True):
        super().__init__()
        missing = [k for k in REQUIRED_CFG if k not in rm_cfg]
        if missing:
            raise ValueError(f"reward-model config is missing {missing} (have {sorted(rm_cfg)})")
        self.model_path, self.cfg, self.pad_token_id = model_path, dict(rm_cfg), pad_token_id
        self.seed, self.trainable = seed, trainable
        self.backend = None

    # ------------------------------------------------------------------ lifecycle
    @register(dispatch=Dispatch.ONE_TO_ALL)
    def setup(self) -> dict:
        self.backend, info = build_backend(self.cfg, self.model_path, self.seed, trainable=self.trainable,
                                           kind="value")
        model = self.backend.model
        self.architecture = check_exportable(model)
        bias = getattr(getattr(model, VALUE_HEAD), "bias", None)
        if bias is not None:  # frozen before the first forward (FSDP2 builds its unsharded params then)
            bias.requires_grad_(False)
        return {**info, "architecture": self.architecture}

    # ------------------------------------------------------------------ scoring
    @register(dispatch=Dispatch.DP_SPLIT)
    def score(self, batch: Batch) -> torch.Tensor:
        """Rewards [B] (float32, CPU) of `input_ids` / `attention_mask` rows in any padding
        layout: the head at each row's last real token that is not the pad token."""
        for name in ("input_ids", "attention_mask"):
            if name not in batch.tensors:
                raise ValueError(f"score: batch is missing the tensor field {name!r} (have {sorted(batch.keys())})")
        seqs = real_tokens(batch["input_ids"], batch["attention_mask"], self.pad_token_id)
        layout = score_layout(seqs, self.pad_token_id)
        return self.backend.forward_values(layout, 2 * self.cfg["micro_batch_size"])[:, 0]

    # ------------------------------------------------------------------ training
    @register(dispatch=Dispatch.DP_SPLIT)
    def train_pairs(self, batch: Batch) -> Batch:
        """One optimizer step on this rank's pairs (non-tensor fields `chosen_ids`, `rejected_ids`:
        token lists of prompt + response). Each micro-batch holds whole pairs (its chosen rows,
        then its rejected rows); its loss is its share of the mean over the *global* step's pairs,
        times world_size (FSDP/ZeRO average gradients over ranks), so the update is the one a
        single process makes on all pairs. Metrics are per-rank contributions (their sum over
        ranks is the global mean); grad_norm, lr, step_skipped are global."""
        c, world = self.cfg, self.dp_size
        for name in ("chosen_ids", "rejected_ids"):
            if name not in batch.non_tensors:
                raise ValueError(f"train_pairs: batch is missing the field {name!r} (have {sorted(batch.keys())})")
        n = len(batch)
        global_pairs = _all_reduce_sum(n)
        if global_pairs == 0:
            raise ValueError("train_pairs: no pairs on any rank")
        chosen, rejected = list(batch["chosen_ids"]), list(batch["rejected_ids"])
        k = c["micro_batch_size"]
        micro = [score_layout(chosen[i:i + k] + rejected[i:i + k], self.pad_token_id) for i in range(0, n, k)]

        def loss_fn(mb: Batch, values: torch.Tensor, _unused):
            pairs = len(mb) // 2
            loss, m = bradley_terry_loss(values[:pairs, 0], values[pairs:, 0], c["margin"], c["center_coef"])
            share = pairs / global_pairs
            metrics = {"loss": loss.item() * share * len(micro),
                       **{name: float(v) * share * len(micro) for name, v in m.items()}}
            return loss * share * world, metrics

        out = self.backend.train_step(micro, loss_fn)
        return Batch(meta={f"metrics/rank{self.rank}": out})

    # ------------------------------------------------------------------ export
    @register(dispatch=Dispatch.ONE_TO_ALL)
    def save_hf(self, path: str) -> None:
        """Rank 0 writes an HF *ForSequenceClassification folder (num_labels=1, head `score`
        without bias, pad_token_id set): `AutoModelForSequenceClassification.from_pretrained(path)`
        scores as `score` does. Collective; returns once the folder is complete."""
        state: dict[str, torch.Tensor] = {}
        for bucket in self.backend.iter_param_buckets(EXPORT_BUCKET_BYTES):
            if self.rank == 0:
                state.update(bucket)
        if self.rank == 0:
            bias = state.pop(f"{VALUE_HEAD}.bias", None)
            if bias is not None and bias.abs().max().item() != 0:
                raise ValueError(f"the head bias is {bias.tolist()}, not 0: {self.architecture} has no bias to hold "
                                 f"it (was {self.model_path} a critic with a trained bias?)")
            model = self.backend.model
            model.config.pad_token_id = self.pad_token_id  # the worker's rule, HF's rule: same token
            write_hf_folder(path, state, model, self.model_path, self.architecture)
        if dist.is_initialized():
            dist.barrier()


def _all_reduce_sum(value: float) -> float:
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return value
    t = torch.tensor([float(value)], dtype=torch.float64)
    dist.all_reduce(t)
    return t.item()
