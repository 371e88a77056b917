"""Weight-sync verification that cannot pass while the engine is stale or corrupted
(workers/weight_sync.py, workers/engines/base.py, vllm_ext.py):

- engines in this process, behind a real `RolloutWorker` (vLLM-CPU in fp32 and bf16, the HF
  fallback): after an update, one layer is made wrong inside the engine only (its CPU kernel
  multiplying by other weights, a norm weight changed) or left out of the update, and the check
  names that tensor;
- a real sync on Ray (one FSDP2 rank + a vLLM rollout worker): the report's figures, a sync that
  skips one tensor, and the probe check catching an engine that did not follow the trainer.

Model A and B are two random-init tiny models; their norm weights are all ones in both, so a norm
that an update skips keeps a value that happens to be right: only the coverage check sees it.
"""
from __future__ import annotations

import pytest
import torch

import tests.tiny as tiny
from orchestrator.worker_group import Dispatch, register
from workers.actor import ActorWorker
from workers.rollout import RolloutWorker
from workers.weight_sync import WeightSyncError, check_weight_reports

LAYER = "model.layers.1.mlp.down_proj"
NORM = "model.layers.0.post_attention_layernorm.weight"
TENSORS = 20  # tiny model: embeddings, 2 x (q k v o gate up down + 2 norms), final norm


@pytest.fixture(scope="module")
def model_b_dir(tmp_path_factory):
    return tiny.build(tmp_path_factory.mktemp("tiny_b"), seed=1)


def hf_state(path) -> dict[str, torch.Tensor]:
    """The HF state dict, tied head included (as some trainers send it)."""
    from transformers import AutoModelForCausalLM
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.fixture(scope="module")
def state_a(tiny_model_dir):
    return hf_state(tiny_model_dir)


@pytest.fixture(scope="module")
def state_b(model_b_dir):
    return hf_state(model_b_dir)


def update(worker: RolloutWorker, state: dict, skip=(), twice=()) -> dict:
    worker.begin_weight_update()
    worker.load_weights({k: v for k, v in state.items() if k not in skip})
    if twice:
        worker.load_weights({k: state[k] for k in twice})
    worker.finish_weight_update()
    return worker.weight_report(True)


def verify(worker: RolloutWorker) -> tuple[float, str, int]:
    return check_weight_reports([worker.weight_report(True)])


# ---- inside the vLLM engine (its worker, through collective_rpc) ----------------------------------
def _layer(worker, path):
    return dict(worker.model_runner.get_model().named_modules())[path]


@torch.no_grad()
def _kernel_weight(worker, path):
    """The weight the layer's CPU kernel multiplies by, read back through the kernel (identity in)."""
    layer = _layer(worker, path)
    k = layer.input_size_per_partition if hasattr(layer, "input_size_per_partition") else layer.embedding_dim
    eye = torch.eye(k, dtype=worker.vllm_config.model_config.dtype)
    return layer.quant_method.apply(layer, eye).T.contiguous()


@torch.no_grad()
def _serve_with(worker, path, weight):
    """From now on the layer's kernel multiplies by `weight` (its loaded weights are ignored)."""
    layer = _layer(worker, path)
    layer.cpu_linear = lambda x, _w, bias: torch.nn.functional.linear(x, weight.to(x.dtype), bias)


@torch.no_grad()
def _add_noise(worker, path, rel, rows=None):
    """The kernel of `path` multiplies by W + noise (rel x rms(W)), on `rows` of W only."""
    w = _kernel_weight(worker, path).float()
    noise = torch.randn(w.shape, generator=torch.Generator().manual_seed(0)) * rel * w.pow(2).mean().sqrt()
    if rows is not None:
        keep = torch.ones(w.shape[0], dtype=torch.bool)
        keep[rows] = False
        noise[keep] = 0
    _serve_with(worker, path, w + noise)


