"""The sweep's stages: each turns a grid into jobs, knows when a job is done, and runs one.

A job is a pure function of its spec; `run_id` = hash of the spec. Stages run in the order of
`STAGES`; a job names the run_ids it needs (of earlier stages). Adding a stage is one entry here.
"""
from __future__ import annotations

import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol

import torch

from bench.config import Grid, PoolSpec, method_applies
from bench.system import world
from bench.errors import BenchError
from bench.paths import data_root, results_root, teachers_root
from bench.pool import Pool, train_member
from bench.store import read_record, run_id, write_record


@dataclass(frozen=True)
class Roots:
    teachers: Path
    results: Path

    @classmethod
    def resolve(cls, teachers: str | None = None, results: str | None = None) -> "Roots":
        return cls(teachers_root(teachers).resolve(), results_root(results).resolve())


@dataclass
class Job:
    stage: str
    spec: dict[str, Any]
    label: str
    needs: list[str] = field(default_factory=list)

    @property
    def run_id(self) -> str:
        return run_id(self.spec)


class Stage(Protocol):
    name: str

    def plan(self, grid: Grid, roots: Roots) -> list[Job]: ...
    def done(self, job: Job, grid: Grid, roots: Roots) -> bool: ...


def _pool(spec: dict[str, Any]) -> Pool:
    return Pool(spec["arch"], spec["dataset"], spec["scale"], spec["init"])


def teacher_spec(pool: PoolSpec, k: int) -> dict[str, Any]:
    return {"stage": "teachers", "pool": pool.name, "arch": pool.arch, "dataset": pool.dataset,
            "scale": pool.scale, "init": pool.init, "member": k, "recipe": dict(sorted(pool.recipe.items()))}


def member_dir(roots: Roots, spec: dict[str, Any]) -> Path:
    """teachers/<pool>-<recipe hash>/member-<k>: grids share a member exactly when its pool name
    and recipe agree (so its training is the same), and never train two recipes into one folder."""
    return roots.teachers / f"{spec['pool']}-{run_id(spec['recipe'])[:6]}" / f"member-{spec['member']}"


def data_root_of(recipe: dict[str, Any]) -> str | None:
    """The grid's data root, else BENCH_DATA (exported to every job by the executors)."""
    root = recipe.get("data_root") or data_root()
    return None if root is None else str(root)


class TeachersStage:
    """One job per pool member: a training run into `member_dir` (teachers/<pool>-<hash>/member-<k>)."""

    name = "teachers"

    def plan(self, grid: Grid, roots: Roots) -> list[Job]:
        return [Job(self.name, teacher_spec(p, k), f"{p.name}/member-{k}")
                for p in grid.pools for k in range(p.members)]

    def done(self, job: Job, grid: Grid, roots: Roots) -> bool:
        return (member_dir(roots, job.spec) / "model.json").exists() and \
            (roots.results / grid.name / "records" / f"{job.run_id}.json").exists()


def teacher_group(pool: PoolSpec, n: int, seed: int, part: str = "meta_train") -> list[int]:
    """Method seed s uses N members of the pool's meta-train (or held-out) part, drawn by a
    generator seeded by s."""
    part = pool.meta_train_members if part == "meta_train" else pool.held_out_members
    order = torch.randperm(len(part), generator=torch.Generator().manual_seed(seed)).tolist()
    return sorted(part[i] for i in order[:n])


def meta_train_spec(pool: PoolSpec, n: int, config: dict[str, Any]) -> dict[str, Any]:
    """A WeightFormer meta-trained on the pool's meta-train part for groups of n, with `config`
    (the resolved bench.options.WFConfig)."""
    return {"stage": "meta_train", "pool": pool.name, "n_teachers": n, "members": list(pool.meta_train_members),
            "teachers": [teacher_spec(pool, k) for k in pool.meta_train_members], "wf": config}


def weightformer_dir(roots: Roots, spec: dict[str, Any]) -> Path:
    """teachers/<pool>-<recipe hash>/weightformer-<run id>: beside the members it was meta-trained on."""
    return member_dir(roots, spec["teachers"][0]).parent / f"weightformer-{run_id(spec)}"


