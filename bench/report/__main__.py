"""`python -m bench.report [--grid G ...] [--results-root R] [--out DIR] [--format md,tex,csv]`

Reads a grid's run records (`results/<grid>/records/*.json`) and writes its report into
`results/<grid>/report/` (or `DIR/<grid>/`); prints the main table.

Every grid with records by default; `<out>/index.md` lists the grids reported. What a report holds:
bench/report/build.py.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from bench.grid import grid_path
from bench.errors import BenchError, cli
from bench.io import atomic_write_bytes
from bench.paths import results_root
from bench.report.build import FORMATS, report

# Where the README's rerun command writes a grid's rerun (`bench.sweep --seeds 7-13 --results-root
# results/rerun`): `python -m bench.report` sets a rerun found there beside the grid's claims by
# itself, so the plain command regenerates a report first made with --rerun byte for byte.
RERUN_ROOT = "rerun"


def found_rerun(root: Path, grid: str) -> Path | None:
    """`root/rerun` where it holds records of `grid` (a rerun of it), else None."""
    rerun = root / RERUN_ROOT
    return rerun if any((rerun / grid / "records").glob("*.json")) else None


def write_top_index(folder: Path, reports: list[Path]) -> None:
    """`folder/index.md`: every grid report found below `folder`, by name."""
    lines = [f"- [{p.relative_to(folder).parts[0]}]({p.relative_to(folder).as_posix()})" for p in sorted(reports)]
    atomic_write_bytes(folder / "index.md", ("# Reports\n\n" + "\n".join(lines or ["none"]) + "\n").encode())


def parse_formats(value: str) -> tuple[str, ...]:
    formats = tuple(f.strip() for f in value.split(",") if f.strip())
    bad = [f for f in formats if f not in FORMATS]
    if bad or not formats:
        raise BenchError(f"unknown format {', '.join(bad) or repr(value)}; valid: {', '.join(FORMATS)}")
    return formats


@cli
def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.report", description=__doc__.split("\n\n")[1])
    p.add_argument("--grid", action="append", help="grid name or file (repeatable; default: every grid with records)")
    p.add_argument("--results-root")
    p.add_argument("--out", type=Path, help="folder for the reports, one subfolder per grid "
                                            "(default results/<grid>/report)")
    p.add_argument("--format", default=",".join(FORMATS), help="tables to write: any of md,tex,csv (default all)")
    p.add_argument("--rerun", type=Path, help="results root of the same grid run with other seeds "
                                              "(bench.sweep --seeds): its claims beside these, in rerun.md (default: "
                                              f"<results root>/{RERUN_ROOT} where it holds the grid's records)")
    a = p.parse_args(argv)
    root, formats = results_root(a.results_root), parse_formats(a.format)
    if a.rerun is not None and not a.grid:
        raise BenchError("--rerun sets one grid's claims beside its rerun's: name the grid with --grid")
    grids = [(grid_path(g).stem, g) for g in a.grid] if a.grid else \
        [(d.name, d.name) for d in sorted(root.iterdir()) if any((d / "records").glob("*.json"))] \
        if root.is_dir() else []
    for name, source in grids or [("main_table", "main_table")]:
        out = a.out / name if a.out else None
        print(report(name, root, out, formats, source, a.rerun or found_rerun(root, name)))
        print(f"report: {(out or root / name / 'report') / 'index.md'}\n")
    top = a.out or root
    write_top_index(top, sorted(top.glob("*/index.md") if a.out else top.glob("*/report/index.md")))


if __name__ == "__main__":
    main()
