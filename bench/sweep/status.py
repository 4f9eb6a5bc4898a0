"""A sweep's state from its manifest, its records and its executor (`current_states`): printed
by --status (`print_status`), followed by --wait on SLURM (`follow`); and --clean (`clean`), which
removes the logs and students' folders of finished jobs."""
from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

from tqdm import tqdm

from bench.errors import BenchError
from bench.jobs import STAGES, Roots
from bench.sweep.executors import EXECUTORS
from bench.sweep.executors.debug import DebugExecutor
from bench.sweep.executors.local import running_driver
from bench.sweep.manifest import manifest_path, manifest_roots, read_manifest
from bench.sweep.plan import make_plan, selected_grid

# What a sweep leaves beside its records, by folder of results/<grid>/: the executors' logs and the
# distilled / fine-tuned students' run folders (checkpoints: a finished job's record holds its numbers).
CLEANABLE = {"jobs": "local job logs", "slurm": "SLURM job logs", "students": "students' run folders"}


def current_states(grid: str, roots: Roots) -> tuple[dict[str, Any], dict[str, dict[str, str]]]:
    """The manifest, and per stage run_id -> done / running / pending / failed / skipped: done where
    the job's record says so, else as the executor that ran the sweep sees it."""
    manifest = read_manifest(grid, roots)
    if manifest is None:
        raise BenchError(f"no sweep of grid {grid!r} under {roots.results} "
                         f"(expected {manifest_path(grid, roots)}); submit it first")
    live = EXECUTORS.get(manifest["cluster"], DebugExecutor)().job_states(manifest)
    plan = make_plan(selected_grid(manifest["grid_file"], manifest["scale"], manifest.get("selection") or {}),
                     manifest_roots(manifest))  # the sweep's own roots
    return manifest, {stage: {j["run_id"]: "done" if j["run_id"] in plan.done else live[j["run_id"]] for j in jobs}
                      for stage, jobs in manifest["stages"].items()}


def states_of(states: dict[str, dict[str, str]], j: dict[str, Any]) -> str | None:
    return next((s[j["run_id"]] for s in states.values() if j["run_id"] in s), None)


def follow(grid: str, roots: Roots, poll_s: float = 5.0) -> dict[str, dict[str, str]]:
    """Block until every job of the sweep is done or failed, with a progress bar; the last states."""
    manifest, states = current_states(grid, roots)
    total = sum(len(s) for s in states.values())
    with tqdm(total=total, desc=f"{grid} ({manifest['cluster']})", unit="job") as bar:
        while True:
            manifest, states = current_states(grid, roots)
            finished = sum(v in ("done", "failed") for s in states.values() for v in s.values())
            bar.n = finished
            bar.refresh()
            if finished == total:
                return states
            time.sleep(poll_s)


def span_seconds(spans: list[tuple[float, float]]) -> tuple[float, float]:
    """(wall seconds from the first start to the last end, job-seconds): the members of one
    teacher stack share their task's span, which is counted once, not once per member."""
    wall = max(e for _, e in spans) - min(s for s, _ in spans)
    return wall, sum(e - s for s, e in set(spans))


def print_status(grid: str, roots: Roots) -> None:
    manifest, states = current_states(grid, roots)
    print(f"grid {grid}, scale {manifest['scale']}, cluster {manifest['cluster']}, updated {manifest['updated']}")
    print(f"  {'stage':<10} {'done':>5} {'running':>8} {'pending':>8} {'failed':>7} {'skipped':>8}")
    for stage in sorted(states, key=lambda st: list(STAGES).index(st) if st in STAGES else 99):
        s = states[stage]
        counts = {k: list(s.values()).count(k) for k in ("done", "running", "pending", "failed", "skipped")}
        print(f"  {stage:<10} {counts['done']:>5} {counts['running']:>8} {counts['pending']:>8} "
              f"{counts['failed']:>7} {counts['skipped']:>8}")
    for stage, jobs in manifest["stages"].items():
        spans = [(j["started"], j["ended"]) for j in jobs if j.get("started") and j.get("ended")]
        if spans:
            wall, busy = span_seconds(spans)
            print(f"  {stage}: {len(spans)} jobs ran in {wall:.0f} s wall ({busy:.0f} job-seconds)")
    failed = [j for js in manifest["stages"].values() for j in js if states_of(states, j) == "failed"]
    for j in failed[:20]:
        print(f"  failed: {j['label']} {j.get('reason', '')} {j.get('log', '')}".rstrip())
    print(disk_line(grid, manifest_roots(manifest)))


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) if folder.is_dir() else 0


def size_text(n: int) -> str:
    return f"{n / 2**20:.1f} MB" if n >= 2**20 else f"{n / 1024:.0f} kB"


def disk_line(grid: str, roots: Roots) -> str:
    sizes = {name: folder_bytes(roots.results / grid / name) for name in CLEANABLE}
    parts = ", ".join(f"{CLEANABLE[n]} {size_text(b)}" for n, b in sizes.items())
    return f"  disk under {roots.results / grid}: {parts}" + \
        (" (--clean removes those of finished jobs)" if any(sizes.values()) else "")


def clean(grid: str, roots: Roots) -> None:
    """Remove the logs and students' folders of finished jobs, never records, teachers or
    WeightFormers; the logs of failed jobs stay (their tracebacks), and nothing is removed while
    a job of the sweep runs or waits."""
    manifest, states = current_states(grid, roots)
    busy = [rid for s in states.values() for rid, v in s.items() if v in ("running", "pending")]
    if busy or running_driver(grid, roots):
        raise BenchError(f"grid {grid!r} still has {len(busy)} running or pending jobs: clean after the sweep ends")
    keep = {str(j["job_id"]).split("_")[0] for js in manifest["stages"].values() for j in js
            if j.get("job_id") and states_of(states, j) == "failed"}
    base = roots.results / grid
    freed = 0
    for name in ("jobs", "slurm"):
        for path in sorted((base / name).glob("*")) if (base / name).is_dir() else []:
            if any(k in path.name for k in keep):
                continue
            freed += folder_bytes(path) if path.is_dir() else path.stat().st_size
            shutil.rmtree(path) if path.is_dir() else path.unlink()
    done = {rid for s in states.values() for rid, v in s.items() if v == "done"}
    for path in sorted((base / "students").glob("*")) if (base / "students").is_dir() else []:
        if path.name in done:
            freed += folder_bytes(path)
            shutil.rmtree(path)
    print(f"removed {size_text(freed)} of logs and students' folders of finished jobs under {base}"
          + (f"; kept the logs of {len(keep)} failed jobs" if keep else ""))