class MethodsStage:
    """One job per (pool, method variant, seed): a table cell's run on one group of N teachers.
    A method that needs a meta-trained WeightFormer also names the meta_train job it needs."""

    name = "methods"

    def plan(self, grid: Grid, roots: Roots) -> list[Job]:
        from bench.methods import meta_train_config

        jobs = []
        for p in grid.pools:
            for m in grid.methods:
                if not method_applies(m.options, p):
                    continue
                n = m.options.get("n_teachers", grid.n_teachers)
                part = m.options.get("teacher_part", grid.teacher_part)
                config = meta_train_config(m.name, m.options, p.scale)
                meta = meta_train_spec(p, n, config) if config is not None else None
                for seed in range(grid.seeds):
                    members = teacher_group(p, n, seed, part)
                    spec = {"stage": "methods", "method": m.name, "variant": m.variant,
                            "options": dict(sorted(m.options.items())), "seed": seed, "n_teachers": n,
                            "teacher_part": part, "members": members,
                            "teachers": [teacher_spec(p, k) for k in members]}
                    needs = [run_id(t) for t in spec["teachers"]]
                    if meta is not None:
                        spec["meta_train"] = meta
                        needs.append(run_id(meta))
                    jobs.append(Job(self.name, spec, f"{p.name}/{m.variant}/seed-{seed}", needs=needs))
        return jobs

    def done(self, job: Job, grid: Grid, roots: Roots) -> bool:
        rec = roots.results / grid.name / "records" / f"{job.run_id}.json"
        return rec.exists() and (read_record(rec) or {}).get("status") == "done"


class MetaTrainStage:
    """One job per WeightFormer the methods stage needs: (pool, N, config), shared by every method
    variant and seed that uses it. Written to `weightformer_dir`."""

    name = "meta_train"

    def plan(self, grid: Grid, roots: Roots) -> list[Job]:
        specs = {}
        for job in MethodsStage().plan(grid, roots):
            if "meta_train" in job.spec:
                spec = job.spec["meta_train"]
                specs.setdefault(run_id(spec), spec)
        return [Job(self.name, s, f"{s['pool']}/weightformer-N{s['n_teachers']}-{i}",
                    needs=[run_id(t) for t in s["teachers"]]) for i, (rid, s) in enumerate(specs.items())]

    def done(self, job: Job, grid: Grid, roots: Roots) -> bool:
        return (weightformer_dir(roots, job.spec) / "model.json").exists() and \
            (roots.results / grid.name / "records" / f"{job.run_id}.json").exists()


STAGES: dict[str, Stage] = {"teachers": TeachersStage(), "meta_train": MetaTrainStage(), "methods": MethodsStage()}


# --- running one job (inside a SLURM task, a local subprocess or the sweep process) ----------

def run_teachers(spec: dict[str, Any], grid: str, roots: Roots) -> dict[str, Any]:
    pool = _pool(spec)
    recipe = {**spec["recipe"], "data_root": data_root_of(spec["recipe"])}
    return train_member(pool, spec["member"], teachers=roots.teachers, results=roots.results, grid=grid,
                        run=run_id(spec), run_dir=member_dir(roots, spec), pool_name=spec["pool"],
                        progress=False, **recipe)


def _pool_fields(teacher: dict[str, Any]) -> dict[str, Any]:
    return {"arch": teacher["arch"], "dataset": teacher["dataset"], "scale": teacher["scale"],
            "init": teacher["init"], "pool": teacher["pool"]}


def _write_failed(records: Path | None, base: dict[str, Any], err: Exception, t0: float) -> None:
    """A failed record says why instead of a number."""
    if records is not None:
        reason = " ".join(str(err).split()) or type(err).__name__
        write_record(records, {**base, "status": "failed", "reason": f"{type(err).__name__}: {reason}",
                               "traceback": traceback.format_exc(limit=5), "wall_s": time.perf_counter() - t0})


def run_meta_train(spec: dict[str, Any], grid: str, roots: Roots) -> dict[str, Any]:
    from dataclasses import asdict

    from bench.engine import pick_device
    from bench.options import WFConfig
    from bench.weightformer.meta_train import meta_train

    t0 = time.perf_counter()
    teacher = spec["teachers"][0]
    cfg = WFConfig(**spec["wf"]).validate()
    base = {"run_id": run_id(spec), "grid": grid, "stage": "meta_train", "method": "weightformer",
            **_pool_fields(teacher), "seed": cfg.seed, "n_teachers": spec["n_teachers"],
            "wf_n_teachers": spec["n_teachers"], **{f"wf_{k}": v for k, v in asdict(cfg).items()}}
    records = roots.results / grid / "records" if world()[0] == 0 else None
    if world()[1] > 1:  # every rank would run the whole meta-training into one folder
        raise BenchError(f"meta_train runs on one device, not {world()[1]} tasks: give the meta_train stage "
                         f"gpus: 1 (sweeps/cluster.yaml or --gpus)")
    try:
        meta = meta_train(weightformer_dir(roots, spec),
                          teachers=[member_dir(roots, t) / "model.safetensors" for t in spec["teachers"]],
                          members=spec["members"], arch=teacher["arch"], dataset=teacher["dataset"],
                          scale=teacher["scale"], pool=teacher["pool"], n_teachers=spec["n_teachers"], cfg=cfg,
                          data_root=data_root_of(teacher["recipe"]), device=pick_device("auto"), progress=False)
    except Exception as err:
        _write_failed(records, base, err, t0)
        raise
    history = meta["history"]
    record = {**base, "status": "done", "meta_train_s": meta["meta_train_s"], "steps": meta["steps"],
              "kl_first": history[0]["kl"], "kl_last": history[-1]["kl"], "wf_parameters": meta["parameters"],
              "soft_label_cache": meta["soft_label_cache"], "wall_s": time.perf_counter() - t0}
    if records is not None:
        write_record(records, record)
    return record


