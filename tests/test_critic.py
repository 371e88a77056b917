"""The PPO critic: value-clipped loss and KL-in-reward on hand numbers, adaptive KL control, and
a real critic (FSDP2 on 2 gloo ranks in Ray actors, colocated with a reference policy) against a
single-process reference on the plain HF token-classification model."""
from __future__ import annotations

import math

import pytest
import torch

from algorithms.gae import compute_gae
from algorithms.kl_control import (AdaptiveKLController, FixedKLController, make_kl_controller,
                                   mean_sequence_kl, token_rewards_with_kl)
from algorithms.losses import value_loss
from orchestrator.batch import Batch

B, P, R, VOCAB_USED, SEED = 8, 6, 5, 5000, 7
CRITIC_CFG = dict(lr=1e-3, weight_decay=0.0, betas=[0.9, 0.999], grad_clip=1.0, ppo_epochs=2, mini_batch_size=4,
                  micro_batch_size=1, cliprange_value=0.01, loss_agg="token-mean")
ACTOR_CFG = dict(lr=1e-6, weight_decay=0.0, betas=[0.9, 0.999], grad_clip=1.0, micro_batch_size=3)
KL_COEF, GAMMA, LAM = 0.05, 1.0, 0.95


# ------------------------------------------------------------------ value loss
def test_value_loss_hand_numbers():
    nan = float("nan")  # padding garbage must not leak into the loss or the gradient
    values = torch.tensor([[1.0, 2.0, 0.5, nan], [1.0, 3.0, nan, nan]], requires_grad=True)
    old = torch.tensor([[0.8, 2.5, 0.5, 0.0], [0.0, 3.0, 0.0, 0.0]])
    returns = torch.tensor([[2.0, 1.0, 0.0, 7.0], [0.5, 4.0, 0.0, 0.0]])
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])
    # per token max(unclipped, clipped) with eps 0.1:
    #   (1-2)²=1    vs (0.9-2)²=1.21  -> 1.21 clipped     (2-1)²=1  vs (2.4-1)²=1.96 -> 1.96 clipped
    #   0.25        vs 0.25           -> 0.25             (1-.5)²=.25 vs (.1-.5)²=.16 -> 0.25
    #   (3-4)²=1    vs 1              -> 1
    loss, m = value_loss(values, old, returns, mask, 0.1)
    assert loss.item() == pytest.approx(0.5 * 4.67 / 5)
    assert m["vf_clipfrac"].item() == pytest.approx(2 / 5)
    assert m["vpred_mean"].item() == pytest.approx(7.5 / 5)
    loss.backward()
    # clipped tokens have the clamp saturated: no gradient; row 1 token 0: (V - R)/5 = 0.1
    assert values.grad[0, :2].tolist() == [0.0, 0.0]
    assert values.grad[1, 0].item() == pytest.approx(0.1)
    assert values.grad[1, 1].item() == pytest.approx(0.5 * 2 * (3 - 4) / 5)
    assert values.grad[0, 3].item() == 0.0 and values.grad[1, 2:].tolist() == [0.0, 0.0]

    unclipped, m = value_loss(values, old, returns, mask, None)
    assert unclipped.item() == pytest.approx(0.5 * 3.5 / 5) and m["vf_clipfrac"].item() == 0.0
    seq, _ = value_loss(values, old, returns, mask, 0.1, agg="seq-mean-token-mean")
    assert seq.item() == pytest.approx(0.5 * (3.42 / 3 + 1.25 / 2) / 2)
    # Dr.GRPO's (1/G)·Σ/T: G = 2 rows, T = 4 columns
    drgrpo, _ = value_loss(values, old, returns, mask, 0.1, agg="seq-mean-token-sum-norm")
    assert drgrpo.item() == pytest.approx(0.5 * 4.67 / 4 / 2)
    share, _ = value_loss(values, old, returns, mask, 0.1, global_tokens=10)
    assert share.item() == pytest.approx(0.5 * 4.67 / 10)


