"""One grid's report: `report` reads the grid's records and writes the outputs below into
`results/<grid>/report/` (or the folder given), each made by one function of OUTPUTS.

- main_table.{md,tex,csv}: rows = variants (the record's `variant`, else its method) in the
  papers' method order, columns = the grid's (arch / dataset [init]) settings in pool order;
  cells = mean ± std (n-1) over seeds with n, for top-1, top-5, NLL and ECE; best per column in
  bold (csv: long form, `best` column). A cell the grid plans but no run finished shows
  "missing (k of n runs)"; a cell the grid does not plan shows "—" (bench.report.tables).
- claims.{md,tex,csv}: the WeightFormer and Allen-Zhu & Li claims per setting: supported / not
  supported / inconclusive from the paired 95% t interval of the top-1 difference over distinct groups
  of teachers (bench.report.claims).
- rerun.{md,csv} (given a rerun, or kept from an earlier report given one): each claim's verdict
  beside the rerun's with other seeds.
- costs.{md,tex,csv}: time to make each student, forward passes per test image, cost relative to
  KD, and how many ensembles repay WeightFormer's meta-training.
- diagnostics.{md,tex,csv}, ladder.{md,tex,csv}, pool_size.csv, meta_training.csv: what a
  WeightFormer learnt (bench.report.diagnostics).
- plots/headline.{png,pdf}, plots/claims.{png,pdf}: every row's top-1 per setting with the baselines as
  lines, and the claims' forest plot; linked with captions atop index.md. plots/pool_size and
  plots/meta_training beside their tables (bench.report.figures).
- plots/<axis>.{png,pdf} and ablations.csv: WeightFormer ablations, one figure per setting the
  records vary (bench.report.ablations).
- anchors.md (grids with wrn28_10 runs): beside Allen-Zhu & Li's published WRN-28-10 numbers.
- failed.md: failed runs with reasons, missing cells, unreadable records skipped.
- index.md: links to all of the above and the provenance of every number (grid, scales,
  commits, date range, hosts, hardware), taken from the records only. A rerun on the same records
  writes the same bytes.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import pandas as pd

from bench.errors import BenchError
from bench.io import atomic_write_bytes
from bench.report import diagnostics, figures
from bench.report.ablations import AXES, ablation_table, references
from bench.report.claims import anchors, claim_table, claims_render, rerun_render, rerun_table, shared_groups
from bench.report.render import column, csv_text, method_runs, order_columns, regime_line
from bench.report.records import GridPlan, planned_runs
from bench.report.tables import cost_table, failed_lines, missing_lines, nonfinite_lines, render_costs, render_main

FORMATS = ("md", "tex", "csv")
PLOT_TITLES = {"pool_size": "WeightFormer against its meta-train pool size, with single, ensemble and KD",
               "meta_training": "every meta-training's train and val KL"}
# Outputs an earlier report may have written that these records need not give: removed unless written again.
REMOVABLE = {f"{n}.{f}" for n in ("main_table", "claims", "costs", "diagnostics", "ladder") for f in FORMATS} | {
    "ablations.csv", "anchors.md", "pool_size.csv", "meta_training.csv"}


@dataclass
class Report:
    """One grid's report while it is made: what its outputs read, and what they give. The files are
    kept until every output is made, so a report that fails (a rerun without runs) writes nothing."""
    grid: str
    out: Path
    formats: tuple[str, ...]
    root: Path
    grid_file: str | Path | None
    rerun_root: Path | None
    runs: pd.DataFrame
    plan: GridPlan | None
    stale: int  # records of runs the grid no longer plans, left out
    skipped: list[str]  # unreadable records
    files: dict[str, str | bytes] = field(default_factory=dict)  # name -> data, in the order the index lists them
    plots: dict[str, dict[str, bytes]] = field(default_factory=dict)  # plots/<name>.<format>
    axes: list[str] = field(default_factory=list)  # the ablation axes drawn
    figure_links: str = ""  # the index's Figures section

    @cached_property
    def done(self) -> pd.DataFrame:
        return method_runs(self.runs)

    @cached_property
    def settings(self) -> list[str]:
        planned = self.plan.settings if self.plan else []
        return order_columns(set(self.done.setting) | set(planned), planned)

    @property
    def planned_methods(self) -> set[str] | None:
        """The claims' sides the grid file plans (GridPlan.sides); None where it is not known."""
        return self.plan.sides if self.plan else None

    @property
    def split(self) -> str:
        """The split the figures show: the grid file's `figures_split` (val for a search grid), else test."""
        return self.plan.figures_split if self.plan else "test"

    @cached_property
    def main(self) -> tuple[str, str, pd.DataFrame]:
        """(markdown, tex, long csv frame) of the main table."""
        return render_main(self.runs, self.settings, self.plan, self.grid, self.stale)

    @cached_property
    def claims(self) -> pd.DataFrame:
        return claim_table(self.done, self.settings, self.planned_methods)

    @cached_property
    def rerun_done(self) -> pd.DataFrame | None:
        """The rerun's finished method runs; None without a rerun."""
        if self.rerun_root is None:
            return None
        other = method_runs(planned_runs(self.grid, self.rerun_root, self.grid_file)[0])
        if other.empty:
            raise BenchError(f"--rerun {self.rerun_root}: no finished method runs of grid {self.grid!r} under "
                             f"{self.rerun_root / self.grid / 'records'}")
        return other

    @cached_property
    def moved(self) -> pd.DataFrame | None:
        """rerun_table of these claims and the rerun's; None without a rerun."""
        other = self.rerun_done
        return None if other is None else rerun_table(self.claims, claim_table(other, self.settings, self.planned_methods))

    def tables(self, name: str, md: str | None, tex: str | None, frame: pd.DataFrame) -> None:
        """name.{md,tex,csv} in the formats asked for (a None text: no such file)."""
        for ext, data in (("md", md), ("tex", tex), ("csv", csv_text(frame))):
            if ext in self.formats and data is not None:
                self.files[f"{name}.{ext}"] = data

    def csv(self, name: str, frame: pd.DataFrame) -> None:
        if "csv" in self.formats:
            self.files[name] = csv_text(frame)


