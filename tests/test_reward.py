"""workers/reward.py: the reward function runs in a pool of worker processes with a per-call time
limit; hung calls, crashes and dead processes score the penalty and are counted, the pool replaces
the process, and a function that fails on most rows for max_crash_steps batches stops the run.

Every reward function here is a real file (`path/to/file.py:function`), loaded the way a recipe
loads it; processes are real and are checked dead after `close()`.
"""
from __future__ import annotations

import textwrap
import time

import pytest
import torch

from orchestrator.batch import Batch
from orchestrator.config import ConfigError, load_config
from workers.reward import RewardError, RewardFn

REWARDS = '''
import os
import time


def hang_on_request(data_source, solution_str, ground_truth, extra_info=None):
    """Hangs forever on "hang", kills its own process on "die", else scores an exact match."""
    if solution_str == "hang":
        while True:
            time.sleep(0.1)
    if solution_str == "die":
        os._exit(7)
    return float(solution_str == ground_truth)


def always_raises(data_source, solution_str, ground_truth, extra_info=None):
    raise ValueError(f"cannot parse {solution_str!r}")


def raises_on_x(data_source, solution_str, ground_truth, extra_info=None):
    if solution_str.startswith("x"):
        raise KeyError(solution_str)
    return 1.0


def with_dict(data_source, solution_str, ground_truth, extra_info=None):
    if solution_str == "none":
        return None
    if solution_str == "noscore":
        return {"acc": 1.0}
    if solution_str == "nan":
        return {"score": float("nan")}
    return {"score": 0.5 if solution_str == ground_truth else 0.25, "acc": float(solution_str == ground_truth),
            "note": "text is not a metric", "level": extra_info["level"]}
'''


@pytest.fixture()
def rewards_file(tmp_path) -> str:
    path = tmp_path / "my_rewards.py"
    path.write_text(REWARDS)
    return str(path)


def _pids(fn: RewardFn) -> list[int]:
    return [w.proc.pid for w in fn.pool.workers]


def _gone(pid: int, within: float = 10.0) -> bool:
    """The process has exited and been reaped (no /proc entry, or a zombie no more)."""
    end = time.monotonic() + within
    while time.monotonic() < end:
        try:
            with open(f"/proc/{pid}/stat") as f:
                if f.read().split(")")[-1].split()[0] == "Z":
                    return True
        except FileNotFoundError:
            return True
        time.sleep(0.05)
    return False


def _rows(solutions, truth="1"):
    n = len(solutions)
    return ["src"] * n, list(solutions), [truth] * n


@pytest.fixture()
def make_fn():
    made = []

    def make(spec, **kw):
        fn = RewardFn(spec, None, kw.pop("crash_penalty", -1.0), **kw)
        made.append(fn)
        return fn
    yield make
    for fn in made:
        pids = _pids(fn)
        fn.close()
        assert all(_gone(p) for p in pids), "a reward worker outlived close()"


def test_hung_call_times_out_is_counted_and_the_process_is_replaced(rewards_file, make_fn):
    fn = make_fn(f"{rewards_file}:hang_on_request", timeout_s=2.0, num_workers=2)
    assert fn.score(*_rows(["1", "2"]))[0] == [1.0, 0.0]  # warm: both workers up
    before = set(_pids(fn))
    t0 = time.monotonic()
    scores, metrics = fn.score(*_rows(["1", "0", "hang", "1", "1", "0", "1", "1"]))
    elapsed = time.monotonic() - t0
    assert scores == [1.0, 0.0, -1.0, 1.0, 1.0, 0.0, 1.0, 1.0]
    assert metrics["reward/timed_out"] == 1 and metrics["reward/crashed"] == 0
    assert 2.0 <= elapsed < 2.0 + 10.0, elapsed  # the limit, plus a margin for a loaded machine
    killed = before - set(_pids(fn))
    assert len(killed) == 1 and fn.pool.restarts == 1
    assert _gone(killed.pop())  # the hung process is dead, not abandoned
    t0 = time.monotonic()
    assert fn.score(*_rows(["1", "0", "1", "1"]))[0] == [1.0, 0.0, 1.0, 1.0]  # the replaced pool scores
    assert time.monotonic() - t0 < 2.0 + 10.0


