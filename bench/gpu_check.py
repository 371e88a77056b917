"""The prepared GPU check: the Ray-free GPU parts, with whatever python the GPU machine has.

    bash bench/gpu_check.sh                                 # on a lent CUDA machine: no setup, ~3-5 min
    .venv/bin/python bench/gpu_check.py --device cpu --size tiny   # the same code path, here (a dry run)

The lent machine has torch, transformers, peft and pytest but no ray, vllm or deepspeed, and no
network, so nothing here imports those or downloads anything. It builds a random model from the
embedded SmolLM2's architecture (`--size 0.5b`: hidden 1024, 24 layers, GQA 16/4, MLP 4096, vocab
49152 tied, ~0.4B parameters; `tiny` for a dry run), then, in one process:
1. the FSDP2 backend on NCCL (world size 1): train steps (forward + backward + AdamW) on a batch of
   random sequences in float32 and bfloat16, against the bare floor (the plain model, same batch,
   same optimizer, no FSDP, no padding beyond the batch);
2. prefix packing (workers/prefix_pack.py) on the device: packed vs unpacked log-probs;
3. the shared-memory weight sync into an in-process HF engine on the device: the backend writes its
   rows into the buffer, the engine loads it, every fingerprint checked; against a host-to-device
   copy of the same bytes;
4. the IPC weight sync (`weight_sync.transport: ipc`, workers/ipc_weights.py) into an HF engine in a
   second process: the backend's buckets gathered on the device, handed over as CUDA IPC handles,
   every fingerprint checked; against a device-to-device copy of the same bytes;
5. the Ray-free tests marked `gpu` (tests/test_ipc_weights.py), as `gpu_tests` in the line.
Prints one JSON line of figures and ratios (and writes it to $OUT/gpu_check.json when OUT is set).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

SIZES = {"0.5b": dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                      num_key_value_heads=4, vocab_size=49152),
         "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
                      num_key_value_heads=1, vocab_size=1024)}


def build_model(out: Path, size: str) -> str:
    from transformers import LlamaConfig, LlamaForCausalLM
    cfg = LlamaConfig(**SIZES[size], max_position_embeddings=2048, tie_word_embeddings=True, bos_token_id=1,
                      eos_token_id=2, pad_token_id=0)
    torch.manual_seed(0)
    LlamaForCausalLM(cfg).save_pretrained(out, safe_serialization=True)
    return str(out)


def random_batch(rows: int, prompt: int, response: int, vocab: int, seed: int = 0):
    from orchestrator.batch import pack_sequences
    g = torch.Generator().manual_seed(seed)
    ps = [torch.randint(3, vocab, (prompt,), generator=g).tolist() for _ in range(rows)]
    rs = [torch.randint(3, vocab, (response,), generator=g).tolist() for _ in range(rows)]
    b = pack_sequences(ps, rs, [[0.0] * response] * rows, prompt, response, 0)
    b["advantages"] = torch.randn(rows, 1, generator=g) * b["response_mask"]
    return b


def loss_fn(mb, logprobs, entropy):
    m = mb["response_mask"].to(logprobs.dtype)
    return -(logprobs * mb["advantages"].to(logprobs.dtype) * m).sum() / m.sum(), {}


def timed(fn, repeats: int) -> float:
    fn()  # warm-up
    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    times = []
    for _ in range(repeats):
        sync()
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def check(model_path: str, device: str, dtype: str, rows: int, prompt: int, response: int, mbs: int,
          repeats: int) -> dict:
    from workers.backends.fsdp import FSDPBackend
    from workers.backends.fsdp_model import response_logprobs
    out: dict = {}
    be = FSDPBackend(lr=1e-6, dtype=dtype)
    be.setup(model_path, trainable=True)
    vocab = be.model.config.vocab_size
    batch = random_batch(rows, prompt, response, vocab)
    mbatches = batch.chunks_of(mbs)
    out["train_s"] = timed(lambda: be.train_step(mbatches, loss_fn), repeats)
    tokens = rows * (prompt + response)
    out["train_tokens_per_s"] = tokens / out["train_s"]

    # The bare floor: the plain HF model on the device, same micro-batches, same AdamW.
    from transformers import AutoModelForCausalLM
    plain = AutoModelForCausalLM.from_pretrained(model_path, dtype=getattr(torch, dtype)).to(device)
    opt = torch.optim.AdamW(plain.parameters(), lr=1e-6, fused=device == "cuda")

    def floor_step():
        for mb in mbatches:
            mb = mb.to(device)
            lp, _ = response_logprobs(plain, mb)
            loss_fn(mb, lp, None)[0].backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    out["floor_train_s"] = timed(floor_step, repeats)
    out["train_vs_floor"] = out["train_s"] / out["floor_train_s"]
    del plain, opt
    return out | {"_backend": be}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--size", default="0.5b", choices=sorted(SIZES))
    ap.add_argument("--rows", type=int, default=16)
    ap.add_argument("--prompt", type=int, default=256)
    ap.add_argument("--response", type=int, default=256)
    ap.add_argument("--micro-batch", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args()
    if a.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA device: run with --device cpu for a dry run")
    os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=os.environ.get("MASTER_PORT", "29533"))
    res: dict = {"device": torch.cuda.get_device_name(0) if a.device == "cuda" else "cpu",
                 "torch": torch.__version__, "size": a.size}
    t_all = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="gpu_check_") as tmp:
        model_path = build_model(Path(tmp) / "model", a.size)
        shape = dict(rows=a.rows, prompt=a.prompt, response=a.response, mbs=a.micro_batch, repeats=a.repeats)
        be = None
        for dtype in ("float32", "bfloat16"):
            r = check(model_path, a.device, dtype, **shape)
            be = r.pop("_backend")
            res |= {f"{k}_{dtype}": round(v, 4) for k, v in r.items()}
        res["bf16_train_speedup"] = round(res["train_s_float32"] / res["train_s_bfloat16"], 3)
        res |= packing_check(be, a.device)
        res |= sync_check(be, model_path, a.device)
        res |= ipc_check(be, model_path, a.device)
    res["gpu_tests"] = gpu_tests()
    res["wall_s"] = round(time.perf_counter() - t_all, 1)
    line = json.dumps(res)
    if os.environ.get("OUT"):
        Path(os.environ["OUT"], "gpu_check.json").write_text(line + "\n")
    print(line)


def packing_check(be, device: str) -> dict:
    """Packed vs unpacked sequence log-probs of 4 prompts x 4 candidates on the backend's model (bf16)."""
    from workers.backends.fsdp_model import response_logprobs
    from workers.prefix_pack import pack_by_prompt, segment_sums
    from orchestrator.batch import pack_sequences
    g = torch.Generator().manual_seed(1)
    vocab = be.model.config.vocab_size
    pairs = [(p, torch.randint(3, vocab, (n,), generator=g).tolist())
             for p in [torch.randint(3, vocab, (200,), generator=g).tolist() for _ in range(4)] for n in (4, 9, 13, 6)]
    rows = pack_sequences([p for p, _ in pairs], [r for _, r in pairs], [[0.0] * len(r) for _, r in pairs],
                          200, 13, 0)
    packed, index = pack_by_prompt(rows, 0)
    with torch.no_grad():
        lp, _ = response_logprobs(be.model, rows.to(device))
        seq = (lp.float().cpu() * rows["response_mask"]).sum(-1)
        plp, _ = response_logprobs(be.model, packed.to(device))
        pseq = segment_sums(plp.float().cpu(), packed, index)
    return {"packed_vs_rows_max_abs": round(float((pseq - seq).abs().max()), 5),
            "packed_tokens_ratio": round(float(rows["attention_mask"].sum() / packed["attention_mask"].sum()), 3)}


