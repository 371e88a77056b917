"""Config system: YAML recipes + dotted overrides validated into dataclasses, with errors that name
the key at fault, a save/load round trip, and the `describe()` listing behind `hyflow train --help`."""
from __future__ import annotations

import dataclasses
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Optional

import pytest
import yaml

from orchestrator.config import (
    Config, ConfigError, apply_overrides, describe, from_dict, load_config, save_yaml, to_dict)
from orchestrator.config_schema import _f


def write(tmp_path: Path, text: str, name: str = "recipe.yaml") -> str:
    p = tmp_path / name
    p.write_text(text)
    return str(p)


# ----------------------------------------------------------------------------- happy paths
def test_defaults_match_quickstart():
    cfg = load_config(None)
    assert cfg == Config()
    assert cfg.model.path == "smollm2-135m-instruct" and cfg.model.dtype == "float32"
    assert cfg.data.train_path is None and cfg.data.difficulty == [1, 2] and cfg.data.batch_size == 8
    assert cfg.rollout.engine == "vllm" and cfg.rollout.n == 4 and cfg.rollout.top_k == -1
    assert cfg.actor.world_size == 2 and cfg.actor.lr == 1e-6 and cfg.actor.betas == [0.9, 0.999]
    assert cfg.actor.dual_clip == 3.0 and cfg.actor.loss_agg == "token-mean" and cfg.actor.kl_estimator == "k3"
    assert cfg.algorithm.advantage == "grpo" and cfg.reward.function == "envs.math:compute_score"
    assert cfg.weight_sync.tolerance == 1e-3 and cfg.trainer.total_steps == 10
    assert cfg.ray.address == "local" and cfg.ray.num_cpus is None and cfg.ray.call_timeout_s == 1800.0
    # List defaults are per instance, not shared between configs.
    cfg.data.difficulty.append(3)
    assert Config().data.difficulty == [1, 2]


def test_every_field_has_one_line_of_help():
    def walk(cls):
        for f in dataclasses.fields(cls):
            help_ = f.metadata.get("help", "")
            assert help_.strip() and "\n" not in help_, f"{cls.__name__}.{f.name} lacks one line of help"
            tp = typing.get_type_hints(cls)[f.name]
            if dataclasses.is_dataclass(tp):
                walk(tp)
    walk(Config)


def test_yaml_then_overrides(tmp_path):
    path = write(tmp_path, """
model:
  path: /models/a
trainer:
  total_steps: 50
  experiment_name: base
actor:
  lr: 1e-5           # YAML 1.1 reads this as a string; float fields accept it
  clip_ratio_high: 1  # an int is fine for a float field
data:
  difficulty: [3]
""")
    cfg = load_config(path, ["trainer.total_steps=3", "actor.betas=[0.9,0.99]", "model.path=/x",
                             "data.system_prompt=Answer: #### N", "trainer.experiment_name=2024",
                             "actor.dual_clip=null", "rollout.engine=hf"])
    assert cfg.trainer.total_steps == 3                      # override beats the file
    assert cfg.trainer.experiment_name == "2024"             # str field keeps the text, not int 2024
    assert cfg.model.path == "/x"
    assert cfg.actor.betas == [0.9, 0.99]
    assert cfg.actor.lr == 1e-5 and isinstance(cfg.actor.lr, float)
    assert cfg.actor.clip_ratio_high == 1.0 and isinstance(cfg.actor.clip_ratio_high, float)
    assert cfg.actor.dual_clip is None
    assert cfg.data.difficulty == [3]
    assert cfg.data.system_prompt == "Answer: #### N"       # not parsed as a YAML mapping/comment
    assert cfg.rollout.engine == "hf"
    assert cfg.data.batch_size == 8                          # untouched keys keep defaults
    # Later overrides win; the input mapping is not modified.
    raw = {"trainer": {"total_steps": 1}}
    assert apply_overrides(raw, ["trainer.total_steps=2", "trainer.total_steps=5"]) == {"trainer": {"total_steps": 5}}
    assert raw == {"trainer": {"total_steps": 1}}


def test_empty_file_and_lone_string_override(tmp_path):
    assert load_config(write(tmp_path, "# nothing\n")) == Config()
    assert load_config(None, "trainer.total_steps=7").trainer.total_steps == 7


