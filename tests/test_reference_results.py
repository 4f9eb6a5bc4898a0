"""The committed reference results: regenerating a grid's report from its committed records
gives the committed tables byte for byte."""
import pytest

from bench.paths import project_root
from bench.report import report

RESULTS = project_root() / "results"
GRIDS = sorted(d.name for d in RESULTS.iterdir() if any((d / "records").glob("*.json"))) if RESULTS.is_dir() else []
COMPARED = ("main_table.md", "main_table.csv", "claims.md", "claims.csv")


def test_main_table_records_are_committed():
    assert any((RESULTS / "main_table" / "records").glob("*.json")), "results/main_table/records holds no records"


@pytest.mark.parametrize("grid", GRIDS)
def test_report_reproduces_committed_tables(grid, tmp_path):
    report(grid, RESULTS, tmp_path / grid)
    for name in COMPARED:
        committed = RESULTS / grid / "report" / name
        assert committed.is_file(), f"{committed} is not committed"
        assert (tmp_path / grid / name).read_bytes() == committed.read_bytes(), f"{grid}/report/{name} differs"
