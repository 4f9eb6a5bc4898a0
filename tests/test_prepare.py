"""`python -m bench.prepare`: what a grid's paper-scale jobs read, worked out and prepared offline.

No test reaches the network: CIFAR is written small in the release's pickle format (with
torchvision's md5 table pointed at the written files where a test needs them to match), ImageNet
as a few JPEGs and a devkit archive in the release's layout (its md5 pointed at the written one),
and timm's weights as files in a Hugging Face hub cache of the real layout.
"""
from __future__ import annotations

import gc
import hashlib
import io
import os
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from bench.data import load_dataset
from bench.errors import BenchError
from bench.grid import load_grid
from bench.prepare import imagenet_val
from bench.prepare.cli import main
from bench.prepare.needs import BetonUse, DataUse, Needs, WeightUse, grid_needs
from test_data_formats import _batch, write_py2_pickle
from test_ffcv import need_ffcv

WNIDS = ["n01440764", "n01443537", "n01484850"]
VIT_REPO = "timm/vit_base_patch32_224.augreg_in21k_ft_in1k"  # timm's default tag of vit_base_patch32_224
RESNET_REPO = "timm/resnet50.tv_in1k"


def run(capsys, *args: str) -> tuple[int, str, str]:
    try:
        code = main([str(a) for a in args])
    except SystemExit as stop:
        code = stop.code
    out, err = capsys.readouterr()
    return code, out, err


def files_under(folder: Path) -> dict[str, int]:
    """Every file under `folder` and its mtime: what a command wrote or moved shows as a difference."""
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in folder.rglob("*") if p.is_file()}


# ---------------------------------------------------------------------------------------------
# Grids, data and caches, small and in their real formats

def write_grid(tmp_path: Path, pools: list[str], name: str = "grid") -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text("n_teachers: 1\nseeds: 1\npools:\n" + "".join(pools) + "methods: [single]\n")
    return path


def pool(name: str, arch: str, dataset: str, init: str = "scratch", **recipe: str) -> str:
    items = ", ".join(f"{k}: {v}" for k, v in recipe.items())
    return (f"  - {{name: {name}, arch: {arch}, dataset: {dataset}, init: {init}, members: 2,\n"
            f"     recipe: {{{items}}}}}\n")


def write_cifar10(root: Path) -> Path:
    """The CIFAR-10 release folder, a few images per batch, in the release's Python 2 pickles."""
    rng = np.random.default_rng(0)
    folder = root / "cifar-10-batches-py"
    for i in range(1, 6):
        write_py2_pickle(folder / f"data_batch_{i}", _batch(rng, 6 + i, 10, "labels"))
    write_py2_pickle(folder / "test_batch", _batch(rng, 9, 10, "labels"))
    write_py2_pickle(folder / "batches.meta", {"num_cases_per_batch": 10000, "num_vis": 3072,
                                               "label_names": [f"class{i}" for i in range(10)]})
    return folder


def write_cifar100(root: Path) -> Path:
    rng = np.random.default_rng(1)
    folder = root / "cifar-100-python"
    write_py2_pickle(folder / "train", _batch(rng, 30, 100, "fine_labels"))
    write_py2_pickle(folder / "test", _batch(rng, 10, 100, "fine_labels"))
    write_py2_pickle(folder / "meta", {"fine_label_names": [f"c{i}" for i in range(100)],
                                       "coarse_label_names": [f"s{i}" for i in range(20)]})
    return folder


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def release_md5s_of(monkeypatch, folder: Path, cls_name: str = "CIFAR10") -> None:
    """torchvision's md5 table of the release (read by the md5 check) pointed at the written files."""
    import torchvision.datasets as tvd

    cls = getattr(tvd, cls_name)
    monkeypatch.setattr(cls, "train_list", [[n, md5(folder / n)] for n, _ in cls.train_list])
    monkeypatch.setattr(cls, "test_list", [[n, md5(folder / n)] for n, _ in cls.test_list])
    monkeypatch.setattr(cls, "meta", {**cls.meta, "md5": md5(folder / cls.meta["filename"])})


