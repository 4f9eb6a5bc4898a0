"""Models by name: `build_model(arch, num_classes, image_size, scale)`.

Every architecture but the CIFAR Wide ResNet comes from timm. `scale="paper"` is the paper's network (with a 32 px stem
when the input is CIFAR-sized); `scale="tiny"` is the same family, narrow and shallow, that
trains on digits in seconds on a CPU.
"""
from __future__ import annotations

from typing import Callable

import torch.nn as nn

from bench.errors import BenchError, choose
from bench.models import resnet, vgg, vit, wrn

SCALES = ("paper", "tiny")
SMALL_INPUT = 64  # at or below this many pixels an input is CIFAR-sized: use the small stems

ARCHS: dict[str, Callable[..., nn.Module]] = {
    "vgg11": vgg.build,
    "resnet50": resnet.build,
    "vit_b32": vit.build,
    "wrn28_10": wrn.build,  # Allen-Zhu & Li's network (CIFAR); not in timm
}


def build_model(arch: str, num_classes: int, image_size: int, scale: str = "paper",
                in_chans: int = 3) -> nn.Module:
    builder = ARCHS[choose("arch", arch, ARCHS)]
    choose("scale", scale, SCALES)
    if num_classes < 2:
        raise BenchError(f"num_classes must be at least 2, got {num_classes}")
    if image_size < 8:
        raise BenchError(f"image_size must be at least 8 px, got {image_size}")
    return builder(num_classes=num_classes, image_size=image_size, scale=scale,
                   in_chans=in_chans, small_input=image_size <= SMALL_INPUT)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
