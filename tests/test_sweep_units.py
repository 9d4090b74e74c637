"""Units of the sweep machinery: search-space parsing, DDP sharding of batches, per-job
process-state isolation, the summary's best/failed logic."""

from __future__ import annotations

import os
import random

import pytest
import torch
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

from deepmine.data.batches import TensorBatches
from deepmine.errors import DeepmineError
from deepmine.runtime.process_state import isolated
from deepmine.sweeps.space import parse
from deepmine.sweeps.summary import JobRow, Summary


def test_hydra_sweep_syntax_maps_to_optuna_distributions():
    space = parse(
        [
            "optimizer.lr=tag(log, interval(1e-4, 1e-2))",
            "net=choice(seed_mlp, cnn)",
            "data.batch_size=32,64",
            "net.hidden_sizes=choice([128], [256, 128])",
            "trainer.max_epochs=range(2, 11, step=4)",
            "net.dropout=interval(0, 0.5)",
            "seed=7",
        ]
    )
    d = space.distributions
    assert d["optimizer.lr"] == FloatDistribution(1e-4, 1e-2, log=True)
    assert d["net"] == CategoricalDistribution(["seed_mlp", "cnn"])
    assert d["data.batch_size"] == CategoricalDistribution([32, 64])
    assert d["net.hidden_sizes"] == CategoricalDistribution(["[128]", "[256, 128]"])
    # Python range semantics: 2, 6, 10 (stop exclusive) -> Optuna's inclusive high is 10
    assert d["trainer.max_epochs"] == IntDistribution(2, 10, step=4)
    assert d["net.dropout"] == FloatDistribution(0.0, 0.5)
    assert space.fixed == ["seed=7"]
    overrides = space.overrides({"optimizer.lr": 0.001, "net": "cnn", "net.hidden_sizes": "[128]"})
    assert overrides == ["seed=7", "optimizer.lr=0.001", "net=cnn", "net.hidden_sizes=[128]"]


def test_later_entries_win_and_bad_entries_are_one_line_errors():
    space = parse(["optimizer.lr=interval(0.1, 0.2)", "optimizer.lr=0.5"])
    assert space.distributions == {} and space.fixed == ["optimizer.lr=0.5"]
    with pytest.raises(DeepmineError, match="makes no sense on a choice"):
        parse(["net=tag(log, choice(a, b))"])
    with pytest.raises(DeepmineError, match="cannot parse"):
        parse(["optimizer.lr=interval(1,"])
    with pytest.raises(DeepmineError, match="is empty"):
        parse(["a=range(5, 5)"])


