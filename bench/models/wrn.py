"""Wide ResNet WRN-d-k for CIFAR (Zagoruyko & Komodakis 2016), the network of Allen-Zhu & Li's
ensemble / distillation experiments. timm has no CIFAR WRN, so it is defined here.

Pre-activation basic blocks (BN-ReLU-conv3x3, twice), (d - 4) / 6 blocks in each of three stages
of width 16k, 32k, 64k, a 3x3 stem of 16 channels, BN-ReLU, global pooling and a linear layer.
WRN-28-10 has 36.5 M parameters; `scale="tiny"` is WRN-10-1 (one block per stage, width 1).
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class Block(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(c_in)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        # A 1x1 projection where the shape changes; it reads the pre-activated input, as in the paper.
        self.shortcut = None if (c_in == c_out and stride == 1) else nn.Conv2d(c_in, c_out, 1, stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = F.relu(self.bn1(x))
        out = self.conv2(F.relu(self.bn2(self.conv1(a))))
        return out + (x if self.shortcut is None else self.shortcut(a))


class WideResNet(nn.Module):
    def __init__(self, depth: int, widen: int, num_classes: int, in_chans: int = 3) -> None:
        super().__init__()
        if (depth - 4) % 6:
            raise ValueError(f"WRN depth must be 6n + 4, got {depth}")
        n = (depth - 4) // 6
        widths = [16, 16 * widen, 32 * widen, 64 * widen]
        self.stem = nn.Conv2d(in_chans, widths[0], 3, 1, 1, bias=False)
        blocks, c = [], widths[0]
        for stage, w in enumerate(widths[1:]):
            for i in range(n):
                blocks.append(Block(c, w, 2 if (stage > 0 and i == 0) else 1))
                c = w
        self.blocks = nn.Sequential(*blocks)
        self.bn = nn.BatchNorm2d(c)
        self.fc = nn.Linear(c, num_classes)
        self.num_features = c
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.Linear):
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn(self.blocks(self.stem(x))))
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


def build(*, num_classes: int, image_size: int, scale: str, in_chans: int, small_input: bool) -> nn.Module:
    depth, widen = (28, 10) if scale == "paper" else (10, 1)
    return WideResNet(depth, widen, num_classes, in_chans)
