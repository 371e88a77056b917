"""orchestrator/preflight.py: every file and import a run needs is checked before Ray starts; all
problems come back in one ConfigError, one line each, each starting with its config key.

Real files in tmp folders, real modules; no Ray.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from orchestrator.config import ConfigError, load_config
from orchestrator.model_prep import EMBEDDED_NAME, resolve_model_path
from orchestrator.preflight import preflight

CONFIGS = sorted(Path(__file__).resolve().parents[1].glob("configs/*.yaml"))


def _lines(cfg_path, overrides) -> list[str]:
    cfg = load_config(cfg_path, overrides)
    with pytest.raises(ConfigError) as err:
        preflight(cfg)
    return str(err.value).splitlines()


def _quick(*overrides) -> list[str]:
    return _lines("configs/quickstart.yaml", list(overrides))


def _model_folder(root: Path, files: dict[str, str]) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (root / name).write_text(text)
    return root


GOOD_MODEL = {"config.json": "{}", "tokenizer.json": "{}", "model.safetensors": ""}


@pytest.mark.parametrize("recipe", CONFIGS, ids=lambda p: p.name)
def test_every_shipped_recipe_passes(recipe, tmp_path, tiny_model_dir):
    if "_rm_" not in recipe.name:
        preflight(load_config(recipe))
        return
    # RLHF recipes need the reward model that `hyflow train-rm` makes first: without it, preflight
    # says so, naming the key; with one, the recipe passes.
    cfg = load_config(recipe)
    if Path(cfg.reward.model.path).exists():  # trained here already (hyflow train-rm configs/rm_math.yaml)
        preflight(cfg)
        return
    with pytest.raises(ConfigError, match=rf"^reward\.model\.path: {cfg.reward.model.path} is not a folder \(train "
                                          r"one with `hyflow train-rm`"):
        preflight(cfg)
    from tests import tiny
    preflight(load_config(recipe, [f"reward.model.path={tiny.build_reward_model(tmp_path / 'rm', tiny_model_dir)}"]))


def test_all_problems_in_one_error_each_line_starting_with_its_key(tmp_path):
    t0 = time.monotonic()
    lines = _quick("data.train_path=/missing/train.jsonl", f"data.val_path={tmp_path}/val.jsonl",
                   f"reward.function={tmp_path}/my_reward.py:score", f"model.path={tmp_path}/no_model")
    assert time.monotonic() - t0 < 10  # seconds, not a Ray start-up
    assert lines == [
        "data.train_path: no such file or folder: /missing/train.jsonl",
        f"data.val_path: no such file or folder: {tmp_path}/val.jsonl",
        f"reward.function: '{tmp_path}/my_reward.py:score': file {tmp_path}/my_reward.py does not exist",
        f"model.path: no such model folder: {tmp_path}/no_model",
    ]


def test_data_files_are_parsed(tmp_path):
    good = tmp_path / "good.jsonl"
    good.write_text(json.dumps({"question": "1+1?", "answer": "2 #### 2"}) + "\n")
    preflight(load_config("configs/quickstart.yaml", [f"data.train_path={good}", f"data.val_path={good}"]))
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"question": "1+1?", "answer": "2 #### 2"}) + "\n{not json\n")
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    assert _quick(f"data.train_path={bad}", f"data.val_path={empty}") == [
        f"data.train_path: {bad}:2: invalid JSON (Expecting property name enclosed in double quotes)",
        f"data.val_path: {empty}: has no rows",
    ]
    shape = tmp_path / "shape.jsonl"
    shape.write_text(json.dumps({"text": "hi"}) + "\n")
    (line,) = _quick(f"data.train_path={shape}")
    assert line.startswith(f"data.train_path: {shape}: row 0: neither a verl row")


def test_files_the_run_does_not_read_are_not_checked(tmp_path):
    # An agent run reads no prompt data and no reward function; a generator replaces train_path.
    preflight(load_config("configs/grpo_webshop.yaml", ["data.train_path=/missing.jsonl",
                                                        "reward.function=/missing.py:f"]))
    preflight(load_config("configs/step_grpo_retrieval.yaml", ["data.train_path=/missing.jsonl"]))


def test_reward_function_problems(tmp_path):
    f = tmp_path / "rewards.py"
    f.write_text("NOT_FN = 3\n"
                 "def two_args(a, b):\n    return 1.0\n"
                 "def positional(a, b, c, d=None):\n    return 1.0\n")
    broken = tmp_path / "broken.py"
    broken.write_text("import no_such_module_here\n")
    cases = {
        f"{f}:missing": f"reward.function: '{f}:missing': '{f}' has no attribute 'missing'",
        f"{f}:NOT_FN": f"reward.function: '{f}:NOT_FN': 'NOT_FN' is not callable (it is a int)",
        "no_such_pkg_xyz:score": "reward.function: 'no_such_pkg_xyz:score': cannot import module 'no_such_pkg_xyz'",
        f"{broken}:score": f"reward.function: '{broken}:score': importing {broken} failed: ModuleNotFoundError",
    }
    for spec, start in cases.items():
        (line,) = _quick(f"reward.function={spec}")
        assert line.startswith(start), line
    for name in ("two_args", "positional"):  # reward functions are called with the verl keywords
        (line,) = _quick(f"reward.function={f}:{name}")
        assert line.startswith(f"reward.function: '{f}:{name}': '{name}' does not accept the keywords "
                               f"['data_source', 'solution_str', 'ground_truth', 'extra_info']"), line
    good = tmp_path / "good.py"
    good.write_text("def score(data_source, solution_str, ground_truth, extra_info=None):\n    return 0.0\n")
    preflight(load_config("configs/quickstart.yaml", [f"reward.function={good}:score"]))


def test_generator_problems():
    assert _quick("data.generator=no_such_pkg_xyz:make") == [
        "data.generator: 'no_such_pkg_xyz:make': cannot import module 'no_such_pkg_xyz': "
        "ModuleNotFoundError: No module named 'no_such_pkg_xyz'"]
    assert _quick("data.generator=envs.math:no_such_fn") == [
        "data.generator: 'envs.math:no_such_fn': module 'envs.math' has no attribute 'no_such_fn'"]
    assert _quick("data.generator=envs.math:GSM8K_SOURCE") == [
        "data.generator: 'envs.math:GSM8K_SOURCE': 'GSM8K_SOURCE' is not callable (it is a str)"]


def test_model_folder_problems(tmp_path):
    empty = _model_folder(tmp_path / "empty", {})
    no_tok = _model_folder(tmp_path / "no_tok", {"config.json": "{}", "model.safetensors": ""})
    no_weights = _model_folder(tmp_path / "no_weights", {"config.json": "{}", "tokenizer.json": "{}"})
    index = json.dumps({"weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}})
    shard = _model_folder(tmp_path / "shard", {"config.json": "{}", "tokenizer.json": "{}",
                                               "model.safetensors.index.json": index,
                                               "model-00001-of-00002.safetensors": ""})
    assert _quick(f"model.path={empty}") == [f"model.path: {empty} has no config.json: not an HF model folder"]
    assert _quick(f"model.path={no_tok}") == [
        f"model.path: {no_tok} has no tokenizer files (one of tokenizer.json, tokenizer.model, vocab.json, "
        f"spiece.model, vocab.txt)"]
    assert _quick(f"model.path={no_weights}") == [
        f"model.path: {no_weights} has no weights (*.safetensors or pytorch_model*.bin)"]
    assert _quick(f"model.path={shard}") == [
        f"model.path: {shard} lacks 1 of the 2 weight files model.safetensors.index.json lists: "
        f"['model-00002-of-00002.safetensors']"]
    a_file = tmp_path / "weights.bin"
    a_file.write_text("")
    assert _quick(f"model.path={a_file}") == [f"model.path: {a_file} is a file, not a model folder"]
    good = _model_folder(tmp_path / "good", GOOD_MODEL)
    preflight(load_config("configs/quickstart.yaml", [f"model.path={good}"]))
    short = _model_folder(tmp_path / "short", {**GOOD_MODEL, "config.json": '{"max_position_embeddings": 512}'})
    assert _quick(f"model.path={short}", "rollout.max_model_len=1024") == [
        f"rollout.max_model_len: 1024 exceeds the model's 512 positions (max_position_embeddings in "
        f"{short / 'config.json'}); lower it, with data.max_prompt_tokens + rollout.max_new_tokens <= it"]
    preflight(load_config("configs/quickstart.yaml", [f"model.path={short}", "rollout.max_model_len=512",
                                                      "data.max_prompt_tokens=384"]))


def test_a_model_name_that_is_no_folder_is_an_error_while_the_hub_is_off(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert _quick("model.path=someorg/no-such-model-xyz") == [
        f"model.path: 'someorg/no-such-model-xyz' is neither the embedded model ({EMBEDDED_NAME!r}) nor an "
        f"existing folder, and hub downloads are off (HF_HUB_OFFLINE=1)"]
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")  # a hub id may download then: not preflight's to refuse
    preflight(load_config("configs/quickstart.yaml", ["model.path=someorg/no-such-model-xyz"]))


def test_resolve_model_path(tmp_path, monkeypatch):
    # A path that is no folder fails here, naming it (transformers would say "Repo id must be in the form").
    with pytest.raises(FileNotFoundError, match=f"^no such model folder: {tmp_path}/nope$"):
        resolve_model_path(f"{tmp_path}/nope")
    with pytest.raises(FileNotFoundError, match="^no such model folder: models/a/b$"):
        resolve_model_path("models/a/b")
    assert resolve_model_path("someorg/some-model") == "someorg/some-model"  # a hub id, as given
    monkeypatch.setenv("HOME", str(tmp_path))
    good = _model_folder(tmp_path / "m", GOOD_MODEL)
    assert resolve_model_path("~/m") == str(good)  # ~ expanded: transformers does not
    preflight(load_config("configs/quickstart.yaml", ["model.path=~/m"]))


def test_env_problems():
    assert _lines("configs/grpo_webshop.yaml", ["env.name=no_such_env"]) == [
        "env.name: unknown env 'no_such_env'; registered: ['alfworld', 'kbqa', 'webshop']"]
    assert _lines("configs/grpo_webshop.yaml", ["env.name=envs.webshop:NoSuchEnv"]) == [
        "env.name: 'envs.webshop:NoSuchEnv': module 'envs.webshop' has no attribute 'NoSuchEnv'"]
    assert _lines("configs/grpo_webshop.yaml", ["env.name=no_such_pkg_xyz:Env"]) == [
        "env.name: 'no_such_pkg_xyz:Env': cannot import module 'no_such_pkg_xyz': "
        "ModuleNotFoundError: No module named 'no_such_pkg_xyz'"]
    assert _lines("configs/grpo_webshop.yaml", ["env.kwargs={num_prods: 30}"]) == [
        "env.kwargs: do not fit env 'webshop': got an unexpected keyword argument 'num_prods'"]


def _alfworld_game(data_dir: Path, split: str = "train") -> None:
    """One game folder in ALFWorld's layout, as envs.alfworld.find_games reads it."""
    trial = data_dir / split / "pick_and_place_simple-Mug-None-Cabinet-1" / "trial_1"
    trial.mkdir(parents=True)
    (trial / "traj_data.json").write_text(json.dumps({"task_type": "pick_and_place_simple"}))
    (trial / "game.tw-pddl").write_text(json.dumps({"solvable": True}))


