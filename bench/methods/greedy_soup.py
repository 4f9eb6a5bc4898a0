"""greedy_soup: model soups' greedy soup (Wortsman et al. 2022): the N teachers sorted by val top-1,
the best first; each next one joins if the uniform average of the members kept so far and it
(BatchNorm statistics re-estimated on training data, as `soup` does) scores at least the current
soup's val top-1, else it is left out. A control of the fine-tuned regime: unlike the uniform soup
it cannot fall below its best member on val (a member outside the others' basin is left out), and
on model soups' pool it beat the best single model by about a point. Only val decides; test is read
once, for the record. Records `soup_kept` (how many joined), `soup_members` (their member ids in the
order they joined), `member_val_top1` (each teacher's, in the group's order) and `soup_trace` (each
member tried: the val top-1 of the soup with it, and whether it was kept).
"""
from __future__ import annotations

import copy
import time
from typing import Any

from bench.methods.base import MethodJob
from bench.methods.common import evaluated, load_teachers, predictions, reestimated
from bench.metrics import classification_metrics
from bench.method_options import GreedySoupOptions
from bench.weights.averaging import average_state_dicts


def _top1(probs, labels) -> dict[str, Any]:
    return classification_metrics(probs[0], labels)


def run(job: MethodJob[GreedySoupOptions]) -> dict[str, Any]:
    teachers = load_teachers(job)
    t0 = time.perf_counter()
    meta = teachers[0][1]
    # The members' own val top-1 from the predictions their training kept (common.predictions).
    probs, labels = predictions(job, teachers, "val", job.teachers)
    member_top1 = [classification_metrics(p, labels)["top1"] for p in probs]
    order = sorted(range(len(teachers)), key=lambda k: -member_top1[k])  # stable: ties keep the group's order
    kept, best = [order[0]], member_top1[order[0]]
    trace = [{"member": job.members[order[0]], "val_top1": best, "kept": True}]
    # The soup starts as the best member as it is (its own statistics): a soup of one re-estimated
    # could score below it, and the greedy soup is never below its best member.
    best_state, used = None, 0
    sds = [m.state_dict() for m, _ in teachers]
    soup = copy.deepcopy(teachers[0][0])  # the candidates' model; the teachers stay as loaded
    for k in order[1:]:
        soup.load_state_dict(average_state_dicts([sds[i] for i in (*kept, k)]))
        batches = reestimated(job, soup, meta, job.options.bn_batches)
        top1 = _top1(*predictions(job, [(soup, meta)], "val"))["top1"]
        trace.append({"member": job.members[k], "val_top1": top1, "kept": top1 >= best})
        if top1 >= best:
            kept.append(k)
            best, used = top1, batches
            best_state = {name: t.detach().clone() for name, t in soup.state_dict().items()}
    made_s = time.perf_counter() - t0  # the search is the making; the final evaluation is not counted
    if best_state is None:
        student, checkpoints = teachers[kept[0]], [job.teachers[kept[0]]]  # its kept predictions
    else:
        soup.load_state_dict(best_state)
        student, checkpoints = (soup, meta), None
    metrics = evaluated(job, [student], _top1, checkpoints)
    return {**metrics, "infer_forwards": 1, "train_s": made_s, "bn_batches": used,
            "soup_kept": len(kept), "soup_members": [job.members[k] for k in kept],
            "member_val_top1": member_top1, "soup_trace": trace}
