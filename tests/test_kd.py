"""Knowledge distillation: the loss, the batched teachers, the soft-label cache, kd and self_distill runs."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn as nn

from bench.data.loaders import make_loader
from bench.methods import distillation, kd, self_distill
from bench.methods.base import MethodJob
from bench.engine import train
from bench.engine.soft_labels import BatchedTeachers, SoftLabelCache
from bench.errors import BenchError
from bench.models import build_model
from bench.options import DistillOptions
from bench.recipes import TrainConfig

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


def test_cache_returns_the_teachers_output_for_each_sample_index():
    teachers = _teachers("vgg11", 2)
    cache = SoftLabelCache(teachers, make_loader("multiview", "train", batch_size=512, train=False,
                                                 image_size=16), temperature=4.0)
    assert len(cache) == 2000
    # The batches training sees: shuffled, not augmented (multiview's augment is "none").
    train_loader = make_loader("multiview", "train", batch_size=64, train=True, seed=7, image_size=16)
    train_loader.set_epoch(1)
    for i, (x, _, idx) in enumerate(train_loader):
        torch.testing.assert_close(cache.mean(idx), teachers.mean_soft_labels(x, 4.0), atol=1e-6, rtol=0)
        one = (teachers.models[1](x) / 4.0).softmax(1)  # any group of the teachers: here the second alone
        torch.testing.assert_close(cache.mean(idx, [1]), one, atol=1e-6, rtol=0)
        if i == 3:
            break
    # A cache built on a fraction of the split refuses the samples it does not hold.
    half = make_loader("multiview", "train", batch_size=512, train=False, image_size=16, fraction=0.5, seed=3)
    part = SoftLabelCache(teachers, half, temperature=4.0)
    held = half.indices
    assert len(part) == 1000
    torch.testing.assert_close(part.mean(held[:5]), cache.mean(held[:5]))
    missing = torch.tensor(sorted(set(range(2000)) - set(held.tolist()))[:3])
    with pytest.raises(BenchError, match="samples the cache was not built on"):
        part.mean(missing)


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


def test_kd_trains_a_student_from_the_ensemble(digit_teachers, tmp_path):
    job = _job("kd", digit_teachers, tmp_path / "kd")
    rec = kd.run(job)
    assert all(math.isfinite(rec[m]) for m in ("top1", "top5", "nll", "ece", "train_s"))
    assert rec["top1"] > 50
    assert rec["student_seed"] == 10_000 and rec["infer_forwards"] == 1 and rec["epochs"] == 2
    assert (rec["temperature"], rec["alpha"], rec["soft_label_cache"]) == (4.0, 0.9, False)  # digits augment
    meta = json.loads((tmp_path / "kd" / "model.json").read_text())
    assert meta["seed"] == 10_000 and meta["config"]["extra"]["teacher_members"] == [0, 1]
    # A finished student is found, not retrained: the same record.
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
    # multiview trains without augmentation: the teacher runs once over the training split.
    # (self_distill, so one teacher to train; kd shares the code path.)
    train(TrainConfig(arch="vgg11", dataset="multiview", seed=0, epochs=1), tmp_path / "t0", progress=False)
    made, rows = [], []

    def counted(*args, **kw):  # a cache whose lookups are counted
        cache = SoftLabelCache(*args, **kw)
        lookup = cache.mean
        cache.mean = lambda idx, members=None: rows.append(len(idx)) or lookup(idx, members)
        made.append(cache)
        return cache

    monkeypatch.setattr(distillation, "SoftLabelCache", counted)
    job = MethodJob(method="self_distill", dataset="multiview", arch="vgg11", seed=1,
              teachers=[tmp_path / "t0" / "model.safetensors"], members=[0], options=DistillOptions(),
              workdir=tmp_path / "sd",
              scale="tiny", recipe={"epochs": 1})
    rec = self_distill.run(job)
    assert rec["soft_label_cache"] and rec["soft_label_s"] > 0 and math.isfinite(rec["top1"])
    (cache,) = made
    assert len(cache) == 2000 and sum(rows) == (2000 // 64) * 64  # every training batch, from the cache
    assert self_distill.run(job) == rec and len(made) == 1  # found finished: no rebuild, same cost