def jpeg(path: Path, seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (10, 12, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path, format="JPEG")


def write_devkit(path: Path, synsets: list[tuple[int, str, int]], ground_truth: list[int]) -> Path:
    """The ILSVRC2012 devkit's archive as released: meta.mat's `synsets` struct array (id, wnid,
    words, gloss, num_children, children, wordnet_height, num_train_images; the classes are the
    leaves) and one class id per val image in ILSVRC2012_validation_ground_truth.txt."""
    import scipy.io

    fields = ["ILSVRC2012_ID", "WNID", "words", "gloss", "num_children", "children", "wordnet_height",
              "num_train_images"]
    table = np.empty((len(synsets), 1), dtype=[(f, object) for f in fields])
    for row, (ident, wnid, children) in enumerate(synsets):
        table[row, 0] = (ident, wnid, f"words of {wnid}", "a gloss", children, np.zeros((1, children)),
                         0 if children == 0 else 1, 1300 if children == 0 else 0)
    mat = io.BytesIO()
    scipy.io.savemat(mat, {"synsets": table})
    members = {imagenet_val.META_MAT: mat.getvalue(),
               imagenet_val.GROUND_TRUTH: "".join(f"{i}\n" for i in ground_truth).encode()}
    with tarfile.open(path, "w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


# Val image n's class id (the devkit's ILSVRC2012_ID); ids 1-3 are the leaves, 4 an inner node.
GROUND_TRUTH = [2, 1, 3, 1, 3, 2]
SYNSETS = [(1, WNIDS[0], 0), (2, WNIDS[1], 0), (3, WNIDS[2], 0), (4, "n00001740", 3)]


@pytest.fixture
def imagenet(tmp_path, monkeypatch):
    """A flat val/ of ILSVRC2012_val_<n>.JPEG as the val archive extracts, train/<wnid>/, and the
    devkit beside them (its md5 taken as the release's)."""
    root = tmp_path / "imagenet"
    for n in range(1, len(GROUND_TRUTH) + 1):
        jpeg(root / "val" / f"ILSVRC2012_val_{n:08d}.JPEG", n)
    for k, wnid in enumerate(WNIDS):
        jpeg(root / "train" / wnid / f"{wnid}_{k}.JPEG", 100 + k)
    devkit = write_devkit(root / imagenet_val.DEVKIT_NAME, SYNSETS, GROUND_TRUTH)
    monkeypatch.setattr(imagenet_val, "DEVKIT_MD5", md5(devkit))
    return root


def cache_weights(hub: Path, repo: str, size: int = 1000) -> Path:
    """A file in the Hugging Face hub cache's layout, as hf_hub_download leaves it."""
    revision = "0" * 40
    folder = hub / f"models--{repo.replace('/', '--')}"
    (folder / "refs").mkdir(parents=True, exist_ok=True)
    (folder / "refs" / "main").write_text(revision)
    file = folder / "snapshots" / revision / "model.safetensors"
    file.parent.mkdir(parents=True, exist_ok=True)
    file.write_bytes(b"\0" * size)
    return file


@pytest.fixture
def hub(tmp_path, monkeypatch):
    """An empty hub cache in place of the user's, online, and no BENCH_PRETRAINED folder."""
    from huggingface_hub import constants

    folder = tmp_path / "hub"
    folder.mkdir()
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(folder))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.delenv("BENCH_PRETRAINED", raising=False)
    return folder


# ---------------------------------------------------------------------------------------------
# (a) What a grid reads

def test_a_grids_needs_are_its_data_sets_weights_and_betons_with_the_pools_that_read_them(tmp_path):
    data, imagenet_root = tmp_path / "data", tmp_path / "imagenet"
    grid = load_grid(write_grid(tmp_path, [
        pool("c10", "vgg11", "cifar10", beton_train=tmp_path / "c10_train.beton",
             beton_test=tmp_path / "c10_test.beton"),
        pool("c10b", "vgg11", "cifar10", beton_test=tmp_path / "c10_test.beton"),
        pool("c100", "resnet50", "cifar100", "pretrained", image_size=224, pretrained_weights="resnet50.tv_in1k"),
        pool("vit", "vit_b32", "imagenet", "pretrained", data_root=imagenet_root),
        pool("vit2", "vit_b32", "imagenet", "pretrained", data_root=imagenet_root, lr=1.0e-4),
    ]), "paper")
    needs = grid_needs(grid, data, ("data", "weights", "betons"))
    assert needs.data == (DataUse("cifar10", data, ("c10", "c10b")), DataUse("cifar100", data, ("c100",)),
                          DataUse("imagenet", imagenet_root, ("vit", "vit2")))  # a recipe's data_root wins
    assert needs.weights == (WeightUse("resnet50.tv_in1k", "resnet50", 100, 224, ("c100",)),
                             WeightUse("vit_base_patch32_224", "vit_b32", 1000, 224, ("vit", "vit2")))
    assert needs.betons == (BetonUse(tmp_path / "c10_test.beton", "cifar10", "test", data, ("c10", "c10b")),
                            BetonUse(tmp_path / "c10_train.beton", "cifar10", "train", data, ("c10",)))
    # Only the kinds asked for; weights need no data root.
    only_weights = grid_needs(grid, None, ("weights",))
    assert only_weights.data == only_weights.betons == () and len(only_weights.weights) == 2
    with pytest.raises(BenchError, match="pool c10: dataset 'cifar10' needs a data root"):
        grid_needs(grid, None, ("data",))
    # At tiny scale the grid's pools are the testbeds, built by the suite: nothing to prepare.
    tiny = load_grid(write_grid(tmp_path, [pool("t", "vgg11", "testbed", "pretrained")], "tiny"), "tiny")
    assert grid_needs(tiny, None, ("data", "weights", "betons")) == Needs((), (), ())


def test_one_beton_named_for_two_splits_is_refused(tmp_path):
    same = tmp_path / "one.beton"
    grid = load_grid(write_grid(tmp_path, [pool("a", "vgg11", "cifar10", beton_train=same),
                                           pool("b", "vgg11", "cifar10", beton_test=same)]), "paper")
    with pytest.raises(BenchError, match="one file holds one split of one data set"):
        grid_needs(grid, tmp_path, ("betons",))


# ---------------------------------------------------------------------------------------------
# (b) CIFAR

def test_a_present_cifar_release_is_done_when_its_md5s_match_and_named_when_they_do_not(tmp_path, capsys,
                                                                                       monkeypatch):
    data = tmp_path / "data"
    folder = write_cifar10(data)
    grid = write_grid(tmp_path, [pool("c10", "vgg11", "cifar10")])
    # The written files are not the release's: the md5 check names them, and nothing is fetched.
    code, out, err = run(capsys, "--grid", grid, "--data-root", data, "--what", "data")
    assert code == 2 and "data_batch_1, data_batch_2, data_batch_3 ... fail the release's md5 check" in err
    assert "rerun with --download" in err and len(err.strip().splitlines()) == 1
    before = files_under(data)
    release_md5s_of(monkeypatch, folder)
    code, out, err = run(capsys, "--grid", grid, "--data-root", data, "--what", "data")
    assert code == 0 and err == ""
    assert f"[data] cifar10: skipped, done already ({folder}: md5s match)" in out
    assert "done: 0 steps run, 1 skipped" in out and files_under(data) == before
    # The release folder itself as the data root, as the jobs accept it.
    code, out, _ = run(capsys, "--grid", grid, "--data-root", folder, "--what", "data")
    assert code == 0 and f"[data] cifar10: skipped, done already ({folder}: md5s match)" in out


def test_a_missing_cifar_release_without_download_stops_in_one_line_before_anything_is_written(tmp_path,
                                                                                              capsys):
    data = tmp_path / "data"
    data.mkdir()
    grid = write_grid(tmp_path, [pool("c100", "vgg11", "cifar100")])
    code, out, err = run(capsys, "--grid", grid, "--data-root", data)
    assert code == 2 and err == (
        f"error: cifar100: {data / 'cifar-100-python'} not found: download "
        f"https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz and extract it in {data} (it unpacks to "
        f"cifar-100-python/), or rerun with --download\n")
    assert "[data] cifar100: cannot be prepared" in out and "done:" not in out
    assert list(data.iterdir()) == []
    # Half a release is named by what it lacks.
    folder = write_cifar10(data)
    (folder / "data_batch_4").unlink()
    code, _, err = run(capsys, "--grid", write_grid(tmp_path, [pool("c10", "vgg11", "cifar10")]), "--data-root",
                       data)
    assert code == 2 and f"{folder} lacks data_batch_4:" in err


# ---------------------------------------------------------------------------------------------
# (c) ImageNet's val/

def test_a_flat_val_is_sorted_into_wnid_folders_by_the_devkit_and_a_rerun_is_skipped(imagenet, tmp_path, capsys):
    grid = write_grid(tmp_path, [pool("vit", "vit_b32", "imagenet", data_root=imagenet)])
    code, out, err = run(capsys, "--grid", grid, "--what", "data")
    assert code == 0 and err == "", err
    assert "val flat: 6 images to move into 3 wnid folders by ILSVRC2012_devkit_t12.tar.gz's labels" in out
    assert "[data] imagenet: moved 6 images into wnid folders; 3 wnid folders" in out
    val = imagenet / "val"
    assert sorted(str(p.relative_to(val)) for p in val.rglob("*.JPEG")) == sorted(
        f"{WNIDS[c - 1]}/ILSVRC2012_val_{n:08d}.JPEG" for n, c in enumerate(GROUND_TRUTH, 1))
    # The loader reads it, each image labelled with its class (train/'s wnids, sorted).
    test = load_dataset("imagenet", imagenet, "test")
    assert sorted((Path(p).name, label) for p, label in test.samples) == sorted(
        (f"ILSVRC2012_val_{n:08d}.JPEG", c - 1) for n, c in enumerate(GROUND_TRUTH, 1))
    before = files_under(imagenet)
    code, out, _ = run(capsys, "--grid", grid, "--what", "data")
    assert code == 0 and "[data] imagenet: skipped, done already" in out and "done: 0 steps run, 1 skipped" in out
    assert files_under(imagenet) == before


def test_a_sort_killed_half_way_moves_only_the_flat_images(imagenet, tmp_path, capsys):
    (imagenet / "val" / WNIDS[1]).mkdir()
    os.rename(imagenet / "val" / "ILSVRC2012_val_00000001.JPEG",
              imagenet / "val" / WNIDS[1] / "ILSVRC2012_val_00000001.JPEG")  # image 1 is class 2
    grid = write_grid(tmp_path, [pool("vit", "vit_b32", "imagenet", data_root=imagenet)])
    code, out, _ = run(capsys, "--grid", grid, "--what", "data")
    assert code == 0 and "(1 sorted by an earlier run)" in out and "moved 5 images" in out


@pytest.mark.parametrize("damage, message", [
    ("md5", "is not the release's ILSVRC2012_devkit_t12.tar.gz"),
    ("extra", "holds 7 ILSVRC2012_val_*.JPEG images (7 flat, 0 in class folders) but "),
    ("misplaced", "val/n01440764/ILSVRC2012_val_00000001.JPEG is in folder n01440764 but "),
    ("train", "labels 3 wnids"),
])
def test_a_val_the_devkit_does_not_describe_is_refused_and_nothing_moves(imagenet, tmp_path, capsys,
                                                                         monkeypatch, damage, message):
    if damage == "md5":
        monkeypatch.setattr(imagenet_val, "DEVKIT_MD5", "0" * 32)
    elif damage == "extra":
        jpeg(imagenet / "val" / "ILSVRC2012_val_00000007.JPEG", 7)
    elif damage == "misplaced":  # image 1 is class 2, not 1: val/ was sorted by other labels
        os.renames(imagenet / "val" / "ILSVRC2012_val_00000001.JPEG",
                   imagenet / "val" / WNIDS[0] / "ILSVRC2012_val_00000001.JPEG")
    else:
        jpeg(imagenet / "train" / "n09999999" / "x.JPEG", 0)
    before = files_under(imagenet)
    grid = write_grid(tmp_path, [pool("vit", "vit_b32", "imagenet", data_root=imagenet)])
    code, _, err = run(capsys, "--grid", grid, "--what", "data")
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert files_under(imagenet) == before


# ---------------------------------------------------------------------------------------------
# (e) timm's pretrained weights

def test_weights_in_the_hub_cache_are_done_and_missing_ones_are_planned_or_refused_offline(tmp_path, capsys,
                                                                                        hub, monkeypatch):
    grid = write_grid(tmp_path, [
        pool("c100", "resnet50", "cifar100", "pretrained", image_size=224, pretrained_weights="resnet50.tv_in1k"),
        pool("vit", "vit_b32", "imagenet", "pretrained")])
    cached = cache_weights(hub, VIT_REPO)  # the architecture's default weights, under timm's default tag
    before = files_under(hub)
    code, out, err = run(capsys, "--grid", grid, "--what", "weights", "--dry-run")
    assert code == 0 and err == ""
    assert f"[weights] vit_base_patch32_224 (pool vit): cached: {cached}" in out
    # resnet50's weights are not there: a fetch, its size that of the network's 25.6M values.
    assert f"[weights] resnet50.tv_in1k (pool c100): not cached: fetch into {hub}: disk ~98 MiB" in out
    assert "dry run: nothing written" in out and files_under(hub) == before

    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    code, _, err = run(capsys, "--grid", grid, "--what", "weights")
    assert code == 2 and err.startswith(f"error: resnet50.tv_in1k is not in {hub} and HF_HUB_OFFLINE is set here")

    cache_weights(hub, RESNET_REPO)
    code, out, _ = run(capsys, "--grid", grid, "--what", "weights")
    assert code == 0 and out.count("skipped, done already (cached)") == 2
    assert f"weights: 2 of 2 in {hub}" in out and "done: 0 steps run, 2 skipped" in out


def test_a_fetch_must_leave_the_weights_where_offline_jobs_look(tmp_path, capsys, hub, monkeypatch):
    """The fetch is the jobs' own load (stood in for: no network here); what counts is the cache after it."""
    from bench import models

    grid = write_grid(tmp_path, [pool("vit", "vit_b32", "imagenet", "pretrained")])
    loads = []
    monkeypatch.setattr(models, "load_pretrained", lambda *args, **kw: loads.append((args, kw)))
    code, _, err = run(capsys, "--grid", grid, "--what", "weights")
    assert code == 2 and "timm loaded vit_base_patch32_224 but no copy of it is in" in err
    assert loads == [(("vit_b32", 1000, 224, "paper", 3), {"weights": "vit_base_patch32_224"})]

    monkeypatch.setattr(models, "load_pretrained", lambda *args, **kw: cache_weights(hub, VIT_REPO))
    code, out, _ = run(capsys, "--grid", grid, "--what", "weights")
    assert code == 0 and "[weights] vit_base_patch32_224 (pool vit): fetched: " in out
    assert "done: 1 step run, 0 skipped" in out


def test_weights_read_from_a_bench_pretrained_folder(tmp_path, capsys, hub, monkeypatch):
    grid = write_grid(tmp_path, [pool("vit", "vit_b32", "imagenet", "pretrained")])
    monkeypatch.setenv("BENCH_PRETRAINED", str(tmp_path / "weights"))
    code, _, err = run(capsys, "--grid", grid, "--what", "weights")
    assert code == 2 and "holds no vit_base_patch32_224.safetensors" in err
    (tmp_path / "weights").mkdir()
    (tmp_path / "weights" / "vit_base_patch32_224.safetensors").write_bytes(b"\0")
    code, out, _ = run(capsys, "--grid", grid, "--what", "weights")
    assert code == 0 and "skipped, done already" in out and "jobs read BENCH_PRETRAINED=" in out


# ---------------------------------------------------------------------------------------------
# (d, g) Betons, and a rerun once everything is done

# A collected FFCV loader may print numba's harmless finalizer KeyError (see tests/test_ffcv.py).
@pytest.mark.filterwarnings("ignore:Exception ignored in. <finalize object:pytest.PytestUnraisableExceptionWarning")
def test_betons_are_written_readable_by_the_ffcv_loader_and_a_rerun_does_nothing(tmp_path, capsys, hub,
                                                                                 monkeypatch):
    need_ffcv()  # skips only where ffcv does not import
    from bench.data.loaders import make_loader

    data = tmp_path / "data"
    release_md5s_of(monkeypatch, write_cifar10(data))
    betons = tmp_path / "betons"
    grid = write_grid(tmp_path, [
        pool("c10", "vgg11", "cifar10", beton_train=betons / "train.beton", beton_test=betons / "test.beton"),
        pool("c100", "resnet50", "cifar100", "pretrained", image_size=224, pretrained_weights="resnet50.tv_in1k",
             data_root=data)])
    release_md5s_of(monkeypatch, write_cifar100(data), "CIFAR100")
    cache_weights(hub, RESNET_REPO)
    code, out, err = run(capsys, "--grid", grid, "--data-root", data)
    assert code == 0, err
    assert f"[betons] {betons / 'test.beton'} (cifar10 test, pool c10): missing: write it from {data}" in out
    assert f"wrote {betons / 'test.beton'}" in out and f"wrote {betons / 'train.beton'}" in out
    assert "done: 2 steps run, 3 skipped" in out
    assert sorted(p.name for p in betons.iterdir()) == ["test.beton", "train.beton"]  # no temporary left

    # The jobs' loader reads each file as the split it stands for: the same images and labels.
    for split in ("test", "train"):
        common = dict(batch_size=8, train=False, root=data, image_size=32)
        ffcv = list(make_loader("cifar10", split, beton=betons / f"{split}.beton", **common))
        memory = list(make_loader("cifar10", split, **common))
        assert len(torch.cat([y for _, y, *_ in ffcv])) == len(load_dataset("cifar10", data, split))
        torch.testing.assert_close(torch.cat([x for x, *_ in ffcv]), torch.cat([x for x, *_ in memory]))
        assert torch.equal(torch.cat([y for _, y, *_ in ffcv]), torch.cat([y for _, y, *_ in memory]))
        del ffcv
        gc.collect()  # FFCV's loaders go here, not in a later test

    # Everything done: the rerun moves, writes and fetches nothing, and says so for every step.
    before = files_under(tmp_path)
    code, out, _ = run(capsys, "--grid", grid, "--data-root", data)
    ran = [line for line in out.splitlines() if line.startswith("[")]
    assert code == 0 and len(ran) == 5 and all(": skipped, done already" in line for line in ran), out
    assert "done: 0 steps run, 5 skipped" in out and files_under(tmp_path) == before


def test_a_missing_beton_needs_a_data_root_where_its_data_set_does(tmp_path, capsys):
    grid = write_grid(tmp_path, [pool("c10", "vgg11", "cifar10", beton_test=tmp_path / "t.beton")])
    code, out, err = run(capsys, "--grid", grid, "--what", "betons")
    assert code == 2 and "t.beton is missing and is written from cifar10, which needs a data root" in err


# ---------------------------------------------------------------------------------------------
# (f) Bad input, and --dry-run

def test_a_misspelled_option_lists_the_valid_ones(tmp_path, capsys):
    code, out, err = run(capsys, "--grid", "main_table", "--data-rot", tmp_path)
    assert code == 2 and out == ""
    assert err.startswith("error: unrecognized arguments: --data-rot") and len(err.strip().splitlines()) == 1
    assert "valid options: --data-root --download --dry-run --grid --help --imagenet-devkit --scale --what" in err


@pytest.mark.parametrize("what", ["wieghts", "data,betns", ","])
def test_an_unknown_what_value_lists_the_valid_ones(tmp_path, capsys, what):
    code, out, err = run(capsys, "--grid", "main_table", "--what", what, "--data-root", tmp_path)
    assert code == 2 and out == "" and "valid: betons, data, weights" in err


def test_a_dry_run_writes_nothing(imagenet, tmp_path, capsys, hub):
    data = tmp_path / "data"
    data.mkdir()
    grid = write_grid(tmp_path, [
        pool("c10", "vgg11", "cifar10", beton_test=tmp_path / "betons" / "t.beton"),
        pool("vit", "vit_b32", "imagenet", "pretrained", data_root=imagenet)])
    before = files_under(tmp_path)
    code, out, err = run(capsys, "--grid", grid, "--data-root", data, "--download", "--dry-run")
    assert code == 0 and err == "", err
    assert "[data] cifar10: " + f"{data / 'cifar-10-batches-py'} not found: download " in out
    assert "disk ~341 MiB (the archive is kept)" in out
    assert "[data] imagenet: " in out and "6 images to move into 3 wnid folders" in out
    assert "[weights] vit_base_patch32_224 (pool vit): not cached" in out
    assert "dry run: nothing written" in out and "done:" not in out
    assert files_under(tmp_path) == before and not (tmp_path / "betons").exists()
