"""The FFCV loader: batches read from a `.beton` (written by `bench.data.beton`).

`make_ffcv_loader(beton, ...)` yields (normalised float NCHW images on `device`, int64 labels, int64
sample indices, view ids: -1, not tracked) batches, as `bench.data.file_loader` does without FFCV;
it keeps every image when evaluating (`drop_last=False`) and draws the training order from `seed`
and the epoch (`set_epoch`, as `bench.data.memory.DeviceLoader`).

Training recipes (`augment`):
  - "rrc_flip" (ImageNet): FFCV's RandomResizedCrop decoder (scale 0.08-1, ratio 3/4-4/3) and a
    horizontal flip; evaluation decodes a centre crop of 224/256 of the shorter side, resized to
    `image_size`.
  - "crop4_flip" / "translate2" / "none" (sets stored at their training resolution): the raw
    pixels are decoded as they are and augmented on `device` by `bench.data.memory`'s batch
    functions, exactly as the in-memory loader does (zero-pad-and-crop, flips); with `resize`, a
    set stored at another size than `image_size` (CIFAR at 224 px) is then resized on `device`,
    as the in-memory loader resizes it (`bench.data.memory.resize_images`).
  Flips and crops done in torch follow a generator seeded by (seed, epoch); FFCV's own
  RandomResizedCrop draws from numba's per-thread generators, which no seed reaches.

`import ffcv` costs seconds (numba), so it happens only inside the functions that need it.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch

from bench.data import UNKNOWN_VIEW
from bench.data.loader_base import EVAL_CROP_RATIO, EpochLoader, device_stats
from bench.data.memory import AUGMENTATIONS, epoch_generator, random_flip, resize_images
from bench.data.optional_ffcv import ffcv_workers, require_ffcv
from bench.errors import BenchError, choose

AUGMENTS = ("none", "translate2", "crop4_flip", "rrc_flip")
FIXED_SIZE_AUGMENTS = ("none", "translate2", "crop4_flip")


def _order_seed(seed: int) -> int:
    # FFCV's order for an epoch comes from `seed + epoch`: spread the seeds apart so seed s,
    # epoch e+1 does not replay seed s+1, epoch e (members of an ensemble differ by seed).
    # Same stream numbering as bench.data.memory.epoch_generator.
    return (int(seed) * 1_000_003) % (1 << 62)


class FFCVLoader(EpochLoader):
    """Batches from a `.beton` as (float normalised NCHW images, int64 labels, sample indices, view
    ids -1) on `device`
    (uint8 images when `raw`). Iterating runs epoch `self.epoch` and then advances it;
    `set_epoch(e)` picks the epoch (its order and augmentation) explicitly."""

    def __init__(self, loader, *, train: bool, raw: bool, augment: str, seed: int,
                 device: torch.device, mean: torch.Tensor | None, std: torch.Tensor | None,
                 num_images: int, image_size: int | None = None) -> None:
        self.loader, self.train, self.raw, self.augment = loader, train, raw, augment
        self.image_size = image_size  # decoded images are resized to it after augmentation (None: as decoded)
        self.seed, self.device, self.mean, self.std = seed, device, mean, std
        self.num_images, self.batch_size = num_images, loader.batch_size
        self.drop_last = loader.drop_last
        self.epoch = 0

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]]:
        epoch = self._next_epoch()
        self.loader.next_epoch = epoch  # FFCV's order for this epoch comes from seed + epoch
        gen = epoch_generator(self.seed, epoch)
        # FFCV's batches are consecutive slices of its traversal order for the epoch (seeded, so
        # asking for it here gives the order the iteration below uses): the sample indices.
        order = torch.from_numpy(np.asarray(self.loader.next_traversal_order(), dtype=np.int64))
        for b, (images, labels) in enumerate(self.loader):
            # FFCV reuses its output buffers a few batches later: hand out fresh tensors only.
            labels = labels.to(self.device, non_blocking=True).view(-1).long().clone()
            idx = order[b * self.batch_size:b * self.batch_size + len(labels)].to(self.device)
            unknown = torch.full_like(idx, UNKNOWN_VIEW)
            if self.raw:
                yield images.to(self.device).clone(memory_format=torch.contiguous_format), labels, idx, unknown
                continue
            x = images.to(self.device, non_blocking=True).float()
            if self.train and self.augment == "rrc_flip":
                x = random_flip(x, gen)
            elif self.train:
                x = AUGMENTATIONS[self.augment](x, gen)
            yield (resize_images(x, self.image_size) - self.mean) / self.std, labels, idx, unknown


def _image_sizes(beton: str) -> tuple[np.ndarray, np.ndarray]:
    from ffcv.reader import Reader

    reader = Reader(beton)
    if "image" not in reader.handlers or "label" not in reader.handlers:
        raise BenchError(f"{beton}: expected fields 'image' and 'label', found "
                         f"{', '.join(reader.handlers)}; write it with python -m bench.data.beton")
    # Metadata columns are unnamed (f0, f1, ...), in field order.
    meta = reader.metadata[reader.metadata.dtype.names[list(reader.handlers).index("image")]]
    return np.asarray(meta["height"]), np.asarray(meta["width"])


def _augment_for(beton: Path, heights: np.ndarray, widths: np.ndarray, image_size: int, augment: str | None, raw: bool,
                 resize: bool) -> str:
    """The augmentation recipe for the stored image sizes (None: chosen from them), refused in one
    line where the images cannot take it."""
    fixed = heights.min() == heights.max() and widths.min() == widths.max()
    if augment is None:
        augment = "crop4_flip" if fixed and heights[0] == widths[0] == image_size else "rrc_flip"
    choose("augmentation", augment, AUGMENTS)
    if (raw or augment in FIXED_SIZE_AUGMENTS) and not fixed:
        raise BenchError(f"{beton}: images of different sizes ({heights.min()}-{heights.max()} x "
                         f"{widths.min()}-{widths.max()}) need augment 'rrc_flip', not "
                         f"{'raw output' if raw else repr(augment)}")
    stored_at_size = heights[0] == widths[0] == image_size
    if not raw and augment in FIXED_SIZE_AUGMENTS and not stored_at_size and not resize:
        raise BenchError(f"{beton} holds {heights[0]}x{widths[0]} images; augment {augment!r} "
                         f"uses them as stored, so image_size must be {heights[0]}, not "
                         f"{image_size} (or use 'rrc_flip', which resizes)")
    return augment


def _decoder(as_stored: bool, train: bool, image_size: int) -> Any:
    """FFCV's image decoder: the stored pixels, a random resized crop (training) or a centre crop."""
    from ffcv.fields.decoders import CenterCropRGBImageDecoder, RandomResizedCropRGBImageDecoder, SimpleRGBImageDecoder

    if as_stored:
        return SimpleRGBImageDecoder()
    if train:
        return RandomResizedCropRGBImageDecoder((image_size, image_size))
    return CenterCropRGBImageDecoder((image_size, image_size), ratio=EVAL_CROP_RATIO)


