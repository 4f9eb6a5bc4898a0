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

With `--data-root D` a smoke also opens the user's own data first (`check_user_data`): every split
of every data set the grid reads from disk, its count and classes, and a sample of its images
decoded, so a missing split, a wrong layout or a broken file shows before the cluster is asked
for a GPU; the run itself still reads the synthetic sets.

Nothing of a smoke run mixes with results: its teachers, records, logs and data live under
`<results root>/smoke/`, every record carries `smoke_steps`, and the report refuses such records.
"""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path

from bench.grid import Grid, method_applies
from bench.data import dataset_spec, labels_of, load_dataset
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


# Images decoded per split by check_user_data: spread evenly over the split, first and last included.
USER_SAMPLE = 16


def check_user_data(grid: Grid, root: Path, sample: int = USER_SAMPLE) -> list[str]:
    """One line per (data set, split) the grid's pools read from disk under `root`: images,
    classes, one decoded image's size. A split that does not load, or an image that does not decode
    (named by its file where the data set has files), stops with one BenchError line."""
    lines = []
    for name in sorted({p.dataset for p in grid.pools if dataset_spec(p.dataset).needs_root}):
        for split in ("train", "test"):
            data = load_dataset(name, root, split)
            labels = labels_of(data)
            n = len(labels)
            if n == 0:
                raise BenchError(f"{name} {split} under {root}: no images")
            picks = sorted({round(i * (n - 1) / max(sample - 1, 1)) for i in range(min(sample, n))})
            sizes = set()
            for i in picks:
                try:
                    image = data[i][0]
                except Exception as err:  # a truncated or foreign file: name it
                    where = data.samples[i][0] if hasattr(data, "samples") else f"image {i}"
                    raise BenchError(f"{name} {split}: {where} does not load ({type(err).__name__}: {err})") from None
                sizes.add(tuple(image.shape[-2:]) if hasattr(image, "shape") else image.size[::-1])
            classes = len(getattr(data, "classes", None) or set(labels.tolist()))
            shown = ", ".join(f"{h}x{w}" for h, w in sorted(sizes))
            lines.append(f"{name} {split}: {n:,} images, {classes} classes, {len(picks)} decoded ({shown} px)")
    return lines


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
