"""LoRA (peft) on both training backends, its checkpoints and exports, and both LoRA weight-sync
modes into real engines.

References are independent: hand-computed merges, a plain HF model with peft LoRA and torch AdamW
in this process, `PeftModel.from_pretrained` on the written adapter folders, and the engines'
own log-probs against the trainer's after each sync.
"""
from __future__ import annotations

import functools
import os

import pytest
import torch

from orchestrator.worker_group import Dispatch, register
from tests.test_deepspeed_backend import per_rank_halves, start_ranks
from tests.test_fsdp_backend import CFG, halves, make_batch, on_all, pg_loss
from workers.actor import ActorWorker
from workers.backends.lora import (DEFAULT_TARGETS, LoraSpec, adapter_name, bucketize, check_adapter_pairs,
                                   check_adapter_tensors, inject_lora, merge_lora, model_name)

pytestmark = pytest.mark.timeout(240)
RANK, ALPHA = 8, 16.0
LORA = dict(lora_rank=RANK, lora_alpha=ALPHA)
# Per layer of the tiny model (hidden 64, kv 32, mlp 128): r * (in + out) for q, k, v, o, gate, up, down.
TRAINABLE = 2 * RANK * ((64 + 64) + (64 + 32) * 2 + (64 + 64) + (64 + 128) * 3)


# ------------------------------------------------------------------ pure helpers
def test_merge_lora_hand_numbers():
    w = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    a = torch.tensor([[1.0, 0.0]])            # [r=1, in=2]
    b = torch.tensor([[2.0], [1.0]])          # [out=2, r=1]
    items = [("m.norm.weight", torch.ones(2)), ("m.q.lora_B.default.weight", b),
             ("m.q.base_layer.bias", torch.zeros(2)), ("m.q.base_layer.weight", w), ("m.q.lora_A.default.weight", a)]
    out = dict(merge_lora(iter(items), scaling=0.5))
    assert list(out) == ["m.norm.weight", "m.q.bias", "m.q.weight"]
    # W + 0.5 * B @ A = [[1, 2], [3, 4]] + 0.5 * [[2, 0], [1, 0]]
    assert torch.equal(out["m.q.weight"], torch.tensor([[2.0, 2.0], [3.5, 4.0]]))
    with pytest.raises(ValueError, match=r"incomplete LoRA modules .*\['m.q'\]"):
        list(merge_lora(iter(items[:2]), 0.5))
    with pytest.raises(ValueError, match="LoRA on embeddings is not supported"):
        list(merge_lora(iter([("e.lora_embedding_A.default", a)]), 0.5))


def test_names_spec_and_checks():
    inner = "model.layers.0.self_attn.q_proj.lora_A.default.weight"
    saved = "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"
    assert adapter_name(inner) == saved and model_name(saved) == inner
    with pytest.raises(ValueError, match="is not a LoRA weight"):
        adapter_name("model.norm.weight")
    assert LoraSpec.from_options(0, 16, 0.0, None) is None
    spec = LoraSpec.from_options(4, 8, 0.1, None)
    assert spec.scaling == 2.0 and spec.target_modules == list(DEFAULT_TARGETS)
    for kw, msg in ((dict(rank=-1), "lora_rank must be a positive int"),
                    (dict(rank=4, alpha=0), "lora_alpha must be > 0"),
                    (dict(rank=4, dropout=1.0), r"lora_dropout must be in \[0, 1\)"),
                    (dict(rank=4, target_modules=[]), "lora_target_modules must be a non-empty list")):
        with pytest.raises(ValueError, match=msg):
            LoraSpec(**kw)
    good = {saved: torch.zeros(4, 64), saved.replace("lora_A", "lora_B"): torch.zeros(64, 4)}
    check_adapter_tensors(good, spec)
    check_adapter_pairs(good)
    with pytest.raises(ValueError, match="does not have LoRA rank 4"):
        check_adapter_tensors({saved: torch.zeros(8, 64)}, spec)
    with pytest.raises(KeyError, match="module 'q_proj' is not in lora target_modules"):
        check_adapter_tensors(good, LoraSpec(4, target_modules=["v_proj"]))
    with pytest.raises(KeyError, match="not an adapter-format LoRA tensor name"):
        check_adapter_tensors({inner: torch.zeros(4, 64)}, spec)
    with pytest.raises(ValueError, match="incomplete LoRA adapter: 1 modules"):
        check_adapter_pairs({saved: torch.zeros(4, 64)})
    sizes = [sum(t.numel() for t in b.values()) for b in bucketize(((str(i), torch.zeros(n)) for i, n in
                                                                     enumerate([3, 3, 5, 2])), 6 * 4)]
    assert sizes == [6, 5, 2]


