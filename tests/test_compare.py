"""`deepmine compare`: grouping over seeds, the numbers, significance, files, figures, --log.

The runs are written straight into a temporary SQLite store with MlflowClient (a real store,
no training): two learning rates × three seeds with known values and per-epoch histories, a
FAILED run and the sweep's parent. Their params are those a real `deepmine train debug=fast
data=digits` records, so grouping is tested on the keys it really meets (the seed and what
follows it, output paths, the store URI). Pure functions are tested in-process; the command
line end to end through `run_cli`.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from types import SimpleNamespace

import pytest

from conftest import one_line_error, run_cli
from deepmine.compare.select import RunRecord, Selection

#: The params of a real `deepmine train debug=fast data=digits` (seed and paths set per run).
REAL_PARAMS = {
    "allow_data_mismatch": "False",
    "augment": "None",
    "callbacks.early_stopping._target_": "lightning.pytorch.callbacks.EarlyStopping",
    "callbacks.early_stopping.min_delta": "0.0",
    "callbacks.early_stopping.mode": "max",
    "callbacks.early_stopping.monitor": "val/acc",
    "callbacks.early_stopping.patience": "5",
    "callbacks.epoch_timer._target_": "deepmine.runtime.callbacks.EpochTimer",
    "callbacks.finite_loss._target_": "deepmine.runtime.callbacks.StopOnNonFiniteLoss",
    "callbacks.finite_loss.check_every_n_steps": "1",
    "callbacks.lr_monitor._target_": "lightning.pytorch.callbacks.LearningRateMonitor",
    "callbacks.lr_monitor.logging_interval": "epoch",
    "callbacks.model_checkpoint._target_": "lightning.pytorch.callbacks.ModelCheckpoint",
    "callbacks.model_checkpoint.auto_insert_metric_name": "False",
    "callbacks.model_checkpoint.filename": "epoch{epoch:03d}",
    "callbacks.model_checkpoint.mode": "max",
    "callbacks.model_checkpoint.monitor": "val/acc",
    "callbacks.model_checkpoint.save_last": "True",
    "callbacks.model_checkpoint.save_top_k": "1",
    "callbacks.progress_bar._target_": "lightning.pytorch.callbacks.RichProgressBar",
    "callbacks.progress_bar.refresh_rate": "10",
    "callbacks.rng_state._target_": "deepmine.runtime.callbacks.RngStateInCheckpoint",
    "claim": "None",
    "data._target_": "deepmine.data.digits.DigitsDataModule",
    "data.augment": "None",
    "data.batch_size": "32",
    "data.eval_batch_size": "512",
    "data.input_shape": "[1, 8, 8]",
    "data.normalize": "scale",
    "data.num_classes": "10",
    "data.num_outputs": "10",
    "data.split_seed": "0",
    "data.val_size": "0.15",
    "experiment_name": "default",
    "logger.artifact_location": "None",
    "logger.flush_every_s": "5",
    "logger.log_checkpoint": "True",
    "logger.run_name": "None",
    "net._target_": "deepmine.nets.mlp.MLP",
    "net.activation": "relu",
    "net.dropout": "0.2",
    "net.hidden_sizes": "[64]",
    "net.input_shape": "[1, 8, 8]",
    "net.num_outputs": "10",
    "optimized_metric": "val/acc_best",
    "optimizer._partial_": "True",
    "optimizer._target_": "torch.optim.Adam",
    "optimizer.lr": "0.001",
    "optimizer.weight_decay": "0.0",
    "paths.cache_dir": "/work/main/.cache",
    "paths.data_dir": "/work/main/data",
    "paths.root_dir": "/work/main",
    "print_config": "False",
    "resume": "None",
    "robustness": "None",
    "scheduler": "None",
    "tags": "{}",
    "task._target_": "deepmine.tasks.classification.ClassificationTask",
    "task.adversarial": "None",
    "task.input_shape": "[1, 8, 8]",
    "task.loss._target_": "torch.nn.CrossEntropyLoss",
    "task.loss.label_smoothing": "0.0",
    "task.mode": "max",
    "task.monitor": "acc",
    "task.num_classes": "10",
    "task_name": "train",
    "trainer._target_": "lightning.pytorch.Trainer",
    "trainer.accelerator": "auto",
    "trainer.deterministic": "True",
    "trainer.devices": "1",
    "trainer.enable_model_summary": "True",
    "trainer.limit_train_batches": "5",
    "trainer.max_epochs": "3",
    "trainer.precision": "32-true",
    "trust_recorded_targets": "False",
}
#: val/acc_best and test/acc per (lr, seed); lr=0.01 is clearly better
VALUES = {
    ("0.01", 0): (0.91, 0.95),
    ("0.01", 1): (0.92, 0.96),
    ("0.01", 2): (0.93, 0.94),
    ("0.001", 0): (0.80, 0.83),
    ("0.001", 1): (0.84, 0.85),
    ("0.001", 2): (0.82, 0.81),
}
EPOCH_STEPS = (10, 20, 30)  # the step of each epoch's validation


def params_for(lr: str, seed: int, uri: str) -> dict[str, str]:
    out = f"/tmp/logs/train/multiruns/x/{lr}-{seed}"
    return {
        **REAL_PARAMS,
        "optimizer.lr": lr,
        "seed": str(seed),
        "data.shuffle_seed": str(seed),  # ${seed} in conf/data
        "sweep.optimizer.lr": lr,
        "sweep.seed": str(seed),
        "paths.output_dir": out,
        "paths.log_dir": "/tmp/logs",
        "trainer.default_root_dir": out,
        "callbacks.model_checkpoint.dirpath": f"{out}/checkpoints",
        "logger.tracking_uri": uri,
    }


def log_run(client, experiment_id, name, params, tags, status="FINISHED", metrics=()):
    from mlflow.entities import Metric, Param

    run = client.create_run(experiment_id, run_name=name, tags=tags)
    run_id = run.info.run_id
    items = [Param(k, v) for k, v in params.items()]
    for start in range(0, len(items), 100):
        client.log_batch(run_id, params=items[start : start + 100])
    if metrics:
        client.log_batch(run_id, metrics=[Metric(k, v, 0, s) for k, v, s in metrics])
    client.set_terminated(run_id, status)
    return run_id


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A sweep of 2 lr × 3 seeds, one FAILED job and the parent, in a fresh SQLite store."""
    from mlflow import MlflowClient

    root = tmp_path_factory.mktemp("compare")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    client = MlflowClient(uri)
    # artifacts in the temp folder (MLflow's default is ./mlruns of the current directory)
    experiment_id = client.create_experiment(
        "default", artifact_location=(root / "mlartifacts").as_uri()
    )
    parent = log_run(
        client,
        experiment_id,
        "grid lr×seed",
        {**params_for("0.001", 42, uri), "sweep.space.optimizer.lr": "optimizer.lr=0.01,0.001"},
        {"deepmine.sweep.space": "optimizer.lr=0.01,0.001 seed=0,1,2"},
    )
    child = {"mlflow.parentRunId": parent}
    ids: dict[tuple[str, int], str] = {}
    for (lr, seed), (best, test) in VALUES.items():
        # val/acc rises over 3 epochs to its best; the epoch metric is logged at every step
        # Lightning logs it, and at the validation step it names the epoch just validated
        curve = [best - 0.1, best - 0.05, best]
        metrics = [("val/acc", v, s) for v, s in zip(curve, EPOCH_STEPS, strict=True)]
        metrics += [("epoch", float(e), s) for e, s in enumerate(EPOCH_STEPS)]
        metrics += [("epoch", float(e + 1), s + 5) for e, s in enumerate(EPOCH_STEPS)]
        metrics += [("val/acc_best", best, 30), ("test/acc", test, 31)]
        ids[lr, seed] = log_run(
            client,
            experiment_id,
            f"lr={lr} seed={seed}",
            params_for(lr, seed, uri),
            child,
            metrics=metrics,
        )
    failed = log_run(
        client,
        experiment_id,
        "lr=0.01 seed=3",
        params_for("0.01", 3, uri),
        {**child, "deepmine.error": "RuntimeError: loss is nan"},
        status="FAILED",
        metrics=[("val/acc", 0.1, 10)],
    )
    sweep_dir = root / "sweep"
    sweep_dir.mkdir()
    (sweep_dir / "deepmine-sweep.json").write_text(
        json.dumps({"parent_run_id": parent, "tracking_uri": uri, "sweep_id": "s"})
    )
    return SimpleNamespace(
        uri=uri, root=root, parent=parent, ids=ids, failed=failed, sweep_dir=sweep_dir
    )


