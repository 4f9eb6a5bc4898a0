"""weightformer: the student a meta-trained WeightFormer predicts from the group's N teachers.

The prediction (bench.methods.weightformer_student: one forward pass, BatchNorm statistics
re-estimated), then evaluation. `predict_s` is the time from the teachers' weights to a usable
student; `meta_train_s` the one-off cost of meta-training the WeightFormer used, so the report
can say after how many new ensembles it is repaid.

The WeightFormer comes from the sweep's meta_train stage (`job.weightformer`); it must have been
meta-trained on this pool, for this architecture and N, with the options this job names.
"""
from __future__ import annotations

from dataclasses import replace
from typing import Any

import torch

from bench.methods.base import MethodJob
from bench.methods.common import evaluated, load_teachers, predictions
from bench.methods.weightformer_student import predictor
from bench.metrics import agreement, classification_metrics, kl_from
from bench.method_options import WeightFormerOptions


def score(probs: list[torch.Tensor], labels: torch.Tensor) -> dict[str, Any]:
    """The student's (probs[0]) metrics, its anchor teacher's (probs[1]) top-1, the ensemble's
    top-1, KL(ensemble || student) and KL(ensemble || anchor) at T = 1 (`kl_from_ensemble`,
    `anchor_kl_from_ensemble`; meta-training minimises eq. 1 at its own temperature on training
    images): how far the prediction moved from the copy it started at, and towards what; and the
    % of images where student and anchor predict the same class."""
    student_p, teacher_p = probs[0], probs[1:]
    ensemble = torch.stack(teacher_p).mean(0)
    return {**classification_metrics(student_p, labels),
            "anchor_top1": classification_metrics(teacher_p[0], labels)["top1"],
            "ensemble_top1": classification_metrics(ensemble, labels)["top1"],
            "kl_from_ensemble": kl_from(ensemble, student_p),
            "anchor_kl_from_ensemble": kl_from(ensemble, teacher_p[0]),
            "anchor_agreement": agreement(student_p, teacher_p[0])}


def evaluate(job: MethodJob[WeightFormerOptions], student, teachers) -> dict[str, Any]:
    """`score` on val and test (test's KL is `test_kl_from_ensemble`, val's `val_kl_from_ensemble`)."""
    out = evaluated(job, [(student, teachers[0][1])] + teachers, score, [None, *job.teachers])
    out["test_kl_from_ensemble"] = out.pop("kl_from_ensemble")
    out["test_anchor_kl_from_ensemble"] = out.pop("anchor_kl_from_ensemble")
    return out


def partner_agreement(job: MethodJob[WeightFormerOptions], student, teachers, again) -> dict[str, Any]:
    """The students predicted from the same anchor with the job's other partner sets
    (`job.partners`): their mean test agreement with this student (`partner_agreement`, %; near
    100 while `anchor_agreement` is lower: the prediction is a correction of the anchor that ignores
    its partners) and their mean test top-1 (`partner_top1`)."""
    if not job.partners:
        return {}
    mine, labels = predictions(job, [(student, teachers[0][1])], "test")
    agree, top1 = [], []
    for paths, members in zip(job.partners, job.partner_members):
        group = [teachers[0][0]] + [m for m, _ in load_teachers(replace(job, teachers=paths[1:], members=members[1:]))]
        other, _ = again(group)
        probs, _ = predictions(job, [(other, teachers[0][1])], "test")
        agree.append(agreement(mine[0], probs[0]))
        top1.append(classification_metrics(probs[0], labels)["top1"])
    return {"partner_agreement": sum(agree) / len(agree), "partner_top1": sum(top1) / len(top1),
            "partner_sets": len(agree)}


def run(job: MethodJob[WeightFormerOptions]) -> dict[str, Any]:
    student, teachers, fields, again = predictor(job)
    return {**evaluate(job, student, teachers), **partner_agreement(job, student, teachers, again), **fields,
            "train_s": 0.0}
