"""Data sets behind one interface: `load_dataset(name, root, split)`.

Small sets (digits, multiview, CIFAR) load whole into an `ImageSet` of uint8 tensors that
`bench.data.memory.DeviceLoader` keeps on the device; ImageNet is a folder of files read by a
torchvision or FFCV loader (`bench.data.loaders.make_loader` picks).
"""
from __future__ import annotations

import copy
import importlib
import inspect
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import torch

from bench.errors import BenchError, choose

# `val` is where every setting is chosen; `test` is read only for final records. Where a data set
# has no val split of its own, it is a fixed stratified part of train (`DatasetSpec.val_fraction`)
# and `train` is the rest, so no image is in both.
SPLITS = ("train", "val", "test")
# An optional fourth split: images from the training distribution that no teacher trains on, on
# which distillation and eq. 1 can be computed instead (`distill_on: transfer`); the data sets that
# have one say so (`DatasetSpec.transfer`).
TRANSFER = "transfer"
VAL_SEED = 0
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
    augment: str           # name of the training augmentation (bench.data.memory / ffcv_loader)
    mean: tuple[float, ...] | None = None  # per-channel, in [0, 1]; None: computed from train
    std: tuple[float, ...] | None = None
    options: Mapping[str, Any] = field(default_factory=dict)  # the module's load() options: a preset
    # val = this fraction of each class of the module's train split; None: the module makes its own
    val_fraction: float | None = 0.1
    transfer: bool = False  # has a TRANSFER split
    # The resolutions a run may ask for (`image_size`): None -- any, at least `min_size` (a
    # generated set is rendered at it; CIFAR is resized on the device, bench.data.memory; files are
    # cropped and resized by their loader); else the reason it has only its own `image_size`.
    only_native: str | None = None
    min_size: int = 4


# The tiny testbeds: presets of multiview images (bench.data.multiview) with headroom, one per
# difficulty, as the paper's settings use CIFAR-10, CIFAR-100 and ImageNet. Their knobs are Allen-Zhu
# & Li's mechanism: with more patch noise, feature noise and single-view samples, and fewer
# training images, a network that learns only some of a class's views fits its training set by
# memorising the single-view samples it cannot explain, so one teacher misses test images that an
# ensemble of teachers (having learnt different views) gets right. 20,000 test images make one
# image 0.005 points and the binomial error of one accuracy ~0.3 points. The values, and the
# accuracies they give, are in the README ("The tiny testbed").
TESTBEDS: dict[str, dict[str, Any]] = {
    "testbed": dict(noise=0.8, feature_noise=0.4, single_view_fraction=0.4, n_train=3000, n_val=5000,
                    n_test=20_000, n_transfer=3000),
    "testbed_hard": dict(noise=1.0, feature_noise=0.5, single_view_fraction=0.5, n_train=2000, n_val=5000,
                         n_test=20_000, n_transfer=2000),
    "testbed_harder": dict(noise=1.3, feature_noise=0.6, single_view_fraction=0.6, n_train=1500, n_val=5000,
                           n_test=20_000, n_transfer=1500),
}
TESTBED = TESTBEDS["testbed"]
# The tiny scale's ImageNet: a source task a base network is pretrained on before the members of a
# `pretrained` pool are fine-tuned from it (the paper's regime). Another seed, so it shares none of
# the testbeds' images or classes; 24 classes x 2 views = 48 orthonormal features, which span the
# whole patch space (d = 3 * 4 * 4), so every testbed feature is a mix of features the base has
# learnt to see, as ImageNet features serve CIFAR. Its noise is the testbed's.
SOURCE = dict(seed=1, num_classes=24, noise=0.8, feature_noise=0.4, single_view_fraction=0.4, n_train=12_000,
              n_val=2000, n_test=2000)
# A multiview image is a grid of 4 px patches, each a mix of the class's features: rendered at another
# size it holds more patches (other images, another task), and resized it breaks the patches.
PATCH_GRID = "its images are a grid of 4 px patches that other sizes would redraw or break"

