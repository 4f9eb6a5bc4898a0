"""The debug executor (`--cluster debug`): every task runs inside this process, one after the other."""
from __future__ import annotations

from typing import Any

from tqdm import tqdm

from bench.stages import run_job
from bench.sweep.executors.base import Executor, recorded_states
from bench.sweep.manifest import write_manifest
from bench.sweep.plan import Plan, States, unit_label, unit_states
from bench.sweep.resources import Resources


class DebugExecutor(Executor):
    name = "debug"

    def submit(self, plan: Plan, resources: dict[str, Resources] | None = None) -> States:
        states: States = {rid: {"state": "done"} for rid in plan.done}
        tasks = [u for s in plan.units(resources).values() for u in s]
        for unit in tqdm(tasks, desc=f"{plan.grid.name} (in-process)", unit="task"):
            if any(states.get(n, {}).get("state") != "done" for j in unit for n in j.needs):
                states.update({j.run_id: {"state": "skipped", "reason": "a job it needs did not finish"} for j in unit})
                continue
            try:
                run_job(self.task(unit), plan.grid.name, plan.roots, rerun=plan.rerun)
                states.update(unit_states(plan, unit, None))
            except Exception as err:
                states.update(unit_states(plan, unit, err))
                tqdm.write(f"failed: {unit_label(unit)}: {type(err).__name__}: {err}")
        write_manifest(plan, self.name, states)
        return states

    def job_states(self, manifest: dict[str, Any]) -> dict[str, str]:
        return recorded_states(manifest)
