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


def save_checkpoint(path: str | Path, tensors: dict[str, torch.Tensor], meta: dict[str, Any], *,
                    versioned: bool = False) -> Path:
    """Write weights, then the sidecar: a sidecar exists only for whole weights.

    `versioned`: for a checkpoint that is overwritten (every epoch), the weights go to a new
    file named by their hash and the sidecar's rename is the single commit point, so a process
    killed between the two writes leaves the previous pair intact; older weight files are
    removed after the commit."""
    weights, sidecar = paths(path)
    # Own, contiguous CPU copies: safetensors refuses tensors that share storage.
    data = st_save({k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()})
    digest = hashlib.sha256(data).hexdigest()
    if versioned:
        weights = weights.with_name(f"{sidecar.stem}-{digest[:12]}.safetensors")
    atomic_write_bytes(weights, data)
    atomic_write_json(sidecar, {**meta, "format": FORMAT, "weights": weights.name, "sha256": digest})
    if versioned:
        for old in sidecar.parent.glob(f"{sidecar.stem}-*.safetensors"):
            if old.name != weights.name:
                old.unlink(missing_ok=True)
    return weights


def remove_checkpoint(path: str | Path) -> None:
    """Delete a checkpoint: sidecar first (the commit point), then every weights file."""
    weights, sidecar = paths(path)
    sidecar.unlink(missing_ok=True)
    weights.unlink(missing_ok=True)
    for old in sidecar.parent.glob(f"{sidecar.stem}-*.safetensors"):
        old.unlink(missing_ok=True)


def read_meta(path: str | Path) -> dict[str, Any]:
    _, sidecar = paths(path)
    if not sidecar.exists():
        raise CheckpointError(f"checkpoint {sidecar} not found")
    try:
        meta = json.loads(sidecar.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CheckpointError(f"checkpoint sidecar {sidecar} is not valid JSON ({err})") from None
    given = meta.get("format") if isinstance(meta, dict) else None
    family, _, version = FORMAT.rpartition("/")
    if isinstance(given, str) and given.startswith(family + "/") and given != FORMAT:
        raise CheckpointError(f"checkpoint sidecar {sidecar} has format {given!r}; this ensemble-bench reads "
                              f"{FORMAT!r} only (written by another version of it: use that version)")
    if given != FORMAT:
        raise CheckpointError(f"checkpoint sidecar {sidecar} is not an {FORMAT} sidecar")
    return meta


def load_checkpoint(path: str | Path, *, expect: dict[str, Any] | None = None,
                    map_location: str | torch.device = "cpu") -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Verified tensors and sidecar; `expect` = sidecar fields that must match (e.g. arch)."""
    weights, sidecar = paths(path)
    meta = read_meta(path)
    if meta.get("weights"):  # the sidecar names its weights file (versioned checkpoints)
        weights = sidecar.parent / Path(meta["weights"]).name
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
    load_optimizer_state(opt, {"state": state, "param_groups": groups})


def load_optimizer_state(opt: torch.optim.Optimizer, state_dict: dict[str, Any]) -> None:
    """`opt.load_state_dict(state_dict)`, then each state tensor shaped like its parameter laid
    out as the parameter is. Files hold contiguous tensors and torch keeps a loaded tensor's
    layout, but a fused optimizer walks a parameter and its state as flat memory: a
    channels-last weight with a contiguous momentum buffer would be updated with another
    element's momentum (silently; measured on torch 2.14 CPU)."""
    opt.load_state_dict(state_dict)
    for group in opt.param_groups:
        for p in group["params"]:
            for key, value in opt.state.get(p, {}).items():
                if isinstance(value, torch.Tensor) and value.shape == p.shape and value.stride() != p.stride():
                    opt.state[p][key] = torch.empty_like(p).copy_(value)
