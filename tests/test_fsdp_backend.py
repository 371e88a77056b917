"""FSDP2 backend on 2 real gloo ranks (one Ray actor each) against single-process references.

References are independent: a plain (unsharded) HF model with torch AdamW in this process, a
naive per-row forward for the log-prob math, the saved safetensors for the gathered weights.
"""
from __future__ import annotations

import functools
import os
import time

import pytest
import torch

from orchestrator.batch import Batch

pytestmark = pytest.mark.timeout(180)

B, P, R, VOCAB_USED = 8, 6, 5, 5000
# lr 1e-3: Adam moves most elements by ~1e-3 per step, far above the 1e-5 tolerance, while the
# float noise Adam amplifies in elements whose gradient is near eps stays below it (1e-2 did not).
CFG = dict(lr=1e-3, weight_decay=0.1, grad_clip=1.0, seed=0)


# ------------------------------------------------------------------ helpers
def make_batch(seed: int = 0) -> Batch:
    """Left-padded prompts + right-padded responses of random lengths (pad id 0)."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, VOCAB_USED, (B, P + R), generator=g)
    mask = torch.ones(B, P + R, dtype=torch.long)
    for i in range(B):
        p_len = int(torch.randint(1, P + 1, (1,), generator=g))
        r_len = int(torch.randint(1, R + 1, (1,), generator=g))
        mask[i, :P - p_len] = 0
        mask[i, P + r_len:] = 0
    ids = ids * mask
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    return Batch({"input_ids": ids, "attention_mask": mask, "position_ids": pos, "responses": ids[:, P:],
                  "response_mask": mask[:, P:], "advantages": torch.randn(B, generator=g)})


def pg_loss(mb: Batch, logprobs, entropy, n_tokens: int, scale: float):
    """Token-mean policy-gradient loss with an entropy bonus over the *global* batch, times `scale`
    (= world size on FSDP ranks, whose gradients are averaged over ranks)."""
    m = mb["response_mask"].float()
    pg = -(logprobs * mb["advantages"][:, None] * m).sum() / n_tokens
    ent = (entropy * m).sum() / n_tokens
    return (pg - 0.01 * ent) * scale, {"pg": pg.detach().item(), "ent": ent.detach().item()}


def optim_snapshot(backend) -> dict:
    """This rank's optimizer state (local shards), cloned, keyed by parameter name."""
    names = {id(p): n for n, p in backend.model.named_parameters()}
    out = {}
    for p, st in backend.optimizer.state.items():
        for k, v in st.items():
            v = v.to_local() if hasattr(v, "to_local") else v
            out[f"{names[id(p)]}.{k}"] = v.detach().clone()
    return out


def gathered(backend, bucket_bytes: int = 1 << 30) -> dict:
    out = {}
    for bucket in backend.iter_param_buckets(bucket_bytes):
        out.update(bucket)
    return out


def _state(backend):
    m = backend.model
    return {"requires_grad": any(p.requires_grad for p in m.parameters()), "training": m.training,
            "optimizer": backend.optimizer is not None}


def _buckets(backend, bucket_bytes):
    return [dict(b) for b in backend.iter_param_buckets(bucket_bytes)]


def _roundtrip(backend, ckpt, hf_dir, batch_a, batch_b, loss_kw):
    """step A, save, step B, load: params and optimizer state back to 'after A'; step B again
    reproduces the first B exactly; then save_hf."""
    fn = functools.partial(pg_loss, **loss_kw)
    backend.train_step(batch_a.chunks_of(2), fn)
    backend.save(ckpt)
    after_a, optim_a = gathered(backend), optim_snapshot(backend)
    backend.train_step(batch_b.chunks_of(2), fn)
    after_b = gathered(backend)
    backend.load(ckpt)
    restored, optim_restored = gathered(backend), optim_snapshot(backend)
    backend.train_step(batch_b.chunks_of(2), fn)
    again_b = gathered(backend)
    backend.save_hf(hf_dir)
    return dict(after_a=after_a, after_b=after_b, restored=restored, again_b=again_b,
                optim_equal=optim_a.keys() == optim_restored.keys() and len(optim_a) > 0
                and all(torch.equal(optim_a[k], optim_restored[k]) for k in optim_a))


