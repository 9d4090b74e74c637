"""A user's own table through the real CLI: `deepmine train data=csv ...` for classification and
regression, recorded in a real SQLite store, and bad tables refused before any run exists."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pandas as pd
import pytest
from test_train_records import artifact_paths

from conftest import one_line_error, run_cli

FAST = ("debug=fast", "data.batch_size=16")


@pytest.fixture(scope="module")
def tables(tmp_path_factory) -> dict[str, Path]:
    """Iris with its species as text labels, and diabetes with `sex` as a category."""
    from sklearn.datasets import load_diabetes, load_iris

    folder = tmp_path_factory.mktemp("tables")
    iris = load_iris(as_frame=True)
    frame = iris.data.copy()
    frame["species"] = [iris.target_names[i] for i in iris.target]
    frame.to_csv(folder / "iris.csv", index=False)
    diabetes = load_diabetes(as_frame=True, scaled=False)
    table = diabetes.data.copy()
    table["sex"] = table["sex"].map({1.0: "female", 2.0: "male"})
    table["progression"] = diabetes.target
    table.to_csv(folder / "diabetes.csv", index=False)
    broken = table.copy()
    broken["bmi"] = broken["bmi"].astype(object)
    broken.loc[3, "bmi"] = "n/a"
    broken.to_csv(folder / "word_in_numbers.csv", index=False)
    gaps = table.copy()
    gaps.loc[[1, 5, 9], "bp"] = None
    gaps.to_csv(folder / "gaps.csv", index=False)
    wine_quality_style(folder / "wine_semicolon.csv")
    return {p.stem: p for p in folder.glob("*.csv")}


def wine_quality_style(path: Path) -> Path:
    """scikit-learn's wine table written as UCI's wine quality table is: `;` between columns,
    every header name quoted (with spaces, as UCI's "fixed acidity"), numbers unquoted."""
    import csv

    from sklearn.datasets import load_wine

    wine = load_wine(as_frame=True)
    frame = wine.data.rename(columns=lambda c: c.replace("_", " "))
    frame["cultivar"] = wine.target
    frame.to_csv(path, sep=";", index=False, quoting=csv.QUOTE_NONNUMERIC)
    return path


def test_classification_on_a_csv_with_text_labels(sandbox, tables):
    path = tables["iris"]
    proc = sandbox.train("data=csv", f"data.path={path}", "data.target=species", *FAST)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (run,) = sandbox.runs()
    assert run.info.status == "FINISHED" and "test/acc" in run.data.metrics
    params, tags = run.data.params, run.data.tags
    assert params["data.targets"] == "class" and params["data.num_classes"] == "3"
    assert params["data.input_shape"] == "[4]" and params["net.num_outputs"] == "3"
    assert tags["deepmine.data.class_names"] == "setosa, versicolor, virginica"
    assert tags["deepmine.data.dvc_tracked"] == "false"
    assert tags["deepmine.data.csv.path"] == str(path)
    assert tags["deepmine.data.csv.md5"] == hashlib.md5(path.read_bytes()).hexdigest()
    assert "plots/confusion_matrix.png" in artifact_paths(sandbox.client(), run.info.run_id)


def test_regression_on_a_csv_with_a_category_and_a_relative_path(sandbox, tables):
    (sandbox.cwd / "table.csv").write_bytes(tables["diabetes"].read_bytes())
    proc = sandbox.train(
        "task=regression",
        "data=csv",
        "data.path=table.csv",
        "data.target=progression",
        "data.categorical=[sex]",
        *FAST,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    (run,) = sandbox.runs()
    assert run.info.status == "FINISHED" and "test/rmse" in run.data.metrics
    params = run.data.params
    assert params["data.targets"] == "value" and params["data.num_targets"] == "1"
    # nine numeric features plus one 0/1 column per sex
    assert params["data.input_shape"] == "[11]"
    # recorded absolute, so the run reads the same file from any directory
    assert params["data.path"] == str((sandbox.cwd / "table.csv").resolve())


@pytest.mark.parametrize(
    ("table", "overrides", "words"),
    [
        ("missing", ("data.target=progression",), "does not exist"),
        ("diabetes", ("data.target=price",), "price"),
        ("word_in_numbers", ("data.target=progression", "data.categorical=[sex]"), "bmi"),
        ("gaps", ("data.target=progression", "data.categorical=[sex]"), "data.impute"),
    ],
)
def test_bad_tables_are_one_line_and_leave_no_run(sandbox, tables, table, overrides, words):
    path = tables.get(table, Path("/nonexistent/missing.csv"))
    proc = sandbox.train("task=regression", "data=csv", f"data.path={path}", *overrides, *FAST)
    assert proc.returncode == 2, proc.stderr[-3000:]
    line = one_line_error(proc)
    assert words in line and "Fix:" in line
    assert sandbox.runs() == []


def test_impute_mean_lets_the_gappy_table_train(sandbox, tables):
    proc = sandbox.train(
        "task=regression",
        "data=csv",
        f"data.path={tables['gaps']}",
        "data.target=progression",
        "data.categorical=[sex]",
        "data.impute=mean",
        *FAST,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert pd.read_csv(tables["gaps"])["bp"].isna().sum() == 3
    (run,) = sandbox.runs()
    assert run.info.status == "FINISHED"


def test_a_semicolon_table_trains_with_the_defaults_and_scores(sandbox, tables):
    """UCI's format (`"fixed acidity";"volatile acidity";...`) needs no option: data.sep=auto
    reads it, the run records the delimiter, and its model scores a semicolon file too."""
    path = tables["wine_semicolon"]
    assert path.read_text().startswith('"alcohol";"malic acid";"ash";')
    proc = sandbox.train("data=csv", f"data.path={path}", "data.target=cultivar", *FAST)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (run,) = sandbox.runs()
    params, tags = run.data.params, run.data.tags
    assert run.info.status == "FINISHED" and "test/acc" in run.data.metrics
    assert params["data.sep"] == "auto" and tags["deepmine.data.csv.sep"] == ";"
    assert params["data.input_shape"] == "[13]" and tags["deepmine.data.class_names"] == "0, 1, 2"
    new = sandbox.cwd / "new_wines.csv"
    new.write_text("\n".join(path.read_text().splitlines()[:11]) + "\n")  # header + 10 rows
    scored = run_cli(
        "predict", f"run_id={run.info.run_id}", "input=new_wines.csv",
        f"logger.tracking_uri={sandbox.uri}", f"paths.log_dir={sandbox.logs}", cwd=sandbox.cwd,
    )  # fmt: skip
    assert scored.returncode == 0, scored.stderr[-3000:]
    written = pd.read_csv(sandbox.cwd / "new_wines.predictions.csv")
    assert list(written.row) == list(range(10))
    assert set(written.predicted.astype(str)) <= {"0", "1", "2"}
