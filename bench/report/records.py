"""The records a grid's report reads and what the grid file plans for them: which runs belong to
the grid's current version, which cells it plans and how many runs each (bench.jobs's jobs, with
no training code).
"""
from __future__ import annotations

import json
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from bench.grid import SCALES, load_grid, narrowed, with_seeds
from bench.errors import BenchError
from bench.jobs import STAGES, Roots
from bench.report.render import column, setting_label
from bench.run_records import load_records


@dataclass
class GridPlan:
    """What the grid file plans, for the scales the records are at."""
    settings: list[str] = field(default_factory=list)  # pool order
    ids: set[str] = field(default_factory=set)  # run_ids of every stage, at every scale
    ids_at_scales: set[str] = field(default_factory=set)  # the same at the records' scales
    expected: Counter = field(default_factory=Counter)  # (variant, setting) -> planned method runs
    methods: dict[str, str] = field(default_factory=dict)  # variant -> method
    counterpart: dict[tuple[str, str], str] = field(default_factory=dict)  # pool (arch, dataset) -> paper dataset
    description: str = ""  # the grid file's: what it reproduces
    figures_split: str = "test"  # the grid file's: the split its figures show
    # The claims' sides the grid plans: each method, and "<method>@held_out" where it runs on held-out teachers.
    sides: set[str] = field(default_factory=set)


def grid_plan(grid: str | Path, scales: set[str] | None = None, selection: dict | None = None,
              recorded: set[int] = frozenset()) -> GridPlan | None:
    """The grid file's plan as the sweep narrowed it (`selection`: its manifest's --seeds and
    --archs, bench.grid.narrowed); without --seeds there (the manifest gone: records copied from
    a cluster) with the seeds the method records hold (`recorded`, `recorded_seeds`), so that a
    --seeds run's records are not left out as another version's. A grid written for one scale (a
    tiny-only recipe) is planned at the scales it loads at. None when the grid file is not known or
    does not load at the records' scales."""
    plan, roots = GridPlan(), Roots(Path("."), Path("."))
    grids, jobs = {}, {}
    for scale in SCALES:
        try:
            g = load_grid(str(grid), scale)
            grids[scale] = narrowed(with_seeds(g, recorded_seeds(g.seeds, recorded)), selection or {})
            jobs[scale] = [job for stage in STAGES.values() for job in stage.plan(grids[scale], roots)]
        except BenchError:
            grids.pop(scale, None)
    if not grids or not set(scales or ()) <= set(grids):
        return None
    plan.description = next(iter(grids.values())).description
    plan.figures_split = next(iter(grids.values())).figures_split
    for scale, g in grids.items():
        if "paper" in grids:
            plan.counterpart.update({(p.arch, p.dataset): q.dataset for p, q in zip(g.pools, grids["paper"].pools)})
        for job in jobs[scale]:
            plan.ids.add(job.run_id)
            if not scales or scale in scales:
                plan.ids_at_scales.add(job.run_id)
            if job.stage != "methods" or (scales and scale not in scales):
                continue
            t = job.spec["teachers"][0]
            variant = job.spec.get("variant") or job.spec["method"]
            setting = setting_label(t["arch"], t["dataset"], t["init"], t["pool"], t["scale"])
            plan.expected[variant, setting] += 1
            plan.methods.setdefault(variant, job.spec["method"])
            plan.sides.add(job.spec["method"])
            if job.spec.get("teacher_part") == "held_out":
                plan.sides.add(f"{job.spec['method']}@held_out")
            if setting not in plan.settings:
                plan.settings.append(setting)
    return plan


def recorded_seeds(own: tuple[int, ...], recorded: set[int]) -> tuple[int, ...]:
    """The seeds to plan where no manifest says: the grid's own and any others the records hold;
    the records' alone where they hold none of the grid's own (a --seeds run: every job of the
    grid's own seeds, failed or not, would have left a record)."""
    if recorded and not set(recorded) & set(own):
        return tuple(sorted(recorded))
    return (*own, *sorted(set(recorded) - set(own)))


def manifest(folder: Path) -> dict:
    """The sweep's manifest (sweep.json) in a grid's results folder; {} where there is none."""
    try:
        return json.loads((folder / "sweep.json").read_text())
    except (OSError, ValueError):
        return {}


def record_scales(runs: pd.DataFrame, folder: Path) -> set[str]:
    """The scales the records are at; before any record, the sweep's (its manifest's), else tiny."""
    scales = {s for s in column(runs, "scale").dropna() if s in SCALES}
    if not scales:
        scales = {manifest(folder).get("scale")} & set(SCALES)
    return scales or {"tiny"}


def swept_selection(folder: Path) -> dict:
    """How the sweep narrowed the grid file (--seeds, --archs), from its manifest; {} where none."""
    return manifest(folder).get("selection") or {}


def planned_runs(grid: str, root: Path, grid_file: str | Path | None = None
                 ) -> tuple[pd.DataFrame, GridPlan | None, int, list[str]]:
    """The grid's records under `root` that its plan holds, the plan, how many records it left out
    (of an earlier version of the grid) and the unreadable records skipped."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        runs = load_records(root / grid)
    skipped = [str(w.message).replace(f"{root}/", "") for w in caught]
    for message in skipped:
        warnings.warn(message, stacklevel=2)
    if "smoke_steps" in runs.columns and runs.smoke_steps.notna().any():
        raise BenchError(f"the records under {root / grid / 'records'} are a smoke run's (every job stopped after "
                         f"{int(runs.smoke_steps.max())} steps on synthetic data, bench/smoke.py): they check "
                         f"that the plan runs and are no results; `python -m bench.sweep --status --smoke` shows it")
    recorded = {int(s) for s, stage in zip(column(runs, "seed"), column(runs, "stage")) if stage == "methods"
                and pd.notna(s)}  # a record without a seed reads as NaN, not None
    plan = grid_plan(grid_file or grid, record_scales(runs, root / grid), swept_selection(root / grid), recorded)
    if runs.empty and plan is None:
        raise BenchError(f"no records for grid {grid!r} under {root / grid / 'records'}; run the sweep first")
    stale = 0
    if plan is not None:  # records of an earlier version of the grid are not averaged in
        keep = runs.run_id.isin(plan.ids)
        stale, runs = int((~keep).sum()), runs[keep]
    return runs, plan, stale, skipped
