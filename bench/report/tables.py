"""`python -m bench.report [--grid G ...] [--results-root R] [--out DIR] [--format md,tex,csv]`

Reads a grid's run records (`results/<grid>/records/*.json`) and writes its report into
`results/<grid>/report/` (or `DIR/<grid>/`); prints the main table.

- main_table.{md,tex,csv}: rows = variants (the record's `variant`, else its method) in the
  papers' method order, columns = the grid's (arch / dataset [init]) settings in pool order;
  cells = mean ± std (n-1) over seeds with n, for top-1, top-5, NLL and ECE; best per column in
  bold (csv: long form, `best` column). A cell the grid plans but no run finished shows
  "missing (k of n runs)"; a cell the grid does not plan shows "—".
- claims.{md,tex,csv}: the WeightFormer and Allen-Zhu & Li claims per setting: supported / not
  supported / inconclusive from the paired 95% t interval of the top-1 difference over distinct groups
  of teachers (bench.report.claims).
- costs.{md,tex,csv}: time to make each student, forward passes per test image, cost relative to
  KD, and how many ensembles repay WeightFormer's meta-training.
- plots/headline.{png,pdf}, plots/claims.{png,pdf}: every row's top-1 per setting with the baselines as
  lines, and the claims' forest plot (bench.report.figures); linked with captions atop index.md.
- plots/<axis>.{png,pdf} and ablations.csv: WeightFormer ablations, one figure per setting the
  records vary (bench.report.plots).
- anchors.md (grids with wrn28_10 runs): beside Allen-Zhu & Li's published WRN-28-10 numbers.
- failed.md: failed runs with reasons, missing cells, unreadable records skipped.
- index.md: links to all of the above and the provenance of every number (grid, scales,
  commits, date range, hosts, hardware), taken from the records only; `<out>/index.md` lists
  the grids reported. A rerun on the same records writes the same bytes.
"""
from __future__ import annotations

import argparse
import json
import math
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from bench.config import SCALES, grid_path, load_grid, narrowed, with_seeds
from bench.errors import BenchError, cli
from bench.io import atomic_write_bytes
from bench.paths import results_root
from bench.plan import STAGES, Roots
from bench.report import diagnostics, figures
from bench.report.claims import (anchors, claim_table, claims_render, groups_of, rerun_render, rerun_table,
                                 shared_groups)
from bench.report.frame import (DASH, WF_METHODS, column, regime_line, csv_text, fmt, label_runs, md_table, method_runs,
                                order_columns, order_rows, setting_label, tex_table)
from bench.report.plots import write_ablations
from bench.store import load_records

__all__ = ["METRICS", "cell_stats", "grid_plan", "report", "main"]
METRICS = {"top1": "top-1 (%)", "top5": "top-5 (%)", "nll": "NLL (nats)", "ece": "ECE (%)",
           "val_top1": "val top-1 (%): where settings are chosen"}
LOWER_IS_BETTER = ("nll", "ece")
RECORDED = ("top1", "top5", "nll", "ece")  # the test metrics every finished method run records
FORMATS = ("md", "tex", "csv")
PLOT_TITLES = {"pool_size": "WeightFormer against its meta-train pool size, with single, ensemble and KD",
               "meta_training": "every meta-training's train and val KL"}
OUTPUTS = {f"{n}.{f}" for n in ("main_table", "claims", "costs", "diagnostics", "ladder") for f in FORMATS} | {
    "ablations.csv", "anchors.md", "pool_size.csv", "meta_training.csv"}


@dataclass
class Plan:
    """What the grid file plans, for the scales the records are at."""
    settings: list[str] = field(default_factory=list)  # pool order
    ids: set[str] = field(default_factory=set)  # run_ids of every stage, at every scale
    ids_at_scales: set[str] = field(default_factory=set)  # the same at the records' scales
    expected: Counter = field(default_factory=Counter)  # (variant, setting) -> planned method runs
    methods: dict[str, str] = field(default_factory=dict)  # variant -> method
    counterpart: dict[tuple[str, str], str] = field(default_factory=dict)  # pool (arch, dataset) -> paper dataset


