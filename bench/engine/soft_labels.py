"""Frozen teachers' soft labels: one batched forward of N teachers, and a cache keyed by
(sample index, view).

`BatchedTeachers(models)` stacks N teachers of one architecture (eval mode, frozen) with
`torch.func.stack_module_state` and runs them as ONE forward with `torch.func.functional_call`
under `torch.vmap`; `mean_soft_labels(x, T)` is the mean over the teachers of softmax(logits / T).

`SoftLabelCache` holds each teacher's logits on the (sample, view) pairs of a split that a run
draws, where the training augmentation is a finite set of transforms (`bench.data.memory`:
digits' translations, CIFAR's pad-crop and flip, or none): the loaders yield each image's
sample index and view id, so a teacher never runs twice on the same image. Logits, not
probabilities: any temperature and any group of the teachers (meta-training's) reads the same
entries, softmax(logits / T) and the group mean taken at lookup exactly as `mean_soft_labels`
takes them. Each teacher's entries live in a file beside its checkpoint, shared by every job
that uses that teacher on the same data (KD, self-distillation, fine-tuning, meta-training):
`view-logits-<hash>.safetensors`, the hash over the teacher's sha256, the data set, image size,
augmentation, device type and torch version; written atomically, a damaged file is recomputed.

Exactness: every cache forward has `CHUNK` images (the last chunk padded), made by the loader's
own augmentation (`DeviceLoader.view_images`), so they have a training batch's memory layout
too (a crop's tensor is channels-last strided; a contiguous copy of it gives other last bits).
On a CPU a row's logits then do not depend on the other rows of its batch nor on the batch size
once the batch holds 16 images or more (measured, torch 2.14.1, every tiny architecture, batches
of 16 to 1024; below that some CPUs differ in the last bits, an Intel Xeon's ResNet under 16 rows,
and a batch of ONE image does on every CPU measured, hence the fixed, padded chunks), so with
training batches of 16 or more a looked-up soft label is bit for bit the online one and a student
trained from the cache is the same student. On a GPU (bf16 autocast, cuDNN picks its
algorithms per shape) they agree to bf16 rounding; the device type is part of a file's identity.

`cache_budget_bytes()` (env `BENCH_SOFT_LABEL_CACHE_GB`, default 2 GiB) bounds a cache's
dense size (teachers x samples x views x classes x 4 bytes); above it the teachers run online.
"""
from __future__ import annotations

import copy
import hashlib
import json
import os
import time
import warnings
from pathlib import Path
from typing import Sequence

import torch
import torch.nn as nn
from torch.func import functional_call, stack_module_state

from bench.checkpoint import CheckpointError, load_checkpoint, read_meta, save_checkpoint
from bench.data import dataset_spec
from bench.data.loaders import make_loader
from bench.engine.devices import autocast
from bench.engine.loop import batches_per_epoch
from bench.errors import BenchError
from bench.job_env import capped_steps, world

MODES = ("vmap", "loop")
CHUNK = 256  # images per cache forward: any fixed size above one gives the online bits (module doc)
BUDGET_ENV = "BENCH_SOFT_LABEL_CACHE_GB"
DEFAULT_BUDGET_GB = 2.0
KIND = "teacher-view-logits"


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


def cache_budget_bytes() -> int:
    """The largest soft-label cache a job builds: `BENCH_SOFT_LABEL_CACHE_GB` GiB (default 2; 0 turns
    caching off)."""
    raw = os.environ.get(BUDGET_ENV, "").strip()
    try:
        gib = float(raw) if raw else DEFAULT_BUDGET_GB
    except ValueError:
        gib = -1.0
    if not gib >= 0:
        raise BenchError(f"{BUDGET_ENV} must be a number of GiB >= 0, got {raw!r}")
    return int(gib * 2 ** 30)


def cache_bytes(n_teachers: int, n_samples: int, n_views: int, n_classes: int) -> int:
    """The dense size of a cache: float32 logits per (teacher, sample, view, class)."""
    return 4 * n_teachers * n_samples * n_views * n_classes


