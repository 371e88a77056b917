"""Who runs where: Ray placement for the actor, reference and rollout roles.

Hybrid (colocated) placement, the default: one placement group with one bundle per
data-parallel rank. The actor and the reference policy share one process per bundle (colocated
roles); the rollout engine runs on the same bundles in a process of its own (vLLM on CPU
disables torch's thread control for its whole process, and on GPU it owns its memory pool).
Phases alternate, so roles sharing a bundle do not compete: the engine sleeps while training.
A tenth of every bundle is reserved for helper actors (env actors): they run inside the same
placement group, so on a machine whose CPUs the bundles take entirely (2 cores, 2 ranks) they are
still scheduled.

Nodes (`resources.*`): one bundle per device, `resources.nnodes` x `resources.devices_per_node` of
them (= actor.world_size), spread over the nodes by `resources.strategy`; rank r of the trainers
runs on bundle r, the engine replicas on the first bundles. The trainer ranks meet at rank 0's node
address (orchestrator/worker_group.py); on one node everything stays on loopback.

Deadlines (`ray.timeout_*_s`): every call belongs to a phase -- rollout (sampled generation),
validation (greedy generation), train (log-probs, values, updates, the engine's sleep), sync (the
weight push, the engine's wake-up, update and verification calls) -- and fails with an error naming
the phase and the rank when a rank does not answer within that phase's deadline.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import ray

from orchestrator.config import Config
from orchestrator.resources import HelperSlots, ResourcePool, init_ray
from orchestrator.batch import Batch
from orchestrator.worker_group import WorkerGroup
from workers.actor import ActorWorker
from workers.critic import CriticWorker
from workers.reward_model import RewardModelWorker
from workers.quiet import ENGINE_ENV
from workers.rollout import RolloutWorker
from workers.weight_sync import BucketedWeightSync, SharedMemoryWeightSync, WeightSync, make_probe

# Logical shares of one hybrid bundle (Ray CPUs/GPUs; phases alternate, so they are not contended).
SHARE_TRAINER, SHARE_ROLLOUT, SHARE_HELPERS = 0.5, 0.4, 0.1

# Method -> phase of the trainer and rollout groups (calls inside `in_phase(...)` take that phase).
TRAINER_PHASES = {"update": "train", "compute_logprobs": "train", "compute_values": "train", "push_weights": "sync",
                  "write_shared": "sync", "score": "rollout"}  # the reward model scores what was generated


def generate_phase(args: tuple, kwargs: dict) -> str:
    """A generate call's phase: `meta["phase"]` of its batch when set, else 'validation' for greedy
    generation (temperature 0: how the trainer validates) and 'rollout' for sampling."""
    batch = next((v for v in (*args, *kwargs.values()) if isinstance(v, Batch)), None)
    if batch is None:
        return "rollout"
    if batch.meta.get("phase"):
        return str(batch.meta["phase"])
    return "validation" if batch.meta.get("temperature", 1.0) == 0 else "rollout"


ROLLOUT_PHASES = {"generate": generate_phase, "sleep": "train", "wake_up": "sync", "begin_weight_update": "sync",
                  "finish_weight_update": "sync", "weight_report": "sync", "score": "sync", "plan_shared": "sync",
                  "create_shared": "sync", "load_shared": "sync", "remove_shared": "sync"}


def deadlines(ray_cfg) -> dict[str, float]:
    """Phase -> seconds, from the `ray.timeout_*_s` keys."""
    return {"rollout": ray_cfg.timeout_rollout_s, "train": ray_cfg.timeout_train_s, "sync": ray_cfg.timeout_sync_s,
            "validation": ray_cfg.timeout_validation_s}


log = logging.getLogger("hyflow")

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
    reward_model: object | None = None  # scores (prompt, response) rows: `score(batch) -> [B]` (reward.model.*)
    extra_pools: list = None             # pools of their own (a separate reward model)

    def shutdown(self) -> None:
        try:
            self.weight_sync.shutdown()  # removes a shared-memory buffer while its workers still live
        except Exception:  # noqa: BLE001 - best effort at teardown
            pass
        for g in self.groups:
            try:
                g.shutdown()
            except Exception:  # noqa: BLE001 - best effort at teardown
                pass
        for pool in [self.pool, *(self.extra_pools or [])]:
            pool.shutdown()


def build_workers(cfg: Config, model_path: str, tokenizer, with_critic: bool = False) -> Workers:
    r = cfg.ray
    init_ray(address=r.address, num_cpus=r.num_cpus, object_store_mb=r.object_store_mb, dashboard=r.dashboard)
    gpus = 1.0 if ray.cluster_resources().get("GPU", 0) >= cfg.actor.world_size else 0.0
    a, res = cfg.actor, cfg.resources
    pool = ResourcePool(a.world_size, cpus_per_bundle=a.cpus_per_worker, gpus_per_bundle=gpus,
                        strategy=res.strategy, name="hybrid")
    nodes = len(set(pool.bundle_nodes()))
    check_transport(cfg, nodes == 1, gpus > 0)
    log.info("placement: %d bundle(s) on %d node(s), %s: %s", pool.n_bundles, nodes, res.strategy, pool.layout())
    if res.nnodes is not None and nodes != res.nnodes:
        log.warning("placement: resources.nnodes=%d but Ray placed the %d bundles on %d node(s) (strategy %s); "
                    "use STRICT_SPREAD / STRICT_PACK to make Ray keep to a layout", res.nnodes, pool.n_bundles,
                    nodes, res.strategy)
    timeouts = deadlines(r)
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
    rm = cfg.reward.model
    rm_spec = reward_model_role(cfg, tokenizer) if rm.path else None
    if rm_spec and rm.placement == "colocate":  # scoring runs between generation and training
        roles["rm"] = rm_spec
    # A rank computes with as many threads as whole CPUs its bundle holds (1 rank x 2 threads measured
    # faster and ~3.5 GB smaller than 2 ranks x 1 thread on 2 cores, BENCHMARKS.md).
    trainers = WorkerGroup(pool, roles, name="trainer", num_cpus_per_worker=a.cpus_per_worker * SHARE_TRAINER,
                           num_gpus_per_worker=gpus * SHARE_TRAINER, call_timeout_s=r.call_timeout_s,
                           deadlines=timeouts, phases=TRAINER_PHASES,
                           env={"OMP_NUM_THREADS": str(max(1, int(a.cpus_per_worker)))})
    ro = cfg.rollout
    sync_mode = "full" if a.lora_rank == 0 else cfg.weight_sync.lora_mode
    rollout = rollout_group(cfg, pool, model_path, tokenizer)
    rm_pool = rm_group = None
    if rm_spec and rm.placement == "separate":
        rm_pool = ResourcePool(rm.world_size, cpus_per_bundle=a.cpus_per_worker, gpus_per_bundle=gpus,
                               strategy=res.strategy, name="reward-model")
        rm_group = WorkerGroup(rm_pool, *rm_spec, name="reward_model", call_timeout_s=r.call_timeout_s,
                               deadlines=timeouts, phases=TRAINER_PHASES)
    actor = trainers.role("actor")
    ref, critic, reward_model = (trainers.role(r) if r in roles else None for r in ("ref", "critic", "rm"))
    reward_model = rm_group or reward_model
    # Engines and trainers load in parallel.
    pending = rollout.submit("setup")
    for role in (actor, ref, critic, reward_model):
        if role is not None:
            role.setup()
    pending.get()
    prompt_ids = tokenizer(PROBE_TEXT.split("Answer:")[0] + "Answer:")["input_ids"]
    full = tokenizer(PROBE_TEXT)["input_ids"][:len(prompt_ids) + cfg.weight_sync.probe_tokens]
    probe = make_probe(prompt_ids, full[len(prompt_ids):], tokenizer.pad_token_id or 0)
    sync = make_weight_sync(cfg, actor, rollout, probe, sync_mode, one_node=nodes == 1, on_gpu=gpus > 0)
    # Engine and trainer start from the same checkpoint: prove it before step 1 (absolute probe
    # check); an engine in another dtype than the trainer only records its probe baseline.
    sync.check() if cfg.rollout.dtype == cfg.model.dtype else sync.baseline()
    n = a.world_size
    shares = {"trainer": {"CPU": n * a.cpus_per_worker * SHARE_TRAINER, "GPU": n * gpus * SHARE_TRAINER},
              "rollout": {"CPU": ro.num_replicas * a.cpus_per_worker * SHARE_ROLLOUT, "GPU": ro.num_replicas * gpus * 0.4},
              "helpers": {"CPU": n * a.cpus_per_worker * SHARE_HELPERS}}
    if rm_group is not None:
        shares["reward_model"] = {"CPU": rm.world_size * a.cpus_per_worker, "GPU": rm.world_size * gpus}
    return Workers(pool, actor, ref, critic, rollout, sync, [rollout, trainers] + ([rm_group] if rm_group else []),
                   pool.helper_slots(a.cpus_per_worker * SHARE_HELPERS), shares, reward_model,
                   [rm_pool] if rm_pool else [])


def check_transport(cfg: Config, one_node: bool, on_gpu: bool) -> None:
    """weight_sync.transport=ipc needs GPUs on one node: refused as soon as the placement is known,
    before any worker starts."""
    if cfg.weight_sync.transport == "ipc" and not (on_gpu and one_node):
        raise ValueError("weight_sync.transport=ipc shares CUDA memory: it needs the trainer ranks and the "
                         f"engines on the GPUs of one node (here: {'GPUs' if on_gpu else 'no GPU'}, "
                         f"{'one node' if one_node else 'several nodes'}); use auto")


def make_weight_sync(cfg: Config, actor, rollout, probe, mode: str, one_node: bool,
                     on_gpu: bool = False) -> WeightSync:
    """weight_sync.transport: shared memory when every trainer rank and engine is on one node and
    the payload is full weights (auto falls back to the object store otherwise), CUDA IPC handles
    when asked for (GPUs, one node), else Ray's object store."""
    w = cfg.weight_sync
    kw = dict(verify=w.verify, tolerance=w.tolerance, mode=mode)
    check_transport(cfg, one_node, on_gpu)
    if w.transport == "ipc":
        return BucketedWeightSync(actor, rollout, int(w.bucket_mb * 2**20), probe, via="ipc", **kw)
    if w.transport == "shm" and not one_node:
        raise ValueError("weight_sync.transport=shm needs the trainer ranks and the engines on one node; Ray placed "
                         "them on several (use auto or object_store)")
    if w.transport == "shm" or (w.transport == "auto" and one_node and mode != "adapter"):
        try:
            return SharedMemoryWeightSync(actor, rollout, probe, **kw)
        except OSError as e:  # no room in /dev/shm
            if w.transport == "shm":
                raise
            log.warning("weight sync: shared memory unavailable (%s); using the object store", e)
    return BucketedWeightSync(actor, rollout, int(w.bucket_mb * 2**20), probe, **kw)


