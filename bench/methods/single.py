"""single: the ensemble's N teachers evaluated one by one; mean, std and each value."""
from __future__ import annotations

import statistics
from typing import Any

from bench.methods.base import MethodJob
from bench.methods.common import load_teachers, test_predictions
from bench.metrics import classification_metrics
from bench.options import NoOptions

METRICS = ("top1", "top5", "nll", "ece")


def run(job: MethodJob[NoOptions]) -> dict[str, Any]:
    probs, labels = test_predictions(job, load_teachers(job))
    each = [classification_metrics(p, labels) for p in probs]
    record: dict[str, Any] = {"infer_forwards": 1, "train_s": 0.0}
    for m in METRICS:
        values = [e[m] for e in each]
        record[m] = statistics.fmean(values)
        record[f"{m}_std"] = statistics.stdev(values) if len(values) > 1 else 0.0
        record[f"{m}_values"] = values
    return record
