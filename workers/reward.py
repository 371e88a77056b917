"""Rule-based rewards on the driver: decode responses, score each row with the user's reward function
in a small pool of worker processes, off the controller's main thread.

The reward function has the verl-compatible signature documented in envs/rewards.py:
`compute_score(data_source, solution_str, ground_truth, extra_info) -> float | dict`.

    reward = RewardFn.from_config(cfg.reward, tokenizer)
    scores, metrics = reward(batch)       # metrics: reward/crashed, reward/timed_out, reward/<dict keys>
    reward.close()

Failure contract, per row: a call that raises, returns something that is not a finite number, or
kills its worker process (os._exit, a segfault) scores `reward.crash_penalty` and is counted in
`reward/crashed`; a call that runs longer than `reward.timeout_s` scores the penalty and is counted
in `reward/timed_out`. A hung or dead worker is killed and replaced, and the rest of its rows go to
the others. Per batch: when more than `reward.max_crash_fraction` of the rows crash or time out in
`reward.max_crash_steps` consecutive scored batches (training steps and validations), the run stops
with `RewardError` naming the function, the rates and the last error.

Why processes: a hung Python function cannot be stopped inside a thread. The pool is
`reward.num_workers` persistent 'spawn' processes, each with a pipe; a batch is split into chunks
handed to idle workers, and each worker sends one small message per row, so the driver knows which
row a worker is on and when it started. The driver's main thread only waits on the pipes with a
deadline (`multiprocessing.connection.wait`), so a hang cannot freeze the run. The worker processes
import only this module, envs/rewards.py and the reward function's own module (no torch).
"""
from __future__ import annotations

import json
import logging
import math
import numbers
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import traceback
import weakref
from collections import deque
from multiprocessing.connection import Connection, wait

from envs.rewards import _as_score, load_reward_fn

log = logging.getLogger(__name__)

STARTUP_TIMEOUT_S = 120.0   # a worker must import the reward function within this long
# The worker's entry: the driver's sys.path, then _worker_main on the inherited socket.
_BOOT = ("import json, sys; fd, path, spec = int(sys.argv[1]), json.loads(sys.argv[2]), sys.argv[3]; "
         "sys.path[:] = path; from workers.reward import _worker_main; _worker_main(spec, fd)")


class RewardError(RuntimeError):
    """The reward function cannot score this run (it crashes or times out on most rows)."""


# ------------------------------------------------------------------------- the worker process
def _worker_main(spec: str, fd: int) -> None:
    """Load `spec`, say ready, then score chunks of rows until told to stop (None) or the pipe closes.
    Each row answers ("ok", i, score, numeric_extras) or ("err", i, "Type: message (at file:line)")."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the driver's to handle; it closes us
    threading.Thread(target=_exit_with_parent, args=(os.getppid(),), daemon=True).start()
    conn = Connection(fd)
    try:
        fn = load_reward_fn(spec)
    except BaseException as e:  # noqa: BLE001 - reported to the driver, which raises RewardError
        conn.send(("load_error", f"{type(e).__name__}: {e}"))
        return
    conn.send(("ready",))
    while True:
        try:
            rows = conn.recv()
        except (EOFError, OSError):  # the driver went away
            return
        if rows is None:
            return
        for i, data_source, solution, ground_truth, extra_info in rows:
            try:
                out = fn(data_source=data_source, solution_str=solution, ground_truth=ground_truth,
                         extra_info=extra_info)
                score = _as_score(out)
            except Exception as e:  # any failure of the user's function is a crashed row
                conn.send(("err", i, _describe(e)))
                continue
            extras = {}
            if isinstance(out, dict):  # only numbers are aggregated into metrics
                extras = {k: float(v) for k, v in out.items()
                          if k != "score" and isinstance(v, numbers.Real) and math.isfinite(float(v))}
            conn.send(("ok", i, score, extras))


def _exit_with_parent(ppid: int) -> None:
    """End this worker when the driver is gone, even while the reward function hangs."""
    while os.getppid() == ppid:
        time.sleep(1.0)
    os._exit(0)


def _describe(e: BaseException) -> str:
    text = f"{type(e).__name__}: {e}"
    tb = traceback.extract_tb(e.__traceback__)
    return f"{text} (at {tb[-1].filename}:{tb[-1].lineno} in {tb[-1].name})" if tb else text


# ---------------------------------------------------------------------------- the driver side
class _Worker:
    """One scoring process as the driver sees it: starting -> idle <-> busy; dead when killed.

    A plain `python -c` subprocess talking over a socket pair (multiprocessing's spawn would re-run
    the driver's __main__ script in the child)."""

    def __init__(self, spec: str):
        parent, child = socket.socketpair()
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _BOOT, str(child.fileno()), json.dumps(sys.path), spec],
            pass_fds=[child.fileno()], stdin=subprocess.DEVNULL)
        child.close()
        self.conn = Connection(parent.detach())
        self.state = "starting"
        self.since = time.monotonic()   # starting: spawn time; busy: when the current row began
        self.rows: deque[int] = deque()  # the chunk still to be answered, current row first
        self.eof = False                 # its end of the pipe closed: it died

    def alive(self) -> bool:
        return not self.eof and self.proc.poll() is None

    def assign(self, rows: list[int], payload: list[tuple]) -> None:
        self.conn.send(payload)
        self.rows.extend(rows)
        self.state, self.since = "busy", time.monotonic()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            pass
        self.conn.close()
        self.state = "dead"

    def stop(self) -> None:
        """Ask an idle worker to exit; kill it if it does not."""
        try:
            if self.state == "idle":
                self.conn.send(None)
                self.proc.wait(2)
        except (OSError, ValueError, subprocess.TimeoutExpired):
            pass
        self.kill()