def rollout_group(cfg: Config, pool: ResourcePool, model_path: str, tokenizer) -> WorkerGroup:
    """The rollout engines, on the first `rollout.num_replicas` bundles of `pool` (not set up yet);
    also how a dead engine is replaced (orchestrator/recovery.py)."""
    a, ro = cfg.actor, cfg.rollout
    gpus = pool.gpus_per_bundle
    engine_kwargs = dict(dtype=ro.dtype, max_model_len=ro.max_model_len, kv_cache_gb=ro.kv_cache_gb,
                         gpu_memory_utilization=ro.gpu_memory_utilization)
    if a.lora_rank and cfg.weight_sync.lora_mode == "adapter":  # the engine serves the synced adapter
        engine_kwargs["lora"] = dict(rank=a.lora_rank, alpha=a.lora_alpha, dropout=a.lora_dropout,
                                     target_modules=list(a.lora_target_modules))
    return WorkerGroup(pool, RolloutWorker, dict(model_path=model_path, engine=ro.engine, engine_kwargs=engine_kwargs,
                                                 pad_token_id=tokenizer.pad_token_id or 0, seed=cfg.trainer.seed),
                       name="rollout", num_cpus_per_worker=a.cpus_per_worker * SHARE_ROLLOUT,
                       num_gpus_per_worker=gpus * SHARE_ROLLOUT, call_timeout_s=cfg.ray.call_timeout_s,
                       bundle_indices=list(range(ro.num_replicas)), deadlines=deadlines(cfg.ray),
                       phases=ROLLOUT_PHASES, rendezvous=False,  # independent replicas: no process group
                       env={**ENGINE_ENV, "OMP_NUM_THREADS": str(engine_threads(pool, a.cpus_per_worker,
                                                                                ro.num_replicas))})


