"""Run records: one flat JSON object per run, and one long pandas table of all of them.

A record is written once, atomically, to `<records dir>/<run_id>.json`; `run_id` is a short
hash of the run's spec, so the same spec always finds its own record and two specs never share
one. Metrics are last-epoch values (top1/top5/ece in percent, nll in nats).
"""
from __future__ import annotations

import datetime
import functools
import hashlib
import json
import math
import os
import platform
import socket
import subprocess
import warnings
from pathlib import Path
from typing import Any, Mapping

import pandas as pd

from bench.io import atomic_write_json
from bench.job_env import precision

REQUIRED_KEYS = ("run_id", "grid", "stage", "method", "arch", "dataset", "scale", "seed",
                 "n_teachers", "status", "top1", "top5", "nll", "ece", "wall_s")
STATUSES = ("done", "failed")
# A record's layout version. Records without one are schema 1; a record of a later schema (written
# by a newer ensemble-bench) is skipped with a warning naming it rather than read as this one.
SCHEMA = 1


# A spec's `where` entries (at any depth) say where its inputs are, not what the run is: the data's
# location (bench.jobs.teacher_spec). They are left out of the run id, so moving the data finds the
# same runs.
LOCATION = "where"


def _identity(spec: Any) -> Any:
    if isinstance(spec, Mapping):
        return {k: _identity(v) for k, v in spec.items() if k != LOCATION}
    if isinstance(spec, (list, tuple)):
        return [_identity(v) for v in spec]
    return spec


def run_id(spec: Mapping[str, Any]) -> str:
    """12 hex digits of the sha256 of the spec's canonical JSON (key order does not matter), less
    its `where` entries (LOCATION)."""
    canonical = json.dumps(_identity(spec), sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()[:12]


def _flat(value: Any) -> Any:
    # Records stay flat and JSON-native: lists of numbers are kept, nested mappings refused.
    if isinstance(value, Mapping):
        raise TypeError("records are flat: nested mappings are not allowed")
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def make_record(**fields: Any) -> dict[str, Any]:
    """A record with every required key present (metrics None when the run failed)."""
    record = {key: None for key in REQUIRED_KEYS}
    record.update({k: _flat(v) for k, v in fields.items()})
    missing = [k for k in ("run_id", "status") if record[k] is None]
    if missing:
        raise ValueError(f"record lacks {', '.join(missing)}")
    if record["status"] not in STATUSES:
        raise ValueError(f"record status {record['status']!r}; valid: {', '.join(STATUSES)}")
    return record


@functools.lru_cache(maxsize=1)
def _machine() -> dict[str, Any]:
    """Where records are made: the code's commit (`-dirty` with uncommitted changes), the host and
    its hardware (GPU name, else the CPU model, and the cores the job may use), and the number
    format its forwards compute in (bench.job_env.precision)."""
    root = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(["git", "-C", str(root), "describe", "--always", "--dirty", "--abbrev=12"],
                                capture_output=True, text=True, timeout=10).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        commit = None
    import torch

    if torch.cuda.is_available():
        hardware = f"{torch.cuda.device_count()} x {torch.cuda.get_device_name(0)}"
    else:
        cpu = platform.processor() or platform.machine()
        try:
            cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                       if line.startswith("model name"))
        except (OSError, StopIteration):
            pass
        hardware = f"{len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else os.cpu_count()} CPU cores ({cpu})"
    mode = precision(torch.device("cuda")) if torch.cuda.is_available() else "fp32"
    return {"commit": commit, "host": socket.gethostname(), "hardware": hardware, "precision": mode}


def write_record(records_dir: str | Path, record: Mapping[str, Any]) -> Path:
    """Write a record, stamped with its provenance (commit, host, hardware, finished: UTC time) and,
    in a smoke run, its step cap (`smoke_steps`: the report marks such records as no result)."""
    from bench.job_env import smoke_steps

    stamp = {**_machine(), "finished": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
    if smoke_steps() is not None:
        stamp["smoke_steps"] = smoke_steps()
    record = make_record(**{"schema": SCHEMA, **stamp, **record})
    return atomic_write_json(Path(records_dir) / f"{record['run_id']}.json", record)


def read_record(path: str | Path) -> dict[str, Any] | None:
    try:
        record = json.loads(Path(path).read_text())
        if not isinstance(record, dict) or "run_id" not in record:
            raise ValueError("not a record object")
        schema = record.get("schema", 1)
        if not isinstance(schema, int) or isinstance(schema, bool) or not 1 <= schema <= SCHEMA:
            raise ValueError(f"record schema {schema!r}; this ensemble-bench reads schema 1 to {SCHEMA} "
                             f"(written by another version of it)")
        return record
    except (OSError, ValueError, UnicodeDecodeError) as err:
        warnings.warn(f"skipping unreadable record {path}: {err}", stacklevel=2)
        return None


def record_files(root: str | Path) -> list[Path]:
    """Every `records/*.json` below `root` (or in it, when `root` is a records folder)."""
    root = Path(root)
    if root.name == "records":
        return sorted(root.glob("*.json"))
    return sorted(p for p in root.rglob("*.json") if p.parent.name == "records")


def load_records(root: str | Path) -> pd.DataFrame:
    """One long table, a row per run; unreadable files are skipped with a warning naming them."""
    rows = [r for r in map(read_record, record_files(root)) if r is not None]
    table = pd.DataFrame(rows, columns=None if rows else list(REQUIRED_KEYS))
    for key in REQUIRED_KEYS:
        if key not in table:
            table[key] = None
    return table