@torch.no_grad()
def _bump_param(worker, name, rel):
    p = dict(worker.model_runner.get_model().named_parameters())[name]
    p.add_(rel * p.abs().mean())


def rpc(worker: RolloutWorker, fn, *args):
    return worker.engine.llm.collective_rpc(fn, args=args)[0]


def score(worker: RolloutWorker) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    seqs = [torch.randint(3, 49152, (24,), generator=g).tolist() for _ in range(4)]
    return torch.tensor(worker.score(seqs, [1] * 4))


@pytest.fixture(scope="module", params=["float32", "bfloat16"])
def vllm_worker(request, tiny_model_dir):
    w = RolloutWorker(tiny_model_dir, engine="vllm",
                      engine_kwargs=dict(dtype=request.param, max_model_len=128, kv_cache_gb=0.0625))
    w.setup()
    yield w
    w.close_engine()


def test_full_update_passes_every_fingerprint(vllm_worker, state_a, state_b):
    report = update(vllm_worker, state_b)
    assert (report["missing"], report["duplicates"], report["unloaded"]) == ([], [], [])
    worst, where, n = check_weight_reports([report])
    # every tensor once, the tied output layer as a second use of the embedding, and the tie as sent
    assert n == TENSORS + 2
    assert "lm_head.weight (tied to model.embed_tokens.weight)" in [c[0] for c in report["checks"]]
    kinds = {c[0]: c[3] for c in report["checks"]}
    assert kinds[f"{LAYER}.weight"] == "kernel" and kinds[NORM] == "raw"  # repacked on CPU: via the kernel
    # fp32: kernel vs reference accumulation order only; bf16: the kernel's output rounding (< 2^-8)
    assert worst < (1e-6 if report["dtype"] == "float32" else 2**-8), (worst, where)
    print(f"\n{report['dtype']}: worst fingerprint error {worst:.2g} ({where}); "
          f"sent {report['ledger_seconds'] * 1e3:.1f} ms, held {report['seconds'] * 1e3:.1f} ms")
    update(vllm_worker, state_a)


def test_stale_linear_layer_is_named(vllm_worker, state_a, state_b):
    """The kernel of one layer keeps model A's weights after an update to B (what vLLM's own
    reload_weights does to every linear layer on CPU)."""
    update(vllm_worker, state_a)
    w_a = rpc(vllm_worker, _kernel_weight, LAYER)
    update(vllm_worker, state_b)
    verify(vllm_worker)
    rpc(vllm_worker, _serve_with, LAYER, w_a)
    with pytest.raises(WeightSyncError, match=rf"replica 0: engine tensor {LAYER}\.weight differs from what the "
                                               r"trainer sent: relative error .* \(kernel fingerprint"):
        verify(vllm_worker)
    update(vllm_worker, state_a)
    verify(vllm_worker)  # a full update repairs it


def test_small_corruption_the_probes_miss_is_named(vllm_worker, state_a):
    """Noise on one layer, 3x the fingerprint tolerance relative to its norm: the engine's log-probs
    move by less than the probe tolerance (1e-3), the fingerprint names the layer."""
    report = update(vllm_worker, state_a)
    rel = 3 * max(c[2] for c in report["checks"])
    before = score(vllm_worker)
    rpc(vllm_worker, _add_noise, LAYER, rel)
    moved = (score(vllm_worker) - before).abs().max().item()
    if report["dtype"] == "float32":
        assert moved < 1e-3, moved
    with pytest.raises(WeightSyncError, match=rf"engine tensor {LAYER}\.weight differs"):
        verify(vllm_worker)
    update(vllm_worker, state_a)


def test_corrupted_slice_of_a_packed_tensor_is_named(vllm_worker, state_a):
    """Only k_proj's rows of the packed qkv_proj are wrong: k_proj is named, q and v pass."""
    update(vllm_worker, state_a)
    rpc(vllm_worker, _add_noise, "model.layers.0.self_attn.qkv_proj", 0.1, slice(64, 96))  # q 64, k 32, v 32
    with pytest.raises(WeightSyncError) as err:
        verify(vllm_worker)
    assert "engine tensor model.layers.0.self_attn.k_proj.weight (rows of model.layers.0.self_attn.qkv_proj" \
           ".weight) differs" in str(err.value) and "tensors off" not in str(err.value)
    update(vllm_worker, state_a)


def test_corrupted_norm_and_tied_output_layer_are_named(vllm_worker, state_a):
    update(vllm_worker, state_a)
    rpc(vllm_worker, _bump_param, NORM, 0.05)  # a raw parameter, read directly by the forward pass
    with pytest.raises(WeightSyncError, match=rf"engine tensor {NORM} differs .*\(raw fingerprint"):
        verify(vllm_worker)
    update(vllm_worker, state_a)
    # The output layer shares the embedding's weight but multiplies by its own packed copy.
    rpc(vllm_worker, _add_noise, "lm_head", 0.1)
    with pytest.raises(WeightSyncError, match=r"engine tensor lm_head\.weight \(tied to model\.embed_tokens\.weight\) "
                                               r"differs"):
        verify(vllm_worker)
    update(vllm_worker, state_a)
    verify(vllm_worker)


def test_skipped_or_repeated_tensor_is_caught(vllm_worker, state_a, state_b):
    update(vllm_worker, state_a)
    report = update(vllm_worker, state_b, skip={NORM})  # NORM keeps A's value (equal to B's: all ones)
    assert report["missing"] == [NORM] and report["unloaded"] == [NORM]
    assert all(c[1] <= c[2] for c in report["checks"])  # what was sent is right: only coverage sees it
    with pytest.raises(WeightSyncError, match=rf"replica 0: the sync did not send 1 of the engine's tensors "
                                               rf"\({NORM}\): the engine keeps stale values"):
        verify(vllm_worker)
    update(vllm_worker, state_b, twice={NORM})
    with pytest.raises(WeightSyncError, match=rf"tensors sent more than once in one sync: {NORM}"):
        verify(vllm_worker)
    update(vllm_worker, state_a)
    verify(vllm_worker)


def test_hf_engine_stale_and_corrupted_tensors_are_named(tiny_model_dir, state_a, state_b):
    w = RolloutWorker(tiny_model_dir, engine="hf")
    w.setup()
    report = update(w, state_b)
    worst, _, n = check_weight_reports([report])
    assert worst == 0.0 and n == TENSORS + 1  # raw everywhere: exact; the tie as sent
    update(w, state_a, skip={f"{LAYER}.weight"})  # HF copies in place: the layer keeps B's weights
    with pytest.raises(WeightSyncError, match=rf"did not send 1 of the engine's tensors \({LAYER}\.weight\)"):
        verify(w)
    update(w, state_a)
    with torch.no_grad():  # the size of one Adam step at lr 1e-6 on SmolLM2's weights: a raw check sees it
        w.engine.model.get_parameter(f"{LAYER}.weight").mul_(1 + 1e-6)
    with pytest.raises(WeightSyncError, match=rf"engine tensor {LAYER}\.weight differs .*relative error "
                                               r"(9\.\d+e-07|1e-06) > 1e-09 \(raw fingerprint"):
        verify(w)


# ---- a real sync on Ray ---------------------------------------------------------------------------
class FaultyActor(ActorWorker):
    """The real actor, plus what the test needs: move its weights without training, and a sync
    that leaves one tensor out (as a buggy name filter or bucketing would)."""

    @register(dispatch=Dispatch.ONE_TO_ALL)
    def perturb(self, rel: float, seed: int) -> None:
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for p in self.backend.model.parameters():
                local = p.to_local() if hasattr(p, "to_local") else p
                local.add_(torch.randn(local.shape, generator=g) * rel * local.abs().mean())

    @register(dispatch=Dispatch.ONE_TO_ALL)
    def set_skip(self, name: str | None) -> None:
        if name is not None:
            inner = self.backend.iter_param_buckets
            self.backend.iter_param_buckets = lambda *a, **k: (
                {n: t for n, t in b.items() if n != name} for b in inner(*a, **k))
        else:
            self.backend.__dict__.pop("iter_param_buckets", None)


