"""Tabular datamodules: scikit-learn's diabetes set and a user's CSV, read by real pandas and
split by real scikit-learn, on tiny tables written per test."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.utils import instantiate
from sklearn.datasets import load_diabetes

from conftest import ROOT
from deepmine.config import register_resolvers
from deepmine.data.csv_table import CSVDataModule
from deepmine.data.diabetes import DiabetesDataModule
from deepmine.errors import DeepmineError

register_resolvers()
RAW = load_diabetes(scaled=False)


def write_csv(tmp_path: Path, frame: pd.DataFrame | dict, name: str = "table.csv") -> Path:
    path = tmp_path / name
    pd.DataFrame(frame).to_csv(path, index=False)
    return path


def classes_table(n_per_class: int = 30) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    labels = np.repeat(["cat", "dog", "emu"], n_per_class)
    return pd.DataFrame(
        {"a": rng.normal(size=len(labels)), "b": rng.normal(5, 2, size=len(labels)), "y": labels}
    )


def csv_module(path: Path, **options) -> CSVDataModule:
    options.setdefault("target", "y")
    options.setdefault("targets", "class")
    dm = CSVDataModule(path=str(path), **options)
    dm.setup()
    return dm


# --- diabetes -----------------------------------------------------------------------------------


def test_diabetes_shapes_and_train_only_standardization():
    dm = DiabetesDataModule(test_size=0.2, val_size=0.1, split_seed=3)
    dm.setup()
    sizes = {split: len(x) for split, (x, _) in dm.tensors.items()}
    assert sizes == {"train": 310, "val": 44, "test": 88}
    assert dm.shapes() == {"input_shape": [10], "num_outputs": 1, "num_targets": 1}
    x_train, y_train = dm.tensors["train"]
    assert x_train.dtype == torch.float32 and y_train.shape == (310, 1)
    torch.testing.assert_close(x_train.mean(0), torch.zeros(10), atol=1e-5, rtol=0)
    torch.testing.assert_close(x_train.std(0), torch.ones(10), atol=1e-5, rtol=0)
    for split in ("val", "test"):
        x = dm.tensors[split][0]
        assert (x.mean(0).abs() > 1e-3).all(), f"{split} looks standardized on its own"
    # targets stay in their own units; the scaler is fitted on the training rows only
    assert torch.equal(
        dm.tensors["test"][1][:, 0], torch.tensor(RAW.target[dm.rows["test"]], dtype=torch.float32)
    )
    mean, std = dm.target_scaler
    assert mean.item() == pytest.approx(RAW.target[dm.rows["train"]].mean(), rel=1e-5)
    assert std.item() == pytest.approx(RAW.target[dm.rows["train"]].std(ddof=1), rel=1e-5)
    rows = np.concatenate(list(dm.rows.values()))
    assert sorted(rows.tolist()) == list(range(442))


def test_diabetes_tail_split_tests_on_the_last_rows_in_order():
    dm = DiabetesDataModule(split="tail", test_size=20, val_size=40, split_seed=1)
    dm.setup()
    assert dm.rows["test"].tolist() == list(range(422, 442))
    expected = torch.tensor(RAW.target[-20:], dtype=torch.float32)
    assert torch.equal(dm.tensors["test"][1][:, 0], expected)
    assert len(dm.rows["val"]) == 40 and dm.rows["val"].max() < 422
    other = DiabetesDataModule(split="tail", test_size=20, val_size=40, split_seed=2)
    other.setup()
    assert not np.array_equal(dm.rows["val"], other.rows["val"])
    assert np.array_equal(dm.rows["test"], other.rows["test"])


def test_diabetes_bmi_alone_is_the_raw_column_standardized():
    dm = DiabetesDataModule(split="tail", test_size=20, features=["bmi"], input_shape=[1])
    dm.setup()
    bmi = torch.tensor(RAW.data[:, RAW.feature_names.index("bmi")], dtype=torch.float32)
    train = bmi[torch.as_tensor(dm.rows["train"])]
    expected = (bmi[422:] - train.mean()) / train.std()
    assert dm.shapes()["input_shape"] == [1]
    torch.testing.assert_close(dm.tensors["test"][0][:, 0], expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    ("options", "words"),
    [
        ({"features": ["bmi", "weight"]}, ["'weight'", "bmi", "s6"]),
        ({"features": ["bmi"]}, ["input_shape=[1]"]),
        ({"split": "head"}, ["data.split='head'", "tail"]),
        ({"test_size": 442}, ["data.test_size=442", "442"]),
        ({"test_size": 0.6, "val_size": 0.5}, ["no training rows"]),
    ],
)
def test_diabetes_bad_options_are_one_line_errors(options, words):
    options.setdefault("input_shape", [10])
    with pytest.raises(DeepmineError) as caught:
        DiabetesDataModule(**options).setup()
    assert all(w in str(caught.value) for w in words), str(caught.value)


# --- CSV: classification and regression --------------------------------------------------------


def test_csv_string_labels_are_classes_with_a_stratified_split(tmp_path):
    path = write_csv(tmp_path, classes_table())
    dm = csv_module(path, test_size=0.2, val_size=0.2, split_seed=5)
    assert dm.class_names == ("cat", "dog", "emu")
    assert dm.shapes() == {"input_shape": [2], "num_outputs": 3, "num_classes": 3}
    for split, (x, y) in dm.tensors.items():
        assert y.dtype == torch.int64 and y.shape == (len(x),)
        counts = torch.bincount(y, minlength=3).tolist()
        assert counts == ([18] * 3 if split == "train" else [6] * 3), split
    labels = pd.read_csv(path)["y"].to_numpy()
    y_test = dm.tensors["test"][1].numpy()
    assert (np.array(dm.class_names)[y_test] == labels[dm.rows["test"]]).all()


def test_csv_integer_labels_sort_numerically(tmp_path):
    table = classes_table(10).assign(y=np.repeat([10, 2, 1], 10))
    dm = csv_module(write_csv(tmp_path, table), test_size=6, val_size=6)
    assert dm.class_names == ("1", "2", "10")
    assert dm.tensors["train"][1].dtype == torch.int64


def test_csv_regression_keeps_the_target_in_its_units(tmp_path):
    rng = np.random.default_rng(1)
    table = pd.DataFrame({"x1": rng.normal(size=50), "x2": rng.uniform(0, 100, size=50)})
    table["price"] = 1000 + 50 * table["x1"]
    dm = csv_module(write_csv(tmp_path, table), target="price", targets="value", test_size=10)
    assert dm.shapes() == {"input_shape": [2], "num_outputs": 1, "num_targets": 1}
    x_train, y_train = dm.tensors["train"]
    assert y_train.dtype == torch.float32 and y_train.shape == (len(x_train), 1)
    expected = table["price"].to_numpy()[dm.rows["test"]]
    assert np.allclose(dm.tensors["test"][1][:, 0].numpy(), expected)
    assert dm.target_scaler[0].item() == pytest.approx(
        table["price"].to_numpy()[dm.rows["train"]].mean(), rel=1e-6
    )
    torch.testing.assert_close(x_train.mean(0), torch.zeros(2), atol=1e-5, rtol=0)
    assert dm.targets == "value" and dm.dvc_tracked is False


def test_csv_one_hot_uses_training_categories_and_the_split_column(tmp_path):
    table = pd.DataFrame(
        {
            "size": [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0],
            "color": ["red", "blue", "red", "blue", "red", "green", "blue"],
            "y": [0, 1, 0, 1, 0, 1, 1],
            "part": ["train", "train", "train", "TRAIN", "val", "test", "test"],
        }
    )
    dm = csv_module(
        write_csv(tmp_path, table), categorical=["color"], split_column="part", targets="class"
    )
    assert {s: r.tolist() for s, r in dm.rows.items()} == {
        "train": [0, 1, 2, 3],
        "val": [4],
        "test": [5, 6],
    }
    assert dm.feature_names == ["size", "color=blue", "color=red"]
    x_test = dm.tensors["test"][0]
    # green never occurs in training: an all-zero row; blue is its own 0/1 column, unscaled
    assert x_test[:, 1:].tolist() == [[0.0, 0.0], [1.0, 0.0]]
    sizes = torch.tensor([1.0, 2.0, 3.0, 4.0])
    assert x_test[0, 0].item() == pytest.approx(((6.0 - sizes.mean()) / sizes.std()).item())


def test_csv_impute_mean_and_median_use_training_rows_only(tmp_path):
    table = pd.DataFrame(
        {
            "v": [1.0, 2.0, 9.0, None, 100.0, 200.0],
            "y": [0, 1, 0, 1, 0, 1],
            "part": ["train", "train", "train", "val", "test", "test"],
        }
    )
    path = write_csv(tmp_path, table)
    mean = csv_module(path, impute="mean", split_column="part")
    # the gap is filled with the training mean, which standardizes to exactly zero (the mean of
    # all rows, 62.4, would not)
    assert mean.tensors["val"][0].tolist() == [[0.0]]
    median = csv_module(path, impute="median", split_column="part")
    train = torch.tensor([1.0, 2.0, 9.0])
    expected = ((2.0 - train.mean()) / train.std()).item()
    assert median.tensors["val"][0][0, 0].item() == pytest.approx(expected)


def test_csv_impute_drop_drops_rows_before_splitting(tmp_path):
    table = classes_table(10)
    table.loc[[0, 11, 22], "a"] = None
    dm = csv_module(write_csv(tmp_path, table), impute="drop", test_size=0.25, val_size=0.25)
    assert sum(len(r) for r in dm.rows.values()) == 27
    assert len(dm.rows["test"]) == round(0.25 * 27)


def test_csv_source_tags_and_dvc_tracking(tmp_path, monkeypatch):
    path = write_csv(tmp_path, classes_table(5))
    dm = CSVDataModule(path=str(path), target="y", targets="class")
    assert dm.source_tags() == {
        "deepmine.data.csv.path": str(path.resolve()),
        "deepmine.data.csv.md5": hashlib.md5(path.read_bytes()).hexdigest(),
    }
    assert dm.dvc_tracked is False
    # inside the project's data/ folder, and a relative path is read from the project root
    monkeypatch.setenv("DEEPMINE_ROOT", str(tmp_path))
    (tmp_path / "data").mkdir()
    write_csv(tmp_path / "data", classes_table(5), "inner.csv")
    inner = CSVDataModule(path="data/inner.csv", target="y", targets="class")
    assert inner.path == (tmp_path / "data" / "inner.csv").resolve()
    assert inner.dvc_tracked is True


# --- CSV: bad input ----------------------------------------------------------------------------


def bad_tables() -> list:
    base = classes_table(5)
    words = pd.DataFrame({"a": ["1", "2", "x7", "4", "5", "6"], "y": [0, 1] * 3})
    gaps = base.copy()
    gaps.loc[[1, 2], "a"] = None
    gaps.loc[3, "b"] = None
    split_no_val = base.assign(part=["train"] * 10 + ["test"] * 5)
    return [
        (base, {"target": "label"}, ["target", "'label'", "a, b, y"]),
        (base, {"features": ["a", "c"]}, ["data.features", "'c'"]),
        (base, {"categorical": ["color"]}, ["data.categorical", "'color'"]),
        (base, {"features": ["a", "y"]}, ["'y'", "not features"]),
        (words, {}, ["'a'", "non-numeric", "'x7'", "data.categorical"]),
        (gaps, {}, ["missing values", "'a': 2", "'b': 1", "data.impute="]),
        (base.assign(y="same"), {}, ["single class", "'same'", "15 rows"]),
        (base.assign(y="word"), {"targets": "value"}, ["'y'", "non-numeric", "targets=class"]),
        (base.assign(y=base["a"]), {}, ["fractional", "data.targets=value"]),
        (base, {"test_size": 15}, ["data.test_size=15", "15"]),
        (base, {"test_size": 0.5, "val_size": 0.5}, ["no training rows"]),
        (split_no_val, {"split_column": "part"}, ["'part'", "no 'val' rows"]),
        (base.assign(part="dev"), {"split_column": "part"}, ["'dev'", "train/val/test"]),
        (base, {"num_classes": 4}, ["data.num_classes=4", "3"]),
        (base, {"targets": "auto"}, ["data.targets=auto", "data.targets=class"]),
        (base, {"impute": "zero"}, ["data.impute='zero'", "median"]),
    ]


@pytest.mark.parametrize(("table", "options", "words"), bad_tables())
def test_csv_bad_input_is_a_one_line_error(tmp_path, table, options, words):
    path = write_csv(tmp_path, table)
    with pytest.raises(DeepmineError) as caught:
        csv_module(path, **options)
    message = str(caught.value)
    assert "\n" not in message and "Fix:" in message
    assert all(w in message for w in words), message


def test_csv_missing_and_empty_files_are_one_line_errors(tmp_path):
    with pytest.raises(DeepmineError, match=r"nope\.csv .*does not exist"):
        csv_module(tmp_path / "nope.csv")
    (tmp_path / "blank.csv").write_text("")
    (tmp_path / "header.csv").write_text("a,b,y\n")
    for name in ("blank.csv", "header.csv"):
        with pytest.raises(DeepmineError, match=f"{re.escape(name)} has no rows"):
            csv_module(tmp_path / name)
    table = classes_table(2).assign(a=None)
    with pytest.raises(DeepmineError, match=r"no rows left after data\.impute=drop"):
        csv_module(write_csv(tmp_path, table), impute="drop")


# --- the configs -------------------------------------------------------------------------------


def compose_data(tmp_path: Path, *overrides: str):
    GlobalHydra.instance().clear()
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        return compose("train", overrides=[f"paths.output_dir={tmp_path}", *overrides])


def test_diabetes_config_composes_and_instantiates(tmp_path):
    cfg = compose_data(tmp_path, "data=diabetes", "seed=7")
    dm = instantiate(cfg.data)
    assert isinstance(dm, DiabetesDataModule) and dm.shuffle_seed == 7
    assert dm.shapes() == {
        "input_shape": list(cfg.data.input_shape),
        "num_outputs": cfg.data.num_outputs,
        "num_targets": cfg.data.num_targets,
    }
    tail = compose_data(
        tmp_path, "data=diabetes", "data.split=tail", "data.test_size=20",
        "data.features=[bmi]", "data.input_shape=[1]",
    )  # fmt: skip
    dm = instantiate(tail.data)
    dm.setup()
    assert dm.rows["test"].tolist() == list(range(422, 442))


def test_csv_config_composes_and_instantiates(tmp_path):
    path = write_csv(tmp_path, classes_table(10).assign(y=np.arange(30.0)))
    cfg = compose_data(
        tmp_path, "data=csv", f"data.path={path}", "data.target=y", "data.targets=value"
    )
    assert cfg.data.input_shape is None and cfg.data.targets == "value"
    dm = instantiate(cfg.data)
    assert isinstance(dm, CSVDataModule) and dm.shuffle_seed == cfg.seed
    assert dm.shapes() == {"input_shape": [2], "num_outputs": 1, "num_targets": 1}
    x, y = next(iter(dm.train_dataloader()))
    n_train = min(cfg.data.batch_size, len(dm.rows["train"]))
    assert x.shape == (n_train, 2) and y.shape == (n_train, 1)


# --- the delimiter (data.sep) ------------------------------------------------------------------


def uci_style(tmp_path: Path, sep: str, name: str = "uci.csv") -> Path:
    """`classes_table` written as UCI's wine quality is: quoted header names with spaces,
    unquoted numbers, the given delimiter."""
    import csv

    path = tmp_path / name
    table = classes_table(10).rename(columns={"a": "fixed acidity", "b": "volatile acidity"})
    table.to_csv(path, sep=sep, index=False, quoting=csv.QUOTE_NONNUMERIC)
    return path


@pytest.mark.parametrize("sep", [",", ";", "\t"])
def test_csv_sep_auto_reads_each_delimiter_as_the_comma_table(tmp_path, sep):
    comma = csv_module(write_csv(tmp_path, classes_table(10)))
    path = uci_style(tmp_path, sep)
    assert path.read_text().startswith(f'"fixed acidity"{sep}"volatile acidity"{sep}"y"')
    dm = csv_module(path)  # data.sep=auto, the default
    assert dm.delimiter == sep
    assert dm.feature_names == ["fixed acidity", "volatile acidity"]
    for split, (x, y) in comma.tensors.items():
        assert torch.equal(dm.tensors[split][0], x) and torch.equal(dm.tensors[split][1], y)
    # what `deepmine train` adds to the run's tags: the delimiter the file was read with
    assert dm.read_tags() == {"deepmine.data.csv.sep": {"\t": "\\t"}.get(sep, sep)}


@pytest.mark.parametrize(("given", "expected"), [(";", ";"), ("\\t", "\t"), ("tab", "\t")])
def test_csv_explicit_sep_is_used_and_a_tab_can_be_typed(tmp_path, given, expected):
    path = uci_style(tmp_path, expected)
    assert csv_module(path, sep=given).delimiter == expected


def test_csv_explicit_wrong_sep_names_the_header_delimiter_and_the_fix(tmp_path):
    path = uci_style(tmp_path, ";")
    with pytest.raises(DeepmineError) as caught:
        csv_module(path, sep=",")
    message = str(caught.value)
    assert "\n" not in message
    assert "data.sep=','" in message and "single column" in message
    assert "separated by ';'" in message and "Fix: e.g. data.sep=';'" in message
    tabbed = uci_style(tmp_path, "\t", "tabbed.csv")
    with pytest.raises(DeepmineError, match=r"separated by '\\t'.*Fix: e\.g\. data\.sep='\\t'"):
        csv_module(tabbed, sep=";")


def test_csv_sep_outside_the_choices_is_refused(tmp_path):
    with pytest.raises(DeepmineError, match=r"data\.sep='\|' is not one of auto.*data\.sep=auto"):
        csv_module(write_csv(tmp_path, classes_table(5)), sep="|")


def test_sep_guess_reads_only_the_head_and_handles_edge_cases(tmp_path):
    from deepmine.data import csv_sep

    assert csv_sep.guess("only\n1\n2\n") == ","  # one column: no delimiter to find
    assert csv_sep.guess("") == ","
    # comma decimals in a semicolon table (a spreadsheet of a comma-decimal locale)
    assert csv_sep.guess('"a";"b"\n7,4;0,70\n7,8;0,88\n') == ";"
    # a text field holding the other delimiter does not fool it
    assert csv_sep.guess('name,score\n"x;y",1\n"z;w",2\n') == ","
    # a file much larger than the sample: the guess reads the head, the C parser the rest
    big = tmp_path / "big.csv"
    rows = "".join(f"{i};{i * 0.5}\n" for i in range(40_000))
    big.write_text("step;value\n" + rows)
    assert big.stat().st_size > 4 * csv_sep.SAMPLE_BYTES
    assert csv_sep.guess_file(big) == ";"
    from deepmine.data.tables import read_table

    frame = read_table(big, csv_sep.resolved(big, "auto"))
    assert list(frame.columns) == ["step", "value"] and len(frame) == 40_000


def test_csv_config_sep_composes_for_tables_and_series(tmp_path):
    path = uci_style(tmp_path, ";")
    cfg = compose_data(tmp_path, "data=csv", f"data.path={path}", "data.target=y",
                       "data.targets=class", "data.sep=';'")  # fmt: skip
    assert cfg.data.sep == ";"
    dm = instantiate(cfg.data)
    dm.setup()
    assert dm.delimiter == ";"
    assert compose_data(tmp_path, "data=csv").data.sep == "auto"
    assert compose_data(tmp_path, "data=series_csv").data.sep == "auto"
