"""GFlowNet objectives, exploration schedules, replay and local search.

Loss values are worked by hand in the comments; the training tests learn a tabular GFlowNet on a
small set-building DAG and measure the exact terminal distribution by enumerating every path.
"""
from __future__ import annotations

import itertools
import math
import pickle

import numpy as np
import pytest
import torch

import algorithms
from algorithms.gflownet import (db_loss, epsilon_schedule, finite_action_logprob, fl_db_loss,
                                 fl_subtb_loss, get_gfn_objective, list_gfn_objectives,
                                 reward_temperature, step_logprob_from_tokens, subtb_loss,
                                 tb_loss, temper_log_reward, tempered_probs, tree_log_pb,
                                 uniform_log_pb, vargrad_tb_loss)
from algorithms.replay import PrioritizedReplay, accept_improving, local_search, local_search_candidates

NAN, INF = math.nan, math.inf


def _t(x, grad=False):
    return torch.tensor(x, dtype=torch.float64, requires_grad=grad)


# ------------------------------------------------------------------------------------------ TB
def test_tb_loss_scalar_and_per_row_log_z_with_padding():
    # row 0 (2 steps): 0.5 + (−1 − 2) − (−1) − (0 − 0.5)         = −1.0 -> 1
    # row 1 (3 steps): 0.5 + (−0.5 − 0.5 − 1) − 2 − (−1 + 0 + 0) = −2.5 -> 6.25; mean 3.625
    log_pf = _t([[-1.0, -2.0, NAN], [-0.5, -0.5, -1.0]], grad=True)
    log_pb = _t([[0.0, -0.5, INF], [-1.0, 0.0, 0.0]])
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    log_z = _t(0.5, grad=True)
    loss = tb_loss(log_pf, log_pb, _t([-1.0, 2.0]), log_z, mask)
    assert loss.item() == pytest.approx(3.625)
    loss.backward()
    assert log_z.grad.item() == pytest.approx(-3.5)          # mean(2·resid) = (−2 − 5) / 2
    # d/dlog_pf = resid (= 2·resid / 2 rows) on real steps, 0 (not nan) on padding
    torch.testing.assert_close(log_pf.grad, _t([[-1.0, -1.0, 0.0], [-2.5, -2.5, -2.5]]))
    # per-problem log Z [0.5, 1.5]: row 1 resid −1.5 -> (1 + 2.25) / 2
    assert tb_loss(log_pf, log_pb, _t([-1.0, 2.0]), _t([0.5, 1.5]), mask).item() == \
        pytest.approx(1.625)
    assert tb_loss(log_pf, log_pb, _t([-1.0, 2.0]), 0.5, mask).item() == pytest.approx(3.625)
    with pytest.raises(ValueError, match=r"log_r must have shape \[B\]"):
        tb_loss(log_pf, log_pb, _t([1.0]), 0.5, mask)
    with pytest.raises(ValueError, match="log_pb shape"):
        tb_loss(log_pf, log_pb[:, :2], _t([-1.0, 2.0]), 0.5, mask)


def test_vargrad_tb_uses_the_group_mean_as_log_z():
    # Φ = log R + Σ log P_B − Σ log P_F:
    # row 0 (a): 0 + 0 + 2 = 2;  row 1 (a, 1 step): 3 − 1 + 2 = 4;  row 2 (b, alone): 7;
    # row 3 (a): 0.  Group a mean 2 -> deviations 0, 2, −2; b singleton -> 0.  (0+4+0+4)/4 = 2
    log_pf = _t([[-1.0, -1.0], [-2.0, NAN], [-1.0, -1.0], [0.0, 0.0]], grad=True)
    log_pb = _t([[0.0, 0.0], [-1.0, NAN], [0.0, 0.0], [0.0, 0.0]])
    mask = torch.tensor([[1, 1], [1, 0], [1, 1], [1, 1]])
    log_r = _t([0.0, 3.0, 5.0, 0.0])
    loss = vargrad_tb_loss(log_pf, log_pb, log_r, mask, ["a", "a", "b", "a"])
    assert loss.item() == pytest.approx(2.0)
    loss.backward()
    # dL/dΦ_i = 2·dev_i / 4 (the mean's own gradient sums to 0), dΦ/dlog_pf = −1
    torch.testing.assert_close(log_pf.grad, _t([[0.0, 0.0], [-1.0, 0.0], [0.0, 0.0], [1.0, 1.0]]))
    # equals TB with log Z fixed at each group's mean (2 for a, 7 for b)
    tb = tb_loss(log_pf, log_pb, log_r, _t([2.0, 2.0, 7.0, 2.0]), mask)
    assert tb.item() == pytest.approx(loss.item())


