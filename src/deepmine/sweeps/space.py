"""Search spaces written in Hydra's sweep syntax, turned into Optuna distributions.

One syntax for every sweep: the same `choice(...)`, `range(...)`, `interval(...)` and
`tag(log, ...)` a user writes for a grid on the command line describe an Optuna search in
`hparams_search/*.yaml` (under `hydra.sweeper.params`) or on the command line of a search.

    choice(a, b) / a,b          -> CategoricalDistribution
    range(lo, hi, step=s)       -> IntDistribution (FloatDistribution for floats), hi exclusive
    interval(lo, hi)            -> FloatDistribution, both ends inclusive
    tag(log, interval|range)    -> the same with log=True
    a plain value               -> fixed: passed to every trial unchanged
"""

from __future__ import annotations

from dataclasses import dataclass, field

from deepmine.errors import DeepmineError


@dataclass
class SearchSpace:
    distributions: dict = field(default_factory=dict)  # key -> optuna distribution
    fixed: list[str] = field(default_factory=list)  # overrides passed to every trial

    def overrides(self, params: dict) -> list[str]:
        """The command-line overrides of one trial: its sampled params plus the fixed ones."""
        return [*self.fixed, *(f"{key}={_format(value)}" for key, value in params.items())]


def parse(lines: list[str]) -> SearchSpace:
    """Parse `key=<sweep>` overrides (later lines win over earlier ones for the same key)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    space = SearchSpace()
    fixed: dict[str, str] = {}
    for line in lines:
        try:
            override = OverridesParser.create().parse_override(line)
        except HydraException as exc:
            raise DeepmineError(
                f"cannot parse search-space entry '{line}': {exc}",
                "use Hydra's sweep syntax, e.g. optimizer.lr=tag(log, interval(1e-4, 1e-2))",
            ) from None
        key = override.get_key_element()
        space.distributions.pop(key, None)
        fixed.pop(key, None)
        if override.is_sweep_override():
            space.distributions[key] = _distribution(key, override.value())
        else:
            fixed[key] = f"{key}={override.get_value_element_as_str()}"
    space.fixed = list(fixed.values())
    return space


def _distribution(key: str, sweep):
    from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, RangeSweep
    from optuna.distributions import (
        CategoricalDistribution,
        FloatDistribution,
        IntDistribution,
    )

    log = "log" in sweep.tags
    if isinstance(sweep, ChoiceSweep):
        if log:
            raise DeepmineError(f"{key}: tag(log, ...) makes no sense on a choice", "drop the tag")
        return CategoricalDistribution([_categorical(v) for v in sweep.list])
    if isinstance(sweep, IntervalSweep):
        return FloatDistribution(float(sweep.start), float(sweep.end), log=log)
    if isinstance(sweep, RangeSweep):
        start, stop, step = sweep.start, sweep.stop, sweep.step
        if step is None or step <= 0:
            raise DeepmineError(f"{key}: range() needs a positive step", "e.g. range(8, 65, 8)")
        count = int((stop - start - 1e-12) // step) + 1  # Python semantics: stop is exclusive
        if count < 1:
            raise DeepmineError(f"{key}: range({start}, {stop}) is empty", "widen it")
        last = start + (count - 1) * step
        if all(isinstance(v, int) for v in (start, stop, step)):
            if log and step != 1:
                raise DeepmineError(f"{key}: Optuna's log scale needs step 1", "use range(lo, hi)")
            return IntDistribution(start, last, log=log, step=step)
        return FloatDistribution(float(start), float(last), log=log, step=None if log else step)
    raise DeepmineError(f"{key}: unsupported sweep {sweep!r}", "use choice, range or interval")


def _categorical(value):
    """Optuna stores categorical choices as JSON scalars: keep those, stringify the rest."""
    return value if value is None or isinstance(value, bool | int | float | str) else str(value)


def _format(value) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    return repr(value) if isinstance(value, float) else str(value)
