"""DeepSpeed ZeRO backend on 2 real gloo ranks (one Ray actor each) against FSDP2 on the same ranks
and an independent single-process reference (plain HF model + torch AdamW in this process).

DeepSpeed's one-time shared-memory op build is not paid here: `python -m workers.backends.deepspeed
--warmup` (the setup step) caches it; without it the first setup below compiles for ~30-50 s.
"""
from __future__ import annotations

import functools
import os

import pytest
import torch

from tests.test_fsdp_backend import CFG, gathered, halves, make_batch, on_all, pg_loss, started

pytestmark = pytest.mark.timeout(240)


class Rank:
    """One rank: joins the gloo group from env vars and holds any number of backends by label."""

    def __init__(self, rank: int, world: int, port: int):
        os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                          MASTER_PORT=str(port))
        self.backends = {}

    def init(self, timeout_s: float):
        from workers.dist import init_distributed
        return init_distributed(timeout_s=timeout_s)

    def setup(self, label: str, name: str, model_dir: str, cfg: dict, trainable: bool = True, kind="causal_lm"):
        from workers.backends import make_backend
        self.backends.pop(label, None)
        self.backends[label] = make_backend(name, **cfg)
        self.backends[label].setup(model_dir, trainable, kind)
        return self.backends[label].timings["setup_s"]

    def run(self, label: str, fn, *args):
        return fn(self.backends[label], *args)


def start_ranks(ray, world: int = 2, timeout_s: float = 120) -> list:
    from workers.dist import free_port
    port = free_port()
    actor = ray.remote(num_cpus=0.5)(Rank)  # room for another group while a module's pair is up
    return started(ray, [actor.remote(r, world, port) for r in range(world)], timeout_s)


def train(backend, batches, kws):
    """One train_step per batch (2 micro-batches each); returns the metrics."""
    return [backend.train_step(b.chunks_of(2), functools.partial(pg_loss, **k)) for b, k in zip(batches, kws)]


def per_rank_halves(batches) -> list[list]:
    out = [[], []]
    for b in batches:
        for r, (h,) in enumerate(halves(b)):
            out[r].append(h)
    return out


def reference_steps(model_dir, batches, kws, kind="causal_lm", loss=None):
    """Plain AdamW on the whole batch in this process: (grad norms, final state dict)."""
    from workers.backends.fsdp import response_logprobs
    from workers.backends.fsdp_model import load_hf_model
    model = load_hf_model(model_dir, kind, torch.float32, seed=0)
    opt = torch.optim.AdamW(model.parameters(), lr=CFG["lr"], weight_decay=CFG["weight_decay"])
    norms = []
    for b, k in zip(batches, kws):
        opt.zero_grad()
        if loss is None:
            lp, ent = response_logprobs(model, b, 1.0, True)
            pg_loss(b, lp, ent, k["n_tokens"], 1.0)[0].backward()
        else:
            loss(model, b).backward()
        norms.append(float(torch.nn.utils.clip_grad_norm_(model.parameters(), CFG["grad_clip"])))
        opt.step()
    return norms, {k: v.detach() for k, v in model.state_dict().items()}


@pytest.fixture(scope="module")
def ranks(ray_cluster):
    actors = start_ranks(ray_cluster)
    yield actors
    for a in actors:
        ray_cluster.kill(a)


