"""The command line of `python -m bench.sweep`: its arguments (`parse_args`) and `main`, which
checks them, plans the grid, prints the plan and hands it to an executor."""
from __future__ import annotations

import argparse
import os
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

from bench import smoke
from bench.grid import Grid, grid_path, parse_seeds
from bench.errors import BenchError, cli
from bench.estimate import DEFAULT_TFLOPS, TFLOPS_SOURCE, check_tflops, read_throughput
from bench.io import remove_stale_temps
from bench.models import SCALES
from bench.jobs import STAGES, Roots
from bench.sweep.executors import CLUSTERS, EXECUTORS, Executor, resolve_cluster
from bench.sweep.executors.local import LocalExecutor, running_driver, start_driver
from bench.sweep.executors.slurm import SlurmExecutor
from bench.sweep.manifest import write_manifest
from bench.sweep.plan import Plan, States, make_plan, selected_grid
from bench.sweep.preflight import preflight
from bench.sweep.resources import CLUSTER_FILE, Resources, load_resources
from bench.paths import project_root
from bench.sweep.status import clean, follow, print_status
from bench.sweep.summary import print_disk, print_estimate, print_plan, print_pools

DESCRIPTION = "`python -m bench.sweep --grid G`: a grid's jobs, stage by stage, on SLURM or this machine."
GPU_CHECK_FILE = project_root() / "results" / "gpu_check.json"  # where make gpu-check writes it
# --flag -> Resources field: flags that override the cluster file for every stage.
RESOURCE_FLAGS = (("partition", str), ("account", str), ("gpus", int), ("cpus", int),
                  ("mem-gb", float), ("timeout-min", int), ("stack", int),
                  ("pack-min", float))


class Parser(argparse.ArgumentParser):
    """Misspelled or unknown options stop with one line that lists the valid ones."""

    def error(self, message: str) -> None:  # type: ignore[override]
        valid = sorted(o for a in self._actions for o in a.option_strings if o.startswith("--"))
        raise BenchError(f"{message}; valid options: {' '.join(valid)}")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = Parser(prog="python -m bench.sweep", description=DESCRIPTION, allow_abbrev=False)
    p.add_argument("--grid", required=True, help="a grid in sweeps/ or the path of a YAML file")
    p.add_argument("--scale", default="tiny", help=f"one of {', '.join(SCALES)}")
    p.add_argument("--cluster", default="auto", help=f"one of {', '.join(CLUSTERS)}")
    p.add_argument("--dry-run", action="store_true", help="print the plan, submit nothing")
    p.add_argument("--gpu-tflops", type=float, default=DEFAULT_TFLOPS,
                   help="--dry-run: sustained TFLOP/s per GPU that turns the counted FLOPs into GPU-hours "
                        f"(default {DEFAULT_TFLOPS:g}: {TFLOPS_SOURCE}); for the networks --gpu-check measured, "
                        "its rate instead".replace("%", "%%"))
    p.add_argument("--gpu-check", type=Path, default=GPU_CHECK_FILE,
                   help="the JSON make gpu-check wrote on a GPU node: each network's measured training throughput "
                        "for the dry run's GPU-hours and SLURM's --pack-min (default results/gpu_check.json)")
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
    for key, kind in RESOURCE_FLAGS:
        p.add_argument(f"--{key}", type=kind, help="overrides the cluster file for every stage")
    p.add_argument("--sbatch", action="append", metavar="KEY[=VALUE]",
                   help="SLURM: an sbatch option for every stage's arrays (repeatable: --sbatch qos=high "
                        "--sbatch exclusive), beside the cluster file's")
    p.add_argument("--array-parallelism", type=int, help="SLURM: tasks of one array running at once")
    p.add_argument("--max-parallel", type=int, help="local executor: jobs at once (default cores / cpus)")
    p.add_argument("--data-root", help="folder of the data sets for every job (exported as BENCH_DATA); with "
                   "--smoke: your data is opened and a sample of every split decoded, the run reading synthetic data")
    p.add_argument("--quiet", action="store_true", help=argparse.SUPPRESS)
    return p.parse_args(argv)


@cli
def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else list(argv)
    a = parse_args(argv)
    base = Roots.resolve(a.teachers_root, a.results_root)
    roots = smoke_roots(a, base)
    if a.status:
        print_status(grid_path(a.grid).stem, roots)
        return
    if a.clean:
        clean(grid_path(a.grid).stem, roots)
        return
    plan, cluster, resources = planned(a, roots)
    print_plan(plan, cluster, resources)
    if a.dry_run:
        print_pools(plan)
        if not a.smoke:  # a smoke's jobs stop after a few steps: the count would be the full run's
            print_estimate(plan, resources, read_throughput(a.gpu_check, a.gpu_tflops))
            print_disk(plan)
        preflight(plan, roots, create=False, smoke=a.smoke)
        return
    preflight(plan, roots, create=True, smoke=a.smoke)
    states = execute(a, argv, plan, cluster, resources, base)
    if states is None:  # submitted; the jobs go on without this process
        return
    failed = [rid for rid, s in states.items() if s.get("state") in ("failed", "skipped")]
    print_status(plan.grid.name, roots)
    if failed:
        raise SystemExit(1)


