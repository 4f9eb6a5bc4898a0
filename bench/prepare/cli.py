"""The command line of `python -m bench.prepare`: plans every step (one line each, with its disk
estimate, or what keeps it from running: then the command stops after the plan, before anything is
written), then runs them in order."""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Callable, Sequence

from bench.data import dataset_spec
from bench.errors import BenchError, choose, cli
from bench.grid import load_grid
from bench.models import SCALES
from bench.paths import data_root
from bench.prepare import WHAT, Step, betons, cifar, imagenet_val, weights
from bench.prepare.needs import Needs, grid_needs

DESCRIPTION = ("Prepare, on a machine with internet (a login node), what a grid's jobs read: its data sets "
               "(CIFAR fetched with --download, ImageNet's flat val/ sorted into wnid folders), timm's "
               "pretrained weights in the hub cache, and the .beton files its recipes name; the jobs then "
               "run offline (HF_HUB_OFFLINE=1). Every step is skipped when done: rerun it after a failure.")


class Parser(argparse.ArgumentParser):
    """A misspelled or missing option stops with one line naming the valid options."""

    def error(self, message: str) -> None:  # type: ignore[override]
        options = sorted(o for action in self._actions for o in action.option_strings if o.startswith("--"))
        raise BenchError(f"{message}; valid options: {' '.join(options)}")


def parser() -> Parser:
    p = Parser(prog="python -m bench.prepare", description=DESCRIPTION)
    p.add_argument("--grid", required=True, help="a grid of sweeps/ (main_table, ...) or the path of a YAML file")
    p.add_argument("--scale", default="paper", help=f"the grid's scale, one of: {', '.join(SCALES)} (default paper)")
    p.add_argument("--data-root", help="the folder of the data sets (default BENCH_DATA); a pool recipe's "
                                       "data_root wins for its pool, as in the jobs")
    p.add_argument("--what", default=",".join(WHAT), help=f"the steps, comma-separated, of: {', '.join(WHAT)} (default all)")
    p.add_argument("--download", action="store_true", help="fetch missing CIFAR releases (torchvision's downloader)")
    p.add_argument("--imagenet-devkit", type=Path,
                   help=f"the ILSVRC2012 devkit (default <data root>/{imagenet_val.DEVKIT_NAME}): its labels sort a flat val/")
    p.add_argument("--dry-run", action="store_true", help="print the steps and their estimates; write nothing")
    return p


def parse_what(text: str) -> tuple[str, ...]:
    picked = [w.strip() for w in text.split(",") if w.strip()]
    if not picked:
        raise BenchError(f"--what names no step; valid: {', '.join(sorted(WHAT))}")
    for w in picked:
        choose("--what value", w, WHAT)
    return tuple(w for w in WHAT if w in picked)


def planned(kind: str, name: str, make: Callable[[], Step]) -> Step:
    """The step `make` plans, or, where its input is bad, a step naming the problem: the whole plan
    is shown, so one run names every problem, and then refused."""
    try:
        return make()
    except BenchError as err:
        return Step(kind, name, f"cannot be prepared: {err}", problem=str(err))


def data_steps(needs: Needs, download: bool, devkit: Path | None) -> list[Step]:
    if not needs.data:
        return [Step("data", "none", "the grid reads no data set from disk at this scale", skipped="nothing to do")]
    out = []
    for use in needs.data:
        module = dataset_spec(use.dataset).module
        if module == "cifar":
            out.append(planned("data", use.dataset, lambda use=use: cifar.step(use.dataset, use.root, download)))
        elif module == "imagenet":
            out.append(planned("data", use.dataset, lambda use=use: imagenet_val.step(use.root, devkit)))
        else:
            raise BenchError(f"dataset {use.dataset!r}: no preparation known for it")
    return out


def weight_steps(needs: Needs) -> list[Step]:
    if not needs.weights:
        return [Step("weights", "none", "no pool of the grid starts from timm's pretrained weights at this scale",
                     skipped="nothing to fetch")]
    return [planned("weights", use.name, lambda use=use: weights.step(use)) for use in needs.weights]


def beton_steps(needs: Needs) -> list[Step]:
    if not needs.betons:
        return [Step("betons", "none", "the grid's recipes name no beton_train or beton_test",
                     skipped="nothing to write")]
    return [planned("betons", str(use.path), lambda use=use: betons.step(use)) for use in needs.betons]


def plan(needs: Needs, what: tuple[str, ...], download: bool, devkit: Path | None) -> list[Step]:
    return [*(data_steps(needs, download, devkit) if "data" in what else ()),
            *(weight_steps(needs) if "weights" in what else ()),
            *(beton_steps(needs) if "betons" in what else ())]


@cli
def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    what = parse_what(args.what)
    if args.imagenet_devkit is not None and not args.imagenet_devkit.is_file():
        raise BenchError(f"--imagenet-devkit {args.imagenet_devkit} not found (the ILSVRC2012 devkit, "
                         f"{imagenet_val.DEVKIT_NAME}, from {imagenet_val.DOWNLOAD})")
    grid = load_grid(args.grid, args.scale)
    needs = grid_needs(grid, data_root(args.data_root), what)
    steps = plan(needs, what, args.download, args.imagenet_devkit)
    print(f"prepare grid {grid.name} (scale {args.scale}), {len(steps)} steps:")
    for s in steps:
        print(f"  [{s.kind}] {s.name}: {s.plan}", flush=True)
    problems = [s for s in steps if s.problem is not None]
    if problems:
        raise BenchError(problems[0].problem if len(problems) == 1 else
                         f"{len(problems)} steps cannot be prepared ({', '.join(s.name for s in problems)}; the plan "
                         f"above says why): nothing written")
    if args.dry_run:
        print("dry run: nothing written")
        return 0
    for s in steps:
        print(f"[{s.kind}] {s.name}: {s.run() if s.run is not None else f'skipped, {s.skipped}'}", flush=True)
    ran = sum(s.run is not None for s in steps)
    if "weights" in what and needs.weights:
        print(weights.summary(needs.weights))
    print(f"done: {ran} step{'s' if ran != 1 else ''} run, {len(steps) - ran} skipped")
    return 0