# -------------------------------------------------------------------- tests
def test_options_and_bad_input():
    from workers.backends import BACKENDS, backend_options, make_backend
    from workers.backends.deepspeed import DeepSpeedBackend, main
    assert BACKENDS == ("fsdp", "deepspeed")
    be = make_backend("deepspeed", zero_stage=3, lr=1e-4)
    assert isinstance(be, DeepSpeedBackend) and be.zero_stage == 3 and be.lr == 1e-4
    with pytest.raises(ValueError, match="zero_stage must be one of \\[1, 2, 3\\], got 4"):
        make_backend("deepspeed", zero_stage=4)
    with pytest.raises(ValueError, match="dtype 'float16' is not supported by the DeepSpeed backend"):
        make_backend("deepspeed", dtype="float16")
    with pytest.raises(ValueError, match="lora_sync must be one of"):
        make_backend("deepspeed", lora_sync="both")
    with pytest.raises(RuntimeError, match=r"DeepSpeedBackend.setup\(\) must run"):
        DeepSpeedBackend().forward_logprobs(make_batch(), 4)
    section = {"backend": "deepspeed", "zero_stage": 1, "lr": 1e-5, "betas": [0.9, 0.95], "world_size": 2,
               "lora_rank": 4, "lora_target_modules": ["q_proj"], "ppo_epochs": 1}
    assert backend_options(section) == {"zero_stage": 1, "lr": 1e-5, "betas": (0.9, 0.95), "lora_rank": 4,
                                        "lora_target_modules": ["q_proj"]}
    assert "zero_stage" not in backend_options({**section, "backend": "fsdp"})
    with pytest.raises(ValueError, match="unknown training backend 'megatron'"):
        backend_options({"backend": "megatron"})
    assert main([]) == 2  # no action: prints help


def test_zero2_matches_fsdp_and_single_process(ray_cluster, ranks, tiny_model_dir):
    """Two steps (2 micro-batches per rank, clipping active, weight decay): ZeRO-2 equals FSDP2 on
    the same ranks and plain AdamW on the whole batch, parameters within 1e-5."""
    batches = [make_batch(3), make_batch(4)]
    kws = [dict(n_tokens=int(b["response_mask"].sum()), scale=2.0) for b in batches]
    cfg = dict(CFG)
    on_all(ray_cluster, ranks, "setup", ("fsdp", "fsdp", tiny_model_dir, cfg), timeout=180)
    on_all(ray_cluster, ranks, "setup", ("z2", "deepspeed", tiny_model_dir, {**cfg, "zero_stage": 2}), timeout=180)
    shards = per_rank_halves(batches)
    ds_metrics = on_all(ray_cluster, ranks, "run", *[("z2", train, shards[r], kws) for r in range(2)])
    fsdp_metrics = on_all(ray_cluster, ranks, "run", *[("fsdp", train, shards[r], kws) for r in range(2)])
    ds = on_all(ray_cluster, ranks, "run", ("z2", gathered))
    fsdp = on_all(ray_cluster, ranks, "run", ("fsdp", gathered))[0]
    ref_norms, ref = reference_steps(tiny_model_dir, batches, kws)

    assert ref_norms[0] > CFG["grad_clip"]  # clipping exercised
    for step in range(2):
        for m in (ds_metrics[0][step], ds_metrics[1][step]):
            assert m["grad_norm"] == pytest.approx(ref_norms[step], rel=1e-5)
            assert m["step_skipped"] == 0.0 and m["lr"] == CFG["lr"]
        assert ds_metrics[0][step]["grad_norm"] == pytest.approx(fsdp_metrics[0][step]["grad_norm"], rel=1e-5)
        # loss_fn's own metric, averaged over this rank's micro-batches, is backend-independent
        assert ds_metrics[0][step]["pg"] == pytest.approx(fsdp_metrics[0][step]["pg"], abs=1e-6)
    assert set(ds[0]) == set(ref) - {"lm_head.weight"} == set(fsdp)
    initial = reference_steps(tiny_model_dir, [], [])[1]
    for name, value in ds[0].items():
        torch.testing.assert_close(value, ref[name], atol=1e-5, rtol=0, msg=lambda m: f"{name} vs reference: {m}")
        torch.testing.assert_close(value, fsdp[name], atol=1e-5, rtol=0, msg=lambda m: f"{name} vs FSDP: {m}")
        assert torch.equal(ds[1][name], value)  # replicas agree
        assert (value - initial[name]).abs().max() > 5e-4, f"{name} did not move"


def _logprobs_step_buckets(backend, batch, kw, bucket_bytes):
    before = backend.forward_logprobs(batch, 3)[0]
    backend.train_step(batch.chunks_of(2), functools.partial(pg_loss, **kw))
    return before, [dict(b) for b in backend.iter_param_buckets(bucket_bytes)]


