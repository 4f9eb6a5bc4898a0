"""self_distill: Allen-Zhu & Li's self-distillation -- a fresh student of the same architecture
trained on ONE teacher's soft labels (the first of the job's teachers) plus the true labels.

Same loss, options and defaults as `kd` (bench.methods.distillation), with the student's own
seed 20_000 + job.seed (never a teacher's, nor a kd student's).
"""
from __future__ import annotations

from typing import Any

from bench.methods.base import MethodJob
from bench.methods.distillation import distill, on
from bench.method_options import DistillOptions

SEED_OFFSET = 20_000


def run(job: MethodJob[DistillOptions]) -> dict[str, Any]:
    o = job.options
    record = distill(job, student_seed=SEED_OFFSET + job.seed, temperature=o.temperature, alpha=o.alpha,
                     epochs=o.epochs, n_teachers=1, overrides=on(o.distill_on))
    return {**record, "teacher_member": job.members[0]}