def smoke_roots(a: argparse.Namespace, base: Roots) -> Roots:
    """The roots the sweep writes to: a smoke's own under `base`, else `base`; the smoke-only
    flags refused without --smoke."""
    if a.smoke:
        smoke.check_steps(a.smoke_steps)
        if a.smoke_batch_size is not None:
            smoke.check_batch(a.smoke_batch_size)
        return smoke.smoke_roots(base)
    if a.standin_weights or a.smoke_batch_size is not None:
        flag = "--standin-weights" if a.standin_weights else "--smoke-batch-size"
        raise BenchError(f"{flag} is for a --smoke run only: real runs read real weights at real batch sizes")
    return base


def planned(a: argparse.Namespace, roots: Roots) -> tuple[Plan, str, dict[str, Resources]]:
    """The plan of the grid as narrowed by the flags, the executor it goes to and each stage's
    resources; a smoke's data written (not for a dry run), what killed writers left removed."""
    check_tflops(a.gpu_tflops)
    selection = {**({"seeds": list(parse_seeds(a.seeds))} if a.seeds is not None else {}),
                 **({"archs": a.archs.split(",")} if a.archs is not None else {}),
                 **({"smoke_steps": a.smoke_steps} if a.smoke else {})}
    grid = selected_grid(a.grid, a.scale, selection)
    cluster = resolve_cluster(a.cluster)
    if a.array_parallelism is not None and a.array_parallelism < 1:
        raise BenchError(f"--array-parallelism must be at least 1, got {a.array_parallelism}")
    if a.max_parallel is not None and a.max_parallel < 1:
        raise BenchError(f"--max-parallel must be at least 1, got {a.max_parallel}")
    if a.cluster_config != CLUSTER_FILE and not a.cluster_config.is_file():
        raise BenchError(f"cluster file {a.cluster_config} not found")
    if a.data_root and a.smoke:  # the user's data opened and looked at; the run reads the synthetic sets
        for line in smoke.check_user_data(grid, Path(a.data_root).resolve()):
            print(f"your data: {line}")
    elif a.data_root:
        os.environ["BENCH_DATA"] = str(Path(a.data_root).resolve())  # inherited by every job
    resources = stage_resources(a, grid, roots)
    if not a.dry_run:  # what killed writers left (bench.io); a dry run changes nothing
        for root in (roots.results / grid.name, roots.teachers):
            remove_stale_temps(root)
    return make_plan(grid, roots, force=a.force, selection=selection), cluster, resources


def stage_resources(a: argparse.Namespace, grid: Grid, roots: Roots) -> dict[str, Resources]:
    """Each stage's resources: the cluster file's, the flags on top, a smoke's time limit; a
    smoke's synthetic data is prepared here (written unless --dry-run)."""
    flags: dict[str, Any] = {key.replace("-", "_"): getattr(a, key.replace("-", "_")) for key, _ in RESOURCE_FLAGS}
    flags["array_parallelism"] = a.array_parallelism
    flags["sbatch"] = dict(option.split("=", 1) if "=" in option else (option, True) for option in a.sbatch or [])
    resources = {s: load_resources(a.cluster_config, grid.scale, s, flags) for s in STAGES}
    capped = [s for s, r in resources.items() if a.gpus and r.gpus < a.gpus]
    if capped:
        print(f"--gpus {a.gpus}: {', '.join(f'{s} uses {resources[s].gpus}' for s in capped)} "
              f"(no data-parallel path); the other stages get {a.gpus}")
    if a.smoke:
        resources = {s: Resources(**smoke.resources(asdict(r), flags)) for s, r in resources.items()}
        data = smoke.prepare(grid, roots, a.smoke_steps, write=not a.dry_run, standin_weights=a.standin_weights,
                             batch_size=a.smoke_batch_size)
        capped = f", batches of at most {a.smoke_batch_size}" if a.smoke_batch_size else ""
        print(f"smoke run: every training loop stops after {a.smoke_steps} steps{capped}; seed {grid.seeds[0]} only; "
              f"synthetic data in {data}; records under {roots.results / grid.name} (never results)")
    return resources


def execute(a: argparse.Namespace, argv: list[str], plan: Plan, cluster: str, resources: dict[str, Resources],
            base: Roots) -> States | None:
    """Hand the plan to its executor. The states of its jobs once they all ended, or None where
    they go on without this process (a background local driver, SLURM without --wait)."""
    grid = plan.grid.name
    driver = running_driver(grid, plan.roots)
    if driver:
        raise BenchError(f"a local driver of grid {grid!r} is still running (pid {driver}); "
                         f"follow it with --status, or stop it before starting another")
    if not any(plan.todo.values()):
        print("nothing to run: every job is done")
        write_manifest(plan, cluster, {rid: {"state": "done"} for rid in plan.done})
        return None
    if cluster == LocalExecutor.name and not a.wait:
        log = plan.roots.results / grid / "sweep.log"
        pid = start_driver(argv, base, log)
        print(f"local driver started (pid {pid}); log {log}\n"
              f"follow with: python -m bench.sweep --grid {a.grid} --status")
        return None
    executor = executor_for(cluster, a)
    states = executor.submit(plan, resources)
    if executor.blocking:
        return states
    if not a.wait:
        print(f"submitted; follow with: python -m bench.sweep --grid {a.grid} --status")
        return None
    return {rid: {"state": v} for s in follow(grid, plan.roots).values() for rid, v in s.items()}


def executor_for(cluster: str, a: argparse.Namespace) -> Executor:
    if cluster == LocalExecutor.name:
        return LocalExecutor(a.max_parallel, progress=not a.quiet)
    if cluster == SlurmExecutor.name:
        return SlurmExecutor(read_throughput(a.gpu_check, a.gpu_tflops))
    return EXECUTORS[cluster]()
