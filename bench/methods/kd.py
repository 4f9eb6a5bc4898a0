"""kd: Hinton et al.'s knowledge distillation of a fresh student from the ensemble's soft labels.

The student (the teachers' architecture, its own seed 10_000 + job.seed, so never a teacher's)
trains with the pool's recipe on alpha * T^2 * KL(teachers_T || student_T) + (1 - alpha) * CE,
teachers_T the mean of the N teachers' softmax at temperature T (bench.methods.distillation).
"""
from __future__ import annotations

from typing import Any

from bench.methods.base import MethodJob
from bench.methods.distillation import distill, on
from bench.method_options import DistillOptions

SEED_OFFSET = 10_000


def run(job: MethodJob[DistillOptions]) -> dict[str, Any]:
    o = job.options
    return distill(job, student_seed=SEED_OFFSET + job.seed, temperature=o.temperature, alpha=o.alpha,
                   epochs=o.epochs, overrides=on(o.distill_on))
