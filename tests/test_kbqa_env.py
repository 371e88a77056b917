"""The retrieval task played free-running (envs/retrieval/env.py): turn rules by hand, the held-out
split shared with Step-GRPO's rows, and the agent loop driving the real env in Ray env actors with
the env's own prompt and raw actions."""
from __future__ import annotations

import pytest

from envs.base import VAL_SEED_BASE, make_env
from envs.retrieval.env import NOTHING_FOUND
from envs.retrieval.task import SYSTEM_PROMPT, split_examples, train_rows

KW = dict(n_questions=60, val_questions=8, world_seed=0, max_turns=5)


def gold_step(step) -> str:
    return f"<think>next</think><sub-question>{step.sub_question}</sub-question><ret>{step.kb}</ret>"


def answer(text: str) -> str:
    return f"<think>done</think><answer>{text}</answer>"


def test_gold_play_shows_the_gold_results_and_wins():
    env = make_env("kbqa", **KW)
    train, val = split_examples(60, 0, 8)
    obs, info = env.reset(5)
    ex = train[5]
    assert env.example == ex and f"Question: {ex.question}" in obs and "Previous steps" not in obs
    assert info["messages"][0] == {"role": "system", "content": SYSTEM_PROMPT} and info["raw_action"]
    assert info["anchor"] == obs and info["task_type"] == ex.template
    for k, step in enumerate(ex.steps, 1):
        obs, reward, done, info = env.step(gold_step(step))
        assert (reward, done, info["action_valid"]) == (0.0, False, True)
        if step.kb != "none":  # the env ran the same retrieval the generator verified
            assert f"Step {k}: <sub-question>{step.sub_question.lower()}</sub-question><ret>{step.kb}</ret>" in obs
            assert f"Result: {step.result}" in obs
        else:
            assert "Result: (no retrieval)" in obs
    obs, reward, done, info = env.step(answer(ex.answer.upper()))  # SQuAD normalisation: case-free
    assert (reward, done, info["won"], info["task_score"]) == (1.0, True, True, 1.0)


def test_wrong_answer_invalid_steps_and_the_turn_cap():
    env = make_env("kbqa", **KW)
    obs0, _ = env.reset(2)
    obs, reward, done, info = env.step("I think the answer is somewhere")          # no tags: a no-op
    assert (obs, reward, done, info["action_valid"]) == (obs0, 0.0, False, False)
    obs, reward, done, info = env.step(gold_step(env.example.steps[0]).replace("<ret>", "<ret>wiki, "))
    assert obs == obs0 and not info["action_valid"]                                  # not a KB name
    obs, reward, done, info = env.step("<think>t</think><sub-question>zzqx vvq</sub-question><ret>text</ret>")
    assert f"Result: {NOTHING_FOUND}" in obs and info["action_valid"] and not done  # BM25 finds nothing
    obs, reward, done, info = env.step("<think>t</think><sub-question>a</sub-question><ret>table</ret>")
    assert not done and obs.count("Result:") == 2
    obs, reward, done, info = env.step("nothing")                                  # turn 5 of 5
    assert done and info["truncated"] and reward == 0.0 and not info["won"]
    env.reset(3)
    _, reward, done, info = env.step(answer("Nobody Knows"))
    assert (reward, done, info["won"], info["task_score"]) == (0.0, True, False, 0.0)


def test_held_out_questions_are_not_in_step_grpo_rows():
    env = make_env("kbqa", **KW)
    train, val = split_examples(60, 0, 8)
    assert len(train) == 52 and len(val) == 8
    env.reset(VAL_SEED_BASE + 3)
    assert env.example == val[3]
    env.reset(52 + 3)                       # training seeds wrap around the training questions
    assert env.example == train[3]
    rows = train_rows(60, seed=0, val_questions=8)
    ids = {r["extra_info"]["example_id"] for r in rows}
    assert ids == {ex.qid for ex in train} and not ids & {ex.qid for ex in val}
    assert len(rows) == sum(ex.hops + 1 for ex in train)
    with pytest.raises(ValueError, match="val_questions must be in"):
        make_env("kbqa", n_questions=10, val_questions=10)
    with pytest.raises(ValueError, match="max_turns"):
        make_env("kbqa", max_turns=0)


@pytest.fixture()
def tok(tiny_model_dir):
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(tiny_model_dir)


def test_agent_loop_plays_the_env_with_its_prompt_and_raw_actions(ray_cluster, tok):
    """Real env actors; a scripted policy that reads its prompt and plays the gold steps of the
    question it is shown. Group 1 (seed 8) first writes no tags (the env judges it invalid: a no-op,
    penalised) and answers wrongly at the end."""
    from envs.agent_loop import AgentLoopConfig, run_episodes
    from envs.manager import EnvManager
    train, _ = split_examples(60, 0, 8)
    by_question = {ex.question: ex for ex in train}
    seen, calls = [], []

    def respond(text: str, turn: int) -> str:
        ex = by_question[text.split("Question: ", 1)[1].split("\n", 1)[0]]
        done = text.count("Result:")
        if ex is train[8] and turn == 0:
            return "let me think"
        if done < len(ex.steps):
            return gold_step(ex.steps[done])
        return answer("wrong" if ex is train[8] else ex.answer)

    def generate(prompts):
        texts = [tok.decode(p) for p in prompts]
        seen.append(texts)
        return [(ids, [-1.0] * len(ids), "stop")
                for ids in (tok(respond(t, len(seen) - 1))["input_ids"] for t in texts)]

    def encode(msgs):
        from orchestrator.data import encode_prompt
        calls.append(msgs)
        return encode_prompt(tok, msgs, True)

    manager = EnvManager("kbqa", {**KW, "max_turns": 8}, n_groups=2, group_size=2, num_cpus=0.1)
    try:
        samples, episodes = run_episodes(manager, generate, encode, tok.decode, [7, 8],
                                         AgentLoopConfig(max_steps=8, invalid_penalty=0.1))
    finally:
        manager.close()
    h7, h8 = train[7].hops, train[8].hops
    assert [e["steps"] for e in episodes] == [h7 + 1, h7 + 1, h8 + 2, h8 + 2]
    assert [e["won"] for e in episodes] == [True, True, False, False]
    assert [e["return"] for e in episodes] == [1.0, 1.0, 0.0, 0.0]
    assert calls and all(m[0]["content"] == SYSTEM_PROMPT for m in calls)     # the env's own prompt
    assert not any("admissible actions" in t or "<action>" in t for turn in seen for t in turn)
    bad = [s for s in samples if not s.valid]
    assert [(s.traj, s.step, s.penalty) for s in bad] == [(2, 0, 0.1), (3, 0, 0.1)]
    assert all(s.penalty == 0.0 for s in samples if s.valid)
    assert samples[0].info["action"] == gold_step(train[7].steps[0])        # the whole text, as written
    assert samples[-1].env_reward == 0.0 and [s.env_reward for s in samples if s.traj == 0][-1] == 1.0
