"""Models by name: `build_model(arch, num_classes, image_size, scale)`, and `ARCH_SPECS`, what the suite
knows about each architecture.

Every architecture but the CIFAR Wide ResNet comes from timm. `scale="paper"` is the paper's network (with a 32 px stem
when the input is CIFAR-sized); `scale="tiny"` is the same family, narrow and shallow, that
trains on digits in seconds on a CPU.

Light on purpose: importing this package imports neither timm nor the model modules (the grid loader and
the report read the names); a model's module is imported when the first one is built.
"""
from __future__ import annotations

import pkgutil
from collections.abc import Mapping
from dataclasses import dataclass, field
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
    pretrained: str | None = None  # timm's model whose pretrained weights `pretrained=True` loads
    pretrained_img_size: bool = False  # timm's pretrained model is told the input size (ViT's position embedding)
    permutation: str | None = None  # the weight-matching walk (a key of bench.weights.permutation.WALKS)
    permutation_unsupported_reason: str = ""  # why there is none, for the error a user gets
    tiny_recipe: Mapping[str, Any] = field(default_factory=dict)  # changes to the tiny training recipe
    # Trains in channels-last memory format (GPU and CPU: on a CPU the tiny convnets' steps are
    # 1.2x (VGG) to 1.6x (ResNet) faster than contiguous; bench.perf's training_step).
    channels_last: bool = True
    # The planner puts members of a pool in one job, trained as one packed network
    # (bench.engine.stacked, which checks that the architecture packs), where that is faster.
    stacks: bool = True


ARCH_SPECS: dict[str, ArchSpec] = {
    "vgg11": ArchSpec(builder="bench.models.vgg:build", model_class="timm.models.vgg:VGG",
                      pretrained="vgg11_bn", permutation="vgg"),
    "resnet50": ArchSpec(builder="bench.models.resnet:build", model_class="timm.models.resnet:ResNet",
                         pretrained="resnet50", permutation="resnet",
                         # It packs, but on a CPU its grouped 1x1 convolutions make a stack slower
                         # than its members one at a time (tiny, 6 members, 2 epochs: 0.76x).
                         stacks=False),
    "vit_b32": ArchSpec(
        builder="bench.models.vit:build", model_class="timm.models.vision_transformer:VisionTransformer",
        pretrained="vit_base_patch32_224", pretrained_img_size=True,
        permutation_unsupported_reason="ViT is not supported (attention heads and the residual stream need a "
                                       "joint permutation)",
        # With no convolutional prior the tiny ViT needs more epochs than the tiny convnets to fit digits.
        tiny_recipe={"epochs": 30, "lr": 2e-3},
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
                in_chans: int = 3, pretrained: bool = False) -> nn.Module:
    spec = ARCH_SPECS[choose("arch", arch, ARCHS)]
    if pretrained:
        return load_pretrained(arch, num_classes, image_size, scale, in_chans)
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


def load_pretrained(arch: str, num_classes: int, image_size: int, scale: str, in_chans: int) -> nn.Module:
    """timm's pretrained weights (fetched from the hub by timm, or its cache), at paper scale on
    ImageNet-sized inputs; timm re-initialises the classifier for another class count."""
    import timm

    spec = ARCH_SPECS[choose("arch", arch, ARCHS)]
    if spec.pretrained is None or scale != "paper" or image_size <= SMALL_INPUT:
        with_weights = ", ".join(a for a, s in ARCH_SPECS.items() if s.pretrained is not None)
        raise BenchError(f"pretrained weights exist for {with_weights} at paper scale on "
                         f"ImageNet-sized inputs, not for {arch} at scale {scale!r}, {image_size} px")
    try:
        return timm.create_model(spec.pretrained, pretrained=True, num_classes=num_classes, in_chans=in_chans,
                                 **({"img_size": image_size} if spec.pretrained_img_size else {}))
    except Exception as err:  # no network, no cache, hub errors: all end the same way
        msg = " ".join(str(err).split())[:200]
        raise BenchError(f"pretrained weights for timm's {spec.pretrained} could not be loaded "
                         f"({type(err).__name__}: {msg}); this machine needs the Hugging Face hub or timm's "
                         f"cache") from None
