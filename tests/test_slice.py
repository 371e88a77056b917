"""The vertical slice on a real local Ray cluster: 2 FSDP2 ranks (gloo) + a vLLM-CPU engine on a
tiny random-init model, wired exactly as `hyflow train` wires them (orchestrator.placement)."""
from __future__ import annotations

import copy

import pytest
import torch

from algorithms.grpo import compute_grpo_advantages
from algorithms.losses import aggregate, kl_penalty, ppo_clip_loss
from orchestrator.batch import Batch
from orchestrator.config import load_config
from orchestrator.placement import build_workers
from workers.backends.fsdp import response_logprobs
from workers.rollout import trim_padding
from workers.weight_sync import WeightSyncError

LR = 1e-3  # large, so one update moves log-probs far beyond the sync tolerance


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """Flatter than the shared tiny model (entropy well above 0), so one update has real gradients."""
    import tests.tiny as tiny
    return tiny.build(tmp_path_factory.mktemp("flat_tiny"), seed=3, embed_std=0.1)


@pytest.fixture(scope="module")
def cfg(model_dir):
    return load_config(None, [
        f"model.path={model_dir}", "actor.world_size=2", f"actor.lr={LR}", "actor.micro_batch_size=2",
        "actor.kl_coef=0.1", "actor.cpus_per_worker=1", "data.batch_size=4", "rollout.n=2",
        "rollout.max_new_tokens=12", "rollout.kv_cache_gb=0.25", "rollout.max_model_len=512",
        "data.max_prompt_tokens=128", "weight_sync.bucket_mb=1", "weight_sync.tolerance=1e-4"])


@pytest.fixture(scope="module")
def tok(model_dir):
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(model_dir)


@pytest.fixture(scope="module")
def w(ray_cluster, cfg, model_dir, tok):
    workers = build_workers(cfg, model_dir, tok)
    yield workers
    workers.shutdown()


def rollout_batch(w, tok, n_prompts=4, n=2, max_new=12, seed=0, temperature=1.0) -> Batch:
    texts = [f"Question {i}: what is {i} plus {i + 1}?" for i in range(n_prompts)]
    ids = [tok(t)["input_ids"] for t in texts]
    prompts = Batch(non_tensors={"prompt_ids": ids, "uid": list(range(n_prompts))}).repeat(n)
    prompts.meta.update(max_new_tokens=max_new, temperature=temperature, top_p=1.0, top_k=-1, seed=seed,
                        stop_token_ids=[tok.eos_token_id], prompt_width=max(map(len, ids)))
    return trim_padding(w.rollout.generate(prompts)).union(prompts)


def hf_reference(model_dir):
    from transformers import AutoModelForCausalLM
    return AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()


def test_engine_starts_in_parity_and_rollout_logprobs_match_trainer(w, tok):
    assert w.weight_sync.check() <= 1e-4
    batch = rollout_batch(w, tok)
    trainer = w.actor.compute_logprobs(batch)["logprobs"]
    mask = batch["response_mask"].bool()
    assert mask.sum() > 0
    diff = (trainer - batch["rollout_logprobs"]).abs()[mask].max().item()
    assert diff < 1e-4, diff


