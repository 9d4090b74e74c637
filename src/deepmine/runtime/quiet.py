"""Lines third-party libraries print that say nothing about the run (and Lightning's SLURM hint,
which misleads: see `silence_lightning_tips`).

Lightning 2.6 logs an advertisement ("💡 Tip: For seamless cloud logging and experiment
tracking, try installing [litlogger]...") at INFO every time a Trainer is built without its
LitLogger, which is every deepmine run: deepmine logs to MLflow. It is dropped by a filter on
the loggers that emit it, for that message only, so every other Lightning line (the model
summary, the GPU report, warnings) still reaches the user. Lowering Lightning's log level
would hide those too.
"""

from __future__ import annotations

import logging
import warnings

#: the loggers Lightning's `rank_zero_info` writes to (lightning_utilities rebinds its logger
#: to whichever Lightning package imported it last; all of them are covered)
RANK_ZERO_LOGGERS = (
    "lightning.pytorch.utilities.rank_zero",
    "lightning.fabric.utilities.rank_zero",
    "lightning_utilities.core.rank_zero",
    "pytorch_lightning.utilities.rank_zero",
    "lightning_fabric.utilities.rank_zero",
)
#: a piece of the advertisement's text, found in no other Lightning message
ADVERTISEMENT = "litlogger"


class _DropAdvertisement(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return ADVERTISEMENT not in str(record.msg).lower()


_FILTER = _DropAdvertisement()


def silence_lightning_tips() -> None:
    """Drop Lightning's LitLogger advertisement; idempotent (a sweep builds many Trainers in
    one process, and a logger keeps a filter only once)."""
    for name in RANK_ZERO_LOGGERS:
        logging.getLogger(name).addFilter(_FILTER)
    # Lightning's hint to "prepend srun" wherever srun is installed, at every Trainer and
    # every fit (checkpoint selection asks for SLURM again): deepmine reaches SLURM through
    # launcher=slurm, which does use srun, so the hint only misleads
    warnings.filterwarnings("ignore", message="The `srun` command is available")