def sync_check(be, model_path: str, device: str) -> dict:
    """The shared-memory sync from the (bf16) backend into an in-process HF engine on the device."""
    from workers.engines.base import UpdateLedger, weight_report
    from workers.engines.hf_engine import HFEngine
    from workers.shared_weights import check_tiling, create_buffer, remove_buffer, tensor_views
    engine = HFEngine(model_path, dtype="bfloat16", device=device)
    layout = engine.plan_shared(tempfile.gettempdir() if not os.path.isdir("/dev/shm") else "/dev/shm")
    create_buffer(layout)
    try:
        views = tensor_views(layout)

        def sync():
            written = be.write_shared(views, layout.aliases)
            check_tiling(layout, [written])
            engine.begin_weight_update()
            engine.load_shared(layout, views)
            engine.finish_weight_update()
        t = timed(sync, 3)
        ledger = UpdateLedger(engine.weight_dtype)
        engine.begin_weight_update()
        engine.load_shared(layout, views)
        ledger.add(dict(views))
        engine.finish_weight_update()
        report = weight_report(engine, ledger, True)
        from workers.weight_sync import check_weight_reports
        worst, _, n = check_weight_reports([report])
        src = torch.empty(layout.nbytes, dtype=torch.uint8).fill_(1)
        dst = torch.empty(layout.nbytes, dtype=torch.uint8, device=device)
        h2d = timed(lambda: dst.copy_(src), 3)
    finally:
        remove_buffer(layout)
    return {"sync_s": round(t, 4), "sync_bytes": layout.nbytes, "h2d_copy_s": round(h2d, 4),
            "sync_vs_h2d": round(t / h2d, 2), "sync_fingerprints_checked": n, "sync_worst_rel_err": worst}