@pytest.fixture(scope="module")
def comparison(store):
    from deepmine.compare.select import select
    from deepmine.compare.table import compare
    from deepmine.tracking.store import connect

    return compare(select(connect(store.uri), sweeps=[store.parent]))


def count_runs(uri: str) -> int:
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    experiments = [e.experiment_id for e in client.search_experiments()]
    return len(client.search_runs(experiments))


# --- in-process: the numbers ---------------------------------------------------------------


def test_groups_runs_by_config_with_seed_stats(comparison, store):
    """Two groups of three seeds, best first; the FAILED run and the parent are not in them."""
    assert [g.label for g in comparison.groups] == ["optimizer.lr=0.01", "optimizer.lr=0.001"]
    assert comparison.metrics == ["val/acc_best", "test/acc"]
    assert comparison.direction == "max"
    best, other = comparison.groups
    assert sorted(r.run_id for r in best.runs) == sorted(store.ids["0.01", s] for s in (0, 1, 2))
    for group, lr in ((best, "0.01"), (other, "0.001")):
        values = [VALUES[lr, s][0] for s in (0, 1, 2)]
        stats = group.stats["val/acc_best"]
        assert stats.n == 3
        assert stats.mean == pytest.approx(statistics.fmean(values))
        assert stats.std == pytest.approx(statistics.stdev(values))
        assert (stats.min, stats.max) == (min(values), max(values))
    assert [r.run_id for r in comparison.selection.not_counted] == [store.failed]
    assert comparison.selection.not_counted[0].error == "RuntimeError: loss is nan"
    assert store.parent not in {r.run_id for g in comparison.groups for r in g.runs}


