"""gemm_peak: fp32 against bf16 matrix products on the CPU, and the fp32 GEMM rate other
benchmarks report a fraction of."""
from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Callable

import torch

from bench.perf.harness import Row, paired, sizes


def gemm_gflops(n: int, dtype: torch.dtype, seconds: float = 0.3) -> Callable[[], float]:
    """GFLOP/s of n x n x n matrix products in `dtype` (2 n^3 FLOPs each), as many as fit in
    `seconds` (at least one: a CPU without bf16 instructions emulates bf16 slowly)."""
    gen = torch.Generator().manual_seed(0)
    a, b = (torch.randn(n, n, generator=gen).to(dtype) for _ in range(2))
    out = torch.empty(n, n, dtype=dtype)

    def measure() -> float:
        calls, t0 = 0, time.perf_counter()
        while calls == 0 or time.perf_counter() - t0 < seconds:
            torch.mm(a, b, out=out)
            calls += 1
        return calls * 2 * n ** 3 / 1e9 / (time.perf_counter() - t0)

    return measure


def gemm_peak_rows(quick: bool, repeat: int) -> list[Row]:
    n = sizes(quick).gemm_n
    # bf16 at a quarter of the size: where the CPU has no bf16 instructions one call takes seconds.
    row = paired("gemm_peak", ("fp32", gemm_gflops(n, torch.float32)), ("bf16", gemm_gflops(n // 2, torch.bfloat16)),
                 unit="GFLOP/s", repeat=repeat, settings={"n_fp32": n, "n_bf16": n // 2,
                                                         "threads": torch.get_num_threads(),
                                                         "cpu_bf16_instructions": cpu_has_bf16()})
    return [row]


def cpu_has_bf16() -> bool | None:
    """Whether the CPU advertises bf16 matrix instructions (avx512_bf16 / amx_bf16); None off Linux."""
    try:
        flags = Path("/proc/cpuinfo").read_text().split()
    except OSError:
        return None
    return "avx512_bf16" in flags or "amx_bf16" in flags


def gemm_peak_fp32(quick: bool = True) -> float:
    """The fp32 GEMM rate other benchmarks report a fraction of (median of three)."""
    measure = gemm_gflops(sizes(quick).gemm_n, torch.float32)
    measure()
    return statistics.median(measure() for _ in range(3))

