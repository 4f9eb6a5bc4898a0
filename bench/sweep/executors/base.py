"""The interface every executor of a sweep implements: hand a plan's tasks over to be run, each
once (`submit`), and say where each job of a sweep stands (`job_states`)."""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar

from bench.jobs import Job, unit_spec
from bench.sweep.plan import Plan, States
from bench.sweep.resources import Resources


class Executor(ABC):
    """Runs the tasks of a plan (a task is a job, or a stack of teacher jobs). The jobs the plan
    has done are never handed over again; a rerun of the same plan does only what is missing."""

    # --cluster NAME, and the "cluster" of the manifests this executor writes.
    name: ClassVar[str]
    # True: `submit` returns once every task has ended. False: it returns once the tasks are
    # queued; --wait follows the manifest until they end (bench.sweep.status.follow).
    blocking: ClassVar[bool] = True

    @abstractmethod
    def submit(self, plan: Plan, resources: dict[str, Resources]) -> States:
        """Run or queue every task of the plan still to do, each once, writing the manifest; the
        state of every job of the plan (the jobs the plan has done: "done")."""

    @abstractmethod
    def job_states(self, manifest: dict[str, Any]) -> dict[str, str]:
        """run_id -> running / pending / failed / skipped / done for every job of `manifest` as this
        executor sees it; whether a job's record says done is checked by the caller (bench.sweep.status)."""

    def task(self, unit: list[Job]) -> dict[str, Any]:
        """What one task runs, made once for each task handed over (so a test can count them)."""
        return unit_spec(unit)


def recorded_states(manifest: dict[str, Any]) -> dict[str, str]:
    """Every job's state as the manifest's writer recorded it (never recorded: pending)."""
    return {j["run_id"]: j.get("state", "pending") for jobs in manifest["stages"].values() for j in jobs}
