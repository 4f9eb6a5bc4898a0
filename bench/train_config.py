"""What one training run is: `TrainConfig` and the default recipes per data set, scale and arch.

Light on purpose (no torch, no model code): the grid loader, the sweep's plan and the report read
it to validate recipes and compute run ids without importing the training engine.
"""
from __future__ import annotations

import dataclasses
import hashlib
import math
import random
from dataclasses import dataclass, field
from typing import Any

from collections.abc import Mapping

from bench.data import DATASETS, TRANSFER, dataset_spec, size_problem
from bench.errors import BenchError, choose
from bench.models import ARCHS, SCALES, pretrained_problem, weight_choices
from bench.method_options import Rule

# How a run started from another task's network gets its classifier (bench.engine.heads).
HEADS = ("new", "probe")

OPTIMIZERS = ("sgd", "adamw")
SCHEDULES = ("cosine", "onecycle", "step", "constant")

# What each training field accepts (a grid's pool recipe, a flag of bench.train, a resolved
# config): checked when a grid loads, so a bad value stops it before any teacher trains. Null
# (or absent) means the (dataset, scale) recipe's value.
FROM_RECIPE = "the data set's recipe"


def _one_of(values: tuple[str, ...], none: str | None = FROM_RECIPE) -> Rule:
    return Rule(str, f"one of: {', '.join(values)}", lambda v: v in values, none)


def _increasing(values: list) -> bool:
    return all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in values) and \
        all(a < b for a, b in zip(values, values[1:]))


TRAINING_RULES: dict[str, Rule] = {
    "epochs": Rule(int, "a whole number >= 1", lambda v: v >= 1, FROM_RECIPE),
    "batch_size": Rule(int, "a whole number >= 1", lambda v: v >= 1, FROM_RECIPE),
    "optimizer": _one_of(OPTIMIZERS),
    "lr": Rule(float, "a finite number > 0", lambda v: v > 0, FROM_RECIPE),
    "momentum": Rule(float, "a number in [0, 1)", lambda v: 0 <= v < 1),
    "weight_decay": Rule(float, "a finite number >= 0", lambda v: v >= 0, FROM_RECIPE),
    "schedule": _one_of(SCHEDULES),
    "warmup_epochs": Rule(float, "a finite number >= 0", lambda v: v >= 0, FROM_RECIPE),
    "milestones": Rule(list, "a list of increasing whole numbers >= 1", _increasing),
    "gamma": Rule(float, "a number in (0, 1]", lambda v: 0 < v <= 1),
    "label_smoothing": Rule(float, "a number in [0, 1)", lambda v: 0 <= v < 1, FROM_RECIPE),
    "image_size": Rule(int, "a whole number >= 4", lambda v: v >= 4, "the data set's size"),
    # Each architecture's own list is checked with the pool (`check_start`).
    "pretrained_weights": _one_of(tuple(w for a in ARCHS for w in weight_choices(a)), "the architecture's default"),
    "data_root": Rule(str, "a path", bool, "BENCH_DATA"),
    "beton_train": Rule(str, "a path", bool, "none"),
    "beton_test": Rule(str, "a path", bool, "none"),
    "train_fraction": Rule(float, "a number in (0, 1]", lambda v: 0 < v <= 1),
    "train_split": _one_of(("train", TRANSFER), None),
    "head": Rule(str, f"one of: {', '.join(HEADS)}", lambda v: v in HEADS),
}


def check_training(values: Mapping[str, Any], where: str, joint: bool = True) -> dict[str, Any]:
    """`values` (training fields) with each one checked against TRAINING_RULES; `where` begins every
    error and the key follows it (`<where>.epochs: -1 is not a whole number >= 1 or null (...)`).
    `joint`: also the rules between fields (a pool's own recipe; a student that overrides only its
    epochs keeps the pool's milestones, which its schedule then never reaches)."""
    out = {}
    for key, value in values.items():
        rule = TRAINING_RULES.get(key)
        if rule is None:
            out[key] = value
            continue
        out[key] = rule.accept(list(value) if isinstance(value, tuple) else value, f"{where}.{key}")
    epochs, warmup = out.get("epochs"), out.get("warmup_epochs")
    if not joint:
        return out
    if epochs is not None and warmup is not None and warmup > epochs:
        raise BenchError(f"{where}.warmup_epochs: {warmup:g} is longer than the {epochs} epochs")
    milestones = out.get("milestones") or []
    # Only a step schedule reads them (a constant or cosine recipe keeps the data set's default ones).
    if epochs is not None and milestones and milestones[-1] >= epochs and out.get("schedule") in (None, "step"):
        raise BenchError(f"{where}.milestones: {milestones} reach past the last of the {epochs} epochs")
    return out

# Member diversity (model soups drew each fine-tune's hyperparameters at random): a pool's `ranges`
# give [low, high] for these fields and member k draws its own values from its seed. Rates are drawn
# log-uniformly (a range of 3e-4..3e-3 is as likely below 1e-3 as above), epochs as whole numbers.
RANGE_KEYS = ("lr", "weight_decay", "epochs", "label_smoothing", "warmup_epochs")
LOG_DRAWN = ("lr", "weight_decay")


