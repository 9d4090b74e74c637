"""Where a run executes when an engine placed it: the SLURM job and node, the Ray node.

These are tags, not params: they say where a run happened, not what it computed, so two runs
of one config placed on different nodes still compare as equals. They also let `runs doctor`
ask the engine about a RUNNING run whose process it cannot see (a SLURM job on another node).
"""

from __future__ import annotations

import os
import sys

from deepmine.runtime import slurm

SLURM_JOB_TAG = "deepmine.slurm.job_id"
SLURM_NODE_TAG = "deepmine.slurm.node"
RAY_NODE_TAG = "deepmine.ray.node_id"
#: 1 for a first start, n + 1 after n requeues
SLURM_ATTEMPTS_TAG = "deepmine.slurm.attempts"


def placement_tags() -> dict[str, str]:
    tags = {}
    job = slurm.job_id()
    if job:
        tags[SLURM_JOB_TAG] = job
        node = os.environ.get("SLURMD_NODENAME")
        if node:
            tags[SLURM_NODE_TAG] = node
        tags[SLURM_ATTEMPTS_TAG] = str(slurm.attempt())
    ray = sys.modules.get("ray")  # only a Ray worker has imported it
    if ray is not None and ray.is_initialized():
        tags[RAY_NODE_TAG] = ray.get_runtime_context().get_node_id()
    return tags
