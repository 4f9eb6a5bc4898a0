"""One error type for bad input, and the wrapper that turns it into one line and exit code 2."""
from __future__ import annotations

import errno
import functools
import sys
import warnings
from typing import Callable, Iterable, TypeVar

F = TypeVar("F", bound=Callable[..., object])


class BenchError(Exception):
    """Bad input a user can fix: printed as one line, exit code 2, no traceback."""


def choose(kind: str, value: str, valid: Iterable[str]) -> str:
    """Return `value` if it is one of `valid`, else raise naming the kind and the valid values."""
    valid = sorted(valid)
    if value not in valid:
        raise BenchError(f"unknown {kind} {value!r}; valid: {', '.join(valid)}")
    return value


# The machine's faults, not the code's: a full disk or quota, a read-only or failing file system,
# a path the user may not write. One line names the file; a traceback would say nothing more.
ENVIRONMENT_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EIO)


def one_line_warning(message, category, filename, lineno, line=None) -> str:
    """A warning as a command shows it: `warning: <message>`, without the file, line and source
    line of the code that raised it (Python's format), which tell a user nothing."""
    return f"warning: {' '.join(str(message).split())}\n"


def cli(main: F) -> F:
    """Decorate a command-line entry point: a BenchError, or an OSError of the machine's
    (ENVIRONMENT_ERRNOS), exits 2 with `error: <message>`; a warning prints as one line."""

    @functools.wraps(main)
    def wrapper(*args, **kwargs):
        shown, warnings.formatwarning = warnings.formatwarning, one_line_warning
        try:
            return main(*args, **kwargs)
        except BenchError as err:
            print(f"error: {err}", file=sys.stderr)
            raise SystemExit(2) from None
        except OSError as err:
            if err.errno not in ENVIRONMENT_ERRNOS:
                raise
            where = f"{err.filename}: " if err.filename else ""
            print(f"error: {where}{err.strerror or err}", file=sys.stderr)
            raise SystemExit(2) from None
        finally:
            warnings.formatwarning = shown

    return wrapper  # type: ignore[return-value]
