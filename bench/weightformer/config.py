"""WeightFormer settings: every choice the paper leaves open is a field the ablations can vary.

`WFConfig` holds what shapes meta-training (the model, the loss, the optimiser); fine-tuning
settings (`ft_*`) belong to the `weightformer_ft` method and never change the meta-trained
model, so two methods that differ only in fine-tuning share one meta-training job.

Defaults differ by scale only in size and length: paper scale uses the authors' model size
(d_model 512, 6 blocks, 8 heads) on a GPU; tiny scale a small model that meta-trains on 2 CPU
cores in minutes.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from bench.errors import BenchError

OUTPUTS = ("direct", "residual_anchor", "residual_mean")
ALIGNS = ("none", "weight_matching")


@dataclass(frozen=True)
class WFConfig:
    d_model: int = 64
    depth: int = 2            # Transformer blocks
    heads: int = 4
    cross: bool = True        # the [cross] token carried from layer to layer
    output: str = "residual_anchor"
    temperature: float = 4.0  # eq. 1 at softmax temperature T (T = 1: near one-hot soft labels)
    shift_weight: float = 0.0  # weight of the shift-consistency term; 0 = off
    align: str = "none"        # permute teachers' hidden units onto the anchor before tokenising
    standardize: bool = True   # tokens scaled per column by the meta-train pool's mean and std
    steps: int = 300
    batch_size: int = 128      # training images per step
    lr: float = 1e-3
    weight_decay: float = 0.05
    warmup: float = 0.05       # fraction of steps
    clip: float = 1.0
    seed: int = 0
    checkpoint_every: int = 100

    def validate(self) -> "WFConfig":
        def bad(key: str, why: str) -> BenchError:
            return BenchError(f"weightformer: {key} {getattr(self, key)!r} {why}")
        if self.output not in OUTPUTS:
            raise bad("output", f"is not one of: {', '.join(OUTPUTS)}")
        if self.align not in ALIGNS:
            raise bad("align", f"is not one of: {', '.join(ALIGNS)}")
        for key in ("d_model", "depth", "heads", "steps", "batch_size", "checkpoint_every"):
            if not isinstance(getattr(self, key), int) or getattr(self, key) < 1:
                raise bad(key, "must be a whole number >= 1")
        if self.d_model % self.heads:
            raise bad("d_model", f"is not divisible by heads = {self.heads}")
        for key in ("temperature", "lr", "shift_weight", "weight_decay", "clip", "warmup"):
            if not math.isfinite(getattr(self, key)):
                raise bad(key, "must be a finite number")
        for key in ("temperature", "lr"):
            if not getattr(self, key) > 0:
                raise bad(key, "must be positive")
        for key in ("shift_weight", "weight_decay", "clip"):
            if getattr(self, key) < 0:
                raise bad(key, "must be >= 0")
        if not 0 <= self.warmup < 1:
            raise bad("warmup", "must be a fraction in [0, 1)")
        return self


SCALE_DEFAULTS: dict[str, dict[str, Any]] = {
    "tiny": {},
    "paper": dict(d_model=512, depth=6, heads=8, steps=20_000, batch_size=256, lr=3e-4, checkpoint_every=500),
}
FIELDS = tuple(f.name for f in dataclasses.fields(WFConfig))


def wf_config(options: dict[str, Any], scale: str) -> WFConfig:
    """The config a method's options ask for (other option names are ignored here)."""
    values = {**SCALE_DEFAULTS.get(scale, {}), **{k: v for k, v in options.items() if k in FIELDS}}
    types = {f.name: f.type for f in dataclasses.fields(WFConfig)}
    for key, value in values.items():
        kind = {"int": int, "float": float, "bool": bool, "str": str}[types[key]]
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            values[key] = float(value)
        elif not isinstance(values[key], kind) or (kind is int and isinstance(value, bool)):
            raise BenchError(f"weightformer: {key} must be a {types[key]}, got {value!r}")
    return WFConfig(**values).validate()
