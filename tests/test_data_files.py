"""Prompt data from files through `datasets` (orchestrator/data_files.py): verl and GSM8K rows from
jsonl, json, parquet, a save_to_disk folder and a load_dataset folder; all chat messages kept,
ground truths of any type and extra_info reach the reward function; errors name key, file and row."""
from __future__ import annotations

import json
import re

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from orchestrator.data_files import load_prompt_rows

VERL = [
    {"data_source": "openai/gsm8k", "ability": "math",
     "prompt": [{"role": "system", "content": "sys"}, {"role": "user", "content": "old"},
                {"role": "assistant", "content": "a"}, {"role": "user", "content": "Q1?"}],
     "reward_model": {"style": "rule", "ground_truth": "72"}, "extra_info": {"split": "train", "index": 0}},
    {"data_source": "mine", "ability": "math", "prompt": [{"role": "user", "content": "Q2?"}],
     "reward_model": {"style": "rule", "ground_truth": "\\frac{1}{2}"}, "extra_info": {"split": "train", "index": 1}},
]


def _check_verl(rows):
    assert [r["prompt"] for r in rows] == [VERL[0]["prompt"], VERL[1]["prompt"]]  # every message, in order
    assert [r["ground_truth"] for r in rows] == ["72", "\\frac{1}{2}"]           # not only numbers
    assert [r["data_source"] for r in rows] == ["openai/gsm8k", "mine"]
    assert [r["extra_info"]["index"] for r in rows] == [0, 1]


def test_verl_rows_from_jsonl_parquet_disk_and_load_dataset_folder(tmp_path):
    import datasets
    (tmp_path / "t.jsonl").write_text("\n".join(json.dumps(r) for r in VERL) + "\n")
    _check_verl(load_prompt_rows(str(tmp_path / "t.jsonl"), "data.train_path"))
    pq.write_table(pa.Table.from_pylist(VERL), tmp_path / "t.parquet")
    _check_verl(load_prompt_rows(str(tmp_path / "t.parquet"), "data.train_path"))
    ds = datasets.Dataset.from_list(VERL)
    ds.save_to_disk(str(tmp_path / "disk"))
    _check_verl(load_prompt_rows(str(tmp_path / "disk"), "data.train_path"))
    datasets.DatasetDict({"train": ds, "test": ds.select([1])}).save_to_disk(str(tmp_path / "dict"))
    assert [r["data_source"] for r in load_prompt_rows(str(tmp_path / "dict"), "data.val_path")] == ["mine"]
    assert len(load_prompt_rows(str(tmp_path / "dict") + "::train", "data.val_path")) == 2
    (tmp_path / "folder").mkdir()
    pq.write_table(pa.Table.from_pylist(VERL), tmp_path / "folder" / "train-00000.parquet")
    _check_verl(load_prompt_rows(str(tmp_path / "folder"), "data.train_path"))


def test_gsm8k_rows_get_the_math_prompt(tmp_path):
    rows = [{"question": "Q1?", "answer": "2 + 70 = 72\n#### 72"}, {"question": "Q2?", "answer": "big\n#### 1,234"}]
    (tmp_path / "g.json").write_text(json.dumps(rows))
    got = load_prompt_rows(str(tmp_path / "g.json"), "data.train_path", system_prompt="Be brief.")
    assert [r["ground_truth"] for r in got] == ["72", "1234"]
    assert got[0]["prompt"][0] == {"role": "system", "content": "Be brief."}
    assert got[0]["prompt"][1]["content"].startswith("Q1?\n")


@pytest.mark.parametrize("content,why", [
    ('{"question": "Q", "answer": "#### 5"', "3: invalid JSON"),
    ('[1, 2]', "row 1: expected an object"),
    ('{"answer": "#### 5"}', "row 1: field 'question' is missing"),
    ('{"question": "Q", "answer": "five"}', "row 1: field 'answer' has no '#### <number>'"),
    ('{"prompt": [{"role": "user"}], "reward_model": {"ground_truth": 1}}', "row 1: prompt message 0 needs string"),
    ('{"prompt": "hi"}', "row 1: no reward_model.ground_truth"),
    ('{"text": "hi"}', "row 1: neither a verl row"),
])
def test_errors_name_key_file_and_row(tmp_path, content, why):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"question": "Q", "answer": "#### 1"}\n\n' + content + "\n")
    with pytest.raises(ValueError, match=re.escape(f"data.val_path: {path}:") + ".*" + re.escape(why)):
        load_prompt_rows(str(path), "data.val_path")


def test_missing_and_unsupported(tmp_path):
    with pytest.raises(ValueError, match=re.escape(f"data.train_path: no such file or folder: {tmp_path / 'x.jsonl'}")):
        load_prompt_rows(str(tmp_path / "x.jsonl"), "data.train_path")
    (tmp_path / "p.csv").write_text("a,b\n")
    with pytest.raises(ValueError, match=r"unsupported file type '\.csv'"):
        load_prompt_rows(str(tmp_path / "p.csv"), "data.train_path")