def test_welch_p_value_is_scipys(comparison):
    from scipy import stats

    (val, test) = comparison.contrasts
    a = [VALUES["0.01", s][0] for s in (0, 1, 2)]
    b = [VALUES["0.001", s][0] for s in (0, 1, 2)]
    expected = stats.ttest_ind(a, b, equal_var=False)
    assert val.metric == "val/acc_best"
    assert val.difference.test == "welch"
    assert val.difference.p_value == pytest.approx(expected.pvalue)
    assert val.difference.diff == pytest.approx(statistics.fmean(a) - statistics.fmean(b))
    ci = expected.confidence_interval(0.95)
    assert (val.difference.ci_low, val.difference.ci_high) == pytest.approx((ci.low, ci.high))
    assert test.metric == "test/acc" and test.difference.p_value is not None


def test_only_differing_keys_shown_the_rest_folded(comparison):
    """The seed, what follows it (data.shuffle_seed), paths and the sweep's bookkeeping are
    not config; of the rest only optimizer.lr differs."""
    assert comparison.differing == ["optimizer.lr"]
    assert comparison.by_config_group() == {"optimizer": ["optimizer.lr"]}
    line = comparison.folded()
    assert line.startswith(f"same in all groups: {len(comparison.same)} keys")
    assert "net=MLP" in line and "data=DigitsDataModule" in line
    assert "trainer.max_epochs=3" in line
    assert "seed" not in comparison.same and "paths.output_dir" not in comparison.same


def test_labels_name_a_class_not_its_keys():
    from deepmine.compare.table import labels

    mlp = {"net._target_": "deepmine.nets.mlp.MLP", "net.hidden_sizes": "[64]", "seed": "0"}
    cnn = {"net._target_": "deepmine.nets.cnn.CNN", "net.channels": "[32]", "seed": "0"}
    differing = ["net._target_", "net.channels", "net.hidden_sizes"]
    assert labels([mlp, cnn], differing) == ["net=MLP", "net=CNN"]
    lr = [{"optimizer.lr": "0.1", "data.batch_size": "8"}, {"optimizer.lr": "0.2"}]
    assert labels(lr, ["data.batch_size", "optimizer.lr"]) == [
        "data.batch_size=8 optimizer.lr=0.1",
        "data.batch_size=— optimizer.lr=0.2",
    ]


def record(run_id, lr, seed, value, mode="max"):
    params = {"optimizer.lr": lr, "seed": str(seed), "optimized_metric": "m", "task.mode": mode}
    return RunRecord(run_id, run_id, "1", "FINISHED", params, {"m": value}, {})


