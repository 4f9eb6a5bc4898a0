"""`python -m bench.prepare --grid G --data-root D`: on a login node (which has internet), everything a
grid's paper-scale jobs read, so the compute nodes run offline.

Three kinds of step, each one module: `data` (CIFAR present and md5-checked or fetched, `cifar`;
ImageNet's flat val/ sorted into wnid folders by the devkit's labels, `imagenet_val`), `weights`
(timm's pretrained weights loaded once into the hub cache, `weights`) and `betons` (the `.beton`
files the grid's recipes name, `betons`). What a grid reads is worked out in `needs`; the command
line is `cli`. Every step is planned first (one line, with its disk estimate); a bad input is named
in its step's line and stops the command after the plan, before anything is written (so one run
names every problem); a step already done is skipped, and says so,
so rerunning the command after a failure or a kill does only what is missing. Whether a step is
done is read from the files themselves (the release's md5s, the val/ layout, the hub cache, the
`.beton` on disk), never from a record of an earlier run, so a cache or a folder deleted since
is noticed.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

# The kinds of step `--what` selects, in the order they run (a beton is written from the data).
WHAT = ("data", "weights", "betons")


@dataclass(frozen=True)
class Step:
    """One thing to prepare: the plan's line for it (what it will do and its disk estimate), and
    `run`, which does it and returns the line to print; `run` None: nothing to do, `skipped` says
    why; `problem`: the bad input that keeps it from running (the whole command is refused)."""

    kind: str  # one of WHAT
    name: str
    plan: str
    run: Callable[[], str] | None = None
    skipped: str = "done already"
    problem: str | None = None


def mib(n_bytes: float) -> str:
    return f"{n_bytes / 2**20:,.0f} MiB" if n_bytes >= 2**20 else f"{n_bytes / 2**10:,.1f} KiB"
