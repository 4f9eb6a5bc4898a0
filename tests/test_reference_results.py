"""The committed reference results: regenerating a grid's report from its committed records
gives the committed tables byte for byte."""
from pathlib import Path

import pytest

from bench.paths import project_root
from bench.report import report

RESULTS = project_root() / "results"
GRIDS = sorted(d.name for d in RESULTS.iterdir() if any((d / "records").glob("*.json"))) if RESULTS.is_dir() else []
TEXT = (".md", ".csv", ".tex")  # plots are images: their bytes may differ with the fonts of the machine


def test_main_table_records_are_committed():
    assert any((RESULTS / "main_table" / "records").glob("*.json")), "results/main_table/records holds no records"


@pytest.mark.parametrize("grid", GRIDS)
def test_report_reproduces_committed_tables(grid, tmp_path, monkeypatch):
    # A grid whose committed report sets a rerun beside it (results/rerun/<grid>) is reported so again.
    monkeypatch.chdir(project_root())
    rerun = Path("results") / "rerun" if (RESULTS / grid / "report" / "rerun.md").is_file() else None
    report(grid, RESULTS, tmp_path / grid, rerun=rerun)
    made = sorted(p.relative_to(tmp_path / grid) for p in (tmp_path / grid).rglob("*") if p.suffix in TEXT)
    assert "main_table.md" in map(str, made)
    for name in made:
        committed = RESULTS / grid / "report" / name
        assert committed.is_file(), f"{committed} is not committed"
        assert (tmp_path / grid / name).read_bytes() == committed.read_bytes(), f"{grid}/report/{name} differs"


@pytest.mark.parametrize("grid", GRIDS)
def test_every_committed_record_is_a_job_the_grid_still_plans(grid, tmp_path):
    """A change to a spec (a new option, a new default) must keep the committed records' run ids:
    otherwise a rerun would redo them and the report would mix two generations."""
    from bench.grid import grid_path, load_grid
    from bench.jobs import Roots
    from bench.run_records import load_records
    from bench.sweep import make_plan

    plan = make_plan(load_grid(grid_path(grid), "tiny"), Roots.resolve(tmp_path / "t", tmp_path / "r"))
    planned = {j.run_id for jobs in plan.stages.values() for j in jobs}
    records = set(load_records(RESULTS / grid / "records")["run_id"])
    assert records and not records - planned, sorted(records - planned)[:5]
