"""soup: the uniform average of the N teachers' weights, with normalisation statistics
re-estimated on training data (averaged running statistics do not describe the averaged net).

For `shared` / `pretrained` pools this is a cheap, strong control; for `scratch` pools the
members' hidden units are in unrelated orders and the soup collapses towards chance, which the
table shows as it is (`aligned_soup` permutes the members first).
"""
from __future__ import annotations

from typing import Any

from bench.methods.base import MethodJob
from bench.methods.common import evaluate_averaged, load_teachers
from bench.method_options import SoupOptions


def run(job: MethodJob[SoupOptions]) -> dict[str, Any]:
    teachers = load_teachers(job)
    sds = [m.state_dict() for m, _ in teachers]
    return evaluate_averaged(job, *teachers[0], sds, job.options.bn_batches)
