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

Cost: the last block of a layer computes only the rows that are read out ([cross] and the anchor's:
1 + n_l of 1 + N n_l queries; every row is still a key and a value); with `cross=False` the layers
with the same number of tokens go through the blocks as one batch (with the chain they cannot: each
waits for the previous one's [cross]). `checkpointing` recomputes a layer in the backward pass.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from bench.errors import BenchError
from bench.method_options import WFConfig
from bench.weights.tokens import WeightLayer


class Block(nn.Module):
    """Pre-norm Transformer block: x + attn(norm(x)), then x + mlp(norm(x))."""

    def __init__(self, d: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.norm1, self.norm2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.qkv, self.proj = nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.mlp = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d))

    def forward(self, x: torch.Tensor, rows: int | None = None) -> torch.Tensor:  # (B, S, d)
        """`rows`: only the first `rows` positions' outputs are wanted (every position is still
        attended to). The last block of a layer is asked only for the rows that are read out:
        the other teachers' rows would be computed and thrown away."""
        b, s, d = x.shape
        h = self.norm1(x)
        if rows is None or rows >= s:
            q, k, v = self.qkv(h).view(b, s, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        else:
            # The same projection, its query third on the wanted rows only.
            w, bias = self.qkv.weight, self.qkv.bias
            q = F.linear(h[:, :rows], w[:d], bias[:d]).view(b, rows, self.heads, d // self.heads).transpose(1, 2)
            k, v = F.linear(h, w[d:], bias[d:]).view(b, s, 2, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
            x, s = x[:, :rows], rows
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
        for layer, t in zip(self.layers, tokens):
            if t.shape != (n, layer.n_tokens, layer.token_width):
                raise BenchError(f"weightformer: layer {layer.name} wants ({n}, {layer.n_tokens}, "
                                 f"{layer.token_width}) tokens, got {tuple(t.shape)}")
        # Checkpointing keeps only each layer's inputs and outputs for the backward pass and
        # recomputes the layer's blocks there (the [cross] token in and out of a layer is one of
        # its inputs and outputs, so the chain's gradient is the same).
        run = ((lambda f, *a: checkpoint(f, *a, use_reentrant=False))
               if self.cfg.checkpointing and torch.is_grad_enabled() else (lambda f, *a: f(*a)))
        out: list[torch.Tensor | None] = [None] * len(self.layers)
        if self.cfg.cross:  # a chain: layer l + 1 waits for layer l's [cross] output
            cross = self.cross0
            for i, t in enumerate(tokens):
                cross, out[i] = run(self._chained_layer, i, cross, t)
            return out
        # Independent layers: those with the same number of tokens go through the blocks as one batch.
        by_rows: dict[int, list[int]] = {}
        for i, layer in enumerate(self.layers):
            by_rows.setdefault(layer.n_tokens, []).append(i)
        for idx in by_rows.values():
            for i, o in zip(idx, run(self._independent_layers, idx, *(tokens[i] for i in idx))):
                out[i] = o
        return out

    def _embedded(self, i: int, t: torch.Tensor) -> torch.Tensor:
        """Layer i's teacher tokens (n, n_l, w_l) as one sequence (n * n_l, d): weight embedder,
        model id, relative position and layer embedding."""
        layer, n = self.layers[i], t.shape[0]
        mean, std = self.column_stats(i)
        z = (t - mean) / std if self.cfg.standardize else t
        x = (self.embed[_key(layer.kind_key)](z) + self.model_id.weight[1:n + 1, None]
             + self.position.weight[None, :layer.n_tokens])
        return x.reshape(n * layer.n_tokens, -1) + self.layer_id.weight[i]

    def _blocks(self, x: torch.Tensor, rows: int) -> torch.Tensor:
        """(B, S, d) through the blocks and the final norm; the first `rows` positions' outputs."""
        for block in self.blocks[:-1]:
            x = block(x)
        return self.norm(self.blocks[-1](x, rows))

    def _student(self, i: int, t: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        """Layer i's student tokens from the outputs `h` (n_l, d) at the anchor's positions."""
        key = _key(self.layers[i].kind_key)
        mean, std = self.column_stats(i)
        delta = self.head[key](h)
        scale = std if self.cfg.standardize else torch.ones_like(std)
        base = {"direct": mean.expand_as(t[0]) if self.cfg.standardize else torch.zeros_like(t[0]),
                "residual_anchor": t[0], "residual_mean": t.mean(0)}[self.cfg.output]
        return base + delta * scale

    def _chained_layer(self, i: int, cross: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """[cross_i] and layer i's teacher tokens -> ([cross_{i+1}], layer i's student tokens)."""
        n_l = self.layers[i].n_tokens
        x = torch.cat([(cross + self.model_id.weight[0] + self.layer_id.weight[i])[None], self._embedded(i, t)])
        h = self._blocks(x[None], 1 + n_l)[0]
        return h[0], self._student(i, t, h[1:])

    def _independent_layers(self, idx: list[int], *ts: torch.Tensor) -> list[torch.Tensor]:
        """Layers `idx` (the same number of tokens, no [cross] token): the student tokens of each."""
        h = self._blocks(torch.stack([self._embedded(i, t) for i, t in zip(idx, ts)]), self.layers[idx[0]].n_tokens)
        return [self._student(i, t, h[j]) for j, (i, t) in enumerate(zip(idx, ts))]


def column_stats(tokens: Sequence[Sequence[torch.Tensor]]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per layer, the mean and std of every token column over all rows of all given networks.

    `tokens[k][l]`: network k's (n_l, w_l) tokens. A constant column gets std 1 (nothing to scale)."""
    stats = []
    for per_layer in zip(*tokens):
        rows = torch.cat([t.detach().float().reshape(-1, t.shape[-1]) for t in per_layer])
        mean, std = rows.mean(0), rows.std(0, unbiased=False)
        stats.append((mean, torch.where(std > 1e-8, std, torch.ones_like(std))))
    return stats
