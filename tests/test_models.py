import dataclasses
import os
import subprocess
import sys

import pytest
import torch

from bench.errors import BenchError
from bench.models import ARCH_SPECS, ARCHS, build_model, count_parameters, model_class, pretrained_problem
from bench.models.vgg import VGG11
from bench.train_config import RECIPES, TrainConfig, recipe_for


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
    with pytest.raises(BenchError, match="pretrained weights are timm's paper-scale networks, not vgg11 at scale 'tiny'"):
        build_model("vgg11", 10, 16, "tiny", pretrained=True)
    with pytest.raises(BenchError, match="wrn28_10 has no pretrained weights; architectures with some: vgg11, "
                                         "resnet50, vit_b32"):
        build_model("wrn28_10", 10, 32, "paper", pretrained=True)
    # Offline (as this machine is): one line naming timm's model, not a hub traceback.
    code = ("from bench.models import build_model\nfrom bench.errors import BenchError\n"
            "try:\n    build_model('vit_b32', 1000, 224, 'paper', pretrained=True)\n"
            "except BenchError as e:\n    print(e)\nelse:\n    print('LOADED')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={**os.environ, "HF_HUB_OFFLINE": "1"}).stdout
    # Where a cache or the hub holds the weights they load; here they must fail with the name.
    assert out.strip() == "LOADED" or "timm's vit_base_patch32_224 could not be loaded" in out


def body_and_head(model: torch.nn.Module, head: str) -> tuple[dict, dict]:
    sd = model.state_dict()
    return ({k: v for k, v in sd.items() if not k.startswith(head)},
            {k: v for k, v in sd.items() if k.startswith(head)})


@pytest.mark.parametrize("weights", [None, "resnet50.tv_in1k"])
def test_a_pretrained_network_keeps_the_weights_and_draws_a_new_head_from_the_seed(pretrained_standin, weights):
    from safetensors.torch import load_file

    stored = load_file(pretrained_standin(weights or "resnet50"))
    stored_body = {k: v for k, v in stored.items() if not k.startswith("fc.")}

    def start(seed, num_classes=1000):
        torch.manual_seed(seed)
        return body_and_head(build_model("resnet50", num_classes, 224, "paper", pretrained=True, weights=weights), "fc.")

    body, head = start(0)
    assert body.keys() == stored_body.keys() and all(torch.equal(body[k], stored_body[k]) for k in body)
    # At the checkpoint's own 1,000 classes timm would keep its head: every member would share it.
    assert not torch.equal(head["fc.weight"], stored["fc.weight"])
    again, other = start(0)[1], start(1)[1]
    assert torch.equal(again["fc.weight"], head["fc.weight"]) and not torch.equal(other["fc.weight"], head["fc.weight"])
    body100, head100 = start(3, num_classes=100)  # CIFAR-100 at 224 px
    assert all(torch.equal(body100[k], stored_body[k]) for k in stored_body) and head100["fc.weight"].shape == (100, 2048)


@pytest.mark.parametrize("arch", ["vgg11", "resnet50"])
def test_pretrained_convnets_start_at_224_px_and_are_refused_at_cifar_size(arch):
    assert pretrained_problem(arch, "paper", 224) is None
    with pytest.raises(BenchError) as err:
        build_model(arch, 10, 32, "paper", pretrained=True)
    assert f"{arch}'s pretrained weights are for ImageNet-sized inputs, not 32 px: set image_size (e.g. 224" \
        in str(err.value) and "\n" not in str(err.value)


def test_named_weights_must_be_the_architectures_own():
    assert pretrained_problem("vit_b32", "paper", 224, "vit_base_patch32_224.augreg_in21k") is None
    with pytest.raises(BenchError, match=r"'resnet50.tv_in1k' are not weights vit_b32 can start from; valid: "
                                         r"vit_base_patch32_224, vit_base_patch32_224.augreg_in21k, "
                                         r"vit_base_patch32_clip_quickgelu_224.openai"):
        build_model("vit_b32", 1000, 224, "paper", pretrained=True, weights="resnet50.tv_in1k")


def test_clip_weights_are_built_as_their_own_architecture():
    """CLIP's image tower is a pre-norm ViT with QuickGELU: a network fine-tuned from it must be
    rebuilt as that (the default ViT-B/32 would not take its norm_pre, nor compute its activation)."""
    with torch.device("meta"):
        clip = build_model("vit_b32", 1000, 224, "paper", weights="vit_base_patch32_clip_quickgelu_224.openai")
        plain = build_model("vit_b32", 1000, 224, "paper")
    assert isinstance(clip.norm_pre, torch.nn.LayerNorm) and isinstance(plain.norm_pre, torch.nn.Identity)
    assert type(clip.blocks[0].mlp.act).__name__ == "QuickGELU" and type(plain.blocks[0].mlp.act).__name__ == "GELU"
    assert set(clip.state_dict()) - set(plain.state_dict()) == {"norm_pre.weight", "norm_pre.bias"}


def test_a_network_fine_tuned_from_named_weights_is_rebuilt_as_their_architecture(tmp_path):
    from bench.checkpoint import save_checkpoint
    from bench.engine import load_model, model_meta

    cfg = TrainConfig(arch="vit_b32", dataset="imagenet", scale="paper", pretrained=True,
                      pretrained_weights="vit_base_patch32_clip_quickgelu_224.openai").resolved()
    torch.manual_seed(0)  # the network a fine-tuning from CLIP's weights ends with: its architecture
    model = build_model("vit_b32", 1000, 224, "paper", weights=cfg.pretrained_weights)
    save_checkpoint(tmp_path / "model", model.state_dict(), model_meta(cfg, 1000))
    loaded, meta = load_model(tmp_path / "model.safetensors", arch="vit_b32")
    assert meta["pretrained_weights"] == cfg.pretrained_weights and isinstance(loaded.norm_pre, torch.nn.LayerNorm)
    assert type(loaded.blocks[0].mlp.act).__name__ == "QuickGELU"
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in loaded.state_dict().items())
    # A run of the default weights (or none) records none: its checkpoints are written as before.
    assert "pretrained_weights" not in model_meta(dataclasses.replace(cfg, pretrained_weights=None), 1000)


def test_every_weights_choice_is_a_name_timm_has_weights_for():
    import timm

    from bench.models import weight_choices

    known = set(timm.list_pretrained())
    for arch in ARCHS:
        for name in weight_choices(arch):
            assert (name if "." in name else timm.models.get_pretrained_cfg(name).hf_hub_id.split("/")[1]) in known
    assert weight_choices("wrn28_10") == () and weight_choices("vit_b32")[0] == "vit_base_patch32_224"
