"""The rows of the table: one module per method, one signature, a registry by name.

Each method module defines `OPTIONS` (the option names a grid may set) and
`run(job: MethodJob) -> dict` returning the record fields it measured (metrics, costs). A method
that needs a meta-trained WeightFormer also defines `meta_train_options(options, scale)`: the
sweep then plans a meta_train job for it (bench.plan, through `meta_train_config`).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import torch

from bench.methods import aligned_soup, ensemble, kd, self_distill, single, soup, weightformer, weightformer_ft

METHODS: dict[str, ModuleType] = {
    "single": single, "ensemble": ensemble, "kd": kd, "self_distill": self_distill, "soup": soup,
    "aligned_soup": aligned_soup, "weightformer": weightformer, "weightformer_ft": weightformer_ft}


def meta_train_config(name: str, options: dict[str, Any], scale: str) -> dict[str, Any] | None:
    """The config of the WeightFormer method `name` meta-trains with these options at this scale;
    None for a method that needs no meta-training."""
    meta_train_options = getattr(METHODS[name], "meta_train_options", None)
    return None if meta_train_options is None else meta_train_options(options, scale)


@dataclass
class MethodJob:
    """What a method needs: the teachers (checkpoint paths and member ids) and its settings."""

    method: str
    dataset: str
    arch: str
    seed: int
    teachers: list[Path]
    members: list[int]
    options: dict[str, Any] = field(default_factory=dict)
    data_root: str | None = None
    device: str = "auto"
    scale: str = "tiny"
    recipe: dict[str, Any] = field(default_factory=dict)  # the pool's training overrides
    workdir: Path | None = None  # a resumable folder for a student the method trains
    pool: str | None = None  # the teachers' pool (a WeightFormer is meta-trained on one)
    weightformer: Path | None = None  # the meta-trained WeightFormer a weightformer method uses

    def torch_device(self) -> torch.device:
        from bench.train import pick_device

        return pick_device(self.device)