# ------------------------------------------------------------------------------------ DB / SubTB
# Shared two-row case (T = 2). Row 0 is complete (3 states; its last flow 99 is replaced by
# log R = 0.2); row 1 has 1 transition and is not done (its flow at s_1 is the learned −1.0).
PF = [[-0.3, -0.1], [-0.5, NAN]]
PB = [[0.0, -0.7], [-0.2, NAN]]
STEP_MASK = torch.tensor([[1, 1], [1, 0]])
FLOWS = [[1.0, 0.5, 99.0], [0.0, -1.0, NAN]]
LOG_R = [0.2, 5.0]
DONE = torch.tensor([True, False])


def test_db_loss_terminal_flow_is_log_r_only_for_done_rows():
    # row 0: t0 1.0 − 0.3 − 0.5 − 0 = 0.2 -> 0.04;  t1 0.5 − 0.1 − 0.2 + 0.7 = 0.9 -> 0.81
    # row 1: t0 0 − 0.5 + 1.0 + 0.2 = 0.7 -> 0.49;  mean over 3 transitions = 1.34 / 3
    flows = _t(FLOWS, grad=True)
    loss = db_loss(_t(PF), _t(PB), flows, _t(LOG_R), STEP_MASK, DONE)
    assert loss.item() == pytest.approx(1.34 / 3)
    loss.backward()
    assert torch.isfinite(flows.grad).all() and flows.grad[0, 2] == 0 and flows.grad[1, 2] == 0
    # row 1 marked done: log F(s_1) := 5 -> t0 0 − 0.5 − 5 + 0.2 = −5.3 -> 28.09
    loss = db_loss(_t(PF), _t(PB), _t(FLOWS), _t(LOG_R), STEP_MASK)   # done defaults to all
    assert loss.item() == pytest.approx((0.04 + 0.81 + 28.09) / 3)


def test_subtb_lambda_weighting_by_hand():
    # row 0, a_k = log F_k − Σ_{t<k}(log P_F − log P_B): C = (0, −0.3, 0.3), F = (1, .5, .2)
    #   a = (1.0, 0.8, −0.1); pairs (0,1) 0.2² = .04 w λ; (1,2) 0.9² = .81 w λ;
    #   (0,2) 1.1² = 1.21 w λ²
    #   λ = .5: (.02 + .405 + .3025) / 1.25 = 0.582;  λ = 1: 2.06 / 3
    # row 1: only (0,1): 0.49.  Mean over rows.
    loss = subtb_loss(_t(PF), _t(PB), _t(FLOWS), STEP_MASK, lam=0.5, log_r=_t(LOG_R), done=DONE)
    assert loss.item() == pytest.approx((0.582 + 0.49) / 2)
    loss = subtb_loss(_t(PF), _t(PB), _t(FLOWS), STEP_MASK, lam=1.0, log_r=_t(LOG_R), done=DONE)
    assert loss.item() == pytest.approx((2.06 / 3 + 0.49) / 2)
    # the caller may instead write log R into log_flows itself
    flows = _t([[1.0, 0.5, 0.2], [0.0, -1.0, NAN]], grad=True)
    loss = subtb_loss(_t(PF), _t(PB), flows, STEP_MASK, lam=0.5)
    assert loss.item() == pytest.approx((0.582 + 0.49) / 2)
    loss.backward()
    assert torch.isfinite(flows.grad).all() and flows.grad[1, 2] == 0
    # a single-transition SubTB is DB on that transition
    one = torch.tensor([[1, 0], [1, 0]])
    assert subtb_loss(_t(PF), _t(PB), _t(FLOWS), one, lam=0.3).item() == \
        pytest.approx(db_loss(_t(PF), _t(PB), _t(FLOWS), _t(LOG_R), one, done=[0, 0]).item())
    with pytest.raises(ValueError, match="lam must be > 0"):
        subtb_loss(_t(PF), _t(PB), _t(FLOWS), STEP_MASK, lam=0.0)
    with pytest.raises(ValueError, match="prefix"):
        subtb_loss(_t(PF), _t(PB), _t(FLOWS), torch.tensor([[0, 1], [1, 0]]))
    with pytest.raises(ValueError, match=r"log_flows must have shape \[B, T\+1\]"):
        subtb_loss(_t(PF), _t(PB), _t(FLOWS)[:, :2], STEP_MASK)


