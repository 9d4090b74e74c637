"""One exception type for every mistake a user can fix.

The CLI prints a `DeepmineError` as a single line, `error: <problem>. Fix: <what to do>`, and
exits non-zero, so bad input never ends in a traceback that hides the one sentence that matters.
"""


class DeepmineError(Exception):
    """A problem the user can fix; `fix` says how."""

    def __init__(self, problem: str, fix: str | None = None):
        self.problem = problem.rstrip(".")
        self.fix = fix
        super().__init__(self.one_line())

    def one_line(self) -> str:
        return f"{self.problem}. Fix: {self.fix}" if self.fix else self.problem


def first_line(exc: BaseException) -> str:
    """The first non-empty line of an exception's message (library messages span many)."""
    return (str(exc).strip().splitlines() or [""])[0]
