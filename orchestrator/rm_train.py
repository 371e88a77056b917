"""`hyflow train-rm`: train a reward model on preference pairs (Bradley–Terry).

    hyflow train-rm configs/rm_math.yaml [key.path=value ...]
    python -m orchestrator.rm_train configs/rm_math.yaml [key.path=value ...]      # the same

Data (`rm.train_path`, `rm.val_path`): rows {"prompt", "chosen", "rejected"} as in the common HF
preference datasets: `prompt` a string or chat messages, `chosen` / `rejected` a string or the
assistant message(s) ([{"role": "assistant", "content": ...}]); .jsonl/.json, .parquet or a
`datasets` folder (orchestrator/data_files.py reads them; PATH::SPLIT picks a split). Every row
is checked before Ray starts: a bad one stops the run with an error naming the key, the file and
the row (0-based, as `dataset[i]`). Without `rm.val_path`, `rm.val_fraction` of the distinct
prompts is held out (all pairs of a prompt stay on one side).

Sequences: a pair's two sequences are the prompt as the policy sees it (`model.chat_template`:
the chat template with the generation prompt, orchestrator/data.encode_prompt) + the response
tokens + EOS, i.e. what a rollout holds. The model: `model.path` with a scalar head, trained on
`actor.world_size` ranks through the `TrainingBackend` (actor.backend, lr, betas, weight_decay,
grad_clip, micro_batch_size, gradient_checkpointing; `model.dtype`), in a Ray worker group
(workers/reward_model.py). Loss: algorithms/reward_model.py (rm.margin, rm.center_coef).

Outputs in `rm.output_dir`: config.yaml; metrics.jsonl (one row per step: train/loss,
train/accuracy, train/margin, grad_norm, ...; val/loss, val/accuracy, val/margin at step 0, at
each epoch's end and every rm.eval_every steps); val_scores.jsonl (the final scores of each
held-out pair); summary.json; hf/ (an AutoModelForSequenceClassification folder, num_labels=1).
"""
from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

from orchestrator.config import Config, ConfigError, describe, load_config, save_yaml
from orchestrator.config_schema import RMConfig

log = logging.getLogger("hyflow")

RM_OUTPUTS = ("config.yaml", "metrics.jsonl", "val_scores.jsonl", "summary.json", "hf")


class PreferenceDataError(ValueError):
    """A preference file that cannot be used; the message names the key, the file and the row."""


# ------------------------------------------------------------------ data
def check_pair(raw, where: str) -> dict:
    """One raw row -> {"prompt": chat messages, "chosen": str, "rejected": str}, or a
    PreferenceDataError naming `where` (key, file, row) and what is wrong."""
    if not isinstance(raw, dict):
        raise PreferenceDataError(f"{where}: expected an object with 'prompt', 'chosen', 'rejected', "
                                  f"got {type(raw).__name__}")
    for k in ("prompt", "chosen", "rejected"):
        if k not in raw:
            raise PreferenceDataError(f"{where}: '{k}' is missing (has {sorted(raw)})")
        if raw[k] is None:
            raise PreferenceDataError(f"{where}: '{k}' is null")
    prompt = raw["prompt"]
    if isinstance(prompt, str):
        if not prompt.strip():
            raise PreferenceDataError(f"{where}: 'prompt' is empty")
        prompt = [{"role": "user", "content": prompt}]
    elif isinstance(prompt, list) and prompt:
        for k, m in enumerate(prompt):
            if not (isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)):
                raise PreferenceDataError(f"{where}: 'prompt' message {k} needs string 'role' and 'content', "
                                          f"got {m!r:.80}")
        if not any(m["content"].strip() for m in prompt):
            raise PreferenceDataError(f"{where}: 'prompt' has no text")
        prompt = [{"role": m["role"], "content": m["content"]} for m in prompt]
    else:
        raise PreferenceDataError(f"{where}: 'prompt' must be a string or chat messages, got {_shown(prompt)}")
    return {"prompt": prompt, "chosen": _response(raw["chosen"], "chosen", where),
            "rejected": _response(raw["rejected"], "rejected", where)}


def _response(value, key: str, where: str) -> str:
    if isinstance(value, list):  # conversational: the assistant message(s) after the prompt
        if not value or not all(isinstance(m, dict) and m.get("role") == "assistant"
                                and isinstance(m.get("content"), str) for m in value):
            raise PreferenceDataError(f"{where}: '{key}' as messages must be assistant messages with string "
                                      f"'content', got {value!r:.80}")
        value = "\n".join(m["content"] for m in value)
    elif not isinstance(value, str):
        raise PreferenceDataError(f"{where}: '{key}' must be a string or assistant messages, got {_shown(value)}")
    if not value.strip():
        raise PreferenceDataError(f"{where}: '{key}' is empty")
    return value


