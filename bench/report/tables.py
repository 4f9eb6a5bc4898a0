"""The main table (mean ± std per method variant and setting, for each metric), the costs table,
and the lines naming failed runs, runs without a finite value and missing cells.
"""
from __future__ import annotations

import math
from collections import Counter

import pandas as pd

from bench.report.render import (DASH, WF_METHODS, column, fmt, label_runs, md_table, method_runs, order_columns,
                                order_rows, regime_line, tex_table)
from bench.report.records import GridPlan
from bench.report.statistics import groups_of

METRICS = {"top1": "top-1 (%)", "top5": "top-5 (%)", "nll": "NLL (nats)", "ece": "ECE (%)",
           "val_top1": "val top-1 (%): where settings are chosen"}
LOWER_IS_BETTER = ("nll", "ece")
RECORDED = ("top1", "top5", "nll", "ece")  # the test metrics every finished method run records


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


def table_cells(stats: pd.DataFrame, metric: str, settings: list[str], plan: GridPlan | None,
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


def render_main(runs: pd.DataFrame, settings: list[str], plan: GridPlan | None, grid: str, stale: int):
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
    as null (bench.run_records), and a cell's mean leaves such a run out (its n drops), so each is named."""
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


# --- missing cells -----------------------------------------------------------------------------

def missing_lines(runs: pd.DataFrame, plan: GridPlan | None) -> list[str]:
    if plan is None:
        return []
    found = Counter(zip(*[method_runs(runs)[c] for c in ("variant", "setting")]))
    failed = failed_cells(runs)
    order = {v: i for i, v in enumerate(order_rows(plan.methods))}
    cols = {s: i for i, s in enumerate(plan.settings)}
    return [f"{v} on {s}: {found[v, s]} of {n} runs finished" + (f", {failed[v, s]} failed" if failed[v, s] else "")
            for (v, s), n in sorted(plan.expected.items(), key=lambda kv: (order[kv[0][0]], cols[kv[0][1]]))
            if found[v, s] < n]
