"""`python -m bench.sweep --grid G`: a grid's jobs, stage by stage, on SLURM or this machine.

    python -m bench.sweep --grid main_table --scale tiny            # submit and return
    python -m bench.sweep --grid main_table --scale tiny --wait     # ... and follow to the end
    python -m bench.sweep --grid main_table --status                # done / running / failed / pending
    python -m bench.sweep --grid main_table --dry-run               # the plan; submits nothing
    python -m bench.sweep --grid main_table --scale paper --smoke   # every job for 2 steps first (bench.smoke)

Finished jobs are found (by run_id) and skipped, so rerunning after any failure does only what
is missing. On SLURM every stage is one job array, the next stage waiting on it with `afterok`;
jobs are checkpointable: a preempted or timed-out job requeues and resumes from its last epoch.
Locally, a driver process keeps at most cores / cpus-per-job jobs running and starts a job
once the jobs it needs are done. `debug` runs every job inside this process.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import submitit
from tqdm import tqdm

from bench import smoke
from bench.config import Grid, grid_path, load_grid, narrowed, parse_seeds, read_yaml
from bench.errors import BenchError, choose, cli
from bench.estimate import (DEFAULT_TFLOPS, TFLOPS_SOURCE, check_tflops, gpu_hours, job_flops, net_of,
                            training_config)
from bench.io import atomic_write_json, pid_alive, remove_stale_temps
from bench.models import SCALES
from bench.data import dataset_spec
from bench.paths import data_root, project_root
from bench.plan import STAGES, Job, Roots, unit_spec, units
from bench.stages import run_job

CLUSTERS = ("auto", "slurm", "local", "debug")
# stack: members of one teacher pool trained as one network in one task (bench.plan.TeachersStage.units)
RESOURCE_KEYS = ("partition", "account", "gpus", "cpus", "mem_gb", "timeout_min", "array_parallelism", "stack")
CLUSTER_FILE = project_root() / "sweeps" / "cluster.yaml"


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


BUNDLE_MAX = 8  # jobs per local subprocess at most: keeps the progress bar and the balance fine


# --- resources ------------------------------------------------------------------------------

def load_resources(path: Path, scale: str, stage: str, flags: dict[str, Any]) -> dict[str, Any]:
    """sweeps/cluster.yaml: `{scale: {default: {...}, <stage>: {...}}}`, then flags on top."""
    raw = (read_yaml(path) if path.exists() else None) or {}

    def check(kind: str, value: str, valid, where: str) -> None:
        if value not in valid:
            raise BenchError(f"{path}: {where}: unknown {kind} {value!r}; valid: {', '.join(valid)}")

    for s in raw:
        check("scale", s, SCALES, "top level")
        for st, res in (raw[s] or {}).items():
            check("stage", st, ("default", *STAGES), s)
            for key in res or {}:
                check("resource", key, RESOURCE_KEYS, f"{s}.{st}")
    merged = {"cpus": 1, "mem_gb": 4, "gpus": 0, "timeout_min": 60, "stack": 1}
    merged.update((raw.get(scale) or {}).get("default") or {})
    merged.update((raw.get(scale) or {}).get(stage) or {})
    merged.update({k: v for k, v in flags.items() if v is not None})
    if not merged.get("timeout_min") or merged["timeout_min"] <= 0:
        raise BenchError(f"{path}: timeout_min must be a positive number of minutes for stage {stage}")
    if not isinstance(merged["stack"], int) or merged["stack"] < 1:
        raise BenchError(f"{path}: stack must be a whole number of members, at least 1, for stage {stage}")
    return merged


def slurm_parameters(res: dict[str, Any], name: str) -> dict[str, Any]:
    params = {"name": name, "timeout_min": int(res["timeout_min"]), "cpus_per_task": int(res["cpus"]),
              "mem_gb": res["mem_gb"], "slurm_signal_delay_s": 120}
    if res.get("gpus"):
        params["gpus_per_node"] = int(res["gpus"])
        # One task per GPU: a job of several tasks trains data-parallel (bench.stages.run_job).
        params["tasks_per_node"] = int(res["gpus"])
    if res.get("partition"):
        params["slurm_partition"] = res["partition"]
    if res.get("account"):
        params["slurm_account"] = res["account"]
    if res.get("array_parallelism"):
        params["slurm_array_parallelism"] = int(res["array_parallelism"])
    return params


# --- the plan and the manifest -----------------------------------------------------------

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

    def units(self, resources: dict[str, dict[str, Any]] | None = None) -> dict[str, list[list[Job]]]:
        """Per stage, the tasks that run its jobs still to do (a stack of teachers is one task)."""
        return {s: units(s, jobs, int(((resources or {}).get(s) or {}).get("stack", 1)))
                for s, jobs in self.todo.items()}


def last_line(err: BaseException) -> str:
    """An error's last line (a job's own traceback is in its log file), at most 500 characters."""
    return (str(err).strip().splitlines()[-1] if str(err).strip() else type(err).__name__)[:500]


def unit_states(plan: Plan, unit: list[Job], err: BaseException | str | None,
                **extra: Any) -> dict[str, dict[str, Any]]:
    """Each job's state once its task ended (`err`: the error or its message; None when it
    finished): a stack that failed may have finished some members."""
    if err is None:
        return {j.run_id: {"state": "done", **extra} for j in unit}
    reason = err[:500] if isinstance(err, str) else last_line(err)
    return {j.run_id: {"state": "done", **extra} if len(unit) > 1 and STAGES[j.stage].done(j, plan.grid, plan.roots)
            else {"state": "failed", "reason": reason[:500], **extra} for j in unit}


def unit_label(unit: list[Job]) -> str:
    return unit[0].label if len(unit) == 1 else f"{unit[0].label} and {len(unit) - 1} more (a stack)"


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


def sweep_dir(plan: Plan) -> Path:
    return plan.roots.results / plan.grid.name


def manifest_path(grid: str, roots: Roots) -> Path:
    return roots.results / grid / "sweep.json"


def read_manifest(grid: str, roots: Roots) -> dict[str, Any] | None:
    try:
        return json.loads(manifest_path(grid, roots).read_text())
    except (OSError, ValueError):
        return None


def write_manifest(plan: Plan, cluster: str, states: dict[str, dict[str, Any]], **extra: Any) -> None:
    atomic_write_json(manifest_path(plan.grid.name, plan.roots), {
        "grid": plan.grid.name, "grid_file": str(plan.grid.path), "scale": plan.grid.scale, "cluster": cluster,
        "teachers_root": str(plan.roots.teachers), "results_root": str(plan.roots.results),
        "updated": dt.datetime.now().isoformat(timespec="seconds"), "selection": plan.selection, **extra,
        "stages": {s: [{"run_id": j.run_id, "label": j.label, **states.get(j.run_id, {})} for j in jobs]
                   for s, jobs in plan.stages.items()}})


def print_plan(plan: Plan, cluster: str, resources: dict[str, dict[str, Any]]) -> None:
    print(f"grid {plan.grid.name} ({plan.grid.path}), scale {plan.grid.scale}, cluster {cluster}")
    tasks = plan.units(resources)
    for stage, jobs in plan.stages.items():
        todo = len(plan.todo[stage])
        r = resources[stage]
        stacked = f" in {len(tasks[stage])} tasks" if len(tasks[stage]) != todo else ""
        print(f"  {stage:<10} {len(jobs):>4} jobs, {todo:>4} to run{stacked}, {len(jobs) - todo:>4} done | "
              f"cpus {r['cpus']} mem {r['mem_gb']} GB gpus {r['gpus']} time {r['timeout_min']} min"
              + (f" partition {r['partition']}" if r.get("partition") else ""))


def print_pools(plan: Plan) -> None:
    """The teacher pools the plan trains: what each member is, the resolution its images are
    trained at (CIFAR resized to it), and one image's forward FLOPs at that resolution."""
    firsts: dict[str, Job] = {}
    for job in plan.stages["teachers"]:
        firsts.setdefault(job.spec["pool"], job)
    rows = []
    for p in plan.grid.pools:
        cfg, net = training_config(firsts[p.name].spec), net_of(firsts[p.name].spec)
        rows.append((p.name, p.arch, p.dataset, p.init, str(p.members), str(p.held_out), str(cfg.epochs),
                     str(cfg.image_size), f"{net.forward / 1e9:.3g}"))
    head = ("pool", "arch", "dataset", "init", "members", "held out", "epochs", "px", "GFLOP/img")
    widths = [max(len(r[i]) for r in (head, *rows)) for i in range(len(head))]
    print("pools (px: the training resolution; GFLOP/img: one image's forward pass at it):")
    for r in (head, *rows):
        print("  " + "  ".join(v.ljust(w) if i < 4 else v.rjust(w) for i, (v, w) in enumerate(zip(r, widths))))


