"""Run configuration: a YAML recipe plus dotted command-line overrides, validated into dataclasses.

    cfg = load_config("recipes/quickstart.yaml", ["trainer.total_steps=3", "actor.betas=[0.9,0.99]"])

Every field carries one line of help (`describe()` prints them all for `hyflow train --help`).
Validation is strict and names the offending key: unknown keys (with a "did you mean"), wrong
types, bad choices and cross-field constraints all raise `ConfigError` before any worker starts,
so a typo costs a second rather than a Ray cluster start-up.
"""
from __future__ import annotations

import copy
import dataclasses
import difflib
import re
import typing
from pathlib import Path
from typing import Any, Literal, Optional, Union

import yaml

# The schema (one dataclass per section) lives in config_schema.py; re-exported here.
from orchestrator.config_schema import (  # noqa: F401
    ActorConfig, AlgorithmConfig, Config, ConfigError, CriticConfig, DataConfig, Dtype, EnvConfig, ForConfig,
    ModelConfig, RayConfig, RewardConfig, RolloutConfig, TrainerConfig, WeightSyncConfig)


# ------------------------------------------------------------------------------ type checks
_FLOAT_RE = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")


def _type_name(tp: Any) -> str:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is Literal:
        return f"one of {list(args)}"
    if origin is Union:
        rest = [a for a in args if a is not type(None)]
        inner = _type_name(rest[0]) if len(rest) == 1 else " | ".join(_type_name(a) for a in rest)
        return f"Optional[{inner}]" if len(rest) < len(args) else inner
    if origin in (list, tuple, dict):
        return f"{origin.__name__}[{', '.join('...' if a is Ellipsis else _type_name(a) for a in args)}]"
    return getattr(tp, "__name__", str(tp))


