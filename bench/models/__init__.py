"""Models by name: `build_model(arch, num_classes, image_size, scale)`, and `ARCH_SPECS`, what the suite
knows about each architecture.

Every architecture but the CIFAR Wide ResNet comes from timm. `scale="paper"` is the paper's network (with a 32 px stem
when the input is CIFAR-sized); `scale="tiny"` is the same family, narrow and shallow, that
trains on digits in seconds on a CPU.

Light on purpose: importing this package imports neither timm nor the model modules (the grid loader and
the report read the names); a model's module is imported when the first one is built.
"""
from __future__ import annotations

import os
import pkgutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench.errors import BenchError, choose

if TYPE_CHECKING:
    import torch.nn as nn

SCALES = ("paper", "tiny")
SMALL_INPUT = 64  # at or below this many pixels an input is CIFAR-sized: use the small stems


@dataclass(frozen=True)
class ArchSpec:
    """One architecture. Code is named by "module:attribute" strings, imported only when used."""

    builder: str  # build(*, num_classes, image_size, scale, in_chans, small_input) -> nn.Module
    model_class: str  # the class `builder` returns: the tokeniser and weight matching check a model against it
    pretrained: str | None = None  # timm's model whose default pretrained weights `pretrained=True` loads
    # Other pretrained weights a pool may start from (its recipe's `pretrained_weights`), named as
    # timm names them, "model.tag": the model part is the architecture the weights load into.
    other_weights: tuple[str, ...] = ()
    pretrained_img_size: bool = False  # timm's pretrained model is told the input size (ViT's position embedding)
    permutation: str | None = None  # the weight-matching walk (a key of bench.weights.permutation.WALKS)
    permutation_unsupported_reason: str = ""  # why there is none, for the error a user gets
    # Trains in channels-last memory format (GPU and CPU: on a CPU the tiny convnets' steps are
    # 1.2x (VGG) to 1.6x (ResNet) faster than contiguous; bench.perf's training_step).
    channels_last: bool = True
    # The planner puts members of a pool in one job, trained as one packed network
    # (bench.engine.stacked, which checks that the architecture packs), where that is faster.
    stacks: bool = True


ARCH_SPECS: dict[str, ArchSpec] = {
    "vgg11": ArchSpec(builder="bench.models.vgg:build", model_class="timm.models.vgg:VGG",
                      pretrained="vgg11_bn", other_weights=("vgg11_bn.tv_in1k",), permutation="vgg"),
    "resnet50": ArchSpec(builder="bench.models.resnet:build", model_class="timm.models.resnet:ResNet",
                         # timm's default tag is a1_in1k (its own ResNet strikes back recipe); tv_in1k
                         # are torchvision's original ImageNet weights, the ones Fei et al.'s code loads.
                         pretrained="resnet50", other_weights=("resnet50.a1_in1k", "resnet50.tv_in1k"),
                         permutation="resnet",
                         # It packs, but on a CPU its grouped 1x1 convolutions make a stack slower
                         # than its members one at a time (tiny, 6 members, 2 epochs: 0.76x).
                         stacks=False),
    "vit_b32": ArchSpec(
        builder="bench.models.vit:build", model_class="timm.models.vision_transformer:VisionTransformer",
        # timm's default tag (augreg_in21k_ft_in1k) is already fine-tuned on ImageNet-1k, with its
        # 1,000-class head: members fine-tuned from it on ImageNet start at their target. The
        # others are not: ImageNet-21k only (augreg_in21k), and OpenAI's CLIP image tower, the
        # model-soups pool's start (its QuickGELU variant: the activation CLIP was trained with).
        pretrained="vit_base_patch32_224", pretrained_img_size=True,
        other_weights=("vit_base_patch32_224.augreg_in21k", "vit_base_patch32_clip_quickgelu_224.openai"),
        permutation_unsupported_reason="ViT is not supported (attention heads and the residual stream need a "
                                       "joint permutation)",
        # Channels-last speeds up convolutions; past its patch embedding a ViT is matrix products on tokens.
        channels_last=False,
        # LayerNorm and attention mix a token's channels: the packer knows neither.
        stacks=False),
    # Allen-Zhu & Li's network (CIFAR); not in timm.
    "wrn28_10": ArchSpec(
        builder="bench.models.wrn:build", model_class="bench.models.wrn:WideResNet",
        stacks=False,  # packs, but a tiny stack is no faster on a CPU (1.04x at 14 members)
        permutation_unsupported_reason="WRN is not supported (no permutation walk is written for its "
                                       "pre-activation blocks)"),
}
ARCHS: tuple[str, ...] = tuple(ARCH_SPECS)


def model_class(arch: str) -> type[nn.Module]:
    """The class `build_model(arch, ...)` returns (imports its module)."""
    return pkgutil.resolve_name(ARCH_SPECS[choose("arch", arch, ARCHS)].model_class)


