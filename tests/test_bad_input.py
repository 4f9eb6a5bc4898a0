"""Bad input stops before anything runs: one line naming the file, the key path, the value and
what is allowed, exit code 2, and not a byte written under the teachers and results roots."""
import hashlib
import os
from pathlib import Path

import pytest

from bench.data import load_dataset
from bench.errors import BenchError
from bench.sweep import main

POOL = """pools:
  - arch: vgg11
    dataset: digits
    members: 6
    recipe: {recipe}
methods: [single]
"""


def tree_digest(*roots: Path) -> str:
    """sha256 over every file's path and bytes under `roots` (absent roots count as empty)."""
    h = hashlib.sha256()
    for root in roots:
        for path in sorted(p for p in root.rglob("*") if p.is_file()) if root.exists() else []:
            h.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes())
    return h.hexdigest()


def refused(tmp_path, capsys, grid_text: str | None, *args: str) -> str:
    """Run the sweep on `grid_text` (or the smoke grid) with `args`; return its one error line,
    having checked exit code 2 and untouched roots."""
    teachers, results = tmp_path / "teachers", tmp_path / "results"
    (teachers / "pool").mkdir(parents=True, exist_ok=True)
    (teachers / "pool" / "kept.bin").write_bytes(b"weights")
    (results / "g" / "records").mkdir(parents=True, exist_ok=True)
    (results / "g" / "records" / "kept.json").write_text("{}")
    before = tree_digest(teachers, results)
    grid = "smoke"
    if grid_text is not None:
        grid = tmp_path / "g.yaml"
        grid.write_text(grid_text)
    roots = ["--teachers-root", str(teachers)] + ([] if "--results-root" in args else ["--results-root", str(results)])
    with pytest.raises(SystemExit) as exit_:
        main(["--grid", str(grid), "--cluster", "debug", *roots, *args])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.count("\n") == 1 and err.startswith("error: "), err
    assert tree_digest(teachers, results) == before
    return err


@pytest.mark.parametrize("recipe, message", [
    ("{epochs: -1}", "pools[0].recipe.epochs: -1 is not a whole number >= 1"),
    ("{epochs: 2.5}", "pools[0].recipe.epochs: 2.5 is not a whole number >= 1"),
    ("{lr: -0.1, optimizer: sgd}", "pools[0].recipe.lr: -0.1 is not a finite number > 0"),
    ("{optimizer: sgdd}", "pools[0].recipe.optimizer: 'sgdd' is not one of: sgd, adamw"),
    ("{schedule: cosin}", "pools[0].recipe.schedule: 'cosin' is not one of: cosine, onecycle, step, constant"),
    ("{batch_size: 0}", "pools[0].recipe.batch_size: 0 is not a whole number >= 1"),
    ("{weight_decay: -1.0e-4}", "pools[0].recipe.weight_decay: -0.0001 is not a finite number >= 0"),
    ("{milestones: [5, 3]}", "pools[0].recipe.milestones: [5, 3] is not a list of increasing whole numbers"),
    ("{epochs: 4, schedule: step, milestones: [2, 6]}", "pools[0].recipe.milestones: [2, 6] reach past the last "
                                                        "of the 4 epochs"),
    ("{label_smoothing: 1.0}", "pools[0].recipe.label_smoothing: 1.0 is not a number in [0, 1)"),
    ("{warmup_epochs: 30}", "pools[0].recipe.warmup_epochs: 30 is longer than the 20 epochs"),
    ("{warmup_epochs: -1}", "pools[0].recipe.warmup_epochs: -1 is not a finite number >= 0"),
    ("{momentum: 1.5}", "pools[0].recipe.momentum: 1.5 is not a number in [0, 1)"),
    ("{lr: .nan}", "pools[0].recipe.lr: nan is not a finite number > 0"),
    ("{lr: fast}", "pools[0].recipe.lr: 'fast' is not a finite number > 0"),
    ("{train_split: transfer}", "pools[0].recipe: unknown key 'train_split'"),
    ("{epoch: 3}", "pools[0].recipe: unknown key 'epoch'; valid: epochs, batch_size"),
])
def test_a_bad_pool_recipe_is_refused_at_load(tmp_path, capsys, recipe, message):
    err = refused(tmp_path, capsys, POOL.format(recipe=recipe), "--dry-run")
    assert f"g.yaml: {message}" in err


def paper_pool(arch: str, dataset: str, init: str, recipe: str) -> str:
    return (f"pools:\n  - arch: {arch}\n    dataset: {dataset}\n    init: {init}\n    members: 6\n"
            f"    recipe: {recipe}\nmethods: [single]\n")