def test_zero3_trains_one_step_and_gathers_in_buckets(ray_cluster, ranks, tiny_model_dir):
    """ZeRO-3 partitions the parameters: log-probs still equal the plain model's, one step equals
    plain AdamW, and small buckets gather every HF tensor exactly once."""
    from safetensors.torch import load_file

    from workers.backends.fsdp import response_logprobs
    batch = make_batch(5)
    kw = dict(n_tokens=int(batch["response_mask"].sum()), scale=2.0)
    on_all(ray_cluster, ranks, "setup", ("z3", "deepspeed", tiny_model_dir, {**CFG, "zero_stage": 3}), timeout=180)
    # Partitioned: each rank holds half of every large tensor.
    local = on_all(ray_cluster, ranks, "run",
                   ("z3", lambda be: sum(p.ds_tensor.numel() for p in be.model.parameters())))
    n_params = sum(t.numel() for t in load_file(os.path.join(tiny_model_dir, "model.safetensors")).values())
    assert abs(local[0] - n_params / 2) < 0.01 * n_params
    bucket_bytes = 40_000
    outs = on_all(ray_cluster, ranks, "run", *[("z3", _logprobs_step_buckets, h, kw, bucket_bytes)
                                               for (h,) in halves(batch)])
    _, ref = reference_steps(tiny_model_dir, [batch], [kw])
    plain = reference_steps(tiny_model_dir, [], [])[1]
    from transformers import AutoModelForCausalLM
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    with torch.no_grad():
        ref_lp = response_logprobs(model, batch)[0]
    torch.testing.assert_close(torch.cat([o[0] for o in outs]), ref_lp, atol=1e-5, rtol=1e-6)
    buckets = outs[0][1]
    assert len(buckets) >= 4
    names = [n for b in buckets for n in b]
    assert len(names) == len(set(names)) and set(names) == set(plain) - {"lm_head.weight"}
    for b in buckets:
        assert sum(t.numel() * t.element_size() for t in b.values()) <= bucket_bytes or len(b) == 1
        for n, t in b.items():
            torch.testing.assert_close(t, ref[n], atol=1e-5, rtol=0, msg=lambda m: f"{n}: {m}")
            assert t.shape == plain[n].shape and not torch.equal(t, plain[n]), n
    assert [list(b) for b in outs[1][1]] == [list(b) for b in buckets]


def _value_run(backend, batch, n_tokens):
    before = backend.forward_values(batch, 3)
    metrics = backend.train_step(batch.chunks_of(2), functools.partial(_value_loss, n_tokens=n_tokens, scale=2.0))
    return before, metrics, gathered(backend)


def _value_loss(mb, values, _unused, n_tokens, scale):
    m = mb["response_mask"].float()
    loss = ((values - mb["advantages"][:, None]) ** 2 * m).sum() / n_tokens
    return loss * scale, {}


def test_value_kind_on_zero2(ray_cluster, ranks, tiny_model_dir):
    """kind="value": values equal the single-process value model's; one regression step equals
    plain AdamW on it (head and backbone)."""
    from workers.backends.fsdp_model import load_hf_model, response_values
    batch = make_batch(6)
    n_tokens = int(batch["response_mask"].sum())
    on_all(ray_cluster, ranks, "setup", ("v", "deepspeed", tiny_model_dir, {**CFG, "zero_stage": 2}, True, "value"),
           timeout=180)
    outs = on_all(ray_cluster, ranks, "run", *[("v", _value_run, h, n_tokens) for (h,) in halves(batch)])
    model = load_hf_model(tiny_model_dir, "value", torch.float32, seed=0)
    with torch.no_grad():
        ref_values = response_values(model, batch)
    torch.testing.assert_close(torch.cat([o[0] for o in outs]), ref_values, atol=1e-5, rtol=1e-6)
    assert ref_values.abs().max() > 0
    norms, ref = reference_steps(tiny_model_dir, [batch], [None], kind="value",
                                 loss=lambda m, b: _value_loss(b, response_values(m, b), None, n_tokens, 1.0)[0])
    assert outs[0][1]["grad_norm"] == pytest.approx(norms[0], rel=1e-5)
    assert "score.weight" in outs[0][2]
    for name, value in outs[0][2].items():
        torch.testing.assert_close(value, ref[name], atol=1e-5, rtol=0, msg=lambda m: f"{name}: {m}")


