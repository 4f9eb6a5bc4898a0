"""The paper's regime at tiny scale: members fine-tuned from one base network the suite pretrains,
each drawing its own hyperparameters; distillation students start from that base."""
import importlib
import json
import textwrap

import pytest
import torch
import torch.nn.functional as F

from bench.checkpoint import load_checkpoint
from bench.grid import load_grid
from bench.engine import train
from bench.engine.heads import classifier_names
from bench.errors import BenchError
from bench.methods.base import MethodJob
from bench.models import build_model
from bench.methods.distillation import student_config, student_init
from bench.method_options import DistillOptions
from bench.jobs import STAGES, Roots, base_dir, member_dir
from bench.train_config import TrainConfig, check_ranges, draw
from bench.stages import member_training, run_pretrain

engine_train = importlib.import_module("bench.engine.train")  # the module (bench.engine.train is also its function)

# A cheap base: the multiview task (10 classes, another task than digits), one epoch.
BASE = {"dataset": "multiview", "recipe": {"epochs": 1}}


def grid_file(tmp_path, pools: str, name: str = "g") -> str:
    path = tmp_path / f"{name}.yaml"
    path.write_text("n_teachers: 2\nseeds: 2\npools:\n" + textwrap.indent(textwrap.dedent(pools), "  ")
                    + "\nmethods: [single, ensemble]\n")
    return str(path)


POOL = """\
- name: {name}
  arch: vgg11
  dataset: digits
  init: pretrained
  members: 4
  base: {{dataset: multiview, recipe: {{epochs: {epochs}}}}}
  recipe: {{epochs: 1}}
"""


@pytest.fixture(scope="module")
def base_weights(tmp_path_factory):
    out = tmp_path_factory.mktemp("base") / "base"
    train(TrainConfig("vgg11", BASE["dataset"], "tiny", **BASE["recipe"]), out, progress=False)
    return out / "model.safetensors"


def starting_state(monkeypatch, cfg: TrainConfig, out) -> dict[str, torch.Tensor]:
    """The weights a run starts its first step from (the engine's loop is stopped before it)."""
    seen = {}

    class Stop(Exception):
        pass

    def stop(task, *args, **kwargs):
        seen.update({k: v.detach().clone() for k, v in task.model.state_dict().items()})
        raise Stop

    monkeypatch.setattr(engine_train, "fit", stop)
    with pytest.raises(Stop):
        train(cfg, out, progress=False)
    return seen


def test_a_base_is_planned_once_for_every_pool_that_starts_from_it_and_found_by_its_spec(tmp_path):
    grid = load_grid(grid_file(tmp_path, POOL.format(name="a", epochs=1) + POOL.format(name="b", epochs=1)))
    roots = Roots(tmp_path / "teachers", tmp_path / "results")
    bases = STAGES["pretrain"].plan(grid, roots)
    assert len(bases) == 1
    teachers = STAGES["teachers"].plan(grid, roots)
    assert {p for j in teachers for p in [j.spec["pool"]]} == {"a", "b"}
    assert all(j.needs == [bases[0].run_id] for j in teachers)
    # The base's folder is named by its spec alone: another grid with the same base finds it.
    other = load_grid(grid_file(tmp_path, POOL.format(name="c", epochs=1), "h"))
    assert [j.run_id for j in STAGES["pretrain"].plan(other, roots)] == [bases[0].run_id]
    assert not STAGES["pretrain"].done(bases[0], grid, roots)
    run_pretrain(bases[0].spec, grid.name, roots)
    assert STAGES["pretrain"].done(bases[0], grid, roots)
    assert (base_dir(roots, bases[0].spec) / "model.json").exists()
    # Another base recipe is another job, in another folder, and its members in other folders.
    longer = load_grid(grid_file(tmp_path, POOL.format(name="a", epochs=2), "k"))
    (job,) = STAGES["pretrain"].plan(longer, roots)
    assert job.run_id != bases[0].run_id and base_dir(roots, job.spec) != base_dir(roots, bases[0].spec)
    first = STAGES["teachers"].plan(longer, roots)[0]
    assert member_dir(roots, first.spec) != member_dir(roots, teachers[0].spec)


