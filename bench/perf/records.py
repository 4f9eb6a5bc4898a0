"""The benchmarks read from a tiny main_table run's records: tiny_main_table (job seconds per stage
against the committed reference records) and time_to_student (WeightFormer's job seconds to a
student against KD's and the soup's)."""
from __future__ import annotations

from pathlib import Path

from bench.errors import BenchError
from bench.perf.harness import Row


# -- tiny_main_table -------------------------------------------------------------------------

def stage_seconds(records: Path) -> dict[str, float]:
    """Summed job seconds per stage of the records under `records` (finished jobs only): a job's
    wall seconds, or its training's where larger (a teacher found finished carries the seconds
    its training took)."""
    from bench.run_records import load_records

    table = load_records(records)
    table = table[table["status"] == "done"]
    if table.empty:
        return {}
    seconds = table[[c for c in ("wall_s", "train_s") if c in table]].max(axis=1)
    return seconds.groupby(table["stage"]).sum().to_dict()


def tiny_main_table_rows(results: Path, reference: Path) -> list[Row]:
    """Job seconds per stage of a tiny main_table run in `results` against the reference run in
    `reference` (records of the committed results; another machine, another commit)."""
    mine, ref = stage_seconds(results), stage_seconds(reference)
    if not mine:
        raise BenchError(f"tiny_main_table: no finished records under {results}; run `make demo` first "
                         f"(or pass --results-root)")
    rows = []
    for stage in [*sorted(mine), "total"]:
        now = sum(mine.values()) if stage == "total" else mine[stage]
        before = sum(ref.values()) if stage == "total" else ref.get(stage, float("nan"))
        # Seconds: lower is better, so the ratio is the speed-up reference / this run.
        rows.append(Row(f"tiny_main_table/{stage}", before / now, "reference records", "this run", "job s",
                        now, now, now, {"baseline_median": before, "results": str(results), "reference": str(reference)}))
    return rows


# -- time_to_student -------------------------------------------------------------------------

def time_to_student_rows(records: Path) -> list[Row]:
    """Per architecture, from a tiny main_table run's records (seen groups): the median job seconds
    to a WeightFormer student (one forward pass; meta-training is the pool's one-off cost, in
    tiny_main_table/meta_train) against KD's (a student trained on the same ensemble's soft
    labels, the suite's fastest way to it: cached where exact) and the uniform soup's, each
    student's median top-1 beside its time. Job seconds include loading and the test evaluation."""
    from bench.run_records import load_records

    table = load_records(records)
    if "variant" in table:
        table = table[(table["status"] == "done") & (table["stage"] == "methods") & ~table["variant"].str.contains("/")]
    if table.empty or "variant" not in table:
        raise BenchError(f"time_to_student: no finished method records under {records}; run `make demo` first "
                         f"(or pass --results-root)")
    rows = []
    for arch, runs in table.groupby("arch"):
        cell = runs.groupby("method")[["wall_s", "top1"]].median()
        if "weightformer" not in cell.index:
            continue
        wf = cell.loc["weightformer"]
        for method in ("kd", "soup"):
            if method not in cell.index:
                continue
            seconds, top1 = cell.loc[method]
            rows.append(Row(f"time_to_student/{arch}/{method}", seconds / wf["wall_s"],
                            method, "weightformer", "job s", wf["wall_s"], wf["wall_s"], wf["wall_s"],
                            {"baseline_median": seconds, "baseline_top1": top1, "weightformer_top1": wf["top1"],
                             "groups": int((runs["method"] == "weightformer").sum())}))
    return rows

