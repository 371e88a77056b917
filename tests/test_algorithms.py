"""The pure algorithm core: every number below is worked out by hand in the comments."""
from __future__ import annotations

import ast
import math
import sys
import textwrap
import uuid
from pathlib import Path

import numpy as np
import pytest
import torch

import algorithms
from algorithms import (aggregate, compute_grpo_advantages, entropy_from_logits,
                        get_advantage_estimator, get_policy_loss, kl_penalty,
                        list_advantage_estimators, list_policy_losses, masked_mean, masked_whiten,
                        ppo_clip_loss, register_advantage_estimator, register_policy_loss)

EPS = 1e-6

# ----------------------------------------------------------------------------------------- GRPO
# rows:       0    1    2    3    4    5    6    7
# group:      a    b    a    c    b    a    d    d
# score:      1    5    2    7    5    3    0    1
# a: mean 2, unbiased std sqrt((1+0+1)/2) = 1        -> A = (-1, 0, +1) / (1 + eps)
# b: all equal (5, 5)                                 -> 0
# c: singleton                                         -> 0
# d: mean 0.5, unbiased std sqrt((.25+.25)/1) = √.5   -> A = ∓0.5 / (0.70710678 + eps)
SCORES = torch.tensor([1.0, 5.0, 2.0, 7.0, 5.0, 3.0, 0.0, 1.0])
GROUPS = ["a", "b", "a", "c", "b", "a", "d", "d"]
MASK = torch.tensor([[1, 1, 1], [1, 1, 0], [1, 0, 0], [1, 1, 1],
                     [1, 1, 1], [1, 1, 0], [1, 1, 1], [1, 0, 0]])
A_GRPO = [-1 / (1 + EPS), 0.0, 0.0, 0.0, 0.0, 1 / (1 + EPS),
          -0.5 / (0.70710678 + EPS), 0.5 / (0.70710678 + EPS)]
A_DRGRPO = [-1.0, 0.0, 0.0, 0.0, 0.0, 1.0, -0.5, 0.5]


def _object_array(values):
    arr = np.empty(len(values), dtype=object)  # 1-D array of tuples, as Batch.non_tensors holds
    arr[:] = values
    return arr


def _broadcast(per_row, mask):
    return torch.tensor(per_row)[:, None] * mask.float()


@pytest.mark.parametrize("ids", [
    GROUPS,
    _object_array([("p", 1), ("p", 2), ("p", 1), ("p", 3), ("p", 2), ("p", 1), ("q", 0), ("q", 0)]),
    torch.tensor([10, 20, 10, 30, 20, 10, 40, 40]),
])
def test_grpo_two_groups_zero_variance_singleton_and_mask(ids):
    adv = compute_grpo_advantages(SCORES, ids, MASK)
    assert adv.shape == (8, 3) and adv.dtype == torch.float32
    torch.testing.assert_close(adv, _broadcast(A_GRPO, MASK), atol=1e-6, rtol=0)
    assert (adv[MASK == 0] == 0).all()
    assert (adv[[1, 3, 4]] == 0).all()            # zero-variance and singleton groups: exactly 0


def test_drgrpo_and_registered_names():
    adv = compute_grpo_advantages(SCORES, GROUPS, MASK.bool(), norm_by_std=False)
    torch.testing.assert_close(adv, _broadcast(A_DRGRPO, MASK), atol=1e-6, rtol=0)
    via_registry = get_advantage_estimator("drgrpo")(scores=SCORES, group_ids=GROUPS, mask=MASK)
    torch.testing.assert_close(via_registry, adv)
    grpo = get_advantage_estimator("grpo")(scores=SCORES, group_ids=GROUPS, mask=MASK)
    torch.testing.assert_close(grpo, _broadcast(A_GRPO, MASK), atol=1e-6, rtol=0)


def test_grpo_equal_non_representable_scores_are_exactly_zero():
    # 0.1 is not exact in binary: (0.1 + 0.1 + 0.1) / 3 != 0.1, yet the group has no signal
    adv = compute_grpo_advantages(torch.tensor([0.1, 0.1, 0.1], dtype=torch.float64),
                                  [0, 0, 0], torch.ones(3, 2))
    assert adv.dtype == torch.float64 and (adv == 0).all()


