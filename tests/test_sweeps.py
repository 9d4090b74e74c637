"""Sweeps end to end: real Hydra multiruns in subprocesses, a real SQLite MLflow store, real
Optuna studies, real joblib and submitit launchers, real DDP ranks (gloo on CPU)."""

from __future__ import annotations

import contextlib
import csv
import signal
import sqlite3
import statistics
import time
from pathlib import Path

import optuna
import pytest

from conftest import one_line_error, run_cli, start_cli

FAST = ("data=digits", "debug=fast")
PARENT = "mlflow.parentRunId"


def multirun(sandbox, *overrides: str, timeout: float = 300):
    return run_cli(
        "train", "-m", *sandbox.overrides(*FAST, *overrides), cwd=sandbox.cwd, timeout=timeout
    )


def split(runs):
    parents = [r for r in runs if PARENT not in r.data.tags]
    children = [r for r in runs if PARENT in r.data.tags]
    return parents, children


def summary_rows(sandbox, parent, name: str = "trials.csv") -> list[dict]:
    with open(summary_file(sandbox, parent, name)) as handle:
        return list(csv.DictReader(handle))


def summary_file(sandbox, parent, name: str) -> Path:
    folder = sandbox.path / "artifacts" / parent.info.run_id
    return Path(
        sandbox.client().download_artifacts(
            parent.info.run_id, f"summary/{name}", str(_fresh(folder))
        )
    )