# --- the outputs, in the order the index lists them ----------------------------------------------

def main_table(r: Report) -> None:
    r.tables("main_table", *r.main)


def claims(r: Report) -> None:
    r.tables("claims", *claims_render(r.claims, r.grid, regime_line(r.runs)), r.claims)


def rerun(r: Report) -> None:
    if r.moved is not None:
        shown = shown_path(r.rerun_root, r.root)
        r.tables("rerun", rerun_render(r.moved, shared_groups(r.done, r.rerun_done), r.grid, shown), None, r.moved)


def costs(r: Report) -> None:
    table = cost_table(r.done, r.settings)
    r.tables("costs", *render_costs(table, r.grid), table)


def weightformer_diagnostics(r: Report) -> None:
    diag = diagnostics.diagnostics_table(r.done)
    if len(diag):
        r.tables("diagnostics", *diagnostics.render(diag, "WeightFormer diagnostics", r.grid, diagnostics.DIAG_NOTE),
                 diag)
        ladder = diagnostics.ladder_table(diag)
        if len(ladder):
            r.tables("ladder", *diagnostics.render(ladder, "capacity ladder", r.grid, diagnostics.LADDER_NOTE), ladder)


def headline_and_claims_figures(r: Report) -> None:
    plots, r.figure_links = figures.report_figures(r.done, r.settings, r.claims, r.moved, r.out, r.grid, r.split)
    r.plots.update(plots)


def pool_size(r: Report) -> None:
    sizes = diagnostics.pool_size_table(r.done)
    if len(sizes):
        r.plots["pool_size"] = figures.plot_pool_size(sizes, r.grid, r.settings)
        r.csv("pool_size.csv", sizes)


