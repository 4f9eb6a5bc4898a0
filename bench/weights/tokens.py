"""Weights as tokens (WeightFormer, sec. 3.1): a network's state dict <-> one token matrix per layer.

A layer is a run of tokens of one width; a WeightFormer keeps one weight embedder per
`kind_key` (kind and token width) and reads the layers in forward order.

* conv (and ViT's patch embedding, `embed_patch`) with a k x k x n_in x n_out kernel: n_out tokens of
  k*k*n_in values (PyTorch's (n_in, k, k) flattening order);
* linear: n_out tokens of n_in values; timm's `Mlp` linears are `mlp_fc1` / `mlp_fc2` so that they do not
  share an embedder with a classifier of the same width;
* attention, per projection: `attn_q`, `attn_k`, `attn_v` (the fused (3d, d) `qkv` weight split into three
  blocks of d rows) and `attn_proj`, rows as tokens;
* ViT's class token (`cls_token`, one token of width d), register tokens (`reg_token`) and position
  embedding (`pos_embed`, one token per position, of width d) are layers of their own, placed right after
  the patch embedding, where the forward pass uses them (timm registers them on the root, before it);
* per-output-channel vectors (bias; BatchNorm weight, bias, running_mean, running_var; LayerNorm weight,
  bias) ride on their channel's token, appended to that row in state-dict order.

Which layer a norm rides on: the layer just before it in forward order, if that layer's tokens are
channels and it has as many tokens as the norm has channels. That is the layer that produced the norm's
input in post-norm nets (VGG, ResNet: conv then BN), and a layer writing the same residual-stream channels
in pre-norm nets (WRN's `bn1` rides on the previous block's last conv or shortcut; a ViT block's `norm1` /
`norm2` and the final `norm` on the previous `mlp_fc2` / `attn_proj`). Otherwise (ViT's first `norm1`
follows the position embedding, whose tokens are positions) the norm is a layer of its own,
`kind="norm"`: one token per channel, one value per per-channel vector.

Registration order is forward order for every model in `bench.models` (checked by tests/test_tokens.py
with forward hooks) except ViT's root tokens above. Non-float state (BatchNorm's `num_batches_tracked`) is
not a weight: `passthrough(state_dict)` returns it and `from_tokens` puts it back.

`from_tokens` is built from slicing, `cat`, `reshape` and `contiguous` only, so a state dict written from tokens is
differentiable: `torch.func.functional_call(model, from_tokens(layers, tokens, pt), x)` backpropagates into
the tokens' parameter columns. BatchNorm running statistics come out detached (PyTorch's batch-norm kernel
is not differentiable in them), so their columns get no gradient; see `from_tokens`.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn as nn
from timm.layers import Attention, Mlp, PatchEmbed
from timm.models.vision_transformer import VisionTransformer

from bench.errors import BenchError
from bench.models import model_class

StateDict = dict[str, torch.Tensor]

# Kinds whose tokens are output channels: a following norm with as many channels rides on them.
CHANNEL_KINDS = frozenset({"conv", "linear", "embed_patch", "attn_q", "attn_k", "attn_v", "attn_proj",
                           "mlp_fc1", "mlp_fc2", "norm"})
_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.LayerNorm)
_VIT_TOKENS = (("cls_token", "cls_token"), ("reg_token", "reg_token"), ("pos_embed", "pos_embed"))


@dataclass(frozen=True)
class Part:
    """A block of a layer's token columns: rows [start, stop) of state-dict entry `key` viewed as
    (rows, numel / rows), stored in token columns [col, col + width)."""
    key: str
    shape: tuple[int, ...]  # the entry's full shape
    dtype: torch.dtype
    rows: int
    start: int
    stop: int
    col: int
    width: int
    buffer: bool  # a running statistic, not a parameter: from_tokens hands it over detached


@dataclass(frozen=True)
class WeightLayer:
    """One layer's tokens. The three layers split from a fused qkv list the same keys; each covers a third
    of their rows."""
    name: str  # the module's name; split projections get a suffix ("blocks.0.attn.qkv.q")
    kind: str
    keys: tuple[str, ...]  # the state-dict entries it covers, in column order
    n_tokens: int
    token_width: int
    parts: tuple[Part, ...] = field(repr=False)

    @property
    def kind_key(self) -> str:
        """One weight embedder per kind_key: layers with the same kind and token width share it."""
        return f"{self.kind}:{self.token_width}"


@dataclass
class _Draft:
    """A layer being assembled: norms may still append columns to it."""
    name: str
    kind: str
    n_tokens: int
    blocks: list[tuple[str, torch.Tensor, int, int, int]] = field(default_factory=list)  # key, value, rows, start, stop

    def add(self, key: str, value: torch.Tensor, rows: int, start: int = 0, stop: int | None = None) -> None:
        stop = rows if stop is None else stop
        if stop - start != self.n_tokens or value.numel() % rows:
            raise BenchError(f"tokens: {key} {tuple(value.shape)} does not give {self.n_tokens} tokens "
                             f"to layer {self.name}")
        self.blocks.append((key, value, rows, start, stop))

    def freeze(self, buffers: set[str]) -> WeightLayer:
        parts, col = [], 0
        for key, value, rows, start, stop in self.blocks:
            width = value.numel() // rows
            parts.append(Part(key, tuple(value.shape), value.dtype, rows, start, stop, col, width, key in buffers))
            col += width
        keys = tuple(dict.fromkeys(p.key for p in parts))
        return WeightLayer(self.name, self.kind, keys, self.n_tokens, col, tuple(parts))


def _is_weight(value: torch.Tensor) -> bool:
    return value.is_floating_point()


def passthrough(state_dict: Mapping[str, torch.Tensor]) -> StateDict:
    """The entries that are not weights (integer counters such as `num_batches_tracked`)."""
    return {k: v for k, v in state_dict.items() if not _is_weight(v)}


def _channel_layer(name: str, kind: str, own: dict[str, tuple[str, torch.Tensor]]) -> _Draft:
    """A conv / linear: one token per output channel, the kernel row then the bias."""
    key, weight = own.pop("weight")
    draft = _Draft(name, kind, weight.shape[0])
    draft.add(key, weight, weight.shape[0])
    if "bias" in own:
        key, bias = own.pop("bias")
        draft.add(key, bias, bias.shape[0])
    return draft


def _split_qkv(name: str, own: dict[str, tuple[str, torch.Tensor]]) -> list[_Draft]:
    """timm's fused qkv: rows [0, d) are q, [d, 2d) k, [2d, 3d) v; each is a layer of its own."""
    entries = [own.pop(a) for a in ("weight", "bias") if a in own]
    rows = entries[0][1].shape[0]
    if rows % 3:
        raise BenchError(f"tokens: {name} has {rows} rows, not three equal projections")
    d = rows // 3
    drafts = []
    for i, proj in enumerate("qkv"):
        draft = _Draft(f"{name}.{proj}", f"attn_{proj}", d)
        for key, value in entries:
            draft.add(key, value, rows, i * d, (i + 1) * d)
        drafts.append(draft)
    return drafts