def test_value_loss_bad_input():
    v = torch.zeros(2, 3)
    with pytest.raises(ValueError, match=r"returns shape \(2, 2\) != values shape \(2, 3\)"):
        value_loss(v, v, torch.zeros(2, 2), torch.ones(2, 3), 0.2)
    with pytest.raises(ValueError, match="clip_range_value must be >= 0"):
        value_loss(v, v, v, torch.ones(2, 3), -0.1)
    with pytest.raises(ValueError, match="unknown loss aggregation mode 'mean'"):
        value_loss(v, v, v, torch.ones(2, 3), 0.2, agg="mean")


# ------------------------------------------------------------------ KL in the reward
def test_token_rewards_with_kl_hand_numbers():
    inf = float("inf")
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])
    old = torch.tensor([[-1.0, -2.0, -0.5, inf], [-0.3, -0.7, -inf, 0.0]])
    ref = torch.tensor([[-1.5, -1.0, -0.5, 0.0], [-0.3, -1.2, 0.0, 0.0]])
    rewards, kl = token_rewards_with_kl(torch.tensor([1.0, -1.0]), mask, old, ref, kl_coef=0.1)
    # k1 = old - ref = [[0.5, -1, 0], [0, 0.5]]; score on the last response token minus 0.1·k1
    torch.testing.assert_close(kl, torch.tensor([[0.5, -1.0, 0.0, 0.0], [0.0, 0.5, 0.0, 0.0]]))
    torch.testing.assert_close(rewards, torch.tensor([[-0.05, 0.1, 1.0, 0.0], [0.0, -1.05, 0.0, 0.0]]))
    assert mean_sequence_kl(kl, mask) == pytest.approx(((0.5 - 1.0) / 3 + 0.5 / 2) / 2)
    _, k3 = token_rewards_with_kl(torch.tensor([1.0, -1.0]), mask, old, ref, 0.1, kind="k3")
    assert k3[0, 0].item() == pytest.approx(math.exp(-0.5) + 0.5 - 1)
    no_kl, _ = token_rewards_with_kl(torch.tensor([1.0, -1.0]), mask, old, ref, 0.0)
    assert no_kl.tolist() == [[0.0, 0.0, 1.0, 0.0], [0.0, -1.0, 0.0, 0.0]]
    with pytest.raises(ValueError, match=r"ref_logprobs shape \(2, 3\) != mask shape \(2, 4\)"):
        token_rewards_with_kl(torch.tensor([1.0, -1.0]), mask, old, ref[:, :3], 0.1)
    with pytest.raises(ValueError, match="kl_coef must be >= 0"):
        token_rewards_with_kl(torch.tensor([1.0, -1.0]), mask, old, ref, -0.1)


def test_kl_controllers():
    ctl = AdaptiveKLController(init_coef=0.2, target=6.0, horizon=10000)
    assert ctl.update(9.0, 256) == pytest.approx(0.2 * (1 + 0.2 * 256 / 10000))   # error 0.5 -> clipped 0.2
    assert ctl.update(3.0, 256) == pytest.approx(0.2 * 1.00512 * 0.99488)          # error -0.5 -> -0.2
    saved = ctl.state_dict()
    assert ctl.update(6.6, 100) == pytest.approx(0.2 * 1.00512 * 0.99488 * 1.001)  # error 0.1 unclipped
    again = AdaptiveKLController(1.0, 1.0, 1.0)
    again.load_state_dict(saved)
    assert again.update(6.6, 100) == ctl.value and again.target == 6.0
    fixed = make_kl_controller("fixed", 0.05)
    assert isinstance(fixed, FixedKLController) and fixed.update(100.0, 256) == 0.05 == fixed.value
    with pytest.raises(ValueError, match="needs target and horizon"):
        make_kl_controller("adaptive", 0.1)
    with pytest.raises(ValueError, match="unknown KL controller 'pid'"):
        make_kl_controller("pid", 0.1)
    with pytest.raises(ValueError, match="adaptive kl target must be > 0"):
        AdaptiveKLController(0.1, 0.0, 10)


