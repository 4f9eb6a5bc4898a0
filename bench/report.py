"""`python -m bench.report --grid G`: the main table of a grid from its run records.

Rows are methods, columns the grid's (architecture, data set) settings; a cell is the mean
+- sample std over seeds of a last-epoch metric, with n. Written to
`results/<grid>/report/main_table.{md,csv}` and printed. Missing cells show as missing;
failed runs are listed with their reasons.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from bench.config import grid_path, load_grid
from bench.errors import BenchError, cli
from bench.io import atomic_write_bytes
from bench.paths import results_root
from bench.store import load_records

METHOD_ORDER = ("single", "ensemble", "kd", "self_distill", "soup", "aligned_soup", "weightformer",
                "weightformer_ft")
METRICS = {"top1": "top-1 (%)", "top5": "top-5 (%)", "nll": "NLL (nats)", "ece": "ECE (%)"}


def cell_stats(runs: pd.DataFrame, metric: str = "top1") -> pd.DataFrame:
    """mean, std (n-1) and n per (method, setting) over the finished method runs."""
    done = runs[(runs.stage == "methods") & (runs.status == "done")].copy()
    # Pools of one (arch, dataset) but another initialisation are separate columns.
    init = done["init"] if "init" in done else pd.Series("scratch", index=done.index)
    done["setting"] = done.arch + " / " + done.dataset + [
        "" if i in (None, "scratch") or pd.isna(i) else f" [{i}]" for i in init]
    g = done.groupby(["method", "setting"])[metric]
    return g.agg(mean="mean", std="std", n="count").reset_index()


def main_table(runs: pd.DataFrame, metric: str = "top1", settings: list[str] | None = None) -> pd.DataFrame:
    """Methods x settings; `settings` fixes the column order (the grid's pool order)."""
    stats = cell_stats(runs, metric)
    if stats.empty:
        return pd.DataFrame()
    digits = 4 if metric == "nll" else 2
    # With one seed there is no spread to report: the cell says so instead of "± 0".
    stats["cell"] = [f"{m:.{digits}f} ± {s:.{digits}f} (n={n})" if n > 1 else f"{m:.{digits}f} (n=1)"
                     for m, s, n in zip(stats["mean"], stats["std"], stats["n"])]
    table = stats.pivot(index="method", columns="setting", values="cell")
    order = [m for m in METHOD_ORDER if m in table.index] + sorted(set(table.index) - set(METHOD_ORDER))
    columns = [c for c in settings or [] if c in table.columns] + \
        sorted(set(table.columns) - set(settings or []))
    return table.loc[order, columns].fillna("missing")


def grid_plan(grid: str) -> tuple[list[str], set[str]] | None:
    """The grid file's 'arch / dataset' settings in pool order and the run_ids it plans now,
    at both scales; None when the grid file is not known."""
    from bench.stages import STAGES, Roots

    settings, ids = [], set()
    try:
        for scale in ("tiny", "paper"):
            g = load_grid(grid, scale)
            settings += [f"{p.arch} / {p.dataset}" for p in g.pools]
            for stage in STAGES.values():
                ids |= {j.run_id for j in stage.plan(g, Roots(Path("."), Path(".")))}
    except BenchError:
        return None
    return settings, ids


def report(grid: str, root: Path, out: Path | None = None) -> str:
    runs = load_records(root / grid)
    if runs.empty:
        raise BenchError(f"no records for grid {grid!r} under {root / grid / 'records'}; run the sweep first")
    plan = grid_plan(grid)
    settings, stale = (plan[0] if plan else []), 0
    if plan is not None:  # records of an earlier version of the grid are not averaged in
        keep = runs.run_id.isin(plan[1])
        stale, runs = int((~keep).sum()), runs[keep]
    out = out or root / grid / "report"
    parts = [f"# {grid}: last-epoch metrics, mean ± std over seeds (n runs)\n"]
    if stale:
        parts.append(f"({stale} records of runs the grid no longer plans were left out.)\n")
    for metric, title in METRICS.items():
        table = main_table(runs, metric, settings)
        if table.empty:
            continue
        parts.append(f"## {title}\n\n{table.to_markdown()}\n")
        if metric == "top1":
            atomic_write_bytes(out / "main_table.csv", cell_stats(runs, metric).to_csv(index=False).encode())
    failed = runs[runs.status == "failed"]
    if len(failed):
        parts.append("## Failed runs\n\n" + "\n".join(
            f"- {r['run_id']} {r['method']} {r['arch']}/{r['dataset']} seed {r['seed']}: {r.get('reason', '')}"
            for _, r in failed.iterrows()) + "\n")
    text = "\n".join(parts)
    atomic_write_bytes(out / "main_table.md", text.encode())
    return text


@cli
def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.report", description=__doc__.split("\n\n")[0])
    p.add_argument("--grid", action="append", help="grid name or file (repeatable; default main_table)")
    p.add_argument("--results-root")
    p.add_argument("--out", type=Path, help="folder for the report (default results/<grid>/report)")
    a = p.parse_args(argv)
    root = results_root(a.results_root)
    for grid in a.grid or ["main_table"]:
        name = grid_path(grid).stem
        print(report(name, root, a.out))


if __name__ == "__main__":
    main()
