"""Suite (e) of bench/learning.py (issue #10's (d)): Step-GRPO vs plain GRPO on retrieval, scored free-running.

    python bench/learning.py retrieval --seeds 1 --steps 15   # -> bench_results/learning/learning_retrieval.{md,png}
    python bench/learning.py report

Both sides train the embedded SmolLM2-135M on the same 368 training questions of the generated
world (envs/retrieval), with the same prompts and tags, and are scored on the same 32 held-out
questions played free-running in the kbqa env (greedy; the model's own sub-questions go to the
real BM25 / table retrieval; success = the answer's token recall of the gold is 1):
- step_grpo: configs/step_grpo_retrieval.yaml, teacher-forced step states with R1-Router's step
  rewards (0.5 cos + 0.5 right KB; the answer's recall), GRPO inside each state's rollouts;
- grpo: configs/grpo_retrieval.yaml, whole episodes in the kbqa env, the outcome (answer) reward
  only, GRPO over each question's episodes.
Both start from the same warmed model (`warm_model`): the embedded SmolLM2-135M fine-tuned for
WARM_STEPS supervised steps on the gold step responses (`envs.retrieval.task.gold_response`) of the
first WARM_QUESTIONS training questions. Unwarmed, the 135M model never writes the tags (step reward
0.000 over every sample of the first step, held-out success 0.003), so neither method has a signal;
R1-Router starts from a 7B instruct model that follows the format.
Equal steps; per step Step-GRPO samples 8 states x 4 = 32 responses, GRPO 2 questions x 4 episodes
of up to 6 turns (the table reports the responses each side generated). The GRPO run's own
validation gives the held-out success before (step 0, the warmed model) and after; the Step-GRPO
run's final checkpoint is scored by `hyflow eval configs/grpo_retrieval.yaml --checkpoint ...`.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RECIPES = {"step_grpo": "configs/step_grpo_retrieval.yaml", "grpo": "configs/grpo_retrieval.yaml"}
EVAL_RECIPE = "configs/grpo_retrieval.yaml"


def _rows(run: Path) -> list[dict]:
    path = run / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def _call(args: list[str], log: Path, stdout: Path | None = None) -> int:
    """Run a hyflow CLI command, stderr (and stdout unless `stdout` names a file) appended to `log`."""
    print(f"[learning] {' '.join(args[3:])}", flush=True)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    with open(log, "a") as err:
        if stdout is None:
            return subprocess.call(args, cwd=REPO, stdout=err, stderr=subprocess.STDOUT, env=env)
        with open(stdout, "w") as out:
            return subprocess.call(args, cwd=REPO, stdout=out, stderr=err, env=env)


WARM_QUESTIONS, WARM_STEPS, WARM_LR, WARM_BATCH = 64, 40, 3e-5, 8


def warm_model(out: Path) -> str:
    """The embedded model after WARM_STEPS AdamW steps of cross-entropy on gold step responses (the
    response only) of the first WARM_QUESTIONS training questions' step states: the format, and
    what a gold step looks like; made once (out/warm_model), reused by every run."""
    folder = out / "warm_model"
    if (folder / "warmed.json").exists():
        return str(folder)
    import random
    import shutil

    from transformers import AutoTokenizer
    sys.path.insert(0, str(REPO))
    from envs.retrieval.task import build_prompt, gold_response, split_examples, step_states
    from orchestrator.data import encode_prompt
    from orchestrator.model_prep import resolve_model_path
    from tests.learning_tasks import fit
    shutil.copytree(resolve_model_path("smollm2-135m-instruct"), folder, dirs_exist_ok=True,
                    ignore=shutil.ignore_patterns("hyflow_manifest.json"))  # the weights change
    tok = AutoTokenizer.from_pretrained(folder)
    train, _ = split_examples(400, 0, 32)
    pairs = [(encode_prompt(tok, build_prompt(st), True),
              tok(gold_response(st), add_special_tokens=False)["input_ids"] + [tok.eos_token_id])
             for ex in train[:WARM_QUESTIONS] for st in step_states(ex)]
    rng = random.Random(0)

    def batch():
        chosen = [rng.choice(pairs) for _ in range(WARM_BATCH)]
        return [p for p, _ in chosen], [a for _, a in chosen]
    print(f"[learning] warming the embedded model: {WARM_STEPS} steps on {len(pairs)} gold steps", flush=True)
    fit(str(folder), batch, WARM_STEPS, lr=WARM_LR)
    (folder / "warmed.json").write_text(json.dumps({"questions": WARM_QUESTIONS, "steps": WARM_STEPS, "lr": WARM_LR,
                                                    "batch": WARM_BATCH, "pairs": len(pairs)}) + "\n")
    return str(folder)


def run_retrieval(out: Path, steps: int, seeds: int) -> None:
    """Warm the model, train each (seed, side) to `steps` from it (skipping finished runs), then
    eval Step-GRPO's checkpoint."""
    model = warm_model(out)
    for seed in range(seeds):
        for side, recipe in RECIPES.items():
            name = f"retrieval_{side}_s{seed}"
            run = out / "runs" / name
            if not any(r.get("step") == steps and "timing/step_s" in r for r in _rows(run)):
                _call([sys.executable, "-m", "orchestrator.cli", "train", recipe, f"model.path={model}",
                       f"trainer.total_steps={steps}",
                       f"trainer.output_dir={run}", f"trainer.experiment_name={name}", f"trainer.seed={seed}",
                       f"env.seed={1000 * seed}", f"trainer.val_every={steps}", f"trainer.save_every={steps}",
                       "trainer.keep_last=1", "trainer.progress=false", "trainer.overwrite=true"], out / f"{name}.log")
            result = out / f"{name}_eval.json"
            if side == "step_grpo" and not result.exists():
                _call([sys.executable, "-m", "orchestrator.cli", "eval", EVAL_RECIPE, "--checkpoint",
                       str(run / "checkpoints" / f"step_{steps}")], out / f"{name}.log", stdout=result)


