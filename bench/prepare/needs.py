"""What a grid's jobs read from outside the suite: data sets on disk, pretrained weights, `.beton` files."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from bench.data import dataset_spec
from bench.errors import BenchError
from bench.grid import Grid, Pool
from bench.models import pretrained_name


@dataclass(frozen=True)
class DataUse:
    dataset: str
    root: Path
    pools: tuple[str, ...]


@dataclass(frozen=True)
class WeightUse:
    """timm's weights `name` and one pool's network for them: the fetch makes that pool's jobs' own
    call (bench.models.load_pretrained), so what it caches is what they load."""

    name: str
    arch: str
    num_classes: int
    image_size: int
    pools: tuple[str, ...]


@dataclass(frozen=True)
class BetonUse:
    path: Path
    dataset: str
    split: str  # the suite's split the file holds: beton_train the training split, beton_test test
    root: Path | None  # where it is written from: None for a generated set, or where no data root is given
    pools: tuple[str, ...]


@dataclass(frozen=True)
class Needs:
    data: tuple[DataUse, ...]
    weights: tuple[WeightUse, ...]
    betons: tuple[BetonUse, ...]


BETON_SPLITS = {"beton_train": "train", "beton_test": "test"}


def given_root(pool: Pool, data_root: Path | None) -> Path | None:
    """Where a pool's jobs read their data set: the recipe's data_root, else the command's (the jobs'
    BENCH_DATA); None where neither is given."""
    root = pool.recipe.get("data_root") or data_root
    return None if root is None else Path(root).expanduser()


def pool_root(pool: Pool, data_root: Path | None) -> Path:
    """`given_root`, or one line naming the ways to give one."""
    root = given_root(pool, data_root)
    if root is None:
        raise BenchError(f"pool {pool.name}: dataset {pool.dataset!r} needs a data root (--data-root, "
                         f"BENCH_DATA or the pool recipe's data_root)")
    return root


def grid_needs(grid: Grid, data_root: Path | None, what: tuple[str, ...]) -> Needs:
    """The grid's data sets per root, pretrained weights and `.beton` files (each with the pools that
    read it), for the kinds in `what`: a data root is asked for only where a selected kind reads one."""
    data: dict[tuple[str, Path], list[str]] = {}
    weights: dict[str, WeightUse] = {}
    betons: dict[Path, BetonUse] = {}
    for pool in grid.pools:
        if "data" in what and dataset_spec(pool.dataset).needs_root:
            data.setdefault((pool.dataset, pool_root(pool, data_root)), []).append(pool.name)
        # A tiny pretrained pool starts from a base network the suite trains, not from timm's weights;
        # its students start where its members started, so the pool's weights serve every method.
        if "weights" in what and pool.init == "pretrained" and pool.base is None:
            name = pretrained_name(pool.arch, pool.recipe.get("pretrained_weights"))
            use = weights.get(name)
            if use is None:
                image_size = pool.member_config(0, **pool.recipe).resolved().image_size
                use = WeightUse(name, pool.arch, dataset_spec(pool.dataset).num_classes, image_size, ())
            weights[name] = WeightUse(use.name, use.arch, use.num_classes, use.image_size, (*use.pools, pool.name))
        for key, split in BETON_SPLITS.items() if "betons" in what else ():
            if not pool.recipe.get(key):
                continue
            path = Path(pool.recipe[key]).expanduser()
            old = betons.get(path)
            if old is not None and (old.dataset, old.split) != (pool.dataset, split):
                raise BenchError(f"pool {pool.name}: {key} {path} is also pool {old.pools[0]}'s {old.split} split "
                                 f"of {old.dataset}; one file holds one split of one data set")
            # A data root is asked for only where the file is missing (betons.steps): one present is read as it is.
            root = given_root(pool, data_root) if dataset_spec(pool.dataset).needs_root else None
            betons[path] = BetonUse(path, pool.dataset, split, root, (*(old.pools if old else ()), pool.name))
    return Needs(tuple(DataUse(d, r, tuple(p)) for (d, r), p in sorted(data.items())),
                 tuple(weights[n] for n in sorted(weights)), tuple(betons[p] for p in sorted(betons)))
