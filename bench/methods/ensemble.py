"""ensemble: the average of the N teachers' softmax outputs (not of their logits)."""
from __future__ import annotations

from typing import Any

import torch

from bench.methods.base import MethodJob
from bench.methods.common import evaluated, load_teachers
from bench.metrics import classification_metrics
from bench.method_options import NoOptions


def run(job: MethodJob[NoOptions]) -> dict[str, Any]:
    teachers = load_teachers(job)
    metrics = evaluated(job, teachers, lambda probs, labels: classification_metrics(torch.stack(probs).mean(0), labels),
                        job.teachers)
    return {**metrics, "infer_forwards": len(teachers), "train_s": 0.0}
