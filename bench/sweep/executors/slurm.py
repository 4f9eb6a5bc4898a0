"""The SLURM executor (`--cluster slurm`): a stage's tasks go out as job arrays, one per set of
earlier jobs its tasks need, each array waiting (`afterok`) on that set alone; and SLURM's view of
them from squeue. So a failed teacher cancels only the methods that need it, and one setting's
methods start while another setting's meta-training is still queued.

A submission asks squeue first: a job an earlier submission of the sweep queued that is still
pending or running is not submitted again (later arrays wait on it instead), so a resubmitted
driver or a rerun while arrays live costs nothing. The manifest is written after each array, so an
array sbatch refuses (a per-user limit) leaves the ones before it tracked, and the same command
again submits only what is missing.

With `pack_min` (cluster file or --pack-min), jobs nothing else waits on whose estimated GPU time
is short share an array task, run one after the other (`packed`): a task that fails when any of
its jobs failed, after running them all (`PackRunner`), so nothing is cancelled for a packed
neighbour and the rest of the pack still finishes. Such light jobs hold one GPU whatever the
stage's `gpus` (a data-parallel evaluation would only repeat itself on every rank)."""
from __future__ import annotations

import shutil
import subprocess
import time
from dataclasses import replace
from typing import Any

import submitit

from bench.errors import BenchError
from bench.estimate import Throughput
from bench.jobs import Job
from bench.sweep.executors.base import Executor
from bench.sweep.manifest import read_manifest, sweep_dir, write_manifest
from bench.sweep.plan import Plan, States
from bench.sweep.resources import Resources, slurm_parameters
from bench.sweep.runners import JobRunner, PackRunner