def weight_layers(model: nn.Module, arch: str) -> list[WeightLayer]:
    """The model's weight layers in forward order, covering every float state-dict entry exactly once."""
    # The arch's model class catches a teacher's weights paired with the wrong arch.
    family = model_class(arch)
    if not isinstance(model, family):
        raise BenchError(f"tokens: arch {arch} expects a {family.__name__}, got {type(model).__name__}")
    state = model.state_dict()
    own_by_module = _own_entries(state)
    modules = dict(model.named_modules())

    drafts: list[_Draft] = []
    pending: list[_Draft] = []  # ViT root tokens, emitted after the patch embedding (all of its subtree)
    embed_prefix: str | None = None
    in_embed = False
    for name, module in modules.items():
        was_in_embed, in_embed = in_embed, embed_prefix is not None and (name + ".").startswith(embed_prefix + ".")
        if pending and was_in_embed and not in_embed:
            drafts += pending
            pending = []
        own = dict(own_by_module.get(name, {}))
        if not own:
            continue
        parent_name, _, attr = name.rpartition(".")
        parent = modules[parent_name] if name else None
        if isinstance(module, VisionTransformer):
            for token_attr, kind in _VIT_TOKENS:
                if token_attr in own:
                    key, value = own.pop(token_attr)
                    draft = _Draft(key, kind, value.numel() // value.shape[-1])
                    draft.add(key, value, draft.n_tokens)
                    pending.append(draft)
            embed_prefix = f"{name}.patch_embed" if name else "patch_embed"
        elif isinstance(module, _CONVS):
            kind = "embed_patch" if isinstance(parent, PatchEmbed) else "conv"
            drafts.append(_channel_layer(name, kind, own))
        elif isinstance(module, nn.Linear) and isinstance(parent, Attention) and attr == "qkv":
            drafts += _split_qkv(name, own)
        elif isinstance(module, nn.Linear):
            kind = ("attn_proj" if isinstance(parent, Attention) and attr == "proj" else
                    f"mlp_{attr}" if isinstance(parent, Mlp) and attr in ("fc1", "fc2") else "linear")
            drafts.append(_channel_layer(name, kind, own))
        elif isinstance(module, _NORMS):
            _add_norm(drafts, name, own)
            own = {}
        if own:
            raise BenchError(f"tokens: no tokenisation for {type(module).__name__} {name or '<root>'} "
                             f"entries {sorted(own)}")
    drafts += pending
    buffers = {name for name, _ in model.named_buffers()}
    layers = [d.freeze(buffers) for d in drafts]
    _check_coverage(layers, state)
    return layers


def _own_entries(state: Mapping[str, torch.Tensor]) -> dict[str, dict[str, tuple[str, torch.Tensor]]]:
    """Own (non-recursive) float entries per module name, in state-dict order."""
    own_by_module: dict[str, dict[str, tuple[str, torch.Tensor]]] = {}
    for key, value in state.items():
        module, _, attr = key.rpartition(".")
        if _is_weight(value):
            own_by_module.setdefault(module, {})[attr] = (key, value)
    return own_by_module


def _add_norm(drafts: list[_Draft], name: str, own: dict[str, tuple[str, torch.Tensor]]) -> None:
    """A norm's per-channel entries join the channel layer before it (the same channels), else
    make a layer of their own."""
    channels = {v.shape for _, v in own.values()}
    if len(channels) != 1 or len(next(iter(channels))) != 1:
        raise BenchError(f"tokens: norm {name} has non per-channel entries {sorted(own)}")
    n = next(iter(channels))[0]
    prev = drafts[-1] if drafts else None
    if prev is None or prev.kind not in CHANNEL_KINDS or prev.n_tokens != n:
        prev = _Draft(name, "norm", n)
        drafts.append(prev)
    for key, value in own.values():
        prev.add(key, value, n)


def _check_coverage(layers: Sequence[WeightLayer], state: Mapping[str, torch.Tensor]) -> None:
    """Every float entry's rows are covered exactly once; non-float entries not at all."""
    covered: dict[str, list[tuple[int, int, int]]] = {}
    for layer in layers:
        for p in layer.parts:
            covered.setdefault(p.key, []).append((p.start, p.stop, p.rows))
    expected = {k for k, v in state.items() if _is_weight(v)}
    if set(covered) != expected:
        raise BenchError(f"tokens: layers miss {sorted(expected - set(covered))}, "
                         f"cover non-weights {sorted(set(covered) - expected)}")
    for key, spans in covered.items():
        spans.sort()
        rows = spans[0][2]
        bounds = [0] + [b for s, e, _ in spans for b in (s, e)] + [rows]
        if any(a != b for a, b in zip(bounds[::2], bounds[1::2])):
            raise BenchError(f"tokens: rows of {key} are not covered exactly once: {spans}")


def to_tokens(layers: Sequence[WeightLayer], state_dict: Mapping[str, torch.Tensor]) -> list[torch.Tensor]:
    """Per layer a (n_tokens, token_width) tensor. Mixed float dtypes within a layer promote (exactly)."""
    return [torch.cat([state_dict[p.key].reshape(p.rows, -1)[p.start:p.stop] for p in layer.parts], dim=1)
            for layer in layers]


def stack_tokens(layers: Sequence[WeightLayer],
                 state_dicts: Sequence[Mapping[str, torch.Tensor]]) -> list[torch.Tensor]:
    """N networks' tokens: per layer a (N, n_tokens, token_width) tensor."""
    if not state_dicts:
        raise BenchError("stack_tokens: no state dicts")
    return [torch.stack(ts) for ts in zip(*(to_tokens(layers, sd) for sd in state_dicts))]


def from_tokens(layers: Sequence[WeightLayer], tokens: Sequence[torch.Tensor],
                passthrough: Mapping[str, torch.Tensor] | None = None) -> StateDict:
    """The inverse of `to_tokens` (bit-exact), plus the `passthrough` entries as given.

    Parameters are slices / reshapes / cats of the tokens, made contiguous, so gradients flow back into
    the tokens. Contiguous because not every PyTorch CPU kernel is right for strided parameters: batch
    norm's backward returns a wrong input gradient for a strided weight on 1x1 feature maps (torch 2.14;
    the last stage of the tiny VGG, caught by tests/test_tokens.py comparing with the model's own grads).

    Running statistics are detached copies: PyTorch's batch-norm kernel refuses running statistics that
    require grad (in eval mode too), and in training mode it updates them in place, which must not write
    into the tokens; their token columns get no gradient.

    Tokens may carry leading batch dimensions (..., n_tokens, token_width), e.g. `stack_tokens` output:
    every entry then has them too. Keys come in layer order, then the passthrough keys.
    """
    if len(tokens) != len(layers):
        raise BenchError(f"from_tokens: {len(tokens)} token tensors for {len(layers)} layers")
    pieces: dict[str, list[tuple[Part, torch.Tensor]]] = {}
    for layer, t in zip(layers, tokens):
        if tuple(t.shape[-2:]) != (layer.n_tokens, layer.token_width):
            raise BenchError(f"from_tokens: layer {layer.name} wants ({layer.n_tokens}, {layer.token_width}) "
                             f"tokens, got {tuple(t.shape)}")
        for p in layer.parts:
            pieces.setdefault(p.key, []).append((p, t[..., p.col:p.col + p.width]))
    out: StateDict = {}
    for key, ps in pieces.items():
        ps.sort(key=lambda pt: pt[0].start)
        p, t = ps[0]
        rows = t if len(ps) == 1 else torch.cat([t for _, t in ps], dim=-2)
        value = rows.reshape(*rows.shape[:-2], *p.shape).to(p.dtype).contiguous()
        out[key] = value.detach().clone() if p.buffer else value
    out.update(passthrough or {})
    return out
