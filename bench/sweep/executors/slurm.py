"""The SLURM executor (`--cluster slurm`): one job array per stage, each waiting (`afterok`) on the
jobs of earlier stages it needs, and SLURM's view of them from squeue."""
from __future__ import annotations

import shutil
import subprocess
import time
from typing import Any

import submitit

from bench.errors import BenchError
from bench.sweep.executors.base import Executor
from bench.sweep.manifest import sweep_dir, write_manifest
from bench.sweep.plan import Plan, States
from bench.sweep.resources import Resources, slurm_parameters
from bench.sweep.runners import JobRunner

# What the slurm executor runs: sbatch submits each array, and submitit starts every task through
# srun (without it submitit refuses to submit at all).
SLURM_COMMANDS = ("sbatch", "srun")
SLURM_RUNNING = ("RUNNING", "COMPLETING", "CONFIGURING", "STAGE_OUT", "SUSPENDED", "SIGNALING", "STOPPED")
SLURM_PENDING = ("PENDING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "RESIZING", "PREEMPTED")


class SlurmExecutor(Executor):
    name = "slurm"
    blocking = False

    def submit(self, plan: Plan, resources: dict[str, Resources]) -> States:
        """One array per stage; each stage waits (afterok) on the jobs of earlier stages it needs."""
        folder = sweep_dir(plan) / "slurm" / "%j"
        states: States = {rid: {"state": "done"} for rid in plan.done}
        job_ids: dict[str, str] = {}
        for stage, tasks in plan.units(resources).items():
            if not tasks:
                continue
            jobs = [j for u in tasks for j in u]
            deps = sorted({job_ids[n] for j in jobs for n in j.needs if n in job_ids})
            ex = submitit.AutoExecutor(folder=folder, cluster="slurm")
            params = slurm_parameters(resources[stage], f"{plan.grid.name}-{stage}")
            if deps:
                # kill-on-invalid-dep: if a needed job fails, SLURM cancels this array instead of
                # leaving it pending forever (and `--wait` with it).
                params["slurm_additional_parameters"] = {"dependency": "afterok:" + ":".join(deps),
                                                         "kill-on-invalid-dep": "yes"}
            ex.update_parameters(**params)
            with ex.batch():  # one array task per unit: a job, or a stack of teacher jobs
                handles = [ex.submit(JobRunner(), self.task(u), plan.grid.name, plan.roots, None, plan.rerun)
                           for u in tasks]
            for u, h in zip(tasks, handles):
                for j in u:
                    job_ids[j.run_id] = h.job_id
                    states[j.run_id] = {"state": "submitted", "job_id": h.job_id}
            print(f"  {stage}: array {handles[0].job_id.split('_')[0]} with {len(tasks)} tasks"
                  + (f" ({len(jobs)} jobs)" if len(jobs) != len(tasks) else "")
                  + (f", after {len(deps)} jobs" if deps else ""))
        write_manifest(plan, self.name, states)
        return states

    def job_states(self, manifest: dict[str, Any]) -> dict[str, str]:
        jobs = [j for s in manifest["stages"].values() for j in s]
        live = squeue_states([j["job_id"] for j in jobs if j.get("job_id")])
        out = {}
        for j in jobs:
            if live.get(j.get("job_id")) in SLURM_RUNNING:
                out[j["run_id"]] = "running"
            elif live.get(j.get("job_id")) in SLURM_PENDING:
                out[j["run_id"]] = "pending"
            else:  # finished without its output (failed, cancelled, timed out), or never submitted
                out[j["run_id"]] = "failed" if j.get("job_id") else "pending"
        return out


def squeue_states(job_ids: list[str]) -> dict[str, str]:
    """SLURM's view of the jobs, finished ones included (`-t all`, kept for MinJobAge): the
    cluster may have no accounting, so sacct is not asked."""
    if not job_ids or not shutil.which("squeue"):
        return {}
    arrays = sorted({j.split("_")[0] for j in job_ids})
    for attempt in range(3):  # slurmctld can be briefly busy: a failed query is not "all failed"
        out = subprocess.run(["squeue", "-h", "-r", "-t", "all", "-j", ",".join(arrays), "-o", "%i %T"],
                             capture_output=True, text=True)
        if out.returncode == 0:
            return dict(line.split() for line in out.stdout.splitlines() if len(line.split()) == 2)
        time.sleep(2 * (attempt + 1))
    raise BenchError(f"squeue did not answer ({' '.join(out.stderr.split())[:200]}); try --status again later")