def build_model(arch: str, num_classes: int, image_size: int, scale: str = "paper",
                in_chans: int = 3, pretrained: bool = False, weights: str | None = None) -> nn.Module:
    """`arch` for `num_classes` classes at `image_size` px. `pretrained`: loaded with pretrained
    weights (`weights`, default the architecture's; a new classifier head). `weights` without
    `pretrained`: the architecture those weights load into, randomly initialised (a checkpoint
    of a network fine-tuned from them is loaded into it)."""
    spec = ARCH_SPECS[choose("arch", arch, ARCHS)]
    if pretrained or weights is not None:
        return load_pretrained(arch, num_classes, image_size, scale, in_chans, weights, load=pretrained)
    choose("scale", scale, SCALES)
    if num_classes < 2:
        raise BenchError(f"num_classes must be at least 2, got {num_classes}")
    if image_size < 8:
        raise BenchError(f"image_size must be at least 8 px, got {image_size}")
    build = pkgutil.resolve_name(spec.builder)
    return build(num_classes=num_classes, image_size=image_size, scale=scale,
                 in_chans=in_chans, small_input=image_size <= SMALL_INPUT)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def weight_choices(arch: str) -> tuple[str, ...]:
    """The pretrained weights `arch` may start from, its default first (none: it has no weights)."""
    spec = ARCH_SPECS[choose("arch", arch, ARCHS)]
    return () if spec.pretrained is None else (spec.pretrained, *spec.other_weights)


def pretrained_problem(arch: str, scale: str, image_size: int, weights: str | None = None) -> str | None:
    """Why `arch` cannot start from pretrained `weights` (None: its default) at this scale and
    resolution, in words naming what would do; None when it can. The grid loader and the model
    builder ask the same question."""
    choices = weight_choices(arch)
    if not choices:
        with_weights = ", ".join(a for a in ARCHS if weight_choices(a))
        return f"{arch} has no pretrained weights; architectures with some: {with_weights}"
    if weights is not None and weights not in choices:
        return f"{weights!r} are not weights {arch} can start from; valid: {', '.join(choices)}"
    if scale != "paper":
        return f"pretrained weights are timm's paper-scale networks, not {arch} at scale {scale!r}"
    if image_size <= SMALL_INPUT:
        # At CIFAR size the networks are built with small stems (bench.models.vgg / resnet / vit):
        # another architecture than the weights', and ImageNet features at 32 px are not those learnt.
        return (f"{arch}'s pretrained weights are for ImageNet-sized inputs, not {image_size} px: set "
                f"image_size (e.g. 224; CIFAR is resized on the device)")
    return None


# A folder of `<timm name>.safetensors` files read in place of the hub (every job inherits it).
PRETRAINED_ENV = "BENCH_PRETRAINED"


def pretrained_name(arch: str, weights: str | None = None) -> str:
    """The timm weights a pretrained network of `arch` loads: `weights`, else the architecture's default."""
    return weights or ARCH_SPECS[choose("arch", arch, ARCHS)].pretrained


def write_standin_weights(folder: Path, name: str, seed: int = 1234) -> Path:
    """A file standing in for timm's pretrained weights `name`: the architecture's state dict at the
    checkpoint's own class count, drawn from `seed` (a smoke on a machine that cannot reach the hub
    checks every path with weights of the right shapes). Written once."""
    import timm
    import torch
    from safetensors.torch import save_file
    from timm.models import get_pretrained_cfg

    file = Path(folder) / f"{name}.safetensors"
    if not file.is_file():
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = timm.create_model(name.split(".")[0], pretrained=False,
                                      num_classes=get_pretrained_cfg(name).num_classes)
        file.parent.mkdir(parents=True, exist_ok=True)
        tmp = file.with_suffix(".tmp")
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp))
        tmp.replace(file)
    return file


def load_pretrained(arch: str, num_classes: int, image_size: int, scale: str, in_chans: int,
                    weights: str | None = None, load: bool = True) -> nn.Module:
    """timm's network for pretrained `weights` (None: the architecture's default), fetched from the
    hub by timm or read from its cache (`load`; else randomly initialised), with a new classifier
    head for `num_classes` drawn from the global generator (the run's seed)."""
    import timm

    problem = pretrained_problem(arch, scale, image_size, weights)
    if problem is not None:
        raise BenchError(problem)
    spec = ARCH_SPECS[arch]
    name = pretrained_name(arch, weights)
    kwargs = dict(num_classes=num_classes, in_chans=in_chans,
                  **({"img_size": image_size} if spec.pretrained_img_size else {}))
    if not load:
        return timm.create_model(name.split(".")[0], pretrained=False, **kwargs)
    folder = os.environ.get(PRETRAINED_ENV)
    if folder:  # weights put there beforehand (a compute node without the hub; a smoke's stand-ins)
        file = Path(folder) / f"{name}.safetensors"
        if not file.is_file():
            raise BenchError(f"{PRETRAINED_ENV}={folder} holds no {file.name} (timm's {name} weights)")
        kwargs["pretrained_cfg_overlay"] = dict(file=str(file))
    try:
        model = timm.create_model(name, pretrained=True, **kwargs)
    except Exception as err:  # no network, no cache, hub errors: all end the same way
        msg = " ".join(str(err).split())[:200]
        raise BenchError(f"pretrained weights for timm's {name} could not be loaded "
                         f"({type(err).__name__}: {msg}); this machine needs the Hugging Face hub or timm's "
                         f"cache") from None
    # timm keeps the checkpoint's classifier when its class count is num_classes (ImageNet-1k
    # weights on ImageNet): every member would share one head, already fit to the target. A new
    # one, drawn from the run's seed, makes each member's head its own.
    model.reset_classifier(num_classes)
    return model
