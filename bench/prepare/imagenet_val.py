"""ImageNet in a data root: the official val archive extracts flat (`val/ILSVRC2012_val_<n>.JPEG`),
and the loader (bench.data.imagenet) reads wnid folders, so the flat images are moved into
`val/<wnid>/` by the labels of the ILSVRC2012 devkit, as torchvision parses it.

Each image is one rename within val/: a killed sort leaves every image either flat or in its
folder, and the next run moves only the flat ones. Before anything moves, the images (flat and
sorted) must be exactly the devkit's numbered set, and those already sorted in their right folders.
"""
from __future__ import annotations

import io
import os
import re
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

from bench.data import imagenet
from bench.errors import BenchError
from bench.prepare import Step

VAL_IMAGE = re.compile(r"ILSVRC2012_val_(\d{8})\.JPEG")
DOWNLOAD = "https://image-net.org/download"
# The release's devkit, as torchvision pins it (torchvision.datasets.imagenet.ARCHIVE_META["devkit"]);
# the md5 is checked before its labels move 50,000 files.
DEVKIT_NAME = "ILSVRC2012_devkit_t12.tar.gz"
DEVKIT_MD5 = "fa75699e90414af021442c21a62c3abf"
# Inside the archive: the synsets (meta.mat) and the class id of val image n on line n.
META_MAT = "ILSVRC2012_devkit_t12/data/meta.mat"
GROUND_TRUTH = "ILSVRC2012_devkit_t12/data/ILSVRC2012_validation_ground_truth.txt"


def devkit_labels(devkit: Path) -> list[str]:
    """The wnid of val image n at index n - 1, parsed as torchvision's parse_devkit_archive does
    (the leaf synsets of meta.mat map ILSVRC2012_IDs to wnids), read from the archive in memory:
    torchvision's parser would write its result beside the archive, whose folder may be read-only."""
    import scipy.io

    from torchvision.datasets.utils import check_md5

    if not check_md5(devkit, DEVKIT_MD5):
        raise BenchError(f"{devkit} is not the release's {DEVKIT_NAME} (its md5 is not {DEVKIT_MD5}); "
                         f"get it from {DOWNLOAD}")
    try:
        with tarfile.open(devkit) as tar:
            meta = scipy.io.loadmat(io.BytesIO(tar.extractfile(META_MAT).read()), squeeze_me=True)["synsets"]
            ids = [int(line) for line in tar.extractfile(GROUND_TRUTH).read().decode().split()]
        leaves = meta[meta["num_children"] == 0]  # the 1,000 classes; the rest are WordNet's inner nodes
        wnid_of = {int(i): str(w) for i, w in zip(leaves["ILSVRC2012_ID"], leaves["WNID"])}
        return [wnid_of[i] for i in ids]
    except Exception as err:  # a damaged archive fails in tarfile, scipy or the lookups
        text = " ".join(str(err).split())
        raise BenchError(f"{devkit} is not an ILSVRC2012 devkit that can be read ({type(err).__name__}: "
                         f"{text[:200]}); get {DEVKIT_NAME} from {DOWNLOAD}") from None


@dataclass
class ValFolder:
    """val/ as it is: the numbered images directly in it, and those in class folders (name, folder)."""

    path: Path
    flat: list[Path] = field(default_factory=list)
    placed: list[tuple[str, str]] = field(default_factory=list)
    folders: int = 0

    @classmethod
    def scan(cls, val: Path) -> "ValFolder":
        out = cls(val)
        with os.scandir(val) as entries:
            for entry in entries:
                if entry.is_dir():
                    out.folders += 1
                    with os.scandir(entry.path) as images:
                        out.placed += [(f.name, entry.name) for f in images if VAL_IMAGE.fullmatch(f.name)]
                elif VAL_IMAGE.fullmatch(entry.name):
                    out.flat.append(Path(entry.path))
        out.flat.sort()
        return out


def number(name: str) -> int:
    return int(VAL_IMAGE.fullmatch(name).group(1))


