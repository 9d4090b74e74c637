"""Data larger than memory (issue 14): `data.storage=mmap` reads batches from memory-mapped
`.npy` files and gives the same batches, bit for bit, as the arrays held in memory, for images,
tables and series alike; its splits are views of the map, not copies; `deepmine data synth`
writes a scaled Fashion-MNIST that the fashion_mnist datamodule reads, pinned by DVC."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import ROOT, make_dvc_project, one_line_error, run_cli
from deepmine.data import version
from deepmine.data.batches import MappedRows
from deepmine.data.csv_table import CSVDataModule
from deepmine.data.diabetes import DiabetesDataModule
from deepmine.data.digits import DigitsDataModule
from deepmine.data.fashion_mnist import FashionMNISTDataModule
from deepmine.data.idx import read_idx
from deepmine.data.series import CSVSeriesDataModule
from deepmine.data.synth import augment
from deepmine.errors import DeepmineError


def digits(storage: str, cache, **options) -> DigitsDataModule:
    options = {
        "num_classes": 10,
        "input_shape": [1, 8, 8],
        "batch_size": 32,
        "eval_batch_size": 100,
        "val_size": 0.15,
        "shuffle_seed": 7,
        **options,
    }
    return DigitsDataModule(cache_dir=str(cache), storage=storage, **options)


def epochs_of_batches(dm, epochs: int = 2) -> list[tuple[torch.Tensor, torch.Tensor]]:
    dm.setup()
    batches = []
    for loader in (dm.train_dataloader(), dm.val_dataloader(), dm.test_dataloader()):
        for _ in range(epochs):
            batches.extend(loader)  # each pass over a loader is the next epoch's order
    return batches


def assert_same_batches(memory, mapped) -> None:
    assert len(memory) == len(mapped) > 0
    for (xm, ym), (xd, yd) in zip(memory, mapped, strict=True):
        assert xm.dtype == xd.dtype == torch.float32 and ym.dtype == yd.dtype == torch.long
        assert torch.equal(xm, xd) and torch.equal(ym, yd)


@pytest.mark.parametrize("normalize", ["scale", "none"])
def test_digits_mmap_batches_equal_memory_batches_bit_for_bit(tmp_path, normalize):
    memory = digits("memory", tmp_path, normalize=normalize)
    mapped = digits("mmap", tmp_path, normalize=normalize)
    assert_same_batches(epochs_of_batches(memory), epochs_of_batches(mapped))
    # the two shuffled epochs differ, so the check covers the epoch's order too
    loader = mapped.train_dataloader()
    first, second = list(loader), list(loader)
    assert not torch.equal(first[0][0], second[0][0])


def test_mmap_splits_are_views_of_one_file_map(tmp_path):
    dm = digits("mmap", tmp_path)
    dm.setup()
    train, val, test = (dm.tensors[s][0] for s in ("train", "val", "test"))
    assert all(isinstance(x, MappedRows) for x in (train, val, test))
    assert isinstance(train.array, np.memmap) and train.array is val.array
    assert str(train.array.filename).endswith("x_train.npy")
    assert sorted(np.concatenate([train.index, val.index]).tolist()) == list(range(1438))
    assert train[:0].shape == (0, 1, 8, 8) and test[:0].shape == (0, 1, 8, 8)  # empty reads
    # a batch is materialized in the order asked for, not in the file's (sorted) order
    index = torch.tensor([5, 1, 3])
    assert torch.equal(train[index], torch.stack([train[5:6][0], train[1:2][0], train[3:4][0]]))


def test_mmap_standardize_is_close_to_memory(tmp_path):
    memory = epochs_of_batches(digits("memory", tmp_path, normalize="standardize"), 1)
    mapped = epochs_of_batches(digits("mmap", tmp_path, normalize="standardize"), 1)
    for (xm, _), (xd, _) in zip(memory, mapped, strict=True):
        torch.testing.assert_close(xm, xd, rtol=1e-5, atol=1e-5)


def test_unknown_storage_is_one_line_error_with_the_fix(tmp_path):
    with pytest.raises(DeepmineError) as caught:
        digits("disk", tmp_path)
    assert "data.storage='disk'" in str(caught.value) and "data.storage=mmap" in caught.value.fix
    with pytest.raises(DeepmineError, match="decoded-array cache"):
        DigitsDataModule(
            cache_dir=None, storage="mmap", num_classes=10, input_shape=[1, 8, 8]
        ).setup()


def test_a_recorded_run_trains_from_memory_maps(sandbox, tmp_path):
    cache = tmp_path / "cache"
    done = sandbox.train(
        "data=digits", "debug=fast", "data.storage=mmap", f"data.cache_dir={cache}"
    )
    assert done.returncode == 0, done.stderr[-3000:]
    (run,) = sandbox.runs()
    assert run.data.params["data.storage"] == "mmap" and "test/acc" in run.data.metrics
    assert list(cache.glob("digits-*/x_train.npy"))  # the arrays it read, as .npy files


def test_fashion_mnist_mmap_batches_equal_memory_batches(tmp_path):
    source = ROOT / "data" / "fashion_mnist"
    if not source.is_dir():
        pytest.fail("data/ is missing: run `deepmine data pull` (make test does)")

    def fashion(storage: str) -> FashionMNISTDataModule:
        dm = FashionMNISTDataModule(
            data_dir=str(source),
            cache_dir=str(tmp_path),
            storage=storage,
            num_classes=10,
            input_shape=[1, 28, 28],
            batch_size=512,
            eval_batch_size=2000,
            shuffle_seed=1,
        )
        dm.setup()
        return dm

    memory, mapped = fashion("memory"), fashion("mmap")
    assert isinstance(mapped.tensors["train"][0], MappedRows)
    for loader in ("train_dataloader", "val_dataloader", "test_dataloader"):
        pair = getattr(memory, loader)(), getattr(mapped, loader)()
        for epoch in range(2):  # each pass over a loader is the next epoch's order
            for (xm, ym), (xd, yd) in zip(*pair, strict=True):
                assert torch.equal(xm, xd) and torch.equal(ym, yd), (epoch, loader)


def test_synth_writes_a_scaled_fashion_mnist_pinned_by_dvc(tmp_path):
    root = make_dvc_project(tmp_path / "project", with_data=True)
    pinned = version.read_pin(root).md5
    done = run_cli("data", "synth", "fashion_mnist", "--scale", "2", "--root", str(root), cwd=root)
    assert done.returncode == 0, done.stderr[-2000:]
    folder = root / "data" / "fashion_mnist_x2"
    assert f"data.data_dir={folder}" in done.stdout
    state = version.check(root)
    assert state.matches and version.read_pin(root).md5 != pinned  # re-pinned, with the new set
    assert not list(root.glob(".deepmine-synth-*"))  # the staging folder is gone
    original = root / "data" / "fashion_mnist"
    x, y = (
        read_idx(folder / "train-images-idx3-ubyte.gz"),
        read_idx(folder / "train-labels-idx1-ubyte.gz"),
    )
    x0, y0 = (
        read_idx(original / "train-images-idx3-ubyte.gz"),
        read_idx(original / "train-labels-idx1-ubyte.gz"),
    )
    assert x.shape == (120_000, 28, 28) and np.array_equal(x[:60_000], x0)
    assert np.array_equal(y, np.concatenate([y0, y0]))  # labels preserved, copy by copy
    assert not np.array_equal(x[60_000:], x0)  # the copy is augmented
    assert np.array_equal(x[60_000:], augment(x0, np.random.default_rng([0, 1])))  # seeded
    for name in ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
        assert np.array_equal(read_idx(folder / name), read_idx(original / name))
    dm = FashionMNISTDataModule(
        data_dir=str(folder), num_classes=10, input_shape=[1, 28, 28], val_size=0.1
    )
    dm.setup()  # the fashion_mnist datamodule reads it as it is
    assert len(dm.tensors["train"][1]) + len(dm.tensors["val"][1]) == 120_000
    again = run_cli("data", "synth", "fashion_mnist", "--scale", "2", "--root", str(root), cwd=root)
    assert again.returncode == 2 and "--force" in one_line_error(again)


def test_augmentation_shifts_and_flips_without_changing_the_pixels():
    images = np.zeros((400, 28, 28), np.uint8)
    images[:, 10:18, 4:9] = 200  # an off-centre block: a flip or shift moves it
    out = augment(images, np.random.default_rng(0))
    assert out.dtype == np.uint8 and out.shape == images.shape
    assert set(np.unique(out)) == {0, 200}
    assert (out.reshape(400, -1).sum(1) == images[0].sum()).all()  # shifted within the frame
    columns = {int(np.flatnonzero(o.any(0))[0]) for o in out}
    assert len(columns) > 5  # left edges: shifted by -2..2, or mirrored to the right side
    assert np.array_equal(out, augment(images, np.random.default_rng(0)))


# -- tables and series: the prepared arrays, stored and mapped (deepmine.data.mapped) ---------


def table_file(folder) -> str:
    """A small table with a numeric, a categorical and a class column, gaps imputed."""
    rng = np.random.default_rng(3)
    n = 150
    frame = pd.DataFrame(
        {
            "size": rng.normal(50, 10, n).round(2),
            "rooms": rng.integers(1, 6, n).astype(float),
            "city": rng.choice(["oslo", "bergen", "tromso"], n),
            "label": rng.choice(["cheap", "dear"], n),
        }
    )
    frame.loc[[4, 40], "rooms"] = np.nan
    path = folder / "houses.csv"
    frame.to_csv(path, index=False)
    return str(path)


def series_file(folder) -> str:
    steps = np.arange(240)
    frame = pd.DataFrame(
        {
            "t": steps,
            "level": np.sin(steps / 6.0) * 3 + steps / 40,
            "rain": np.cos(steps / 11.0) + 5,
        }
    )
    path = folder / "weather.csv"
    frame.to_csv(path, index=False)
    return str(path)


def mapped_range(path, address: int | None = None) -> tuple[int, int] | None:
    """The address range at which this process maps `path` (from /proc/self/maps), or None;
    with `address`: that range only if it holds the address."""
    for line in Path("/proc/self/maps").read_text().splitlines():
        if line.endswith(str(path)):
            start, stop = (int(a, 16) for a in line.split()[0].split("-"))
            if address is None or start <= address < stop:
                return start, stop
    return None


def prepared(kind: str, storage: str, folder, **options):
    cache = str(folder / "cache")
    common = {"batch_size": 16, "eval_batch_size": 40, "shuffle_seed": 5, "storage": storage}
    if kind == "csv":
        dm = CSVDataModule(
            path=table_file(folder),
            target="label",
            targets="class",
            categorical=["city"],
            impute="mean",
            cache_dir=cache,
            **common,
            **options,
        )
    elif kind == "diabetes":
        dm = DiabetesDataModule(cache_dir=cache, **common, **options)
    else:
        dm = CSVSeriesDataModule(
            path=series_file(folder),
            time_column="t",
            target_columns=["level"],
            lookback=12,
            horizon=3,
            val_size=30,
            test_size=30,
            cache_dir=cache,
            **common,
            **options,
        )
    dm.setup()
    return dm


@pytest.mark.parametrize("kind", ["csv", "diabetes", "series"])
def test_tables_and_series_mmap_batches_equal_memory_batches_bit_for_bit(tmp_path, kind):
    memory, mapped = prepared(kind, "memory", tmp_path), prepared(kind, "mmap", tmp_path)
    batches = [epochs_of_batches(dm) for dm in (memory, mapped)]
    assert len(batches[0]) == len(batches[1]) > 10
    for (xm, ym), (xd, yd) in zip(*batches, strict=True):
        assert xm.dtype == xd.dtype == torch.float32 and ym.dtype == yd.dtype
        assert torch.equal(xm, xd) and torch.equal(ym, yd)
    if memory.target_scaler is not None:  # learned from the same training targets
        assert all(map(torch.equal, memory.target_scaler, mapped.target_scaler))
    entries = list((tmp_path / "cache").iterdir())
    assert len(entries) == 1  # one entry: the prepared arrays of this table or series
    if kind == "series":  # the series is the file's map; every window of every split views it
        stored = entries[0] / "series.npy"
        assert np.array_equal(np.load(stored), memory.series.numpy())
        assert mapped_range(stored, mapped.series.data_ptr())
        assert mapped.series.data_ptr() == mapped.tensors["train"][0].data_ptr()
        assert not mapped_range(stored, memory.series.data_ptr())
    else:  # each split's features are rows of its own map; the labels stay in memory
        for split in ("train", "val", "test"):
            x = mapped.tensors[split][0]
            assert isinstance(x, MappedRows) and isinstance(x.array, np.memmap)
            assert str(x.array.filename) == str(entries[0] / f"{split}.npy")
            assert torch.equal(x[:], memory.tensors[split][0])


def test_prepared_arrays_are_stored_once_and_a_change_makes_a_new_entry(tmp_path):
    first = prepared("diabetes", "mmap", tmp_path)
    (entry,) = (tmp_path / "cache").iterdir()
    written = (entry / "train.npy").stat().st_mtime_ns
    prepared("diabetes", "mmap", tmp_path)  # the same arrays: the entry is read, not rewritten
    assert (entry / "train.npy").stat().st_mtime_ns == written
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [entry.name]
    other = prepared("diabetes", "mmap", tmp_path, features=["bmi", "bp"])
    assert len(list((tmp_path / "cache").iterdir())) == 2  # other arrays, another entry
    assert other.tensors["train"][0].shape[1:] == (2,) != first.tensors["train"][0].shape[1:]


def test_mmap_for_tables_without_a_cache_is_one_line_error(tmp_path):
    dm = DiabetesDataModule(storage="mmap", cache_dir=None)
    with pytest.raises(DeepmineError) as caught:
        dm.setup()
    assert "data.cache_dir" in str(caught.value) and "data.storage=memory" in caught.value.fix


def test_a_recorded_regression_run_trains_from_memory_maps(sandbox, tmp_path):
    cache = tmp_path / "cache"
    done = sandbox.train(
        "task=regression",
        "data=diabetes",
        "net=mlp",
        "debug=fast",
        "data.storage=mmap",
        f"data.cache_dir={cache}",
    )
    assert done.returncode == 0, done.stderr[-3000:]
    (run,) = sandbox.runs()
    assert run.data.params["data.storage"] == "mmap" and "test/rmse" in run.data.metrics
    assert list(cache.glob("diabetes-*/train.npy"))  # the arrays it trained from
