"""Tasks a tiny model learns in tens of steps, for the learning tests (tests/test_learning.py).

`digit_model(out)`: the tiny random-init model (tests/tiny.py), warmed by a few supervised steps
to answer any chat prompt with four random digits and EOS. Its samples then differ within a group
(each digit is roughly uniform), so RL has signal from the first step, and what it must learn is a
preference the warm-up did not put there:
- `sevens` (reward): the share of the response's digits that are 7 (~0.1 at the start, 1 at best);
- `SevenCorridor` (env): a corridor of `length` cells; an action that contains a 7 moves one cell
  forward; reaching the end within the episode is a win (reward 1). A group replays the same
  corridor, so cells repeat across trajectories and steps: GiGPO's anchor states.
- `CodeCorridor` (env, bench/learning.py's agent suite): each cell has its own digit; an action moves
  forward when it holds that cell's digit and no other cell's. The right action depends on the
  state (no single answer walks the corridor), which is what GiGPO's step-level credit is for.
"""
from __future__ import annotations

from pathlib import Path

from envs.base import TextEnv

DIGITS = "0123456789"


def digit_model(out: Path, steps: int = 80, seed: int = 0) -> str:
    """The tiny model, fit (AdamW, lr 1e-2) to 'prompt -> 4 uniform digits, EOS' on the prompts the
    pipeline builds: math questions (orchestrator/data.py) and agent turns (envs/agent_loop.py)."""
    import torch
    from transformers import AutoTokenizer

    import tests.tiny as tiny
    from envs.agent_loop import build_messages
    from envs.math import build_prompt, generate_problems
    from orchestrator.data import encode_prompt

    path = tiny.build(Path(out), seed=seed)
    tok = AutoTokenizer.from_pretrained(path)
    digit_ids = [tok.convert_tokens_to_ids(d) for d in DIGITS]
    assert all(isinstance(i, int) and tok.decode([i]) == d for i, d in zip(digit_ids, DIGITS))
    prompts = [encode_prompt(tok, build_prompt(p), True) for p in generate_problems(128, levels=(1, 2), seed=seed)]
    prompts += [encode_prompt(tok, build_messages("walk to the end of the corridor", [("cell 0 of 2", "7")] * (t > 0),
                                                  f"cell {t} of 2", [], t, 2), True) for t in range(2)] * 32
    g = torch.Generator().manual_seed(seed)

    def batch():
        rows = torch.randint(len(prompts), (16,), generator=g).tolist()
        answers = [[digit_ids[d] for d in torch.randint(10, (4,), generator=g).tolist()] + [tok.eos_token_id]
                   for _ in rows]
        return [prompts[r] for r in rows], answers
    return fit(path, batch, steps)


def for_model(out: Path, for_cfg, steps: int = 60, seed: int = 0) -> str:
    """The tiny model, fit to continue a FoR state prompt with one of its candidate steps, chosen
    uniformly (tokenized as the FoR trainer scores them: prompt, then step + newline). A random
    model's sequence log-probs are ~ -11 per token, so P_F would be decided by the candidates'
    lengths alone; after this warm-up P_F is spread over the candidates, as a pretrained LM's is."""
    import random

    from transformers import AutoTokenizer

    import tests.tiny as tiny
    from envs.for_domains import make_domain

    path = tiny.build(Path(out), seed=seed)
    tok = AutoTokenizer.from_pretrained(path)
    d = make_domain(for_cfg)
    problems, _ = d.problems(for_cfg.num_problems, 0, 0)
    rng = random.Random(seed)
    pairs = []
    for prob in problems:
        for _ in range(8):  # random walks: every state on them, each with every candidate step
            state, taken = d.init(prob), []
            while not d.done(prob, state, len(taken)):
                cands = d.candidates(prob, state, taken)
                pairs += [(d.prompt(prob, taken), c) for c in cands]
                taken.append(rng.choice(cands))
                state = d.apply(prob, state, taken[-1])

    def batch():
        chosen = [rng.choice(pairs) for _ in range(16)]
        return ([tok(p)["input_ids"] for p, _ in chosen],
                [tok(a + "\n", add_special_tokens=False)["input_ids"] for _, a in chosen])
    return fit(path, batch, steps)


def fit(path: str, batch, steps: int, lr: float = 1e-2) -> str:
    """`steps` AdamW steps of next-token cross-entropy on the answer tokens of `batch()` ->
    (prompt ids, answer ids) lists; saves the model back to `path`."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path)
    pad = model.config.pad_token_id or 0
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    model.train()
    for _ in range(steps):
        prompts, answers = batch()
        seqs = [p + a for p, a in zip(prompts, answers)]
        labels = [[-100] * len(p) + a for p, a in zip(prompts, answers)]
        width = max(map(len, seqs))
        ids = torch.tensor([s + [pad] * (width - len(s)) for s in seqs])
        lab = torch.tensor([x + [-100] * (width - len(x)) for x in labels])
        att = (torch.arange(width)[None] < torch.tensor([len(s) for s in seqs])[:, None]).long()
        # Logits only where a label is (position t predicts token t+1): the [B, T, V] logits of the
        # whole prompt would cost seconds per step on a CPU.
        hidden = model.model(input_ids=ids, attention_mask=att).last_hidden_state[:, :-1]
        target = lab[:, 1:]
        keep = target != -100
        loss = torch.nn.functional.cross_entropy(model.lm_head(hidden[keep]), target[keep])
        loss.backward()
        opt.step()
        opt.zero_grad()
    model.save_pretrained(path, safe_serialization=True)
    return path


def sevens(data_source, solution_str, ground_truth, extra_info=None) -> float:
    """Share of the response's digits that are 7 (0 for a response without digits)."""
    digits = [c for c in solution_str if c.isdigit()]
    return digits.count("7") / len(digits) if digits else 0.0


class SevenCorridor(TextEnv):
    """Walk `length` cells; an action containing '7' moves forward. Win (reward 1) at the end."""

    def __init__(self, length: int = 2):
        self.length = length

    def reset(self, seed=None):
        self.pos = 0
        return self._obs(), self._info(False)

    def step(self, action_text):
        if "7" in action_text:
            self.pos += 1
        won = self.pos >= self.length
        return self._obs(), (1.0 if won else 0.0), won, self._info(won)

    def _obs(self) -> str:
        return f"cell {self.pos} of {self.length}"

    def _info(self, won: bool) -> dict:
        return {"won": won, "admissible_actions": [], "anchor": self._obs(), "task_type": "corridor",
                "task": "walk to the end of the corridor"}


class CodeCorridor(SevenCorridor):
    """Cell i's digit is `code[i]`; an action moves one cell forward when it contains code[i] and no
    other digit of `code` (else it stays). Win (reward 1) at the end. With the digit model's four
    uniform digits and a 3-digit code a turn moves with p = 0.8^4 - 0.7^4 = 0.17."""

    def __init__(self, code: str = "395"):
        if not code.isdigit() or len(set(code)) != len(code):
            raise ValueError(f"CodeCorridor: code must be distinct digits, got {code!r}")
        super().__init__(len(code))
        self.code = code

    def step(self, action_text):
        need = self.code[min(self.pos, self.length - 1)]
        if self.pos < self.length and need in action_text and not any(d in action_text for d in self.code if d != need):
            self.pos += 1
        won = self.pos >= self.length
        return self._obs(), (1.0 if won else 0.0), won, self._info(won)