def test_inject_lora_keeps_outputs_and_trains_only_adapters(tiny_model_dir):
    from transformers import AutoModelForCausalLM
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    ids = torch.tensor([[1, 500, 600, 700]])
    with torch.no_grad():
        before = model(ids).logits
        assert inject_lora(model, LoraSpec(RANK, ALPHA)) == TRAINABLE
        after = model(ids).logits
    assert torch.equal(before, after)  # B starts at 0
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert len(trainable) == 2 * 7 * 2 and all(".lora_A." in n or ".lora_B." in n for n in trainable)
    with pytest.raises(ValueError, match="(?i)target modules.*not found|no trainable"):
        inject_lora(AutoModelForCausalLM.from_pretrained(tiny_model_dir), LoraSpec(4, target_modules=["nope_proj"]))


# ------------------------------------------------------------------ backends on 2 gloo ranks
@pytest.fixture(scope="module")
def ranks(ray_cluster):
    actors = start_ranks(ray_cluster)
    yield actors
    for a in actors:
        ray_cluster.kill(a)


def _unmerged(backend) -> dict:
    return dict(backend._gather_named(1 << 30, lora_only=False))


def _lora_steps(backend, batches, kws):
    before = _unmerged(backend)
    metrics = [backend.train_step(b.chunks_of(2), functools.partial(pg_loss, **k)) for b, k in zip(batches, kws)]
    # Elements this rank's optimizer updates (a DTensor counts its local shard).
    in_optimizer = sum((p.to_local() if hasattr(p, "to_local") else p).numel()
                       for g in backend.optimizer.param_groups for p in g["params"])
    trainable = [n for n, p in backend.model.named_parameters() if p.requires_grad]
    return dict(before=before, after=_unmerged(backend), metrics=metrics, in_optimizer=in_optimizer,
                trainable=trainable)


def lora_reference(model_dir, batches, kws):
    """peft LoRA on the plain model, AdamW over the adapter only, whole batch, this process."""
    from workers.backends.fsdp import response_logprobs
    from workers.backends.fsdp_model import load_hf_model
    torch.manual_seed(CFG["seed"])  # the backends seed before loading: same LoRA A init
    model = load_hf_model(model_dir, "causal_lm", torch.float32, seed=0)
    inject_lora(model, LoraSpec(RANK, ALPHA))
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=CFG["lr"], weight_decay=CFG["weight_decay"])
    for b, k in zip(batches, kws):
        opt.zero_grad()
        lp, ent = response_logprobs(model, b, 1.0, True)
        pg_loss(b, lp, ent, k["n_tokens"], 1.0)[0].backward()
        torch.nn.utils.clip_grad_norm_(params, CFG["grad_clip"])
        opt.step()
    return {k: v.detach() for k, v in model.state_dict().items()}


def test_lora_steps_match_single_process_on_fsdp_and_zero2(ray_cluster, ranks, tiny_model_dir):
    """Two steps: only adapter weights change (the base is bitwise frozen), the optimizer holds
    only them, and both backends equal the single-process peft reference within 1e-5."""
    batches = [make_batch(3), make_batch(4)]
    kws = [dict(n_tokens=int(b["response_mask"].sum()), scale=2.0) for b in batches]
    shards = per_rank_halves(batches)
    ref = lora_reference(tiny_model_dir, batches, kws)
    for label, name, extra in (("fl", "fsdp", {}), ("dl", "deepspeed", {"zero_stage": 2})):
        on_all(ray_cluster, ranks, "setup", (label, name, tiny_model_dir, {**CFG, **LORA, **extra}), timeout=180)
        outs = on_all(ray_cluster, ranks, "run", *[(label, _lora_steps, shards[r], kws) for r in range(2)])
        out = outs[0]
        assert len(out["trainable"]) == 28 and all(".lora_" in n for n in out["trainable"])
        # FSDP shards every parameter over the ranks; ZeRO-2 partitions the flat adapter group.
        assert sum(o["in_optimizer"] for o in outs) == pytest.approx(TRAINABLE, rel=0.01), label
        assert set(out["after"]) == set(ref) - {"lm_head.weight"}
        for n, t in out["after"].items():
            if ".lora_" in n:
                assert not torch.equal(t, out["before"][n]), f"{label}: adapter {n} did not move"
            else:
                assert torch.equal(t, out["before"][n]), f"{label}: frozen {n} changed"
            torch.testing.assert_close(t, ref[n], atol=1e-5, rtol=0, msg=lambda m: f"{label} {n}: {m}")


