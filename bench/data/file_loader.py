"""The loader to use without FFCV: a torchvision DataLoader over (image, label) items
(`FileLoader`, `make_file_loader`), with the batches and contract of `bench.data.ffcv_loader`.
"""
from __future__ import annotations

from typing import Any, Iterator, Sequence

import torch

from bench.data import DATASETS, UNKNOWN_VIEW, ImageSet
from bench.data.loader_base import EVAL_CROP_RATIO, EpochLoader, device_stats, to_hwc_rgb
from bench.data.memory import DeviceLoader, epoch_generator
from bench.errors import BenchError
from bench.job_env import job_cpus


def _to_pil(image: Any):
    from PIL import Image

    if hasattr(image, "convert"):
        return image.convert("RGB")
    return Image.fromarray(to_hwc_rgb(image))


class _Transformed(torch.utils.data.Dataset):
    """(uint8 CHW tensor, label) items: `transform` applied to each image as RGB PIL."""

    def __init__(self, dataset: Any, transform) -> None:
        self.dataset, self.transform = dataset, transform

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int, int]:
        image, label = self.dataset[i][:2]
        # A subset's items keep their index in the whole split.
        index = self.dataset.indices[i] if isinstance(self.dataset, torch.utils.data.Subset) else i
        return self.transform(_to_pil(image)), int(label), int(index)


def file_transform(train: bool, image_size: int):
    """torchvision's counterpart of the FFCV pipelines: uint8 CHW tensors out."""
    from torchvision import transforms as T

    if train:
        return T.Compose([T.RandomResizedCrop(image_size), T.RandomHorizontalFlip(), T.PILToTensor()])
    return T.Compose([T.Resize(round(image_size / EVAL_CROP_RATIO)), T.CenterCrop(image_size),
                      T.PILToTensor()])


class FileLoader(EpochLoader):
    """A torchvision DataLoader over (image, label) items yielding (normalised float NCHW on
    `device`, int64 labels, sample indices, view ids -1). Order (and, with workers, augmentation) follow (seed, epoch);
    iterating runs epoch `self.epoch` and advances it, `set_epoch(e)` picks it."""

    def __init__(self, dataset: Any, *, train: bool, batch_size: int, seed: int, image_size: int,
                 mean: Sequence[float], std: Sequence[float], device: str | torch.device,
                 num_workers: int) -> None:
        self.device = torch.device(device)
        self.train, self.seed, self.batch_size = train, seed, batch_size
        self.mean, self.std = device_stats(mean, std, 3, self.device)
        self.generator = torch.Generator()
        self.epoch = 0
        self.loader = torch.utils.data.DataLoader(
            _Transformed(dataset, file_transform(train, image_size)), batch_size=batch_size,
            shuffle=train, drop_last=train, num_workers=num_workers, generator=self.generator,
            pin_memory=self.device.type == "cuda", persistent_workers=False)
        self.drop_last = train

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]]:
        epoch = self._next_epoch()
        self.generator.manual_seed(int(epoch_generator(self.seed, epoch).initial_seed()))
        for images, labels, idx in self.loader:
            x = images.to(self.device, non_blocking=True).float()
            idx = idx.to(self.device, non_blocking=True).long()
            yield ((x - self.mean) / self.std, labels.to(self.device, non_blocking=True).long(), idx,
                   torch.full_like(idx, UNKNOWN_VIEW))


def make_file_loader(dataset: Any, *, train: bool, batch_size: int, seed: int, image_size: int,
                     mean: Sequence[float], std: Sequence[float], device: str | torch.device,
                     num_workers: int | None = None, augment: str | None = None):
    """The loader to use without FFCV: same batches, same contract as `make_ffcv_loader`.

    A Dataset of (image, label) is read by a torchvision DataLoader (RandomResizedCrop + flip
    for training; Resize to image_size*256/224 + CenterCrop for evaluation, every image kept).
    An `ImageSet` goes to `bench.data.memory.DeviceLoader` with `augment` (default: its data
    set's recipe, else "crop4_flip") for training, resized to `image_size` on the device after it
    where its images have another size. `num_workers` defaults to `job_cpus()`.
    """
    if batch_size < 1:
        raise BenchError(f"batch size must be at least 1, got {batch_size}")
    if isinstance(dataset, ImageSet):
        if augment is None:
            augment = DATASETS[dataset.name].augment if dataset.name in DATASETS else "crop4_flip"
        return DeviceLoader(dataset, batch_size=batch_size, train=train, seed=seed, device=device,
                            mean=mean, std=std, augment=augment if train else "none", image_size=image_size)
    workers = job_cpus() if num_workers is None else max(0, int(num_workers))
    return FileLoader(dataset, train=train, batch_size=batch_size, seed=seed,
                      image_size=image_size, mean=mean, std=std, device=device,
                      num_workers=workers)
