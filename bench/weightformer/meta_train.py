"""Meta-training a WeightFormer on a teacher pool, and predicting a student with it.

One meta-training job per (pool, N, WFConfig) (`bench.jobs.MetaTrainStage`). Each step draws a
group of N teachers from the pool's meta-train part (its order too: the first is the anchor),
predicts the group's student, and takes one AdamW step on eq. 1 (+ shift consistency) over a
batch of training images; warm-up + cosine learning rate, gradient clipping. The draws come from
generators seeded by (seed, step), so a resumed run makes the same steps as an uninterrupted one.

Soft labels: for data sets held in memory (digits, multiview, CIFAR) every teacher's logits on
each (sample, view) of the training split the run draws are computed once, or read from the
files earlier jobs on these teachers left (`bench.engine.soft_labels.SoftLabelCache`), so a
group's soft labels cost no teacher forward pass; over the cache budget, or for ImageNet, the
group's teachers run on each (augmented) batch.

`align: weight_matching`: every teacher is permuted onto the group's anchor (the one weight
matching of `bench.weights.permutation`, as `aligned_soup` uses) before it is tokenised, so that row
i of every teacher means the same unit; each (anchor, member) permutation is computed once.

Files, in the job's folder (teachers/<pool>/weightformer-<run id>/): `checkpoint*` while it runs
(every `checkpoint_every` steps: model, optimiser, step, history), then `model.safetensors` +
`model.json` (the pool, N, arch, config, cost and loss history). A NaN or inf loss stops the job
at once naming the step and the term; the last good checkpoint is kept.
"""
from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from bench.checkpoint import load_checkpoint, paths, read_meta
from bench.data import dataset_spec
from bench.data.loaders import make_loader
from bench.errors import BenchError
from bench.job_env import capped_batch
from bench.models import ARCH_SPECS
from bench.engine import autocast, load_model
from bench.engine.checkpointer import RunFolder
from bench.engine.loop import StepBatches, fit
from bench.engine.optim import make_optimizer
from bench.engine.schedule import lr_factor
from bench.engine.soft_labels import BatchedTeachers, drawn_views, soft_label_cache
from bench.method_options import WFConfig
from bench.weightformer.losses import ensemble_kl, shift_consistency, student_logits
from bench.weightformer.model import WeightFormer, column_stats
from bench.weights import permutation
from bench.weights.tokens import from_tokens, passthrough, to_tokens, weight_layers

KIND = "weightformer"




def _generator(seed: int, step: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed * 1_000_003 + step)


class TeacherTokens:
    """The pool's teachers as tokens, optionally aligned onto an anchor (cached per pair).

    The standardisation statistics are taken over the unaligned tokens: alignment permutes rows
    (which per-column statistics do not see) and input columns (which they do, slightly)."""

    def __init__(self, models: Sequence[nn.Module], arch: str, align: str) -> None:
        self.models, self.arch, self.align = list(models), arch, align
        if align == "weight_matching" and arch not in permutation.SUPPORTED:
            raise BenchError(f"weightformer: align weight_matching supports {', '.join(permutation.SUPPORTED)}, "
                             f"not {arch}")
        self.layers = weight_layers(self.models[0], arch)
        # Kept on the CPU (weight matching runs there; a step moves its group's tokens to the
        # device): an aligned copy per (anchor, member) pair would not fit beside a GPU's models.
        self.state_dicts = [{k: v.detach().cpu() for k, v in m.state_dict().items()} for m in self.models]
        self.tokens = [to_tokens(self.layers, sd) for sd in self.state_dicts]
        # Unaligned, a group is rows of one (members, n_l, w_l) tensor per layer: stacked once and
        # kept on the step's device (one pool copy, as big as the teachers themselves), so a step
        # neither re-stacks nor copies tokens from the host.
        self._stacked = [torch.stack(ts) for ts in zip(*self.tokens)]
        self._on_device: dict[torch.device, list[torch.Tensor]] = {}
        self.spec = permutation.permutation_spec(self.models[0], arch) if align == "weight_matching" else None
        self._aligned: dict[tuple[int, int], list[torch.Tensor]] = {}

    def member(self, k: int, anchor: int) -> list[torch.Tensor]:
        if self.spec is None or k == anchor:
            return self.tokens[k]
        if (anchor, k) not in self._aligned:
            perms = permutation.weight_matching(self.spec, self.state_dicts[anchor], self.state_dicts[k])
            self._aligned[anchor, k] = to_tokens(self.layers, permutation.apply_permutation(
                self.spec, self.state_dicts[k], perms))
        return self._aligned[anchor, k]

    def group(self, members: Sequence[int], device: torch.device | str = "cpu") -> list[torch.Tensor]:
        """Per layer (N, n_l, w_l) on `device`: the members in the given order, the first being the anchor."""
        device = torch.device(device)
        if self.spec is None:
            if device not in self._on_device:
                self._on_device[device] = [t.to(device) for t in self._stacked]
            idx = torch.tensor(list(members), device=device)
            return [t.index_select(0, idx) for t in self._on_device[device]]
        per_member = [self.member(k, members[0]) for k in members]
        return [torch.stack(ts).to(device) for ts in zip(*per_member)]


