import copy

import pytest
import torch
import torch.nn as nn
from torch.func import functional_call

from bench.checkpoint import save_checkpoint
from bench.errors import BenchError
from bench.methods import learned_soup, load_method, method_options
from bench.models import build_model
from bench.methods.base import MethodJob
from bench.metrics import classification_metrics
from bench.engine import load_model, predict, train
from bench.train_config import TrainConfig
from bench.weights.averaging import average_state_dicts
from bench.data.loaders import make_loader


@pytest.fixture(scope="module")
def teachers(tmp_path_factory):
    """Two tiny VGG teachers and one ResNet (2 epochs each) on digits, one VGG on multiview."""
    root = tmp_path_factory.mktemp("teachers")
    runs = {"vgg0": ("vgg11", "digits", 0), "vgg1": ("vgg11", "digits", 1),
            "resnet": ("resnet50", "digits", 0), "vgg_mv": ("vgg11", "multiview", 0)}
    for name, (arch, dataset, seed) in runs.items():
        train(TrainConfig(arch=arch, dataset=dataset, seed=seed, epochs=2), root / name, progress=False)
    return {name: root / name / "model.safetensors" for name in runs}


def job(method, paths, tmp_path, arch="vgg11", **options):
    return MethodJob(method, "digits", arch, 0, list(paths), list(range(len(paths))),
                     options=method_options(method, options, f"methods.{method}"), workdir=tmp_path / "student")


def test_ensemble_of_copies_of_one_model_is_that_model(teachers, tmp_path):
    model, _ = load_model(teachers["vgg0"])
    alone = classification_metrics(*predict(model, make_loader("digits", "test", batch_size=256, train=False),
                                            torch.device("cpu")))
    record = load_method("ensemble").run(job("ensemble", [teachers["vgg0"]] * 3, tmp_path))
    assert record["infer_forwards"] == 3
    for m in ("top1", "top5", "nll", "ece"):
        assert record[m] == pytest.approx(alone[m], rel=1e-6, abs=1e-6)  # float32 mean of equal rows


def test_single_reports_each_teacher_and_their_spread(teachers, tmp_path):
    record = load_method("single").run(job("single", [teachers["vgg0"], teachers["vgg1"]], tmp_path))
    a, b = record["top1_values"]
    assert record["top1"] == pytest.approx((a + b) / 2)
    assert record["top1_std"] == pytest.approx(abs(a - b) / 2 ** 0.5)


def test_records_carry_val_and_test_and_teachers_predictions_are_kept(teachers, tmp_path):
    one = teachers["vgg1"]
    for old in one.parent.glob("predictions-*"):
        old.unlink()
    first = load_method("ensemble").run(job("ensemble", [one], tmp_path))
    model, _ = load_model(one)
    for split, prefix in (("val", "val_"), ("test", "")):
        alone = classification_metrics(*predict(model, make_loader("digits", split, batch_size=256, train=False),
                                                torch.device("cpu")))
        assert first[f"{prefix}top1"] == pytest.approx(alone["top1"]) and first[f"n_{split}"] == alone["n_test"]
    kept = sorted(p.name for p in one.parent.glob("predictions-*"))
    assert len(kept) == 4  # val and test: weights and sidecar each
    # A later job reads them: the same numbers, and a damaged file is recomputed, not trusted.
    assert load_method("single").run(job("single", [one], tmp_path))["top1"] == first["top1"]
    for f in one.parent.glob("predictions-*.safetensors"):
        f.write_bytes(b"damaged")
    assert load_method("ensemble").run(job("ensemble", [one], tmp_path)) == first


def test_soup_of_copies_is_that_model(teachers):
    sd = load_model(teachers["vgg0"])[0].state_dict()
    soup = average_state_dicts([sd, sd, sd])
    assert all(torch.equal(soup[k], sd[k]) for k in sd)


def test_soup_and_aligned_soup_run_and_report_costs(teachers, tmp_path):
    pair = [teachers["vgg0"], teachers["vgg1"]]
    for method in ("soup", "aligned_soup"):
        record = load_method(method).run(job(method, pair, tmp_path))
        assert 0 <= record["top1"] <= 100 and record["infer_forwards"] == 1
        assert record["train_s"] > 0 and record["bn_batches"] > 0


