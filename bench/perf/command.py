"""Performance benchmarks: `python -m bench.perf [--quick] [--only NAME ...] [--out FILE.json]`.

The command: every benchmark by name (`BENCHMARKS`, in the order they run), the printed table and
the JSON rows (see `bench.perf` for a row's fields). A benchmark that cannot run here says why
and the others still run.
"""
from __future__ import annotations

import argparse
import time
from dataclasses import asdict
from pathlib import Path
from typing import Callable

import torch

from bench.errors import BenchError, choose, cli
from bench.paths import project_root
from bench.perf.gemm import gemm_peak_rows
from bench.perf.harness import Row
from bench.perf.loader import loader_rows
from bench.perf.records import time_to_student_rows, tiny_main_table_rows
from bench.perf.training import kd_student_rows, meta_train_step_rows, teacher_pool_rows, training_step_rows

# The committed reference run tiny_main_table compares with (wherever the command runs from).
REFERENCE_RECORDS = project_root() / "results" / "main_table" / "records"

# name -> rows(quick, repeat, args): the order is the order they run in.
BENCHMARKS: dict[str, Callable[[bool, int, argparse.Namespace], list[Row]]] = {
    "gemm_peak": lambda quick, repeat, a: gemm_peak_rows(quick, repeat),
    "teacher_pool_training": lambda quick, repeat, a: teacher_pool_rows(quick, repeat),
    "meta_train_step": lambda quick, repeat, a: meta_train_step_rows(quick, repeat),
    "loader": lambda quick, repeat, a: loader_rows(quick, repeat),
    "kd_student": lambda quick, repeat, a: kd_student_rows(quick, repeat),
    "training_step": lambda quick, repeat, a: training_step_rows(quick, repeat),
    "time_to_student": lambda quick, repeat, a: time_to_student_rows(Path(a.results_root) / "main_table" / "records"),
    "tiny_main_table": lambda quick, repeat, a: tiny_main_table_rows(Path(a.results_root) / "main_table" / "records",
                                                                     REFERENCE_RECORDS),
}


def table(rows: list[Row]) -> str:
    import pandas as pd

    frame = pd.DataFrame([{"name": r.name, "baseline": r.baseline, "contender": r.contender,
                           "ratio": f"{r.ratio:.2f} [{r.settings.get('ratio_min', r.ratio):.2f}, "
                                    f"{r.settings.get('ratio_max', r.ratio):.2f}]",
                           "contender median": f"{r.median:,.1f} {r.unit}",
                           "baseline median": f"{r.settings.get('baseline_median', float('nan')):,.1f} {r.unit}"}
                          for r in rows])
    return frame.to_string(index=False)


@cli
def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.perf", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="smaller work and 3 repeats (within 5 minutes on 2 cores)")
    p.add_argument("--only", nargs="+", metavar="NAME", help=f"benchmarks to run (default: all): {', '.join(BENCHMARKS)}")
    p.add_argument("--out", metavar="FILE.json", help="write the rows as JSON")
    p.add_argument("--repeat", type=int, default=None, help="pairs measured per benchmark (default 5, quick 3)")
    p.add_argument("--results-root", default="results/demo",
                   help="the tiny main_table run tiny_main_table reads (default: make demo's)")
    a = p.parse_args(argv)
    if a.repeat is not None and a.repeat < 1:
        raise BenchError(f"--repeat must be at least 1, got {a.repeat}")
    selected = [choose("benchmark", n, BENCHMARKS) for n in (a.only or BENCHMARKS)]
    repeat = a.repeat or (3 if a.quick else 5)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device cpu")
    rows, failed = [], {}
    for name in selected:
        t0 = time.perf_counter()
        try:
            got = BENCHMARKS[name](a.quick, repeat, a)
        except BenchError as err:  # a benchmark that cannot run here says why; the others still run
            failed[name] = str(err)
            print(f"{name}: not run: {err}")
            continue
        finally:
            if a.out:  # after every benchmark: a crash later loses none of the rows measured
                write_rows(Path(a.out), rows, failed)
        rows += got
        print(f"{name} ({time.perf_counter() - t0:.0f} s)\n{table(got)}\n", flush=True)
    if a.out:
        write_rows(Path(a.out), rows, failed)
        print(f"wrote {a.out}")


def write_rows(out: Path, rows: list[Row], failed: dict[str, str]) -> None:
    from bench.io import atomic_write_json

    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out, {"rows": [asdict(r) for r in rows], "not_run": failed,
                            "torch": torch.__version__, "threads": torch.get_num_threads()})