def test_save_yaml_round_trip(tmp_path):
    cfg = load_config(None, ["actor.betas=[0.8,0.95]", "data.train_path=data/gsm8k.jsonl", "actor.lr=3e-7",
                             "data.system_prompt='yes'", "trainer.experiment_name=true", "ray.num_cpus=2",
                             "actor.mini_batch_size=16", "weight_sync.tolerance=1e-4"])
    assert cfg.data.system_prompt == "yes" and cfg.trainer.experiment_name == "true"
    out = tmp_path / "sub" / "resolved.yaml"
    save_yaml(cfg, str(out))
    again = load_config(str(out))
    assert again == cfg
    assert yaml.safe_load(out.read_text()) == to_dict(cfg)
    d = to_dict(cfg)
    assert list(d) == [f.name for f in dataclasses.fields(Config)]
    assert d["actor"]["betas"] == [0.8, 0.95] and d["trainer"]["experiment_name"] == "true"


# ------------------------------------------------------------------------------------ errors
def test_engine_limits_are_config_errors():
    """vLLM rejects temperatures above 2 mid-run; the config does it up front, naming the key."""
    with pytest.raises(ConfigError, match=re.escape("rollout.temperature: vLLM samples at temperatures in [0, 2], got 5.0")):
        load_config(None, ["rollout.temperature=5.0"])
    assert load_config(None, ["rollout.engine=hf", "rollout.temperature=5.0"]).rollout.temperature == 5.0


def test_unknown_key_with_suggestion(tmp_path):
    with pytest.raises(ConfigError, match=re.escape(
            "unknown key 'trainer.totl_steps' (did you mean 'trainer.total_steps'?)")):
        load_config(None, ["trainer.totl_steps=3"])
    with pytest.raises(ConfigError, match=re.escape("unknown key 'trainr' (did you mean 'trainer'?)")):
        load_config(write(tmp_path, "trainr:\n  total_steps: 3\n"))
    # A bare leaf name is pointed to its section.
    with pytest.raises(ConfigError, match=re.escape("unknown key 'total_steps' (did you mean 'trainer.total_steps'?)")):
        load_config(None, ["total_steps=3"])
    # No suggestion when nothing is close.
    with pytest.raises(ConfigError, match=r"^unknown key 'actor\.zzzqqq'$"):
        load_config(None, ["actor.zzzqqq=1"])


def test_nested_unknown_section(tmp_path):
    with pytest.raises(ConfigError, match=r"^unknown key 'trainer\.schedule'$"):
        load_config(write(tmp_path, "trainer:\n  schedule:\n    warmup: 3\n"))
    with pytest.raises(ConfigError, match=r"^unknown key 'actor\.optim'"):
        load_config(None, ["actor.optim.lr=1e-5"])


def test_wrong_types():
    cases = {
        "trainer.total_steps=abc": "trainer.total_steps: expected int, got str 'abc'",
        "trainer.total_steps=2.5": "trainer.total_steps: expected int, got float 2.5",
        "trainer.total_steps=true": "trainer.total_steps: expected int, got bool True",
        "trainer.progress=1": "trainer.progress: expected bool, got int 1",
        "trainer.progress=maybe": "trainer.progress: expected bool, got str 'maybe'",
        "actor.lr=fast": "actor.lr: expected float, got str 'fast'",
        "actor.lr=false": "actor.lr: expected float, got bool False",
        "actor.dual_clip=abc": "actor.dual_clip: expected Optional[float], got str 'abc'",
        "ray.num_cpus=1.5": "ray.num_cpus: expected Optional[int], got float 1.5",
        "model.path=": "model.path: expected str, got null",
    }
    for override, msg in cases.items():
        with pytest.raises(ConfigError, match="^" + re.escape(msg) + "$"):
            load_config(None, [override])
    assert load_config(None, ["trainer.progress=false"]).trainer.progress is False
    assert load_config(None, ["ray.num_cpus=3"]).ray.num_cpus == 3


def test_literal_choices():
    with pytest.raises(ConfigError, match=re.escape("rollout.engine: expected one of ['vllm', 'hf'], got 'vlm'")):
        load_config(None, ["rollout.engine=vlm"])
    with pytest.raises(ConfigError, match=re.escape("actor.kl_estimator: expected one of ['k1', 'k2', 'k3'], got 'k4'")):
        load_config(None, ["actor.kl_estimator=k4"])
    assert load_config(None, ["actor.loss_agg=seq-mean-token-sum-norm"]).actor.loss_agg == "seq-mean-token-sum-norm"


