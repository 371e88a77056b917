"""Who runs where: Ray placement for the actor, reference and rollout roles.

Hybrid (colocated) placement, the default: one placement group with one bundle per
data-parallel rank. The actor and the reference policy share one process per bundle (colocated
roles); the rollout engine runs on the same bundles in a process of its own (vLLM on CPU
disables torch's thread control for its whole process, and on GPU it owns its memory pool).
Phases alternate, so roles sharing a bundle do not compete: the engine sleeps while training.
A tenth of every bundle is reserved for helper actors (env actors): they run inside the same
placement group, so on a machine whose CPUs the bundles take entirely (2 cores, 2 ranks) they are
still scheduled.
"""
from __future__ import annotations

from dataclasses import dataclass

import ray

from orchestrator.config import Config
from orchestrator.resources import HelperSlots, ResourcePool, init_ray
from orchestrator.worker_group import WorkerGroup
from workers.actor import ActorWorker
from workers.critic import CriticWorker
from workers.quiet import ENGINE_ENV
from workers.rollout import RolloutWorker
from workers.weight_sync import BucketedWeightSync, WeightSync, make_probe

# Logical shares of one hybrid bundle (Ray CPUs/GPUs; phases alternate, so they are not contended).
SHARE_TRAINER, SHARE_ROLLOUT, SHARE_HELPERS = 0.5, 0.4, 0.1

PROBE_TEXT = ("Question: A farmer has 12 sheep and buys 7 more. How many sheep does the farmer have?\n"
              "Answer: The farmer has 12 + 7 = 19 sheep. #### 19")


@dataclass
class Workers:
    pool: ResourcePool
    actor: object            # role view of the actor group
    ref: object | None       # role view of the reference policy (None without a KL term)
    critic: object | None    # role view of the value model (None unless the estimator takes values)
    rollout: WorkerGroup
    weight_sync: WeightSync
    groups: list
    helpers: HelperSlots     # the bundles' reserve for helper actors (env actors)
    shares: dict             # role -> Ray resources its workers hold (cost accounting)

    def shutdown(self) -> None:
        for g in self.groups:
            try:
                g.shutdown()
            except Exception:  # noqa: BLE001 - best effort at teardown
                pass
        self.pool.shutdown()


def build_workers(cfg: Config, model_path: str, tokenizer, with_critic: bool = False) -> Workers:
    r = cfg.ray
    init_ray(address=r.address, num_cpus=r.num_cpus, object_store_mb=r.object_store_mb, dashboard=r.dashboard)
    gpus = 1.0 if ray.cluster_resources().get("GPU", 0) >= cfg.actor.world_size else 0.0
    a = cfg.actor
    pool = ResourcePool(a.world_size, cpus_per_bundle=a.cpus_per_worker, gpus_per_bundle=gpus, name="hybrid")
    # lora_sync tells the trainer backend what a weight sync carries (backends/fsdp.py).
    actor_cfg = {**_as_dict(a), "dtype": cfg.model.dtype, "lora_sync": cfg.weight_sync.lora_mode}
    algo_cfg = _as_dict(cfg.algorithm)
    roles = {"actor": (ActorWorker, dict(model_path=model_path, actor_cfg=actor_cfg, algo_cfg=algo_cfg,
                                         trainable=True, seed=cfg.trainer.seed))}
    if a.kl_coef > 0 or cfg.algorithm.kl_in_reward:
        # The reference is the frozen base model: no LoRA layers (a fresh LoRA would equal it anyway).
        roles["ref"] = (ActorWorker, dict(model_path=model_path, actor_cfg={**actor_cfg, "lora_rank": 0},
                                          algo_cfg=algo_cfg, trainable=False, seed=cfg.trainer.seed))
    if with_critic:  # same processes as the actor: phases alternate, and the process group is shared
        critic_cfg = {**_as_dict(cfg.critic), "dtype": cfg.model.dtype, "backend": a.backend, "zero_stage": a.zero_stage}
        roles["critic"] = (CriticWorker, dict(model_path=model_path, critic_cfg=critic_cfg, seed=cfg.trainer.seed))
    trainers = WorkerGroup(pool, roles, name="trainer", num_cpus_per_worker=a.cpus_per_worker * SHARE_TRAINER,
                           num_gpus_per_worker=gpus * SHARE_TRAINER, call_timeout_s=r.call_timeout_s)
    ro = cfg.rollout
    engine_kwargs = dict(dtype=ro.dtype, max_model_len=ro.max_model_len, kv_cache_gb=ro.kv_cache_gb,
                         gpu_memory_utilization=ro.gpu_memory_utilization)
    sync_mode = "full" if a.lora_rank == 0 else cfg.weight_sync.lora_mode
    if sync_mode == "adapter":  # the engine serves the synced adapter as a LoRA
        engine_kwargs["lora"] = dict(rank=a.lora_rank, alpha=a.lora_alpha, dropout=a.lora_dropout,
                                     target_modules=list(a.lora_target_modules))
    rollout = WorkerGroup(pool, RolloutWorker, dict(model_path=model_path, engine=ro.engine,
                                                   engine_kwargs=engine_kwargs,
                                                   pad_token_id=tokenizer.pad_token_id or 0, seed=cfg.trainer.seed),
                          name="rollout", num_cpus_per_worker=a.cpus_per_worker * SHARE_ROLLOUT,
                          num_gpus_per_worker=gpus * 0.4, call_timeout_s=r.call_timeout_s,
                          bundle_indices=list(range(ro.num_replicas)),
                          env={**ENGINE_ENV, "OMP_NUM_THREADS": str(max(1, int(a.cpus_per_worker * a.world_size)))})
    actor = trainers.role("actor")
    ref, critic = (trainers.role(r) if r in roles else None for r in ("ref", "critic"))
    # Engines and trainers load in parallel.
    pending = rollout.submit("setup")
    for role in (actor, ref, critic):
        if role is not None:
            role.setup()
    pending.get()
    prompt_ids = tokenizer(PROBE_TEXT.split("Answer:")[0] + "Answer:")["input_ids"]
    full = tokenizer(PROBE_TEXT)["input_ids"][:len(prompt_ids) + cfg.weight_sync.probe_tokens]
    probe = make_probe(prompt_ids, full[len(prompt_ids):], tokenizer.pad_token_id or 0)
    sync = BucketedWeightSync(actor, rollout, int(cfg.weight_sync.bucket_mb * 2**20), probe,
                              verify=cfg.weight_sync.verify, tolerance=cfg.weight_sync.tolerance, mode=sync_mode)
    sync.check()  # engine and trainer start from the same checkpoint: prove it before step 1
    n = a.world_size
    shares = {"trainer": {"CPU": n * a.cpus_per_worker * SHARE_TRAINER, "GPU": n * gpus * SHARE_TRAINER},
              "rollout": {"CPU": ro.num_replicas * a.cpus_per_worker * SHARE_ROLLOUT, "GPU": ro.num_replicas * gpus * 0.4},
              "helpers": {"CPU": n * a.cpus_per_worker * SHARE_HELPERS}}
    return Workers(pool, actor, ref, critic, rollout, sync, [rollout, trainers],
                   pool.helper_slots(a.cpus_per_worker * SHARE_HELPERS), shares)


def _as_dict(section) -> dict:
    from dataclasses import asdict
    return asdict(section)
