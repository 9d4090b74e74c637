"""Many runs started at once on a store that does not exist yet all record their runs.

Without a lock around store creation, parallel processes race in MLflow's schema migration
(`ALTER TABLE metrics ADD COLUMN step`) and all but one fail. One test only: eight real
training processes are heavy on a small machine.
"""

from __future__ import annotations

import time

from conftest import start_cli

PROCESSES = 8
TIMEOUT_S = 240


def test_parallel_runs_on_a_fresh_store_all_finish(sandbox):
    db = sandbox.path / "fresh" / "mlflow.db"
    uri = f"sqlite:///{db}"
    assert not db.exists()
    args = [
        "train",
        "data=digits",
        "debug=fast",
        f"logger.tracking_uri={uri}",
        f"paths.log_dir={sandbox.logs}",
    ]
    # deepmine_env() already pins OMP_NUM_THREADS=1: eight runs share the cores
    procs = [start_cli(*args, cwd=sandbox.cwd) for _ in range(PROCESSES)]
    errors = []
    try:
        deadline = time.monotonic() + TIMEOUT_S
        for proc in procs:
            _, stderr = proc.communicate(timeout=max(1.0, deadline - time.monotonic()))
            if proc.returncode != 0:
                last = (stderr.strip().splitlines() or [""])[-1]
                errors.append(f"exit {proc.returncode}: {last[:300]}")
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert not errors, f"{len(errors)} of {PROCESSES} failed:\n" + "\n".join(errors)

    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("default")
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == PROCESSES
    for run in runs:
        assert run.info.status == "FINISHED", run.info.run_id
        assert {"test/acc", "val/acc"} <= set(run.data.metrics), run.data.metrics