def test_paired_uses_only_common_seeds():
    from scipy import stats

    from deepmine.compare.table import compare

    a = {0: 0.90, 1: 0.93, 2: 0.91, 3: 0.99}  # seed 3 only in this group
    b = {0: 0.85, 1: 0.90, 2: 0.86}
    runs = [record(f"a{s}", "0.1", s, v) for s, v in a.items()]
    runs += [record(f"b{s}", "0.2", s, v) for s, v in b.items()]
    result = compare(Selection(runs=runs, described="test"), paired=True)
    (item,) = result.contrasts
    assert item.seeds == ["0", "1", "2"]
    expected = stats.ttest_rel([a[s] for s in (0, 1, 2)], [b[s] for s in (0, 1, 2)])
    assert item.difference.test == "paired"
    assert item.difference.p_value == pytest.approx(expected.pvalue)
    assert result.best.stats["m"].n == 4  # the summary still counts every seed


def test_direction_min_ranks_lowest_first_and_mixed_modes_refused():
    from deepmine.compare.table import compare
    from deepmine.errors import DeepmineError

    runs = [record("a", "0.1", 0, 0.5, "min"), record("b", "0.2", 0, 0.3, "min")]
    result = compare(Selection(runs=runs, described="test"))
    assert [g.label for g in result.groups] == ["optimizer.lr=0.2", "optimizer.lr=0.1"]
    assert result.contrasts[0].difference.note.startswith("n<2")
    with pytest.raises(DeepmineError, match="--direction"):
        compare(Selection(runs=[*runs, record("c", "0.3", 0, 0.1, "max")], described="t"))
    with pytest.raises(DeepmineError, match="val/acc"):
        compare(Selection(runs=runs, described="test"), metrics=["val/acc"])


def test_epoch_of_each_point_from_the_epoch_metric():
    from deepmine.compare.curves import epoch_points

    def points(*pairs):
        return [SimpleNamespace(step=s, value=v, timestamp=0) for s, v in pairs]

    history = points((38, 0.5), (77, 0.6), (116, 0.7))
    epochs = points((10, 0), (38, 0), (38, 0), (49, 1), (77, 1), (99, 2), (116, 2), (117, 3))
    assert epoch_points(history, epochs) == [(0, 0.5), (1, 0.6), (2, 0.7)]
    # no epoch metric at those steps: the order of the points
    assert epoch_points(history, []) == [(0.0, 0.5), (1.0, 0.6), (2.0, 0.7)]


# --- in-process: the files -------------------------------------------------------------------


def test_every_format_holds_the_numbers(comparison, store):
    import io

    import pandas as pd

    from deepmine.compare.render import render

    table = pd.read_csv(io.StringIO(render(comparison, "csv")))
    assert list(table["group"]) == ["optimizer.lr=0.01", "optimizer.lr=0.001"]
    assert list(table["optimizer.lr"]) == [0.01, 0.001]
    assert table["val/acc_best mean"][0] == pytest.approx(0.92)
    assert table["val/acc_best p"][1] == pytest.approx(comparison.contrasts[0].difference.p_value)
    assert store.ids["0.01", 0] in table["run_ids"][0]

    markdown = render(comparison, "markdown")
    assert "| 1   | optimizer.lr=0.01" in markdown or "| 1 | optimizer.lr=0.01" in markdown
    assert "0.9200 ± 0.0100" in markdown
    assert "## Not counted" in markdown and store.failed in markdown
    assert "RuntimeError: loss is nan" in markdown

    latex = render(comparison, "latex")
    assert latex.count(r"\begin{tabular}") == 2
    assert r"optimizer.lr=0.01" in latex and r"val/acc\_best" in latex

    data = json.loads(render(comparison, "json"))
    assert [g["label"] for g in data["groups"]] == ["optimizer.lr=0.01", "optimizer.lr=0.001"]
    assert data["groups"][0]["stats"]["val/acc_best"]["values"][store.ids["0.01", 2]] == 0.93
    assert data["groups"][0]["config"] == {"optimizer.lr": "0.01"}
    assert data["differences"][0]["p_value"] == comparison.contrasts[0].difference.p_value
    assert data["not_counted"][0]["status"] == "FAILED"
    assert data["differing_keys"] == {"optimizer": ["optimizer.lr"]}


def test_plots_are_pngs_with_per_epoch_curves(comparison, store, tmp_path):
    from PIL import Image

    from deepmine.compare.curves import group_curves, write_plots
    from deepmine.tracking.store import connect

    curves = group_curves(connect(store.uri), comparison, "val/acc")
    best = curves[comparison.best.key]
    assert sorted(best) == [0, 1, 2]
    assert best[2] == pytest.approx([0.91, 0.92, 0.93])
    written = write_plots(connect(store.uri), comparison, tmp_path)
    assert [p.name for p in written] == ["curves.png", "final_metric.png"]
    for path in written:
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        with Image.open(path) as image:
            assert image.size[0] > 400 and image.size[1] > 300


