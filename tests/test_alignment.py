"""Weight matching: permuted copies compute the same function, are recovered exactly, and average back."""
from __future__ import annotations

import copy
import re

import pytest
import torch
import torch.nn as nn
from timm.models.resnet import Bottleneck, ResNet

from bench.errors import BenchError
from bench.models import ARCH_SPECS, build_model
from bench.weights.averaging import average_state_dicts
from bench.weights.permutation import (SUPPORTED, WALKS, PermutationSpec, WeightMatchingError, align_to_first,
                                       apply_permutation, permutation_spec, weight_matching)


@pytest.fixture(autouse=True)
def _one_thread():
    # The matrices here are tiny: with a second thread the OpenMP hand-offs cost more than the
    # products, by 30x on a busy machine.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _randomize_norms(model: nn.Module) -> nn.Module:
    # Fresh BatchNorms are the identity (scale 1, shift 0, mean 0, var 1) and timm zero-inits each
    # ResNet block's last scale: random values make every BN tensor, and every branch, matter.
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0, 0.1)
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 2.0)
    return model.eval()


def tiny(arch: str, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return _randomize_norms(build_model(arch, 10, 16, "tiny"))


def resnet_with_identity_blocks(seed: int = 0) -> nn.Module:
    """Narrow timm ResNet with two blocks in the first stages: the tiny one has no identity shortcut."""
    torch.manual_seed(seed)
    return _randomize_norms(ResNet(Bottleneck, layers=(2, 2, 1, 1), channels=(8, 16, 32, 64), num_classes=10))


def resnet_deep_stem_avg_down(seed: int = 0) -> nn.Module:
    """timm's ResNet-D layout: a three-conv stem and pool + conv + BN shortcuts; same spec code."""
    torch.manual_seed(seed)
    return _randomize_norms(ResNet(Bottleneck, layers=(1, 2, 1, 1), channels=(8, 16, 32, 64), num_classes=10,
                                   stem_type="deep", stem_width=8, avg_down=True))


# (arch, model factory, input size)
CASES = {
    "vgg11-tiny": ("vgg11", lambda: tiny("vgg11"), 16),
    "resnet50-tiny": ("resnet50", lambda: tiny("resnet50"), 16),
    "resnet-identity-blocks": ("resnet50", resnet_with_identity_blocks, 32),
    "resnet-deep-stem-avg-down": ("resnet50", resnet_deep_stem_avg_down, 32),
}


def random_perms(spec: PermutationSpec, seed: int) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {g: torch.randperm(n, generator=gen) for g, n in spec.sizes.items()}


def logits(model: nn.Module, state_dict: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    model = copy.deepcopy(model)
    model.load_state_dict(state_dict)
    with torch.no_grad():
        return model.eval()(x)


def same_tensors(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_vgg_spec_follows_the_conv_chain():
    model = tiny("vgg11")
    spec = permutation_spec(model, "vgg11")
    convs = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    assert len(spec.sizes) == len(convs) == 8  # one group per conv's output channels
    for conv, bn, nxt in zip(convs, [n for n, m in model.named_modules() if isinstance(m, nn.BatchNorm2d)],
                             convs[1:] + ["head.fc"]):
        g = spec.axes[f"{conv}.weight"][0]
        assert spec.axes[f"{conv}.bias"] == (g,)
        assert all(spec.axes[f"{bn}.{t}"] == (g,) for t in ("weight", "bias", "running_mean", "running_var"))
        assert spec.axes[f"{nxt}.weight"][1] == g  # the next conv, or the classifier, reads them
    assert spec.axes["head.fc.weight"][0] is None and "head.fc.bias" not in spec.axes  # logits stay put
    assert not any(k.endswith("num_batches_tracked") for k in spec.axes)


def test_resnet_stream_groups_come_from_the_block_structure():
    spec = permutation_spec(tiny("resnet50"), "resnet50")
    ax = spec.axes
    stem = ax["conv1.weight"][0]
    # The stem's output is read by layer1's first block and its downsample ...
    assert ax["bn1.running_var"] == (stem,)
    assert ax["layer1.0.conv1.weight"][1] == ax["layer1.0.downsample.0.weight"][1] == stem
    # ... whose downsample (64 -> 32 channels here) starts a new stream, shared with the block's conv3/bn3.
    s1 = ax["layer1.0.conv3.weight"][0]
    assert s1 != stem and spec.sizes[stem] == 64 and spec.sizes[s1] == 32
    assert ax["layer1.0.downsample.0.weight"][0] == ax["layer1.0.downsample.1.weight"][0] == s1
    assert ax["layer1.0.bn3.bias"] == (s1,)
    assert ax["layer2.0.conv1.weight"][1] == ax["layer2.0.downsample.0.weight"][1] == s1
    assert ax["fc.weight"] == (None, ax["layer4.0.conv3.weight"][0])
    # Internal channels: conv1/bn1 -> conv2 input, conv2/bn2 -> conv3 input, each its own group.
    g1, g2 = ax["layer3.0.conv1.weight"][0], ax["layer3.0.conv2.weight"][0]
    assert len({g1, g2, s1, stem}) == 4 and ax["layer3.0.bn1.weight"] == (g1,)
    assert ax["layer3.0.conv2.weight"][1] == g1 and ax["layer3.0.conv3.weight"][1] == g2
    assert len(spec.sizes) == 1 + 4 + 2 * 4  # stem, one stream per stage, two per block
    assert not any(k.endswith("num_batches_tracked") for k in spec.axes)


def test_paper_resnet50_spec_shares_one_stream_per_stage():
    with torch.device("meta"):  # structure only: no memory, no initialisation
        model = build_model("resnet50", 100, 32, "paper")
    spec = permutation_spec(model, "resnet50")
    ax = spec.axes
    assert len(spec.sizes) == 1 + 4 + 2 * 16  # ResNet-50: 3 + 4 + 6 + 3 bottlenecks
    assert spec.sizes[ax["conv1.weight"][0]] == 64 != spec.sizes[ax["layer1.0.conv3.weight"][0]]
    for stage, blocks, width in [("layer1", 3, 256), ("layer2", 4, 512), ("layer3", 6, 1024), ("layer4", 3, 2048)]:
        stream = ax[f"{stage}.0.downsample.0.weight"][0]
        assert spec.sizes[stream] == width
        assert {ax[f"{stage}.{i}.conv3.weight"][0] for i in range(blocks)} == {stream}
        assert {ax[f"{stage}.{i}.conv1.weight"][1] for i in range(1, blocks)} == {stream}
    assert ax["fc.weight"][1] == ax["layer4.0.downsample.1.weight"][0]


@pytest.mark.parametrize("case", list(CASES))
def test_permuted_copy_computes_the_same_function_and_is_recovered(case):
    arch, make, size = CASES[case]
    model = make()
    spec = permutation_spec(model, arch)
    a = model.state_dict()
    b = apply_permutation(spec, a, random_perms(spec, seed=1))
    assert not same_tensors(a, b)
    x = torch.randn(8, 3, size, size)
    assert (logits(model, a, x) - logits(model, b, x)).abs().max() < 1e-4
    perms = weight_matching(spec, a, b)
    assert same_tensors(apply_permutation(spec, b, perms), a)


@pytest.mark.parametrize("case", list(CASES))
def test_aligned_average_of_permutations_is_the_model(case):
    arch, make, size = CASES[case]
    model = make()
    spec = permutation_spec(model, arch)
    a = model.state_dict()
    members = [apply_permutation(spec, a, random_perms(spec, seed)) for seed in (1, 2, 3)]
    x = torch.randn(8, 3, size, size)
    reference = logits(model, a, x)

    aligned = align_to_first(arch, members, model)
    soup = average_state_dicts(aligned)
    assert same_tensors(soup, members[0])  # every member aligned onto the first: their mean is it
    assert (logits(model, soup, x) - reference).abs().max() < 1e-4

    # Without alignment the same members average to a different network: the check can fail.
    naive = average_state_dicts(members)
    assert (logits(model, naive, x) - reference).abs().max() > 0.1 * reference.abs().max()


def test_weight_matching_brings_independent_models_closer_and_is_seeded():
    a, b = tiny("resnet50", seed=0).state_dict(), tiny("resnet50", seed=1).state_dict()
    spec = permutation_spec(tiny("resnet50"), "resnet50")
    perms = weight_matching(spec, a, b, seed=0)
    assert all(torch.equal(perms[g], p) for g, p in weight_matching(spec, a, b, seed=0).items())

    def distance(sd):
        return sum(float((a[k] - sd[k]).pow(2).sum()) for k in spec.axes)

    assert distance(apply_permutation(spec, b, perms)) < distance(b)


def test_running_statistics_are_permuted_but_not_part_of_the_objective():
    model = _randomize_norms(tiny("vgg11", seed=0))
    a, b = model.state_dict(), _randomize_norms(tiny("vgg11", seed=1)).state_dict()
    spec = permutation_spec(model, "vgg11")
    perms = weight_matching(spec, a, b, seed=0)
    # Other running statistics in either network change nothing the objective sees.
    noisy = {k: v * 7 + 3 if k.endswith(("running_mean", "running_var")) else v for k, v in b.items()}
    again = weight_matching(spec, {k: (v.flip(0) if k.endswith("running_mean") else v) for k, v in a.items()},
                            noisy, seed=0)
    assert all(torch.equal(perms[g], again[g]) for g in perms)
    moved = apply_permutation(spec, b, perms)
    bn = next(k for k in spec.axes if k.endswith("running_mean"))
    g = spec.axes[bn][0]
    assert torch.equal(moved[bn], b[bn][perms[g]])  # ... and still travel with their channels


def test_apply_permutation_leaves_its_input_alone():
    model = tiny("vgg11")
    spec = permutation_spec(model, "vgg11")
    sd = model.state_dict()
    before = {k: v.clone() for k, v in sd.items()}
    apply_permutation(spec, sd, random_perms(spec, seed=4))
    assert same_tensors(sd, before)
    with pytest.raises(WeightMatchingError, match="not a permutation"):
        apply_permutation(spec, sd, {g: torch.zeros(n, dtype=torch.long) for g, n in spec.sizes.items()})


def test_average_keeps_integer_buffers_of_the_first():
    sds = [{"w": torch.tensor([1.0, 2.0]), "n": torch.tensor(3)}, {"w": torch.tensor([3.0, 6.0]), "n": torch.tensor(9)}]
    avg = average_state_dicts(sds)
    assert torch.equal(avg["w"], torch.tensor([2.0, 4.0])) and avg["n"].item() == 3 and avg["n"].dtype == torch.int64
    with pytest.raises(BenchError, match="state dict 1 does not have the keys and shapes of the first"):
        average_state_dicts([sds[0], {"w": torch.zeros(2)}])


def test_every_arch_has_a_walk_or_a_reason():
    assert SUPPORTED == ("vgg11", "resnet50")
    for arch, spec in ARCH_SPECS.items():
        if spec.permutation is None:
            assert spec.permutation_unsupported_reason, arch
        else:
            assert spec.permutation in WALKS, arch


@pytest.mark.parametrize("arch", ["vit_b32", "wrn28_10"])
def test_unsupported_archs_are_refused_with_their_reason(arch):
    model = build_model(arch, 10, 16, "tiny")
    message = f"weight matching supports vgg11, resnet50, not {arch}: {ARCH_SPECS[arch].permutation_unsupported_reason}"
    attempts = (lambda: permutation_spec(model, arch), lambda: align_to_first(arch, [model.state_dict()] * 2, model))
    for attempt in attempts:
        with pytest.raises(BenchError, match=re.escape(message)) as err:
            attempt()
        assert "\n" not in str(err.value)


def test_a_model_of_another_arch_or_no_state_dicts_are_refused():
    with pytest.raises(BenchError, match="vgg11 expects a VGG, got ResNet"):
        permutation_spec(tiny("resnet50"), "vgg11")
    with pytest.raises(BenchError, match="no state dicts to align"):
        align_to_first("vgg11", [], tiny("vgg11"))


def test_weights_outside_the_spec_are_refused():
    # A squeeze-excite module inside the blocks would stay unpermuted and change the function.
    model = ResNet(Bottleneck, layers=(1, 1, 1, 1), channels=(8, 16, 32, 64), block_args={"attn_layer": "se"})
    with pytest.raises(WeightMatchingError, match=r"'layer1\.0\.se\.fc1' that the permutation spec does not cover"):
        permutation_spec(model, "resnet50")