def _ckpt_and_export(backend, ckpt, hf_dir, batch_a, batch_b, kw, probe):
    fn = functools.partial(pg_loss, **kw)
    backend.train_step(batch_a.chunks_of(2), fn)
    backend.train_step(batch_a.chunks_of(2), fn)  # a second step: lora_A moves too
    backend.save(ckpt)
    after_a = _unmerged(backend)
    lp_a = backend.forward_logprobs(probe, 4)[0]
    backend.train_step(batch_b.chunks_of(2), fn)
    moved = _unmerged(backend)
    backend.load(ckpt)
    restored = _unmerged(backend)
    backend.save_hf(hf_dir)
    merged = {k: v for b in backend.iter_param_buckets(1 << 20, "full") for k, v in b.items()}
    return dict(after_a=after_a, moved=moved, restored=restored, lp_a=lp_a, merged=merged)


@pytest.mark.parametrize("name,extra", [("fsdp", {}), ("deepspeed", {"zero_stage": 3})], ids=["fsdp", "zero3"])
def test_lora_checkpoint_reloads_with_peft_and_exports(ray_cluster, ranks, tiny_model_dir, tmp_path, name, extra):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from workers.backends.fsdp import response_logprobs
    on_all(ray_cluster, ranks, "setup", ("ck", name, tiny_model_dir, {**CFG, **LORA, **extra}), timeout=180)
    a, b, probe = make_batch(6), make_batch(7), make_batch(8)
    kw = dict(n_tokens=int(a["response_mask"].sum()), scale=2.0)
    ckpt, hf_dir = str(tmp_path / "ckpt"), str(tmp_path / "hf")
    res = on_all(ray_cluster, ranks, "run", *[("ck", _ckpt_and_export, ckpt, hf_dir, ha, hb, kw, probe)
                                              for (ha,), (hb,) in zip(halves(a), halves(b))])
    r = res[0]
    assert any(not torch.equal(r["moved"][n], r["after_a"][n]) for n in r["after_a"])
    for n in r["after_a"]:
        assert torch.equal(r["restored"][n], r["after_a"][n]), n
    # The checkpoint holds the adapter, not the 13 MB base model.
    ckpt_bytes = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(ckpt) for f in fs
                     if not f.endswith(".py"))
    assert ckpt_bytes < 2_000_000, ckpt_bytes
    lp_a = res[0]["lp_a"]  # every rank scored the whole probe
    torch.testing.assert_close(res[1]["lp_a"], lp_a, atol=0, rtol=0)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    with torch.no_grad():
        base_lp = response_logprobs(base.eval(), probe)[0]
        for adapter_dir in (os.path.join(ckpt, "adapter"), os.path.join(hf_dir, "adapter")):
            peft_model = PeftModel.from_pretrained(
                AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32), adapter_dir).eval()
            torch.testing.assert_close(response_logprobs(peft_model, probe)[0], lp_a, atol=1e-5, rtol=1e-6)
        merged = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).eval()
        torch.testing.assert_close(response_logprobs(merged, probe)[0], lp_a, atol=1e-5, rtol=1e-6)
    assert (base_lp - lp_a).abs().max() > 1e-3  # the adapter matters: a base-only reload cannot pass
    sd = merged.state_dict()
    assert set(r["merged"]) == set(sd) - {"lm_head.weight"}
    for n, t in r["merged"].items():
        assert torch.equal(sd[n], t), n


# ------------------------------------------------------------------ weight sync into engines
class LoraActorWorker(ActorWorker):
    """ActorWorker whose setup forwards every backend option of its config section
    (`backend_options`: zero_stage, lora_*...), plus a switch of the sync payload so that one
    trainer feeds both sync modes in this test."""

    @register(dispatch=Dispatch.ONE_TO_ALL)
    def setup(self) -> dict:
        from workers.backends import backend_options, make_backend
        from workers.dist import init_distributed
        init_distributed()
        torch.manual_seed(self.seed)
        self.backend = make_backend(self.cfg["backend"], **{**backend_options(self.cfg), "seed": self.seed})
        self.backend.setup(self.model_path, trainable=self.trainable)
        return {}

    @register(dispatch=Dispatch.ONE_TO_ALL)
    def set_sync_payload(self, payload: str) -> None:
        self.backend.sync_payload = payload


@pytest.fixture(scope="module")
def sync_setup(ray_cluster, tiny_model_dir):
    """2 ZeRO-3 LoRA trainer ranks; vLLM without LoRA (merge mode), vLLM and HF serving adapters."""
    from transformers import AutoTokenizer

    from orchestrator.config import load_config
    from orchestrator.resources import ResourcePool
    from orchestrator.worker_group import WorkerGroup
    from workers.rollout import RolloutWorker
    from workers.weight_sync import BucketedWeightSync, SharedMemoryWeightSync, make_probe

    cfg = load_config(None, ["actor.backend=deepspeed", "actor.zero_stage=3", f"actor.lora_rank={RANK}",
                             f"actor.lora_alpha={ALPHA}", "actor.lr=0.02", "actor.micro_batch_size=2"])
    actor_cfg = {**vars(cfg.actor), "lora_sync": "merge"}
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    # Half a CPU per bundle: the module's `ranks` pair (2 x 0.5 CPU) stays up on Ray's default 2 CPUs.
    pool = ResourcePool(2, cpus_per_bundle=0.5, name="lora-sync")
    trainers = WorkerGroup(pool, {"actor": (LoraActorWorker, dict(model_path=tiny_model_dir, actor_cfg=actor_cfg))},
                           name="lora-trainer", num_cpus_per_worker=0.2)
    lora = dict(rank=RANK, alpha=ALPHA, dropout=0.0, target_modules=list(cfg.actor.lora_target_modules))
    vkw = dict(max_model_len=256, kv_cache_gb=0.0625)
    engines = {"merge": ("vllm", vkw), "adapter-vllm": ("vllm", {**vkw, "lora": lora}),
               "adapter-hf": ("hf", {"lora": lora}), "merge-shm": ("vllm", vkw)}
    rollouts = {k: WorkerGroup(pool, RolloutWorker, dict(model_path=tiny_model_dir, engine=e, engine_kwargs=kw,
                                                         pad_token_id=tok.pad_token_id or 0),
                               name=f"ro-{k}", num_cpus_per_worker=0.1, bundle_indices=[i % 2])
                for i, (k, (e, kw)) in enumerate(engines.items())}
    pending = [g.submit("setup") for g in rollouts.values()]
    actor = trainers.role("actor")
    actor.setup()
    for p in pending:
        p.get()
    prompt = tok("Question: what is 12 + 7?\nAnswer:")["input_ids"]
    probe = make_probe(prompt, tok(" The answer is 19. #### 19")["input_ids"], tok.pad_token_id or 0)
    syncs = {k: BucketedWeightSync(actor, g, 1 << 20, probe, tolerance=1e-4, mode=k.split("-")[0])
             for k, g in rollouts.items() if k != "merge-shm"}
    # ZeRO-3 through the shared-memory transport: gathered, each rank writing its share of the rows.
    syncs["merge-shm"] = SharedMemoryWeightSync(actor, rollouts["merge-shm"], probe, tolerance=1e-4, mode="merge")
    yield dict(actor=actor, rollouts=rollouts, syncs=syncs, tok=tok, cfg=cfg)
    syncs["merge-shm"].shutdown()
    for g in [*rollouts.values(), trainers]:
        g.shutdown()
    pool.shutdown()


def _rollout(group, tok, seed):
    from orchestrator.batch import Batch
    from workers.rollout import trim_padding
    ids = [tok(f"Question {i}: what is {i} plus {i + 1}?")["input_ids"] for i in range(4)]
    prompts = Batch(non_tensors={"prompt_ids": ids})
    prompts.meta.update(max_new_tokens=8, temperature=1.0, top_p=1.0, top_k=-1, seed=seed,
                        stop_token_ids=[tok.eos_token_id], prompt_width=max(map(len, ids)))
    return trim_padding(group.generate(prompts))


def _update(s, seed):
    """One real PPO update of the LoRA actor on a rollout of the merge engine, random advantages."""
    batch = _rollout(s["rollouts"]["merge"], s["tok"], seed)
    adv = torch.randn(len(batch), generator=torch.Generator().manual_seed(seed))
    batch["advantages"] = adv[:, None] * batch["response_mask"]
    return s["actor"].update(batch).meta["metrics/rank0"]


def test_lora_sync_modes_give_rollout_logprobs_equal_to_the_trainer(sync_setup):
    from workers.weight_sync import WeightSyncError
    s = sync_setup
    for sync in s["syncs"].values():  # fresh LoRA (B = 0) == the base every engine loaded
        assert sync.check() <= 1e-4
    full_bytes = None
    for round_ in range(2):  # the second round replaces the first adapter (a new LoRARequest id)
        metrics = _update(s, seed=round_)
        assert metrics["grad_norm"] > 0 and metrics["step_skipped"] == 0
        for key, sync in s["syncs"].items():
            with pytest.raises(WeightSyncError, match="stale or corrupted"):
                sync.check()
            s["actor"].set_sync_payload("adapter" if key.startswith("adapter") else "full")
            report = sync.sync()
            assert report.verified and report.max_abs_diff <= 1e-4 and report.mode == key.split("-")[0]
            if key == "merge":
                full_bytes = report.bytes
                assert full_bytes > 10_000_000  # every weight, LoRA merged (embeddings alone are 12.6 MB)
            elif key == "merge-shm":
                assert report.bytes == full_bytes and report.buckets == 1
            else:
                assert report.bytes == TRAINABLE * 4 and report.buckets == 1  # fp32 adapter only
            batch = _rollout(s["rollouts"][key], s["tok"], seed=10 + round_)
            trainer = s["actor"].compute_logprobs(batch)["logprobs"]
            mask = batch["response_mask"].bool()
            assert mask.sum() > 4
            diff = (trainer - batch["rollout_logprobs"]).abs()[mask].max().item()
            assert diff < 1e-4, (key, round_, diff)
    assert full_bytes / (TRAINABLE * 4) > 100


def test_config_keys():
    from orchestrator.config import ConfigError, load_config
    cfg = load_config(None, ["actor.backend=deepspeed", "actor.zero_stage=3", "actor.lora_rank=4",
                             "actor.lora_target_modules=[q_proj,v_proj]", "weight_sync.lora_mode=adapter"])
    assert (cfg.actor.backend, cfg.actor.zero_stage, cfg.actor.lora_rank) == ("deepspeed", 3, 4)
    assert cfg.actor.lora_target_modules == ["q_proj", "v_proj"] and cfg.weight_sync.lora_mode == "adapter"
    assert load_config(None).actor.lora_rank == 0 and load_config(None).weight_sync.lora_mode == "merge"
    for override, msg in (("actor.zero_stage=4", "actor.zero_stage: must be 1, 2 or 3, got 4"),
                          ("actor.lora_rank=-1", "actor.lora_rank: must be >= 0"),
                          ("actor.lora_dropout=1.0", r"actor.lora_dropout: must be in \[0, 1\)"),
                          ("actor.lora_target_modules=[]", "actor.lora_target_modules: must list at least one"),
                          ("weight_sync.lora_mode=both",
                           r"weight_sync.lora_mode: expected one of \['merge', 'adapter'\]"),
                          ("actor.backend=megatron", r"actor.backend: expected one of \['fsdp', 'deepspeed'\]")):
        with pytest.raises(ConfigError, match=msg):
            load_config(None, [override])
    with pytest.raises(ConfigError, match="actor.lora_rank: 1024 exceeds vLLM's maximum LoRA rank 512"):
        load_config(None, ["actor.lora_rank=1024", "weight_sync.lora_mode=adapter"])


def test_engines_reject_bad_adapters(sync_setup):
    """Runs after the sync test on the same engines: bad adapter updates fail by name, and an
    incomplete adapter is refused at finish and can be completed."""
    from workers.weight_sync import BucketedWeightSync
    with pytest.raises(ValueError, match=r"weight sync mode must be one of \['full', 'merge', 'adapter'\]"):
        BucketedWeightSync(None, None, 1, None, mode="lora")
    ro = sync_setup["rollouts"]
    a_name = "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"
    for key, tensor, match in (("merge", torch.zeros(RANK, 64), "engine was built without LoRA"),
                               ("adapter-vllm", torch.zeros(4, 64), "does not have LoRA rank 8"),
                               ("adapter-hf", torch.zeros(4, 64), "does not have LoRA rank 8"),
                               ("adapter-hf", torch.zeros(RANK, 64), None)):
        g = ro[key]
        g.begin_weight_update()
        if match is None:  # a lora_A without its lora_B: refused when the update closes
            g.execute_all("load_weights", {a_name: tensor})
            with pytest.raises(Exception, match="incomplete LoRA adapter: 1 modules"):
                g.finish_weight_update()
            g.execute_all("load_weights", {a_name.replace("lora_A", "lora_B"): torch.zeros(64, RANK)})
        else:
            with pytest.raises(Exception, match=match):
                g.execute_all("load_weights", {a_name: tensor})
        g.finish_weight_update()
