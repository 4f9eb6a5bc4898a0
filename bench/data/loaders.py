"""One entry point for batches: `make_loader` picks the device-resident loader for small sets,
FFCV for a `.beton`, and a torchvision DataLoader otherwise.

`batch_size` is always the global batch size. With `distributed=True` (torch.distributed
initialised) the loader yields this rank's share of it, `batch_size // world_size` images:
the device-resident loader slices every global batch (same order and augmentation on every
rank), FFCV shards its order as DistributedSampler does, and the torchvision DataLoader uses
a DistributedSampler."""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import torch

from bench.data import ImageSet, dataset_spec, load_dataset, take
from bench.data.ffcv_loader import make_ffcv_loader
from bench.data.file_loader import make_file_loader
from bench.data.memory import DeviceLoader, channel_stats
from bench.data.optional_ffcv import ffcv_available, warn_no_ffcv_once
from bench.errors import BenchError
from bench.job_env import capped_batch, world


def _rendered(name: str, image_size: int | None) -> int | None:
    """The size a generated / embedded set is rendered at (the size asked for); None for stored
    sets, which have their own (the loaders resize them)."""
    return image_size if (image_size and not dataset_spec(name).needs_root) else None


@lru_cache(maxsize=8)
def _cached(name: str, root: str | None, split: str, rendered: int | None):
    return load_dataset(name, root, split, **({"image_size": rendered} if rendered else {}))


def _in_memory(name: str, root: str | Path | None, split: str, image_size: int | None):
    return _cached(name, None if root is None else str(root), split, _rendered(name, image_size))


def normalisation(name: str, root: str | Path | None = None, image_size: int | None = None):
    """Per-channel (mean, std) in [0, 1]: the spec's constants, else the train split's."""
    spec = dataset_spec(name)
    if spec.mean is not None:
        return spec.mean, spec.std
    return channel_stats(_in_memory(name, root, "train", image_size).images)


def _subset(data, fraction: float, seed: int):
    """A fixed random `fraction` of a data set (an ImageSet or any map-style data set)."""
    if fraction >= 1:
        return data
    if not 0 < fraction:
        raise BenchError(f"data fraction must be in (0, 1], got {fraction}")
    keep = torch.randperm(len(data), generator=torch.Generator().manual_seed(seed))[:max(1, round(fraction * len(data)))]
    keep = keep.sort().values
    if isinstance(data, ImageSet):  # rows keep their index in the whole split
        indexed = ImageSet(data.name, data.split, data.images, data.labels, data.classes,
                           {"index": torch.arange(len(data)), **data.extras})
        return take(indexed, keep, data.split)
    return torch.utils.data.Subset(data, keep.tolist())


def make_loader(name: str, split: str, *, batch_size: int, train: bool, seed: int = 0,
                root: str | Path | None = None, image_size: int | None = None,
                device: str | torch.device = "cpu", channels: int = 3,
                beton: str | Path | None = None, distributed: bool = False, fraction: float = 1.0):
    """Batches of (normalised float NCHW images on `device`, int64 labels, int64 sample indices:
    each image's row in the whole split, int64 view ids: which of the augmentation's finite set
    of transforms made the image, 0 the identity, `UNKNOWN_VIEW` (-1) from FFCV and file loaders).

    `fraction` < 1: only that fraction of the split, a fixed subset drawn from `seed` (the same
    every epoch: fine-tuning on a fraction of the training data).

    `image_size`: the images' size (None: the data set's). Generated sets are rendered at it; sets
    stored at a fixed size (CIFAR, in memory or in a `.beton`) are augmented at their own size and
    then resized on the device (bench.data.memory.resize_images); files are cropped and resized.

    `batch_size` is the global batch size; `distributed=True` gives this rank's share of every
    global batch (see the module doc; the world size must divide `batch_size`)."""
    spec = dataset_spec(name)
    batch_size = capped_batch(batch_size)
    rank, world_size = world() if distributed else (0, 1)
    if batch_size % world_size:
        raise BenchError(f"global batch size {batch_size} is not divisible by the world size "
                         f"{world_size}; pick a multiple of {world_size}")
    mean, std = normalisation(name, root, image_size)
    augment = spec.augment if train else "none"
    shard = dict(rank=rank, world_size=world_size)
    if fraction < 1 and beton is not None:
        raise BenchError(f"a fraction ({fraction}) of a .beton split is not supported; use the on-disk data set")
    size = image_size or spec.image_size
    if spec.in_memory and beton is None:
        data = _subset(_in_memory(name, root, split, image_size), fraction, seed)
        return DeviceLoader(data, batch_size=batch_size, train=train, seed=seed, device=device,
                            mean=mean, std=std, augment=augment, channels=channels, image_size=size, **shard)
    if beton is not None and ffcv_available():
        # FFCV's batch size is per rank; its `distributed` order is DistributedSampler's
        # (rank and world size read from torch.distributed).
        return make_ffcv_loader(beton, train=train, batch_size=batch_size // world_size,
                                seed=seed, image_size=size, mean=mean, std=std, device=device,
                                distributed=world_size > 1, augment=spec.augment,
                                resize=spec.in_memory and spec.needs_root)
    if beton is not None:
        warn_no_ffcv_once()
    dataset = _subset(load_dataset(name, root, split, **({"image_size": r} if (r := _rendered(name, image_size))
                                                         else {})), fraction, seed)
    if isinstance(dataset, ImageSet):  # what make_file_loader does with one, plus the sharding
        return DeviceLoader(dataset, batch_size=batch_size, train=train, seed=seed, device=device,
                            mean=mean, std=std, augment=augment, channels=channels, image_size=size, **shard)
    loader = make_file_loader(dataset, train=train, batch_size=batch_size // world_size,
                              seed=seed, image_size=size, mean=mean, std=std, device=device,
                              augment=spec.augment)
    return _shard_file_loader(loader, rank, world_size) if world_size > 1 else loader


def _shard_file_loader(loader, rank: int, world_size: int) -> "ShardedFileLoader":
    """Give a FileLoader a DistributedSampler: each rank reads its own 1/world_size of the order
    (drawn from (seed, epoch); training drops the tail that does not divide evenly)."""
    from torch.utils.data import DataLoader, DistributedSampler

    old = loader.loader
    sampler = DistributedSampler(old.dataset, num_replicas=world_size, rank=rank,
                                 shuffle=loader.train, seed=loader.seed * 1_000_003 % (1 << 62),
                                 drop_last=loader.train)
    loader.loader = DataLoader(old.dataset, batch_size=old.batch_size, sampler=sampler,
                               drop_last=loader.train, num_workers=old.num_workers,
                               generator=loader.generator, pin_memory=old.pin_memory)
    return ShardedFileLoader(loader, sampler)


class ShardedFileLoader:
    """A FileLoader reading through a DistributedSampler that follows the loader's epoch."""

    def __init__(self, loader, sampler) -> None:
        self.loader, self.sampler = loader, sampler

    def set_epoch(self, epoch: int) -> None:
        self.loader.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        self.sampler.set_epoch(self.loader.epoch)  # FileLoader runs epoch `loader.epoch` next
        yield from self.loader

    def __getattr__(self, name: str):
        return getattr(self.loader, name)
