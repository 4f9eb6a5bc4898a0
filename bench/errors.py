"""One error type for bad input, and the wrapper that turns it into one line and exit code 2."""
from __future__ import annotations

import functools
import sys
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


def cli(main: F) -> F:
    """Decorate a command-line entry point: a BenchError exits 2 with `error: <message>`."""

    @functools.wraps(main)
    def wrapper(*args, **kwargs):
        try:
            return main(*args, **kwargs)
        except BenchError as err:
            print(f"error: {err}", file=sys.stderr)
            raise SystemExit(2) from None

    return wrapper  # type: ignore[return-value]
