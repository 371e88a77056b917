"""Reward-model training (`hyflow train-rm`): the Bradley–Terry loss on hand numbers, preference
files refused with the file and row named, the pair generators, and a real run (FSDP2 on 2 gloo
ranks in Ray actors, tiny model, format pairs) that learns the held-out preference and exports an
HF folder whose scores equal the workers' (single-process AutoModelForSequenceClassification)."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from algorithms.reward_model import bradley_terry_loss
from envs.preferences import format_pairs, pair_answers, write_jsonl
from orchestrator.config import ConfigError, load_config
from orchestrator.rm_train import PreferenceDataError, encode_pair, load_pairs, prepare, split_by_prompt
from workers.reward_model import pad_right, real_tokens, score_layout

REPO = Path(__file__).resolve().parents[1]


def _nll(x: float) -> float:  # -log sigmoid(x), by hand
    return math.log(1 + math.exp(-x))


# ------------------------------------------------------------------ the loss
def test_bradley_terry_loss_hand_values():
    chosen = torch.tensor([2.0, 0.5, -1.0], requires_grad=True)
    rejected = torch.tensor([1.0, 1.5, -1.0], requires_grad=True)
    # diffs 1, -1, 0; margin 0.5 -> -log σ(0.5), -log σ(-1.5), -log σ(-0.5)
    #   = 0.474077, 1.701413, 0.974077 -> mean 1.049856
    # centering 0.1 · mean((3, 2, -2)²) = 0.1 · 17/3 = 0.566667
    loss, m = bradley_terry_loss(chosen, rejected, margin=0.5, center_coef=0.1)
    assert loss.item() == pytest.approx(1.049856 + 0.566667, abs=1e-6)
    assert m["bt_loss"].item() == pytest.approx(1.049856, abs=1e-6)
    assert m["accuracy"].item() == pytest.approx(1 / 3)  # the tie (diff 0) counts as wrong
    assert m["margin"].item() == pytest.approx(0.0) and m["chosen"].item() == pytest.approx(0.5)
    loss.backward()
    # d/dr_c0 = -σ(-0.5)/3 + 2·0.1·3/3 ; d/dr_r0 = +σ(-0.5)/3 + 0.2
    sig = 1 / (1 + math.exp(0.5))
    assert chosen.grad[0].item() == pytest.approx(-sig / 3 + 0.2, abs=1e-6)
    assert rejected.grad[0].item() == pytest.approx(sig / 3 + 0.2, abs=1e-6)

    plain, _ = bradley_terry_loss(torch.tensor([[2.0], [0.5]]), torch.tensor([[1.0], [1.5]]))
    assert plain.item() == pytest.approx((_nll(1.0) + _nll(-1.0)) / 2, abs=1e-6)  # [N, 1] works too
    per_pair, _ = bradley_terry_loss(torch.tensor([2.0, 0.5]), torch.tensor([1.0, 1.5]), margin=torch.tensor([1.0, -1.0]))
    assert per_pair.item() == pytest.approx((_nll(0.0) + _nll(0.0)) / 2, abs=1e-6)
    # Bradley–Terry alone is blind to a shift of all rewards; centering is not.
    shifted, _ = bradley_terry_loss(torch.tensor([12.0, 10.5]), torch.tensor([11.0, 11.5]))
    assert shifted.item() == pytest.approx(plain.item(), abs=1e-6)


def test_bradley_terry_loss_bad_input():
    x = torch.zeros(3)
    with pytest.raises(ValueError, match="chosen has 3 rewards, rejected 2"):
        bradley_terry_loss(x, torch.zeros(2))
    with pytest.raises(ValueError, match="center_coef must be >= 0, got -1"):
        bradley_terry_loss(x, x, center_coef=-1)
    with pytest.raises(ValueError, match=r"margin has shape \(2,\); give a number or one value per pair \(3\)"):
        bradley_terry_loss(x, x, margin=torch.zeros(2))
    with pytest.raises(ValueError, match=r"chosen rewards must be \[N\] or \[N, 1\], got shape \(3, 2\)"):
        bradley_terry_loss(torch.zeros(3, 2), x)
    with pytest.raises(ValueError, match="at least one pair"):
        bradley_terry_loss(torch.zeros(0), torch.zeros(0))


# ------------------------------------------------------------------ preference files
GOOD = {"prompt": "What is 2 + 2?", "chosen": "#### 4", "rejected": "five"}
CHAT = {"prompt": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2 + 2?"}],
        "chosen": [{"role": "assistant", "content": "#### 4"}], "rejected": [{"role": "assistant", "content": "5"}]}


@pytest.mark.parametrize("bad, message", [
    ({"prompt": "q", "chosen": "a"}, r"row 2: 'rejected' is missing \(has \['chosen', 'prompt'\]\)"),
    ({"prompt": "q", "chosen": 3, "rejected": "b"}, r"row 2: 'chosen' must be a string or assistant messages, got int 3"),
    ({"prompt": "q", "chosen": "a", "rejected": "  \n"}, r"row 2: 'rejected' is empty"),
    ({"prompt": "", "chosen": "a", "rejected": "b"}, r"row 2: 'prompt' is empty"),
    ({"prompt": [{"role": "user"}], "chosen": "a", "rejected": "b"}, r"row 2: 'prompt' message 0 needs string 'role' and 'content'"),
    ({"prompt": "q", "chosen": [{"role": "user", "content": "a"}], "rejected": "b"},
     r"row 2: 'chosen' as messages must be assistant messages"),
    (["q", "a", "b"], r"row 2: expected an object with 'prompt', 'chosen', 'rejected', got list"),
])
def test_bad_preference_rows_are_named(tmp_path, bad, message):
    path = tmp_path / "prefs.jsonl"
    write_jsonl([GOOD, CHAT, bad, GOOD], path)
    with pytest.raises(PreferenceDataError, match=rf"^rm\.train_path: {path}: {message}"):
        load_pairs(str(path), "rm.train_path")


def test_preference_files_load_through_datasets(tmp_path):
    import datasets
    rows = load_pairs(str(write_jsonl([GOOD, CHAT], tmp_path / "p.jsonl")), "rm.train_path")
    assert rows[0] == {"prompt": [{"role": "user", "content": "What is 2 + 2?"}], "chosen": "#### 4", "rejected": "five"}
    assert rows[1]["prompt"] == CHAT["prompt"] and rows[1]["chosen"] == "#### 4"
    # parquet and save_to_disk folders go through `datasets`; a bad row there is named the same way
    datasets.Dataset.from_list([GOOD, GOOD]).to_parquet(str(tmp_path / "p.parquet"))
    assert load_pairs(str(tmp_path / "p.parquet"), "rm.val_path")[1]["rejected"] == "five"
    datasets.DatasetDict({"train": datasets.Dataset.from_list([GOOD, {**GOOD, "chosen": ""}])}).save_to_disk(
        str(tmp_path / "disk"))
    with pytest.raises(PreferenceDataError, match=rf"rm\.train_path: {tmp_path / 'disk'}: row 1: 'chosen' is empty"):
        load_pairs(str(tmp_path / "disk"), "rm.train_path")
    (tmp_path / "broken.jsonl").write_text(json.dumps(GOOD) + "\n{not json\n")
    with pytest.raises(PreferenceDataError, match=rf"rm\.train_path: {tmp_path / 'broken.jsonl'}:2: invalid JSON"):
        load_pairs(str(tmp_path / "broken.jsonl"), "rm.train_path")
    with pytest.raises(PreferenceDataError, match="no such file or folder"):
        load_pairs(str(tmp_path / "absent.jsonl"), "rm.train_path")


def test_cli_refuses_a_bad_file_before_ray(tmp_path):
    """`hyflow train-rm` with a bad row: exit 2, the file and row on stderr, no Ray, no output folder."""
    bad = write_jsonl([GOOD, GOOD, GOOD, {"prompt": "q", "chosen": "a", "rejected": None}], tmp_path / "bad.jsonl")
    out = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-m", "orchestrator.rm_train", str(REPO / "configs" / "rm_math.yaml"),
                           f"rm.train_path={bad}", f"rm.output_dir={out}"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert f"hyflow train-rm: rm.train_path: {bad}: row 3: 'rejected' is null" in proc.stderr
    assert "Ray" not in proc.stderr + proc.stdout and not out.exists()


def test_config_checks_before_ray(tmp_path, tiny_model_dir):
    pairs = write_jsonl(format_pairs(8, seed=1), tmp_path / "p.jsonl")
    base = [f"model.path={tiny_model_dir}", f"rm.output_dir={tmp_path / 'out'}"]
    with pytest.raises(ConfigError, match=r"rm\.train_path: required"):
        prepare(load_config(None, base))
    with pytest.raises(ConfigError, match=r"rm\.batch_size: 5 pairs per step must be divisible by actor\.world_size \(2\)"):
        prepare(load_config(None, base + [f"rm.train_path={pairs}", "rm.batch_size=5"]))
    with pytest.raises(ConfigError, match=r"actor\.lora_rank: 8; reward models train all weights"):
        prepare(load_config(None, base + [f"rm.train_path={pairs}", "actor.lora_rank=8"]))
    with pytest.raises(ConfigError, match=r"rm\.batch_size: 32 is more than the 7 training pairs"):
        prepare(load_config(None, base + [f"rm.train_path={pairs}", "rm.val_fraction=0.1"]))
    with pytest.raises(ConfigError, match=r"rm\.val_fraction: must be in \[0, 1\), got 1\.0"):
        load_config(None, ["rm.val_fraction=1"])
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "metrics.jsonl").write_text("{}\n")
    with pytest.raises(ConfigError, match=r"rm\.output_dir: .* is not empty \(metrics\.jsonl\); replace it with "
                                          r"rm\.overwrite=true"):
        prepare(load_config(None, base + [f"rm.train_path={pairs}"]))
    # rm.max_length drops long pairs; none left is an error naming the key
    with pytest.raises(PreferenceDataError, match=r"rm\.train_path: every pair is longer than rm\.max_length=20"):
        prepare(load_config(None, base + [f"rm.train_path={pairs}", "rm.max_length=20", "rm.overwrite=true"]))


def test_split_by_prompt_keeps_a_prompt_on_one_side():
    rows = [{"prompt": [{"role": "user", "content": f"q{i % 10}"}], "chosen": "a", "rejected": "b"} for i in range(40)]
    train, val = split_by_prompt([dict(r) for r in rows], 0.2, seed=3)
    held = {r["prompt"][0]["content"] for r in val}
    assert len(held) == 2 and len(val) == 8 and len(train) == 32
    assert not held & {r["prompt"][0]["content"] for r in train}
    again = split_by_prompt([dict(r) for r in rows], 0.2, seed=3)[1]
    assert [r["index"] for r in again] == [r["index"] for r in val]  # deterministic for a seed


# ------------------------------------------------------------------ generators and layout
def test_format_pairs_and_pairing():
    rows = format_pairs(60, seed=0)
    assert rows == format_pairs(60, seed=0) and len({r["prompt"][-1]["content"] for r in rows}) == 60
    for r in rows:
        answer = r["ground_truth"]
        assert r["chosen"].endswith(f"#### {answer}") and len(r["chosen"]) < 60
        assert ("####" in r["rejected"]) == (r["rejected_kind"] == "ramble_form")
        assert answer in r["rejected"] and "Write only the final answer" in r["prompt"][-1]["content"]
        if r["rejected_kind"] != "plain":
            assert len(r["rejected"]) > 150
    assert {r["rejected_kind"] for r in rows} == {"plain", "ramble", "ramble_form"}
    import random
    assert pair_answers(["#### 4", "5", "#### 4!"], [1.0, 0.0, 1.0], random.Random(0))[1] == "5"
    assert pair_answers(["#### 4", "4"], [1.0, 1.0], random.Random(0)) is None
    assert pair_answers(["5", ""], [0.0, 0.0], random.Random(0)) is None


def test_scored_tokens_follow_hf_rule():
    """The scored position is HF's: the last real token that is not the pad id (here EOS = pad = 2),
    whatever the padding (a rollout: left-padded prompt, right-padded response)."""
    pad = 2
    ids = torch.tensor([[0, 0, 5, 6, 7, 8, 2, 0], [9, 2, 5, 6, 7, 0, 0, 0]])
    mask = torch.tensor([[0, 0, 1, 1, 1, 1, 1, 0], [1, 1, 1, 1, 1, 0, 0, 0]])
    assert real_tokens(ids, mask, pad) == [[5, 6, 7, 8], [9, 2, 5, 6, 7]]  # a pad id inside stays
    assert real_tokens(ids, mask, None) == [[5, 6, 7, 8, 2], [9, 2, 5, 6, 7]]
    with pytest.raises(ValueError, match="row 0 has no token to score"):
        real_tokens(torch.tensor([[2, 2]]), torch.tensor([[1, 1]]), pad)
    lay = score_layout([[5, 6], [7, 8, 9]], pad)
    assert lay["input_ids"].tolist() == [[2, 5, 6, 2], [7, 8, 9, 2]]
    assert lay["attention_mask"].tolist() == [[0, 1, 1, 1], [1, 1, 1, 1]]
    assert lay["position_ids"].tolist() == [[0, 0, 1, 2], [0, 1, 2, 3]]
    assert lay["responses"].tolist() == [[2], [2]] and lay["response_mask"].tolist() == [[1], [1]]
    back = pad_right([[5, 6], [7, 8, 9]], pad)
    assert real_tokens(back["input_ids"], back["attention_mask"], pad) == [[5, 6], [7, 8, 9]]


# ------------------------------------------------------------------ a real run (Ray, FSDP2 on 2 gloo ranks)
ACC_MIN, MARGIN_MIN = 0.9, 0.5  # held-out thresholds; the untrained head (step 0) misses both


@pytest.fixture(scope="module")
def trained(ray_cluster, tiny_model_dir, tmp_path_factory):
    """The tiny model trained on 320 format pairs (80 prompts held out), 3 epochs; with a margin and
    centering, so the worker's loss path and the frozen head bias (export) are exercised."""
    from orchestrator.rm_train import train_rm
    d = tmp_path_factory.mktemp("rm")
    write_jsonl(format_pairs(400, seed=0), d / "format.jsonl")
    cfg = load_config(str(REPO / "configs" / "rm_math.yaml"), [
        f"model.path={tiny_model_dir}", f"rm.train_path={d / 'format.jsonl'}", f"rm.output_dir={d / 'out'}",
        "rm.val_fraction=0.2", "rm.epochs=3", "rm.batch_size=32", "rm.margin=0.1", "rm.center_coef=0.01",
        "actor.lr=2e-3", "actor.micro_batch_size=8", "actor.world_size=2"])
    summary = train_rm(cfg)
    return d / "out", summary, cfg


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.timeout(600)
def test_rm_learns_held_out_preference(trained):
    out, summary, cfg = trained
    rows = _rows(out / "metrics.jsonl")
    assert [r["step"] for r in rows] == list(range(31)) and summary["steps"] == 30  # 320 // 32 = 10 steps x 3
    assert summary["pairs"] == {"train": 320, "val": 80}
    first, last = rows[0], rows[-1]
    val_rows = [r for r in rows if "val/accuracy" in r]
    assert [r["step"] for r in val_rows] == [0, 10, 20, 30]  # before step 1 and at each epoch's end
    # The untrained head misses the thresholds, the trained one clears them (held-out pairs).
    assert first["val/accuracy"] < ACC_MIN and first["val/margin"] < MARGIN_MIN, first
    assert last["val/accuracy"] >= ACC_MIN and last["val/margin"] >= MARGIN_MIN, last
    assert last["val/bt_loss"] < first["val/bt_loss"] - 0.1
    train_loss = [r["train/loss"] for r in rows[1:]]
    assert sum(train_loss[-10:]) / 10 < sum(train_loss[:10]) / 10 - 0.15
    assert all(r["train/step_skipped"] == 0 and r["train/lr"] == 2e-3 for r in rows[1:])
    assert json.loads((out / "summary.json").read_text())["final"]["val/accuracy"] == last["val/accuracy"]
    assert load_config(str(out / "config.yaml")) == cfg


