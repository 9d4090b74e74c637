"""Leave the process as the run found it, so the next job in the same process starts clean.

Sweep jobs share processes: Hydra's basic launcher runs them one after another in the sweeper's
process, and joblib's loky workers are reused from one job to the next. What a run changes
process-wide then leaks into the next job: environment variables (`PL_GLOBAL_SEED`,
`CUBLAS_WORKSPACE_CONFIG`, the DDP rank variables), the global RNG states, torch's
deterministic-algorithm and cuDNN flags, its thread count, a torch.distributed process group,
and MLflow's fluent active-run stack. `isolated()` snapshots all of them before a run and puts
them back afterwards, whatever way the run ends; what lives in a layer above this one (MLflow's
stack, `deepmine.tracking`) is handed in as a cleanup, so this room imports no tracking code.
"""

from __future__ import annotations

import contextlib
import os
import random
from collections.abc import Callable, Iterator


@contextlib.contextmanager
def isolated(*cleanups: Callable[[], None]) -> Iterator[None]:
    import numpy as np
    import torch

    environ = dict(os.environ)
    rng = (random.getstate(), np.random.get_state(), torch.get_rng_state())
    flags = (
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
        torch.backends.cudnn.deterministic,
        torch.backends.cudnn.benchmark,
        torch.get_num_threads(),
    )
    try:
        yield
    finally:
        _end_process_group()
        for cleanup in cleanups:
            cleanup()
        os.environ.clear()
        os.environ.update(environ)
        random.setstate(rng[0])
        np.random.set_state(rng[1])
        torch.set_rng_state(rng[2])
        deterministic, warn_only, cudnn_deterministic, cudnn_benchmark, threads = flags
        torch.use_deterministic_algorithms(deterministic, warn_only=warn_only)
        torch.backends.cudnn.deterministic = cudnn_deterministic
        torch.backends.cudnn.benchmark = cudnn_benchmark
        torch.set_num_threads(threads)


def _end_process_group() -> None:
    """A DDP job's process group would be silently reused (with stale ranks) by the next job."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
