"""The SLURM path on a real one-node cluster (bench/scripts/slurm_local.sh start).

These tests need a running SLURM: CI starts one and sets BENCH_REQUIRE_SLURM=1, so there they
fail instead of skipping. Elsewhere they skip, saying why.
"""
import json
import os
import re
import subprocess
import sys
import time
from collections import Counter
from contextlib import contextmanager
from pathlib import Path

import pytest
import submitit
import torch

from bench.grid import load_grid
from bench.jobs import Roots, member_dir, teacher_spec
from bench.sweep.plan import make_plan
from bench.run_records import load_records
from bench.sweep import JobRunner, print_status
from bench.engine import train
from bench.train_config import TrainConfig

SCRIPT = Path(__file__).resolve().parents[1] / "bench" / "scripts" / "slurm_local.sh"
SACCT_STANDIN = "/var/lib/bench-slurm/bin"  # answers submitit's state queries from squeue


def slurm_up() -> str | None:
    if not SCRIPT.exists():
        return f"{SCRIPT} missing"
    r = subprocess.run(["bash", str(SCRIPT), "status"], capture_output=True, text=True)
    return None if r.returncode == 0 else (r.stdout + r.stderr).strip()


@pytest.fixture(scope="module", autouse=True)
def slurm():
    reason = slurm_up()
    if reason:
        if os.environ.get("BENCH_REQUIRE_SLURM"):
            pytest.fail(f"BENCH_REQUIRE_SLURM is set but SLURM is not usable: {reason}")
        pytest.skip(f"no SLURM here ({reason}); start one with: bash {SCRIPT} start")
    yield


@pytest.fixture(autouse=True)
def _sacct_standin(monkeypatch):
    monkeypatch.setenv("PATH", f"{SACCT_STANDIN}:{os.environ['PATH']}")


GRID = """
n_teachers: 2
seeds: 1
pools:
  - arch: vgg11
    dataset: digits
    members: 2
    held_out: 0
    recipe: {epochs: 1}
methods:
  single: {}
  ensemble: {}
  weightformer: {steps: 4, d_model: 16, depth: 1, heads: 2, checkpoint_every: 2}
"""


def test_smoke_grid_through_real_sbatch_arrays_with_dependencies(tmp_path):
    grid = tmp_path / "slurmsmoke.yaml"
    grid.write_text(GRID)
    r = subprocess.run([sys.executable, "-m", "bench.sweep", "--grid", str(grid), "--cluster", "slurm",
                        "--wait", "--partition", "debug", "--timeout-min", "20", "--mem-gb", "2", "--pack-min", "5",
                        "--teachers-root", str(tmp_path / "t"), "--results-root", str(tmp_path / "r")],
                       capture_output=True, text=True, timeout=600, env=os.environ.copy())
    assert r.returncode == 0, r.stdout + r.stderr
    table = load_records(tmp_path / "r" / "slurmsmoke")
    assert len(table) == 2 + 1 + 3 and set(table.status) == {"done"}  # teachers, meta_train, methods
    manifest = json.loads((tmp_path / "r" / "slurmsmoke" / "sweep.json").read_text())
    arrays = {stage: sorted({j["job_id"].split("_")[0] for j in jobs}) for stage, jobs in manifest["stages"].items() if jobs}
    script = {job: next((tmp_path / "r" / "slurmsmoke" / "slurm").glob(f"{job}/*_submission.sh")).read_text()
              for jobs in arrays.values() for job in jobs}

    def waits_on(job: str) -> set[str]:  # the arrays an array's afterok names
        line = next((line for line in script[job].splitlines() if line.startswith("#SBATCH --dependency=afterok:")), "")
        return {task.split("_")[0] for task in line.split("afterok:", 1)[1].split(":")} if line else set()

    (teachers,), (meta_train,) = arrays["teachers"], arrays["meta_train"]
    assert waits_on(teachers) == set() and waits_on(meta_train) == {teachers}
    # single and ensemble need the teachers alone (one stack: one task), WeightFormer its
    # meta-training too: two submissions, each waiting on what its tasks need; with --pack-min the
    # two light ones (seconds each, nothing waits on them) share one task, run one after the other.
    methods = {frozenset(waits_on(job)): job for job in arrays["methods"]}
    assert set(methods) == {frozenset({teachers}), frozenset({teachers, meta_train})}
    tasks = Counter(j["job_id"] for j in manifest["stages"]["methods"])
    assert sorted(tasks.values()) == [1, 2] and {j.split("_")[0] for j in tasks} == set(methods.values())


