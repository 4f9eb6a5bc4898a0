"""soup: the uniform average of the N teachers' weights, with normalisation statistics
re-estimated on training data (averaged running statistics do not describe the averaged net).

For `shared` / `pretrained` pools this is a cheap, strong control; for `scratch` pools the
members' hidden units are in unrelated orders and the soup collapses towards chance, which the
table shows as it is (`aligned_soup` permutes the members first).
"""
from __future__ import annotations

import time
from typing import Any

import torch
import torch.nn as nn

from bench.data.loaders import make_loader
from bench.methods.common import load_teachers, test_predictions
from bench.metrics import classification_metrics
from bench.weights.averaging import average_state_dicts, reestimate_norm_stats

OPTIONS: tuple[str, ...] = ("bn_batches",)
BN_BATCHES = 50  # training batches (no augmentation) used to re-estimate BatchNorm statistics


def evaluate_averaged(job, model: nn.Module, meta: dict[str, Any], sds: list[dict[str, torch.Tensor]],
                      bn_batches: int) -> dict[str, Any]:
    """Load the average of `sds` into `model`, re-estimate its norm statistics, evaluate."""
    t0 = time.perf_counter()
    model.load_state_dict(average_state_dicts(sds))
    device = job.torch_device()
    train_batches = make_loader(job.dataset, "train", batch_size=128, train=False, root=job.data_root,
                                image_size=meta["image_size"], device=device)
    used = reestimate_norm_stats(model, train_batches, bn_batches)
    made_s = time.perf_counter() - t0  # making the student ends here; its evaluation is not counted
    (probs,), labels = test_predictions(job, [(model, meta)])
    return {**classification_metrics(probs, labels), "infer_forwards": 1, "train_s": made_s, "bn_batches": used}


def run(job) -> dict[str, Any]:
    teachers = load_teachers(job)
    sds = [m.state_dict() for m, _ in teachers]
    return evaluate_averaged(job, *teachers[0], sds, int(job.options.get("bn_batches", BN_BATCHES)))