def _mismatched_steps(backend, batch, n):
    try:
        backend.train_step(batch.chunks_of(len(batch) // n), functools.partial(pg_loss, n_tokens=1, scale=1.0))
    except RuntimeError as e:
        return str(e)
    return "no error"


class Rank:
    """One rank: joins the gloo group from env vars, holds one FSDPBackend, runs helper functions."""

    def __init__(self, rank: int, world: int, port: int | None):
        os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1")
        if port is not None:
            os.environ["MASTER_PORT"] = str(port)

    def init(self, timeout_s: float):
        from workers.dist import init_distributed
        return init_distributed(timeout_s=timeout_s)

    def setup(self, model_dir: str, trainable: bool = True, cfg: dict | None = None):
        from workers.backends import make_backend
        self.backend = make_backend("fsdp", **(CFG if cfg is None else cfg))
        self.backend.setup(model_dir, trainable)
        return self.backend.timings["setup_s"]

    def run(self, fn, *args):
        """fn(backend, *args) on this rank (fn is pickled by Ray)."""
        return fn(self.backend, *args)

    def call(self, method: str, *args, **kwargs):
        return getattr(self.backend, method)(*args, **kwargs)


def start_ranks(ray, world: int, timeout_s: float) -> list:
    from workers.dist import free_port
    port = free_port() if world > 1 else None
    # Half a CPU each: the module's pair stays up while a test starts one or two more ranks, on
    # Ray's default resources (2 CPUs here).
    actor = ray.remote(num_cpus=0.5)(Rank)
    return started(ray, [actor.remote(r, world, port) for r in range(world)], timeout_s)


def started(ray, ranks: list, timeout_s: float) -> list:
    """`ranks` once each has joined the group; on failure all are killed (a rank still waiting for
    CPUs would take them later and hold them through the following tests)."""
    try:
        ray.get([a.init.remote(timeout_s) for a in ranks], timeout=120)
    except BaseException:
        for a in ranks:
            ray.kill(a)
        raise
    return ranks


def on_all(ray, ranks, method: str, *per_rank, timeout=120):
    """Call `method` on every rank; per_rank[i] is the args tuple for rank i (or one shared tuple)."""
    args = per_rank if len(per_rank) == len(ranks) else per_rank * len(ranks)
    return ray.get([getattr(a, method).remote(*args[i]) for i, a in enumerate(ranks)], timeout=timeout)


def halves(batch: Batch) -> list[tuple]:
    return [(h,) for h in batch.split(2)]


@pytest.fixture(scope="module")
def ranks(ray_cluster):
    actors = start_ranks(ray_cluster, 2, timeout_s=60)
    yield actors
    for a in actors:
        ray_cluster.kill(a)


@pytest.fixture(scope="module")
def plain_model(tiny_model_dir):
    from transformers import AutoModelForCausalLM
    return AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()


# -------------------------------------------------------------------- tests
def test_response_logprobs_matches_naive_per_row_forward(plain_model):
    """The [P-1:-1] slicing, temperature and entropy against an unpadded forward of each row."""
    from workers.backends.fsdp import response_logprobs
    batch, temp = make_batch(1), 0.7
    with torch.no_grad():
        lp, ent = response_logprobs(plain_model, batch, temperature=temp, with_entropy=True)
        for i in range(B):
            m = batch["attention_mask"][i].bool()
            real = batch["input_ids"][i][m]
            n_prompt = int(m[:P].sum())
            logp = torch.log_softmax(plain_model(real[None]).logits[0].float() / temp, -1)
            for j in range(int(m[P:].sum())):
                row = logp[n_prompt - 1 + j]
                assert lp[i, j].item() == pytest.approx(row[real[n_prompt + j]].item(), abs=1e-4)
                assert ent[i, j].item() == pytest.approx(-(row.exp() * row).sum().item(), abs=1e-4)
    assert response_logprobs(plain_model, batch)[1] is None


def test_bad_input_errors():
    from workers.backends import make_backend
    from workers.backends.fsdp import FSDPBackend, response_logprobs
    with pytest.raises(ValueError, match="unknown training backend 'nope'"):
        make_backend("nope")
    with pytest.raises(ValueError, match="dtype must be one of"):
        FSDPBackend(dtype="fp8")
    batch = make_batch()
    del batch.tensors["position_ids"]
    with pytest.raises(ValueError, match="missing the tensor field 'position_ids'"):
        response_logprobs(torch.nn.Identity(), batch)
    with pytest.raises(RuntimeError, match=r"setup\(\) must run"):
        FSDPBackend().forward_logprobs(make_batch(), 4)


def test_forward_logprobs_two_ranks_match_single_process(ray_cluster, ranks, tiny_model_dir, plain_model):
    from workers.backends.fsdp import response_logprobs
    on_all(ray_cluster, ranks, "setup", (tiny_model_dir, False))
    assert on_all(ray_cluster, ranks, "run", (_state,)) == [
        {"requires_grad": False, "training": False, "optimizer": False}] * 2
    batch = make_batch(2)
    outs = on_all(ray_cluster, ranks, "call", *[("forward_logprobs", h, 3, 0.8, True) for (h,) in halves(batch)])
    lp = torch.cat([o[0] for o in outs])
    ent = torch.cat([o[1] for o in outs])
    with torch.no_grad():
        ref_lp, ref_ent = response_logprobs(plain_model, batch, 0.8, True)
    # Micro-batches drop their own all-padding columns, so matmul shapes (and fp32 summation
    # order) differ from the whole-batch reference: allow 1e-6 relative on top of 1e-5.
    torch.testing.assert_close(lp, ref_lp, atol=1e-5, rtol=1e-6)
    torch.testing.assert_close(ent, ref_ent, atol=1e-5, rtol=1e-6)
    assert on_all(ray_cluster, ranks, "call", ("forward_logprobs", batch, 4))[0][1] is None


def test_train_steps_match_single_process_adamw(ray_cluster, ranks, tiny_model_dir):
    """Two steps (2 micro-batches per rank, clipping active, weight decay) equal plain AdamW on the
    whole batch: same global grad norm and the same parameters."""
    from transformers import AutoModelForCausalLM

    from workers.backends.fsdp import response_logprobs
    batches = [make_batch(3), make_batch(4)]
    on_all(ray_cluster, ranks, "setup", (tiny_model_dir, True), timeout=120)
    per_rank = [[], []]
    for b in batches:
        for r, (h,) in enumerate(halves(b)):
            per_rank[r].append(h)
    kws = [dict(n_tokens=int(b["response_mask"].sum()), scale=2.0) for b in batches]
    metrics = on_all(ray_cluster, ranks, "run",
                     *[(lambda be, bs: [be.train_step(x.chunks_of(2), functools.partial(pg_loss, **k))
                                        for x, k in zip(bs, kws)], per_rank[r]) for r in range(2)])
    fsdp_params = on_all(ray_cluster, ranks, "run", (gathered,))

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    opt = torch.optim.AdamW(model.parameters(), lr=CFG["lr"], weight_decay=CFG["weight_decay"])
    ref_norms = []
    for b, k in zip(batches, kws):
        opt.zero_grad()
        lp, ent = response_logprobs(model, b, 1.0, True)
        loss, _ = pg_loss(b, lp, ent, k["n_tokens"], 1.0)
        loss.backward()
        ref_norms.append(float(torch.nn.utils.clip_grad_norm_(model.parameters(), CFG["grad_clip"])))
        opt.step()

    for step in range(2):
        assert metrics[0][step]["grad_norm"] == pytest.approx(ref_norms[step], rel=1e-5)
        assert metrics[0][step]["grad_norm"] == metrics[1][step]["grad_norm"]  # global, not per rank
        assert metrics[0][step]["lr"] == CFG["lr"] and metrics[0][step]["step_skipped"] == 0.0
    assert ref_norms[0] > CFG["grad_clip"]  # so clipping was exercised
    ref = model.state_dict()
    assert set(fsdp_params[0]) == set(ref) - {"lm_head.weight"}
    for name, value in fsdp_params[0].items():
        torch.testing.assert_close(value, ref[name], atol=1e-5, rtol=0, msg=lambda m: f"{name}: {m}")
        torch.testing.assert_close(fsdp_params[1][name], value, atol=0, rtol=0)
        assert (value - initial[name]).abs().max() > 5e-4, f"{name} did not move"


def _actor_update(backend, actor_cfg: dict, shard: Batch) -> dict:
    """workers.actor.ActorWorker.update, run on this rank's backend (RANK / WORLD_SIZE are set)."""
    from workers.actor import ActorWorker
    worker = ActorWorker("unused", actor_cfg)
    worker.backend = backend
    return worker.update(shard).meta[f"metrics/rank{worker.rank}"]


@pytest.mark.parametrize("token_budget", [False, True])
def test_actor_token_sum_norm_is_scaled_by_the_global_row_count(ray_cluster, ranks, tiny_model_dir, token_budget):
    """Dr.GRPO's seq-mean-token-sum-norm through ActorWorker.update on 2 ranks x 2 micro-batches:
    the summed per-rank loss and the global grad norm equal one process's (1/G)·Σ m·L / T on the
    whole mini-batch, G = 7 rows with tokens (row 7 is padding, as pad_with_masked_rows makes).
    With a token budget (actor.max_tokens_per_micro_batch) that cuts the two ranks' rows into
    different numbers of micro-batches, the ranks agree on one count and the update is the same."""
    from workers.backends.base import length_order, micro_batches
    from transformers import AutoModelForCausalLM

    from algorithms.losses import ppo_clip_loss
    from workers.backends.fsdp import response_logprobs
    batch = make_batch(5)
    mask = batch["response_mask"].clone()
    mask[7] = 0
    batch["response_mask"] = mask
    g = torch.Generator().manual_seed(1)
    batch["advantages"] = batch["advantages"][:, None] * mask
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    with torch.no_grad():
        lp0, _ = response_logprobs(model, batch, 1.0, False)
    batch["old_logprobs"] = lp0 + 0.3 * torch.randn(lp0.shape, generator=g) * mask  # ratio != 1
    actor_cfg = dict(mini_batch_size=0, micro_batch_size=2, loss_agg="seq-mean-token-sum-norm",
                     ppo_epochs=1, clip_ratio_low=0.2, clip_ratio_high=0.2, dual_clip=3.0,
                     kl_coef=0.0, kl_estimator="k3", entropy_coef=0.0)
    if token_budget:  # the smallest budget under which the halves need different counts
        def counts(budget):
            return [len(micro_batches(h.select(length_order(h)), 2, budget)) for (h,) in halves(batch)]
        budget = next(b for b in range(1, P + R + 1) if len(set(counts(b))) == 2)
        assert counts(budget)[0] != counts(budget)[1]
        actor_cfg["max_tokens_per_micro_batch"] = budget
    on_all(ray_cluster, ranks, "setup", (tiny_model_dir, True), timeout=120)
    r0, r1 = on_all(ray_cluster, ranks, "run", *[(_actor_update, actor_cfg, h) for (h,) in halves(batch)])

    lp, _ = response_logprobs(model, batch, 1.0, False)
    # Σ m·L over the whole batch (token-mean with divisor 1), then / (T = R columns · G = 7 rows)
    total, _ = ppo_clip_loss(lp, batch["old_logprobs"], batch["advantages"], mask, global_tokens=1.0)
    loss = total / (R * 7)
    loss.backward()
    ref_norm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), float("inf")))
    assert abs(loss.item()) > 1e-3 and ref_norm > 1e-3
    assert r0["pg_loss"] + r1["pg_loss"] == pytest.approx(loss.item(), rel=1e-5, abs=1e-7)
    assert r0["grad_norm"] == pytest.approx(ref_norm, rel=1e-5) and r0["grad_norm"] == r1["grad_norm"]


