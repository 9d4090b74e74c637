"""Claims: `experiments/<name>.yaml` is an experiment config that also states a published result.

    claim:
      source: <paper or repository, table and row>
      metric: test/acc          # a metric the run logs
      published: 0.871          # null for a baseline this project measures itself
      tolerance: 0.01           # |reproduced mean - published| allowed
      seeds: [0, 1, 2]          # one run per seed
      kind: within              # optional: within (default) | at_least | at_most

`kind` says what is claimed: `within` the published value ± tolerance (a reproduction), or
`at_least` / `at_most` that value, less / plus the tolerance (a comparative claim, e.g. "the net
beats the ARIMA baseline": `skill/arima` at least 0).

A claim is read by composing `experiment=<name>` (with any extra overrides) exactly as a run
would, so what is checked is what runs.
"""

from __future__ import annotations

from dataclasses import dataclass

from deepmine.errors import DeepmineError
from deepmine.project import experiments_dir

REQUIRED = ("source", "metric", "published", "tolerance", "seeds")
KINDS = ("within", "at_least", "at_most")


@dataclass
class Claim:
    name: str
    source: str
    metric: str
    published: float | None
    tolerance: float
    seeds: list[int]
    kind: str = "within"

    @property
    def is_baseline(self) -> bool:
        return self.published is None

    def holds(self, mean: float) -> bool:
        """Whether a reproduced mean supports the claim (a baseline: always)."""
        if self.is_baseline:
            return True
        slack = self.tolerance + 1e-12
        if self.kind == "at_least":
            return mean >= self.published - slack
        if self.kind == "at_most":
            return mean <= self.published + slack
        return abs(mean - self.published) <= slack

    def stated(self) -> str:
        """The claimed value as the reports show it."""
        if self.is_baseline:
            return "—"
        if self.kind == "within":
            return f"{self.published:.4f} ± {self.tolerance:g}"
        sign = "≥" if self.kind == "at_least" else "≤"
        slack = f" (tolerance {self.tolerance:g})" if self.tolerance else ""
        return f"{sign} {self.published:.4f}{slack}"


def available() -> list[str]:
    return sorted(p.stem for p in experiments_dir().glob("*.yaml"))


def load(name: str, overrides: list[str] | tuple[str, ...] = ()) -> tuple[Claim, object]:
    """The claim of experiment `name` and the composed run config it belongs to."""
    names = available()
    if name not in names:
        import difflib

        close = difflib.get_close_matches(name, names, n=1, cutoff=0.5)
        raise DeepmineError(
            f"unknown experiment '{name}' (available: {', '.join(names) or 'none'})",
            (f"did you mean it? e.g. `deepmine reproduce {close[0]}`; or " if close else "")
            + "pick one of them, or add experiments/<name>.yaml",
        )
    from deepmine.config import compose_train

    cfg = compose_train([f"experiment={name}", *overrides])
    from deepmine.provenance.trust import warn_targets

    warn_targets(cfg, f"experiments/{name}.yaml")  # local code: warned about, not refused
    raw = cfg.get("claim")
    if not raw:
        raise DeepmineError(
            f"experiments/{name}.yaml has no claim: block",
            f"add claim: with {', '.join(REQUIRED)}",
        )
    missing = [key for key in REQUIRED if key not in raw]
    if missing:
        raise DeepmineError(
            f"the claim of experiments/{name}.yaml lacks {', '.join(missing)}",
            f"add {', '.join(missing)} under claim:",
        )
    return _checked(name, raw), cfg


def _checked(name: str, raw) -> Claim:
    where = f"experiments/{name}.yaml claim"
    published, tolerance, seeds = raw.published, raw.tolerance, raw.seeds
    if published is not None and not _number(published):
        raise DeepmineError(f"{where}.published={published!r} is not a number", "e.g. 0.871")
    if not _number(tolerance) or tolerance < 0:
        raise DeepmineError(f"{where}.tolerance={tolerance!r} is not a number >= 0", "e.g. 0.01")
    seeds = list(seeds) if seeds is not None and not isinstance(seeds, str | int) else None
    if not seeds or not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds):
        raise DeepmineError(f"{where}.seeds must be a non-empty list of integers", "e.g. [0, 1, 2]")
    kind = str(raw.get("kind") or "within")
    if kind not in KINDS:
        raise DeepmineError(
            f"{where}.kind={kind!r} is not one of {', '.join(KINDS)}", "e.g. within"
        )
    if not str(raw.metric or "").strip() or not str(raw.source or "").strip():
        raise DeepmineError(f"{where} needs a non-empty metric and source", "e.g. test/acc")
    return Claim(
        name=name,
        source=" ".join(str(raw.source).split()),
        metric=str(raw.metric),
        published=None if published is None else float(published),
        tolerance=float(tolerance),
        seeds=[int(s) for s in seeds],
        kind=kind,
    )


def _number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)
