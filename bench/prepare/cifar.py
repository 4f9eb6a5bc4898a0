"""CIFAR-10 / CIFAR-100 in a data root: the release's python-pickle folder, checked against the
release's md5s (bench.data.cifar's check, torchvision's md5 table), or fetched and extracted by
torchvision (`--download`)."""
from __future__ import annotations

from pathlib import Path

from bench.data import cifar
from bench.errors import BenchError
from bench.prepare import Step, mib

# The release archives and the folders they extract to, in MiB (cs.toronto.edu's files, as
# torchvision's md5s pin them): the estimate of a download, which keeps the archive beside its folder.
RELEASE_MIB = {"cifar10": (163, 178), "cifar100": (161, 178)}


def archive_url(variant: cifar.Variant) -> str:
    import torchvision.datasets as tvd

    return getattr(tvd, variant.torchvision_class).url


def release_files(variant: cifar.Variant) -> list[str]:
    return [*variant.files["train"], *variant.files["test"], variant.meta]


def release_folder(root: Path, variant: cifar.Variant) -> Path:
    # The folder the jobs read: bench.data.cifar takes the release folder itself or its parent.
    return cifar._folder(root, variant)


def failing_md5(folder: Path, variant: cifar.Variant) -> list[str]:
    """The release files in `folder` whose md5 is not the release's (torchvision's table, which
    bench.data.cifar's check reads too)."""
    known = cifar.release_md5s(variant)
    return [n for n in release_files(variant) if cifar._md5(folder / n) != known[n]]


def fetch(root: Path, dataset: str, variant: cifar.Variant) -> str:
    # bench.data.cifar's own download path: torchvision fetches the archive (again where a file
    # fails its md5), checks it and extracts it; then every release file is checked as the plan does.
    cifar.load(root, "train", dataset, download=True)
    folder = release_folder(root, variant)
    if bad := failing_md5(folder, variant):
        raise BenchError(f"{dataset}: downloaded {archive_url(variant)}, but {folder / bad[0]} fails the "
                         f"release's md5 check")
    return f"downloaded {archive_url(variant)} into {folder.parent}; its files match the release's md5s"


def step(dataset: str, root: Path, download: bool) -> Step:
    """Done where every release file is in the release folder and matches the release's md5 (read
    now, so a damaged file is named before anything runs); else a download with `download`, or
    one line naming the archive's URL and where to extract it."""
    variant = cifar.VARIANTS[dataset]
    folder = release_folder(root, variant)
    names = release_files(variant)
    missing = [n for n in names if not (folder / n).is_file()]
    if len(missing) == len(names):
        where = f"{folder} not found"
    elif missing:
        where = f"{folder} lacks {', '.join(missing[:3])}{' ...' if len(missing) > 3 else ''}"
    elif bad := failing_md5(folder, variant):
        where = f"{folder}: {', '.join(bad[:3])}{' ...' if len(bad) > 3 else ''} fail the release's md5 check"
    else:
        size = sum((folder / n).stat().st_size for n in names)
        return Step("data", dataset, f"{folder} present ({mib(size)}), its {len(names)} files match the "
                                     f"release's md5s: disk 0", skipped=f"done already ({folder}: md5s match)")
    url = archive_url(variant)
    if not download:
        raise BenchError(f"{dataset}: {where}: download {url} and extract it in {folder.parent} (it unpacks "
                         f"to {variant.folder}/), or rerun with --download")
    archive, extracted = RELEASE_MIB[dataset]
    return Step("data", dataset, f"{where}: download {url} ({archive} MiB) and extract it in {folder.parent}: "
                                 f"disk ~{archive + extracted} MiB (the archive is kept); time: network-bound",
                lambda: fetch(root, dataset, variant))