def test_a_scratch_pool_keeps_its_spec_and_folder(tmp_path):
    """A pool without a base or ranges plans exactly as before they existed (no key added)."""
    grid = load_grid(grid_file(tmp_path, "- {arch: vgg11, dataset: digits, members: 4}"))
    roots = Roots(tmp_path / "t", tmp_path / "r")
    job = STAGES["teachers"].plan(grid, roots)[0]
    assert set(job.spec) == {"stage", "pool", "arch", "dataset", "scale", "init", "member", "recipe"}
    assert job.needs == [] and STAGES["pretrain"].plan(grid, roots) == []
    assert member_dir(roots, job.spec).parent.name == "vgg11-digits-tiny-scratch-44136f"


@pytest.mark.parametrize("pool, words", [
    ("{arch: vgg11, dataset: digits, members: 4, base: {dataset: multiview}}", "only a pretrained pool"),
    ("{arch: vgg11, dataset: digits, init: pretrained, members: 4, base: {dataset: nope}}", "unknown value 'nope'"),
    ("{arch: vgg11, dataset: digits, members: 4, ranges: {lr: [1.0e-2, 1.0e-3]}}", "low <= high"),
    ("{arch: vgg11, dataset: digits, members: 4, ranges: {momentum: [0.1, 0.9]}}", "unknown key 'momentum'"),
    ("{arch: vgg11, dataset: digits, members: 4, ranges: {epochs: 3}}", "expected [low, high]"),
])
def test_a_bad_base_or_range_is_refused_at_load_naming_the_key(tmp_path, pool, words):
    with pytest.raises(BenchError, match=None) as err:
        load_grid(grid_file(tmp_path, f"- {pool}"))
    assert words in str(err.value) and "pools[0]" in str(err.value)


def test_at_paper_scale_a_pretrained_pool_takes_no_base(tmp_path):
    path = grid_file(tmp_path, "- {arch: vgg11, dataset: {paper: cifar10, tiny: digits}, init: pretrained, "
                               "members: 4, base: {dataset: multiview}, recipe: {paper: {image_size: 224}, tiny: {}}}")
    with pytest.raises(BenchError, match="timm's weights"):
        load_grid(path, "paper")
    assert load_grid(path, "tiny").pools[0].base == {"dataset": "multiview", "recipe": {}}


def test_drawn_hyperparameters_are_a_function_of_the_member_seed():
    ranges = check_ranges({"lr": [1e-4, 1e-2], "epochs": [2, 5], "label_smoothing": [0.0, 0.2]}, "r")
    draws = [draw(ranges, k) for k in range(40)]
    assert draws == [draw(ranges, k) for k in range(40)]  # the same seed draws the same values
    assert len({tuple(d.values()) for d in draws}) == 40  # other seeds, other values
    assert all(1e-4 <= d["lr"] <= 1e-2 and 0 <= d["label_smoothing"] <= 0.2 for d in draws)
    assert {d["epochs"] for d in draws} == {2, 3, 4, 5}  # whole numbers, both ends reached
    # log-uniform: about as many rates below the range's geometric middle (1e-3) as above it
    assert 12 <= sum(d["lr"] < 1e-3 for d in draws) <= 28
    # Adding a range leaves the other draws as they were.
    wider = check_ranges({**ranges, "weight_decay": [1e-5, 1e-3]}, "r")
    assert all({k: v for k, v in draw(wider, k_).items() if k != "weight_decay"} == draws[k_] for k_ in range(40))