def test_every_hung_row_scores_the_penalty_and_the_batch_still_finishes(rewards_file, make_fn):
    fn = make_fn(f"{rewards_file}:hang_on_request", timeout_s=1.0, num_workers=2, max_crash_steps=0)
    scores, metrics = fn.score(*_rows(["hang", "1", "hang", "hang", "1"]))
    assert scores == [-1.0, 1.0, -1.0, -1.0, 1.0]
    assert metrics["reward/timed_out"] == 3 and fn.pool.restarts == 3


def test_a_worker_that_kills_itself_scores_the_penalty_and_is_replaced(rewards_file, make_fn, caplog):
    fn = make_fn(f"{rewards_file}:hang_on_request", num_workers=1)
    with caplog.at_level("WARNING", logger="workers.reward"):
        scores, metrics = fn.score(*_rows(["1", "die", "1", "0", "1", "1", "0", "1"]))  # chunks of 4
    assert scores == [1.0, -1.0, 1.0, 0.0, 1.0, 1.0, 0.0, 1.0]  # the rest of its chunk went to the replacement
    assert metrics["reward/crashed"] == 1 and metrics["reward/timed_out"] == 0
    assert fn.pool.restarts == 1
    assert "row 1: the scoring process died (exit code 7)" in caplog.text
    assert fn.score(*_rows(["1", "1"]))[0] == [1.0, 1.0]


def test_a_function_that_always_raises_stops_the_run_after_max_crash_steps(rewards_file, make_fn):
    spec = f"{rewards_file}:always_raises"
    fn = make_fn(spec, max_crash_fraction=0.5, max_crash_steps=3)
    for _ in range(2):  # below the limit: penalty and counts, no error
        scores, metrics = fn.score(*_rows(["a", "b", "c", "d"]))
        assert scores == [-1.0] * 4 and metrics["reward/crashed"] == 4
    with pytest.raises(RewardError) as err:
        fn.score(*_rows(["a", "b", "c", "d"]))
    msg = str(err.value)
    assert msg.startswith(f"reward.function {spec!r} crashed or timed out on more than "
                          f"reward.max_crash_fraction=0.5 of the rows in 3 consecutive batches")
    assert "reward.max_crash_steps=3; rates 100%, 100%, 100%" in msg
    assert "last error: row 3: ValueError: cannot parse 'd' (at " in msg and "my_rewards.py:" in msg
    assert "in always_raises)" in msg


def test_the_crash_streak_resets_on_a_good_batch_and_counts_only_above_the_fraction(rewards_file, make_fn):
    fn = make_fn(f"{rewards_file}:raises_on_x", max_crash_fraction=0.5, max_crash_steps=2)
    bad, half, good = ["x1", "x2", "x3", "ok"], ["x1", "x2", "ok", "ok"], ["ok"] * 4
    fn.score(*_rows(bad))
    fn.score(*_rows(half))        # 50% is not more than 0.5: the streak restarts
    fn.score(*_rows(bad))
    fn.score(*_rows(good))
    fn.score(*_rows(bad))
    with pytest.raises(RewardError, match=r"in 2 consecutive batches .*rates 75%, 75%\); last error: row 2: KeyError"):
        fn.score(*_rows(bad))


def test_max_crash_steps_zero_never_stops(rewards_file, make_fn):
    fn = make_fn(f"{rewards_file}:always_raises", max_crash_steps=0)
    for _ in range(4):
        assert fn.score(*_rows(["a", "b"]))[1]["reward/crashed"] == 2


