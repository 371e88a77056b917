"""The retrieval task played free-running: the model asks, the knowledge bases answer, turn by turn.

    from envs.base import make_env
    env = make_env("kbqa")                          # or `env.name: kbqa` in a recipe (configs/grpo_retrieval.yaml)
    obs, info = env.reset(seed)                     # a question; info["messages"] is the step prompt
    obs, reward, done, info = env.step(response)    # the model's whole step, R1-Router's tags

Step-GRPO (configs/step_grpo_retrieval.yaml) trains on teacher-forced step states: the prompt of
step t shows the gold steps before it. This env is the same task without teacher forcing, as
R1-Router runs at inference: each turn shows the question and the model's own previous steps with
what the knowledge bases returned for them (task.build_prompt, the same prompt as the step
states), and the model writes either

    <think>…</think><sub-question>…</sub-question><ret>text|table|none</ret>   -> the env retrieves
    <think>…</think><answer>…</answer>                                          -> the episode ends

The reward is the outcome only: the answer's R1-Router answer reward (task.answer_reward: 1 when
the token recall against the gold is 1 for a short gold) on the answering turn, 0 on every other
turn; `won` = reward 1, `task_score` = the answer's token recall (0 until an answer). This is what "plain GRPO" trains on in bench/learning.py's suite (d), and
what both sides are evaluated on (`hyflow eval configs/grpo_retrieval.yaml --checkpoint ...`).

Turn rules. An <answer> ends the episode (checked first: an answer is final). A retrieval step
retrieves from each KB it names (top-1 passage / table row, kb.KnowledgeBases.retrieve; "none"
retrieves nothing) and appends the step to the history. A response with neither step, or with a
<ret> item that is not a KB name (task.ret_items_error), changes nothing and sets
info["action_valid"] = False (the agent loop's invalid-action penalty). After `max_turns` turns
the episode ends unanswered (info["truncated"]).

Questions: `generate_examples(n_questions, world_seed)` of that seed's world (task.py; a recipe
pair keeps `env.kwargs.world_seed` = `data.seed`); the last
`val_questions` are held out. Seeds below VAL_SEED_BASE (the trainer's validation seeds start
there) play the other questions, seed modulo their number; seeds from VAL_SEED_BASE play the held-out
ones. `task.train_rows` gives Step-GRPO the step states of exactly the training questions, so a
recipe pair (step_grpo_retrieval / grpo_retrieval) trains on the same questions and is evaluated on
the same unseen ones.
"""
from __future__ import annotations

from functools import lru_cache

from envs.base import VAL_SEED_BASE, TextEnv, register_env

from .task import (GoldStep, StepState, World, answer_reward, build_prompt, generate_world,
                   parse_response, ret_items_error, split_examples)

NOTHING_FOUND = "(nothing found)"


@lru_cache(maxsize=4)
def _world_and_split(seed: int, n_questions: int, val_questions: int):
    world = generate_world(seed)
    return world, split_examples(n_questions, seed, val_questions, world)


@register_env("kbqa")
class KBQAEnv(TextEnv):
    """Multi-hop questions over the generated world's two knowledge bases (module doc)."""

    def __init__(self, n_questions: int = 400, val_questions: int = 32, world_seed: int = 0, max_turns: int = 6):
        if not (isinstance(max_turns, int) and max_turns >= 1):
            raise ValueError(f"kbqa env: max_turns must be an int >= 1, got {max_turns!r}")
        if not (isinstance(val_questions, int) and 1 <= val_questions < n_questions):
            raise ValueError(f"kbqa env: val_questions must be in [1, n_questions={n_questions}), got {val_questions!r}")
        self.world: World
        self.world, (self.train, self.val) = _world_and_split(world_seed, n_questions, val_questions)
        self.max_turns = max_turns
        self.example, self.history, self.turns = None, [], 0

    def reset(self, seed: int | None = None):
        seed = int(seed or 0)
        pool, k = (self.val, seed - VAL_SEED_BASE) if seed >= VAL_SEED_BASE else (self.train, seed)
        self.example, self.history, self.turns = pool[k % len(pool)], [], 0
        return self._observe({"action_valid": True})

    def _observe(self, extra: dict):
        ex = self.example
        state = StepState(f"{ex.qid}#free{len(self.history)}", ex.qid, len(self.history), ex.question,
                          tuple(self.history), "ret", (ex.answer,), hops=ex.hops, template=ex.template)
        messages = build_prompt(state)
        text = messages[-1]["content"]
        return text, {"messages": messages, "raw_action": True, "anchor": text, "task_type": ex.template,
                      "admissible_actions": [], "won": False, "task_score": 0.0, **extra}

    def step(self, action_text: str):
        if self.example is None:
            raise RuntimeError("kbqa env: step() before reset()")
        self.turns += 1
        out_of_turns = self.turns >= self.max_turns
        answer = parse_response(action_text, "ans")
        if answer is not None:
            reward, recall = answer_reward(answer.answer, (self.example.answer,))
            obs, info = self._observe({"action_valid": True, "won": reward == 1.0, "task_score": recall})
            return obs, reward, True, info
        step = parse_response(action_text, "ret")
        if step is None or ret_items_error(step.kbs) is not None:
            obs, info = self._observe({"action_valid": False, "truncated": out_of_turns})
            return obs, 0.0, out_of_turns, info
        results = [self.world.kbs.retrieve(kb, step.sub_question) for kb in step.kbs if kb != "none"]
        shown = " | ".join(r for r in results if r) or (NOTHING_FOUND if results else "(no retrieval)")
        self.history.append(GoldStep(step.sub_question, ", ".join(step.kbs), shown, ""))
        obs, info = self._observe({"action_valid": True, "truncated": out_of_turns})
        return obs, 0.0, out_of_turns, info