def test_grpo_bad_input_names_the_field():
    with pytest.raises(ValueError, match="group_ids has 2 entries"):
        compute_grpo_advantages(SCORES, ["a", "b"], MASK)
    with pytest.raises(TypeError, match="group_ids must hold hashable"):
        compute_grpo_advantages(SCORES[:2], [[1], [2]], MASK[:2])
    with pytest.raises(ValueError, match="scores contains non-finite"):
        compute_grpo_advantages(torch.tensor([1.0, float("nan")]), [0, 0], MASK[:2])
    with pytest.raises(ValueError, match="mask must be a"):
        compute_grpo_advantages(SCORES, GROUPS, MASK[:3])


# ------------------------------------------------------------------------------- masked stats
def test_masked_mean_ignores_padding_even_inf_and_nan():
    x = torch.tensor([[1.0, 2.0, 3.0], [4.0, float("nan"), float("inf")]], requires_grad=True)
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    m = masked_mean(x, mask)
    assert m.item() == pytest.approx(7 / 3)        # (1 + 2 + 4) / 3
    torch.testing.assert_close(masked_mean(x, mask, dim=-1), torch.tensor([1.5, 4.0]))
    m.backward()
    torch.testing.assert_close(x.grad, mask.float() / 3)   # finite, zero off-mask
    assert masked_mean(x, torch.zeros(2, 3)).item() == 0.0  # nothing masked in -> 0


def test_masked_whiten():
    x = torch.tensor([1.0, 2.0, 3.0, 100.0])
    # mean of (1, 2, 3) = 2, unbiased var = (1 + 0 + 1) / 2 = 1 -> (-1, 0, 1), padding -> 0
    out = masked_whiten(x, torch.tensor([1, 1, 1, 0]), eps=0.0)
    torch.testing.assert_close(out, torch.tensor([-1.0, 0.0, 1.0, 0.0]))
    with pytest.raises(ValueError, match="at least 2"):
        masked_whiten(x, torch.tensor([1, 0, 0, 0]))


def test_aggregate_modes_with_a_padding_row():
    loss = torch.tensor([[1.0, 3.0], [5.0, 5.0], [9.0, 9.0]])
    mask = torch.tensor([[1, 1], [1, 0], [0, 0]])  # third row is batch padding
    assert aggregate(loss, mask, "token-mean").item() == pytest.approx(3.0)            # 9 / 3
    assert aggregate(loss, mask, "seq-mean-token-mean").item() == pytest.approx(3.5)   # (2+5)/2
    assert aggregate(loss, mask, "seq-mean-token-sum").item() == pytest.approx(4.5)    # (4+5)/2
    # Dr.GRPO: (1/G)·Σ/T over the G = 2 rows with tokens: 9 / 2 / T=2
    assert aggregate(loss, mask, "seq-mean-token-sum-norm").item() == pytest.approx(2.25)
    assert aggregate(loss, mask, "seq-mean-token-sum-norm", norm_const=3).item() == pytest.approx(1.5)
    assert aggregate(loss, torch.zeros(3, 2), "seq-mean-token-sum-norm").item() == 0.0  # no rows
    assert aggregate(loss, mask, "token-mean", global_tokens=9).item() == pytest.approx(1.0)
    with pytest.raises(ValueError, match="unknown loss aggregation mode 'mean'.*seq-mean-token-sum-norm"):
        aggregate(loss, mask, "mean")
    with pytest.raises(ValueError, match="global_tokens only applies"):
        aggregate(loss, mask, "seq-mean-token-sum", global_tokens=9)
    with pytest.raises(ValueError, match="norm_const only applies"):
        aggregate(loss, mask, "token-mean", norm_const=9)