def check_ranges(ranges: Mapping[str, Any], where: str) -> dict[str, list]:
    """A pool's `ranges`, each [low, high] with low <= high and both ends allowed for the field."""
    out = {}
    for key, value in ranges.items():
        if not (isinstance(value, (list, tuple)) and len(value) == 2):
            raise BenchError(f"{where}.{key}: expected [low, high], got {value!r}")
        low, high = (TRAINING_RULES[key].accept(v, f"{where}.{key}") for v in value)
        if low is None or high is None or low > high or (key in LOG_DRAWN and low <= 0 < high):
            raise BenchError(f"{where}.{key}: expected [low, high] with low <= high"
                             f"{' and low > 0 (drawn log-uniformly)' if key in LOG_DRAWN else ''}, got {value!r}")
        out[key] = [low, high]
    return dict(sorted(out.items()))


def draw(ranges: Mapping[str, list], seed: int) -> dict[str, Any]:
    """Member `seed`'s values from a pool's `ranges`: a function of the seed and the key alone (each
    key has its own stream, so adding a range leaves the other draws as they were)."""
    out: dict[str, Any] = {}
    for key, (low, high) in sorted(ranges.items()):
        u = random.Random(int.from_bytes(hashlib.sha256(f"draw:{seed}:{key}".encode()).digest()[:8], "little")).random()
        if key == "epochs":
            out[key] = low + min(int(u * (high - low + 1)), high - low)
        elif key in LOG_DRAWN and low > 0:
            out[key] = float(f"{math.exp(math.log(low) + u * (math.log(high) - math.log(low))):.3g}")
        else:
            out[key] = float(f"{low + u * (high - low):.3g}")
    return out


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


# An architecture's own changes to the recipe at a scale.
ARCH_RECIPES: dict[tuple[str, str], dict[str, Any]] = {
    # With no convolutional prior the tiny ViT needs more epochs than the tiny convnets to fit digits.
    ("vit_b32", "tiny"): dict(epochs=30, lr=2e-3),
}


def recipe_for(dataset: str, scale: str, arch: str | None = None) -> dict[str, Any]:
    """The (dataset, scale) recipe, with the arch's own changes (`ARCH_RECIPES`)."""
    family = "cifar" if dataset.startswith("cifar") else dataset
    base = RECIPES.get((family, scale)) or RECIPES[("digits", "tiny") if scale == "tiny" else ("cifar", "paper")]
    if arch is None:
        return dict(base)
    return {**base, **ARCH_RECIPES.get((choose("arch", arch, ARCHS), scale), {})}


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
    # Which pretrained weights (bench.models.weight_choices; None: the architecture's default): loaded
    # when `pretrained`, and their architecture is the one built (a run fine-tuned from them is loaded
    # into it). Absent from `to_json` when None, so configs and ids from before it existed stay the same.
    pretrained_weights: str | None = None
    data_root: str | None = None
    beton_train: str | None = None
    beton_test: str | None = None
    device: str = "auto"
    init_from: str | None = None  # start from these weights (a checkpoint: fine-tuning a predicted student)
    # Started from a network of another data set (a pool's base): its classifier is new from the seed,
    # or a linear probe on its frozen features (bench.engine.heads).
    head: str = "new"
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
        check_training({k: getattr(cfg, k) for k in TRAINING_RULES}, "recipe", joint=False)
        return cfg

    def to_json(self) -> dict[str, Any]:
        out = json_ready(dataclasses.asdict(self))
        return {k: v for k, v in out.items() if not (k in OMITTED_AT_DEFAULT and v is None)}


# Fields left out of a config's JSON while they hold their default (None): a run of the default
# is written, found and identified as it was before the field existed.
OMITTED_AT_DEFAULT = ("pretrained_weights",)


def check_start(cfg: TrainConfig, init: str, where: str) -> None:
    """What a pool's members start from and the images they see, checked when the grid loads: the
    data set exists at `cfg.image_size`; `pretrained_weights` only with init `pretrained`, and
    those weights for the architecture at this resolution (paper scale; the tiny scale's own
    networks are not timm's). `cfg` is resolved; `where` begins every error (`<file>: pools[0]`)."""
    problem = size_problem(cfg.dataset, cfg.image_size)
    if problem is not None:
        raise BenchError(f"{where}.recipe.image_size: {cfg.image_size}: {problem}")
    if cfg.pretrained_weights is not None and init != "pretrained":
        raise BenchError(f"{where}.recipe.pretrained_weights: names the weights a pool of init pretrained "
                         f"starts from; this pool's init is {init!r}")
    if init != "pretrained" or cfg.scale != "paper":
        return
    problem = pretrained_problem(cfg.arch, cfg.scale, cfg.image_size, cfg.pretrained_weights)
    if problem is not None:
        choices = weight_choices(cfg.arch)
        key = "init" if not choices else (
            "recipe.pretrained_weights" if cfg.pretrained_weights not in (None, *choices) else "recipe.image_size")
        raise BenchError(f"{where}.{key}: {problem}")


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


