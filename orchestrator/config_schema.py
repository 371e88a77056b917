"""The run configuration's schema: one dataclass per section, each field with its default and one
line of help, and each section's own `validate()` (cross-section checks in `Config.validate`).

Loading, overrides and type checks are in orchestrator/config.py (`load_config`); a new section is a
dataclass here plus a field of `Config`.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, Literal, Optional


class ConfigError(ValueError):
    """A recipe or override that does not fit the schema; the message names the key path."""


def _f(default: Any, help: str) -> Any:
    """A schema field: its default (lists/dicts copied per instance) and its one line of help."""
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: copy.deepcopy(default), metadata={"help": help})
    return field(default=default, metadata={"help": help})


def _check(ok: bool, key: str, msg: str) -> None:
    if not ok:
        raise ConfigError(f"{key}: {msg}")


Dtype = Literal["float32", "bfloat16"]


# ----------------------------------------------------------------------------------- schema
@dataclass
class ModelConfig:
    path: str = _f("smollm2-135m-instruct", "HF model folder or hub id; 'smollm2-135m-instruct' = the embedded model")
    dtype: Dtype = _f("float32", "parameter dtype of the trained (actor) model")
    chat_template: bool = _f(True, "wrap prompts with the tokenizer's chat template")

    def validate(self) -> None:
        _check(bool(self.path.strip()), "model.path", "must not be empty")


@dataclass
class DataConfig:
    generator: Optional[str] = _f(None, "'module:function(n, seed) -> rows' of verl-shaped prompt rows (e.g. envs.retrieval.task:make_dataset)")
    train_path: Optional[str] = _f(None, "prompt rows: .jsonl/.json/.parquet, a datasets save_to_disk or load_dataset "
                                         "folder (PATH::SPLIT picks a split); verl or GSM8K rows; null = generated math")
    val_path: Optional[str] = _f(None, "held-out rows for validation, as train_path (null = the last val_size rows of the source)")
    num_generated: int = _f(4000, "number of math problems to generate when train_path is null")
    difficulty: list[int] = _f([1, 2], "levels of the generated math problems to mix")
    system_prompt: Optional[str] = _f(None, "system message put before every prompt (null = none)")
    max_prompt_tokens: int = _f(256, "prompts longer than this many tokens are dropped")
    batch_size: int = _f(8, "prompts per training step")
    shuffle: bool = _f(True, "shuffle the prompts every epoch")
    seed: int = _f(0, "seed for problem generation, shuffling and the validation split")
    val_size: int = _f(64, "prompts held out for validation (0 = no validation set)")

    def validate(self) -> None:
        _check(self.num_generated >= 1, "data.num_generated", f"must be >= 1, got {self.num_generated}")
        _check(len(self.difficulty) > 0, "data.difficulty", "must list at least one level")
        for i, d in enumerate(self.difficulty):
            _check(d >= 1, f"data.difficulty[{i}]", f"levels start at 1, got {d}")
        _check(self.max_prompt_tokens >= 1, "data.max_prompt_tokens", f"must be >= 1, got {self.max_prompt_tokens}")
        _check(self.batch_size >= 1, "data.batch_size", f"must be >= 1, got {self.batch_size}")
        _check(self.val_size >= 0, "data.val_size", f"must be >= 0, got {self.val_size}")
        if self.train_path is None and self.val_path is None:
            _check(self.val_size < self.num_generated, "data.val_size",
                   f"must be smaller than data.num_generated ({self.num_generated}), got {self.val_size}")


@dataclass
class RolloutConfig:
    engine: Literal["vllm", "hf"] = _f("vllm", "generation engine: vLLM, or HF generate (slow; for parity checks)")
    n: int = _f(4, "samples per prompt (the GRPO group size)")
    max_new_tokens: int = _f(128, "maximum tokens generated per sample")
    temperature: float = _f(1.0, "sampling temperature (0 = greedy)")
    top_p: float = _f(1.0, "nucleus sampling mass, in (0, 1]")
    top_k: int = _f(-1, "sample among the k most likely tokens (-1 = all)")
    dtype: Dtype = _f("float32", "dtype of the engine's copy of the weights")
    kv_cache_gb: float = _f(0.5, "KV-cache size in GiB (CPU engine)")
    gpu_memory_utilization: float = _f(0.5, "fraction of GPU memory the engine may take (GPU engine)")
    max_model_len: int = _f(1024, "maximum prompt + completion length the engine accepts")
    sleep_during_training: bool = _f(True, "free the engine's weights and KV cache while the actor trains (GPU)")
    num_replicas: int = _f(1, "engine replicas (data-parallel generation), placed on the first trainer bundles")

    def validate(self) -> None:
        _check(self.n >= 1, "rollout.n", f"must be >= 1, got {self.n}")
        _check(self.max_new_tokens >= 1, "rollout.max_new_tokens", f"must be >= 1, got {self.max_new_tokens}")
        _check(self.temperature >= 0, "rollout.temperature", f"must be >= 0, got {self.temperature}")
        _check(self.engine != "vllm" or self.temperature <= 2, "rollout.temperature",
               f"vLLM samples at temperatures in [0, 2], got {self.temperature}")
        _check(0 < self.top_p <= 1, "rollout.top_p", f"must be in (0, 1], got {self.top_p}")
        _check(self.top_k == -1 or self.top_k >= 1, "rollout.top_k", f"must be -1 or >= 1, got {self.top_k}")
        _check(self.kv_cache_gb > 0, "rollout.kv_cache_gb", f"must be > 0, got {self.kv_cache_gb}")
        _check(0 < self.gpu_memory_utilization <= 1, "rollout.gpu_memory_utilization",
               f"must be in (0, 1], got {self.gpu_memory_utilization}")
        _check(self.max_model_len >= 1, "rollout.max_model_len", f"must be >= 1, got {self.max_model_len}")
        _check(self.num_replicas >= 1, "rollout.num_replicas", f"must be >= 1, got {self.num_replicas}")


@dataclass
class ActorConfig:
    backend: Literal["fsdp", "deepspeed"] = _f("fsdp", "training backend: torch FSDP2 or DeepSpeed ZeRO")
    zero_stage: int = _f(2, "DeepSpeed ZeRO stage (1, 2 or 3); used when backend is deepspeed")
    lora_rank: int = _f(0, "LoRA rank (0 = full fine-tuning; > 0 trains only peft LoRA adapters)")
    lora_alpha: float = _f(16.0, "LoRA alpha (the update is scaled by lora_alpha / lora_rank)")
    lora_dropout: float = _f(0.0, "dropout on the LoRA branch's input while training")
    lora_target_modules: list[str] = _f(["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
                                        "module names (suffixes) that get LoRA adapters")
    world_size: int = _f(2, "data-parallel training ranks (one Ray actor each)")
    lr: float = _f(1e-6, "AdamW learning rate")
    weight_decay: float = _f(0.0, "AdamW weight decay")
    betas: list[float] = _f([0.9, 0.999], "AdamW betas [beta1, beta2]")
    grad_clip: float = _f(1.0, "clip the global gradient norm to this value")
    ppo_epochs: int = _f(1, "passes over each rollout batch")
    mini_batch_size: int = _f(0, "samples per optimizer step, over all ranks (0 = the whole batch)")
    micro_batch_size: int = _f(4, "samples per forward/backward pass on each rank (gradient accumulation)")
    max_tokens_per_micro_batch: Optional[int] = _f(
        None, "also cap each forward/backward at this many padded tokens (rows x longest sequence; a longer "
              "sequence alone), so long prompts or agent turns do not multiply its memory (verl's "
              "ppo_max_token_len_per_gpu); null = rows only")
    clip_ratio_low: float = _f(0.2, "PPO ratio clip below: ratio >= 1 - clip_ratio_low")
    clip_ratio_high: float = _f(0.2, "PPO ratio clip above: ratio <= 1 + clip_ratio_high")
    dual_clip: Optional[float] = _f(3.0, "dual-clip bound c (> 1) on the loss for negative advantages (null = off)")
    loss_agg: Literal["token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm"] = _f(
        "token-mean", "how per-token losses are reduced to the batch loss")
    kl_coef: float = _f(0.0, "KL-to-reference loss weight (0 = no reference model)")
    kl_estimator: Literal["k1", "k2", "k3"] = _f("k3", "KL estimator used for the KL loss")
    entropy_coef: float = _f(0.0, "entropy bonus weight (0 = none)")
    gradient_checkpointing: bool = _f(False, "recompute activations in the backward pass to save memory")
    cpus_per_worker: float = _f(1.0, "Ray CPUs reserved by each training rank")

    def validate(self) -> None:
        _check(self.world_size >= 1, "actor.world_size", f"must be >= 1, got {self.world_size}")
        _check(self.zero_stage in (1, 2, 3), "actor.zero_stage", f"must be 1, 2 or 3, got {self.zero_stage}")
        _check(self.lora_rank >= 0, "actor.lora_rank", f"must be >= 0, got {self.lora_rank}")
        _check(self.lora_alpha > 0, "actor.lora_alpha", f"must be > 0, got {self.lora_alpha}")
        _check(0 <= self.lora_dropout < 1, "actor.lora_dropout", f"must be in [0, 1), got {self.lora_dropout}")
        _check(len(self.lora_target_modules) > 0, "actor.lora_target_modules", "must list at least one module")
        _check(self.lr > 0, "actor.lr", f"must be > 0, got {self.lr}")
        _check(self.weight_decay >= 0, "actor.weight_decay", f"must be >= 0, got {self.weight_decay}")
        _check(len(self.betas) == 2, "actor.betas", f"must have 2 values, got {len(self.betas)}")
        for i, b in enumerate(self.betas):
            _check(0 <= b < 1, f"actor.betas[{i}]", f"must be in [0, 1), got {b}")
        _check(self.grad_clip > 0, "actor.grad_clip", f"must be > 0, got {self.grad_clip}")
        _check(self.ppo_epochs >= 1, "actor.ppo_epochs", f"must be >= 1, got {self.ppo_epochs}")
        _check(self.mini_batch_size >= 0, "actor.mini_batch_size", f"must be >= 0, got {self.mini_batch_size}")
        _check(self.micro_batch_size >= 1, "actor.micro_batch_size", f"must be >= 1, got {self.micro_batch_size}")
        _check(self.max_tokens_per_micro_batch is None or self.max_tokens_per_micro_batch >= 1,
               "actor.max_tokens_per_micro_batch", f"must be >= 1 or null, got {self.max_tokens_per_micro_batch}")
        _check(0 <= self.clip_ratio_low < 1, "actor.clip_ratio_low", f"must be in [0, 1), got {self.clip_ratio_low}")
        _check(self.clip_ratio_high >= 0, "actor.clip_ratio_high", f"must be >= 0, got {self.clip_ratio_high}")
        if self.dual_clip is not None:
            _check(self.dual_clip > 1, "actor.dual_clip", f"must be > 1 (or null), got {self.dual_clip}")
        _check(self.kl_coef >= 0, "actor.kl_coef", f"must be >= 0, got {self.kl_coef}")
        _check(self.cpus_per_worker > 0, "actor.cpus_per_worker", f"must be > 0, got {self.cpus_per_worker}")
        if self.mini_batch_size > 0:
            # Each optimizer step is split evenly across the ranks.
            _check(self.mini_batch_size % self.world_size == 0, "actor.mini_batch_size",
                   f"{self.mini_batch_size} must be divisible by actor.world_size ({self.world_size})")


@dataclass
class AlgorithmConfig:
    advantage: str = _f("grpo", "advantage estimator (a registry name)")
    policy_loss: str = _f("ppo_clip", "policy loss (a registry name)")
    norm_by_std: bool = _f(True, "divide group-relative advantages by the group's reward std")
    eps: float = _f(1e-6, "added to the std before dividing")
    gamma: float = _f(1.0, "discount over tokens (GAE, REINFORCE++) or env steps (GiGPO, whose paper uses 0.95)")
    lam: float = _f(1.0, "GAE lambda")
    omega: float = _f(1.0, "GiGPO: weight of the step-level (anchor-state) advantage")
    episode_stats: Literal["step_samples", "trajectories"] = _f(
        "step_samples", "GiGPO: episode mean/std over all step-samples (reference code) or over trajectories (paper)")
    kl_in_reward: bool = _f(False, "subtract kl_reward_coef * KL(old || ref) from each token's reward (needs a reference)")
    kl_reward_coef: float = _f(0.0, "initial KL-in-reward coefficient beta")
    kl_reward_estimator: Literal["k1", "k2", "k3"] = _f("k1", "per-token KL estimator for the in-reward penalty")
    kl_ctrl: Literal["fixed", "adaptive"] = _f("fixed", "KL-in-reward coefficient: fixed, or adaptive (Ziegler et al. 2019)")
    kl_target: float = _f(0.1, "adaptive controller: target KL per sequence")
    kl_horizon: int = _f(10000, "adaptive controller: horizon in samples")

    def validate(self) -> None:
        _check(self.kl_reward_coef >= 0, "algorithm.kl_reward_coef", f"must be >= 0, got {self.kl_reward_coef}")
        _check(self.kl_horizon > 0, "algorithm.kl_horizon", f"must be > 0, got {self.kl_horizon}")
        _check(0 <= self.gamma <= 1, "algorithm.gamma", f"must be in [0, 1], got {self.gamma}")
        _check(0 <= self.lam <= 1, "algorithm.lam", f"must be in [0, 1], got {self.lam}")
        _check(bool(self.advantage.strip()), "algorithm.advantage", "must not be empty")
        _check(bool(self.policy_loss.strip()), "algorithm.policy_loss", "must not be empty")
        _check(self.eps > 0, "algorithm.eps", f"must be > 0, got {self.eps}")


@dataclass
class CriticConfig:
    lr: float = _f(1e-5, "critic AdamW learning rate")
    weight_decay: float = _f(0.0, "critic AdamW weight decay")
    betas: list[float] = _f([0.9, 0.999], "critic AdamW betas")
    grad_clip: float = _f(1.0, "clip the critic's global gradient norm")
    ppo_epochs: int = _f(1, "critic passes over each batch")
    mini_batch_size: int = _f(0, "samples per critic optimizer step over all ranks (0 = whole batch)")
    micro_batch_size: int = _f(4, "samples per critic forward/backward on each rank")
    max_tokens_per_micro_batch: Optional[int] = _f(
        None, "also cap each critic forward/backward at this many padded tokens (see actor.*); null = rows only")
    cliprange_value: Optional[float] = _f(0.5, "value clipping around the old values (null = off)")
    loss_agg: Literal["token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm"] = _f(
        "token-mean", "how per-token value losses are reduced")
    value_head_std: Optional[float] = _f(None, "init std of the scalar value head (null = 1/(hidden+1))")

    def validate(self) -> None:
        _check(self.lr >= 0, "critic.lr", f"must be >= 0, got {self.lr}")
        _check(self.micro_batch_size >= 1, "critic.micro_batch_size", f"must be >= 1, got {self.micro_batch_size}")
        _check(self.max_tokens_per_micro_batch is None or self.max_tokens_per_micro_batch >= 1,
               "critic.max_tokens_per_micro_batch", f"must be >= 1 or null, got {self.max_tokens_per_micro_batch}")
        _check(self.ppo_epochs >= 1, "critic.ppo_epochs", f"must be >= 1, got {self.ppo_epochs}")


@dataclass
class RewardModelConfig:
    """A learned reward model (RLHF): an HF folder with a scalar head, e.g. `hyflow train-rm`'s hf/,
    served as a worker group that scores every (prompt, response) of single-turn tasks."""
    path: Optional[str] = _f(None, "reward-model folder (AutoModelForSequenceClassification, one label, the policy's "
                                   "tokenizer); null = no reward model")
    weight: float = _f(1.0, "weight of the reward model's score in the reward")
    placement: Literal["colocate", "separate"] = _f(
        "colocate", "colocate: one scoring process per trainer bundle, inside the trainer's processes; separate: "
                    "its own pool of reward.model.world_size bundles")
    world_size: int = _f(1, "ranks of a separate reward-model pool (placement=separate)")
    micro_batch_size: int = _f(8, "sequences per reward-model forward on each rank")

    def validate(self) -> None:
        _check(self.path is None or bool(str(self.path).strip()), "reward.model.path", "must not be empty (or null)")
        _check(self.world_size >= 1, "reward.model.world_size", f"must be >= 1, got {self.world_size}")
        _check(self.micro_batch_size >= 1, "reward.model.micro_batch_size", f"must be >= 1, got {self.micro_batch_size}")


@dataclass
class RewardConfig:
    function: str = _f("envs.math:compute_score", "reward function: 'module:function' or 'path/to/file.py:function'")
    function_weight: float = _f(1.0, "weight of reward.function's score in the reward; with a reward model, reward = "
                                     "function_weight x function + reward.model.weight x model (both logged apart)")
    model: RewardModelConfig = field(default_factory=RewardModelConfig,
                                     metadata={"help": "a learned reward model scoring every response"})
    remote_url: Optional[str] = _f(None, "a reward server scoring every response over HTTP (OpenRLHF's --remote_rm_url "
                                         "protocol, workers/remote_reward.py) in place of reward.model.path; its score is "
                                         "weighted by reward.model.weight and logged as reward/model_*")
    remote_timeout_s: float = _f(30.0, "seconds one request to reward.remote_url may take (connect, each read)")
    remote_retries: int = _f(3, "retries of a request that timed out, could not connect or got a 5xx answer")
    remote_batch_size: int = _f(64, "rows per request to reward.remote_url (up to 4 requests in flight)")
    crash_penalty: float = _f(0.0, "reward given when the reward function raises, times out or kills its process, or "
                                   "the reward model gives no finite score (counted)")
    timeout_s: float = _f(10.0, "seconds one reward call may take; a slower call scores crash_penalty (reward/timed_out) "
                                "and its process is replaced")
    num_workers: int = _f(2, "processes that run the reward function, off the driver's main thread")
    max_crash_fraction: float = _f(0.5, "stop the run when more than this fraction of a batch crashes or times out ...")
    max_crash_steps: int = _f(3, "... in this many consecutive scored batches (0 = never stop)")

    def validate(self) -> None:
        mod, sep, fn = self.function.rpartition(":")
        _check(bool(sep and mod and fn.isidentifier()), "reward.function",
               f"expected 'module:function' or 'path/to/file.py:function', got {self.function!r}")
        _check(self.timeout_s > 0, "reward.timeout_s", f"must be > 0, got {self.timeout_s}")
        _check(self.num_workers >= 1, "reward.num_workers", f"must be >= 1, got {self.num_workers}")
        _check(0 <= self.max_crash_fraction <= 1, "reward.max_crash_fraction",
               f"must be in [0, 1], got {self.max_crash_fraction}")
        _check(self.max_crash_steps >= 0, "reward.max_crash_steps", f"must be >= 0, got {self.max_crash_steps}")
        if self.remote_url is not None:
            from workers.remote_reward import check_url
            problem = check_url(str(self.remote_url))
            _check(problem is None, "reward.remote_url", problem or "")
            _check(self.model.path is None, "reward.remote_url",
                   "and reward.model.path are both set: the model's score comes from one of them")
        _check(self.remote_timeout_s > 0, "reward.remote_timeout_s", f"must be > 0, got {self.remote_timeout_s}")
        _check(self.remote_retries >= 0, "reward.remote_retries", f"must be >= 0, got {self.remote_retries}")
        _check(self.remote_batch_size >= 1, "reward.remote_batch_size", f"must be >= 1, got {self.remote_batch_size}")


@dataclass
class WeightSyncConfig:
    bucket_mb: float = _f(64.0, "size of the buckets the weights are sent to the engine in (MiB)")
    verify: bool = _f(True, "after each sync, check every engine tensor against what was sent (coverage, "
                            "per-tensor fingerprints) and the probes' log-prob change, trainer vs engine")
    tolerance: float = _f(1e-3, "max |log-prob change since the last sync, engine - trainer| on the probes "
                                "(absolute difference at start-up)")
    probe_tokens: int = _f(32, "tokens in the verification probe")
    lora_mode: Literal["merge", "adapter"] = _f(
        "merge", "LoRA runs: sync merged full weights, or only the adapter (the engine serves it as a LoRA)")
    transport: Literal["auto", "shm", "object_store", "ipc"] = _f(
        "auto", "shm: the trainer ranks write their shards into one shared-memory buffer the engines load from "
                "(one node, full or merged weights); object_store: gather, then Ray's object store; ipc (CUDA, "
                "one node): gather on the GPU, the engines load through CUDA IPC handles; auto: shm when it applies")

    def validate(self) -> None:
        _check(self.bucket_mb > 0, "weight_sync.bucket_mb", f"must be > 0, got {self.bucket_mb}")
        _check(self.tolerance > 0, "weight_sync.tolerance", f"must be > 0, got {self.tolerance}")
        _check(self.probe_tokens >= 1, "weight_sync.probe_tokens", f"must be >= 1, got {self.probe_tokens}")


@dataclass
class EnvConfig:
    name: Optional[str] = _f(None, "multi-turn env (a registry name, e.g. webshop, alfworld); null = single-turn prompts from data.*")
    kwargs: dict[str, Any] = _f({}, "keyword arguments for the env's constructor")
    max_steps: int = _f(15, "env steps per episode (GiGPO: 50 ALFWorld, 15 WebShop)")
    history_length: int = _f(2, "past (observation, action) pairs shown in the prompt")
    invalid_penalty: float = _f(0.1, "reward subtracted for a malformed action (no <think>/<action> tags)")
    cpus_per_env: float = _f(0.1, "Ray CPUs per env actor")
    step_timeout_s: float = _f(60.0, "an env that takes longer ends its episode with an error (counted)")
    val_groups: int = _f(8, "validation episodes (greedy, one per seed)")
    seed: int = _f(0, "first training seed; group g of step s plays seed + s * data.batch_size + g")

    def validate(self) -> None:
        _check(self.max_steps >= 1, "env.max_steps", f"must be >= 1, got {self.max_steps}")
        _check(self.history_length >= 0, "env.history_length", f"must be >= 0, got {self.history_length}")
        _check(self.cpus_per_env > 0, "env.cpus_per_env", f"must be > 0, got {self.cpus_per_env}")


@dataclass
class ForConfig:
    """Flow of Reasoning (GFlowNet fine-tuning, Yu et al. 2025): orchestrator/for_trainer.py, tasks in envs/for_domains.py."""
    enabled: bool = _f(False, "run the FoR trainer (orchestrator/for_trainer.py) instead of the RL trainer")
    domain: Literal["blocksworld", "game24", "prontoqa"] = _f("blocksworld", "the reasoning task (envs/for_domains.py)")
    objective: Literal["vargrad_tb", "tb", "db", "subtb", "fl_db", "fl_subtb", "grpo"] = _f(
        "vargrad_tb", "GFlowNet loss: log-variance TB (FoR), TB with a learned per-problem log Z, DB / SubTB, or "
        "forward-looking FL-DB / FL-SubTB (db, subtb, fl_* learn a flow head on the LLM's last hidden state); "
        "grpo: the RL baseline on the same sampler (group-normalised untempered R; on-policy: no replay, "
        "local search or epsilon)")
    num_problems: int = _f(15, "training problems (FoR: 15 BlocksWorld problems per plan length)")
    n_blocks: list[int] = _f([3, 4, 5], "blocksworld: block counts of the generated problems")
    plan_lengths: list[int] = _f([2], "blocksworld: optimal plan lengths of the generated problems")
    slack: int = _f(0, "blocksworld: stop after optimal length + slack actions; prontoqa: after hops + slack")
    game24_source: Literal["tot", "generated"] = _f("tot", "game24: the ToT 24.csv splits (train/val, easiest first) or generated puzzles")
    hops: list[int] = _f([3], "prontoqa: proof lengths of the generated examples")
    share_prefix: bool = _f(True, "score each state's candidate actions with the state prompt encoded once (one "
                                  "prefix-packed row per distinct state, workers/prefix_pack.py); false: one row per "
                                  "(state, candidate)")
    ll_weight: float = _f(0.0, "FoR's augmented reward: R + ll_weight * base-model likelihood bonus (FoR BlocksWorld 1.5; 0 = off)")
    subtb_lambda: float = _f(0.9, "lambda of subtb / fl_subtb")
    flow_lr: float = _f(1e-3, "Adam learning rate of the flow head (db, subtb, fl_db, fl_subtb)")
    n_samples: int = _f(4, "trajectories per problem and step (on-policy or replayed)")
    buffer_size: int = _f(50, "replay: top trajectories kept per problem")
    use_buffer_prob: list[float] = _f([0.3, 0.5], "replay probability per problem [start, end] (linear over schedule_frac)")
    epsilon: list[float] = _f([0.3, 0.01], "epsilon-uniform exploration [start, end]")
    pf_temp_prob: float = _f(0.5, "probability that a trajectory samples from the tempered P_F")
    pf_temp: list[float] = _f([2.0, 1.0], "P_F sampling temperature of tempered trajectories [start, end]")
    reward_temp: list[float] = _f([1.0, 2.0], "reward temperature [start, end], applied by the domain's FoR rule: "
                                  "log R x tau (blocksworld, game24) or log R / tau (prontoqa)")
    schedule_frac: float = _f(0.5, "schedules reach their end value after this fraction of trainer.total_steps")
    reward_floor: float = _f(0.1, "log R = log(max(R, reward_floor)): no goal fact met gives R = 0")
    local_search_tries: int = _f(16, "local-search completions of the best trajectory per problem (0 = off)")
    logz_lr: float = _f(0.01, "Adam learning rate of the per-problem log Z (objective tb)")
    val_problems: int = _f(0, "held-out problems for validation (0 = none)")
    val_samples: int = _f(8, "trajectories per validation problem (accuracy = >= 1 correct among them)")
    gradient_sign: Literal[1.0, -1.0] = _f(1.0, "-1 reverses the objective's gradient (a check that a learning run can fail)")

    def validate(self) -> None:
        _check(self.num_problems >= 1, "for_.num_problems", f"must be >= 1, got {self.num_problems}")
        _check(self.n_samples >= 1, "for_.n_samples", f"must be >= 1, got {self.n_samples}")
        _check(self.buffer_size >= 1, "for_.buffer_size", f"must be >= 1, got {self.buffer_size}")
        _check(self.slack >= 0, "for_.slack", f"must be >= 0, got {self.slack}")
        _check(len(self.hops) > 0 and all(1 <= h <= 15 for h in self.hops), "for_.hops", f"must list hops in 1..15, got {self.hops}")
        _check(self.ll_weight >= 0, "for_.ll_weight", f"must be >= 0, got {self.ll_weight}")
        _check(self.subtb_lambda > 0, "for_.subtb_lambda", f"must be > 0, got {self.subtb_lambda}")
        _check(self.flow_lr > 0, "for_.flow_lr", f"must be > 0, got {self.flow_lr}")
        _check(len(self.n_blocks) > 0 and all(2 <= k <= 12 for k in self.n_blocks), "for_.n_blocks",
               f"must list block counts in 2..12, got {self.n_blocks}")
        _check(len(self.plan_lengths) > 0 and all(n >= 1 for n in self.plan_lengths), "for_.plan_lengths",
               f"must list lengths >= 1, got {self.plan_lengths}")
        for key in ("use_buffer_prob", "epsilon"):
            v = getattr(self, key)
            _check(len(v) == 2 and all(0 <= x <= 1 for x in v), f"for_.{key}", f"must be [start, end] in [0, 1], got {v}")
        for key in ("pf_temp", "reward_temp"):
            v = getattr(self, key)
            _check(len(v) == 2 and all(x > 0 for x in v), f"for_.{key}", f"must be [start, end] > 0, got {v}")
        _check(0 <= self.pf_temp_prob <= 1, "for_.pf_temp_prob", f"must be in [0, 1], got {self.pf_temp_prob}")
        _check(0 < self.schedule_frac <= 1, "for_.schedule_frac", f"must be in (0, 1], got {self.schedule_frac}")
        _check(self.reward_floor > 0, "for_.reward_floor", f"must be > 0, got {self.reward_floor}")
        _check(self.local_search_tries >= 0, "for_.local_search_tries", f"must be >= 0, got {self.local_search_tries}")
        _check(self.logz_lr > 0, "for_.logz_lr", f"must be > 0, got {self.logz_lr}")
        _check(self.val_problems >= 0, "for_.val_problems", f"must be >= 0, got {self.val_problems}")
        _check(self.val_samples >= 1, "for_.val_samples", f"must be >= 1, got {self.val_samples}")
        if self.objective == "grpo":  # on-policy: what is trained on is what P_F sampled
            off = {k: v for k, v in (("use_buffer_prob", max(self.use_buffer_prob)), ("epsilon", max(self.epsilon)),
                                     ("local_search_tries", self.local_search_tries),
                                     ("pf_temp_prob", self.pf_temp_prob)) if v}
            _check(not off, "for_.objective", f"grpo is on-policy; set {', '.join(f'for_.{k}' for k in off)} to 0 "
                                              f"(they replay, explore or search off-policy)")


@dataclass
class TrainerConfig:
    total_steps: int = _f(10, "training steps (one rollout batch and one update each)")
    output_dir: str = _f("runs/quickstart", "folder for checkpoints, metrics and the resolved config")
    save_every: int = _f(0, "checkpoint every this many steps (0 = at the end only)")
    resume: bool = _f(False, "continue from the newest checkpoint in output_dir (weights, optimizer, data cursor, "
                             "step); a fresh start when there is none")
    overwrite: bool = _f(False, "start afresh in a non-empty output_dir, deleting the outputs of the run there")
    keep_last: int = _f(0, "keep only the newest this many checkpoints (0 = keep all)")
    max_restarts: int = _f(3, "dead workers replaced per run before it stops: a dead rollout engine is rebuilt and its "
                              "generation redone; a dead trainer rank rebuilds all workers from the newest checkpoint "
                              "(needs save_every > 0)")
    loggers: list[str] = _f(["console"], "where metrics go besides metrics.jsonl: console, tensorboard (RUN_DIR/tensorboard), "
                                         "wandb (offline, RUN_DIR/wandb); the last two need the tracking extra")
    dump_rollouts_every: int = _f(1, "write rollouts/step_N.jsonl (and val/step_N.jsonl) every this many steps (0 = off)")
    dump_max_chars: int = _f(2000, "texts in the dumps longer than this keep their head and tail around a truncation marker")
    val_every: int = _f(0, "also validate every this many steps (0 = only before the first and after the last step)")
    seed: int = _f(0, "seed for sampling and model init")
    progress: bool = _f(True, "show a progress bar")
    log_every: int = _f(1, "log metrics every this many steps")
    experiment_name: str = _f("quickstart", "name of the run in logs and metrics")

    def validate(self) -> None:
        _check(self.total_steps >= 1, "trainer.total_steps", f"must be >= 1, got {self.total_steps}")
        _check(bool(self.output_dir.strip()), "trainer.output_dir", "must not be empty")
        _check(self.save_every >= 0, "trainer.save_every", f"must be >= 0, got {self.save_every}")
        _check(self.val_every >= 0, "trainer.val_every", f"must be >= 0, got {self.val_every}")
        _check(self.keep_last >= 0, "trainer.keep_last", f"must be >= 0, got {self.keep_last}")
        _check(self.max_restarts >= 0, "trainer.max_restarts", f"must be >= 0, got {self.max_restarts}")
        for i, name in enumerate(self.loggers):
            _check(name in ("console", "tensorboard", "wandb"), f"trainer.loggers[{i}]",
                   f"expected one of ['console', 'tensorboard', 'wandb'], got {name!r}")
        _check(self.dump_rollouts_every >= 0, "trainer.dump_rollouts_every", f"must be >= 0, got {self.dump_rollouts_every}")
        _check(self.dump_max_chars >= 100, "trainer.dump_max_chars", f"must be >= 100, got {self.dump_max_chars}")
        _check(not (self.resume and self.overwrite), "trainer.overwrite",
               "and trainer.resume are both true; choose one")
        _check(self.log_every >= 1, "trainer.log_every", f"must be >= 1, got {self.log_every}")


@dataclass
class RayConfig:
    address: str = _f("local", "Ray cluster: 'local' starts one in-process, 'auto' or host:port joins one")
    num_cpus: Optional[int] = _f(None, "CPUs for a local cluster (null = all of the machine's)")
    object_store_mb: int = _f(512, "object store size of a local cluster (MiB)")
    dashboard: bool = _f(False, "start the Ray dashboard with a local cluster")
    call_timeout_s: float = _f(1800.0, "seconds to wait for a worker call outside the phases below (start-up, "
                                       "checkpoints) before failing the run")
    # Per-phase deadlines: a rank that does not answer in time fails the run, naming the phase and
    # the rank. On 2 CPU cores a quickstart step takes ~40 s, its rollout ~15 s and its sync ~3 s:
    # the defaults leave a wide margin for bigger models and slower machines.
    timeout_rollout_s: float = _f(1800.0, "deadline of one rollout call (sampled generation)")
    timeout_train_s: float = _f(1800.0, "deadline of one train call (log-probs, values, one update)")
    timeout_sync_s: float = _f(600.0, "deadline of each weight-sync call, and of rank 0's wait for the engines to load the weights")
    timeout_validation_s: float = _f(1800.0, "deadline of one validation call (greedy generation)")

    def validate(self) -> None:
        _check(bool(self.address.strip()), "ray.address", "must not be empty")
        if self.num_cpus is not None:
            _check(self.num_cpus >= 1, "ray.num_cpus", f"must be >= 1 (or null), got {self.num_cpus}")
        _check(self.object_store_mb >= 1, "ray.object_store_mb", f"must be >= 1, got {self.object_store_mb}")
        for key in ("call_timeout_s", "timeout_rollout_s", "timeout_train_s", "timeout_sync_s", "timeout_validation_s"):
            value = getattr(self, key)
            _check(value > 0, f"ray.{key}", f"must be > 0, got {value}")


@dataclass
class ResourcesConfig:
    """Where the trainer's ranks run: one Ray placement bundle per device (a GPU; on a CPU cluster,
    actor.cpus_per_worker CPUs), one rank per bundle; the engine replicas share the first bundles."""
    nnodes: Optional[int] = _f(None, "nodes the run spans (null = not set: actor.world_size bundles wherever "
                                     "resources.strategy puts them)")
    devices_per_node: Optional[int] = _f(None, "devices (ranks) per node; nnodes x devices_per_node = actor.world_size")
    strategy: Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"] = _f(
        "PACK", "how Ray spreads the bundles over nodes: PACK (fewest nodes), SPREAD (most nodes, best effort), "
        "STRICT_PACK (one node or fail), STRICT_SPREAD (one bundle per node or fail)")

    def validate(self) -> None:
        missing, given = ("devices_per_node", "nnodes") if self.nnodes is not None else ("nnodes", "devices_per_node")
        _check((self.nnodes is None) == (self.devices_per_node is None), f"resources.{missing}",
               f"must be set together with resources.{given}")
        if self.nnodes is None:
            return
        _check(self.nnodes >= 1, "resources.nnodes", f"must be >= 1, got {self.nnodes}")
        _check(self.devices_per_node >= 1, "resources.devices_per_node", f"must be >= 1, got {self.devices_per_node}")
        _check(self.strategy != "STRICT_PACK" or self.nnodes == 1, "resources.strategy",
               f"STRICT_PACK keeps every bundle on one node, but resources.nnodes is {self.nnodes}")
        _check(self.strategy != "STRICT_SPREAD" or self.devices_per_node == 1, "resources.strategy",
               f"STRICT_SPREAD puts one bundle per node, but resources.devices_per_node is {self.devices_per_node}")


@dataclass
class RMConfig:
    """`hyflow train-rm`: a reward model from preference pairs (orchestrator/rm_train.py). The model is
    model.path with a scalar head; backend, world_size, optimizer and micro-batch come from actor.*."""
    train_path: Optional[str] = _f(None, "preference pairs {prompt, chosen, rejected}: .jsonl, .parquet or a datasets "
                                         "folder (PATH::SPLIT picks a split); make some with python -m envs.preferences")
    val_path: Optional[str] = _f(None, "held-out pairs (same formats); null = hold out rm.val_fraction of the training prompts")
    val_fraction: float = _f(0.1, "share of the training prompts held out when rm.val_path is null (0 = no held-out metrics)")
    margin: float = _f(0.0, "Bradley-Terry margin m: loss -log sigmoid(r_chosen - r_rejected - m)")
    center_coef: float = _f(0.0, "reward centering: + center_coef * mean((r_chosen + r_rejected)^2) (TRL's center_rewards_coefficient)")
    epochs: int = _f(1, "passes over the training pairs (0 = only score the held-out pairs and export)")
    batch_size: int = _f(32, "pairs per optimizer step, over all ranks (each rank runs actor.micro_batch_size pairs per forward)")
    max_length: int = _f(512, "pairs whose prompt + response exceeds this many tokens are dropped (counted in the log)")
    eval_every: int = _f(0, "score the held-out pairs every this many steps (0 = at the end of each epoch); always before step 1")
    output_dir: str = _f("runs/rm", "folder for config.yaml, metrics.jsonl, val_scores.jsonl, summary.json and the model (hf/)")
    overwrite: bool = _f(False, "start afresh in a non-empty rm.output_dir, deleting the outputs of the run there")
    seed: int = _f(0, "seed for the held-out split, the pair order and the head init")

    def validate(self) -> None:
        _check(0 <= self.val_fraction < 1, "rm.val_fraction", f"must be in [0, 1), got {self.val_fraction}")
        _check(self.center_coef >= 0, "rm.center_coef", f"must be >= 0, got {self.center_coef}")
        _check(self.epochs >= 0, "rm.epochs", f"must be >= 0, got {self.epochs}")
        _check(self.batch_size >= 1, "rm.batch_size", f"must be >= 1, got {self.batch_size}")
        _check(self.max_length >= 2, "rm.max_length", f"must be >= 2, got {self.max_length}")
        _check(self.eval_every >= 0, "rm.eval_every", f"must be >= 0, got {self.eval_every}")
        _check(bool(self.output_dir.strip()), "rm.output_dir", "must not be empty")


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig, metadata={"help": "the policy model"})
    data: DataConfig = field(default_factory=DataConfig, metadata={"help": "training prompts"})
    rollout: RolloutConfig = field(default_factory=RolloutConfig, metadata={"help": "generation"})
    actor: ActorConfig = field(default_factory=ActorConfig, metadata={"help": "the trained policy"})
    critic: CriticConfig = field(default_factory=CriticConfig,
                                 metadata={"help": "value model, built when the advantage estimator takes `values` (PPO)"})
    algorithm: AlgorithmConfig = field(default_factory=AlgorithmConfig, metadata={"help": "advantage and loss"})
    reward: RewardConfig = field(default_factory=RewardConfig, metadata={"help": "scoring completions"})
    weight_sync: WeightSyncConfig = field(default_factory=WeightSyncConfig,
                                          metadata={"help": "trainer -> engine weight updates"})
    env: EnvConfig = field(default_factory=EnvConfig, metadata={"help": "multi-turn agent environments"})
    trainer: TrainerConfig = field(default_factory=TrainerConfig, metadata={"help": "the training loop"})
    ray: RayConfig = field(default_factory=RayConfig, metadata={"help": "the Ray cluster"})
    resources: ResourcesConfig = field(default_factory=ResourcesConfig,
                                       metadata={"help": "nodes and devices of the trainer's placement"})
    for_: ForConfig = field(default_factory=ForConfig, metadata={"help": "Flow of Reasoning (GFlowNet) training"})
    rm: RMConfig = field(default_factory=RMConfig, metadata={"help": "reward-model training (hyflow train-rm)"})

    def validate(self) -> None:
        """Cross-section checks (each section's own checks ran before this)."""
        res = self.resources
        if res.nnodes is not None:  # one rank per device
            devices = res.nnodes * res.devices_per_node
            _check(self.actor.world_size == devices, "actor.world_size",
                   f"{self.actor.world_size} disagrees with resources.nnodes x resources.devices_per_node = "
                   f"{res.nnodes} x {res.devices_per_node} = {devices} (one rank per device); set one to match")
        samples = self.data.batch_size * self.rollout.n
        if self.env.name is None and not self.for_.enabled:  # a fixed number of samples per step
            # (agent steps give a varying number of step-samples: the shards are padded, and the
            # last mini-batch of a step may be smaller)
            _check(samples % self.actor.world_size == 0, "actor.world_size",
                   f"data.batch_size * rollout.n = {samples} samples per step must be divisible by "
                   f"actor.world_size ({self.actor.world_size})")
            mb = self.actor.mini_batch_size
            if mb > 0:
                _check(samples % mb == 0, "actor.mini_batch_size",
                       f"{mb} must divide data.batch_size * rollout.n = {samples}")
        _check(not (self.algorithm.kl_in_reward and self.actor.kl_coef > 0), "actor.kl_coef",
               f"{self.actor.kl_coef} with algorithm.kl_in_reward=true penalizes the KL twice; set one of them")
        _check(self.algorithm.kl_in_reward or self.algorithm.kl_reward_coef == 0, "algorithm.kl_reward_coef",
               "is set but algorithm.kl_in_reward is false")
        for key, value in (("reward.model.path", self.reward.model.path), ("reward.remote_url", self.reward.remote_url)):
            if value is not None:
                _check(self.env.name is None and not self.for_.enabled, key,
                       "a reward model scores single-turn prompt tasks; agent (env.name) and FoR runs take rewards "
                       "from their environment")
        _check(self.reward.model.path is not None or self.reward.remote_url is not None or self.reward.function_weight != 0,
               "reward.function_weight", "is 0 and there is no reward.model.path nor reward.remote_url: every "
                                         "reward would be 0")
        _check(self.rollout.num_replicas <= self.actor.world_size, "rollout.num_replicas",
               f"{self.rollout.num_replicas} replicas need as many trainer bundles; actor.world_size is "
               f"{self.actor.world_size}")
        if self.weight_sync.transport == "shm" and self.weight_sync.lora_mode == "adapter" and self.actor.lora_rank > 0:
            _check(False, "weight_sync.transport", "shm carries full (or merged) weights; with "
                   "weight_sync.lora_mode=adapter use object_store (or auto)")
        if self.weight_sync.lora_mode == "adapter" and self.actor.lora_rank > 0:
            _check(self.actor.lora_rank <= 512, "actor.lora_rank",
                   f"{self.actor.lora_rank} exceeds vLLM's maximum LoRA rank 512 (weight_sync.lora_mode=adapter)")
        need = self.data.max_prompt_tokens + self.rollout.max_new_tokens
        _check(need <= self.rollout.max_model_len, "rollout.max_model_len",
               f"{self.rollout.max_model_len} must be >= data.max_prompt_tokens + rollout.max_new_tokens = {need}")
