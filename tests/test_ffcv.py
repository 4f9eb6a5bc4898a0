"""FFCV .beton writing and reading, and the torchvision loader that stands in without FFCV.

FFCV tests skip (with the reason shown) only where `ffcv` cannot be imported; the fallback,
CLI-error and helper tests always run. Every FFCV loader here runs on the CPU: FFCV needs no
CUDA when its pipelines hold no ToDevice to a GPU.
"""
from __future__ import annotations

import gc
import importlib
import importlib.util
import os
import logging

import pytest
import torch
from PIL import Image

from bench.data import UNKNOWN_VIEW, ImageSet
from bench.data import beton, optional_ffcv
from bench.data.beton import write_beton_from
from bench.data.ffcv_loader import FFCVLoader, make_ffcv_loader
from bench.data.file_loader import make_file_loader
from bench.data.optional_ffcv import ffcv_available, warn_no_ffcv_once
from bench.errors import BenchError
from bench.job_env import job_cpus

# When an FFCV loader is garbage-collected, numba's Dispatcher finalizer for FFCV's compiled
# JPEG decoder can fail on its own overload table and print a harmless KeyError as "Exception
# ignored in: <finalize object ...>". Ignore exactly that here, and collect each test's loaders
# before it ends (see `collect_loaders`) so the message cannot land on a later test file.
pytestmark = pytest.mark.filterwarnings(
    "ignore:Exception ignored in. <finalize object:pytest.PytestUnraisableExceptionWarning")


@pytest.fixture(autouse=True)
def collect_loaders():
    yield
    gc.collect()

MEAN, STD = (0.5, 0.4, 0.3), (0.25, 0.2, 0.3)
# Solid colours, one per class: after any crop/resize/JPEG round trip an image's mean colour
# still tells which class (and so which label) it came with.
COLOURS = [(220, 30, 30), (30, 200, 40), (40, 50, 230)]


def need_ffcv():
    if ffcv_available():  # ffcv and its compiled parts (libffcv, numba, cv2) all import
        return
    if os.environ.get("BENCH_REQUIRE_FFCV"):  # CI installs FFCV: there a skip would hide a failure
        pytest.fail("BENCH_REQUIRE_FFCV is set but ffcv does not import (bench/scripts/install_ffcv.sh)")
    try:
        missing = importlib.util.find_spec("ffcv") is None
    except (ImportError, ValueError):
        missing = True
    if missing:
        pytest.importorskip("ffcv", reason="ffcv is not installed (bench/scripts/install_ffcv.sh)")
    pytest.skip("ffcv is installed but does not import here (re-run bench/scripts/install_ffcv.sh)")


def tiny_cifar(n: int = 37, seed: int = 0) -> ImageSet:
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g)
    labels = torch.randint(0, 10, (n,), generator=g)
    return ImageSet("cifar10", "test", images, labels, [str(i) for i in range(10)])


class ColourImages(torch.utils.data.Dataset):
    """(PIL RGB image, label): solid-colour images of varying sizes, label = colour index."""

    def __init__(self, n: int = 10) -> None:
        self.items = [((24 + 3 * i, 30 + 5 * (i % 4)), i % len(COLOURS)) for i in range(n)]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):
        (h, w), label = self.items[i]
        return Image.new("RGB", (w, h), COLOURS[label]), label


def expected_normalised(label: int) -> torch.Tensor:
    c = torch.tensor(COLOURS[label], dtype=torch.float32) / 255
    return (c - torch.tensor(MEAN)) / torch.tensor(STD)


def check_colour_batches(batches, n: int, image_size: int, atol: float):
    """Every one of `n` images came out, shaped right, normalised, its colour matching its label."""
    xs = torch.cat([x for x, *_ in batches])
    ys = torch.cat([y for _, y, *_ in batches])
    assert xs.shape == (n, 3, image_size, image_size) and xs.dtype == torch.float32
    assert ys.dtype == torch.int64 and ys.shape == (n,)
    for x, y in zip(xs, ys):
        torch.testing.assert_close(x.mean((1, 2)), expected_normalised(int(y)), atol=atol, rtol=0)
    return ys


# ---------------------------------------------------------------------------------------------
# FFCV