def test_list_types(tmp_path):
    with pytest.raises(ConfigError, match=re.escape("actor.betas[1]: expected float, got str 'x'")):
        load_config(None, ["actor.betas=[0.9,x]"])
    with pytest.raises(ConfigError, match=re.escape("data.difficulty[0]: expected int, got float 1.5")):
        load_config(write(tmp_path, "data:\n  difficulty: [1.5, 2]\n"))
    with pytest.raises(ConfigError, match=re.escape("data.difficulty: expected list[int], got int 3")):
        load_config(None, ["data.difficulty=3"])
    cfg = load_config(None, ["actor.betas=[0, 1e-1]"])
    assert cfg.actor.betas == [0.0, 0.1] and all(isinstance(b, float) for b in cfg.actor.betas)


def test_section_given_a_scalar(tmp_path):
    with pytest.raises(ConfigError, match=r"^trainer: is a section and expects a mapping of keys, got int 5$"):
        load_config(None, ["trainer=5"])
    with pytest.raises(ConfigError, match=r"^actor: is a section .* got str 'big'"):
        load_config(write(tmp_path, "actor: big\n"))
    # An override that descends into a section the file set to a scalar.
    with pytest.raises(ConfigError, match=r"^trainer: is a section .*got int 5 \(while applying override 'trainer.seed=1'\)"):
        load_config(write(tmp_path, "trainer: 5\n", "b.yaml"), ["trainer.seed=1"])
    with pytest.raises(ConfigError, match=r"top level must be a mapping of sections, got list"):
        load_config(write(tmp_path, "- a\n- b\n", "c.yaml"))


def test_missing_file(tmp_path):
    missing = str(tmp_path / "nope.yaml")
    with pytest.raises(FileNotFoundError, match=re.escape(missing)):
        load_config(missing)


def test_bad_yaml_names_file_and_line(tmp_path):
    path = write(tmp_path, "trainer:\n  total_steps: 3\n  seed: [1, 2\nactor:\n  lr: 1\n")
    with pytest.raises(ConfigError, match=re.escape(path) + r": line \d+, column \d+: invalid YAML"):
        load_config(path)
    path = write(tmp_path, "model:\n  path: a\nmodel:\n  path: b\n", "dup.yaml")
    with pytest.raises(ConfigError, match=re.escape(path) + r": line 3, column 1: invalid YAML: duplicate key 'model'"):
        load_config(path)


def test_bad_overrides():
    with pytest.raises(ConfigError, match=re.escape("override 'trainer.total_steps' must have the form key.path=value")):
        load_config(None, ["trainer.total_steps"])
    with pytest.raises(ConfigError, match=re.escape("override 'trainer..seed=1': bad key path 'trainer..seed'")):
        load_config(None, ["trainer..seed=1"])
    with pytest.raises(ConfigError, match=re.escape("override 'actor.betas=[0.9,': value is not valid YAML")):
        load_config(None, ["actor.betas=[0.9,"])


# ------------------------------------------------------------------------- cross-field checks
@pytest.mark.parametrize("overrides, msg", [
    (["rollout.n=3", "data.batch_size=3", "actor.world_size=2"],
     "actor.world_size: data.batch_size * rollout.n = 9 samples per step must be divisible by actor.world_size (2)"),
    (["actor.mini_batch_size=12"], "actor.mini_batch_size: 12 must divide data.batch_size * rollout.n = 32"),
    (["actor.mini_batch_size=3", "actor.world_size=2"],
     "actor.mini_batch_size: 3 must be divisible by actor.world_size (2)"),
    (["rollout.max_model_len=300"],
     "rollout.max_model_len: 300 must be >= data.max_prompt_tokens + rollout.max_new_tokens = 384"),
    (["rollout.top_p=0"], "rollout.top_p: must be in (0, 1], got 0.0"),
    (["rollout.top_k=0"], "rollout.top_k: must be -1 or >= 1, got 0"),
    (["actor.betas=[0.9]"], "actor.betas: must have 2 values, got 1"),
    (["actor.betas=[0.9, 1.5]"], "actor.betas[1]: must be in [0, 1), got 1.5"),
    (["actor.dual_clip=0.5"], "actor.dual_clip: must be > 1 (or null), got 0.5"),
    (["data.difficulty=[]"], "data.difficulty: must list at least one level"),
    (["data.val_size=4000"], "data.val_size: must be smaller than data.num_generated (4000), got 4000"),
    (["trainer.total_steps=0"], "trainer.total_steps: must be >= 1, got 0"),
    (["reward.function=envs.math"], "reward.function: expected 'module:function' or 'path/to/file.py:function', got 'envs.math'"),
    (["ray.num_cpus=0"], "ray.num_cpus: must be >= 1 (or null), got 0"),
])
def test_cross_field_validation_names_the_key(overrides, msg):
    with pytest.raises(ConfigError, match="^" + re.escape(msg) + "$"):
        load_config(None, overrides)


