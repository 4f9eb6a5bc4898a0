"""One contract for every executor of bench.sweep (debug, local, slurm on the SLURM stand-ins of
tests/conftest.py): each task of a tiny plan is handed over once, every job's state comes back,
and a job already finished is never handed over again."""
import os
import shutil
from pathlib import Path

import pytest

from bench.grid import load_grid
from bench.jobs import Roots, unit_spec
from bench.stages import run_job
from bench.sweep import CLUSTER_FILE, load_resources, make_plan, read_manifest
from bench.sweep.executors import EXECUTORS
from bench.sweep.executors.local import LocalExecutor

# Two members trained as one stack, then two method jobs that need them.
TINY = """
n_teachers: 2
seeds: 1
pools:
  - arch: vgg11
    dataset: digits
    members: 2
    held_out: 0
    recipe: {epochs: 1}
methods: [single, ensemble]
"""
# Answers every query with the lines of squeue.out beside it, as a cluster that knows the jobs would.
SQUEUE = """#!/bin/sh
echo "squeue $*" >> "$(dirname "$0")/calls"
cat "$(dirname "$0")/squeue.out" 2>/dev/null
"""


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A grid whose teachers are trained and recorded (once for the module): its methods are left."""
    tree = tmp_path_factory.mktemp("trained")
    (tree / "tiny.yaml").write_text(TINY)
    roots = Roots(tree / "teachers", tree / "results")
    plan = make_plan(load_grid(tree / "tiny.yaml", "tiny"), roots)
    run_job(unit_spec(plan.stages["teachers"]), "tiny", roots)
    return tree


def executor(kind, folder, monkeypatch):
    if kind == "slurm":  # the stand-ins first on PATH: a real SLURM elsewhere is never reached
        monkeypatch.setenv("PATH", f"{folder}:{os.environ['PATH']}")
    return LocalExecutor(progress=False) if kind == "local" else EXECUTORS[kind]()


@pytest.mark.parametrize("kind", ["debug", "local", "slurm"])
def test_each_task_is_handed_over_once_and_every_state_comes_back(kind, trained, tmp_path, fake_slurm, monkeypatch):
    shutil.copytree(trained, tmp_path / "tree")
    (fake_slurm / "squeue").write_text(SQUEUE)
    roots, grid = Roots(tmp_path / "tree" / "teachers", tmp_path / "tree" / "results"), tmp_path / "tree" / "tiny.yaml"
    ex = executor(kind, fake_slurm, monkeypatch)
    handed = []
    monkeypatch.setattr(ex, "task", lambda unit: handed.append(sorted(j.run_id for j in unit)) or unit_spec(unit))
    resources = {s: load_resources(CLUSTER_FILE, "tiny", s, {}) for s in ("pretrain", "teachers", "meta_train", "methods")}

    plan = make_plan(load_grid(grid, "tiny"), roots)
    teachers, methods = ({j.run_id for j in plan.stages[s]} for s in ("teachers", "methods"))
    assert plan.done == teachers and len(methods) == 2
    states = ex.submit(plan, resources)
    assert sorted(handed) == sorted([m] for m in methods)  # each method once, no finished teacher
    assert set(states) == teachers | methods and all(states[t]["state"] == "done" for t in teachers)
    ended = {"done"} if ex.blocking else {"submitted"}
    assert {states[m]["state"] for m in methods} == ended, states

    manifest = read_manifest("tiny", roots)
    assert manifest["cluster"] == kind
    if kind == "slurm":
        (fake_slurm / "squeue.out").write_text("".join(f"{states[m]['job_id']} PENDING\n" for m in methods))
    seen = ex.job_states(manifest)
    assert set(seen) == teachers | methods
    assert {seen[m] for m in methods} == ({"done"} if ex.blocking else {"pending"})

    handed.clear()
    again = make_plan(load_grid(grid, "tiny"), roots)
    ex.submit(again, resources)
    # Neither finished jobs nor ones SLURM still holds (pending, on the stand-ins) are handed over again.
    assert handed == []
    if kind == "slurm":  # gone from the queue without a record: failed, so submitted again
        (fake_slurm / "squeue.out").write_text("")
        ex.submit(make_plan(load_grid(grid, "tiny"), roots), resources)
        assert sorted(handed) == sorted([m] for m in methods)


def test_the_background_local_driver_reruns_the_command_with_the_same_roots(tmp_path, monkeypatch, capsys):
    """`--cluster local` without --wait starts the same command again with --wait --quiet: every
    flag given reaches the driver as given, relative paths name the same files from the folder it
    starts in, and the roots are the ones this process checked."""
    import subprocess
    import sys
    from types import SimpleNamespace

    from bench.sweep import main, parse_args
    from bench.sweep.executors import local

    started = []
    monkeypatch.setattr(local.subprocess, "Popen",
                        lambda cmd, **kw: started.append((cmd, kw)) or SimpleNamespace(pid=12345))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "tiny.yaml").write_text(TINY)
    argv = ["--grid", "tiny.yaml", "--cluster", "auto", "--results-root", "r", "--stack", "1", "--seeds", "1",
            "--max-parallel", "1", "--data-root", "."]
    monkeypatch.setenv("PATH", "/nonexistent")  # no sbatch: auto picks local
    monkeypatch.setenv("BENCH_DATA", "")  # --data-root exports it; restored after the test
    main(argv)
    assert "local driver started (pid 12345)" in capsys.readouterr().out
    (cmd, kw), = started
    assert cmd[:3] == [sys.executable, "-m", "bench.sweep"] and cmd[3:3 + len(argv)] == argv
    assert kw["start_new_session"] and kw["stdin"] == subprocess.DEVNULL and kw.get("cwd") is None
    driver = parse_args(cmd[3:])
    assert driver.wait and driver.quiet and driver.cluster == "local" and driver.stack == 1
    assert driver.results_root == str((tmp_path / "r").resolve())
    assert driver.teachers_root == str(Path(os.environ["BENCH_TEACHERS"]).resolve())
    assert Path(driver.data_root).resolve() == tmp_path.resolve()


REFUSE_SECOND = """#!/bin/sh
echo "sbatch $*" >> "$(dirname "$0")/calls"
n=$(cat "$0.count" 2>/dev/null || echo 100); n=$((n+1)); echo $n > "$0.count"
if [ "$n" = 102 ]; then echo "sbatch: error: QOSMaxSubmitJobPerUserLimit" >&2; exit 1; fi
cp "$1" "$0.$n.sh"
echo "Submitted batch job $n"
"""


def test_an_array_sbatch_refuses_leaves_the_earlier_ones_tracked_and_a_rerun_submits_only_the_rest(
        trained, tmp_path, fake_slurm, monkeypatch):
    shutil.copytree(trained, tmp_path / "tree")
    for record in (tmp_path / "tree" / "results" / "tiny" / "records").glob("*.json"):
        record.unlink()  # the teachers to run again: two arrays, teachers then methods
    (fake_slurm / "squeue").write_text(SQUEUE)
    (fake_slurm / "sbatch").write_text(REFUSE_SECOND)
    roots, grid = Roots(tmp_path / "tree" / "teachers", tmp_path / "tree" / "results"), tmp_path / "tree" / "tiny.yaml"
    ex = executor("slurm", fake_slurm, monkeypatch)
    handed = []
    monkeypatch.setattr(ex, "task", lambda unit: handed.append(sorted(j.run_id for j in unit)) or unit_spec(unit))
    resources = {s: load_resources(CLUSTER_FILE, "tiny", s, {}) for s in ("pretrain", "teachers", "meta_train", "methods")}
    plan = make_plan(load_grid(grid, "tiny"), roots)
    teachers, methods = ({j.run_id for j in plan.stages[s]} for s in ("teachers", "methods"))
    with pytest.raises(Exception, match="QOSMaxSubmitJobPerUserLimit"):
        ex.submit(plan, resources)
    tracked = {j["run_id"]: j for jobs in read_manifest("tiny", roots)["stages"].values() for j in jobs}
    assert {tracked[t]["job_id"] for t in teachers} == {"101"}  # the teachers' array, before the refusal
    assert not any(tracked[m].get("job_id") for m in methods)
    (fake_slurm / "squeue.out").write_text("101 PENDING\n")
    handed.clear()
    ex.submit(make_plan(load_grid(grid, "tiny"), roots), resources)
    assert sorted(handed) == sorted([m] for m in methods)  # the queued teachers are not submitted again
    script = (fake_slurm / "sbatch.103.sh").read_text()
    assert "--dependency=afterok:101" in script  # the methods wait on the teachers still queued


def test_packing_shares_array_tasks_only_among_short_jobs_nothing_waits_on():
    """Known answer: consecutive tasks pack while their estimates fit the budget; one marked inf
    (needed by another job, or no packing asked) or over the budget runs alone."""
    from bench.sweep.executors.slurm import packed

    tasks = [[f"t{i}"] for i in range(7)]
    packs = packed(tasks, [10, 20, 40, float("inf"), 5, 100, 1], budget=60)
    assert [[u[0] for u in p] for p in packs] == [["t0", "t1"], ["t2"], ["t3"], ["t4"], ["t5"], ["t6"]]
    assert packed(tasks[:3], [1, 1, 1], budget=60) == [tasks[:3]]
    assert packed(tasks[:2], [float("inf")] * 2, budget=60) == [[tasks[0]], [tasks[1]]]


def test_slurm_packs_light_methods_into_one_array_task(trained, tmp_path, fake_slurm, monkeypatch):
    """--pack-min on the stand-in sbatch: the two method jobs (seconds each, nothing needs them) go
    out as one array task of a PackRunner, each handed over once, both tracked under its id."""
    shutil.copytree(trained, tmp_path / "tree")
    (fake_slurm / "squeue").write_text(SQUEUE)
    roots, grid = Roots(tmp_path / "tree" / "teachers", tmp_path / "tree" / "results"), tmp_path / "tree" / "tiny.yaml"
    ex = executor("slurm", fake_slurm, monkeypatch)
    handed = []
    monkeypatch.setattr(ex, "task", lambda unit: handed.append(sorted(j.run_id for j in unit)) or unit_spec(unit))
    resources = {s: load_resources(CLUSTER_FILE, "tiny", s, {"pack_min": 5}) for s in
                 ("pretrain", "teachers", "meta_train", "methods")}
    plan = make_plan(load_grid(grid, "tiny"), roots)
    methods = {j.run_id for j in plan.stages["methods"]}
    states = ex.submit(plan, resources)
    assert sorted(handed) == sorted([m] for m in methods)
    # One task: submitit sends a batch of one as a plain job (unpacked, the two were 101_0 and 101_1).
    assert {states[m]["job_id"] for m in methods} == {"101"}


def test_a_pack_runs_every_job_and_then_fails_naming_the_failed_ones(trained, tmp_path):
    from bench.errors import BenchError
    from bench.run_records import load_records
    from bench.sweep.runners import PackRunner

    shutil.copytree(trained, tmp_path / "tree")
    roots, grid = Roots(tmp_path / "tree" / "teachers", tmp_path / "tree" / "results"), tmp_path / "tree" / "tiny.yaml"
    plan = make_plan(load_grid(grid, "tiny"), roots)
    good = plan.stages["methods"][0]
    broken = {**good.spec, "method": "no_such_method"}
    with pytest.raises(BenchError, match="1 of 2 packed jobs failed: broken: .*no_such_method"):
        PackRunner()([("broken", broken), (good.run_id, good.spec)], "tiny", roots)
    records = load_records(roots.results / "tiny")
    assert records.set_index("run_id").loc[good.run_id, "status"] == "done"  # ran after its neighbour failed


def test_pack_min_must_fit_the_time_limit(tmp_path):
    from bench.errors import BenchError

    with pytest.raises(BenchError, match="pack_min must be 0 .* below timeout_min \\(30\\)"):
        load_resources(CLUSTER_FILE, "tiny", "methods", {"pack_min": 45})


def test_light_packs_hold_one_gpu_and_the_rest_what_the_stage_asks(trained, tmp_path, fake_slurm, monkeypatch):
    """--gpus 4 --pack-min 5: the evaluations go out as one single-GPU task; without packing the
    same jobs ask for the stage's 4 (each their own task)."""
    from bench.sweep.resources import Resources

    shutil.copytree(trained, tmp_path / "tree")
    (fake_slurm / "squeue").write_text(SQUEUE)
    roots, grid = Roots(tmp_path / "tree" / "teachers", tmp_path / "tree" / "results"), tmp_path / "tree" / "tiny.yaml"
    for pack_min, gpus_line in ((5, "--gpus-per-node=1"), (0, "--gpus-per-node=4")):
        ex = executor("slurm", fake_slurm, monkeypatch)
        resources = {s: Resources(gpus=4, timeout_min=30, pack_min=pack_min) for s in
                     ("pretrain", "teachers", "meta_train", "methods")}
        for script in fake_slurm.glob("sbatch.*.sh"):
            script.unlink()
        (roots.results / "tiny" / "sweep.json").unlink(missing_ok=True)
        ex.submit(make_plan(load_grid(grid, "tiny"), roots), resources)
        (script,) = fake_slurm.glob("sbatch.*.sh")
        assert gpus_line in script.read_text()