def reference_weights(tmp_path, spec) -> bytes:
    """The same member trained uninterrupted, in this process, on one thread like the job."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        out = tmp_path / "reference"
        train(TrainConfig(arch=spec["arch"], dataset=spec["dataset"], scale=spec["scale"], seed=spec["member"],
                          **spec["recipe"]), out, progress=False)
        return (out / "model.safetensors").read_bytes()
    finally:
        torch.set_num_threads(threads)


def wait_for(predicate, seconds: float, what: str):
    deadline = time.time() + seconds
    while time.time() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out after {seconds} s waiting for {what}")


@contextmanager
def cancelled_on_failure(job_ids):
    """Cancels `job_ids` (a submission made held) if the block fails, so none is left held in the queue."""
    try:
        yield
    except BaseException:
        subprocess.run(["scancel", *job_ids])
        raise


def epoch_on_disk(run_dir: Path) -> int:
    try:
        return json.loads((run_dir / "checkpoint.json").read_text())["epoch"]
    except (OSError, ValueError, KeyError):
        return 0


@pytest.mark.parametrize("interrupt", ["usr2", "requeue"])
def test_preempted_training_job_resumes_to_the_same_weights(tmp_path, interrupt):
    """USR2 is what SLURM sends before preemption or the time limit (submitit checkpoints and
    requeues); `scontrol requeue` is a hard requeue (the job restarts from its submission).
    Either way the job must resume from its own epoch checkpoint and end bit-identical."""
    pool = load_grid_from_text(tmp_path, GRID.replace("{epochs: 1}", "{epochs: 8}")).pools[0]
    spec = teacher_spec(pool, 1)
    roots = Roots.resolve(str(tmp_path / "t"), str(tmp_path / "r"))
    ex = submitit.AutoExecutor(folder=tmp_path / "slurm" / "%j", cluster="slurm")
    ex.update_parameters(timeout_min=20, slurm_partition="debug", cpus_per_task=1, mem_gb=2)
    job = ex.submit(JobRunner(), spec, "preempt", roots, 1)
    run_dir = member_dir(roots, spec)
    try:
        wait_for(lambda: epoch_on_disk(run_dir) >= 2, 300, "the job's second epoch checkpoint")
        if interrupt == "usr2":
            subprocess.run(["scancel", "--signal=USR2", job.job_id], check=True)
        else:
            subprocess.run(["scontrol", "requeue", job.job_id], check=True)
        wait_for(job.done, 300, "the requeued job to finish")
    finally:
        if not job.done():
            subprocess.run(["scancel", job.job_id])
    record = job.result()
    assert record["status"] == "done"
    shown = subprocess.run(["scontrol", "show", "job", job.job_id], capture_output=True, text=True).stdout
    assert "Restarts=1" in shown, shown  # SLURM did requeue and restart it once
    logs = "".join(p.read_text() for p in (tmp_path / "slurm").rglob("*_log.out"))
    # The job ran twice, and the second run started after the checkpointed epochs, not at 1.
    assert logs.count("epoch 1/8 ") == 1 and logs.count("epoch 8/8 ") == 1, logs[-2000:]
    if interrupt == "usr2":
        assert "preempted" in "".join(p.read_text() for p in (tmp_path / "slurm").rglob("*_log.err"))
    assert (run_dir / "model.safetensors").read_bytes() == reference_weights(tmp_path, spec)


def load_grid_from_text(tmp_path, text):
    path = tmp_path / "g.yaml"
    path.write_text(text)
    return load_grid(path, "tiny")


def test_the_sbatch_driver_script_runs_a_grid_and_its_report(tmp_path):
    grid = tmp_path / "driven.yaml"
    grid.write_text(GRID.replace("members: 2", "members: 2\n    name: driven"))
    # --pack-min: single and ensemble (light, nothing waits on them) share one task, so the driver,
    # which holds one of the node's two CPUs while it waits, has one task fewer to wait for.
    env = {**os.environ, "GRID": str(grid), "SCALE": "tiny", "PARTITION": "debug",
           "SWEEP_ARGS": "--timeout-min 20 --pack-min 5",
           "PYTHON": sys.executable, "BENCH_RESULTS": str(tmp_path / "r"), "BENCH_TEACHERS": str(tmp_path / "t")}
    script = Path(__file__).resolve().parents[1] / "sweeps" / "slurm" / "sweep.sbatch"
    out = subprocess.run(["sbatch", "--parsable", "--chdir", str(tmp_path), str(script)],
                         capture_output=True, text=True, env=env, check=True)
    driver = out.stdout.strip().split(";")[0]
    state = lambda: subprocess.run(["squeue", "-h", "-t", "all", "-j", driver, "-o", "%T"],
                                   capture_output=True, text=True).stdout.strip()
    wait_for(lambda: state() in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT"), 600, "the driver job")
    log = (tmp_path / f"bench-sweep-{driver}.log").read_text()
    assert state() == "COMPLETED", log[-3000:]
    assert (tmp_path / "r" / "driven" / "report" / "main_table.md").exists()
    assert set(load_records(tmp_path / "r" / "driven").status) == {"done"}


FAULT_GRID = """
n_teachers: 2
seeds: 1
pools:
  - arch: vgg11
    dataset: digits
    members: 3
    held_out: 0
    recipe: {epochs: 1}
