"""`hyflow eval`: greedy held-out evaluation of a model or checkpoint on a recipe's task.

    hyflow eval configs/gigpo_alfworld.yaml --checkpoint runs/gigpo_alfworld/checkpoints/step_20 env.val_groups=128

Reports math accuracy, or agent success overall and per task type (and the env's own score),
as one JSON object on stdout. Only rollout engines are started: no trainer, no optimizer.
"""
from __future__ import annotations

import copy
from functools import partial
from pathlib import Path

from orchestrator.config import Config, ConfigError
from orchestrator.dumps import write_jsonl
from orchestrator.model_prep import resolve_model_path
from orchestrator.resources import ResourcePool, init_ray
from orchestrator.tasks import make_task, sampling_meta
from orchestrator.worker_group import WorkerGroup
from workers.quiet import ENGINE_ENV
from workers.rollout import RolloutWorker, trim_padding


def evaluate_for(cfg: Config, model_path: str, generations: str | None) -> dict:
    """FoR recipes: sample the domain's validation problems from P_F (the FoR trainer's own
    validation, in a scratch run directory), no training."""
    import shutil
    import tempfile

    from orchestrator.for_trainer import ForTrainer
    if cfg.for_.val_problems < 1:
        raise ConfigError("for_.val_problems: must be >= 1 to evaluate a FoR recipe, got 0")
    scratch = tempfile.mkdtemp(prefix="hyflow-eval-")
    cfg.model.path, cfg.trainer.output_dir, cfg.trainer.resume, cfg.trainer.progress = model_path, scratch, False, False
    cfg.trainer.loggers = ["console"]
    trainer = ForTrainer(cfg)
    try:
        metrics = trainer.validate()
        val = Path(scratch) / "val" / "step_0.jsonl"
        if generations and val.exists():
            shutil.copyfile(val, generations)
        return {"model": model_path, "task": f"for/{cfg.for_.domain}", **metrics}
    finally:
        trainer.shutdown()
        shutil.rmtree(scratch, ignore_errors=True)


class CheckpointError(ValueError):
    """--checkpoint does not name a model folder; the message says what is missing."""


def resolve_checkpoint(path: str) -> str:
    """An HF model folder to evaluate: `path` itself, or a checkpoint's `hf/` (checkpoints/step_N).
    Raises CheckpointError naming what the folder lacks."""
    p = Path(path)
    if not p.is_dir():
        raise CheckpointError(f"--checkpoint {path}: no such folder")
    candidates = [p, p / "hf"]
    for c in candidates:
        if (c / "config.json").is_file():
            missing = model_folder_missing(c)
            if missing:
                raise CheckpointError(f"--checkpoint {path}: {c} is incomplete, it lacks {', '.join(missing)}")
            return str(c)
    raise CheckpointError(f"--checkpoint {path}: neither it nor {p / 'hf'} is an HF model folder (no config.json); "
                          f"pass a checkpoint folder (runs/NAME/checkpoints/step_N) or its hf/ subfolder")


def model_folder_missing(folder: Path) -> list[str]:
    """What an HF causal-LM folder lacks to be loaded: weights and tokenizer files."""
    missing = []
    if not any(folder.glob("*.safetensors")) and not any(folder.glob("*.bin")):
        missing.append("weights (*.safetensors)")
    if not (folder / "tokenizer.json").is_file() and not (folder / "tokenizer_config.json").is_file():
        missing.append("tokenizer files (tokenizer.json / tokenizer_config.json)")
    return missing


def evaluate(cfg: Config, checkpoint: str | None = None, generations: str | None = None) -> dict:
    """The recipe's own task, greedy and held-out: math accuracy, agent success, or (FoR recipes)
    the FoR domain's accuracy / diversity over its validation problems. `generations`: a JSON-lines
    file for what the model generated (the dump rows, orchestrator/dumps.py). With data.val_path the
    whole file is evaluated."""
    from transformers import AutoTokenizer

    cfg = copy.deepcopy(cfg)
    if cfg.data.val_path:
        cfg.data.val_size = 10**9  # every row of the file
    model_path = checkpoint or resolve_model_path(cfg.model.path)
    if cfg.for_.enabled:
        return evaluate_for(cfg, model_path, generations)
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    r, ro = cfg.ray, cfg.rollout
    init_ray(address=r.address, num_cpus=r.num_cpus, object_store_mb=r.object_store_mb, dashboard=r.dashboard)
    pool = ResourcePool(ro.num_replicas, cpus_per_bundle=cfg.actor.cpus_per_worker, name="eval")
    rollout = WorkerGroup(pool, RolloutWorker, dict(
        model_path=model_path, engine=ro.engine, pad_token_id=tokenizer.pad_token_id or 0, seed=cfg.trainer.seed,
        engine_kwargs=dict(dtype=ro.dtype, max_model_len=ro.max_model_len, kv_cache_gb=ro.kv_cache_gb,
                           gpu_memory_utilization=ro.gpu_memory_utilization)),
        name="rollout", num_cpus_per_worker=cfg.actor.cpus_per_worker * 0.9, call_timeout_s=r.call_timeout_s,
        env={**ENGINE_ENV, "OMP_NUM_THREADS": str(max(1, int(cfg.actor.cpus_per_worker)))})
    task = None
    try:
        rollout.setup()
        task = make_task(cfg, tokenizer, partial(sampling_meta, ro, tokenizer.eos_token_id), train=False,
                         helpers=pool.helper_slots(cfg.actor.cpus_per_worker * 0.1))
        metrics = task.validate(lambda prompts: trim_padding(rollout.generate(prompts)))
        if generations:
            write_jsonl(Path(generations), task.val_rows, cfg.trainer.dump_max_chars)
        return {"model": model_path, **metrics}
    finally:
        if task is not None:
            task.close()
        rollout.shutdown()
        pool.shutdown()
