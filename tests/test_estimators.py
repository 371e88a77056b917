"""Advantage estimators of issue 3 (GAE, RLOO, REINFORCE++, GiGPO, Step-GRPO).

Every expected number is worked out by hand in the comments; the only calls to other code are
the documented compositions (GiGPO without repeated states = algorithms.grpo, GAE whitening =
losses.masked_whiten).
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from algorithms import compute_grpo_advantages, get_advantage_estimator, masked_whiten
from algorithms.gae import compute_gae
from algorithms.gigpo import compute_gigpo_advantages, to_hashable
from algorithms.reinforce_pp import compute_reinforce_pp_advantages
from algorithms.rloo import compute_rloo_advantages
from algorithms.step_grpo import compute_step_grpo_advantages

EPS = 1e-6
F64 = torch.float64


def _bc(per_row, mask):
    """Per-row values broadcast over the mask (the expected [B, T] layout)."""
    return torch.tensor(per_row, dtype=F64)[:, None] * mask.to(F64)


def _close(actual, expected, atol=1e-9):
    torch.testing.assert_close(actual.to(F64), expected.to(F64), atol=atol, rtol=0)


# ------------------------------------------------------------------------------------------ GAE
# γ = λ = 0.5 (γλ = 0.25); V after a row's last response token is 0.
# row 0 (3 tokens): r = (1, 0, 2), V = (1, 2, 1)
#   t2: δ = 2 + .5·0 − 1 = 1          A2 = 1
#   t1: δ = 0 + .5·1 − 2 = −1.5       A1 = −1.5 + .25·1 = −1.25
#   t0: δ = 1 + .5·2 − 1 = 1          A0 = 1 + .25·(−1.25) = 0.6875
#   returns A + V = (1.6875, 0.75, 2)
# row 1 (2 tokens, then padding with garbage r = 99, V = nan that must be ignored): r = (0, 4),
#   V = (2, 2):  t1: δ = 4 + 0 − 2 = 2  A1 = 2;  t0: δ = 0 + .5·2 − 2 = −1  A0 = −1 + .25·2 = −0.5
#   returns (1.5, 4, 0)
GAE_MASK = torch.tensor([[1, 1, 1], [1, 1, 0]])
GAE_R = torch.tensor([[1.0, 0.0, 2.0], [0.0, 4.0, 99.0]])
GAE_V = torch.tensor([[1.0, 2.0, 1.0], [2.0, 2.0, float("nan")]])
GAE_ADV = torch.tensor([[0.6875, -1.25, 1.0], [-0.5, 2.0, 0.0]])
GAE_RET = torch.tensor([[1.6875, 0.75, 2.0], [1.5, 4.0, 0.0]])


def test_gae_two_rows_of_different_lengths():
    adv, ret = compute_gae(GAE_R, GAE_V, GAE_MASK, gamma=0.5, lam=0.5)
    assert adv.dtype == torch.float32 and ret.shape == (2, 3)
    _close(adv, GAE_ADV)
    _close(ret, GAE_RET)
    # γ = λ = 1 on row 1: A1 = 4 − 2 = 2, A0 = (0 + 2 − 2) + 2 = 2 (= return-to-go 4 − V0 2)
    adv1, _ = compute_gae(GAE_R[1:], GAE_V[1:], GAE_MASK[1:], gamma=1.0, lam=1.0)
    _close(adv1, torch.tensor([[2.0, 2.0, 0.0]]))


def test_gae_leading_masked_token_and_empty_row_do_not_crash():
    # row 0 mask (0, 1, 1), r = (5, 1, 1), V = (3, 1, 1): the masked t0 is skipped
    #   t2: δ = 1 + 0 − 1 = 0  A2 = 0;  t1: δ = 1 + .5·1 − 1 = .5  A1 = .5 + .25·0 = .5;  A0 = 0
    #   returns (0, 1.5, 1); row 1 has no response token at all -> zeros
    mask = torch.tensor([[0, 1, 1], [0, 0, 0]])
    r = torch.tensor([[5.0, 1.0, 1.0], [1.0, 1.0, 1.0]], dtype=F64)
    v = torch.tensor([[3.0, 1.0, 1.0], [1.0, 1.0, 1.0]], dtype=F64)
    adv, ret = compute_gae(r, v, mask, 0.5, 0.5)
    assert adv.dtype == F64
    _close(adv, torch.tensor([[0.0, 0.5, 0.0], [0.0, 0.0, 0.0]]))
    _close(ret, torch.tensor([[0.0, 1.5, 1.0], [0.0, 0.0, 0.0]]))


def test_gae_skips_interior_masked_tokens():
    # mask (1, 0, 1) (e.g. an observation spliced into a multi-turn response), γ = λ = 0.5,
    # r = (1, 7, 4), V = (1, 5, 2): t1 is skipped, so V after t0 is V2 = 2 and A carries over.
    #   t2: δ = 4 + 0 − 2 = 2  A2 = 2;  t0: δ = 1 + .5·2 − 1 = 1  A0 = 1 + .25·2 = 1.5
    #   returns (2.5, 0, 4)
    adv, ret = compute_gae(torch.tensor([[1.0, 7.0, 4.0]]), torch.tensor([[1.0, 5.0, 2.0]]),
                           torch.tensor([[1, 0, 1]]), 0.5, 0.5)
    _close(adv, torch.tensor([[1.5, 0.0, 2.0]]))
    _close(ret, torch.tensor([[2.5, 0.0, 4.0]]))


def test_gae_registered_outcome_scores_and_whitening():
    # scores (2, 4) on the last response token: row 0 r = (0, 0, 2), V = (1, 2, 1)
    #   t2: δ = 2 − 1 = 1  A2 = 1;  t1: δ = .5 − 2 = −1.5  A1 = −1.25;  t0: δ = 1 − 1 = 0
    #   A0 = 0 + .25·(−1.25) = −0.3125;  row 1 as above (−0.5, 2)
    gae = get_advantage_estimator("gae")
    kw = dict(scores=torch.tensor([2.0, 4.0]), group_ids=["a", "a"], mask=GAE_MASK, values=GAE_V,
              gamma=0.5, lam=0.5)
    raw = torch.tensor([[-0.3125, -1.25, 1.0], [-0.5, 2.0, 0.0]])
    _close(gae(**kw, whiten=False)["advantages"], raw)
    # returns = raw advantages + values on the mask (the critic's targets), 0 off it:
    # row 0: (-.3125+1, -1.25+2, 1+1); row 1: (-.5+2, 2+2, 0)
    _close(gae(**kw)["returns"], torch.tensor([[0.6875, 0.75, 2.0], [1.5, 4.0, 0.0]]))
    # whitened: mean of the 5 tokens = 0.9375 / 5 = 0.1875; deviations −.5, −1.4375, .8125,
    # −.6875, 1.8125; Σ dev² = 6.734375; unbiased var 1.68359375; sqrt(var + 1e-8) = 1.29753372
    expected = (raw - 0.1875) / 1.2975337221 * GAE_MASK
    _close(gae(**kw)["advantages"], expected, atol=1e-6)
    _close(gae(**kw)["advantages"], masked_whiten(raw, GAE_MASK), atol=1e-6)


def test_gae_bad_input():
    with pytest.raises(ValueError, match="values shape \\(2, 2\\) != mask shape \\(2, 3\\)"):
        compute_gae(GAE_R, GAE_V[:, :2], GAE_MASK, 0.5, 0.5)
    with pytest.raises(ValueError, match="token_rewards contains non-finite"):
        compute_gae(torch.tensor([[float("inf"), 0.0, 0.0]]), GAE_V[:1], GAE_MASK[:1], 1.0, 1.0)
    with pytest.raises(ValueError, match="lam must be in \\[0, 1\\], got 1.5"):
        compute_gae(GAE_R, GAE_V, GAE_MASK, 0.9, 1.5)
    with pytest.raises(ValueError, match="mask must be a \\[B, T\\] tensor"):
        compute_gae(GAE_R, GAE_V, [[1, 1, 1]], 0.9, 0.9)


# ----------------------------------------------------------------------------------------- RLOO
# a: (1, 2, 6): 1 − (2+6)/2 = −3;  2 − (1+6)/2 = −1.5;  6 − (1+2)/2 = 4.5
# b: (3, 3) -> 0;  c: singleton -> 0;  d: (0, 1): 0 − 1 = −1, 1 − 0 = 1
RLOO_SCORES = torch.tensor([1.0, 3.0, 2.0, 5.0, 3.0, 6.0, 0.0, 1.0])
RLOO_GROUPS = ["a", "b", "a", "c", "b", "a", "d", "d"]
RLOO_MASK = torch.tensor([[1, 1], [1, 0], [1, 1], [1, 1], [1, 1], [1, 0], [1, 1], [0, 1]])


def test_rloo_leave_one_out_singleton_and_equal_groups():
    adv = compute_rloo_advantages(RLOO_SCORES, RLOO_GROUPS, RLOO_MASK)
    assert adv.dtype == torch.float32
    _close(adv, _bc([-3.0, 0.0, -1.5, 0.0, 0.0, 4.5, -1.0, 1.0], RLOO_MASK))
    # three equal non-representable scores: (0.3000…04 − 0.1)/2 ≠ 0.1, still exactly 0
    eq = compute_rloo_advantages(torch.tensor([0.1] * 3, dtype=F64), [0, 0, 0], torch.ones(3, 1))
    assert (eq == 0).all()
    via = get_advantage_estimator("rloo")(scores=RLOO_SCORES, group_ids=np.array(RLOO_GROUPS,
                                          dtype=object), mask=RLOO_MASK)
    _close(via, adv)
    with pytest.raises(ValueError, match="group_ids has 2 entries but scores has 8"):
        compute_rloo_advantages(RLOO_SCORES, ["a", "b"], RLOO_MASK)


# ------------------------------------------------------------------------------------ REINFORCE++
# γ = 0.5; row 0 r = (0, 0, 4) -> G = (1, 2, 4); row 1 r = (1, 2 | padding 9) -> G = (2, 2)
# tokens (1, 2, 4, 2, 2): mean 11/5 = 2.2; dev (−1.2, −.2, 1.8, −.2, −.2); Σ dev² = 4.8;
# unbiased var 4.8/4 = 1.2, std 1.09544512
RPP_MASK = torch.tensor([[1, 1, 1], [1, 1, 0]])
RPP_R = torch.tensor([[0.0, 0.0, 4.0], [1.0, 2.0, 9.0]])


def test_reinforce_pp_discounted_return_and_global_whitening():
    adv = compute_reinforce_pp_advantages(RPP_R, RPP_MASK, gamma=0.5)
    s = 1.0954451150 + EPS
    _close(adv, torch.tensor([[-1.2 / s, -0.2 / s, 1.8 / s], [-0.2 / s, -0.2 / s, 0.0]]), 1e-6)
    # γ = 1: G = (4, 4, 4), (3, 2); mean 17/5 = 3.4; dev (.6, .6, .6, −.4, −1.4); Σ dev² = 3.2;
    # var 0.8, std 0.89442719
    s = 0.8944271910 + EPS
    adv = compute_reinforce_pp_advantages(RPP_R, RPP_MASK)
    _close(adv, torch.tensor([[0.6 / s, 0.6 / s, 0.6 / s], [-0.4 / s, -1.4 / s, 0.0]]), 1e-6)


def test_reinforce_pp_equal_returns_and_registry():
    # γ = 1: every response token's return is 0.1 -> nothing to learn, exactly 0 (0.1 is not
    # exact in binary: the float mean of the three returns is not exactly 0.1)
    flat = torch.tensor([[0.0, 0.0, 0.1], [0.0, 0.1, 0.0]], dtype=F64)
    assert (compute_reinforce_pp_advantages(flat, torch.tensor([[1, 1, 1], [0, 0, 0]])) == 0).all()
    # registry: scores (4, 2) on the last tokens, γ = 0.5 -> G = (1, 2, 4), (1, 2)
    # tokens (1, 2, 4, 1, 2): mean 2; dev (−1, 0, 2, −1, 0); Σ dev² = 6; var 1.5, std 1.22474487
    est = get_advantage_estimator("reinforce_pp")
    adv = est(scores=torch.tensor([4.0, 2.0]), group_ids=[0, 0], mask=RPP_MASK, gamma=0.5)
    s = 1.2247448714 + EPS
    _close(adv, torch.tensor([[-1 / s, 0.0, 2 / s], [-1 / s, 0.0, 0.0]]), 1e-6)


# ---------------------------------------------------------------------------------------- GiGPO
# One group "g" of three trajectories (rows listed step-major, as an agent loop gathers them):
#   row  traj step anchor reward
#    0    t1   0    S      0
#    1    t2   0    S      0
#    2    t3   0    S      0
#    3    t1   1    X      0
#    4    t2   1    Y      0       <- Y at t=1 here, at t=2 in t1 (repeat across time steps)
#    5    t3   1    Z      0       <- Z only once: singleton anchor group, A^S = 0
#    6    t1   2    Y      4
#    7    t3   2    X      8       <- X at t=2 here, at t=1 in t1
# Episode returns: t1 = 4, t2 = 0, t3 = 8.
# Step returns (Eq. 5), γ = 0.5: t1 (1, 2, 4), t2 (0, 0), t3 (2, 4, 8) -> per row
#   R = (1, 0, 2, 2, 0, 4, 4, 8)
# Anchor groups (Eq. 7, std unbiased):
#   S {1, 0, 2}: mean 1, std 1      -> rows 0, 1, 2: 0, −1/(1+ε), +1/(1+ε)
#   X {2, 8}:    mean 5, std √18    -> rows 3, 7: ∓3/(√18+ε)
#   Y {0, 4}:    mean 2, std √8     -> rows 4, 6: ∓2/(√8+ε)
#   Z {4}:       singleton          -> row 5: 0
# Episode advantage (Eq. 3):
#   "trajectories": (4, 0, 8): mean 4, var (0+16+16)/2 = 16, std 4 -> t1 0, t2 −4/(4+ε), t3 +4/(4+ε)
#   "step_samples": 3×4, 2×0, 3×8 -> mean 36/8 = 4.5; dev t1 −.5, t2 −4.5, t3 3.5;
#     Σ dev² = 3·.25 + 2·20.25 + 3·12.25 = 78; var 78/7, std 3.33809184
TRAJ = ["t1", "t2", "t3", "t1", "t2", "t3", "t1", "t3"]
STEP = [0, 0, 0, 1, 1, 1, 2, 2]
ANCH = ["S", "S", "S", "X", "Y", "Z", "Y", "X"]
REW = torch.tensor([0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 4.0, 8.0])
GRP = ["g"] * 8
G_MASK = torch.tensor([[1, 1, 1], [1, 1, 0], [1, 0, 0], [1, 1, 1],
                       [1, 1, 1], [1, 1, 0], [1, 1, 1], [1, 0, 0]])
SQ18, SQ8, SQ32, SQ2, S78 = 4.2426406871, 2.8284271247, 5.6568542495, 1.4142135624, 3.3380918416
A_STEP = [0.0, -1 / (1 + EPS), 1 / (1 + EPS), -3 / (SQ18 + EPS), -2 / (SQ8 + EPS), 0.0,
          2 / (SQ8 + EPS), 3 / (SQ18 + EPS)]
_T1, _T2, _T3 = -0.5 / (S78 + EPS), -4.5 / (S78 + EPS), 3.5 / (S78 + EPS)
A_EP_SAMPLES = [_T1, _T2, _T3, _T1, _T2, _T3, _T1, _T3]
A_EP_TRAJ = [0.0, -4 / (4 + EPS), 4 / (4 + EPS), 0.0, -4 / (4 + EPS), 4 / (4 + EPS), 0.0,
             4 / (4 + EPS)]


def _gigpo(**kw):
    args = dict(step_rewards=REW, traj_ids=TRAJ, step_ids=STEP, group_ids=GRP, anchors=ANCH,
                mask=G_MASK, gamma=0.5)
    args.update(kw)
    return compute_gigpo_advantages(**args)


def _plus(a, b, w=1.0):
    return [x + w * y for x, y in zip(a, b)]


@pytest.mark.parametrize("episode_stats, a_ep", [("step_samples", A_EP_SAMPLES),
                                                 ("trajectories", A_EP_TRAJ)])
def test_gigpo_three_trajectories_repeated_and_singleton_anchors(episode_stats, a_ep):
    adv = _gigpo(episode_stats=episode_stats)
    assert adv.shape == (8, 3) and adv.dtype == torch.float32
    _close(adv, _bc(_plus(a_ep, A_STEP), G_MASK), atol=1e-6)
    assert (adv[G_MASK == 0] == 0).all()
    # row 5 (singleton anchor Z) carries only the episode advantage
    _close(adv[5, :2], torch.full((2,), a_ep[5], dtype=F64), atol=1e-6)


def test_gigpo_omega_weights_the_step_advantage():
    for omega in (0.0, 0.5):
        _close(_gigpo(omega=omega), _bc(_plus(A_EP_SAMPLES, A_STEP, omega), G_MASK), atol=1e-6)


def test_gigpo_gamma_changes_the_step_returns():
    # γ = 1: R = t1 (4, 4, 4), t2 (0, 0), t3 (8, 8, 8) -> per row (4, 0, 8, 4, 0, 8, 4, 8)
    #   S {4, 0, 8}: mean 4, std 4 -> 0, −4/(4+ε), 4/(4+ε)
    #   X {4, 8}: ∓2/(√8+ε);  Y {0, 4}: ∓2/(√8+ε)
    a_step = [0.0, -4 / (4 + EPS), 4 / (4 + EPS), -2 / (SQ8 + EPS), -2 / (SQ8 + EPS), 0.0,
              2 / (SQ8 + EPS), 2 / (SQ8 + EPS)]
    _close(_gigpo(gamma=1.0), _bc(_plus(A_EP_SAMPLES, a_step), G_MASK), atol=1e-6)
    # γ = 0: R = own reward (0, 0, 0, 0, 0, 0, 4, 8)
    #   S {0, 0, 0}: all equal -> 0;  X {0, 8}: mean 4, std √32 -> ∓4/(√32+ε);  Y {0, 4}: ∓2/(√8+ε)
    a_step = [0.0, 0.0, 0.0, -4 / (SQ32 + EPS), -2 / (SQ8 + EPS), 0.0, 2 / (SQ8 + EPS),
              4 / (SQ32 + EPS)]
    _close(_gigpo(gamma=0.0), _bc(_plus(A_EP_SAMPLES, a_step), G_MASK), atol=1e-6)


def test_gigpo_without_std():
    # F_norm = 1: A^E step_samples (−.5, −4.5, 3.5) per trajectory, trajectories (0, −4, 4);
    # A^S = (0, −1, 1, −3, −2, 0, 2, 3)
    _close(_gigpo(norm_by_std=False), _bc([-0.5, -5.5, 4.5, -3.5, -6.5, 3.5, 1.5, 6.5], G_MASK))
    _close(_gigpo(norm_by_std=False, episode_stats="trajectories"),
           _bc([0.0, -5.0, 5.0, -3.0, -6.0, 4.0, 2.0, 7.0], G_MASK))


def test_gigpo_two_groups_do_not_share_anchors_and_row_order_is_free():
    # group "h": u1 (anchor S, reward 1), u2 (anchor S, reward 3), one step each.
    #   episode (1, 3): ∓1/(√2+ε); anchor S of h (1, 3): ∓1/(√2+ε)  -> ∓2/(√2+ε)
    # Group g is unchanged: pooling S across groups would make its S group {1, 0, 2, 1, 3}.
    perm = [9, 3, 0, 8, 6, 1, 5, 2, 7, 4]
    traj, step, anch = TRAJ + ["u1", "u2"], STEP + [0, 0], ANCH + ["S", "S"]
    rew = torch.cat([REW, torch.tensor([1.0, 3.0])])
    grp, mask = GRP + ["h", "h"], torch.cat([G_MASK, torch.tensor([[1, 1, 0], [1, 1, 1]])])
    expected = _plus(A_EP_SAMPLES, A_STEP) + [-2 / (SQ2 + EPS), 2 / (SQ2 + EPS)]
    adv = compute_gigpo_advantages(rew[perm], [traj[i] for i in perm], [step[i] for i in perm],
                                   [grp[i] for i in perm], [anch[i] for i in perm], mask[perm],
                                   gamma=0.5)
    _close(adv, _bc([expected[i] for i in perm], mask[perm]), atol=1e-6)


def test_gigpo_without_repeated_states_is_grpo():
    unique = [f"{t}@{s}" for t, s in zip(TRAJ, STEP)]
    for norm in (True, False):
        adv = _gigpo(anchors=unique, norm_by_std=norm)
        # per-row episode returns (t1 4, t2 0, t3 8) as GRPO scores over the step-samples
        grpo = compute_grpo_advantages(torch.tensor([4.0, 0, 8, 4, 0, 8, 4, 8]), GRP, G_MASK,
                                       norm_by_std=norm)
        _close(adv, grpo, atol=1e-6)
    _close(_gigpo(anchors=unique), _bc(A_EP_SAMPLES, G_MASK), atol=1e-6)
    # single-step trajectories: both episode modes are GRPO on the rewards (groups a, b)
    #   a (1, 2, 3): mean 2, std 1 -> ∓1/(1+ε), 0;  b (5, 9): mean 7, std √8 -> ∓2/(√8+ε)
    rew, mask, grp = torch.tensor([1.0, 2.0, 3.0, 5.0, 9.0]), torch.ones(5, 2), list("aaabb")
    expected = _bc([-1 / (1 + EPS), 0.0, 1 / (1 + EPS), -2 / (SQ8 + EPS), 2 / (SQ8 + EPS)], mask)
    for stats in ("step_samples", "trajectories"):
        adv = compute_gigpo_advantages(rew, list("vwxyz"), [0] * 5, grp, list("stuvw"), mask,
                                       episode_stats=stats)
        _close(adv, expected, atol=1e-6)
        _close(adv, compute_grpo_advantages(rew, grp, mask), atol=1e-6)


def test_gigpo_array_and_dict_anchors_key_like_strings():
    S = lambda: np.array([[1, 0], [0, 1]], dtype=np.uint8)            # noqa: E731 (fresh copies)
    X = [{"room": "kitchen", "inv": ["apple"]}, {"inv": ["apple"], "room": "kitchen"}]
    Y = [torch.tensor([1.0, 2.0]), np.array([1.0, 2.0], dtype=np.float32)]
    anchors = np.empty(8, dtype=object)
    anchors[:] = [S(), S(), S(), X[0], Y[0], "Z", Y[1], X[1]]
    _close(_gigpo(anchors=anchors), _bc(_plus(A_EP_SAMPLES, A_STEP), G_MASK), atol=1e-6)
    assert to_hashable(X[0]) == to_hashable(X[1]) and to_hashable(Y[0]) == to_hashable(Y[1])
    assert to_hashable(np.array([1, 2])) != to_hashable(np.array([[1, 2]]))   # shape counts
    # stacked image-like anchors [B, 2]: row i is the state
    grid = np.array([[0, 0], [0, 0], [0, 0], [1, 1], [2, 2], [3, 3], [2, 2], [1, 1]])
    _close(_gigpo(anchors=grid), _bc(_plus(A_EP_SAMPLES, A_STEP), G_MASK), atol=1e-6)


def test_gigpo_step_id_gap_and_registry():
    # ta: steps 0, 2 (step 1 missing), rewards (2, 2): R_2 = 2, R_0 = 2 + .5²·2 = 2.5 (exponent
    # k − t = 2); tb: steps 0, 1, rewards (0, 4): R_1 = 4, R_0 = 0 + .5·4 = 2. Episode returns are
    # the sums, 4 and 4 -> A^E = 0. Anchor A {2.5, 2}: mean 2.25 -> ±.25 (F_norm = 1: with the
    # std any pair gives ±1/√2, hiding the returns); B, C singletons -> 0.
    # Rows come out of time order on purpose (tb s1, ta s2, tb s0, ta s0).
    adv = compute_gigpo_advantages([4.0, 2.0, 0.0, 2.0], ["tb", "ta", "tb", "ta"], [1, 2, 0, 0],
                                   ["g"] * 4, ["C", "B", "A", "A"], torch.ones(4, 1), gamma=0.5,
                                   norm_by_std=False)
    _close(adv, torch.tensor([[0.0], [0.0], [-0.25], [0.25]]))
    est = get_advantage_estimator("gigpo")
    out = est(scores=torch.zeros(8), group_ids=GRP, mask=G_MASK, step_rewards=REW,
              traj_ids=np.array(TRAJ, dtype=object), step_ids=torch.tensor(STEP), anchors=ANCH,
              gamma=0.5, episode_stats="trajectories")
    _close(out, _bc(_plus(A_EP_TRAJ, A_STEP), G_MASK), atol=1e-6)


class _Unhashable:
    __hash__ = None


def test_gigpo_bad_input_names_the_field():
    with pytest.raises(ValueError, match="anchors has 7 entries but step_rewards has 8"):
        _gigpo(anchors=ANCH[:7])
    with pytest.raises(ValueError, match="traj_ids has 9 entries"):
        _gigpo(traj_ids=TRAJ + ["t1"])
    with pytest.raises(ValueError, match="step_ids: trajectory 't1' has step id 1 twice"):
        _gigpo(step_ids=[0, 0, 0, 1, 1, 1, 1, 2])
    with pytest.raises(ValueError, match="traj_ids: trajectory 't3' spans two groups "
                                         "\\(group_ids 'g' and 'h'\\)"):
        _gigpo(group_ids=["g"] * 7 + ["h"])
    with pytest.raises(ValueError, match="step_ids\\[3\\] must be an integer"):
        _gigpo(step_ids=[0, 0, 0, 1.5, 1, 1, 2, 2])
    with pytest.raises(ValueError, match="episode_stats must be one of"):
        _gigpo(episode_stats="episodes")
    with pytest.raises(ValueError, match="gamma must be in \\[0, 1\\]"):
        _gigpo(gamma=1.5)
    with pytest.raises(ValueError, match="step_rewards contains non-finite"):
        _gigpo(step_rewards=torch.tensor([float("nan")] * 8))
    with pytest.raises(ValueError, match="mask must be a \\[B, T\\] tensor with B = 8"):
        _gigpo(mask=G_MASK[:4])
    with pytest.raises(TypeError, match="anchors must be hashable"):
        _gigpo(anchors=ANCH[:7] + [_Unhashable()])


# ------------------------------------------------------------------ GiGPO invalid-action penalty
# verl-agent's order: env rewards alone -> R(τ) and step returns; then each row's own penalty p_i
# is subtracted from its episode score (R(τ) − p_i) and its step return (R_t − p_i).
# Review example: one group of two failed trajectories (all env rewards 0), γ = 0.95, ω = 1, std;
# A = [valid, invalid, valid], B all valid, penalty 0.1; both start in the same state "s0" (one
# anchor group {A0, B0}), every later state is distinct (singleton anchors, A^S = 0).
#   new: scores (0, −.1, 0, 0, 0, 0): mean −1/60, dev +1/60 (valid), −5/60 (invalid);
#     Σ dev² = 30/3600, var = 1/600, std = 1/√600 -> valid +(1/60)·√600 = +0.40825,
#     invalid −(5/60)·√600 = −2.04124; step returns 0 except A1 = −.1 (singleton) -> A^S = 0.
#   old (penalty folded into A1's reward): R(A) = −.1, R(B) = 0 over 3 + 3 rows: mean −.05,
#     std √(6·.0025/5) = √.003 -> A rows −.05/√.003 = −0.91287;
#     step returns A = (−.095, −.1, 0), anchor s0 {−.095, 0}: a pair gives ∓1/√2
#     -> A0 = −0.91287 − 0.70711 = −1.61998.
REV_TRAJ, REV_STEP = ["A"] * 3 + ["B"] * 3, [0, 1, 2] * 2
REV_ANCH = ["s0", "a1", "a2", "s0", "b1", "b2"]
REV_PEN = torch.tensor([0.0, 0.1, 0.0, 0.0, 0.0, 0.0])
REV_MASK = torch.ones(6, 2)
SQ600, SQ003 = 24.494897428, 0.0547722558


def _review(rewards, **kw):
    return compute_gigpo_advantages(rewards, REV_TRAJ, REV_STEP, ["g"] * 6, REV_ANCH, REV_MASK,
                                    gamma=0.95, omega=1.0, **kw)


def test_gigpo_penalty_after_discounting_review_example():
    std = 1 / SQ600
    valid, invalid = (1 / 60) / (std + EPS), -(5 / 60) / (std + EPS)
    assert valid == pytest.approx(0.408, abs=1e-3) and invalid == pytest.approx(-2.041, abs=1e-3)
    adv = _review(torch.zeros(6), penalties=REV_PEN)
    _close(adv, _bc([valid, invalid, valid, valid, valid, valid], REV_MASK), atol=1e-6)
    # the old way (penalty folded into the step reward) blames A's valid first step most
    old = _review(-REV_PEN)
    a_ep = -0.05 / (SQ003 + EPS)
    a0 = a_ep - 0.0475 / (0.0475 * 2 ** 0.5 + EPS)
    assert a0 == pytest.approx(-1.620, abs=1e-3) and a_ep == pytest.approx(-0.913, abs=1e-3)
    _close(old, _bc([a0, a_ep, a_ep, -a0, -a_ep, -a_ep], REV_MASK), atol=1e-6)
    assert (adv[:, 0] - old[:, 0]).abs().min() > 0.3
    # "trajectories": both R(τ) = 0 (degenerate: F_norm = 1), so the invalid step gets −p exactly
    _close(_review(torch.zeros(6), penalties=REV_PEN, episode_stats="trajectories"),
           _bc([0.0, -0.1, 0.0, 0.0, 0.0, 0.0], REV_MASK), atol=1e-6)


# Repeated anchors with rewards, γ = 0.5, penalty 1 on P0 and Q1:
#   row  traj step anchor reward pen | step return  penalised | score R(τ) − p
#   P0    P    0    S      0     1   |   2            1       |  3
#   P1    P    1    X      4     0   |   4            4       |  4
#   Q0    Q    0    S      0     0   |   .5           .5      |  2
#   Q1    Q    1    X      0     1   |   1            0       |  1
#   Q2    Q    2    Y      2     0   |   2            2       |  2
#   U0    U    0    S      0     0   |   .5           .5      |  1
#   U1    U    1    Z      1     0   |   1            1       |  1
# R(τ) = P 4, Q 2, U 1. Anchor groups on the penalised returns:
#   S {1, .5, .5}: mean 2/3, dev (1/3, −1/6, −1/6), var (1/9 + 2/36)/2 = 1/12;  X {4, 0}: ±2, std √8;
#   Y, Z singletons -> 0.  (Folding the penalty in would give Q0 = 0, Q1 = 0: S {1, 0, .5}.)
# Episode "step_samples": scores (3, 4, 2, 1, 2, 1, 1): mean 2, dev (1, 2, 0, −1, 0, −1, −1),
#   Σ dev² = 8, var 4/3.  "trajectories": R (4, 2, 1): mean 7/3, var (25 + 1 + 16)/9/2 = 7/3;
#   rows R − p − 7/3 = (2/3, 5/3, −1/3, −4/3, −1/3, −4/3, −4/3).
PEN_TRAJ, PEN_STEP = ["P", "P", "Q", "Q", "Q", "U", "U"], [0, 1, 0, 1, 2, 0, 1]
PEN_ANCH = ["S", "X", "S", "X", "Y", "S", "Z"]
PEN_REW = torch.tensor([0.0, 4.0, 0.0, 0.0, 2.0, 0.0, 1.0])
PEN_P = torch.tensor([1.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0])
PEN_MASK = torch.tensor([[1, 1], [1, 0], [1, 1], [1, 1], [0, 1], [1, 1], [1, 0]])


def _pen(**kw):
    args = dict(step_rewards=PEN_REW, traj_ids=PEN_TRAJ, step_ids=PEN_STEP, group_ids=["g"] * 7,
                anchors=PEN_ANCH, mask=PEN_MASK, gamma=0.5, penalties=PEN_P)
    args.update(kw)
    return compute_gigpo_advantages(**args)


def test_gigpo_penalty_with_repeated_anchors_both_episode_modes():
    s_s, s_x, s_ep, s_tr = (1 / 12) ** 0.5 + EPS, 8 ** 0.5 + EPS, (4 / 3) ** 0.5 + EPS, (7 / 3) ** 0.5 + EPS
    a_step = [(1 / 3) / s_s, 2 / s_x, (-1 / 6) / s_s, -2 / s_x, 0.0, (-1 / 6) / s_s, 0.0]
    a_ep = [d / s_ep for d in (1, 2, 0, -1, 0, -1, -1)]
    _close(_pen(), _bc(_plus(a_ep, a_step), PEN_MASK), atol=1e-6)
    a_tr = [d / s_tr for d in (2 / 3, 5 / 3, -1 / 3, -4 / 3, -1 / 3, -4 / 3, -4 / 3)]
    _close(_pen(episode_stats="trajectories"), _bc(_plus(a_tr, a_step), PEN_MASK), atol=1e-6)
    # F_norm = 1: A^S = (1/3, 2, −1/6, −2, 0, −1/6, 0)
    a_step1 = [1 / 3, 2.0, -1 / 6, -2.0, 0.0, -1 / 6, 0.0]
    _close(_pen(norm_by_std=False), _bc(_plus([1, 2, 0, -1, 0, -1, -1], a_step1), PEN_MASK),
           atol=1e-6)
    _close(_pen(norm_by_std=False, episode_stats="trajectories"),
           _bc(_plus([2 / 3, 5 / 3, -1 / 3, -4 / 3, -1 / 3, -4 / 3, -4 / 3], a_step1), PEN_MASK),
           atol=1e-6)
    # ω = 0 leaves the episode part alone; folding the penalty into the rewards differs everywhere
    _close(_pen(omega=0.0), _bc(a_ep, PEN_MASK), atol=1e-6)
    old = _pen(step_rewards=PEN_REW - PEN_P, penalties=None)
    assert (old - _pen())[PEN_MASK != 0].abs().min() > 0.2


def test_gigpo_penalties_none_is_zeros_and_registry_passes_them():
    expected = _bc(_plus(A_EP_SAMPLES, A_STEP), G_MASK)
    _close(_gigpo(penalties=None), expected, atol=1e-6)
    _close(_gigpo(penalties=torch.zeros(8)), expected, atol=1e-6)
    _close(_gigpo(penalties=np.zeros(8), episode_stats="trajectories"),
           _bc(_plus(A_EP_TRAJ, A_STEP), G_MASK), atol=1e-6)
    est = get_advantage_estimator("gigpo")
    out = est(scores=torch.zeros(7), group_ids=["g"] * 7, mask=PEN_MASK, step_rewards=PEN_REW,
              traj_ids=PEN_TRAJ, step_ids=PEN_STEP, anchors=PEN_ANCH, penalties=PEN_P, gamma=0.5)
    _close(out, _pen())


def test_gigpo_bad_penalties_name_the_field():
    with pytest.raises(ValueError, match=r"penalties must be a 1-D \[B\] tensor with B = 7.*\(6,\)"):
        _pen(penalties=torch.zeros(6))
    with pytest.raises(ValueError, match=r"penalties must be a 1-D \[B\] tensor with B = 7.*\(7, 1\)"):
        _pen(penalties=torch.zeros(7, 1))
    with pytest.raises(ValueError, match="penalties contains non-finite values"):
        _pen(penalties=torch.tensor([0.0, 0, 0, float("inf"), 0, 0, 0]))
    with pytest.raises(ValueError, match=r"penalties must be >= 0 .*got -0.1 at row 3"):
        _pen(penalties=torch.tensor([0.0, 0, 0, -0.1, 0, 0, 0]))
    with pytest.raises(ValueError, match="penalties must hold real numbers"):
        _pen(penalties=torch.zeros(7, dtype=torch.bool))
    with pytest.raises(ValueError, match="penalties must be a 1-D \\[B\\] tensor of numbers"):
        _pen(penalties=["a"] * 7)

# ------------------------------------------------------------------------------------ Step-GRPO
# step states: q1/s0 (0.5, 1, 0): mean .5, dev (0, .5, −.5), var .5/2 = .25, std .5
#   -> (0, .5/(.5+ε), −.5/(.5+ε));  q1/s1 (.8, .8): equal -> 0;  q2/s0: singleton -> 0
STEP_SCORES = torch.tensor([0.5, 0.8, 1.0, 0.3, 0.0, 0.8])
STEP_STATES = ["q1/s0", "q1/s1", "q1/s0", "q2/s0", "q1/s0", "q1/s1"]
S_MASK = torch.tensor([[1, 1], [1, 0], [1, 1], [1, 1], [0, 1], [1, 1]])


def test_step_grpo_groups_rollouts_of_one_step_state():
    h = 0.5 / (0.5 + EPS)
    _close(compute_step_grpo_advantages(STEP_SCORES, STEP_STATES, S_MASK),
           _bc([0.0, 0.0, h, 0.0, -h, 0.0], S_MASK), atol=1e-6)
    _close(compute_step_grpo_advantages(STEP_SCORES, STEP_STATES, S_MASK, norm_by_std=False),
           _bc([0.0, 0.0, 0.5, 0.0, -0.5, 0.0], S_MASK), atol=1e-6)
    est = get_advantage_estimator("step_grpo")
    # without step_state_ids the uid (one per step row in R1-Router) is the step state
    _close(est(scores=STEP_SCORES, group_ids=STEP_STATES, mask=S_MASK),
           _bc([0.0, 0.0, h, 0.0, -h, 0.0], S_MASK), atol=1e-6)
    # explicit step states override a coarser uid (one prompt for all six rows)
    _close(est(scores=STEP_SCORES, group_ids=["p"] * 6, mask=S_MASK, step_state_ids=STEP_STATES),
           _bc([0.0, 0.0, h, 0.0, -h, 0.0], S_MASK), atol=1e-6)
    with pytest.raises(ValueError, match="step_state_ids has 2 entries but step_scores has 6"):
        compute_step_grpo_advantages(STEP_SCORES, ["a", "b"], S_MASK)