def test_alfworld_games_or_their_generation(tmp_path):
    # The recipe generates games on the first run: a missing data_dir is fine then.
    preflight(load_config("configs/grpo_alfworld.yaml", [f"env.kwargs.data_dir={tmp_path}/fresh"]))
    # Without generate_per_type the games must be there.
    no_gen = ["env.kwargs.generate_per_type=0", f"env.kwargs.data_dir={tmp_path}/none"]
    (line,) = _lines("configs/grpo_alfworld.yaml", no_gen)
    assert line.startswith(f"env.kwargs.data_dir: ALFWorld split folder '{tmp_path}/none/train' (from data_dir, "
                           f"split='train') does not exist; generate games with"), line
    (tmp_path / "empty" / "train").mkdir(parents=True)
    assert _lines("configs/grpo_alfworld.yaml", ["env.kwargs.generate_per_type=0",
                                                 f"env.kwargs.data_dir={tmp_path}/empty"]) == [
        f"env.kwargs.data_dir: no playable ALFWorld games under '{tmp_path}/empty/train'; set "
        f"env.kwargs.generate_per_type=N to generate N per task type there on the first run"]
    _alfworld_game(tmp_path / "games")
    preflight(load_config("configs/grpo_alfworld.yaml", ["env.kwargs.generate_per_type=0",
                                                         f"env.kwargs.data_dir={tmp_path}/games"]))