def reward_model_role(cfg: Config, tokenizer) -> tuple[type, dict]:
    """(class, kwargs) of a reward-model scorer (`reward.model.*`): the folder's scalar head on the
    actor's training backend, frozen, no LoRA; it pads as the folder's config says (what
    `hyflow train-rm` exported), else as the policy's tokenizer does."""
    import json
    from pathlib import Path
    rm, a = cfg.reward.model, cfg.actor
    pad = json.loads((Path(rm.path) / "config.json").read_text()).get("pad_token_id")
    rm_cfg = {**_as_dict(a), "dtype": cfg.model.dtype, "lora_rank": 0, "gradient_checkpointing": False,
              "micro_batch_size": rm.micro_batch_size, "margin": 0.0, "center_coef": 0.0}
    return RewardModelWorker, dict(model_path=str(rm.path), rm_cfg=rm_cfg, seed=cfg.trainer.seed, trainable=False,
                                   pad_token_id=pad if pad is not None else tokenizer.pad_token_id)


def engine_threads(pool: ResourcePool, cpus_per_bundle: float, replicas: int) -> int:
    """Threads of an engine replica: the CPUs of the bundles on its node (the trainers are idle
    while it generates); the fewest over the replicas' nodes."""
    nodes = pool.bundle_nodes()
    return max(1, int(min(nodes.count(nodes[i]) for i in range(replicas)) * cpus_per_bundle))


def _as_dict(section) -> dict:
    from dataclasses import asdict
    return asdict(section)
