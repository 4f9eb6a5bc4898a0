"""FFCV `.beton` files: writing them, and loaders that read them or stand in for them.

Write:  `python -m bench.data.ffcv --dataset imagenet --root R --out F [--split train|test]
         [--max-resolution N] [--jpeg-quality Q] [--num-workers N] [--raw | --jpeg]`
        or `write_beton(...)` / `write_beton_from(dataset_or_imageset, out)`.
        In-memory sets (CIFAR, digits, multiview) are stored raw, pixel for pixel; ImageNet-like
        folders as JPEG (`--max-resolution` caps the longer side, as in FFCV's ImageNet recipe).
        The file is written under a temporary name and renamed into place: a killed write
        leaves no partial `.beton` behind (at most a hidden `.NAME.PID.tmp`).
Read:   `make_ffcv_loader(beton, ...)`, or without FFCV `make_file_loader(dataset, ...)`: both
        yield (normalised float NCHW images on `device`, int64 labels, int64 sample indices, view
        ids: -1, not tracked) batches, keep every image
        when evaluating (`drop_last=False`) and draw the training order from `seed` and the epoch
        (`set_epoch`, as `bench.data.memory.DeviceLoader`).

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

Kept out of the import path on purpose: `import ffcv` costs seconds (numba), so it happens only
inside the functions that need it. Run as `python -m bench.data.ffcv`, never as a script path
(`python bench/data/ffcv.py` would shadow the real `ffcv` package with this file).
"""
from __future__ import annotations

import argparse
import logging
import os
import queue
import sys
import time
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch

from bench.data import DATASETS, SPLITS, UNKNOWN_VIEW, ImageSet, dataset_spec, load_dataset
from bench.errors import BenchError, choose, cli
from bench.system import job_cpus

log = logging.getLogger(__name__)

FFCV_VERSION = "1.0.2"
INSTALL_HINT = "install it with bench/scripts/install_ffcv.sh (needs libturbojpeg and OpenCV headers)"
EVAL_CROP_RATIO = 224 / 256          # the usual ImageNet evaluation centre crop
AUGMENTS = ("none", "translate2", "crop4_flip", "rrc_flip")
FIXED_SIZE_AUGMENTS = ("none", "translate2", "crop4_flip")


# ---------------------------------------------------------------------------------------------
# Environment

@lru_cache(maxsize=1)
def ffcv_available() -> bool:
    """True if FFCV and its compiled parts (libffcv, numba, OpenCV) import here."""
    try:
        import ffcv.fields  # noqa: F401
        import ffcv.loader  # noqa: F401
        import ffcv.writer  # noqa: F401
    except Exception as err:  # ImportError, OSError (a missing libturbojpeg), numba errors
        log.debug("ffcv unavailable: %s", err)
        return False
    return True


_warned_no_ffcv = False


def warn_no_ffcv_once() -> bool:
    """Log, once per process, that FFCV was asked for but is missing. Returns True if it logged."""
    global _warned_no_ffcv
    if _warned_no_ffcv:
        return False
    _warned_no_ffcv = True
    log.warning("ffcv is not installed: reading the data with the torchvision DataLoader "
                "instead (slower); %s", INSTALL_HINT)
    return True


def _require_ffcv() -> None:
    if not ffcv_available():
        raise BenchError(f"ffcv is not installed or does not import; {INSTALL_HINT}")


def _num_workers(num_workers: int | None) -> int:
    n = job_cpus() if num_workers is None else int(num_workers)
    if n < 1:
        raise BenchError(f"num_workers must be at least 1, got {n}")
    return n


def _order_seed(seed: int) -> int:
    # FFCV's order for an epoch comes from `seed + epoch`: spread the seeds apart so seed s,
    # epoch e+1 does not replay seed s+1, epoch e (members of an ensemble differ by seed).
    # Same stream numbering as bench.data.memory.epoch_generator.
    return (int(seed) * 1_000_003) % (1 << 62)


# ---------------------------------------------------------------------------------------------
# Writing

