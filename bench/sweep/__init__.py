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

The package: cli.py (arguments, main), resources.py (per-stage resources), plan.py (the plan and
its done jobs), summary.py (the plan, pools and GPU-hours printed), preflight.py (checks before
anything runs), manifest.py (results/<grid>/sweep.json), runners.py (what a task runs),
executors/ (debug, local, slurm behind one interface, base.py), status.py (--status, --wait on
SLURM, --clean). The names below are what other modules and the tests import from bench.sweep;
a SLURM task pickled as bench.sweep.JobRunner still unpickles.
"""
from bench.sweep.cli import main, parse_args
from bench.sweep.executors import CLUSTERS, EXECUTORS, Executor, resolve_cluster
from bench.sweep.executors.local import BUNDLE_MAX, local_cap, next_bundle, run_local, unit_cost, upward_rank
from bench.sweep.manifest import read_manifest, write_manifest
from bench.sweep.plan import Plan, make_plan, selected_grid
from bench.sweep.resources import CLUSTER_FILE, RESOURCE_KEYS, Resources, load_resources
from bench.sweep.runners import BundleRunner, JobRunner
from bench.sweep.status import current_states, print_status, span_seconds

__all__ = ["BUNDLE_MAX", "CLUSTERS", "CLUSTER_FILE", "EXECUTORS", "RESOURCE_KEYS", "BundleRunner", "Executor",
           "JobRunner", "Plan", "Resources", "current_states", "load_resources", "local_cap", "main", "make_plan",
           "next_bundle", "parse_args", "print_status", "read_manifest", "resolve_cluster", "run_local",
           "selected_grid", "span_seconds", "unit_cost", "upward_rank", "write_manifest"]
