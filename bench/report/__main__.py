"""`python -m bench.report [--grid G ...] [--results-root R] [--out DIR] [--format md,tex,csv]`

Reads a grid's run records (`results/<grid>/records/*.json`) and writes its report into
`results/<grid>/report/` (or `DIR/<grid>/`); prints the main table.

Every grid with records by default; `<out>/index.md` is the front page of every grid reported (what
each reproduces, its verdicts, its rerun, its records' provenance). What a report holds:
bench/report/build.py.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

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
    """`folder/index.md`: one row per grid report found below `folder` (its index.md): what the grid
    is (its description), its claims' verdicts and the distinct groups behind them, its rerun on
    other groups, and whether any record names a dirty tree; read from the report's own files."""
    rows = [grid_row(folder, p) for p in sorted(reports)]
    head = ("| grid | what it is | verdicts: supported / not / inconclusive (groups per claim) | "
            "rerun on other groups | records |\n|:--|:--|:--|:--|:--|\n")
    text = ("# Reports\n\nEvery grid's report, its front page linked by name. Verdicts: the claims of its "
            "claims.md (paired 95 % t intervals over distinct groups of teachers); rerun: the same claims on "
            "other groups (`--seeds`), flips between supported and not supported and moves to or from "
            "inconclusive; records: how many, and how many name a commit with uncommitted changes.\n\n"
            + (head + "".join(rows) if rows else "none\n"))
    atomic_write_bytes(folder / "index.md", text.encode())


def grid_row(folder: Path, index: Path) -> str:
    report = index.parent
    name = index.relative_to(folder).parts[0]
    lines = index.read_text().splitlines()
    what = lines[2] if len(lines) > 2 and lines[2] and not lines[2].startswith(("#", "-", "Teachers:")) else ""
    claims = _csv(report / "claims.csv")
    verdicts = "—"
    if claims is not None and {"verdict", "groups"} <= set(claims):
        tested = claims[claims.groups.fillna(0) > 0]  # a claim without runs of both sides is no verdict
        c, groups = tested.verdict.value_counts(), tested.groups.astype(int)
        spread = f" ({groups.min()}-{groups.max()})" if len(groups) and groups.min() != groups.max() else \
            f" ({groups.min()})" if len(groups) else ""
        untested = len(claims) - len(tested)
        verdicts = f"{c.get('supported', 0)} / {c.get('not supported', 0)} / {c.get('inconclusive', 0)}{spread}" + \
            (f"; {untested} without runs" if untested else "")
    rerun = _csv(report / "rerun.csv")
    again = "—"
    if rerun is not None and "change" in rerun:
        compared = rerun[rerun.change != "missing"]
        moved = int(compared.change.isin(["to inconclusive", "from inconclusive"]).sum())
        again = f"{int((compared.change == 'flip').sum())} flips, {moved} of {len(compared)} moved"
    commits = next((line.split(":", 1)[1] for line in lines if line.startswith("- commit(s):")), "")
    count = next((line.split(":", 1)[1].split("(")[0].split(" of ")[0].strip() for line in lines
                  if line.startswith("- records:")), "?")
    dirty = next((line.split(":", 1)[1].split(" of ")[0].strip() for line in lines
                  if line.startswith("- from a dirty tree:")), "")
    records = f"{count}" + (f", {dirty} from a dirty tree" if dirty else ", all from clean commits" if commits else "")
    return f"| [{name}]({index.relative_to(folder).as_posix()}) | {what} | {verdicts} | {again} | {records} |\n"


def _csv(path: Path) -> pd.DataFrame | None:
    return pd.read_csv(path) if path.is_file() else None


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