class _ArraySource:
    """(HWC uint8 array, int label) items from whole arrays (an ImageSet, converted once)."""

    def __init__(self, images_nhwc: np.ndarray, labels: np.ndarray) -> None:
        self.images, self.labels = images_nhwc, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[np.ndarray, int]:
        return self.images[i], int(self.labels[i])


def _to_hwc_rgb(image: Any) -> np.ndarray:
    """A PIL image, CHW uint8 tensor or HWC uint8 array as a contiguous HWC RGB uint8 array."""
    if isinstance(image, torch.Tensor):
        image = image.detach().cpu()
        if image.ndim == 2:
            image = image[None]
        image = image.permute(1, 2, 0).numpy()
    elif hasattr(image, "convert"):  # PIL
        image = np.asarray(image.convert("RGB"))
    image = np.asarray(image)
    if image.ndim == 2:
        image = image[:, :, None]
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] not in (1, 3):
        raise BenchError(f"cannot store an image of dtype {image.dtype} and shape {image.shape}: "
                         f"expected uint8 with 1 or 3 channels")
    if image.shape[2] == 1:
        image = np.repeat(image, 3, axis=2)
    return np.ascontiguousarray(image)


class _ItemSource:
    """(HWC uint8 array, int label) items from any Dataset of (image, label)."""

    def __init__(self, dataset: Any) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> tuple[np.ndarray, int]:
        image, label = self.dataset[i][:2]
        return _to_hwc_rgb(image), int(label)


def _writer_worker(errors, work_fn, *args) -> None:
    """Runs one FFCV writer worker; an exception is sent to the parent as one line, exit 1."""
    try:
        work_fn(*args)
    except BaseException as err:  # noqa: BLE001 - reported to the parent, which raises it
        message = str(err) if isinstance(err, BenchError) else f"{type(err).__name__}: {err}"
        errors.put(" ".join(message.split()))
        raise SystemExit(1)  # quietly; multiprocessing flushes `errors` before the exit


def _make_writer_class():
    from multiprocessing import Process, Queue, Value
    import ctypes

    from ffcv.memory_allocator import MemoryAllocator
    from ffcv.writer import DatasetWriter

    class SafeWriter(DatasetWriter):
        """FFCV's DatasetWriter, except that a worker that fails ends the write with its error
        instead of leaving the parent waiting forever for samples that will never come."""

        def _write_common(self, num_samples, queue_content, work_fn, extra_worker_args):
            from tqdm import tqdm

            self.num_samples = num_samples
            self.prepare()
            workqueue, allocations_queue, errors = Queue(), Queue(), Queue()
            processes: list = []
            try:
                for todo in queue_content:
                    workqueue.put(todo)
                for _ in range(self.num_workers):
                    workqueue.put(None)
                done_number = Value(ctypes.c_uint64, 0)
                allocator = MemoryAllocator(self.fname, self.data_region_start, self.page_size)
                worker_args = (workqueue, self.metadata_sm, self.metadata_type, self.fields,
                               allocator, done_number, allocations_queue, *extra_worker_args)
                processes = [Process(target=_writer_worker, args=(errors, work_fn, *worker_args))
                             for _ in range(self.num_workers)]
                for p in processes:
                    p.start()
                allocation_list: list = []
                with tqdm(total=self.num_samples, disable=None, unit="img") as progress:
                    previous, collected = 0, 0
                    while collected < len(processes):
                        val = done_number.value
                        if val > previous:
                            progress.update(val - previous)
                            previous = val
                        try:  # a finished worker hands over its page allocations
                            allocation_list.extend(allocations_queue.get(timeout=0.1))
                            collected += 1
                            continue
                        except queue.Empty:
                            pass
                        failed = [p for p in processes if p.exitcode not in (None, 0)]
                        if failed:
                            try:
                                reason = errors.get(timeout=1.0)
                            except queue.Empty:
                                reason = f"a writer process died (exit code {failed[0].exitcode})"
                            raise BenchError(f"writing {self.fname} failed: {reason}")
                    progress.update(done_number.value - previous)
                if done_number.value != self.num_samples:
                    raise BenchError(f"writing {self.fname}: {done_number.value} of "
                                     f"{self.num_samples} samples written")
                for p in processes:
                    p.join()
                self.finalize(allocation_list)
            finally:
                for p in processes:
                    if p.is_alive():
                        p.terminate()
                        p.join()
                self.metadata_sm.close()
                self.metadata_sm.unlink()

    return SafeWriter


