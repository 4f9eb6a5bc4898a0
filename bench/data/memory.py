"""Whole-split loaders that keep a data set on the device and augment whole batches at once.

The order and the augmentation of every epoch come from a generator seeded by (seed, epoch)
alone, so a run resumed at epoch k sees exactly the batches an uninterrupted run saw.

Data-parallel training (`rank`, `world_size`): every rank draws the same permutation and the
same augmentation of each whole global batch and keeps its own contiguous slice of it, so the
ranks' slices together are exactly the batches a single process would see.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Sequence

import torch
import torch.nn.functional as F

from bench.data import ImageSet
from bench.errors import BenchError, choose


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    # Distinct, reproducible streams per (seed, epoch); CPU generators are the same everywhere.
    return torch.Generator().manual_seed(seed * 1_000_003 + epoch)


def crop_at(x: torch.Tensor, pad: int, dy: torch.Tensor, dx: torch.Tensor) -> torch.Tensor:
    """Zero-pad by `pad` and cut image i's window of the original size at offset (dy[i], dx[i])."""
    b, _, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad))
    rows = (dy.to(x.device)[:, None] + torch.arange(h, device=x.device))[:, :, None]  # (B, H, 1)
    cols = (dx.to(x.device)[:, None] + torch.arange(w, device=x.device))[:, None, :]  # (B, 1, W)
    batch = torch.arange(b, device=x.device)[:, None, None]
    return padded.permute(0, 2, 3, 1)[batch, rows, cols].permute(0, 3, 1, 2)


def flip_where(x: torch.Tensor, flip: torch.Tensor) -> torch.Tensor:
    return torch.where(flip.to(x.device)[:, None, None, None], x.flip(3), x)


def random_crop(x: torch.Tensor, pad: int, gen: torch.Generator) -> torch.Tensor:
    """Zero-pad by `pad` and cut a random window of the original size out of each image."""
    dy = torch.randint(0, 2 * pad + 1, (len(x),), generator=gen)
    dx = torch.randint(0, 2 * pad + 1, (len(x),), generator=gen)
    return crop_at(x, pad, dy, dx)