def _shown(value) -> str:
    text = repr(value)
    return f"{type(value).__name__} {text if len(text) <= 40 else text[:37] + '...'}"


def load_pairs(path: str, key: str) -> list[dict]:
    """Every row of a preference file, checked (check_pair); errors name key, file and row."""
    from orchestrator.data_files import read_records
    try:
        raw, where = read_records(path, key)
    except ValueError as e:
        raise PreferenceDataError(str(e)) from None
    if not raw:
        raise PreferenceDataError(f"{where} holds no rows")
    return [check_pair(r, f"{where} row {i}") for i, r in enumerate(raw)]


def encode_pair(tokenizer, prompt: list[dict], response: str, chat_template: bool = True) -> list[int]:
    """The token ids a reward model scores for (prompt, response): the prompt as the policy sees it
    (chat template + generation prompt), the response, EOS. Use it to score with the exported folder:
    `AutoModelForSequenceClassification.from_pretrained(hf)(torch.tensor([ids])).logits[0, 0]`."""
    from orchestrator.data import encode_prompt
    ids = encode_prompt(tokenizer, prompt, chat_template) + tokenizer(response, add_special_tokens=False)["input_ids"]
    return ids + ([tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else [])


def encode_pairs(rows: list[dict], tokenizer, chat_template: bool, max_length: int, what: str) -> list[dict]:
    """Rows + `chosen_ids` / `rejected_ids` (and `index`: the row in its file); pairs with a
    sequence longer than max_length are dropped with a warning."""
    out, dropped = [], 0
    for i, r in enumerate(rows):
        chosen = encode_pair(tokenizer, r["prompt"], r["chosen"], chat_template)
        rejected = encode_pair(tokenizer, r["prompt"], r["rejected"], chat_template)
        if max(len(chosen), len(rejected)) > max_length:
            dropped += 1
            continue
        out.append({**r, "index": r.get("index", i), "chosen_ids": chosen, "rejected_ids": rejected})
    if dropped:
        log.warning("%s: dropped %d of %d pairs longer than rm.max_length=%d tokens", what, dropped, len(rows),
                    max_length)
    if not out:
        raise PreferenceDataError(f"{what}: every pair is longer than rm.max_length={max_length} tokens")
    return out


def split_by_prompt(rows: list[dict], fraction: float, seed: int) -> tuple[list[dict], list[dict]]:
    """(train, held-out): a seeded `fraction` of the distinct prompts (at least one when fraction
    > 0), with all of their pairs, is held out."""
    for i, r in enumerate(rows):
        r.setdefault("index", i)
    if fraction == 0:
        return rows, []
    keys = list(dict.fromkeys(json.dumps(r["prompt"], sort_keys=True) for r in rows))
    n_val = max(1, int(round(fraction * len(keys))))
    if n_val >= len(keys):
        raise PreferenceDataError(f"rm.val_fraction={fraction} holds out all {len(keys)} distinct prompts of "
                                  "rm.train_path; lower it or give rm.val_path")
    held = {keys[i] for i in np.random.default_rng(seed).permutation(len(keys))[:n_val]}
    val = [r for r in rows if json.dumps(r["prompt"], sort_keys=True) in held]
    return [r for r in rows if json.dumps(r["prompt"], sort_keys=True) not in held], val


# ------------------------------------------------------------------ checks before Ray
def check_config(cfg: Config) -> None:
    rm, a = cfg.rm, cfg.actor
    if not rm.train_path:
        raise ConfigError("rm.train_path: required (a .jsonl/.parquet/datasets folder of {prompt, chosen, rejected} "
                          "rows; make some with `python -m envs.preferences format --out FILE`)")
    if rm.batch_size % a.world_size:
        raise ConfigError(f"rm.batch_size: {rm.batch_size} pairs per step must be divisible by actor.world_size "
                          f"({a.world_size})")
    if a.lora_rank:
        raise ConfigError(f"actor.lora_rank: {a.lora_rank}; reward models train all weights (set actor.lora_rank=0)")


def check_output_dir(rm: RMConfig) -> Path:
    out = Path(rm.output_dir)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"rm.output_dir: {out} exists and is not a folder")
    entries = sorted(p.name for p in out.iterdir()) if out.is_dir() else []
    if entries and not rm.overwrite:
        shown = ", ".join(entries[:5]) + (", ..." if len(entries) > 5 else "")
        raise ConfigError(f"rm.output_dir: {out} is not empty ({shown}); replace it with rm.overwrite=true "
                          "or choose another folder")
    return out


