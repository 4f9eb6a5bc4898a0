"""What every method may be told: typed option schemas, checked when a grid loads.

Light on purpose (the standard library and bench.errors only): the grid loader, the sweep's plan
and the report read these schemas without importing any method's code, so a bad value stops a
grid before its teachers train, not hours later when the method runs.

Each schema is a frozen dataclass whose fields carry a `Rule` (type and allowed range);
`from_mapping` turns a grid's mapping into an instance or raises one BenchError line naming the
key, the value and what is allowed. An int is not a bool; a float option takes an int (stored as
a float).

`WFConfig` holds what shapes a WeightFormer's meta-training (the model, the loss, the optimiser);
fine-tuning settings (`ft_*`) belong to the `weightformer_ft` method and never change the
meta-trained model, so two methods that differ only in fine-tuning share one meta-training job.
Its defaults differ by scale only in size and length: paper scale uses the authors' model size
(d_model 512, 6 blocks, 8 heads) on a GPU; tiny scale a small model that meta-trains on 2 CPU
cores in minutes.
"""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from bench.errors import BenchError

# Options any method takes besides its own: they choose pools and teachers, not the method's
# work, and bench.grid checks them against the grid's pools.
COMMON_OPTIONS = ("archs", "inits", "pools", "n_teachers", "teacher_part", "pool_size")


@dataclass(frozen=True)
class Rule:
    """What one option accepts: a value of `kind` (bool, int, float or str) that passes `test`,
    said in words by `allowed`; null too where `none` says what null means."""

    kind: type
    allowed: str
    test: Callable[[Any], bool] = lambda value: True
    none: str | None = None

    def accept(self, value: Any, where: str) -> Any:
        """`value` as the option holds it (an int given for a float becomes a float)."""
        if value is None and self.none is not None:
            return None
        given = value
        if self.kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        right_kind = isinstance(value, self.kind) and (self.kind is bool or not isinstance(value, bool))
        if not right_kind or (self.kind is float and not math.isfinite(value)) or not self.test(value):
            raise BenchError(f"{where}: {given!r} is not {self.describe()}")
        return value

    def describe(self) -> str:
        return self.allowed if self.none is None else f"{self.allowed} or null ({self.none})"


def _setting(default: Any, rule: Rule) -> Any:
    return dataclasses.field(default=default, metadata={"rule": rule})


def whole(default: int | None, *, ge: int | None = None, none: str | None = None) -> Any:
    """An int option, at least `ge`."""
    allowed = "a whole number" if ge is None else f"a whole number >= {ge}"
    return _setting(default, Rule(int, allowed, lambda v: ge is None or v >= ge, none))


def number(default: float | None, *, gt: float | None = None, ge: float | None = None,
           lt: float | None = None, le: float | None = None, none: str | None = None) -> Any:
    """A finite float option, within the bounds given (gt / ge below, lt / le above)."""
    low = f"[{ge:g}" if ge is not None else f"({gt:g}" if gt is not None else None
    high = f"{le:g}]" if le is not None else f"{lt:g})" if lt is not None else None
    if low and high:
        allowed = f"a number in {low}, {high}"
    elif low:
        allowed = f"a finite number {'>=' if ge is not None else '>'} {low[1:]}"
    elif high:
        allowed = f"a finite number {'<=' if le is not None else '<'} {high[:-1]}"
    else:
        allowed = "a finite number"

    def test(v: float) -> bool:
        return ((gt is None or v > gt) and (ge is None or v >= ge) and (lt is None or v < lt)
                and (le is None or v <= le))

    return _setting(default, Rule(float, allowed, test, none))


def flag(default: bool) -> Any:
    return _setting(default, Rule(bool, "true or false"))


def choice(default: str, values: Collection[str]) -> Any:
    return _setting(default, Rule(str, f"one of: {', '.join(values)}", lambda v: v in values))


def rules(schema: type[Options]) -> dict[str, Rule]:
    """Each field's rule, in field order."""
    return {f.name: f.metadata["rule"] for f in dataclasses.fields(schema)}


O = TypeVar("O", bound="Options")


@dataclass(frozen=True)
class Options:
    """A method's settings. Subclasses declare each field with `whole`, `number`, `flag` or `choice`."""

    @classmethod
    def names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(cls))

    @classmethod
    def from_mapping(cls: type[O], raw: Mapping[str, Any], where: str) -> O:
        """The options `raw` sets, the rest at their defaults; `where` (e.g. "sweeps/g.yaml:
        methods.kd") begins every error, the key follows it (`<where>.temperature: ...`)."""
        checks = rules(cls)
        for key in raw:
            if key not in checks:
                raise BenchError(f"{where}: unknown option {key!r}; valid: {', '.join(checks) or 'none'}")
        made = cls(**{key: checks[key].accept(value, f"{where}.{key}") for key, value in raw.items()})
        made.check(where)
        return made

    def check(self, where: str) -> None:
        """Rules that join several fields (none unless a subclass has some)."""


# --- WeightFormer -----------------------------------------------------------------------------

OUTPUTS = ("direct", "residual_anchor", "residual_mean")
DISTILL_ON = ("train", "transfer")
ALIGNS = ("none", "weight_matching")


