"""Running one job of each stage (bench.jobs makes the jobs): `run_job` picks the stage's runner.

A runner trains or evaluates what the job's spec says and writes its record; a failed run leaves
a record that says why.
"""
from __future__ import annotations

import sys
import time
import traceback
from pathlib import Path
from typing import Any, Callable

import torch

from bench.errors import BenchError
from bench.paths import data_root
from bench.jobs import Roots, base_dir, member_dir, training_recipe, weightformer_dir
from bench.grid import Pool
from bench.pool import train_member, train_members
from bench.train_config import draw
from bench.run_records import run_id, write_record
from bench.job_env import world


def data_root_of(recipe: dict[str, Any]) -> str | None:
    """The grid's data root, else BENCH_DATA (exported to every job by the executors)."""
    root = recipe.get("data_root") or data_root()
    return None if root is None else str(root)


def run_pretrain(spec: dict[str, Any], grid: str, roots: Roots) -> dict[str, Any]:
    """A base network: a training run on its source task, found when done, and its record."""
    from bench.engine import train
    from bench.train_config import TrainConfig

    t0 = time.perf_counter()
    cfg = TrainConfig(spec["arch"], spec["dataset"], spec["scale"], seed=0,
                      **{**spec["recipe"], "data_root": data_root_of(spec["recipe"])})
    out = base_dir(roots, spec)
    meta = train(cfg, out, progress=False)
    record = {"run_id": run_id(spec), "grid": grid, "stage": "pretrain", "method": "base", "arch": spec["arch"],
              "dataset": spec["dataset"], "scale": spec["scale"], "seed": 0, "status": "done",
              **{k: v for k, v in meta["metrics"].items() if k.split("_")[-1] in ("top1", "top5", "nll", "ece")},
              "train_s": meta["train_s"], "epochs": meta["epochs"], "weights": str(out / "model.safetensors"),
              "wall_s": time.perf_counter() - t0}
    if world()[0] == 0:
        write_record(roots.results / grid / "records", record)
    return record


def member_training(spec: dict[str, Any], roots: Roots) -> tuple[dict[str, Any], dict[str, Any]]:
    """A member's training fields beyond its pool's recipe (its base's weights, the values it draws
    from the pool's ranges, the data root) and what its record notes of them."""
    drawn = draw(spec.get("ranges", {}), spec["member"])
    recipe = training_recipe(spec)
    fields = {**recipe, **drawn, "data_root": data_root_of(recipe)}
    noted = {f"drawn_{k}": v for k, v in drawn.items()}
    if "base" in spec:  # the base is named in the run's identity by its run id; its folder is a location
        base = run_id(spec["base"])
        fields.update(init_from=str(base_dir(roots, spec["base"]) / "model.safetensors"), extra={"base": base})
        noted["base"] = base
    return fields, noted


def run_teachers(spec: dict[str, Any], grid: str, roots: Roots) -> dict[str, Any]:
    """One member, or a stack of members of one pool ({"stack": [specs]}, bench.jobs.unit_spec)
    trained as one network; each member writes its own record."""
    if "stack" in spec:
        return run_teacher_stack(spec["stack"], grid, roots)
    fields, noted = member_training(spec, roots)
    return train_member(Pool.of_member(spec), spec["member"], results=roots.results, grid=grid,
                        run=run_id(spec), run_dir=member_dir(roots, spec),
                        progress=False, noted=noted, **fields)