def run_methods(spec: dict[str, Any], grid: str, roots: Roots) -> dict[str, Any]:
    from bench.methods import load_method, method_options
    from bench.methods.base import MethodJob

    t0 = time.perf_counter()
    teacher = spec["teachers"][0]
    base = {"run_id": run_id(spec), "grid": grid, "stage": "methods", "method": spec["method"],
            "variant": spec.get("variant", spec["method"]), **_pool_fields(teacher), "seed": spec["seed"],
            "n_teachers": spec["n_teachers"], "teacher_part": spec.get("teacher_part", "meta_train"),
            "teacher_members": spec["members"],
            **{f"option_{k}": v for k, v in spec["options"].items()}}
    job = MethodJob(method=spec["method"], dataset=teacher["dataset"], arch=teacher["arch"], seed=spec["seed"],
                    teachers=[member_dir(roots, t) / "model.safetensors" for t in spec["teachers"]],
                    members=spec["members"],
                    options=method_options(spec["method"], spec["options"], f"methods.{base['variant']}"),
                    data_root=data_root_of(teacher["recipe"]), scale=teacher["scale"],
                    recipe=teacher["recipe"], workdir=roots.results / grid / "students" / run_id(spec),
                    pool=teacher["pool"],
                    weightformer=weightformer_dir(roots, spec["meta_train"]) / "model.safetensors"
                    if "meta_train" in spec else None)
    # In a data-parallel job every rank runs the method; rank 0 alone writes the record.
    records = roots.results / grid / "records" if world()[0] == 0 else None
    write = (lambda rec: write_record(records, rec)) if records else (lambda rec: None)
    try:
        fields = load_method(spec["method"]).run(job)
    except Exception as err:  # a failed record says why instead of a number, then the job fails
        _write_failed(records, base, err, t0)
        raise
    record = {**base, "status": "done", **fields, "wall_s": time.perf_counter() - t0}
    write(record)
    return record


RUNNERS: dict[str, Callable[[dict[str, Any], str, Roots], dict[str, Any]]] = {
    "teachers": run_teachers, "meta_train": run_meta_train, "methods": run_methods}


def run_job(spec: dict[str, Any], grid: str, roots: Roots, cpus: int | None = None) -> dict[str, Any]:
    """Entry point of every job. Interrupted training resumes from its own epoch checkpoint.

    Threads follow the CPUs the job was given (`cpus`, else SLURM's allocation, else the
    affinity mask), so jobs sharing a node do not oversubscribe it.

    A job of several tasks (SLURM_NTASKS > 1: submitit runs this once per task) trains data-
    parallel: each task joins a torch.distributed group (nccl on GPUs, else gloo) whose
    rendezvous submitit's job environment exports (MASTER_ADDR = the job's first node,
    MASTER_PORT, RANK, WORLD_SIZE, LOCAL_RANK), runs the job, and leaves the group at the end.
    Outside a submitit job (the debug executor, tests) or with one task nothing changes."""
    import submitit
    import torch.distributed as dist

    from bench.system import job_cpus

    torch.set_num_threads(max(1, cpus or job_cpus()))
    try:
        tasks = submitit.JobEnvironment().num_tasks
    except RuntimeError:  # not inside a submitit job: a single process
        tasks = 1
    if tasks <= 1:
        return RUNNERS[spec["stage"]](spec, grid, roots)
    # overwrite: the values derived from SLURM's own variables win over any inherited ones (a
    # MASTER_PORT already set is kept: submitit reads it). CUDA_VISIBLE_DEVICES is left alone:
    # bench.train picks cuda:LOCAL_RANK among the GPUs the task sees, which works both when
    # each task sees all of the node's GPUs and when SLURM binds one per task.
    env = submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False,
                                                                overwrite=True)
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(env.local_rank % torch.cuda.device_count())
    dist.init_process_group(backend, init_method="env://", rank=env.rank, world_size=env.world_size)
    try:
        return RUNNERS[spec["stage"]](spec, grid, roots)
    finally:
        dist.destroy_process_group()