def _got(value: Any) -> str:
    if value is None:
        return "null"
    text = repr(value)
    return f"{type(value).__name__} {text if len(text) <= 60 else text[:57] + '...'}"


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check `value` against the annotation `tp`; return it converted (ints to float, lists to
    tuples, dicts to dataclasses)."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: is a section and expects a mapping of keys, got {_got(value)}")
        return _build(tp, value, key)
    if origin is Literal:
        if value not in args or isinstance(value, bool) != any(isinstance(a, bool) for a in args):
            raise ConfigError(f"{key}: expected one of {list(args)}, got {value!r}")
        return value
    if origin is Union:
        if value is None and type(None) in args:
            return None
        rest = [a for a in args if a is not type(None)]
        if len(rest) != 1:
            raise TypeError(f"{key}: only Optional[T] unions are supported, got {tp!r}")
        if typing.get_origin(rest[0]) or dataclasses.is_dataclass(rest[0]):
            return _coerce(value, rest[0], key)  # its own message names the element at fault
        try:
            return _coerce(value, rest[0], key)
        except ConfigError:
            raise ConfigError(f"{key}: expected {_type_name(tp)}, got {_got(value)}") from None
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected {_type_name(tp)}, got {_got(value)}")
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                raise ConfigError(f"{key}: expected {len(args)} values, got {len(value)}")
            return tuple(_coerce(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
        elem = args[0] if args else Any
        out = [_coerce(v, elem, f"{key}[{i}]") for i, v in enumerate(value)]
        return tuple(out) if origin is tuple else out
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected {_type_name(tp)}, got {_got(value)}")
        kt, vt = args if args else (Any, Any)
        return {_coerce(k, kt, f"{key}.{k}"): _coerce(v, vt, f"{key}.{k}") for k, v in value.items()}
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        # PyYAML (YAML 1.1) reads `1e-6` (no dot) as a string; accept plain numerals.
        if isinstance(value, str) and _FLOAT_RE.fullmatch(value.strip()):
            return float(value)
    elif tp is str:
        if isinstance(value, str):
            return value
    else:
        raise TypeError(f"{key}: unsupported annotation {tp!r} in the config schema")
    raise ConfigError(f"{key}: expected {tp.__name__}, got {_got(value)}")


def _suggest(name: str, prefix: str, cls: type) -> str:
    """ ' (did you mean 'x.y'?)' for a misspelt key: a close sibling, else the same name elsewhere."""
    names = [f.name for f in dataclasses.fields(cls)]
    close = difflib.get_close_matches(name, names, n=1)
    if close:
        return f" (did you mean '{prefix}{close[0]}'?)"
    elsewhere = [p for p in _all_paths(Config) if p.rsplit(".", 1)[-1] == name]
    if elsewhere:
        return f" (did you mean '{elsewhere[0]}'?)"
    return ""


def _build(cls: type, data: dict, prefix: str = "") -> Any:
    """Validate the mapping `data` into the dataclass `cls`, then run its `validate()`."""
    pre = f"{prefix}." if prefix else ""
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    for k in data:
        if k not in known:
            raise ConfigError(f"unknown key '{pre}{k}'{_suggest(str(k), pre, cls)}")
    kwargs = {k: _coerce(v, hints[k], pre + k) for k, v in data.items()}
    obj = cls(**kwargs)
    if hasattr(obj, "validate"):
        obj.validate()
    return obj


def _all_paths(cls: type, prefix: str = "") -> list[str]:
    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            out += _all_paths(hints[f.name], f"{prefix}{f.name}.")
        else:
            out.append(prefix + f.name)
    return out


def _type_at(path: list[str], cls: type = None) -> Any:
    """The annotation at a dotted path, or None when the path is not in the schema."""
    tp: Any = cls or Config
    for part in path:
        if not dataclasses.is_dataclass(tp) or part not in {f.name for f in dataclasses.fields(tp)}:
            return None
        tp = typing.get_type_hints(tp)[part]
    return tp


# ------------------------------------------------------------------------------ loading
class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that rejects a key given twice in one mapping (PyYAML silently keeps the last)."""


def _construct_unique(loader: yaml.SafeLoader, node: yaml.MappingNode) -> dict:
    seen = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r}", key_node.start_mark)
        seen.add(key)
    return loader.construct_mapping(node)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_unique)


def _read_yaml(path: str) -> dict:
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"config file not found: {path}")
    try:
        data = yaml.load(p.read_text(encoding="utf-8"), Loader=_UniqueKeyLoader)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e)
        raise ConfigError(f"{path}:{where}: invalid YAML: {problem}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections, got {_got(data)}")
    return data


def _parse_override(text: str) -> tuple[list[str], Any]:
    """'a.b.c=value' -> (['a', 'b', 'c'], value parsed as a YAML scalar or list)."""
    key, eq, raw = text.partition("=")
    key = key.strip()
    if not eq:
        raise ConfigError(f"override {text!r} must have the form key.path=value")
    parts = key.split(".")
    if not key or any(not p for p in parts):
        raise ConfigError(f"override {text!r}: bad key path {key!r}")
    tp = _type_at(parts)
    takes_str = tp is str or (typing.get_origin(tp) is Union and str in typing.get_args(tp))
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError as e:
        if not takes_str:
            raise ConfigError(f"override {text!r}: value is not valid YAML: "
                              f"{getattr(e, 'problem', None) or e}") from None
        value = raw
    # For a string field keep the text as typed: `trainer.experiment_name=2024` or
    # `data.system_prompt=Answer: #### N` would otherwise become an int or a mapping.
    if takes_str and value is not None and not isinstance(value, str):
        value = raw.strip()
    return parts, value


def _merge(dst: dict, src: dict) -> None:
    """Deep-merge `src` into `dst` (mappings merge, everything else replaces)."""
    for k, v in src.items():
        if isinstance(v, dict) and isinstance(dst.get(k), dict):
            _merge(dst[k], v)
        else:
            dst[k] = v


def apply_overrides(data: dict, overrides: typing.Iterable[str]) -> dict:
    """Return a copy of the raw mapping `data` with the dotted overrides applied, in order."""
    out = copy.deepcopy(data)
    for text in overrides:
        parts, value = _parse_override(text)
        node = out
        for i, part in enumerate(parts[:-1]):
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                section = ".".join(parts[: i + 1])
                raise ConfigError(f"{section}: is a section and expects a mapping of keys, "
                                  f"got {_got(child)} (while applying override {text!r})")
            node = child
        if isinstance(value, dict) and isinstance(node.get(parts[-1]), dict):
            _merge(node[parts[-1]], value)
        else:
            node[parts[-1]] = value
    return out


def from_dict(data: dict, cls: type = None) -> Any:
    """Validate a raw nested mapping into `cls` (default `Config`), running every `validate()`."""
    cls = cls or Config
    if not isinstance(data, dict):
        raise ConfigError(f"expected a mapping of sections, got {_got(data)}")
    return _build(cls, data)


def load_config(path: Optional[str], overrides: typing.Iterable[str] = ()) -> Config:
    """Read the YAML recipe at `path` (None = all defaults), apply `overrides` ('a.b.c=value',
    value parsed as YAML), and validate into a `Config`. Raises FileNotFoundError or ConfigError."""
    if isinstance(overrides, str):  # a lone string would otherwise be iterated per character
        overrides = [overrides]
    data = _read_yaml(str(path)) if path is not None else {}
    return from_dict(apply_overrides(data, overrides))


def to_dict(cfg: Any) -> dict:
    """The config as plain nested dicts/lists/scalars (tuples become lists), in schema order."""
    def plain(v: Any) -> Any:
        if dataclasses.is_dataclass(v) and not isinstance(v, type):
            return {f.name: plain(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return v
    return plain(cfg)


def save_yaml(cfg: Any, path: str) -> None:
    """Write the resolved config; `load_config(path)` gives back an equal Config."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False, default_flow_style=None), encoding="utf-8")


def describe(cls: type = None) -> str:
    """Every key path with its type, default and help, one per line, grouped by section."""
    cls = cls or Config
    lines: list[str] = []

    def walk(c: type, prefix: str) -> None:
        hints = typing.get_type_hints(c)
        fields = dataclasses.fields(c)
        width = max([len(prefix + f.name) for f in fields if not dataclasses.is_dataclass(hints[f.name])] + [0])
        for f in fields:
            tp, key, help_ = hints[f.name], prefix + f.name, f.metadata.get("help", "")
            if dataclasses.is_dataclass(tp):
                lines.append(f"{key}:  {help_}" if help_ else f"{key}:")
                walk(tp, key + ".")
                continue
            default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
            shown = yaml.safe_dump(to_dict(default), default_flow_style=True, width=1000).strip()
            shown = shown.removesuffix("\n...").removesuffix("...").strip()
            lines.append(f"  {key:<{width}}  {_type_name(tp)} = {shown}  # {help_}")

    walk(cls, "")
    return "\n".join(lines)
