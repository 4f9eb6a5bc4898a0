"""One entry point for batches: `make_loader` picks the device-resident loader for small sets,
FFCV for a `.beton`, and a torchvision DataLoader otherwise."""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import torch

from bench.data import dataset_spec, load_dataset
from bench.data.memory import DeviceLoader, channel_stats


def _options(name: str, image_size: int | None) -> dict:
    spec = dataset_spec(name)
    # Generated / embedded sets are rendered at the size asked for; stored sets have their own.
    return {"image_size": image_size} if (image_size and not spec.needs_root) else {}


@lru_cache(maxsize=8)
def _cached(name: str, root: str | None, split: str, image_size: int | None):
    return load_dataset(name, root, split, **_options(name, image_size))


def normalisation(name: str, root: str | Path | None = None, image_size: int | None = None):
    """Per-channel (mean, std) in [0, 1]: the spec's constants, else the train split's."""
    spec = dataset_spec(name)
    if spec.mean is not None:
        return spec.mean, spec.std
    return channel_stats(_cached(name, None if root is None else str(root), "train", image_size).images)


def make_loader(name: str, split: str, *, batch_size: int, train: bool, seed: int = 0,
                root: str | Path | None = None, image_size: int | None = None,
                device: str | torch.device = "cpu", channels: int = 3,
                beton: str | Path | None = None, distributed: bool = False):
    """Batches of (normalised float NCHW images on `device`, int64 labels)."""
    spec = dataset_spec(name)
    mean, std = normalisation(name, root, image_size)
    augment = spec.augment if train else "none"
    if spec.in_memory and beton is None:
        data = _cached(name, None if root is None else str(root), split, image_size)
        return DeviceLoader(data, batch_size=batch_size, train=train, seed=seed, device=device,
                            mean=mean, std=std, augment=augment, channels=channels)
    from bench.data import ffcv as ffcv_data

    size = image_size or spec.image_size
    if beton is not None and ffcv_data.ffcv_available():
        return ffcv_data.make_ffcv_loader(beton, train=train, batch_size=batch_size, seed=seed,
                                          image_size=size, mean=mean, std=std, device=device,
                                          distributed=distributed, augment=spec.augment)
    if beton is not None:
        ffcv_data.warn_no_ffcv_once()
    dataset = load_dataset(name, root, split)
    return ffcv_data.make_file_loader(dataset, train=train, batch_size=batch_size, seed=seed,
                                      image_size=size, mean=mean, std=std, device=device,
                                      augment=spec.augment)