DATASETS: dict[str, DatasetSpec] = {
    "digits": DatasetSpec("digits", 10, 16, True, False, "translate2", val_fraction=0.2, min_size=8),
    "multiview": DatasetSpec("multiview", 10, 16, True, False, "none", options={"n_transfer": 1000},
                             val_fraction=None, transfer=True, only_native=PATCH_GRID),
    # The testbeds' transfer split is as large as their training split.
    **{name: DatasetSpec("multiview", 10, 16, True, False, "none", options=preset, val_fraction=None, transfer=True,
                         only_native=PATCH_GRID)
       for name, preset in TESTBEDS.items()},
    "testbed_source": DatasetSpec("multiview", 24, 16, True, False, "none", options=SOURCE, val_fraction=None,
                                  only_native=PATCH_GRID),
    "cifar10": DatasetSpec("cifar", 10, 32, True, True, "crop4_flip",
                           (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": DatasetSpec("cifar", 100, 32, True, True, "crop4_flip",
                            (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "imagenet": DatasetSpec("imagenet", 1000, 224, False, True, "rrc_flip",
                            (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), val_fraction=0.01),
}

# Images per split (the cost estimate counts work with them, bench.estimate). CIFAR: the
# published 50,000 training images less a 10 % val split, and the 10,000 test images; ImageNet:
# ILSVRC-2012's 1,281,167 training images less 1 % for val, and its 50,000 validation images (the
# "test" split here); digits: the fixed 25 % stratified test split of scikit-learn's 1,797
# images, val 20 % of the rest; multiview and the testbed: their generators' sizes.
SPLIT_SIZES: dict[str, dict[str, int]] = {
    "digits": {"train": 1078, "val": 269, "test": 450},
    "multiview": {"train": 2000, "val": 1000, "test": 1000, TRANSFER: 1000},
    **{name: {"train": p["n_train"], "val": p["n_val"], "test": p["n_test"], TRANSFER: p["n_transfer"]}
       for name, p in TESTBEDS.items()},
    "testbed_source": {"train": SOURCE["n_train"], "val": SOURCE["n_val"], "test": SOURCE["n_test"]},
    "cifar10": {"train": 45_000, "val": 5_000, "test": 10_000},
    "cifar100": {"train": 45_000, "val": 5_000, "test": 10_000},
    "imagenet": {"train": 1_268_356, "val": 12_811, "test": 50_000},
}


def dataset_spec(name: str) -> DatasetSpec:
    return DATASETS[choose("dataset", name, DATASETS)]


def size_problem(name: str, image_size: int) -> str | None:
    """Why data set `name` cannot be given at `image_size` px, naming the sizes it can; None if it can."""
    spec = dataset_spec(name)
    if spec.only_native is not None and image_size != spec.image_size:
        return f"{name} exists at {spec.image_size} px only ({spec.only_native}); valid: {spec.image_size}"
    if image_size < spec.min_size:
        return f"{name} cannot be made at {image_size} px; valid: a whole number >= {spec.min_size}"
    return None


def load_dataset(name: str, root: str | Path | None = None, split: str = "train", **options):
    """Load one split of a registered data set.

    `root` is the folder that holds the data set's own on-disk layout (see each module);
    digits and multiview need none. Returns an `ImageSet` for in-memory sets, else a
    torch `Dataset` of (PIL RGB image, label).
    """
    spec = dataset_spec(name)
    choose("split", split, (*SPLITS, TRANSFER))
    if split == TRANSFER and not spec.transfer:
        raise BenchError(f"dataset {name!r} has no {TRANSFER} split (data sets with one: "
                         f"{', '.join(n for n, s in DATASETS.items() if s.transfer)})")
    if spec.needs_root and root is None:
        raise BenchError(f"dataset {name!r} needs a data root (--data-root or BENCH_DATA); "
                         f"see the README's data section for the layout")
    loader: Callable = importlib.import_module(f"bench.data.{spec.module}").load
    # A misspelled option would otherwise be dropped or surface as a TypeError deep in a job.
    valid = [p for p in inspect.signature(loader).parameters if p not in ("root", "split", "variant")]
    for key in options:
        if key not in valid:
            raise BenchError(f"dataset {name!r}: unknown option {key!r}; valid: {', '.join(valid)}")
    options = {**spec.options, **options}
    if spec.module == "cifar":
        options.setdefault("variant", name)
    root = None if root is None else Path(root)
    if spec.val_fraction is None or split == "test":
        return loader(root, split, **options)
    whole = loader(root, "train", **options)
    train, val = val_split(labels_of(whole), spec.val_fraction)
    return take(whole, val if split == "val" else train, split)


def labels_of(data) -> torch.Tensor:
    """The int64 labels of an ImageSet or a torchvision ImageFolder, in sample order."""
    return data.labels if isinstance(data, ImageSet) else torch.as_tensor(data.targets, dtype=torch.long)


def val_split(labels: torch.Tensor, fraction: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(train, val) sample indices, sorted: `fraction` of each class (at least one image, never
    all of a class: a class of one image stays in train) drawn by a generator of `VAL_SEED`, so
    the split is the same everywhere."""
    gen = torch.Generator().manual_seed(VAL_SEED)
    val = []
    for c in torch.unique(labels):
        idx = torch.nonzero(labels == c).flatten()
        idx = idx[torch.randperm(len(idx), generator=gen)]
        val.append(idx[:min(len(idx) - 1, max(1, round(fraction * len(idx))))])
    val = torch.cat(val).sort().values
    keep = torch.ones(len(labels), dtype=torch.bool)
    keep[val] = False
    return torch.nonzero(keep).flatten(), val


def take(data, rows: torch.Tensor, split: str):
    """The samples `rows` of an ImageSet or ImageFolder, as split `split` (re-indexed from 0)."""
    if isinstance(data, ImageSet):
        return ImageSet(data.name, split, data.images[rows], data.labels[rows], data.classes,
                        {k: v[rows] for k, v in data.extras.items()})
    part = copy.copy(data)  # an ImageFolder reads `samples`; `targets` and `imgs` mirror it
    part.samples = [data.samples[i] for i in rows.tolist()]
    part.targets = [s[1] for s in part.samples]
    part.imgs = part.samples
    part.split = split
    return part