@pytest.mark.parametrize("scale, text, message", [
    # A generated multiview set is drawn at its own size: another would redraw or break its patches.
    ("tiny", paper_pool("vgg11", "testbed", "scratch", "{image_size: 224}"),
     "pools[0].recipe.image_size: 224: testbed exists at 16 px only (its images are a grid of 4 px patches that "
     "other sizes would redraw or break); valid: 16"),
    ("tiny", paper_pool("vgg11", "digits", "scratch", "{image_size: 6}"),
     "pools[0].recipe.image_size: 6: digits cannot be made at 6 px; valid: a whole number >= 8"),
    # Pretrained convnets on CIFAR at its own 32 px: the size to set is named.
    ("paper", paper_pool("vgg11", "cifar10", "pretrained", "{}"),
     "pools[0].recipe.image_size: vgg11's pretrained weights are for ImageNet-sized inputs, not 32 px: set "
     "image_size (e.g. 224"),
    ("paper", paper_pool("resnet50", "cifar100", "pretrained", "{image_size: 224, pretrained_weights: "
                                                                "vit_base_patch32_224.augreg_in21k}"),
     "pools[0].recipe.pretrained_weights: 'vit_base_patch32_224.augreg_in21k' are not weights resnet50 can start "
     "from; valid: resnet50, resnet50.a1_in1k, resnet50.tv_in1k"),
    ("paper", paper_pool("resnet50", "cifar100", "pretrained", "{image_size: 224, pretrained_weights: resnet50.in9k}"),
     "pools[0].recipe.pretrained_weights: 'resnet50.in9k' is not one of: vgg11_bn, vgg11_bn.tv_in1k, resnet50,"),
    ("paper", paper_pool("resnet50", "cifar100", "scratch", "{image_size: 224, pretrained_weights: resnet50.tv_in1k}"),
     "pools[0].recipe.pretrained_weights: names the weights a pool of init pretrained starts from; this pool's "
     "init is 'scratch'"),
    ("paper", paper_pool("wrn28_10", "cifar100", "pretrained", "{image_size: 224}"),
     "pools[0].init: wrn28_10 has no pretrained weights; architectures with some: vgg11, resnet50, vit_b32"),
])
def test_a_pool_asking_for_a_start_or_resolution_it_cannot_have_is_refused_at_load(tmp_path, capsys, scale, text,
                                                                                     message):
    assert f"g.yaml: {message}" in refused(tmp_path, capsys, text, "--dry-run", "--scale", scale)


def test_pretrained_pools_at_224_px_load_with_their_weights(tmp_path):
    from bench.grid import load_grid

    path = tmp_path / "g.yaml"
    path.write_text(paper_pool("resnet50", "cifar100", "pretrained",
                               "{image_size: 224, pretrained_weights: resnet50.tv_in1k, schedule: constant}"))
    (pool,) = load_grid(path, "paper").pools
    # A constant schedule does not read the CIFAR recipe's milestones (150, 180, 210): 20 epochs load.
    path.write_text(paper_pool("vgg11", "cifar10", "pretrained", "{image_size: 224, epochs: 20, schedule: constant}"))
    assert load_grid(path, "paper").pools[0].recipe == {"image_size": 224, "epochs": 20, "schedule": "constant"}
    assert pool.recipe["pretrained_weights"] == "resnet50.tv_in1k"


def test_a_good_pool_recipe_loads(tmp_path):
    from bench.grid import load_grid

    path = tmp_path / "g.yaml"
    path.write_text(POOL.format(recipe="{epochs: 3, lr: 1, schedule: step, milestones: [1, 2], warmup_epochs: 0}"))
    (pool,) = load_grid(path, "tiny").pools
    assert pool.recipe == {"epochs": 3, "lr": 1, "schedule": "step", "milestones": [1, 2], "warmup_epochs": 0}


@pytest.mark.parametrize("text, message", [
    ("pools:\n  - arch: vgg11\n    dataset: digits\n    members: 6\nmethods:\n  kd: {temperature: 2}\n  single: {}\n"
     "  kd: {alpha: 0.5}\n", "duplicate key 'kd' at line 8 (first at line 6)"),
    ("pools:\n  - arch: vgg11\n    arch: resnet50\n    dataset: digits\nmethods: [single]\n",
     "duplicate key 'arch' at line 3 (first at line 2)"),
    ("seeds: 2\nseeds: 3\npools: []\nmethods: [single]\n", "duplicate key 'seeds' at line 2 (first at line 1)"),
    ("pools:\n  - arch: vgg11\n    dataset: digits\n  methods: [single]\n", "malformed YAML at line 4"),
    ("pools:\n  - arch: vgg11\n    dataset: digits\n    members: 0\nmethods: [single]\n",
     "pools[0].members: expected a whole number >= 1, got 0"),
    ("pools:\n  - arch: vgg11\n    dataset: digits\n    members: six\nmethods: [single]\n",
     "pools[0].members: expected a whole number >= 1, got 'six'"),
    ("n_teachers: 9\npools:\n  - arch: vgg11\n    dataset: digits\n    members: 6\nmethods: [single]\n",
     "n_teachers: N = 9 is larger than pool pools[0]'s meta-train part (6 of 6 members)"),
    ("pools:\n  - arch: vgg12\n    dataset: digits\nmethods: [single]\n", "pools[0].arch: unknown value 'vgg12'"),
    ("pools:\n  - arch: vgg11\n    dataset: digits\n    members: 6\nmethods:\n  kd: {temperature: -1, alpha: 7}\n",
     "methods.kd.temperature: -1 is not a finite number > 0"),
])
def test_a_bad_grid_is_refused_with_its_line(tmp_path, capsys, text, message):
    assert message in refused(tmp_path, capsys, text, "--dry-run")