def _roundtrip(backend, ckpt, hf_dir, batch_a, batch_b, kw):
    """step A, save, step B, load: params back to 'after A'; step B again reproduces the first B."""
    fn = functools.partial(pg_loss, **kw)
    backend.train_step(batch_a.chunks_of(2), fn)
    backend.save(ckpt)
    after_a = gathered(backend)
    backend.train_step(batch_b.chunks_of(2), fn)
    after_b = gathered(backend)
    backend.load(ckpt)
    restored = gathered(backend)
    backend.train_step(batch_b.chunks_of(2), fn)
    again_b = gathered(backend)
    backend.save_hf(hf_dir)
    return dict(after_a=after_a, after_b=after_b, restored=restored, again_b=again_b)


def test_zero3_checkpoint_roundtrip_and_save_hf(ray_cluster, ranks, tiny_model_dir, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer
    on_all(ray_cluster, ranks, "setup", ("z3", "deepspeed", tiny_model_dir, {**CFG, "zero_stage": 3}), timeout=180)
    a, b = make_batch(6), make_batch(7)
    kw = dict(n_tokens=int(a["response_mask"].sum()), scale=2.0)
    ckpt, hf_dir = str(tmp_path / "ckpt"), str(tmp_path / "hf")
    res = on_all(ray_cluster, ranks, "run",
                 *[("z3", _roundtrip, ckpt, hf_dir, ha, hb, kw) for (ha,), (hb,) in zip(halves(a), halves(b))])
    r = res[0]
    assert any(not torch.equal(r["after_a"][n], r["after_b"][n]) for n in r["after_a"])
    for n in r["after_a"]:
        assert torch.equal(r["restored"][n], r["after_a"][n]), n
        assert torch.equal(r["again_b"][n], r["after_b"][n]), n
    assert os.path.isfile(os.path.join(ckpt, "latest"))
    reloaded = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32)
    assert reloaded.config.architectures == ["LlamaForCausalLM"]
    assert reloaded.lm_head.weight.data_ptr() == reloaded.model.embed_tokens.weight.data_ptr()
    sd = reloaded.state_dict()
    for n, t in r["again_b"].items():
        assert torch.equal(sd[n], t), n
    tok = AutoTokenizer.from_pretrained(hf_dir)
    assert tok("hello world").input_ids == AutoTokenizer.from_pretrained(tiny_model_dir)("hello world").input_ids
    with pytest.raises(Exception, match="no DeepSpeed checkpoint"):
        ray_cluster.get(ranks[0].run.remote("z3", lambda be, p: be.load(p), str(tmp_path / "missing")), timeout=60)


@pytest.mark.parametrize("stage", [2, 3])
def test_forward_only_engine_matches_plain_model(ray_cluster, ranks, tiny_model_dir, stage):
    """trainable=False (a reference policy): no optimizer (ZeRO-1/2 then run as stage 0, which
    DeepSpeed allows without one), frozen, log-probs equal the plain model's."""
    from transformers import AutoModelForCausalLM

    from workers.backends.fsdp import response_logprobs
    on_all(ray_cluster, ranks, "setup", ("ref", "deepspeed", tiny_model_dir, {"zero_stage": stage}, False),
           timeout=180)
    state = on_all(ray_cluster, ranks, "run", ("ref", lambda be: (be.optimizer is None, be.model.training,
                                                                   any(p.requires_grad for p in be.model.parameters()),
                                                                   be.ds_config()["zero_optimization"]["stage"])))
    assert state == [(True, False, False, 0 if stage == 2 else 3)] * 2
    batch = make_batch(9)
    outs = on_all(ray_cluster, ranks, "run", *[("ref", lambda be, h: be.forward_logprobs(h, 3)[0], h)
                                               for (h,) in halves(batch)])
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        torch.testing.assert_close(torch.cat(outs), response_logprobs(model, batch)[0], atol=1e-5, rtol=1e-6)
