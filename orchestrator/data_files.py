"""Prompt data from files, as verl-shaped rows: `data.train_path` / `data.val_path`.

    rows = load_prompt_rows("gsm8k_train.jsonl", "data.train_path")
    # -> [{"prompt": [chat messages], "ground_truth": ..., "data_source": ..., "extra_info": ...}, ...]

What a path may be:
- `.jsonl` / `.json` (JSON lines, or a JSON list): read here, so a bad line is named with its number;
- `.parquet`, a `datasets` `save_to_disk` folder, or a folder `datasets.load_dataset` can read
  (data files, or a dataset with a loading script): read with `datasets`. A DatasetDict gives its
  "train" split for data.train_path and "validation"/"test" for data.val_path (else its first);
  `PATH::SPLIT` picks one.
Row shapes (each row may use either):
- verl: `prompt` (chat messages, all of them kept: system, few-shot turns, user; or a plain string),
  `reward_model.ground_truth` (any JSON type, passed to the reward function as is), `data_source`,
  `extra_info` (passed to the reward function as `extra_info`);
- GSM8K: `question` + `answer` ("... #### 72"): the prompt is the math task's (question + the
  short-answer instruction), the ground truth the number after the last '####'.
Every error names the config key, the file and the row.
"""
from __future__ import annotations

import json
from pathlib import Path

from envs.math import GSM8K_SOURCE, build_prompt
from envs.math_answers import canonical_number, parse_number


def load_prompt_rows(path: str, key: str, system_prompt: str | None = None) -> list[dict]:
    raw, where = read_records(path, key)
    return [to_row(r, f"{where} row {i}", system_prompt, Path(path.split("::")[0]).stem) for i, r in enumerate(raw)]


def read_records(path: str, key: str) -> tuple[list[dict], str]:
    """The raw records of `path` and the name errors use for it."""
    spec, _, split = path.partition("::")
    p = Path(spec).expanduser()
    where = f"{key}: {p}:"
    if not p.exists():
        raise ValueError(f"{key}: no such file or folder: {p}")
    if p.is_file() and p.suffix.lower() in (".jsonl", ".json"):
        return _read_json(p, where), where
    if p.is_file() and p.suffix.lower() != ".parquet":
        raise ValueError(f"{key}: {p}: unsupported file type '{p.suffix}' (expected .jsonl, .json, .parquet, "
                         f"a datasets save_to_disk folder or a load_dataset folder)")
    import datasets
    try:
        if p.is_file():
            ds = datasets.load_dataset("parquet", data_files=str(p), split="train")
        elif (p / "dataset_info.json").exists() or (p / "dataset_dict.json").exists():
            ds = datasets.load_from_disk(str(p))
        else:
            ds = datasets.load_dataset(str(p))
    except Exception as e:  # noqa: BLE001 - the library's own message, named by key and path
        raise ValueError(f"{key}: {p}: datasets could not read it: {type(e).__name__}: {e}") from None
    if isinstance(ds, datasets.DatasetDict):
        names = list(ds)
        pick = split or next((s for s in (("train",) if key.endswith("train_path") else ("validation", "test"))
                              if s in ds), names[0])
        if pick not in ds:
            raise ValueError(f"{key}: {p}: no split {pick!r} (has {names})")
        ds = ds[pick]
    return ds.to_list(), where


def _read_json(p: Path, where: str) -> list[dict]:
    text = p.read_text(encoding="utf-8")
    if p.suffix.lower() == ".json":
        try:
            rows = json.loads(text)
        except json.JSONDecodeError:
            rows = None  # JSON lines under a .json name
        if rows is not None:
            if not isinstance(rows, list):
                raise ValueError(f"{where} expected a JSON list of rows, got {type(rows).__name__}")
            return rows
    out = []
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError as e:
            raise ValueError(f"{where}{lineno}: invalid JSON ({e.msg})") from None
    return out


def to_row(raw, where: str, system_prompt: str | None, default_source: str) -> dict:
    if not isinstance(raw, dict):
        raise ValueError(f"{where}: expected an object, got {type(raw).__name__}")
    if "prompt" in raw:
        return _verl_row(raw, where, default_source)
    if "question" in raw or "answer" in raw:
        return _gsm8k_row(raw, where, system_prompt)
    raise ValueError(f"{where}: neither a verl row ('prompt', 'reward_model') nor a GSM8K row "
                     f"('question', 'answer'); has {sorted(raw)}")


def _verl_row(raw: dict, where: str, default_source: str) -> dict:
    prompt = raw["prompt"]
    if isinstance(prompt, str):
        prompt = [{"role": "user", "content": prompt}]
    if not isinstance(prompt, list) or not prompt:
        raise ValueError(f"{where}: 'prompt' must be chat messages or a string, got {type(prompt).__name__}")
    for k, m in enumerate(prompt):
        if not (isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)):
            raise ValueError(f"{where}: prompt message {k} needs string 'role' and 'content', got {m!r:.80}")
    rm = raw.get("reward_model")
    truth = rm.get("ground_truth") if isinstance(rm, dict) else raw.get("ground_truth")
    if truth is None:
        raise ValueError(f"{where}: no reward_model.ground_truth (nor ground_truth)")
    return {"prompt": [{"role": m["role"], "content": m["content"]} for m in prompt], "ground_truth": truth,
            "data_source": str(raw.get("data_source") or default_source), "extra_info": raw.get("extra_info")}


def _gsm8k_row(raw: dict, where: str, system_prompt: str | None) -> dict:
    for key in ("question", "answer"):
        if not isinstance(raw.get(key), str):
            raise ValueError(f"{where}: field '{key}' is missing or not a string")
    if "####" not in raw["answer"]:
        raise ValueError(f"{where}: field 'answer' has no '#### <number>' line")
    final = raw["answer"].rsplit("####", 1)[1].strip()
    if parse_number(final) is None:
        raise ValueError(f"{where}: the answer after '####' is not a number: {final!r}")
    from envs.math import MathProblem
    problem = MathProblem(raw["question"], canonical_number(final), int(raw.get("level") or 0),
                          str(raw.get("data_source", GSM8K_SOURCE)))
    return {"prompt": build_prompt(problem, system_prompt=system_prompt), "ground_truth": problem.answer,
            "data_source": problem.data_source, "extra_info": raw.get("extra_info")}
