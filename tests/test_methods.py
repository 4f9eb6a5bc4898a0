import pytest
import torch

from bench.errors import BenchError
from bench.methods import load_method, method_options
from bench.methods.base import MethodJob
from bench.metrics import classification_metrics
from bench.engine import load_model, predict, train
from bench.recipes import TrainConfig
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
