"""loader: FFCV against torchvision's DataLoader on one folder of synthetic JPEGs (FFCV's first
epoch, which compiles its pipeline, reported apart)."""
from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Callable

from bench.errors import BenchError
from bench.perf.harness import Row, paired, rate, sizes


def loader_rows(quick: bool, repeat: int) -> list[Row]:
    from bench.data.beton import write_beton_from
    from bench.data.ffcv_loader import make_ffcv_loader
    from bench.data.file_loader import make_file_loader
    from bench.data.optional_ffcv import ffcv_available
    from bench.data.imagenet import load as load_imagenet
    from bench.data.synthetic import write_imagenet
    from bench.job_env import job_cpus

    if not ffcv_available():
        raise BenchError("loader: FFCV is not importable here (see the README's FFCV section)")
    classes, per_class, size, image_size, batch = sizes(quick).loader
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    with tempfile.TemporaryDirectory() as tmp:
        root = write_imagenet(Path(tmp) / "jpegs", {"train": per_class, "test": 0}, classes, size)
        folder = load_imagenet(root, "train")
        beton = write_beton_from(folder, Path(tmp) / "train.beton")
        common = dict(train=True, batch_size=batch, seed=0, image_size=image_size, mean=mean, std=std, device="cpu")
        files = make_file_loader(folder, **common)
        ffcv = make_ffcv_loader(beton, augment="rrc_flip", **common)

        def epoch(loader) -> Callable[[], float]:
            return rate(lambda: float(sum(len(batch[1]) for batch in loader)))

        first = epoch(ffcv)()  # FFCV's first epoch compiles its pipeline (numba): reported apart
        return [paired("loader", ("torchvision", epoch(files)), ("ffcv", epoch(ffcv)), unit="images/s",
                       repeat=repeat, settings={"images": classes * per_class, "stored_px": size,
                                                "image_size": image_size, "augment": "rrc_flip",
                                                "batch_size": batch, "workers": job_cpus(),
                                                "ffcv_first_epoch_images_per_s": first})]

