"""Each kind of bad input: one clear line naming problem and fix, a non-zero exit, and no MLflow
run left behind (checks happen before a run is opened)."""

from __future__ import annotations

import socket

import pytest

from conftest import one_line_error


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def assert_refused(box, proc, *fragments: str) -> str:
    assert proc.returncode == 2, proc.stderr[-2000:]
    line = one_line_error(proc)
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    for fragment in fragments:
        assert fragment in line, line
    assert box.runs() == [], "bad input must not leave an MLflow run"
    return line


def test_unknown_group_option_lists_the_available_ones(sandbox):
    proc = sandbox.train("net=cnnn")
    assert_refused(
        sandbox,
        proc,
        "unknown option 'cnnn' for config group 'net'",
        "available: autoencoder, cnn, conv_autoencoder, gru, lstm, mlp, seed_mlp, transformer",
        "e.g. net=cnn",
    )


def test_unknown_key(sandbox):
    proc = sandbox.train("trainer.epochs=3")
    assert_refused(sandbox, proc, "unknown config key 'trainer.epochs'", "+trainer.epochs=")


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("trainer.max_epochs=abc", "expected an integer"),
        ("trainer.max_epochs=2.5", "expected an integer"),
        ("optimizer.lr=fast", "expected a number"),
        ("trainer.deterministic=3", "expected true or false"),
        ("seed=null", "seed must be an integer"),
    ],
)
def test_wrong_type_for_an_option(sandbox, override, expected):
    proc = sandbox.train("data=digits", override)
    assert_refused(sandbox, proc, expected, override.split("=")[0])


def test_wrong_type_is_checked_against_the_chosen_group(sandbox):
    proc = sandbox.train("optimizer=sgd", "optimizer.momentum=high")
    assert_refused(sandbox, proc, "optimizer.momentum='high'", "expected a number")


def test_an_int_where_a_float_is_expected_is_fine(sandbox):
    proc = sandbox.train("data=digits", "debug=fast", "optimizer.lr=1", "logger=none")
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_unreachable_tracking_server(sandbox):
    port = free_port()
    proc = sandbox.train("data=digits", f"logger.tracking_uri=http://127.0.0.1:{port}")
    assert_refused(
        sandbox,
        proc,
        f"MLflow tracking server http://127.0.0.1:{port} is unreachable",
        "Fix: start it",
    )


def test_relative_sqlite_store_is_refused(sandbox):
    proc = sandbox.train("data=digits", "logger.tracking_uri=sqlite:///mlflow.db")
    assert_refused(sandbox, proc, "relative to the current directory", "sqlite:////")
    assert list(sandbox.cwd.iterdir()) == []


def test_eval_needs_exactly_one_source(sandbox):
    from conftest import run_cli

    proc = run_cli("eval", *sandbox.overrides(), cwd=sandbox.cwd)
    assert_refused(sandbox, proc, "exactly one of run_id and ckpt_path")


def test_eval_unknown_run_id(sandbox):
    from conftest import run_cli

    sandbox.train("data=digits", "debug=fast")  # creates the store
    proc = run_cli("eval", *sandbox.overrides("run_id=0123456789abcdef"), cwd=sandbox.cwd)
    assert proc.returncode == 2
    assert "no MLflow run '0123456789abcdef'" in one_line_error(proc)


def test_resume_true_outside_a_search_is_refused(sandbox):
    proc = sandbox.train("data=digits", "resume=true")
    assert_refused(
        sandbox, proc, "resume=true continues an Optuna search", "or pass resume=<run id>"
    )


def test_a_sweep_with_an_unknown_option_starts_no_job(sandbox):
    from conftest import run_cli

    args = sandbox.overrides("data=digits", "debug=fast", "net=seed_mlp,cnnn")
    proc = run_cli("train", "-m", *args, cwd=sandbox.cwd)
    assert_refused(sandbox, proc, "unknown option 'cnnn' for config group 'net'")
    assert not list(sandbox.logs.glob("train/multiruns/*/*/0"))


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("seed=-1", "seed=-1 is outside [0, 2**32)"),
        ("trainer.max_epochs=0", "trainer.max_epochs=0 is not valid: it must be at least 1"),
        ("data.batch_size=0", "data.batch_size=0 is not valid"),
        ("data.batch_size=-32", "data.batch_size=-32 is not valid"),
        ("data.eval_batch_size=0", "data.eval_batch_size=0 is not valid"),
        ("optimizer.lr=-0.001", "optimizer.lr=-0.001 is not valid: it must be a positive number"),
    ],
)
def test_values_no_run_can_use_are_refused_before_a_run_opens(sandbox, override, expected):
    proc = sandbox.train("data=digits", override)
    assert_refused(sandbox, proc, expected, "Fix:")


def test_an_output_folder_that_cannot_be_made_is_one_line(sandbox):
    # /proc takes no new folders, even for root (who may write anywhere else)
    proc = sandbox.train("data=digits", "paths.log_dir=/proc/deepmine-logs")
    assert_refused(sandbox, proc, "cannot use /proc/deepmine-logs", "paths.log_dir")