# ------------------------------------------------------------------------------- FL-DB / SubTB
FT = [[0.3, -0.2, 7.0], [0.0, 0.4, NAN]]      # log F̃; row 0's terminal 7.0 is replaced by 0
ENERGY = [[0.0, 0.5, 1.2], [0.1, 0.3, NAN]]


def test_fl_db_by_hand_and_as_db_on_log_f_tilde_minus_e():
    # row 0: t0 0.3 − 0.3 + (0.5 − 0) + 0.2 − 0   = 0.7 -> 0.49
    #        t1 −0.2 − 0.1 + (1.2 − 0.5) − 0 + 0.7 = 1.1 -> 1.21
    # row 1 (not done): t0 0 − 0.5 + (0.3 − 0.1) − 0.4 + 0.2 = −0.5 -> 0.25;  mean 1.95 / 3
    ft = _t(FT, grad=True)
    loss = fl_db_loss(_t(PF), _t(PB), ft, _t(ENERGY), STEP_MASK, DONE)
    assert loss.item() == pytest.approx(0.65)
    loss.backward()
    assert torch.isfinite(ft.grad).all() and ft.grad[0, 2] == 0   # terminal F̃ is fixed
    # same as DB on log F = log F̃ − E with log R = −E(terminal)
    db = db_loss(_t(PF), _t(PB), _t(FT) - _t(ENERGY), -_t(ENERGY)[:, 2], STEP_MASK, DONE)
    assert db.item() == pytest.approx(0.65)
    with pytest.raises(ValueError, match="energies must be finite"):
        fl_db_loss(_t(PF), _t(PB), _t(FT), _t([[0.0, INF, 1.2], [0.1, 0.3, NAN]]), STEP_MASK)


def test_fl_subtb_by_hand():
    # row 0: log F = F̃ − E = (0.3, −0.7, 0 − 1.2), C = (0, −0.3, 0.3) -> a = (0.3, −0.4, −1.5)
    #   (0,1) .7² = .49, (1,2) 1.1² = 1.21, (0,2) 1.8² = 3.24; λ = .5: (.245+.605+.81)/1.25 = 1.328
    # row 1: 0.25.  Mean (1.328 + 0.25) / 2 = 0.789
    loss = fl_subtb_loss(_t(PF), _t(PB), _t(FT), _t(ENERGY), STEP_MASK, DONE, lam=0.5)
    assert loss.item() == pytest.approx(0.789)
    zero_e = torch.zeros(2, 3, dtype=torch.float64)
    sub = subtb_loss(_t(PF), _t(PB), _t(FT), STEP_MASK, lam=0.5, log_r=_t([0.0, 0.0]), done=DONE)
    assert fl_subtb_loss(_t(PF), _t(PB), _t(FT), zero_e, STEP_MASK, DONE, lam=0.5).item() == \
        pytest.approx(sub.item())                 # E ≡ 0: FL-SubTB is SubTB with log R = 0