def test_mismatched_teachers_are_refused_naming_the_teacher(teachers, tmp_path):
    with pytest.raises(BenchError, match=r"resnet.*arch is 'resnet50', expected 'vgg11'"):
        load_method("ensemble").run(job("ensemble", [teachers["vgg0"], teachers["resnet"]], tmp_path))
    with pytest.raises(BenchError, match=r"teacher 1 .* has dataset 'multiview', teacher 0 has 'digits'"):
        load_method("ensemble").run(job("ensemble", [teachers["vgg0"], teachers["vgg_mv"]], tmp_path))


def test_aligned_soup_states_that_vit_is_not_supported(tmp_path):
    train(TrainConfig(arch="vit_b32", dataset="digits", seed=0, epochs=1), tmp_path / "v", progress=False)
    path = tmp_path / "v" / "model.safetensors"
    with pytest.raises(BenchError, match="weight matching supports vgg11, resnet50, not vit_b32: ViT is not supported"):
        load_method("aligned_soup").run(job("aligned_soup", [path, path], tmp_path, arch="vit_b32"))


# --- greedy and learned soups ------------------------------------------------------------------

def _val_top1(path) -> float:
    model, _ = load_model(path)
    return classification_metrics(*predict(model, make_loader("digits", "val", batch_size=256, train=False),
                                           torch.device("cpu")))["top1"]


def _noisy_copy(path, out, scale):
    """A member whose weights are `path`'s with Gaussian noise (`scale` x each tensor's std): worse on val."""
    model, meta = load_model(path)
    gen = torch.Generator().manual_seed(0)
    params = dict(model.named_parameters())  # not the running statistics: a negative variance is no model
    sd = {k: v.detach() + scale * v.std() * torch.randn(v.shape, generator=gen) if k in params and v.numel() > 1
          else v for k, v in model.state_dict().items()}
    out.mkdir(parents=True)
    save_checkpoint(out / "model", sd, {k: v for k, v in meta.items() if k not in ("format", "weights", "sha256")})
    return out / "model.safetensors"


def test_greedy_soup_starts_from_the_val_best_member_and_never_falls_below_it(teachers, tmp_path):
    # Given worst first: the greedy soup must sort by val top-1, not take the group's order.
    paths = [_noisy_copy(teachers["vgg0"], tmp_path / "noisy", 0.5), teachers["vgg1"], teachers["vgg0"]]
    val = [_val_top1(p) for p in paths]
    assert val[0] < max(val)  # the noise made that member worse, so the order is not the given one
    record = load_method("greedy_soup").run(job("greedy_soup", paths, tmp_path))
    assert record["member_val_top1"] == pytest.approx(val)
    best = max(range(3), key=lambda k: val[k])
    assert record["soup_members"][0] == best and record["soup_trace"][0] == {
        "member": best, "val_top1": pytest.approx(val[best]), "kept": True}
    assert record["soup_kept"] == len(record["soup_members"]) == sum(t["kept"] for t in record["soup_trace"])
    assert sorted(t["member"] for t in record["soup_trace"]) == [0, 1, 2]
    # Each candidate is kept exactly when it does not lower the soup's val top-1, so the soup ends
    # at least as good as its best member on val.
    current = val[best]
    for step in record["soup_trace"][1:]:
        assert step["kept"] == (step["val_top1"] >= current)
        current = max(current, step["val_top1"]) if step["kept"] else current
    assert record["val_top1"] == pytest.approx(current) and record["val_top1"] >= max(val)
    assert 0 <= record["top1"] <= 100 and record["infer_forwards"] == 1 and record["train_s"] > 0


def test_greedy_soup_keeps_a_member_that_leaves_val_top1_unchanged(tmp_path):
    # ViT has no BatchNorm: a soup of copies is the copy itself, bit for bit, so its val top-1 ties
    # the member's, and a tie joins the soup.
    train(TrainConfig(arch="vit_b32", dataset="digits", seed=0, epochs=1), tmp_path / "v", progress=False)
    path = tmp_path / "v" / "model.safetensors"
    record = load_method("greedy_soup").run(job("greedy_soup", [path, path], tmp_path, arch="vit_b32"))
    assert record["soup_kept"] == 2 and record["soup_members"] == [0, 1]
    assert record["val_top1"] == pytest.approx(_val_top1(path))