def check(val: ValFolder, labels: list[str], devkit: Path) -> None:
    """Refuse, in one line, images the devkit does not label one to one, or sorted into another folder."""
    numbers = [number(p.name) for p in val.flat] + [number(n) for n, _ in val.placed]
    expected = set(range(1, len(labels) + 1))
    if len(numbers) != len(labels) or set(numbers) != expected:
        odd = sorted(set(numbers) ^ expected)[:1]
        first = f"; e.g. ILSVRC2012_val_{odd[0]:08d}.JPEG is {'missing' if odd[0] in expected else 'extra'}" \
            if odd else "; some are in two places"
        raise BenchError(f"{val.path} holds {len(numbers):,} ILSVRC2012_val_*.JPEG images ({len(val.flat):,} flat, "
                         f"{len(val.placed):,} in class folders) but {devkit} labels {len(labels):,}{first}: "
                         f"nothing moved; re-extract ILSVRC2012_img_val.tar into {val.path}")
    wrong = [(n, w) for n, w in val.placed if labels[number(n) - 1] != w]
    if wrong:
        name, wnid = wrong[0]
        raise BenchError(f"{val.path / wnid / name} is in folder {wnid} but {devkit} labels it "
                         f"{labels[number(name) - 1]} ({len(wrong):,} images so): val/ was sorted by other labels; "
                         f"nothing moved; re-extract ILSVRC2012_img_val.tar into {val.path}")


def sort_val(val: ValFolder, labels: list[str]) -> int:
    """Move every flat image into its wnid folder; returns how many moved."""
    from tqdm import tqdm

    for wnid in sorted(set(labels)):
        (val.path / wnid).mkdir(exist_ok=True)
    for image in tqdm(val.flat, desc="sorting val/", unit="img", disable=None):
        os.rename(image, val.path / labels[number(image.name) - 1] / image.name)
    return len(val.flat)


def train_wnids(root: Path) -> list[str]:
    """train/'s wnid folders, which val/'s must equal (the loader's labels index them)."""
    train = root / "train"
    wnids = sorted(d.name for d in train.iterdir() if d.is_dir()) if train.is_dir() else []
    if not wnids:
        raise BenchError(f"imagenet: {train} {'has no wnid folders' if train.is_dir() else 'not found'}: extract "
                         f"ILSVRC2012_img_train.tar (from {DOWNLOAD}) and its per-class archives into {train}/<wnid>/")
    return wnids


def loader_check(root: Path) -> str:
    """The loader's own check of the sorted val/ (its wnids are train/'s, no folder empty)."""
    return f"{len(imagenet.load(root, 'test').classes):,} wnid folders, the same in {root / 'train'}"


def step(root: Path, devkit: Path | None) -> Step:
    """Done where val/ has no flat images and the loader reads it; else the sort, with the devkit's
    labels parsed and checked against val/ and train/ now, before any image moves."""
    val_path = root / "val"
    if not val_path.is_dir():
        raise BenchError(f"imagenet: {val_path} not found; ImageNet is not downloaded for you: get "
                         f"ILSVRC2012_img_val.tar, ILSVRC2012_img_train.tar and {DEVKIT_NAME} from {DOWNLOAD}, "
                         f"extract the val archive into {val_path}/ and the train archive into {root / 'train'}/<wnid>/")
    wnids = train_wnids(root)
    val = ValFolder.scan(val_path)
    if not val.flat:
        return Step("data", "imagenet", f"{val_path} sorted ({len(val.placed):,} numbered images): disk 0",
                    skipped=f"done already ({val_path}: {loader_check(root)})")
    devkit = devkit or root / DEVKIT_NAME
    if not devkit.is_file():
        raise BenchError(f"imagenet: {val_path} is flat ({len(val.flat):,} images) and sorting it needs the devkit's "
                         f"labels: {devkit} not found; get {DEVKIT_NAME} from {DOWNLOAD} and put it there, "
                         f"or pass --imagenet-devkit PATH")
    labels = devkit_labels(devkit)
    check(val, labels, devkit)
    if set(labels) != set(wnids):
        odd = sorted(set(labels) ^ set(wnids))[0]
        raise BenchError(f"imagenet: {devkit} labels {len(set(labels)):,} wnids, {root / 'train'} has {len(wnids):,} "
                         f"wnid folders, and they differ (e.g. {odd} is only in "
                         f"{'the devkit' if odd in labels else 'train/'}): nothing moved")
    resumed = f" ({len(val.placed):,} sorted by an earlier run)" if val.placed else ""
    return Step("data", "imagenet",
                f"{val_path} flat: {len(val.flat):,} images to move into {len(set(labels)):,} wnid folders by "
                f"{devkit.name}'s labels{resumed}; renames within val/, disk 0",
                lambda: f"moved {sort_val(val, labels):,} images into wnid folders; {loader_check(root)}")
