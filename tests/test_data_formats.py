"""On-disk formats (CIFAR pickles, ImageNet folders) and the synthetic multi-view data."""
from __future__ import annotations

import io
import pickle
import pickletools
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from bench.data import load_dataset
from bench.data.multiview import class_features, decode
from bench.errors import BenchError


# ---------------------------------------------------------------------------------------------
# A Python 2 pickle writer. The CIFAR files were written by cPickle (protocol 2) on Python 2,
# where every string is a byte `str`: it emits SHORT_BINSTRING/BINSTRING opcodes, which Python 3
# only ever *reads* (pickle.dumps of bytes gives BINBYTES or a codecs.encode call instead). numpy
# on Python 2 pickled an array as `_reconstruct(ndarray, (0,), 'b')` followed by BUILD with the
# state (1, shape, dtype, fortran, raw bytes as a str). So we emit the opcodes by hand, and
# test_py2_pickle_writer_is_faithful checks the stream with pickletools.

class Py2Pickler:
    """Writes opcodes in stream order, memoising (BINPUT) what cPickle memoised, in the same order."""

    def __init__(self) -> None:
        self.out = bytearray(b"\x80\x02")  # PROTO 2
        self.memo = 0

    def put(self) -> None:
        self.memo += 1
        self.out += b"q" + bytes([self.memo]) if self.memo < 256 else b"r" + struct.pack("<I", self.memo)

    def str_(self, s: bytes | str) -> None:  # a Python 2 str: SHORT_BINSTRING / BINSTRING
        raw = s.encode("latin1") if isinstance(s, str) else s
        self.out += b"U" + bytes([len(raw)]) if len(raw) < 256 else b"T" + struct.pack("<i", len(raw))
        self.out += raw
        self.put()

    def value(self, v) -> None:
        if v is None:
            self.out += b"N"
        elif isinstance(v, bool):
            self.out += b"\x88" if v else b"\x89"
        elif isinstance(v, int):
            self.out += (b"K" + bytes([v]) if 0 <= v < 256 else
                         b"M" + struct.pack("<H", v) if 0 <= v < 65536 else b"J" + struct.pack("<i", v))
        elif isinstance(v, (str, bytes)):
            self.str_(v)
        elif isinstance(v, tuple):  # protocol 2: TUPLE1..3 for short tuples, else MARK ... TUPLE
            short = 0 < len(v) <= 3
            self.out += b"" if short else b"("
            for x in v:
                self.value(x)
            self.out += bytes([0x84 + len(v)]) if short else b"t"
            self.put()
        elif isinstance(v, (list, dict)):  # EMPTY_x, memo, then one batch of APPENDS/SETITEMS
            self.out += b"]" if isinstance(v, list) else b"}"
            self.put()
            self.out += b"("
            for x in (v if isinstance(v, list) else [y for item in v.items() for y in item]):
                self.value(x)
            self.out += b"e" if isinstance(v, list) else b"u"
        elif isinstance(v, np.ndarray):
            self.array(v)
        else:
            raise TypeError(type(v))

    def reduce(self, module: str, name: str, args: tuple) -> None:
        self.out += f"c{module}\n{name}\n".encode()  # GLOBAL
        self.put()
        self.value(args)
        self.out += b"R"  # REDUCE
        self.put()

    def array(self, a: np.ndarray) -> None:
        # numpy (Python 2): _reconstruct(ndarray, (0,), 'b'), then BUILD with
        # (1, shape, dtype, is_fortran, raw bytes); the dtype is itself dtype('u1', 0, 1) + BUILD.
        assert a.dtype == np.uint8 and a.flags.c_contiguous
        self.out += b"cnumpy.core.multiarray\n_reconstruct\n"
        self.put()
        self.out += b"cnumpy\nndarray\n"
        self.put()
        self.value((0,))
        self.str_("b")
        self.out += b"\x87"  # TUPLE3 of (ndarray, (0,), 'b')
        self.put()
        self.out += b"R"
        self.put()
        self.out += b"("
        self.value(1)
        self.value(a.shape)
        self.reduce("numpy", "dtype", ("u1", 0, 1))
        self.value((3, "|", None, None, None, -1, -1, 0))
        self.out += b"b"  # BUILD the dtype
        self.value(False)
        self.str_(a.tobytes())
        self.out += b"t"
        self.put()
        self.out += b"b"  # BUILD the array

    def dumps(self, obj) -> bytes:
        self.value(obj)
        return bytes(self.out + b".")


