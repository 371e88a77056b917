"""The batch container: exact expectations for every reshaping operation."""
from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from orchestrator.batch import Batch


def make(n=5) -> Batch:
    return Batch({"x": torch.arange(n * 2).view(n, 2), "y": torch.arange(n).float()},
                 {"uid": [f"u{i}" for i in range(n)], "info": [{"i": i} for i in range(n)]}, {"temp": 0.7})


def test_fields_and_errors():
    b = make()
    assert len(b) == 5 and set(b.keys()) == {"x", "y", "uid", "info"}
    assert b["uid"].dtype == object and b["info"][3] == {"i": 3}
    with pytest.raises(ValueError, match="disagree on the batch size"):
        Batch({"x": torch.zeros(3)}, {"uid": ["a", "b"]})
    with pytest.raises(KeyError, match="'nope' is not in the batch"):
        b["nope"]
    with pytest.raises(ValueError, match="'z' has 4 rows, the batch has 5"):
        b["z"] = torch.zeros(4)
    b["z"] = ["a"] * 5
    assert b.non_tensors["z"].tolist() == ["a"] * 5


def test_select_split_concat_roundtrip():
    b = make(6)
    parts = b.split(3)
    assert [p["y"].tolist() for p in parts] == [[0, 1], [2, 3], [4, 5]]
    assert [p["uid"].tolist() for p in parts] == [["u0", "u1"], ["u2", "u3"], ["u4", "u5"]]
    back = Batch.concat(parts)
    assert torch.equal(back["x"], b["x"]) and back["uid"].tolist() == b["uid"].tolist()
    assert back.meta == {"temp": 0.7}
    picked = b.select([5, 0])
    assert picked["y"].tolist() == [5.0, 0.0] and picked["info"].tolist() == [{"i": 5}, {"i": 0}]
    assert b.select(2)["uid"].tolist() == ["u2"]
    with pytest.raises(ValueError, match="cannot split 5 rows into 2"):
        make(5).split(2)
    with pytest.raises(ValueError, match="different keys"):
        Batch.concat([make(2), Batch({"x": torch.zeros(2, 2)})])


def test_chunks_of_keeps_the_tail():
    assert [len(c) for c in make(5).chunks_of(2)] == [2, 2, 1]


def test_repeat_interleaved_and_tiled():
    b = make(2)
    assert b.repeat(3)["uid"].tolist() == ["u0", "u0", "u0", "u1", "u1", "u1"]
    assert b.repeat(2, interleave=False)["y"].tolist() == [0.0, 1.0, 0.0, 1.0]


def test_pad_to_divisor_and_unpad():
    b = make(5)
    padded, pad = b.pad_to_divisor(4)
    assert pad == 3 and len(padded) == 8
    assert padded["y"].tolist() == [0, 1, 2, 3, 4, 0, 1, 2]  # copies of the first rows
    assert torch.equal(padded.unpad(pad)["x"], b["x"])
    same, zero = b.pad_to_divisor(5)
    assert zero == 0 and same is b


def test_union_and_conflicts():
    a = Batch({"x": torch.ones(2)}, {"uid": ["a", "b"]})
    c = a.union(Batch({"z": torch.zeros(2)}, meta={"k": 1}))
    assert set(c.keys()) == {"x", "uid", "z"} and c.meta == {"k": 1}
    with pytest.raises(ValueError, match="tensor 'x' differs"):
        a.union(Batch({"x": torch.zeros(2)}))


def test_pickles_for_ray():
    b = make(3)
    c = pickle.loads(pickle.dumps(b))
    assert torch.equal(c["x"], b["x"]) and c["info"].tolist() == b["info"].tolist() and c.meta == b.meta
    assert isinstance(c["uid"], np.ndarray)
