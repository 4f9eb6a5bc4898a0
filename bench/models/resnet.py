"""ResNet-50 (timm), with a 3x3 stride-1 stem and no max pool for small inputs."""
from __future__ import annotations

import timm
import torch.nn as nn
from timm.models.resnet import Bottleneck, ResNet


def _small_stem(model: ResNet, in_chans: int) -> ResNet:
    # A 32 px image would be 8 px after the 7x7/2 conv and the max pool: keep full resolution.
    width = model.conv1.out_channels
    model.conv1 = nn.Conv2d(in_chans, width, kernel_size=3, stride=1, padding=1, bias=False)
    nn.init.kaiming_normal_(model.conv1.weight, mode="fan_out", nonlinearity="relu")
    model.maxpool = nn.Identity()
    return model


def build(*, num_classes: int, image_size: int, scale: str, in_chans: int, small_input: bool) -> nn.Module:
    if scale == "paper":
        model = timm.create_model("resnet50", pretrained=False, num_classes=num_classes, in_chans=in_chans)
    else:
        # Bottleneck blocks as in ResNet-50, one per stage, one eighth of the width.
        model = ResNet(Bottleneck, layers=(1, 1, 1, 1), channels=(8, 16, 32, 64), stem_width=16,
                       num_classes=num_classes, in_chans=in_chans)
    return _small_stem(model, in_chans) if small_input else model
