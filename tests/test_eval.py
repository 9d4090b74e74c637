"""`deepmine eval` rebuilds a recorded run from MLflow and reproduces its test metrics."""

import json

from conftest import run_cli


def test_eval_by_run_id_matches_the_training_run(sandbox):
    # Full test set in both: the training run's test split is not limited here.
    args = ("data=digits", "trainer.max_epochs=2", "print_config=false")
    proc = sandbox.train(*args)
    assert proc.returncode == 0, proc.stderr[-2000:]
    (trained,) = sandbox.runs()
    proc = run_cli(
        "eval", *sandbox.overrides(f"run_id={trained.info.run_id}", "data=digits"), cwd=sandbox.cwd
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    evaluated = [r for r in sandbox.runs() if r.info.run_id != trained.info.run_id]
    (run,) = evaluated
    assert run.info.status == "FINISHED"
    assert run.data.tags["deepmine.evaluated_run"] == trained.info.run_id
    for key in ("test/acc", "test/f1_macro", "test/loss"):
        assert run.data.metrics[key] == trained.data.metrics[key], key
    assert f"{trained.data.metrics['test/acc']:.4f}" in proc.stdout


def test_eval_by_checkpoint_file(sandbox):
    proc = sandbox.train("data=digits", "debug=fast", "logger=none")
    assert proc.returncode == 0, proc.stderr[-2000:]
    (ckpt,) = sandbox.logs.glob("train/runs/*/*/checkpoints/epoch*.ckpt")
    proc = run_cli(
        "eval",
        f"paths.log_dir={sandbox.logs}",
        "logger=none",
        "data=digits",
        f"ckpt_path={ckpt}",
        cwd=sandbox.cwd,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "test/acc" in proc.stdout
    # wrong model for the checkpoint: one line, naming the mismatch
    proc = run_cli(
        "eval",
        f"paths.log_dir={sandbox.logs}",
        "logger=none",
        "data=digits",
        "net=cnn",
        f"ckpt_path={ckpt}",
        cwd=sandbox.cwd,
    )
    assert proc.returncode == 2
    assert "does not fit the configured model" in proc.stderr.strip().splitlines()[-1]
    assert json.loads(next(sandbox.logs.glob("train/runs/*/*/metrics.json")).read_text())


def test_eval_option_of_another_task_is_refused_not_dropped(sandbox):
    """`robustness=` attacks classifiers: on a regression run it is refused in one line before
    any eval run opens (the task's `eval_options` say which keys the eval command decides)."""
    proc = sandbox.train("task=regression", "data=diabetes", "net=mlp", "debug=fast")
    assert proc.returncode == 0, proc.stderr[-2000:]
    (trained,) = sandbox.runs()
    proc = run_cli(
        "eval",
        *sandbox.overrides(f"run_id={trained.info.run_id}", "robustness=fgsm_pgd"),
        cwd=sandbox.cwd,
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    line = proc.stderr.strip().splitlines()[-1]
    assert line.startswith("error: robustness applies to ClassificationTask models"), line
    assert "RegressionTask" in line and "Fix: drop robustness=" in line, line
    assert [r.info.run_id for r in sandbox.runs()] == [trained.info.run_id]