methods: [single, ensemble]
"""


def test_a_cancelled_array_task_fails_its_dependents_and_a_rerun_submits_only_what_is_missing(tmp_path, capsys):
    grid = tmp_path / "faults.yaml"
    grid.write_text(FAULT_GRID)
    base = [sys.executable, "-m", "bench.sweep", "--grid", str(grid), "--partition", "debug", "--timeout-min", "20",
            "--mem-gb", "2", "--teachers-root", str(tmp_path / "t"), "--results-root", str(tmp_path / "r")]
    submit = base + ["--cluster", "slurm", "--stack", "1"]
    # The arrays are submitted held (an sbatch option passed through), so the cancel below lands on
    # a task that has not run, however quick the machine; the rest are released once it is cancelled.
    r = subprocess.run(submit + ["--sbatch", "hold"], capture_output=True, text=True, timeout=300,
                       env=os.environ.copy())
    assert r.returncode == 0, r.stdout + r.stderr
    manifest_file = tmp_path / "r" / "faults" / "sweep.json"
    first = json.loads(manifest_file.read_text())
    teachers = first["stages"]["teachers"]
    assert len(teachers) == 2  # the one group's two members; the third is never trained
    cancelled = teachers[0]["job_id"]
    arrays = sorted({j["job_id"].split("_")[0] for s in first["stages"].values() for j in s if j.get("job_id")})
    with cancelled_on_failure(arrays):
        subprocess.run(["scancel", cancelled], check=True)
        subprocess.run(["scontrol", "release", ",".join(arrays)], check=True)
    wait_for(lambda: not subprocess.run(["squeue", "-h", "-j", ",".join(arrays)], capture_output=True,
                                        text=True).stdout.strip(), 300, "the first submission to leave the queue")

    # What --status prints, read in this process (the command's own output: tests/test_sweep.py).
    capsys.readouterr()
    print_status("faults", Roots.resolve(str(tmp_path / "t"), str(tmp_path / "r")))
    status = capsys.readouterr().out
    counts = {line.split()[0]: [int(x) for x in line.split()[1:6]] for line in status.splitlines()
              if line.split() and line.split()[0] in ("teachers", "methods") and len(line.split()) == 6}
    assert counts["teachers"] == [1, 0, 0, 1, 0], status  # done, running, pending, failed, skipped
    assert counts["methods"][0] == 0 and counts["methods"][3] == 2, status
    # No method ran on a missing teacher: SLURM cancels the array that needs it, or (where it has
    # already forgotten the cancelled task: a dependency on a purged job counts as met) each method
    # job finds the teacher missing and fails naming it.
    records = load_records(tmp_path / "r" / "faults")
    assert len(records[records.stage == "teachers"]) == 1
    methods = records[records.stage == "methods"]
    assert set(methods.status) <= {"failed"} and all("not found: train its pool first" in r
                                                     for r in methods.get("reason", []))

    again = subprocess.run(submit + ["--wait"], capture_output=True, text=True, timeout=600, env=os.environ.copy())
    assert again.returncode == 0, again.stdout + again.stderr
    assert "teachers      2 jobs,    1 to run" in again.stdout and "methods       2 jobs,    2 to run" in again.stdout
    second = json.loads(manifest_file.read_text())
    resubmitted = [j for j in second["stages"]["teachers"] if j.get("job_id")]
    assert [j["run_id"] for j in resubmitted] == [teachers[0]["run_id"]]
    records = load_records(tmp_path / "r" / "faults")
    assert len(records) == 2 + 2 and set(records.status) == {"done"}


# ResNet's pool is there to be held up: only its WeightFormer (meta-training, students) runs on it.
TWO_SETTINGS = """
n_teachers: 2
seeds: 2
pools:
  - {arch: vgg11, dataset: digits, members: 3, held_out: 0, recipe: {epochs: 1}}
  - {arch: resnet50, dataset: digits, members: 3, held_out: 0, recipe: {epochs: 1}}
