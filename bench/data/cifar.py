"""CIFAR-10 / CIFAR-100 from the python-pickle release (https://www.cs.toronto.edu/~kriz/cifar.html).

The files are Python 2 pickles: dicts whose keys are byte strings and whose `data` is a numpy
uint8 array (N, 3072) of row-major R, G, B planes. We read them ourselves rather than through
torchvision's CIFAR classes, which refuse any file whose md5 differs from the release (so they
reject re-packed or test-written files); md5 checking is opt-in here (`verify_md5=True`).
"""
from __future__ import annotations

import hashlib
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from bench.data import ImageSet
from bench.errors import BenchError, choose

URL = "https://www.cs.toronto.edu/~kriz/cifar.html"
PIXELS = 3 * 32 * 32


@dataclass(frozen=True)
class Variant:
    title: str
    folder: str                      # what the release's archive extracts to
    archive: str
    files: dict[str, tuple[str, ...]]  # split -> batch files, in order
    meta: str
    labels_key: str
    names_key: str
    torchvision_class: str


VARIANTS: dict[str, Variant] = {
    "cifar10": Variant("CIFAR-10", "cifar-10-batches-py", "cifar-10-python.tar.gz",
                       {"train": tuple(f"data_batch_{i}" for i in range(1, 6)),
                        "test": ("test_batch",)},
                       "batches.meta", "labels", "label_names", "CIFAR10"),
    "cifar100": Variant("CIFAR-100", "cifar-100-python", "cifar-100-python.tar.gz",
                        {"train": ("train",), "test": ("test",)},
                        "meta", "fine_labels", "fine_label_names", "CIFAR100"),
}

# The only globals a CIFAR pickle may name: numpy's array/dtype reconstruction, as written by
# numpy on Python 2 (numpy.core) or re-pickled by numpy 2 (numpy._core). Anything else is not a
# CIFAR file, and refusing it also keeps pickle from running arbitrary code.
_ALLOWED_GLOBALS = {(pkg, name) for pkg in ("numpy.core.multiarray", "numpy._core.multiarray")
                    for name in ("_reconstruct", "scalar")} | {
    ("numpy", "ndarray"), ("numpy", "dtype"),
    ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer")}


class _CifarUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) not in _ALLOWED_GLOBALS:
            raise pickle.UnpicklingError(f"unexpected global {module}.{name}")
        return super().find_class(module, name)


def _hint(v: Variant) -> str:
    return f"the python-pickle {v.title} ({v.archive}) from {URL}, or pass download=True"


def _one_line(err: BaseException) -> str:
    text = " ".join(str(err).split())
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


def _unpickle(path: Path, v: Variant) -> dict:
    if not path.is_file():
        raise BenchError(f"{path} missing: expected {v.title} file {path.name} in {path.parent}; "
                         f"re-extract {_hint(v)}")
    try:
        with path.open("rb") as f:
            # latin1 maps each Python 2 byte-string byte to one code point: keys become str, and
            # numpy decodes the array's raw-bytes state back losslessly.
            obj = _CifarUnpickler(f, encoding="latin1").load()
    except Exception as err:  # truncated/corrupt pickles raise many types (EOFError, ValueError, ...)
        raise BenchError(f"{path} is not a readable {v.title} pickle ({_one_line(err)}); "
                         f"re-extract {_hint(v)}") from None
    if not isinstance(obj, dict):
        raise BenchError(f"{path} holds a {type(obj).__name__}, expected a {v.title} dict; "
                         f"re-extract {_hint(v)}")
    return obj


def _field(obj: dict, key: str, path: Path, v: Variant):
    if key not in obj:
        raise BenchError(f"{path} has no {key!r} entry (keys: {', '.join(map(str, obj))}); "
                         f"expected {_hint(v)}")
    return obj[key]


def _md5(path: Path) -> str:
    digest = hashlib.md5()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def release_md5s(v: Variant) -> dict[str, str]:
    """Each release file's md5, as torchvision's CIFAR class pins it."""
    import torchvision.datasets as tvd

    cls = getattr(tvd, v.torchvision_class)
    return {**dict(cls.train_list + cls.test_list), cls.meta["filename"]: cls.meta["md5"]}


def _verify_md5(folder: Path, names: list[str], v: Variant) -> None:
    known = release_md5s(v)
    for name in names:
        path = folder / name
        if not path.is_file():
            raise BenchError(f"{path} missing: re-extract {_hint(v)}")
        if (got := _md5(path)) != known[name]:
            raise BenchError(f"{path} fails the md5 check (got {got}, release has {known[name]}): "
                             f"re-extract {_hint(v)}")


def _download(parent: Path, split: str, v: Variant) -> None:
    import torchvision.datasets as tvd

    try:  # torchvision fetches and extracts the whole archive (skipped if md5s already match)
        getattr(tvd, v.torchvision_class)(str(parent), train=split == "train", download=True)
    except Exception as err:
        raise BenchError(f"download of {v.title} into {parent} failed ({_one_line(err)}); "
                         f"fetch {v.archive} from {URL} by hand and extract it there") from None


def _folder(root: Path, v: Variant) -> Path:
    """`root` may be the release folder itself or (torchvision's convention) its parent."""
    if root.name == v.folder or (root / v.meta).is_file():
        return root
    return root / v.folder


def load(root: Path | None, split: str, variant: str = "cifar10", verify_md5: bool = False,
         download: bool = False) -> ImageSet:
    v = VARIANTS[choose("cifar variant", variant, VARIANTS)]
    choose("split", split, VARIANTS[variant].files)
    if root is None:
        raise BenchError(f"{v.title} needs a data root holding {v.folder}/: {_hint(v)}")
    root = Path(root).expanduser()
    folder = _folder(root, v)
    if download:
        _download(folder.parent, split, v)
    if not folder.is_dir():
        where = f"{folder} not found" if folder == root else f"{v.folder}/ not found under {root}"
        raise BenchError(f"{where}: expected {_hint(v)}")
    names = [*v.files[split], v.meta]
    if verify_md5:
        _verify_md5(folder, names, v)

    meta_path = folder / v.meta
    classes = [str(c) for c in _field(_unpickle(meta_path, v), v.names_key, meta_path, v)]
    images, labels = [], []
    for name in v.files[split]:
        path = folder / name
        batch = _unpickle(path, v)
        data = _field(batch, "data", path, v)
        targets = np.asarray(_field(batch, v.labels_key, path, v), dtype=np.int64)
        if not (isinstance(data, np.ndarray) and data.dtype == np.uint8 and data.ndim == 2
                and data.shape[1] == PIXELS and len(data) == len(targets)):
            shape = getattr(data, "shape", None)
            raise BenchError(f"{path}: 'data' is {type(data).__name__} {getattr(data, 'dtype', '')} "
                             f"{shape} with {len(targets)} labels, expected uint8 (N, {PIXELS}) "
                             f"and N labels; re-extract {_hint(v)}")
        if len(targets) and not (0 <= targets.min() and targets.max() < len(classes)):
            raise BenchError(f"{path}: labels span {targets.min()}..{targets.max()} but "
                             f"{meta_path} names {len(classes)} classes; re-extract {_hint(v)}")
        images.append(data.reshape(-1, 3, 32, 32))  # row-major R, G, B planes of 32x32
        labels.append(targets)
    # concatenate copies, so the tensor owns writable memory (a pickled array may be read-only)
    return ImageSet(variant, split, torch.from_numpy(np.concatenate(images)),
                    torch.from_numpy(np.concatenate(labels)), classes)