def test_registry_names_and_unknown_name():
    assert list_gfn_objectives() == ["db", "fl_db", "fl_subtb", "subtb", "tb", "vargrad_tb"]
    assert get_gfn_objective("fl_db") is fl_db_loss and get_gfn_objective("tb") is tb_loss
    loss = get_gfn_objective("fl_subtb")(log_pf=_t(PF), log_pb=_t(PB), log_flow_tilde=_t(FT),
                                         energies=_t(ENERGY), mask=STEP_MASK, done=DONE, lam=0.5)
    assert loss.item() == pytest.approx(0.789)
    with pytest.raises(KeyError, match=r"unknown GFlowNet objective 'fl_tb'.*'db', 'fl_db'"):
        get_gfn_objective("fl_tb")
    assert algorithms.gflownet.get_gfn_objective("subtb") is subtb_loss


# ---------------------------------------------------------------------- log P_F / log P_B helpers
def test_step_logprob_from_tokens_both_layouts():
    lp = _t([[-1.0, -2.0, -3.0, -4.0, NAN], [-0.5, -0.5, -1.0, NAN, NAN]])
    ids = torch.tensor([[-1, 0, 0, 1, -1], [0, 0, 1, -1, -1]])   # −1: prompt / obs / padding
    torch.testing.assert_close(step_logprob_from_tokens(lp, ids), _t([[-5.0, -4.0], [-1.0, -1.0]]))
    torch.testing.assert_close(step_logprob_from_tokens(lp, ids, num_steps=3),
                               _t([[-5.0, -4.0, 0.0], [-1.0, -1.0, 0.0]]))
    member = torch.stack([ids == 0, ids == 1], dim=1)            # [B, S, T_tok]
    torch.testing.assert_close(step_logprob_from_tokens(lp, member),
                               _t([[-5.0, -4.0], [-1.0, -1.0]]))
    with pytest.raises(ValueError, match="integer step indices"):
        step_logprob_from_tokens(lp, ids >= 0)
    with pytest.raises(ValueError, match="index 1 >= num_steps 1"):
        step_logprob_from_tokens(lp, ids, num_steps=1)


def test_finite_action_logprob_softmax_over_valid_candidates():
    seq = _t([[-1.0, -2.0, -30.0], [-1.0, -2.0, NAN]], grad=True)
    cmask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    out = finite_action_logprob(seq, torch.tensor([0, 1]), cmask)
    # row 0: log(e^−1 / (e^−1 + e^−2 + e^−30)); row 1: log(e^−2 / (e^−1 + e^−2)) = −log(1 + e)
    assert out[0].item() == pytest.approx(-math.log1p(math.exp(-1) + math.exp(-29)))
    assert out[1].item() == pytest.approx(-math.log1p(math.e))
    out.sum().backward()
    assert torch.isfinite(seq.grad).all() and seq.grad[1, 2] == 0
    # temperature 2 halves the gap: −log(1 + e^{0.5})
    t2 = finite_action_logprob(seq, torch.tensor([0, 1]), cmask, temperature=2.0)
    assert t2[1].item() == pytest.approx(-math.log1p(math.exp(0.5)))
    with pytest.raises(ValueError, match="rules out"):
        finite_action_logprob(seq, torch.tensor([0, 2]), cmask)
    with pytest.raises(ValueError, match=r"chosen indices must lie in \[0, 3\)"):
        finite_action_logprob(seq, torch.tensor([3, 0]), cmask)


def test_log_pb_helpers():
    torch.testing.assert_close(uniform_log_pb([1, 2, 4]),
                               torch.tensor([0.0, -math.log(2), -math.log(4)]))
    assert (tree_log_pb(torch.randn(2, 3)) == 0).all()
    with pytest.raises(ValueError, match="num_parents must be >= 1"):
        uniform_log_pb(torch.tensor([2, 0]))


# ------------------------------------------------------------------------ schedules / sampling
def test_schedules():
    assert [reward_temperature(s, 100) for s in (0, 25, 50, 99)] == [1.0, 1.5, 2.0, 2.0]
    assert epsilon_schedule(10, 100, 0.5, 0.01, 0.5) == pytest.approx(0.5 - 0.49 * 0.2)
    assert epsilon_schedule(80, 100, 0.5, 0.01, 0.5) == pytest.approx(0.01)
    assert temper_log_reward(-2.0, 2.0) == -4.0                      # R^β, BlocksWorld
    assert temper_log_reward(-2.0, 2.0, mode="divide") == -1.0       # R^{1/β}, PrOntoQA
    with pytest.raises(ValueError, match="unknown reward temperature mode 'pow'"):
        temper_log_reward(-2.0, 2.0, mode="pow")
    with pytest.raises(ValueError, match="total must be > 0"):
        reward_temperature(0, 0)
    with pytest.raises(ValueError, match="start must be in"):
        epsilon_schedule(0, 10, 1.5, 0.0, 0.5)


