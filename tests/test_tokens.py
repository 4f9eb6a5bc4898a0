"""Weights <-> tokens (bench.weights.tokens): coverage, exact round trip, hand-checked shapes, forward
order, gradients through functional_call."""
from __future__ import annotations

import copy
import functools

import pytest
import torch
import torch.nn as nn
from torch.func import functional_call

from bench.errors import BenchError
from bench.models import ARCHS, build_model
from bench.weights.tokens import WeightLayer, from_tokens, passthrough, stack_tokens, to_tokens, weight_layers

# (arch, image size, scale): every arch tiny; the paper convnets at CIFAR size; ViT-B/32 at 224 px.
TINY = [(arch, 16, "tiny") for arch in ARCHS]
PAPER = [("vgg11", 32, "paper"), ("resnet50", 32, "paper"), ("vit_b32", 224, "paper")]
CASES = TINY + PAPER


def _randomise_norms(model: nn.Module, seed: int) -> nn.Module:
    """Teacher-like norms: timm zero-initialises each bottleneck's last BN scale, which would cut the
    residual branch off from the output, and fresh running statistics (0, 1) hide column mix-ups."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.BatchNorm2d, nn.LayerNorm)):
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
                m.num_batches_tracked.fill_(seed + 7)
    return model


@functools.lru_cache(maxsize=None)
def _model(arch: str, size: int, scale: str, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return _randomise_norms(build_model(arch, 10, size, scale), seed).eval()


def _layers(arch: str, size: int, scale: str) -> list[WeightLayer]:
    return weight_layers(_model(arch, size, scale), arch)


def _shapes(layers: list[WeightLayer]) -> list[tuple[str, int, int]]:
    return [(layer.kind, layer.n_tokens, layer.token_width) for layer in layers]


@pytest.mark.parametrize("arch, size, scale", CASES)
def test_every_entry_is_covered_exactly_once(arch, size, scale):
    sd = _model(arch, size, scale).state_dict()
    layers = _layers(arch, size, scale)
    spans: dict[str, list[tuple[int, int, int]]] = {}
    for layer in layers:
        assert layer.keys == tuple(dict.fromkeys(p.key for p in layer.parts))
        assert layer.token_width == sum(p.width for p in layer.parts)
        assert layer.kind_key == f"{layer.kind}:{layer.token_width}"
        for p in layer.parts:
            assert p.stop - p.start == layer.n_tokens and p.rows * p.width == sd[p.key].numel()
            spans.setdefault(p.key, []).append((p.start, p.stop, p.rows))
    pt = passthrough(sd)
    assert set(spans).isdisjoint(pt) and set(spans) | set(pt) == set(sd)
    expected_pt = {k for k in sd if k.endswith("num_batches_tracked")}  # one per BatchNorm; ViT has none
    assert set(pt) == expected_pt and (arch == "vit_b32") == (not pt)
    # Row blocks tile each entry (a fused qkv in three), so the tokens hold every value exactly once.
    for key, s in spans.items():
        s.sort()
        assert s[0][0] == 0 and s[-1][1] == s[0][2] and all(a[1] == b[0] for a, b in zip(s, s[1:])), key
    assert sum(l.n_tokens * l.token_width for l in layers) == sum(v.numel() for k, v in sd.items() if k not in pt)


@pytest.mark.parametrize("arch, size, scale", CASES)
def test_round_trip_is_bit_exact_and_computes_the_same_logits(arch, size, scale):
    model = _model(arch, size, scale)
    sd, layers = model.state_dict(), _layers(arch, size, scale)
    tokens = to_tokens(layers, sd)
    assert [tuple(t.shape) for t in tokens] == [(l.n_tokens, l.token_width) for l in layers]
    assert all(t.dtype == torch.float32 for t in tokens)
    rebuilt = from_tokens(layers, tokens, passthrough(sd))
    assert rebuilt.keys() == sd.keys()
    for key, value in sd.items():
        assert rebuilt[key].dtype == value.dtype and torch.equal(rebuilt[key], value), key
    other = copy.deepcopy(model)
    with torch.no_grad():
        for t in other.state_dict().values():
            t.zero_()  # nothing of the original may survive in the copy but what the tokens put back
    other.load_state_dict(rebuilt)
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(other(x), model(x))


def test_tiny_vgg11_layers_by_hand():
    conv = lambda n_out, n_in: ("conv", n_out, 9 * n_in + 1 + 4)  # 3x3 kernel, bias, BN's four vectors
    assert _shapes(_layers("vgg11", 16, "tiny")) == [
        conv(8, 3), conv(16, 8), conv(32, 16), conv(32, 32), conv(64, 32), conv(64, 64), conv(64, 64), conv(64, 64),
        ("linear", 10, 64 + 1)]
    first = _layers("vgg11", 16, "tiny")[0]
    assert first.keys == ("features.0.weight", "features.0.bias", "features.1.weight", "features.1.bias",
                          "features.1.running_mean", "features.1.running_var")


def test_tiny_resnet50_layers_by_hand():
    layers = _layers("resnet50", 16, "tiny")
    assert len(layers) == 1 + 4 * 4 + 1  # stem, four bottlenecks of conv1-3 + downsample, classifier
    assert _shapes(layers[:5]) == [("conv", 64, 27 + 4), ("conv", 8, 64 + 4), ("conv", 8, 72 + 4),
                                   ("conv", 32, 8 + 4), ("conv", 32, 64 + 4)]
    assert layers[4].name == "layer1.0.downsample.0" and "layer1.0.downsample.1.running_var" in layers[4].keys
    assert _shapes(layers[-1:]) == [("linear", 10, 256 + 1)]


def test_tiny_wrn_norms_ride_on_the_layer_before_them():
    layers = {l.name: l for l in _layers("wrn28_10", 16, "tiny")}
    # Pre-activation: a block's bn1 reads the residual stream the previous block (or the stem) wrote.
    assert _shapes([layers["stem"]]) == [("conv", 16, 27 + 4)] and "blocks.0.bn1.weight" in layers["stem"].keys
    assert "blocks.1.bn1.weight" in layers["blocks.0.conv2"].keys
    assert layers["blocks.1.conv2"].keys == ("blocks.1.conv2.weight",)  # its norm rides on the shortcut after it
    assert "blocks.2.bn1.weight" in layers["blocks.1.shortcut"].keys
    assert layers["blocks.1.shortcut"].token_width == 16 + 4  # 1x1 kernel over 16 channels + bn1's vectors
    assert "bn.running_var" in layers["blocks.2.shortcut"].keys and _shapes([layers["fc"]]) == [("linear", 10, 65)]


def test_tiny_vit_layers_by_hand():
    d, hidden = 64, 128
    block = [("attn_q", d, d + 1), ("attn_k", d, d + 1), ("attn_v", d, d + 1),
             ("attn_proj", d, d + 1 + 2),    # + norm2's scale and shift
             ("mlp_fc1", hidden, d + 1), ("mlp_fc2", d, hidden + 1 + 2)]  # + next norm1 (last block: final norm)
    assert _shapes(_layers("vit_b32", 16, "tiny")) == [
        ("embed_patch", d, 3 * 4 * 4 + 1), ("cls_token", 1, d), ("pos_embed", 1 + 16, d),
        ("norm", d, 2),  # the first norm1 follows the position embedding, whose tokens are not channels
        *block * 4, ("linear", 10, d + 1)]


def test_paper_vit_b32_layers():
    layers = _layers("vit_b32", 224, "paper")
    assert _shapes(layers[:8]) == [("embed_patch", 768, 3 * 32 * 32 + 1), ("cls_token", 1, 768), ("pos_embed", 50, 768),
                                   ("norm", 768, 2), ("attn_q", 768, 769), ("attn_k", 768, 769), ("attn_v", 768, 769),
                                   ("attn_proj", 768, 771)]
    assert len(layers) == 4 + 12 * 6 + 1
    assert sorted({l.kind_key for l in layers}) == [
        "attn_k:769", "attn_proj:771", "attn_q:769", "attn_v:769", "cls_token:768", "embed_patch:3073",
        "linear:769", "mlp_fc1:769", "mlp_fc2:3075", "norm:2", "pos_embed:768"]


@pytest.mark.parametrize("arch, size, scale", CASES)
def test_layers_are_in_forward_order(arch, size, scale):
    model, layers = _model(arch, size, scale), _layers(arch, size, scale)
    called: list[str] = []
    names = {m: n for n, m in model.named_modules()}
    owners = {k.rpartition(".")[0] for l in layers for k in l.keys}
    hooks = [m.register_forward_pre_hook(lambda m, _: called.append(names[m]))
             for m in model.modules() if names[m] in owners and names[m]]
    try:
        with torch.no_grad():
            model(torch.zeros(1, 3, size, size))
    finally:
        for h in hooks:
            h.remove()
    listed = [k.rpartition(".")[0] for l in layers for k in l.keys]
    listed = [n for n in dict.fromkeys(listed) if n]  # the ViT root's tokens have no module to hook
    assert listed == list(dict.fromkeys(called))
    first, last = layers[0], layers[-1]
    assert first.kind in ("conv", "embed_patch") and model.state_dict()[first.keys[0]].shape[1] == 3  # reads the image
    assert last.kind == "linear" and last.n_tokens == 10  # the classifier
    if arch == "vit_b32":  # class token and positions are used after the patch embedding, before the blocks
        assert [l.kind for l in layers[:3]] == ["embed_patch", "cls_token", "pos_embed"]


@pytest.mark.parametrize("arch", list(ARCHS))
@pytest.mark.parametrize("train", [False, True])
def test_functional_call_backpropagates_into_tokens(arch, train):
    model = copy.deepcopy(_model(arch, 16, "tiny")).train(train)
    layers, sd = weight_layers(model, arch), model.state_dict()
    tokens = [t.requires_grad_() for t in to_tokens(layers, sd)]
    before = [t.detach().clone() for t in tokens]
    x = torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    functional_call(model, from_tokens(layers, tokens, passthrough(sd)), x).square().mean().backward()
    for layer, t in zip(layers, tokens):
        assert t.grad is not None and t.grad.abs().sum() > 0, layer.name
        for p in layer.parts:  # running statistics are handed over detached: no gradient reaches them
            assert not p.buffer or not t.grad[:, p.col:p.col + p.width].any()
    # Training-mode BatchNorm updates running statistics in place: never in the tokens.
    assert all(torch.equal(t, b) for t, b in zip(tokens, before))
    # The tokens' gradients are the model's own parameter gradients, laid out as tokens.
    reference = copy.deepcopy(_model(arch, 16, "tiny")).train(train)
    reference(x).square().mean().backward()
    grads = {k: torch.zeros_like(v) for k, v in reference.state_dict().items()}
    grads.update({k: p.grad for k, p in reference.named_parameters()})
    for t, g in zip(tokens, to_tokens(layers, grads)):
        torch.testing.assert_close(t.grad, g)


def test_stack_tokens_batches_teachers():
    arch, layers = "resnet50", _layers("resnet50", 16, "tiny")
    sds = [_model(arch, 16, "tiny", seed).state_dict() for seed in (0, 1, 2)]
    stacked = stack_tokens(layers, sds)
    assert [tuple(t.shape) for t in stacked] == [(3, l.n_tokens, l.token_width) for l in layers]
    for i, sd in enumerate(sds):
        assert all(torch.equal(s[i], t) for s, t in zip(stacked, to_tokens(layers, sd)))
    batched = from_tokens(layers, stacked)  # leading dims carry through: entry i of each tensor is teacher i
    assert all(torch.equal(batched[k], torch.stack([sd[k] for sd in sds])) for k in batched)
    with pytest.raises(BenchError):
        stack_tokens(layers, [])


def test_bad_input_is_refused():
    vgg = build_model("vgg11", 10, 16, "tiny")
    with pytest.raises(BenchError, match="expects a VisionTransformer"):
        weight_layers(vgg, "vit_b32")
    with pytest.raises(BenchError, match="unknown arch"):
        weight_layers(vgg, "vgg13")
    layers = weight_layers(vgg, "vgg11")
    tokens = to_tokens(layers, vgg.state_dict())
    with pytest.raises(BenchError, match="wants"):
        from_tokens(layers, [tokens[0][:, 1:], *tokens[1:]])
    with pytest.raises(BenchError, match="token tensors"):
        from_tokens(layers, tokens[1:])
    vgg.extra = nn.GroupNorm(2, 8)  # no tokenisation rule: refuse rather than drop its weights
    with pytest.raises(BenchError, match="GroupNorm"):
        weight_layers(vgg, "vgg11")
