"""Knowledge distillation: the loss, the batched teachers, the soft-label cache, kd and self_distill runs."""
from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn as nn

from bench.data.loaders import make_loader
from bench.methods import common, distillation, kd, self_distill
from bench.methods.base import MethodJob
from bench.engine import train
from bench.checkpoint import save_checkpoint
from bench.engine import soft_labels
from bench.engine.soft_labels import BatchedTeachers, SoftLabelCache
from bench.errors import BenchError
from bench.models import build_model
from bench.method_options import DistillOptions
from bench.train_config import TrainConfig

def _randomise_bn(model: nn.Module, gen: torch.Generator) -> nn.Module:
    """Non-trivial running statistics, so stacking buffers is really exercised."""
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=gen) * 0.1)
            m.running_var.copy_(torch.rand(m.running_var.shape, generator=gen) + 0.5)
    return model.eval()


def _teachers(arch: str, n: int, mode: str = "vmap") -> BatchedTeachers:
    gen = torch.Generator().manual_seed(0)
    models = []
    for k in range(n):
        torch.manual_seed(k)
        models.append(_randomise_bn(build_model(arch, 10, 16, "tiny"), gen))
    return BatchedTeachers(models, mode=mode)


# --- the loss ------------------------------------------------------------------------------

def test_loss_is_zero_when_the_student_matches_the_teachers_and_positive_otherwise():
    torch.manual_seed(0)
    z, y = torch.randn(16, 10) * 3, torch.randint(0, 10, (16,))
    for t in (1.0, 4.0, 10.0):
        p = (z / t).softmax(1)
        assert abs(distillation.kd_loss(z, p, y, t, alpha=1.0).item()) < 1e-7
        assert distillation.kd_loss(z + torch.randn(16, 10), p, y, t, alpha=1.0).item() > 1e-4


def test_gradient_pushes_the_student_towards_the_teachers_class():
    teacher = torch.tensor([[0.0, 5.0, 0.0, 0.0]])  # the teachers prefer class 1
    for alpha, label in [(1.0, 0), (0.9, 1), (0.5, 1)]:
        s = torch.zeros(1, 4, requires_grad=True)
        loss = distillation.kd_loss(s, (teacher / 4).softmax(1), torch.tensor([label]), 4.0, alpha)
        loss.backward()
        assert s.grad[0, 1] < 0 and (s.grad[0, [0, 2, 3]] > 0).all()  # descent raises logit 1 only
        stepped = (s - 0.5 * s.grad).softmax(1)[0, 1]
        assert stepped > s.softmax(1)[0, 1]


def test_temperature_squared_scaling_matches_a_hand_computation():
    torch.manual_seed(1)
    s, z, y = torch.randn(5, 7) * 2, torch.randn(5, 7) * 2, torch.randint(0, 7, (5,))
    t, alpha = 3.0, 0.7
    p = (z / t).softmax(1)
    sd, pd = s.double().tolist(), p.double().tolist()
    kl = ce = 0.0
    for row_s, row_p, label in zip(sd, pd, y.tolist()):
        log_z_t = math.log(sum(math.exp(v / t) for v in row_s))
        kl += sum(pi * (math.log(pi) - (v / t - log_z_t)) for pi, v in zip(row_p, row_s))
        ce += math.log(sum(math.exp(v) for v in row_s)) - row_s[label]
    hand = alpha * t * t * kl / 5 + (1 - alpha) * ce / 5
    s.requires_grad_(True)
    loss = distillation.kd_loss(s, p, y, t, alpha)
    assert loss.item() == pytest.approx(hand, rel=1e-5)
    # With T^2, the soft term's gradient w.r.t. the logits is T * (q_T - p_T) / B: O(T), not O(1/T).
    loss.backward()
    q = (s.detach() / t).softmax(1)
    onehot = torch.nn.functional.one_hot(y, 7).float()
    want = alpha * t * (q - p) / 5 + (1 - alpha) * (s.detach().softmax(1) - onehot) / 5
    torch.testing.assert_close(s.grad, want, atol=1e-6, rtol=1e-5)


