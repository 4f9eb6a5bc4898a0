"""`python -m bench.sweep --grid G --scale paper --smoke`: the grid's plan, run for minutes before
it is run for days.

Every stage, pool and method row of the grid runs, through the same executor and resources, with
its real architectures, resolutions and batch sizes, on small synthetic data sets written in the
real formats (bench.data.synthetic: CIFAR pickles, an ImageNet folder of JPEGs), and every
training loop stops after `--smoke-steps` optimiser steps (exported to the jobs as
BENCH_SMOKE_STEPS; bench.engine.loop). A wrong path, a shape error, a missing pretrained weight
or an out-of-memory then shows in minutes. To keep it minutes, a smoke runs the grid's first seed
only and cuts each pool to what that seed needs: N + 2 meta-train members (a WeightFormer still
meta-trains on several groups) and N + 1 held-out ones.

Nothing of a smoke run mixes with results: its teachers, records, logs and data live under
`<results root>/smoke/`, every record carries `smoke_steps`, and the report refuses such records.
"""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path

from bench.grid import Grid, method_applies
from bench.data import dataset_spec
from bench.data.synthetic import write_smoke_data
from bench.errors import BenchError
from bench.models import PRETRAINED_ENV, pretrained_name, write_standin_weights
from bench.jobs import Roots
from bench.job_env import SMOKE_BATCH_ENV, SMOKE_STEPS_ENV

DEFAULT_STEPS = 2
# A smoke's resources are the stage's, but no task needs a day: a short limit schedules sooner.
TIMEOUT_MIN = 60


def smoke_roots(roots: Roots) -> Roots:
    """Teachers and records of a smoke run: `<results root>/smoke/{teachers,<grid>}`."""
    base = roots.results / "smoke"
    return Roots(base / "teachers", base)


def smoke_data_root(roots: Roots) -> Path:
    """Where a smoke run's synthetic data sets live (`roots`: the smoke's own)."""
    return roots.results / "data"


def smoke_grid(grid: Grid) -> Grid:
    """The grid a smoke runs: its first seed; each pool cut to N + 2 meta-train and N + 1 held-out
    members (N: the largest any row of the pool uses), its recipe's data root dropped (the smoke
    reads its own data)."""
    pools = []
    for pool in grid.pools:
        n = max([m.options.get("n_teachers", grid.n_teachers) for m in grid.methods
                 if method_applies(m.options, pool)] or [grid.n_teachers])
        meta = min(pool.members - pool.held_out, n + 2)
        held = min(pool.held_out, n + 1) if pool.held_out else 0
        pools.append(dataclasses.replace(pool, members=meta + held, held_out=held,
                                         recipe={k: v for k, v in pool.recipe.items() if k != "data_root"}))
    return dataclasses.replace(grid, seeds=grid.seeds[:1], pools=tuple(pools))


def check_steps(steps: int) -> int:
    if not isinstance(steps, int) or steps < 1:
        raise BenchError(f"--smoke-steps must be a whole number of steps, at least 1, got {steps}")
    return steps


def check_batch(batch_size: int) -> int:
    if not isinstance(batch_size, int) or batch_size < 1:
        raise BenchError(f"--smoke-batch-size must be a whole number of images, at least 1, got {batch_size}")
    return batch_size


def prepare(grid: Grid, roots: Roots, steps: int, write: bool = True, standin_weights: bool = False,
            batch_size: int | None = None) -> Path:
    """Export the step cap and the smoke's data root to this process and every job it starts;
    write the synthetic data sets the grid's pools read from disk (`write=False`: a dry run,
    which writes nothing). `standin_weights`: pretrained pools read stand-in weights of the right
    shapes (bench.models.write_standin_weights, under the smoke's results) instead of the hub's.
    `batch_size`: every batch capped at it (bench.job_env.capped_batch). Returns the data root."""
    data = smoke_data_root(roots)
    os.environ[SMOKE_STEPS_ENV] = str(check_steps(steps))
    if batch_size is not None:
        os.environ[SMOKE_BATCH_ENV] = str(check_batch(batch_size))
    os.environ["BENCH_DATA"] = str(data)
    if write:
        write_smoke_data(data, [p.dataset for p in grid.pools if dataset_spec(p.dataset).needs_root])
    if standin_weights:
        folder = roots.results / "pretrained"
        os.environ[PRETRAINED_ENV] = str(folder)
        for name in sorted({pretrained_name(p.arch, p.recipe.get("pretrained_weights"))
                            for p in grid.pools if p.init == "pretrained" and p.base is None}) if write else ():
            write_standin_weights(folder, name)
    return data


def resources(res: dict, flags: dict) -> dict:
    """A stage's resources for a smoke: its own, with a time limit of at most TIMEOUT_MIN unless
    --timeout-min sets one."""
    if flags.get("timeout_min") is None:
        res = {**res, "timeout_min": min(res["timeout_min"], TIMEOUT_MIN)}
    return res