def test_dict_returns_give_the_score_and_numeric_metrics(rewards_file, make_fn):
    fn = make_fn(f"{rewards_file}:with_dict", crash_penalty=-2.0)
    extra = [{"level": 1}, {"level": 3}, None, None, None]
    scores, metrics = fn.score(["s"] * 5, ["7", "8", "none", "noscore", "nan"], ["7"] * 5, extra)
    assert scores == [0.5, 0.25, -2.0, -2.0, -2.0]  # no number, no "score", NaN: each a crashed row
    assert metrics == {"reward/crashed": 3, "reward/timed_out": 0, "reward/acc": 0.5, "reward/level": 2.0}


def test_a_reward_module_that_fails_in_the_worker_stops_with_reward_error(tmp_path, make_fn):
    # Imports in the driver (first import writes the marker), fails in every worker process after.
    marker = tmp_path / "imported_once"
    path = tmp_path / "flaky.py"
    path.write_text(textwrap.dedent(f"""
        import os
        if os.path.exists({str(marker)!r}):
            raise RuntimeError("second import")
        open({str(marker)!r}, "w").close()

        def score(data_source, solution_str, ground_truth, extra_info=None):
            return 1.0
    """))
    fn = make_fn(f"{path}:score")
    with pytest.raises(RewardError, match=r"the scoring process could not load it: .*RuntimeError: second import"):
        fn.score(*_rows(["1"]))


def test_call_decodes_the_batch_and_returns_a_tensor():
    from transformers import AutoTokenizer

    from orchestrator.model_prep import embedded_model_dir
    tok = AutoTokenizer.from_pretrained(embedded_model_dir())
    texts = ["The answer is #### 42", "I think \\boxed{41}", "no idea"]
    ids = [tok.encode(t, add_special_tokens=False) for t in texts]
    width = max(map(len, ids))
    responses = torch.tensor([x + [0] * (width - len(x)) for x in ids])
    mask = torch.tensor([[1] * len(x) + [0] * (width - len(x)) for x in ids])
    batch = Batch(tensors={"responses": responses, "response_mask": mask},
                  non_tensors={"data_source": ["gsm8k"] * 3, "ground_truth": ["42"] * 3})
    fn = RewardFn.from_config(load_config(None).reward, tok)
    try:
        scores, metrics = fn(batch)
    finally:
        fn.close()
    assert scores.dtype == torch.float32 and scores.tolist() == [1.0, 0.0, 0.0]
    assert metrics == {"reward/crashed": 0, "reward/timed_out": 0}


def test_from_config_takes_the_reward_keys(rewards_file):
    cfg = load_config(None, [f"reward.function={rewards_file}:hang_on_request", "reward.timeout_s=3.5",
                             "reward.num_workers=1", "reward.max_crash_fraction=0.25", "reward.max_crash_steps=5",
                             "reward.crash_penalty=-0.5"])
    fn = RewardFn.from_config(cfg.reward, None)
    try:
        assert (fn.pool.timeout_s, len(fn.pool.workers), fn.max_crash_fraction, fn.max_crash_steps,
                fn.crash_penalty) == (3.5, 1, 0.25, 5, -0.5)
    finally:
        fn.close()


@pytest.mark.parametrize("override, message", [
    ("reward.timeout_s=0", "reward.timeout_s: must be > 0, got 0.0"),
    ("reward.num_workers=0", "reward.num_workers: must be >= 1, got 0"),
    ("reward.max_crash_fraction=1.5", "reward.max_crash_fraction: must be in [0, 1], got 1.5"),
    ("reward.max_crash_steps=-1", "reward.max_crash_steps: must be >= 0, got -1"),
])
def test_reward_keys_are_validated(override, message):
    with pytest.raises(ConfigError) as err:
        load_config(None, [override])
    assert str(err.value) == message


def test_a_bad_spec_fails_in_the_driver_before_any_process_starts(tmp_path):
    with pytest.raises(ValueError, match=r"file .*missing\.py does not exist"):
        RewardFn(f"{tmp_path}/missing.py:score", None)

