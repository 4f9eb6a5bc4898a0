"""Two runs of one job never run it twice: a live lock is waited on, a stale one taken over."""
import json
import multiprocessing as mp
import os
import re
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest

import bench.locks as locks
import bench.stages as stages
from bench.jobs import Roots
from bench.run_records import run_id, write_record

SPEC = {"stage": "methods", "method": "single", "variant": "single", "seed": 0, "members": [0]}


def fake_method(log):
    """A methods runner that logs each run, takes a while, and writes its record."""
    def run(spec, grid, roots):
        with open(log, "a") as f:
            f.write(f"{os.getpid()}\n")
        time.sleep(1.5)
        write_record(roots.results / grid / "records", {"run_id": run_id(spec), "status": "done"})
        return {}
    return run


def _child(log, root, barrier):
    stages.RUNNERS["methods"] = fake_method(log)
    barrier.wait()
    stages.run_once(SPEC, "g", Roots(root / "t", root / "r"))


@pytest.fixture
def quick(monkeypatch):
    monkeypatch.setattr(locks, "POLL_S", 0.1)


def test_two_processes_started_at_once_run_a_job_once(tmp_path, quick):
    ctx = mp.get_context("fork")  # the patched runner and POLL_S travel with the fork
    log = tmp_path / "runs.log"
    barrier = ctx.Barrier(2)
    procs = [ctx.Process(target=_child, args=(log, tmp_path, barrier)) for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(30)
    assert [p.exitcode for p in procs] == [0, 0]
    assert len(log.read_text().split()) == 1
    assert not list((tmp_path / "r" / "g" / "locks").iterdir())  # released


def test_a_finished_job_is_not_run_again_but_force_reruns_it(tmp_path, monkeypatch, quick):
    log = tmp_path / "runs.log"
    monkeypatch.setitem(stages.RUNNERS, "methods", fake_method(log))
    roots = Roots(tmp_path / "t", tmp_path / "r")
    assert stages.run_once(SPEC, "g", roots) == {}
    assert stages.run_once(SPEC, "g", roots) == {"already_done": True}
    stages.run_once(SPEC, "g", roots, rerun=True)
    assert len(log.read_text().split()) == 2


def lock_file(tmp_path, **owner):
    path = tmp_path / "r" / "g" / "locks" / f"{run_id(SPEC)}.lock"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "slurm_job": None,
                                "started": 0.0, **owner}))
    return path


def dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


@pytest.mark.parametrize("owner, env, why", [
    (lambda: {"pid": dead_pid()}, {}, "process .* is gone"),
    (lambda: {"host": "elsewhere", "slurm_job": "41"}, {"SLURM_JOB_ID": "41"}, "this SLURM job's own"),
    (lambda: {"host": "elsewhere"}, {}, "untouched for"),
])
def test_a_stale_lock_is_taken_over_not_waited_on(tmp_path, monkeypatch, capsys, quick, owner, env, why):
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setitem(stages.RUNNERS, "methods", fake_method(tmp_path / "runs.log"))
    path = lock_file(tmp_path, **owner())
    if why == "untouched for":
        old = time.time() - locks.STALE_S - 5
        os.utime(path, (old, old))
    stages.run_once(SPEC, "g", Roots(tmp_path / "t", tmp_path / "r"))
    assert (tmp_path / "runs.log").read_text().count("\n") == 1
    err = capsys.readouterr().err
    assert re.search(f"took over a stale lock \\({why}", err) and "waiting" not in err  # never waited on
    assert not path.exists() and not list(path.parent.glob("*.stale-*"))


def test_a_live_lock_is_waited_on_and_its_finished_job_not_rerun(tmp_path, monkeypatch, capsys, quick):
    log = tmp_path / "runs.log"
    monkeypatch.setitem(stages.RUNNERS, "methods", fake_method(log))
    holder = subprocess.Popen(["sleep", "30"])  # a live process of this host holds the lock
    path = lock_file(tmp_path, pid=holder.pid)
    roots = Roots(tmp_path / "t", tmp_path / "r")

    def finish_elsewhere():
        time.sleep(1.0)
        write_record(roots.results / "g" / "records", {"run_id": run_id(SPEC), "status": "done"})
        path.unlink()
        holder.kill()

    threading.Thread(target=finish_elsewhere).start()
    assert stages.run_once(SPEC, "g", roots) == {"already_done": True}
    assert not log.exists()
    assert f"waiting: another run holds it (pid {holder.pid} on {socket.gethostname()})" in capsys.readouterr().err


def test_a_stack_holds_each_members_lock():
    roots = Roots(Path("/t"), Path("/r"))
    members = [{"stage": "teachers", "pool": "p", "member": k, "recipe": {}} for k in range(3)]
    paths = stages.lock_paths({"stage": "teachers", "stack": members}, "g", roots)
    assert paths == [roots.teachers / ".locks" / f"{run_id(m)}.lock" for m in members]
    assert stages.lock_paths(members[1], "other", roots) == [paths[1]]  # alone, from another grid: the same lock


def test_a_live_sibling_in_the_same_slurm_job_is_not_a_requeue(tmp_path, monkeypatch):
    """Local jobs run inside one allocation share its SLURM job id: a live one keeps its lock,
    whatever squeue says of that id."""
    monkeypatch.setenv("SLURM_JOB_ID", "41")
    sibling = subprocess.Popen(["sleep", "30"])
    try:
        path = lock_file(tmp_path, pid=sibling.pid, slurm_job="41")
        assert locks.stale(path, json.loads(path.read_text()), locks.owner()) is None
    finally:
        sibling.kill()
        sibling.wait()
    assert locks.stale(path, json.loads(path.read_text()), locks.owner()) == f"process {sibling.pid} is gone"
