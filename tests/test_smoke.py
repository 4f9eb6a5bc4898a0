"""`--smoke`: a grid's plan, every loop capped to a few steps, on synthetic data in the real formats."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bench.grid import load_grid
from bench.data import load_dataset
from bench.data.synthetic import SMOKE_SIZES, write_smoke_data
from bench.errors import BenchError
from bench.jobs import Roots
from bench.smoke import smoke_grid
from bench.run_records import load_records
from bench.sweep import main as sweep_main, make_plan
from bench.job_env import SMOKE_BATCH_ENV, SMOKE_STEPS_ENV

ROOT = Path(__file__).resolve().parents[1]


def sweep(*args, env=None):
    clean = {k: v for k, v in os.environ.items() if k not in (SMOKE_STEPS_ENV, "BENCH_DATA")}
    return subprocess.run([sys.executable, "-m", "bench.sweep", *args], capture_output=True, text=True,
                          env={**clean, **(env or {})}, cwd=ROOT)


def tree(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in folder.rglob("*") if p.is_file()}


def test_synthetic_data_sets_load_through_the_real_readers(tmp_path):
    write_smoke_data(tmp_path, ["cifar10", "cifar100", "imagenet"])
    for name, classes in (("cifar10", 10), ("cifar100", 100), ("imagenet", 1000)):
        train, val, test = (load_dataset(name, tmp_path, s) for s in ("train", "val", "test"))
        assert len(train.classes) == len(test.classes) == classes
        assert len(train) + len(val) == classes * SMOKE_SIZES[name]["train"]
        assert len(test) == classes * SMOKE_SIZES[name]["test"]
        labels = train.labels if hasattr(train, "labels") else torch.tensor(train.targets)
        assert set(labels.tolist()) == set(range(classes))  # every class has a training image
    image, label = load_dataset("imagenet", tmp_path, "test")[0]
    assert image.mode == "RGB" and 0 <= label < 1000
    assert (tmp_path / "cifar-10-batches-py" / "data_batch_5").is_file() and (tmp_path / "train").is_dir()


def test_synthetic_data_is_written_once_and_a_half_written_set_again(tmp_path):
    write_smoke_data(tmp_path, ["cifar10"])
    before = tree(tmp_path)
    write_smoke_data(tmp_path, ["cifar10"])
    assert tree(tmp_path) == before  # reused: the same bytes, so run ids and resumes stay valid
    (tmp_path / ".cifar10.written").unlink()  # as a crash before the mark leaves it
    (tmp_path / "cifar-10-batches-py" / "test_batch").write_bytes(b"trunc")
    write_smoke_data(tmp_path, ["cifar10"])
    assert len(load_dataset("cifar10", tmp_path, "test")) == 10 * SMOKE_SIZES["cifar10"]["test"]
    with pytest.raises(BenchError, match="no synthetic 'digits'"):
        write_smoke_data(tmp_path, ["digits"])


def test_every_training_loop_stops_at_the_smoke_cap(tmp_path, monkeypatch):
    from bench.engine.checkpointer import RunFolder
    from bench.engine.loop import fit

    class Objective:
        def __init__(self):
            self.model = torch.nn.Linear(3, 1)
            self.optimizer = torch.optim.SGD(self.model.parameters(), lr=0.1)
            self.labels = {}

        def loss(self, step):
            x = torch.ones(4, 3) * step
            return {"loss": self.model(x).pow(2).mean()}

        def log_row(self, step, means, seconds):
            return {"step": step, "loss": float(means["loss"])}

    monkeypatch.setenv(SMOKE_STEPS_ENV, "3")
    history, _ = fit(Objective(), RunFolder(tmp_path / "run", {"run": 1}, matches=lambda meta: True), steps=1000, log_every=100, lr=0.1,
                     schedule=lambda s: 1.0, quiet=True)
    assert [row["step"] for row in history] == [3]  # stopped at 3 of 1000, and logged its last step
    monkeypatch.delenv(SMOKE_STEPS_ENV)
    history, _ = fit(Objective(), RunFolder(tmp_path / "run2", {"run": 2}, matches=lambda meta: True), steps=5, log_every=5, lr=0.1,
                     schedule=lambda s: 1.0, quiet=True)
    assert history[-1]["step"] == 5


def test_the_smoke_batch_cap_reaches_every_loader_and_the_meta_training_batches(monkeypatch):
    from bench.data.loaders import make_loader
    from bench.weightformer.meta_train import SoftLabels

    sizes = lambda train: [len(x) for x, *_ in make_loader("digits", "train", batch_size=64, train=train)]
    assert max(sizes(True)) == 64
    monkeypatch.setenv(SMOKE_BATCH_ENV, "16")
    assert max(sizes(True)) == 16 and sum(sizes(False)) == len(load_dataset("digits", None, "train"))
    assert make_loader("digits", "val", batch_size=8, train=False).batch_size == 8  # a cap, never a raise
    x = next(iter(make_loader("digits", "train", batch_size=2, train=False)))[0]
    teacher = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(x[0].numel(), 10))
    labels = SoftLabels([teacher], "digits", None, None, torch.device("cpu"), 64, 0, 4.0, steps=1)
    assert len(labels.batch(0, [0])[0]) == 16


def test_the_smoke_plan_keeps_every_stage_pool_and_row_with_one_seed():
    full = load_grid("main_table", "paper")
    grid = smoke_grid(full)
    assert grid.seeds == full.seeds[:1] and [p.name for p in grid.pools] == [p.name for p in full.pools]
    for pool in grid.pools:
        assert (pool.members - pool.held_out, pool.held_out) == (full.n_teachers + 2, full.n_teachers + 1)
        assert "data_root" not in pool.recipe
    roots = Roots(Path("/nonexistent/t"), Path("/nonexistent/r"))
    plan, whole = make_plan(grid, roots), make_plan(full, roots)
    rows = lambda p: {(j.spec["teachers"][0]["pool"], j.spec["variant"]) for j in p.stages["methods"]}
    assert rows(plan) == rows(whole)  # every table cell of the paper-scale grid is exercised
    assert len(plan.stages["meta_train"]) == len(whole.stages["meta_train"])
    # Each pool's real recipe (epochs, optimizer, batch size) is what the smoke's teachers run with.
    assert {j.spec["recipe"]["epochs"] for j in plan.stages["teachers"]} == {200, 10}


def test_smoke_options_refused_in_one_line(tmp_path, capsys, monkeypatch):
    """In process (the command line's own entry point): exit code 2, one line, nothing written."""
    monkeypatch.delenv(SMOKE_STEPS_ENV, raising=False)
    (tmp_path / "empty").mkdir()
    for args, message in ((["--smoke", "--data-root", str(tmp_path / "empty")], "cifar-10-batches-py/ not found under"),
                          (["--smoke", "--smoke-steps", "0"], "--smoke-steps must be a whole number"),
                          (["--smoke", "--smoke-batch-size", "0"], "--smoke-batch-size must be a whole number"),
                          (["--smoke-batch-size", "8"], "--smoke-batch-size is for a --smoke run only"),
                          (["--archs", "vgg16"], "grid main_table has no pool of vgg16; its architectures: "
                                                 "resnet50, vgg11, vit_b32")):
        with pytest.raises(SystemExit) as exited:
            sweep_main(["--grid", "main_table", "--scale", "paper", "--results-root", str(tmp_path / "r"), *args,
                        "--dry-run"])
        err = capsys.readouterr().err
        assert exited.value.code == 2 and message in err and err.count("\n") == 1, err
    assert not (tmp_path / "r").exists()


SMOKE_OF = """
n_teachers: 2
seeds: 3
pools:
  - arch: vgg11
    dataset: {paper: cifar10, tiny: digits}
    members: 6
    held_out: 2
    recipe: {paper: {epochs: 240, optimizer: sgd, lr: 0.05, batch_size: 64}, tiny: {}}
methods:
  single: {}
  kd: {temperature: 4.0, alpha: 0.9}
  single/unseen: {teacher_part: held_out}
"""


def test_a_paper_scale_smoke_runs_apart_from_the_results(tmp_path):
    """A paper-scale grid's smoke (VGG-11 at full width on CIFAR-10 pickles), in process: every job
    finishes after 2 steps and still evaluates, the first seed only, records under smoke/ saying
    so; the real roots stay empty, --status reads the smoke's plan, and the report refuses it.
    (The paper-scale main table with its WeightFormers runs through SLURM: tests/test_slurm.py.)"""
    grid = tmp_path / "paper.yaml"
    grid.write_text(SMOKE_OF)
    results, teachers = tmp_path / "results", tmp_path / "teachers"
    common = ["--grid", str(grid), "--scale", "paper", "--smoke", "--results-root", str(results),
              "--teachers-root", str(teachers)]
    r = sweep(*common, "--cluster", "debug", "--gpus", "0")
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    assert "smoke run: every training loop stops after 2 steps; seed 0 only" in r.stdout
    assert not teachers.exists() and sorted(p.name for p in results.iterdir()) == ["smoke"]
    runs = load_records(results / "smoke" / "paper")
    assert (runs.status == "done").all() and (runs.smoke_steps == 2).all()
    assert set(runs[runs.stage == "methods"].seed) == {0}
    assert set(runs[runs.stage == "methods"].variant) == {"single", "kd", "single/unseen"}
    assert runs[runs.stage == "teachers"].top1.notna().all() and runs[runs.stage == "methods"].top1.notna().all()
    logs = list((results / "smoke" / "teachers").glob("*/member-*/log.jsonl"))
    # One log point each (2 steps of a 4-batch epoch: epoch 0), with the end-of-run evaluation.
    for log in logs + list((results / "smoke" / "paper" / "students").glob("*/log.jsonl")):
        rows = [json.loads(line) for line in log.read_text().splitlines()]
        assert len(rows) == 1 and rows[0]["epoch"] == 0 and "top1" in rows[0] and "val_top1" in rows[0], log
    status = sweep(*common, "--status")
    assert status.returncode == 0, status.stderr
    counts = {line.split()[0]: line.split()[1:] for line in status.stdout.splitlines() if len(line.split()) == 6}
    assert counts["methods"] == ["3", "0", "0", "0", "0"], status.stdout  # the smoke's 3 jobs, all done
    rep = subprocess.run([sys.executable, "-m", "bench.report", "--grid", str(grid), "--results-root",
                          str(results / "smoke")], capture_output=True, text=True, cwd=ROOT)
    assert rep.returncode == 2 and "are a smoke run's" in rep.stderr and "no results" in rep.stderr, rep.stderr


def test_smoke_with_a_data_root_opens_every_split_of_the_users_data_first(tmp_path):
    data = tmp_path / "data"
    write_smoke_data(data, ["cifar10", "cifar100", "imagenet"])
    args = ["--grid", "main_table", "--scale", "paper", "--smoke", "--dry-run", "--data-root", str(data),
            "--results-root", str(tmp_path / "results"), "--teachers-root", str(tmp_path / "teachers")]
    r = sweep(*args)
    assert r.returncode == 0, r.stderr
    seen = [line for line in r.stdout.splitlines() if line.startswith("your data: ")]
    assert [line.split(":")[1].strip() for line in seen] == [
        f"{name} {split}" for name in ("cifar10", "cifar100", "imagenet") for split in ("train", "test")]
    test_count = 10 * SMOKE_SIZES["cifar10"]["test"]
    assert f"your data: cifar10 test: {test_count:,} images, 10 classes, 16 decoded (32x32 px)" in seen
    assert "smoke run:" in r.stdout  # and the synthetic run's plan after it
    first = load_dataset("imagenet", data, "train").samples[0][0]
    Path(first).write_bytes(b"\xff\xd8 not a jpeg")
    r = sweep(*args)
    assert r.returncode != 0 and "Traceback" not in r.stderr
    assert f"imagenet train: {first} does not load" in r.stderr.strip().splitlines()[-1]
    (data / "cifar-100-python" / "test").unlink()
    r = sweep(*args)
    assert r.returncode != 0 and "cifar-100-python/test missing" in r.stderr and "Traceback" not in r.stderr
