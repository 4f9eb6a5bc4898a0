"""ImageNet (ILSVRC2012) as class folders: `<root>/train/<wnid>/*.JPEG`, `<root>/val/<wnid>/*.JPEG`.

Items are (PIL RGB image, label) unless a `transform` is given. Every image is converted to RGB
on load: the real set holds grayscale and CMYK JPEGs and at least one PNG named `.JPEG` (PIL
picks the decoder from the content, not the name). Split "test" reads `val/`, the labelled
held-out set. Labels index the sorted wnids, which must be the same in train/ and val/.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

from PIL import Image
from torchvision.datasets import ImageFolder

from bench.errors import BenchError, choose

SOURCE = "ILSVRC2012 from https://image-net.org/download"
FOLDERS = {"train": "train", "test": "val"}


def rgb_loader(path: str) -> Image.Image:
    """Open any image PIL can decode and return it as RGB (module-level: picklable for workers)."""
    try:
        with open(path, "rb") as f:
            img = Image.open(f)
            return img.convert("RGB")  # convert() loads the pixels while the file is open
    except OSError as err:  # includes PIL.UnidentifiedImageError and truncated files
        raise BenchError(f"{path}: unreadable image ({' '.join(str(err).split())}); "
                         f"re-extract it from {SOURCE}") from None


def _layout(root: Path) -> str:
    return f"expected {root}/train/<wnid>/*.JPEG and {root}/val/<wnid>/*.JPEG ({SOURCE})"


def _wnids(folder: Path, root: Path) -> list[str]:
    if not folder.is_dir():
        raise BenchError(f"{folder} not found: {_layout(root)}")
    wnids = sorted(d.name for d in folder.iterdir() if d.is_dir())
    if not wnids:
        # The official val archive is flat (50 000 files); it needs sorting into wnid folders.
        raise BenchError(f"{folder} has no class subfolders: {_layout(root)}; a flat val/ must "
                         f"first be sorted into wnid folders (e.g. with the common valprep.sh)")
    return wnids


class ImageNetFolder(ImageFolder):
    """`ImageFolder` over one split, with the class list checked against train's."""

    def __init__(self, root: Path, split: str, classes: list[str],
                 transform: Callable | None = None, target_transform: Callable | None = None):
        self._classes = classes
        self.split = split
        super().__init__(str(root / FOLDERS[split]), transform=transform,
                         target_transform=target_transform, loader=rgb_loader)

    def find_classes(self, directory: str) -> tuple[list[str], dict[str, int]]:
        # Train's wnids define the labels for both splits, so a label means the same class in each.
        return self._classes, {wnid: i for i, wnid in enumerate(self._classes)}

    @property
    def num_classes(self) -> int:
        return len(self.classes)


def load(root: Path | None, split: str, transform: Callable | None = None,
         target_transform: Callable | None = None) -> ImageNetFolder:
    choose("split", split, FOLDERS)
    if root is None:
        raise BenchError(f"imagenet needs a data root: {_layout(Path('<root>'))}")
    root = Path(root).expanduser()
    if not root.is_dir():
        raise BenchError(f"imagenet root {root} does not exist: {_layout(root)}")
    wnids = _wnids(root / FOLDERS[split], root)
    train = root / "train"
    if split != "train" and train.is_dir():
        reference = _wnids(train, root)
        if wnids != reference:
            only_val = sorted(set(wnids) - set(reference))[:3]
            only_train = sorted(set(reference) - set(wnids))[:3]
            raise BenchError(f"{root / FOLDERS[split]} has {len(wnids)} wnid folders, {train} has "
                             f"{len(reference)}, and they differ (only in val: {only_val}, only in "
                             f"train: {only_train}): labels would not match; {_layout(root)}")
    try:
        return ImageNetFolder(root, split, wnids, transform, target_transform)
    except FileNotFoundError as err:  # ImageFolder: a class folder without any image file
        raise BenchError(f"{' '.join(str(err).split())}: {_layout(root)}") from None