# ------------------------------------------------------------------ model helpers
def make_batch(seed: int = 0) -> Batch:
    """Left-padded prompts + right-padded responses of random lengths (pad id 0)."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, VOCAB_USED, (B, P + R), generator=g)
    mask = torch.ones(B, P + R, dtype=torch.long)
    for i in range(B):
        mask[i, :P - int(torch.randint(1, P + 1, (1,), generator=g))] = 0
        mask[i, P + int(torch.randint(1, R + 1, (1,), generator=g)):] = 0
    ids = ids * mask
    return Batch({"input_ids": ids, "attention_mask": mask, "position_ids": (mask.cumsum(-1) - 1).clamp(min=0),
                  "responses": ids[:, P:], "response_mask": mask[:, P:]})


def plain_value_model(model_dir: str, seed: int = SEED):
    """The reference critic: plain HF token-classification model, no dropout, head initialized as
    documented (weight ~ N(0, (1/(hidden+1))²) from torch.Generator(seed), bias 0)."""
    from transformers import AutoConfig, AutoModelForTokenClassification
    cfg = AutoConfig.from_pretrained(model_dir, num_labels=1)
    cfg.classifier_dropout = 0.0
    model = AutoModelForTokenClassification.from_pretrained(model_dir, config=cfg, dtype=torch.float32)
    hidden = model.score.in_features
    with torch.no_grad():
        std = 1.0 / (hidden + 1)
        model.score.weight.copy_(torch.randn(1, hidden, generator=torch.Generator().manual_seed(seed)) * std)
        model.score.bias.zero_()
    return model


def padded_values(model, batch: Batch) -> torch.Tensor:
    """V at positions P-1 .. P+R-2 of the full padded batch, 0 on padding (no column dropping)."""
    out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                position_ids=batch["position_ids"]).logits[:, P - 1:-1, 0]
    return out * batch["response_mask"]


def test_value_model_loading_and_alignment(tiny_model_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    from workers.backends.fsdp_model import load_hf_model, response_values
    model = load_hf_model(tiny_model_dir, "value", torch.float32, seed=SEED).eval()
    ref = plain_value_model(tiny_model_dir)
    assert torch.equal(model.score.weight, ref.score.weight) and model.dropout.p == 0.0
    other = load_hf_model(tiny_model_dir, "value", torch.float32, seed=SEED + 1)
    assert not torch.equal(other.score.weight, model.score.weight)
    zero = load_hf_model(tiny_model_dir, "value", torch.float32, seed=SEED, value_head_std=0.0)
    assert zero.score.weight.abs().max().item() == 0.0
    batch = make_batch(1)
    with torch.no_grad():
        v = response_values(model, batch)
        # Alignment against an unpadded forward of each row: V_j = head at prompt_len - 1 + j.
        for i in range(B):
            m = batch["attention_mask"][i].bool()
            row = model(input_ids=batch["input_ids"][i][m][None]).logits[0, :, 0]
            n_prompt, n_resp = int(m[:P].sum()), int(m[P:].sum())
            torch.testing.assert_close(v[i, :n_resp], row[n_prompt - 1:n_prompt - 1 + n_resp], atol=1e-5, rtol=0)
            assert v[i, n_resp:].abs().sum() == 0
        torch.testing.assert_close(v, padded_values(ref, batch), atol=1e-5, rtol=0)
    assert v.std() > 1e-3  # a real, non-constant head
    # A saved critic keeps its head: loading it again with another seed changes nothing.
    model.save_pretrained(tmp_path / "critic")
    again = load_hf_model(str(tmp_path / "critic"), "value", torch.float32, seed=123)
    assert torch.equal(again.score.weight, model.score.weight)
    with pytest.raises(ValueError, match=r"must output logits \[b, L, 1\]"):
        response_values(AutoModelForCausalLM.from_pretrained(tiny_model_dir), batch)
    with pytest.raises(ValueError, match="model kind must be one of"):
        load_hf_model(tiny_model_dir, "reward", torch.float32, seed=0)


def test_backend_model_kind_errors(tiny_model_dir):
    from workers.backends.fsdp import FSDPBackend
    with pytest.raises(ValueError, match=r"model kind must be one of \['causal_lm', 'value'\], got 'reward'"):
        FSDPBackend().setup(tiny_model_dir, True, kind="reward")  # fails before joining any group
    with pytest.raises(RuntimeError, match=r"setup\(\) must run"):
        FSDPBackend().forward_values(make_batch(), 4)
    policy = FSDPBackend()
    policy.model = torch.nn.Identity()  # stands in for a set-up causal LM: the kind check comes first
    with pytest.raises(RuntimeError, match="forward_values needs a model of kind 'value'; this backend holds "
                                           "a 'causal_lm' model"):
        policy.forward_values(make_batch(), 4)


# ------------------------------------------------------------------ on 2 FSDP ranks
@pytest.fixture(scope="module")
def group(ray_cluster, tiny_model_dir):
    """One Ray actor per rank hosting a reference policy and the critic (colocated roles: two FSDP
    models on one process group, as the trainer places them)."""
    from orchestrator.resources import ResourcePool
    from orchestrator.worker_group import WorkerGroup
    from workers.actor import ActorWorker
    from workers.critic import CriticWorker
    pool = ResourcePool(2, cpus_per_bundle=1, name="critic-test")
    roles = {"ref": (ActorWorker, dict(model_path=tiny_model_dir, actor_cfg=ACTOR_CFG, trainable=False, seed=SEED)),
             "critic": (CriticWorker, dict(model_path=tiny_model_dir, critic_cfg=CRITIC_CFG, seed=SEED))}
    g = WorkerGroup(pool, roles, name="ppo", call_timeout_s=300)
    g.role("ref").setup()
    g.role("critic").setup()
    yield g
    g.shutdown()
    pool.shutdown()


def masked_mse(values, returns, mask) -> float:
    m = mask.float()
    return float(((values - returns) ** 2 * m).sum() / m.sum())


@pytest.mark.timeout(300)
def test_ppo_critic_step_matches_single_process(group, tiny_model_dir, tmp_path):
    ref_role, critic = group.role("ref"), group.role("critic")
    batch = make_batch(2)
    mask = batch["response_mask"]
    model = plain_value_model(tiny_model_dir)
    values = critic.compute_values(batch)["values"]
    with torch.no_grad():
        torch.testing.assert_close(values, padded_values(model, batch), atol=1e-5, rtol=1e-6)

    # Rewards: outcome score on the last token minus β·KL(old ‖ ref) per token; GAE on the driver.
    g = torch.Generator().manual_seed(3)
    ref_lp = ref_role.compute_logprobs(batch)["logprobs"]
    old_lp = (ref_lp + 0.3 * torch.randn(ref_lp.shape, generator=g)) * mask  # a policy that moved
    scores = torch.randint(0, 2, (B,), generator=g).float()
    token_rewards, kl = token_rewards_with_kl(scores, mask, old_lp, ref_lp, KL_COEF)
    assert kl.abs().sum() > 0
    _, returns = compute_gae(token_rewards, values, mask, GAMMA, LAM)
    batch["values"], batch["returns"] = values, returns
    metrics = critic.update(batch).meta
    r0, r1 = metrics["metrics/rank0"], metrics["metrics/rank1"]

    # Reference: one process, the whole batch; the same 2 epochs x 2 mini-batches (rank r's i-th
    # local mini-batch of 2 rows, from both ranks' shards of 4) of AdamW steps.
    opt = torch.optim.AdamW(model.parameters(), lr=CRITIC_CFG["lr"], betas=tuple(CRITIC_CFG["betas"]),
                            weight_decay=0.0)
    norms, clipfracs = [], []
    for _ in range(CRITIC_CFG["ppo_epochs"]):
        for rows in ([0, 1, 4, 5], [2, 3, 6, 7]):
            mb = batch.select(rows)
            opt.zero_grad()
            loss, m = value_loss(padded_values(model, mb), mb["values"], mb["returns"], mb["response_mask"],
                                 CRITIC_CFG["cliprange_value"])
            loss.backward()
            norms.append(float(torch.nn.utils.clip_grad_norm_(model.parameters(), CRITIC_CFG["grad_clip"])))
            clipfracs.append(m["vf_clipfrac"].item())
            opt.step()
    assert r0["grad_norm"] == pytest.approx(sum(norms) / len(norms), rel=1e-5) == r1["grad_norm"]
    assert max(norms) > CRITIC_CFG["grad_clip"]  # clipping exercised
    assert 0 < sum(clipfracs) and min(clipfracs) < 1  # value clipping exercised, not everywhere
    # Per-rank token-weighted contributions sum to the global metric.
    assert r0["vf_clipfrac"] + r1["vf_clipfrac"] == pytest.approx(sum(clipfracs) / len(clipfracs), abs=1e-6)

    critic.save_hf(str(tmp_path / "hf"))
    from transformers import AutoModelForTokenClassification
    after = AutoModelForTokenClassification.from_pretrained(tmp_path / "hf", dtype=torch.float32)
    assert after.config.architectures == ["LlamaForTokenClassification"]
    before = plain_value_model(tiny_model_dir)
    ref_sd, before_sd = model.state_dict(), before.state_dict()
    assert set(after.state_dict()) == set(ref_sd)
    for name, value in after.state_dict().items():
        torch.testing.assert_close(value, ref_sd[name], atol=1e-5, rtol=0, msg=lambda m: f"{name}: {m}")
    moved = max((after.state_dict()[n] - before_sd[n]).abs().max().item() for n in before_sd)
    assert moved > 1e-3
    with torch.no_grad():
        torch.testing.assert_close(critic.compute_values(batch)["values"], padded_values(model, batch),
                                   atol=1e-5, rtol=1e-6)


@pytest.mark.timeout(300)
def test_value_loss_decreases_and_checkpoint_roundtrip(group, tmp_path):
    critic = group.role("critic")
    batch = make_batch(4)
    mask = batch["response_mask"]
    values = critic.compute_values(batch)["values"]
    scores = torch.tensor([1.0, 0.0, 1.0, 1.0, 0.0, 0.0, 1.0, 0.0])
    _, returns = compute_gae(token_rewards_with_kl(scores, mask, torch.zeros_like(values), torch.zeros_like(values),
                                                   KL_COEF)[0], values, mask, GAMMA, LAM)
    batch["returns"] = returns
    critic.save(str(tmp_path / "ckpt"))
    saved_values = values
    errors = [masked_mse(values, returns, mask)]
    for _ in range(3):  # PPO iterations on a fixed batch: V_old refreshed each time, as a trainer does
        batch["values"] = values
        critic.update(batch)
        values = critic.compute_values(batch)["values"]
        errors.append(masked_mse(values, returns, mask))
    assert all(a > b for a, b in zip(errors, errors[1:])), errors
    assert errors[-1] < 0.9 * errors[0], errors
    critic.load(str(tmp_path / "ckpt"))
    assert torch.equal(critic.compute_values(batch)["values"], saved_values)
    # ... and the optimizer state came back too: the same update again gives the same values.
    batch["values"] = saved_values
    critic.update(batch)
    first_again = critic.compute_values(batch)["values"]
    critic.load(str(tmp_path / "ckpt"))
    critic.update(batch)
    assert torch.equal(critic.compute_values(batch)["values"], first_again)


def test_critic_bad_config_and_batch(group, tiny_model_dir):
    from orchestrator.worker_group import WorkerError
    from workers.critic import CriticWorker
    with pytest.raises(ValueError, match=r"critic config is missing \['cliprange_value'\]"):
        CriticWorker(tiny_model_dir, {k: v for k, v in CRITIC_CFG.items() if k != "cliprange_value"})
    batch = make_batch(5)
    with pytest.raises(WorkerError, match="missing the tensor field 'returns'"):
        group.role("critic").update(batch.union(Batch({"values": torch.zeros(B, R)})))
