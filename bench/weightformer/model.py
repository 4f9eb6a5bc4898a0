"""WeightFormer (Fei et al. 2022, sec. 3): N teachers' weight tokens in, a student's weight tokens out.

The student is generated layer by layer, in forward order. For layer l the sequence is

    [cross_l], teacher 1's n_l tokens, ..., teacher N's n_l tokens

each weight token embedded by its layer kind's linear embedder (the "weight embedder dict", one
per `kind_key`: kind and token width), plus a learned model-id embedding (0 for [cross], 1..N for
the teachers), a relative-position embedding (the token's row inside its teacher: restarts at
each teacher) and a layer embedding. L pre-norm Transformer blocks (torch's scaled-dot-product
attention, so long layers fit) process it. The [cross] token's output becomes [cross_{l+1}]:
what was decided for layer l informs layer l+1, and the gradient of every later layer flows
back through the chain (`cross=False`: no [cross] token, layers are generated independently).

The student's rows are read at teacher 1's (the anchor's) positions: output row i sits where the
anchor's unit i sits, so the student inherits the anchor's unit order in every layer, which is
what makes its next layer's input columns line up, and what lets a residual over the anchor be
an exact copy of a real network at step 0. Each row goes through its kind's head back to the
token width; the output parameterisation is

    direct           student = column mean + std * head(h)
    residual_anchor  student = teacher 1   + std * head(h)
    residual_mean    student = teachers' mean + std * head(h)

with zero-initialised heads in the residual forms, so that step 0 reproduces the anchor teacher
(scratch pools) or the uniform soup (shared pools) exactly. Tokens are standardised per column
with the meta-train pool's mean and std (stored as buffers, so a checkpoint carries them).
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from bench.errors import BenchError
from bench.options import WFConfig
from bench.weights.tokens import WeightLayer


class Block(nn.Module):
    """Pre-norm Transformer block: x + attn(norm(x)), then x + mlp(norm(x))."""

    def __init__(self, d: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.norm1, self.norm2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.qkv, self.proj = nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.mlp = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, S, d)
        b, s, d = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(b, s, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        x = x + self.proj(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, s, d))
        return x + self.mlp(self.norm2(x))


def _key(kind_key: str) -> str:
    return kind_key.replace(":", "_")  # nn.ModuleDict keys may not hold "." (":" reads oddly in names)


class WeightFormer(nn.Module):
    def __init__(self, layers: Sequence[WeightLayer], cfg: WFConfig, n_teachers: int,
                 stats: Sequence[tuple[torch.Tensor, torch.Tensor]] | None = None) -> None:
        super().__init__()
        self.layers, self.cfg, self.n_teachers = list(layers), cfg, n_teachers
        d = cfg.d_model
        widths = {_key(l.kind_key): l.token_width for l in layers}
        self.embed = nn.ModuleDict({k: nn.Linear(w, d) for k, w in widths.items()})
        self.head = nn.ModuleDict({k: nn.Linear(d, w) for k, w in widths.items()})
        if cfg.output != "direct":
            for head in self.head.values():
                nn.init.zeros_(head.weight)
                nn.init.zeros_(head.bias)
        self.model_id = nn.Embedding(n_teachers + 1, d)
        self.position = nn.Embedding(max(l.n_tokens for l in layers), d)
        self.layer_id = nn.Embedding(len(layers), d)
        self.cross0 = nn.Parameter(torch.zeros(d))
        for emb in (self.model_id, self.position, self.layer_id):
            nn.init.normal_(emb.weight, std=0.02)
        self.blocks = nn.ModuleList(Block(d, cfg.heads) for _ in range(cfg.depth))
        self.norm = nn.LayerNorm(d)
        for i, layer in enumerate(layers):
            mean, std = stats[i] if stats is not None else (torch.zeros(layer.token_width), torch.ones(layer.token_width))
            self.register_buffer(f"mean_{i}", mean.float().reshape(layer.token_width).clone())
            self.register_buffer(f"std_{i}", std.float().reshape(layer.token_width).clone())

    def column_stats(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return getattr(self, f"mean_{i}"), getattr(self, f"std_{i}")

    def forward(self, tokens: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """tokens: per layer (N', n_l, w_l) for N' <= N teachers (teacher 1 = the anchor; fewer than
        N when shift consistency cuts one off). Returns per layer the student's (n_l, w_l) tokens."""
        if len(tokens) != len(self.layers):
            raise BenchError(f"weightformer: {len(tokens)} token tensors for {len(self.layers)} layers")
        n = tokens[0].shape[0]
        if not 1 <= n <= self.n_teachers:
            raise BenchError(f"weightformer: meta-trained for N = {self.n_teachers} teachers, given {n}")
        ids = self.model_id.weight
        cross = self.cross0
        out = []
        for i, (layer, t) in enumerate(zip(self.layers, tokens)):
            if t.shape != (n, layer.n_tokens, layer.token_width):
                raise BenchError(f"weightformer: layer {layer.name} wants ({n}, {layer.n_tokens}, "
                                 f"{layer.token_width}) tokens, got {tuple(t.shape)}")
            key = _key(layer.kind_key)
            mean, std = self.column_stats(i)
            z = (t - mean) / std if self.cfg.standardize else t
            x = self.embed[key](z) + ids[1:n + 1, None] + self.position.weight[None, :layer.n_tokens]
            x = x.reshape(n * layer.n_tokens, -1) + self.layer_id.weight[i]
            if self.cfg.cross:
                x = torch.cat([(cross + ids[0] + self.layer_id.weight[i])[None], x])
            for block in self.blocks:
                x = block(x[None])[0]
            x = self.norm(x)
            if self.cfg.cross:
                cross, x = x[0], x[1:]
            delta = self.head[key](x[:layer.n_tokens])  # the anchor's positions
            scale = std if self.cfg.standardize else torch.ones_like(std)
            base = {"direct": mean.expand_as(t[0]) if self.cfg.standardize else torch.zeros_like(t[0]),
                    "residual_anchor": t[0], "residual_mean": t.mean(0)}[self.cfg.output]
            out.append(base + delta * scale)
        return out


def column_stats(tokens: Sequence[Sequence[torch.Tensor]]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per layer, the mean and std of every token column over all rows of all given networks.

    `tokens[k][l]`: network k's (n_l, w_l) tokens. A constant column gets std 1 (nothing to scale)."""
    stats = []
    for per_layer in zip(*tokens):
        rows = torch.cat([t.detach().float().reshape(-1, t.shape[-1]) for t in per_layer])
        mean, std = rows.mean(0), rows.std(0, unbiased=False)
        stats.append((mean, torch.where(std > 1e-8, std, torch.ones_like(std))))
    return stats