# ------------------------------------------------------------------------------------ PPO clip
# ε_low = ε_high = 0.2, dual clip c = 3. Per token: ratio ρ, advantage A,
#   unclipped −A·ρ, clipped −A·clip(ρ, .8, 1.2), L = max, then for A<0 min(L, −3A):
# row 0: a  ρ=1.1 A=+1: −1.1 vs −1.1            -> −1.1  (unclipped)
#        b  ρ=1.5 A=+1: −1.5 vs −1.2            -> −1.2  (clipped high, A>0)
#        c  ρ=0.5 A=−1: +0.5 vs +0.8            -> +0.8  (clipped low, A<0; 0.8 < 3)
#        f  ρ=1.1 A=−1: +1.1 vs +1.1            -> +1.1  (unclipped)
# row 1: d  ρ=4.0 A=−1: +4.0 vs +1.2 -> 4.0, dual min(4, 3) -> +3.0 (dual-clipped)
#        e  ρ=0.5 A=+2: −1.0 vs −1.6            -> −1.0  (unclipped: low ratio, A>0)
#        two padding tokens
# row sums: −0.4 and 2.0; 6 tokens.
RATIOS = [[1.1, 1.5, 0.5, 1.1], [4.0, 0.5, 1.0, 1.0]]
ADVS = [[1.0, 1.0, -1.0, -1.0], [-1.0, 2.0, 0.0, 0.0]]
PPO_MASK = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]])


def _ppo_inputs():
    old = torch.full((2, 4), -1.0, dtype=torch.float64)
    logp = (old + torch.tensor(RATIOS, dtype=torch.float64).log())
    logp[1, 2:] = -math.inf                       # padding garbage must not leak
    old[1, 3] = math.inf
    return logp.requires_grad_(True), old, torch.tensor(ADVS, dtype=torch.float64)


@pytest.mark.parametrize("agg, expected", [
    ("token-mean", 1.6 / 6),                # (−0.4 + 2.0) / 6
    ("seq-mean-token-mean", 0.45),          # (−0.4/4 + 2.0/2) / 2
    ("seq-mean-token-sum", 0.8),            # (−0.4 + 2.0) / 2
    ("seq-mean-token-sum-norm", 0.2),       # 1.6 / T=4 / G=2 rows
])
def test_ppo_clip_each_regime_and_aggregation(agg, expected):
    logp, old, adv = _ppo_inputs()
    loss, metrics = ppo_clip_loss(logp, old, adv, PPO_MASK, agg=agg)
    assert loss.item() == pytest.approx(expected, abs=1e-12)
    assert metrics["clipfrac"].item() == pytest.approx(2 / 6)       # b and c
    assert metrics["dual_clipfrac"].item() == pytest.approx(1 / 6)  # d
    # ppo_kl = mean(−ln ρ) = −(ln1.1 + ln1.5 + ln.5 + ln1.1 + ln4 + ln.5)/6 = −0.5960855/6
    assert metrics["ppo_kl"].item() == pytest.approx(-0.0993476, abs=1e-7)
    assert not metrics["clipfrac"].requires_grad


def test_ppo_clip_gradient_flows_only_through_unclipped_tokens():
    logp, old, adv = _ppo_inputs()
    loss, _ = ppo_clip_loss(logp, old, adv, PPO_MASK)
    loss.backward()
    # d(−A·ρ)/d logp = −A·ρ, divided by 6 tokens; clipped (b, c), dual (d) and padding get 0
    expected = torch.tensor([[-1.1, 0.0, 0.0, 1.1], [0.0, -1.0, 0.0, 0.0]], dtype=torch.float64) / 6
    torch.testing.assert_close(logp.grad, expected)


def test_ppo_clip_without_dual_clip_and_asymmetric_clip():
    logp, old, adv = _ppo_inputs()
    loss, m = ppo_clip_loss(logp, old, adv, PPO_MASK, dual_clip=None)
    assert loss.item() == pytest.approx(2.6 / 6)   # d keeps 4.0: (−0.4 + 3.0) / 6
    assert m["dual_clipfrac"].item() == 0.0
    # clip_high 0.6: b (ρ=1.5) is now inside [0.8, 1.6] -> −1.5; total (−0.7 + 2.0) / 6
    loss, m = ppo_clip_loss(logp, old, adv, PPO_MASK, clip_high=0.6)
    assert loss.item() == pytest.approx(1.3 / 6)
    assert m["clipfrac"].item() == pytest.approx(1 / 6)
    assert get_policy_loss("ppo_clip") is ppo_clip_loss
    with pytest.raises(ValueError, match="dual_clip must be > 1"):
        ppo_clip_loss(logp, old, adv, PPO_MASK, dual_clip=0.5)
    with pytest.raises(ValueError, match="advantages shape"):
        ppo_clip_loss(logp, old, adv[:, :2], PPO_MASK)