def random_flip(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    return flip_where(x, torch.rand(len(x), generator=gen) < 0.5)


@dataclass(frozen=True)
class FiniteAugmentation:
    """A random choice per image among `n_views` fixed transforms: zero-pad by `pad` and crop at
    one of (2 pad + 1)^2 offsets, then (`flip`) mirror or not. View 0 is the identity.

    `draw(b, gen)` makes the same generator draws, in the same order, as `random_crop` then
    `random_flip` (offsets dy, dx, then the flip), so an augmented batch is bit for bit what
    those functions give; `apply(x, views)` makes any views of any images (a cache of the
    teachers' outputs per (sample, view) is built from it). A view id is
    (flip * k + sy) * k + sx with k = 2 pad + 1 and s = (offset - pad) mod k."""

    pad: int = 0
    flip: bool = False

    @property
    def k(self) -> int:
        return 2 * self.pad + 1

    @property
    def n_views(self) -> int:
        return self.k * self.k * (2 if self.flip else 1)

    def draw(self, b: int, gen: torch.Generator) -> torch.Tensor:
        """The view ids of a batch of `b` images, int64 on the CPU."""
        k = self.k
        views = torch.zeros(b, dtype=torch.int64)
        if self.pad:
            dy = torch.randint(0, k, (b,), generator=gen)
            dx = torch.randint(0, k, (b,), generator=gen)
            views = (dy - self.pad) % k * k + (dx - self.pad) % k
        if self.flip:
            views = views + (torch.rand(b, generator=gen) < 0.5).long() * k * k
        return views

    def apply(self, x: torch.Tensor, views: torch.Tensor) -> torch.Tensor:
        """Image i under view views[i]."""
        k, views = self.k, views.to(x.device)
        if self.pad:
            x = crop_at(x, self.pad, (views // k % k + self.pad) % k, (views % k + self.pad) % k)
        if self.flip:
            x = flip_where(x, views >= k * k)
        return x

    def __call__(self, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        return self.apply(x, self.draw(len(x), gen))


AUGMENTATIONS = {
    "none": FiniteAugmentation(),
    "translate2": FiniteAugmentation(pad=2),              # digits: no flips (2 != mirrored 2)
    "crop4_flip": FiniteAugmentation(pad=4, flip=True),   # the standard CIFAR recipe
}


def resize_images(x: torch.Tensor, size: int | None) -> torch.Tensor:
    """Float images `x` at `size` x `size` px (None, or their own size: `x` itself, untouched).

    Bilinear with antialiasing, as torchvision's Resize of a PIL image (what Fei et al.'s code
    applies to CIFAR before the CIFAR augmentation): upsampling 32 -> 224 px gives PIL's pixels to
    within its uint8 rounding, and antialiasing keeps a downsampling from aliasing. The loaders
    call it after the augmentation, at the stored resolution, so that an augmented image is still
    one of the augmentation's finite views (the soft-label cache's keys) and the whole split stays
    on the device at its stored size (CIFAR: 150 MB, not 7 GB at 224 px). A crop offset of 4 px at
    32 px becomes 28 px at 224: the same translation relative to the image."""
    if size is None or tuple(x.shape[-2:]) == (size, size):
        return x
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)


def channel_stats(images: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of uint8 images, in [0, 1] units."""
    x = images.double() / 255
    return tuple(x.mean((0, 2, 3)).tolist()), tuple(x.std((0, 2, 3)).clamp_min(1e-3).tolist())


class DeviceLoader:
    """Batches of (normalised float images, int64 labels, int64 sample indices, int64 view ids)
    from an ImageSet held on `device`. A sample's index is its row in the whole split
    (`extras["index"]` when the set is a subset of it), and its view id names which of the
    augmentation's `n_views` transforms made the image (0, the identity, when not training), so
    caches keyed by (index, view) serve every loader of the split. `image_size`: the images come
    out at this size, resized on the device after the augmentation (`resize_images`) when the
    stored images have another; None: as stored.

    `batch_size` is the global batch size. With `world_size` > 1 this loader yields rank
    `rank`'s share of every global batch: the global batch is drawn and augmented exactly as
    with one process (same (seed, epoch) generator, same draws), then split into `world_size`
    contiguous slices (`batch_size // world_size` images each; a ragged last evaluation batch
    is split as evenly as `tensor_split` does). `len()` is the number of global batches,
    the same on every rank.
    """

    def __init__(self, data: ImageSet, *, batch_size: int, train: bool, seed: int = 0,
                 device: str | torch.device = "cpu", mean: Sequence[float], std: Sequence[float],
                 augment: str = "none", channels: int | None = None, image_size: int | None = None,
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
        self.image_size = image_size
        self.labels = data.labels.to(device)
        self.indices = data.extras.get("index", torch.arange(len(data.labels))).long().to(device)
        self.batch_size, self.train, self.seed = batch_size, train, seed
        # Training drops the ragged last batch (steady BatchNorm statistics); evaluation keeps all.
        self.drop_last = train if drop_last is None else drop_last
        self.mean = torch.tensor(mean, device=device).view(1, -1, 1, 1) * 255
        self.std = torch.tensor(std, device=device).view(1, -1, 1, 1) * 255
        self.epoch = 0

    @property
    def n_views(self) -> int:
        """How many distinct images of one sample the augmentation can make (1: none)."""
        return self.augment.n_views

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        n = len(self.labels)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def _global_batches(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """(rows of this loader, view ids on the CPU) of every global batch of the epoch: the order,
        then each batch's augmentation draws, all from the (seed, epoch) generator."""
        gen = epoch_generator(self.seed, self.epoch)
        n = len(self.labels)
        order = torch.randperm(n, generator=gen) if self.train else torch.arange(n)
        order = order.to(self.images.device)
        for i in range(len(self)):
            rows = order[i * self.batch_size:(i + 1) * self.batch_size]
            # The whole global batch's draws: every rank draws the same.
            views = self.augment.draw(len(rows), gen) if self.train else torch.zeros(len(rows), dtype=torch.int64)
            yield rows, views

    def _share(self, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
        if self.world_size == 1:
            return tensors
        return tuple(t.tensor_split(self.world_size)[self.rank] for t in tensors)

    def draws(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """(sample indices, view ids) of this rank's share of every batch of the epoch, without
        making the images: what iterating yields beside them."""
        for rows, views in self._global_batches():
            yield self._share(self.indices[rows], views.to(self.images.device))

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]]:
        for rows, views in self._global_batches():
            x = self.images[rows].float()
            if self.train:
                x = self.augment.apply(x, views)
            x, y, i, v = self._share(x, self.labels[rows], self.indices[rows], views.to(self.images.device))
            yield (resize_images(x, self.image_size) - self.mean) / self.std, y, i, v

    def view_images(self, indices: torch.Tensor, views: torch.Tensor) -> torch.Tensor:
        """The normalised images of samples `indices` (rows of the whole split) under the
        augmentation's views `views`: pixel for pixel what a training batch holds for them."""
        if not hasattr(self, "_row_of"):
            self._row_of = torch.full((int(self.indices.max()) + 1,), -1, dtype=torch.int64, device=self.indices.device)
            self._row_of[self.indices] = torch.arange(len(self.indices), device=self.indices.device)
        indices = indices.to(self.indices.device)
        if indices.numel() and (indices.max() >= len(self._row_of) or (self._row_of[indices] < 0).any()):
            raise BenchError("view_images: a sample index is not one of this loader's samples")
        if views.numel() and not (0 <= int(views.min()) and int(views.max()) < self.n_views):
            raise BenchError(f"view_images: view ids must be in [0, {self.n_views})")
        x = self.augment.apply(self.images[self._row_of[indices]].float(), views)
        return (resize_images(x, self.image_size) - self.mean) / self.std
