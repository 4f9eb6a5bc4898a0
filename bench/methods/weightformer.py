"""weightformer: the student a meta-trained WeightFormer predicts from the group's N teachers.

One forward pass of WeightFormer (after aligning the teachers onto the anchor, when its config
says `align: weight_matching`), then the student's BatchNorm statistics re-estimated on training
batches (the paper's re-estimation; ViT has none), then evaluation. `predict_s` is the time from
the teachers' weights to a usable student (alignment + forward pass + re-estimation);
`meta_train_s` the one-off cost of meta-training the WeightFormer used, so the report can say
after how many new ensembles it is repaid.

The WeightFormer comes from the sweep's meta_train stage (`job.weightformer`); it must have been
meta-trained on this pool, for this architecture and N, with the options this job names.
"""
from __future__ import annotations

import copy
import dataclasses
import time
from typing import Any

import torch

from bench.data.loaders import make_loader
from bench.errors import BenchError
from bench.methods.common import load_teachers, test_predictions
from bench.methods.soup import BN_BATCHES
from bench.metrics import classification_metrics
from bench.weightformer.config import FIELDS, wf_config
from bench.weightformer.meta_train import load_weightformer, predict_student
from bench.weights.averaging import reestimate_norm_stats
from bench.weights.tokens import weight_layers

OPTIONS: tuple[str, ...] = (*FIELDS, "bn_batches")


def meta_train_options(options: dict[str, Any], scale: str) -> dict[str, Any]:
    """The resolved WeightFormer config a job's options ask for: what its meta-training depends on."""
    return dataclasses.asdict(wf_config(options, scale))


def predict(job) -> tuple[torch.nn.Module, list, dict[str, Any]]:
    """(student with re-estimated statistics, the loaded teachers, record fields)."""
    if job.weightformer is None:
        raise BenchError(f"{job.method} needs a meta-trained WeightFormer: run it through bench.sweep "
                         f"(its meta_train stage makes one)")
    cfg = wf_config(job.options, job.scale)
    teachers = load_teachers(job)
    models = [m for m, _ in teachers]
    meta = teachers[0][1]
    device = job.torch_device()
    layers = weight_layers(models[0], job.arch)
    wf, wf_meta = load_weightformer(job.weightformer, layers, arch=job.arch, n_teachers=len(models),
                                    pool=job.pool, device=device)
    if wf_meta["config"] != dataclasses.asdict(cfg):
        raise BenchError(f"{job.method}: the WeightFormer at {job.weightformer} was meta-trained with "
                         f"another config than this job's options")
    train_batches = make_loader(job.dataset, "train", batch_size=128, train=False, root=job.data_root,
                                image_size=meta["image_size"], device=device)
    bn_batches = job.options.get("bn_batches", BN_BATCHES)
    if isinstance(bn_batches, bool) or not isinstance(bn_batches, int) or bn_batches < 1:
        raise BenchError(f"{job.method}: bn_batches must be a whole number >= 1, got {bn_batches!r}")
    synchronize = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    synchronize()
    t0 = time.perf_counter()
    student = predict_student(wf, copy.deepcopy(models[0]), job.arch, models)
    used = reestimate_norm_stats(student, train_batches, bn_batches)
    synchronize()
    predict_s = time.perf_counter() - t0
    fields = {"predict_s": predict_s, "meta_train_s": wf_meta["meta_train_s"], "bn_batches": used,
              "infer_forwards": 1, "wf_n_teachers": len(models),
              **{f"wf_{k}": v for k, v in dataclasses.asdict(cfg).items()}}
    return student, teachers, fields


def evaluate(job, student, teachers) -> dict[str, Any]:
    """The student's metrics, plus its anchor teacher's top-1, the ensemble's top-1 and
    KL(ensemble || student) on the test split at T = 1 (`test_kl_from_ensemble`; meta-training
    minimises eq. 1 at its own temperature on training images): how far the prediction moved
    from the copy it started at, and towards what."""
    probs, labels = test_predictions(job, [(student, teachers[0][1])] + teachers)
    student_p, teacher_p = probs[0], probs[1:]
    ensemble = torch.stack(teacher_p).mean(0)
    kl = (ensemble * (ensemble.clamp_min(1e-12).log() - student_p.clamp_min(1e-12).log())).sum(1).mean()
    return {**classification_metrics(student_p, labels),
            "anchor_top1": classification_metrics(teacher_p[0], labels)["top1"],
            "ensemble_top1": classification_metrics(ensemble, labels)["top1"],
            "test_kl_from_ensemble": float(kl)}


def run(job) -> dict[str, Any]:
    student, teachers, fields = predict(job)
    return {**evaluate(job, student, teachers), **fields, "train_s": 0.0}