methods:
  single: {archs: [vgg11]}
  ensemble: {archs: [vgg11]}
  weightformer: {steps: 4, d_model: 16, depth: 1, heads: 2}
"""


def squeue_state(job_id: str) -> str:
    return subprocess.run(["squeue", "-h", "-j", job_id, "-o", "%T"], capture_output=True, text=True).stdout.strip()


def test_each_job_waits_only_on_what_it_needs(tmp_path):
    """A cancelled VGG teacher cancels only the jobs that need it (VGG's other group of teachers
    makes its students), and VGG methods finish while ResNet's meta-training is held in the
    queue: no array waits on a whole earlier stage."""
    grid = tmp_path / "two.yaml"
    grid.write_text(TWO_SETTINGS)
    roots = Roots(tmp_path / "t", tmp_path / "r")
    plan = make_plan(load_grid(grid, "tiny"), roots)
    by_label = {j.label: j for jobs in plan.stages.values() for j in jobs}
    vgg = next(p.name for p in plan.grid.pools if p.arch == "vgg11")
    first, other = (set(by_label[f"{vgg}/ensemble/seed-{s}"].needs) for s in (0, 1))
    (cancelled,) = first - other  # two distinct groups of 2 out of 3 members share one
    resnet_meta = next(j for j in plan.stages["meta_train"] if j.spec["pool"] != vgg)
    unaffected = by_label[f"{vgg}/single/seed-1"]
    # Submitted held (an sbatch option passed through): the teacher is cancelled before it can run,
    # then every other task is released but ResNet's meta-training.
    r = subprocess.run([sys.executable, "-m", "bench.sweep", "--grid", str(grid), "--cluster", "slurm", "--stack", "1",
                        "--partition", "debug", "--timeout-min", "20", "--mem-gb", "2", "--sbatch", "hold",
                        "--teachers-root", str(roots.teachers), "--results-root", str(roots.results)],
                       capture_output=True, text=True, timeout=300, env=os.environ.copy())
    assert r.returncode == 0, r.stdout + r.stderr
    job_id = {j["run_id"]: j["job_id"] for jobs in json.loads((roots.results / "two" / "sweep.json").read_text())[
        "stages"].values() for j in jobs}
    arrays = ",".join(sorted({j.split("_")[0] for j in job_id.values()}))
    with cancelled_on_failure([arrays]):
        subprocess.run(["scancel", job_id[cancelled]], check=True)
        try:
            released = sorted(set(job_id.values()) - {job_id[cancelled], job_id[resnet_meta.run_id]})
            subprocess.run(["scontrol", "release", ",".join(released)], check=True)
            wait_for(lambda: unaffected.run_id in set(load_records(roots.results / "two").run_id), 300,
                     "a VGG student whose teachers all trained")
            assert squeue_state(job_id[resnet_meta.run_id]) == "PENDING"  # still held: nothing VGG waited on it
        finally:
            subprocess.run(["scontrol", "release", job_id[resnet_meta.run_id]], check=True)
    wait_for(lambda: not subprocess.run(["squeue", "-h", "-j", arrays], capture_output=True, text=True).stdout.strip(),
             600, "the sweep to leave the queue")
    # What needs the cancelled teacher: seed 0's VGG methods, and VGG's meta-training (every
    # meta-train member) with the WeightFormer students of both seeds that need it.
    vgg_meta = {j.run_id for j in plan.stages["meta_train"] if j.spec["pool"] == vgg}
    needs_it = {j.run_id for j in plan.stages["meta_train"] + plan.stages["methods"]
                if cancelled in j.needs or vgg_meta & set(j.needs)}
    assert needs_it == vgg_meta | {by_label[f"{vgg}/{m}/seed-{s}"].run_id for m, s in
                                   [("single", 0), ("ensemble", 0), ("weightformer", 0), ("weightformer", 1)]}
    done = set(load_records(roots.results / "two").query("status == 'done'").run_id)
    assert done == {j.run_id for jobs in plan.stages.values() for j in jobs} - needs_it - {cancelled}


def test_two_slurm_submissions_of_one_grid_at_once_run_each_job_once(tmp_path):
    """Both submissions' arrays run; every job runs in one of them and the other's task finds it
    done (its log says so): each teacher trained once (one log line for its one epoch), every
    record once and done, no lock left."""
    grid = tmp_path / "twice.yaml"
    grid.write_text(FAULT_GRID)
    cmd = [sys.executable, "-m", "bench.sweep", "--grid", str(grid), "--cluster", "slurm", "--partition", "debug",
           "--timeout-min", "20", "--mem-gb", "2", "--stack", "1", "--teachers-root", str(tmp_path / "t"),
           "--results-root", str(tmp_path / "r")]
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=os.environ.copy())
             for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [o[1][-2000:] for o in outs]
    # "  <stage>: <n> array(s) (<ids>) with <tasks> tasks[, ...]", a line per stage submitted.
    said = [re.search(r": \d+ arrays? \(([\d, ]+)\) with (\d+) tasks", out) for text, _ in outs
            for out in text.splitlines()]
    arrays = sorted({a for m in said if m for a in m.group(1).split(", ")})
    # Each submission's arrays (teachers, and methods by the teachers they need); one that found the
    # other's still queued in squeue submits fewer, never none of what it plans.
    tasks = sum(int(m.group(2)) for m in said if m)
    assert 2 <= len(arrays) <= 2 * 3 and 2 + 2 <= tasks <= 2 * (2 + 2), outs
    wait_for(lambda: not subprocess.run(["squeue", "-h", "-j", ",".join(arrays)], capture_output=True,
                                        text=True).stdout.strip(), 600, "both submissions to leave the queue")
    records = load_records(tmp_path / "r" / "twice")
    assert len(records) == 2 + 2 and set(records.status) == {"done"} and records.run_id.is_unique
    logs = sorted((tmp_path / "t").rglob("member-*/log.jsonl"))
    assert len(logs) == 2 and all(len(p.read_text().splitlines()) == 1 for p in logs)
    told = "".join(p.read_text() for p in (tmp_path / "r" / "twice" / "slurm").rglob("*_log.err"))
    assert told.count("done by another run; not run again") == tasks - (2 + 2), told[-3000:]  # the copies
    assert not list(tmp_path.rglob("*.lock"))


@pytest.mark.slow
def test_the_paper_scale_main_table_smoke_runs_through_slurm(tmp_path):
    """`--smoke` of the paper-scale main table on teachers trained from scratch (main_table_scratch:
    VGG-11 / CIFAR-10 at 32 px; ResNet-50 runs in the next test, at 224 px) on the CPU: every stage
    as SLURM arrays with afterok, each job 1 step (the default is 2), at the real widths,
    resolutions and batch sizes.
    (The paper's-regime main_table at 224 px: the next test. `slow`: left out of `make test`;
    `make smoke-test` runs it, and CI after the suite.)"""
    results = tmp_path / "r"
    cmd = [sys.executable, "-m", "bench.sweep", "--grid", "main_table_scratch", "--scale", "paper", "--smoke",
           "--archs", "vgg11", "--cluster", "slurm", "--partition", "debug", "--gpus", "0",
           "--cpus", "1", "--mem-gb", "7", "--smoke-steps", "1", "--results-root", str(results)]
    r = subprocess.run(cmd + ["--wait"], capture_output=True, text=True, timeout=2400, env=os.environ.copy())
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    runs = load_records(results / "smoke" / "main_table_scratch")
    assert (runs.status == "done").all() and (runs.smoke_steps == 1).all()
    methods = runs[runs.stage == "methods"]
    grid = load_grid("main_table_scratch", "paper")
    assert len(methods) == sum(1 for m in grid.methods for p in grid.pools if p.arch == "vgg11"
                               and p.arch in m.options.get("archs", [p.arch]))
    assert runs[runs.stage == "teachers"].top1.notna().all()  # the capped run still evaluates at its end
    assert (runs[runs.stage == "meta_train"].steps_run == 1).all()
    scripts = "".join(p.read_text() for p in (results / "smoke" / "main_table_scratch" / "slurm").rglob("*_submission.sh"))
    assert "--dependency=afterok:" in scripts and "--array=" in scripts
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=os.environ.copy())
    assert again.returncode == 0 and "nothing to run: every job is done" in again.stdout, again.stdout + again.stderr


@pytest.mark.slow
def test_the_paper_regime_main_table_smoke_runs_at_224_px_through_slurm(tmp_path):
    """`--smoke` of the paper's-regime main_table (ResNet-50 fine-tuned from ImageNet weights, stand-ins
    of their shapes here, on CIFAR-100 resized to the recipe's 224 px) through SLURM on the CPU: every
    stage and row at the recipe's resolution, batches capped at 16 (`--smoke-batch-size`: at the
    real batch of 256 a 224 px meta-training step holds ~22 GB). ResNet-50, because its
    meta-training at 224 px fits CI's machine once the batch is capped; VGG-11-BN's (a 102M-parameter
    first linear layer at 224 px) held over 14 GB at a batch of 16 and is for a GPU node. `slow`."""
    results = tmp_path / "r"
    cmd = [sys.executable, "-m", "bench.sweep", "--grid", "main_table", "--scale", "paper", "--smoke",
           "--standin-weights", "--smoke-batch-size", "16", "--archs", "resnet50", "--cluster", "slurm",
           "--partition", "debug", "--gpus", "0", "--cpus", "1", "--mem-gb", "7", "--smoke-steps", "1",
           "--results-root", str(results)]
    r = subprocess.run(cmd + ["--wait"], capture_output=True, text=True, timeout=3000, env=os.environ.copy())
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    runs = load_records(results / "smoke" / "main_table")
    assert (runs.status == "done").all() and (runs.smoke_steps == 1).all()
    grid = load_grid("main_table", "paper")
    assert set(runs[runs.stage == "methods"].variant) == {m.variant for m in grid.methods
                                                          if "resnet50" in m.options.get("archs", ["resnet50"])}
    assert runs[runs.stage == "teachers"].top1.notna().all()
    configs = list((results / "smoke" / "teachers").glob("resnet50-*/member-*/config.json"))
    assert configs and all(json.loads(p.read_text())["image_size"] == 224 for p in configs)
