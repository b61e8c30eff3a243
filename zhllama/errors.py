"""User-facing errors: one clear message and a non-zero exit, never a traceback."""
from __future__ import annotations

import sys
from typing import Callable, Iterable, Sequence


class UserError(Exception):
    """Bad input or settings. The message is shown to the user as is (no traceback).

    ``problems`` holds every problem found, so validation reports all of them at once.
    """

    def __init__(self, message: str, problems: Sequence[str] = ()):
        self.problems = list(problems)
        if self.problems:
            message = message + "\n" + "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(message)


def raise_if_problems(what: str, problems: Iterable[str], limit: int | None = None) -> None:
    """Raise one UserError listing every problem, if there is any; with ``limit``, the first ``limit``
    and how many more (a file with 10k bad records should not flood the terminal)."""
    problems = list(problems)
    if problems:
        noun = "problem" if len(problems) == 1 else "problems"
        shown = problems if limit is None or len(problems) <= limit else (
            problems[:limit] + [f"... and {len(problems) - limit} more"])
        raise UserError(f"{what}: {len(problems)} {noun}", shown)


class Stopped(Exception):
    """The run saved its state and stopped on request (a signal); running the same command resumes it."""

    EXIT_STATUS = 75  # EX_TEMPFAIL: a temporary failure, try again


def run_cli(main: Callable[[], int | None]) -> None:
    """Run a CLI main(): a UserError prints 'error: ...' on stderr and exits with status 2; a Stopped run
    prints 'stopped: ...' and exits with status 75."""
    try:
        code = main()
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    except Stopped as exc:
        print(f"stopped: {exc}", file=sys.stderr)
        sys.exit(Stopped.EXIT_STATUS)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    sys.exit(code or 0)
