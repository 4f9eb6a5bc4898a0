"""What one training run is: `TrainConfig` and the default recipes per data set, scale and arch.

Light on purpose (no torch, no model code): the grid loader, the sweep's plan and the report read
it to validate recipes and compute run ids without importing the training engine.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from bench.data import DATASETS, dataset_spec
from bench.errors import BenchError, choose
from bench.models import ARCH_SPECS, ARCHS, SCALES

OPTIMIZERS = ("sgd", "adamw")
SCHEDULES = ("cosine", "onecycle", "step", "constant")

# Defaults per (dataset, scale); a grid or a flag overrides any of them.
RECIPES: dict[tuple[str, str], dict[str, Any]] = {
    # Tiny scale: AdamW with a short warm-up and cosine decay fits digits in ~20 epochs.
    ("digits", "tiny"): dict(epochs=20, batch_size=64, optimizer="adamw", lr=3e-3, weight_decay=5e-4,
                             schedule="cosine", warmup_epochs=1, label_smoothing=0.0),
    # The common CIFAR distillation recipe (CRD, Tian et al. 2020; also mdistiller's).
    ("cifar", "paper"): dict(epochs=240, batch_size=64, optimizer="sgd", lr=0.05, weight_decay=5e-4,
                             schedule="step", milestones=(150, 180, 210), warmup_epochs=0,
                             label_smoothing=0.0),
    # FFCV's ResNet-50 ImageNet recipe (88 epochs, linear ramp to the peak at epoch 2 and down).
    ("imagenet", "paper"): dict(epochs=88, batch_size=1024, optimizer="sgd", lr=1.7, weight_decay=1e-4,
                                schedule="onecycle", warmup_epochs=2, label_smoothing=0.1),
}


def recipe_for(dataset: str, scale: str, arch: str | None = None) -> dict[str, Any]:
    """The (dataset, scale) recipe, with the arch's own changes at tiny scale (`ArchSpec.tiny_recipe`)."""
    family = "cifar" if dataset.startswith("cifar") else dataset
    base = RECIPES.get((family, scale)) or RECIPES[("digits", "tiny") if scale == "tiny" else ("cifar", "paper")]
    if arch is None or scale != "tiny":
        return dict(base)
    return {**base, **ARCH_SPECS[choose("arch", arch, ARCHS)].tiny_recipe}


@dataclass
class TrainConfig:
    arch: str
    dataset: str
    scale: str = "tiny"
    seed: int = 0
    init_seed: int | None = None  # seed of the initial weights when it differs from `seed`
    pretrained: bool = False      # start from timm's pretrained weights (new classifier from the seed)
    epochs: int | None = None
    batch_size: int | None = None
    optimizer: str | None = None
    lr: float | None = None
    momentum: float = 0.9
    weight_decay: float | None = None
    schedule: str | None = None
    warmup_epochs: float | None = None
    milestones: tuple[int, ...] = ()
    gamma: float = 0.1
    label_smoothing: float | None = None
    image_size: int | None = None
    data_root: str | None = None
    beton_train: str | None = None
    beton_test: str | None = None
    device: str = "auto"
    init_from: str | None = None  # start from these weights (a checkpoint: fine-tuning a predicted student)
    train_fraction: float = 1.0   # train on this fixed, seeded fraction of the training split
    train_split: str = "train"    # or "transfer" (a student distilled on images its teachers never saw)
    extra: dict[str, Any] = field(default_factory=dict)  # method-specific settings (KD's T, ...)

    def resolved(self) -> "TrainConfig":
        """Validate names and fill every unset field from the (dataset, scale) recipe."""
        choose("arch", self.arch, ARCHS)
        choose("dataset", self.dataset, DATASETS)
        choose("scale", self.scale, SCALES)
        filled = {k: v for k, v in recipe_for(self.dataset, self.scale, self.arch).items()
                  if getattr(self, k) in (None, ())}
        cfg = dataclasses.replace(self, **filled)
        cfg.image_size = cfg.image_size or dataset_spec(cfg.dataset).image_size
        cfg.milestones = tuple(cfg.milestones)
        choose("optimizer", cfg.optimizer, OPTIMIZERS)
        choose("schedule", cfg.schedule, SCHEDULES)
        choose("train_split", cfg.train_split, ("train", "transfer"))
        if not 0 < cfg.train_fraction <= 1:
            raise BenchError(f"train_fraction must be in (0, 1], got {cfg.train_fraction}")
        if cfg.epochs < 1 or cfg.batch_size < 1 or cfg.lr <= 0:
            raise BenchError(f"epochs, batch_size and lr must be positive (got {cfg.epochs}, "
                             f"{cfg.batch_size}, {cfg.lr})")
        return cfg

    def to_json(self) -> dict[str, Any]:
        return json_ready(dataclasses.asdict(self))


# Where the data lives and which device runs are not part of a run's identity: moving the data
# set or resuming on another machine continues the same run.
# `init_from` too: the starting weights' identity is recorded by the caller (e.g. their sha256 in `extra`).
LOCATION_KEYS = ("data_root", "beton_train", "beton_test", "device", "init_from")


def _defaults() -> dict[str, Any]:
    return json_ready({f.name: f.default if f.default is not dataclasses.MISSING else f.default_factory()
                       for f in dataclasses.fields(TrainConfig)
                       if f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING})


def same_run(a: dict[str, Any] | None, b: dict[str, Any]) -> bool:
    """Whether two resolved configs describe the same run. A field one of them lacks counts as its
    default: a run written before the field existed trained exactly as its default says, so a
    finished pool stays valid when the suite gains a setting."""
    defaults = _defaults()
    strip = lambda c: {k: v for k, v in {**defaults, **(c or {})}.items() if k not in LOCATION_KEYS}
    return a is not None and strip(a) == strip(b)


def json_ready(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: json_ready(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_ready(v) for v in obj]
    return obj


