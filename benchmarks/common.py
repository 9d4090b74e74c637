"""Shared pieces of the benchmarks: the hand-written PyTorch loop deepmine is measured against,
a deepmine run in this process, the machine's description, and result files.

The reference loop is what a researcher would write by hand for the same model, data and batch
size: tensors in memory, one `randperm` per epoch, batches by indexing, Adam, no logging. Its
"epoch" is what deepmine's `time/epoch_s` measures: one pass over the training split plus one
accuracy pass over the validation split.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"


def machine() -> dict:
    import lightning
    import mlflow
    import torch

    return {
        "cores": os.cpu_count(),
        "cpu": _cpu_model(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "lightning": lightning.__version__,
        "mlflow": mlflow.__version__,
        "torch_threads": torch.get_num_threads(),
    }


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def fashion_mnist_datamodule(batch_size: int = 32):
    """Fashion-MNIST as a deepmine run reads it (split seed 0, normalize=scale), set up."""
    from deepmine.data.fashion_mnist import FashionMNISTDataModule

    dm = FashionMNISTDataModule(
        data_dir=str(ROOT / "data" / "fashion_mnist"),
        num_classes=10,
        input_shape=[1, 28, 28],
        batch_size=batch_size,
    )
    dm.setup()
    return dm


def fashion_mnist_tensors(batch_size: int = 32):
    """The train/val tensors a deepmine run trains on (split seed 0), normalized in advance."""
    dm = fashion_mnist_datamodule(batch_size)
    return dm.normalized("train"), dm.normalized("val")


def make_net(name: str):
    """The nets of conf/net/ with their default settings."""
    from deepmine.nets.cnn import SmallCNN
    from deepmine.nets.mlp import MLP

    if name == "seed_mlp":
        return MLP([1, 28, 28], 10, hidden_sizes=[64], dropout=0.2)
    if name == "cnn":
        return SmallCNN([1, 28, 28], 10, channels=[32, 64], kernel_size=5)
    raise ValueError(f"no reference net for {name!r}")


def hand_written_epochs(
    net_name: str, batch_size: int, epochs: int, seed: int = 0, same_work: bool = False
) -> list[float]:
    """Seconds of each epoch of the hand-written loop.

    `same_work=True` adds, by hand, the work a deepmine run does on purpose rather than as
    framework overhead, so that a ratio against it is the framework's alone: deterministic
    algorithms (`trainer.deterministic=true`), images kept as uint8 and scaled per batch (a
    quarter of float32's memory), and the training scores' on-device sums (predicted-class
    counts, the loss sum) on every step."""
    import torch

    if same_work:
        dm = fashion_mnist_datamodule(batch_size)
        (x, y), (x_val, y_val) = dm.tensors["train"], dm.normalized("val")
        deterministic = torch.are_deterministic_algorithms_enabled()
        torch.use_deterministic_algorithms(True)
    else:
        (x, y), (x_val, y_val) = fashion_mnist_tensors(batch_size)
    torch.manual_seed(seed)
    model = make_net(net_name)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = torch.nn.CrossEntropyLoss()
    generator = torch.Generator().manual_seed(seed)
    counts, loss_sum = torch.zeros(100, dtype=torch.long), torch.zeros(())
    seconds = []
    for _ in range(epochs):
        start = time.perf_counter()
        model.train()
        order = torch.randperm(len(x), generator=generator)
        for begin in range(0, len(x), batch_size):
            index = order[begin : begin + batch_size]
            inputs, targets = x[index], y[index]
            if same_work:
                inputs = inputs.to(torch.float32) / 255.0
            optimizer.zero_grad(set_to_none=True)
            outputs = model(inputs)
            loss = loss_fn(outputs, targets)
            if same_work:
                predicted = outputs.detach().argmax(1)
                counts.add_(torch.bincount(targets * 10 + predicted, minlength=100))
                loss_sum.add_(loss.detach() * len(targets))
            loss.backward()
            optimizer.step()
        model.eval()
        correct = 0
        with torch.no_grad():
            for begin in range(0, len(x_val), 1000):
                logits = model(x_val[begin : begin + 1000])
                correct += int((logits.argmax(1) == y_val[begin : begin + 1000]).sum())
        seconds.append(time.perf_counter() - start)
    if same_work:
        torch.use_deterministic_algorithms(deterministic)
    return seconds


def deepmine_run(overrides: list[str], tracking_uri: str | None = None) -> dict:
    """`deepmine train <overrides>` in this process (the CLI's own entry point); returns the
    run's metrics.json (epoch_seconds, fit_seconds, metrics), its folder and MLflow run id."""
    from deepmine.cli import main

    out = Path(tempfile.mkdtemp(prefix="deepmine-bench-"))
    args = ["train", *overrides, f"hydra.run.dir={out}", "print_config=false"]
    if tracking_uri:
        args.append(f"logger.tracking_uri={tracking_uri}")
    code = main(args)
    if code != 0:
        raise SystemExit(f"deepmine train {' '.join(overrides)} exited {code}")
    summary = json.loads((out / "metrics.json").read_text())
    summary["output_dir"] = str(out)
    record = out / "mlflow_run.json"
    if record.is_file():
        summary["run_id"] = json.loads(record.read_text())["run_id"]
    return summary


def temp_store() -> str:
    """A fresh SQLite MLflow store in a temporary folder: benchmarks never touch the project's
    own store (whose size would change the timings)."""
    return f"sqlite:///{tempfile.mkdtemp(prefix='deepmine-bench-store-')}/mlflow.db"


def median(values: list[float]) -> float:
    return statistics.median(values)


def save(name: str, result: dict) -> Path:
    """Write `benchmarks/results/<name>.json` with the command and the machine."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    result = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": machine(),
        **result,
    }
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    return path
