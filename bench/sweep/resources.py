"""Per-stage resources of a sweep: `Resources`, read from sweeps/cluster.yaml with flags on top
(`load_resources`), and the submitit parameters of a SLURM array from them (`slurm_parameters`)."""
from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from bench.grid import read_yaml
from bench.errors import BenchError
from bench.models import SCALES
from bench.paths import project_root
from bench.jobs import STAGES

CLUSTER_FILE = project_root() / "sweeps" / "cluster.yaml"


@dataclass(frozen=True)
class Resources:
    """What one task of a stage gets. Values keep the type the cluster file or flag gave them (a
    plan prints them as given)."""

    # SLURM partition; None: the cluster's default.
    partition: str | None = None
    # SLURM account charged; None: the user's default.
    account: str | None = None
    # GPUs per task; a task of several trains data-parallel, one process per GPU (bench.stages.run_job).
    gpus: int = 0
    # CPU cores per task; the local executor runs at most cores / cpus tasks at once.
    cpus: int = 1
    # Memory per task, in GB.
    mem_gb: float = 4
    # Time limit per task, in minutes: always set, submitit's own default would be a few minutes.
    timeout_min: int = 60
    # SLURM: tasks of one array running at once; None: as many as the cluster allows.
    array_parallelism: int | None = None
    # Teachers: members of one pool trained as one network in one task (bench.jobs.TeachersStage.units).
    stack: int = 1
    # SLURM: jobs nothing else waits on (the methods) whose estimated GPU time is short run one after
    # the other in one array task of at most this many estimated minutes (bench.estimate at the
    # measured or flat throughput); 0: a task per job. An evaluation, a soup or WeightFormer's
    # prediction needs a GPU for seconds but pays a whole job's start (queue, imports, data).
    pack_min: float = 0
    # SLURM: any other sbatch option, as given ({qos: high, constraint: a100, mail-type: END,
    # exclusive: true}); an option a field above sets is refused here (use the field).
    sbatch: dict[str, Any] = field(default_factory=dict, hash=False)


# The keys a cluster file may set, in the order its error messages list them.
RESOURCE_KEYS = tuple(f.name for f in fields(Resources))
DEFAULTS = {"cpus": 1, "mem_gb": 4, "gpus": 0, "timeout_min": 60, "stack": 1, "pack_min": 0}
# sbatch options the sweep sets itself, and the resource that sets each.
OWN_SBATCH = {"time": "timeout_min", "partition": "partition", "account": "account", "cpus-per-task": "cpus",
              "mem": "mem_gb", "gpus-per-node": "gpus", "ntasks-per-node": "gpus", "gres": "gpus",
              "array": "array_parallelism", "job-name": "the sweep (grid and stage)",
              "dependency": "the sweep (afterok on the jobs each stage needs)", "output": "the sweep (its job logs)",
              "error": "the sweep (its job logs)"}


def sbatch_options(raw: Any, where: str) -> dict[str, Any]:
    """A mapping of sbatch options (`qos: high`; `exclusive: true` for a flag without a value),
    keys as sbatch spells them; one the sweep sets itself is refused, naming the resource to use."""
    if not isinstance(raw, dict):
        raise BenchError(f"{where}: sbatch: expected a mapping of sbatch options (qos: high), got {raw!r}")
    out = {}
    for key, value in raw.items():
        name = str(key).lstrip("-").replace("_", "-")
        if name in OWN_SBATCH:
            raise BenchError(f"{where}: sbatch option {name!r} is set by {OWN_SBATCH[name]}; give that instead")
        if not isinstance(value, (str, int, float, bool)) or value is False:
            raise BenchError(f"{where}: sbatch option {name!r}: expected a value or true, got {value!r}")
        out[name] = value
    return out


def load_resources(path: Path, scale: str, stage: str, flags: dict[str, Any]) -> Resources:
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
    cap = STAGES[stage].max_gpus
    own = ((raw.get(scale) or {}).get(stage) or {}).get("gpus")
    if cap is not None and own is not None and own > cap:
        raise BenchError(f"{path}: {scale}.{stage}: gpus {own}: a {stage} job uses at most {cap}")
    merged = dict(DEFAULTS)
    extra: dict[str, Any] = {}  # sbatch options add up: the default's, the stage's, the flags'
    for where, given in ((f"{path}: {scale}.default", (raw.get(scale) or {}).get("default")),
                         (f"{path}: {scale}.{stage}", (raw.get(scale) or {}).get(stage)), ("--sbatch", flags)):
        given = dict(given or {})
        extra.update(sbatch_options(given.pop("sbatch", None) or {}, where))
        merged.update({k: v for k, v in given.items() if v is not None})
    merged["sbatch"] = extra
    if cap is not None and (merged.get("gpus") or 0) > cap:  # the default's or --gpus: for stages that use them
        merged["gpus"] = cap
    if not merged.get("timeout_min") or merged["timeout_min"] <= 0:
        raise BenchError(f"{path}: timeout_min must be a positive number of minutes for stage {stage}")
    if not isinstance(merged["stack"], int) or merged["stack"] < 1:
        raise BenchError(f"{path}: stack must be a whole number of members, at least 1, for stage {stage}")
    if not isinstance(merged["pack_min"], (int, float)) or not 0 <= merged["pack_min"] < merged["timeout_min"]:
        raise BenchError(f"{path}: pack_min must be 0 (no packing) or a number of minutes below timeout_min "
                         f"({merged['timeout_min']}) for stage {stage}, got {merged['pack_min']!r}")
    return Resources(**merged)


def slurm_parameters(res: Resources, name: str) -> dict[str, Any]:
    params = {"name": name, "timeout_min": int(res.timeout_min), "cpus_per_task": int(res.cpus),
              "mem_gb": res.mem_gb, "slurm_signal_delay_s": 120}
    if res.gpus:
        params["gpus_per_node"] = int(res.gpus)
        # One task per GPU: a job of several tasks trains data-parallel (bench.stages.run_job).
        params["tasks_per_node"] = int(res.gpus)
    if res.partition:
        params["slurm_partition"] = res.partition
    if res.account:
        params["slurm_account"] = res.account
    if res.array_parallelism:
        params["slurm_array_parallelism"] = int(res.array_parallelism)
    if res.sbatch:
        params["slurm_additional_parameters"] = dict(res.sbatch)
    return params