class SoftLabels:
    """Batches of training images with the mean softened outputs of any group of the teachers.

    In-memory sets look the group's soft labels up in a `SoftLabelCache` of every teacher's logits
    on the (sample, view) pairs the run draws (filled once, here, with what earlier jobs on these
    teachers left undone; bit for bit the online soft labels on a CPU); over the cache budget, or
    for data not held in memory, the group's teachers run on each batch. Without augmentation a
    step's batch is a random draw of the split's images; with it, the loader's augmented batch.
    `steps`: how many steps the run takes (`batch(step)` serves steps 0 to steps - 1 from the
    cache); `checkpoints`: the teachers' files, which keep the cache's entries for later jobs."""

    def __init__(self, models: Sequence[nn.Module], dataset: str, root: str | None, image_size: int,
                 device: torch.device, batch_size: int, seed: int, temperature: float,
                 steps: int, checkpoints: Sequence[Path] | None = None, channels_last: bool = False,
                 split: str = "train") -> None:
        self.temperature, self.batch_size, self.seed = temperature, capped_batch(batch_size), seed
        # Convolutions run faster on channels-last images, on a CPU too (the teachers and the student).
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.teachers = BatchedTeachers(list(models), mode="loop")  # the group changes every step
        spec = dataset_spec(dataset)
        common = dict(root=root, image_size=image_size, device=device)
        self.augmented = not (spec.augment == "none" and spec.in_memory)
        loader = make_loader(dataset, split, batch_size=batch_size, train=True, seed=seed, **common)
        self.cache = soft_label_cache(self.teachers, checkpoints, dataset, root=root, image_size=image_size,
                                      num_classes=spec.num_classes, device=device, split=split)
        self.cached = self.cache is not None
        if not self.augmented:
            whole = make_loader(dataset, split, batch_size=512, train=False, **common)
            self.images = torch.cat([x for x, *_ in whole]).contiguous(memory_format=self.memory_format)
            if self.cached:
                self.cache.fill(torch.arange(len(self.images)), torch.zeros(len(self.images), dtype=torch.int64))
        else:
            self.batches = StepBatches(loader)
            if self.cached:
                self.cache.fill(*drawn_views(loader, steps))

    def batch(self, step: int, group: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.augmented:
            n = len(self.images)
            idx = torch.randperm(n, generator=_generator(self.seed, step))[:min(self.batch_size, n)]
            x = self.images[idx.to(self.images.device)]
            views = torch.zeros_like(idx)
        else:
            (x, _, idx, views), _ = self.batches(step)
            x = x.contiguous(memory_format=self.memory_format)
        if self.cached:
            return x, self.cache.mean(idx, views, self.temperature, group).to(x.device)
        return x, self.teachers.mean_soft_labels(x, self.temperature, members=group)


class ValKL:
    """Eq. 1 on val images for fixed groups of the meta-train part: what early stopping watches.

    The groups (`cfg.val_groups`, each a random order of N members, the first the anchor) and the
    images (the first `cfg.val_images` of the val split) are fixed for the run; the teachers' soft
    labels on them are computed once. The student runs as in training (BatchNorm on the statistics
    of each batch of `cfg.batch_size` images), so the number is the training objective on unseen images."""

    def __init__(self, models: Sequence[nn.Module], dataset: str, root: str | None, image_size: int,
                 device: torch.device, n_part: int, n_teachers: int, cfg: WFConfig,
                 memory_format: torch.memory_format) -> None:
        gen = torch.Generator().manual_seed(cfg.seed + 104_729)
        self.groups = [torch.randperm(n_part, generator=gen)[:n_teachers].tolist() for _ in range(cfg.val_groups)]
        loader = make_loader(dataset, "val", batch_size=cfg.batch_size, train=False, root=root,
                             image_size=image_size, device=device)
        chunks, count = [], 0
        for x, *_ in loader:
            chunks.append(x[:cfg.val_images - count].contiguous(memory_format=memory_format))
            count += len(chunks[-1])
            if count >= cfg.val_images:
                break
        self.batches, self.temperature = chunks, cfg.temperature
        used = sorted({k for g in self.groups for k in g})
        with torch.no_grad():
            probs = {k: [(models[k](x).float() / cfg.temperature).softmax(-1) for x in chunks] for k in used}
        self.targets = [[torch.stack([probs[k][i] for k in g]).mean(0) for i in range(len(chunks))] for g in self.groups]

    @torch.no_grad()
    def __call__(self, logits_of: Callable[[list[torch.Tensor], torch.Tensor], torch.Tensor],
                 tokens_of: Callable[[list[int]], list[torch.Tensor]]) -> float:
        total, count = 0.0, 0
        for group, targets in zip(self.groups, self.targets):
            tokens = tokens_of(group)
            for x, target in zip(self.batches, targets):
                total += float(ensemble_kl(logits_of(tokens, x), target, self.temperature)) * len(x)
                count += len(x)
        return total / count


class MetaTrainObjective:
    """One step: draw a group (and its order) from the meta-train part, predict its student,
    eq. 1 (+ shift consistency) on a batch of training images."""

    labels = {"kl": "KL (eq. 1)", "shift": "shift-consistency", "loss": "total"}

    def __init__(self, wf: WeightFormer, optimizer, student: nn.Module, layers, pool_tokens: TeacherTokens,
                 data: SoftLabels, n_part: int, n_teachers: int, cfg: WFConfig, device: torch.device) -> None:
        self.model, self.optimizer, self.student, self.layers = wf, optimizer, student, layers
        self.pool_tokens, self.data, self.n_part, self.n_teachers = pool_tokens, data, n_part, n_teachers
        self.cfg, self.device = cfg, device
        self.extra = passthrough(student.state_dict())
        self.val: ValKL | None = None  # set where early stopping watches the val KL

    def _logits(self, tokens, x):
        fresh = {k: v.clone() for k, v in self.extra.items()}  # BatchNorm counts in place
        return student_logits(self.student, self.layers, self.model(tokens), fresh, x)

    def loss(self, step: int) -> dict[str, torch.Tensor]:
        order = torch.randperm(self.n_part, generator=_generator(self.cfg.seed + 7919, step))[:self.n_teachers].tolist()
        x, probs = self.data.batch(step, order)
        tokens = self.pool_tokens.group(order, self.device)
        # bf16 autocast on GPUs (the paper-scale models); the losses are computed in float32.
        with autocast(self.device):
            logits = self._logits(tokens, x)
            kl = ensemble_kl(logits, probs, self.cfg.temperature)
            if self.cfg.shift_weight <= 0:
                return {"kl": kl, "loss": kl}
            shift = shift_consistency(lambda g: self._logits(g, x), tokens, logits, self.cfg.temperature)
            return {"kl": kl, "shift": shift, "loss": kl + self.cfg.shift_weight * shift}

    def log_row(self, step: int, means: dict[str, torch.Tensor], seconds: float) -> dict[str, Any]:
        row = {"step": step, "kl": means["kl"].item(), "shift": means["shift"].item() if "shift" in means else 0.0,
               "meta_train_s": seconds}
        if self.val is not None:
            row["val_kl"] = self.val(self._logits, lambda g: self.pool_tokens.group(g, self.device))
        return row


def meta_train(out: str | Path, *, teachers: Sequence[Path], members: Sequence[int], arch: str, dataset: str,
               scale: str, pool: str, n_teachers: int, cfg: WFConfig, data_root: str | None = None,
               device: torch.device | str = "cpu", progress: bool | None = None) -> dict[str, Any]:
    """Meta-train (or resume, or find finished) the WeightFormer in `out`; return its sidecar.

    `teachers`: the checkpoints of the pool's meta-train members `members` (same order)."""
    device = torch.device(device)
    identity = {"kind": KIND, "arch": arch, "dataset": dataset, "scale": scale, "pool": pool,
                "n_teachers": n_teachers, "members": list(members), "config": cfg.identity()}
    flat = {**{k: v for k, v in identity.items() if k != "config"}, **identity["config"]}
    folder = RunFolder(out, flat, what="WeightFormer", expect={"kind": KIND},
                       matches=lambda meta: {k: meta.get(k) for k in identity} == identity)
    done = folder.finished()
    if done is not None:
        return done
    if n_teachers > len(members):
        raise BenchError(f"weightformer: N = {n_teachers} but the pool {pool} has {len(members)} meta-train members")
    loaded = [load_model(p, device, arch=arch) for p in teachers]
    channels_last = ARCH_SPECS[arch].channels_last
    models = [m.eval().requires_grad_(False) for m, _ in loaded]
    if channels_last:  # the teachers' convolutions (tokens are read from the state dicts, any layout)
        models = [m.to(memory_format=torch.channels_last) for m in models]
    tmeta = loaded[0][1]
    pool_tokens = TeacherTokens(models, arch, cfg.align)
    layers = pool_tokens.layers
    torch.manual_seed(cfg.seed)
    wf = WeightFormer(layers, cfg, n_teachers, column_stats(pool_tokens.tokens)).to(device)
    if cfg.compile and device.type == "cuda":
        # The blocks only: one graph for every layer's sequence length (dynamic), while the loop over
        # layers, the embedders and heads stay eager. In place, so the state dict's names do not change.
        for block in wf.blocks:
            block.compile(dynamic=True)
    optimizer = make_optimizer(wf, "adamw", lr=cfg.lr, weight_decay=cfg.weight_decay)
    data = SoftLabels(models, dataset, data_root, tmeta["image_size"], device, cfg.batch_size, cfg.seed,
                      cfg.temperature, checkpoints=teachers, steps=cfg.steps, channels_last=channels_last,
                      split=cfg.distill_on)
    # The architecture run with the predicted weights; train mode: BatchNorm on batch statistics.
    student = copy.deepcopy(models[0]).train()
    objective = MetaTrainObjective(wf, optimizer, student, layers, pool_tokens, data, len(members), n_teachers, cfg, device)
    if cfg.patience > 0:
        objective.val = ValKL(models, dataset, data_root, tmeta["image_size"], device, len(members), n_teachers, cfg,
                         data.memory_format)
    warmup = round(cfg.warmup * cfg.steps)
    history, seconds = fit(
        objective, folder, steps=cfg.steps, log_every=cfg.checkpoint_every, lr=cfg.lr, clip=cfg.clip,
        schedule=lambda s: lr_factor(s, cfg.steps, warmup, "cosine"),
        checkpoint_meta=lambda step: identity,
        describe=lambda r: f"kl {r['kl']:.4f}" + (f" val {r['val_kl']:.4f}" if "val_kl" in r else ""),
        desc=f"weightformer: meta-training {pool} N={n_teachers}", progress=progress,
        monitor="val_kl" if cfg.patience > 0 else None, patience=cfg.patience)
    best = min(history, key=lambda r: r["val_kl"]) if cfg.patience > 0 else history[-1]
    meta = {**identity, "steps": cfg.steps, "steps_run": history[-1]["step"], "best_step": best["step"],
            "history": history, "meta_train_s": seconds,
            "num_classes": tmeta["num_classes"], "image_size": tmeta["image_size"], "in_chans": tmeta["in_chans"],
            "soft_label_cache": data.cached, "layers": len(layers),
            "parameters": sum(p.numel() for p in wf.parameters())}
    folder.finish(wf.state_dict(), meta, history)
    return read_meta(paths(Path(out) / "model")[1])


def load_weightformer(path: str | Path, layers, *, arch: str, n_teachers: int, pool: str,
                      device: torch.device | str = "cpu") -> tuple[WeightFormer, dict[str, Any]]:
    """A meta-trained WeightFormer, refused (one line naming both) if it was meta-trained for another
    architecture, N or pool."""
    meta = read_meta(path)
    for key, want in (("arch", arch), ("n_teachers", n_teachers), ("pool", pool)):
        if meta.get(key) != want:
            raise BenchError(f"weightformer checkpoint {paths(path)[0]} was meta-trained with {key} "
                             f"{meta.get(key)!r}, this job has {key} {want!r}")
    tensors, meta = load_checkpoint(path, expect={"kind": KIND}, map_location=device)
    wf = WeightFormer(layers, WFConfig(**meta["config"]), n_teachers).to(device)
    wf.load_state_dict(tensors)
    return wf.eval(), meta


@torch.no_grad()
def predict_student(wf: WeightFormer, model: nn.Module, arch: str, teacher_models: Sequence[nn.Module]) -> nn.Module:
    """Write the student WeightFormer predicts from `teacher_models` (the first is the anchor) into
    `model` (an instance of the architecture) and return it. Running statistics come from the
    prediction; re-estimate them on training data before evaluating (`bench.weights.averaging`)."""
    pool = TeacherTokens(teacher_models, arch, wf.cfg.align)
    device = next(wf.parameters()).device
    tokens = pool.group(range(len(teacher_models)), device)
    model.load_state_dict(from_tokens(pool.layers, wf(tokens), passthrough(teacher_models[0].state_dict())))
    return model