def test_token_budget_cuts_micro_batches_by_padded_tokens():
    """Hand-worked: sorted lengths 3 3 4 6 9 20, at most 4 rows and 12 tokens (rows x longest)."""
    from workers.backends.base import micro_batches
    lengths = [3, 3, 4, 6, 9, 20]
    batch = Batch({"attention_mask": torch.tensor([[1] * n + [0] * (20 - n) for n in lengths])})
    sizes = [len(m) for m in micro_batches(batch, 4, 12)]
    assert sizes == [3, 1, 1, 1]  # 3x4 = 12 fits; 4x6 = 24, 2x9 = 18, 2x20 = 40 do not
    assert [len(m) for m in micro_batches(batch, 4)] == [4, 2]  # rows only
    assert [len(m) for m in micro_batches(batch, 2, 1000)] == [2, 2, 2]
    with pytest.raises(ValueError, match="max_tokens per micro-batch must be >= 1, got 0"):
        micro_batches(batch, 4, 0)


def test_micro_batch_count_mismatch_raises_on_every_rank(ray_cluster, ranks, tiny_model_dir):
    on_all(ray_cluster, ranks, "setup", (tiny_model_dir, True))
    h = halves(make_batch(5))
    errors = on_all(ray_cluster, ranks, "run", (_mismatched_steps, h[0][0], 2), (_mismatched_steps, h[1][0], 1))
    for e in errors:
        assert "ranks disagree on the number of micro-batches: between 1 and 2" in e


