"""Two runs of the same config on the same machine give identical metrics; seeds matter."""

import json

from conftest import Sandbox

ARGS = ("data=digits", "net=cnn", "trainer.max_epochs=2", "logger=none", "print_config=false")


def final_metrics(box: Sandbox, *extra: str) -> dict:
    before = set(box.logs.glob("train/runs/*/*/metrics.json"))
    # fresh interpreters: each with its own hash seed, as two runs by a user would be
    proc = box.train(*ARGS, *extra, fresh=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    (new,) = set(box.logs.glob("train/runs/*/*/metrics.json")) - before
    metrics = json.loads(new.read_text())["metrics"]
    return {k: v for k, v in metrics.items() if not k.startswith("time/")}  # wall times vary


def test_same_config_same_metrics_and_seed_zero_is_a_seed(sandbox):
    first = final_metrics(sandbox, "seed=0")
    second = final_metrics(sandbox, "seed=0")
    assert first == second  # bit-identical, every metric
    other = final_metrics(sandbox, "seed=1")
    assert other["train/loss_epoch"] != first["train/loss_epoch"]