# What the slurm executor runs: sbatch submits each array, and submitit starts every task through
# srun (without it submitit refuses to submit at all).
SLURM_COMMANDS = ("sbatch", "srun")
SLURM_RUNNING = ("RUNNING", "COMPLETING", "CONFIGURING", "STAGE_OUT", "SUSPENDED", "SIGNALING", "STOPPED")
SLURM_PENDING = ("PENDING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "RESIZING", "PREEMPTED")


class SlurmExecutor(Executor):
    name = "slurm"
    blocking = False

    def __init__(self, throughput: Throughput | None = None):
        self.throughput = throughput or Throughput()  # what --pack-min's estimates are made at

    def submit(self, plan: Plan, resources: dict[str, Resources]) -> States:
        """Each stage's tasks as arrays, one per set of earlier jobs they need (afterok on that set)."""
        folder = sweep_dir(plan) / "slurm" / "%j"
        states: States = {rid: {"state": "done"} for rid in plan.done}
        queued = self.queued(read_manifest(plan.grid.name, plan.roots))
        job_ids: dict[str, str] = {rid: job_id for rid, job_id in queued.items() if rid not in plan.done}
        states.update({rid: {"state": "submitted", "job_id": job_id} for rid, job_id in job_ids.items()})
        limit = max_array_size()
        needed = {n for jobs in plan.stages.values() for j in jobs for n in j.needs}
        for stage, tasks in plan.units(resources).items():
            tasks = [u for u in tasks if not all(j.run_id in job_ids for j in u)]  # queued or running: not again
            budget = 60 * float(resources[stage].pack_min)
            arrays = []  # (afterok set, packs, light: each job seconds of GPU, so one GPU whatever --gpus says)
            for deps, same in arrays_by_needs(tasks, job_ids).items():
                seconds = [sum(self.throughput.job_seconds(stage, j.spec) for j in u)
                           if budget and not any(j.run_id in needed for j in u) else float("inf") for u in same]
                light = {id(u) for u, t in zip(same, seconds) if t <= budget}
                packs = packed(same, seconds, budget)
                for kind in (True, False):
                    some = [p for p in packs if (id(p[0]) in light) == kind]
                    arrays += [(deps, some[i:i + limit], kind) for i in range(0, len(some), limit)]
            submitted = []
            for deps, part, light in arrays:
                res = replace(resources[stage], gpus=min(1, resources[stage].gpus)) if light else resources[stage]
                handles = self.submit_array(plan, stage, res, folder, part, deps)
                for pack, h in zip(part, handles):
                    for j in (j for u in pack for j in u):
                        job_ids[j.run_id] = h.job_id
                        states[j.run_id] = {"state": "submitted", "job_id": h.job_id}
                submitted.append(handles[0].job_id.split("_")[0])
                write_manifest(plan, self.name, states)  # before the next sbatch, which a limit may refuse
            if arrays:
                count = sum(len(part) for _, part, _ in arrays)
                jobs = sum(len(u) for u in tasks)
                print(f"  {stage}: {len(arrays)} array{'s' * (len(arrays) > 1)} ({', '.join(submitted)}) with "
                      f"{count} task{'s' * (count > 1)}" + (f" ({jobs} jobs)" if jobs != count else "")
                      + (", each after only the jobs its tasks need" if any(d for d, _, _ in arrays) else ""))
        if queued:
            print(f"  {len(job_ids)} jobs already queued or running were not submitted again")
        write_manifest(plan, self.name, states)
        return states

    def submit_array(self, plan: Plan, stage: str, resources: Resources, folder, packs: list[list[list[Job]]],
                     deps: tuple[str, ...]) -> list[submitit.Job]:
        """One array, a task per pack (one unit, or several run one after the other)."""
        ex = submitit.AutoExecutor(folder=folder, cluster="slurm")
        params = slurm_parameters(resources, f"{plan.grid.name}-{stage}")
        if deps:
            # kill-on-invalid-dep: if a needed job fails, SLURM cancels this array instead of leaving
            # it pending forever (and `--wait` with it).
            params["slurm_additional_parameters"] = {**params.get("slurm_additional_parameters", {}),
                                                     "dependency": "afterok:" + ":".join(deps),
                                                     "kill-on-invalid-dep": "yes"}
        ex.update_parameters(**params)
        args = (plan.grid.name, plan.roots, None, plan.rerun)
        with ex.batch():  # a unit is a job, or a stack of teacher jobs
            return [ex.submit(JobRunner(), self.task(p[0]), *args) if len(p) == 1 else
                    ex.submit(PackRunner(), [(u[0].run_id, self.task(u)) for u in p], *args) for p in packs]

    def queued(self, manifest: dict[str, Any] | None) -> dict[str, str]:
        """run_id -> SLURM job id of every job of an earlier submission (`manifest`) that squeue
        says is pending or running."""
        if not manifest or manifest.get("cluster") != self.name:
            return {}
        jobs = [j for s in manifest["stages"].values() for j in s if j.get("job_id")]
        live = squeue_states([j["job_id"] for j in jobs])
        return {j["run_id"]: j["job_id"] for j in jobs if live.get(j["job_id"]) in SLURM_RUNNING + SLURM_PENDING}

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


def arrays_by_needs(tasks: list[list[Job]], job_ids: dict[str, str]) -> dict[tuple[str, ...], list[list[Job]]]:
    """A stage's tasks grouped by the SLURM jobs they wait on (those of the jobs they need that are
    queued or running; a done one is no dependency), in plan order: one array per group."""
    groups: dict[tuple[str, ...], list[list[Job]]] = {}
    for u in tasks:
        deps = tuple(sorted({job_ids[n] for j in u for n in j.needs if n in job_ids}))
        groups.setdefault(deps, []).append(u)
    return groups


def packed(tasks: list[list[Job]], seconds: list[float], budget: float) -> list[list[list[Job]]]:
    """`tasks` in order, consecutive ones sharing a pack while their estimated `seconds` add up to
    at most `budget`; a task over the budget (or marked inf: not to be packed) alone."""
    packs: list[list[list[Job]]] = []
    total = float("inf")
    for u, t in zip(tasks, seconds):
        if total + t <= budget:
            packs[-1].append(u)
            total += t
        else:
            packs.append([u])
            total = t
    return packs


def max_array_size() -> int:
    """The most tasks one array may hold: the cluster's MaxArraySize (indices 0..MaxArraySize-1),
    SLURM's default 1001 where scontrol does not say."""
    out = subprocess.run(["scontrol", "show", "config"], capture_output=True, text=True) if shutil.which("scontrol") else None
    for line in (out.stdout.splitlines() if out and out.returncode == 0 else []):
        key, _, value = line.partition("=")
        if key.strip() == "MaxArraySize" and value.strip().isdigit():
            return max(1, int(value.strip()))
    return 1001


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
