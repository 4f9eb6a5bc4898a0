"""Data sets behind one interface: `load_dataset(name, root, split)`.

Small sets (digits, multiview, CIFAR) load whole into an `ImageSet` of uint8 tensors that
`bench.data.memory.DeviceLoader` keeps on the device; ImageNet is a folder of files read by a
torchvision or FFCV loader (`bench.data.loaders.make_loader` picks).
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from bench.errors import BenchError, choose

SPLITS = ("train", "test")
# The view id loaders yield beside a sample index when its augmentation is not one of a finite set
# of transforms (FFCV, torchvision files): no cache keyed by (index, view) can serve it.
UNKNOWN_VIEW = -1


@dataclass
class ImageSet:
    """A whole split in memory: `images` uint8 (N, C, H, W), `labels` int64 (N,)."""

    name: str
    split: str
    images: torch.Tensor
    labels: torch.Tensor
    classes: list[str]
    extras: dict[str, torch.Tensor] = field(default_factory=dict)  # per-sample side facts

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.ndim != 4:
            raise ValueError(f"{self.name}: images must be uint8 (N, C, H, W), got "
                             f"{self.images.dtype} {tuple(self.images.shape)}")
        if len(self.images) != len(self.labels):
            raise ValueError(f"{self.name}: {len(self.images)} images but {len(self.labels)} labels")
        self.labels = self.labels.long()

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.images[i], int(self.labels[i])


@dataclass(frozen=True)
class DatasetSpec:
    """What the rest of the suite needs to know about a data set before loading it."""

    module: str            # bench.data.<module> holds `load(root, split, **options)`
    num_classes: int
    image_size: int        # the training resolution models are built for
    in_memory: bool        # True: load() returns an ImageSet
    needs_root: bool       # False: generated or shipped with a package
    augment: str           # name of the training augmentation (bench.data.memory / ffcv)
    mean: tuple[float, ...] | None = None  # per-channel, in [0, 1]; None: computed from train
    std: tuple[float, ...] | None = None


DATASETS: dict[str, DatasetSpec] = {
    "digits": DatasetSpec("digits", 10, 16, True, False, "translate2"),
    "multiview": DatasetSpec("multiview", 10, 16, True, False, "none"),
    "cifar10": DatasetSpec("cifar", 10, 32, True, True, "crop4_flip",
                           (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": DatasetSpec("cifar", 100, 32, True, True, "crop4_flip",
                            (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "imagenet": DatasetSpec("imagenet", 1000, 224, False, True, "rrc_flip",
                            (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
}

# Images per split (the cost estimate counts work with them, bench.estimate). CIFAR: the
# published 50,000 / 10,000 split; ImageNet: ILSVRC-2012's 1,281,167 training and 50,000
# validation images (the "test" split here); digits: the fixed 25 % stratified split of
# scikit-learn's 1,797 images; multiview: the generator's default sizes.
SPLIT_SIZES: dict[str, dict[str, int]] = {
    "digits": {"train": 1347, "test": 450},
    "multiview": {"train": 2000, "test": 1000},
    "cifar10": {"train": 50_000, "test": 10_000},
    "cifar100": {"train": 50_000, "test": 10_000},
    "imagenet": {"train": 1_281_167, "test": 50_000},
}


def dataset_spec(name: str) -> DatasetSpec:
    return DATASETS[choose("dataset", name, DATASETS)]


def load_dataset(name: str, root: str | Path | None = None, split: str = "train", **options):
    """Load one split of a registered data set.

    `root` is the folder that holds the data set's own on-disk layout (see each module);
    digits and multiview need none. Returns an `ImageSet` for in-memory sets, else a
    torch `Dataset` of (PIL RGB image, label).
    """
    spec = dataset_spec(name)
    choose("split", split, SPLITS)
    if spec.needs_root and root is None:
        raise BenchError(f"dataset {name!r} needs a data root (--data-root or BENCH_DATA); "
                         f"see the README's data section for the layout")
    loader: Callable = importlib.import_module(f"bench.data.{spec.module}").load
    if spec.module == "cifar":
        options.setdefault("variant", name)
    return loader(None if root is None else Path(root), split, **options)
