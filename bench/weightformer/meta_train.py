"""Meta-training a WeightFormer on a teacher pool, and predicting a student with it.

One meta-training job per (pool, N, WFConfig) (`bench.plan.MetaTrainStage`). Each step draws a
group of N teachers from the pool's meta-train part (its order too: the first is the anchor),
predicts the group's student, and takes one AdamW step on eq. 1 (+ shift consistency) over a
batch of training images; warm-up + cosine learning rate, gradient clipping. The draws come from
generators seeded by (seed, step), so a resumed run makes the same steps as an uninterrupted one.

Soft labels: when the data set trains without augmentation and fits in memory (digits, multiview),
every teacher's softened outputs on the whole training split are computed once, so a group's
soft labels cost no teacher forward pass; otherwise the group's teachers run on each (augmented)
batch.

`align: weight_matching`: every teacher is permuted onto the group's anchor (the one weight
matching of `bench.methods.alignment`, as `aligned_soup` uses) before it is tokenised, so that row
i of every teacher means the same unit; each (anchor, member) permutation is computed once.

Files, in the job's folder (teachers/<pool>/weightformer-<run id>/): `checkpoint*` while it runs
(every `checkpoint_every` steps: model, optimiser, step, history), then `model.safetensors` +
`model.json` (the pool, N, arch, config, cost and loss history). A NaN or inf loss stops the job
at once naming the step and the term; the last good checkpoint is kept.
"""
from __future__ import annotations

import copy
import dataclasses
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

from bench.checkpoint import (load_checkpoint, optimizer_from_tensors, optimizer_to_tensors, paths, read_meta,
                              remove_checkpoint, save_checkpoint)
from bench.data import dataset_spec
from bench.data.loaders import make_loader
from bench.errors import BenchError
from bench.methods import alignment
from bench.train import load_model, param_groups
from bench.weightformer.config import WFConfig
from bench.weightformer.losses import ensemble_kl, shift_consistency, student_logits
from bench.weightformer.model import WeightFormer, column_stats
from bench.weightformer.tokens import from_tokens, passthrough, to_tokens, weight_layers

KIND = "weightformer"


class MetaTrainError(BenchError):
    pass


def _generator(seed: int, step: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed * 1_000_003 + step)


class TeacherTokens:
    """The pool's teachers as tokens, optionally aligned onto an anchor (cached per pair).

    The standardisation statistics are taken over the unaligned tokens: alignment permutes rows
    (which per-column statistics do not see) and input columns (which they do, slightly)."""

    def __init__(self, models: Sequence[nn.Module], arch: str, align: str) -> None:
        self.models, self.arch, self.align = list(models), arch, align
        if align == "weight_matching" and arch not in alignment.SUPPORTED:
            raise BenchError(f"weightformer: align weight_matching supports {', '.join(alignment.SUPPORTED)}, "
                             f"not {arch}")
        self.layers = weight_layers(self.models[0], arch)
        # Kept on the CPU (weight matching runs there; a step moves its group's tokens to the
        # device): an aligned copy per (anchor, member) pair would not fit beside a GPU's models.
        self.state_dicts = [{k: v.detach().cpu() for k, v in m.state_dict().items()} for m in self.models]
        self.tokens = [to_tokens(self.layers, sd) for sd in self.state_dicts]
        self.spec = alignment.permutation_spec(self.models[0], arch) if align == "weight_matching" else None
        self._aligned: dict[tuple[int, int], list[torch.Tensor]] = {}

    def member(self, k: int, anchor: int) -> list[torch.Tensor]:
        if self.spec is None or k == anchor:
            return self.tokens[k]
        if (anchor, k) not in self._aligned:
            perms = alignment.weight_matching(self.spec, self.state_dicts[anchor], self.state_dicts[k])
            self._aligned[anchor, k] = to_tokens(self.layers, alignment.apply_permutation(
                self.spec, self.state_dicts[k], perms))
        return self._aligned[anchor, k]

    def group(self, members: Sequence[int]) -> list[torch.Tensor]:
        """Per layer (N, n_l, w_l): the members in the given order, the first being the anchor."""
        per_member = [self.member(k, members[0]) for k in members]
        return [torch.stack(ts) for ts in zip(*per_member)]