def _ipc_engine(model_path: str, device: str, dtype: str, inbox, outbox) -> None:
    """The engine process of ipc_check: load each sync's buckets by handle, ack each, report."""
    from workers.engines.base import UpdateLedger, weight_report
    from workers.engines.hf_engine import HFEngine
    from workers.ipc_weights import open_bucket
    engine = HFEngine(model_path, dtype=dtype, device=device)
    outbox.put("ready")
    while (msg := inbox.get()) is not None:
        ledger = UpdateLedger(engine.weight_dtype)
        engine.begin_weight_update()
        while (bucket := inbox.get()) != "end":
            views = open_bucket(*bucket)
            engine.load_weights(views)
            ledger.add(views)
            del views
            if device == "cuda":
                torch.cuda.synchronize()
            outbox.put("loaded")
        engine.finish_weight_update()
        outbox.put(weight_report(engine, ledger, True))


def ipc_check(be, model_path: str, device: str, bucket_mb: int = 256) -> dict:
    """The IPC sync from the (bf16) backend into an HF engine in another process, as push_buckets
    does it: gather a bucket on the device, pack, send the handle, wait for the load, next."""
    import torch.multiprocessing as mp

    from workers.ipc_weights import pack_bucket, share
    from workers.weight_sync import check_weight_reports
    ctx = mp.get_context("spawn")
    inbox, outbox = ctx.Queue(), ctx.Queue()
    proc = ctx.Process(target=_ipc_engine, args=(model_path, device, "bfloat16", inbox, outbox), daemon=True)
    proc.start()
    try:
        assert outbox.get(timeout=300) == "ready"
        times, nbytes, report = [], 0, None
        for _ in range(3):
            t0 = time.perf_counter()
            inbox.put("sync")
            nbytes = 0
            for bucket in be.iter_param_buckets(bucket_mb * 2**20, device=device):
                flat, meta = pack_bucket(bucket)
                inbox.put((share(flat), meta))
                assert outbox.get(timeout=300) == "loaded"
                nbytes += flat.numel()
                del flat
            inbox.put("end")
            report = outbox.get(timeout=300)
            times.append(time.perf_counter() - t0)
        inbox.put(None)
    finally:
        proc.join(timeout=60)
        if proc.is_alive():
            proc.kill()
    worst, _, n = check_weight_reports([report])
    src = torch.empty(nbytes, dtype=torch.uint8, device=device).fill_(1)
    dst = torch.empty_like(src)
    d2d = timed(lambda: dst.copy_(src), 3)
    t = statistics.median(times)
    return {"ipc_sync_s": round(t, 4), "ipc_sync_bytes": nbytes, "d2d_copy_s": round(d2d, 5),
            "ipc_sync_vs_d2d": round(t / d2d, 2), "ipc_fingerprints_checked": n, "ipc_worst_rel_err": worst}


def gpu_tests() -> str:
    """The Ray-free tests marked gpu, with this python; their summary line ("2 passed in 9.1s")."""
    import subprocess
    repo = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-m", "gpu", "-p", "no:cacheprovider",
                          "tests/test_ipc_weights.py"], cwd=repo, capture_output=True, text=True, timeout=300)
    lines = [ln for ln in out.stdout.splitlines() if ln.strip()]
    return lines[-1] if lines else f"pytest exited {out.returncode}: {out.stderr[-300:]}"


if __name__ == "__main__":
    main()