def test_tempered_probs():
    logits = torch.tensor([[0.0, math.log(3.0), -INF]])
    torch.testing.assert_close(tempered_probs(logits), torch.tensor([[0.25, 0.75, 0.0]]))
    # 0.8·(.25, .75) + 0.2·(.5, .5) over the two valid actions
    torch.testing.assert_close(tempered_probs(logits, epsilon=0.2), torch.tensor([[0.3, 0.7, 0.0]]))
    # τ = 2: softmax(0, log√3) = (1, √3) / (1 + √3)
    r3 = math.sqrt(3)
    torch.testing.assert_close(tempered_probs(logits, 2.0),
                               torch.tensor([[1 / (1 + r3), r3 / (1 + r3), 0]]))
    # ε = 1 with an explicit mask: uniform over the two unmasked actions
    uniform = tempered_probs(torch.zeros(1, 3), 1.0, 1.0, torch.tensor([[1, 0, 1]]))
    torch.testing.assert_close(uniform,
                               torch.tensor([[0.5, 0.0, 0.5]]))
    with pytest.raises(ValueError, match="epsilon must be in"):
        tempered_probs(logits, epsilon=1.5)


# ---------------------------------------------------------------- a set-building DAG, tabular
# States: subsets of 5 items as bitmasks; an action adds one missing item; the 10 sets of size 3
# are terminal. A state of size k has k parents (a DAG, each terminal reachable by 3! = 6 paths).
N_ITEMS, K = 5, 3
POP = torch.tensor([bin(s).count("1") for s in range(32)])
BIT = 1 << torch.arange(N_ITEMS)
ACTION_OK = ((torch.arange(32)[:, None] & BIT) == 0) & (POP[:, None] < K)
TERMINALS = torch.tensor([s for s in range(32) if POP[s] == K])
TERM_INDEX = torch.full((32,), -1, dtype=torch.long).index_put_((TERMINALS,), torch.arange(10))
ALL_ACTIONS = torch.tensor(list(itertools.permutations(range(N_ITEMS), K)))      # [60, 3]
ALL_STATES = torch.cat([torch.zeros(60, 1, dtype=torch.long),
                        torch.cumsum(BIT[ALL_ACTIONS], dim=1)], dim=1)          # [60, 4]
ITEM_ENERGY = torch.tensor([0.0, 0.5, 1.0, 1.5, 2.0])
R_TABLE = torch.tensor([1.0, 8.0, 2.0, 0.5, 4.0, 16.0, 1.0, 3.0, 0.25, 6.0])   # arbitrary, > 0


def _energy(states):
    """E(s) = Σ_{i ∈ s} e_i: additive, so R(x) = exp(−E(x)) and E is known on partial sets."""
    return ((states[..., None] & BIT) != 0).float() @ ITEM_ENERGY


def _log_pf(logits, states, actions):
    masked = logits[states[:, :-1]].masked_fill(~ACTION_OK[states[:, :-1]], -INF)
    return torch.log_softmax(masked, -1).gather(-1, actions[..., None]).squeeze(-1)


def _log_pb(states):
    return uniform_log_pb(POP[states[:, 1:]])               # P_B(s|s') = 1 / |s'|


def _terminal_tv(logits, reward):
    """Exact TV between P_T(x) = Σ over x's 6 paths of Π P_F and R / ΣR."""
    p_path = _log_pf(logits, ALL_STATES, ALL_ACTIONS).sum(-1).exp()
    p_term = torch.zeros(10).index_add_(0, TERM_INDEX[ALL_STATES[:, -1]], p_path)
    return 0.5 * (p_term - reward / reward.sum()).abs().sum().item()


