"""Weight buckets by handle (workers/ipc_weights.py, `weight_sync.transport: ipc`): a trainer
process packs model B's weights bucket by bucket and hands each over by handle; an engine process
(spawned, a real second process) opens the handles, loads model A's HF engine from views of them,
and scores. Checked against an independent reference: a plain transformers forward of model B.
On CPU the handle carries a shared-memory file descriptor; the same test on CUDA (marked `gpu`,
run by bench/gpu_check.sh) carries CUDA IPC handles, the transport's real use."""
from __future__ import annotations

import pytest
import torch
import torch.multiprocessing as mp

import tests.tiny as tiny
from workers.backends.lora import bucketize
from workers.ipc_weights import ALIGN, check_meta, open_bucket, pack_bucket, share
from workers.weight_sync import WeightSyncError

SEQ = list(range(100, 140))


def engine_process(model_path: str, device: str, inbox, outbox) -> None:
    """The engine side: load every bucket that arrives, ack each, then report and score."""
    from workers.engines.base import UpdateLedger, weight_report
    from workers.engines.hf_engine import HFEngine
    try:
        engine = HFEngine(model_path, dtype="float32", device=device)
        before = engine.score([SEQ], [1])[0]
        ledger = UpdateLedger(engine.weight_dtype)
        engine.begin_weight_update()
        while (msg := inbox.get()) is not None:
            views = open_bucket(*msg)
            engine.load_weights(views)
            ledger.add(views)
            kinds = sorted({str(v.device.type) for v in views.values()})
            del views
            if device == "cuda":
                torch.cuda.synchronize()
            outbox.put(("loaded", kinds))
        engine.finish_weight_update()
        outbox.put(("done", before, engine.score([SEQ], [1])[0], weight_report(engine, ledger, True)))
    except Exception as e:  # noqa: BLE001 - the parent asserts on it
        outbox.put(("error", f"{type(e).__name__}: {e}"))


def reference_scores(path: str) -> torch.Tensor:
    from transformers import AutoModelForCausalLM
    model = AutoModelForCausalLM.from_pretrained(path).eval()
    with torch.no_grad():
        logits = model(torch.tensor([SEQ])).logits[0, :-1].float()
    return torch.log_softmax(logits, -1).gather(-1, torch.tensor(SEQ[1:])[:, None])[:, 0]


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=[
    pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")])])
def test_buckets_by_handle_load_an_engine_in_another_process(tiny_model_dir, tmp_path, device):
    from transformers import AutoModelForCausalLM

    from workers.weight_sync import check_weight_reports
    other = tiny.build(tmp_path / "b", seed=1)
    state = AutoModelForCausalLM.from_pretrained(other).state_dict()
    named = [(k, v.to(device)) for k, v in state.items() if k != "lm_head.weight"]  # tied: an alias
    ctx = mp.get_context("spawn")
    inbox, outbox = ctx.Queue(), ctx.Queue()
    proc = ctx.Process(target=engine_process, args=(tiny_model_dir, device, inbox, outbox))
    proc.start()
    try:
        n = 0
        for bucket in bucketize(iter(named), 200_000):  # several buckets, as the trainer sends them
            flat, meta = pack_bucket(bucket)
            assert flat.device.type == device and all(off % ALIGN == 0 for *_, off in meta)
            inbox.put((share(flat), meta))
            reply = outbox.get(timeout=120)
            assert reply == ("loaded", [device]), reply  # views of this process's buffer, on the device
            del flat  # freed only after the engine acknowledged the load, as push_buckets does
            n += 1
        inbox.put(None)
        reply = outbox.get(timeout=120)
    finally:
        proc.join(timeout=60)
        if proc.is_alive():
            proc.kill()
    assert reply[0] == "done", reply
    _, before, after, report = reply
    assert n >= 3
    worst, _, checked = check_weight_reports([report])  # every tensor came once, as sent
    assert checked == len(named) and worst < 1e-6
    ref = reference_scores(other)
    assert (torch.tensor(after) - ref).abs().max().item() < 1e-4
    assert (torch.tensor(before) - ref).abs().max().item() > 0.1  # the load changed what the engine serves


def test_round_trip_keeps_dtypes_shapes_and_values():
    bucket = {"w": torch.arange(6, dtype=torch.float32).view(2, 3), "b": torch.tensor([1.5, -2.0], dtype=torch.bfloat16),
              "i": torch.tensor([7], dtype=torch.int64)}
    flat, meta = pack_bucket(bucket)
    assert [(n, d, s, o) for n, d, s, o in meta] == [
        ("w", "torch.float32", (2, 3), 0), ("b", "torch.bfloat16", (2,), ALIGN), ("i", "torch.int64", (1,), 2 * ALIGN)]
    assert flat.numel() == 3 * ALIGN
    views = open_bucket(share(flat), meta)  # in-process: the same bytes
    for name, t in bucket.items():
        assert views[name].dtype == t.dtype and torch.equal(views[name], t)
    views["w"][0, 0] = 42.0
    assert flat[:4].view(torch.float32).item() == 42.0  # a view of the buffer, not a copy


def test_bad_tables_and_invisible_devices_are_refused():
    with pytest.raises(ValueError, match=r"tensor 'b' at bytes \[8, 24\) overlaps the previous one"):
        check_meta([("a", "torch.float32", (4,), 0), ("b", "torch.float32", (4,), 8)], 256)
    with pytest.raises(ValueError, match=r"tensor 'a' at bytes \[0, 1024\) .* leaves the 512-byte buffer"):
        check_meta([("a", "torch.float32", (256,), 0)], 512)
    with pytest.raises(ValueError, match=r"unknown dtype 'torch.float99'"):
        check_meta([("a", "torch.float99", (1,), 0)], 512)
    if not torch.cuda.is_available():
        with pytest.raises(WeightSyncError, match=r"on GPU GPU-0000, but this process sees no CUDA device"):
            open_bucket(("GPU-0000", None, (None,) * 15), [])


def test_ipc_transport_is_refused_without_gpus():
    from orchestrator.config import load_config
    from orchestrator.placement import make_weight_sync
    cfg = load_config(None, ["weight_sync.transport=ipc"])
    with pytest.raises(ValueError, match=r"transport=ipc shares CUDA memory: .* \(here: no GPU, one node\)"):
        make_weight_sync(cfg, None, None, None, "full", one_node=True, on_gpu=False)
