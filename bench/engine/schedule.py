"""Learning-rate schedules: the multiplier of the peak rate at each optimizer step, for every loop."""
from __future__ import annotations

import math
from collections.abc import Sequence

from bench.train_config import SCHEDULES


def lr_factor(step: int, total: int, warmup: int, schedule: str, *, milestones: Sequence[int] = (),
              gamma: float = 0.1) -> float:
    """Multiplier of the peak learning rate at optimizer step `step` (0-based) of `total`: a linear
    warm-up over the first `warmup` steps, then `schedule`. `milestones` are the steps at which the
    step schedule multiplies the rate by `gamma`."""
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown schedule {schedule!r}")
    if step < warmup:
        return (step + 1) / warmup
    t = (step - warmup) / max(1, total - warmup)
    if schedule == "cosine":
        return 0.5 * (1 + math.cos(math.pi * t))
    if schedule == "onecycle":  # linear up over the warm-up, then linearly down to zero
        return 1 - t
    if schedule == "step":
        return gamma ** sum(step >= m for m in milestones)
    return 1.0
