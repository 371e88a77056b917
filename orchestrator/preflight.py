"""Preflight: check every file and import the run will need, before Ray or any worker starts.

    cfg = load_config(path, overrides)
    preflight(cfg)        # ConfigError listing every problem, one per line, each starting with its key

What is checked (only what this run reads: an agent run (env.name) or a FoR run (for_.enabled) has
no prompt data and no reward function):
- data files (`DATA_FILES`: data.train_path, data.val_path): exist and parse into prompt rows;
- data.generator: 'module:function', importable and callable (not called);
- reward.function: the module or file imports, the function exists, is callable and accepts the
  reward keywords (data_source, solution_str, ground_truth, extra_info);
- model.path: the embedded name is prepared; a folder holds config.json, tokenizer files and
  weights (every shard an index lists); any other name is an error while hub downloads are off
  (HF_HUB_OFFLINE, which the CLI sets), unless the hub cache already holds it;
- reward.model.path: an HF folder with weights, one label and the policy's vocab_size;
- reward.remote_url: a server listens at its host and port;
- env.name: a registered env or an importable 'module:Class'; env.kwargs fit its constructor; and
  the env's assets (`ENV_ASSETS`: ALFWorld's games under data_dir, or the generate_per_type that
  writes them on the first run).
Each check turns its failure into a line; nothing here raises a traceback for a user's mistake.
"""
from __future__ import annotations

import importlib
import importlib.util
import inspect
import json
import os
from pathlib import Path
from typing import Any, Callable, Iterable

from orchestrator.config import ConfigError

Problems = Iterable[tuple[str, str]]  # (config key, message)


def _prompt_task(cfg) -> bool:
    """The run reads prompt data and scores with reward.function (orchestrator/tasks.py PromptTask)."""
    return not cfg.env.name and not cfg.for_.enabled


# ------------------------------------------------------------------------------------ data
def check_data_file(key: str, path: str) -> Problems:
    """A prompt-data path (PATH or PATH::SPLIT): exists and loads into at least one prompt row."""
    from orchestrator.data_files import load_prompt_rows
    p = Path(path.partition("::")[0]).expanduser()
    if not p.exists():
        yield key, f"no such file or folder: {p}"
        return
    try:
        rows = load_prompt_rows(path, key)
    except ValueError as e:
        msg = str(e)
        yield key, msg[len(key) + 2:] if msg.startswith(f"{key}: ") else msg
        return
    except Exception as e:  # noqa: BLE001 - any reader failure, named by key and path
        yield key, f"{p}: could not be read: {type(e).__name__}: {e}"
        return
    if not rows:
        yield key, f"{p}: has no rows"


# One line per data key: (key, the path this run reads or None).
DATA_FILES: list[tuple[str, Callable[[Any], str | None]]] = [
    ("data.train_path", lambda c: c.data.train_path if _prompt_task(c) and not c.data.generator else None),
    ("data.val_path", lambda c: getattr(c.data, "val_path", None) if _prompt_task(c) else None),
]


def _import_attr(spec: str, what: str) -> tuple[Any, str | None]:
    """'module:attr' -> (the attribute, None) or (None, the problem)."""
    module, sep, attr = spec.rpartition(":")
    if not sep or not module or not attr.isidentifier():
        return None, f"expected 'module:{what}', got {spec!r}"
    try:
        mod = importlib.import_module(module)
    except Exception as e:  # noqa: BLE001 - ImportError, or the module itself failed while importing
        return None, f"{spec!r}: cannot import module '{module}': {type(e).__name__}: {e}"
    if not hasattr(mod, attr):
        return None, f"{spec!r}: module '{module}' has no attribute '{attr}'"
    obj = getattr(mod, attr)
    if not callable(obj):
        return None, f"{spec!r}: '{attr}' is not callable (it is a {type(obj).__name__})"
    return obj, None


def check_generator(cfg) -> Problems:
    if _prompt_task(cfg) and cfg.data.generator:
        _, problem = _import_attr(cfg.data.generator, "function")
        if problem:
            yield "data.generator", problem


