"""Learning comparisons on the real pipeline: which algorithm moves held-out accuracy, at equal samples.

    python bench/learning.py math                      # (a) GRPO, Dr.GRPO, RLOO, REINFORCE++, PPO on math
    python bench/learning.py math --steps 40 --only grpo,ppo --out bench_results/learning
    python bench/learning.py rm --steps 40             # (b) PPO against a trained reward model
    python bench/learning.py agent --seeds 5 --steps 20 # (c) GiGPO vs GRPO on a multi-turn env (tiny model)
    python bench/learning.py agent --env corridor --seeds 3 --steps 15
    python bench/learning.py for --seeds 3 --steps 15   # (d) FoR vs GRPO on BlocksWorld (tiny model)
    python bench/learning.py for --seeds 3 --steps 20 --slack 2   # (d) with detours allowed: several correct plans
    python bench/learning.py retrieval --seeds 1 --steps 15  # (e) Step-GRPO vs GRPO on retrieval (bench/learning_retrieval.py)
    python bench/learning.py report                    # tables + PNG curves from the finished runs

Each run is `hyflow train` in a child process with its own run directory under --out/runs/; a run
that finished earlier is not repeated (the suite can be stopped and continued). `report` reads
every run's metrics.jsonl and writes --out/learning.md, PNG curves and prints one JSON line of
the comparisons. The run folders are not tracked (checkpoints); `report` copies every run's
metrics.jsonl to --out/metrics/<run>.jsonl (tracked) and restores missing ones from there, so the
tables and curves can be rebuilt on another machine. Suite (a), at equal samples per step (32) and equal steps: the embedded
SmolLM2-135M on generated level-1 word problems (the quickstart's task), greedy accuracy on the
same 128 held-out problems before and after, with 95 % Wilson intervals.
Suite (b), RLHF: preference pairs (`--pairs format`: a concise `#### n` answer preferred, instant;
`--pairs math`: the embedded model's verified-correct vs incorrect answers, slow), a reward model
trained on them (`hyflow train-rm configs/rm_math.yaml`), then PPO with a critic against that
reward model only (configs/ppo_rm_math.yaml): the RM's score and the rule-verified accuracy,
side by side, per step (learning_rm.png).
Suite (c), GiGPO vs GRPO on a multi-turn env, `--seeds` seeds each at equal batches (4 groups x 4
episodes a step): the learning tests' tiny model warmed to answer four random digits
(tests/learning_tasks.py), the same recipe keys but the estimator. `--env code` (default):
CodeCorridor("408"), 8 turns; each cell wants its own digit and no other cell's, so the right
action depends on the state (the code is the one of the 720 whose cells the warmed model passes
most evenly, ~0.2 a turn each: step-0 success ~0.2). `--env corridor`: SevenCorridor(4), 6 turns; an action with a 7
moves, the same in every cell. (Length 3 in 5 turns at lr 2e-3 saturated both estimators by step
5: no ordering to see.) Success rate per step and per env step, mean +- std over seeds
(learning_agent_<env>.png).
Suite (d), FoR vs GRPO on BlocksWorld at equal samples (4 problems x 8 trajectories a step, no local
search), `--seeds` seeds each: the FoR trainer's sampler and candidate-step policy (the tiny model
warmed to spread P_F over the candidates, tests/learning_tasks.py), VarGrad TB with FoR's replay,
ε and tempered sampling vs `for_.objective=grpo` (on-policy). Accuracy and distinct correct plans
per solved problem, on the training problems' fresh samples and on 8 held-out problems
(learning_for.png). `--slack N` lets a plan take N actions beyond the optimal length (`for_.slack`),
so a problem has several correct plans, FoR's diversity claim can show (runs for_slackN_*,
learning_for_slackN.png).
Suite (e), Step-GRPO vs plain (outcome-reward) GRPO on the retrieval task, both scored free-running on
held-out questions in the kbqa env: bench/learning_retrieval.py.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from learning_retrieval import report_retrieval, run_retrieval  # noqa: E402

# Suite (a): every run samples 32 completions per step (prompts x rollout.n).
# Checkpoints every 5 steps: a stopped run continues where it stopped (trainer.resume), so the
# suite can be spread over several sessions.
# The quickstart's layout (one FSDP2 rank x 2 threads). Session 20's GRPO run used two ranks x 1 thread
# (the quickstart's layout then) on another machine: the same update up to reduction order; its
# step time is not comparable.
MATH_BASE = ["data.val_size=128", "rollout.max_new_tokens=64", "trainer.progress=false", "trainer.save_every=5",
             "trainer.keep_last=1"]
MATH = {
    "grpo": ["algorithm.advantage=grpo"],
    "drgrpo": ["algorithm.advantage=grpo", "algorithm.norm_by_std=false", "actor.loss_agg=seq-mean-token-sum-norm"],
    "rloo": ["algorithm.advantage=rloo"],
    "reinforce_pp": ["algorithm.advantage=reinforce_pp", "algorithm.kl_in_reward=true",
                     "algorithm.kl_reward_estimator=k1", "algorithm.kl_reward_coef=0.01"],
    "ppo": ["algorithm.advantage=gae", "algorithm.lam=0.95", "data.batch_size=16", "rollout.n=2",
            "critic.lr=1e-5", "critic.micro_batch_size=4"],
}

# Runs whose metrics.jsonl was lost with their machine (before `report` kept copies): what was
# recorded of them (BENCHMARKS.md), shown in the table and as dashed held-out points, no train curve.
# A real run of the same name supersedes its entry.
MATH_RECORDED = {
    "grpo": {"val": [(0, 0.2421875), (10, 0.3671875), (20, 0.5078125), (30, 0.5703125), (40, 0.625)],
             "step_s": 72.0, "note": "session 20, 2 ranks x 1 thread, another machine; per-step metrics lost"},
}


def wilson(k: float, n: int, z: float = 1.96) -> tuple[float, float]:
    """95 % Wilson score interval of a proportion k/n."""
    if n == 0:
        return float("nan"), float("nan")
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return centre - half, centre + half


def rows_of(run: Path) -> list[dict]:
    path = run / "metrics.jsonl"
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            pass
    return out


def finished(run: Path, steps: int) -> bool:
    return any(r.get("step") == steps and "val/accuracy" in r for r in rows_of(run))


def run_math(out: Path, steps: int, only: list[str], val_every: int) -> None:
    for name in only:
        run = out / "runs" / f"math_{name}"
        if finished(run, steps):
            print(f"[learning] {name}: done already ({run})", flush=True)
            continue
        args = [sys.executable, "-m", "orchestrator.cli", "train", "configs/quickstart.yaml", *MATH_BASE, *MATH[name],
                f"trainer.total_steps={steps}", f"trainer.val_every={val_every}", f"trainer.output_dir={run}",
                f"trainer.experiment_name=math_{name}",
                "trainer.resume=true" if (run / "checkpoints").is_dir() else "trainer.overwrite=true"]
        print(f"[learning] {name}: {' '.join(args[3:])}", flush=True)
        t0 = time.time()
        with open(out / f"math_{name}.log", "a") as log:
            rc = subprocess.call(args, cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
                                 env={**os.environ, "PYTHONPATH": str(REPO)})
        print(f"[learning] {name}: exit {rc} after {time.time() - t0:.0f} s", flush=True)


RM_PPO = ["data.batch_size=8", "rollout.n=2", "rollout.max_new_tokens=64", "data.val_size=64",
          "trainer.progress=false", "trainer.save_every=5", "trainer.keep_last=1", "critic.micro_batch_size=4",
          "actor.micro_batch_size=4"]  # checkpoints every 5 steps: a stopped run continues (trainer.resume)


def _call(args: list[str], log_path: Path) -> int:
    print(f"[learning] {' '.join(args[1:])}", flush=True)
    t0 = time.time()
    with open(log_path, "w") as log:
        rc = subprocess.call(args, cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
                             env={**os.environ, "PYTHONPATH": str(REPO)})
    print(f"[learning] exit {rc} after {time.time() - t0:.0f} s (log {log_path})", flush=True)
    return rc


def run_rm(out: Path, steps: int, val_every: int, pairs: str) -> None:
    """Suite (b): pairs -> reward model -> PPO against it (each stage skipped once done)."""
    data = out / f"pairs_{pairs}.jsonl"
    if not data.exists():
        extra = ["--n", "128"]  # ~15 optimizer steps an epoch at rm.batch_size=8
        if _call([sys.executable, "-m", "envs.preferences", pairs, "--out", str(data), *extra], out / "pairs.log"):
            raise SystemExit("pair generation failed")
    rm = out / "runs" / f"rm_{pairs}"
    if not (rm / "hf" / "config.json").exists():
        if _call([sys.executable, "-m", "orchestrator.cli", "train-rm", "configs/rm_math.yaml",
                  f"rm.train_path={data}", f"rm.output_dir={rm}", "rm.overwrite=true", "rm.batch_size=8", "rm.epochs=1"],
                 out / "rm_train.log"):
            raise SystemExit("reward-model training failed")
    run = out / "runs" / f"ppo_rm_{pairs}"
    if finished(run, steps):
        print(f"[learning] ppo_rm_{pairs}: done already ({run})", flush=True)
        return
    _call([sys.executable, "-m", "orchestrator.cli", "train", "configs/ppo_rm_math.yaml", *RM_PPO,
           f"reward.model.path={rm / 'hf'}", f"trainer.total_steps={steps}", f"trainer.val_every={val_every}",
           f"trainer.output_dir={run}", f"trainer.experiment_name=ppo_rm_{pairs}",
           "trainer.resume=true" if (run / "checkpoints").is_dir() else "trainer.overwrite=true"],
          out / f"ppo_rm_{pairs}.log")


AGENT = {"gigpo": "gigpo_alfworld.yaml", "grpo": "grpo_alfworld.yaml"}
# --env: (env class, its kwargs, turns per episode). corridor: an action with a 7 moves (the best
# action is the same in every cell); code: each cell wants its own digit alone (state-dependent).
AGENT_ENVS = {"corridor": ("tests.learning_tasks:SevenCorridor", {"length": 4}, 6),
              "code": ("tests.learning_tasks:CodeCorridor", {"code": "408"}, 8)}
AGENT_KEYS = ["env.val_groups=0",
              "env.invalid_penalty=0.0", "env.history_length=1", "data.batch_size=4", "rollout.n=4",
              "rollout.max_new_tokens=6", "rollout.max_model_len=1024", "data.max_prompt_tokens=512",
              "actor.lr=1e-3", "actor.entropy_coef=0.0", "actor.kl_coef=0.0", "actor.micro_batch_size=16",
              "rollout.temperature=1.0", "rollout.kv_cache_gb=0.25", "weight_sync.bucket_mb=4", "data.val_size=0",
              "trainer.progress=false", "trainer.save_every=0"]


def agent_run(out: Path, env: str, algo: str, seed: int, steps: int) -> None:
    """One suite-(c) run, in this process (a child of `run_agent`)."""
    from orchestrator.config import load_config
    from orchestrator.trainer import Trainer
    name, kwargs, turns = AGENT_ENVS[env]
    run = out / "runs" / f"agent_{env}_{algo}_s{seed}"
    cfg = load_config(str(REPO / "configs" / AGENT[algo]), [
        f"model.path={out / 'digit_model'}", f"trainer.output_dir={run}", "trainer.overwrite=true",
        f"trainer.seed={seed}", f"env.seed={1000 * seed}", f"trainer.total_steps={steps}",
        f"trainer.experiment_name=agent_{env}_{algo}_s{seed}", f"env.name={name}", f"env.max_steps={turns}",
        *AGENT_KEYS])
    cfg.env.kwargs = dict(kwargs)  # replaces the recipe's ALFWorld kwargs
    trainer = Trainer(cfg)
    try:
        trainer.fit()
    finally:
        trainer.shutdown()


def run_seeds(out: Path, suite: str, algos: list[str], steps: int, seeds: int, step_key: str,
              tag: str | None = None, child_args: tuple[str, ...] = ()) -> None:
    """Each (seed, algo) run of a seeded suite in a child (`<suite>-run`), skipping finished ones
    (at least `steps` metrics rows carrying step_key). Runs are named <suite>[_<tag>]_<algo>_s<seed>."""
    for seed in range(seeds):
        for algo in algos:
            name = f"{suite}_{tag}_{algo}_s{seed}" if tag else f"{suite}_{algo}_s{seed}"
            if sum(1 for r in rows_of(out / "runs" / name) if step_key in r) >= steps:
                print(f"[learning] {name}: done already", flush=True)
                continue
            _call([sys.executable, str(Path(__file__).resolve()), f"{suite}-run", "--algo", algo, "--seed", str(seed),
                   "--steps", str(steps), "--out", str(out), *child_args], out / f"{name}.log")


def run_agent(out: Path, env: str, steps: int, seeds: int) -> None:
    model = out / "digit_model"
    if not (model / "config.json").exists():
        sys.path.insert(0, str(REPO))
        from tests.learning_tasks import digit_model
        digit_model(model)
    run_seeds(out, "agent", list(AGENT), steps, seeds, "env/success_rate", env, ("--env", env))


def report_agent(out: Path, env: str) -> dict:
    """learning_agent_<env>.md / .png: success per step and per env step, mean +- std over seeds."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    curves = {}
    for algo in AGENT:
        runs = [[r for r in rows_of(run) if "env/success_rate" in r]
                for run in sorted((out / "runs").glob(f"agent_{env}_{algo}_s*"))]
        runs = [r for r in runs if r]
        if runs:
            n = min(len(r) for r in runs)
            succ = np.array([[x["env/success_rate"] for x in r[:n]] for r in runs])
            env_steps = np.array([np.cumsum([16 * x["env/length_mean"] for x in r[:n]]) for r in runs])
            curves[algo] = (succ, env_steps)
    if not curves:
        return {}
    lines = ["| estimator | seeds | steps | success, first 3 steps | success, last 3 steps (mean ± std over seeds) | "
             "env steps used | mean success over all steps |", "|---|---|---|---|---|---|---|"]
    result = {}
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4), dpi=110)
    for algo, (succ, env_steps) in curves.items():
        first, last = succ[:, :3].mean(1), succ[:, -3:].mean(1)
        lines.append(f"| {algo} | {len(succ)} | {succ.shape[1]} | {first.mean():.3f} ± {first.std():.3f} | "
                     f"{last.mean():.3f} ± {last.std():.3f} | {env_steps[:, -1].mean():.0f} | {succ.mean():.3f} |")
        result[algo] = {"last": float(last.mean()), "last_std": float(last.std()), "auc": float(succ.mean())}
        x = np.arange(1, succ.shape[1] + 1)
        m, sd = succ.mean(0), succ.std(0)
        ax1.plot(x, m, label=f"{algo} ({len(succ)} seeds)")
        ax1.fill_between(x, m - sd, m + sd, alpha=0.2)
        for k, (e, s_) in enumerate(zip(env_steps, succ)):
            ax2.plot(e, s_, color="tab:blue" if algo == "gigpo" else "tab:orange", alpha=0.6,
                     label=algo if k == 0 else None)
    title = {"corridor": "SevenCorridor(4)", "code": "CodeCorridor(408)"}[env]
    ax1.set(xlabel="step", ylabel="train success rate", title=f"(c) {title}: success per step")
    ax2.set(xlabel="env steps (cumulative)", ylabel="train success rate", title="per env step, each seed")
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / f"learning_agent_{env}.png")
    (out / f"learning_agent_{env}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return {f"agent_{env}_{a}_{k}": round(v, 4) for a, r in result.items() for k, v in r.items()}


FOR_KEYS = ["trainer.progress=false", "trainer.val_every=5", "trainer.save_every=0", "actor.lora_rank=0",
            "actor.lr=2e-3", "actor.micro_batch_size=32", "weight_sync.bucket_mb=4", "rollout.kv_cache_gb=0.25",
            "for_.num_problems=8", "data.batch_size=4", "for_.n_blocks=[3,4]", "for_.plan_lengths=[2,4]",
            "for_.n_samples=8", "for_.ll_weight=0", "for_.local_search_tries=0", "for_.val_problems=8",
            "for_.val_samples=8"]
FOR = {"for": ["for_.objective=vargrad_tb"],
       "grpo": ["for_.objective=grpo", "for_.use_buffer_prob=[0,0]", "for_.epsilon=[0,0]", "for_.pf_temp_prob=0"]}


def for_tag(slack: int) -> str | None:
    return f"slack{slack}" if slack else None


def for_run(out: Path, algo: str, seed: int, steps: int, slack: int = 0) -> None:
    """One suite-(d) run, in this process (a child of `run_for`)."""
    from orchestrator.config import load_config
    from orchestrator.for_trainer import ForTrainer
    name = f"for_{for_tag(slack)}_{algo}_s{seed}" if slack else f"for_{algo}_s{seed}"
    run = out / "runs" / name
    cfg = load_config(str(REPO / "configs/for_blocksworld.yaml"), [
        f"model.path={out / 'for_model'}", f"trainer.output_dir={run}", "trainer.overwrite=true",
        f"trainer.seed={seed}", f"trainer.total_steps={steps}", f"trainer.experiment_name={name}",
        *FOR_KEYS, *FOR[algo], f"for_.slack={slack}"])
    trainer = ForTrainer(cfg)
    try:
        trainer.fit()
    finally:
        trainer.shutdown()


def run_for(out: Path, steps: int, seeds: int, slack: int = 0) -> None:
    model = out / "for_model"
    if not (model / "config.json").exists():
        sys.path.insert(0, str(REPO))
        from orchestrator.config import load_config
        from tests.learning_tasks import for_model
        for_model(model, load_config(str(REPO / "configs/for_blocksworld.yaml"), FOR_KEYS).for_)
    run_seeds(out, "for", list(FOR), steps, seeds, "for/loss", for_tag(slack), ("--slack", str(slack)))


def report_for(out: Path, slack: int = 0) -> dict:
    """learning_for[_slackN].md / .png: accuracy and distinct correct plans, FoR vs GRPO, mean ± std over seeds."""
    prefix = f"for_{for_tag(slack)}_" if slack else "for_"
    suffix = f"_{for_tag(slack)}" if slack else ""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    def series(rows, key):
        return [(r["step"], r[key]) for r in rows  # NaN / null: nothing solved
                if isinstance(r.get(key), (int, float)) and r[key] == r[key]]

    lines = ["| objective | seeds | steps | train accuracy (fresh samples), first 3 → last 3 steps | train distinct "
             "correct plans per solved problem, last 3 steps | val accuracy, step 0 → last | val distinct correct "
             "plans, last |", "|---|---|---|---|---|---|---|"]
    result = {}
    fig, axes = plt.subplots(1, 3, figsize=(14, 4), dpi=110)
    for algo in FOR:
        runs = [rows_of(run) for run in sorted((out / "runs").glob(f"{prefix}{algo}_s*"))]
        runs = [r for r in runs if any("for/loss" in x for x in r)]
        if not runs:
            continue
        acc = [[v for _, v in series(r, "for/accuracy")] for r in runs]
        div = [[v for _, v in series(r, "for/diversity")] for r in runs]
        val = [series(r, "val/accuracy") for r in runs]
        # diversity at each run's last validation (NaN when it solved nothing)
        vdiv = [[(x["step"], x["val/diversity"] if isinstance(x.get("val/diversity"), (int, float)) else float("nan"))
                 for x in r if "val/accuracy" in x] for r in runs]
        first = np.array([np.mean(a[:3]) for a in acc])
        last = np.array([np.mean(a[-3:]) for a in acc])
        dlast = np.array([np.mean(d[-3:]) if d else float("nan") for d in div])
        v0 = np.array([v[0][1] for v in val if v])
        v1 = np.array([v[-1][1] for v in val if v])
        vd = np.array([v[-1][1] for v in vdiv if v])
        lines.append(f"| {algo} | {len(runs)} | {min(map(len, acc))} | {first.mean():.3f} ± {first.std():.3f} → "
                     f"{last.mean():.3f} ± {last.std():.3f} | {np.nanmean(dlast):.2f} ± {np.nanstd(dlast):.2f} | "
                     f"{v0.mean():.3f} → {v1.mean():.3f} ± {v1.std():.3f} | "
                     f"{(np.nanmean(vd) if len(vd) else float('nan')):.2f} |")
        result[algo] = {"train_acc_last": float(last.mean()), "train_distinct_last": float(np.nanmean(dlast)),
                        "val_acc_last": float(v1.mean()) if len(v1) else float("nan")}
        color = "tab:green" if algo == "for" else "tab:orange"
        for k, r in enumerate(runs):
            lab = algo if k == 0 else None
            axes[0].plot(*zip(*series(r, "for/accuracy")), color=color, alpha=0.6, label=lab)
            if series(r, "for/diversity"):
                axes[1].plot(*zip(*series(r, "for/diversity")), color=color, alpha=0.6, label=lab)
            if series(r, "val/accuracy"):
                axes[2].plot(*zip(*series(r, "val/accuracy")), "o-", color=color, alpha=0.6, label=lab)
    if not result:
        return {}
    for ax, title in zip(axes, ["train accuracy (fresh samples)", "distinct correct plans / solved problem",
                                "held-out accuracy (8 samples)"]):
        ax.set(xlabel="step", title=f"(d) BlocksWorld{f', slack {slack}' if slack else ''}: {title}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / f"learning_for{suffix}.png")
    (out / f"learning_for{suffix}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return {f"{prefix}{a}_{k}": round(v, 4) for a, r in result.items() for k, v in r.items()}


def report_rm(out: Path) -> dict:
    """learning_rm.md / .png for every finished suite-(b) run; its JSON keys."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    result, lines = {}, ["| pairs | RM held-out accuracy | steps | RM score (first 5 → last 5 steps) | "
                         "rule accuracy, sampled (first 5 → last 5) | val accuracy (greedy) | val RM score |",
                         "|---|---|---|---|---|---|---|"]
    for run in sorted((out / "runs").glob("ppo_rm_*")):
        pairs = run.name[len("ppo_rm_"):]
        rows = [r for r in rows_of(run) if "reward/model_mean" in r]
        rm_rows = [r for r in rows_of(out / "runs" / f"rm_{pairs}") if "val/accuracy" in r]
        if len(rows) < 10:
            continue
        head, tail = rows[:5], rows[-5:]
        mean = lambda rs, k: sum(r[k] for r in rs) / len(rs)  # noqa: E731
        val = [r for r in rows_of(run) if "val/accuracy" in r]
        rm_acc = rm_rows[-1]["val/accuracy"] if rm_rows else float("nan")
        lines.append(f"| {pairs} | {rm_acc:.3f} | {rows[-1]['step']} | {mean(head, 'reward/model_mean'):+.3f} → "
                     f"{mean(tail, 'reward/model_mean'):+.3f} | {mean(head, 'reward/function_mean'):.3f} → "
                     f"{mean(tail, 'reward/function_mean'):.3f} | {val[0]['val/accuracy']:.3f} → "
                     f"{val[-1]['val/accuracy']:.3f} | {val[0].get('val/model_score', float('nan')):+.3f} → "
                     f"{val[-1].get('val/model_score', float('nan')):+.3f} |")
        result[pairs] = {"rm_val_accuracy": rm_acc,
                         "rm_score_delta": mean(tail, "reward/model_mean") - mean(head, "reward/model_mean"),
                         "rule_accuracy_delta": mean(tail, "reward/function_mean") - mean(head, "reward/function_mean"),
                         "val_accuracy_delta": val[-1]["val/accuracy"] - val[0]["val/accuracy"]}
        fig, ax1 = plt.subplots(figsize=(7, 4), dpi=110)
        steps = [r["step"] for r in rows]
        ax1.plot(steps, [r["reward/model_mean"] for r in rows], color="tab:blue", label="RM score (sampled)")
        ax1.set(xlabel="step", ylabel="reward-model score", title=f"PPO against a reward model ({pairs} pairs)")
        ax2 = ax1.twinx()
        ax2.plot(steps, [r["reward/function_mean"] for r in rows], color="tab:orange", label="rule accuracy (sampled)")
        ax2.plot([r["step"] for r in val], [r["val/accuracy"] for r in val], "o--", color="tab:red",
                 label="rule accuracy (greedy, held out)")
        ax2.set(ylabel="rule-verified accuracy", ylim=(0, 1))
        fig.legend(loc="center right", bbox_to_anchor=(0.88, 0.45), fontsize=8)
        fig.tight_layout()
        fig.savefig(out / f"learning_rm_{pairs}.png")
    if result:
        (out / "learning_rm.md").write_text("\n".join(lines) + "\n")
        print("\n".join(lines))
    return {f"rm_{p}_{k}": round(v, 4) for p, r in result.items() for k, v in r.items()}


def keep_metrics(out: Path) -> None:
    """runs/<name>/metrics.jsonl <-> metrics/<name>.jsonl: the run's copy wins; a run folder gone
    (another machine) gets its metrics back from the tracked copy."""
    kept = out / "metrics"
    kept.mkdir(parents=True, exist_ok=True)
    for path in sorted((out / "runs").glob("*/metrics.jsonl")):
        (kept / f"{path.parent.name}.jsonl").write_text(path.read_text())
    for path in sorted(kept.glob("*.jsonl")):
        run = out / "runs" / path.stem
        if not (run / "metrics.jsonl").exists():
            run.mkdir(parents=True, exist_ok=True)
            (run / "metrics.jsonl").write_text(path.read_text())


def report(out: Path) -> dict:
    keep_metrics(out)
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lines = ["| algorithm | steps | val acc before [95 % CI] | val acc after [95 % CI] | Δ | mean s/step |",
             "|---|---|---|---|---|---|"]
    result: dict[str, dict] = {}
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4), dpi=110)
    for name in MATH:
        rows = rows_of(out / "runs" / f"math_{name}")
        val = [(r["step"], r["val/accuracy"], r.get("val/n", 128)) for r in rows if "val/accuracy" in r]
        train = [(r["step"], r["reward/mean"]) for r in rows if "reward/mean" in r]
        secs = [r["timing/step_s"] for r in rows if "timing/step_s" in r]
        label, legend, style = name, name, "o-"
        if len(val) < 2 and name in MATH_RECORDED:
            kept = MATH_RECORDED[name]
            val, train, secs = [(s, a, 128) for s, a in kept["val"]], [], [kept["step_s"]]
            label, legend, style = f"{name} ({kept['note']})", f"{name} (recorded)", "o--"
        if len(val) < 2:
            continue
        (s0, a0, n0), (s1, a1, n1) = val[0], val[-1]
        lo0, hi0 = wilson(a0 * n0, n0)
        lo1, hi1 = wilson(a1 * n1, n1)
        lines.append(f"| {label} | {s1} | {a0:.3f} [{lo0:.3f}, {hi0:.3f}] | {a1:.3f} [{lo1:.3f}, {hi1:.3f}] | "
                     f"{a1 - a0:+.3f} | {sum(secs) / max(len(secs), 1):.0f} |")
        result[name] = {"steps": s1, "before": a0, "after": a1, "delta": a1 - a0, "ci_after": [lo1, hi1]}
        ax1.plot([v[0] for v in val], [v[1] for v in val], style, label=legend)
        k = 5  # moving average of the sampled train reward
        sm = [sum(t[1] for t in train[max(0, i - k + 1):i + 1]) / len(train[max(0, i - k + 1):i + 1])
              for i in range(len(train))]
        if train:
            ax2.plot([t[0] for t in train], sm, label=name)
    ax1.set(xlabel="step", ylabel="greedy val accuracy (128 problems)", title="(a) math: held-out accuracy")
    ax2.set(xlabel="step", ylabel="train reward (sampled, 5-step mean)", title="(a) math: train reward")
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "learning_math.png")
    (out / "learning.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    summary = {f"math_{k}_delta": round(v["delta"], 4) for k, v in result.items()}
    summary.update(report_rm(out))
    for env in AGENT_ENVS:
        summary.update(report_agent(out, env))
    for slack in sorted({0, *(int(p.name.split("_")[1][5:]) for p in (out / "runs").glob("for_slack*_s*"))}):
        summary.update(report_for(out, slack))
    summary.update(report_retrieval(out))
    print(json.dumps(summary))
    return summary


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("suite", choices=["math", "rm", "agent", "for", "retrieval", "report", "agent-run",
                                            "for-run"])
    ap.add_argument("--seeds", type=int, default=3, help="suite (c)'s seeds per estimator")
    ap.add_argument("--algo", choices=sorted({*AGENT, *FOR}), help="agent-run / for-run: what trains (internal)")
    ap.add_argument("--seed", type=int, default=0, help="agent-run: the seed (internal)")
    ap.add_argument("--env", choices=sorted(AGENT_ENVS), default="code", help="suite (c)'s env")
    ap.add_argument("--pairs", choices=["format", "math"], default="format", help="suite (b)'s preference pairs")
    ap.add_argument("--slack", type=int, default=0, help="suite (d): actions allowed beyond the optimal plan")
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--val-every", type=int, default=10)
    ap.add_argument("--only", default=",".join(MATH), help="comma-separated algorithms of suite (a)")
    ap.add_argument("--out", type=Path, default=REPO / "bench_results" / "learning")
    a = ap.parse_args()
    a.out.mkdir(parents=True, exist_ok=True)
    if a.suite == "agent-run":
        agent_run(a.out, a.env, a.algo, a.seed, a.steps)
        return 0
    if a.suite == "for-run":
        for_run(a.out, a.algo, a.seed, a.steps, a.slack)
        return 0
    if a.suite == "agent":
        run_agent(a.out, a.env, a.steps, a.seeds)
    if a.suite == "for":
        run_for(a.out, a.steps, a.seeds, a.slack)
    if a.suite == "retrieval":
        run_retrieval(a.out, a.steps, a.seeds)
    if a.suite == "math":
        run_math(a.out, a.steps, a.only.split(","), a.val_every)
    if a.suite == "rm":
        run_rm(a.out, a.steps, a.val_every, a.pairs)
    report(a.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
