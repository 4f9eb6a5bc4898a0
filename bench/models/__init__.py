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


# The stock timm networks whose pretrained weights `pretrained=True` loads (paper scale,
# ImageNet-sized inputs); timm re-initialises the classifier for another class count.
PRETRAINED = {"vgg11": "vgg11_bn", "resnet50": "resnet50", "vit_b32": "vit_base_patch32_224"}


def build_model(arch: str, num_classes: int, image_size: int, scale: str = "paper",
                in_chans: int = 3, pretrained: bool = False) -> nn.Module:
    builder = ARCHS[choose("arch", arch, ARCHS)]
    if pretrained:
        return load_pretrained(arch, num_classes, image_size, scale, in_chans)
    choose("scale", scale, SCALES)
    if num_classes < 2:
        raise BenchError(f"num_classes must be at least 2, got {num_classes}")
    if image_size < 8:
        raise BenchError(f"image_size must be at least 8 px, got {image_size}")
    return builder(num_classes=num_classes, image_size=image_size, scale=scale,
                   in_chans=in_chans, small_input=image_size <= SMALL_INPUT)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def load_pretrained(arch: str, num_classes: int, image_size: int, scale: str, in_chans: int) -> nn.Module:
    """timm's pretrained weights (fetched from the hub by timm, or its cache)."""
    import timm

    if arch not in PRETRAINED or scale != "paper" or image_size <= SMALL_INPUT:
        raise BenchError(f"pretrained weights exist for {', '.join(PRETRAINED)} at paper scale on "
                         f"ImageNet-sized inputs, not for {arch} at scale {scale!r}, {image_size} px")
    name = PRETRAINED[arch]
    try:
        return timm.create_model(name, pretrained=True, num_classes=num_classes, in_chans=in_chans,
                                 **({"img_size": image_size} if arch == "vit_b32" else {}))
    except Exception as err:  # no network, no cache, hub errors: all end the same way
        msg = " ".join(str(err).split())[:200]
        raise BenchError(f"pretrained weights for timm's {name} could not be loaded ({type(err).__name__}: "
                         f"{msg}); this machine needs the Hugging Face hub or timm's cache") from None
