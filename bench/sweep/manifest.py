"""A sweep's manifest, results/<grid>/sweep.json: the grid, scale, cluster and roots it ran with,
how the grid was narrowed, and every job's state as its executor last wrote it."""
from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

from bench.io import atomic_write_json
from bench.jobs import Roots
from bench.sweep.plan import Plan, States


def sweep_dir(plan: Plan) -> Path:
    return plan.roots.results / plan.grid.name


def manifest_path(grid: str, roots: Roots) -> Path:
    return roots.results / grid / "sweep.json"


def read_manifest(grid: str, roots: Roots) -> dict[str, Any] | None:
    try:
        return json.loads(manifest_path(grid, roots).read_text())
    except (OSError, ValueError):
        return None


def write_manifest(plan: Plan, cluster: str, states: States, **extra: Any) -> None:
    atomic_write_json(manifest_path(plan.grid.name, plan.roots), {
        "grid": plan.grid.name, "grid_file": str(plan.grid.path), "scale": plan.grid.scale, "cluster": cluster,
        "teachers_root": str(plan.roots.teachers), "results_root": str(plan.roots.results),
        "updated": dt.datetime.now().isoformat(timespec="seconds"), "selection": plan.selection, **extra,
        "stages": {s: [{"run_id": j.run_id, "label": j.label, **states.get(j.run_id, {})} for j in jobs]
                   for s, jobs in plan.stages.items()}})


def manifest_roots(manifest: dict[str, Any]) -> Roots:
    """The roots the sweep of `manifest` ran with."""
    return Roots(Path(manifest["teachers_root"]), Path(manifest["results_root"]))
