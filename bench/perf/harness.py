"""The benchmark harness: the row every benchmark yields (`Row`), the work they measure (`Sizes`:
FULL, or QUICK with --quick), and `paired`, which measures a baseline and a contender alternately.
"""
from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field
from typing import Any, Callable


@dataclass(frozen=True)
class Row:
    name: str
    ratio: float
    baseline: str
    contender: str
    unit: str
    median: float
    min: float
    max: float
    settings: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Sizes:
    """The work the benchmarks measure: FULL, or QUICK with --quick (within 5 minutes on 2 cores)."""
    gemm_n: int  # gemm_peak (and the fp32 rate teacher_pool_training reports against): n x n fp32; bf16 n/2
    pool_archs: tuple[str, ...]  # teacher_pool_training: architectures, members per stack, steps, batch
    pool_members: tuple[int, ...]
    pool_steps: int
    pool_batch: int
    meta_archs: tuple[str, ...]  # meta_train_step: the tiny steps timed (WFConfig overrides in meta_options)
    meta_options: dict[str, Any]
    meta_count_archs: tuple[str, ...]  # ... and the steps counted on fake tensors, at meta_count_scale
    meta_count_scale: str
    loader: tuple[int, int, int, int, int]  # classes, images per class, stored px, image size, batch
    kd_archs: tuple[str, ...]  # kd_student: architectures, the teachers' epochs, the students'
    kd_teacher_epochs: int
    kd_epochs: int
    step_archs: tuple[str, ...]  # training_step: architectures, steps per measurement
    step_steps: int


ALL_ARCHS = ("vgg11", "resnet50", "vit_b32")
FULL = Sizes(gemm_n=2048, pool_archs=("vgg11", "resnet50"), pool_members=(8, 16), pool_steps=10, pool_batch=64,
             meta_archs=ALL_ARCHS, meta_options={}, meta_count_archs=("resnet50", "vit_b32"), meta_count_scale="paper",
             loader=(10, 200, 160, 128, 100), kd_archs=("vgg11", "resnet50"), kd_teacher_epochs=2, kd_epochs=2,
             step_archs=ALL_ARCHS, step_steps=20)
QUICK = Sizes(gemm_n=1024, pool_archs=("vgg11",), pool_members=(8, 16), pool_steps=5, pool_batch=64,
              meta_archs=("vgg11",), meta_options={}, meta_count_archs=("resnet50",), meta_count_scale="paper",
              loader=(10, 40, 96, 64, 50), kd_archs=("vgg11",), kd_teacher_epochs=1, kd_epochs=1,
              step_archs=ALL_ARCHS, step_steps=5)


def sizes(quick: bool) -> Sizes:
    return QUICK if quick else FULL


def paired(name: str, baseline: tuple[str, Callable[[], float]], contender: tuple[str, Callable[[], float]],
           *, unit: str, repeat: int, settings: dict[str, Any] | None = None, warmup: bool = True) -> Row:
    """Measure two callables alternately (`repeat` pairs, after one warm-up call of each unless
    `warmup` is False); each returns its measurement in `unit`, higher is better."""
    (base_label, base_fn), (cont_label, cont_fn) = baseline, contender
    if warmup:  # first-call allocations, kernel selection, lazy caches
        base_fn(), cont_fn()
    base, cont = [], []
    for _ in range(repeat):
        base.append(base_fn())
        cont.append(cont_fn())
    ratios = [c / b for b, c in zip(base, cont)]
    return Row(name, statistics.median(ratios), base_label, cont_label, unit, statistics.median(cont),
               min(cont), max(cont), {**(settings or {}), "baseline_median": statistics.median(base),
                                      "ratio_min": min(ratios), "ratio_max": max(ratios), "repeat": repeat})


def rate(work: Callable[[], float]) -> Callable[[], float]:
    """A callable returning `work()`'s items per second (work returns the items it processed)."""
    def measure() -> float:
        t0 = time.perf_counter()
        items = work()
        return items / (time.perf_counter() - t0)
    return measure