def make_ffcv_loader(beton: str | Path, *, train: bool, batch_size: int, seed: int,
                     image_size: int, mean: Sequence[float], std: Sequence[float],
                     device: str | torch.device, distributed: bool = False,
                     num_workers: int | None = None, raw: bool = False,
                     augment: str | None = None, batches_ahead: int = 3, resize: bool = False) -> FFCVLoader:
    """An FFCV loader over `beton` yielding (normalised float NCHW on `device`, int64 labels, sample indices).

    Training: a random order from (`seed`, epoch), the last ragged batch dropped, and the
    `augment` recipe (see the module doc; None: "crop4_flip" when every stored image is
    `image_size` square, else "rrc_flip"). Evaluation: file order, every image
    (`drop_last=False`), a 224/256 centre crop for "rrc_flip", the stored pixels otherwise.
    `raw=True`: the stored uint8 pixels, unaugmented and unnormalised (fixed-size sets only).
    `resize=True`: a fixed-size recipe on images stored at another size than `image_size` augments
    them at their size and then resizes them on `device` (else it is refused: the recipe would use
    them as stored).
    `distributed=True` shards the order as DistributedSampler does (needs torch.distributed
    initialised; evaluation shards are padded to equal length by repeating images).
    `num_workers` (decoding threads) defaults to `job_cpus()`.
    """
    require_ffcv()
    from ffcv.fields.decoders import IntDecoder
    from ffcv.loader import Loader, OrderOption
    from ffcv.transforms import Squeeze, ToDevice, ToTensor, ToTorchImage
    import numba

    beton = Path(beton)
    if not beton.is_file():
        raise BenchError(f"{beton}: no such .beton file; write one with python -m bench.data.beton")
    if batch_size < 1:
        raise BenchError(f"batch size must be at least 1, got {batch_size}")
    device = torch.device(device)
    try:
        heights, widths = _image_sizes(str(beton))
    except (AssertionError, ValueError, IndexError, OSError) as err:  # FFCV's own complaints
        raise BenchError(f"{beton}: not a readable .beton ({' '.join(str(err).split())})") from None
    augment = _augment_for(beton, heights, widths, image_size, augment, raw, resize)
    stored_at_size = heights[0] == widths[0] == image_size
    decoder = _decoder(raw or augment in FIXED_SIZE_AUGMENTS, train, image_size)
    # On a GPU, FFCV copies each batch over on its own CUDA streams (the order of its ImageNet
    # example); on the CPU the batches stay where they were decoded.
    to_device = [ToDevice(device, non_blocking=True)] if device.type == "cuda" else []
    pipelines = {
        "image": [decoder, ToTensor(), *to_device, ToTorchImage()],
        "label": [IntDecoder(), ToTensor(), Squeeze(), *to_device],
    }
    workers = min(ffcv_workers(num_workers), numba.config.NUMBA_NUM_THREADS)
    try:
        loader = Loader(str(beton), batch_size=batch_size, num_workers=workers,
                        order=OrderOption.RANDOM if train else OrderOption.SEQUENTIAL,
                        seed=_order_seed(seed), distributed=distributed, drop_last=train,
                        pipelines=pipelines, batches_ahead=batches_ahead)
    except (AssertionError, ValueError) as err:  # FFCV's own complaints about the file
        raise BenchError(f"{beton}: not a readable .beton ({' '.join(str(err).split())})") from None
    m, s = (None, None) if raw else device_stats(mean, std, 3, device)
    return FFCVLoader(loader, train=train, raw=raw, augment=augment, seed=seed, device=device,
                      mean=m, std=s, num_images=len(heights),
                      image_size=image_size if augment in FIXED_SIZE_AUGMENTS and not stored_at_size else None)

