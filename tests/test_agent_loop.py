"""The multi-turn agent loop and the env manager: real Ray env actors, a scripted policy that
answers from what its prompt shows (so which env asked does not have to be guessed)."""
from __future__ import annotations

import pytest

from envs.agent_loop import AgentLoopConfig, project_action, run_episodes
from envs.manager import EnvManager

ENV = "tests.agent_envs:CounterEnv"
GOOD = "<think>count</think><action>inc</action>"


def test_projection_follows_verl_agent():
    assert project_action("<think>ok</think><action>Click[Buy Now]</action>") == ("click[buy now]", True)
    assert project_action("<action>inc</action>") == ("inc", False)                    # no <think>
    assert project_action("<think>好</think><action>inc</action>") == ("inc", False)   # CJK
    assert project_action("I will just " + "x" * 40, fallback_chars=30) == ("x" * 30, False)
    # an over-long output cut at max_new_tokens never closes its action tag: invalid, tail sent
    assert project_action("<think>a long plan</think><action>go to cabinet 1 and then", 12) == ("t 1 and then", False)


@pytest.fixture()
def tok(tiny_model_dir):
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(tiny_model_dir)


def policy(tok, respond, seen):
    def generate(prompts):
        texts = [tok.decode(p) for p in prompts]
        seen.append(texts)
        out = []
        for t in texts:
            ids = tok(respond(t))["input_ids"]
            out.append((ids, [-1.0] * len(ids), "stop"))
        return out
    return generate


def run(tok, manager, respond, seeds, **cfg):
    seen = []
    samples, episodes = run_episodes(manager, policy(tok, respond, seen), lambda m: tok(m[0]["content"])["input_ids"],
                                     lambda ids: tok.decode(ids), seeds, AgentLoopConfig(**cfg))
    return samples, episodes, seen


def test_episodes_samples_tags_and_penalty(ray_cluster, tok):
    manager = EnvManager(ENV, {}, n_groups=2, group_size=2, num_cpus=0.1)
    # seed 0 -> target 2 (group 0), seed 1 -> target 3 (group 1). Group 1 answers its first step
    # without tags: invalid (penalty 0.1), and the text's tail ("inc") still goes to the env.
    respond = lambda t: "inc" if ("target 3" in t and "step 1 " in t) else GOOD  # noqa: E731
    samples, episodes, seen = run(tok, manager, respond, [0, 1], max_steps=6, history_length=2, invalid_penalty=0.1)
    manager.close()
    assert [e["steps"] for e in episodes] == [2, 2, 3, 3] and all(e["won"] for e in episodes)
    assert [e["return"] for e in episodes] == [10.0] * 4
    assert [e["task_type"] for e in episodes] == ["target2", "target2", "target3", "target3"]
    traj2 = [s for s in samples if s.traj == 2]
    assert [s.step for s in traj2] == [0, 1, 2] and {s.group for s in traj2} == {1}
    assert [s.anchor for s in traj2] == [f"value {v}, target 3" for v in range(3)]   # the state acted in
    # The penalty stays apart from the env reward (verl-agent applies it after discounting).
    assert not traj2[0].valid and traj2[0].penalty == pytest.approx(0.1) and traj2[0].env_reward == 0.0
    assert traj2[1].valid and traj2[1].penalty == 0.0 and traj2[-1].env_reward == 10.0 and traj2[-1].done
    assert all(s.valid for s in samples if s.group == 0)
    # The trainer layout: env rewards in step_rewards, the penalty in its own field, and each row's
    # score = its trajectory's env return minus its own penalty.
    from orchestrator.tasks import samples_to_batch
    batch = samples_to_batch(samples, episodes, 0, 0)
    rows = [k for k, s in enumerate(samples) if s.traj == 2]
    assert batch["step_rewards"][rows].tolist() == [0.0, 0.0, 10.0]
    assert batch["penalties"][rows].tolist() == pytest.approx([0.1, 0.0, 0.0])
    assert batch["scores"][rows].tolist() == pytest.approx([9.9, 10.0, 10.0])
    # prompts: history and admissible actions; finished envs stop generating (4, 4, then 2)
    step2 = seen[1][2]  # env 2 at its second step
    assert "already taken 1 step(s)" in step2 and "Action 1: 'inc'" in step2 and "'inc', 'wait'" in step2
    assert [len(x) for x in seen] == [4, 4, 2]
    assert len(samples) == 2 * 2 + 2 * 3
    # group seeding: members of a group share the first observation, so anchors repeat across
    # trajectories and GiGPO's step groups are non-trivial: group 0 has 2 states x 2 trajectories,
    # group 1 has 3 states x 2 trajectories -> 5 anchor groups, each of size 2.
    assert seen[0][0] == seen[0][1] and seen[0][2] == seen[0][3] and seen[0][0] != seen[0][2]
    sizes = {}
    for s in samples:
        sizes[(s.group, s.anchor)] = sizes.get((s.group, s.anchor), 0) + 1
    assert sorted(sizes.values()) == [2] * 5


def test_crash_and_timeout_end_only_that_episode(ray_cluster, tok):
    manager = EnvManager(ENV, {}, n_groups=3, group_size=1, num_cpus=0.1, step_timeout_s=5)
    first = {"target 2": "crash", "target 3": "hang", "target 4": "inc"}   # seeds 0, 1, 2

    def respond(t):
        if "step 1 " in t:
            return f"<think>x</think><action>{next(v for k, v in first.items() if k in t)}</action>"
        return GOOD
    samples, episodes, _ = run(tok, manager, respond, [0, 1, 2], max_steps=5)
    assert manager.errors == 2
    errors = {s.traj: s.info["env_error"] for s in samples if s.step == 0}
    assert "RuntimeError: counter env exploded" in errors[0] and "timed out after 5s" in errors[1]
    assert errors[2] is None and episodes[2]["won"] and episodes[2]["steps"] == 4
    assert episodes[0]["steps"] == episodes[1]["steps"] == 1 and not episodes[0]["won"]
    # an env actor killed mid-episode ends only its own episode
    manager.reset([0, 1, 2])
    import ray
    ray.kill(manager._actors[1])
    out = manager.step({0: "inc", 1: "inc", 2: "inc"})
    assert out[1].done and "step raised" in out[1].info["env_error"] and manager.errors == 3
    assert not out[0].done and out[0].observation == "value 1, target 2"
    # broken actors are replaced at the next reset and play normally
    assert [r.observation for r in manager.reset([0, 1, 2])] == [
        "value 0, target 2", "value 0, target 3", "value 0, target 4"]
    manager.close()