@pytest.mark.timeout(600)
def test_exported_folder_scores_like_the_workers(trained):
    """The saved folder (single process, AutoModelForSequenceClassification) gives the workers'
    final held-out scores (val_scores.jsonl, FSDP2 on 2 ranks) to 1e-5, one by one and batched."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    out, _, _ = trained
    hf = out / "hf"
    model = AutoModelForSequenceClassification.from_pretrained(hf, dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(hf)
    assert json.loads((hf / "config.json").read_text())["architectures"] == ["LlamaForSequenceClassification"]
    assert model.config.num_labels == 1 and model.config.pad_token_id == tok.pad_token_id == 2
    assert model.score.bias is None  # the frozen (zero) bias is not in the folder
    rows = _rows(out / "val_scores.jsonl")
    assert len(rows) == 80
    seqs, want = [], []
    for r in rows:
        for side in ("chosen", "rejected"):
            seqs.append(encode_pair(tok, r["prompt"], r[side]))
            want.append(r[f"{side}_score"])
    want = torch.tensor(want)
    with torch.no_grad():
        one = torch.tensor([model(torch.tensor([s])).logits[0, 0].item() for s in seqs])
        batch = pad_right(seqs, tok.pad_token_id)  # right-padded with the pad id: HF picks the same token
        batched = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, 0]
    torch.testing.assert_close(one, want, atol=1e-5, rtol=0)
    torch.testing.assert_close(batched, want, atol=1e-5, rtol=0)
    assert (want[0::2] - want[1::2]).min() < (want[0::2] - want[1::2]).max()  # real, varied scores


@pytest.mark.timeout(600)
def test_score_on_rollout_batches_from_the_saved_folder(trained, ray_cluster):
    """`score` (the reward group's API for PPO/GRPO runs) on a rollout-layout batch — left-padded
    prompts, right-padded responses ending in EOS, 5 rows over 2 ranks — from a group that loads the
    exported folder, equals the single-process HF scores."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from orchestrator.data import encode_prompt
    from orchestrator.resources import ResourcePool
    from orchestrator.worker_group import WorkerGroup
    from workers.reward_model import RewardModelWorker
    out, _, _ = trained
    hf = str(out / "hf")
    tok = AutoTokenizer.from_pretrained(hf)
    rows = format_pairs(5, seed=11)
    prompts = [encode_prompt(tok, r["prompt"], True) for r in rows]
    responses = [tok(r["rejected" if i % 2 else "chosen"], add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
                 for i, r in enumerate(rows)]
    P, R = max(map(len, prompts)), max(map(len, responses))
    ids = torch.zeros(5, P + R, dtype=torch.long)  # padding id 0, as a rollout may have it
    mask = torch.zeros(5, P + R, dtype=torch.long)
    for i, (p, r) in enumerate(zip(prompts, responses)):
        ids[i, P - len(p):P], ids[i, P:P + len(r)] = torch.tensor(p), torch.tensor(r)
        mask[i, P - len(p):P + len(r)] = 1
    from orchestrator.batch import Batch
    batch = Batch({"input_ids": ids, "attention_mask": mask, "responses": ids[:, P:], "response_mask": mask[:, P:]})

    pool = ResourcePool(2, cpus_per_bundle=1, name="rm-score-test")
    cfg = dict(micro_batch_size=2, margin=0.0, center_coef=0.0, backend="fsdp", lr=1e-6)
    group = WorkerGroup(pool, RewardModelWorker, dict(model_path=hf, rm_cfg=cfg, pad_token_id=tok.pad_token_id,
                                                      trainable=False), name="rm-score", call_timeout_s=300)
    try:
        assert group.setup()[0]["architecture"] == "LlamaForSequenceClassification"
        scores = group.score(batch)
    finally:
        group.shutdown()
        pool.shutdown()
    model = AutoModelForSequenceClassification.from_pretrained(hf, dtype=torch.float32).eval()
    with torch.no_grad():
        want = torch.tensor([model(torch.tensor([p + r])).logits[0, 0].item() for p, r in zip(prompts, responses)])
    assert scores.shape == (5,)
    torch.testing.assert_close(scores, want, atol=1e-5, rtol=0)


# ------------------------------------------------------------------ the reward group in RL runs
@pytest.mark.timeout(900)
def test_reward_group_in_a_grpo_run_scores_like_hf(ray_cluster, tiny_model_dir, tmp_path):
    """grpo_rm_math.yaml (a separate reward-model pool) on the tiny model: the group's score of each
    generated (prompt, response) equals a single-process AutoModelForSequenceClassification forward
    of its real tokens, and the reward is function_weight x rule + model.weight x model."""
    from transformers import AutoModelForSequenceClassification

    from orchestrator.trainer import Trainer
    from tests import tiny
    from tests.test_recipes import shrink
    rm_dir = tiny.build_reward_model(tmp_path / "rm", tiny_model_dir, seed=3)
    cfg = load_config(str(REPO / "configs/grpo_rm_math.yaml"), [
        f"model.path={tiny_model_dir}", f"reward.model.path={rm_dir}", "reward.function_weight=0.5",
        "reward.model.weight=2.0", f"trainer.output_dir={tmp_path / 'run'}", *shrink("grpo_rm_math.yaml", tmp_path)])
    tr = Trainer(cfg)
    try:
        assert tr.w.reward_model.name == "reward_model" and tr.w.reward_model.world_size == 1
        batch, metrics = tr.task.collect(tr.generate, 0)
    finally:
        tr.shutdown()
    model = AutoModelForSequenceClassification.from_pretrained(rm_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        want = torch.tensor([model(ids[m.bool()][None]).logits[0, 0].item()
                             for ids, m in zip(batch["input_ids"], batch["attention_mask"])])
    assert len(batch) == 4 and want.std() > 0
    torch.testing.assert_close(batch["model_scores"], want, atol=1e-5, rtol=0)
    torch.testing.assert_close(batch["scores"], 0.5 * batch["function_scores"] + 2.0 * want, atol=1e-5, rtol=0)
    assert metrics["reward/model_mean"] == pytest.approx(want.mean().item(), abs=1e-5)
    assert metrics["reward/function_mean"] == pytest.approx(batch["function_scores"].mean().item())


def test_reward_model_keys_are_checked_before_ray(tmp_path, tiny_model_dir):
    from orchestrator.preflight import problems
    from tests import tiny
    with pytest.raises(ConfigError, match=r"^reward\.model\.path: a reward model scores single-turn prompt tasks"):
        load_config(str(REPO / "configs/ppo_alfworld.yaml"), [f"reward.model.path={tmp_path}"])
    with pytest.raises(ConfigError, match=r"^reward\.function_weight: is 0 and there is no reward\.model\.path"):
        load_config(None, ["reward.function_weight=0"])
    cfg = load_config(None, [f"model.path={tiny_model_dir}", f"reward.model.path={tmp_path / 'nope'}"])
    assert [p for p in problems(cfg) if p.startswith("reward.model.path")] == [
        f"reward.model.path: {tmp_path / 'nope'} is not a folder (train one with `hyflow train-rm`; its hf/ folder "
        "is the reward model)"]
    cfg = load_config(None, [f"model.path={tiny_model_dir}", f"reward.model.path={tiny_model_dir}"])
    (bad,) = [p for p in problems(cfg) if p.startswith("reward.model.path")]  # a causal LM: 2 labels by default
    assert bad == f"reward.model.path: {tiny_model_dir} has 2 labels; a reward model has one (a scalar score)"
    rm = tiny.build_reward_model(tmp_path / "rm", tiny_model_dir)
    cfg = load_config(None, [f"model.path={tiny_model_dir}", f"reward.model.path={rm}"])
    assert [p for p in problems(cfg) if p.startswith("reward.model.path")] == []


# ------------------------------------------------------------------ longer checks (-m slow)
@pytest.mark.slow
@pytest.mark.timeout(900)
def test_deepspeed_backend_trains_the_same_reward_model(ray_cluster, tiny_model_dir, tmp_path):
    """The same run on DeepSpeed ZeRO-3 (frozen head bias, export) and on FSDP2: equal held-out scores."""
    from orchestrator.rm_train import train_rm
    write_jsonl(format_pairs(160, seed=0), tmp_path / "format.jsonl")
    scores = {}
    for backend in ("fsdp", "deepspeed"):
        out = tmp_path / backend
        train_rm(load_config(str(REPO / "configs" / "rm_math.yaml"), [
            f"model.path={tiny_model_dir}", f"rm.train_path={tmp_path / 'format.jsonl'}", f"rm.output_dir={out}",
            "rm.val_fraction=0.2", "rm.epochs=1", "rm.batch_size=32", "rm.center_coef=0.01", "actor.lr=2e-3",
            "actor.micro_batch_size=8", f"actor.backend={backend}", "actor.zero_stage=3"]))
        scores[backend] = torch.tensor([[r["chosen_score"], r["rejected_score"]] for r in _rows(out / "val_scores.jsonl")])
    torch.testing.assert_close(scores["deepspeed"], scores["fsdp"], atol=1e-4, rtol=0)
    rows = _rows(tmp_path / "fsdp" / "metrics.jsonl")
    assert rows[-1]["val/margin"] > rows[0]["val/margin"] + 0.05  # it trained


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_math_pairs_from_the_embedded_model():
    """Real vLLM-CPU sampling: each pair is a verified-correct and an incorrect answer to the same
    generated problem, whose prompt is the math task's."""
    from envs.math import build_prompt, compute_score, generate_problems
    from envs.preferences import math_pairs
    rows = math_pairs(2, samples=8, batch=8, seed=0, log=lambda _: None)
    problems = {build_prompt(p)[-1]["content"]: p for p in generate_problems(40, levels=(1,), seed=0)}
    assert len(rows) == 2
    for r in rows:
        p = problems[r["prompt"][-1]["content"]]
        assert r["ground_truth"] == p.answer and r["prompt"] == build_prompt(p)
        assert compute_score(p.data_source, r["chosen"], p.answer) == 1.0
        assert compute_score(p.data_source, r["rejected"], p.answer) == 0.0
        assert 1 <= r["n_correct"] < r["n_samples"] == 8
