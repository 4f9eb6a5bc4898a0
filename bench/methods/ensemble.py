"""ensemble: the average of the N teachers' softmax outputs (not of their logits)."""
from __future__ import annotations

from typing import Any

import torch

from bench.methods.base import MethodJob
from bench.methods.common import load_teachers, test_predictions
from bench.metrics import classification_metrics
from bench.options import NoOptions


def run(job: MethodJob[NoOptions]) -> dict[str, Any]:
    probs, labels = test_predictions(job, load_teachers(job))
    mean = torch.stack(probs).mean(0)
    return {**classification_metrics(mean, labels), "infer_forwards": len(probs), "train_s": 0.0}