# --- the teachers --------------------------------------------------------------------------

@pytest.mark.parametrize("arch", ["vgg11", "resnet50", "vit_b32"])
def test_batched_teachers_equal_the_loop(arch):
    batched, loop = _teachers(arch, 2, "vmap"), _teachers(arch, 2, "loop")
    x = torch.randn(8, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    for t in (1.0, 4.0):
        got = batched.mean_soft_labels(x, t)
        assert batched.mode == "vmap", batched.fallback_reason  # no silent fallback for the suite's archs
        want = loop.mean_soft_labels(x, t)
        assert got.shape == (8, 10)
        torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
        torch.testing.assert_close(got.sum(1), torch.ones(8))
    torch.testing.assert_close(batched.logits(x), torch.stack([m(x) for m in loop.models]), atol=1e-5, rtol=0)
    assert not any(p.requires_grad for p in batched.params.values())


class _DataDependent(nn.Module):
    """A forward vmap cannot batch (a Python branch on a tensor's value)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        return self.fc(x) if self.fc.weight.sum().item() > -1e9 else -self.fc(x)


def test_batched_teachers_fall_back_to_the_loop_when_vmap_fails():
    torch.manual_seed(0)
    models = [_DataDependent().eval() for _ in range(2)]
    teachers = BatchedTeachers(models)
    x = torch.randn(5, 4)
    with pytest.warns(UserWarning, match="vmap failed"):
        got = teachers.mean_soft_labels(x, 2.0)
    assert teachers.mode == "loop" and teachers.fallback_reason
    want = torch.stack([(m(x) / 2).softmax(1) for m in models]).mean(0)
    torch.testing.assert_close(got, want)


def _drawn(steps: int = 3, seed: int = 7):
    """A digits training loader and the (index, view) pairs its first `steps` batches draw."""
    loader = make_loader("digits", "train", batch_size=64, train=True, seed=seed, image_size=16)
    return loader, soft_labels.drawn_views(loader, steps)


def _cache(teachers, **kw) -> SoftLabelCache:
    return SoftLabelCache(teachers, make_loader("digits", "train", batch_size=1, train=True, image_size=16), 10, **kw)


def test_cache_holds_the_teachers_logits_on_each_drawn_view_bit_for_bit():
    teachers = _teachers("vgg11", 2, "loop")  # the loop: what distillation uses on a CPU
    loader, (idx, views) = _drawn()
    assert len(idx) == 3 * 64 and views.max() < 25 and len(set(views.tolist())) > 10  # translations drawn
    cache = _cache(teachers)
    unique = len(set(zip(idx.tolist(), views.tolist())))
    assert cache.fill(idx, views) == 2 * unique == len(cache)
    assert cache.fill(idx, views) == 0  # held: never computed twice
    # The batches training sees: the cache gives exactly the online teachers' soft labels, for any
    # temperature and any group of the teachers (here the second alone).
    for step, (x, _, i, v) in zip(range(3), loader):
        for t in (1.0, 4.0):
            assert torch.equal(cache.mean(i, v, t), teachers.mean_soft_labels(x, t))
            assert torch.equal(cache.mean(i, v, t, [1]), teachers.mean_soft_labels(x, t, [1]))
    # A pair it was not filled with, a view outside the augmentation's, an index outside the split.
    drawn = set(zip(idx.tolist(), views.tolist()))
    missing = next((s, v) for s in range(1078) for v in range(25) if (s, v) not in drawn)
    for i, v in [missing, (0, -1), (0, 25), (1078, 0)]:
        with pytest.raises(BenchError, match="pairs the cache was not filled with"):
            cache.mean(torch.tensor([i]), torch.tensor([v]), 4.0)


@pytest.mark.parametrize("threads", [1, 2])
def test_a_row_does_not_depend_on_its_batch(threads):
    """What makes the cache exact: a row's logits are the same in any batch of 16 images or more
    (the cache's CHUNK, the recipes' training batches); smaller batches agree to float rounding (on
    some CPUs the last bits differ below 16 rows, hence the cache's fixed, padded chunks). With one
    thread (the tests' own) and two (a job's, where a job has two cores)."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        _rows_match_in_any_batch()
    finally:
        torch.set_num_threads(before)


def _rows_match_in_any_batch():
    for arch in ("vgg11", "resnet50", "vit_b32"):
        (model,) = _teachers(arch, 1, "loop").models
        x = torch.randn(64, 3, 16, 16, generator=torch.Generator().manual_seed(3))
        # Contiguous, and channels-last as the loader's crops are (per layout: the two differ).
        for x in (x, x.contiguous(memory_format=torch.channels_last)):
            with torch.no_grad():
                whole = model(x)
                for b in (16, 32):
                    assert torch.equal(torch.cat([model(x[s:s + b]) for s in range(0, 64, b)]), whole), (arch, b)
                # Small batches on the first 15 rows: batches of 2 and of 7 rows and a last one of a
                # single row, as on all 64, in a quarter of the forwards.
                for b in (2, 7):
                    torch.testing.assert_close(torch.cat([model(x[s:min(s + b, 15)]) for s in range(0, 15, b)]),
                                               whole[:15], rtol=0, atol=1e-6)
                perm = torch.randperm(64, generator=torch.Generator().manual_seed(4))
                assert torch.equal(model(x[perm][:32]), whole[perm][:32]), arch  # other neighbours


def _saved(teachers: BatchedTeachers, root: Path) -> list[Path]:
    for k, m in enumerate(teachers.models):
        save_checkpoint(root / f"t{k}" / "model", m.state_dict(), {"arch": "vgg11"})
    return [root / f"t{k}" / "model.safetensors" for k in range(len(teachers))]


def test_cache_files_beside_the_teachers_are_shared_and_extended(tmp_path):
    teachers = _teachers("vgg11", 3, "loop")
    files = _saved(teachers, tmp_path)
    identity = {"dataset": "digits", "split": "train", "image_size": 16, "augmentation": "translate2"}
    loader, (idx, views) = _drawn()
    two = BatchedTeachers(teachers.models[:2], mode="loop")
    first = _cache(two, checkpoints=files[:2], identity=identity)
    unique = first.fill(idx, views) // 2
    assert [len(list((tmp_path / f"t{k}").glob("view-logits-*.safetensors"))) for k in range(3)] == [1, 1, 0]
    # Another job on teachers 1 and 2, drawing more: teacher 1's entries come from its file.
    _, (more_idx, more_views) = _drawn(steps=6, seed=8)
    later = _cache(BatchedTeachers(teachers.models[1:], mode="loop"), checkpoints=files[1:], identity=identity)
    both = len(set(zip(idx.tolist(), views.tolist())) | set(zip(more_idx.tolist(), more_views.tolist())))
    assert later.fill(torch.cat([idx, more_idx]), torch.cat([views, more_views])) == (both - unique) + both
    for _, (x, _, i, v) in zip(range(3), loader):
        assert torch.equal(later.mean(i, v, 4.0, [0]), first.mean(i, v, 4.0, [1]))
        assert torch.equal(later.mean(i, v, 4.0), teachers.mean_soft_labels(x, 4.0, [1, 2]))
    # Another identity (here the image size) is another file; a damaged file is recomputed.
    other = _cache(two, checkpoints=files[:2], identity={**identity, "image_size": 17})
    assert other.fill(idx, views) == 2 * unique
    weights = next((tmp_path / "t0").glob("view-logits-*.safetensors"))
    weights.write_bytes(weights.read_bytes()[:-4] + b"oops")
    again = _cache(two, checkpoints=files[:2], identity=identity)
    with pytest.warns(UserWarning, match="recomputing"):
        assert again.fill(idx, views) == unique  # teacher 0 again, teacher 1 read


def test_the_memory_budget_decides_between_the_cache_and_online_teachers(monkeypatch):
    teachers = _teachers("vgg11", 2, "loop")
    need = soft_labels.cache_bytes(2, 1078, 25, 10)
    assert need == 4 * 2 * 1078 * 25 * 10
    make = lambda: soft_labels.soft_label_cache(teachers, None, "digits", root=None, image_size=16, num_classes=10,
                                                device=torch.device("cpu"))
    monkeypatch.delenv(soft_labels.BUDGET_ENV, raising=False)
    assert soft_labels.cache_budget_bytes() == 2 * 2 ** 30 and make().nbytes == need
    monkeypatch.setenv(soft_labels.BUDGET_ENV, str(need / 2 ** 30))
    assert make() is not None
    monkeypatch.setenv(soft_labels.BUDGET_ENV, str((need - 4) / 2 ** 30))
    assert make() is None
    monkeypatch.setenv(soft_labels.BUDGET_ENV, "0")
    assert make() is None
    assert soft_labels.soft_label_cache(teachers, None, "imagenet", root=None, image_size=16, num_classes=10,
                                        device=torch.device("cpu")) is None  # never held in memory
    monkeypatch.setenv(soft_labels.BUDGET_ENV, "lots")
    with pytest.raises(BenchError, match="BENCH_SOFT_LABEL_CACHE_GB must be a number of GiB >= 0, got 'lots'"):
        make()


# --- kd and self_distill end to end ----------------------------------------------------------

RECIPE = {"epochs": 2}


@pytest.fixture(scope="module")
def digit_teachers(tmp_path_factory):
    root = tmp_path_factory.mktemp("pool")
    paths = []
    for k in range(2):
        train(TrainConfig(arch="vgg11", dataset="digits", scale="tiny", seed=k, **RECIPE), root / f"member-{k}",
              progress=False)
        paths.append(root / f"member-{k}" / "model.safetensors")
    return paths


def _job(method: str, teachers: list[Path], workdir: Path, **options) -> MethodJob:
    return MethodJob(method=method, dataset="digits", arch="vgg11", seed=0, teachers=teachers, members=[0, 1],
               options=DistillOptions(**options), workdir=workdir, scale="tiny", recipe=dict(RECIPE))


def test_kd_trains_a_student_from_the_ensemble(digit_teachers, tmp_path, monkeypatch):
    job = _job("kd", digit_teachers, tmp_path / "kd")
    rec = kd.run(job)
    assert all(math.isfinite(rec[m]) for m in ("top1", "top5", "nll", "ece", "train_s"))
    assert rec["top1"] > 50
    assert rec["student_seed"] == 10_000 and rec["infer_forwards"] == 1 and rec["epochs"] == 2
    assert rec["student_init"] == "scratch"  # the digits teachers trained from scratch
    assert (rec["temperature"], rec["alpha"], rec["soft_label_cache"]) == (4.0, 0.9, True)  # digits: 25 views
    meta = json.loads((tmp_path / "kd" / "model.json").read_text())
    assert meta["seed"] == 10_000 and meta["config"]["extra"]["teacher_members"] == [0, 1]
    # A finished student is found, not retrained: the same record, and nothing is evaluated again
    # (the student's outputs are the ones its training kept, the teachers' the ones kept beside them).
    def no_forward(*args, **kw):
        raise AssertionError("a network was evaluated again")
    with monkeypatch.context() as patch:
        patch.setattr(common, "predict", no_forward)
        assert kd.run(job) == rec
    # The folder of another distillation (here another T) is refused, not resumed.
    with pytest.raises(Exception, match="another config"):
        kd.run(_job("kd", digit_teachers, tmp_path / "kd", temperature=2.0))


def test_self_distill_trains_a_student_from_one_teacher(digit_teachers, tmp_path):
    rec = self_distill.run(_job("self_distill", digit_teachers, tmp_path / "sd", alpha=0.5))
    assert all(math.isfinite(rec[m]) for m in ("top1", "top5", "nll", "ece", "train_s"))
    assert rec["top1"] > 50
    assert rec["student_seed"] == 20_000 and rec["teacher_member"] == 0 and rec["alpha"] == 0.5
    assert rec["teacher_forward"] == "loop"  # one teacher: nothing to batch
    meta = json.loads((tmp_path / "sd" / "model.json").read_text())
    assert meta["config"]["extra"]["teacher_members"] == [0]


def test_a_student_needs_a_workdir():
    with pytest.raises(Exception, match="workdir"):
        kd.run(_job("kd", [], None))


def test_distilling_without_augmentation_looks_every_batch_up_in_the_cache(tmp_path, monkeypatch):
    # multiview trains without augmentation: one view per sample, the teacher runs once per image.
    # (self_distill, so one teacher to train; kd shares the code path.) Teacher and student train on
    # a fixed quarter of the 2,000 training images (a recipe's data fraction): 7 batches of 64.
    recipe = {"epochs": 1, "train_fraction": 0.25}
    train(TrainConfig(arch="vgg11", dataset="multiview", seed=0, **recipe), tmp_path / "t0", progress=False)
    rows, fills = [], []
    lookup, fill = SoftLabelCache.mean, SoftLabelCache.fill
    monkeypatch.setattr(SoftLabelCache, "mean", lambda self, idx, *a: rows.append(len(idx)) or lookup(self, idx, *a))
    monkeypatch.setattr(SoftLabelCache, "fill", lambda self, *a: fills.append(fill(self, *a)) or fills[-1])
    job = MethodJob(method="self_distill", dataset="multiview", arch="vgg11", seed=1,
              teachers=[tmp_path / "t0" / "model.safetensors"], members=[0], options=DistillOptions(),
              workdir=tmp_path / "sd",
              scale="tiny", recipe=recipe)
    rec = self_distill.run(job)
    assert rec["soft_label_cache"] and rec["soft_label_s"] > 0 and math.isfinite(rec["top1"])
    assert fills == [(500 // 64) * 64] and sum(rows) == fills[0]  # every training batch, from the cache
    assert self_distill.run(job) == rec and len(fills) == 1  # found finished: no fill, same cost


def test_a_student_from_the_cache_is_the_student_from_online_teachers(digit_teachers, tmp_path, monkeypatch):
    # The students train on a fixed quarter of the training split (a recipe's data fraction): 4
    # steps an epoch, over 2 epochs, so the views of the second epoch come from the cache too.
    job = lambda out: dataclasses.replace(_job("kd", digit_teachers, out), recipe={**RECIPE, "train_fraction": 0.25})
    monkeypatch.setenv(soft_labels.BUDGET_ENV, "0")
    online = kd.run(job(tmp_path / "online"))
    monkeypatch.delenv(soft_labels.BUDGET_ENV)
    cached = kd.run(job(tmp_path / "cached"))
    assert (online["soft_label_cache"], cached["soft_label_cache"]) == (False, True)
    sha = lambda run: json.loads((tmp_path / run / "model.json").read_text())["sha256"]
    assert sha("online") == sha("cached")  # the same weights, bit for bit
    assert {m: online[m] for m in distillation.METRICS} == {m: cached[m] for m in distillation.METRICS}


def test_the_student_of_a_pretrained_pool_starts_from_the_pretrained_weights(pretrained_standin, tmp_path):
    """KD's student of teachers fine-tuned from one pretrained network starts where they started:
    before its first step its weights are the pretrained ones but for a head of its own seed. A
    scratch pool's student and a student handed its start (WeightFormer's) are what they were."""
    from safetensors.torch import load_file

    from bench.engine.train import initial_model

    recipe = {"image_size": 224, "pretrained_weights": "resnet50.tv_in1k", "epochs": 2, "optimizer": "adamw",
              "lr": 1e-4, "schedule": "constant"}
    job = MethodJob(method="kd", dataset="cifar100", arch="resnet50", seed=0, teachers=[], members=[0, 1],
                    options=DistillOptions(), workdir=tmp_path / "kd", scale="paper", recipe=recipe,
                    init="pretrained")
    assert distillation.student_init(job) == "pretrained"
    cfg = distillation.student_config(job, 10_000, None, {}).resolved()
    assert cfg.pretrained and cfg.pretrained_weights == "resnet50.tv_in1k" and cfg.image_size == 224
    student = initial_model(cfg, 100).state_dict()
    stored = load_file(pretrained_standin("resnet50.tv_in1k"))
    body = [k for k in stored if not k.startswith("fc.")]
    assert set(student) - {"fc.weight", "fc.bias"} == set(body)
    assert all(torch.equal(student[k], stored[k]) for k in body)
    assert student["fc.weight"].shape == (100, 2048)  # the student's own head, drawn from its seed:
    assert torch.equal(initial_model(cfg, 100).state_dict()["fc.weight"], student["fc.weight"])
    # Handed a start (weightformer_ft's predicted student): no pretrained download, the pool's architecture.
    given = distillation.student_config(job, 10_000, None, {}, init_from="predicted.safetensors")
    assert distillation.student_init(job, {"init_from": "x"}) == "checkpoint" and not given.pretrained
    assert given.pretrained_weights == "resnet50.tv_in1k"
    # A scratch pool's student: its config (so its run folder) exactly as before pretrained students existed.
    scratch = distillation.student_config(_job("kd", [], tmp_path / "s"), 10_000, 2, {"method": "kd"})
    assert distillation.student_init(_job("kd", [], tmp_path / "s")) == "scratch"
    assert scratch.to_json() == TrainConfig(arch="vgg11", dataset="digits", scale="tiny", seed=10_000,
                                            extra={"method": "kd"}, **RECIPE).to_json()
    assert "pretrained_weights" not in scratch.to_json() and scratch.to_json()["pretrained"] is False


def test_a_shorter_student_keeps_its_step_schedules_shape(tmp_path):
    """A KD student of 40 epochs from a CIFAR pool whose step schedule spans 240 (milestones 150,
    180, 210, which 40 epochs never reach) decays at 25, 30, 35; one of 2 epochs at 1; a student as
    long as its recipe, and a cosine (tiny) schedule, are left as they were."""
    recipe = {"epochs": 240, "optimizer": "sgd", "lr": 0.05, "schedule": "step", "milestones": [150, 180, 210],
              "weight_decay": 5e-4, "batch_size": 64, "warmup_epochs": 0}
    job = MethodJob(method="kd", dataset="cifar10", arch="vgg11", seed=0, teachers=[], members=[0, 1],
                    options=DistillOptions(), workdir=tmp_path / "kd", scale="paper", recipe=recipe)
    assert distillation.student_config(job, 10_000, 40, {}).resolved().milestones == (25, 30, 35)
    assert distillation.student_config(job, 10_000, 2, {}).resolved().milestones == (1,)
    assert distillation.student_config(job, 10_000, 240, {}).resolved().milestones == (150, 180, 210)
    tiny = distillation.student_config(_job("kd", [], tmp_path / "s"), 10_000, 40, {"method": "kd"})
    assert tiny.to_json() == TrainConfig(arch="vgg11", dataset="digits", scale="tiny", seed=10_000, epochs=40,
                                         extra={"method": "kd"}, **{k: v for k, v in RECIPE.items()
                                                                    if k != "epochs"}).to_json()
