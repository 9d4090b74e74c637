"""`deepmine train resume=<run id>`: an interrupted run continues from its last checkpoint into
the same MLflow run and ends with exactly the metrics of an uninterrupted run."""

from __future__ import annotations

import signal
import time

import pytest

from conftest import one_line_error, start_cli

CONFIG = ("data=digits", "data.batch_size=8", "trainer.max_epochs=6", "print_config=false")


@pytest.mark.parametrize(
    "loop",
    [
        (),  # Lightning's own loop
        # k batches a Lightning step, accumulating in groups of 3 (task.steps_per_call)
        ("task.steps_per_call=8", "+trainer.accumulate_grad_batches=3"),
    ],
    ids=["lightning_loop", "steps_per_call_8_accumulate_3"],
)
def test_interrupted_then_resumed_equals_uninterrupted(sandbox, loop):
    config = (*CONFIG, *loop)
    reference = sandbox.train(*config)
    assert reference.returncode == 0, reference.stderr[-3000:]
    (uninterrupted,) = sandbox.runs()
    before = {p.parent.parent for p in sandbox.logs.glob("train/runs/*/*/checkpoints/last.ckpt")}

    run = start_cli("train", *sandbox.overrides(*config), cwd=sandbox.cwd)
    deadline = time.monotonic() + 120
    while not (
        {p.parent.parent for p in sandbox.logs.glob("train/runs/*/*/checkpoints/last.ckpt")}
        - before
    ):
        assert run.poll() is None, run.stderr.read()[-3000:]
        assert time.monotonic() < deadline
        time.sleep(0.05)
    run.send_signal(signal.SIGTERM)  # after the first epoch's checkpoint, mid-training
    assert run.wait(timeout=60) == 130
    interrupted = next(r for r in sandbox.runs() if r.info.run_id != uninterrupted.info.run_id)
    assert interrupted.info.status == "KILLED"

    resumed = sandbox.train(f"resume={interrupted.info.run_id}")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    runs = {r.info.run_id: r for r in sandbox.runs()}
    assert len(runs) == 2, "resume continues the same run"
    after = runs[interrupted.info.run_id]
    assert after.info.status == "FINISHED"
    assert after.data.tags["deepmine.resumed.checkpoint"].endswith("last.ckpt")

    def results(run) -> dict:  # every final metric but the wall times (time/epoch_s)
        return {k: v for k, v in run.data.metrics.items() if not k.startswith("time/")}

    assert results(after) == results(uninterrupted)  # every final metric, exactly
    client = sandbox.client()

    def steps(run_id):
        return sorted({m.step for m in client.get_metric_history(run_id, "val/acc")})

    assert steps(after.info.run_id) == steps(uninterrupted.info.run_id)


def test_resume_refuses_an_unknown_run(sandbox):
    # a FINISHED run is in the bad-input battery (tests/test_bad_input.py)
    proc = sandbox.train("data=digits", "resume=0123456789abcdef0123456789abcdef")
    assert proc.returncode == 2
    assert "no MLflow run '0123456789abcdef0123456789abcdef'" in one_line_error(proc)
