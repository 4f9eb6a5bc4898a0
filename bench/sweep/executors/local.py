"""The local executor (`--cluster local`): a driver process keeps at most cores / cpus-per-job
subprocesses running (submitit's local executor) and starts a task once the jobs it needs are
done, the tasks with the most work ahead of them first; without --wait the driver runs in the
background (`start_driver`)."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import submitit
from tqdm import tqdm

from bench.errors import BenchError
from bench.estimate import job_flops
from bench.io import pid_alive
from bench.jobs import Job, Roots
from bench.sweep.executors.base import Executor, recorded_states
from bench.sweep.manifest import read_manifest, sweep_dir, write_manifest
from bench.sweep.plan import Plan, States, last_line, unit_label, unit_states
from bench.sweep.resources import Resources
from bench.sweep.runners import BundleRunner

BUNDLE_MAX = 8  # jobs per local subprocess at most: keeps the progress bar and the balance fine


class LocalExecutor(Executor):
    name = "local"

    def __init__(self, cap: int | None = None, progress: bool = True):
        self.cap = cap  # subprocesses at once (--max-parallel); None: cores / the stage's cpus
        self.progress = progress

    def submit(self, plan: Plan, resources: dict[str, Resources]) -> States:
        """Drive the plan with submitit's local executor, at most `cap` subprocesses at once. A task
        is a job, or a stack of teacher jobs; each subprocess runs a bundle of ready tasks of one
        stage (`BundleRunner`): the ready tasks are shared out over the free slots, at most
        BUNDLE_MAX a bundle."""
        return _Drive(self, plan, resources).run()

    def job_states(self, manifest: dict[str, Any]) -> dict[str, str]:
        recorded = recorded_states(manifest)
        if pid_alive(manifest.get("driver_pid")):
            return recorded
        # The driver is gone: what it ran was killed with it, what waited never starts.
        return {rid: "failed" if state == "running" else state for rid, state in recorded.items()}


def run_local(plan: Plan, resources: dict[str, Resources], cap: int | None = None,
              progress: bool = True) -> States:
    return LocalExecutor(cap, progress).submit(plan, resources)


class _Drive:
    """One drive of a plan by the local executor: the tasks waiting, the subprocesses running
    (each a bundle of tasks), and every job's state, written to the manifest when one moves."""

    def __init__(self, executor: LocalExecutor, plan: Plan, resources: dict[str, Resources]):
        self.executor, self.plan, self.resources = executor, plan, resources
        self.states: States = {rid: {"state": "done"} for rid in plan.done}
        self.pending = [u for s in plan.units(resources).values() for u in s]
        self.cost = {id(u): unit_cost(u) for u in self.pending}
        self.rank = upward_rank(self.pending, self.cost)
        for u in self.pending:
            self.states.update({j.run_id: {"state": "pending"} for j in u})
        self.running: dict[str, tuple[list[list[Job]], Any]] = {}  # submitit job id -> (its bundle, handle)
        self.submitters: dict[str, submitit.LocalExecutor] = {}  # one per stage
        self.peak, self.changed = 0, False
        self.bar = tqdm(total=sum(map(len, self.pending)), desc=f"{plan.grid.name} (local)", unit="job",
                        disable=not executor.progress)

    def run(self) -> States:
        self.write(peak_running=0)
        while self.pending or self.running:
            self.collect_finished()
            self.skip_blocked()
            self.start_ready()
            self.peak = max(self.peak, len(self.running))
            if self.changed:  # the manifest is rewritten (and fsynced) only when a state moved
                self.write(peak_running=self.peak)
                self.changed = False
            time.sleep(0.5)
        self.bar.close()
        self.write(peak_running=self.peak, finished=True)
        return self.states

    def write(self, **extra: Any) -> None:
        write_manifest(self.plan, LocalExecutor.name, self.states, driver_pid=os.getpid(), **extra)

    def collect_finished(self) -> None:
        for key, (bundle, handle) in list(self.running.items()):
            if not handle.done():
                continue
            del self.running[key]
            self.changed = True
            try:
                outcome = handle.result()
            except Exception as err:  # the subprocess itself died: its traceback is in its log file
                outcome = {u[0].run_id: {"state": "failed", "reason": last_line(err)} for u in bundle}
            for unit in bundle:
                got = outcome.get(unit[0].run_id, {"state": "failed", "reason": "the bundle ended without it"})
                times = {k: got[k] for k in ("started", "ended") if k in got}
                failed = got["state"] != "done"
                self.states.update(unit_states(self.plan, unit, got["reason"] if failed else None,
                                               job_id=handle.job_id,
                                               **({"log": str(handle.paths.stderr)} if failed else {}), **times))
                if failed:
                    self.bar.write(f"failed: {unit_label(unit)}: {got['reason'][:200]}")
                self.bar.update(len(unit))

    def skip_blocked(self) -> None:
        for unit in list(self.pending):
            if any(self.states.get(n, {}).get("state") in ("failed", "skipped") for j in unit for n in j.needs):
                self.pending.remove(unit)
                self.changed = True
                self.states.update({j.run_id: {"state": "skipped", "reason": "a job it needs failed"} for j in unit})
                self.bar.update(len(unit))

    def start_ready(self) -> None:
        ready = sorted((u for u in self.pending
                        if all(self.states.get(n, {}).get("state") == "done" for j in u for n in j.needs)),
                       key=lambda u: -self.rank[id(u)])
        while ready and len(self.running) < cap_for(ready[0][0], self.resources, self.executor.cap):
            slots = cap_for(ready[0][0], self.resources, self.executor.cap)
            same = [u for u in ready if u[0].stage == ready[0][0].stage]
            bundle = next_bundle(same, [self.cost[id(u)] for u in same], slots - len(self.running), slots,
                                 sum(self.cost[id(u)] for u in self.pending))
            for unit in bundle:
                self.pending.remove(unit)
                ready.remove(unit)
            self.changed = True
            self.start(bundle)

    def start(self, bundle: list[list[Job]]) -> None:
        stage = bundle[0][0].stage
        if stage not in self.submitters:
            self.submitters[stage] = submitit.LocalExecutor(folder=sweep_dir(self.plan) / "jobs")
        res = self.resources[stage]
        self.submitters[stage].update_parameters(timeout_min=int(res.timeout_min) * len(bundle))
        handle = self.submitters[stage].submit(
            BundleRunner(), [(u[0].run_id, self.executor.task(u)) for u in bundle],
            self.plan.grid.name, self.plan.roots, int(res.cpus), self.plan.rerun)
        self.running[handle.job_id] = (bundle, handle)
        for unit in bundle:
            self.states.update({j.run_id: {"state": "running", "job_id": handle.job_id, "started": time.time()}
                                for j in unit})


