"""The executors a sweep runs on, by --cluster name: debug (in this process), local (a driver of
subprocesses) and slurm (job arrays), each one file behind the interface of `base.Executor`;
`resolve_cluster` turns --cluster (auto included) into one of them."""
from __future__ import annotations

import shutil

from bench.errors import BenchError, choose
from bench.sweep.executors.base import Executor
from bench.sweep.executors.debug import DebugExecutor
from bench.sweep.executors.local import LocalExecutor
from bench.sweep.executors.slurm import SLURM_COMMANDS, SlurmExecutor

EXECUTORS: dict[str, type[Executor]] = {e.name: e for e in (SlurmExecutor, LocalExecutor, DebugExecutor)}
CLUSTERS = ("auto", *EXECUTORS)


def resolve_cluster(name: str) -> str:
    choose("cluster", name, CLUSTERS)
    cluster = name if name != "auto" else "slurm" if shutil.which("sbatch") else "local"
    missing = [c for c in SLURM_COMMANDS if not shutil.which(c)] if cluster == "slurm" else []
    if missing:
        how = " picked slurm (sbatch is on PATH), but" if name == "auto" else ":"
        raise BenchError(f"--cluster {name}{how} {' and '.join(missing)} not found on this machine (use --cluster "
                         f"local, or start a one-node SLURM with bench/scripts/slurm_local.sh start)")
    return cluster
