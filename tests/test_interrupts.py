"""Ctrl-C/SIGTERM never land inside a tracking-store write (which would leave SQLite locked)."""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest

from deepmine.runtime import interrupts


def test_signal_inside_critical_is_deferred_to_its_end():
    reached_end_of_block = False
    with interrupts.installed(), pytest.raises(KeyboardInterrupt), interrupts.critical():
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.05)  # a handler that raised would never get past here
        reached_end_of_block = True
    assert reached_end_of_block


def test_signal_outside_critical_interrupts_at_once():
    with interrupts.installed(), pytest.raises(KeyboardInterrupt):
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(5)


def test_handlers_are_restored():
    before = signal.getsignal(signal.SIGINT)
    with interrupts.installed():
        assert signal.getsignal(signal.SIGINT) is not before
    assert signal.getsignal(signal.SIGINT) is before


def test_sigint_during_a_real_store_write_lets_it_finish(tmp_path):
    from mlflow.entities import Metric

    from deepmine.tracking.store import connect

    store = connect(f"sqlite:///{tmp_path}/mlflow.db")
    experiment = store.experiment_id("x")
    batch = [Metric("m", float(i), 0, i) for i in range(1000)]
    warm = store.client.create_run(experiment).info.run_id
    start = time.perf_counter()
    store.client.log_batch(warm, metrics=batch)
    duration = time.perf_counter() - start

    run_id = store.client.create_run(experiment).info.run_id
    timer = threading.Timer(duration / 2, os.kill, (os.getpid(), signal.SIGINT))
    with interrupts.installed(), pytest.raises(KeyboardInterrupt):
        timer.start()
        store.client.log_batch(run_id, metrics=batch)
        time.sleep(5)
    timer.join()
    assert len(store.client.get_metric_history(run_id, "m")) == 1000
    store.client.set_terminated(run_id, "KILLED")  # the database is not left locked
    assert store.client.get_run(run_id).info.status == "KILLED"
