"""Writing FFCV `.beton` files, and the command that writes one.

    python -m bench.data.beton --dataset imagenet --root R --out F [--split train|test]
        [--max-resolution N] [--jpeg-quality Q] [--num-workers N] [--raw | --jpeg]

or `write_beton(...)` / `write_beton_from(dataset_or_imageset, out)`. In-memory sets (CIFAR, digits,
multiview) are stored raw, pixel for pixel; ImageNet-like folders as JPEG (`--max-resolution` caps
the longer side, as in FFCV's ImageNet recipe). The file is written under a temporary name and
renamed into place: a killed write leaves no partial `.beton` behind (at most a hidden
`.NAME.PID.tmp`). `bench.data.ffcv_loader` reads them.

`import ffcv` costs seconds (numba), so it happens only inside the functions that need it.
"""
from __future__ import annotations

import argparse
import os
import queue
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from bench.data import DATASETS, SPLITS, ImageSet, dataset_spec, load_dataset
from bench.data.loader_base import to_hwc_rgb
from bench.data.optional_ffcv import ffcv_workers, require_ffcv
from bench.errors import BenchError, choose, cli


class _ArraySource:
    """(HWC uint8 array, int label) items from whole arrays (an ImageSet, converted once)."""

    def __init__(self, images_nhwc: np.ndarray, labels: np.ndarray) -> None:
        self.images, self.labels = images_nhwc, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[np.ndarray, int]:
        return self.images[i], int(self.labels[i])



class _ItemSource:
    """(HWC uint8 array, int label) items from any Dataset of (image, label)."""

    def __init__(self, dataset: Any) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> tuple[np.ndarray, int]:
        image, label = self.dataset[i][:2]
        return to_hwc_rgb(image), int(label)


def _writer_worker(errors, work_fn, *args) -> None:
    """Runs one FFCV writer worker; an exception is sent to the parent as one line, exit 1."""
    try:
        work_fn(*args)
    except BaseException as err:  # noqa: BLE001 - reported to the parent, which raises it
        message = str(err) if isinstance(err, BenchError) else f"{type(err).__name__}: {err}"
        errors.put(" ".join(message.split()))
        raise SystemExit(1)  # quietly; multiprocessing flushes `errors` before the exit


def _collect_allocations(processes: list, done_number: Any, allocations_queue: Any, errors: Any, total: int,
                         fname: str) -> list:
    """Every worker's page allocations, as each finishes, with the samples written as progress; a
    worker that fails ends the wait with its error."""
    from tqdm import tqdm

    allocation_list: list = []
    with tqdm(total=total, disable=None, unit="img") as progress:
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
                raise BenchError(f"writing {fname} failed: {reason}")
        progress.update(done_number.value - previous)
    return allocation_list


def _make_writer_class():
    from multiprocessing import Process, Queue, Value
    import ctypes

    from ffcv.memory_allocator import MemoryAllocator
    from ffcv.writer import DatasetWriter

    class SafeWriter(DatasetWriter):
        """FFCV's DatasetWriter, except that a worker that fails ends the write with its error
        instead of leaving the parent waiting forever for samples that will never come."""

        def _write_common(self, num_samples, queue_content, work_fn, extra_worker_args):
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
                allocation_list = _collect_allocations(processes, done_number, allocations_queue, errors,
                                                       self.num_samples, self.fname)
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
    require_ffcv()
    from ffcv.fields import IntField, RGBImageField
    from ffcv.reader import Reader

    out = Path(out)
    if not 1 <= int(jpeg_quality) <= 100:
        raise BenchError(f"jpeg quality must be in 1..100, got {jpeg_quality}")
    if max_resolution is not None and int(max_resolution) < 1:
        raise BenchError(f"max resolution must be positive, got {max_resolution}")
    workers = ffcv_workers(num_workers)
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
    require_ffcv()
    if spec.module in ("digits", "multiview"):
        load_options.setdefault("channels", 3)
    data = load_dataset(dataset, root, split, **load_options)
    return write_beton_from(data, out, max_resolution=max_resolution, jpeg_quality=jpeg_quality,
                            num_workers=num_workers, raw=raw)



def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.data.beton",
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