def test_a_member_trains_with_what_it_drew_and_its_record_says_so(tmp_path):
    grid = load_grid(grid_file(tmp_path, """\
        - {arch: vgg11, dataset: digits, init: pretrained, members: 4, base: {dataset: multiview},
           recipe: {epochs: 1}, ranges: {lr: [1.0e-3, 3.0e-3], epochs: [1, 3]}}"""))
    roots = Roots(tmp_path / "t", tmp_path / "r")
    job = STAGES["teachers"].plan(grid, roots)[1]
    fields, noted = member_training(job.spec, roots)
    drawn = draw(job.spec["ranges"], job.spec["member"])
    assert fields["lr"] == drawn["lr"] and fields["epochs"] == drawn["epochs"]
    assert noted == {"drawn_epochs": drawn["epochs"], "drawn_lr": drawn["lr"], "base": job.needs[0]}
    assert fields["init_from"] == str(base_dir(roots, job.spec["base"]) / "model.safetensors")
    assert fields["extra"] == {"base": job.needs[0]}


@pytest.mark.parametrize("head", ["new", "probe"])
def test_a_member_starts_from_the_base_body_with_a_head_of_the_target_task(base_weights, tmp_path, monkeypatch, head):
    base, _ = load_checkpoint(base_weights)
    starts = [starting_state(monkeypatch, TrainConfig("vgg11", "digits", "tiny", seed=k, epochs=1, head=head,
                                                      init_from=str(base_weights)), tmp_path / f"m{k}")
              for k in (0, 1)]
    heads = {"head.fc.weight", "head.fc.bias"}
    assert heads == classifier_names(build_model("vgg11", 10, 16, "tiny"))
    for start in starts:
        assert all(torch.equal(start[k], base[k]) for k in base if k not in heads)
    if head == "new":  # each member's head is drawn by its seed
        assert not torch.equal(starts[0]["head.fc.weight"], starts[1]["head.fc.weight"])
    else:  # the linear probe is a function of the base and the data: every member starts the same
        assert torch.equal(starts[0]["head.fc.weight"], starts[1]["head.fc.weight"])
        assert not torch.equal(starts[0]["head.fc.weight"], torch.zeros_like(starts[0]["head.fc.weight"]))


def test_a_member_fine_tuned_from_a_base_resumes_to_the_same_bits(base_weights, tmp_path):
    cfg = TrainConfig("vgg11", "digits", "tiny", seed=3, epochs=3, head="probe", init_from=str(base_weights),
                      extra={"base": "b"})
    calls = []

    def crash_in_epoch_two(logits, x, y, idx, views):  # the recipe's cross-entropy, until it crashes
        calls.append(1)
        if len(calls) > 1.5 * 17:  # 1,078 digits / 64 = 17 steps an epoch: past the first checkpoint
            raise RuntimeError("crash")
        return F.cross_entropy(logits, y, label_smoothing=0.0)

    with pytest.raises(RuntimeError, match="crash"):
        train(cfg, tmp_path / "crashed", criterion=crash_in_epoch_two, progress=False)
    assert json.loads((tmp_path / "crashed" / "checkpoint.json").read_text())["epoch"] == 1
    train(cfg, tmp_path / "crashed", progress=False)
    train(cfg, tmp_path / "clean", progress=False)
    assert (tmp_path / "crashed" / "model.safetensors").read_bytes() == (tmp_path / "clean" / "model.safetensors").read_bytes()


