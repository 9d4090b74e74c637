"""A CSV prepared in chunks (`data.storage=mmap`, issue 25): the same arrays, bit for bit, as the
table read whole; the same one-line errors, also from a late chunk, with no cache entry left;
and a peak memory that does not grow with the table."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from conftest import ROOT
from deepmine.data.csv_table import CSVDataModule
from deepmine.errors import DeepmineError

#: rows per chunk in these tests: several chunks from a table of a few dozen rows
CHUNK = 7


def mixed_table(n: int = 60) -> pd.DataFrame:
    """Numeric columns with gaps, a text and a code category (codes integral in the first
    chunks, fractional later: the whole column's type decides the labels), a class target."""
    rng = np.random.default_rng(4)
    frame = pd.DataFrame(
        {
            "size": rng.normal(50, 20, n),
            "rooms": rng.integers(1, 6, n).astype(float),
            "city": rng.choice(["oslo", "rome", "lima", "kyiv"], n),
            "grade": rng.choice([1.0, 2.0, 3.0], n),
            "y": rng.choice(["cat", "dog", "emu"], n),
        }
    )
    frame.loc[[3, 17, 41, 55], "size"] = np.nan
    frame.loc[[9, 50], "rooms"] = np.nan
    frame.loc[[12, 44], "city"] = np.nan
    frame.loc[[n - 5], "grade"] = 2.5
    frame.loc[[20], "grade"] = np.nan
    return frame


def module(path: Path, storage: str, cache: Path, **options) -> CSVDataModule:
    options = {"target": "y", "targets": "class", "categorical": ["city", "grade"], **options}
    return CSVDataModule(
        path=str(path), storage=storage, cache_dir=str(cache), chunk_rows=CHUNK, **options
    )


def assert_same(memory: CSVDataModule, chunked: CSVDataModule) -> None:
    assert chunked.feature_names == memory.feature_names
    assert chunked.categories == memory.categories
    assert chunked.class_names == memory.class_names
    for split in ("train", "val", "test"):
        assert np.array_equal(chunked.rows[split], memory.rows[split])
        (xm, ym), (xc, yc) = memory.tensors[split], chunked.tensors[split]
        x = xc[:]
        assert x.dtype == xm.dtype == torch.float32 and yc.dtype == ym.dtype
        # bit for bit: the bytes, so a NaN or a -0.0 would count too
        assert x.numpy().tobytes() == xm.numpy().tobytes()
        assert yc.numpy().tobytes() == ym.numpy().tobytes()
    if memory.target_scaler is not None:
        assert all(map(torch.equal, memory.target_scaler, chunked.target_scaler))
    a, b = memory.codec(), chunked.codec()
    assert json.dumps(a.columns) == json.dumps(b.columns)
    assert json.dumps(a.references, sort_keys=True) == json.dumps(b.references, sort_keys=True)
    assert (a.class_names, a.target_names) == (b.class_names, b.target_names)


@pytest.mark.parametrize(
    "options",
    [
        {"impute": "mean"},
        {"impute": "median"},
        {"impute": "drop", "test_size": 9, "val_size": 0},
        {"impute": "mean", "targets": "value", "target": "size2", "categorical": ["city"]},
        {"impute": "median", "split_column": "part"},
        {"impute": "drop", "target": "code", "categorical": ["city"]},
    ],
    ids=["mean", "median", "drop", "value-target", "split-column", "code-target"],
)
def test_chunked_preparation_equals_the_whole_read_bit_for_bit(tmp_path, options):
    frame = mixed_table()
    frame["size2"] = frame["rooms"].fillna(2.0) * 1.5 + np.arange(len(frame)) / 7
    frame["part"] = np.resize(["train", "train", "val", "test", "train"], len(frame))
    if "split_column" not in options:
        frame = frame.drop(columns="part")
    if options.get("target") == "size2":
        frame = frame.drop(columns=["y", "grade"])
    elif options.get("target") == "code":  # integers, floats in the chunk of its gap: 2 < 10
        frame["code"] = pd.array(np.resize([10, 2, 1, 2], len(frame)), dtype="Int64")
        frame.loc[30, "code"] = pd.NA  # written as 10, 2, ..., and one empty field
        frame = frame.drop(columns=["y", "grade", "size2"])
    else:
        frame = frame.drop(columns="size2")
    path = tmp_path / "t.csv"
    frame.to_csv(path, index=False)
    memory = module(path, "memory", tmp_path / "cache", **options)
    chunked = module(path, "mmap", tmp_path / "cache", **options)
    memory.setup()
    chunked.setup()
    assert len(frame) > 5 * CHUNK
    assert_same(memory, chunked)
    if options.get("target") == "code":
        assert chunked.class_names == ("1", "2", "10")
    (entry,) = (tmp_path / "cache").iterdir()  # one entry, complete, no temporary left
    assert {f"{s}.npy" for s in ("train", "val", "test")} <= {p.name for p in entry.iterdir()}


@pytest.mark.parametrize(("impute", "label"), [("mean", "grade=2.0"), ("drop", "grade=2")])
def test_the_label_rule_follows_the_whole_column(tmp_path, impute, label):
    """`grade` reads as integers in some chunks and as floats in those with its gap or its 2.5:
    the whole file holds floats, so labels read `2.0` while 2.5 is among them and `2` once
    `impute=drop` has dropped its row (and the gap's), as one read of the file gives."""
    path = tmp_path / "t.csv"
    mixed_table().to_csv(path, index=False)
    chunked = module(path, "mmap", tmp_path / "cache", impute=impute)
    chunked.setup()
    grades = [name for name in chunked.feature_names if name.startswith("grade=")]
    other = "grade=2" if label == "grade=2.0" else "grade=2.0"
    assert label in grades and other not in grades


def test_a_changed_file_or_option_is_prepared_again_and_the_chunk_size_is_not(tmp_path):
    path, cache = tmp_path / "t.csv", tmp_path / "cache"
    mixed_table().to_csv(path, index=False)
    module(path, "mmap", cache, impute="mean").setup()
    (entry,) = cache.iterdir()
    written = (entry / "train.npy").stat().st_mtime_ns
    again = CSVDataModule(
        path=str(path), target="y", targets="class", categorical=["city", "grade"],
        impute="mean", storage="mmap", cache_dir=str(cache), chunk_rows=1000,
    )  # fmt: skip
    again.setup()  # same bytes, same options, another chunk size: the entry is read
    assert [p.name for p in cache.iterdir()] == [entry.name]
    assert (entry / "train.npy").stat().st_mtime_ns == written
    module(path, "mmap", cache, impute="median").setup()
    assert len(list(cache.iterdir())) == 2
    frame = mixed_table()
    frame.loc[0, "size"] = 1.0
    frame.to_csv(path, index=False)
    module(path, "mmap", cache, impute="median").setup()
    assert len(list(cache.iterdir())) == 3


def late_problem(frame: pd.DataFrame, kind: str) -> dict:
    """Spoil row 50 (the eighth chunk) of `frame`; the options that meet the problem."""
    if kind == "word":
        frame["size"] = frame["size"].astype(object)
        frame.loc[50, "size"] = "n/a?"
        frame.loc[58, "size"] = "twelve"  # in the next chunk: counted too
        return {"impute": "mean"}
    if kind == "gap":
        return {}  # the gaps of mixed_table, no impute
    if kind == "target-gap":
        frame.loc[50, "y"] = np.nan
        return {"impute": "mean"}
    if kind == "single-class":
        frame["y"] = "cat"
        return {"impute": "mean"}
    if kind == "fractional":
        frame["y"] = 1.0
        frame.loc[50, "y"] = 0.5
        return {"impute": "mean"}
    if kind == "empty-split":
        frame["part"] = "train"
        frame.loc[51, "part"] = "test"
        return {"impute": "mean", "split_column": "part"}
    frame["part"] = "train"
    frame.loc[[51, 52], "part"] = ["test", "VAL?"]
    return {"impute": "mean", "split_column": "part"}


@pytest.mark.parametrize(
    "kind", ["word", "gap", "target-gap", "single-class", "fractional", "empty-split", "bad-split"]
)
def test_a_late_problem_is_the_same_one_line_error_and_leaves_no_entry(tmp_path, kind):
    frame = mixed_table()
    options = late_problem(frame, kind)
    path = tmp_path / "bad.csv"
    frame.to_csv(path, index=False)
    errors = []
    for storage in ("memory", "mmap"):
        with pytest.raises(DeepmineError) as caught:
            module(path, storage, tmp_path / "cache", **options).setup()
        errors.append(str(caught.value))
    memory, chunked = errors
    assert chunked == memory  # the count over the whole file, the first example, its row
    assert "\n" not in chunked and str(path) in chunked
    assert list((tmp_path / "cache").glob("*")) == [] or not any(
        p.iterdir() for p in (tmp_path / "cache").glob("*")
    )
    if kind == "word":
        assert "'size'" in chunked and "2 non-numeric" in chunked and "row 50" in chunked


def test_an_interrupt_while_writing_leaves_no_entry(tmp_path, monkeypatch):
    from deepmine.data import csv_chunks

    path = tmp_path / "t.csv"
    mixed_table().to_csv(path, index=False)

    def interrupted(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(csv_chunks, "_array_pass", interrupted)
    with pytest.raises(KeyboardInterrupt):
        module(path, "mmap", tmp_path / "cache", impute="mean").setup()
    assert list((tmp_path / "cache").iterdir()) == []
    monkeypatch.undo()
    module(path, "mmap", tmp_path / "cache", impute="mean").setup()  # then prepared in full


@pytest.mark.parametrize("bad", [0, -5, 2.5, "many"])
def test_chunk_rows_must_be_a_positive_count(tmp_path, bad):
    path = tmp_path / "t.csv"
    mixed_table().to_csv(path, index=False)
    with pytest.raises(DeepmineError) as caught:
        module(path, "mmap", tmp_path / "cache").__class__(
            path=str(path), target="y", targets="class", chunk_rows=bad
        )
    assert "data.chunk_rows" in str(caught.value)


def test_the_config_names_the_chunk_size_and_it_reaches_the_module(tmp_path):
    GlobalHydra.instance().clear()
    with initialize_config_dir(str(ROOT / "conf"), version_base=None):
        cfg = compose("train", overrides=["data=csv", "data.chunk_rows=123"])
    assert cfg.data.chunk_rows == 123
    text = (ROOT / "conf" / "data" / "csv.yaml").read_text()
    assert "# rows read at a time" in text and "\nchunk_rows:" in text


#: the measuring child: prepares a table (chunked or whole) and prints its peak RSS growth.
#: The kernel's high-water mark is reset before the measured preparation (`clear_refs` 5,
#: Linux >= 4.0), so an earlier peak (imports, the warm-up) cannot hide the growth: a process's
#: `ru_maxrss` keeps its lifetime's peak, which made a whole read measure 0 in one run.
MEASURE = textwrap.dedent(
    """
    import re, sys
    from deepmine.data.csv_table import CSVDataModule
    from sklearn.model_selection import train_test_split  # imported before the baseline
    path, storage, cache, warm = sys.argv[1:5]
    def prepared(p):
        dm = CSVDataModule(path=p, target="y", targets="class", storage=storage,
                           cache_dir=cache, chunk_rows=500)
        dm.setup()
        return dm
    def status(key):
        text = open("/proc/self/status").read()
        return int(re.search(key + r":\\s+(\\d+) kB", text).group(1)) * 1024
    prepared(warm)  # lazily imported code and first allocations, before the baseline
    with open("/proc/self/clear_refs", "w") as refs:
        refs.write("5")  # the peak (VmHWM) starts again from the current size
    before = status("VmRSS")
    dm = prepared(path)
    print(status("VmHWM") - before, len(dm.rows["train"]))
    """
)


def peak_growth(path: Path, storage: str, cache: Path, warm: Path) -> int:
    proc = subprocess.run(
        [sys.executable, "-c", MEASURE, str(path), storage, str(cache), str(warm)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return int(proc.stdout.split()[0])


def write_wide_table(path: Path, rows: int, columns: int = 40) -> None:
    """A table of `rows` rows of `columns` numbers and a class, written fast: one block of
    distinct rows repeated (the values do not matter here, only the volume)."""
    rng = np.random.default_rng(0)
    block = rng.normal(size=(1000, columns)).round(6)
    labels = np.resize(["a", "b", "c"], 1000)
    lines = "".join(
        ",".join(f"{v:.6f}" for v in row) + f",{y}\n" for row, y in zip(block, labels, strict=True)
    )
    header = ",".join(f"c{k}" for k in range(columns)) + ",y\n"
    with path.open("w") as handle:
        handle.write(header)
        for _ in range(rows // 1000):
            handle.write(lines)


def test_peak_memory_does_not_grow_with_the_table(tmp_path):
    """A ~48 MB table of 160 columns: read whole, its float64 features alone take 38 MB and the
    parse several times that; prepared in chunks, the process grows by a small fraction of it.

    What does grow with the table is a few values per row (its label, its split: ~140 bytes a
    row at most, measured), whatever its width: hence a wide table here."""
    rows, columns = 30_000, 160
    big, warm = tmp_path / "big.csv", tmp_path / "warm.csv"
    write_wide_table(big, rows, columns)
    write_wide_table(warm, 2_000, columns)
    decoded = rows * columns * 8
    assert big.stat().st_size > 45e6
    chunked = peak_growth(big, "mmap", tmp_path / "cache", warm)
    # a cache of its own: the chunked run's entry must not spare it the whole read
    whole = peak_growth(big, "memory", tmp_path / "cache-memory", warm)
    assert whole > decoded  # the measure sees a whole read
    assert chunked < decoded / 3 and chunked < whole / 10, (chunked, whole)


def test_an_unwritable_cache_and_a_wrong_configured_shape_are_one_line_errors(tmp_path):
    path = tmp_path / "t.csv"
    mixed_table().to_csv(path, index=False)
    blocked = tmp_path / "file"
    blocked.write_text("not a folder")
    with pytest.raises(DeepmineError) as caught:
        module(path, "mmap", blocked / "cache", impute="mean").setup()
    assert "could not write" in str(caught.value) and "data.cache_dir" in caught.value.fix
    module(path, "mmap", tmp_path / "cache", impute="mean").setup()  # cached now
    with pytest.raises(DeepmineError) as caught:  # met on a cache hit: still checked
        module(path, "mmap", tmp_path / "cache", impute="mean", num_classes=5).setup()
    assert "data.num_classes=5" in str(caught.value)
