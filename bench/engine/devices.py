"""Devices and ranks: which device this process computes on, mixed precision, waiting for every rank."""
from __future__ import annotations

import os

import torch
import torch.distributed as dist

from bench.errors import BenchError
from bench.job_env import precision, world


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def rank_device(name: str, world_size: int) -> torch.device:
    """The device of this process: `pick_device(name)`, except that with several ranks on GPUs
    rank LOCAL_RANK takes cuda:LOCAL_RANK (modulo the GPUs it sees: one each when SLURM binds
    a GPU per task, all of the node's otherwise)."""
    device = pick_device(name)
    if world_size > 1 and device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)) % torch.cuda.device_count())
        torch.cuda.set_device(device)
    if world_size > 1 and dist.get_backend() == "nccl" and device.type != "cuda":
        raise BenchError(f"device {name!r} is not a GPU but torch.distributed uses nccl (GPUs only); "
                         f"use --device auto or cuda, or the gloo backend")
    return device


def barrier(device: torch.device) -> None:
    """Wait for every rank (nothing to do in a single process)."""
    if world()[1] > 1:
        dist.barrier(device_ids=[device.index]) if dist.get_backend() == "nccl" else dist.barrier()


DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def autocast(device: torch.device):
    """Autocast at `precision(device)`, none on CPUs: one policy for every forward."""
    mode = precision(device)
    return torch.autocast(device.type, dtype=DTYPES.get(mode, torch.bfloat16), enabled=mode in DTYPES)


def grad_scaler(device: torch.device) -> torch.amp.GradScaler:
    """The loss scaler fp16 needs (its small range underflows gradients), a pass-through otherwise:
    disabled, it scales nothing and steps the optimizer as it is, so CPU runs stay bit-exact."""
    return torch.amp.GradScaler(device.type, enabled=precision(device) == "fp16")