@dataclass(frozen=True)
class WFConfig(Options):
    d_model: int = whole(64, ge=1)
    depth: int = whole(2, ge=1)              # Transformer blocks
    heads: int = whole(4, ge=1)
    cross: bool = flag(True)                 # the [cross] token carried from layer to layer
    output: str = choice("residual_anchor", OUTPUTS)
    temperature: float = number(4.0, gt=0)   # eq. 1 at softmax temperature T (T = 1: near one-hot soft labels)
    shift_weight: float = number(0.0, ge=0)  # weight of the shift-consistency term; 0 = off
    align: str = choice("none", ALIGNS)      # permute teachers' hidden units onto the anchor before tokenising
    standardize: bool = flag(True)           # tokens scaled per column by the meta-train pool's mean and std
    steps: int = whole(300, ge=1)
    batch_size: int = whole(128, ge=1)       # training images per step
    lr: float = number(1e-3, gt=0)
    weight_decay: float = number(0.05, ge=0)
    warmup: float = number(0.05, ge=0, lt=1)  # fraction of steps
    clip: float = number(1.0, ge=0)
    seed: int = whole(0)
    checkpoint_every: int = whole(100, ge=1)
    # How, not what: neither changes the model or the loss. `checkpointing` recomputes each layer's
    # blocks in the backward pass instead of keeping their activations (one layer's at a time instead
    # of every layer's: what lets ViT-B/32 at N = 4 fit a 24 GB GPU, for ~1/3 more compute);
    # `compile` runs the blocks through torch.compile on a GPU (ignored on a CPU).
    checkpointing: bool = flag(False)
    compile: bool = flag(False)
    # Training to convergence: with `patience` > 0, the val KL (eq. 1 on `val_images` val images for
    # `val_groups` fixed groups of the meta-train members) is measured every `checkpoint_every`
    # steps; the run stops `patience` measurements after the best one and keeps the best weights;
    # `steps` is then the most it may take.
    patience: int = whole(0, ge=0)
    val_groups: int = whole(8, ge=1)
    val_images: int = whole(1024, ge=1)
    # The images eq. 1 is computed on: the teachers' training split, or a transfer split the
    # teachers never saw (data sets that have one: bench.data.DatasetSpec.transfer).
    distill_on: str = choice("train", DISTILL_ON)

    def check(self, where: str) -> None:
        if self.d_model % self.heads:
            raise BenchError(f"{where}.d_model: {self.d_model} is not divisible by heads = {self.heads}")

    def identity(self) -> dict[str, Any]:
        """The fields a run id, a WeightFormer's folder and its record carry: every field, but the
        ones that say how a step runs (HOW_FIELDS) only where they are on, so the configs written
        before those fields existed keep their run ids and their WeightFormers are found."""
        return {k: v for k, v in dataclasses.asdict(self).items()
                if (k not in HOW_FIELDS or v) and (k not in LATER_FIELDS or v != LATER_FIELDS[k])}

    def validate(self) -> WFConfig:
        """This config, every field checked (one read back from a job spec or a checkpoint)."""
        return WFConfig.from_mapping(dataclasses.asdict(self), "weightformer")


HOW_FIELDS = ("checkpointing", "compile")  # off by default; neither changes the model or the loss
# Fields added after WeightFormers were first meta-trained: left out of the identity at their
# defaults (which is how those earlier runs trained), so those runs keep their ids.
LATER_FIELDS = {"patience": 0, "val_groups": 8, "val_images": 1024, "distill_on": "train"}

SCALE_DEFAULTS: dict[str, dict[str, Any]] = {
    "tiny": {},
    "paper": dict(d_model=512, depth=6, heads=8, steps=20_000, batch_size=256, lr=3e-4, checkpoint_every=500,
                  checkpointing=True),
}
FIELDS = WFConfig.names()


def wf_config(options: Mapping[str, Any], scale: str, where: str = "weightformer") -> WFConfig:
    """The config a method's options ask for at `scale` (other option names are ignored here)."""
    values = {**SCALE_DEFAULTS.get(scale, {}), **{k: v for k, v in options.items() if k in FIELDS}}
    return WFConfig.from_mapping(values, where)


def _given(name: str) -> Any:
    """A WeightFormer setting as a method's option: WFConfig's rule, and unset (None) until given,
    because its default depends on the scale (SCALE_DEFAULTS); null says the same, so a grid can
    set a value at one scale only (`steps: {paper: null, tiny: 1000}`)."""
    rule = dataclasses.replace(rules(WFConfig)[name], none="the scale's default")
    return dataclasses.field(default=None, metadata={"rule": rule})


# --- the methods' options -----------------------------------------------------------------------

@dataclass(frozen=True)
class NoOptions(Options):
    """single and ensemble: nothing to choose."""


@dataclass(frozen=True)
class DistillOptions(Options):
    """kd and self_distill: alpha * T^2 * KL(teachers_T || student_T) + (1 - alpha) * CE."""

    temperature: float = number(4.0, gt=0)
    alpha: float = number(0.9, ge=0, le=1)
    epochs: int | None = whole(None, ge=1, none="the pool recipe's")
    distill_on: str = choice("train", DISTILL_ON)  # the student's training images (WFConfig.distill_on)