def local_cap(cpus_per_job: int) -> int:
    return max(1, len(os.sched_getaffinity(0)) // max(1, cpus_per_job))


def cap_for(job: Job, resources: dict[str, Resources], cap: int | None) -> int:
    return cap if cap is not None else local_cap(int(resources[job.stage].cpus))


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


def running_driver(grid: str, roots: Roots) -> int | None:
    """The pid of a local driver of `grid` still running (not this process), if any."""
    manifest = read_manifest(grid, roots) or {}
    pid = manifest.get("driver_pid")
    mine = pid == os.getpid()
    return pid if manifest.get("cluster") == LocalExecutor.name and not manifest.get("finished") and not mine \
        and pid_alive(pid) else None


def start_driver(argv: list[str], roots: Roots, log: Path) -> int:
    """Start this command again in the background as the local driver, following the grid to its
    end (`--wait --quiet`); its output goes to `log`; returns its pid. It starts in this process's
    folder with its environment, so relative paths in `argv` name the same files; the roots are
    passed as this process resolved them, so the driver writes where this process checked."""
    cmd = [sys.executable, "-m", "bench.sweep", *argv, "--cluster", LocalExecutor.name, "--wait", "--quiet",
           "--teachers-root", str(roots.teachers), "--results-root", str(roots.results)]
    with open(log, "ab") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)  # outlives this shell
    return proc.pid