def test_a_kd_student_of_a_pretrained_pool_starts_from_the_base(base_weights, tmp_path, monkeypatch):
    job = MethodJob(method="kd", dataset="digits", arch="vgg11", seed=0, teachers=[], members=[0, 1],
                    options=DistillOptions(), workdir=tmp_path / "kd", scale="tiny",
                    recipe={"epochs": 1, "head": "new"}, base=base_weights, base_id="b")
    cfg = student_config(job, 10_000, None, {"method": "kd"})
    assert cfg.init_from == str(base_weights) and cfg.extra["base"] == "b" and student_init(job) == "base"
    start = starting_state(monkeypatch, cfg, tmp_path / "kd")
    base, _ = load_checkpoint(base_weights)
    assert all(torch.equal(start[k], base[k]) for k in base if not k.startswith("head.fc"))
    # A fine-tuning run's own start (a predicted student) wins over the base.
    assert student_config(job, 1, None, {}, init_from="x").init_from == "x"
    assert student_init(job, {"init_from": "x"}) == "checkpoint"
    # Without a base the student starts from scratch, as before.
    assert student_init(MethodJob(method="kd", dataset="digits", arch="vgg11", seed=0, teachers=[], members=[],
                                  options=DistillOptions())) == "scratch"


def test_pretrained_weights_are_read_from_a_folder_in_place_of_the_hub(tmp_path, monkeypatch):
    """BENCH_PRETRAINED: a compute node without the hub (or a smoke's stand-ins) reads the files put there."""
    from bench.models import PRETRAINED_ENV, load_pretrained, write_standin_weights

    monkeypatch.setenv(PRETRAINED_ENV, str(tmp_path))
    with pytest.raises(BenchError, match="holds no resnet50.tv_in1k.safetensors"):
        load_pretrained("resnet50", 100, 224, "paper", 3, weights="resnet50.tv_in1k")
    file = write_standin_weights(tmp_path, "resnet50.tv_in1k")
    assert write_standin_weights(tmp_path, "resnet50.tv_in1k").stat().st_mtime_ns == file.stat().st_mtime_ns  # once
    torch.manual_seed(0)
    model = load_pretrained("resnet50", 100, 224, "paper", 3, weights="resnet50.tv_in1k")
    stored = __import__("safetensors.torch", fromlist=["load_file"]).load_file(str(file))
    body = {k: v for k, v in model.state_dict().items() if not k.startswith("fc.")}
    assert body and all(torch.equal(v, stored[k]) for k, v in body.items())
    assert model.fc.weight.shape == (100, 2048)  # a head of the target's classes


def test_a_smoke_with_standin_weights_writes_one_file_per_pretrained_weight(tmp_path, monkeypatch):
    from bench import smoke
    from bench.models import PRETRAINED_ENV

    grid = smoke.smoke_grid(load_grid("main_table", "paper"))
    grid = __import__("dataclasses").replace(grid, pools=tuple(p for p in grid.pools if p.arch == "resnet50"))
    roots = Roots(tmp_path / "t", tmp_path / "r")
    from bench.job_env import SMOKE_STEPS_ENV

    for name in (PRETRAINED_ENV, SMOKE_STEPS_ENV, "BENCH_DATA"):  # prepare exports them: restored after the test
        monkeypatch.setenv(name, "")
    smoke.prepare(grid, roots, 1, write=True, standin_weights=True)
    assert sorted(p.name for p in (tmp_path / "r" / "pretrained").iterdir()) == ["resnet50.tv_in1k.safetensors"]
    assert __import__("os").environ[PRETRAINED_ENV] == str(tmp_path / "r" / "pretrained")


def test_a_member_that_draws_its_epochs_is_estimated_at_them(tmp_path):
    from bench.estimate import teacher_job_flops

    grid = load_grid(grid_file(tmp_path, """\
        - {arch: vgg11, dataset: digits, init: pretrained, members: 6, base: {dataset: multiview},
           recipe: {epochs: 1}, ranges: {epochs: [1, 8]}}"""))
    jobs = STAGES["teachers"].plan(grid, Roots(tmp_path / "t", tmp_path / "r"))
    per_epoch = {teacher_job_flops(j.spec) / draw(j.spec["ranges"], j.spec["member"])["epochs"] for j in jobs}
    assert len({round(f) for f in per_epoch}) == 1 and len({draw(j.spec["ranges"], j.spec["member"])["epochs"]
                                                          for j in jobs}) > 1