def test_cifar_raw_roundtrip_exact_and_every_eval_image(tmp_path):
    need_ffcv()
    data = tiny_cifar(37)  # 37 = 4 full batches of 8 and one of 5
    out = write_beton_from(data, tmp_path / "c.beton", num_workers=2)
    assert out == tmp_path / "c.beton" and out.is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.beton"]  # no temporary left

    common = dict(batch_size=8, seed=0, image_size=32, mean=MEAN, std=STD, device="cpu")
    raw = make_ffcv_loader(out, train=False, raw=True, **common)
    batches = list(raw)
    assert len(raw) == len(batches) == 5 and [len(y) for _, y, *_ in batches] == [8, 8, 8, 8, 5]
    images = torch.cat([x for x, *_ in batches])
    assert images.dtype == torch.uint8 and torch.equal(images, data.images)
    assert torch.equal(torch.cat([y for _, y, *_ in batches]), data.labels)
    assert torch.equal(torch.cat([i for _, _, i, _ in batches]), torch.arange(37))  # every sample's index, in order
    assert all((v == UNKNOWN_VIEW).all() for *_, v in batches)  # FFCV's views are not tracked

    ev = make_ffcv_loader(out, train=False, **common)
    x = torch.cat([x for x, *_ in ev])
    expected = (data.images.float() / 255 - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)
    torch.testing.assert_close(x, expected, atol=1e-5, rtol=0)

    # Training: seeded random order, ragged last batch dropped, epochs differ, set_epoch replays.
    tr = make_ffcv_loader(out, train=True, **common)
    first = [(x, y) for x, y, *_ in tr]
    for _, y, i, _ in tr:  # each image's sample index names its row in the split, in FFCV's random order
        assert torch.equal(data.labels[i], y) and len(set(i.tolist())) == len(i)
    tr.set_epoch(0)
    assert len(tr) == len(first) == 4 and all(x.shape == (8, 3, 32, 32) for x, _ in first)
    order0 = torch.cat([y for _, y in first])
    order1 = torch.cat([y for _, y, *_ in tr])
    tr.set_epoch(0)
    assert torch.equal(torch.cat([y for _, y, *_ in tr]), order0)
    again = make_ffcv_loader(out, train=True, **common)
    assert torch.equal(torch.cat([y for _, y, *_ in again]), order0)
    assert not torch.equal(order0, order1) or not torch.equal(order0, data.labels[:32])


def test_imagenet_folder_jpeg_roundtrip_through_cli(tmp_path, capsys):
    need_ffcv()
    root = tmp_path / "imagenet"
    for split, n in (("train", 3), ("val", 7)):
        for k, wnid in enumerate(("n01", "n02", "n03")):
            folder = root / split / wnid
            folder.mkdir(parents=True)
            for i in range(n):
                size = (40 + 7 * i + k, 56 - 3 * i)  # (w, h): varying sizes and aspect ratios
                Image.new("RGB", size, COLOURS[k]).save(folder / f"{wnid}_{i}.JPEG", quality=95)
    out = tmp_path / "val.beton"
    code = beton.main(["--dataset", "imagenet", "--root", str(root), "--out", str(out),
                       "--split", "test", "--max-resolution", "48", "--num-workers", "2"])
    assert code == 0 and out.is_file()
    assert "wrote" in capsys.readouterr().out

    common = dict(batch_size=4, seed=1, image_size=24, mean=MEAN, std=STD, device="cpu")
    ev = make_ffcv_loader(out, train=False, **common)
    batches = list(ev)
    assert len(batches) == len(ev) == 6  # 21 images: five batches of 4 and one of 1
    labels = check_colour_batches(batches, 21, 24, atol=0.06)
    assert labels.tolist() == [k for k in range(3) for _ in range(7)]  # folder order kept

    tr = make_ffcv_loader(out, train=True, **common)
    batches = list(tr)
    assert len(batches) == 5  # drop_last for training
    check_colour_batches(batches, 20, 24, atol=0.06)


def test_failed_write_leaves_nothing_and_says_why(tmp_path):
    need_ffcv()

    class Broken(ColourImages):
        def __getitem__(self, i):
            if i == 5:
                raise BenchError("image 5 is unreadable")
            return super().__getitem__(i)

    with pytest.raises(BenchError, match="image 5 is unreadable"):
        write_beton_from(Broken(12), tmp_path / "b.beton", num_workers=2, chunksize=2)
    assert list(tmp_path.iterdir()) == []


def test_ffcv_loader_rejects_bad_input(tmp_path):
    need_ffcv()
    out = write_beton_from(ColourImages(3), tmp_path / "v.beton", num_workers=1)
    with pytest.raises(BenchError, match="different sizes"):
        make_ffcv_loader(out, train=False, raw=True, batch_size=2, seed=0, image_size=24,
                         mean=MEAN, std=STD, device="cpu")
    with pytest.raises(BenchError, match="no such .beton"):
        make_ffcv_loader(tmp_path / "missing.beton", train=False, batch_size=2, seed=0,
                         image_size=24, mean=MEAN, std=STD, device="cpu")


# ---------------------------------------------------------------------------------------------
# Always: the torchvision fallback, the CLI's errors, the helpers

def test_file_loader_eval_keeps_every_image_normalised():
    ev = make_file_loader(ColourImages(10), train=False, batch_size=4, seed=0, image_size=16,
                          mean=MEAN, std=STD, device="cpu", num_workers=0)
    batches = list(ev)
    assert len(ev) == len(batches) == 3 and [len(y) for _, y, *_ in batches] == [4, 4, 2]
    labels = check_colour_batches(batches, 10, 16, atol=1e-5)
    assert labels.tolist() == [i % 3 for i in range(10)]


