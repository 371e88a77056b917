"""Prefix packing: score many responses of one prompt with the prompt encoded once.

FoR scores every candidate action of a state after the same state prompt, and the states of one
problem repeat across its trajectories (every trajectory starts from s_0). `pack_by_prompt` turns
rows in the pack_sequences layout (workers/rollout.py) into one row per distinct prompt: the prompt
(left-padded) followed by each distinct response of it, one segment after another
(`response_segments` 1..K, 0 = padding; positions restart after the prompt in every segment). The
backend's `response_logprobs` (workers/backends/fsdp_model.py) sees `response_segments` and masks
attention so that a segment sees the prompt and itself only: each token's log-prob is the one its
unpacked row gives, at the cost of P + ΣA tokens instead of K·(P + A).

    packed, index = pack_by_prompt(rows, pad_token_id)
    lp = backend.forward_logprobs(packed, ...)         # [n_packed, R'] per token
    seq = segment_sums(lp, packed, index)              # [rows]: each row's sequence log-prob
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from orchestrator.batch import Batch


@dataclass
class PackIndex:
    unique_of_row: torch.Tensor  # [rows] -> distinct (prompt, response) pair u
    packed_row: torch.Tensor     # [U] -> its packed row
    segment: torch.Tensor        # [U] -> its segment number in that row (1..K)


def pack_by_prompt(rows: Batch, pad_token_id: int) -> tuple[Batch, PackIndex]:
    """One packed row per distinct prompt (first-seen order), each distinct response of it once."""
    ids, attn = rows["input_ids"], rows["attention_mask"].bool()
    P = ids.shape[1] - rows["responses"].shape[1]
    groups: dict[tuple, dict] = {}
    unique_of_row, packed_row, segment = [], [], []
    for i in range(len(rows)):
        prompt = tuple(ids[i, :P][attn[i, :P]].tolist())
        resp = tuple(ids[i, P:][attn[i, P:]].tolist())
        g = groups.setdefault(prompt, {"row": len(groups), "resps": {}})
        if resp not in g["resps"]:
            g["resps"][resp] = len(packed_row)
            packed_row.append(g["row"])
            segment.append(len(g["resps"]))
        unique_of_row.append(g["resps"][resp])
    Pn = max(len(p) for p in groups)
    Rn = max(1, max(sum(len(r) for r in g["resps"]) for g in groups.values()))
    n = len(groups)
    input_ids = torch.full((n, Pn + Rn), pad_token_id, dtype=torch.long)
    mask = torch.zeros((n, Pn + Rn), dtype=torch.long)
    pos = torch.zeros((n, Pn + Rn), dtype=torch.long)
    segs = torch.zeros((n, Rn), dtype=torch.long)
    for prompt, g in groups.items():
        b, p = g["row"], len(prompt)
        input_ids[b, Pn - p:Pn] = torch.tensor(prompt, dtype=torch.long)
        mask[b, Pn - p:Pn] = 1
        pos[b, Pn - p:Pn] = torch.arange(p)
        at = Pn
        for k, resp in enumerate(g["resps"], start=1):
            a = len(resp)
            input_ids[b, at:at + a] = torch.tensor(resp, dtype=torch.long)
            mask[b, at:at + a] = 1
            pos[b, at:at + a] = torch.arange(p, p + a)
            segs[b, at - Pn:at - Pn + a] = k
            at += a
    packed = Batch({"input_ids": input_ids, "attention_mask": mask, "position_ids": pos,
                    "responses": input_ids[:, Pn:].clone(), "response_mask": mask[:, Pn:].clone(),
                    "response_segments": segs})
    return packed, PackIndex(torch.tensor(unique_of_row), torch.tensor(packed_row), torch.tensor(segment))


def segment_sums(per_token: torch.Tensor, packed: Batch, index: PackIndex) -> torch.Tensor:
    """[rows] sums of `per_token` [n_packed, R'] over each row's segment (differentiable)."""
    segs = packed["response_segments"].to(per_token.device)
    K = int(segs.max()) + 1 if segs.numel() else 1
    flat = torch.arange(segs.shape[0], device=segs.device)[:, None] * K + segs  # (packed row, segment)
    sums = torch.zeros(segs.shape[0] * K, dtype=per_token.dtype, device=per_token.device)
    sums = sums.index_add(0, flat.reshape(-1), (per_token * (segs > 0).to(per_token.dtype)).reshape(-1))
    unique = sums[index.packed_row.to(segs.device) * K + index.segment.to(segs.device)]
    return unique[index.unique_of_row.to(segs.device)]


def token_weights(row_weights: torch.Tensor, packed: Batch, index: PackIndex) -> torch.Tensor:
    """[n_packed, R'] per-token weights whose weighted token sum equals Σ_rows w_row · seq_row:
    each token of a distinct pair carries the sum of its rows' weights (the adjoint of segment_sums)."""
    segs = packed["response_segments"]
    K = int(segs.max()) + 1 if segs.numel() else 1
    per_unique = torch.zeros(len(index.packed_row), dtype=row_weights.dtype).index_add(
        0, index.unique_of_row, row_weights)
    table = torch.zeros(segs.shape[0] * K, dtype=row_weights.dtype)
    table[index.packed_row * K + index.segment] = per_unique
    flat = torch.arange(segs.shape[0])[:, None] * K + segs
    return table[flat] * (segs > 0).to(row_weights.dtype)