def test_ddp_shards_train_equally_and_evaluate_every_sample_once():
    x = torch.arange(103, dtype=torch.float32)[:, None]
    y = torch.arange(103)

    def seen(rank, shuffle, equal):
        batches = TensorBatches(
            x, y, 8, shuffle=shuffle, seed=3, rank=rank, world_size=2, equal_shards=equal
        )
        got = torch.cat([b[1] for b in batches])
        assert len(batches) == -(-len(got) // 8)
        return got

    train = [seen(r, True, True) for r in (0, 1)]
    assert len(train[0]) == len(train[1]) == 51  # same number of steps on every rank
    assert not set(train[0].tolist()) & set(train[1].tolist())
    reference = TensorBatches(x, y, 8, shuffle=True, seed=3).order(0)
    assert torch.equal(train[0], reference[0::2][:51])
    evaluated = [seen(r, False, False) for r in (0, 1)]
    assert sorted(torch.cat(evaluated).tolist()) == list(range(103))


def test_single_process_batches_are_unchanged_by_sharding_support():
    x, y = torch.randn(50, 3), torch.arange(50)
    batches = list(TensorBatches(x, y, 16, shuffle=True, seed=1))
    order = torch.randperm(50, generator=torch.Generator().manual_seed(1))
    assert [len(b[1]) for b in batches] == [16, 16, 16, 2]
    assert torch.equal(torch.cat([b[1] for b in batches]), order)


def test_isolated_restores_what_a_job_changes_process_wide():
    import numpy as np

    threads = torch.get_num_threads()
    deterministic = torch.are_deterministic_algorithms_enabled()  # earlier tests may set it
    os.environ.pop("DEEPMINE_TEST_LEAK", None)
    torch.manual_seed(5)
    expected = torch.rand(1)
    torch.manual_seed(5)
    with isolated():
        os.environ["DEEPMINE_TEST_LEAK"] = "1"
        os.environ["PL_GLOBAL_SEED"] = "123"
        torch.use_deterministic_algorithms(not deterministic)
        torch.set_num_threads(1 if threads > 1 else 2)
        torch.manual_seed(99)
        random.seed(99)
        np.random.seed(99)
        torch.rand(10)
    assert "DEEPMINE_TEST_LEAK" not in os.environ
    assert os.environ.get("PL_GLOBAL_SEED") != "123"
    assert torch.are_deterministic_algorithms_enabled() == deterministic
    assert torch.get_num_threads() == threads
    assert torch.equal(torch.rand(1), expected)


def test_summary_picks_the_best_finished_job_in_the_right_direction():
    rows = [
        JobRow(0, "FINISHED", 0.5, {"lr": 0.1}, "a"),
        JobRow(1, "FAILED", None, {"lr": 0.2}, "b", "boom"),
        JobRow(2, "FINISHED", 0.7, {"lr": 0.3}, "c"),
        JobRow(3, "PRUNED", 0.9, {"lr": 0.4}, "d"),
        JobRow(4, "FINISHED", float("nan"), {"lr": 0.5}, "e"),
    ]
    assert Summary(rows, "val/acc", "maximize").best.job == 2
    assert Summary(rows, "val/loss", "minimize").best.job == 0
    assert [r.job for r in Summary(rows, "m", "maximize").failed] == [1]
    assert Summary(rows, "m", "maximize").counts() == {"FINISHED": 3, "FAILED": 1, "PRUNED": 1}


# --- names that say what differs ---------------------------------------------------------------


def test_swept_keys_are_cut_to_the_shortest_suffix_that_tells_them_apart():
    from deepmine.sweeps.names import short_keys

    assert short_keys(["optimizer.lr", "seed", "net"]) == {
        "optimizer.lr": "lr",
        "seed": "seed",
        "net": "net",
    }
    assert short_keys(["optimizer.lr", "scheduler.lr", "data.batch_size"]) == {
        "optimizer.lr": "optimizer.lr",
        "scheduler.lr": "scheduler.lr",
        "data.batch_size": "batch_size",
    }
    assert short_keys(["a.b.lr", "c.b.lr", "+trainer.gradient_clip_val"]) == {
        "a.b.lr": "a.b.lr",
        "c.b.lr": "c.b.lr",
        "+trainer.gradient_clip_val": "gradient_clip_val",
    }


def test_children_and_parents_are_named_by_their_swept_values_and_space():
    from deepmine.sweeps.job import SweepJob
    from deepmine.sweeps.names import job_run_name, sweep_run_name
    from deepmine.sweeps.record import SweepInfo

    grid = SweepInfo("s", "grid", "unused", swept=["optimizer.lr", "seed"])
    job = SweepJob(grid, 3, ["data=digits", "seed=2", "optimizer.lr=0.01"])
    assert job.run_name() == "lr=0.01 seed=2"  # in the order the keys were swept
    # a job that failed before opening its run is named the same by the sweeper
    assert job_run_name("grid", grid.swept, 3, job.swept_values()) == "lr=0.01 seed=2"
    assert sweep_run_name("grid", grid.swept) == "grid lr×seed"

    search = SweepInfo("s", "optuna", "unused", swept=["optimizer.lr", "net.hidden_sizes"])
    trial = SweepJob(search, 7, ["optimizer.lr=0.00123456789", "net.hidden_sizes=[256,128]"])
    assert trial.run_name() == "trial 7 lr=0.00123 hidden_sizes=[256, 128]"
    assert sweep_run_name("optuna", search.swept, 20) == "optuna lr×hidden_sizes (20 trials)"
    secret = SweepInfo("s", "grid", "unused", swept=["logger.api_token"])
    assert SweepJob(secret, 0, ["logger.api_token=abc"]).run_name() == "api_token=***"


def test_the_parent_records_swept_keys_as_swept_not_at_their_base_value():
    from deepmine.sweeps.record import honest_params

    config = {
        "seed": 42,
        "optimizer": {"lr": 0.001, "weight_decay": 0.0},
        "net": {"_target_": "deepmine.nets.mlp.MLP", "hidden_sizes": [128]},
        "network": {"x": 1},
    }
    swept = {"optimizer.lr": "swept: 0.01,0.001", "net": "swept: mlp,cnn", "seed": "swept: 0,1"}
    assert honest_params(config, swept) == {
        "seed": "swept: 0,1",
        "optimizer.lr": "swept: 0.01,0.001",
        "optimizer.weight_decay": "0.0",
        "net": "swept: mlp,cnn",  # the base choice's net.* params are gone with it
        "network.x": "1",
    }


# --- configurations ranked over seeds ----------------------------------------------------------


def _lr_by_seed(values: dict[float, list[float | None]]) -> list[JobRow]:
    rows = []
    for lr, scores in values.items():
        for seed, score in enumerate(scores):
            status = "FINISHED" if score is not None else "FAILED"
            params = {"optimizer.lr": lr, "seed": seed}
            rows.append(JobRow(len(rows), status, score, params, f"run{len(rows):029d}"))
    return rows


def test_configs_group_the_seeds_and_rank_by_mean_in_the_direction():
    import statistics

    from scipy import stats

    rows = _lr_by_seed(
        {0.1: [0.5, 0.7, 0.6], 0.01: [0.9, 0.92, 0.91], 0.001: [0.8, None, 0.82], 1.0: [None]}
    )
    summary = Summary(rows, "val/acc", "maximize")
    configs = summary.configs
    assert [c.label for c in configs] == ["lr=0.01", "lr=0.001", "lr=0.1", "lr=1.0"]
    assert [c.rank for c in configs] == [1, 2, 3, None]
    best, second, third, failed = configs
    assert [r.job for r in best.rows] == [3, 4, 5] and best.stats.n == 3
    assert best.stats.mean == statistics.fmean([0.9, 0.92, 0.91])
    assert best.stats.std == statistics.stdev([0.9, 0.92, 0.91])
    assert (second.stats.n, second.stats.min, second.stats.max) == (2, 0.8, 0.82)
    assert best.versus_best is None and failed.stats.n == 0 and failed.versus_best is None
    welch = stats.ttest_ind([0.5, 0.7, 0.6], [0.9, 0.92, 0.91], equal_var=False)
    assert third.versus_best.p_value == pytest.approx(welch.pvalue)
    assert third.versus_best.diff == pytest.approx(0.6 - 0.91)
    assert third.versus_best.note == "" and second.versus_best.note == "n<3: low power"
    assert summary.best_config is best and summary.best.job == 4  # the single best job

    lowest = Summary(rows, "val/loss", "minimize").configs
    assert [c.label for c in lowest] == ["lr=0.1", "lr=0.001", "lr=0.01", "lr=1.0"]


def test_without_a_swept_seed_every_job_is_its_own_config():
    rows = [
        JobRow(0, "FINISHED", 0.5, {"optimizer.lr": 0.1}),
        JobRow(1, "FINISHED", 0.7, {"optimizer.lr": 0.1}),  # a repeat is not a seed
        JobRow(2, "FINISHED", 0.6, {"optimizer.lr": 0.01}),
    ]
    configs = Summary(rows, "m", "maximize").configs
    assert [(c.label, c.stats.n) for c in configs] == [
        ("lr=0.1 (job 1)", 1),
        ("lr=0.01", 1),
        ("lr=0.1 (job 0)", 1),
    ]
    assert configs[1].versus_best.p_value is None
    assert "cannot say" in configs[1].versus_best.note
    # a key ending in .seed is a seed axis too; only seeds swept: one config
    seeds = [JobRow(i, "FINISHED", v, {"data.seed": i}) for i, v in enumerate([0.4, 0.6])]
    (only,) = Summary(seeds, "m", "maximize").configs
    assert (only.label, only.stats.n, only.stats.mean) == ("base config", 2, 0.5)


def test_trials_md_puts_the_configs_first_and_links_each_child_run(tmp_path):
    import csv

    rows = _lr_by_seed({0.1: [0.5, 0.7], 0.01: [0.9, 0.92]})
    summary = Summary(rows, "val/acc", "maximize", experiment_id="7", title="grid lr×seed")
    files = {p.name for p in summary.write(tmp_path)}
    assert {"configs.csv", "trials.csv", "trials.md", "objective_per_config.png"} <= files
    text = (tmp_path / "trials.md").read_text()
    assert text.index("## Configurations") < text.index("## Jobs")
    assert "| 1 | lr=0.01 | 2 | 0.91 ± 0.014 | 0.9 | 0.92 | best |" in text
    for row in rows:
        assert f"[{row.run_id[:8]}](#/experiments/7/runs/{row.run_id})" in text
    with open(tmp_path / "trials.csv") as handle:
        assert [r["run_id"] for r in csv.DictReader(handle)] == [r.run_id for r in rows]
    with open(tmp_path / "configs.csv") as handle:
        table = list(csv.DictReader(handle))
    assert [(t["rank"], t["config"], t["optimizer.lr"], t["jobs"]) for t in table] == [
        ("1", "lr=0.01", "0.01", "2 3"),
        ("2", "lr=0.1", "0.1", "0 1"),
    ]
    assert float(table[1]["diff_vs_best"]) == pytest.approx(0.6 - 0.91)
    assert table[0]["p_value"] == "" and float(table[1]["p_value"]) < 1


# --- a shared Optuna study: one budget for all its workers --------------------------------------


def test_a_shared_study_counts_every_workers_trials_and_gives_back_the_surplus():
    """Real Optuna (in memory): two workers' trials in one study. The budget counts finished,
    running and queued trials of both; a trial asked past it is surplus; an interrupted trial
    is left out and its retry, queued again, counts instead."""
    import optuna

    from deepmine.sweeps.optuna_search import SURPLUS, interrupt
    from deepmine.sweeps.shared_trials import Tally, is_surplus

    study = optuna.create_study()
    space = {"lr": FloatDistribution(1e-4, 1e-1, log=True)}
    n_trials = 3
    first, second = study.ask(space), study.ask(space)  # worker A: trials 0 and 1
    other = study.ask(space)  # worker B: trial 2
    assert not any(is_surplus(study, t.number, n_trials) for t in (first, second, other))
    late = study.ask(space)  # both saw a free slot; the storage numbered this one last
    assert is_surplus(study, late.number, n_trials)
    late.set_user_attr(SURPLUS, True)
    study.tell(late, state=optuna.trial.TrialState.FAIL)

    study.tell(first, 0.5)
    interrupt(study, [second])  # worker A stopped: trial 1 failed, its params queued again
    count = Tally.of(study)
    assert [t.number for t in count.finished] == [0]
    assert [t.number for t in count.running] == [2]
    assert [t.number for t in count.waiting] == [4]
    assert count.counted == n_trials and not count.complete(n_trials)
    redo = study.ask(space)  # whoever asks next redoes it
    assert (redo.number, redo.params) == (4, second.params)
    assert not is_surplus(study, redo.number, n_trials)
    study.tell(other, 0.7)
    assert not Tally.of(study).complete(n_trials)
    study.tell(redo, 0.6)
    count = Tally.of(study)
    assert [t.number for t in count.finished] == [0, 2, 4] and count.complete(n_trials)


def test_a_trial_of_a_dead_worker_is_failed_and_queued_again(tmp_path, capsys):
    """Optuna's heartbeat on a real SQLite storage: a trial whose last beat is older than
    stale_after_s (as a SIGKILLed worker leaves it) is failed by the next worker that looks,
    and its params are queued again; the live worker's trial is left alone."""
    import sqlite3

    import optuna

    from deepmine.sweeps.optuna_search import RETRY_OF, Search, is_interrupted, retried
    from deepmine.sweeps.shared_trials import (
        Tally,
        TrialBeats,
        ask,
        fail_stale,
        open_storage,
        worker_name,
    )

    url = f"sqlite:///{tmp_path}/optuna.db"
    study = optuna.create_study(study_name="s", storage=open_storage(url, 4, url))
    search = Search(parse(["lr=tag(log, interval(1e-4, 1e-1))"]), [], "maximize", "s", False, url)
    with TrialBeats(study._storage, every_s=1) as beats:
        dead, alive = ask(study, search, beats), ask(study, search, beats)
        beats.discard(dead._trial_id)  # its worker is gone: no more beats
        with sqlite3.connect(f"{tmp_path}/optuna.db") as db:
            db.execute(
                "UPDATE trial_heartbeats SET heartbeat = '2000-01-01 00:00:00' WHERE trial_id = ?",
                (dead._trial_id,),
            )
        fail_stale(study)
    trials = study.get_trials()
    assert [t.state.name for t in trials] == ["FAIL", "RUNNING", "WAITING"]
    assert (trials[0].number, trials[1].number) == (dead.number, alive.number)
    assert trials[2].user_attrs[RETRY_OF] == dead.number
    assert trials[2].system_attrs["fixed_params"] == dead.params  # what the next ask gets
    assert is_interrupted(trials[0], retried(trials))
    count = Tally.of(study)
    assert (count.finished, [t.number for t in count.running], count.counted) == ([], [1], 2)
    line = f"trial {dead.number} of worker {worker_name()} stopped beating: queued again"
    assert line in capsys.readouterr().out


def test_the_storage_password_is_a_secret_of_the_sweep(tmp_path):
    """A password in the Optuna storage URL (a `hydra.` override, outside the task config) is
    masked in what the parent records and in what the sweeper prints."""
    from test_configs import compose_hydra

    from deepmine.sweeps.optuna_search import shown_storage, storage_url
    from deepmine.sweeps.record import sweep_secrets

    url = "postgresql://mlflow:s3cret-pw@db.example:5432/optuna"
    cfg = compose_hydra(tmp_path, "hydra/sweeper=optuna", f"hydra.sweeper.storage={url}")
    assert "s3cret-pw" in sweep_secrets(cfg)
    assert shown_storage(url) == "postgresql://mlflow:***@db.example:5432/optuna"
    # a bare postgresql:// names the driver deepmine installs (SQLAlchemy 2.1 would pick
    # psycopg 3); an explicit driver, or another database, is kept
    assert storage_url(url).startswith("postgresql+psycopg2://mlflow:s3cret-pw@")
    assert storage_url("postgresql+psycopg://u@h/db") == "postgresql+psycopg://u@h/db"
    assert storage_url("sqlite:////tmp/o.db") == "sqlite:////tmp/o.db"