def write_beton_from(data: ImageSet | Any, out: str | Path, *, max_resolution: int | None = None,
                     jpeg_quality: int = 90, num_workers: int | None = None,
                     raw: bool | None = None, chunksize: int = 100) -> Path:
    """Write an `ImageSet`, or any Dataset of (PIL image | CHW uint8 tensor | HWC uint8 array,
    label), to the `.beton` file `out`, in index order, with fields `image` and `label`.

    `raw` stores exact pixels; None picks raw for an ImageSet and JPEG (`jpeg_quality`) for
    anything else. `max_resolution` caps the longer side (images are only ever shrunk).
    One- channel images are stored as RGB. Returns `out`.
    """
    _require_ffcv()
    from ffcv.fields import IntField, RGBImageField
    from ffcv.reader import Reader

    out = Path(out)
    if not 1 <= int(jpeg_quality) <= 100:
        raise BenchError(f"jpeg quality must be in 1..100, got {jpeg_quality}")
    if max_resolution is not None and int(max_resolution) < 1:
        raise BenchError(f"max resolution must be positive, got {max_resolution}")
    workers = _num_workers(num_workers)
    if isinstance(data, ImageSet):
        images = data.images
        if images.shape[1] == 1:
            images = images.expand(-1, 3, -1, -1)
        if images.shape[1] != 3:
            raise BenchError(f"{data.name}: FFCV stores RGB images; got {images.shape[1]} channels")
        source: Any = _ArraySource(images.permute(0, 2, 3, 1).contiguous().numpy(),
                                   data.labels.numpy())
        raw = True if raw is None else raw
    else:
        source = _ItemSource(data)
        raw = False if raw is None else raw
    n = len(source)
    if n == 0:
        raise BenchError(f"nothing to write to {out}: the data set is empty")
    fields = {
        "image": RGBImageField(write_mode="raw" if raw else "jpg",
                               max_resolution=None if max_resolution is None else int(max_resolution),
                               jpeg_quality=int(jpeg_quality)),
        "label": IntField(),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    try:
        writer = _make_writer_class()(str(tmp), fields, num_workers=min(workers, n))
        writer.from_indexed_dataset(source, chunksize=max(1, min(chunksize, -(-n // workers))))
        if int(Reader(str(tmp)).num_samples) != n:  # cheap check of the header before renaming
            raise BenchError(f"{tmp}: wrote a file that does not hold {n} samples")
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return out


def write_beton(dataset: str, root: str | Path | None, split: str, out: str | Path, *,
                max_resolution: int | None = None, jpeg_quality: int = 90,
                num_workers: int | None = None, raw: bool | None = None,
                **load_options: Any) -> Path:
    """Write one split of a registered data set (`bench.data.DATASETS`) to the `.beton` `out`.

    CIFAR (and the generated sets) are stored raw, pixel for pixel; ImageNet as JPEG.
    `load_options` go to `load_dataset` (e.g. `image_size` for the generated sets).
    """
    spec = dataset_spec(dataset)
    choose("split", split, SPLITS)
    _require_ffcv()
    if spec.module in ("digits", "multiview"):
        load_options.setdefault("channels", 3)
    data = load_dataset(dataset, root, split, **load_options)
    return write_beton_from(data, out, max_resolution=max_resolution, jpeg_quality=jpeg_quality,
                            num_workers=num_workers, raw=raw)


# ---------------------------------------------------------------------------------------------
# Reading

def _stats(mean: Sequence[float], std: Sequence[float], channels: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    mean, std = [float(m) for m in mean], [float(s) for s in std]
    if len(mean) == 1:
        mean, std = mean * channels, std * channels
    if len(mean) != channels or len(std) != channels:
        raise BenchError(f"mean/std have {len(mean)}/{len(std)} entries for {channels}-channel images")
    m = torch.tensor(mean, device=device).view(1, -1, 1, 1) * 255
    s = torch.tensor(std, device=device).view(1, -1, 1, 1) * 255
    return m, s


def _epoch_generator(seed: int, epoch: int) -> torch.Generator:
    from bench.data.memory import epoch_generator

    return epoch_generator(seed, epoch)


class _EpochLoader:
    """Epoch bookkeeping shared by the FFCV and file loaders: iterating runs epoch `self.epoch`
    and advances it; `set_epoch(e)` picks the epoch (its order and augmentation) explicitly."""

    epoch: int
    loader: Any

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.loader)

    def _next_epoch(self) -> int:
        epoch, self.epoch = self.epoch, self.epoch + 1
        return epoch


class FFCVLoader(_EpochLoader):
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
        from bench.data.memory import AUGMENTATIONS, random_flip, resize_images

        epoch = self._next_epoch()
        self.loader.next_epoch = epoch  # FFCV's order for this epoch comes from seed + epoch
        gen = _epoch_generator(self.seed, epoch)
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
                         f"{', '.join(reader.handlers)}; write it with python -m bench.data.ffcv")
    # Metadata columns are unnamed (f0, f1, ...), in field order.
    meta = reader.metadata[reader.metadata.dtype.names[list(reader.handlers).index("image")]]
    return np.asarray(meta["height"]), np.asarray(meta["width"])


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
    _require_ffcv()
    from ffcv.fields.decoders import (CenterCropRGBImageDecoder, IntDecoder,
                                      RandomResizedCropRGBImageDecoder, SimpleRGBImageDecoder)
    from ffcv.loader import Loader, OrderOption
    from ffcv.transforms import Squeeze, ToDevice, ToTensor, ToTorchImage
    import numba

    beton = Path(beton)
    if not beton.is_file():
        raise BenchError(f"{beton}: no such .beton file; write one with python -m bench.data.ffcv")
    if batch_size < 1:
        raise BenchError(f"batch size must be at least 1, got {batch_size}")
    device = torch.device(device)
    try:
        heights, widths = _image_sizes(str(beton))
    except (AssertionError, ValueError, IndexError, OSError) as err:  # FFCV's own complaints
        raise BenchError(f"{beton}: not a readable .beton ({' '.join(str(err).split())})") from None
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
    if raw or augment in FIXED_SIZE_AUGMENTS:
        decoder = SimpleRGBImageDecoder()
    elif train:
        decoder = RandomResizedCropRGBImageDecoder((image_size, image_size))
    else:
        decoder = CenterCropRGBImageDecoder((image_size, image_size), ratio=EVAL_CROP_RATIO)
    # On a GPU, FFCV copies each batch over on its own CUDA streams (the order of its ImageNet
    # example); on the CPU the batches stay where they were decoded.
    to_device = [ToDevice(device, non_blocking=True)] if device.type == "cuda" else []
    pipelines = {
        "image": [decoder, ToTensor(), *to_device, ToTorchImage()],
        "label": [IntDecoder(), ToTensor(), Squeeze(), *to_device],
    }
    workers = min(_num_workers(num_workers), numba.config.NUMBA_NUM_THREADS)
    try:
        loader = Loader(str(beton), batch_size=batch_size, num_workers=workers,
                        order=OrderOption.RANDOM if train else OrderOption.SEQUENTIAL,
                        seed=_order_seed(seed), distributed=distributed, drop_last=train,
                        pipelines=pipelines, batches_ahead=batches_ahead)
    except (AssertionError, ValueError) as err:  # FFCV's own complaints about the file
        raise BenchError(f"{beton}: not a readable .beton ({' '.join(str(err).split())})") from None
    m, s = (None, None) if raw else _stats(mean, std, 3, device)
    return FFCVLoader(loader, train=train, raw=raw, augment=augment, seed=seed, device=device,
                      mean=m, std=s, num_images=len(heights),
                      image_size=image_size if augment in FIXED_SIZE_AUGMENTS and not stored_at_size else None)


# ---------------------------------------------------------------------------------------------
# The torchvision fallback

def _to_pil(image: Any):
    from PIL import Image

    if hasattr(image, "convert"):
        return image.convert("RGB")
    return Image.fromarray(_to_hwc_rgb(image))


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


class FileLoader(_EpochLoader):
    """A torchvision DataLoader over (image, label) items yielding (normalised float NCHW on
    `device`, int64 labels, sample indices, view ids -1). Order (and, with workers, augmentation) follow (seed, epoch);
    iterating runs epoch `self.epoch` and advances it, `set_epoch(e)` picks it."""

    def __init__(self, dataset: Any, *, train: bool, batch_size: int, seed: int, image_size: int,
                 mean: Sequence[float], std: Sequence[float], device: str | torch.device,
                 num_workers: int) -> None:
        self.device = torch.device(device)
        self.train, self.seed, self.batch_size = train, seed, batch_size
        self.mean, self.std = _stats(mean, std, 3, self.device)
        self.generator = torch.Generator()
        self.epoch = 0
        self.loader = torch.utils.data.DataLoader(
            _Transformed(dataset, file_transform(train, image_size)), batch_size=batch_size,
            shuffle=train, drop_last=train, num_workers=num_workers, generator=self.generator,
            pin_memory=self.device.type == "cuda", persistent_workers=False)
        self.drop_last = train

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]]:
        epoch = self._next_epoch()
        self.generator.manual_seed(int(_epoch_generator(self.seed, epoch).initial_seed()))
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
        from bench.data.memory import DeviceLoader

        if augment is None:
            augment = DATASETS[dataset.name].augment if dataset.name in DATASETS else "crop4_flip"
        return DeviceLoader(dataset, batch_size=batch_size, train=train, seed=seed, device=device,
                            mean=mean, std=std, augment=augment if train else "none", image_size=image_size)
    workers = job_cpus() if num_workers is None else max(0, int(num_workers))
    return FileLoader(dataset, train=train, batch_size=batch_size, seed=seed,
                      image_size=image_size, mean=mean, std=std, device=device,
                      num_workers=workers)


# ---------------------------------------------------------------------------------------------
# Command line

def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.data.ffcv",
                                description="Write one split of a data set to an FFCV .beton file.")
    p.add_argument("--dataset", required=True, help=f"one of: {', '.join(sorted(DATASETS))}")
    p.add_argument("--root", default=None, help="the data set's folder (not for generated sets)")
    p.add_argument("--out", required=True, type=Path, help="the .beton file to write")
    p.add_argument("--split", default="train", help="train or test (test reads ImageNet's val/)")
    p.add_argument("--max-resolution", type=int, default=None,
                   help="shrink images so the longer side is at most N pixels")
    p.add_argument("--jpeg-quality", type=int, default=90)
    p.add_argument("--num-workers", type=int, default=None, help="default: the CPUs of this job")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--raw", dest="raw", action="store_true", default=None,
                      help="store exact pixels (default for in-memory sets)")
    mode.add_argument("--jpeg", dest="raw", action="store_false",
                      help="store JPEG (default for ImageNet)")
    return p


@cli
def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    choose("dataset", args.dataset, DATASETS)
    choose("split", args.split, SPLITS)
    t0 = time.perf_counter()
    out = write_beton(args.dataset, args.root, args.split, args.out,
                      max_resolution=args.max_resolution, jpeg_quality=args.jpeg_quality,
                      num_workers=args.num_workers, raw=args.raw)
    from ffcv.reader import Reader

    n = int(Reader(str(out)).num_samples)
    print(f"wrote {out}: {n} images, {out.stat().st_size / 2**20:.1f} MiB "
          f"in {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
