"""One run of a job at a time, whoever started it: two sweeps of one grid, a SLURM submission
beside a local driver, a requeued task beside its first life.

A lock is a file created with O_EXCL (atomic on local and NFS v3+ file systems) holding its
owner (host, pid, SLURM job id, start time); a thread touches it every HEARTBEAT_S seconds while
the job runs. A lock is stale, and taken over, when its process is gone (on this host, the pid says so
whatever SLURM says), when it is another host's lock of this SLURM job from before a requeue,
when its SLURM job has left the queue, or when nobody has touched it for STALE_S seconds (a host
that died). A live lock is waited on, never
broken; the waiter then finds the job done and does nothing, or runs it. Where the locks live:
`bench.stages.lock_paths` (per teacher and WeightFormer under `teachers/.locks/`, per method
run under `results/<grid>/locks/`).
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bench.io import pid_alive

HEARTBEAT_S = 30.0
STALE_S = 600.0
POLL_S = 5.0


def owner() -> dict[str, Any]:
    return {"host": socket.gethostname(), "pid": os.getpid(), "slurm_job": os.environ.get("SLURM_JOB_ID"),
            "started": time.time()}


def _read(path: Path) -> dict[str, Any] | None:
    try:
        held = json.loads(path.read_text())
        return held if isinstance(held, dict) else None
    except (OSError, ValueError, UnicodeDecodeError):
        return None  # half written or gone: judged by its age below


def _slurm_job_queued(job: str) -> bool | None:
    """Whether SLURM still knows `job` as pending or running; None where squeue cannot tell."""
    if not shutil.which("squeue"):
        return None
    try:
        out = subprocess.run(["squeue", "-h", "-j", job, "-o", "%T"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return False if "Invalid job id" in out.stderr else None
    return bool(out.stdout.strip())


def stale(path: Path, held: dict[str, Any] | None, me: dict[str, Any]) -> str | None:
    """Why the lock at `path` (owner `held`) no longer protects a run, or None while it does."""
    try:
        age = time.time() - path.stat().st_mtime
    except FileNotFoundError:
        return "released"
    if age > STALE_S:
        return f"untouched for {age:.0f} s"
    if held is None:
        return None  # being written this instant
    if held.get("host") == me["host"]:  # this host can tell: the owner runs or not, whatever SLURM says
        return None if pid_alive(held.get("pid")) else f"process {held.get('pid')} is gone"
    if held.get("slurm_job") and held.get("slurm_job") == me.get("slurm_job"):
        return "this SLURM job's own, from before a requeue"
    if held.get("slurm_job") and _slurm_job_queued(str(held["slurm_job"])) is False:
        return f"SLURM job {held['slurm_job']} has ended"
    return None


def _create(path: Path, me: dict[str, Any]) -> bool:
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w") as f:
        json.dump(me, f)
    return True


@contextlib.contextmanager
def locked(paths: list[Path], label: str) -> Iterator[None]:
    """Hold every lock of `paths` (taken in sorted order, so two holders of overlapping sets never
    wait on each other), waiting while a live owner holds one."""
    me = owner()
    taken: list[Path] = []
    stop = threading.Event()
    try:
        for path in sorted(set(paths)):
            path.parent.mkdir(parents=True, exist_ok=True)
            said = False
            while not _create(path, me):
                held = _read(path)
                why = stale(path, held, me)
                if why == "released":  # its owner finished between our two looks
                    continue
                if why:
                    _remove_stale(path, held, me)
                    print(f"{label}: took over a stale lock ({why})", file=sys.stderr, flush=True)
                    continue
                if not said:
                    print(f"{label}: waiting: another run holds it ({_describe(held)})", file=sys.stderr, flush=True)
                    said = True
                time.sleep(POLL_S)
            taken.append(path)
        threading.Thread(target=_heartbeat, args=(taken, stop), daemon=True).start()
        yield
    finally:
        stop.set()
        for path in taken:
            if _read(path) == me:  # still ours (not taken over after a stall)
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()


def _remove_stale(path: Path, held: dict[str, Any] | None, me: dict[str, Any]) -> None:
    """Move the stale lock aside and delete it. Two takers may judge one lock stale at once: the
    first moves it and creates its own; the second's rename then moves the first's live lock, sees
    an owner other than the one it judged, and links it back (link fails rather than overwrite)."""
    aside = path.with_name(f"{path.name}.stale-{me['host']}-{me['pid']}")
    try:
        os.rename(path, aside)
    except FileNotFoundError:
        return
    moved = _read(aside)
    if held is not None and moved != held:
        with contextlib.suppress(FileExistsError, FileNotFoundError):
            os.link(aside, path)
    with contextlib.suppress(FileNotFoundError):
        aside.unlink()


def _heartbeat(paths: list[Path], stop: threading.Event) -> None:
    while not stop.wait(HEARTBEAT_S):
        for path in paths:
            with contextlib.suppress(OSError):
                os.utime(path)


def _describe(held: dict[str, Any] | None) -> str:
    if not held:
        return "owner unknown"
    slurm = f", SLURM job {held['slurm_job']}" if held.get("slurm_job") else ""
    return f"pid {held.get('pid')} on {held.get('host')}{slurm}"
