"""Whole-split loaders that keep a data set on the device and augment whole batches at once.

The order and the augmentation of every epoch come from a generator seeded by (seed, epoch)
alone, so a run resumed at epoch k sees exactly the batches an uninterrupted run saw.

Data-parallel training (`rank`, `world_size`): every rank draws the same permutation and the
same augmentation of each whole global batch and keeps its own contiguous slice of it, so the
ranks' slices together are exactly the batches a single process would see.
"""
from __future__ import annotations

from typing import Iterator, Sequence

import torch
import torch.nn.functional as F

from bench.data import ImageSet
from bench.errors import BenchError, choose


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    # Distinct, reproducible streams per (seed, epoch); CPU generators are the same everywhere.
    return torch.Generator().manual_seed(seed * 1_000_003 + epoch)


def random_crop(x: torch.Tensor, pad: int, gen: torch.Generator) -> torch.Tensor:
    """Zero-pad by `pad` and cut a random window of the original size out of each image."""
    b, _, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad))
    dy = torch.randint(0, 2 * pad + 1, (b,), generator=gen).to(x.device)
    dx = torch.randint(0, 2 * pad + 1, (b,), generator=gen).to(x.device)
    rows = (dy[:, None] + torch.arange(h, device=x.device))[:, :, None]  # (B, H, 1)
    cols = (dx[:, None] + torch.arange(w, device=x.device))[:, None, :]  # (B, 1, W)
    batch = torch.arange(b, device=x.device)[:, None, None]
    return padded.permute(0, 2, 3, 1)[batch, rows, cols].permute(0, 3, 1, 2)


def random_flip(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    flip = (torch.rand(len(x), generator=gen) < 0.5).to(x.device)[:, None, None, None]
    return torch.where(flip, x.flip(3), x)


AUGMENTATIONS = {
    "none": lambda x, g: x,
    "translate2": lambda x, g: random_crop(x, 2, g),           # digits: no flips (2 != mirrored 2)
    "crop4_flip": lambda x, g: random_flip(random_crop(x, 4, g), g),  # the standard CIFAR recipe
}


def channel_stats(images: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of uint8 images, in [0, 1] units."""
    x = images.double() / 255
    return tuple(x.mean((0, 2, 3)).tolist()), tuple(x.std((0, 2, 3)).clamp_min(1e-3).tolist())


class DeviceLoader:
    """Batches of (normalised float images, int64 labels, int64 sample indices) from an ImageSet
    held on `device`. A sample's index is its row in the whole split (`extras["index"]` when the
    set is a subset of it), so caches keyed by it serve every loader of the split.

    `batch_size` is the global batch size. With `world_size` > 1 this loader yields rank
    `rank`'s share of every global batch: the global batch is drawn and augmented exactly as
    with one process (same (seed, epoch) generator, same draws), then split into `world_size`
    contiguous slices (`batch_size // world_size` images each; a ragged last evaluation batch
    is split as evenly as `tensor_split` does). `len()` is the number of global batches,
    the same on every rank.
    """

    def __init__(self, data: ImageSet, *, batch_size: int, train: bool, seed: int = 0,
                 device: str | torch.device = "cpu", mean: Sequence[float], std: Sequence[float],
                 augment: str = "none", channels: int | None = None,
                 drop_last: bool | None = None, rank: int = 0, world_size: int = 1) -> None:
        if world_size < 1 or not 0 <= rank < world_size:
            raise BenchError(f"rank {rank} is not one of the {world_size} ranks")
        if batch_size % world_size:
            raise BenchError(f"global batch size {batch_size} is not divisible by the world size "
                             f"{world_size}; pick a multiple of {world_size}")
        self.rank, self.world_size = rank, world_size
        self.augment = AUGMENTATIONS[choose("augmentation", augment, AUGMENTATIONS)]
        images = data.images
        if channels is not None and images.shape[1] != channels:
            if images.shape[1] != 1:
                raise ValueError(f"cannot turn {images.shape[1]} channels into {channels}")
            images, mean, std = images.expand(-1, channels, -1, -1), list(mean) * channels, list(std) * channels
        self.images = images.to(device)
        self.labels = data.labels.to(device)
        self.indices = data.extras.get("index", torch.arange(len(data.labels))).long().to(device)
        self.batch_size, self.train, self.seed = batch_size, train, seed
        # Training drops the ragged last batch (steady BatchNorm statistics); evaluation keeps all.
        self.drop_last = train if drop_last is None else drop_last
        self.mean = torch.tensor(mean, device=device).view(1, -1, 1, 1) * 255
        self.std = torch.tensor(std, device=device).view(1, -1, 1, 1) * 255
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        n = len(self.labels)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        gen = epoch_generator(self.seed, self.epoch)
        n = len(self.labels)
        order = torch.randperm(n, generator=gen) if self.train else torch.arange(n)
        order = order.to(self.images.device)
        for i in range(len(self)):
            idx = order[i * self.batch_size:(i + 1) * self.batch_size]
            x = self.images[idx].float()
            if self.train:
                x = self.augment(x, gen)  # the whole global batch: every rank draws the same
            y, i = self.labels[idx], self.indices[idx]
            if self.world_size > 1:
                x, y, i = (t.tensor_split(self.world_size)[self.rank] for t in (x, y, i))
            yield (x - self.mean) / self.std, y, i