def print_estimate(plan: Plan, resources: dict[str, dict[str, Any]], tflops: float) -> None:
    """GPU-hours per stage and in total, from FLOPs counted from the architectures and the grid,
    beside each stage's largest job and its time limit."""
    print(f"GPU-hours (an estimate: FLOPs counted from the architectures and the grid, bench/estimate.py, "
          f"at {tflops:g} TFLOP/s per GPU, --gpu-tflops):")
    print(f"  {'stage':<10} {'FLOP':>9} {'GPU-h':>9} {'to run':>9} {'largest job':>11} {'limit':>7}")
    total = total_todo = 0.0
    for stage, jobs in plan.stages.items():
        flops = [job_flops(stage, j.spec) for j in jobs]
        todo = sum(f for f, j in zip(flops, jobs) if j.run_id not in plan.done)
        total, total_todo = total + sum(flops), total_todo + todo
        # A job trains data-parallel on its gpus: its wall time is its GPU-hours over them.
        gpus = max(1, int(resources[stage].get("gpus") or 1))
        print(f"  {stage:<10} {sum(flops):>9.2e} {_hours(sum(flops), tflops):>9} {_hours(todo, tflops):>9} "
              f"{_hours(max(flops, default=0) / gpus, tflops) + ' h':>11} {resources[stage]['timeout_min'] / 60:>6.3g}h")
    print(f"  {'total':<10} {total:>9.2e} {_hours(total, tflops):>9} {_hours(total_todo, tflops):>9}")


