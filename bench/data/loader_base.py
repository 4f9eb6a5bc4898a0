"""What the FFCV and torchvision file loaders share: the epoch bookkeeping (`EpochLoader`), the
normalisation constants on the device, the evaluation centre crop, and images as HWC RGB arrays
(what a `.beton` stores and PIL reads).
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch

from bench.errors import BenchError

EVAL_CROP_RATIO = 224 / 256          # the usual ImageNet evaluation centre crop


def to_hwc_rgb(image: Any) -> np.ndarray:
    """A PIL image, CHW uint8 tensor or HWC uint8 array as a contiguous HWC RGB uint8 array."""
    if isinstance(image, torch.Tensor):
        image = image.detach().cpu()
        if image.ndim == 2:
            image = image[None]
        image = image.permute(1, 2, 0).numpy()
    elif hasattr(image, "convert"):  # PIL
        image = np.asarray(image.convert("RGB"))
    image = np.asarray(image)
    if image.ndim == 2:
        image = image[:, :, None]
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] not in (1, 3):
        raise BenchError(f"cannot store an image of dtype {image.dtype} and shape {image.shape}: "
                         f"expected uint8 with 1 or 3 channels")
    if image.shape[2] == 1:
        image = np.repeat(image, 3, axis=2)
    return np.ascontiguousarray(image)


def device_stats(mean: Sequence[float], std: Sequence[float], channels: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel `mean` and `std` (in [0, 1]; one value: every channel) as (1, C, 1, 1) tensors on
    `device` in uint8 pixel units, for normalising uint8-valued float images."""
    mean, std = [float(m) for m in mean], [float(s) for s in std]
    if len(mean) == 1:
        mean, std = mean * channels, std * channels
    if len(mean) != channels or len(std) != channels:
        raise BenchError(f"mean/std have {len(mean)}/{len(std)} entries for {channels}-channel images")
    m = torch.tensor(mean, device=device).view(1, -1, 1, 1) * 255
    s = torch.tensor(std, device=device).view(1, -1, 1, 1) * 255
    return m, s


class EpochLoader:
    """Epoch bookkeeping shared by the FFCV and file loaders: iterating runs epoch `self.epoch`
    and advances it; `set_epoch(e)` picks the epoch (its order and augmentation) explicitly."""

    epoch: int
    loader: Any

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.loader)

    def _next_epoch(self) -> int:
        epoch, self.epoch = self.epoch, self.epoch + 1
        return epoch
