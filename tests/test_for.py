"""Flow of Reasoning on BlocksWorld: the worker's GFlowNet loss pieces against hand / direct
computations, the driver's helpers, and one real FoR iteration on Ray (2 FSDP ranks, LoRA, tiny
model) with its checkpoint restored into a fresh trainer."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from algorithms.gflownet import finite_action_logprob, tb_loss, vargrad_tb_loss
from algorithms.replay import PrioritizedReplay
from envs import blocksworld as bw
from orchestrator.config import ConfigError, load_config
from envs import prontoqa as pq
from envs.for_domains import BlocksWorldDomain, ProntoQADomain
from orchestrator.for_trainer import (Cursor, correct_solutions, creativity, local_search_round, problem_rows,
                                      replay_from_json, replay_to_json, solution_metrics)
from tests.test_recipes import assert_all_cpus_released
from workers.gfn_actor import chosen_log_pf, problem_objective

REPO = Path(__file__).resolve().parents[1]
RECIPE = str(REPO / "configs/for_blocksworld.yaml")


# ------------------------------------------------------------------------------ recipe
def test_recipe_loads_and_bad_values_name_the_key():
    cfg = load_config(RECIPE)
    assert cfg.for_.enabled and cfg.for_.objective == "vargrad_tb" and cfg.actor.lora_rank == 32
    assert (REPO / "configs/for_blocksworld.yaml").read_text().splitlines()[0] == \
        "# hyflow train configs/for_blocksworld.yaml"
    with pytest.raises(ConfigError, match=r"for_\.objective"):
        load_config(RECIPE, ["for_.objective=tbx"])
    with pytest.raises(ConfigError, match=r"for_\.domain"):
        load_config(RECIPE, ["for_.domain=sudoku"])
    with pytest.raises(ConfigError, match=r"for_\.epsilon: must be \[start, end\]"):
        load_config(RECIPE, ["for_.epsilon=[0.3]"])
    with pytest.raises(ConfigError, match=r"for_\.n_samples: must be >= 1"):
        load_config(RECIPE, ["for_.n_samples=0"])


# ------------------------------------------------------------------------------ worker math
def test_chosen_log_pf_is_a_softmax_over_each_steps_candidates():
    # 2 trajectories, T = 2; traj 0: step 0 has 3 candidates (chose 1), step 1 has 2 (chose 0);
    # traj 1: one step with 2 candidates (chose 1), its step 1 is padding.
    seq = torch.tensor([-1.0, -2.0, -0.5, -3.0, -1.5, -0.2, -0.7], requires_grad=True)
    flat = torch.tensor([0, 0, 0, 1, 1, 2, 2])
    slot = torch.tensor([0, 1, 2, 0, 1, 0, 1])
    chosen = torch.tensor([0, 1, 0, 1, 0, 0, 1])
    mask = torch.tensor([[1.0, 1.0], [1.0, 0.0]])
    lp = chosen_log_pf(seq, flat, slot, chosen, 2, 2, mask)

    def lse(*x):
        return math.log(sum(math.exp(v) for v in x))
    want = [[-2.0 - lse(-1, -2, -0.5), -3.0 - lse(-3, -1.5)], [-0.7 - lse(-0.2, -0.7), 0.0]]
    assert torch.allclose(lp, torch.tensor(want), atol=1e-6)
    lp.sum().backward()  # d/dx_k log softmax_c = 1[k = c] - p_k, per step
    p0 = torch.softmax(torch.tensor([-1.0, -2.0, -0.5]), 0)
    assert torch.allclose(seq.grad[:3], torch.tensor([0.0, 1.0, 0.0]) - p0, atol=1e-6)
    with pytest.raises(ValueError, match="has no chosen candidate row"):
        chosen_log_pf(seq.detach(), flat, slot, torch.zeros(7, dtype=torch.long), 2, 2, mask)


def test_problem_objectives_match_the_algorithms_library():
    log_pf = torch.tensor([[-0.5, -1.0], [-0.2, 0.0], [-2.0, -0.1]])
    mask = torch.tensor([[1.0, 1.0], [1.0, 0.0], [1.0, 1.0]])
    log_pb = torch.tensor([[-math.log(2), -math.log(3)], [-math.log(2), 0.0], [0.0, -math.log(2)]])
    log_r = torch.tensor([math.log(100.0), math.log(5.0), math.log(0.1)])
    loss, phi = problem_objective("vargrad_tb", log_pf, log_pb, log_r, mask)
    want_phi = [math.log(100) - math.log(2) - math.log(3) + 1.5, math.log(5) - math.log(2) + 0.2,
                math.log(0.1) - math.log(2) + 2.1]
    assert torch.allclose(phi, torch.tensor(want_phi), atol=1e-6)
    mean = sum(want_phi) / 3
    assert loss.item() == pytest.approx(sum((x - mean) ** 2 for x in want_phi) / 3, rel=1e-6)
    assert loss.item() == pytest.approx(vargrad_tb_loss(log_pf, log_pb, log_r, mask, [7, 7, 7]).item())
    z = torch.tensor(1.5)
    loss_tb, _ = problem_objective("tb", log_pf, log_pb, log_r, mask, z)
    assert loss_tb.item() == pytest.approx(sum((1.5 - x) ** 2 for x in want_phi) / 3, rel=1e-6)
    assert loss_tb.item() == pytest.approx(tb_loss(log_pf, log_pb, log_r, z, mask).item())
    with pytest.raises(ValueError, match="unknown GFlowNet objective 'xdb'"):
        problem_objective("xdb", log_pf, log_pb, log_r, mask)
    with pytest.raises(ValueError, match="objective 'fl_db' needs log_flow"):
        problem_objective("fl_db", log_pf, log_pb, log_r, mask)


def test_grpo_baseline_objective_by_hand():
    """R = (100, 5, 0.1): mean 35.0333, unbiased std 56.3085; A_i = (R_i - mean) / (std + 1e-6);
    loss = -mean_i A_i * (sum of the row's masked log P_F); its gradient w.r.t. log P_F[i, t] is
    -A_i / 3 on real steps and 0 on padding."""
    log_pf = torch.tensor([[-0.5, -1.0], [-0.2, 0.7], [-2.0, -0.1]], requires_grad=True)
    mask = torch.tensor([[1.0, 1.0], [1.0, 0.0], [1.0, 1.0]])
    log_r = torch.tensor([math.log(100.0), math.log(5.0), math.log(0.1)])
    mean = (100 + 5 + 0.1) / 3
    std = math.sqrt(sum((x - mean) ** 2 for x in (100, 5, 0.1)) / 2)
    adv = [(x - mean) / (std + 1e-6) for x in (100, 5, 0.1)]
    loss, _ = problem_objective("grpo", log_pf, torch.zeros(3, 2), log_r, mask)
    assert loss.item() == pytest.approx(-(adv[0] * -1.5 + adv[1] * -0.2 + adv[2] * -2.1) / 3, rel=1e-6)
    loss.backward()
    want = torch.tensor([[-adv[0] / 3] * 2, [-adv[1] / 3, 0.0], [-adv[2] / 3] * 2])
    assert torch.allclose(log_pf.grad, want, atol=1e-6)
    same, _ = problem_objective("grpo", log_pf.detach(), torch.zeros(3, 2), torch.zeros(3), mask)
    assert same.item() == 0.0  # equal rewards: no signal


def test_grpo_objective_is_on_policy_only():
    from orchestrator.config import ConfigError, load_config
    with pytest.raises(ConfigError, match=r"^for_\.objective: grpo is on-policy; set for_\.use_buffer_prob, "
                                          r"for_\.epsilon, for_\.local_search_tries, for_\.pf_temp_prob to 0"):
        load_config(str(REPO / "configs/for_blocksworld.yaml"), ["for_.objective=grpo"])
    load_config(str(REPO / "configs/for_blocksworld.yaml"), [
        "for_.objective=grpo", "for_.use_buffer_prob=[0,0]", "for_.epsilon=[0,0]", "for_.local_search_tries=0",
        "for_.pf_temp_prob=0"])


# ------------------------------------------------------------------------------ driver helpers
def test_candidates_rewards_metrics_and_cursor():
    d = BlocksWorldDomain((3,), (2,))
    p = bw.generate_problems(1, (3,), (2,), seed=3)[0]
    gold = list(p.gold_plan)
    assert d.reward(p, d.walk(p, gold)[-1], gold) == 100.0 and d.correct(p, gold)
    s1 = d.walk(p, gold[:1])[-1]
    assert gold[0] not in d.candidates(p, s1, gold[:1]) or bw.allowed_actions(s1) == [gold[0]]
    assert d.candidates(p, p.init, []) == bw.allowed_actions(p.init)
    with pytest.raises(ValueError, match="is not applicable"):
        d.walk(p, ["stack the red block on top of the red block"])
    wrong = tuple(bw.allowed_actions(p.init)[:1])
    assert correct_solutions({0: [tuple(gold), tuple(gold), wrong]}, [p], d) == {0: [tuple(gold)]}
    m = solution_metrics(correct_solutions({0: [tuple(gold), tuple(gold), wrong]}, [p], d), "x")
    assert m == {"x/accuracy": 1.0, "x/diversity": 1.0}
    m = solution_metrics(correct_solutions({0: [wrong], 1: [tuple(gold)]}, [p, p], d), "x")
    assert m["x/accuracy"] == 0.5
    # creativity: 3 distinct correct solutions, one of them found by the baseline -> 2/3
    assert creativity({0: [("a",), ("b",)], 1: [("c",)]}, {0: [["a"]], 1: []}) == pytest.approx(2 / 3)
    assert math.isnan(creativity({0: []}, {0: [["a"]]}))
    c = Cursor(5, 2, seed=1)
    seen = c.next() + c.next()
    assert len(set(seen)) == 4 and c.epoch == 0
    c.next()
    assert c.epoch == 1 and c.position == 2  # a partial tail is skipped: the third batch starts epoch 1
    c2 = Cursor(5, 2, seed=1)
    c2.load_state_dict(c.state_dict())
    assert c2.next() == c.next()
    with pytest.raises(ValueError, match="saved for 5 problems with seed 1"):
        Cursor(6, 2, seed=1).load_state_dict(c.state_dict())


def test_replay_json_round_trip_keeps_entries_and_next_sample():
    import json
    rb = PrioritizedReplay(3, seed=5)
    for i, r in enumerate([0.1, 2.0, -math.inf, 1.0, 3.0]):
        rb.add(i % 2, (f"a{i}", "b"), r, (f"a{i}", "b"))
    back = PrioritizedReplay(1)
    back.load_state_dict(replay_from_json(json.loads(json.dumps(replay_to_json(rb)))))
    for pid in (0, 1):
        assert back.entries(pid) == rb.entries(pid)
        assert back.sample(pid, 4) == rb.sample(pid, 4)


def test_problem_rows_blocksworld_multiplies_log_r_and_has_zero_log_pb():
    """Hand problem (red, blue, orange on the table; goal blue on orange, red on blue): the gold
    plan and a wrong 4-step plan. Rows: 3 + 3 + 2 + 2 candidates for the gold plan (one chosen
    per step); log R and the energies are multiplied by tau = 2; log P_B = 0 (a tree)."""
    init = bw.State.from_stacks([["red"], ["blue"], ["orange"]])
    p = bw.Problem(init, (("blue", "orange"), ("red", "blue")), 4, ())
    gold = ("pick up the blue block", "stack the blue block on top of the orange block",
            "pick up the red block", "stack the red block on top of the blue block")
    wrong = ("pick up the red block", "stack the red block on top of the blue block",
             "unstack the red block from on top of the blue block", "put down the red block")
    d = BlocksWorldDomain(slack=0)
    pairs, index, meta = problem_rows(d, p, [gold, wrong], [math.log(100.0), math.log(0.1)], 2.0)
    flat = index["gfn_flat"].tolist()
    assert [flat.count(t) for t in range(4)] == [3, 3, 2, 2]              # trajectory 0, steps 0..3
    assert [sum(c for f, c in zip(flat, index["gfn_chosen"].tolist()) if f == k) for k in range(8)] == [1] * 8
    assert meta["gfn_log_r"] == pytest.approx([2 * math.log(100.0), 2 * math.log(0.1)])
    assert meta["gfn_log_pb"] == [[0.0] * 4, [0.0] * 4] and meta["gfn_mask"] == [[1.0] * 4, [1.0] * 4]
    # E(s) = -log(0.01 + goal fraction): s_0 none, gold s_2 half; times tau = 2; -log R at the end
    e = meta["gfn_energy"]
    assert e[0][0] == pytest.approx(2 * math.log(100.0)) and e[0][2] == pytest.approx(-2 * math.log(0.51))
    assert e[0][4] == pytest.approx(-2 * math.log(100.0)) and e[1][4] == pytest.approx(-2 * math.log(0.1))
    assert pairs[0][0] == d.prompt(p, []) and pairs[3][0] == d.prompt(p, gold[:1])
    with pytest.raises(ValueError, match="is not among its candidates"):
        problem_rows(d, p, [("pick up the red block", "put down the red block", "pick up the red block")], [0.0], 1.0)


def test_problem_rows_prontoqa_divides_log_r():
    """PrOntoQA (FoR divides log R by tau): the gold chain's R = 0.9 (1e-5 + 40 hops), the
    energy after one valid step -log(0.9 (1e-5 + 20)); both divided by tau = 2."""
    d = ProntoQADomain((3,), slack=1)
    p = pq.generate_examples(1, [3], seed=0)[0]
    rules = tuple(p.proof[1::2])
    r = 0.9 * (1e-5 + 20 * 3 + 20 * 3)
    _, _, meta = problem_rows(d, p, [rules], [math.log(r)], 2.0)
    assert meta["gfn_log_r"] == pytest.approx([math.log(r) / 2])
    assert meta["gfn_energy"][0][1] == pytest.approx(-math.log(0.9 * (1e-5 + 20)) / 2)
    assert meta["gfn_energy"][0][3] == pytest.approx(-math.log(r) / 2)
    assert meta["gfn_log_pb"] == [[0.0, 0.0, 0.0]]


def test_local_search_round_fixed_bar_over_the_given_problems_only():
    """Problem 0's best is ("c", "d") (log R 3); its hand-made completions score 5, 4, 2, 5: all
    above 3 accepted, in order, the repeat too (a rising bar would keep only the first).
    Problem 1 is not passed (the trainer passes the fresh problems only): never proposed,
    never scored. Ties pick the first best; no problems -> no scoring call."""
    trajs = {0: [("a", "b"), ("c", "d"), ("e", "f")], 1: [("z", "z")]}
    lr = {0: [1.0, 3.0, 3.0], 1: [9.0]}
    table = {("c", "x"): 5.0, ("c", "y"): 4.0, ("c", "z"): 2.0}
    proposed, scored = [], []

    def propose(pid, best):
        proposed.append((pid, best))
        return [("c", "x"), ("c", "y"), ("c", "z"), ("c", "x")]

    def score(items):
        scored.append(list(items))
        return [table[a] for _, a in items]

    out = local_search_round([0], trajs, lr, propose, score)
    assert out == {0: [(("c", "x"), 5.0), (("c", "y"), 4.0), (("c", "x"), 5.0)]}
    assert proposed == [(0, ("c", "d"))] and len(scored) == 1 and {p for p, _ in scored[0]} == {0}
    assert local_search_round([], trajs, lr, propose, score) == {} and len(scored) == 1


# ------------------------------------------------------------------------------ on Ray
def _expected(trainer, batches, objective, log_z=None):
    """Single-process reference of the global loss (and dlogZ) from the actor's no-grad log-probs."""
    n_total = sum(b.meta["gfn_n_traj"] for b in batches)
    loss, grads = 0.0, []
    for i, b in enumerate(batches):
        seq = (trainer.actor.compute_logprobs(b)["logprobs"] * b["response_mask"]).sum(-1)
        n, T = b.meta["gfn_n_traj"], b.meta["gfn_T"]
        mask = torch.tensor(b.meta["gfn_mask"])
        lp = chosen_log_pf(seq, b["gfn_flat"], b["gfn_slot"], b["gfn_chosen"], n, T, mask)
        z = None if log_z is None else torch.tensor(log_z[i], requires_grad=True)
        l_, _ = problem_objective(objective, lp, torch.tensor(b.meta["gfn_log_pb"]),
                                  torch.tensor(b.meta["gfn_log_r"]), mask, z)
        loss += l_.item() * n / n_total
        if z is not None:
            (l_ * n / n_total).backward()
            grads.append(z.grad.item())
    return loss, grads


def _reference_grad_norm(model_dir, cfg, batches, objective, log_z=None):
    """The first update's gradient norm, single process, by direct backprop through the model (no
    two-pass surrogate): the same seed gives the workers' initial LoRA weights."""
    from workers.backends.fsdp_model import load_hf_model, response_logprobs
    from workers.backends.lora import LoraSpec, inject_lora
    from workers.gfn_actor import _layout_only
    torch.manual_seed(cfg.trainer.seed)
    model = load_hf_model(model_dir, "causal_lm", torch.float32, cfg.trainer.seed)
    a = cfg.actor
    inject_lora(model, LoraSpec.from_options(a.lora_rank, a.lora_alpha, 0.0, a.lora_target_modules))
    n_total = sum(b.meta["gfn_n_traj"] for b in batches)
    total = 0.0
    for i, b in enumerate(batches):
        lp, _ = response_logprobs(model, _layout_only(b))
        seq = (lp * b["response_mask"]).sum(-1)
        mask = torch.tensor(b.meta["gfn_mask"])
        log_pf = chosen_log_pf(seq, b["gfn_flat"], b["gfn_slot"], b["gfn_chosen"], b.meta["gfn_n_traj"],
                               b.meta["gfn_T"], mask)
        z = None if log_z is None else torch.tensor(log_z[i])
        loss, _ = problem_objective(objective, log_pf, torch.tensor(b.meta["gfn_log_pb"]),
                                    torch.tensor(b.meta["gfn_log_r"]), mask, z)
        total = total + loss * b.meta["gfn_n_traj"] / n_total
    total.backward()
    return math.sqrt(sum(float((p.grad.double() ** 2).sum()) for p in model.parameters() if p.grad is not None))


def _lora(name):
    return "lora_" in name


def test_one_for_iteration_on_ray_and_checkpoint_restore(ray_cluster, tiny_model_dir, tmp_path):
    from orchestrator.for_trainer import ForTrainer

    cfg = load_config(RECIPE, [
        f"model.path={tiny_model_dir}", f"trainer.output_dir={tmp_path / 'run'}", "trainer.total_steps=4",
        "actor.world_size=2", "actor.lora_rank=8", "actor.lora_alpha=16", "actor.lr=0.01",
        "for_.num_problems=2", "data.batch_size=2", "for_.n_blocks=[3]", "for_.plan_lengths=[2]",
        "for_.objective=tb", "for_.logz_lr=0.1", "for_.local_search_tries=4", "for_.val_problems=0",
        "actor.micro_batch_size=4", "for_.ll_weight=0"])
    tr = ForTrainer(cfg)
    try:
        before = tr.actor.param_checksums()
        # The distributed update's loss and log Z gradient equal a single-process reference.
        p = tr.problems
        trajs = [[tuple(p[0].gold_plan)], [tuple(p[1].gold_plan)]]
        rng = np.random.default_rng(0)
        for k in range(2):  # add random-walk trajectories (2 steps each)
            for _ in range(2):
                trajs[k].append(tuple(tr._complete(p[k])((), rng)))
        lr = [tr.log_rewards([(k, a) for a in trajs[k]]) for k in range(2)]
        assert lr[0][0] == pytest.approx(math.log(100.0))  # the gold plan
        batches = tr.problem_batches(p, trajs, lr, 1.0)
        assert batches[0]["input_ids"].shape[1] == batches[1]["input_ids"].shape[1]
        z = [0.5, -1.0]
        want_loss, want_grad = _expected(tr, batches, "tb", z)
        want_norm = _reference_grad_norm(tiny_model_dir, cfg, batches, "tb", z)
        outs = tr.actor.gfn_update(batches, "tb", z)
        # The two-pass update's gradient (micro-batches of 4 rows, 2 ranks) = direct backprop.
        assert outs[0]["grad_norm"] == pytest.approx(want_norm, rel=1e-3)
        assert sum(o["loss"] for o in outs) == pytest.approx(want_loss, rel=1e-4)
        got_grad = {i: g for o in outs for i, g in o["log_z_grad"].items()}
        assert [got_grad[0], got_grad[1]] == pytest.approx(want_grad, rel=1e-4)
        assert {i for o in outs for i in o["log_z_grad"]} == {0, 1}  # each rank took one problem
        want_var, _ = _expected(tr, batches, "vargrad_tb")
        outs = tr.actor.gfn_update(batches, "vargrad_tb")
        assert sum(o["loss"] for o in outs) == pytest.approx(want_var, rel=1e-4)

        # One FoR iteration through the trainer: sampling, local search, replay, update, log Z.
        row = tr.step()
        assert math.isfinite(row["for/loss"]) and row["for/loss"] >= 0
        assert row["for/replay_size"] == len(tr.replay) > 0
        assert 0 <= row["for/accuracy"] <= 1 and math.isfinite(row["for/log_r_mean"])
        assert row["step"] == tr.global_step == 1
        assert tr.log_z.detach().abs().sum() > 0  # Adam moved the learned log Z
        after = tr.actor.param_checksums()
        for b, a in zip(before, after):  # per rank: adapters moved, the frozen base did not
            assert any(b[n] != a[n] for n in b if _lora(n))
            assert all(b[n] == a[n] for n in b if not _lora(n))

        tr.save()
        saved = tr.state_dict()
        saved_params = tr.actor.param_checksums()
        entries = {pid: tr.replay.entries(pid) for pid in range(2)}
        next_samples = {pid: tr.replay.sample(pid, 5) for pid in range(2) if pid in tr.replay}
    finally:
        tr.shutdown()

    cfg.trainer.resume = True  # the same run directory, continued (a fresh start would be refused)
    tr2 = ForTrainer(cfg)
    try:
        assert tr2.state_dict()["log_z"] == [0.0, 0.0]
        tr2.load(1)
        assert tr2.global_step == 1
        assert tr2.cursor.state_dict() == saved["data"]
        assert tr2.log_z.detach().tolist() == saved["log_z"]
        assert tr2.state_dict()["log_z_adam"] == saved["log_z_adam"]
        assert {pid: tr2.replay.entries(pid) for pid in range(2)} == entries
        assert {pid: tr2.replay.sample(pid, 5) for pid in next_samples} == next_samples
        assert tr2.actor.param_checksums() == saved_params  # the adapter came back too
        assert tr2.step()["step"] == 2  # and training continues
    finally:
        tr2.shutdown()
    assert_all_cpus_released(ray_cluster)


def _reference_fl_db(model_dir, cfg, batches):
    """Single process, direct backprop: FL-DB with a zero flow head on the final hidden state of
    each state's last prompt token. Returns (loss, LoRA grad norm, head grad norm)."""
    from workers.backends.fsdp_model import load_hf_model, response_logprobs
    from workers.backends.lora import LoraSpec, inject_lora
    from workers.gfn_actor import _layout_only, chosen_log_flows
    torch.manual_seed(cfg.trainer.seed)
    model = load_hf_model(model_dir, "causal_lm", torch.float32, cfg.trainer.seed)
    a = cfg.actor
    inject_lora(model, LoraSpec.from_options(a.lora_rank, a.lora_alpha, 0.0, a.lora_target_modules))
    head = torch.nn.Linear(model.config.hidden_size, 1)
    torch.nn.init.zeros_(head.weight)
    torch.nn.init.zeros_(head.bias)
    n_total = sum(b.meta["gfn_n_traj"] for b in batches)
    total = 0.0
    for b in batches:
        rows = _layout_only(b)
        lp, _ = response_logprobs(model, rows)
        seq = (lp * b["response_mask"]).sum(-1)
        P = rows["input_ids"].shape[1] - rows["responses"].shape[1]
        h = model.model(input_ids=rows["input_ids"], attention_mask=rows["attention_mask"],
                        position_ids=rows["position_ids"]).last_hidden_state[:, P - 1]
        n, T = b.meta["gfn_n_traj"], b.meta["gfn_T"]
        mask = torch.tensor(b.meta["gfn_mask"])
        log_pf = chosen_log_pf(seq, b["gfn_flat"], b["gfn_slot"], b["gfn_chosen"], n, T, mask)
        log_flow = chosen_log_flows(head(h).squeeze(-1), b["gfn_flat"], b["gfn_chosen"], n, T)
        loss, _ = problem_objective("fl_db", log_pf, torch.tensor(b.meta["gfn_log_pb"]),
                                    torch.tensor(b.meta["gfn_log_r"]), mask, None, log_flow,
                                    torch.tensor(b.meta["gfn_energy"]))
        total = total + loss * n / n_total
    total.backward()
    lora = math.sqrt(sum(float((p.grad.double() ** 2).sum()) for p in model.parameters() if p.grad is not None))
    flow = math.sqrt(sum(float((p.grad.double() ** 2).sum()) for p in head.parameters()))
    return float(total.detach()), lora, flow


def test_flow_head_fl_db_update_matches_single_process_and_checkpoints(ray_cluster, tiny_model_dir, tmp_path):
    """Game24 with FL-DB on 2 ranks: loss, LLM grad norm and flow-head grad norm equal direct
    backprop in one process; base_logprobs is the LoRA-off model; the head is checkpointed."""
    from orchestrator.for_trainer import ForTrainer

    cfg = load_config(str(REPO / "configs/for_game24.yaml"), [
        f"model.path={tiny_model_dir}", f"trainer.output_dir={tmp_path / 'run'}", "trainer.total_steps=2",
        "actor.world_size=2", "actor.lr=0.01", "for_.objective=fl_db", "for_.num_problems=2", "data.batch_size=2",
        "for_.val_problems=0", "for_.local_search_tries=2", "for_.ll_weight=1.0", "actor.micro_batch_size=16"])
    tr = ForTrainer(cfg)
    try:
        d, p = tr.domain, tr.problems
        rng = np.random.default_rng(0)
        trajs = [[tuple(tr._complete(p[k])((), rng)) for _ in range(3)] for k in range(2)]
        lr = [tr.log_rewards([(k, a) for a in trajs[k]]) for k in range(2)]
        # the likelihood bonus is FoR's exp(mean token ll)^(1/0.7) under the base model
        pairs = [(d.prompt(p[0], trajs[0][0][:t]), a) for t, a in enumerate(trajs[0][0])]
        base = tr.score(pairs, base=True)
        ntok = sum(len(x) for x in tr._tokens(pairs)[1])
        r0 = d.reward(p[0], d.walk(p[0], trajs[0][0])[-1], trajs[0][0])
        assert lr[0][0] == pytest.approx(math.log(r0 + math.exp(float(base.sum()) / ntok) ** (1 / 0.7)), rel=1e-6)
        assert torch.allclose(base, tr.score(pairs), atol=1e-5)  # LoRA B = 0: the actor is still the base model
        batches = tr.problem_batches(p, trajs, lr, 1.0)
        e = batches[0].meta["gfn_energy"]
        assert e[0][3] == pytest.approx(-lr[0][0]) and e[0][0] == pytest.approx(d.energy(p[0], d.init(p[0]), ()))
        want_loss, want_lora, want_flow = _reference_fl_db(tiny_model_dir, cfg, batches)
        outs = tr.actor.gfn_update(batches, "fl_db")
        assert sum(o["loss"] for o in outs) == pytest.approx(want_loss, rel=1e-4)
        assert outs[0]["grad_norm"] == pytest.approx(want_lora, rel=1e-3)
        assert outs[0]["flow_grad_norm"] == outs[1]["flow_grad_norm"] == pytest.approx(want_flow, rel=1e-3)
        assert want_flow > 0
        after = tr.score(pairs)
        assert not torch.allclose(after, base, atol=1e-4)  # the adapters moved ...
        assert torch.allclose(tr.score(pairs, base=True), base, atol=1e-5)  # ... the base model did not
        with pytest.raises(Exception, match="needs the flow head|unknown GFlowNet objective"):
            tr.actor.gfn_update(batches, "nope")
        row = tr.step()
        assert math.isfinite(row["for/loss"]) and "for/log_f0_mean" in row
        tr.save()
        sums = tr.actor.param_checksums()
        assert any(n.startswith("flow_head.") and v != (0.0, 0.0) for n, v in sums[0].items())
    finally:
        tr.shutdown()
    cfg.trainer.resume = True  # the same run directory, continued (a fresh start would be refused)
    tr2 = ForTrainer(cfg)
    try:
        tr2.load(1)
        assert tr2.actor.param_checksums() == sums  # LoRA and the flow head came back
    finally:
        tr2.shutdown()
    assert_all_cpus_released(ray_cluster)


@pytest.mark.parametrize("recipe", sorted(p.name for p in (REPO / "configs").glob("for_*.yaml")))
def test_for_recipe_runs_one_step(recipe, ray_cluster, tiny_model_dir, tmp_path):
    """Each FoR recipe (its domain, objective, LoRA and reward terms) through ForTrainer.fit on the
    tiny model: metrics with the FoR keys, a checkpoint, every Ray CPU back."""
    from orchestrator.for_trainer import ForTrainer

    run = tmp_path / "run"
    cfg = load_config(str(REPO / "configs" / recipe), [
        f"model.path={tiny_model_dir}", f"trainer.output_dir={run}", "trainer.total_steps=1",
        "for_.num_problems=2", "data.batch_size=2", "for_.n_samples=2", "for_.local_search_tries=2",
        "for_.val_problems=1", "for_.val_samples=2", "actor.micro_batch_size=16"])
    tr = ForTrainer(cfg)
    try:
        tr.fit()
    finally:
        tr.shutdown()
    assert_all_cpus_released(ray_cluster)
    import json
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [0, 1]
    last = rows[-1]
    for key in ("for/loss", "for/log_r_mean", "for/replay_size", "val/accuracy", "val/creativity", "timing/step_s"):
        assert key in last, key
    assert 0 <= last["val/accuracy"] <= 1 and last["for/replay_size"] >= 2
    assert (run / "checkpoints/step_1/trainer_state.json").exists()
    # Dumps: the step's trajectories (with log R as logged) and the validation's; the reward curve.
    dump = [json.loads(line) for line in (run / "rollouts/step_1.jsonl").read_text().splitlines()]
    assert {d["kind"] for d in dump} == {"trajectory"} and len(dump) >= 2 * 2
    fresh = [d for d in dump if d["log_pf"] is not None]
    assert fresh and all(d["log_pf"] <= 0 and len(d["states"]) == len(d["actions"]) + 1 for d in fresh)
    assert sum(d["log_r"] for d in dump) / len(dump) == pytest.approx(last["for/log_r_mean"])
    assert (run / "val/step_0.jsonl").exists() and (run / "reward.png").stat().st_size > 1000
    if recipe == "for_blocksworld.yaml":  # hyflow eval on a FoR recipe reports the FoR task
        from orchestrator.evaluate import evaluate
        gens = tmp_path / "gens.jsonl"
        out = evaluate(cfg, str(run / "checkpoints/step_1/hf"), str(gens))
        assert out["task"] == "for/blocksworld" and 0 <= out["val/accuracy"] <= 1 and "val/diversity" in out
        rows = [json.loads(line) for line in gens.read_text().splitlines()]
        assert len(rows) == 2 and all(r["kind"] == "trajectory" for r in rows)  # 1 problem x 2 samples
        assert_all_cpus_released(ray_cluster)


def test_one_for_iteration_with_the_embedded_model_and_restore(ray_cluster, tmp_path):
    """The issue's real iteration: BlocksWorld, the embedded SmolLM2-135M with FoR's LoRA (r=32 on
    q,k,v,up,down), 2 FSDP ranks on Ray, TB with a learned log Z, the likelihood reward, replay and
    local search; then the checkpoint restores replay buffer, log Z and the adapter exactly."""
    from orchestrator.for_trainer import ForTrainer

    cfg = load_config(RECIPE, [
        f"trainer.output_dir={tmp_path / 'run'}", "trainer.total_steps=1", "for_.objective=tb",
        "for_.logz_lr=0.1", "for_.num_problems=2", "data.batch_size=2", "for_.n_samples=2",
        "for_.local_search_tries=4", "for_.val_problems=0", "actor.micro_batch_size=16"])
    tr = ForTrainer(cfg)
    try:
        before = tr.actor.param_checksums()
        row = tr.fit()
        assert row["step"] == 1 and math.isfinite(row["for/loss"]) and row["for/replay_size"] >= 2
        assert tr.log_z.detach().abs().sum() > 0
        after = tr.actor.param_checksums()
        assert any(before[0][n] != after[0][n] for n in before[0] if _lora(n))
        assert all(before[0][n] == after[0][n] for n in before[0] if not _lora(n))
        saved = tr.state_dict()
        entries = {pid: tr.replay.entries(pid) for pid in range(2)}
    finally:
        tr.shutdown()
    cfg.trainer.resume = True  # the same run directory, continued (a fresh start would be refused)
    tr2 = ForTrainer(cfg)
    try:
        tr2.load(1)
        assert tr2.log_z.detach().tolist() == saved["log_z"] != [0.0, 0.0]
        assert {pid: tr2.replay.entries(pid) for pid in range(2)} == entries
        assert tr2.state_dict()["replay"] == saved["replay"] and tr2.state_dict()["rng"] == saved["rng"]
        assert tr2.actor.param_checksums() == after
    finally:
        tr2.shutdown()
    assert_all_cpus_released(ray_cluster)
