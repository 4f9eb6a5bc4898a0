"""Training a student on an ensemble's soft labels: kd, self_distill and weightformer_ft share it.

The student (the teachers' architecture, a seed of the method's; starting where the teachers
started, `student_init`: the pool's pretrained weights in a pretrained pool) trains with the pool's recipe on

    loss = alpha * T^2 * KL(teachers_T || student_T) + (1 - alpha) * CE(student, labels)

where teachers_T is the mean over the N teachers of softmax(logits / T) and student_T is
softmax(student logits / T); T^2 keeps the soft term's gradients on the scale of the hard
term's as T changes. The CE term is plain cross-entropy (no label smoothing), as in Hinton.

The student's run lives in `job.workdir` (an engine run folder, bench.engine.checkpointer: interrupted, it resumes
from its last epoch; finished, it is found). Its config carries the method, T, alpha and the
teacher members in `extra`, so a folder of another distillation is refused, not resumed.

When the training set is held in memory (digits, multiview, CIFAR; not a `.beton`) its
augmentation is a finite set of views, and the teachers' logits on every (sample, view) the run
draws are looked up in a `SoftLabelCache` (bench.engine.soft_labels): filled before the first
step with the pairs earlier jobs on these teachers have not computed, kept beside the teachers.
The student is bit for bit the one online teachers give (on a CPU; see that module). When the
cache would exceed `cache_budget_bytes()` (env BENCH_SOFT_LABEL_CACHE_GB) or the data is not in
memory (ImageNet, FFCV), the teachers run on every batch (one batched forward, `BatchedTeachers`).
`soft_label_s` is what this job spent reading and filling the cache (part of `train_s`).
"""
from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from bench.engine import train
from bench.engine.soft_labels import BatchedTeachers, SoftLabelCache, drawn_views, soft_label_cache
from bench.errors import BenchError
from bench.io import atomic_write_json
from bench.methods.base import MethodJob
from bench.engine import load_model
from bench.methods.common import EVAL_SPLITS, load_teachers, predictions
from bench.metrics import kl_from
from bench.train_config import TrainConfig
from bench.job_env import world

METRICS = ("top1", "top5", "nll", "ece")
# Recipe keys the method sets itself (or that name the run rather than its training).
_OWN_KEYS = {"arch", "dataset", "scale", "seed", "init_seed", "epochs", "extra", "data_root", "device"}


def kd_loss(student_logits: torch.Tensor, teacher_probs: torch.Tensor, labels: torch.Tensor,
            temperature: float, alpha: float) -> torch.Tensor:
    """alpha * T^2 * KL(teacher_probs || softmax(s / T)) + (1 - alpha) * CE(s, labels), batch mean.

    Computed in float64 (a (B, C) tensor: negligible cost), with the teachers' float32
    probabilities renormalised to sum to one: their rounding would otherwise leave a
    first-order KL of ~1e-8 per row, which T^2 multiplies; so the loss is zero to ~1e-12 when
    the student's softmax equals the teachers'. Returned as float32."""
    s = student_logits.double()
    p = teacher_probs.double()
    p = p / p.sum(1, keepdim=True)
    soft = F.kl_div(F.log_softmax(s / temperature, dim=1), p, reduction="batchmean")
    loss = alpha * temperature ** 2 * soft
    if alpha < 1:
        loss = loss + (1 - alpha) * F.cross_entropy(s, labels)
    return loss.float()


class KDCriterion:
    """`criterion(logits, images, labels, indices, views)` for the engine's training run: the
    teachers' mean soft labels of `images` (looked up by (sample, view) in the cache when there is
    one) against the student's `logits`. Pure: frozen eval-mode teachers; the cache is filled
    once, in `prepare`, before the first step."""

    def __init__(self, teachers: BatchedTeachers, temperature: float, alpha: float,
                 cache: SoftLabelCache | None = None) -> None:
        self.teachers, self.temperature, self.alpha, self.cache = teachers, temperature, alpha, cache
        self.prepared = False

    def prepare(self, train_loader, steps: int) -> None:
        self.prepared = True
        if self.cache is not None:
            self.cache.fill(*drawn_views(train_loader, steps))

    def soft_labels(self, images: torch.Tensor, indices: torch.Tensor, views: torch.Tensor) -> torch.Tensor:
        if self.cache is not None:
            return self.cache.mean(indices, views, self.temperature)
        return self.teachers.mean_soft_labels(images, self.temperature)

    def __call__(self, logits: torch.Tensor, images: torch.Tensor, labels: torch.Tensor,
                 indices: torch.Tensor, views: torch.Tensor) -> torch.Tensor:
        return kd_loss(logits, self.soft_labels(images, indices, views), labels, self.temperature, self.alpha)


