"""weightformer: the student a meta-trained WeightFormer predicts from the group's N teachers.

The prediction (bench.methods.weightformer_student: one forward pass, BatchNorm statistics
re-estimated), then evaluation. `predict_s` is the time from the teachers' weights to a usable
student; `meta_train_s` the one-off cost of meta-training the WeightFormer used, so the report
can say after how many new ensembles it is repaid.

The WeightFormer comes from the sweep's meta_train stage (`job.weightformer`); it must have been
meta-trained on this pool, for this architecture and N, with the options this job names.
"""
from __future__ import annotations

from typing import Any

import torch

from bench.methods.base import MethodJob
from bench.methods.common import evaluated
from bench.methods.weightformer_student import predict
from bench.metrics import classification_metrics
from bench.options import WeightFormerOptions


def score(probs: list[torch.Tensor], labels: torch.Tensor) -> dict[str, Any]:
    """The student's (probs[0]) metrics, its anchor teacher's (probs[1]) top-1, the ensemble's
    top-1 and KL(ensemble || student) at T = 1 (`kl_from_ensemble`; meta-training minimises eq. 1 at
    its own temperature on training images): how far the prediction moved from the copy it
    started at, and towards what."""
    student_p, teacher_p = probs[0], probs[1:]
    ensemble = torch.stack(teacher_p).mean(0)
    kl = (ensemble * (ensemble.clamp_min(1e-12).log() - student_p.clamp_min(1e-12).log())).sum(1).mean()
    return {**classification_metrics(student_p, labels),
            "anchor_top1": classification_metrics(teacher_p[0], labels)["top1"],
            "ensemble_top1": classification_metrics(ensemble, labels)["top1"],
            "kl_from_ensemble": float(kl)}


def evaluate(job: MethodJob[WeightFormerOptions], student, teachers) -> dict[str, Any]:
    """`score` on val and test (test's KL is `test_kl_from_ensemble`, val's `val_kl_from_ensemble`)."""
    out = evaluated(job, [(student, teachers[0][1])] + teachers, score, [None, *job.teachers])
    out["test_kl_from_ensemble"] = out.pop("kl_from_ensemble")
    return out


def run(job: MethodJob[WeightFormerOptions]) -> dict[str, Any]:
    student, teachers, fields = predict(job)
    return {**evaluate(job, student, teachers), **fields, "train_s": 0.0}
