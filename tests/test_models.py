import os
import subprocess
import sys

import pytest
import torch

from bench.errors import BenchError
from bench.models import ARCH_SPECS, ARCHS, build_model, count_parameters, model_class
from bench.models.vgg import VGG11
from bench.recipes import RECIPES, TrainConfig, recipe_for


def cifar_vgg_parameters(cfg, num_classes, in_chans=3):
    """Count by hand: 3x3 conv with bias + BN (scale, shift) per entry, then one linear layer."""
    total, c = 0, in_chans
    for v in cfg:
        if v != "M":
            total += 9 * c * v + v + 2 * v
            c = v
    return total + c * num_classes + num_classes


@pytest.mark.parametrize("arch", list(ARCHS))
@pytest.mark.parametrize("size", [16, 32])
def test_tiny_models_classify_small_images(arch, size):
    torch.manual_seed(0)
    model = build_model(arch, 10, size, "tiny").eval()
    assert model(torch.randn(3, 3, size, size)).shape == (3, 10)
    assert 50_000 < count_parameters(model) < 500_000  # small enough to train in seconds


def test_importing_the_registry_imports_no_model_code():
    code = ("import sys, bench.models\n"
            "print(sorted(m for m in sys.modules if m == 'timm' or m.startswith(('timm.', 'bench.models.'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


@pytest.mark.parametrize("arch", list(ARCHS))
def test_each_arch_builds_its_model_class(arch):
    assert ARCHS == tuple(ARCH_SPECS)
    with torch.device("meta"):
        assert type(build_model(arch, 10, 16, "tiny")) is model_class(arch)


def test_arch_specs_hold_the_per_arch_facts():
    assert [a for a, s in ARCH_SPECS.items() if not s.channels_last] == ["vit_b32"]
    assert {a: s.pretrained for a, s in ARCH_SPECS.items()} == {
        "vgg11": "vgg11_bn", "resnet50": "resnet50", "vit_b32": "vit_base_patch32_224", "wrn28_10": None}
    with pytest.raises(BenchError, match="unknown arch 'vgg12'; valid: resnet50, vgg11, vit_b32, wrn28_10"):
        model_class("vgg12")


def test_the_tiny_vit_recipe_trains_longer_and_the_others_keep_the_default():
    digits = RECIPES[("digits", "tiny")]
    assert recipe_for("digits", "tiny", "vit_b32") == {**digits, "epochs": 30, "lr": 2e-3}
    assert recipe_for("digits", "tiny", "vgg11") == digits == recipe_for("digits", "tiny")
    assert recipe_for("cifar100", "paper", "vit_b32") == RECIPES[("cifar", "paper")]
    resolved = TrainConfig(arch="vit_b32", dataset="digits", lr=1e-3).resolved()
    assert (resolved.epochs, resolved.lr) == (30, 1e-3)  # a set field wins over the arch's recipe


def test_vit_needs_an_image_size_that_its_patches_tile():
    with pytest.raises(BenchError, match="vit_b32: image_size 18 is not a multiple of its 4 px patch"):
        build_model("vit_b32", 10, 18, "tiny")


def test_paper_parameter_counts_match_reference_models():
    assert count_parameters(build_model("resnet50", 1000, 224, "paper")) == 25_557_032  # 25.6 M
    assert count_parameters(build_model("vit_b32", 1000, 224, "paper")) == 88_224_232   # 88.2 M
    assert count_parameters(build_model("vgg11", 10, 32, "paper")) == cifar_vgg_parameters(VGG11, 10)
    assert round(count_parameters(build_model("wrn28_10", 10, 32, "paper")) / 1e6, 1) == 36.5  # WRN-28-10


@pytest.mark.parametrize("arch", ["vgg11", "resnet50"])
def test_paper_convnets_on_cifar_sized_inputs(arch):
    model = build_model(arch, 100, 32, "paper").eval()
    with torch.no_grad():
        assert model(torch.randn(2, 3, 32, 32)).shape == (2, 100)
    if arch == "resnet50":  # the small stem keeps full resolution: 3x3 stride 1, no max pool
        assert model.conv1.kernel_size == (3, 3) and model.conv1.stride == (1, 1)
        assert isinstance(model.maxpool, torch.nn.Identity)


def test_vit_b32_uses_32px_patches_at_imagenet_size():
    model = build_model("vit_b32", 1000, 224, "paper")
    assert model.patch_embed.patch_size == (32, 32)
    assert model.pos_embed.shape[1] == 1 + (224 // 32) ** 2


def test_same_seed_same_initial_weights():
    torch.manual_seed(3)
    a = build_model("resnet50", 10, 16, "tiny").state_dict()
    torch.manual_seed(3)
    b = build_model("resnet50", 10, 16, "tiny").state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("kwargs, words", [
    (dict(arch="vgg12", num_classes=10, image_size=32), ["vgg12", "resnet50", "vgg11", "vit_b32", "wrn28_10"]),
    (dict(arch="vgg11", num_classes=10, image_size=32, scale="huge"), ["huge", "paper", "tiny"]),
    (dict(arch="vgg11", num_classes=1, image_size=32), ["num_classes"]),
])
def test_bad_model_requests_name_the_value_and_the_valid_ones(kwargs, words):
    with pytest.raises(BenchError) as err:
        build_model(**kwargs)
    assert all(w in str(err.value) for w in words) and "\n" not in str(err.value)


def test_pretrained_weights_only_where_timm_has_them_and_a_clear_line_when_unreachable():
    with pytest.raises(BenchError, match="pretrained weights exist for .* not for vgg11 at scale 'tiny'"):
        build_model("vgg11", 10, 16, "tiny", pretrained=True)
    # Offline (as this machine is): one line naming timm's model, not a hub traceback.
    code = ("from bench.models import build_model\nfrom bench.errors import BenchError\n"
            "try:\n    build_model('vit_b32', 1000, 224, 'paper', pretrained=True)\n"
            "except BenchError as e:\n    print(e)\nelse:\n    print('LOADED')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={**os.environ, "HF_HUB_OFFLINE": "1"}).stdout
    # Where a cache or the hub holds the weights they load; here they must fail with the name.
    assert out.strip() == "LOADED" or "timm's vit_base_patch32_224 could not be loaded" in out