def _random_teachers(n):
    """n tiny VGGs from different seeds, with running statistics of their own."""
    gen, models = torch.Generator().manual_seed(0), []
    for k in range(n):
        torch.manual_seed(k)
        model = build_model("vgg11", 10, 16, "tiny")
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=gen) * 0.1)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=gen) + 0.5)
        models.append(model.eval())
    return models


def test_learned_soup_with_one_hot_coefficients_is_that_teacher():
    models = _random_teachers(3)
    mixer = learned_soup.Mixer([dict(m.named_parameters()) for m in models])
    assert mixer.alpha.shape == (3, len(list(models[0].parameters())))
    x = torch.randn(8, 3, 16, 16)
    for j, teacher in enumerate(models):
        with torch.no_grad():
            mixer.alpha.zero_()
            mixer.alpha[j] = 200.0  # softmax: exactly 1 on teacher j, exactly 0 elsewhere in float32
            weights = mixer.weights()
            assert all(torch.equal(weights[name], p) for name, p in teacher.named_parameters())
            out = functional_call(models[0], {**weights, **dict(teacher.named_buffers())}, (x,))
            assert torch.equal(out, teacher(x))


def test_learned_soup_at_zero_is_the_uniform_soup_and_its_gradient_reaches_alpha_only():
    models = _random_teachers(3)
    mixer = learned_soup.Mixer([dict(m.named_parameters()) for m in models])
    average = average_state_dicts([m.state_dict() for m in models])
    weights = mixer.weights()
    assert weights.keys() == dict(models[0].named_parameters()).keys()
    for name, w in weights.items():
        torch.testing.assert_close(w, average[name], rtol=1e-6, atol=1e-7)
    functional_call(models[0].train(), weights, (torch.randn(8, 3, 16, 16),)).sum().backward()
    assert mixer.alpha.grad is not None and mixer.alpha.grad.abs().sum() > 0
    assert list(mixer.state_dict()) == ["alpha"]  # the teachers' weights are not fitted nor saved


def test_learned_soup_fit_lowers_eq1_and_a_finished_fit_is_found(teachers, tmp_path):
    from bench.weightformer.losses import ensemble_kl
    from bench.weightformer.meta_train import SoftLabels

    paths = [teachers["vgg0"], teachers["vgg1"]]
    the_job = job("learned_soup", paths, tmp_path, steps=8, batch_size=64)
    loaded = [load_model(p) for p in paths]
    models = [m.requires_grad_(False) for m, _ in loaded]
    mixer = learned_soup.Mixer([dict(m.named_parameters()) for m in models])
    cfg = the_job.options.wf_config("tiny")
    data = SoftLabels(models, "digits", None, loaded[0][1]["image_size"], torch.device("cpu"), 64, cfg.seed,
                      cfg.temperature, steps=8)
    student = copy.deepcopy(models[0]).train()

    def eq1() -> float:  # eq. 1 over the fit's own 8 batches, BatchNorm on batch statistics as in the fit
        with torch.no_grad():
            return sum(float(ensemble_kl(functional_call(student, mixer.weights(), (x,)), p, cfg.temperature))
                       for x, p in (data.batch(s, [0, 1]) for s in range(8))) / 8

    before = eq1()
    done = learned_soup.fitted(the_job, models, [m for _, m in loaded], mixer)
    assert eq1() < before and done["steps"] == 8 and done["lr"] == 0.05
    fitted_alpha = mixer.alpha.detach().clone()
    # The method finds the fit in its folder (no new fit: the same coefficients), then evaluates.
    record = load_method("learned_soup").run(the_job)
    assert record["fit_s"] == done["fit_s"] and record["steps"] == 8
    assert record["layers"] == fitted_alpha.shape[1] == len(list(models[0].parameters()))
    c = fitted_alpha.softmax(0)
    assert record["coef_max_mean"] == pytest.approx(float(c.max(0).values.mean()))
    assert record["coef_teacher_mean"] == pytest.approx(c.mean(1).tolist())
    assert 0.5 <= record["coef_max_mean"] <= 1
    assert 0 <= record["top1"] <= 100 and record["bn_batches"] > 0 and record["train_s"] >= record["fit_s"] > 0