def _sample(logits, batch, eps, gen):
    s, states, actions = torch.zeros(batch, dtype=torch.long), [], []
    states.append(s)
    for _ in range(K):
        masked = logits[s].masked_fill(~ACTION_OK[s], -INF)
        a = torch.multinomial(tempered_probs(masked, 1.0, eps), 1, generator=gen).squeeze(1)
        s = s | BIT[a]
        states.append(s)
        actions.append(a)
    return torch.stack(states, 1), torch.stack(actions, 1)


def _windows(states, actions, gen, last_start=K - 1):
    """Cut each path to a window s_m … s_n, 1 ≤ n − m ≤ 2 (never the full root-to-terminal
    path); done = the window ends at a terminal. Rows are padded to 2 transitions."""
    b = states.shape[0]
    m0 = torch.randint(0, last_start + 1, (b,), generator=gen)
    length = torch.randint(1, 3, (b,), generator=gen).minimum(K - m0)
    if last_start < K - 1:              # prefixes only: stop before the terminal
        length = length.minimum(K - 1 - m0)
    idx = (m0[:, None] + torch.arange(3)).clamp(max=K)
    mask = (torch.arange(2)[None] < length[:, None]).float()
    return (states.gather(1, idx), actions.gather(1, idx[:, :2].clamp(max=K - 1)), mask,
            (m0 + length) == K)


def _train(objective, steps=600, batch=32, seed=0, windows=False, boundary=True):
    """Adam on tabular P_F logits, a log-flow (or log F̃) table and log Z; ε-uniform exploration
    0.5 → 0 over the first half. Returns (TV before, TV after)."""
    gen = torch.Generator().manual_seed(seed)
    logits = torch.zeros(32, N_ITEMS, requires_grad=True)
    # random flows: a terminal F̃ that escaped its boundary would stay wrong instead of staying 0
    flows = torch.randn(32, generator=gen).requires_grad_(True)
    log_z = torch.zeros((), requires_grad=True)
    opt = torch.optim.Adam([logits, flows, log_z], lr=0.05)
    forward_looking = objective.startswith("fl")
    reward = torch.exp(-_energy(TERMINALS)) if forward_looking else R_TABLE
    log_r_of_state = torch.zeros(32).index_put_((TERMINALS,), reward.log())
    tv_before = _terminal_tv(logits.detach(), reward)
    for step in range(steps):
        with torch.no_grad():
            eps = epsilon_schedule(step, steps, 0.5, 0.0, 0.5)
            states, actions = _sample(logits, batch, eps, gen)
        mask, done = torch.ones(batch, K), torch.ones(batch, dtype=torch.bool)
        if windows:
            states, actions, mask, done = _windows(states, actions, gen)
            done = done & boundary
        lpf, lpb = _log_pf(logits, states, actions), _log_pb(states)
        log_r = log_r_of_state[states[:, -1]]
        if objective == "tb":
            loss = tb_loss(lpf, lpb, log_r, log_z, mask)
        elif objective == "subtb":
            loss = subtb_loss(lpf, lpb, flows[states], mask, lam=0.9, log_r=log_r)
        elif objective == "db":
            loss = db_loss(lpf, lpb, flows[states], log_r, mask)
        else:  # the energies are the only reward signal; log R is never passed
            loss = get_gfn_objective(objective)(
                log_pf=lpf, log_pb=lpb, log_flow_tilde=flows[states], energies=_energy(states),
                mask=mask, done=done)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return tv_before, _terminal_tv(logits.detach(), reward)


@pytest.mark.parametrize("objective", ["tb", "subtb", "db", "fl_db"])
def test_training_on_complete_paths_samples_terminals_in_proportion_to_reward(objective):
    tv_before, tv_after = _train(objective)
    assert tv_before > 0.3          # uniform P_F starts far from R / ΣR
    assert tv_after < 0.05