def meta_training(r: Report) -> None:
    curves = diagnostics.curve_rows(r.runs)
    if len(curves):
        r.plots["meta_training"] = figures.plot_curves(curves, r.grid)
        r.csv("meta_training.csv", curves)


def ablations(r: Report) -> None:
    table = ablation_table(r.done, figures.METRICS[r.split])
    r.axes = [a for a in AXES if (table.axis == a).any()]
    for axis in r.axes:
        refs = references(r.done, metric=figures.METRICS[r.split], by_part=axis == "teacher_part")
        r.plots[axis] = figures.plot_axis(table[table.axis == axis], axis, r.grid, refs, r.settings, r.split)
    if r.axes:
        r.csv("ablations.csv", table)


def anchor_table(r: Report) -> None:
    text = anchors(r.done, r.settings, r.plan.counterpart if r.plan else {})
    if text:
        r.files["anchors.md"] = text


def failed(r: Report) -> None:
    failures, missing, nonfinite = failed_lines(r.runs), missing_lines(r.runs, r.plan), nonfinite_lines(r.runs)
    r.files["failed.md"] = f"# {r.grid}: failed runs and missing cells\n\n" + "\n".join([
        f"## Failed runs ({len(failures)})\n", *(f"- {x}" for x in failures or ["none"]),
        f"\n## Runs without a finite value ({len(nonfinite)})\n", *(f"- {x}" for x in nonfinite or ["none"]),
        f"\n## Missing cells ({len(missing)})\n",
        *(f"- {x}" for x in missing or ["none" if r.plan else "unknown: the grid file is not known"]),
        f"\n## Unreadable records skipped ({len(r.skipped)})\n", *(f"- {x}" for x in r.skipped or ["none"])]) + "\n"


OUTPUTS = (main_table, claims, rerun, costs, weightformer_diagnostics, headline_and_claims_figures, pool_size,
           meta_training, ablations, anchor_table, failed)


def report(grid: str, root: Path, out: Path | None = None, formats: tuple[str, ...] = FORMATS,
           grid_file: str | Path | None = None, rerun: Path | None = None) -> str:
    """Write the grid's report into `out` (default root/<grid>/report); return main_table.md.
    `rerun`: the results root of the same grid run with other seeds, set beside this run claim by
    claim (rerun.md)."""
    r = Report(grid, out or root / grid / "report", formats, root, grid_file, rerun,
               *planned_runs(grid, root, grid_file))
    for output in OUTPUTS:
        output(r)
    write(r)
    return r.main[0]


def write(r: Report) -> None:
    """Every file the outputs gave, the index last; outputs of an earlier report that these
    records no longer give are removed."""
    for name, data in r.files.items():
        atomic_write_bytes(r.out / name, data.encode() if isinstance(data, str) else data)
    figures.write_plots(r.out, r.plots)
    for name in {n for n in REMOVABLE if n.endswith(r.formats) or n == "anchors.md"} - set(r.files):
        (r.out / name).unlink(missing_ok=True)
    atomic_write_bytes(r.out / "index.md", index(r).encode())


# --- index and provenance -------------------------------------------------------------------------

