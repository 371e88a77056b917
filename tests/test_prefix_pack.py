"""Prefix packing (workers/prefix_pack.py + the segment mask of fsdp_model.response_logprobs): the
layout by hand, then log-probs, entropies and gradients equal to the unpacked rows' on a real model."""
from __future__ import annotations

import pytest
import torch

from workers.backends.fsdp_model import response_logprobs, segment_sources
from workers.prefix_pack import pack_by_prompt, segment_sums, token_weights
from workers.rollout import pack_sequences

A, B = [5, 6, 7], [8, 9]
ROWS = [(A, [11, 12]), (A, [13]), (B, [11, 12]), (A, [11, 12]), (B, [14, 15, 16])]


def rows_batch(pairs, pad=0):
    return pack_sequences([p for p, _ in pairs], [r for _, r in pairs], [[0.0] * len(r) for _, r in pairs],
                          max(len(p) for p, _ in pairs), max(len(r) for _, r in pairs), pad)


def test_layout_by_hand():
    packed, index = pack_by_prompt(rows_batch(ROWS), pad_token_id=0)
    # prompt A then its distinct responses [11, 12], [13]; prompt B then [11, 12], [14, 15, 16]
    assert packed["input_ids"].tolist() == [[5, 6, 7, 11, 12, 13, 0, 0], [0, 8, 9, 11, 12, 14, 15, 16]]
    assert packed["response_segments"].tolist() == [[1, 1, 2, 0, 0], [1, 1, 2, 2, 2]]
    assert packed["position_ids"].tolist() == [[0, 1, 2, 3, 4, 3, 0, 0], [0, 0, 1, 2, 3, 2, 3, 4]]
    assert packed["attention_mask"].tolist() == [[1, 1, 1, 1, 1, 1, 0, 0], [0, 1, 1, 1, 1, 1, 1, 1]]
    assert index.unique_of_row.tolist() == [0, 1, 2, 0, 3]  # row 3 repeats row 0
    assert index.packed_row.tolist() == [0, 0, 1, 1] and index.segment.tolist() == [1, 2, 1, 2]
    assert segment_sources(packed["response_segments"]).tolist() == [[0, 1, 0, 0, 4], [0, 1, 0, 3, 4]]
    per_token = torch.tensor([[1.0, 2, 4, 8, 16], [32, 64, 128, 256, 512]])
    assert segment_sums(per_token, packed, index).tolist() == [3, 4, 96, 3, 896]
    w = torch.tensor([1.0, 10, 100, 1000, 10000])
    tw = token_weights(w, packed, index)
    assert tw.tolist() == [[1001, 1001, 10, 0, 0], [100, 100, 10000, 10000, 10000]]
    assert torch.allclose((tw * per_token).sum(), (w * segment_sums(per_token, packed, index)).sum())


@pytest.fixture(scope="module")
def model(tiny_model_dir):
    from transformers import AutoModelForCausalLM
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()


def test_packed_logprobs_entropy_and_gradients_equal_the_unpacked_rows(model):
    g = torch.Generator().manual_seed(0)
    prompts = [torch.randint(50, 900, (n,), generator=g).tolist() for n in (9, 14, 6)]
    pairs = []
    for p in prompts:  # 3 candidates per prompt of different lengths, the first one twice
        cands = [torch.randint(50, 900, (n,), generator=g).tolist() for n in (3, 5, 1)]
        pairs += [(p, c) for c in cands] + [(p, cands[0])]
    rows = rows_batch(pairs)
    packed, index = pack_by_prompt(rows, pad_token_id=0)
    assert len(packed) == 3 and len(index.packed_row) == 9
    w = torch.randn(len(rows), generator=g)

    lp, ent = response_logprobs(model, rows, 1.3, with_entropy=True)
    seq = (lp * rows["response_mask"]).sum(-1)
    (w * seq).sum().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()

    plp, pent = response_logprobs(model, packed, 1.3, with_entropy=True)
    pseq = segment_sums(plp, packed, index)
    assert torch.allclose(pseq, seq.detach(), atol=1e-5), (pseq - seq).abs().max()
    (token_weights(w, packed, index) * plp).sum().backward()  # the FoR surrogate on packed rows
    for n, gr in grads.items():
        assert torch.allclose(model.get_parameter(n).grad, gr, atol=1e-5, rtol=1e-4), n
    model.zero_grad()
    # Entropies: each response token's, at the position that predicts it.
    ent_rows = segment_sums(pent, packed, index)
    assert torch.allclose(ent_rows, (ent * rows["response_mask"]).sum(-1).detach(), atol=1e-4)
    # Without the segment mask the second candidate would see the first: the packing is what makes it right.
    plain = packed.select(list(range(len(packed))))
    del plain.tensors["response_segments"]
    wrong, _ = response_logprobs(model, plain, 1.3)
    assert not torch.allclose(segment_sums(wrong.detach(), packed, index), seq.detach(), atol=1e-3)