def student_init(job: MethodJob[Any], overrides: Mapping[str, Any] | None = None) -> str:
    """Where a student starts, as its record says: `checkpoint` -- weights the method hands it
    (`init_from`: WeightFormer's predicted student); `pretrained` -- the pretrained weights the
    pool's members were fine-tuned from, with a new head from the student's seed (a student of
    teachers fine-tuned from one network starts where they started, or distillation would be
    judged by a handicap of its start); `base` -- the same at tiny scale, where the members were
    fine-tuned from the base network the suite pretrained; `scratch` -- a fresh network from its seed."""
    if (overrides or {}).get("init_from"):
        return "checkpoint"
    if job.base is not None:
        return "base"
    return "pretrained" if job.init == "pretrained" else "scratch"


def student_config(job: MethodJob[Any], seed: int, epochs: int | None, extra: dict[str, Any],
                   **overrides: Any) -> TrainConfig:
    """The pool's recipe for a student of the teachers' architecture with its own seed, starting as
    `student_init` says; `overrides`: TrainConfig fields the method sets (a fine-tuning run's start,
    lr, data fraction). The pool's `pretrained_weights` come with the recipe: they name the weights
    a pretrained student loads and the architecture any student of the pool is built as."""
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    recipe = {k: v for k, v in job.recipe.items() if k in fields and k not in _OWN_KEYS}
    recipe.update(overrides)
    # Set only when true, so a scratch student's config (and its run folder) is the one it always was.
    init = student_init(job, overrides)
    start = {"pretrained": True} if init == "pretrained" else {}
    if init == "base":  # the base's weights are a location; the run names the base by its id
        recipe["init_from"], extra = str(job.base), {**extra, "base": job.base_id}
    cfg = TrainConfig(arch=job.arch, dataset=job.dataset, scale=job.scale, seed=seed,
                      data_root=job.data_root, device=job.device, epochs=epochs, extra=extra, **start, **recipe)
    return shortened_schedule(cfg, job.recipe.get("epochs"))


def shortened_schedule(cfg: TrainConfig, recipe_epochs: int | None = None) -> TrainConfig:
    """A student trained for fewer epochs than its pool's step schedule spans keeps the schedule's
    shape: each milestone scaled by its epochs over the recipe's (CIFAR's 150/180/210 of 240 become
    25/30/35 of 40), where left as they were its lr would never decay. Schedules it reaches (and
    cosine or one-cycle ones, every tiny recipe's) are unchanged."""
    run = cfg.resolved()
    if run.schedule != "step" or not run.milestones or run.milestones[-1] < run.epochs:
        return cfg
    # The span the milestones were set for: the pool recipe's epochs, else the data set's default.
    span = recipe_epochs or dataclasses.replace(cfg, epochs=None).resolved().epochs
    span = span if span > run.milestones[-1] else run.milestones[-1] + 1
    scaled = sorted({max(1, round(m * run.epochs / span)) for m in run.milestones})
    return dataclasses.replace(cfg, milestones=tuple(m for m in scaled if m < run.epochs))


def on(split: str) -> dict[str, str]:
    """The recipe override that trains a student on `split` (none for the training split, so the
    students trained before transfer splits existed keep their folders)."""
    return {} if split == "train" else {"train_split": split}


