"""What a task of a sweep runs, in a SLURM task or a local subprocess: `JobRunner` (one task),
`BundleRunner` (several tasks of one stage, one after the other). Both are pickled by submitit."""
from __future__ import annotations

import time
from typing import Any

import submitit

from bench.errors import BenchError
from bench.jobs import Roots
from bench.stages import run_job
from bench.sweep.plan import last_line


class JobRunner(submitit.helpers.Checkpointable):
    """What a SLURM task or local subprocess runs. On USR2 (preemption, time limit) submitit
    calls `checkpoint`, which resubmits the same call: the training run resumes from its last
    epoch checkpoint on disk, so only the unfinished epoch is lost."""

    def __call__(self, spec: dict[str, Any], grid: str, roots: Roots, cpus: int | None = None,
                 rerun: bool = False) -> dict[str, Any]:
        return run_job(spec, grid, roots, cpus, rerun=rerun)


class BundleRunner(JobRunner):
    """Several tasks of one stage (`(key, spec)` pairs: a job, or a stack of teacher jobs) run
    one after the other in one local subprocess: importing torch and timm costs a job ~8 CPU
    seconds on 2 cores, more than most tiny jobs compute. Returns {key: {state, reason when
    failed, started, ended}}: one task's failure does not stop the others. Resubmitted on
    USR2, it finds the finished ones done and resumes the rest."""

    def __call__(self, jobs: list[tuple[str, dict[str, Any]]], grid: str, roots: Roots,  # type: ignore[override]
                 cpus: int | None = None, rerun: bool = False) -> dict[str, dict[str, Any]]:
        outcome: dict[str, dict[str, Any]] = {}
        for rid, spec in jobs:
            started = time.time()
            try:
                run_job(spec, grid, roots, cpus, rerun=rerun)
                outcome[rid] = {"state": "done", "started": started, "ended": time.time()}
            except Exception as err:  # noqa: BLE001 - recorded per task; the job wrote its failed record
                outcome[rid] = {"state": "failed", "reason": f"{type(err).__name__}: {last_line(err)}"[:500],
                                "started": started, "ended": time.time()}
        return outcome


class PackRunner(BundleRunner):
    """A SLURM array task running several jobs nothing waits on (`--pack-min`): all of them, then
    a failure naming those that failed, so SLURM (and --status) see the task failed while the
    others' records stand."""

    def __call__(self, jobs: list[tuple[str, dict[str, Any]]], grid: str, roots: Roots,  # type: ignore[override]
                 cpus: int | None = None, rerun: bool = False) -> dict[str, dict[str, Any]]:
        outcome = super().__call__(jobs, grid, roots, cpus, rerun)
        failed = [f"{rid}: {o['reason']}" for rid, o in outcome.items() if o["state"] == "failed"]
        if failed:
            raise BenchError(f"{len(failed)} of {len(jobs)} packed jobs failed: " + "; ".join(failed)[:1500])
        return outcome