def _hours(flops: float, tflops: float) -> str:
    h = gpu_hours(flops, tflops)
    return f"{h:,.0f}" if h >= 100 else f"{h:.1f}" if h >= 1 else f"{h:.2g}"


# --- executors ------------------------------------------------------------------------------

def run_debug(plan: Plan, resources: dict[str, dict[str, Any]] | None = None) -> dict[str, dict[str, Any]]:
    states: dict[str, dict[str, Any]] = {rid: {"state": "done"} for rid in plan.done}
    tasks = [u for s in plan.units(resources).values() for u in s]
    for unit in tqdm(tasks, desc=f"{plan.grid.name} (in-process)", unit="task"):
        if any(states.get(n, {}).get("state") != "done" for j in unit for n in j.needs):
            states.update({j.run_id: {"state": "skipped", "reason": "a job it needs did not finish"} for j in unit})
            continue
        try:
            run_job(unit_spec(unit), plan.grid.name, plan.roots, rerun=plan.rerun)
            states.update(unit_states(plan, unit, None))
        except Exception as err:
            states.update(unit_states(plan, unit, err))
            tqdm.write(f"failed: {unit_label(unit)}: {type(err).__name__}: {err}")
    write_manifest(plan, "debug", states)
    return states


def local_cap(cpus_per_job: int) -> int:
    return max(1, len(os.sched_getaffinity(0)) // max(1, cpus_per_job))


def run_local(plan: Plan, resources: dict[str, dict[str, Any]], cap: int | None = None,
              progress: bool = True) -> dict[str, dict[str, Any]]:
    """Drive the plan with submitit's local executor, at most `cap` subprocesses at once. A task
    is a job, or a stack of teacher jobs; each subprocess runs a bundle of ready tasks of one
    stage (`BundleRunner`): the ready tasks are shared out over the free slots, at most
    BUNDLE_MAX a bundle."""
    folder = sweep_dir(plan) / "jobs"
    states: dict[str, dict[str, Any]] = {rid: {"state": "done"} for rid in plan.done}
    pending = [u for s in plan.units(resources).values() for u in s]
    cost = {id(u): unit_cost(u) for u in pending}
    rank = upward_rank(pending, cost)
    for u in pending:
        states.update({j.run_id: {"state": "pending"} for j in u})
    running: dict[str, tuple[list[list[Job]], Any]] = {}  # submitit job id -> (its bundle of tasks, handle)
    executors: dict[str, submitit.LocalExecutor] = {}
    peak, changed = 0, False
    bar = tqdm(total=sum(map(len, pending)), desc=f"{plan.grid.name} (local)", unit="job", disable=not progress)
    write_manifest(plan, "local", states, driver_pid=os.getpid(), peak_running=0)
    while pending or running:
        for key, (bundle, handle) in list(running.items()):
            if handle.done():
                del running[key]
                changed = True
                try:
                    outcome = handle.result()
                except Exception as err:  # the subprocess itself died: its traceback is in its log file
                    outcome = {u[0].run_id: {"state": "failed", "reason": last_line(err)} for u in bundle}
                for unit in bundle:
                    got = outcome.get(unit[0].run_id, {"state": "failed", "reason": "the bundle ended without it"})
                    times = {k: got[k] for k in ("started", "ended") if k in got}
                    failed = got["state"] != "done"
                    states.update(unit_states(plan, unit, got["reason"] if failed else None, job_id=handle.job_id,
                                              **({"log": str(handle.paths.stderr)} if failed else {}), **times))
                    if failed:
                        bar.write(f"failed: {unit_label(unit)}: {got['reason'][:200]}")
                    bar.update(len(unit))
        for unit in list(pending):
            if any(states.get(n, {}).get("state") in ("failed", "skipped") for j in unit for n in j.needs):
                pending.remove(unit)
                changed = True
                states.update({j.run_id: {"state": "skipped", "reason": "a job it needs failed"} for j in unit})
                bar.update(len(unit))
        ready = sorted((u for u in pending if all(states.get(n, {}).get("state") == "done" for j in u for n in j.needs)),
                       key=lambda u: -rank[id(u)])
        while ready and len(running) < cap_for(ready[0][0], resources, cap):
            slots = cap_for(ready[0][0], resources, cap)
            same = [u for u in ready if u[0].stage == ready[0][0].stage]
            bundle = next_bundle(same, [cost[id(u)] for u in same], slots - len(running), slots,
                                 sum(cost[id(u)] for u in pending))
            stage = bundle[0][0].stage
            for unit in bundle:
                pending.remove(unit)
                ready.remove(unit)
            changed = True
            if stage not in executors:
                executors[stage] = submitit.LocalExecutor(folder=folder)
            res = resources[stage]
            executors[stage].update_parameters(timeout_min=int(res["timeout_min"]) * len(bundle))
            handle = executors[stage].submit(BundleRunner(), [(u[0].run_id, unit_spec(u)) for u in bundle],
                                             plan.grid.name, plan.roots, int(res["cpus"]), plan.rerun)
            running[handle.job_id] = (bundle, handle)
            for unit in bundle:
                states.update({j.run_id: {"state": "running", "job_id": handle.job_id, "started": time.time()}
                               for j in unit})
        peak = max(peak, len(running))
        if changed:  # the manifest is rewritten (and fsynced) only when a state moved
            write_manifest(plan, "local", states, driver_pid=os.getpid(), peak_running=peak)
            changed = False
        time.sleep(0.5)
    bar.close()
    write_manifest(plan, "local", states, driver_pid=os.getpid(), peak_running=peak, finished=True)
    return states


def unit_cost(unit: list[Job]) -> float:
    """A task's work in FLOPs (bench.estimate): the local executor starts the ready tasks with the
    most work ahead of them first (`upward_rank`), so a long one is not left running alone at the end."""
    try:
        return sum(job_flops(j.stage, j.spec) for j in unit)
    except (BenchError, KeyError, TypeError, ValueError):  # a spec the estimate cannot read: last
        return 0.0


def upward_rank(units: list[list[Job]], cost: dict[int, float]) -> dict[int, float]:
    """Each task's priority (by `id`): its own cost plus the largest rank among the tasks that need
    it, i.e. the work on the longest chain it starts. Ready tasks run highest first, so a teacher
    that a meta-training waits on goes before a costlier KD student that nothing waits on."""
    owner = {j.run_id: id(u) for u in units for j in u}
    needers: dict[int, set[int]] = {id(u): set() for u in units}
    for u in units:
        for need in {n for j in u for n in j.needs}:
            if need in owner and owner[need] != id(u):
                needers[owner[need]].add(id(u))
    rank: dict[int, float] = {}

    def of(key: int) -> float:
        if key not in rank:  # chains are a few stages deep: the recursion stays shallow
            rank[key] = cost[key] + max((of(k) for k in needers[key]), default=0.0)
        return rank[key]

    return {id(u): of(id(u)) for u in units}


def next_bundle(ready: list[list[Job]], costs: list[float], free: int, slots: int, remaining: float
                ) -> list[list[Job]]:
    """The tasks the next local subprocess runs, from `ready` (highest rank first, one stage) and their
    `costs`: one subprocess per task would pay torch's import each time, one bundle of many would
    leave the other slots idle at the end. So: at most BUNDLE_MAX tasks and at most the ready
    count per free slot, and, with several slots, at most half a slot's fair share of the
    `remaining` work (unless the bundle is one task)."""
    count = max(1, min(BUNDLE_MAX, -(-len(ready) // free)))
    budget = remaining / (2 * slots) if slots > 1 and remaining > 0 else float("inf")
    bundle, total = [ready[0]], costs[0]
    for unit, c in zip(ready[1:count], costs[1:count]):
        if total + c > budget:
            break
        bundle.append(unit)
        total += c
    return bundle


def cap_for(job: Job, resources: dict[str, dict[str, Any]], cap: int | None) -> int:
    return cap if cap is not None else local_cap(int(resources[job.stage]["cpus"]))


def submit_slurm(plan: Plan, resources: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """One array per stage; each stage waits (afterok) on the jobs of earlier stages it needs."""
    folder = sweep_dir(plan) / "slurm" / "%j"
    states: dict[str, dict[str, Any]] = {rid: {"state": "done"} for rid in plan.done}
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
            handles = [ex.submit(JobRunner(), unit_spec(u), plan.grid.name, plan.roots, None, plan.rerun)
                       for u in tasks]
        for u, h in zip(tasks, handles):
            for j in u:
                job_ids[j.run_id] = h.job_id
                states[j.run_id] = {"state": "submitted", "job_id": h.job_id}
        print(f"  {stage}: array {handles[0].job_id.split('_')[0]} with {len(tasks)} tasks"
              + (f" ({len(jobs)} jobs)" if len(jobs) != len(tasks) else "")
              + (f", after {len(deps)} jobs" if deps else ""))
    write_manifest(plan, "slurm", states)
    return states


# --- status -------------------------------------------------------------------------------

SLURM_RUNNING = ("RUNNING", "COMPLETING", "CONFIGURING", "STAGE_OUT", "SUSPENDED", "SIGNALING", "STOPPED")
SLURM_PENDING = ("PENDING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "RESIZING", "PREEMPTED")


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


def current_states(grid: str, roots: Roots) -> tuple[dict[str, Any], dict[str, dict[str, str]]]:
    """The manifest, and per stage run_id -> done / running / pending / failed / skipped."""
    manifest = read_manifest(grid, roots)
    if manifest is None:
        raise BenchError(f"no sweep of grid {grid!r} under {roots.results} "
                         f"(expected {manifest_path(grid, roots)}); submit it first")
    roots = Roots(Path(manifest["teachers_root"]), Path(manifest["results_root"]))  # the sweep's own
    live = squeue_states([j["job_id"] for s in manifest["stages"].values() for j in s if j.get("job_id")]) \
        if manifest["cluster"] == "slurm" else {}
    driver_alive = manifest["cluster"] != "local" or pid_alive(manifest.get("driver_pid"))
    plan = make_plan(selected_grid(manifest["grid_file"], manifest["scale"], manifest.get("selection") or {}), roots)
    out: dict[str, dict[str, str]] = {}
    for stage, jobs in manifest["stages"].items():
        out[stage] = {}
        for j in jobs:
            if j["run_id"] in plan.done:
                state = "done"
            elif manifest["cluster"] == "slurm" and live.get(j.get("job_id")) in SLURM_RUNNING:
                state = "running"
            elif manifest["cluster"] == "slurm" and live.get(j.get("job_id")) in SLURM_PENDING:
                state = "pending"
            elif manifest["cluster"] == "slurm":
                # Finished without its output (failed, cancelled, timed out), or never submitted.
                state = "failed" if j.get("job_id") else "pending"
            else:
                state = j.get("state", "pending")
                if state in ("running", "pending") and not driver_alive:
                    state = "failed" if state == "running" else "pending"
            out[stage][j["run_id"]] = state
    return manifest, out


def _running_local_driver(grid: str, roots: Roots) -> int | None:
    manifest = read_manifest(grid, roots) or {}
    pid = manifest.get("driver_pid")
    mine = pid == os.getpid()
    return pid if manifest.get("cluster") == "local" and not manifest.get("finished") and not mine \
        and pid_alive(pid) else None


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
    print(disk_line(grid, Roots(Path(manifest["teachers_root"]), Path(manifest["results_root"]))))


# What a sweep leaves beside its records, by folder of results/<grid>/: the executors' logs and the
# distilled / fine-tuned students' run folders (checkpoints: a finished job's record holds its numbers).
CLEANABLE = {"jobs": "local job logs", "slurm": "SLURM job logs", "students": "students' run folders"}


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
    if busy or _running_local_driver(grid, roots):
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


def states_of(states: dict[str, dict[str, str]], j: dict[str, Any]) -> str | None:
    return next((s[j["run_id"]] for s in states.values() if j["run_id"] in s), None)


def wait_slurm(grid: str, roots: Roots, poll_s: float = 5.0) -> dict[str, dict[str, str]]:
    manifest, states = current_states(grid, roots)
    total = sum(len(s) for s in states.values())
    with tqdm(total=total, desc=f"{grid} (slurm)", unit="job") as bar:
        while True:
            manifest, states = current_states(grid, roots)
            finished = sum(v in ("done", "failed") for s in states.values() for v in s.values())
            bar.n = finished
            bar.refresh()
            if finished == total:
                return states
            time.sleep(poll_s)


# --- command line ---------------------------------------------------------------------------

class Parser(argparse.ArgumentParser):
    """Misspelled or unknown options stop with one line that lists the valid ones."""

    def error(self, message: str) -> None:  # type: ignore[override]
        valid = sorted(o for a in self._actions for o in a.option_strings if o.startswith("--"))
        raise BenchError(f"{message}; valid options: {' '.join(valid)}")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = Parser(prog="python -m bench.sweep", description=__doc__.split("\n\n")[0], allow_abbrev=False)
    p.add_argument("--grid", required=True, help="a grid in sweeps/ or the path of a YAML file")
    p.add_argument("--scale", default="tiny", help=f"one of {', '.join(SCALES)}")
    p.add_argument("--cluster", default="auto", help=f"one of {', '.join(CLUSTERS)}")
    p.add_argument("--dry-run", action="store_true", help="print the plan, submit nothing")
    p.add_argument("--gpu-tflops", type=float, default=DEFAULT_TFLOPS,
                   help="--dry-run: sustained TFLOP/s per GPU that turns the counted FLOPs into GPU-hours "
                        f"(default {DEFAULT_TFLOPS:g}: {TFLOPS_SOURCE})".replace("%", "%%"))
    p.add_argument("--wait", action="store_true", help="block until every job has finished")
    p.add_argument("--status", action="store_true", help="print the sweep's state and exit")
    p.add_argument("--clean", action="store_true",
                   help="remove the logs and students' folders of finished jobs (never records or teachers)")
    p.add_argument("--force", action="store_true",
                   help="rerun the methods stage even where records exist (finished teachers are kept)")
    p.add_argument("--smoke", action="store_true",
                   help="run the plan capped to --smoke-steps steps a job on synthetic data in the real formats, "
                        "first seed only, records under <results root>/smoke/ (bench/smoke.py)")
    p.add_argument("--smoke-steps", type=int, default=2, help="--smoke: optimiser steps per training loop")
    p.add_argument("--smoke-batch-size", type=int,
                   help="--smoke: cap every batch at this size, for a machine smaller than the grid's nodes "
                        "(a CPU); without it the smoke runs the real batch sizes")
    p.add_argument("--standin-weights", action="store_true",
                   help="--smoke on a machine without the hub: pretrained pools start from stand-in weights of the "
                        "right shapes (random, fixed seed) instead of timm's")
    p.add_argument("--archs", help="only the pools of these architectures (comma-separated)")
    p.add_argument("--seeds", help="instead of the grid's seeds: a count (5) or seeds and ranges (5-9): a rerun "
                                   "on other groups of teachers, e.g. into its own --results-root")
    p.add_argument("--results-root")
    p.add_argument("--teachers-root")
    p.add_argument("--cluster-config", type=Path, default=CLUSTER_FILE, help="per-stage resources")
    for key, kind in (("partition", str), ("account", str), ("gpus", int), ("cpus", int),
                      ("mem-gb", float), ("timeout-min", int), ("stack", int)):
        p.add_argument(f"--{key}", type=kind, help="overrides the cluster file for every stage")
    p.add_argument("--max-parallel", type=int, help="local executor: jobs at once (default cores / cpus)")
    p.add_argument("--data-root", help="folder of the data sets for every job (exported as BENCH_DATA)")
    p.add_argument("--quiet", action="store_true", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def check_writable(folder: Path, what: str = "results root", create: bool = True) -> None:
    """That `folder` can be written: made and written to, or (`create=False`, a dry run, which
    makes nothing) that its nearest existing ancestor is a writable folder."""
    if not create:
        existing = next(p for p in (folder, *folder.parents) if p.exists() or p == p.parent)
        if not existing.is_dir():
            raise BenchError(f"{what} {folder} is not writable ({existing} is a file, not a folder)")
        if not os.access(existing, os.W_OK | os.X_OK):
            raise BenchError(f"{what} {folder} is not writable ({existing}: permission denied)")
        return
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder):
            pass
    except OSError as err:
        raise BenchError(f"{what} {folder} is not writable ({err.strerror})") from None


def preflight(plan: Plan, roots: Roots, create: bool, smoke: bool = False) -> None:
    """The checks a submission makes before anything runs, the same for --dry-run: the results and
    (where jobs will write there) teachers roots writable, a data root present for every pool
    with work to do whose data set is read from disk."""
    check_writable(roots.results / plan.grid.name, "results root", create)
    if plan.todo.get("pretrain") or plan.todo.get("teachers") or plan.todo.get("meta_train"):
        check_writable(roots.teachers, "teachers root", create)
    # A base network belongs to no pool: its source task is generated (tiny scale only).
    busy = {j.spec.get("pool") or j.spec["teachers"][0]["pool"] for jobs in plan.todo.values() for j in jobs
            if j.stage != "pretrain"}
    for pool in plan.grid.pools if not smoke else ():  # a smoke writes its own data
        if pool.name not in busy or not dataset_spec(pool.dataset).needs_root:
            continue
        root = pool.recipe.get("data_root") or data_root()
        if root is None:
            raise BenchError(f"pool {pool.name}: dataset {pool.dataset!r} needs a data root (--data-root, "
                             f"BENCH_DATA or the pool recipe's data_root); see the README's data section")
        if not Path(root).is_dir():
            raise BenchError(f"pool {pool.name}: data root {root} is not a folder")


# What the slurm executor runs: sbatch submits each array, and submitit starts every task through
# srun (without it submitit refuses to submit at all).
SLURM_COMMANDS = ("sbatch", "srun")


def resolve_cluster(name: str) -> str:
    choose("cluster", name, CLUSTERS)
    cluster = name if name != "auto" else "slurm" if shutil.which("sbatch") else "local"
    missing = [c for c in SLURM_COMMANDS if not shutil.which(c)] if cluster == "slurm" else []
    if missing:
        how = " picked slurm (sbatch is on PATH), but" if name == "auto" else ":"
        raise BenchError(f"--cluster {name}{how} {' and '.join(missing)} not found on this machine (use --cluster "
                         f"local, or start a one-node SLURM with bench/scripts/slurm_local.sh start)")
    return cluster


@cli
def main(argv: list[str] | None = None) -> None:
    a = parse_args(argv)
    roots = base = Roots.resolve(a.teachers_root, a.results_root)
    if a.smoke:
        if a.data_root:
            raise BenchError("--smoke reads its own synthetic data (written under the smoke's results); "
                             "leave out --data-root")
        smoke.check_steps(a.smoke_steps)
        if a.smoke_batch_size is not None:
            smoke.check_batch(a.smoke_batch_size)
        roots = smoke.smoke_roots(roots)
    elif a.standin_weights or a.smoke_batch_size is not None:
        flag = "--standin-weights" if a.standin_weights else "--smoke-batch-size"
        raise BenchError(f"{flag} is for a --smoke run only: real runs read real weights at real batch sizes")
    if a.status:
        print_status(grid_path(a.grid).stem, roots)
        return
    if a.clean:
        clean(grid_path(a.grid).stem, roots)
        return
    check_tflops(a.gpu_tflops)
    selection = {**({"seeds": list(parse_seeds(a.seeds))} if a.seeds is not None else {}),
                 **({"archs": a.archs.split(",")} if a.archs is not None else {}),
                 **({"smoke_steps": a.smoke_steps} if a.smoke else {})}
    grid = selected_grid(a.grid, a.scale, selection)
    cluster = resolve_cluster(a.cluster)
    if a.max_parallel is not None and a.max_parallel < 1:
        raise BenchError(f"--max-parallel must be at least 1, got {a.max_parallel}")
    if a.cluster_config != CLUSTER_FILE and not a.cluster_config.is_file():
        raise BenchError(f"cluster file {a.cluster_config} not found")
    if a.data_root:
        os.environ["BENCH_DATA"] = str(Path(a.data_root).resolve())  # inherited by every job
    flags = {"partition": a.partition, "account": a.account, "gpus": a.gpus, "cpus": a.cpus,
             "mem_gb": a.mem_gb, "timeout_min": a.timeout_min, "stack": a.stack}
    resources = {s: load_resources(a.cluster_config, grid.scale, s, flags) for s in STAGES}
    if a.smoke:
        resources = {s: smoke.resources(r, flags) for s, r in resources.items()}
        data = smoke.prepare(grid, roots, a.smoke_steps, write=not a.dry_run, standin_weights=a.standin_weights,
                             batch_size=a.smoke_batch_size)
        capped = f", batches of at most {a.smoke_batch_size}" if a.smoke_batch_size else ""
        print(f"smoke run: every training loop stops after {a.smoke_steps} steps{capped}; seed {grid.seeds[0]} only; "
              f"synthetic data in {data}; records under {roots.results / grid.name} (never results)")
    if not a.dry_run:  # what killed writers left (bench.io); a dry run changes nothing
        for root in (roots.results / grid.name, roots.teachers):
            remove_stale_temps(root)
    plan = make_plan(grid, roots, force=a.force, selection=selection)
    print_plan(plan, cluster, resources)
    if a.dry_run:
        print_pools(plan)
        if not a.smoke:  # a smoke's jobs stop after a few steps: the count would be the full run's
            print_estimate(plan, resources, a.gpu_tflops)
        preflight(plan, roots, create=False, smoke=a.smoke)
        return
    preflight(plan, roots, create=True, smoke=a.smoke)
    running_driver = _running_local_driver(grid.name, roots)
    if running_driver:
        raise BenchError(f"a local driver of grid {grid.name!r} is still running (pid {running_driver}); "
                         f"follow it with --status, or stop it before starting another")
    if not any(plan.todo.values()):
        print("nothing to run: every job is done")
        write_manifest(plan, cluster, {rid: {"state": "done"} for rid in plan.done})
        return
    if cluster == "debug":
        states = run_debug(plan, resources)
    elif cluster == "local" and a.wait:
        states = run_local(plan, resources, a.max_parallel, progress=not a.quiet)
    elif cluster == "local":
        log = roots.results / grid.name / "sweep.log"
        cmd = [sys.executable, "-m", "bench.sweep", "--grid", str(grid.path), "--scale", grid.scale,
               "--cluster", "local", "--wait", "--quiet", "--teachers-root", str(base.teachers),
               "--results-root", str(base.results), "--cluster-config", str(a.cluster_config)]
        cmd += ["--smoke", "--smoke-steps", str(a.smoke_steps)] if a.smoke else []
        cmd += ["--smoke-batch-size", str(a.smoke_batch_size)] if a.smoke_batch_size else []
        cmd += ["--standin-weights"] if a.standin_weights else []
        cmd += ["--archs", a.archs] if a.archs is not None else []
        cmd += ["--seeds", a.seeds] if a.seeds is not None else []
        cmd += ["--max-parallel", str(a.max_parallel)] if a.max_parallel else []
        cmd += ["--force"] if a.force else []
        for flag, value in flags.items():  # the driver must plan with the same resources
            if value is not None:
                cmd += [f"--{flag.replace('_', '-')}", str(value)]
        with open(log, "ab") as out:
            proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    start_new_session=True)  # outlives this shell
        print(f"local driver started (pid {proc.pid}); log {log}\n"
              f"follow with: python -m bench.sweep --grid {a.grid} --status")
        return
    else:
        submit_slurm(plan, resources)
        if not a.wait:
            print(f"submitted; follow with: python -m bench.sweep --grid {a.grid} --status")
            return
        states = {rid: {"state": v} for s in wait_slurm(grid.name, roots).values() for rid, v in s.items()}
    failed = [rid for rid, s in states.items() if s.get("state") in ("failed", "skipped")]
    print_status(grid.name, roots)
    if failed:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
