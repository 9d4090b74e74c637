"""Unit behaviour of the small pieces: batching, IDX reading, params, safe loading."""

from __future__ import annotations

import gzip
import pickle

import numpy as np
import pytest
import torch

from deepmine.data.batches import TensorBatches
from deepmine.data.idx import read_idx
from deepmine.errors import DeepmineError
from deepmine.runtime.checkpoints import load_weights
from deepmine.tracking.params import MAX_VALUE, batches, flatten


def test_batches_are_exactly_a_reference_indexing_for_a_seed():
    x = torch.arange(103, dtype=torch.float32).reshape(103, 1)
    y = torch.arange(103)
    loader = TensorBatches(x, y, batch_size=10, shuffle=True, seed=7)
    for epoch in range(3):
        reference = torch.randperm(103, generator=torch.Generator().manual_seed(7 + epoch))
        got = list(loader)
        assert len(got) == len(loader) == 11
        assert torch.equal(torch.cat([b[1] for b in got]), reference)
        assert torch.equal(torch.cat([b[0] for b in got]).squeeze(1).long(), reference)


def test_batches_unshuffled_and_drop_last():
    x, y = torch.zeros(25, 2), torch.arange(25)
    assert [len(b[1]) for b in TensorBatches(x, y, 10)] == [10, 10, 5]
    dropped = TensorBatches(x, y, 10, drop_last=True)
    assert len(dropped) == 2 and torch.equal(torch.cat([b[1] for b in dropped]), y[:20])


def idx_bytes(array: np.ndarray) -> bytes:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(d.to_bytes(4, "big") for d in array.shape)
    return header + array.astype(np.uint8).tobytes()


def test_idx_round_trip_plain_and_gzip(tmp_path):
    array = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    (tmp_path / "a.idx").write_bytes(idx_bytes(array))
    (tmp_path / "a.idx.gz").write_bytes(gzip.compress(idx_bytes(array)))
    assert np.array_equal(read_idx(tmp_path / "a.idx"), array)
    assert np.array_equal(read_idx(tmp_path / "a.idx.gz"), array)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"\x00\x00\x08\x01\x00\x00\x00\x05ab", "needs 13"),
        (b"PK\x03\x04", "bad magic"),
        (b"\x1f\x8bnot gzip", "not a valid gzip"),
    ],
)
def test_idx_rejects_corrupt_files(tmp_path, content, message):
    path = tmp_path / "bad.idx"
    path.write_bytes(content)
    with pytest.raises(DeepmineError, match=message):
        read_idx(path)


def test_flatten_keeps_full_values_up_to_mlflow_limit():
    flat = flatten({"a": {"b": 1, "c": [1, 2]}, "long": "x" * 300, "huge": "y" * 7000, "e": {}})
    assert flat["a.b"] == "1" and flat["a.c"] == "[1, 2]" and flat["e"] == "{}"
    assert flat["long"] == "x" * 300
    assert len(flat["huge"]) == MAX_VALUE and flat["huge"].endswith("config/config.yaml]")
    chunks = batches({f"k{i}": "v" for i in range(250)})
    assert [len(c) for c in chunks] == [100, 100, 50]


class Boom:
    def __reduce__(self):
        return (print, ("pickled code ran",))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_checkpoint_loading_refuses_pickled_code(tmp_path):
    path = tmp_path / "evil.ckpt"
    with path.open("wb") as f:
        pickle.dump({"state_dict": {}, "payload": Boom()}, f)
    with pytest.raises(DeepmineError, match="not a loadable weights-only checkpoint"):
        load_weights(torch.nn.Linear(2, 2), path)


def test_checkpoint_loading_takes_weights(tmp_path):
    source, target = torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)
    torch.save({"state_dict": source.state_dict()}, tmp_path / "ok.ckpt")
    load_weights(target, tmp_path / "ok.ckpt")
    assert torch.equal(source.weight, target.weight)
