"""Frozen teachers' soft labels: one batched forward of N teachers, and a cache keyed by sample index.

`BatchedTeachers(models)` stacks N teachers of one architecture (eval mode, frozen) with
`torch.func.stack_module_state` and runs them as ONE forward with `torch.func.functional_call`
under `torch.vmap`; `mean_soft_labels(x, T)` is the mean over the teachers of softmax(logits / T).

`SoftLabelCache` holds every teacher's softened outputs on every sample of a split, computed once
and looked up by the sample indices the loaders yield. It serves training without augmentation
(each batch's images are then exact rows of the split): KD's student, and meta-training's groups
(any subset of the pool's teachers, averaged on lookup).
"""
from __future__ import annotations

import copy
import warnings
from typing import Sequence

import torch
import torch.nn as nn
from torch.func import functional_call, stack_module_state

from bench.engine.devices import autocast
from bench.errors import BenchError

MODES = ("vmap", "loop")


class BatchedTeachers:
    """N frozen teachers of one architecture; `mean_soft_labels(x, T) -> (B, C)`.

    mode "vmap" (default): one vmapped functional forward over the stacked weights. If vmap
    raises for an architecture, the first call falls back to "loop" (each teacher in turn)
    and says why in `fallback_reason`. A single teacher always uses "loop" (nothing to batch).

    Measured with torch 2.14.1 on CPU, every tiny architecture of the suite runs under vmap and
    gives the loop's logits (vgg11 and resnet50 bitwise, vit_b32 within 3e-7), so none falls back
    today; but vmap is not faster on a CPU: convolutions with a batch of weights become grouped
    convolutions (resnet50 tiny ~3x slower than the loop, vgg11 ~1.2x), and vit_b32's
    `F.scaled_dot_product_attention` has no CPU batching rule, so functorch runs that op
    teacher by teacher (a "performance drop" UserWarning, silenced here; ~1.5x slower).
    Pass mode="loop" where that matters.
    """

    def __init__(self, models: Sequence[nn.Module], mode: str = "vmap") -> None:
        if not models:
            raise ValueError("BatchedTeachers needs at least one teacher")
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        kinds = {type(m) for m in models}
        if len(kinds) > 1:
            raise ValueError(f"teachers must share one architecture, got {sorted(k.__name__ for k in kinds)}")
        self.models = [m.eval().requires_grad_(False) for m in models]
        self.mode = "loop" if len(self.models) == 1 else mode
        self.fallback_reason: str | None = None
        self.device = next(self.models[0].parameters()).device
        if self.mode == "vmap":
            self._stack()

    def __len__(self) -> int:
        return len(self.models)

    def _stack(self) -> None:
        params, buffers = stack_module_state(self.models)
        # stack_module_state returns new leaves that require grad; the teachers are frozen.
        self.params = {k: v.detach() for k, v in params.items()}
        self.buffers = {k: v.detach() for k, v in buffers.items()}
        # A weightless copy of the architecture: functional_call supplies every tensor.
        self.base = copy.deepcopy(self.models[0]).to("meta")

        def one(params, buffers, x):
            return functional_call(self.base, (params, buffers), (x,))

        self._vmapped = torch.vmap(one, in_dims=(0, 0, None))

    def to(self, device: torch.device | str) -> "BatchedTeachers":
        device = torch.device(device)
        self.models = [m.to(device) for m in self.models]
        if self.mode == "vmap":
            self.params = {k: v.to(device) for k, v in self.params.items()}
            self.buffers = {k: v.to(device) for k, v in self.buffers.items()}
        self.device = device
        return self

    @torch.no_grad()
    def logits(self, x: torch.Tensor, members: Sequence[int] | None = None) -> torch.Tensor:
        """Every teacher's logits (or those of the teachers `members`, in a loop), float32 (N, B, C)."""
        if x.device != self.device:  # e.g. a data-parallel rank's own GPU
            self.to(x.device)
        with autocast(x.device):
            if self.mode == "vmap" and members is None:
                try:
                    with warnings.catch_warnings():
                        warnings.filterwarnings("ignore", message=".*not yet implemented the batching rule.*")
                        return self._vmapped(self.params, self.buffers, x).float()
                except Exception as err:  # an op vmap cannot batch: teacher by teacher from now on
                    self.mode = "loop"
                    self.fallback_reason = f"{type(err).__name__}: {err}"
                    warnings.warn(f"BatchedTeachers: vmap failed for {type(self.models[0]).__name__} "
                                  f"({self.fallback_reason}); running the teachers in a loop")
            models = self.models if members is None else [self.models[k] for k in members]
            return torch.stack([m(x).float() for m in models])

    @torch.no_grad()
    def mean_soft_labels(self, x: torch.Tensor, temperature: float = 1.0,
                         members: Sequence[int] | None = None) -> torch.Tensor:
        """Mean over the teachers (or the teachers `members`) of softmax(logits / T): (B, C), float32."""
        return (self.logits(x, members) / temperature).softmax(-1).mean(0)


class SoftLabelCache:
    """softmax(logits / T) of every teacher for every sample of a split: (teachers, samples, classes).

    `loader` yields the split's (images, labels, sample indices) exactly as training sees them,
    without augmentation (e.g. `make_loader(name, "train", train=False, ...)`); it may cover a
    subset of the split (a fine-tuning fraction): lookups outside it are refused.
    `mean(indices, members)` is the mean over the teachers `members` (default: all) of their rows."""

    def __init__(self, teachers: BatchedTeachers, loader, temperature: float) -> None:
        self.temperature = temperature
        idx, probs = [], []
        for x, _, i in loader:
            idx.append(i.cpu())
            probs.append((teachers.logits(x) / temperature).softmax(-1))
        idx = torch.cat(idx)
        probs = torch.cat(probs, dim=1)
        self.probs = probs.new_zeros(probs.shape[0], int(idx.max()) + 1, probs.shape[2])
        self.probs[:, idx.to(probs.device)] = probs
        self.cached = torch.zeros(self.probs.shape[1], dtype=torch.bool)
        self.cached[idx] = True

    def __len__(self) -> int:
        return int(self.cached.sum())

    @torch.no_grad()
    def mean(self, indices: torch.Tensor, members: Sequence[int] | None = None) -> torch.Tensor:
        rows = indices.cpu()
        if rows.numel() and (rows.max() >= len(self.cached) or not self.cached[rows].all()):
            raise BenchError("soft-label cache: a batch holds samples the cache was not built on "
                             "(another split or another subset of it)")
        probs = self.probs if members is None else self.probs[list(members)]
        return probs[:, rows.to(probs.device)].mean(0).to(indices.device)