def _eval_of(out: Path, side: str, seed: int) -> tuple[dict | None, dict | None]:
    """(held-out metrics before, after) of one run: the GRPO run's own validations, or (None, the
    eval of Step-GRPO's final checkpoint)."""
    if side == "grpo":
        val = [r for r in _rows(out / "runs" / f"retrieval_grpo_s{seed}") if "val/success_rate" in r]
        return (val[0], val[-1]) if len(val) >= 2 else (None, None)
    path = out / f"retrieval_step_grpo_s{seed}_eval.json"
    try:
        return None, json.loads(path.read_text())
    except (OSError, ValueError, IndexError):
        return None, None


def report_retrieval(out: Path) -> dict:
    """learning_retrieval.md / .png from the finished runs; returns the summary keys."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    lines = ["| method | seeds | steps | responses generated | train reward, first 3 → last 3 steps | held-out "
             "success (free-running, 32) before → after | held-out answer recall, after | turns per held-out "
             "episode, after |", "|---|---|---|---|---|---|---|---|"]
    summary: dict[str, float] = {}
    # before training: the warmed model's held-out success, from the GRPO run's step-0 validation
    base = next((b for b, _ in (_eval_of(out, "grpo", int(run.name.rsplit("_s", 1)[1]))
                                for run in sorted((out / "runs").glob("retrieval_grpo_s*"))) if b), None)
    fig, ax = plt.subplots(figsize=(6, 4), dpi=110)
    for side in RECIPES:
        runs = sorted((out / "runs").glob(f"retrieval_{side}_s*"))
        rows = [[r for r in _rows(run) if "reward/mean" in r] for run in runs]
        evals = [_eval_of(out, side, int(run.name.rsplit("_s", 1)[1])) for run in runs]
        keep = [(r, e) for r, e in zip(rows, evals) if r and e[1] is not None]
        if not keep:
            continue
        rows, evals = [k[0] for k in keep], [k[1] for k in keep]
        reward = np.array([[x["reward/mean"] for x in r[:min(map(len, rows))]] for r in rows])
        samples = np.mean([sum(x.get("cost/samples", 0) for x in r) for r in rows])
        after = np.array([a["val/success_rate"] for _, a in evals])
        recall = np.array([a.get("val/task_score_mean", float("nan")) for _, a in evals])
        turns = np.array([a.get("val/length_mean", float("nan")) for _, a in evals])
        first, last = reward[:, :3].mean(1), reward[:, -3:].mean(1)
        before = f"{base['val/success_rate']:.3f}" if base else "?"
        lines.append(f"| {side} | {len(rows)} | {reward.shape[1]} | {samples:.0f} | {first.mean():.3f} → "
                     f"{last.mean():.3f} ± {last.std():.3f} | {before} → {after.mean():.3f} ± {after.std():.3f} | "
                     f"{np.nanmean(recall):.3f} | {np.nanmean(turns):.2f} |")
        summary.update({f"retrieval_{side}_success": round(float(after.mean()), 4),
                        f"retrieval_{side}_reward_delta": round(float(last.mean() - first.mean()), 4)})
        x = np.arange(1, reward.shape[1] + 1)
        ax.plot(x, reward.mean(0), label=f"{side} ({'step reward' if side == 'step_grpo' else 'outcome reward'})")
    if not summary:
        plt.close(fig)
        return {}
    if base:
        summary["retrieval_base_success"] = round(float(base["val/success_rate"]), 4)
    ax.set(xlabel="step", ylabel="train reward (sampled)", title="(e) retrieval: Step-GRPO vs GRPO")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "learning_retrieval.png")
    (out / "learning_retrieval.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return summary