def test_file_loader_train_seeded_order_with_workers():
    def order(seed, epoch):
        tr = make_file_loader(ColourImages(10), train=True, batch_size=4, seed=seed,
                              image_size=16, mean=MEAN, std=STD, device="cpu", num_workers=2)
        tr.set_epoch(epoch)
        batches = list(tr)
        assert len(tr) == len(batches) == 2  # ragged last batch dropped
        return check_colour_batches(batches, 8, 16, atol=1e-5).tolist()

    a = order(3, 0)
    assert a == order(3, 0)
    assert a != order(3, 1) or a != order(4, 0)


def test_file_loader_imageset_goes_to_device_loader():
    data = tiny_cifar(11)
    ev = make_file_loader(data, train=False, batch_size=4, seed=0, image_size=32,
                          mean=MEAN, std=STD, device="cpu")
    x = torch.cat([x for x, *_ in ev])
    expected = (data.images.float() / 255 - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)
    torch.testing.assert_close(x, expected, atol=1e-5, rtol=0)


def test_cli_unknown_dataset_is_one_line_exit_2(capsys):
    with pytest.raises(SystemExit) as exc:
        beton.main(["--dataset", "mnist", "--out", "x.beton"])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: unknown dataset 'mnist'")
    assert "cifar10" in err[0] and "imagenet" in err[0]


def test_warn_no_ffcv_once(monkeypatch, caplog):
    monkeypatch.setattr(optional_ffcv, "_warned_no_ffcv", False)
    with caplog.at_level(logging.WARNING, logger="bench.data.optional_ffcv"):
        assert warn_no_ffcv_once() is True
        assert warn_no_ffcv_once() is False
    assert len([r for r in caplog.records if "ffcv is not installed" in r.message]) == 1


def test_job_cpus(monkeypatch):
    import os

    allowed = len(os.sched_getaffinity(0))
    monkeypatch.delenv("SLURM_CPUS_PER_TASK", raising=False)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert job_cpus() == allowed
    monkeypatch.setenv("SLURM_CPUS_PER_TASK", "1")
    assert job_cpus() == 1
    monkeypatch.setenv("SLURM_CPUS_PER_TASK", str(allowed + 50))
    assert job_cpus() == allowed
    monkeypatch.setenv("SLURM_CPUS_PER_TASK", "garbage")
    assert job_cpus() == allowed
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the debug executor's threads follow it
    assert job_cpus() == 1
    monkeypatch.setenv("OMP_NUM_THREADS", "0")  # not a budget: ignored
    assert job_cpus() == allowed


@pytest.mark.parametrize("damage", ["garbage", "truncated", "empty"])
def test_a_corrupt_beton_is_refused_in_one_line(tmp_path, damage):
    need_ffcv()
    out = write_beton_from(ColourImages(3), tmp_path / "v.beton", num_workers=1)
    data = out.read_bytes()
    out.write_bytes({"garbage": bytes(range(256)) * 8, "truncated": data[:len(data) // 3], "empty": b""}[damage])
    with pytest.raises(BenchError, match=r"v.beton: not a readable .beton") as err:
        make_ffcv_loader(out, train=False, batch_size=2, seed=0, image_size=24, mean=MEAN, std=STD,
                         device="cpu")
    assert "\n" not in str(err.value)


def test_a_cifar_beton_at_another_resolution_is_resized_as_the_in_memory_set_is(tmp_path):
    """CIFAR at 224 px from a `.beton` of its 32 px images: decoded as stored, augmented, then
    resized on the device, pixel for pixel what the in-memory loader yields; without `resize` the
    fixed-size recipe still refuses another size."""
    need_ffcv()
    from bench.data.memory import DeviceLoader

    data = tiny_cifar(19)
    out = write_beton_from(data, tmp_path / "c.beton", num_workers=1)
    common = dict(batch_size=8, seed=0, image_size=224, mean=MEAN, std=STD, device="cpu", augment="crop4_flip")
    ev = torch.cat([x for x, *_ in make_ffcv_loader(out, train=False, resize=True, **common)])
    memory = DeviceLoader(data, batch_size=8, train=False, mean=MEAN, std=STD, image_size=224)
    torch.testing.assert_close(ev, torch.cat([x for x, *_ in memory]), atol=1e-5, rtol=0)
    assert ev.shape == (19, 3, 224, 224)
    train = list(make_ffcv_loader(out, train=True, resize=True, **common))
    assert [x.shape for x, *_ in train] == [(8, 3, 224, 224)] * 2
    with pytest.raises(BenchError, match="so image_size must be 32, not 224"):
        make_ffcv_loader(out, train=False, **common)
    from bench.data.loaders import make_loader  # a CIFAR run's loader asks for the resize

    run = make_loader("cifar10", "test", batch_size=8, train=False, beton=out, image_size=224)
    assert isinstance(run, FFCVLoader) and [x.shape[1:] for x, *_ in run] == [(3, 224, 224)] * 3
