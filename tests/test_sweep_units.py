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
from deepmine.process_state import isolated
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
