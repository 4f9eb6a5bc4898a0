"""Where teacher pools and results live: flag, then environment variable, then the repository."""
from __future__ import annotations

import os
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent


def project_root() -> Path:
    """The checkout holding this package, or the working directory for an installed copy."""
    root = PACKAGE_DIR.parent
    return root if (root / "setup.cfg").exists() else Path.cwd()


def teachers_root(flag: str | os.PathLike | None = None) -> Path:
    return Path(flag or os.environ.get("BENCH_TEACHERS") or project_root() / "teachers")


def results_root(flag: str | os.PathLike | None = None) -> Path:
    return Path(flag or os.environ.get("BENCH_RESULTS") or project_root() / "results")


def data_root(flag: str | os.PathLike | None = None) -> Path | None:
    value = flag or os.environ.get("BENCH_DATA")
    return Path(value) if value else None
