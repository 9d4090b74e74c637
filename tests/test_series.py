"""Forecasting data: statsmodels' series written deterministically, cut into windows that never
cross a split boundary, standardized with training statistics only; the data configs compose
and load the real files of data/series/."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.utils import instantiate

from conftest import ROOT
from deepmine.config import register_resolvers
from deepmine.data.series import CSVSeriesDataModule, SeriesDataModule
from deepmine.data.series_export import SERIES, series_text, write_series
from deepmine.errors import DeepmineError

SERIES_DIR = ROOT / "data" / "series"
LENGTHS = {"sunspots": 309, "co2": 526, "elnino": 732}


def write_csv(path: Path, columns: dict[str, list], time: list | None = None) -> Path:
    """A CSV with a `date` column of consecutive months (or `time`) and `columns`."""
    n = len(next(iter(columns.values())))
    dates = (
        time if time is not None else [f"{2000 + i // 12}-{i % 12 + 1:02d}-01" for i in range(n)]
    )
    lines = [",".join(["date", *columns])]
    lines += [",".join([str(dates[i]), *(str(v[i]) for v in columns.values())]) for i in range(n)]
    path.write_text("\n".join(lines) + "\n")
    return path


def step_series(tmp_path: Path, n: int = 120, **kwargs) -> CSVSeriesDataModule:
    """A series whose value is its own step index: every window says which steps it holds."""
    path = write_csv(tmp_path / "steps.csv", {"step": list(range(n))})
    options = dict(lookback=5, horizon=3, val_size=20, test_size=20, normalize="none")
    options.update(kwargs)
    dm = CSVSeriesDataModule(str(path), "date", ["step"], **options)
    dm.setup()
    return dm


# -- the files ------------------------------------------------------------------------------


def test_series_files_are_byte_identical_when_written_twice(tmp_path):
    first, second = write_series(tmp_path / "a"), write_series(tmp_path / "b")
    assert [p.name for p in first] == [f"{name}.csv" for name in SERIES]
    for a, b in zip(first, second, strict=True):
        assert a.read_bytes() == b.read_bytes(), a.name
        assert b"\r" not in a.read_bytes() and a.read_bytes().endswith(b"\n")
    for name, length in LENGTHS.items():
        lines = (tmp_path / "a" / f"{name}.csv").read_text().splitlines()
        assert len(lines) == length + 1, name
        assert lines[0].startswith("date,")


def test_series_files_hold_the_statsmodels_values():
    sunspots = series_text("sunspots").splitlines()
    assert sunspots[:2] == ["date,SUNACTIVITY", "1700-01-01,5.0"]
    assert sunspots[-1] == "2008-01-01,2.9"
    elnino = series_text("elnino").splitlines()
    assert elnino[:3] == ["date,sst", "1950-01-01,23.11", "1950-02-01,24.2"]
    assert elnino[-1] == "2010-12-01,22.07"
    co2 = dict(line.split(",") for line in series_text("co2").splitlines()[1:])
    # 1958-06 has no weekly value: the mean of its neighbouring months
    assert float(co2["1958-06-01"]) == pytest.approx((float(co2["1958-05-01"]) + 315.625) / 2)
    assert co2["1958-07-01"] == "315.625"


def test_checkout_data_holds_the_written_series():
    for name in SERIES:
        assert (SERIES_DIR / f"{name}.csv").read_text() == series_text(name), name


# -- windows and splits ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("lookback", "horizon", "val_size", "test_size"),
    [(1, 1, 10, 10), (5, 3, 20, 20), (12, 6, 0.2, 0.15), (30, 20, 20, 25), (7, 1, 1, 1)],
)
def test_no_window_crosses_a_split_boundary(tmp_path, lookback, horizon, val_size, test_size):
    dm = step_series(
        tmp_path, 120, lookback=lookback, horizon=horizon, val_size=val_size, test_size=test_size
    )
    bounds = dm.split_bounds
    assert bounds["train"][0] == 0 and bounds["test"][1] == 120
    assert bounds["train"][1] == bounds["val"][0] and bounds["val"][1] == bounds["test"][0]
    for split, (start, stop) in bounds.items():
        x, y = dm.tensors[split]
        origins = dm.window_origins[split]
        inputs, targets = x[..., 0].long(), y[..., 0].long()  # values are step indices
        assert torch.equal(targets[:, 0], origins)
        assert bool(((targets >= start) & (targets < stop)).all()), split
        assert bool((inputs < origins[:, None]).all()) and bool((inputs >= 0).all()), split
        assert inputs.shape == (len(origins), lookback) and targets.shape[1] == horizon
    assert int(dm.tensors["train"][1].max()) < bounds["val"][0]
    # every origin whose horizon fits in the test part, stride 1
    test_start, test_stop = bounds["test"]
    assert dm.window_origins["test"].tolist() == list(range(test_start, test_stop - horizon + 1))


def test_windows_equal_per_sample_slicing_of_the_series():
    dm = SeriesDataModule(
        "co2", str(SERIES_DIR), lookback=36, horizon=12, val_size=60, test_size=72, season=12
    )
    dm.setup()
    series = dm.series
    mean, std = dm.transform.mean, dm.transform.std
    for split in ("train", "val", "test"):
        x, y = dm.normalized(split)
        for i in (0, 7, len(x) - 1):
            t = int(dm.window_origins[split][i])
            assert torch.equal(y[i], series[t : t + 12])
            assert torch.allclose(x[i], (series[t - 36 : t] - mean) / std)
    assert x.dtype == torch.float32 and y.dtype == torch.float32
    # windows are views of the one series tensor, not copies
    assert (
        dm.tensors["train"][0].untyped_storage().data_ptr() == series.untyped_storage().data_ptr()
    )


def test_scaler_is_fitted_on_the_training_part_only(tmp_path):
    values = [float(v) for v in np.sin(np.arange(150) / 3.0) * 10 + 50]
    first = CSVSeriesDataModule(
        str(write_csv(tmp_path / "a.csv", {"v": values})),
        "date",
        ["v"],
        lookback=8,
        horizon=4,
        val_size=25,
        test_size=25,
    )
    changed = values.copy()
    changed[140] = 1e6  # a test step
    changed[110] = -1e6  # a validation step
    second = CSVSeriesDataModule(
        str(write_csv(tmp_path / "b.csv", {"v": changed})),
        "date",
        ["v"],
        lookback=8,
        horizon=4,
        val_size=25,
        test_size=25,
    )
    for dm in (first, second):
        dm.setup()
    assert torch.equal(first.transform.mean, second.transform.mean)
    assert torch.equal(first.transform.std, second.transform.std)
    assert all(
        torch.equal(a, b) for a, b in zip(first.target_scaler, second.target_scaler, strict=True)
    )
    for (xa, ya), (xb, yb) in zip(first.train_dataloader(), second.train_dataloader(), strict=True):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    assert not torch.equal(first.tensors["test"][1], second.tensors["test"][1])


def test_multivariate_csv_inputs_and_targets(tmp_path):
    path = write_csv(
        tmp_path / "m.csv",
        {"a": list(range(60)), "b": [2 * i for i in range(60)], "c": [3 * i for i in range(60)]},
    )
    dm = CSVSeriesDataModule(
        str(path),
        "date",
        ["c"],
        input_columns=["a", "b"],
        lookback=4,
        horizon=2,
        val_size=10,
        test_size=10,
        normalize="none",
    )
    assert dm.shapes() == {
        "input_shape": [4, 2],
        "num_targets": 1,
        "num_outputs": 2,
        "horizon": 2,
        "lookback": 4,
    }
    x, y = dm.tensors["test"]
    t = int(dm.window_origins["test"][0])
    assert x[0].tolist() == [[i, 2 * i] for i in range(t - 4, t)]
    assert y[0, :, 0].tolist() == [3 * t, 3 * (t + 1)]
    assert dm.target_columns == ["c"] and dm.input_columns == ["a", "b"]


def test_csv_tracking_and_source_tags(tmp_path):
    options = dict(lookback=3, horizon=2, val_size=5, test_size=5)
    inside = CSVSeriesDataModule(str(SERIES_DIR / "co2.csv"), "date", ["co2"], **options)
    assert inside.dvc_tracked and not CSVSeriesDataModule.dvc_tracked
    outside = write_csv(tmp_path / "s.csv", {"v": list(range(40))})
    loose = CSVSeriesDataModule(str(outside), "date", ["v"], **options)
    assert not loose.dvc_tracked
    assert loose.source_tags() == {
        "deepmine.data.csv.path": str(outside.resolve()),
        "deepmine.data.csv.md5": hashlib.md5(outside.read_bytes()).hexdigest(),
    }


def test_numeric_time_column_is_kept(tmp_path):
    path = write_csv(tmp_path / "n.csv", {"v": list(range(30))}, time=list(range(100, 130)))
    dm = CSVSeriesDataModule(
        str(path), "date", ["v"], lookback=3, horizon=2, val_size=5, test_size=5
    )
    dm.setup()
    assert dm.time_index.tolist() == list(range(100, 130))


# -- mistakes -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "words"),
    [
        (dict(lookback=90), "data.lookback=90"),
        (dict(horizon=30), "data.horizon=30"),
        (dict(val_size=2, horizon=3), "data.val_size=2"),
        (dict(test_size=0.01), "data.test_size=0.01"),
        (dict(input_shape=[5, 2]), "data.input_shape=[5, 2]"),
        (dict(num_outputs=4), "data.num_outputs=4"),
        (dict(lookback=0), "data.lookback=0"),
        (dict(normalize="minmax"), "data.normalize='minmax'"),
    ],
)
def test_bad_windowing_is_refused(tmp_path, options, words):
    with pytest.raises(DeepmineError, match="Fix: ") as caught:
        step_series(tmp_path, 100, **options)
    assert words in str(caught.value)


def test_bad_csv_is_refused(tmp_path):
    path = write_csv(tmp_path / "s.csv", {"v": list(range(40)), "w": ["x"] * 40})
    options = dict(lookback=3, horizon=2, val_size=5, test_size=5)

    def load(time_column="date", targets=("v",), inputs=None, file=path):
        dm = CSVSeriesDataModule(
            str(file), time_column, list(targets), input_columns=inputs, **options
        )
        with pytest.raises(DeepmineError) as caught:
            dm.setup()
        return str(caught.value)

    assert "'nope'" in load(targets=["nope"]) and "data.target_columns" in load(targets=["nope"])
    assert "data.input_columns" in load(inputs=["v", "zz"])
    assert "data.time_column" in load(time_column="when")
    assert "non-numeric" in load(inputs=["w"])
    assert "includes the time column" in load(targets=["date"])
    shuffled = write_csv(
        tmp_path / "u.csv",
        {"v": list(range(5))},
        time=["2000-01-01", "2000-03-01", "2000-02-01", "2000-04-01", "2000-05-01"],
    )
    assert "not strictly increasing" in load(file=shuffled)
    gap = tmp_path / "gap.csv"
    gap.write_text("date,v\n" + "".join(f"{i},{'' if i == 7 else i}\n" for i in range(40)))
    assert "missing values ('v': 1)" in load(file=gap)
    assert "does not exist" in load(file=tmp_path / "absent.csv")
    with pytest.raises(DeepmineError, match="target_columns"):
        CSVSeriesDataModule(str(path), "date", "v", **options)


def test_embedded_series_mistakes(tmp_path):
    with pytest.raises(DeepmineError, match="not one of the embedded series"):
        SeriesDataModule("tides", str(SERIES_DIR), 3, 2, 5, 5).setup()
    with pytest.raises(DeepmineError, match="deepmine data pull"):
        SeriesDataModule("co2", str(tmp_path), 3, 2, 5, 5).setup()


# -- the configs ----------------------------------------------------------------------------


def compose_data(tmp_path: Path, name: str):
    register_resolvers()
    GlobalHydra.instance().clear()
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        return compose("train", overrides=[f"paths.output_dir={tmp_path}", f"data={name}"])


@pytest.mark.parametrize("name", ["sunspots", "co2", "elnino", "series_csv"])
def test_data_configs_compose_and_load_the_real_series(tmp_path, name):
    cfg = compose_data(tmp_path, name)
    dm = instantiate(cfg.data)
    assert dm.targets == "series" and dm.dvc_tracked
    shapes = dm.shapes()
    lookback, horizon = cfg.data.lookback, cfg.data.horizon
    assert shapes["num_outputs"] == horizon * shapes["num_targets"]
    if cfg.data.input_shape is not None:
        assert list(cfg.data.input_shape) == shapes["input_shape"] == [lookback, 1]
    assert len(dm.series) == LENGTHS.get(name, LENGTHS["co2"])
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (cfg.data.batch_size, lookback, 1)
    assert y.shape == (cfg.data.batch_size, horizon, shapes["num_targets"])
    assert set(dm.baselines) == set(cfg.data.baselines)
    assert dm.season == cfg.data.season