def test_update_matches_single_process_reference(w, tok, cfg, model_dir, tmp_path):
    """One PPO update (2 ranks x 2 micro-batches, k3 KL to the reference, dual-clip) gives the same
    parameters as the same update in one process on the plain HF model."""
    ref_model = hf_reference(model_dir)
    policy = copy.deepcopy(ref_model).train()
    w.actor.save_hf(str(tmp_path / "before"))
    before = hf_reference(tmp_path / "before")
    for (n1, p1), (n2, p2) in zip(before.named_parameters(), ref_model.named_parameters()):
        assert torch.equal(p1, p2), f"trainer does not start from the checkpoint: {n1}"

    batch = rollout_batch(w, tok, seed=1)
    g = torch.Generator().manual_seed(0)
    scores = torch.randint(0, 2, (len(batch),), generator=g).float()
    batch["advantages"] = compute_grpo_advantages(scores, batch["uid"], batch["response_mask"])
    # Old log-probs off the current policy, so the ratio is not 1 and clipping is exercised.
    noise = 0.3 * torch.randn(batch["responses"].shape, generator=g)
    batch["old_logprobs"] = w.actor.compute_logprobs(batch)["logprobs"] + noise * batch["response_mask"]
    batch["ref_logprobs"] = w.ref.compute_logprobs(batch)["logprobs"]
    metrics = w.actor.update(batch).meta
    assert metrics["metrics/rank0"]["grad_norm"] > 1e-3 and metrics["metrics/rank0"]["step_skipped"] == 0
    w.actor.save_hf(str(tmp_path / "after"))
    after = hf_reference(tmp_path / "after")

    # The single-process reference: whole batch, one AdamW step.
    opt = torch.optim.AdamW(policy.parameters(), lr=LR, betas=tuple(cfg.actor.betas), weight_decay=0.0)
    mask = batch["response_mask"].float()
    logprobs, _ = response_logprobs(policy, batch, 1.0, with_entropy=False)
    pg, _ = ppo_clip_loss(logprobs, batch["old_logprobs"], batch["advantages"], mask,
                          clip_low=0.2, clip_high=0.2, dual_clip=3.0)
    kl = aggregate(kl_penalty(logprobs, batch["ref_logprobs"], "k3"), mask, "token-mean")
    (pg + 0.1 * kl).backward()
    torch.nn.utils.clip_grad_norm_(policy.parameters(), cfg.actor.grad_clip)
    opt.step()
    worst = max((p1 - p2).abs().max().item() for p1, p2 in zip(after.parameters(), policy.parameters()))
    moved = max((p1 - p2).abs().max().item() for p1, p2 in zip(after.parameters(), before.parameters()))
    assert moved > 1e-4, "the update did not change the weights"
    assert worst < 1e-5, worst


def test_sync_after_update_gives_engine_the_trainer_weights(w, tok, tmp_path):
    # Weights differ from the engine's after the update above: a skipped sync is detected ...
    with pytest.raises(WeightSyncError, match="stale or corrupted"):
        w.weight_sync.check()
    # ... and a real sync fixes it.
    report = w.weight_sync.sync()
    assert report.verified and report.max_abs_diff <= 1e-4
    assert report.buckets == 1 and type(w.weight_sync).__name__ == "SharedMemoryWeightSync"  # one node: auto picks shm
    w.actor.save_hf(str(tmp_path / "hf"))
    model = hf_reference(tmp_path / "hf")
    n_bytes = sum(p.numel() * p.element_size() for p in model.parameters())  # tied head counted once
    assert report.bytes == n_bytes
    # Greedy tokens and their log-probs from the engine equal the trainer's full weights' forward.
    batch = rollout_batch(w, tok, temperature=0.0, max_new=8)
    lp_hf, _ = response_logprobs(model, batch, 1.0, with_entropy=False)
    mask = batch["response_mask"].bool()
    assert (batch["rollout_logprobs"] - lp_hf).abs()[mask].max().item() < 1e-4
    with torch.no_grad():
        for i in range(len(batch)):
            P = batch["input_ids"].shape[1] - batch["responses"].shape[1]
            prompt = batch["input_ids"][i, :P][batch["attention_mask"][i, :P].bool()]
            out = model.generate(prompt[None], max_new_tokens=8, do_sample=False,
                                 eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
            expect = out[0, len(prompt):].tolist()
            got = batch["responses"][i][mask[i]].tolist()
            assert got == expect[:len(got)] and len(got) == len(expect)


def test_corrupted_sync_is_detected(w):
    w.rollout.begin_weight_update()
    w.actor.push_weights(w.rollout.actors, 1 << 20)
    name = "model.layers.0.mlp.down_proj.weight"
    bad = {name: torch.randn(64, 128) * 0.5}
    w.rollout.execute_all("load_weights", bad)
    w.rollout.finish_weight_update()
    with pytest.raises(WeightSyncError, match="replica 0"):
        w.weight_sync.check()
    assert w.weight_sync.sync().verified  # a full sync repairs it