# ---------------------------------------------------------------------------------- reward
def check_reward(cfg) -> Problems:
    if not _prompt_task(cfg):
        return
    from envs.rewards import load_reward_fn
    spec = cfg.reward.function
    try:
        load_reward_fn(spec)
    except ValueError as e:
        msg, prefix = str(e), f"reward function spec {spec!r}: "
        yield "reward.function", f"{spec!r}: {msg[len(prefix):]}" if msg.startswith(prefix) else msg
    except BaseException as e:  # noqa: BLE001 - the user's module raised something else at import
        if isinstance(e, KeyboardInterrupt):
            raise
        yield "reward.function", f"{spec!r}: importing it failed: {type(e).__name__}: {e}"


# ----------------------------------------------------------------------------------- model
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "spiece.model", "vocab.txt")
_WEIGHT_INDEXES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")


def check_model_folder(key: str, folder: Path) -> Problems:
    """An HF model folder: config.json, a tokenizer, and weights (with every indexed shard present)."""
    if not (folder / "config.json").is_file():
        yield key, f"{folder} has no config.json: not an HF model folder"
        return
    if not any((folder / f).is_file() for f in _TOKENIZER_FILES):
        yield key, f"{folder} has no tokenizer files (one of {', '.join(_TOKENIZER_FILES)})"
    for index in _WEIGHT_INDEXES:
        if (folder / index).is_file():
            try:
                shards = sorted(set(json.loads((folder / index).read_text())["weight_map"].values()))
            except (ValueError, KeyError, TypeError, AttributeError) as e:
                yield key, f"{folder / index} is not a valid weights index ({type(e).__name__}: {e})"
                return
            missing = [s for s in shards if not (folder / s).is_file()]
            if missing:
                yield key, f"{folder} lacks {len(missing)} of the {len(shards)} weight files {index} lists: {missing[:3]}"
            return
    if not (list(folder.glob("*.safetensors")) or list(folder.glob("pytorch_model*.bin"))):
        yield key, f"{folder} has no weights (*.safetensors or pytorch_model*.bin)"


def _hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "1").strip().lower() not in ("0", "false", "no", "off", "")


def _in_hub_cache(name: str) -> bool:
    try:
        from huggingface_hub import try_to_load_from_cache
        return isinstance(try_to_load_from_cache(name, "config.json"), str)
    except Exception:  # noqa: BLE001 - not a valid repo id, or no hub library: not cached
        return False


def check_model(cfg) -> Problems:
    from orchestrator.model_prep import EMBEDDED_NAME, resolve_model_path
    key, name = "model.path", cfg.model.path
    try:
        resolved = Path(resolve_model_path(name))
    except FileNotFoundError as e:
        yield key, str(e)
        return
    if resolved.is_dir():
        found = list(check_model_folder(key, resolved))
        yield from found
        if not found:
            yield from check_positions(cfg, resolved / "config.json")
    elif resolved.exists():
        yield key, f"{resolved} is a file, not a model folder"
    elif _hub_offline() and not _in_hub_cache(name):
        yield key, (f"{name!r} is neither the embedded model ({EMBEDDED_NAME!r}) nor an existing folder, "
                    f"and hub downloads are off (HF_HUB_OFFLINE=1)")


def check_positions(cfg, config_json: Path) -> Problems:
    """rollout.max_model_len within the model's positions (vLLM refuses it only once the engine
    process is up, and the trainer's sequences would run past the position table)."""
    try:
        positions = json.loads(config_json.read_text()).get("max_position_embeddings")
    except (OSError, ValueError, AttributeError):
        return
    if isinstance(positions, int) and cfg.rollout.max_model_len > positions:
        yield "rollout.max_model_len", (f"{cfg.rollout.max_model_len} exceeds the model's {positions} positions "
                                        f"(max_position_embeddings in {config_json}); lower it, with "
                                        f"data.max_prompt_tokens + rollout.max_new_tokens <= it")


def check_reward_model(cfg) -> Problems:
    """reward.model.path: an HF folder with one scalar label and the policy's vocabulary (the
    reward group scores the policy's token ids as they are)."""
    path = cfg.reward.model.path
    if path is None:
        return
    key, folder = "reward.model.path", Path(path)
    if not folder.is_dir():
        yield key, f"{folder} is not a folder (train one with `hyflow train-rm`; its hf/ folder is the reward model)"
        return
    problems_here = list(check_model_folder(key, folder))
    yield from problems_here
    if problems_here:
        return
    try:
        rm = json.loads((folder / "config.json").read_text())
    except ValueError as e:
        yield key, f"{folder / 'config.json'} is not valid JSON ({e})"
        return
    labels = rm.get("num_labels", len(rm.get("id2label") or {}) or 2)
    if labels != 1:
        yield key, f"{folder} has {labels} labels; a reward model has one (a scalar score)"
    from orchestrator.model_prep import resolve_model_path
    policy = Path(resolve_model_path(cfg.model.path)) / "config.json"
    if policy.is_file():
        want = json.loads(policy.read_text()).get("vocab_size")
        if rm.get("vocab_size") != want:
            yield key, (f"{folder} has vocab_size {rm.get('vocab_size')}, the policy ({cfg.model.path}) {want}: the "
                        "reward model must share the policy's tokenizer")