def index(r: Report) -> str:
    """index.md: the figures with their captions, the provenance of every number, and a link to
    every output."""
    names = [n for n in r.files if n != "failed.md"]
    if r.rerun_root is None:  # the comparison of an earlier report given --rerun is kept, and linked where it was
        at = max((i + 1 for i, n in enumerate(names) if n.startswith("claims.")), default=len(names))
        names[at:at] = [n for n in ("rerun.md", "rerun.csv") if (r.out / n).exists()]
    failures, missing = failed_lines(r.runs), missing_lines(r.runs, r.plan)
    links = [f"- [{n}]({n})" for n in names] + \
        [f"- [plots/{a}.png](plots/{a}.png), [pdf](plots/{a}.pdf): top-1 against {a}" for a in r.axes] + \
        [f"- [plots/{a}.png](plots/{a}.png), [pdf](plots/{a}.pdf): {PLOT_TITLES[a]}" for a in r.plots
         if a in PLOT_TITLES] + \
        [f"- [failed.md](failed.md): {len(failures)} failed runs, {len(missing)} incomplete cells, "
         f"{len(r.skipped)} unreadable records skipped"]
    return (f"# Report: {r.grid}\n\n{front(r)}{r.figure_links}## Provenance (from the records)\n\n" +
            "".join(f"- {x}\n" for x in provenance(r.runs, r.grid, r.plan)) +
            (f"- left out: {r.stale} records of runs the grid no longer plans\n" if r.stale else "") +
            "\n## Contents\n\n" + "\n".join(links) + "\n")


def front(r: Report) -> str:
    """The top of index.md: what the grid reproduces, its teachers, the headline figure and every
    claim's verdict per setting at a glance (Δ top-1 in pp; claims.md has the intervals)."""
    lines = [f"{r.plan.description}\n\n" if r.plan and r.plan.description else "", regime_line(r.done)]
    if "headline" in r.plots:
        lines.append(f"\n![{r.grid}: each method's top-1 per setting](plots/headline.png)\n")
    claims = r.claims[r.claims.verdict.notna()] if len(r.claims) else r.claims
    if len(claims):
        cell = lambda v, d: v if pd.isna(d) else f"{v} ({d:+.2f})"
        table = claims.assign(cell=[cell(v, d) for v, d in zip(claims.verdict, claims.diff_pp)]).pivot_table(
            index="claim", columns="setting", values="cell", aggfunc="first", sort=False)
        table = table[[s for s in r.settings if s in table.columns]].fillna("—")
        lines.append(f"\n## Verdicts\n\nEach claim per setting: its verdict and Δ top-1 (pp) over distinct groups "
                     f"of teachers; intervals, groups and rules in [claims.md](claims.md).\n\n"
                     f"{table.reset_index().to_markdown(index=False)}\n")
    return "".join(lines) + ("\n" if any(lines) else "")


def values_of(runs: pd.DataFrame, name: str) -> str:
    values = sorted({str(v) for v in column(runs, name).dropna()})
    return ", ".join(values) if values else "unknown"


def provenance(runs: pd.DataFrame, grid: str, plan: GridPlan | None) -> list[str]:
    finished = sorted(str(v) for v in column(runs, "finished").dropna())
    dates = f"{finished[0]} to {finished[-1]}" if finished else "unknown"
    done = int((runs.status == "done").sum())
    stages = ", ".join(f"{s} {n}" for s, n in sorted(Counter(map(str, runs.stage)).items()))
    planned = f" of the {len(plan.ids_at_scales)} runs the grid plans at that scale" if plan else ""
    dirty = int(column(runs, "commit").astype(str).str.endswith("-dirty").sum())
    marked = [f"from a dirty tree: {dirty} of {len(runs)} records name a commit with uncommitted changes "
              f"(that commit does not hold the code that made them)"] if dirty else []
    return [f"grid: {grid}", f"scale(s): {values_of(runs, 'scale')}", f"data set(s): {values_of(runs, 'dataset')}",
            f"commit(s): {values_of(runs, 'commit')}", f"finished: {dates}", f"host(s): {values_of(runs, 'host')}",
            f"hardware: {values_of(runs, 'hardware')}",
            f"records: {len(runs)}{planned} ({done} done, {len(runs) - done} failed; by stage: {stages or 'none'})",
            *marked]


def shown_path(path: Path, root: Path) -> str:
    """`path` as a report names it: from the results root's parent where it lies below the results
    root (`results/rerun`), so the report's bytes depend neither on where the checkout is nor on
    the directory the command ran in; else as given."""
    full, base = path.resolve(), root.resolve()
    return full.relative_to(base.parent).as_posix() if full.is_relative_to(base) else str(path)
