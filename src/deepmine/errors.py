"""One exception type for every mistake a user can fix.

The CLI prints a `DeepmineError` as a single line, `error: <problem>. Fix: <what to do>`, and
exits non-zero, so bad input never ends in a traceback that hides the one sentence that matters.

A fix is written so that it can be followed literally (tests/test_bad_input.py follows every
one): the corrected command in backticks or the corrected override after "e.g.", "drop <key>"
for an override to remove, or a repair command in backticks after which the same command works.
"""

#: exit codes of every command: a run or check that failed, bad input (a `DeepmineError`'s
#: default), Ctrl-C or SIGTERM
EXIT_FAILED = 1
EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130

#: what an interrupted command prints (Ctrl-C or SIGTERM), wherever it is caught
INTERRUPTED = (
    "error: interrupted (Ctrl-C or SIGTERM); a run that was open is closed KILLED with what it "
    "logged, and resume=<its run id> continues it. Fix: run the same command again"
)


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