@pytest.mark.parametrize("objective", ["fl_db", "fl_subtb"])
def test_forward_looking_learns_from_incomplete_trajectories(objective):
    """FL objectives trained only on windows of ≤ 2 transitions (never a root-to-terminal path)
    with the energies E(s) of the window's states; no log R is ever given.

    What is identifiable: a DB-type constraint ties F̃(s), P_F(s'|s), F̃(s') for each observed
    transition, and the only anchor to R is the boundary log F̃(x) = 0 at a terminal x. So the
    windows that *end at* a terminal (done) must occur: trained on prefixes cut before the
    terminal step alone, P_F(x | s) at the last step gets no gradient at all (next test) and
    F̃ of non-terminal states has no scale. Windows starting mid-path need no s_0 and windows
    cut before the terminal need no reward: with both, the terminal distribution converges to R.
    """
    tv_before, tv_after = _train(objective, windows=True)
    assert tv_before > 0.3 and tv_after < 0.05
    # the same windows without the terminal boundary (done = False): not anchored to R
    assert _train(objective, windows=True, boundary=False)[1] > 0.1


def test_fl_db_on_prefixes_cut_before_the_terminal_leaves_the_last_step_unidentified():
    gen = torch.Generator().manual_seed(1)
    logits = torch.zeros(32, N_ITEMS, requires_grad=True)
    flows = torch.randn(32, generator=gen).requires_grad_(True)
    states, actions = _sample(logits.detach(), 64, 0.0, gen)
    states, actions, mask, done = _windows(states, actions, gen, last_start=K - 2)
    assert not done.any() and mask.sum() > 64
    loss = fl_db_loss(_log_pf(logits, states, actions), _log_pb(states), flows[states],
                      _energy(states), mask, done)
    loss.backward()
    assert logits.grad[POP < K - 1].abs().sum() > 0          # earlier steps do learn
    assert (logits.grad[POP == K - 1] == 0).all()            # the step into x never does


# ------------------------------------------------------------------------------------ replay
def test_replay_keeps_top_k_unique_by_log_r():
    rb = PrioritizedReplay(buffer_size=3, seed=0)
    assert [rb.add("p", k, r, f"item-{k}") for k, r in
            [("a", 1.0), ("b", 3.0), ("c", 2.0)]] == [True, True, True]
    assert rb.add("p", "d", 0.5, "item-d") is False          # below the current minimum
    assert rb.add("p", "b", 10.0, "dup") is False            # key already held: ignored
    assert rb.add("p", "e", 4.0, "item-e") is True           # evicts a (1.0)
    assert rb.entries("p") == [("b", 3.0, "item-b"), ("c", 2.0, "item-c"), ("e", 4.0, "item-e")]
    assert rb.add("p", "a", 5.0, "item-a2") is True          # a left, so it may come back
    assert sorted(k for k, _, _ in rb.entries("p")) == ["a", "b", "e"]
    assert rb.add("q", ("x", 1), 0.0, None) and rb.size("q") == 1 and len(rb) == 4
    with pytest.raises(KeyError, match="holds nothing for problem 'zz'"):
        rb.sample("zz", 1)
    with pytest.raises(ValueError, match="log_r must be < inf and not nan, got nan"):
        rb.add("p", "f", NAN, None)
    with pytest.raises(TypeError, match="key must be hashable"):
        rb.add("p", ["list"], 9.0, None)
    with pytest.raises(ValueError, match="buffer_size must be a positive int"):
        PrioritizedReplay(buffer_size=0)


def test_replay_samples_in_proportion_to_softmax_log_r():
    rb = PrioritizedReplay(buffer_size=5, seed=123)
    for k, w in enumerate([1.0, 2.0, 3.0]):
        rb.add(0, k, math.log(w) + 100.0, k)                 # shift: softmax is shift-invariant
    draws = [k for k, _, _ in rb.sample(0, 60000)]
    freq = np.bincount(draws, minlength=3) / 60000
    # std of each frequency ≤ sqrt(.25 / 60000) ≈ 0.002
    np.testing.assert_allclose(freq, [1 / 6, 2 / 6, 3 / 6], atol=0.01)


