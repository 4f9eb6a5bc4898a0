"""The checks a submission makes before anything runs, the same for --dry-run (`preflight`):
roots writable (`check_writable`) and a data root for every pool that reads one."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

from bench.data import dataset_spec
from bench.errors import BenchError
from bench.paths import data_root
from bench.jobs import Roots
from bench.sweep.plan import Plan


def check_writable(folder: Path, what: str = "results root", create: bool = True) -> None:
    """That `folder` can be written: made and written to, or (`create=False`, a dry run, which
    makes nothing) that its nearest existing ancestor is a writable folder."""
    if not create:
        existing = next(p for p in (folder, *folder.parents) if p.exists() or p == p.parent)
        if not existing.is_dir():
            raise BenchError(f"{what} {folder} is not writable ({existing} is a file, not a folder)")
        if not os.access(existing, os.W_OK | os.X_OK):
            raise BenchError(f"{what} {folder} is not writable ({existing}: permission denied)")
        return
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder):
            pass
    except OSError as err:
        raise BenchError(f"{what} {folder} is not writable ({err.strerror})") from None


def preflight(plan: Plan, roots: Roots, create: bool, smoke: bool = False) -> None:
    """The checks a submission makes before anything runs, the same for --dry-run: the results and
    (where jobs will write there) teachers roots writable, a data root present for every pool
    with work to do whose data set is read from disk."""
    check_writable(roots.results / plan.grid.name, "results root", create)
    if plan.todo.get("pretrain") or plan.todo.get("teachers") or plan.todo.get("meta_train"):
        check_writable(roots.teachers, "teachers root", create)
    # A base network belongs to no pool: its source task is generated (tiny scale only).
    busy = {j.spec.get("pool") or j.spec["teachers"][0]["pool"] for jobs in plan.todo.values() for j in jobs
            if j.stage != "pretrain"}
    for pool in plan.grid.pools if not smoke else ():  # a smoke writes its own data
        if pool.name not in busy or not dataset_spec(pool.dataset).needs_root:
            continue
        root = pool.recipe.get("data_root") or data_root()
        if root is None:
            raise BenchError(f"pool {pool.name}: dataset {pool.dataset!r} needs a data root (--data-root, "
                             f"BENCH_DATA or the pool recipe's data_root); see the README's data section")
        if not Path(root).is_dir():
            raise BenchError(f"pool {pool.name}: data root {root} is not a folder")