def kl_from_group(job: MethodJob[Any], workdir: Path, loaded=None) -> dict[str, float]:
    """KL(the group's ensemble || the student) at T = 1 on val and test (`val_kl_from_ensemble`,
    `test_kl_from_ensemble`), as WeightFormer's records have it: how close each student came to
    the ensemble it imitates. The teachers' predictions are the files earlier jobs kept."""
    loaded = loaded or load_teachers(job)
    weights = workdir / "model.safetensors"
    student = load_model(weights, job.torch_device(), arch=job.arch)
    out = {}
    for split in EVAL_SPLITS:  # the student's as its training's final evaluation kept them
        probs, _ = predictions(job, [student, *loaded], split, [weights, *job.teachers])
        out[f"{split}_kl_from_ensemble"] = kl_from(torch.stack(probs[1:]).mean(0), probs[0])
    return out


def distill(job: MethodJob[Any], *, student_seed: int, temperature: float, alpha: float, epochs: int | None,
            n_teachers: int | None = None, overrides: Mapping[str, Any] | None = None,
            extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Train (or resume, or find) in job.workdir the student of the job's teachers (its first
    `n_teachers`; None: all) at `temperature` and `alpha` for `epochs` (None: the pool recipe's);
    return the record fields. `overrides` (TrainConfig fields) replace the recipe's (a fine-tuning
    run's start, lr, data fraction); `extra` joins the student's identity (the start's sha256)."""
    if job.workdir is None:
        raise BenchError(f"{job.method} trains a student: its job needs a workdir (the student's run folder)")
    epochs = job.recipe.get("epochs") if epochs is None else epochs
    teacher_job = job if n_teachers is None else dataclasses.replace(
        job, teachers=list(job.teachers[:n_teachers]), members=list(job.members[:n_teachers]))
    loaded = load_teachers(teacher_job)
    # One vmapped forward of all N teachers on a GPU; on a CPU the plain loop over teachers is
    # faster (measured: vmap 1.2-2.9x slower for the tiny models), so it is used there.
    teachers = BatchedTeachers([m for m, _ in loaded],
                               mode="vmap" if job.torch_device().type == "cuda" else "loop")
    meta = loaded[0][1]
    cfg = student_config(job, student_seed, epochs, {
        "method": job.method, "temperature": temperature, "alpha": alpha,
        "teacher_members": list(teacher_job.members), **(extra or {})}, **(overrides or {}))
    resolved = cfg.resolved()
    for key, mine in (("dataset", job.dataset), ("scale", job.scale), ("image_size", resolved.image_size)):
        if meta[key] != mine:
            raise BenchError(f"{job.method}: the student would have {key} {mine!r} but the teachers "
                             f"have {meta[key]!r}")

    workdir = Path(job.workdir)
    cache = None if resolved.beton_train is not None else soft_label_cache(
        teachers, teacher_job.teachers, job.dataset, root=job.data_root, image_size=resolved.image_size,
        num_classes=meta["num_classes"], device=job.torch_device(), split=resolved.train_split)
    criterion = KDCriterion(teachers, temperature, alpha, cache)
    out = train(cfg, workdir, criterion=criterion, progress=False)
    timing = workdir / "soft_labels.json"
    if criterion.prepared and world()[0] == 0:  # kept so that a finished run found later reports the same cost
        atomic_write_json(timing, {"seconds": cache.seconds if cache else 0.0,
                                   "computed": cache.computed if cache else 0})
    cache_s = json.loads(timing.read_text())["seconds"] if timing.exists() else 0.0

    record: dict[str, Any] = {k: out["metrics"][k] for m in METRICS for k in (m, f"val_{m}")}
    record.update(kl_from_group(job, workdir, loaded if n_teachers is None else None))
    record.update({
        # The student's training (its forwards, backwards and the teachers' forwards on its
        # batches) plus reading and filling the soft-label cache (entries earlier jobs left in the
        # teachers' files cost only their reading); the teachers' own training is not counted.
        "train_s": out["train_s"] + cache_s,
        "soft_label_s": cache_s,
        "infer_forwards": 1,
        "student_seed": student_seed,
        "student_init": student_init(job, overrides),
        "temperature": temperature,
        "alpha": alpha,
        "epochs": out["epochs"],
        "soft_label_cache": cache is not None,
        "teacher_forward": teachers.mode,
        "distill_on": resolved.train_split,
    })
    return record