def write_py2_pickle(path: Path, obj: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(Py2Pickler().dumps(obj))


UNICODE_OPS = {"UNICODE", "BINUNICODE", "SHORT_BINUNICODE", "BINUNICODE8", "BINBYTES",
               "SHORT_BINBYTES", "BINBYTES8"}


def test_py2_pickle_writer_is_faithful():
    raw = Py2Pickler().dumps({"data": np.arange(300, dtype=np.uint8).reshape(2, 150) + 100,
                              "labels": [1, 300, 70000], "batch_label": "training batch 1 of 5"})
    ops = [op.name for op, _, _ in pickletools.genops(raw)]
    assert not UNICODE_OPS & set(ops) and {"SHORT_BINSTRING", "BINSTRING"} <= set(ops)
    pickletools.dis(raw, out=io.StringIO())  # validates stack, marks and memo
    with pytest.raises(UnicodeDecodeError):  # like the real files: non-ASCII bytes need latin1
        pickle.loads(raw)
    back = pickle.loads(raw, encoding="latin1")
    assert back["labels"] == [1, 300, 70000] and back["batch_label"] == "training batch 1 of 5"
    assert back["data"].dtype == np.uint8 and back["data"][1, 149] == (299 + 100) % 256


# ---------------------------------------------------------------------------------------------
# CIFAR

def _batch(rng: np.random.Generator, n: int, n_classes: int, label_key: str) -> dict:
    out = {"batch_label": "training batch", "data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
           label_key: [int(x) for x in rng.integers(0, n_classes, n)],
           "filenames": [f"img_{i:06d}.png" for i in range(n)]}
    if label_key == "fine_labels":
        out["coarse_labels"] = [x // 5 for x in out[label_key]]
    return out


@pytest.fixture
def cifar10(tmp_path):
    rng = np.random.default_rng(0)
    folder = tmp_path / "cifar-10-batches-py"
    batches = {f"data_batch_{i}": _batch(rng, 3 + i, 10, "labels") for i in range(1, 6)}
    batches["test_batch"] = _batch(rng, 4, 10, "labels")
    for name, batch in batches.items():
        write_py2_pickle(folder / name, batch)
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    write_py2_pickle(folder / "batches.meta",
                     {"num_cases_per_batch": 10000, "label_names": names, "num_vis": 3072})
    return tmp_path, batches, names


def test_cifar10_round_trip(cifar10):
    from bench.data import val_split
    from bench.data.cifar import load

    root, batches, names = cifar10
    train = load(root, "train", variant="cifar10")  # the release's whole training set
    data = np.concatenate([batches[f"data_batch_{i}"]["data"] for i in range(1, 6)])
    assert train.images.shape == (len(data), 3, 32, 32) and train.images.dtype == torch.uint8
    assert torch.equal(train.images, torch.from_numpy(data.reshape(-1, 3, 32, 32)))
    # the layout is R, G, B planes of 32 rows: pixel (c, y, x) sits at c*1024 + y*32 + x
    assert train.images[7, 2, 5, 9] == data[7, 2 * 1024 + 5 * 32 + 9]
    assert train.labels.tolist() == sum((batches[f"data_batch_{i}"]["labels"] for i in range(1, 6)), [])
    assert train.labels.dtype == torch.int64 and train.classes == names
    # The suite's train and val splits: a fixed 10 % of each class is val, the rest train.
    rows_train, rows_val = val_split(train.labels, 0.1)
    for split, rows in (("train", rows_train), ("val", rows_val)):
        part = load_dataset("cifar10", root, split)
        assert torch.equal(part.images, train.images[rows]) and part.split == split
    test = load_dataset("cifar10", root / "cifar-10-batches-py", "test")  # the folder itself
    assert torch.equal(test.images.flatten(1), torch.from_numpy(batches["test_batch"]["data"]))
    assert test.labels.tolist() == batches["test_batch"]["labels"] and test.split == "test"


def test_cifar100_fine_labels(tmp_path):
    rng = np.random.default_rng(1)
    folder = tmp_path / "cifar-100-python"
    batches = {"train": _batch(rng, 6, 100, "fine_labels"), "test": _batch(rng, 5, 100, "fine_labels")}
    for name, batch in batches.items():
        write_py2_pickle(folder / name, batch)
    fine = [f"fine_{i}" for i in range(100)]
    write_py2_pickle(folder / "meta", {"fine_label_names": fine,
                                       "coarse_label_names": [f"coarse_{i}" for i in range(20)]})
    for split in ("train", "test"):
        got = load_dataset("cifar100", tmp_path, split)
        assert got.name == "cifar100" and got.classes == fine and got.num_classes == 100
        assert got.labels.tolist() == batches[split]["fine_labels"]
        assert torch.equal(got.images.flatten(1), torch.from_numpy(batches[split]["data"]))


def test_cifar_md5_check_refuses_written_files(cifar10):
    root = cifar10[0]
    with pytest.raises(BenchError, match="data_batch_1 fails the md5 check"):
        load_dataset("cifar10", root, "train", verify_md5=True)


def test_cifar_missing_and_corrupt(cifar10, tmp_path_factory):
    root = cifar10[0]
    empty = tmp_path_factory.mktemp("empty")
    with pytest.raises(BenchError, match=f"cifar-10-batches-py/ not found under {empty}") as err:
        load_dataset("cifar10", empty, "train")
    assert "\n" not in str(err.value) and "download=True" in str(err.value)
    batch = root / "cifar-10-batches-py" / "data_batch_3"
    batch.write_bytes(batch.read_bytes()[:500])
    with pytest.raises(BenchError, match=f"{batch} is not a readable CIFAR-10 pickle") as err:
        load_dataset("cifar10", root, "train")
    assert "\n" not in str(err.value)
    load_dataset("cifar10", root, "test")  # the other split's files are intact
    (root / "cifar-10-batches-py" / "test_batch").unlink()
    with pytest.raises(BenchError, match="test_batch missing"):
        load_dataset("cifar10", root, "test")


# ---------------------------------------------------------------------------------------------
# ImageNet folders

WNIDS = ["n01440764", "n01443537", "n01484850"]


def _image(mode: str, size: tuple[int, int], seed: int) -> Image.Image:
    rgb = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    return Image.fromarray(rgb).convert(mode)


def _imagenet(root: Path) -> dict[str, list[tuple[str, tuple[int, int], int]]]:
    """Every odd file real ImageNet has, spread over both splits; returns name, size, label."""
    kinds = [("rgb", "RGB", "JPEG"), ("gray", "L", "JPEG"), ("cmyk", "CMYK", "JPEG"),
             ("png", "RGB", "PNG")]
    made: dict[str, list] = {"train": [], "val": []}
    for split in made:
        for label, wnid in enumerate(WNIDS):
            (root / split / wnid).mkdir(parents=True)
            for k, (tag, mode, fmt) in enumerate(kinds):
                if split == "val" and k != label:
                    continue
                size = (20 + k + label, 12 + 2 * k)
                name = f"{wnid}_{tag}.JPEG"
                _image(mode, size, label * 10 + k).save(root / split / wnid / name, format=fmt)
                made[split].append((name, size, label))
    return made


def test_imagenet_every_image_loads_as_rgb(tmp_path):
    made = _imagenet(tmp_path)
    with Image.open(tmp_path / "train" / WNIDS[0] / f"{WNIDS[0]}_png.JPEG") as png:
        assert png.format == "PNG"
    with Image.open(tmp_path / "train" / WNIDS[0] / f"{WNIDS[0]}_cmyk.JPEG") as cmyk:
        assert cmyk.mode == "CMYK"
    names = {}
    for split, folder in (("train", "train"), ("val", "train"), ("test", "val")):
        ds = load_dataset("imagenet", tmp_path, split)
        names[split] = [Path(path).name for path, _ in ds.samples]
        assert ds.classes == WNIDS and ds.num_classes == 3 and ds.split == split
        assert ds.targets == [label for _, label in ds.samples]
        expected = {name: (size, label) for name, size, label in made[folder]}
        for (path, target), i in zip(ds.samples, range(len(ds))):
            img, label = ds[i]
            assert isinstance(img, Image.Image) and img.mode == "RGB"
            assert (img.size, label) == expected[Path(path).name] and label == target
    # val is one image of each class of train/ (1 %, at least one), train the rest: together all of train/.
    assert sorted(names["train"] + names["val"]) == sorted(name for name, _, _ in made["train"])
    assert len(names["val"]) == 3 and not set(names["val"]) & set(names["train"])
    assert sorted(names["test"]) == sorted(name for name, _, _ in made["val"])
    split = next(s for s in ("train", "val") if f"{WNIDS[0]}_png.JPEG" in names[s])
    png, _ = load_dataset("imagenet", tmp_path, split)[names[split].index(f"{WNIDS[0]}_png.JPEG")]
    # lossless: exact pixels survive the PNG-named-JPEG path
    assert np.array_equal(np.asarray(png), np.asarray(_image("RGB", (23, 18), 3)))
    ds = load_dataset("imagenet", tmp_path, "test", transform=lambda im: im.size)
    assert ds[0] == ((20, 12), 0)


def test_imagenet_bad_layouts(tmp_path):
    with pytest.raises(BenchError, match="does not exist"):
        load_dataset("imagenet", tmp_path / "nope", "train")
    (tmp_path / "train" / WNIDS[0]).mkdir(parents=True)
    _image("RGB", (8, 8), 0).save(tmp_path / "train" / WNIDS[0] / "a.JPEG")
    with pytest.raises(BenchError, match=f"{tmp_path / 'val'} not found: expected"):
        load_dataset("imagenet", tmp_path, "test")
    (tmp_path / "val").mkdir()
    _image("RGB", (8, 8), 0).save(tmp_path / "val" / "ILSVRC2012_val_00000001.JPEG")
    with pytest.raises(BenchError, match="has no class subfolders"):  # the flat official val/
        load_dataset("imagenet", tmp_path, "test")
    (tmp_path / "val" / WNIDS[1]).mkdir()
    with pytest.raises(BenchError, match="they differ"):
        load_dataset("imagenet", tmp_path, "test")
    (tmp_path / "train" / WNIDS[1]).mkdir()  # same wnids now, but a class folder is empty
    with pytest.raises(BenchError, match=f"{WNIDS[1]}.*expected .*train/<wnid>/") as err:
        load_dataset("imagenet", tmp_path, "train")
    assert "\n" not in str(err.value)


# ---------------------------------------------------------------------------------------------
# multiview

SMALL = dict(n_train=600, n_test=400)


def test_multiview_shapes_and_determinism():
    a = load_dataset("multiview", None, "train", **SMALL)
    assert a.images.shape == (600, 3, 16, 16) and a.images.dtype == torch.uint8
    assert a.labels.dtype == torch.int64 and a.num_classes == 10
    assert torch.bincount(a.labels).tolist() == [60] * 10
    sv = a.extras["single_view"]
    assert sv.dtype == torch.bool and abs(sv.float().mean().item() - 0.2) < 0.02
    b = load_dataset("multiview", None, "train", **SMALL)
    assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)
    assert torch.equal(sv, b.extras["single_view"])
    other = load_dataset("multiview", None, "train", seed=1, **SMALL)
    assert not torch.equal(a.images, other.images)
    test = load_dataset("multiview", None, "test", **SMALL)
    assert len(test) == 400 and not torch.equal(a.images[:400], test.images)
    half = load_dataset("multiview", None, "test", single_view_fraction=0.5, **SMALL)
    assert abs(half.extras["single_view"].float().mean().item() - 0.5) < 0.02


def test_multiview_views_present_as_documented():
    data = load_dataset("multiview", None, "train", seed=3, **SMALL)
    feats = class_features(3, 10, 2, 48)                        # (K, V, d)
    proj = torch.einsum("npd,kvd->nkvp", decode(data.images), feats).amax(-1)  # best patch
    own = proj[torch.arange(len(data)), data.labels]            # (N, V)
    present = (own > 0.3).sum(1)
    sv = data.extras["single_view"]
    assert (present[~sv] == 2).all() and (present[sv] == 1).all()
    others = proj.clone()
    others[torch.arange(len(data)), data.labels] = 0
    assert others.max() < 0.3                                     # only small feature noise


def test_multiview_train_and_test_share_features():
    from sklearn.linear_model import LogisticRegression

    def pooled(split: str):  # patch-sum: position-invariant, linear in the class features
        s = load_dataset("multiview", None, split, seed=5, **SMALL)
        return decode(s.images).sum(1).numpy(), s.labels.numpy()

    clf = LogisticRegression(max_iter=500).fit(*pooled("train"))
    assert clf.score(*pooled("test")) > 0.9                      # chance: 0.1


def test_multiview_val_is_its_own_stream_and_the_testbed_a_preset():
    val = load_dataset("multiview", None, "val", n_val=300, **SMALL)
    train, test = (load_dataset("multiview", None, split, **SMALL) for split in ("train", "test"))
    assert len(val) == 300 and val.split == "val"
    assert not torch.equal(val.images[:300], train.images[:300]) and not torch.equal(val.images, test.images[:300])
    from bench.data import DATASETS, TESTBED

    assert DATASETS["testbed"].options == TESTBED and TESTBED["n_test"] >= 20_000
    small = load_dataset("testbed", None, "val", n_val=50)  # the preset's values, any of them overridden
    direct = load_dataset("multiview", None, "val", **{**TESTBED, "n_val": 50})
    assert torch.equal(small.images, direct.images)


def test_val_is_a_fixed_stratified_part_of_train_and_disjoint_from_it():
    from bench.data import val_split

    from bench.data.digits import load as digits_load  # the module's own train: val and train together

    whole = digits_load(None, "train")
    train, val = load_dataset("digits", None, "train"), load_dataset("digits", None, "val")
    assert len(train) + len(val) == len(whole) and val.split == "val"
    rows_train, rows_val = val_split(whole.labels, 0.2)
    assert not set(rows_train.tolist()) & set(rows_val.tolist())
    assert torch.equal(val.images, whole.images[rows_val]) and torch.equal(train.images, whole.images[rows_train])
    per_class = torch.bincount(val.labels) / torch.bincount(whole.labels)
    assert ((per_class - 0.2).abs() < 0.01).all()  # 20 % of every class
    assert torch.equal(load_dataset("digits", None, "val").images, val.images)  # fixed
    train_rows, val_rows = val_split(torch.tensor([0, 0, 1]), 0.5)  # a class of one image stays in train
    assert train_rows.tolist() in ([0, 2], [1, 2]) and len(val_rows) == 1


def test_multiview_bad_sizes():
    with pytest.raises(BenchError, match=r"num_classes\*views = 10\*4 = 40 .* d = 16"):
        load_dataset("multiview", None, "train", channels=1, views=4)
    with pytest.raises(BenchError, match="not a multiple of patch"):
        load_dataset("multiview", None, "train", image_size=15)


@pytest.mark.parametrize("damage", ["empty", "truncated", "not an image"])
def test_an_unreadable_imagenet_image_is_named_in_one_line(tmp_path, damage):
    _imagenet(tmp_path)
    bad = tmp_path / "train" / WNIDS[1] / f"{WNIDS[1]}_rgb.JPEG"
    data = bad.read_bytes()
    bad.write_bytes({"empty": b"", "truncated": data[:len(data) // 2], "not an image": b"<html>404</html>"}[damage])
    folder = load_dataset("imagenet", tmp_path, "train")
    index = [Path(p).name for p, _ in folder.samples].index(bad.name)
    with pytest.raises(BenchError, match=f"{bad}: unreadable image") as err:
        folder[index]
    assert "\n" not in str(err.value)


# ---------------------------------------------------------------------------------------------
# Resolution: CIFAR resized on the device to the recipe's image_size

CIFAR_POOL = """pools:
  - arch: vgg11
    dataset: cifar10
    members: 2
    recipe: {{image_size: {size}, data_root: {root}}}
methods: [single]
n_teachers: 1
seeds: 1
"""


def test_a_cifar_pool_at_224_px_is_accepted_and_its_loaders_yield_224_px(tmp_path):
    import torch.nn.functional as F

    from bench.grid import load_grid
    from bench.data.loaders import make_loader
    from bench.data.synthetic import write_cifar
    from bench.train_config import TrainConfig

    write_cifar(tmp_path, "cifar10", {"train": 3, "test": 1})  # 20 train, 10 val, 10 test images
    grid = tmp_path / "g.yaml"
    grid.write_text(CIFAR_POOL.format(size=224, root=tmp_path))
    (pool,) = load_grid(grid, "paper").pools
    cfg = TrainConfig(pool.arch, pool.dataset, "paper", **pool.recipe).resolved()
    assert cfg.image_size == 224

    def loader(split, size, train):
        return make_loader("cifar10", split, batch_size=8, train=train, seed=3, root=tmp_path, image_size=size)

    big, small = loader("train", cfg.image_size, True), loader("train", 32, True)
    for (x, y, i, v), (xs, ys, is_, vs) in zip(big, small):
        assert x.shape == (8, 3, 224, 224)
        # The same order and augmentation draws, made at 32 px and then resized (normalising is
        # per channel and affine, so it commutes with the bilinear resize).
        assert torch.equal(y, ys) and torch.equal(i, is_) and torch.equal(v, vs) and (v > 0).any()
        expected = F.interpolate(xs, size=(224, 224), mode="bilinear", align_corners=False, antialias=True)
        torch.testing.assert_close(x, expected, atol=1e-4, rtol=0)
        # The views a soft-label cache makes are the training batch's pixels.
        assert torch.equal(big.view_images(i, v), x)
    for split, n in (("val", 10), ("test", 10)):
        xs = torch.cat([x for x, *_ in loader(split, 224, False)])
        assert xs.shape == (n, 3, 224, 224)


def test_at_its_own_size_a_loader_does_not_resize(tmp_path, monkeypatch):
    """At the stored resolution the batches are what they always were: no interpolation at all, the
    pixels exactly the augmented stored images, normalised."""
    import torch.nn.functional as F

    from bench.data import DATASETS
    from bench.data.loaders import make_loader
    from bench.data.memory import AUGMENTATIONS
    from bench.data.synthetic import write_cifar

    write_cifar(tmp_path, "cifar10", {"train": 3, "test": 1})
    loaders = {("cifar10", 32): make_loader("cifar10", "train", batch_size=8, train=True, seed=1, root=tmp_path,
                                            image_size=32),
               ("cifar10", None): make_loader("cifar10", "train", batch_size=8, train=True, seed=1, root=tmp_path),
               ("digits", 16): make_loader("digits", "val", batch_size=64, train=True, seed=1, image_size=16)}
    calls = []
    monkeypatch.setattr(F, "interpolate", lambda *a, **k: calls.append(a))
    for (name, _), loader in loaders.items():
        images = {int(k): img for k, img in zip(loader.indices, loader.images)}
        augment = AUGMENTATIONS[DATASETS[name].augment]
        for x, _, i, v in loader:
            raw = augment.apply(torch.stack([images[int(k)] for k in i]).float(), v)
            assert torch.equal(x, (raw - loader.mean) / loader.std)
    assert calls == []


def test_a_resolution_the_data_set_cannot_be_given_at_is_named_with_the_valid_ones():
    from bench.data import size_problem

    assert size_problem("cifar10", 224) is None and size_problem("imagenet", 160) is None
    assert size_problem("testbed", 16) is None and size_problem("digits", 32) is None
    assert size_problem("testbed", 224) == ("testbed exists at 16 px only (its images are a grid of 4 px patches "
                                           "that other sizes would redraw or break); valid: 16")
    assert size_problem("digits", 6) == "digits cannot be made at 6 px; valid: a whole number >= 8"
