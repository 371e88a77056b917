"""The multi-turn agent loop (verl-agent / GiGPO style), token in / token out.

Every step of every episode is its own training sample: the prompt is one user message holding
the task, the last `history_length` (observation, action) pairs, the current observation and the
admissible actions; the response is the model's tokens only (`<think>...</think><action>...</action>`),
so env text never enters the response mask. Samples are tagged with their group (same seed),
trajectory, step index and anchor state for GRPO / GiGPO.

An env may render its own prompt and judge its own actions (envs/retrieval/env.py): when a state's
info carries `messages`, those chat messages are the prompt (the history and admissible-action
lines above are then the env's business), and with `raw_action` True the whole response text is
sent as the action, its validity taken from the env's `action_valid` for that step.

The loop knows nothing of Ray workers or the trainer: it gets `generate(prompt_ids) ->
[(response_ids, logprobs, finish_reason)]` and an `EnvManager`. Finished envs stop generating.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Callable

CJK = re.compile(r"[\u4e00-\u9fff]")

INSTRUCTION = ("Now it's your turn to take an action. You should first reason step-by-step about the current "
               "situation. This reasoning process MUST be enclosed within <think> </think> tags. Once you've "
               "finished your reasoning, you should choose an admissible action for current step and present "
               "it within <action> </action> tags.")


@dataclass
class AgentLoopConfig:
    max_steps: int = 15
    history_length: int = 2
    invalid_penalty: float = 0.1     # subtracted from a step's reward when its output is malformed
    max_prompt_tokens: int = 2048
    fallback_chars: int = 30         # malformed output: the last N chars are sent to the env (verl-agent)


@dataclass
class StepSample:
    prompt_ids: list[int]
    response_ids: list[int]
    logprobs: list[float]
    finish_reason: str
    group: int
    traj: int
    step: int
    anchor: str
    env_reward: float                # the env's reward for this step
    penalty: float                   # invalid-action penalty (0 when valid); applied after discounting
    valid: bool
    done: bool
    info: dict = field(default_factory=dict)


def project_action(text: str, fallback_chars: int = 30) -> tuple[str, bool]:
    """(action, valid): the text inside the first <action></action>; valid only with a <think>
    block too and no CJK characters (verl-agent's projection). Malformed output sends its last
    `fallback_chars` characters to the env and is marked invalid. Linear in the text's length
    (plain `str.find`, no backtracking); never raises on a str."""
    i = text.find("<action>")
    j = text.find("</action>", i + 8) if i >= 0 else -1
    if j < 0:
        return text[-fallback_chars:].strip().lower(), False
    action = text[i + 8:j].strip().lower()
    t = text.find("<think>")
    thought = t >= 0 and text.find("</think>", t + 7) >= 0
    return action, thought and not CJK.search(text)


def view(observation: str, info: dict) -> str:
    """What the agent is shown of a state: the env's anchor text when it has one (WebShop: the page
    without the instruction, as verl-agent prompts it), else the raw observation."""
    return info.get("anchor") or observation


def build_messages(task: str, history: list[tuple[str, str]], observation: str, admissible: list[str],
                   step: int, history_length: int) -> list[dict]:
    parts = [f"You are an expert agent. Your task is: {task}"]
    recent = history[-history_length:] if history_length > 0 else []
    if recent:
        first = step - len(recent)
        lines = [f"[Observation {first + k + 1}: '{o}', Action {first + k + 1}: '{a}']" for k, (o, a) in enumerate(recent)]
        parts.append(f"Prior to this step, you have already taken {step} step(s). Below are the most recent "
                     f"{len(recent)} observations and the corresponding actions you took: " + " ".join(lines))
    parts.append(f"You are now at step {step + 1} and your current observation is: {observation}")
    if admissible:
        parts.append("Your admissible actions of the current situation are: [" +
                     ", ".join(f"'{a}'" for a in admissible) + "].")
    parts.append(INSTRUCTION)
    return [{"role": "user", "content": "\n".join(parts)}]


def run_episodes(manager, generate: Callable[[list[list[int]]], list[tuple[list[int], list[float], str]]],
                 encode: Callable[[list[dict]], list[int]], decode: Callable[[list[int]], str],
                 seeds: list[int], cfg: AgentLoopConfig, task_of: Callable[[str, dict], str] | None = None,
                 progress: Callable[[int, int, int], None] | None = None) -> tuple[list[StepSample], list[dict]]:
    """Play one episode in every env of the manager; returns (step samples, one summary per env).

    The invalid-action penalty is kept apart from the env reward (`StepSample.penalty`): as in
    verl-agent, returns are discounted over env rewards only, and the penalty is subtracted from the
    invalid step's own scores afterwards (algorithms/gigpo.py). `progress(done, total, turn)` is
    called after every turn with the number of finished episodes and the turn (1-based)."""
    first = manager.reset(seeds)
    n = manager.size
    task_of = task_of or (lambda obs, info: info.get("task") or info.get("instruction") or obs)
    tasks = [task_of(r.observation, r.info) for r in first]
    obs = [r.observation for r in first]
    infos = [r.info for r in first]
    active = [not r.done for r in first]
    history: list[list[tuple[str, str]]] = [[] for _ in range(n)]
    returns, won, steps_taken = [0.0] * n, [False] * n, [0] * n
    samples: list[StepSample] = []
    for t in range(cfg.max_steps):
        idx = [i for i in range(n) if active[i]]
        if not idx:
            break
        prompts = []
        for i in idx:
            shown = view(obs[i], infos[i])
            own = infos[i].get("messages")
            msgs = own or build_messages(tasks[i], history[i], shown, infos[i].get("admissible_actions", []), t,
                                         cfg.history_length)
            ids = encode(msgs)
            if len(ids) > cfg.max_prompt_tokens and not own:  # drop the history first, as verl-agent does
                ids = encode(build_messages(tasks[i], [], shown, infos[i].get("admissible_actions", []), t, 0))
            prompts.append(ids[-cfg.max_prompt_tokens:])
        outputs = generate(prompts)
        actions = {}
        for i, (resp, lps, finish) in zip(idx, outputs):
            text = decode(resp)
            action, valid = (text, True) if infos[i].get("raw_action") else project_action(text, cfg.fallback_chars)
            actions[i] = (action, valid, resp, lps, finish)
        results = manager.step({i: a[0] for i, a in actions.items()})
        for k, i in enumerate(idx):
            action, valid, resp, lps, finish = actions[i]
            r = results[i]
            if infos[i].get("raw_action"):  # the env judged the whole text
                valid = bool(r.info.get("action_valid", True))
            penalty = 0.0 if valid else cfg.invalid_penalty
            samples.append(StepSample(prompts[k], resp, lps, finish, manager.group_of(i), i, t,
                                      str(infos[i].get("anchor", obs[i])), r.reward, penalty, valid, r.done,
                                      {"task_type": infos[i].get("task_type", ""), "env_error": r.info.get("env_error"),
                                       "observation": view(obs[i], infos[i]), "action": action}))
            history[i].append((view(obs[i], infos[i]), action))
            obs[i], infos[i] = r.observation, r.info
            returns[i] += r.reward
            steps_taken[i] = t + 1
            if r.done:
                active[i] = False
                won[i] = bool(r.info.get("won", False))
        if progress is not None:
            progress(n - sum(active), n, t + 1)
    if progress is not None:  # episodes cut at max_steps are finished too
        progress(n, n, max(steps_taken, default=0))
    summaries = [{"group": manager.group_of(i), "traj": i, "return": returns[i], "won": won[i],
                  "steps": steps_taken[i], "task_type": first[i].info.get("task_type", ""),
                  "task_score": infos[i].get("task_score"), "error": first[i].info.get("env_error")}
                 for i in range(n)]
    return samples, summaries