def prepare(cfg: Config):
    """Everything before Ray: config checks, output folder check, tokenizer, the checked and
    tokenized pairs. Returns (model_path, tokenizer, train rows, held-out rows)."""
    from transformers import AutoTokenizer

    from orchestrator.model_prep import resolve_model_path
    check_config(cfg)
    check_output_dir(cfg.rm)
    rm = cfg.rm
    train = load_pairs(rm.train_path, "rm.train_path")
    if rm.val_path:
        val = load_pairs(rm.val_path, "rm.val_path")
        for i, r in enumerate(val):
            r["index"] = i
    else:
        train, val = split_by_prompt(train, rm.val_fraction, rm.seed)
    model_path = resolve_model_path(cfg.model.path)
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    train = encode_pairs(train, tokenizer, cfg.model.chat_template, rm.max_length, "rm.train_path")
    val = encode_pairs(val, tokenizer, cfg.model.chat_template, rm.max_length, "held-out pairs") if val else []
    if rm.epochs and len(train) < rm.batch_size:
        raise ConfigError(f"rm.batch_size: {rm.batch_size} is more than the {len(train)} training pairs")
    return model_path, tokenizer, train, val


# ------------------------------------------------------------------ the run
class RMRun:
    """One reward-model training run; `fit()` trains, evaluates, exports and returns the summary."""

    def __init__(self, cfg: Config):
        self.cfg = cfg
        self.model_path, self.tokenizer, self.train, self.val = prepare(cfg)
        self.out = Path(cfg.rm.output_dir)
        self.out.mkdir(parents=True, exist_ok=True)
        for name in RM_OUTPUTS:  # only a non-empty folder with rm.overwrite=true gets here with these
            p = self.out / name
            shutil.rmtree(p) if p.is_dir() else p.unlink(missing_ok=True)
        save_yaml(cfg, self.out / "config.yaml")
        tok = self.tokenizer  # no pad token: EOS pads (and is skipped when scoring), as in TRL
        self.pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        self.group, self.pool = self._build_group()
        from orchestrator.metrics import MetricsLog
        self.metrics = MetricsLog(self.out)
        self.step, self.val_scores = 0, None

    def _build_group(self):
        import ray

        from orchestrator.resources import ResourcePool, init_ray
        from orchestrator.worker_group import WorkerGroup
        from workers.reward_model import RewardModelWorker
        cfg, a, r = self.cfg, self.cfg.actor, self.cfg.ray
        init_ray(address=r.address, num_cpus=r.num_cpus, object_store_mb=r.object_store_mb, dashboard=r.dashboard)
        gpus = 1.0 if ray.cluster_resources().get("GPU", 0) >= a.world_size else 0.0
        pool = ResourcePool(a.world_size, cpus_per_bundle=a.cpus_per_worker, gpus_per_bundle=gpus, name="reward_model")
        rm_cfg = {**asdict(a), "dtype": cfg.model.dtype, "margin": cfg.rm.margin, "center_coef": cfg.rm.center_coef}
        try:
            group = WorkerGroup(pool, RewardModelWorker, dict(model_path=self.model_path, rm_cfg=rm_cfg,
                                                             pad_token_id=self.pad_id, seed=cfg.rm.seed),
                                name="reward_model", call_timeout_s=r.call_timeout_s)
            info = group.setup()[0]
        except BaseException:
            pool.shutdown()
            raise
        log.info("reward model: %s on %d %s rank(s), setup %.1fs; %d training pairs, %d held out",
                 info["architecture"], a.world_size, a.backend, info["setup_s"], len(self.train), len(self.val))
        return group, pool

    # -------------------------------------------------------------- phases
    def evaluate(self) -> dict:
        """Scores of every held-out pair under the current weights -> val/* metrics."""
        import torch

        from algorithms.reward_model import bradley_terry_loss
        from workers.reward_model import pad_right
        if not self.val:
            return {}
        seqs = [r["chosen_ids"] for r in self.val] + [r["rejected_ids"] for r in self.val]
        scores = self.group.score(pad_right(seqs, self.pad_id))
        chosen, rejected = scores[:len(self.val)], scores[len(self.val):]
        loss, m = bradley_terry_loss(chosen, rejected, self.cfg.rm.margin, self.cfg.rm.center_coef)
        self.val_scores = torch.stack([chosen, rejected], 1).tolist()
        return {"val/loss": float(loss), **{f"val/{k}": float(v) for k, v in m.items()}}

    def train_step(self, rows: list[dict]) -> dict:
        from orchestrator.batch import Batch
        batch = Batch(non_tensors={"chosen_ids": [r["chosen_ids"] for r in rows],
                                   "rejected_ids": [r["rejected_ids"] for r in rows]})
        out = self.group.train_pairs(batch)
        return sum_rank_metrics(out.meta, "train")

    def fit(self) -> dict:
        rm, t0 = self.cfg.rm, time.time()
        steps_per_epoch = len(self.train) // rm.batch_size if rm.epochs else 0
        total = steps_per_epoch * rm.epochs
        first = {"step": 0, "epoch": 0, **self.evaluate()}
        self._log(first, total)
        last = first
        for epoch in range(rm.epochs):
            order = np.random.default_rng([rm.seed, epoch]).permutation(len(self.train))
            for s in range(steps_per_epoch):
                t1 = time.perf_counter()
                rows = [self.train[i] for i in order[s * rm.batch_size:(s + 1) * rm.batch_size]]
                row = self.train_step(rows)
                self.step += 1
                row = {"step": self.step, "epoch": epoch + (s + 1) / steps_per_epoch, **row,
                       "timing/step_s": time.perf_counter() - t1}
                if s + 1 == steps_per_epoch or (rm.eval_every and self.step % rm.eval_every == 0):
                    t1 = time.perf_counter()
                    row.update(self.evaluate())
                    row["timing/eval_s"] = time.perf_counter() - t1
                self._log(row, total)
                last = row
        hf = self.out / "hf"
        self.group.save_hf(str(hf))
        self._write_val_scores()
        summary = {"steps": self.step, "pairs": {"train": len(self.train), "val": len(self.val)},
                   "hf": str(hf), "seconds": time.time() - t0,
                   "first": {k: v for k, v in first.items() if k.startswith("val/")},
                   "final": {k: v for k, v in last.items() if k.startswith(("val/", "train/"))}}
        (self.out / "summary.json").write_text(json.dumps(summary, indent=1))
        log.info("done: reward model %s (val accuracy %s -> %s)", hf, _fmt(first.get("val/accuracy")),
                 _fmt(last.get("val/accuracy")))
        return summary

    def _write_val_scores(self) -> None:
        if not self.val_scores:
            return
        with open(self.out / "val_scores.jsonl", "w") as f:
            for r, (c, rej) in zip(self.val, self.val_scores):
                f.write(json.dumps({"index": r["index"], "chosen_score": c, "rejected_score": rej,
                                    "prompt": r["prompt"], "chosen": r["chosen"], "rejected": r["rejected"]}) + "\n")

    def _log(self, row: dict, total: int) -> None:
        self.metrics.log(row)
        parts = [f"step {row['step']}/{total}"]
        for key, name in (("train/loss", "loss"), ("train/accuracy", "acc"), ("val/loss", "val_loss"),
                          ("val/accuracy", "val_acc"), ("val/margin", "val_margin"), ("timing/step_s", "step_s")):
            if key in row:
                parts.append(f"{name}={row[key]:.3f}")
        log.info("  ".join(parts))

    def shutdown(self) -> None:
        self.metrics.close()
        self.group.shutdown()
        self.pool.shutdown()


