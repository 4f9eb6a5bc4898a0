"""scikit-learn's 8x8 digits: the embedded default, shipped inside scikit-learn (no download).

A fixed stratified split (25 % test, split seed 0) keeps every run on the same images. The 8x8
images (values 0..16) are upsampled bilinearly to `image_size` and scaled to uint8 pixels, so
the same convolutional stems that read CIFAR read them.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from bench.data import ImageSet
from bench.errors import BenchError

TEST_FRACTION = 0.25
SPLIT_SEED = 0


def _split_indices(labels: np.ndarray) -> dict[str, np.ndarray]:
    # Stratified by hand (per class, a seeded permutation) so the split does not depend on
    # scikit-learn's splitter implementation staying the same across versions.
    rng = np.random.default_rng(SPLIT_SEED)
    train, test = [], []
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        n_test = int(round(len(idx) * TEST_FRACTION))
        test.append(idx[:n_test])
        train.append(idx[n_test:])
    return {"train": np.sort(np.concatenate(train)), "test": np.sort(np.concatenate(test))}


def load(root: Path | None, split: str, image_size: int = 16, channels: int = 1) -> ImageSet:
    from sklearn.datasets import load_digits

    if image_size < 8:
        raise BenchError(f"digits: image_size {image_size} is below the native 8 px")
    if channels not in (1, 3):
        raise BenchError(f"digits: channels must be 1 or 3, got {channels}")
    raw = load_digits()
    idx = _split_indices(raw.target)[split]
    x = torch.from_numpy(raw.images[idx]).float().unsqueeze(1) / 16.0  # (N, 1, 8, 8) in [0, 1]
    if image_size != 8:
        x = F.interpolate(x, size=(image_size, image_size), mode="bilinear", align_corners=False)
    images = (x.clamp(0, 1) * 255).round().to(torch.uint8).expand(-1, channels, -1, -1)
    return ImageSet("digits", split, images.contiguous(), torch.from_numpy(raw.target[idx]),
                    [str(d) for d in range(10)])
