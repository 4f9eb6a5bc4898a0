"""Checkpoints: safetensors weights + a JSON sidecar that carries the weights' sha256.

`name.safetensors` holds tensors only, so loading never unpickles anything; `name.json` holds
what the tensors are (arch, dataset, scale, seed, epoch, metrics, ...). Loading refuses a file
whose hash or architecture does not match its sidecar.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from bench.errors import BenchError
from bench.io import atomic_write_bytes, atomic_write_json

FORMAT = "ensemble-bench-checkpoint/1"


class CheckpointError(BenchError):
    pass


def paths(path: str | Path) -> tuple[Path, Path]:
    """(weights, sidecar) for `x`, `x.safetensors` or `x.json`."""
    path = Path(path)
    stem = path.with_suffix("") if path.suffix in (".safetensors", ".json") else path
    return stem.with_name(stem.name + ".safetensors"), stem.with_name(stem.name + ".json")


def save_checkpoint(path: str | Path, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> Path:
    """Write weights, then the sidecar: a sidecar exists only for whole weights."""
    weights, sidecar = paths(path)
    # Own, contiguous CPU copies: safetensors refuses tensors that share storage.
    data = st_save({k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()})
    atomic_write_bytes(weights, data)
    atomic_write_json(sidecar, {**meta, "format": FORMAT, "weights": weights.name,
                                "sha256": hashlib.sha256(data).hexdigest()})
    return weights


def read_meta(path: str | Path) -> dict[str, Any]:
    _, sidecar = paths(path)
    if not sidecar.exists():
        raise CheckpointError(f"checkpoint {sidecar} not found")
    try:
        meta = json.loads(sidecar.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CheckpointError(f"checkpoint sidecar {sidecar} is not valid JSON ({err})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(f"checkpoint sidecar {sidecar} is not an {FORMAT} sidecar")
    return meta


def load_checkpoint(path: str | Path, *, expect: dict[str, Any] | None = None,
                    map_location: str | torch.device = "cpu") -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Verified tensors and sidecar; `expect` = sidecar fields that must match (e.g. arch)."""
    weights, _ = paths(path)
    meta = read_meta(path)
    for key, value in (expect or {}).items():
        if meta.get(key) != value:
            raise CheckpointError(f"checkpoint {weights}: {key} is {meta.get(key)!r}, expected {value!r}")
    if not weights.exists():
        raise CheckpointError(f"checkpoint weights {weights} not found (sidecar present)")
    data = weights.read_bytes()
    if hashlib.sha256(data).hexdigest() != meta.get("sha256"):
        raise CheckpointError(f"checkpoint {weights}: sha256 does not match its sidecar "
                              f"(file changed or truncated after it was written)")
    try:
        tensors = st_load(data)
    except Exception as err:  # safetensors raises its own error types
        raise CheckpointError(f"checkpoint {weights} is not a readable safetensors file ({err})") from None
    return {k: v.to(map_location) for k, v in tensors.items()}, meta


def optimizer_to_tensors(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """An optimizer state as flat tensors plus JSON: its momentum buffers go in safetensors."""
    sd = opt.state_dict()
    tensors, scalars = {}, {}
    for pid, state in sd["state"].items():
        for key, value in state.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optimizer/{pid}/{key}"] = value
            else:
                scalars[f"{pid}/{key}"] = value
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def optimizer_from_tensors(opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        if name.startswith("optimizer/"):
            _, pid, key = name.split("/", 2)
            state.setdefault(int(pid), {})[key] = value
    for name, value in meta["scalars"].items():
        pid, key = name.split("/", 1)
        state.setdefault(int(pid), {})[key] = value
    groups = [{k: tuple(v) if k == "betas" else v for k, v in g.items()} for g in meta["param_groups"]]
    opt.load_state_dict({"state": state, "param_groups": groups})