def _close_all(workers: list[_Worker]) -> None:
    for w in workers:
        w.stop()


class RewardPool:
    """`num_workers` processes scoring rows with `spec`; see the module docstring."""

    def __init__(self, spec: str, num_workers: int = 2, timeout_s: float = 10.0):
        if num_workers < 1:
            raise ValueError(f"reward.num_workers must be >= 1, got {num_workers}")
        if not timeout_s > 0:
            raise ValueError(f"reward.timeout_s must be > 0, got {timeout_s}")
        self.spec, self.timeout_s = spec, float(timeout_s)
        self.workers = [_Worker(spec) for _ in range(num_workers)]  # start now: ready by the first batch
        self.restarts = 0
        self._finalizer = weakref.finalize(self, _close_all, self.workers)

    def close(self) -> None:
        self._finalizer()

    def _replace(self, w: _Worker) -> None:
        w.kill()
        self.workers[self.workers.index(w)] = _Worker(self.spec)
        self.restarts += 1

    def score(self, rows: list[tuple]) -> list[tuple]:
        """rows: (data_source, solution_str, ground_truth, extra_info) each. Returns one result per row:
        ("ok", score, extras) | ("crashed", error) | ("timed_out", error)."""
        n = len(rows)
        results: list = [None] * n
        pending = deque(range(n))
        chunk = max(1, min(64, math.ceil(n / (2 * len(self.workers)))))
        left = n
        while left:
            for w in self.workers:  # hand work to idle workers
                if w.state == "idle" and pending:
                    idx = [pending.popleft() for _ in range(min(chunk, len(pending)))]
                    try:
                        w.assign(idx, [(i, *rows[i]) for i in idx])
                    except (OSError, ValueError):  # it died while idle: treat as a crash of nobody
                        pending.extendleft(reversed(idx))
                        self._replace(w)
            active = [w for w in self.workers if w.state in ("starting", "busy")]
            if not active:
                raise RuntimeError("reward pool: rows are pending but no worker is running")  # cannot happen
            now = time.monotonic()
            deadline = min(w.since + (STARTUP_TIMEOUT_S if w.state == "starting" else self.timeout_s)
                           for w in active)
            wait([w.conn for w in active], timeout=max(0.0, deadline - now))  # a death closes the pipe too
            for w in active:
                left -= self._drain(w, results)
            for w in list(self.workers):
                if w.state in ("starting", "busy"):
                    left -= self._check(w, results, pending)
        return results

    def _drain(self, w: _Worker, results: list) -> int:
        """Read every message `w` has sent; returns the number of rows answered."""
        done = 0
        try:
            while w.conn.poll():
                msg = w.conn.recv()
                if msg[0] == "ready":
                    w.state, w.since = "idle", time.monotonic()
                elif msg[0] == "load_error":
                    w.kill()
                    raise RewardError(f"reward.function {self.spec!r}: the scoring process could not load it: {msg[1]}")
                else:
                    i = msg[1]
                    w.rows.remove(i)
                    results[i] = ("ok", msg[2], msg[3]) if msg[0] == "ok" else ("crashed", msg[2])
                    done += 1
                    w.since = time.monotonic()
                    if not w.rows:
                        w.state = "idle"
        except (EOFError, OSError):
            w.eof = True  # it died; _check replaces it
        return done

    def _check(self, w: _Worker, results: list, pending: deque) -> int:
        """Kill and replace a worker that died or ran past its deadline; returns rows settled here."""
        if w.state == "starting":
            if not w.alive():
                w.kill()
                code = w.proc.returncode
                raise RewardError(f"reward.function {self.spec!r}: the scoring process exited with code {code} "
                                  f"while loading it")
            if time.monotonic() - w.since > STARTUP_TIMEOUT_S:
                w.kill()
                raise RewardError(f"reward.function {self.spec!r}: the scoring process did not load it within "
                                  f"{STARTUP_TIMEOUT_S:g} s")
            return 0
        alive = w.alive()
        if alive and time.monotonic() - w.since <= self.timeout_s:
            return 0
        done = self._drain(w, results)  # answers that arrived just before it died or while we looked
        alive = alive and w.alive()
        if alive and (not w.rows or time.monotonic() - w.since <= self.timeout_s):
            return done  # it made progress after all
        if not w.rows:  # it died between chunks
            self._replace(w)
            return done
        i = w.rows.popleft()
        if alive:
            results[i] = ("timed_out", f"the call took longer than reward.timeout_s={self.timeout_s:g} s "
                                       f"(its process was killed and replaced)")
        else:
            w.kill()
            results[i] = ("crashed", f"the scoring process died (exit code {w.proc.returncode}) on this row "
                                     f"and was replaced")
        pending.extendleft(reversed(w.rows))  # the rest of its chunk goes back to the queue
        w.rows.clear()
        self._replace(w)
        return done + 1


