"""aligned_soup: permute every teacher's hidden units to match the first (weight matching, as in
Git Re-Basin; `bench.weights.permutation`), average, re-estimate normalisation statistics.

Supported for the conv / linear / norm chains of VGG-11 and ResNet-50 (each residual stream
shares one permutation). ViT is not supported and its runs fail with that reason.
"""
from __future__ import annotations

import time
from typing import Any

from bench.methods.common import load_teachers
from bench.methods.soup import BN_BATCHES, evaluate_averaged
from bench.weights.permutation import align_to_first

OPTIONS: tuple[str, ...] = ("bn_batches", "max_iter")


def run(job) -> dict[str, Any]:
    teachers = load_teachers(job)
    t0 = time.perf_counter()
    model, meta = teachers[0]
    aligned = align_to_first(job.arch, [m.state_dict() for m, _ in teachers], model=model,
                             max_iter=int(job.options.get("max_iter", 100)), seed=job.seed)
    align_s = time.perf_counter() - t0
    record = evaluate_averaged(job, model, meta, aligned, int(job.options.get("bn_batches", BN_BATCHES)))
    return {**record, "train_s": record["train_s"] + align_s, "align_s": align_s}