def test_cross_field_valid_combinations():
    cfg = load_config(None, ["actor.mini_batch_size=16", "data.batch_size=4", "rollout.n=8", "actor.world_size=4"])
    assert cfg.actor.mini_batch_size == 16
    # A user-supplied dataset does not need val_size < num_generated.
    assert load_config(None, ["data.train_path=x.jsonl", "data.val_size=5000"]).data.val_size == 5000
    assert load_config(None, ["reward.function=my/rewards.py:score"]).reward.function == "my/rewards.py:score"


# ------------------------------------------------------------------------------- describe
def test_describe_lists_every_key():
    text = describe()
    line = next(l for l in text.splitlines() if l.strip().startswith("trainer.total_steps "))
    assert re.fullmatch(r"\s*trainer\.total_steps\s+int = 10  # training steps \(one rollout batch and one update each\)", line)
    assert re.search(r"actor\.betas\s+list\[float\] = \[0\.9, 0\.999\]  # AdamW betas", text)
    assert re.search(r"rollout\.engine\s+one of \['vllm', 'hf'\] = vllm  #", text)
    assert re.search(r"data\.train_path\s+Optional\[str\] = null  #", text)
    listed = {l.split()[0] for l in text.splitlines() if l.startswith("  ")}

    def paths(cls, pre=""):
        for f in dataclasses.fields(cls):
            tp = typing.get_type_hints(cls)[f.name]
            yield from paths(tp, pre + f.name + ".") if dataclasses.is_dataclass(tp) else [pre + f.name]
    assert listed == set(paths(Config)) and len(listed) == 172  # 3+11+12+24+11+14+16+6+9+15+9+3+27+12


# ------------------------------------------------------------------- generic machinery on a toy schema
@dataclass
class _Inner:
    pair: tuple[int, str] = _f((1, "a"), "a fixed-size tuple")
    xs: tuple[float, ...] = _f((), "a variable-size tuple")
    opt_list: Optional[list[int]] = _f(None, "an optional list")
    mode: Literal[1, 2] = _f(1, "an int choice")

    def validate(self):
        if self.mode == 2 and not self.xs:
            raise ConfigError("toy.inner.xs: required when mode is 2")


@dataclass
class _Toy:
    inner: _Inner = field(default_factory=_Inner, metadata={"help": "nested"})
    tags: dict[str, int] = _f({}, "a mapping")


def test_generic_types_on_a_toy_schema():
    t = from_dict({"inner": {"pair": [2, "b"], "xs": [1, 2.5], "opt_list": [3]}, "tags": {"a": 1}}, _Toy)
    assert t.inner.pair == (2, "b") and t.inner.xs == (1.0, 2.5) and t.inner.opt_list == [3] and t.tags == {"a": 1}
    with pytest.raises(ConfigError, match=re.escape("inner.pair: expected 2 values, got 3")):
        from_dict({"inner": {"pair": [1, "a", 3]}}, _Toy)
    with pytest.raises(ConfigError, match=re.escape("inner.opt_list[1]: expected int, got str 'x'")):
        from_dict({"inner": {"opt_list": [1, "x"]}}, _Toy)
    with pytest.raises(ConfigError, match=re.escape("inner.mode: expected one of [1, 2], got True")):
        from_dict({"inner": {"mode": True}}, _Toy)
    with pytest.raises(ConfigError, match=re.escape("tags.b: expected int, got str 'x'")):
        from_dict({"tags": {"b": "x"}}, _Toy)
    with pytest.raises(ConfigError, match=re.escape("toy.inner.xs: required when mode is 2")):
        from_dict({"inner": {"mode": 2}}, _Toy)
    text = describe(_Toy)
    assert re.search(r"^  inner\.pair\s+tuple\[int, str\] = \[1, a\]  # a fixed-size tuple$", text, re.M)
    assert re.search(r"^  inner\.opt_list\s+Optional\[list\[int\]\] = null  # an optional list$", text, re.M)
    assert "\n  tags  dict[str, int] = {}  # a mapping" in text
