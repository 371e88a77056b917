"""A reward served over HTTP (`reward.remote_url`, OpenRLHF's `--remote_rm_url`): a reward model or
verifier running anywhere, scored in place of a local reward-model group.

    scorer = RemoteReward.from_config(cfg.reward, tokenizer)
    scores = scorer.score(batch)      # [B] float32; NaN where the server gave no valid answer
    scorer.metrics                    # reward/remote_failed, reward/remote_retries, reward/remote_s of the last call

Protocol (OpenRLHF's `serve_rm`): the batch goes in chunks of `reward.remote_batch_size` rows, each
a POST of JSON `{"query": [...], "prompts": [...], "responses": [...], "labels": [...]}` (`query`:
prompt + response as the policy saw them, template tokens included; `labels`: each row's ground
truth as a string). The answer is `{"rewards": [one number per row]}`.

Failure contract. Each request may take `reward.remote_timeout_s` (connect and each read); a
connection error, a timeout or a 5xx answer is retried `reward.remote_retries` times with a doubling
pause (0.5 s, 1 s, ...); a 4xx answer or a malformed body (not JSON, no `rewards`, the wrong
length, a value that is not a finite number) is not retried: the server will say the same again.
The whole call is bounded: a chunk without a valid answer by (retries + 1) x (timeout + pause)
leaves its rows NaN, which the task scores `reward.crash_penalty` and counts (reward/model_failed).
When more than `reward.max_crash_fraction` of the rows fail in `reward.max_crash_steps` consecutive
calls, `score` raises `RewardError` naming the URL, the failure rate and the last error.
Chunks go out on daemon threads (at most 4 at a time), so a server that never answers cannot
keep the run alive.
"""
from __future__ import annotations

import json
import math
import threading
import time
import urllib.error
import urllib.request
from urllib.parse import urlsplit

import torch

from workers.reward import RewardError

MAX_PARALLEL = 4      # requests in flight at once
BACKOFF_S = 0.5       # first pause before a retry; doubles after each


