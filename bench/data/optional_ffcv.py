"""FFCV as an optional dependency: whether it imports here, what to say where it does not, and how
many threads FFCV writes and decodes with.

`import ffcv` costs seconds (numba) and fails where its compiled parts are missing, so nothing here
imports it at module level: `ffcv_available()` tries once and remembers the answer.
"""
from __future__ import annotations

import logging
from functools import lru_cache

from bench.errors import BenchError
from bench.job_env import job_cpus

log = logging.getLogger(__name__)

FFCV_VERSION = "1.0.2"
INSTALL_HINT = "install it with bench/scripts/install_ffcv.sh (needs libturbojpeg and OpenCV headers)"


@lru_cache(maxsize=1)
def ffcv_available() -> bool:
    """True if FFCV and its compiled parts (libffcv, numba, OpenCV) import here."""
    try:
        import ffcv.fields  # noqa: F401
        import ffcv.loader  # noqa: F401
        import ffcv.writer  # noqa: F401
    except Exception as err:  # ImportError, OSError (a missing libturbojpeg), numba errors
        log.debug("ffcv unavailable: %s", err)
        return False
    return True


_warned_no_ffcv = False


def warn_no_ffcv_once() -> bool:
    """Log, once per process, that FFCV was asked for but is missing. Returns True if it logged."""
    global _warned_no_ffcv
    if _warned_no_ffcv:
        return False
    _warned_no_ffcv = True
    log.warning("ffcv is not installed: reading the data with the torchvision DataLoader "
                "instead (slower); %s", INSTALL_HINT)
    return True


def require_ffcv() -> None:
    """Raise a BenchError naming how to install FFCV where it does not import."""
    if not ffcv_available():
        raise BenchError(f"ffcv is not installed or does not import; {INSTALL_HINT}")


def ffcv_workers(num_workers: int | None) -> int:
    """Threads for FFCV to write or decode with: `num_workers`, default `job_cpus()`."""
    n = job_cpus() if num_workers is None else int(num_workers)
    if n < 1:
        raise BenchError(f"num_workers must be at least 1, got {n}")
    return n