def test_an_anchor_and_a_merge_key_are_not_duplicates(tmp_path):
    from bench.grid import load_grid

    path = tmp_path / "g.yaml"
    path.write_text("pools:\n  - &p {arch: vgg11, dataset: digits, members: 6}\n  - <<: *p\n    name: other\n"
                    "methods: [single]\n")
    assert [p.name for p in load_grid(path, "tiny").pools] == ["vgg11-digits-tiny-scratch", "other"]


def test_a_dry_run_refuses_a_results_root_that_is_a_file(tmp_path, capsys):
    blocker = tmp_path / "results-file"
    blocker.write_text("not a folder")
    err = refused(tmp_path, capsys, None, "--dry-run", "--results-root", str(blocker))
    assert f"results root {blocker}/smoke is not writable ({blocker} is a file, not a folder)" in err
    assert blocker.read_text() == "not a folder"


def test_a_dry_run_refuses_an_unwritable_results_root(tmp_path, capsys, monkeypatch):
    import bench.sweep.preflight

    locked = tmp_path / "locked"
    locked.mkdir()
    # Permission bits do not stop root (CI runs as root): the folder's access is what is asked.
    real = os.access
    monkeypatch.setattr(bench.sweep.preflight.os, "access", lambda p, mode: Path(p) != locked and real(p, mode))
    err = refused(tmp_path, capsys, None, "--dry-run", "--results-root", str(locked / "r"))
    assert f"results root {locked}/r/smoke is not writable ({locked}: permission denied)" in err


def test_a_dry_run_makes_nothing(tmp_path, capsys):
    results = tmp_path / "new" / "results"
    main(["--grid", "smoke", "--dry-run", "--cluster", "debug", "--teachers-root", str(tmp_path / "t"),
          "--results-root", str(results)])
    assert not (tmp_path / "new").exists() and not (tmp_path / "t").exists()


CIFAR = "pools:\n  - arch: vgg11\n    dataset: cifar10\n    members: 6\nmethods: [single]\n"


def test_a_pool_read_from_disk_needs_its_data_root_before_anything_runs(tmp_path, capsys, monkeypatch):
    for dry in (["--dry-run"], []):
        monkeypatch.delenv("BENCH_DATA", raising=False)
        err = refused(tmp_path, capsys, CIFAR, *dry)
        assert "dataset 'cifar10' needs a data root (--data-root, BENCH_DATA or the pool recipe's data_root)" in err
        err = refused(tmp_path, capsys, CIFAR, *dry, "--data-root", str(tmp_path / "missing"))
        assert f"data root {tmp_path / 'missing'} is not a folder" in err
    monkeypatch.delenv("BENCH_DATA", raising=False)  # main exported it


@pytest.mark.parametrize("name, options, valid", [
    ("digits", {"chanels": 3}, "image_size, channels"),
    ("testbed", {"nois": 1.0}, "seed, num_classes, views"),
    ("cifar10", {"verify": True}, "verify_md5, download"),
])
def test_an_unknown_dataset_option_is_refused_with_the_valid_ones(tmp_path, name, options, valid):
    with pytest.raises(BenchError, match=f"dataset '{name}': unknown option '{next(iter(options))}'; valid: {valid}"):
        load_dataset(name, tmp_path, "train", **options)


def test_a_full_disk_stops_the_sweep_in_one_line(tmp_path, capsys, monkeypatch):
    import errno
    import tempfile

    import bench.io

    def full(*args, dir=None, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(dir))

    monkeypatch.setattr(bench.io.tempfile, "mkstemp", full)
    grid = tmp_path / "g.yaml"
    grid.write_text(POOL.format(recipe="{epochs: 1}"))
    results = tmp_path / "results"
    with pytest.raises(SystemExit) as exit_:
        main(["--grid", str(grid), "--cluster", "debug", "--teachers-root", str(tmp_path / "teachers"),
              "--results-root", str(results)])
    monkeypatch.setattr(bench.io.tempfile, "mkstemp", tempfile.mkstemp)
    last = capsys.readouterr().err.strip().splitlines()[-1]
    # Each job fails on its first write; the sweep ends on the manifest's, in one line, no traceback.
    assert exit_.value.code == 2 and last == f"error: {results / 'g'}: No space left on device"
    assert not [p for p in tmp_path.rglob("*") if p.is_file() and p != grid]
