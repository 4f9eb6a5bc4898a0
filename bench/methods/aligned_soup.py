"""aligned_soup: permute every teacher's hidden units to match the first (weight matching, as in
Git Re-Basin; `bench.weights.permutation`), average, re-estimate normalisation statistics.

Supported for the conv / linear / norm chains of VGG-11 and ResNet-50 (each residual stream
shares one permutation). ViT is not supported and its runs fail with that reason.
"""
from __future__ import annotations

import time
from typing import Any

from bench.methods.base import MethodJob
from bench.methods.common import evaluate_averaged, load_teachers
from bench.method_options import AlignedSoupOptions
from bench.weights.permutation import align_to_first


def run(job: MethodJob[AlignedSoupOptions]) -> dict[str, Any]:
    teachers = load_teachers(job)
    t0 = time.perf_counter()
    model, meta = teachers[0]
    aligned = align_to_first(job.arch, [m.state_dict() for m, _ in teachers], model=model,
                             max_iter=job.options.max_iter, seed=job.seed)
    align_s = time.perf_counter() - t0
    record = evaluate_averaged(job, model, meta, aligned, job.options.bn_batches)
    return {**record, "train_s": record["train_s"] + align_s, "align_s": align_s}
