"""Atomic file writes: a file is either absent or whole, never half-written.

A write goes to `.<name>.<host>.<pid>.<random>.tmp` beside its target and is renamed into place;
a process killed before the rename leaves that file behind, which `remove_stale_temps` (run by
every sweep before it plans) deletes once its writer is known to be gone.
"""
from __future__ import annotations

import json
import os
import re
import socket
import tempfile
import time
from pathlib import Path
from typing import Any

HOST = socket.gethostname()
TEMP = re.compile(r"^\.(?P<name>.+)\.(?P<host>[^.]+)\.(?P<pid>\d+)\.[^.]+\.tmp$")
FOREIGN_TEMP_S = 24 * 3600  # another host's temp file: its writer's fate is unknown; old enough is gone


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.{HOST.split('.')[0]}.{os.getpid()}.",
                               suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)  # atomic on POSIX within one file system
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    return atomic_write_bytes(path, (json.dumps(obj, indent=1, sort_keys=True) + "\n").encode())


def atomic_write_lines(path: str | os.PathLike, rows: list[dict]) -> Path:
    """A JSON-lines file rewritten whole, so it always matches the state it describes."""
    return atomic_write_bytes(path, "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows).encode())


def pid_alive(pid: Any) -> bool:
    """Whether a process of this host has the pid `pid` (another user's counts; None or <= 0: no)."""
    if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def remove_stale_temps(root: str | os.PathLike) -> list[Path]:
    """Delete the temporary files under `root` whose writer is gone (a process of this host that no
    longer runs; another host's after FOREIGN_TEMP_S); returns them. A live writer's are kept."""
    root, removed = Path(root), []
    if not root.is_dir():
        return removed
    for path in root.rglob(".*.tmp"):
        m = TEMP.match(path.name)
        if not m or not path.is_file():
            continue
        mine = m["host"] == HOST.split(".")[0]
        try:
            gone = not pid_alive(int(m["pid"])) if mine else time.time() - path.stat().st_mtime > FOREIGN_TEMP_S
        except FileNotFoundError:
            continue
        if gone:
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed
