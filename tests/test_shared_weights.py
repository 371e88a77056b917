"""The shared-memory weight transport (workers/shared_weights.py, SharedMemoryWeightSync): the
buffer and its tiling check by hand, then a real sync from 2 FSDP2 LoRA ranks (gloo) into a
vLLM-CPU engine on Ray, compared tensor by tensor with the gathered, merged weights."""
from __future__ import annotations

import os
import stat

import pytest
import torch

from orchestrator.worker_group import Dispatch, register
from tests.test_lora import LoraActorWorker
from workers.backends.fsdp import _row_share
from workers.shared_weights import (ALIGN, check_tiling, create_buffer, map_buffer, plan_layout, plan_regions,
                                    remove_buffer, tensor_views, view)
from workers.weight_sync import WeightSyncError

SHAPES = {"b.weight": (3, 2), "a.bias": (5,), "emb.weight": (4, 3)}


@pytest.fixture
def layout(tmp_path):
    out = plan_layout(SHAPES | {"head.weight": (4, 3)}, {"head.weight": "emb.weight"}, torch.float32, str(tmp_path))
    create_buffer(out)
    yield out
    remove_buffer(out)


def test_layout_is_aligned_and_two_mappings_share_the_bytes(layout):
    assert list(layout.entries) == ["a.bias", "b.weight", "emb.weight"]  # the alias has no bytes of its own
    assert [off for off, _ in layout.entries.values()] == [0, ALIGN, 2 * ALIGN]  # 20, 24 and 48 bytes, aligned
    assert layout.nbytes == 3 * ALIGN == os.path.getsize(layout.path)
    assert stat.S_IMODE(os.stat(layout.path).st_mode) == 0o600
    writer, reader = tensor_views(layout), tensor_views(layout)  # two separate mappings of the file
    writer["emb.weight"][1:3] = torch.arange(6.0).view(2, 3)
    assert reader["emb.weight"].tolist() == [[0, 0, 0], [0, 1, 2], [3, 4, 5], [0, 0, 0]]
    assert reader["b.weight"].shape == (3, 2) and reader["a.bias"].abs().sum() == 0
    with pytest.raises(FileExistsError):
        create_buffer(layout)
    remove_buffer(layout)
    with pytest.raises(FileNotFoundError, match=rf"shared weight buffer {layout.path} does not exist"):
        tensor_views(layout)


def test_regions_put_hf_tensors_as_rows_of_the_engines_fused_weight(tmp_path):
    regions = {"attn.qkv.weight": (6, 2), "norm.weight": (3,)}
    where = {"attn.q.weight": ("attn.qkv.weight", 0, (2, 2)), "attn.k.weight": ("attn.qkv.weight", 2, (2, 2)),
             "attn.v.weight": ("attn.qkv.weight", 4, (2, 2)), "norm.weight": ("norm.weight", 0, (3,))}
    lay = plan_regions(regions, where, {}, torch.float32, str(tmp_path))
    assert lay.regions == {"attn.qkv.weight": (0, (6, 2)), "norm.weight": (ALIGN, (3,))}  # 48 bytes, aligned
    assert {n: off for n, (off, _) in lay.entries.items()} == {
        "attn.q.weight": 0, "attn.k.weight": 16, "attn.v.weight": 32, "norm.weight": ALIGN}
    create_buffer(lay)
    try:
        views = tensor_views(lay)
        for i, n in enumerate(("attn.q.weight", "attn.k.weight", "attn.v.weight")):
            views[n].fill_(i + 1)
        fused = view(map_buffer(lay), *lay.regions["attn.qkv.weight"], torch.float32)
        assert fused[:, 0].tolist() == [1, 1, 2, 2, 3, 3]  # q, k, v stacked as the engine multiplies them
        assert check_tiling(lay, [[(n, 0, 4) for n in where if n != "norm.weight"] + [("norm.weight", 0, 3)]]) == 60
    finally:
        remove_buffer(lay)
    with pytest.raises(ValueError, match=r"HF tensor 'attn.v.weight' \(3, 2\) does not fit rows 4\.\. of "
                                         r"attn.qkv.weight \(6, 2\)"):
        plan_regions(regions, {**where, "attn.v.weight": ("attn.qkv.weight", 4, (3, 2))}, {}, torch.float32)