class SoftLabels:
    """Batches of training images with the mean softened outputs of any group of the teachers."""

    def __init__(self, models: Sequence[nn.Module], dataset: str, root: str | None, image_size: int,
                 device: torch.device, batch_size: int, seed: int, temperature: float) -> None:
        self.models, self.temperature, self.batch_size, self.seed = list(models), temperature, batch_size, seed
        spec = dataset_spec(dataset)
        self.cached = spec.augment == "none" and spec.in_memory
        common = dict(root=root, image_size=image_size, device=device)
        if self.cached:
            loader = make_loader(dataset, "train", batch_size=512, train=False, **common)
            batches = [x for x, _ in loader]
            self.images = torch.cat(batches)
            with torch.no_grad():
                self.probs = torch.stack([torch.cat([self._soft(m, x) for x in batches]) for m in self.models])
        else:
            self.loader = make_loader(dataset, "train", batch_size=batch_size, train=True, seed=seed, **common)
            self._iter, self._at = None, -1

    def _soft(self, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        return F.softmax(model.eval()(x).float() / self.temperature, dim=1)

    def batch(self, step: int, group: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        if self.cached:
            n = len(self.images)
            idx = torch.randperm(n, generator=_generator(self.seed, step))[:min(self.batch_size, n)]
            idx = idx.to(self.images.device)
            return self.images[idx], self.probs[list(group)][:, idx].mean(0)
        per_epoch = len(self.loader)
        epoch, i = divmod(step, per_epoch)
        if self._iter is None or self._at != step - 1 or i == 0:
            self.loader.set_epoch(epoch)
            self._iter = iter(self.loader)
            for _ in range(i):  # a resumed run continues inside its epoch
                next(self._iter)
        self._at = step
        x, _ = next(self._iter)
        with torch.no_grad():
            probs = torch.stack([self._soft(self.models[k], x) for k in group]).mean(0)
        return x, probs


def lr_at(step: int, cfg: WFConfig) -> float:
    warmup = round(cfg.warmup * cfg.steps)
    if step < warmup:
        return cfg.lr * (step + 1) / warmup
    return cfg.lr * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, cfg.steps - warmup)))


def _finite(value: torch.Tensor, step: int, term: str) -> None:
    if not torch.isfinite(value).all():
        raise MetaTrainError(f"weightformer: meta-training stopped at step {step}: the {term} loss is "
                             f"{value.item()} (the last good checkpoint is kept)")


