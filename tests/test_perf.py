"""The benchmark harness: paired ratios, the JSON rows, the stage table, bad options."""
import json
import math

import pytest
import torch

from bench.perf import command, harness, training
from bench.perf.records import stage_seconds, time_to_student_rows, tiny_main_table_rows
from bench.run_records import write_record


def test_paired_ratio_is_the_median_of_the_alternating_pairs():
    base = iter([10.0, 10.0, 20.0, 10.0, 10.0])  # warm-up value first
    cont = iter([99.0, 30.0, 20.0, 40.0, 10.0])
    row = harness.paired("x", ("a", lambda: next(base)), ("b", lambda: next(cont)), unit="u", repeat=4)
    # pairs after the warm-up: 30/10, 20/20, 40/10, 10/10 -> ratios 3, 1, 4, 1
    assert row.ratio == 2.0
    assert (row.median, row.min, row.max) == (25.0, 10.0, 40.0)
    assert row.settings["ratio_min"] == 1.0 and row.settings["ratio_max"] == 4.0
    assert row.settings["baseline_median"] == 10.0 and row.settings["repeat"] == 4


def test_stage_seconds_sum_the_larger_of_wall_and_training_seconds(tmp_path):
    records = tmp_path / "records"
    for i, (stage, wall, train, status) in enumerate([("teachers", 0.1, 30.0, "done"), ("teachers", 12.0, 10.0, "done"),
                                                      ("methods", 5.0, None, "done"), ("methods", 7.0, None, "failed")]):
        write_record(records, {"run_id": f"r{i}", "status": status, "stage": stage, "wall_s": wall,
                               **({"train_s": train} if train is not None else {})})
    assert stage_seconds(records) == {"teachers": 42.0, "methods": 5.0}
    rows = tiny_main_table_rows(records, records)
    assert [r.name for r in rows] == ["tiny_main_table/methods", "tiny_main_table/teachers", "tiny_main_table/total"]
    assert all(math.isclose(r.ratio, 1.0) for r in rows) and rows[-1].median == 47.0


def test_tiny_main_table_without_records_says_what_to_run(tmp_path, capsys):
    command.main(["--only", "tiny_main_table", "--results-root", str(tmp_path / "nothing")])
    assert "tiny_main_table: not run: tiny_main_table: no finished records" in capsys.readouterr().out


def test_gemm_peak_json_rows_have_the_documented_keys(tmp_path):
    out = tmp_path / "perf.json"
    command.main(["--quick", "--only", "gemm_peak", "--repeat", "1", "--out", str(out)])
    rows = json.loads(out.read_text())["rows"]
    assert [r["name"] for r in rows] == ["gemm_peak"]
    assert set(rows[0]) == {"name", "ratio", "baseline", "contender", "unit", "median", "min", "max", "settings"}
    assert rows[0]["baseline"] == "fp32" and rows[0]["contender"] == "bf16" and rows[0]["unit"] == "GFLOP/s"
    assert rows[0]["settings"]["baseline_median"] > 0 and rows[0]["median"] > 0


@pytest.mark.parametrize("argv, words", [
    (["--only", "gemm_pek"], ["'gemm_pek'", "gemm_peak", "loader"]),  # the valid names listed
    (["--repeat", "0"], ["--repeat must be at least 1"]),
])
def test_bad_options_exit_2_with_one_line(argv, words, capsys):
    with pytest.raises(SystemExit) as exit_:
        command.main(argv)
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and all(w in err for w in words)


def test_time_to_student_compares_medians_of_seen_groups(tmp_path):
    records = tmp_path / "records"
    runs = [("weightformer", "weightformer", 2.0, 90.0), ("weightformer", "weightformer", 4.0, 92.0),
            ("kd", "kd", 60.0, 91.0), ("kd", "kd", 40.0, 93.0), ("soup", "soup", 1.0, 10.0),
            ("kd", "kd/unseen", 1.0, 50.0)]  # unseen groups are not part of the comparison
    for i, (method, variant, wall, top1) in enumerate(runs):
        write_record(records, {"run_id": f"r{i}", "status": "done", "stage": "methods", "arch": "vgg11",
                               "method": method, "variant": variant, "wall_s": wall, "top1": top1})
    kd, soup = time_to_student_rows(records)
    assert (kd.name, kd.baseline, kd.contender) == ("time_to_student/vgg11/kd", "kd", "weightformer")
    assert kd.ratio == 50.0 / 3.0 and kd.median == 3.0
    assert kd.settings["baseline_top1"] == 92.0 and kd.settings["weightformer_top1"] == 91.0
    assert kd.settings["groups"] == 2
    assert soup.ratio == 1.0 / 3.0


def test_training_step_rows_pair_each_architecture_before_and_after(tmp_path):
    threads = torch.get_num_threads()
    rows = training.training_step_rows(quick=True, repeat=1, archs=("vgg11", "vit_b32"))
    assert [r.name for r in rows] == ["training_step/vgg11", "eval_forward/vgg11",
                                      "training_step/vit_b32", "eval_forward/vit_b32"]
    assert all(r.median > 0 and r.settings["baseline_median"] > 0 and r.settings["threads"] == 1 for r in rows)
    assert rows[0].unit == "steps/s" and rows[1].unit == "images/s"
    assert torch.get_num_threads() == threads  # the benchmark's one thread is not left behind


# Every size at its least: the benchmarks' code, not their numbers.
SMALLEST = harness.Sizes(gemm_n=64, pool_archs=("vgg11",), pool_members=(2,), pool_steps=1, pool_batch=4,
                         meta_archs=("vgg11",), meta_options={"steps": 2, "batch_size": 8, "d_model": 16, "depth": 1,
                                                              "heads": 2},
                         meta_count_archs=("vgg11",), meta_count_scale="tiny", loader=(2, 4, 32, 32, 4),
                         kd_archs=("vgg11",), kd_teacher_epochs=1, kd_epochs=1, step_archs=("vgg11",), step_steps=1)


def test_quick_runs_every_benchmark_to_the_end(tmp_path, monkeypatch, capsys):
    from bench.data.optional_ffcv import ffcv_available
    from bench.paths import project_root

    monkeypatch.setattr(harness, "QUICK", SMALLEST)
    out = tmp_path / "perf.json"
    # The committed main table's records stand in for a demo run (time_to_student, tiny_main_table).
    command.main(["--quick", "--repeat", "1", "--results-root", str(project_root() / "results"), "--out", str(out)])
    result = json.loads(out.read_text())
    # The loader compares FFCV with torchvision: where FFCV is not installed it says so and the rest run.
    assert set(result["not_run"]) == (set() if ffcv_available() else {"loader"}), result["not_run"]
    ran = {r["name"].split("/")[0] for r in result["rows"]}
    assert ran == (set(command.BENCHMARKS) | {"eval_forward"}) - set(result["not_run"])
    assert all(math.isfinite(r["ratio"]) and r["median"] > 0 for r in result["rows"]), result["rows"]