def test_iter_param_buckets_small_buckets_cover_the_hf_state_dict(ray_cluster, ranks, tiny_model_dir):
    from safetensors.torch import load_file
    on_all(ray_cluster, ranks, "setup", (tiny_model_dir, True))
    bucket_bytes = 40_000
    per_rank = on_all(ray_cluster, ranks, "run", (_buckets, bucket_bytes))
    hf = load_file(os.path.join(tiny_model_dir, "model.safetensors"))
    assert "lm_head.weight" not in hf  # tied: the saved folder has the embeddings only
    buckets = per_rank[0]
    assert len(buckets) >= 4
    names = [n for b in buckets for n in b]
    assert len(names) == len(set(names)) and set(names) == set(hf)
    assert names[0] == "model.embed_tokens.weight"  # state_dict order
    for b in buckets:
        size = sum(t.numel() * t.element_size() for t in b.values())
        assert size <= bucket_bytes or len(b) == 1
        for n, t in b.items():
            assert t.device.type == "cpu" and not t.requires_grad
            assert torch.equal(t, hf[n]), n
    assert [list(b) for b in per_rank[1]] == [list(b) for b in buckets]


def test_save_load_roundtrip_and_save_hf(ray_cluster, ranks, tiny_model_dir, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer
    on_all(ray_cluster, ranks, "setup", (tiny_model_dir, True))
    a, b = make_batch(6), make_batch(7)
    kw = dict(n_tokens=int(a["response_mask"].sum()), scale=2.0)
    ckpt, hf_dir = str(tmp_path / "ckpt"), str(tmp_path / "hf")
    res = on_all(ray_cluster, ranks, "run",
                 *[(_roundtrip, ckpt, hf_dir, ha, hb, kw) for (ha,), (hb,) in zip(halves(a), halves(b))])
    for r in res:
        assert r["optim_equal"]
        assert any(not torch.equal(r["after_a"][n], r["after_b"][n]) for n in r["after_a"])
        for n in r["after_a"]:
            assert torch.equal(r["restored"][n], r["after_a"][n]), n
            assert torch.equal(r["again_b"][n], r["after_b"][n]), n

    reloaded = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32)
    assert reloaded.config.architectures == ["LlamaForCausalLM"]
    assert reloaded.lm_head.weight.data_ptr() == reloaded.model.embed_tokens.weight.data_ptr()
    sd = reloaded.state_dict()
    for n, t in res[0]["again_b"].items():
        assert torch.equal(sd[n], t), n
    tok, orig_tok = AutoTokenizer.from_pretrained(hf_dir), AutoTokenizer.from_pretrained(tiny_model_dir)
    assert tok("hello world").input_ids == orig_tok("hello world").input_ids and len(tok) == len(orig_tok)