def grid_plan(grid: str | Path, scales: set[str] | None = None, selection: dict | None = None,
              recorded: set[int] = frozenset()) -> Plan | None:
    """The grid file's plan as the sweep narrowed it (`selection`: its manifest's --seeds and
    --archs, bench.config.narrowed); without --seeds there (the manifest gone: records copied from
    a cluster) with the seeds the method records hold (`recorded`, `recorded_seeds`), so that a
    --seeds run's records are not left out as another version's. A grid written for one scale (a
    tiny-only recipe) is planned at the scales it loads at. None when the grid file is not known or
    does not load at the records' scales."""
    plan, roots = Plan(), Roots(Path("."), Path("."))
    grids, jobs = {}, {}
    for scale in SCALES:
        try:
            g = load_grid(str(grid), scale)
            grids[scale] = narrowed(with_seeds(g, recorded_seeds(g.seeds, recorded)), selection or {})
            jobs[scale] = [job for stage in STAGES.values() for job in stage.plan(grids[scale], roots)]
        except BenchError:
            grids.pop(scale, None)
    if not grids or not set(scales or ()) <= set(grids):
        return None
    for scale, g in grids.items():
        if "paper" in grids:
            plan.counterpart.update({(p.arch, p.dataset): q.dataset for p, q in zip(g.pools, grids["paper"].pools)})
        for job in jobs[scale]:
            plan.ids.add(job.run_id)
            if not scales or scale in scales:
                plan.ids_at_scales.add(job.run_id)
            if job.stage != "methods" or (scales and scale not in scales):
                continue
            t = job.spec["teachers"][0]
            variant = job.spec.get("variant") or job.spec["method"]
            setting = setting_label(t["arch"], t["dataset"], t["init"], t["pool"], t["scale"])
            plan.expected[variant, setting] += 1
            plan.methods.setdefault(variant, job.spec["method"])
            if setting not in plan.settings:
                plan.settings.append(setting)
    return plan


def recorded_seeds(own: tuple[int, ...], recorded: set[int]) -> tuple[int, ...]:
    """The seeds to plan where no manifest says: the grid's own and any others the records hold;
    the records' alone where they hold none of the grid's own (a --seeds run: every job of the
    grid's own seeds, failed or not, would have left a record)."""
    if recorded and not set(recorded) & set(own):
        return tuple(sorted(recorded))
    return (*own, *sorted(set(recorded) - set(own)))


# --- main table --------------------------------------------------------------------------------

def cell_stats(runs: pd.DataFrame, metric: str = "top1") -> pd.DataFrame:
    """variant, method, setting, mean, std (n-1), n, groups (distinct groups of teachers behind
    the runs) of a metric over the finished method runs."""
    done = method_runs(runs)
    done = done.assign(group=groups_of(done))
    done = done[done[metric].notna()]
    stats = done.groupby(["variant", "setting"]).agg(mean=(metric, "mean"), std=(metric, "std"), n=(metric, "count"),
                                                     groups=("group", "nunique")).reset_index()
    method = done.groupby("variant").method.first()
    stats.insert(1, "method", [method[v] for v in stats.variant])
    return stats


def cell_text(mean: float, std: float, n: int, expected: int | None, digits: int, groups: int | None = None) -> str:
    of = f" of {expected}" if expected and n < expected else ""
    # The distinct groups of teachers behind the runs: fewer than runs means repeated replicates.
    g = f", {groups} group{'s' if groups != 1 else ''}" if groups else ""
    # With one seed there is no spread to report: the cell says so instead of "± 0".
    return f"{mean:.{digits}f} ± {std:.{digits}f} (n={n}{of}{g})" if n > 1 else f"{mean:.{digits}f} (n=1{of})"