def run_teacher_stack(specs: list[dict[str, Any]], grid: str, roots: Roots) -> dict[str, Any]:
    first = specs[0]
    if any({**s, "member": 0} != {**first, "member": 0} for s in specs):
        raise BenchError("a stack of teachers holds members of one pool and recipe only")
    if "base" in first or "ranges" in first:  # bench.jobs never stacks them: each trains its own way
        raise BenchError("members with a base or drawn hyperparameters are trained one at a time")
    recipe = training_recipe(first)
    recipe = {**recipe, "data_root": data_root_of(recipe)}
    records = train_members(Pool.of_member(first), [s["member"] for s in specs],
                            results=roots.results, grid=grid, runs=[run_id(s) for s in specs],
                            run_dirs=[member_dir(roots, s) for s in specs],
                            progress=False, **recipe)
    return {"stage": "teachers", "stack": records}


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

    from bench.engine import pick_device
    from bench.method_options import WFConfig
    from bench.weightformer.meta_train import meta_train

    t0 = time.perf_counter()
    teacher = spec["teachers"][0]
    cfg = WFConfig(**spec["wf"]).validate()
    base = {"run_id": run_id(spec), "grid": grid, "stage": "meta_train", "method": "weightformer",
            **_pool_fields(teacher), "seed": cfg.seed, "n_teachers": spec["n_teachers"],
            "wf_n_teachers": spec["n_teachers"], **{f"wf_{k}": v for k, v in cfg.identity().items()}}
    records = roots.results / grid / "records" if world()[0] == 0 else None
    if world()[1] > 1:  # every rank would run the whole meta-training into one folder
        raise BenchError(f"meta_train runs on one device, not {world()[1]} tasks: give the meta_train stage "
                         f"gpus: 1 (sweeps/cluster.yaml or --gpus)")
    try:
        meta = meta_train(weightformer_dir(roots, spec),
                          teachers=[member_dir(roots, t) / "model.safetensors" for t in spec["teachers"]],
                          members=spec["members"], arch=teacher["arch"], dataset=teacher["dataset"],
                          scale=teacher["scale"], pool=teacher["pool"], n_teachers=spec["n_teachers"], cfg=cfg,
                          data_root=data_root_of(training_recipe(teacher)), device=pick_device("auto"), progress=False)
    except Exception as err:
        _write_failed(records, base, err, t0)
        raise
    history = meta["history"]
    # The curves (train KL per log point, val KL where early stopping watched it) go in the record:
    # the report draws every meta-training's without reading the teachers' folders.
    curve = [{k: row[k] for k in ("step", "kl", "val_kl") if k in row} for row in history]
    record = {**base, "status": "done", "meta_train_s": meta["meta_train_s"], "steps": meta["steps"],
              "steps_run": meta.get("steps_run", meta["steps"]), "best_step": meta.get("best_step", meta["steps"]),
              "wf_members": len(spec["members"]), "curve": curve,
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
                    data_root=data_root_of(training_recipe(teacher)), scale=teacher["scale"],
                    recipe=training_recipe(teacher), workdir=roots.results / grid / "students" / run_id(spec),
                    pool=teacher["pool"], init=teacher["init"],
                    partners=[[member_dir(roots, t) / "model.safetensors" for t in ts] for ts in spec.get("partners", [])],
                    partner_members=[[t["member"] for t in ts] for ts in spec.get("partners", [])],
                    weightformer=weightformer_dir(roots, spec["meta_train"]) / "model.safetensors"
                    if "meta_train" in spec else None,
                    base=base_dir(roots, teacher["base"]) / "model.safetensors" if "base" in teacher else None,
                    base_id=run_id(teacher["base"]) if "base" in teacher else None)
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
    "pretrain": run_pretrain, "teachers": run_teachers, "meta_train": run_meta_train, "methods": run_methods}


def lock_paths(spec: dict[str, Any], grid: str, roots: Roots) -> list[Path]:
    """A job's locks: one per teacher (a stack holds each of its members', so a member run alone by
    one sweep and in a stack by another is still run once) and per WeightFormer, beside the
    teachers every grid shares; one per method run, in its grid's results."""
    if spec["stage"] == "methods":
        return [roots.results / grid / "locks" / f"{run_id(spec)}.lock"]
    return [roots.teachers / ".locks" / f"{run_id(s)}.lock" for s in spec.get("stack", [spec])]


def run_once(spec: dict[str, Any], grid: str, roots: Roots, rerun: bool = False) -> dict[str, Any]:
    """The stage's runner under the job's locks (bench.locks). A job already done (another sweep
    finished it after this one was planned, or while this one waited) is not run again, unless
    `rerun` (`--force`) asks for its method run anew."""
    from bench.locks import locked
    from bench.jobs import STAGES, Job

    stage = STAGES[spec["stage"]]
    jobs = [Job(spec["stage"], s, "") for s in spec.get("stack", [spec])]
    with locked(lock_paths(spec, grid, roots), f"{spec['stage']} job {run_id(spec)}"):
        if not (rerun and spec["stage"] == "methods") and all(stage.done(job, grid, roots) for job in jobs):
            print(f"{spec['stage']} job {run_id(spec)}: done by another run; not run again", file=sys.stderr, flush=True)
            return {"already_done": True}
        return RUNNERS[spec["stage"]](spec, grid, roots)


def run_job(spec: dict[str, Any], grid: str, roots: Roots, cpus: int | None = None,
            rerun: bool = False) -> dict[str, Any]:
    """Entry point of every job. Interrupted training resumes from its own epoch checkpoint.

    Threads follow the CPUs the job was given (`cpus`, else SLURM's allocation, else the
    affinity mask), so jobs sharing a node do not oversubscribe it.

    A job of several tasks (SLURM_NTASKS > 1: submitit runs this once per task) trains data-
    parallel: each task joins a torch.distributed group (nccl on GPUs, else gloo) whose
    rendezvous submitit's job environment exports (MASTER_ADDR = the job's first node,
    MASTER_PORT, RANK, WORLD_SIZE, LOCAL_RANK), runs the job, and leaves the group at the end.
    Outside a submitit job (the debug executor, tests) or with one task nothing changes.

    A single-task job runs under its locks (`run_once`): a second run of the same job (two sweeps
    of one grid) waits for the first and then finds it done. (The tasks of one data-parallel job
    share their SLURM job and are its one run.)"""
    import submitit
    import torch.distributed as dist

    from bench.job_env import job_cpus

    torch.set_num_threads(max(1, cpus or job_cpus()))
    try:
        tasks = submitit.JobEnvironment().num_tasks
    except RuntimeError:  # not inside a submitit job: a single process
        tasks = 1
    if tasks <= 1:
        return run_once(spec, grid, roots, rerun)
    # overwrite: the values derived from SLURM's own variables win over any inherited ones (a
    # MASTER_PORT already set is kept: submitit reads it). CUDA_VISIBLE_DEVICES is left alone:
    # bench.engine.train picks cuda:LOCAL_RANK among the GPUs the task sees, which works both when
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