@dataclass(frozen=True)
class SoupOptions(Options):
    bn_batches: int = whole(50, ge=1)  # training batches (no augmentation) re-estimating BatchNorm statistics


@dataclass(frozen=True)
class AlignedSoupOptions(SoupOptions):
    max_iter: int = whole(100, ge=1)  # weight-matching sweeps over the layers


@dataclass(frozen=True)
class GreedySoupOptions(SoupOptions):
    """greedy_soup: members tried in order of val top-1, each kept if the soup's val top-1 does not
    fall (every candidate soup has its BatchNorm statistics re-estimated on `bn_batches` batches)."""


# Model soups' per-layer learned soup (mlfoundations/model-soups, learned_bylayer.py, which
# recommends it): AdamW at lr 0.05, no weight decay, constant rate, on the mixing coefficients. Not
# WeightFormer's rate: Adam moves a coefficient by about lr per step, so at WeightFormer's 1e-3 for
# its 300 tiny steps one could move 0.3 at most and the fit would end next to the uniform soup it
# starts from.
LEARNED_SOUP_LR = 0.05


@dataclass(frozen=True)
class LearnedSoupOptions(SoupOptions):
    """learned_soup: per-layer mixing coefficients fitted with eq. 1 on the images and budget a
    WeightFormer's meta-training sees (unset: WeightFormer's default at the scale; a grid that gives
    its WeightFormer other values gives the learned soup the same ones)."""

    steps: int | None = _given("steps")
    batch_size: int | None = _given("batch_size")
    temperature: float | None = _given("temperature")
    distill_on: str | None = _given("distill_on")
    lr: float = number(LEARNED_SOUP_LR, gt=0)  # Adam on the coefficients (LEARNED_SOUP_LR's comment)

    def wf_config(self, scale: str, where: str = "learned_soup") -> WFConfig:
        """The WeightFormer config whose budget and loss these options mirror at `scale` (`steps`,
        `batch_size`, `temperature`, `distill_on`, and its `seed` for the order of the images)."""
        given = {k: getattr(self, k) for k in ("steps", "batch_size", "temperature", "distill_on")}
        return wf_config({k: v for k, v in given.items() if v is not None}, scale, where)


@dataclass(frozen=True)
class WeightFormerOptions(Options):
    """The WeightFormer to meta-train (every WFConfig field; unset: the scale's default) and the
    predicted student's BatchNorm re-estimation."""

    d_model: int | None = _given("d_model")
    depth: int | None = _given("depth")
    heads: int | None = _given("heads")
    cross: bool | None = _given("cross")
    output: str | None = _given("output")
    temperature: float | None = _given("temperature")
    shift_weight: float | None = _given("shift_weight")
    align: str | None = _given("align")
    standardize: bool | None = _given("standardize")
    steps: int | None = _given("steps")
    batch_size: int | None = _given("batch_size")
    lr: float | None = _given("lr")
    weight_decay: float | None = _given("weight_decay")
    warmup: float | None = _given("warmup")
    clip: float | None = _given("clip")
    seed: int | None = _given("seed")
    checkpoint_every: int | None = _given("checkpoint_every")
    checkpointing: bool | None = _given("checkpointing")
    compile: bool | None = _given("compile")
    patience: int | None = _given("patience")
    val_groups: int | None = _given("val_groups")
    val_images: int | None = _given("val_images")
    distill_on: str | None = _given("distill_on")
    bn_batches: int = whole(50, ge=1)
    # Meta-trained on the job's own group alone (the plan's choice, not the model's:
    # bench.jobs.meta_train_members), one WeightFormer per seed: how well it can fit one ensemble,
    # the first rung of the capacity ladder. Otherwise on the meta-train part (its first
    # `pool_size` members where the common option `pool_size` says so).
    fit_group: bool = flag(False)
    # Students predicted from the group's anchor with this many other partner sets (drawn from the
    # group's part, bench.jobs.partner_sets): their test agreement with this student says whether it
    # depends on its partners at all. 0: not measured.
    partner_sets: int = whole(0, ge=0)

    def wf_config(self, scale: str, where: str = "weightformer") -> WFConfig:
        """The WeightFormer config these options ask for at `scale`."""
        return wf_config({k: getattr(self, k) for k in FIELDS if getattr(self, k) is not None}, scale, where)


@dataclass(frozen=True)
class WeightFormerFTOptions(WeightFormerOptions):
    """weightformer_ft: the WeightFormer student fine-tuned with the KD loss (`temperature` is
    WeightFormer's; the fine-tuning's is `ft_temperature`)."""

    ft_epochs: int = whole(2, ge=1)
    ft_fraction: float = number(1.0, gt=0, le=1)  # of the training split, fixed for the whole run
    ft_lr: float | None = number(None, gt=0, none="a tenth of the recipe's lr")
    ft_temperature: float = number(4.0, gt=0)
    alpha: float = number(0.9, ge=0, le=1)
    ft_on: str = choice("train", DISTILL_ON)  # the fine-tuning's images