def table_cells(stats: pd.DataFrame, metric: str, settings: list[str], plan: Plan | None,
                failed: Counter | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(cell texts, best-in-column mask), rows x settings."""
    methods = {**(plan.methods if plan else {}), **dict(zip(stats.variant, stats.method))}
    rows = order_rows({v: methods[v] for v in set(stats.variant) | {v for v, _ in (plan.expected if plan else {})}})
    cols = order_columns(set(stats.setting) | set(plan.settings if plan else []), settings)
    digits = 4 if metric == "nll" else 2
    by_cell = {(r.variant, r.setting): r for r in stats.itertuples() if r.n > 0}
    cells = pd.DataFrame("", index=pd.Index(rows, name="method"), columns=cols, dtype=object)
    for v in rows:
        for s in cols:
            expected = plan.expected.get((v, s), 0) if plan else None
            if (v, s) in by_cell:
                r = by_cell[v, s]
                cells.loc[v, s] = cell_text(r.mean, r.std, r.n, expected, digits, r.groups)
            elif plan is None:
                cells.loc[v, s] = "missing"
            elif expected:
                k = (failed or {}).get((v, s), 0)
                cells.loc[v, s] = f"missing (0 of {expected} runs" + (f"; {k} failed)" if k else ")")
            else:
                cells.loc[v, s] = DASH  # not planned (e.g. a method without support for the arch)
    best = pd.DataFrame(False, index=cells.index, columns=cols)
    for s in cols:
        means = {v: by_cell[v, s].mean for v in rows if (v, s) in by_cell}
        if len(set(means.values())) > 1:  # the best of one, or of a tie of all, is no news
            top = (min if metric in LOWER_IS_BETTER else max)(means.values())
            for v, m in means.items():
                best.loc[v, s] = m == top
    return cells, best


def failed_cells(runs: pd.DataFrame) -> Counter:
    failed = label_runs(runs)
    failed = failed[failed.status == "failed"]
    return Counter(zip(failed.variant, failed.setting))


def render_main(runs: pd.DataFrame, settings: list[str], plan: Plan | None, grid: str, stale: int):
    """(markdown, tex, long csv frame) of the four metric tables."""
    md = [f"# {grid}: last-epoch metrics, mean ± std over seeds (n runs, k distinct groups of teachers)\n",
          "Test split. Best per column in bold. \"missing (k of n runs)\": k of the n runs the grid plans finished; "
          "\"—\": the grid does not plan that cell.\n"]
    if regime_line(runs):
        md.append(regime_line(runs))
    if stale:
        md.append(f"({stale} records of runs the grid no longer plans were left out.)\n")
    tex, long = [], []
    for metric, title in METRICS.items():
        stats = cell_stats(runs, metric)
        if stats.empty and (metric.startswith("val_") or not (plan and plan.expected)):
            continue  # records written before val existed have no val table
        cells, best = table_cells(stats, metric, settings, plan, failed_cells(runs))
        shown, bold = cells.reset_index(), best.reset_index(drop=True)
        bold.insert(0, "method", False)
        md.append(f"## {title}\n\n" + md_table(shown, bold))
        tex.append(tex_table(shown, f"{grid}: {title}, mean ± std over seeds (n)", bold))
        stats["metric"] = metric
        stats["expected"] = [plan.expected.get((v, s), 0) if plan else pd.NA
                             for v, s in zip(stats.variant, stats.setting)]
        stats["best"] = [bool(best.loc[v, s]) for v, s in zip(stats.variant, stats.setting)]
        long.append(stats)
    failed = runs[runs.status == "failed"]
    if len(failed):
        md.append("## Failed runs\n\n" + "".join(f"- {line}\n" for line in failed_lines(runs)))
    if nonfinite_lines(runs):
        md.append("## Runs without a finite value (left out of their cells)\n\n"
                  + "".join(f"- {line}\n" for line in nonfinite_lines(runs)))
    cols = ["method", "variant", "setting", "metric", "mean", "std", "n", "groups", "expected", "best"]
    frame = pd.concat(long)[cols] if long else pd.DataFrame(columns=cols)
    if len(frame):  # long form in table order: metric, row, column
        rank = {"metric": list(METRICS), "variant": order_rows(dict(zip(frame.variant, frame.method))),
                "setting": order_columns(set(frame.setting), settings)}
        frame = frame.sort_values(["metric", "variant", "setting"], key=lambda c: c.map(rank[c.name].index))
    return "\n".join(md), "\n".join(tex), frame


def failed_lines(runs: pd.DataFrame) -> list[str]:
    failed = label_runs(runs)
    failed = failed[failed.status == "failed"]
    return [f"{r.variant} on {r.setting}, seed {fmt(r.seed, 0, '?')} ({r.stage}, run {r.run_id}): {r.reason}"
            for r in failed.sort_values(["stage", "variant", "setting", "seed", "run_id"], key=_sortable).itertuples()]


def nonfinite_lines(runs: pd.DataFrame) -> list[str]:
    """Finished method runs with a metric that is not a finite number: records hold a NaN or inf
    as null (bench.store), and a cell's mean leaves such a run out (its n drops), so each is named."""
    done = label_runs(method_runs(runs))
    lines = []
    for r in done.sort_values(["variant", "setting", "seed", "run_id"], key=_sortable).itertuples():
        bad = [m for m in RECORDED if m in done.columns and not math.isfinite(float(getattr(r, m)))]
        if bad:
            lines.append(f"{r.variant} on {r.setting}, seed {fmt(r.seed, 0, '?')} (run {r.run_id}): "
                         f"{', '.join(bad)} not finite")
    return lines


def _sortable(col: pd.Series) -> pd.Series:
    return col.astype(str)


# --- costs -------------------------------------------------------------------------------------

def mean_of(rows: pd.DataFrame, name: str) -> float:
    return float(pd.to_numeric(column(rows, name), errors="coerce").mean()) if len(rows) else math.nan


def cost_table(done: pd.DataFrame, settings: list[str]) -> pd.DataFrame:
    """Per variant and setting: mean seconds to make the student, forward passes per test image,
    time-to-student relative to KD's, and ensembles needed to repay meta-training."""
    rows = []
    methods = dict(zip(done.variant, done.method))
    for s in order_columns(set(done.setting), settings):
        here = done[done.setting == s]
        kd = here[here.variant == "kd"]
        kd_tts = math.nan if kd.empty else tts(kd)
        for v in order_rows({v: methods[v] for v in set(here.variant)}):
            runs = here[here.variant == v]
            t = tts(runs)
            row = {"variant": v, "method": methods[v], "setting": s, "n": len(runs),
                   "train_s": mean_of(runs, "train_s"), "predict_s": mean_of(runs, "predict_s"),
                   "infer_forwards": mean_of(runs, "infer_forwards"), "time_to_student_s": t,
                   "vs_kd": t / kd_tts if kd_tts and not math.isnan(kd_tts) else math.nan,
                   "meta_train_s": mean_of(runs, "meta_train_s"), "repay_ensembles": ""}
            if methods[v] in WF_METHODS:
                saved = kd_tts - t
                row["repay_ensembles"] = (DASH if math.isnan(saved) or math.isnan(row["meta_train_s"])
                                          else "never" if saved <= 0 else str(math.ceil(row["meta_train_s"] / saved)))
            rows.append(row)
    cols = ["variant", "method", "setting", "n", "train_s", "predict_s", "infer_forwards", "time_to_student_s",
            "vs_kd", "meta_train_s", "repay_ensembles"]
    return pd.DataFrame(rows, columns=cols)


def tts(runs: pd.DataFrame) -> float:
    """Mean over runs of train_s + predict_s; NaN when a run has neither."""
    parts = pd.DataFrame({k: pd.to_numeric(column(runs, k), errors="coerce") for k in ("train_s", "predict_s")})
    per_run = parts.sum(axis=1, min_count=1)
    return float(per_run.mean()) if per_run.notna().any() else math.nan


COST_NOTE = ("train: seconds spent making the student (KD / self-distillation training, WeightFormer fine-"
             "tuning, soup statistics); predict: WeightFormer's forward pass and normalisation re-estimation; "
             "time-to-student = train + predict; × KD: relative to KD's time-to-student on the same setting; "
             "repay: ensembles to distill before WeightFormer's one-off meta-training is cheaper than KD, "
             "meta_train_s / (KD − WF time-to-student), rounded up (never: WeightFormer is not faster). "
             "Means over seeds; —: not recorded.")


def render_costs(table: pd.DataFrame, grid: str) -> tuple[str, str]:
    header = ["method", "setting", "n", "train (s)", "predict (s)", "forwards / image", "time-to-student (s)",
              "× KD", "meta-train (s)", "repay (ensembles)"]
    cells = pd.DataFrame([[r.variant, r.setting, str(r.n), fmt(r.train_s, 1), fmt(r.predict_s, 1),
                           fmt(r.infer_forwards, 0), fmt(r.time_to_student_s, 1), fmt(r.vs_kd, 2),
                           fmt(r.meta_train_s, 1), r.repay_ensembles or DASH] for r in table.itertuples()],
                         columns=header)
    md = f"# {grid}: costs\n\n{COST_NOTE}\n\n" + md_table(cells)
    return md, tex_table(cells, f"{grid}: costs. {COST_NOTE}", align="ll" + "r" * 8)


# --- failures, provenance, index -----------------------------------------------------------------

def missing_lines(runs: pd.DataFrame, plan: Plan | None) -> list[str]:
    if plan is None:
        return []
    found = Counter(zip(*[method_runs(runs)[c] for c in ("variant", "setting")]))
    failed = failed_cells(runs)
    order = {v: i for i, v in enumerate(order_rows(plan.methods))}
    cols = {s: i for i, s in enumerate(plan.settings)}
    return [f"{v} on {s}: {found[v, s]} of {n} runs finished" + (f", {failed[v, s]} failed" if failed[v, s] else "")
            for (v, s), n in sorted(plan.expected.items(), key=lambda kv: (order[kv[0][0]], cols[kv[0][1]]))
            if found[v, s] < n]


def values_of(runs: pd.DataFrame, name: str) -> str:
    values = sorted({str(v) for v in column(runs, name).dropna()})
    return ", ".join(values) if values else "unknown"


def provenance(runs: pd.DataFrame, grid: str, plan: Plan | None) -> list[str]:
    finished = sorted(str(v) for v in column(runs, "finished").dropna())
    dates = f"{finished[0]} to {finished[-1]}" if finished else "unknown"
    done = int((runs.status == "done").sum())
    stages = ", ".join(f"{s} {n}" for s, n in sorted(Counter(map(str, runs.stage)).items()))
    planned = f" of the {len(plan.ids_at_scales)} runs the grid plans at that scale" if plan else ""
    return [f"grid: {grid}", f"scale(s): {values_of(runs, 'scale')}", f"data set(s): {values_of(runs, 'dataset')}",
            f"commit(s): {values_of(runs, 'commit')}", f"finished: {dates}", f"host(s): {values_of(runs, 'host')}",
            f"hardware: {values_of(runs, 'hardware')}",
            f"records: {len(runs)}{planned} ({done} done, {len(runs) - done} failed; by stage: {stages or 'none'})"]


def manifest(folder: Path) -> dict:
    """The sweep's manifest (sweep.json) in a grid's results folder; {} where there is none."""
    try:
        return json.loads((folder / "sweep.json").read_text())
    except (OSError, ValueError):
        return {}


def record_scales(runs: pd.DataFrame, folder: Path) -> set[str]:
    """The scales the records are at; before any record, the sweep's (its manifest's), else tiny."""
    scales = {s for s in column(runs, "scale").dropna() if s in SCALES}
    if not scales:
        scales = {manifest(folder).get("scale")} & set(SCALES)
    return scales or {"tiny"}


def swept_selection(folder: Path) -> dict:
    """How the sweep narrowed the grid file (--seeds, --archs), from its manifest; {} where none."""
    return manifest(folder).get("selection") or {}


def planned_runs(grid: str, root: Path, grid_file: str | Path | None = None
                 ) -> tuple[pd.DataFrame, Plan | None, int, list[str]]:
    """The grid's records under `root` that its plan holds, the plan, how many records it left out
    (of an earlier version of the grid) and the unreadable records skipped."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        runs = load_records(root / grid)
    skipped = [str(w.message).replace(f"{root}/", "") for w in caught]
    for message in skipped:
        warnings.warn(message, stacklevel=2)
    if "smoke_steps" in runs.columns and runs.smoke_steps.notna().any():
        raise BenchError(f"the records under {root / grid / 'records'} are a smoke run's (every job stopped after "
                         f"{int(runs.smoke_steps.max())} steps on synthetic data, bench/smoke.py): they check "
                         f"that the plan runs and are no results; `python -m bench.sweep --status --smoke` shows it")
    recorded = {int(s) for s, stage in zip(column(runs, "seed"), column(runs, "stage")) if stage == "methods"
                and pd.notna(s)}  # a record without a seed reads as NaN, not None
    plan = grid_plan(grid_file or grid, record_scales(runs, root / grid), swept_selection(root / grid), recorded)
    if runs.empty and plan is None:
        raise BenchError(f"no records for grid {grid!r} under {root / grid / 'records'}; run the sweep first")
    stale = 0
    if plan is not None:  # records of an earlier version of the grid are not averaged in
        keep = runs.run_id.isin(plan.ids)
        stale, runs = int((~keep).sum()), runs[keep]
    return runs, plan, stale, skipped


# Where the README's rerun command writes a grid's rerun (`bench.sweep --seeds 7-13 --results-root
# results/rerun`): `python -m bench.report` sets a rerun found there beside the grid's claims by
# itself, so the plain command regenerates a report first made with --rerun byte for byte.
RERUN_ROOT = "rerun"


def found_rerun(root: Path, grid: str) -> Path | None:
    """`root/rerun` where it holds records of `grid` (a rerun of it), else None."""
    rerun = root / RERUN_ROOT
    return rerun if any((rerun / grid / "records").glob("*.json")) else None


def shown_path(path: Path, root: Path) -> str:
    """`path` as a report names it: from the results root's parent where it lies below the results
    root (`results/rerun`), so the report's bytes depend neither on where the checkout is nor on
    the directory the command ran in; else as given."""
    full, base = path.resolve(), root.resolve()
    return full.relative_to(base.parent).as_posix() if full.is_relative_to(base) else str(path)


def report(grid: str, root: Path, out: Path | None = None, formats: tuple[str, ...] = FORMATS,
           grid_file: str | Path | None = None, rerun: Path | None = None) -> str:
    """Write the grid's report into `out` (default root/<grid>/report); return main_table.md.
    `rerun`: the results root of the same grid run with other seeds, set beside this run claim by
    claim (rerun.md)."""
    runs, plan, stale, skipped = planned_runs(grid, root, grid_file)
    out = out or root / grid / "report"
    written: list[str] = []

    def write(name: str, data: str | bytes) -> None:
        atomic_write_bytes(out / name, data.encode() if isinstance(data, str) else data)
        written.append(name)

    done = method_runs(runs)
    settings = order_columns(set(done.setting) | set(plan.settings if plan else []), plan.settings if plan else [])
    text, tex, long = render_main(runs, settings, plan, grid, stale)
    outputs = {"main_table": (text, tex, long)}
    claims = claim_table(done, settings)
    outputs["claims"] = (*claims_render(claims, grid, regime_line(runs)), claims)
    moved = None
    if rerun is not None:
        other = method_runs(planned_runs(grid, rerun, grid_file)[0])
        if other.empty:
            raise BenchError(f"--rerun {rerun}: no finished method runs of grid {grid!r} under {rerun / grid / 'records'}")
        moved = rerun_table(claims, claim_table(other, settings))
        outputs["rerun"] = (rerun_render(moved, shared_groups(done, other), grid, shown_path(rerun, root)), None,
                            moved)
    costs = cost_table(done, settings)
    outputs["costs"] = (*render_costs(costs, grid), costs)
    for name, (md, tex, frame) in outputs.items():
        for ext, data in (("md", md), ("tex", tex), ("csv", csv_text(frame))):
            if ext in formats and data is not None:
                write(f"{name}.{ext}", data)
    diag = diagnostics.diagnostics_table(done)
    if len(diag):
        outputs_wf = {"diagnostics": (*diagnostics.render(diag, "WeightFormer diagnostics", grid, diagnostics.DIAG_NOTE), diag)}
        ladder = diagnostics.ladder_table(diag)
        if len(ladder):
            outputs_wf["ladder"] = (*diagnostics.render(ladder, "capacity ladder", grid, diagnostics.LADDER_NOTE), ladder)
        for name, (md, tex, frame) in outputs_wf.items():
            for ext, data in (("md", md), ("tex", tex), ("csv", csv_text(frame))):
                if ext in formats:
                    write(f"{name}.{ext}", data)
    extra_plots, figure_links = figures.report_figures(done, settings, claims, moved, out, grid)
    sizes = diagnostics.pool_size_table(done)
    if len(sizes):
        extra_plots["pool_size"] = diagnostics.plot_pool_size(sizes, grid, settings)
        if "csv" in formats:
            write("pool_size.csv", csv_text(sizes))
    curves = diagnostics.curve_rows(runs)
    if len(curves):
        extra_plots["meta_training"] = diagnostics.plot_curves(curves, grid)
        if "csv" in formats:
            write("meta_training.csv", csv_text(curves))
    ablations, axes = write_ablations(done, out, grid, extra_plots, settings)
    if axes and "csv" in formats:
        write("ablations.csv", csv_text(ablations))
    anchor_text = anchors(done, settings, plan.counterpart if plan else {})
    if anchor_text:
        write("anchors.md", anchor_text)
    failures, missing = failed_lines(runs), missing_lines(runs, plan)
    write("failed.md", f"# {grid}: failed runs and missing cells\n\n" + "\n".join([
        f"## Failed runs ({len(failures)})\n", *(f"- {x}" for x in failures or ["none"]),
        f"\n## Runs without a finite value ({len(nonfinite_lines(runs))})\n",
        *(f"- {x}" for x in nonfinite_lines(runs) or ["none"]),
        f"\n## Missing cells ({len(missing)})\n",
        *(f"- {x}" for x in missing or ["none" if plan else "unknown: the grid file is not known"]),
        f"\n## Unreadable records skipped ({len(skipped)})\n", *(f"- {x}" for x in skipped or ["none"])]) + "\n")
    # Outputs of an earlier report that these records no longer give.
    for name in {n for n in OUTPUTS if n.endswith(formats) or n == "anchors.md"} - set(written):
        (out / name).unlink(missing_ok=True)
    if rerun is None:  # the comparison of an earlier report given --rerun is kept, and linked where it was
        at = max((i + 1 for i, n in enumerate(written) if n.startswith("claims.")), default=len(written))
        written[at:at] = [n for n in ("rerun.md", "rerun.csv") if (out / n).exists()]
    links = [f"- [{n}]({n})" for n in written if n != "failed.md"] + \
        [f"- [plots/{a}.png](plots/{a}.png), [pdf](plots/{a}.pdf): top-1 against {a}" for a in axes] + \
        [f"- [plots/{a}.png](plots/{a}.png), [pdf](plots/{a}.pdf): {PLOT_TITLES[a]}" for a in extra_plots
         if a in PLOT_TITLES] + \
        [f"- [failed.md](failed.md): {len(failures)} failed runs, {len(missing)} incomplete cells, "
         f"{len(skipped)} unreadable records skipped"]
    write("index.md", f"# Report: {grid}\n\n{figure_links}## Provenance (from the records)\n\n" +
          "".join(f"- {x}\n" for x in provenance(runs, grid, plan)) +
          (f"- left out: {stale} records of runs the grid no longer plans\n" if stale else "") +
          "\n## Contents\n\n" + "\n".join(links) + "\n")
    return text


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

