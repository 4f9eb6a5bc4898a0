import contextlib
import dataclasses
import json
import os
import signal
import socket
import re
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from bench.grid import load_grid, parse_seeds
from bench.errors import BenchError
from bench.jobs import Roots, teacher_spec
from bench.report import report
from bench.stages import run_methods
from bench.run_records import load_records, run_id
from bench.sweep import (BUNDLE_MAX, CLUSTER_FILE, BundleRunner, load_resources, local_cap, main, make_plan,
                         next_bundle, print_status, run_local, span_seconds, unit_cost)

MINI = """
n_teachers: 2
seeds: 2
pools:
  - arch: vgg11
    dataset: digits
    members: 3
    held_out: 0
    recipe: {epochs: 1}
methods: [single, ensemble]
"""


@pytest.fixture
def mini(tmp_path):
    path = tmp_path / "mini.yaml"
    path.write_text(MINI)
    return path


def roots(tmp_path):
    return Roots.resolve(str(tmp_path / "teachers"), str(tmp_path / "results"))


def sweep(*args, env=None):
    return subprocess.run([sys.executable, "-m", "bench.sweep", *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})})


@contextlib.contextmanager
def beside(cmd: list[str], log: Path):
    """`cmd` running in the background (its stderr to `log`) while the block runs; killed with
    the processes it started if it is still running when the block ends."""
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=out, start_new_session=True)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def test_plan_expansion_wiring_and_stable_run_ids(mini, tmp_path):
    grid = load_grid(mini, "tiny")
    plan = make_plan(grid, roots(tmp_path))
    teachers, methods = plan.stages["teachers"], plan.stages["methods"]
    assert len(teachers) == 3 and len(methods) == 2 * 2  # members; methods x seeds
    teacher_ids = {t.spec["member"]: t.run_id for t in teachers}
    for job in methods:
        assert len(job.spec["members"]) == 2
        assert job.needs == [teacher_ids[k] for k in job.spec["members"]]
    again = make_plan(load_grid(mini, "tiny"), roots(tmp_path))
    assert [j.run_id for s in again.stages.values() for j in s] == [j.run_id for s in plan.stages.values() for j in s]
    assert len({j.run_id for s in plan.stages.values() for j in s}) == 7  # no two specs share an id
    mini.write_text(MINI.replace("epochs: 1", "epochs: 2"))
    changed = make_plan(load_grid(mini, "tiny"), roots(tmp_path))
    assert changed.stages["teachers"][0].run_id != teachers[0].run_id  # the recipe is in the spec


def test_debug_sweep_runs_records_and_skips_what_is_done(mini, tmp_path):
    args = ["--grid", str(mini), "--cluster", "debug", "--teachers-root", str(tmp_path / "teachers"),
            "--results-root", str(tmp_path / "results")]
    first = sweep(*args)
    assert first.returncode == 0, first.stderr
    table = load_records(tmp_path / "results" / "mini")
    assert len(table) == 3 + 4 and set(table.status) == {"done"}
    members = table[table.stage == "teachers"].set_index("member")
    for _, row in table[(table.method == "single") & (table.stage == "methods")].iterrows():
        # "single" re-evaluates the same saved teachers: its mean is their recorded mean.
        expected = members.loc[row.teacher_members, "top1"].mean()
        assert row.top1 == pytest.approx(expected) and row.infer_forwards == 1
    assert set(table[table.method == "ensemble"].infer_forwards) == {2}
    second = sweep(*args)
    assert second.returncode == 0 and "nothing to run" in second.stdout
    status = sweep("--grid", str(mini), "--status", "--teachers-root", str(tmp_path / "teachers"),
                   "--results-root", str(tmp_path / "results"))
    assert "teachers       3" in status.stdout and "methods        4" in status.stdout


