"""Where this process stands in its job: the CPUs it was given, its torch.distributed rank and
the number format its device computes in.

A leaf module: data loaders (workers), the engine (threads, ranks, a smoke run's step cap) and the
sweep's stages read it.
"""
from __future__ import annotations

import os

import torch
import torch.distributed as dist


def job_cpus() -> int:
    """CPUs this job was given: `SLURM_CPUS_PER_TASK` when set (capped by the affinity mask),
    else the CPUs this process may run on (not the whole node's count); a positive
    `OMP_NUM_THREADS` caps either (a user's or a scheduler's explicit thread budget)."""
    try:
        allowed = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        allowed = os.cpu_count() or 1
    omp = os.environ.get("OMP_NUM_THREADS", "").strip()
    if omp.isdigit() and int(omp) > 0:
        allowed = min(allowed, int(omp))
    slurm = os.environ.get("SLURM_CPUS_PER_TASK", "").strip()
    if slurm:
        try:
            n = int(slurm)
        except ValueError:
            n = 0
        if n > 0:
            return max(1, min(n, allowed))
    return max(1, allowed)


# `python -m bench.sweep --smoke` exports the step cap to every job it runs (bench.smoke).
SMOKE_STEPS_ENV = "BENCH_SMOKE_STEPS"


def smoke_steps() -> int | None:
    """The optimiser steps every training loop of a smoke run stops at; None outside one."""
    value = os.environ.get(SMOKE_STEPS_ENV, "").strip()
    return int(value) if value.isdigit() and int(value) > 0 else None


def capped_steps(steps: int) -> int:
    """`steps`, or the smoke cap where it is lower: what a training loop runs and its caches hold."""
    cap = smoke_steps()
    return steps if cap is None else min(steps, cap)


# `--smoke --smoke-batch-size B` caps every batch (training and evaluation) at B, for a smoke on a
# machine smaller than the grid's nodes (CI's CPU): the real resolutions, steps and code paths, in
# less memory. Without it a smoke runs the real batch sizes, which is what it checks on a GPU node.
SMOKE_BATCH_ENV = "BENCH_SMOKE_BATCH"


def capped_batch(batch_size: int) -> int:
    """`batch_size`, or the smoke's batch cap where it is lower."""
    value = os.environ.get(SMOKE_BATCH_ENV, "").strip()
    return min(batch_size, int(value)) if value.isdigit() and int(value) > 0 else batch_size


def world() -> tuple[int, int]:
    """(rank, world size) of torch.distributed, (0, 1) when it is not initialised."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def precision(device: torch.device) -> str:
    """The number format of every forward on `device`: bf16 on GPUs that compute in it (compute
    capability 8.0 on, Ampere and later), fp16 with a loss scaler on older ones (a V100's bf16 is
    emulated, slower than float32), fp32 on CPUs. The engine's autocast follows it
    (bench.engine.devices); records name it (bench.run_records)."""
    if device.type != "cuda":
        return "fp32"
    return "bf16" if torch.cuda.get_device_capability(device)[0] >= 8 else "fp16"