def sum_rank_metrics(meta: dict, prefix: str) -> dict:
    """Per-rank contributions -> one row: sums (they are shares of the global mean), except the
    global grad_norm / lr / step_skipped (averaged)."""
    ranks = [v for k, v in sorted(meta.items()) if k.startswith("metrics/rank")]
    return {f"{prefix}/{k}": float(np.mean([r[k] for r in ranks]) if k in ("grad_norm", "lr", "step_skipped")
                                   else np.sum([r[k] for r in ranks])) for k in ranks[0]}


def _fmt(x) -> str:
    return "n/a" if x is None else f"{x:.3f}"


def train_rm(cfg: Config) -> dict:
    """Run `cfg` (checks first, then Ray); returns summary.json's content."""
    run = RMRun(cfg)
    try:
        return run.fit()
    finally:
        run.shutdown()


def main(argv: list[str]) -> int:
    rm_keys = "\n".join(line for line in describe(Config).splitlines() if line.lstrip().startswith("rm."))
    parser = argparse.ArgumentParser(
        prog="hyflow train-rm", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Train a reward model on preference pairs, e.g.\n"
                    "  hyflow train-rm configs/rm_math.yaml rm.epochs=1 rm.output_dir=/tmp/rm",
        epilog="reward-model keys (plus model.* and actor.*: see `hyflow train --help`):\n" + rm_keys)
    parser.add_argument("config", help="YAML recipe (configs/rm_*.yaml)")
    parser.add_argument("overrides", nargs="*", help="key.path=value")
    args = parser.parse_intermixed_args(argv)
    try:
        cfg = load_config(args.config, args.overrides)
        run = RMRun(cfg)
    except (ConfigError, PreferenceDataError, FileNotFoundError) as e:
        print(f"hyflow train-rm: {e}", file=sys.stderr)
        return 2
    try:
        run.fit()
    finally:
        run.shutdown()
    return 0


if __name__ == "__main__":
    from orchestrator.cli import main as cli_main
    sys.exit(cli_main(["train-rm", *sys.argv[1:]]))
