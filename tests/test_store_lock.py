"""Many runs started at once on a store that does not exist yet all record their runs.

Without a lock around store creation, parallel processes race in MLflow's schema migration
(`ALTER TABLE metrics ADD COLUMN step`) and all but one fail. One test only: eight real
training processes are heavy on a small machine.
"""

from __future__ import annotations

from conftest import run_cli_side_by_side

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
    # deepmine_env() already pins OMP_NUM_THREADS=1: eight runs share the cores. All eight are
    # started at once (forked from the warm starter within milliseconds of each other), so they
    # reach the missing store together
    procs = run_cli_side_by_side([args] * PROCESSES, cwd=sandbox.cwd, timeout=TIMEOUT_S)
    errors = [
        f"exit {proc.returncode}: {(proc.stderr.strip().splitlines() or [''])[-1][:300]}"
        for proc in procs
        if proc.returncode != 0
    ]
    assert not errors, f"{len(errors)} of {PROCESSES} failed:\n" + "\n".join(errors)

    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("default")
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == PROCESSES
    for run in runs:
        assert run.info.status == "FINISHED", run.info.run_id
        assert {"test/acc", "val/acc"} <= set(run.data.metrics), run.data.metrics