def test_selection_skips_comparisons_and_parents(store):
    """By experiment: the sweep's parent and an earlier comparison run are skipped."""
    from mlflow import MlflowClient

    from deepmine.compare.select import select
    from deepmine.tracking.store import connect

    client = MlflowClient(store.uri)
    experiment = client.get_experiment_by_name("default").experiment_id
    compare_run = log_run(client, experiment, "compare", {}, {"deepmine.compare": "true"})
    try:
        selection = select(connect(store.uri), experiments=["default"])
        assert len(selection.runs) == 6
        assert selection.skipped == {"sweep parent": 1, "earlier comparison": 1}
        # a filter narrows; a parent matched by the filter is still no data point
        narrowed = select(connect(store.uri), filter_string="params.`optimizer.lr` = '0.001'")
        assert sorted(r.run_id for r in narrowed.runs) == sorted(
            store.ids["0.001", s] for s in (0, 1, 2)
        )
        assert narrowed.skipped == {"sweep parent": 1}
    finally:
        client.delete_run(compare_run)


# --- the command line ------------------------------------------------------------------------


def test_cli_prints_the_table_and_writes_a_file(store, tmp_path):
    out = tmp_path / "out" / "compare.md"
    proc = run_cli(
        "compare",
        "--sweep",
        store.parent,
        f"logger.tracking_uri={store.uri}",  # as `deepmine train` names a store
        "--output",
        str(out),
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = proc.stdout
    assert "compare optimizer.lr=0.01 vs optimizer.lr=0.001" in text
    assert "0.9200 ± 0.0100" in text and "0.8200 ± 0.0200" in text
    assert "config keys that differ" in text and "same in all groups" in text
    assert "is the difference real?" in text and "Welch" in text
    assert "not counted" in text and store.failed in text and "FAILED" in text
    assert out.read_text().startswith("# compare optimizer.lr=0.01 vs optimizer.lr=0.001")


def test_cli_log_records_a_finished_comparison_run(store, tmp_path):
    """--log by sweep folder (its store read from deepmine-sweep.json), --paired, --plots."""
    from mlflow import MlflowClient

    plots = tmp_path / "plots"
    proc = run_cli(
        "compare",
        "--sweep",
        str(store.sweep_dir),
        "--paired",
        "--plots",
        str(plots),
        "--log",
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "paired t-test" in proc.stdout
    assert (plots / "curves.png").is_file() and (plots / "final_metric.png").is_file()
    client = MlflowClient(store.uri)
    experiment = client.get_experiment_by_name("default").experiment_id
    (run,) = client.search_runs([experiment], "tags.`deepmine.compare` = 'true'")
    try:
        assert run.info.status == "FINISHED"
        assert run.info.run_name == "compare lr=0.01 vs lr=0.001"
        assert run.info.run_id in proc.stdout and "workflowType=machine_learning" in proc.stdout
        assert run.data.params["compare.test"] == "paired"
        assert run.data.params["compare.differing_keys"] == "optimizer.lr"
        assert run.data.tags["mlflow.note.content"].startswith("# compare optimizer.lr=0.01")
        names = {a.path for a in client.list_artifacts(run.info.run_id, "compare")}
        assert names == {
            "compare/compare.md",
            "compare/compare.json",
            "compare/curves.png",
            "compare/final_metric.png",
        }
        local = Path(client.download_artifacts(run.info.run_id, "compare/compare.json", tmp_path))
        assert json.loads(local.read_text())["paired"] is True
    finally:
        client.delete_run(run.info.run_id)


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--experiment", "nope"], "experiment 'nope' does not exist"),
        (["--experiment", "default", "--filter", "params.seed = '7'"], "no finished run matches"),
        (["--experiment", "default", "--filter", "params.seed ==== 7"], "cannot read --filter"),
    ],
    ids=["unknown-experiment", "empty-selection", "bad-filter"],
)
def test_cli_bad_input_is_one_line_and_records_nothing(store, tmp_path, args, says):
    before = count_runs(store.uri)
    proc = run_cli("compare", *args, "--tracking-uri", store.uri, "--log", cwd=tmp_path)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    line = one_line_error(proc)
    assert says in line and "Fix: " in line
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert count_runs(store.uri) == before
