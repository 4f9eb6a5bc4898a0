import statistics

import pytest

from bench.errors import BenchError
from bench.report import cell_stats, main_table, report
from bench.store import load_records, write_record


def records(tmp_path):
    folder = tmp_path / "g" / "records"
    values = {("ensemble", "vgg11"): [98.0, 99.0, 97.0], ("single", "vgg11"): [96.5, 97.5],
              ("single", "resnet50"): [95.0]}
    for (method, arch), tops in values.items():
        for seed, top1 in enumerate(tops):
            write_record(folder, {"run_id": f"{method}-{arch}-{seed}", "status": "done", "stage": "methods",
                                  "method": method, "arch": arch, "dataset": "digits", "seed": seed,
                                  "top1": top1, "top5": 100.0, "nll": 0.1, "ece": 1.0})
    write_record(folder, {"run_id": "t0", "status": "done", "stage": "teachers", "method": "single",
                          "arch": "vgg11", "dataset": "digits", "top1": 1.0})  # not a table run
    write_record(folder, {"run_id": "bad", "status": "failed", "stage": "methods", "method": "ensemble",
                          "arch": "resnet50", "dataset": "digits", "seed": 0, "reason": "teacher 3 not found"})
    return values


def test_cells_are_mean_std_and_n_over_seeds(tmp_path):
    values = records(tmp_path)
    stats = cell_stats(load_records(tmp_path / "g")).set_index(["method", "setting"])
    cell = stats.loc[("ensemble", "vgg11 / digits")]
    assert cell["mean"] == pytest.approx(98.0) and cell["n"] == 3
    assert cell["std"] == pytest.approx(statistics.stdev(values[("ensemble", "vgg11")]))
    table = main_table(load_records(tmp_path / "g"))
    assert list(table.index) == ["single", "ensemble"]  # the paper's row order
    assert table.loc["single", "vgg11 / digits"] == "97.00 ± 0.71 (n=2)"
    assert table.loc["single", "resnet50 / digits"] == "95.00 (n=1)"
    assert table.loc["ensemble", "resnet50 / digits"] == "missing"  # its only run failed


def test_report_files_and_failed_runs(tmp_path):
    records(tmp_path)
    text = report("g", tmp_path)
    assert "teacher 3 not found" in text
    assert (tmp_path / "g" / "report" / "main_table.md").read_text() == text
    assert (tmp_path / "g" / "report" / "main_table.csv").read_text().startswith("method,setting,mean,std,n")
    with pytest.raises(BenchError, match="no records"):
        report("other", tmp_path)
