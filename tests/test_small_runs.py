"""Small runs and sweeps stay cheap without losing a check (issue 25).

- A new SQLite store is a copy of a template MLflow itself migrated, not fifty migrations again;
  the copy is a store MLflow accepts, with deepmine's retired `Default` stamped here and now.
- MLflow's schema check is skipped only for a store already at the head revision: an old store
  is still refused with MLflow's "out-of-date" message.
- Metrics are sent by the logger's own thread, so closing a run does not wait on MLflow's
  one-second poll; every metric is in the store when `flush` returns.
- The process entry ends without the interpreter's teardown, after the atexit handlers and a
  flush of its output, with its exit code.
"""

from __future__ import annotations

import shutil
import sqlite3
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

from deepmine.errors import DeepmineError


@pytest.fixture
def project(tmp_path, monkeypatch) -> Path:
    """A project root of its own: its `.cache/` holds this test's template alone."""
    root = tmp_path / "project"
    root.mkdir()
    monkeypatch.setenv("DEEPMINE_ROOT", str(root))
    monkeypatch.chdir(tmp_path)
    return root


def _experiments(db: Path) -> dict[int, tuple]:
    with sqlite3.connect(db) as conn:
        rows = conn.execute(
            "SELECT experiment_id, name, lifecycle_stage, artifact_location FROM experiments"
        ).fetchall()
    return {row[0]: row[1:] for row in rows}


def test_a_new_store_is_a_copy_of_the_first_ones_template(project, tmp_path, monkeypatch):
    import mlflow.store.db.utils as db_utils

    from deepmine.tracking import store_schema
    from deepmine.tracking.store import connect

    first = tmp_path / "a" / "mlflow.db"
    connect(f"sqlite:///{first}").experiment_id("default")
    head = db_utils._get_latest_schema_revision()
    assert store_schema.known_head() == head
    assert list((project / ".cache" / "mlflow-store").glob("*.db"))

    def no_migrations(engine):
        raise AssertionError("a store created from the template ran MLflow's migrations")

    monkeypatch.setattr(db_utils, "_upgrade_db", no_migrations)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    second = tmp_path / "b" / "mlflow.db"
    store = connect(f"sqlite:///{second}")
    experiment_id = store.experiment_id("default")
    assert store_schema.revision(second) == head
    experiments = _experiments(second)
    # MLflow's Default, retired as deepmine retires it, where MLflow would have put it here
    assert experiments[0][:2] == ("Default", "deleted")
    assert experiments[0][2] == str(elsewhere / "mlruns" / "0")
    assert experiments[int(experiment_id)][:2] == ("default", "active")
    run = store.client.create_run(experiment_id)
    store.client.log_metric(run.info.run_id, "m", 1.0)
    store.client.set_terminated(run.info.run_id)
    assert store.client.get_run(run.info.run_id).data.metrics == {"m": 1.0}


def test_an_old_store_is_still_checked_and_refused(project, tmp_path):
    from deepmine.tracking.store import connect

    current = tmp_path / "current" / "mlflow.db"
    connect(f"sqlite:///{current}")
    old = tmp_path / "old" / "mlflow.db"
    old.parent.mkdir()
    shutil.copyfile(current, old)
    with sqlite3.connect(old) as conn:
        conn.execute("UPDATE alembic_version SET version_num = '0a8213491aaa'")
    with pytest.raises(DeepmineError, match="out-of-date database schema"):
        connect(f"sqlite:///{old}")


def test_the_check_is_skipped_for_that_store_alone(project, tmp_path):
    import mlflow.store.db.utils as db_utils

    from deepmine.tracking.store import connect
    from deepmine.tracking.store_schema import schema_check_skipped

    db = tmp_path / "s" / "mlflow.db"
    connect(f"sqlite:///{db}")
    original = db_utils._verify_schema
    other = type("Engine", (), {"url": type("Url", (), {"database": "/other.db"})()})()
    checked = []
    db_utils._verify_schema = checked.append
    try:
        with schema_check_skipped(db):
            mine = type("Engine", (), {"url": type("Url", (), {"database": str(db)})()})()
            db_utils._verify_schema(mine)
            db_utils._verify_schema(other)
        assert checked == [other]
    finally:
        db_utils._verify_schema = original
    missing = tmp_path / "none" / "mlflow.db"
    with schema_check_skipped(missing):  # no store there: MLflow's own check, unchanged
        assert db_utils._verify_schema is original


def test_metrics_are_stored_when_flush_returns_without_mlflows_queue(project, tmp_path):
    from deepmine.tracking.run import recorded_run
    from deepmine.tracking.store import connect

    store = connect(f"sqlite:///{tmp_path / 'm' / 'mlflow.db'}")
    with recorded_run(store, "default", "metrics", {}) as run:
        logger = run.lightning_logger(flush_every_s=0)
        for step in range(5):
            logger.log_metrics({"train/loss": 1.0 / (step + 1)}, step=step)
        logger.flush()
        history = store.client.get_metric_history(run.run_id, "train/loss")
        assert [point.step for point in history] == list(range(5))
        assert not any(t.name.startswith("deepmine-metrics") for t in threading.enumerate())
    raw = store.client._client
    assert not raw._tracking_client.store._async_logging_queue.is_active()
    assert store.client.get_run(run.run_id).info.status == "FINISHED"


def _entry(code: str, tmp_path: Path) -> subprocess.CompletedProcess:
    script = tmp_path / "entry.py"
    script.write_text(textwrap.dedent(code))
    return subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60)


def test_the_process_entry_exits_after_atexit_and_its_output(tmp_path):
    done = _entry(
        """
        import atexit, sys, threading, time
        from deepmine.runtime.fast_exit import exit_now
        atexit.register(lambda: print("atexit ran"))
        worker = threading.Thread(target=lambda: (time.sleep(0.3), print("thread done")))
        worker.start()
        sys.stdout.write("buffered, no newline")
        sys.exit(exit_now(3))
        """,
        tmp_path,
    )
    assert done.returncode == 3, done.stderr
    assert done.stdout == "buffered, no newlinethread done\natexit ran\n"


def test_cli_main_called_with_arguments_returns(tmp_path):
    done = _entry(
        """
        from deepmine.cli import main
        print("returned", main(["--help"]) == 0 and main(["no-such-command"]))
        """,
        tmp_path,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.rstrip().endswith("returned 2")


def test_a_stop_request_wrapped_by_a_library_still_counts_as_interrupted():
    """Hydra turns an OmegaConf error met while a SIGTERM unwound a compose into an empty
    ConfigCompositionException: the CLI exits 130 with the interrupted line, not 2 with
    "error: ", and a run closing on it is KILLED (`interrupted`)."""
    from hydra.errors import ConfigCompositionException
    from omegaconf.errors import OmegaConfBaseException

    from deepmine.cli import EXIT_INTERRUPTED, _guarded
    from deepmine.run.errors import describe_error
    from deepmine.runtime.interrupts import interrupted

    def wrapped():
        try:
            try:
                raise KeyboardInterrupt("signal 15")
            except KeyboardInterrupt:
                raise OmegaConfBaseException("while resolving") from None
        except OmegaConfBaseException as inner:
            raise ConfigCompositionException() from inner

    try:
        wrapped()
    except ConfigCompositionException as exc:
        caught = exc
    # `from None` keeps the context: the chain still leads to the interrupt
    assert interrupted(caught) and not interrupted(ValueError("x"))
    assert describe_error(caught) == "OmegaConfBaseException: while resolving"  # never empty
    assert _guarded(wrapped) == EXIT_INTERRUPTED