def meta_train(out: str | Path, *, teachers: Sequence[Path], members: Sequence[int], arch: str, dataset: str,
               scale: str, pool: str, n_teachers: int, cfg: WFConfig, data_root: str | None = None,
               device: torch.device | str = "cpu", progress: bool | None = None) -> dict[str, Any]:
    """Meta-train (or resume, or find finished) the WeightFormer in `out`; return its sidecar.

    `teachers`: the checkpoints of the pool's meta-train members `members` (same order)."""
    out, device = Path(out), torch.device(device)
    final, ckpt = out / "model", out / "checkpoint"
    identity = {"kind": KIND, "arch": arch, "dataset": dataset, "scale": scale, "pool": pool,
                "n_teachers": n_teachers, "members": list(members), "config": dataclasses.asdict(cfg)}
    if paths(final)[1].exists():
        meta = read_meta(final)
        if {k: meta.get(k) for k in identity} != identity:
            raise BenchError(f"{out} holds a finished WeightFormer of another pool or config")
        return meta
    if n_teachers > len(members):
        raise BenchError(f"weightformer: N = {n_teachers} but the pool {pool} has {len(members)} meta-train members")
    loaded = [load_model(p, device, arch=arch) for p in teachers]
    models = [m.eval().requires_grad_(False) for m, _ in loaded]
    tmeta = loaded[0][1]
    pool_tokens = TeacherTokens(models, arch, cfg.align)
    layers = pool_tokens.layers
    torch.manual_seed(cfg.seed)
    wf = WeightFormer(layers, cfg, n_teachers, column_stats(pool_tokens.tokens)).to(device)
    opt = torch.optim.AdamW(param_groups(wf, cfg.weight_decay), lr=cfg.lr)
    data = SoftLabels(models, dataset, data_root, tmeta["image_size"], device, cfg.batch_size, cfg.seed,
                      cfg.temperature)
    # The architecture run with the predicted weights; train mode: BatchNorm on batch statistics.
    student = copy.deepcopy(models[0]).train()
    extra = passthrough(student.state_dict())

    start, history, spent = 0, [], 0.0
    if paths(ckpt)[1].exists():
        tensors, meta = load_checkpoint(ckpt, expect={"kind": KIND})
        if {k: meta.get(k) for k in identity} != identity:
            raise BenchError(f"{out} holds a meta-training checkpoint of another pool or config")
        wf.load_state_dict({k[len("model/"):]: v for k, v in tensors.items() if k.startswith("model/")})
        optimizer_from_tensors(opt, tensors, meta["optimizer"])
        start, history, spent = meta["step"], meta["history"], meta["meta_train_s"]
    out.mkdir(parents=True, exist_ok=True)

    def save(step: int) -> None:
        tensors, opt_meta = optimizer_to_tensors(opt)
        tensors.update({f"model/{k}": v for k, v in wf.state_dict().items()})
        save_checkpoint(ckpt, tensors, {**identity, "step": step, "history": history, "meta_train_s": spent,
                                        "optimizer": opt_meta}, versioned=True)

    bar = tqdm(range(start, cfg.steps), initial=start, total=cfg.steps, desc=f"meta-train {pool} N={n_teachers}",
               unit="step", disable=None if progress is None else not progress)
    window: list[tuple[float, float]] = []
    part = list(range(len(members)))
    for step in bar:
        t0 = time.perf_counter()
        order = torch.randperm(len(part), generator=_generator(cfg.seed + 7919, step))[:n_teachers].tolist()
        for group in opt.param_groups:
            group["lr"] = lr_at(step, cfg)
        x, probs = data.batch(step, order)
        tokens = [t.to(device) for t in pool_tokens.group(order)]
        fresh = lambda: {k: v.clone() for k, v in extra.items()}  # BatchNorm counts in place
        # bf16 autocast on GPUs (the paper-scale models); the losses are computed in float32.
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            logits = student_logits(student, layers, wf(tokens), fresh(), x)
            kl = ensemble_kl(logits, probs, cfg.temperature)
            _finite(kl, step, "KL (eq. 1)")
            loss, shift = kl, torch.zeros(())
            if cfg.shift_weight > 0:
                shift = shift_consistency(lambda g: student_logits(student, layers, wf(g), fresh(), x), tokens,
                                          logits, cfg.temperature)
                _finite(shift, step, "shift-consistency")
                loss = loss + cfg.shift_weight * shift
        opt.zero_grad(set_to_none=True)
        loss.backward()
        norm = nn.utils.clip_grad_norm_(wf.parameters(), cfg.clip if cfg.clip > 0 else float("inf"))
        _finite(norm, step, "gradient norm of the")
        opt.step()
        spent += time.perf_counter() - t0
        window.append((kl.item(), float(shift)))
        bar.set_postfix(kl=f"{kl.item():.4f}")
        if (step + 1) % cfg.checkpoint_every == 0 or step + 1 == cfg.steps:
            history.append({"step": step + 1, "kl": sum(k for k, _ in window) / len(window),
                            "shift": sum(s for _, s in window) / len(window), "meta_train_s": spent})
            window = []
            if bar.disable:
                print(f"step {step + 1}/{cfg.steps} kl {history[-1]['kl']:.4f}", flush=True)
            save(step + 1)
    meta = {**identity, "steps": cfg.steps, "history": history, "meta_train_s": spent,
            "num_classes": tmeta["num_classes"], "image_size": tmeta["image_size"], "in_chans": tmeta["in_chans"],
            "soft_label_cache": data.cached, "layers": len(layers),
            "parameters": sum(p.numel() for p in wf.parameters())}
    save_checkpoint(final, wf.state_dict(), meta)
    remove_checkpoint(ckpt)
    return read_meta(final)


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
    prediction; re-estimate them on training data before evaluating (`bench.methods.soup`)."""
    pool = TeacherTokens(teacher_models, arch, wf.cfg.align)
    device = next(wf.parameters()).device
    tokens = [t.to(device) for t in pool.group(range(len(teacher_models)))]
    model.load_state_dict(from_tokens(pool.layers, wf(tokens), passthrough(teacher_models[0].state_dict())))
    return model

