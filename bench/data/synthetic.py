"""Small synthetic data sets written in the real on-disk formats: CIFAR-10/100 python pickles and
an ImageNet folder of JPEGs. The loaders read them exactly as they read the releases, so a run on
them (`python -m bench.sweep --smoke`, the benchmarks) takes every path a real run takes, in
seconds. The pixels are smooth random textures: nothing here is learnable, and nothing is meant to be.
"""
from __future__ import annotations

import os
import pickle
import shutil
from pathlib import Path

import numpy as np

from bench.data.cifar import VARIANTS
from bench.data.imagenet import FOLDERS
from bench.errors import BenchError


def _textures(rng: np.random.Generator, count: int, size: int) -> np.ndarray:
    """`count` (size, size, 3) uint8 images: coarse noise upsampled, so JPEG compresses them as
    it would photographs rather than as white noise."""
    from PIL import Image

    cells = max(2, size // 8)
    coarse = rng.integers(0, 256, (count, cells, cells, 3), dtype=np.uint8)
    out = np.empty((count, size, size, 3), dtype=np.uint8)  # a split of 0 images is an empty array
    for i, c in enumerate(coarse):
        out[i] = np.asarray(Image.fromarray(c).resize((size, size), Image.BILINEAR))
    return out


def write_cifar(root: Path, variant: str, per_class: dict[str, int], seed: int = 0) -> Path:
    """`root/<release folder>/` as the release unpacks: the batch files of each split (CIFAR-10's
    training set over its five batches) and the meta file, with `per_class[split]` images of
    every class: dicts of the release's keys, `data` uint8 (N, 3072) rows of R, G, B planes.
    (Python 3 pickles, protocol 4: the release's Python 2 strings read back as these str.)"""
    v = VARIANTS[variant]
    classes = 10 if variant == "cifar10" else 100
    folder = Path(root) / v.folder
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for split, files in v.files.items():
        labels = np.repeat(np.arange(classes), per_class[split])
        rng.shuffle(labels)
        data = _textures(rng, len(labels), 32).transpose(0, 3, 1, 2).reshape(len(labels), -1)
        for i, name in enumerate(files):
            part = slice(i * len(labels) // len(files), (i + 1) * len(labels) // len(files))
            batch = {"batch_label": f"{split} batch {i + 1} of {len(files)}",
                     v.labels_key: labels[part].tolist(), "data": np.ascontiguousarray(data[part]),
                     "filenames": [f"{split}_{j}.png" for j in range(part.start, part.stop)]}
            (folder / name).write_bytes(pickle.dumps(batch, protocol=4))
    names = [f"class_{c}" for c in range(classes)]
    (folder / v.meta).write_bytes(pickle.dumps({v.names_key: names}, protocol=4))
    return folder


def write_imagenet(root: Path, per_class: dict[str, int], classes: int = 1000, size: int = 64,
                   seed: int = 0) -> Path:
    """`root/train/<wnid>/*.JPEG` and `root/val/<wnid>/*.JPEG` (the labelled validation images
    sorted into class folders, the layout the loader reads as split "test"), `per_class[split]`
    images of each of `classes` classes."""
    rng = np.random.default_rng(seed)
    from PIL import Image

    for split, sub in FOLDERS.items():
        for c in range(classes):
            folder = Path(root) / sub / f"n{c:08d}"
            folder.mkdir(parents=True, exist_ok=True)
            for i, image in enumerate(_textures(rng, per_class[split], size)):
                Image.fromarray(image).save(folder / f"{sub}_{c}_{i}.JPEG", quality=90)
    return Path(root)


# Images per class a smoke run writes: few, but every class has a training, a val (a fixed part of
# train: bench.data.val_split) and a test image, and the training part holds one batch of the
# largest size the paper-scale grids use (WeightFormer's 256 on CIFAR, the ViT recipe's 512).
SMOKE_SIZES = {"cifar10": {"train": 32, "test": 10}, "cifar100": {"train": 4, "test": 1},
               "imagenet": {"train": 2, "test": 1}}


def write_smoke_data(root: Path, datasets: list[str], seed: int = 0) -> Path:
    """The data sets `datasets` (those read from disk) under one data root, as a real one holds
    them (cifar-10-batches-py/, cifar-100-python/, ImageNet's train/ and val/), each written once:
    built in a temporary folder, moved into place, then marked written; a crash leaves no mark,
    and the next call writes that data set again. A rerun reuses the same bytes, so run ids and
    resumes stay valid."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    for name in sorted(set(datasets)):
        if name not in SMOKE_SIZES:
            raise BenchError(f"no synthetic {name!r} for a smoke run; written: {', '.join(SMOKE_SIZES)}")
        mark = root / f".{name}.written"
        if mark.exists():
            continue
        tops = list(FOLDERS.values()) if name == "imagenet" else [VARIANTS[name].folder]
        tmp = root / f".{name}.{os.getpid()}.tmp"
        for path in (tmp, *(root / t for t in tops)):
            shutil.rmtree(path, ignore_errors=True)
        if name == "imagenet":
            write_imagenet(tmp, SMOKE_SIZES[name], seed=seed)
        else:
            write_cifar(tmp, name, SMOKE_SIZES[name], seed=seed)
        for top in tops:
            (tmp / top).rename(root / top)
        tmp.rmdir()
        mark.touch()
    return root