def test_replay_state_round_trip_reproduces_samples_exactly():
    rb = PrioritizedReplay(buffer_size=4, seed=7)
    for i in range(6):
        rb.add("p", (i, i + 1), float(i % 4), {"actions": [i, i + 1]})
    rb.sample("p", 5)                                        # advance the RNG first
    state = pickle.loads(pickle.dumps(rb.state_dict()))
    expected = rb.sample("p", 20)
    rb.add("p", (9, 9), 99.0, None)                          # later changes don't touch `state`
    restored = PrioritizedReplay(buffer_size=1, seed=999)
    restored.load_state_dict(state)
    assert restored.buffer_size == 4 and restored.sample("p", 20) == expected
    assert restored.add("p", (1, 2), 5.0, None) is False     # key set restored too
    with pytest.raises(KeyError, match=r"lacks \['rng'\]"):
        restored.load_state_dict({k: v for k, v in state.items() if k != "rng"})


# ------------------------------------------------------------------------------ local search
def test_local_search_keeps_half_and_accepts_each_try_above_the_fixed_best():
    completions = iter([(0, 0), (5, 5), (4, 4), (9, 9), (5, 5)])
    calls = []
    rng = np.random.default_rng(0)

    def complete(prefix, r):
        calls.append((prefix, r))
        return next(completions)

    # best (0, 1, 2, 3), log R = sum = 6; prefix (0, 1); FoR compares every try with that 6:
    # (0,1,0,0) 1 reject; (0,1,5,5) 11 accept; (0,1,4,4) 9 accept (a rising bar, 11, would reject
    # it); (0,1,9,9) 19 accept; (0,1,5,5) 11 again: accepted again (FoR trains each accepted try)
    out = local_search([0, 1, 2, 3], lambda a: float(sum(a)), complete, 5, rng)
    assert out == [((0, 1, 5, 5), 11.0), ((0, 1, 4, 4), 9.0), ((0, 1, 9, 9), 19.0), ((0, 1, 5, 5), 11.0)]
    assert all(p == (0, 1) and r is rng for p, r in calls)
    # with a given best log R of 30 nothing passes; equal to the best is no improvement; nan never
    assert local_search([0, 1, 2, 3], sum, lambda p, r: (9, 9), 3, rng, best_log_r=30.0) == []
    assert accept_improving([(1,), (2,), (3,)], [6.0, float("nan"), 6.5], 6.0) == [((3,), 6.5)]
    # an odd length keeps ⌊5/2⌋ = 2 actions; `keep` overrides (PrOntoQA keeps all but the last)
    seen = []
    local_search([7, 8, 1, 2, 3], sum, lambda p, r: seen.append(p) or (), 1, rng)
    local_search([7, 8, 1, 2, 3], sum, lambda p, r: seen.append(p) or (), 1, rng, keep=4)
    local_search([7, 8, 1, 2, 3], sum, lambda p, r: seen.append(p) or (), 1, rng, keep=0)
    assert seen == [(7, 8), (7, 8, 1, 2), ()]
    with pytest.raises(ValueError, match=r"keep must be an int in \[0, 5\], got 6"):
        local_search_candidates([7, 8, 1, 2, 3], lambda p, r: (), 1, rng, keep=6)
    with pytest.raises(ValueError, match="best_actions is empty"):
        local_search_candidates([], lambda p, r: (), 1, rng)


def test_local_search_random_completion_is_reproducible():
    def complete(prefix, rng):   # the remaining items, in a random order (no repeats)
        rest = [a for a in range(6) if a not in prefix]
        return tuple(int(x) for x in rng.permutation(rest))

    def log_r(actions):          # reward for early high numbers
        return float(sum(a / (i + 1) for i, a in enumerate(actions)))

    a = local_search((0, 1, 2, 3, 4, 5), log_r, complete, 16, np.random.default_rng(5))
    b = local_search((0, 1, 2, 3, 4, 5), log_r, complete, 16, np.random.default_rng(5))
    assert a == b and len(a) >= 1
    assert all(x[0][:3] == (0, 1, 2) for x in a)
    assert all(lr == log_r(x) > log_r((0, 1, 2, 3, 4, 5)) for x, lr in a)
