"""Wall-clock marks of a run's start-up (CLI entered, config composed, torch imported, data
checked, store ready, parts built, MLflow run open, data loaded, first training step), written
to the run's metrics.json as seconds since the CLI was entered: where time-to-first-step goes
(benchmarks/first_step.py reads them)."""

from __future__ import annotations

import time

_marks: dict[str, float] = {}


def mark(name: str) -> None:
    """Record `name` now (the first time only: a sweep's later jobs keep their own marks
    through `start_job`)."""
    _marks.setdefault(name, time.time())


def start_job() -> None:
    """Forget the previous job's marks; the CLI's own start stays."""
    cli = _marks.get("cli_start")
    _marks.clear()
    if cli is not None:
        _marks["cli_start"] = cli


def since_cli() -> dict[str, float]:
    """Every mark as seconds since the CLI was entered, plus the absolute start time."""
    origin = _marks.get("cli_start")
    if origin is None:
        return {}
    result = {name: round(at - origin, 4) for name, at in _marks.items()}
    result["cli_start_unix"] = origin
    return result