def test_global_tokens_makes_rank_losses_sum_to_the_global_token_mean():
    """Two data-parallel 'ranks' each hold one row; dividing by the global token count (6) makes
    the sum of their losses and gradients equal the single-process token-mean."""
    logp, old, adv = _ppo_inputs()
    full, _ = ppo_clip_loss(logp, old, adv, PPO_MASK)
    full.backward()
    full_grad = logp.grad.clone()
    logp.grad = None
    parts = [ppo_clip_loss(logp[r:r + 1], old[r:r + 1], adv[r:r + 1], PPO_MASK[r:r + 1],
                           global_tokens=6)[0] for r in range(2)]
    assert parts[0].item() == pytest.approx(-0.4 / 6) and parts[1].item() == pytest.approx(2 / 6)
    sum(parts).backward()
    assert sum(parts).item() == pytest.approx(full.item())
    torch.testing.assert_close(logp.grad, full_grad)
    # per-rank means averaged would be (−0.1 + 1.0) / 2 = 0.45, not the token-mean 0.2667
    local = [ppo_clip_loss(logp[r:r + 1], old[r:r + 1], adv[r:r + 1], PPO_MASK[r:r + 1])[0]
             for r in range(2)]
    assert (sum(local) / 2).item() == pytest.approx(0.45)


# Dr.GRPO's seq-mean-token-sum-norm over a mini-batch of 4 rows, T = 3 (row 3 is batch padding,
# mask 0, so G = 3 rows): per-token loss L = w·x with x the parameter, mask m:
#   row 0: L (1, 2, 3) m (1, 1, 1) -> Σ 6;  row 1: L (4, 5, 6) m (1, 1, 0) -> Σ 9
#   row 2: L (7, 8, 9) m (1, 0, 0) -> Σ 7;  row 3: padding
# full loss (1/G)·Σ m·L / T = 22 / 3 / 3 = 22/9; dL/dx_{i,t} = w·m / 9.
SUMNORM_W = torch.tensor([[1.0, 2, 3], [4, 5, 6], [7, 8, 9], [10, 11, 12]], dtype=torch.float64)
SUMNORM_MASK = torch.tensor([[1, 1, 1], [1, 1, 0], [1, 0, 0], [0, 0, 0]])


def test_token_sum_norm_split_over_ranks_and_micro_batches_equals_full_batch():
    """2 ranks x 2 micro-batches of one row each: each micro-batch's aggregate times its share
    rows/global_rows (what workers/actor.py does) sums to the full-batch loss and gradient."""
    x = torch.ones(4, 3, dtype=torch.float64, requires_grad=True)
    full = aggregate(SUMNORM_W * x, SUMNORM_MASK, "seq-mean-token-sum-norm")
    assert full.item() == pytest.approx(22 / 9)
    full.backward()
    torch.testing.assert_close(x.grad, SUMNORM_W * SUMNORM_MASK / 9)
    x.grad = None
    global_rows = 3
    parts = []
    for rank in range(2):
        for micro in range(2):
            r = slice(2 * rank + micro, 2 * rank + micro + 1)
            rows = int((SUMNORM_MASK[r].sum(-1) > 0).sum())
            parts.append(aggregate(SUMNORM_W[r] * x[r], SUMNORM_MASK[r], "seq-mean-token-sum-norm")
                         * rows / global_rows)
    assert [p.item() for p in parts] == pytest.approx([6 / 9, 9 / 9, 7 / 9, 0.0])
    sum(parts).backward()
    assert sum(parts).item() == pytest.approx(22 / 9)
    torch.testing.assert_close(x.grad, SUMNORM_W * SUMNORM_MASK / 9)


def test_token_sum_norm_does_not_grow_with_copies_of_the_rows():
    """Doubling the mini-batch with copies of its rows leaves the loss as it was (Σ/T alone,
    the old definition, doubled it: 44/3 instead of 22/3)."""
    loss = aggregate(SUMNORM_W, SUMNORM_MASK, "seq-mean-token-sum-norm")
    doubled = aggregate(SUMNORM_W.repeat(2, 1), SUMNORM_MASK.repeat(2, 1), "seq-mean-token-sum-norm")
    assert loss.item() == pytest.approx(22 / 9) and doubled.item() == pytest.approx(22 / 9)


