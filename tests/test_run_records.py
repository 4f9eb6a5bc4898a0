import json

import pytest

from bench.run_records import REQUIRED_KEYS, load_records, run_id, write_record


def test_run_id_is_stable_and_distinct():
    a = run_id({"arch": "vgg11", "seed": 0, "lr": 0.1})
    assert a == run_id({"lr": 0.1, "seed": 0, "arch": "vgg11"})  # key order does not matter
    assert a != run_id({"arch": "vgg11", "seed": 1, "lr": 0.1})
    assert len(a) == 12 and int(a, 16) >= 0


def test_records_round_trip_into_one_long_table(tmp_path):
    records = tmp_path / "g" / "records"
    for seed in range(3):
        write_record(records, {"run_id": f"r{seed}", "status": "done", "seed": seed, "top1": 90.0 + seed,
                               "method": "single"})
    write_record(records, {"run_id": "bad", "status": "failed", "reason": "teacher missing"})
    table = load_records(tmp_path)
    assert len(table) == 4 and set(REQUIRED_KEYS) <= set(table.columns)
    done = table[table.status == "done"]
    assert done.top1.mean() == pytest.approx(91.0) and done.top1.std() == pytest.approx(1.0)
    assert table.set_index("run_id").loc["bad", "reason"] == "teacher missing"
    assert not list(records.glob(".*"))  # no temporary files left


def test_corrupt_record_is_skipped_with_a_warning_naming_it(tmp_path):
    records = tmp_path / "records"
    write_record(records, {"run_id": "ok", "status": "done"})
    (records / "broken.json").write_text('{"run_id": "x", "top1": ')
    with pytest.warns(UserWarning, match="broken.json"):
        table = load_records(records)
    assert list(table.run_id) == ["ok"]


def test_records_are_flat_and_statuses_checked(tmp_path):
    with pytest.raises(TypeError, match="flat"):
        write_record(tmp_path, {"run_id": "a", "status": "done", "config": {"lr": 1}})
    with pytest.raises(ValueError, match="status"):
        write_record(tmp_path, {"run_id": "a", "status": "finished"})
    path = write_record(tmp_path, {"run_id": "a", "status": "done", "top1": float("nan")})
    assert json.loads(path.read_text())["top1"] is None  # NaN is not JSON


def test_empty_folder_gives_an_empty_table_with_the_columns(tmp_path):
    table = load_records(tmp_path)
    assert len(table) == 0 and set(REQUIRED_KEYS) <= set(table.columns)


def test_a_record_of_a_future_schema_is_skipped_naming_it(tmp_path):
    records = tmp_path / "records"
    path = write_record(records, {"run_id": "ok", "status": "done"})
    assert json.loads(path.read_text())["schema"] == 1
    (records / "old.json").write_text(json.dumps({"run_id": "old", "status": "done"}))  # before schemas: 1
    (records / "new.json").write_text(json.dumps({"run_id": "new", "status": "done", "schema": 2}))
    with pytest.warns(UserWarning, match="new.json: record schema 2; this ensemble-bench reads schema 1 to 1"):
        table = load_records(records)
    assert sorted(table.run_id) == ["ok", "old"]


def test_a_dead_writers_temporary_file_is_removed_and_a_live_ones_kept(tmp_path):
    import os
    import subprocess

    from bench.io import HOST, remove_stale_temps

    gone = subprocess.Popen(["true"])
    gone.wait()
    host = HOST.split(".")[0]
    dead = tmp_path / "records" / f".a.json.{host}.{gone.pid}.k2j4x9zz.tmp"
    live = tmp_path / "records" / f".b.json.{host}.{os.getpid()}.q8w7e6rr.tmp"
    foreign = tmp_path / ".c.json.otherhost.1.abcdefgh.tmp"
    for p in (dead, live, foreign):
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text("{")
    assert remove_stale_temps(tmp_path) == [dead]
    assert live.exists() and foreign.exists()
    os.utime(foreign, (0, 0))  # a day and more without its writer
    assert remove_stale_temps(tmp_path) == [foreign]
