"""Teacher pools: K members of one (arch, dataset, scale, init), trained one run each.

`python -m bench.pool --arch all --dataset digits --scale tiny --members 4` trains (or finds)
every member under `teachers/<pool>-<recipe hash>/member-<k>/` and prints a table of their test
metrics, built from the run records written to `results/<grid>/records/`. Folder and run id are
the ones a sweep plans for a grid pool of the same name (default `<arch>-<dataset>-<scale>-<init>`)
and recipe (here: `--epochs` when given), so a pool trained either way is found by the other.

init: `scratch` -- member k is seed k for initial weights and data order (independent
networks, as in Allen-Zhu & Li); `shared` -- every member starts from the weights of seed 0 and
differs only in data order and augmentation; `pretrained` -- every member starts from timm's
pretrained weights (paper scale; a new classifier from seed k) and is fine-tuned with its own
data order, as the model-soups pool was.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import pandas as pd

from bench.grid import INITS, Pool, default_pool_name
from bench.data import DATASETS
from bench.job_env import world
from bench.errors import BenchError, choose, cli
from bench.models import ARCHS, SCALES
from bench.paths import data_root, results_root
from bench.jobs import POOL_RECORDS, Roots, member_dir, teacher_spec
from bench.run_records import load_records, run_id, write_record
from bench.engine import train
from bench.engine.stacked import train_stack
from bench.train_config import TrainConfig


def train_member(pool: Pool, k: int, *, run: str, run_dir: Path, results: str | Path | None = None,
                 grid: str = POOL_RECORDS, progress: bool | None = None,
                 noted: dict[str, Any] | None = None, **overrides: Any) -> dict[str, Any]:
    """Train member k into `run_dir` (resuming or finding it), write its run record (id `run`),
    return the record. The sweep passes its job's run id and folder and what the record notes
    besides the metrics (`noted`: the member's drawn hyperparameters, its base)."""
    cfg = pool.member_config(k, **overrides)
    t0 = time.perf_counter()
    meta = train(cfg, run_dir, progress=progress)
    return _write_member_record(pool, k, cfg, meta, run_dir, time.perf_counter() - t0, results=results, grid=grid,
                                run=run, noted=noted)


def train_members(pool: Pool, ks: list[int], *, runs: list[str], run_dirs: list[Path],
                  results: str | Path | None = None, grid: str = POOL_RECORDS, progress: bool | None = None,
                  **overrides: Any) -> list[dict[str, Any]]:
    """`train_member` for several members at once, trained as one stacked network where the
    architecture allows (`bench.engine.stacked.train_stack`; else one at a time). Every member
    gets the record `train_member` writes (its seconds: its share of the stack's); a member that
    failed gets none, and its error is raised once the others are done."""
    cfgs = [pool.member_config(k, **overrides) for k in ks]
    t0 = time.perf_counter()
    metas = train_stack(cfgs, run_dirs, progress=progress,
                        on_fallback=lambda why: print(f"{pool.name}: members {ks} one at a time ({why})", flush=True))
    share = (time.perf_counter() - t0) / len(ks)
    records, errors = [], []
    for i, (k, cfg, meta) in enumerate(zip(ks, cfgs, metas)):
        if isinstance(meta, Exception):
            errors.append(meta)
            continue
        records.append(_write_member_record(pool, k, cfg, meta, run_dirs[i], share, results=results, grid=grid,
                                            run=runs[i]))
    if errors:
        raise errors[0]
    return records


def _write_member_record(pool: Pool, k: int, cfg: TrainConfig, meta: dict[str, Any], run_dir: Path, wall_s: float,
                         *, results: str | Path | None, grid: str, run: str, noted: dict[str, Any] | None = None) -> dict[str, Any]:
    record = {"run_id": run, "grid": grid, "stage": "teachers", "method": "single",
              "arch": pool.arch, "dataset": pool.dataset, "scale": pool.scale, "init": pool.init,
              "pool": pool.name, "member": k, "seed": k, "n_teachers": 1, "status": "done",
              **{k: meta["metrics"][k] for m in ("top1", "top5", "nll", "ece") for k in (m, f"val_{m}")
                 if k in meta["metrics"]},
              "train_s": meta["train_s"], "wall_s": wall_s,
              "epochs": meta["epochs"], "weights": str(run_dir / "model.safetensors"), **(noted or {})}
    if world()[0] == 0:  # in a data-parallel job every rank trains; one writes the record
        write_record(results_root(results) / grid / "records", record)
    return record


def summary(table: pd.DataFrame) -> pd.DataFrame:
    """Per pool: members, mean and std of top-1 (%), mean NLL and ECE, training seconds."""
    g = table.groupby(["arch", "dataset", "scale", "init"], sort=False)
    out = g.agg(members=("top1", "size"), top1_mean=("top1", "mean"), top1_std=("top1", "std"),
                nll=("nll", "mean"), ece=("ece", "mean"), train_s=("train_s", "mean"))
    return out.reset_index().round({"top1_mean": 2, "top1_std": 2, "nll": 4, "ece": 2, "train_s": 1})


@cli
def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.pool", description=__doc__.split("\n\n")[0])
    p.add_argument("--arch", default="all", help=f"all, or a comma list of {', '.join(ARCHS)}")
    p.add_argument("--dataset", default="digits", help=f"one of {', '.join(DATASETS)}")
    p.add_argument("--scale", default="tiny", help=f"one of {', '.join(SCALES)}")
    p.add_argument("--init", default="scratch", help=f"one of {', '.join(INITS)}")
    p.add_argument("--members", type=int, default=4, help="pool size K")
    p.add_argument("--epochs", type=int, help="override the recipe's epochs")
    p.add_argument("--stack", type=int, default=16,
                   help="train up to this many members as one stacked network (1: one at a time)")
    p.add_argument("--grid", default=POOL_RECORDS, help="records go to <results>/<grid>/records")
    p.add_argument("--data-root")
    p.add_argument("--teachers-root")
    p.add_argument("--results-root")
    a = p.parse_args(argv)
    archs = list(ARCHS) if a.arch == "all" else a.arch.split(",")
    if a.members < 1:
        raise BenchError(f"--members must be at least 1, got {a.members}")
    for arch in archs:  # every name checked before anything trains
        choose("arch", arch, ARCHS)
    choose("dataset", a.dataset, DATASETS)
    choose("scale", a.scale, SCALES)
    choose("init", a.init, INITS)
    # The recipe names the member's folder, as a grid pool's does; the data root is where the data
    # is, not how the member trains, so it stays out of it (as BENCH_DATA does for a sweep).
    recipe = {"epochs": a.epochs} if a.epochs else {}
    pools = [Pool(default_pool_name(arch, a.dataset, a.scale, a.init), arch, a.dataset, a.scale, a.init, a.members, 0,
                  recipe) for arch in archs]
    root = data_root(a.data_root)
    where = {"data_root": str(root)} if root else {}
    if a.stack < 1:
        raise BenchError(f"--stack must be at least 1, got {a.stack}")
    roots = Roots.resolve(a.teachers_root, a.results_root)
    chunks = [list(range(a.members))[i:i + a.stack] for i in range(0, a.members, a.stack)]
    records = []
    for pool in pools:
        for ks in chunks:
            specs = [teacher_spec(pool, k) for k in ks]
            records += train_members(pool, ks, runs=[run_id(s) for s in specs],
                                     run_dirs=[member_dir(roots, s) for s in specs], results=roots.results,
                                     grid=a.grid, **recipe, **where)
    table = pd.DataFrame(records)
    cols = ["pool", "member", "top1", "top5", "nll", "ece", "train_s"]
    with pd.option_context("display.width", 160, "display.max_columns", 20):
        print(table[cols].round(3).to_string(index=False))
        print()
        print(summary(table).to_string(index=False))
    print(f"\nrecords: {results_root(a.results_root) / a.grid / 'records'}  "
          f"(all runs so far: {len(load_records(results_root(a.results_root) / a.grid))})")


if __name__ == "__main__":
    main()