def test_single_rank_matches_plain_model(ray_cluster, tiny_model_dir, plain_model):
    """world_size 1 (no MASTER_PORT: in-memory store) shards trivially and gives the same numbers."""
    from workers.backends.fsdp import response_logprobs
    (solo,) = start_ranks(ray_cluster, 1, timeout_s=30)
    try:
        ray_cluster.get(solo.setup.remote(tiny_model_dir, False), timeout=120)
        batch = make_batch(8)
        lp, _ = ray_cluster.get(solo.call.remote("forward_logprobs", batch, 8), timeout=60)
        with torch.no_grad():
            torch.testing.assert_close(lp, response_logprobs(plain_model, batch)[0], atol=1e-5, rtol=0)
    finally:
        ray_cluster.kill(solo)


def test_stuck_peer_raises_after_the_group_timeout(ray_cluster, tiny_model_dir):
    """Rank 1 never joins the collective: rank 0 must fail after the 5 s timeout, not hang."""
    pair = start_ranks(ray_cluster, 2, timeout_s=5)
    try:
        on_all(ray_cluster, pair, "setup", (tiny_model_dir, True))
        t0 = time.monotonic()
        with pytest.raises(RuntimeError, match="(?i)timed? ?out"):
            ray_cluster.get(pair[0].run.remote(_buckets, 1 << 20), timeout=60)
        assert time.monotonic() - t0 < 40
    finally:
        for a in pair:
            ray_cluster.kill(a)