@pytest.fixture(scope="module")
def ray_sync(ray_cluster, tiny_model_dir):
    from transformers import AutoTokenizer

    from orchestrator.config import load_config
    from orchestrator.resources import ResourcePool
    from orchestrator.worker_group import WorkerGroup
    from workers.weight_sync import BucketedWeightSync, make_probe

    cfg = load_config(None, ["actor.world_size=1", "actor.micro_batch_size=4"])
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    pool = ResourcePool(1, cpus_per_bundle=1.0, name="weight-sync")
    trainer = WorkerGroup(pool, {"actor": (FaultyActor, dict(model_path=tiny_model_dir, actor_cfg=vars(cfg.actor)))},
                          name="ws-trainer", num_cpus_per_worker=0.4)
    rollout = WorkerGroup(pool, RolloutWorker, dict(model_path=tiny_model_dir, engine="vllm",
                                                    engine_kwargs=dict(max_model_len=128, kv_cache_gb=0.0625)),
                          name="ws-rollout", num_cpus_per_worker=0.4)
    pending = rollout.submit("setup")
    actor = trainer.role("actor")
    actor.setup()
    pending.get()
    prompt = tok("Question: what is 12 + 7?\nAnswer:")["input_ids"]
    probe = make_probe(prompt, tok(" The answer is 19. #### 19")["input_ids"], tok.pad_token_id or 0)
    sync = BucketedWeightSync(actor, rollout, 1 << 20, probe, tolerance=1e-3)
    yield sync, actor
    for g in (rollout, trainer):
        g.shutdown()
    pool.shutdown()


def test_sync_reports_verification_and_catches_a_skipped_tensor(ray_sync):
    sync, actor = ray_sync
    assert len(sync.probes) == 4
    assert sync.check() < 1e-4  # same checkpoint on both sides; records the probe baseline
    actor.perturb(0.05, 1)
    r = sync.sync()
    assert r.verified and r.mode == "full"
    assert r.checksum_tensors == TENSORS + 1 and r.checksum_max_rel_err < 1e-6  # the trainer sends no tied head
    assert r.probe_delta_trainer > 1e-2 and r.probe_delta_max < 1e-4  # the probes moved, the engine followed
    assert r.max_abs_diff < 1e-4 and r.verify_seconds > 0 and 0 < r.transfer_seconds < r.seconds
    print(f"\nsync {r.seconds:.3f} s: transfer {r.transfer_seconds:.3f} s, verify {r.verify_seconds:.3f} s; "
          f"checksums {r.checksum_max_rel_err:.2g} ({r.checksum_tensors} tensors), "
          f"probe delta {r.probe_delta_max:.2g} (trainer moved {r.probe_delta_trainer:.2g})")

    # The trainer moves on and the engine is not synced: the probes' change gives it away.
    actor.perturb(0.05, 2)
    with pytest.raises(WeightSyncError, match=r"replica 0: its probe log-probs changed by up to .* than the trainer's "
                                               r"since the last sync"):
        sync.check_changes()

    # A sync that leaves one tensor out: the engine would keep a stale norm.
    actor.set_skip(NORM)
    with pytest.raises(WeightSyncError, match=rf"replica 0: the sync did not send 1 of the engine's tensors "
                                               rf"\({NORM}\)"):
        sync.sync()
    actor.set_skip(None)
    r = sync.sync()
    assert r.verified and r.probe_delta_trainer > 1e-2 and r.probe_delta_max < 1e-4