def drawn_views(loader, steps: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(sample indices, view ids) of every image that `steps` steps through `loader` draw (step s
    is batch s mod len(loader) of epoch s // len(loader), as `bench.engine.loop.StepBatches`
    reads it), without making the images. Leaves the loader at epoch 0. A smoke run's step cap
    applies (bench.job_env.capped_steps): the loop will make no more steps than that."""
    steps, per_epoch = capped_steps(steps), batches_per_epoch(loader)
    indices, views = [], []
    for epoch in range(-(-steps // per_epoch)):
        loader.set_epoch(epoch)
        for _, (i, v) in zip(range(steps - epoch * per_epoch), loader.draws()):
            indices.append(i)
            views.append(v)
    loader.set_epoch(0)
    empty = torch.zeros(0, dtype=torch.int64)
    return torch.cat([empty, *indices]), torch.cat([empty, *views])


def _teacher_file(checkpoint: Path, identity: dict) -> tuple[Path, dict]:
    """Where one teacher's cache entries live (beside its checkpoint), and their full identity."""
    checkpoint = Path(checkpoint)
    full = {"kind": KIND, "teacher_sha256": read_meta(checkpoint)["sha256"], **identity}
    digest = hashlib.sha256(json.dumps(full, sort_keys=True).encode()).hexdigest()[:16]
    return checkpoint.parent / f"view-logits-{digest}", full


class SoftLabelCache:
    """Each teacher's float32 logits per (sample index, view) of one split: (teachers, samples,
    views, classes), with a mask of the entries filled.

    `loader`: a `bench.data.memory.DeviceLoader` over the whole split with the training
    augmentation: it gives `n_views` and makes the images (`view_images`) exactly as training
    batches hold them. `fill(indices, views)` computes the pairs not yet held (e.g. the
    `drawn_views` of a run); `mean(indices, views, T, members)` is the mean over the teachers
    `members` (default all) of softmax(logits / T), refusing a pair it does not hold.

    `checkpoints` (the teachers' checkpoint paths) with `identity` (what else the entries depend
    on: data set, split, image size, augmentation) keep each teacher's entries in a file beside
    its checkpoint: `fill` first reads what earlier jobs computed and writes back what it added
    (rank 0, atomically, merged with the file as it is then; two jobs filling at once at worst
    redo each other's work, as the entries are the same bits). Nothing is read before `fill`."""

    def __init__(self, teachers: BatchedTeachers, loader, num_classes: int, *,
                 checkpoints: Sequence[Path] | None = None, identity: dict | None = None) -> None:
        self.teachers, self.loader = teachers, loader
        self.shape = (len(teachers), int(loader.indices.max()) + 1, loader.n_views, num_classes)
        self.checkpoints, self.identity = checkpoints, identity
        self.logits: torch.Tensor | None = None
        self.filled: torch.Tensor | None = None
        self.computed = 0  # pairs this process computed (per teacher, summed)
        self.seconds = 0.0  # spent reading, computing and writing entries

    @property
    def nbytes(self) -> int:
        return cache_bytes(*self.shape)

    def __len__(self) -> int:
        """Entries held, summed over the teachers."""
        return 0 if self.filled is None else int(self.filled.sum())

    def _files(self) -> list[tuple[Path, dict]] | None:
        if self.checkpoints is None:
            return None
        _, samples, views, classes = self.shape
        facts = {**(self.identity or {}), "samples": samples, "views": views, "classes": classes, "chunk": CHUNK,
                 "device": self.teachers.device.type, "torch": torch.__version__.split("+")[0]}
        return [_teacher_file(c, facts) for c in self.checkpoints]

    def _read(self, stem: Path, full: dict) -> tuple[torch.Tensor, torch.Tensor] | None:
        try:
            tensors, _ = load_checkpoint(stem, expect={k: full[k] for k in ("kind", "teacher_sha256")},
                                         map_location=self.teachers.device)
        except CheckpointError as err:
            if stem.with_suffix(".json").exists():  # derived data: a damaged file is recomputed
                warnings.warn(f"soft-label cache {stem}: {err}; recomputing its entries")
            return None
        if tuple(tensors["logits"].shape) != self.shape[1:]:
            return None
        return tensors["logits"], tensors["filled"].bool()

    def _load(self) -> None:
        device = self.teachers.device
        self.logits = torch.zeros(self.shape, device=device)
        self.filled = torch.zeros(self.shape[:3], dtype=torch.bool, device=device)
        for k, (stem, full) in enumerate(self._files() or []):
            held = self._read(stem, full)
            if held is not None:
                self.logits[k], self.filled[k] = held

    @torch.no_grad()
    def fill(self, indices: torch.Tensor, views: torch.Tensor) -> int:
        """Compute every teacher's logits on the pairs (indices[i], views[i]) it does not hold yet,
        in forwards of CHUNK images; return the number of entries computed."""
        t0 = time.perf_counter()
        if self.logits is None:
            self._load()
        device = self.logits.device
        pairs = torch.unique(indices.to(device) * self.shape[2] + views.to(device))
        computed = 0
        for k in range(len(self.teachers)):
            todo = pairs[~self.filled[k].view(-1)[pairs]]
            for start in range(0, len(todo), CHUNK):
                part = todo[start:start + CHUNK]
                # The last chunk padded with its last pair: every forward has CHUNK images, made
                # by the loader's own function (the layout of a batch's tensor is its too).
                padded = torch.cat([part, part[-1:].expand(CHUNK - len(part))])
                x = self.loader.view_images(padded // self.shape[2], padded % self.shape[2])
                idx, v = part // self.shape[2], part % self.shape[2]
                self.logits[k, idx, v] = self.teachers.logits(x.to(self.teachers.device), [k])[0, :len(part)]
                self.filled[k, idx, v] = True
            computed += len(todo)
            if len(todo) and world()[0] == 0:
                self._write(k)
        self.computed += computed
        self.seconds += time.perf_counter() - t0
        return computed

    def _write(self, k: int) -> None:
        files = self._files()
        if files is None:
            return
        stem, full = files[k]
        logits, filled = self.logits[k], self.filled[k]
        held = self._read(stem, full)  # what other jobs added since this one read the file
        if held is not None:
            logits = torch.where(filled[..., None], logits, held[0])
            filled = filled | held[1]
        save_checkpoint(stem, {"logits": logits, "filled": filled}, full)

    @torch.no_grad()
    def mean(self, indices: torch.Tensor, views: torch.Tensor, temperature: float,
             members: Sequence[int] | None = None) -> torch.Tensor:
        """(B, C): the mean over the teachers `members` of softmax(logits / T) of each pair."""
        if self.logits is None:
            self._load()
        device = self.logits.device
        k = torch.arange(self.shape[0], device=device) if members is None else torch.tensor(list(members), device=device)
        idx, v = indices.to(device), views.to(device)
        inside = (idx >= 0) & (idx < self.shape[1]) & (v >= 0) & (v < self.shape[2])
        if not inside.all() or not self.filled[k[:, None], idx[None], v[None]].all():
            raise BenchError("soft-label cache: a batch holds (sample, view) pairs the cache was not filled "
                             "with (another split, an augmentation outside its views, or draws it was not given)")
        z = self.logits[k[:, None], idx[None], v[None]]  # (N, B, C), as BatchedTeachers.logits gives it
        return (z / temperature).softmax(-1).mean(0).to(indices.device)


def soft_label_cache(teachers: BatchedTeachers, checkpoints, dataset: str, *, root, image_size: int,
                     num_classes: int, device: torch.device, split: str = "train") -> SoftLabelCache | None:
    """The cache of these teachers' logits on the views of the split a student trains on (the
    training split, or a transfer split), or None where the teachers must run online: the split is
    not held in memory, or the cache would exceed the budget."""
    spec = dataset_spec(dataset)
    if not spec.in_memory:
        return None
    # The whole split with its training augmentation: it makes any (sample, view)'s image.
    views = make_loader(dataset, split, batch_size=1, train=True, root=root, image_size=image_size, device=device)
    if cache_bytes(len(teachers), int(views.indices.max()) + 1, views.n_views, num_classes) > cache_budget_bytes():
        return None
    return SoftLabelCache(teachers, views, num_classes, checkpoints=checkpoints, identity={
        "dataset": dataset, "split": split, "image_size": image_size, "augmentation": spec.augment})
