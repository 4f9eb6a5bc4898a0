"""Frozen teachers for distillation: one batched forward of N teachers, and a soft-label cache.

`BatchedTeachers(models)` stacks N teachers of one architecture (eval mode, frozen) with
`torch.func.stack_module_state` and runs them as ONE forward with `torch.func.functional_call`
under `torch.vmap`; `mean_soft_labels(x, T)` is the mean over the teachers of softmax(logits / T).

`SoftLabelCache` holds those mean soft labels for a whole training split, computed once. It is
only valid when training does not augment (the data set's spec says `augment == "none"`): then
every training batch's images are exact rows of the device-resident training tensor, so a
lookup by exact content finds them. Keys are a hash of each normalised float image's bytes; a
hit is verified by an exact comparison with the stored row (a hash collision or any image that
is not a training row is a miss), and misses run the teachers.
"""
from __future__ import annotations

import copy
import hashlib
import warnings
from typing import Sequence

import torch
import torch.nn as nn
from torch.func import functional_call, stack_module_state

MODES = ("vmap", "loop")


def _autocast(device: torch.device):
    # The same mixed precision as bench.train's forwards (bf16 on GPUs, float32 elsewhere).
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")


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
    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Every teacher's logits, float32 (N, B, C)."""
        if x.device != self.device:  # e.g. a data-parallel rank's own GPU
            self.to(x.device)
        with _autocast(x.device):
            if self.mode == "vmap":
                try:
                    with warnings.catch_warnings():
                        warnings.filterwarnings("ignore", message=".*not yet implemented the batching rule.*")
                        return self._vmapped(self.params, self.buffers, x).float()
                except Exception as err:  # an op vmap cannot batch: teacher by teacher from now on
                    self.mode = "loop"
                    self.fallback_reason = f"{type(err).__name__}: {err}"
                    warnings.warn(f"BatchedTeachers: vmap failed for {type(self.models[0]).__name__} "
                                  f"({self.fallback_reason}); running the teachers in a loop")
            return torch.stack([m(x).float() for m in self.models])

    @torch.no_grad()
    def mean_soft_labels(self, x: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
        """Mean over the teachers of softmax(logits / T): (B, C), float32."""
        return (self.logits(x) / temperature).softmax(-1).mean(0)


def _keys(images: torch.Tensor) -> list[bytes]:
    """A 128-bit hash of each image's exact float32 bytes."""
    flat = images.detach().to("cpu", torch.float32).contiguous().flatten(1).numpy()
    return [hashlib.blake2b(row.tobytes(), digest_size=16).digest() for row in flat]


class SoftLabelCache:
    """The teachers' mean soft labels at temperature T for every image of a training split.

    `loader` must yield the split's images exactly as training sees them, in order, without
    augmentation (e.g. `make_loader(name, "train", train=False, ...)`, a DeviceLoader: the same
    uint8 tensor, the same normalisation). `lookup(images)` returns the cached rows for images
    found (verified bitwise) and runs the teachers on the others. `hits` / `misses` count rows.
    """

    def __init__(self, teachers: BatchedTeachers, loader, temperature: float) -> None:
        self.teachers, self.temperature = teachers, temperature
        images, soft = [], []
        for x, _ in loader:
            images.append(x)
            soft.append(teachers.mean_soft_labels(x, temperature))
        self.images = torch.cat(images)  # the reference rows an exact comparison checks hits against
        self.soft = torch.cat(soft)
        self.index: dict[bytes, int] = {}
        for i, key in enumerate(_keys(self.images)):
            self.index.setdefault(key, i)  # a repeated image: its teachers' output is the same
        self.hits = self.misses = 0

    def __len__(self) -> int:
        return len(self.soft)

    @torch.no_grad()
    def lookup(self, images: torch.Tensor) -> torch.Tensor:
        rows = torch.tensor([self.index.get(k, -1) for k in _keys(images)], dtype=torch.long)
        found = rows >= 0
        if found.any():  # a hash hit counts only if the image is bitwise the stored one
            ref = self.images[rows.clamp_min(0).to(self.images.device)].to(images.device)
            same = (ref == images).flatten(1).all(1).cpu()
            found &= same
        out = self.soft[rows.clamp_min(0).to(self.soft.device)].to(images.device)
        miss = (~found).nonzero().flatten().to(images.device)
        if len(miss):
            out[miss] = self.teachers.mean_soft_labels(images[miss], self.temperature).to(out.dtype)
        n_hit = int(found.sum())
        self.hits += n_hit
        self.misses += len(found) - n_hit
        return out
