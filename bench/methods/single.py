"""single: the ensemble's N teachers evaluated one by one; mean, std and each value."""
from __future__ import annotations

import statistics
from typing import Any

from bench.methods.base import MethodJob
from bench.methods.common import evaluated, load_teachers
from bench.metrics import classification_metrics
from bench.method_options import NoOptions

METRICS = ("top1", "top5", "nll", "ece")


def score(probs, labels) -> dict[str, Any]:
    each = [classification_metrics(p, labels) for p in probs]
    out: dict[str, Any] = {}
    for m in METRICS:
        values = [e[m] for e in each]
        out[m] = statistics.fmean(values)
        out[f"{m}_std"] = statistics.stdev(values) if len(values) > 1 else 0.0
        out[f"{m}_values"] = values
    return out


def run(job: MethodJob[NoOptions]) -> dict[str, Any]:
    return {**evaluated(job, load_teachers(job), score, job.teachers), "infer_forwards": 1, "train_s": 0.0}