def test_tiling_catches_missed_and_doubled_elements(layout):
    full = [("a.bias", 0, 5), ("b.weight", 0, 6)]
    # Rank 0 writes rows 0-1 of the embedding under its alias, rank 1 rows 2-3.
    ok = check_tiling(layout, [full + [("head.weight", 0, 6)], [("emb.weight", 6, 6)]])
    assert ok == (5 + 6 + 12) * 4
    with pytest.raises(WeightSyncError, match=r"tensor 'emb.weight' \(12 elements\): elements 6\.\.8 were not written"):
        check_tiling(layout, [full + [("emb.weight", 0, 6)], [("emb.weight", 9, 3)]])
    with pytest.raises(WeightSyncError, match=r"'emb.weight' \(12 elements\): elements 9\.\.11 were not written"):
        check_tiling(layout, [full + [("emb.weight", 0, 9)]])
    with pytest.raises(WeightSyncError, match=r"'emb.weight' \(12 elements\): elements 4\.\.5 were written twice "
                                              r"\(rank 1 among them\)"):
        check_tiling(layout, [full + [("emb.weight", 0, 6)], [("emb.weight", 4, 8)]])
    with pytest.raises(WeightSyncError, match=r"'b.weight' \(6 elements\): elements 0\.\.5 were not written"):
        check_tiling(layout, [[("a.bias", 0, 5), ("emb.weight", 0, 12)]])
    with pytest.raises(WeightSyncError, match=r"trainer rank 1 wrote 'c.weight', which the engine does not have"):
        check_tiling(layout, [full, [("c.weight", 0, 1)]])


def test_row_share_follows_torch_chunk():
    t = torch.arange(10.0).view(5, 2)
    shares = [_row_share("w", t, r, 2) for r in range(2)]
    assert [(s[1].tolist(), s[2]) for s in shares] == [([[0, 1], [2, 3], [4, 5]], 0), ([[6, 7], [8, 9]], 3)]
    assert [_row_share("w", t[:2], r, 4)[2] for r in range(4)] == [0, 1, None, None]  # fewer rows than ranks
    assert [_row_share("s", torch.tensor(1.0), r, 2)[2] for r in range(2)] == [0, None]


# ---- a real sync: 2 FSDP2 LoRA ranks -> vLLM ----------------------------------------------------
class ShmActor(LoraActorWorker):
    @register(dispatch=Dispatch.ONE_TO_ALL)
    def merged_weights(self) -> dict:
        """The object-store path's payload (gathered, LoRA merged) on rank 0: the reference."""
        return {k: v for b in self.backend.iter_param_buckets(1 << 20) for k, v in b.items()}

    @register(dispatch=Dispatch.ONE_TO_ALL)
    def drop_rows(self, name: str | None) -> None:
        """Rank 1 leaves its rows of `name` out of the shared buffer (a buggy shard walk)."""
        self.backend.__dict__.pop("_local_named", None)
        if name is not None and self.rank == 1:
            inner = self.backend._local_named
            self.backend._local_named = lambda: ((n, t, None if n.replace(".base_layer", "") == name else r)
                                                 for n, t, r in inner())