def check_url(url: str) -> str | None:
    """Why `url` cannot be a reward server's address, or None."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        return f"must start with http:// or https://, got {url!r}"
    if not parts.hostname:
        return f"has no host: {url!r}"
    try:
        parts.port  # noqa: B018 - raises on a bad port
    except ValueError as e:
        return f"has a bad port ({e}): {url!r}"
    return None


class _Failure(Exception):
    def __init__(self, message: str, retry: bool):
        super().__init__(message)
        self.retry = retry


def _post(url: str, payload: dict, n: int, timeout_s: float) -> list[float]:
    """One request; the chunk's n rewards, or _Failure saying what went wrong and whether to retry."""
    req = urllib.request.Request(url, data=json.dumps(payload).encode(), method="POST",
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout_s) as resp:
            body = resp.read()
    except urllib.error.HTTPError as e:
        raise _Failure(f"HTTP {e.code} {e.reason}", retry=e.code >= 500) from None
    except (urllib.error.URLError, TimeoutError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise _Failure(f"{type(reason).__name__}: {reason}", retry=True) from None
    try:
        answer = json.loads(body)
    except ValueError:
        raise _Failure(f"the answer is not JSON: {body[:200]!r}", retry=False) from None
    rewards = answer.get("rewards") if isinstance(answer, dict) else None
    if not isinstance(rewards, list):
        raise _Failure(f"the answer has no 'rewards' list: {str(answer)[:200]}", retry=False)
    if len(rewards) != n:
        raise _Failure(f"'rewards' has {len(rewards)} values for {n} rows", retry=False)
    bad = [r for r in rewards if isinstance(r, bool) or not isinstance(r, (int, float)) or not math.isfinite(r)]
    if bad:
        raise _Failure(f"'rewards' holds {len(bad)} values that are not finite numbers, e.g. {bad[0]!r}", retry=False)
    return [float(r) for r in rewards]


class RemoteReward:
    """`score(batch) -> [B]` from an HTTP reward server; the batch needs `input_ids`,
    `attention_mask` (prompt + response rows), `prompt_ids` and `ground_truth`."""

    def __init__(self, url: str, tokenizer, timeout_s: float = 30.0, retries: int = 3, batch_size: int = 64,
                 max_fail_fraction: float = 0.5, max_fail_steps: int = 3):
        problem = check_url(url)
        if problem:
            raise ValueError(f"reward.remote_url: {problem}")
        self.url, self.tok = url, tokenizer
        self.timeout_s, self.retries, self.batch_size = timeout_s, retries, batch_size
        self.max_fail_fraction, self.max_fail_steps = max_fail_fraction, max_fail_steps
        self.bad_streak = 0
        self.metrics: dict = {}
        self.last_error = ""

    @classmethod
    def from_config(cls, r, tokenizer) -> "RemoteReward":
        return cls(r.remote_url, tokenizer, r.remote_timeout_s, r.remote_retries, r.remote_batch_size,
                   r.max_crash_fraction, r.max_crash_steps)

    def payloads(self, batch) -> list[dict]:
        """The batch's rows as request bodies of remote_batch_size rows each (protocol above)."""
        queries = [self.tok.decode(ids[mask.bool()].tolist(), skip_special_tokens=False)
                   for ids, mask in zip(batch["input_ids"], batch["attention_mask"])]
        prompts = [self.tok.decode(list(p), skip_special_tokens=False) for p in batch["prompt_ids"]]
        labels = [str(g) for g in batch["ground_truth"]]
        out = []
        for s in range(0, len(queries), self.batch_size):
            e = s + self.batch_size
            out.append({"query": queries[s:e], "prompts": prompts[s:e],
                        "responses": [q[len(p):] if q.startswith(p) else q for q, p in zip(queries[s:e], prompts[s:e])],
                        "labels": labels[s:e]})
        return out

    def _chunk(self, payload: dict, out: list, k: int, deadline: float) -> None:
        """Fill out[k] with (rewards, retries, error): retried while retryable and time is left."""
        n, retries, pause = len(payload["query"]), 0, BACKOFF_S
        while True:
            try:
                out[k] = (_post(self.url, payload, n, min(self.timeout_s, max(deadline - time.monotonic(), 0.1))),
                          retries, "")
                return
            except _Failure as e:
                out[k] = (None, retries, str(e))
                if not e.retry or retries >= self.retries or time.monotonic() + pause >= deadline:
                    return
            time.sleep(pause)
            retries, pause = retries + 1, pause * 2

    def score(self, batch) -> torch.Tensor:
        t0 = time.monotonic()
        payloads = self.payloads(batch)
        # Bound on the call: every attempt's timeout and every pause between them.
        budget = (self.retries + 1) * self.timeout_s + BACKOFF_S * (2 ** self.retries - 1) + 1.0
        deadline = t0 + budget
        results: list = [None] * len(payloads)
        threads = []
        for k, p in enumerate(payloads):
            while sum(t.is_alive() for t in threads) >= MAX_PARALLEL and time.monotonic() < deadline:
                time.sleep(0.01)
            t = threading.Thread(target=self._chunk, args=(p, results, k, deadline), daemon=True,
                                 name=f"remote-reward-{k}")
            t.start()
            threads.append(t)
        for t in threads:
            t.join(max(deadline - time.monotonic(), 0.0))
        scores, failed, retries, errors = [], 0, 0, []
        for p, res in zip(payloads, results):
            n = len(p["query"])
            rewards, tries, error = res if res is not None else (None, 0, f"no answer within {budget:.0f} s")
            retries += tries
            if rewards is None:
                failed += n
                errors.append(error)
                scores.extend([math.nan] * n)
            else:
                scores.extend(rewards)
        total = len(scores)
        self.metrics = {"reward/remote_failed": failed, "reward/remote_retries": retries,
                        "reward/remote_s": time.monotonic() - t0}
        if errors:
            self.last_error = errors[-1]
        if total and failed / total > self.max_fail_fraction:
            self.bad_streak += 1
            if self.max_fail_steps and self.bad_streak >= self.max_fail_steps:
                raise RewardError(f"reward.remote_url {self.url}: {failed} of {total} rows got no valid reward "
                                  f"in {self.bad_streak} consecutive calls (above reward.max_crash_fraction="
                                  f"{self.max_fail_fraction}); last error: {self.last_error}")
        else:
            self.bad_streak = 0
        return torch.tensor(scores, dtype=torch.float32)