def test_local_executor_respects_its_parallelism_cap(mini, tmp_path, capsys):
    mini.write_text(MINI.replace("seeds: 2", "seeds: 1").replace("[single, ensemble]", "[ensemble]"))
    grid = load_grid(mini, "tiny")
    r = roots(tmp_path)
    resources = {s: load_resources(CLUSTER_FILE, "tiny", s, {}) for s in ("teachers", "methods")}
    states = run_local(make_plan(grid, r), resources, cap=1, progress=False)
    assert all(s["state"] == "done" for s in states.values())
    manifest = json.loads((r.results / "mini" / "sweep.json").read_text())
    assert manifest["peak_running"] == 1 and manifest["finished"]
    assert local_cap(1) == len(os.sched_getaffinity(0)) and local_cap(10 ** 6) == 1
    # One slot: the ready jobs of a stage share one subprocess (a bundle), at most BUNDLE_MAX of them.
    teachers = manifest["stages"]["teachers"]
    assert len({j["job_id"] for j in teachers}) == -(-len(teachers) // BUNDLE_MAX)
    # Disk hygiene: --status sizes the logs; --clean removes the logs and students' folders of
    # finished jobs and nothing else.
    base = r.results / "mini"
    method = manifest["stages"]["methods"][0]["run_id"]
    for name in (method, "not-a-job"):
        (base / "students" / name).mkdir(parents=True)
        (base / "students" / name / "last.safetensors").write_bytes(b"0" * 1000)
    # What --status prints, read in this process (the command: test_debug_sweep_runs_records_and_skips_what_is_done).
    capsys.readouterr()
    print_status("mini", r)
    status = capsys.readouterr().out
    assert f"disk under {base}: local job logs " in status and "students' run folders 2 kB" in status
    records = sorted(p.read_bytes() for p in (base / "records").glob("*.json"))
    teacher_files = sorted(str(p) for p in r.teachers.rglob("*"))
    assert any((base / "jobs").iterdir())
    cleaned = sweep("--grid", str(mini), "--clean", "--results-root", str(r.results), "--teachers-root", str(r.teachers))
    assert cleaned.returncode == 0 and "removed" in cleaned.stdout, cleaned.stderr
    assert not any((base / "jobs").iterdir())
    assert sorted(p.name for p in (base / "students").iterdir()) == ["not-a-job"]
    assert sorted(p.read_bytes() for p in (base / "records").glob("*.json")) == records
    assert sorted(str(p) for p in r.teachers.rglob("*")) == teacher_files


def drained(tasks: list, costs: list[float], slots: int) -> list:
    """The bundles next_bundle hands out, one after another, until no task is left."""
    bundles, tasks, costs = [], list(tasks), list(costs)
    while tasks:
        bundle = next_bundle(tasks, costs, slots, slots, sum(costs))
        assert 1 <= len(bundle) <= BUNDLE_MAX and all(t in tasks for t in bundle)
        bundles.append(bundle)
        kept = [i for i, t in enumerate(tasks) if t not in bundle]
        tasks, costs = [tasks[i] for i in kept], [costs[i] for i in kept]
    return bundles


def test_bundles_start_large_tasks_alone_and_share_out_small_ones(mini):
    tasks = [[f"t{i}"] for i in range(20)]
    for costs in ([100.0] + [1.0] * 19, [10.0] * 20, [0.0] * 20, [float(i % 7) for i in range(20)]):
        for slots in (1, 2, 4):
            bundles = drained(tasks, costs, slots)
            # every task runs, once
            assert sorted(t for b in bundles for t in b) == sorted(tasks)
            if slots > 1 and costs[0] == 100.0:  # a task holding most of the work runs alone
                assert [["t0"]] in bundles
            if slots > 1 and len(set(costs)) == 1:  # equal tasks are shared out over the free slots
                assert len(bundles) >= slots
    # The plan's costs: a teacher's training outweighs one network's evaluation.
    plan = make_plan(load_grid(mini, "tiny"), roots(mini.parent))
    methods = {u[0].spec["method"]: unit_cost(u) for u in plan.units()["methods"]}
    assert 0 < methods["single"] < methods["ensemble"] < unit_cost(plan.units()["teachers"][0])


def test_a_task_others_wait_on_ranks_by_the_chain_it_starts():
    from bench.jobs import Job
    from bench.sweep import upward_rank

    teacher = [Job("teachers", {"k": 0}, "t")]
    meta = [Job("meta_train", {"k": 1}, "m", needs=[teacher[0].run_id])]
    student = [Job("methods", {"k": 2}, "wf", needs=[meta[0].run_id, teacher[0].run_id])]
    kd = [Job("methods", {"k": 3}, "kd")]
    cost = {id(teacher): 10.0, id(meta): 30.0, id(student): 1.0, id(kd): 35.0}
    rank = upward_rank([teacher, meta, student, kd], cost)
    # The longest chain of work a task starts goes first: the teacher (10 + 30 + 1 behind it) before
    # the lone KD (35), which goes before the meta-training (30 + 1) and its student.
    order = sorted((teacher, meta, student, kd), key=lambda u: -rank[id(u)])
    assert order == [teacher, kd, meta, student]


def test_a_bundle_runs_every_job_whatever_fails(tmp_path):
    bad = {"stage": "nope"}
    # cpus None: run_job sets this process's torch threads from it, and later tests train in-process.
    outcome = BundleRunner()([("a", bad), ("b", bad)], "mini", roots(tmp_path))
    assert list(outcome) == ["a", "b"]
    assert all(o["state"] == "failed" and "nope" in o["reason"] and o["ended"] >= o["started"]
               for o in outcome.values())


def test_generated_sbatch_holds_the_array_and_the_dependency(mini, tmp_path, fake_slurm):
    """A stand-in `sbatch` records what it is given: the text submitit generates. Stand-ins for
    every SLURM command come first on PATH (tests/conftest.py): no real cluster is needed or reached."""
    path = {"PATH": f"{fake_slurm}:{os.environ['PATH']}"}
    r = sweep("--grid", str(mini), "--cluster", "slurm", "--partition", "debug", "--timeout-min", "7",
              "--teachers-root", str(tmp_path / "teachers"), "--results-root", str(tmp_path / "results"), env=path)
    assert r.returncode == 0, r.stderr
    teachers, methods = (fake_slurm / "sbatch.101.sh").read_text(), (fake_slurm / "sbatch.102.sh").read_text()
    # The three members are one stack (sweeps/cluster.yaml: tiny teachers stack 16): one job, no array.
    assert "--array" not in teachers and "dependency" not in teachers
    assert "#SBATCH --array=0-3" in methods and "#SBATCH --dependency=afterok:101" in methods
    assert "#SBATCH --time=7" in teachers and "#SBATCH --partition=debug" in teachers
    manifest = json.loads((tmp_path / "results" / "mini" / "sweep.json").read_text())
    assert [j["job_id"] for j in manifest["stages"]["teachers"]] == ["101", "101", "101"]
    one = sweep("--grid", str(mini), "--cluster", "slurm", "--stack", "1", "--teachers-root", str(tmp_path / "t1"),
                "--results-root", str(tmp_path / "r1"), env=path)
    assert one.returncode == 0, one.stderr
    assert "#SBATCH --array=0-2" in (fake_slurm / "sbatch.103.sh").read_text()  # --stack 1: a task per member
    # A task per member: each seed's methods are an array of their own, waiting on its two members' tasks alone.
    groups = {tuple(j.spec["members"]) for j in make_plan(load_grid(mini, "tiny"), roots(tmp_path)).stages["methods"]}
    waits = {line for n in (104, 105) for line in (fake_slurm / f"sbatch.{n}.sh").read_text().splitlines()
             if "--dependency" in line}
    assert waits == {"#SBATCH --dependency=afterok:" + ":".join(f"103_{k}" for k in sorted(g)) for g in groups}
    assert len(groups) == 2 and "#SBATCH --array=0-1" in (fake_slurm / "sbatch.104.sh").read_text()
    # Submitting calls sbatch and reads the array size limit, nothing else (srun runs inside the jobs).
    calls = (fake_slurm / "calls").read_text().splitlines()
    sbatches = [c for c in calls if c.startswith("sbatch ")]
    assert len(sbatches) == 5 and set(calls) - set(sbatches) == {"scontrol show config"}, calls  # 2 + 3 arrays


def test_teachers_are_grouped_into_stacks_that_keep_every_members_job():
    from bench.jobs import unit_spec, units

    grid = load_grid("main_table_scratch", "tiny")
    jobs = make_plan(grid, Roots(Path("/nonexistent"), Path("/nonexistent"))).stages["teachers"]
    stacks = units("teachers", jobs, 5)
    assert [j.run_id for u in stacks for j in u] == [j.run_id for j in jobs]  # every member, in plan order
    by_arch = {}
    for u in stacks:
        assert len({(j.spec["pool"], json.dumps(j.spec["recipe"])) for j in u}) == 1 and len(u) <= 5
        by_arch.setdefault(u[0].spec["arch"], []).append(len(u))
    # ViT does not pack; ResNet packs but runs slower stacked on a CPU (ArchSpec.stacks).
    assert by_arch == {"vgg11": [5, 5, 4], "resnet50": [1] * 14, "vit_b32": [1] * 14}
    assert all(len(u) == 1 for u in units("teachers", jobs, 1))
    spec = unit_spec(stacks[0])
    assert spec["stage"] == "teachers" and [run_id(s) for s in spec["stack"]] == [j.run_id for j in stacks[0]]
    assert unit_spec(stacks[-1]) == stacks[-1][0].spec
    # Members fine-tuned from a base (each from its own start, some with drawn hyperparameters) never stack.
    finetuned = make_plan(load_grid("main_table", "tiny"), Roots(Path("/nonexistent"), Path("/nonexistent")))
    assert all(len(u) == 1 for u in units("teachers", finetuned.stages["teachers"], 16))


def test_every_committed_teacher_record_is_still_planned():
    """Stacking changes how members run, not what they are: committed records keep their run ids."""
    from bench.paths import project_root
    from bench.report.records import grid_plan

    results = project_root() / "results"
    for grid in sorted(d for d in results.iterdir() if (d / "records").is_dir()):
        records = [json.loads(p.read_text()) for p in (grid / "records").glob("*.json")]
        teachers = {r["run_id"] for r in records if r.get("stage") == "teachers"}
        plan = grid_plan(grid.name)
        if plan is not None and teachers:
            assert teachers <= plan.ids, grid.name


@pytest.mark.parametrize("args, words", [
    (["--grid", "smoke", "--gird", "x"], ["unrecognized arguments: --gird", "--grid", "--scale", "--cluster"]),
    (["--grid", "smoke", "--cluster", "slurmm"], ["unknown cluster 'slurmm'", "auto, debug, local, slurm"]),
    (["--grid", "smoke", "--scale", "huge"], ["unknown scale 'huge'"]),
    (["--grid", "smokey"], ["unknown grid 'smokey'", "main_table", "smoke"]),
])
def test_bad_input_stops_with_one_line(args, words, tmp_path):
    r = sweep(*args, "--results-root", str(tmp_path / "results"))
    assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
    assert all(w in r.stderr for w in words), r.stderr
    assert not (tmp_path / "results").exists()


@pytest.mark.parametrize("cluster, have, missing", [
    ("slurm", (), "sbatch and srun not found"),
    ("slurm", ("sbatch",), "srun not found"),
    ("slurm", ("srun",), "sbatch not found"),
    ("auto", ("sbatch",), "--cluster auto picked slurm (sbatch is on PATH), but srun not found"),
])
def test_slurm_without_its_commands_stops_before_submitting(mini, tmp_path, fake_slurm, cluster, have, missing):
    for name in {"sbatch", "srun"} - set(have):
        (fake_slurm / name).unlink()
    # Only the stand-ins and Python on PATH: a real SLURM elsewhere on this machine is not seen.
    r = sweep("--grid", str(mini), "--cluster", cluster, "--teachers-root", str(tmp_path / "teachers"),
              "--results-root", str(tmp_path / "results"), env={"PATH": f"{fake_slurm}:{Path(sys.executable).parent}"})
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and missing in r.stderr, r.stderr
    assert not (tmp_path / "teachers").exists() and not (tmp_path / "results").exists()
    assert not (fake_slurm / "calls").exists()


def test_an_unwritable_root_stops_before_submitting(mini, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    r = sweep("--grid", str(mini), "--cluster", "debug", "--results-root", str(blocker / "results"),
              "--teachers-root", str(tmp_path / "teachers"))
    assert r.returncode == 2 and "not writable" in r.stderr and r.stderr.count("\n") == 1
    assert not (tmp_path / "teachers").exists()


def test_a_missing_teacher_gives_a_failed_record_with_the_reason(mini, tmp_path):
    pool = load_grid(mini, "tiny").pools[0]
    spec = {"stage": "methods", "method": "ensemble", "options": {}, "seed": 0, "n_teachers": 2,
            "members": [0, 1], "teachers": [teacher_spec(pool, 0), teacher_spec(pool, 1)]}
    with pytest.raises(Exception, match="teacher 0 .* not found"):
        run_methods(spec, "mini", roots(tmp_path))
    record = json.loads((tmp_path / "results" / "mini" / "records" / f"{run_id(spec)}.json").read_text())
    assert record["status"] == "failed" and "teacher 0" in record["reason"] and record["top1"] is None


def test_unseen_teacher_groups_come_from_the_held_out_part(mini, tmp_path):
    mini.write_text(MINI.replace("members: 3\n    held_out: 0", "members: 6\n    held_out: 3")
                    + "teacher_part: held_out\n")
    plan = make_plan(load_grid(mini, "tiny"), roots(tmp_path))
    assert all(set(j.spec["members"]) <= {3, 4, 5} for j in plan.stages["methods"])
    mini.write_text(MINI.replace("members: 3\n    held_out: 0", "members: 6\n    held_out: 3"))
    plan = make_plan(load_grid(mini, "tiny"), roots(tmp_path))
    assert all(set(j.spec["members"]) <= {0, 1, 2} for j in plan.stages["methods"])


def test_each_seed_draws_its_own_group_and_anchor():
    from bench.jobs import distinct_groups

    groups = distinct_groups(tuple(range(8)), 4, 10)
    assert len({frozenset(g) for g in groups}) == 10  # distinct as sets
    assert len({g[0] for g in groups}) > 1  # anchors (first members) differ
    assert any(list(g) != sorted(g) for g in groups)  # random order, not sorted
    assert distinct_groups(tuple(range(8)), 4, 5) == groups[:5]  # a seed's group is its own, whatever the count
    assert distinct_groups(tuple(range(6)), 4, 15)  # every one of the C(6, 4) = 15 groups
    with pytest.raises(BenchError, match=r"6 members make only 15 distinct groups of 4; seed 15 would repeat"):
        distinct_groups(tuple(range(6)), 4, 16)


def test_too_few_members_for_distinct_groups_is_refused_before_submitting(mini, tmp_path):
    mini.write_text(MINI.replace("members: 3", "members: 2"))  # C(2, 2) = 1 group, 2 seeds
    out = sweep("--grid", str(mini), "--cluster", "debug", "--dry-run", "--results-root", str(tmp_path / "r"),
                "--teachers-root", str(tmp_path / "t"))
    assert out.returncode == 2 and out.stderr.count("\n") == 1, out.stderr
    assert "2 members make only 1 distinct groups of 2; seed 1 would repeat one" in out.stderr


def test_a_list_of_seeds_plans_exactly_those_seeds(mini, tmp_path):
    mini.write_text(MINI.replace("seeds: 2", "seeds: [2, 0]"))
    plan = make_plan(load_grid(mini, "tiny"), roots(tmp_path))
    assert sorted({j.spec["seed"] for j in plan.stages["methods"]}) == [0, 2]
    mini.write_text(MINI.replace("seeds: 2", "seeds: 3"))
    whole = make_plan(load_grid(mini, "tiny"), roots(tmp_path))
    # Seeds 0 and 2 of a list are the jobs seeds 0 and 2 of a count plan: the same groups, the same ids.
    assert {j.run_id for j in plan.stages["methods"]} == {j.run_id for j in whole.stages["methods"]
                                                           if j.spec["seed"] in (0, 2)}
    mini.write_text(MINI.replace("seeds: 2", "seeds: [1, 1]"))
    with pytest.raises(BenchError, match=r"seeds: expected a count or a non-empty list of distinct"):
        load_grid(mini, "tiny")


def test_seeds_flag_reruns_the_grid_on_other_groups(mini, tmp_path, capsys):
    assert parse_seeds("3") == (0, 1, 2) and parse_seeds("5-7") == (5, 6, 7)
    assert parse_seeds("0, 2,7-8") == (0, 2, 7, 8)
    for bad in ("0", "7-5", "a", "1,1", "-3", "2-3,3", ""):
        with pytest.raises(BenchError, match=f"--seeds {bad}: expected a count"):
            parse_seeds(bad)
    mini.write_text(MINI.replace("members: 3", "members: 5"))  # C(5, 2) = 10 groups
    r = ["--results-root", str(tmp_path / "r"), "--teachers-root", str(tmp_path / "t")]
    out = sweep("--grid", str(mini), "--seeds", "2-3", "--cluster", "debug", *r)
    assert out.returncode == 0, out.stderr
    grid = load_grid(mini, "tiny")
    # The jobs of seeds 2 and 3: the grid's own plan with those seeds, found done; seeds 0-1 not run.
    where = Roots.resolve(str(tmp_path / "t"), str(tmp_path / "r"))
    rerun = make_plan(dataclasses.replace(grid, seeds=(2, 3)), where)
    assert not any(rerun.todo.values()) and rerun.done
    assert len(make_plan(grid, where).todo["methods"]) == 4
    manifest = json.loads((tmp_path / "r" / "mini" / "sweep.json").read_text())
    assert manifest["selection"] == {"seeds": [2, 3]}
    # What --status prints, read in this process (the command: test_debug_sweep_runs_records_and_skips_what_is_done).
    capsys.readouterr()
    print_status("mini", where)
    status = capsys.readouterr().out
    assert "methods        4" in status, status  # the seeds run, not the grid's 2
    # The report plans the seeds the sweep ran: none of its records is left out as stale.
    report("mini", tmp_path / "r", grid_file=mini)
    assert "left out" not in (tmp_path / "r" / "mini" / "report" / "index.md").read_text()
    # ... and without the manifest (records copied from a cluster), from the records' own seeds:
    # none of them is the grid's own, so the grid's own are not listed as missing either.
    (tmp_path / "r" / "mini" / "sweep.json").unlink()
    report("mini", tmp_path / "r", grid_file=mini)
    assert "left out" not in (tmp_path / "r" / "mini" / "report" / "index.md").read_text()
    assert "## Missing cells (0)" in (tmp_path / "r" / "mini" / "report" / "failed.md").read_text()
    bad = sweep("--grid", str(mini), "--seeds", "1,1", "--dry-run", *r)
    assert bad.returncode == 2 and bad.stderr.strip().endswith("expected a count (5), or distinct whole numbers "
                                                                ">= 0 and ranges (5-9 or 0,2,7-9)"), bad.stderr


def test_the_report_plans_what_a_narrowed_sweep_planned(mini, tmp_path):
    """A sweep given --seeds and --archs keeps them in its manifest; the report plans the same
    jobs from it, so the pools left out are not listed as missing."""
    from bench.report.records import planned_runs
    from bench.report.tables import missing_lines
    from bench.sweep import selected_grid, write_manifest

    # Valid at both scales (the report plans every scale): no tiny-only recipe.
    mini.write_text("n_teachers: 2\nseeds: 2\npools:\n  - {arch: vgg11, dataset: digits, members: 5}\n"
                    "  - {arch: resnet50, dataset: digits, members: 3}\nmethods: [single, ensemble]\n")
    selection = {"seeds": [3, 4], "archs": ["vgg11"]}
    where = roots(tmp_path)
    plan = make_plan(selected_grid(mini, "tiny", selection), where, selection=selection)
    write_manifest(plan, "debug", {})
    swept = {j.run_id for jobs in plan.stages.values() for j in jobs}
    runs, planned, _, _ = planned_runs("mini", where.results, mini)
    assert planned.ids_at_scales == swept and {j.spec["arch"] for j in plan.stages["teachers"]} == {"vgg11"}
    assert planned.settings == ["vgg11 / digits"]
    assert missing_lines(runs, planned) == ["single on vgg11 / digits: 0 of 2 runs finished",
                                            "ensemble on vgg11 / digits: 0 of 2 runs finished"]


def test_pools_with_other_recipes_never_share_a_teacher_folder(mini, tmp_path):
    from bench.jobs import member_dir

    one = load_grid(mini, "tiny").pools[0]
    mini.write_text(MINI.replace("epochs: 1", "epochs: 2"))
    two = load_grid(mini, "tiny").pools[0]
    r = roots(tmp_path)
    assert one.name == two.name
    assert member_dir(r, teacher_spec(one, 0)) != member_dir(r, teacher_spec(two, 0))
    mini.write_text(MINI)  # the same pool and recipe again: the same folder, shared
    assert member_dir(r, teacher_spec(load_grid(mini, "tiny").pools[0], 0)) == member_dir(r, teacher_spec(one, 0))


def _run_tree(tmp_path, name):
    return ["--teachers-root", str(tmp_path / name / "teachers"), "--results-root", str(tmp_path / name / "results")]


def test_a_killed_driver_and_its_jobs_cost_nothing_on_rerun(mini, tmp_path):
    """SIGKILL the local driver and every job it started once the teachers are done; the same
    command then finishes the grid: every record once, every file whole, no temporary file, locks
    released, and the metrics of an uninterrupted run to the bit."""
    # One seed: the group's two teachers (one stack) and three methods, one of them trained (KD).
    mini.write_text(MINI.replace("seeds: 2", "seeds: 1").replace("[single, ensemble]", "[single, ensemble, kd]"))
    # One job at a time: a stage's ready jobs share one subprocess (a bundle), so each stage pays
    # one start (imports) instead of one per slot.
    cmd = [sys.executable, "-m", "bench.sweep", "--grid", str(mini), "--cluster", "local", "--wait", "--quiet",
           "--max-parallel", "1"]
    # The uninterrupted run, in a tree of its own, goes on beside the killed one (each runs one
    # single-threaded job at a time).
    clean_log = tmp_path / "clean.log"
    with beside(cmd + _run_tree(tmp_path, "clean"), clean_log) as clean:
        proc = subprocess.Popen(cmd + _run_tree(tmp_path, "killed"), stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, start_new_session=True)
        records = tmp_path / "killed" / "results" / "mini" / "records"
        deadline = time.time() + 300
        while time.time() < deadline and proc.poll() is None:
            if sum(1 for p in records.glob("*.json") if json.loads(p.read_text())["stage"] == "teachers") == 2:
                break
            time.sleep(0.05)
        os.killpg(proc.pid, signal.SIGKILL)  # the driver and the job subprocesses it started
        proc.wait()
        finished = {p.stem for p in records.glob("*.json") if json.loads(p.read_text())["stage"] == "methods"}
        assert len(finished) < 3, "the sweep must be killed before its methods finish for this test to mean anything"
        # A temporary file a killed writer left behind (no process has that pid).
        (records / f".x.json.{socket.gethostname().split('.')[0]}.999999999.abcd1234.tmp").write_text("{")

        rerun = subprocess.run(cmd + _run_tree(tmp_path, "killed"), capture_output=True, text=True)
        assert rerun.returncode == 0, rerun.stderr[-2000:]
        assert clean.wait(timeout=600) == 0, clean_log.read_text()[-2000:]

    def table(name):
        t = load_records(tmp_path / name / "results" / "mini" / "records")
        return t.set_index("run_id")[["stage", "top1", "top5", "nll", "ece"]].sort_index()

    killed, whole = table("killed"), table("clean")
    assert list(killed.index) == list(whole.index) and len(killed) == 2 + 3
    assert killed.equals(whole)
    for root in (tmp_path / "killed" / "results", tmp_path / "killed" / "teachers"):
        assert not [p for p in root.rglob("*.tmp")]
        for p in root.rglob("*.json"):
            json.loads(p.read_text())
        assert not [p for p in root.rglob("*.lock")]


def test_two_sweeps_of_one_grid_started_at_once_run_each_job_once(mini, tmp_path):
    """Both finish; the second waits on the first's locks and finds its jobs done: every teacher
    trained once (its log has one line per epoch), every record once and whole, no lock left."""
    # One seed: the group's two teachers (one stack) and three methods, one of them trained (KD).
    mini.write_text(MINI.replace("seeds: 2", "seeds: 1").replace("[single, ensemble]", "[single, ensemble, kd]"))
    cmd = [sys.executable, "-m", "bench.sweep", "--grid", str(mini), "--cluster", "debug", *_run_tree(tmp_path, "both")]
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [o[1][-2000:] for o in outs]
    # Each task (the one stack of 2 teachers, 3 method runs) was run by one sweep and found done by
    # the other, which had planned it too.
    skipped = sum(err.count("done by another run; not run again") for _, err in outs)
    assert skipped == 1 + 3, [o[1][-2000:] for o in outs]
    results, teachers = tmp_path / "both" / "results", tmp_path / "both" / "teachers"
    table = load_records(results / "mini")
    assert len(table) == 2 + 3 and set(table.status) == {"done"} and table.run_id.is_unique
    logs = sorted(teachers.rglob("member-*/log.jsonl"))
    assert len(logs) == 2 and all(len(p.read_text().splitlines()) == 1 for p in logs)  # 1 epoch, once
    assert not list(teachers.rglob("*.lock")) and not list(results.rglob("*.lock"))
    assert not list(tmp_path.rglob("*.tmp"))


KILL_GRID = """
n_teachers: 2
seeds: 1
pools:
  - arch: vgg11
    dataset: digits
    members: 3
    held_out: 0
    recipe: {epochs: 2}
methods:
  single: {}
  kd: {epochs: 2}
  weightformer: {steps: 20, d_model: 16, depth: 1, heads: 2, checkpoint_every: 10}
"""
# Where each kill lands: the first epoch or log point of that loop is on disk, the run not finished.
KILL_POINTS = {"teacher training": "teachers/*/member-*/checkpoint.json",
               "meta-training": "teachers/*/weightformer-*/checkpoint.json",
               "a KD student": "results/kill/students/*/checkpoint.json"}


def _sweep_tree(tmp_path, name):
    grid = tmp_path / "kill.yaml"
    grid.write_text(KILL_GRID)
    return [sys.executable, "-m", "bench.sweep", "--grid", str(grid), "--cluster", "debug", "--stack", "1",
            *_run_tree(tmp_path, name)]


def test_a_sweep_killed_in_each_loop_resumes_to_an_uninterrupted_runs_numbers(tmp_path):
    """SIGKILL the sweep (the debug executor: the job runs in its process) once teacher training,
    then meta-training, then a KD student has checkpointed but not finished, rerunning the same
    command after each kill; the last rerun finishes the grid: every record once, every file
    whole, no temporary file or lock left, the numbers of an uninterrupted run to the bit (each
    loop resumes from its checkpoint and makes the steps it would have made)."""
    cmd = _sweep_tree(tmp_path, "killed")
    tree = tmp_path / "killed"
    # The uninterrupted run, in a tree of its own, goes on beside the killed ones.
    whole_log = tmp_path / "whole.log"
    with beside(_sweep_tree(tmp_path, "whole"), whole_log) as whole:
        for point, pattern in KILL_POINTS.items():
            proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                    start_new_session=True)
            deadline = time.time() + 300
            while time.time() < deadline and proc.poll() is None and not list(tree.glob(pattern)):
                time.sleep(0.01)
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            assert proc.returncode == -signal.SIGKILL, f"the sweep ended before the kill in {point}"
            assert list(tree.glob(pattern)), f"killed before {point} began"
        rerun = subprocess.run(cmd, capture_output=True, text=True)
        assert rerun.returncode == 0, rerun.stderr[-2000:]
        assert whole.wait(timeout=600) == 0, whole_log.read_text()[-2000:]
    cols = ["stage", "method", "top1", "top5", "nll", "ece"]
    killed, clean = (load_records(tmp_path / name / "results" / "kill").set_index("run_id")[cols].sort_index()
                     for name in ("killed", "whole"))
    assert len(killed) == 3 + 1 + 3 and killed.index.is_unique  # teachers, the WeightFormer, methods
    pd.testing.assert_frame_equal(killed, clean)
    for root in (tree / "results", tree / "teachers"):
        assert not list(root.rglob("*.tmp")) and not list(root.rglob("*.lock"))
        for p in root.rglob("*.json"):
            json.loads(p.read_text())


# Runs a sweep that SIGKILLs itself at the one instant a record is half made: its bytes are in the
# temporary file, the rename into place not yet done.
KILL_AT_RECORD = """
import os, signal, runpy, sys
real, arm = os.replace, sys.argv[-1] + ".arm"
def replace(src, dst, *args, **kwargs):
    if "/records/" in str(dst) and os.path.exists(arm):
        os.unlink(arm)
        os.kill(os.getpid(), signal.SIGKILL)
    return real(src, dst, *args, **kwargs)
os.replace = replace
sys.argv = ["bench.sweep", *sys.argv[1:-1]]
runpy.run_module("bench.sweep", run_name="__main__")
"""


def test_a_sweep_killed_while_writing_a_record_finishes_on_rerun(mini, tmp_path):
    """Killed between a record's write and its rename: the record is absent (not half there), its
    temporary file is left; the same command removes that file, reruns only that job, and ends
    with every record once, whole and done."""
    args = ["--grid", str(mini), "--cluster", "debug", *_run_tree(tmp_path, "t")]
    arm = tmp_path / "kill"
    (tmp_path / "kill.arm").write_text("")
    killed = subprocess.run([sys.executable, "-c", KILL_AT_RECORD, *args, str(arm)], capture_output=True, text=True)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    records = tmp_path / "t" / "results" / "mini" / "records"
    assert len(list(records.glob(".*.tmp"))) == 1 and not list(records.glob("*.json"))  # the first record: a teacher's
    rerun = subprocess.run([sys.executable, "-m", "bench.sweep", *args], capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    table = load_records(records.parent)
    assert len(table) == 3 + 4 and table.run_id.is_unique and set(table.status) == {"done"}
    assert not list((tmp_path / "t").rglob("*.tmp")) and not list((tmp_path / "t").rglob("*.lock"))


def test_a_stacks_shared_span_counts_once_in_the_stage_seconds():
    # Three members of one stack (one task, 10 s), then two jobs of a bundle one after the other.
    spans = [(100.0, 110.0)] * 3 + [(110.0, 114.0), (114.0, 120.5)]
    assert span_seconds(spans) == (20.5, 20.5)
    assert span_seconds([(0.0, 5.0), (1.0, 4.0)]) == (5.0, 8.0)  # two slots at once


def test_data_moved_to_another_root_finds_the_teachers_and_records(mini, tmp_path, capsys):
    # Where the data lives is not what a teacher is: a grid whose recipe names another data root
    # plans the same run ids and folders, and a sweep over it has nothing left to run.
    from bench.jobs import member_dir

    for name in ("old", "new"):
        (tmp_path / name).mkdir()
    mini.write_text(MINI.replace("epochs: 1", f"epochs: 1, data_root: {tmp_path / 'old'}"))
    old = load_grid(mini, "tiny").pools[0]
    # The sweep's command, run in this process (as a command: test_debug_sweep_runs_records_and_skips_what_is_done);
    # a failed job raises SystemExit.
    main(["--grid", str(mini), "--cluster", "debug", *_run_tree(tmp_path, "run")])
    mini.write_text(MINI.replace("epochs: 1", f"epochs: 1, data_root: {tmp_path / 'new'}"))
    new = load_grid(mini, "tiny").pools[0]
    r = roots(tmp_path / "run")
    assert teacher_spec(new, 0)["where"] == {"data_root": str(tmp_path / "new")}
    assert run_id(teacher_spec(new, 0)) == run_id(teacher_spec(old, 0))
    assert member_dir(r, teacher_spec(new, 0)) == member_dir(r, teacher_spec(old, 0))
    capsys.readouterr()
    main(["--grid", str(mini), "--dry-run", *_run_tree(tmp_path, "run")])
    out = capsys.readouterr().out
    assert re.search(r"teachers\s+3 jobs,\s+0 to run,\s+3 done", out), out
    assert re.search(r"methods\s+4 jobs,\s+0 to run,\s+4 done", out), out


def test_sbatch_options_pass_through_from_the_cluster_file_and_the_flag(mini, tmp_path, fake_slurm):
    path = {"PATH": f"{fake_slurm}:{os.environ['PATH']}"}
    cluster = tmp_path / "cluster.yaml"
    cluster.write_text("tiny:\n  default: {timeout_min: 9}\n  methods: {sbatch: {qos: high, constraint: a100}}\n")
    r = sweep("--grid", str(mini), "--cluster", "slurm", "--cluster-config", str(cluster), "--sbatch", "mail_type=END",
              "--sbatch", "exclusive", "--array-parallelism", "3", "--teachers-root", str(tmp_path / "teachers"),
              "--results-root", str(tmp_path / "results"), env=path)
    assert r.returncode == 0, r.stderr
    # This cluster file stacks no teachers: a task per member, and each seed's two methods an array
    # of their own after their members' tasks (--array-parallelism 3 capped at the array's 2 tasks).
    teachers, *methods = ((fake_slurm / f"sbatch.{n}.sh").read_text() for n in (101, 102, 103))
    for script in (teachers, *methods):
        assert "#SBATCH --mail-type=END" in script and "#SBATCH --exclusive\n" in script
    assert "--qos" not in teachers and "#SBATCH --array=0-2%3" in teachers
    for script in methods:
        assert "#SBATCH --qos=high" in script and "#SBATCH --constraint=a100" in script
        assert "#SBATCH --dependency=afterok:101_" in script and "#SBATCH --array=0-1%2" in script
    cluster.write_text("tiny:\n  methods: {sbatch: {time: 5}}\n")
    for args, message in ((["--cluster-config", str(cluster)], "methods: sbatch option 'time' is set by timeout_min"),
                          (["--sbatch", "dependency=afterany:1"], "sbatch option 'dependency' is set by the sweep"),
                          (["--array-parallelism", "0"], "--array-parallelism must be at least 1")):
        bad = sweep("--grid", str(mini), "--dry-run", *args, "--results-root", str(tmp_path / "bad"))
        assert bad.returncode == 2 and message in bad.stderr and "Traceback" not in bad.stderr, bad.stderr


def test_gpus_go_only_to_the_stages_that_can_use_them(mini, tmp_path):
    """--gpus 4: meta-training (no data-parallel path) gets one and the plan says so; a cluster file
    asking more than one for it is refused in one line before anything runs."""
    r = sweep("--grid", str(mini), "--dry-run", "--gpus", "4", "--results-root", str(tmp_path / "r"))
    assert r.returncode == 0, r.stderr
    assert "--gpus 4: meta_train uses 1 (no data-parallel path); the other stages get 4" in r.stdout
    gpus = dict(re.findall(r"^  (\w+) .* gpus (\d+)", r.stdout, re.M))
    assert gpus == {"pretrain": "4", "teachers": "4", "meta_train": "1", "methods": "4"}
    cluster = tmp_path / "cluster.yaml"
    cluster.write_text("tiny:\n  meta_train: {gpus: 2}\n")
    bad = sweep("--grid", str(mini), "--dry-run", "--cluster-config", str(cluster), "--results-root", str(tmp_path / "b"))
    assert bad.returncode == 2 and "tiny.meta_train: gpus 2: a meta_train job uses at most 1" in bad.stderr, bad.stderr