# ------------------------------------------------------------------------------ RewardFn
class RewardFn:
    """Scores a rollout batch: decode the responses, score in the pool, enforce the crash-rate limit."""

    def __init__(self, spec: str, tokenizer, crash_penalty: float = 0.0, *, timeout_s: float = 10.0,
                 num_workers: int = 2, max_crash_fraction: float = 0.5, max_crash_steps: int = 3):
        load_reward_fn(spec)  # fail here, in the driver, with the loader's message
        self.spec, self.tokenizer, self.crash_penalty = spec, tokenizer, float(crash_penalty)
        self.max_crash_fraction, self.max_crash_steps = float(max_crash_fraction), int(max_crash_steps)
        self.pool = RewardPool(spec, num_workers=num_workers, timeout_s=timeout_s)
        self.bad_rates: list[float] = []  # failure fraction of each batch in the current streak

    @classmethod
    def from_config(cls, reward_cfg, tokenizer) -> "RewardFn":
        r = reward_cfg
        return cls(r.function, tokenizer, r.crash_penalty, timeout_s=r.timeout_s, num_workers=r.num_workers,
                   max_crash_fraction=r.max_crash_fraction, max_crash_steps=r.max_crash_steps)

    def close(self) -> None:
        self.pool.close()

    def decode(self, batch) -> list[str]:
        resp, mask = batch["responses"], batch["response_mask"].bool()
        return self.tokenizer.batch_decode([r[m].tolist() for r, m in zip(resp, mask)], skip_special_tokens=True)

    def __call__(self, batch):
        import torch
        texts = self.decode(batch)
        extra = batch["extra_info"] if "extra_info" in batch else [None] * len(batch)
        scores, metrics = self.score(batch["data_source"], texts, batch["ground_truth"], extra)
        return torch.tensor(scores, dtype=torch.float32), metrics

    def score(self, data_sources, solutions, ground_truths, extra_infos=None) -> tuple[list[float], dict]:
        """Score decoded rows; returns (scores, metrics). RewardError when the crash-rate limit is hit."""
        n = len(solutions)
        extra_infos = [None] * n if extra_infos is None else extra_infos
        for name, col in (("data_sources", data_sources), ("ground_truths", ground_truths),
                          ("extra_infos", extra_infos)):
            if len(col) != n:
                raise ValueError(f"RewardFn.score: {name} has {len(col)} rows but solutions has {n}")
        results = self.pool.score([(data_sources[i], solutions[i], ground_truths[i], extra_infos[i])
                                   for i in range(n)]) if n else []
        scores, extras, counts, last_error = [], {}, {"crashed": 0, "timed_out": 0}, None
        for i, (kind, *rest) in enumerate(results):
            if kind == "ok":
                scores.append(rest[0])
                for k, v in rest[1].items():
                    extras.setdefault(k, []).append(v)
            else:
                scores.append(self.crash_penalty)
                counts[kind] += 1
                last_error = f"row {i}: {rest[0]}"
        metrics = {"reward/crashed": counts["crashed"], "reward/timed_out": counts["timed_out"]}
        metrics.update({f"reward/{k}": sum(v) / len(v) for k, v in extras.items()})
        failed = counts["crashed"] + counts["timed_out"]
        if failed:
            log.warning("reward function %s: %d of %d rows crashed, %d timed out (scored %g); last: %s",
                        self.spec, counts["crashed"], n, counts["timed_out"], self.crash_penalty, last_error)
        self._check_crash_rate(failed, n, last_error)
        return scores, metrics

    def _check_crash_rate(self, failed: int, n: int, last_error: str | None) -> None:
        rate = failed / n if n else 0.0
        if rate <= self.max_crash_fraction or self.max_crash_steps == 0:
            self.bad_rates = []
            return
        self.bad_rates.append(rate)
        if len(self.bad_rates) >= self.max_crash_steps:
            rates = ", ".join(f"{r:.0%}" for r in self.bad_rates)
            raise RewardError(
                f"reward.function {self.spec!r} crashed or timed out on more than "
                f"reward.max_crash_fraction={self.max_crash_fraction:g} of the rows in "
                f"{len(self.bad_rates)} consecutive batches (reward.max_crash_steps={self.max_crash_steps}; "
                f"rates {rates}); last error: {last_error}")