# ------------------------------------------------------------------------------------- KL
def test_kl_estimators_by_hand():
    logp = torch.tensor([-1.0, -2.0, -1.5, -5.0, 0.0], dtype=torch.float64)
    ref = torch.tensor([-2.0, -1.0, -1.5, -1.0, -30.0], dtype=torch.float64)
    # logp − ref = 1, −1, 0, −4, 30
    torch.testing.assert_close(kl_penalty(logp, ref, "k1"),
                               torch.tensor([1.0, -1.0, 0.0, -4.0, 30.0], dtype=torch.float64))
    torch.testing.assert_close(kl_penalty(logp, ref, "k2"),
                               torch.tensor([0.5, 0.5, 0.0, 8.0, 450.0], dtype=torch.float64))
    # k3 with z = ref − logp = −1, 1, 0, 4, −30: e^z − z − 1
    #   e^−1 = 0.36787944; e − 2 = 0.71828183; 0; e^4 − 5 = 49.598 -> clamp 10; 29 -> clamp 10
    torch.testing.assert_close(kl_penalty(logp, ref, "k3"),
                               torch.tensor([0.36787944, 0.71828183, 0.0, 10.0, 10.0],
                                            dtype=torch.float64), atol=1e-8, rtol=0)
    torch.testing.assert_close(kl_penalty(logp, ref, "low_var_kl"), kl_penalty(logp, ref, "k3"))
    with pytest.raises(ValueError, match="unknown KL kind 'k4'.*low_var_kl"):
        kl_penalty(logp, ref, "k4")


def test_k3_extreme_log_ratio_has_finite_gradient():
    logp = torch.tensor([-200.0, -1.0], requires_grad=True)
    ref = torch.tensor([0.0, -1.5])
    kl = kl_penalty(logp, ref, "k3")
    kl.sum().backward()
    assert kl[0].item() == 10.0
    # second token: z = −0.5, d/dlogp (e^z − z − 1) = −e^z + 1 = 1 − e^−0.5 = 0.39346934
    torch.testing.assert_close(logp.grad, torch.tensor([0.0, 0.39346934]))


# -------------------------------------------------------------------------------- entropy
def test_entropy_uniform_one_hot_and_by_hand():
    V = 7
    uniform = torch.zeros(2, V)
    uniform[1] += 1000.0                                   # large logits: still stable
    torch.testing.assert_close(entropy_from_logits(uniform), torch.full((2,), math.log(V)))
    one_hot = torch.tensor([[0.0, -math.inf, -math.inf], [1e4, 0.0, 0.0]], requires_grad=True)
    h = entropy_from_logits(one_hot)
    torch.testing.assert_close(h, torch.zeros(2))
    h.sum().backward()
    assert torch.isfinite(one_hot.grad).all()
    # p = (1/4, 3/4): H = ¼ ln 4 + ¾ ln(4/3) = 0.34657359 + 0.21576155 = 0.56233514
    two = torch.tensor([0.0, math.log(3.0)], dtype=torch.bfloat16)
    out = entropy_from_logits(two)
    assert out.dtype == torch.float32
    assert out.item() == pytest.approx(0.56233514, abs=5e-3)  # bf16 rounds ln 3
    assert entropy_from_logits(torch.tensor([0.0, math.log(3.0)])).item() == pytest.approx(
        0.56233514, abs=1e-6)


# ------------------------------------------------------------------------------- registry
def test_registry_errors_list_names():
    with pytest.raises(KeyError, match=r"unknown advantage estimator 'nope'.*'drgrpo'.*'grpo'"):
        get_advantage_estimator("nope")
    with pytest.raises(KeyError, match=r"unknown policy loss 'nope'.*'ppo_clip'"):
        get_policy_loss("nope")
    with pytest.raises(ValueError, match="'grpo' is already registered"):
        register_advantage_estimator("grpo")(lambda scores, group_ids, mask: mask)
    with pytest.raises(ValueError, match="'ppo_clip' is already registered"):
        register_policy_loss("ppo_clip")(lambda **kw: None)
    # registering the same function again is a no-op (e.g. a module imported twice)
    register_policy_loss("ppo_clip")(ppo_clip_loss)
    assert {"grpo", "drgrpo"} <= set(list_advantage_estimators())
    assert "ppo_clip" in list_policy_losses()


