"""self_distill: Allen-Zhu & Li's self-distillation -- a fresh student of the same architecture
trained on ONE teacher's soft labels (the first of the job's teachers) plus the true labels.

Same loss, options and defaults as `kd` (see bench/methods/kd.py, whose code this reuses), with
the student's own seed 20_000 + job.seed (never a teacher's, nor a kd student's).
"""
from __future__ import annotations

import dataclasses
from typing import Any

from bench.methods import kd

OPTIONS: tuple[str, ...] = kd.OPTIONS
SEED_OFFSET = 20_000


def run(job) -> dict[str, Any]:
    one = dataclasses.replace(job, teachers=list(job.teachers[:1]), members=list(job.members[:1]))
    record = kd.distill(job, student_seed=SEED_OFFSET + job.seed, teacher_job=one)
    return {**record, "teacher_member": one.members[0]}
