"""A sweep's plan: every job of a grid, stage by stage, and which are done (`Plan`, `make_plan`),
the grid narrowed as the command line says (`selected_grid`), and each job's state once its task
ended (`unit_states`)."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench import smoke
from bench.grid import Grid, load_grid, narrowed
from bench.jobs import STAGES, Job, Roots, units
from bench.sweep.resources import Resources

# run_id -> {"state": done / failed / skipped / running / pending / submitted, and what the
# executor knows besides: job_id, reason, log, started, ended}
States = dict[str, dict[str, Any]]


@dataclass
class Plan:
    grid: Grid
    roots: Roots
    stages: dict[str, list[Job]]
    done: set[str]  # run_ids already finished before this sweep
    rerun: bool = False  # --force: method jobs run even where a record says done
    # How the grid file was narrowed (--seeds, --archs, --smoke): kept in the manifest, so --status
    # and the report plan alike.
    selection: dict[str, Any] = field(default_factory=dict)

    @property
    def todo(self) -> dict[str, list[Job]]:
        return {s: [j for j in jobs if j.run_id not in self.done] for s, jobs in self.stages.items()}

    def units(self, resources: dict[str, Resources] | None = None) -> dict[str, list[list[Job]]]:
        """Per stage, the tasks that run its jobs still to do (a stack of teachers is one task)."""
        return {s: units(s, jobs, int(resources[s].stack) if resources and s in resources else 1)
                for s, jobs in self.todo.items()}


def make_plan(grid: Grid, roots: Roots, force: bool = False, selection: dict[str, Any] | None = None) -> Plan:
    stages = {name: stage.plan(grid, roots) for name, stage in STAGES.items()}
    done = {j.run_id for name, jobs in stages.items() for j in jobs
            if STAGES[name].done(j, grid, roots) and not (force and name == "methods")}
    return Plan(grid, roots, stages, done, rerun=force, selection=dict(selection or {}))


def selected_grid(grid: str | Path, scale: str, selection: dict[str, Any]) -> Grid:
    """The grid file narrowed as `selection` says: `seeds` (--seeds), `archs` (--archs),
    `smoke_steps` (--smoke)."""
    out = narrowed(load_grid(grid, scale), selection)
    return smoke.smoke_grid(out) if selection.get("smoke_steps") else out


def last_line(err: BaseException) -> str:
    """An error's last line (a job's own traceback is in its log file), at most 500 characters."""
    return (str(err).strip().splitlines()[-1] if str(err).strip() else type(err).__name__)[:500]


def unit_states(plan: Plan, unit: list[Job], err: BaseException | str | None, **extra: Any) -> States:
    """Each job's state once its task ended (`err`: the error or its message; None when it
    finished): a stack that failed may have finished some members."""
    if err is None:
        return {j.run_id: {"state": "done", **extra} for j in unit}
    reason = err[:500] if isinstance(err, str) else last_line(err)
    return {j.run_id: {"state": "done", **extra} if len(unit) > 1 and STAGES[j.stage].done(j, plan.grid, plan.roots)
            else {"state": "failed", "reason": reason[:500], **extra} for j in unit}


def unit_label(unit: list[Job]) -> str:
    return unit[0].label if len(unit) == 1 else f"{unit[0].label} and {len(unit) - 1} more (a stack)"