def _write_dist(site: Path, dist: str, entry_points: str, modules: dict[str, str]) -> None:
    """A real installed-distribution layout: <dist>-0.1.dist-info with METADATA and
    entry_points.txt, plus the modules, all under `site` (which goes on sys.path)."""
    info = site / f"{dist}-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(textwrap.dedent(entry_points))
    for rel, src in modules.items():
        path = site / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(src))


def test_entry_point_plugins_are_loaded(tmp_path, monkeypatch):
    tag = uuid.uuid4().hex[:8]
    pkg = f"hyflow_plug_{tag}"
    _write_dist(tmp_path, f"hyflow-plug-{tag}", f"""
        [hyflow.algorithms]
        est = {pkg}
        loss = {pkg}.extra:setup
        """, {
        f"{pkg}/__init__.py": f"""
            from algorithms import register_advantage_estimator

            @register_advantage_estimator("const7_{tag}")
            def const7(scores, group_ids, mask):
                return mask.float() * 7
            """,
        f"{pkg}/extra.py": f"""
            from algorithms import register_policy_loss

            def _loss(logprobs, old_logprobs, advantages, mask):
                return logprobs.sum() * 0, {{}}

            def setup():
                register_policy_loss("zero_{tag}")(_loss)
            """,
    })
    monkeypatch.syspath_prepend(str(tmp_path))    # also invalidates importlib caches
    est = get_advantage_estimator(f"const7_{tag}")
    assert est(scores=None, group_ids=None, mask=torch.ones(1, 2)).tolist() == [[7.0, 7.0]]
    assert f"zero_{tag}" in list_policy_losses()
    assert get_policy_loss(f"zero_{tag}").__module__ == f"{pkg}.extra"


def test_broken_plugin_error_names_the_entry_point(tmp_path, monkeypatch):
    tag = uuid.uuid4().hex[:8]
    _write_dist(tmp_path, f"hyflow-broken-{tag}", f"""
        [hyflow.algorithms]
        broken_{tag} = hyflow_broken_{tag}
        """, {f"hyflow_broken_{tag}.py": "raise RuntimeError('plug-in exploded')\n"})
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ImportError, match=f"'broken_{tag}' = 'hyflow_broken_{tag}'.*exploded"):
        get_advantage_estimator(f"missing_{tag}")
    with pytest.raises(ImportError, match=f"broken_{tag}"):
        list_policy_losses()


# ------------------------------------------------------------------------------- purity
def test_algorithms_imports_only_torch_numpy_stdlib():
    allowed = set(sys.stdlib_module_names) | {"torch", "numpy", "__future__"}
    files = sorted(Path(algorithms.__file__).parent.glob("*.py"))
    assert {"registry.py", "grpo.py", "losses.py", "__init__.py"} <= {f.name for f in files}
    seen = set()
    for f in files:
        for node in ast.walk(ast.parse(f.read_text(), filename=str(f))):
            if isinstance(node, ast.Import):
                roots = [a.name.split(".")[0] for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                if node.module == "orchestrator.plugins":  # the registry table: stdlib only (checked below)
                    continue
                roots = [node.module.split(".")[0]]
            else:
                continue                            # relative imports stay inside algorithms/
            for root in roots:
                seen.add(root)
                assert root not in {"orchestrator", "workers", "envs"}, f"{f.name} imports {root}"
                assert root in allowed, f"{f.name} imports {root}, not torch/numpy/stdlib"
    assert {"torch", "numpy"} <= seen   # the scan really read the import lines
    plugins = Path(algorithms.__file__).parents[1] / "orchestrator" / "plugins.py"
    for node in ast.walk(ast.parse(plugins.read_text())):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module]
            assert all(n.split(".")[0] in set(sys.stdlib_module_names) | {"__future__"} for n in names), names