def check_remote_reward(cfg) -> Problems:
    """reward.remote_url: something listens at its host and port (a TCP connect, 5 s at most)."""
    url = cfg.reward.remote_url
    if url is None:
        return
    import socket
    from urllib.parse import urlsplit
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        socket.create_connection((parts.hostname, port), timeout=5).close()
    except OSError as e:
        yield "reward.remote_url", f"nothing answers at {parts.hostname}:{port} ({type(e).__name__}: {e}); start the reward server first"


# ------------------------------------------------------------------------------------- env
def alfworld_assets(kwargs: dict) -> Problems:
    """ALFWorld needs its optional extra and games: data_dir/split (or $ALFWORLD_DATA) must hold some,
    unless generate_per_type > 0 and data_dir is set (ALFWorldEnv.prepare writes them on the first run)."""
    from envs.alfworld.env import find_games, resolve_game_root
    from envs.alfworld.generator import INSTALL_HINT, TASK_TYPES
    missing = [m for m in ("alfworld", "textworld") if importlib.util.find_spec(m) is None]
    if missing:
        yield "env.name", f"alfworld needs the optional extra (missing {missing}): {INSTALL_HINT}"
    data_dir, split = kwargs.get("data_dir"), kwargs.get("split", "train")
    if data_dir and kwargs.get("generate_per_type"):
        return  # prepare() generates the games there when none are found
    try:
        root = resolve_game_root(os.path.expanduser(data_dir) if data_dir else None, split)
    except FileNotFoundError as e:
        yield "env.kwargs.data_dir", str(e)
        return
    if not find_games(root, tuple(kwargs.get("task_types") or TASK_TYPES)):
        yield "env.kwargs.data_dir", (f"no playable ALFWorld games under {root!r}; set env.kwargs.generate_per_type=N "
                                      f"to generate N per task type there on the first run")


# One line per env with assets: registry name -> check(env.kwargs). WebShop needs nothing.
ENV_ASSETS: dict[str, Callable[[dict], Problems]] = {"alfworld": alfworld_assets}


def check_env(cfg) -> Problems:
    name = cfg.env.name
    if not name or cfg.for_.enabled:
        return
    if ":" in name:
        factory, problem = _import_attr(name, "Class")
        if problem:
            yield "env.name", problem
            return
    else:
        from envs.base import get_env
        try:
            factory = get_env(name)
        except KeyError as e:
            yield "env.name", str(e.args[0]) if e.args else str(e)
            return
        except ImportError as e:
            yield "env.name", str(e)
            return
    try:
        inspect.signature(factory).bind(**cfg.env.kwargs)
    except TypeError as e:
        yield "env.kwargs", f"do not fit env {name!r}: {e}"
    except ValueError:
        pass  # no signature to check against
    if name in ENV_ASSETS:
        yield from ENV_ASSETS[name](dict(cfg.env.kwargs))


# ------------------------------------------------------------------------------------ entry
CHECKS = [("data.generator", check_generator), ("reward.function", check_reward), ("model.path", check_model),
          ("reward.model.path", check_reward_model), ("reward.remote_url", check_remote_reward), ("env.name", check_env)]


def problems(cfg) -> list[str]:
    """Every problem found, as 'key: message' lines."""
    found: list[tuple[str, str]] = []
    for key, get in DATA_FILES:
        path = get(cfg)
        if path:
            found += check_data_file(key, path)
    for key, check in CHECKS:
        try:
            found += check(cfg)
        except Exception as e:  # noqa: BLE001 - a check that broke still reports, against its key
            found.append((key, f"could not be checked: {type(e).__name__}: {e}"))
    return [f"{key}: {msg}" for key, msg in found]


def preflight(cfg) -> None:
    """Raise ConfigError listing every problem (one per line, each starting with its key); else None."""
    lines = problems(cfg)
    if lines:
        raise ConfigError("\n".join(lines))