def _fresh(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def test_grid_is_one_parent_with_a_child_per_job(sandbox):
    proc = multirun(sandbox, "net=seed_mlp,cnn", "seed=0,1")
    assert proc.returncode == 0, proc.stderr[-3000:]
    (parent,), children = split(sandbox.runs())
    assert parent.info.status == "FINISHED"
    sweep_id = parent.data.tags["deepmine.sweep.id"]
    assert sweep_id.startswith("train-grid-")
    # named by its space; an honest record: the swept keys as swept, not at the base values
    # the sweep never ran at (a swept group's base params, net.*, are left out with it)
    assert parent.info.run_name == "grid net×seed"
    assert parent.data.params["sweep.space.net"] == "net=seed_mlp,cnn"
    assert parent.data.params["net"] == "swept: seed_mlp,cnn"
    assert parent.data.params["seed"] == "swept: 0,1"
    assert not [k for k in parent.data.params if k.startswith("net.")]
    assert parent.data.params["optimizer.lr"] == "0.001"  # not swept: the sweep's own config

    assert len(children) == 4
    assert {c.data.tags[PARENT] for c in children} == {parent.info.run_id}
    assert {c.data.tags["deepmine.sweep.id"] for c in children} == {sweep_id}
    assert sorted(int(c.data.tags["deepmine.sweep.job"]) for c in children) == [0, 1, 2, 3]
    combos = {(c.data.params["sweep.net"], c.data.params["sweep.seed"]) for c in children}
    assert combos == {(n, s) for n in ("seed_mlp", "cnn") for s in ("0", "1")}
    # each child is named by what sets it apart
    assert {c.info.run_name for c in children} == {f"net={n} seed={s}" for n, s in combos}
    # the compare view: swept params differ, the rest of the config is the same
    varying = {
        key
        for key in children[0].data.params
        if len({c.data.params.get(key) for c in children}) > 1
    }
    assert {"sweep.net", "sweep.seed", "seed", "net._target_"} <= varying
    assert not {"optimizer.lr", "data._target_", "trainer.max_epochs"} & varying
    assert all(c.info.status == "FINISHED" for c in children)

    rows = summary_rows(sandbox, parent)
    assert [r["job"] for r in rows] == ["0", "1", "2", "3"]
    by_run = {c.info.run_id: c for c in children}
    for row in rows:
        child = by_run[row["run_id"]]  # the full run id, plain
        assert float(row["val/acc_best"]) == child.data.metrics["val/acc_best"]
        assert row["net"] == child.data.params["sweep.net"]
    best = max(children, key=lambda c: c.data.metrics["val/acc_best"])
    assert parent.data.tags["deepmine.sweep.best_run_id"] == best.info.run_id
    assert parent.data.metrics["best/val/acc_best"] == best.data.metrics["val/acc_best"]
    artifacts = {a.path for a in sandbox.client().list_artifacts(parent.info.run_id, "summary")}
    assert {
        "summary/configs.csv",
        "summary/trials.md",
        "summary/best.json",
        "summary/objective_per_trial.png",
        "summary/objective_vs_params.png",
        "summary/objective_per_config.png",
    } <= artifacts
    _assert_configs_ranked_over_seeds(sandbox, parent, children)


def _assert_configs_ranked_over_seeds(sandbox, parent, children):
    """configs.csv, the Configurations table and the parent's agg/ metrics, against the
    numbers recomputed here from the children in the store (net swept, over seeds 0 and 1)."""
    from scipy import stats

    scores: dict[str, list[float]] = {}
    for child in sorted(children, key=lambda c: int(c.data.tags["deepmine.sweep.job"])):
        scores.setdefault(child.data.params["sweep.net"], []).append(
            child.data.metrics["val/acc_best"]
        )
    ranked = sorted(scores, key=lambda n: -statistics.fmean(scores[n]))
    table = summary_rows(sandbox, parent, "configs.csv")
    assert [(t["rank"], t["config"], t["n"]) for t in table] == [
        ("1", f"net={ranked[0]}", "2"),
        ("2", f"net={ranked[1]}", "2"),
    ]
    for row, net in zip(table, ranked, strict=True):
        assert float(row["mean"]) == pytest.approx(statistics.fmean(scores[net]))
        assert float(row["std"]) == pytest.approx(statistics.stdev(scores[net]))
        assert float(row["min"]) == min(scores[net]) and float(row["max"]) == max(scores[net])
    best, other = (scores[n] for n in ranked)
    assert float(table[1]["diff_vs_best"]) == pytest.approx(
        statistics.fmean(other) - statistics.fmean(best)
    )
    if statistics.pstdev(best) or statistics.pstdev(other):
        welch = stats.ttest_ind(other, best, equal_var=False)
        assert float(table[1]["p_value"]) == pytest.approx(welch.pvalue)
        assert table[1]["note"] == "n<3: low power"
    metrics, tags = parent.data.metrics, parent.data.tags
    assert metrics["agg/val/acc_best/mean"] == pytest.approx(statistics.fmean(best))
    assert metrics["agg/val/acc_best/std"] == pytest.approx(statistics.stdev(best))
    assert metrics["agg/val/acc_best/n"] == 2
    assert tags["deepmine.sweep.best_config"] == f"net={ranked[0]}"

    text = summary_file(sandbox, parent, "trials.md").read_text()
    note = tags["mlflow.note.content"]
    assert text.index("## Configurations") < text.index("## Jobs")
    assert f"| 1 | net={ranked[0]} | 2 |" in text and "## Configurations" in note
    experiment = parent.info.experiment_id
    for child in children:
        run_id = child.info.run_id
        link = f"[{run_id[:8]}](#/experiments/{experiment}/runs/{run_id})"
        assert link in text and link in note


def test_a_failing_job_is_recorded_and_the_sweep_goes_on(sandbox, tmp_path):
    # lr=1e9 diverges to a NaN loss mid-run; lr=abc fails before its run could open
    proc = multirun(sandbox, "optimizer=sgd", "optimizer.lr=1e-3,1e9,abc")
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "2 of 3 jobs failed" in one_line_error(proc)
    (parent,), children = split(sandbox.runs())
    assert parent.info.status == "FAILED"
    by_job = {int(c.data.tags["deepmine.sweep.job"]): c for c in children}
    assert [by_job[j].info.status for j in (0, 1, 2)] == ["FINISHED", "FAILED", "FAILED"]
    # job 2 never opened a run: the sweeper recorded it, under the name the job would have had
    names = [by_job[j].info.run_name for j in (0, 1, 2)]
    assert names == ["lr=0.001", "lr=1000000000.0", "lr=abc"]
    assert "NonFiniteLoss" in by_job[1].data.tags["deepmine.error"]
    assert "optimizer.lr='abc' is not valid" in by_job[2].data.tags["deepmine.error"]
    for job in (1, 2):
        path = sandbox.client().download_artifacts(
            by_job[job].info.run_id, "error/traceback.txt", str(_fresh(tmp_path / str(job)))
        )
        assert "Traceback" in Path(path).read_text()
    rows = summary_rows(sandbox, parent)
    assert [r["status"] for r in rows] == ["FINISHED", "FAILED", "FAILED"]
    assert "NonFiniteLoss" in rows[1]["note"]
    # no seed swept: every job its own config; the failed ones ranked last, unscored
    configs = summary_rows(sandbox, parent, "configs.csv")
    assert [(c["rank"], c["config"], c["n"]) for c in configs] == [
        ("1", "lr=0.001", "1"),
        ("", "lr=1000000000.0", "0"),
        ("", "lr=abc", "0"),
    ]
    assert configs[1]["note"] == "no scored job"
    assert parent.data.metrics["agg/val/acc_best/n"] == 1
    assert parent.data.tags["deepmine.sweep.best_config"] == "lr=0.001"


def test_joblib_runs_parallel_jobs_into_a_fresh_store(sandbox):
    assert not sandbox.db.exists()
    proc = multirun(sandbox, "launcher=joblib", "hydra.launcher.n_jobs=2", "seed=0,1,0,1")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "database is locked" not in proc.stderr
    (parent,), children = split(sandbox.runs())
    assert parent.info.status == "FINISHED"
    assert [c.info.status for c in children] == ["FINISHED"] * 4
    assert parent.info.run_name == "grid seed"
    in_order = sorted(children, key=lambda c: int(c.data.tags["deepmine.sweep.job"]))
    assert [c.info.run_name for c in in_order] == ["seed=0", "seed=1", "seed=0", "seed=1"]
    # only the seed swept: one configuration, its mean over the four jobs
    values = [c.data.metrics["val/acc_best"] for c in children]
    assert parent.data.metrics["agg/val/acc_best/n"] == 4
    assert parent.data.metrics["agg/val/acc_best/mean"] == pytest.approx(statistics.fmean(values))
    assert parent.data.tags["deepmine.sweep.best_config"] == "base config"
    client = sandbox.client()
    keys = {"train/loss", "train/loss_epoch", "val/acc", "val/acc_best", "test/acc", "test/loss"}
    for child in children:
        assert keys <= set(child.data.metrics)
        # debug=fast: 5 steps, each logged
        assert len(client.get_metric_history(child.info.run_id, "train/loss")) == 5
    # two workers ran four jobs: processes were reused...
    assert len({c.data.tags["deepmine.host.pid"] for c in children}) < 4
    # ...and a job in a reused process got exactly what a fresh process gets
    by_seed: dict[str, set] = {}
    for child in children:
        by_seed.setdefault(child.data.params["seed"], set()).add(child.data.metrics["test/acc"])
    assert all(len(values) == 1 for values in by_seed.values()), by_seed
    assert len({next(iter(v)) for v in by_seed.values()}) == 2


def test_optuna_search_killed_and_resumed_ends_with_all_trials_and_one_parent(sandbox):
    storage = f"sqlite:///{sandbox.logs}/train/multiruns/optuna.db"
    args = [
        "train",
        "-m",
        *sandbox.overrides(
            *FAST,
            "hparams_search=fashion_mnist_optuna",
            "trainer.max_epochs=2",
            "hydra.sweeper.n_trials=4",
            "hydra.sweeper.sampler.n_startup_trials=2",
            "hydra.sweeper.pruner=null",
        ),
    ]
    first = start_cli(*args, cwd=sandbox.cwd)
    deadline = time.monotonic() + 240
    while _complete(storage) < 2:
        assert first.poll() is None, first.stderr.read()[-3000:]
        assert time.monotonic() < deadline, "the search did not get going"
        time.sleep(0.2)
    first.send_signal(signal.SIGTERM)
    assert first.wait(timeout=120) == 130, first.stderr.read()[-3000:]
    (parent,), _ = split(sandbox.runs("fashion_mnist_optuna"))
    assert parent.info.status == "KILLED"
    assert 2 <= _complete(storage) < 4

    again = run_cli(*args, cwd=sandbox.cwd)
    assert again.returncode == 2
    assert "already exists" in one_line_error(again) and "resume=true" in again.stderr

    resumed = run_cli(*args, "resume=true", cwd=sandbox.cwd)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    study = optuna.load_study(study_name="fashion_mnist_optuna", storage=storage)
    complete = [t for t in study.trials if t.state.name == "COMPLETE"]
    assert len(complete) == 4
    assert all(t.state.name == "COMPLETE" or t.user_attrs.get("interrupted") for t in study.trials)

    (parent_after,), children = split(sandbox.runs("fashion_mnist_optuna"))
    assert parent_after.info.run_id == parent.info.run_id
    assert parent_after.info.status == "FINISHED"
    assert parent_after.info.run_name == (
        "optuna lr×weight_decay×hidden_sizes×dropout×batch_size (4 trials)"
    )
    assert parent_after.data.params["optimizer.lr"] == "swept: tag(log, interval(1e-4, 1e-2))"
    assert parent_after.data.params["data.batch_size"] == "swept: choice(64, 128, 256)"
    for child in children:
        trial = study.trials[int(child.data.tags["deepmine.sweep.job"])]
        assert child.info.run_name.startswith(
            f"trial {trial.number} lr={trial.params['optimizer.lr']:.3g} weight_decay="
        )
    assert "RUNNING" not in {c.info.status for c in children}
    finished = {
        int(c.data.tags["deepmine.sweep.job"]) for c in children if c.info.status == "FINISHED"
    }
    assert finished == {t.number for t in complete}
    rows = summary_rows(sandbox, parent_after)
    scored = {int(r["job"]): float(r["val/acc_best"]) for r in rows if r["status"] == "FINISHED"}
    assert scored == {t.number: t.value for t in complete}
    # one sweep folder for both sessions
    assert len(list((sandbox.logs / "train" / "multiruns").glob("*/*/deepmine-sweep.json"))) == 1


def _complete(storage: str) -> int:
    """COMPLETE trials, read through a read-only SQLite connection: opening the storage with
    Optuna would create its schema, racing the sweeper that is creating it."""
    path = storage.removeprefix("sqlite:///")
    if not Path(path).exists():
        return 0
    try:
        with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
            return db.execute("SELECT count(*) FROM trials WHERE state = 'COMPLETE'").fetchone()[0]
    except sqlite3.OperationalError:  # tables not created yet, or locked for a moment
        return 0


def test_optuna_prunes_through_the_lightning_callback(sandbox):
    storage = f"sqlite:///{sandbox.logs}/train/multiruns/optuna.db"
    proc = multirun(
        sandbox,
        "hparams_search=fashion_mnist_optuna",
        "trainer.max_epochs=3",
        "hydra.sweeper.n_trials=2",
        # accuracy never exceeds 1.01, so every trial is pruned after its first epoch
        "hydra.sweeper.pruner._target_=optuna.pruners.ThresholdPruner",
        "~hydra.sweeper.pruner.n_startup_trials",
        "hydra.sweeper.pruner.n_warmup_steps=0",
        "+hydra.sweeper.pruner.lower=1.01",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    study = optuna.load_study(study_name="fashion_mnist_optuna", storage=storage)
    assert [t.state.name for t in study.trials] == ["PRUNED", "PRUNED"]
    assert all(list(t.intermediate_values) == [0] for t in study.trials)
    (parent,), children = split(sandbox.runs("fashion_mnist_optuna"))
    assert [c.info.status for c in children] == ["FINISHED", "FINISHED"]
    assert all(c.data.tags["deepmine.sweep.pruned"] == "true" for c in children)
    assert all(c.data.tags["deepmine.optuna.state"] == "PRUNED" for c in children)
    assert "test/acc" not in children[0].data.metrics  # pruned trials are not tested
    rows = summary_rows(sandbox, parent)
    assert [r["status"] for r in rows] == ["PRUNED", "PRUNED"]
    assert all(
        r["val/acc_best"] == "" and "pruned after epoch 0 (val/acc" in r["note"] for r in rows
    )


def test_submitit_local_runs_each_job_in_its_own_process(sandbox):
    proc = multirun(sandbox, "launcher=submitit_local", "seed=0,1")
    assert proc.returncode == 0, proc.stderr[-3000:]
    (parent,), children = split(sandbox.runs())
    assert [c.info.status for c in children] == ["FINISHED", "FINISHED"]
    assert parent.data.tags["deepmine.sweep.launcher"].endswith("LocalLauncher")
    pids = {c.data.tags["deepmine.host.pid"] for c in children}
    assert len(pids) == 2 and parent.data.tags["deepmine.host.pid"] not in pids
    sweep_dir = Path(parent.data.tags["deepmine.sweep.dir"])
    # each job ran under submitit (its log is there); its pickles, which hold the whole config
    # and so any secret in it, are deleted once the jobs are back (test_secrets)
    assert len(list((sweep_dir / ".submitit").glob("*/*_log.out"))) == 2
    assert not list((sweep_dir / ".submitit").glob("*/*.pkl"))


def test_ddp_on_cpu_is_one_run_per_job_even_inside_a_multirun(sandbox):
    proc = multirun(sandbox, "trainer=ddp", "seed=0,1", "trainer.limit_test_batches=1.0")
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = sandbox.runs()
    (parent,), children = split(runs)
    assert len(runs) == 3, "rank 1 must not record runs of its own"
    assert parent.info.status == "FINISHED"
    assert [c.info.status for c in children] == ["FINISHED", "FINISHED"]
    assert all(c.data.params["trainer.devices"] == "2" for c in children)
    job0 = next(c for c in children if c.data.tags["deepmine.sweep.job"] == "0")
    out = Path(job0.data.tags["deepmine.output_dir"])
    assert (out / "ddp" / "rank1.log").is_file()
    # the test set was sharded over the ranks and the metric synced: one process evaluating
    # the same checkpoint on the whole test set gets the same accuracy
    (checkpoint,) = (out / "checkpoints").glob("epoch*.ckpt")
    evaluated = run_cli(
        "eval",
        f"ckpt_path={checkpoint}",
        *sandbox.overrides("data=digits", "logger=none"),
        cwd=sandbox.cwd,
    )
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    line = next(ln for ln in evaluated.stdout.splitlines() if ln.startswith("test/acc"))
    assert float(line.split()[1]) == round(job0.data.metrics["test/acc"], 4)