@pytest.fixture(scope="module")
def shm_sync(ray_cluster, tiny_model_dir):
    from transformers import AutoTokenizer

    from orchestrator.config import load_config
    from orchestrator.resources import ResourcePool
    from orchestrator.worker_group import WorkerGroup
    from workers.rollout import RolloutWorker
    from workers.weight_sync import SharedMemoryWeightSync, make_probe

    cfg = load_config(None, ["actor.lora_rank=8", "actor.lora_alpha=16", "actor.lr=0.02", "actor.micro_batch_size=2",
                             "actor.world_size=2"])
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    pool = ResourcePool(2, cpus_per_bundle=0.5, name="shm-sync")
    trainers = WorkerGroup(pool, {"actor": (ShmActor, dict(model_path=tiny_model_dir, actor_cfg=vars(cfg.actor)))},
                           name="shm-trainer", num_cpus_per_worker=0.2)
    rollout = WorkerGroup(pool, RolloutWorker, dict(model_path=tiny_model_dir, engine="vllm",
                                                    engine_kwargs=dict(max_model_len=256, kv_cache_gb=0.0625),
                                                    pad_token_id=tok.pad_token_id or 0),
                          name="shm-rollout", num_cpus_per_worker=0.1, bundle_indices=[0])
    pending = rollout.submit("setup")
    actor = trainers.role("actor")
    actor.setup()
    pending.get()
    prompt = tok("Question: what is 12 + 7?\nAnswer:")["input_ids"]
    probe = make_probe(prompt, tok(" The answer is 19. #### 19")["input_ids"], tok.pad_token_id or 0)
    sync = SharedMemoryWeightSync(actor, rollout, probe, tolerance=1e-4, mode="merge")
    yield dict(sync=sync, actor=actor, rollout=rollout, tok=tok)
    sync.shutdown()
    assert not os.path.exists(sync.layout.path)  # the buffer goes with the sync
    for g in (rollout, trainers):
        g.shutdown()
    pool.shutdown()


def test_shm_sync_writes_the_merged_weights_and_the_engine_serves_them(shm_sync):
    from tests.test_lora import _rollout
    s, sync, actor = shm_sync, shm_sync["sync"], shm_sync["actor"]
    assert sync.check() <= 1e-4  # a fresh LoRA (B = 0) is the base the engine loaded
    batch = _rollout(s["rollout"], s["tok"], seed=0)
    adv = torch.randn(len(batch), generator=torch.Generator().manual_seed(0))
    batch["advantages"] = adv[:, None] * batch["response_mask"]
    assert actor.update(batch).meta["metrics/rank0"]["grad_norm"] > 0
    with pytest.raises(WeightSyncError, match="stale or corrupted"):
        sync.check()
    report = sync.sync()
    assert report.verified and report.buckets == 1 and report.max_abs_diff <= 1e-4
    # Byte for byte what the object-store path gathers and merges on rank 0, the tied head included once.
    expect = actor.merged_weights()[0]
    held = tensor_views(sync.layout)
    assert report.bytes == sum(t.numel() * 4 for t in expect.values()) == sum(t.numel() * 4 for t in held.values())
    assert set(held) == set(expect)
    assert all(torch.equal(held[n], expect[n]) for n in expect), [n for n in expect if not torch.equal(held[n], expect[n])]
    # The engine samples with the trainer's (merged) weights.
    batch = _rollout(s["rollout"], s["tok"], seed=7)
    mask = batch["response_mask"].bool()
    diff = (actor.compute_logprobs(batch)["logprobs"] - batch["rollout_logprobs"]).abs()[mask].max().item()
    assert mask.sum() > 4 and diff < 1e-4


def test_shm_sync_refuses_a_buffer_with_missing_rows_before_the_engine_loads(shm_sync):
    sync, actor = shm_sync["sync"], shm_sync["actor"]
    name = "model.layers.1.mlp.down_proj.weight"  # merged LoRA layer, 64 x 128: rank 1 holds rows 32..63
    actor.drop_rows(name)
    with pytest.raises(WeightSyncError, match=rf"tensor '{name}' \(8192 elements\): elements 4096\.\.8191 were not "
                                              r"written; the engine would load stale values"):
        sync.sync()
    actor.drop_rows(None)
    assert sync.sync().verified  # the update left open is completed by the next full sync


def test_config_refuses_shm_for_an_adapter_only_sync():
    from orchestrator.config import ConfigError, load_config
    assert load_config(None, []).weight_sync.transport == "auto"
    with pytest.raises(ConfigError, match=r"weight_sync.transport: shm carries full \(or merged\) weights; with "
                                          r"weight_sync.lora_mode=adapter use object_store \(or auto\)"):
        load_config(None, ["weight_sync.transport=shm", "actor.lora_rank=8", "weight_sync.lora_mode=adapter"])
    load_config(None, ["weight_sync.transport=object_store", "actor.lora_rank=8", "weight_sync.lora_mode=adapter"])
