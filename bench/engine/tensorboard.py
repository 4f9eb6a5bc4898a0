"""A run's log as TensorBoard event files too, where `tensorboard` is installed (`pip install
.[tensorboard]`): `tensorboard --logdir teachers/` (members, bases, meta-trainings) or
`--logdir results/` (students) shows every run's curves live, as researchers read them on a
cluster. Without the package nothing changes: log.jsonl stays the record.

The events mirror log.jsonl: written whole from its rows at every log point (a resumed run's
rows are the ones its checkpoint kept, so no step appears twice), in `<run folder>/tensorboard/`.
One scalar per numeric field of a row, at the row's `step` (else its `epoch`).
"""
from __future__ import annotations

import functools
import math
import shutil
from pathlib import Path
from typing import Any

SUBFOLDER = "tensorboard"
POSITION = ("step", "epoch")  # a row's x: its step, else its epoch; never a curve of its own


@functools.lru_cache(maxsize=1)
def summary_writer():
    """torch's SummaryWriter class, or None where the tensorboard package is not installed."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter


def write_events(folder: Path, history: list[dict[str, Any]]) -> Path | None:
    """`folder/tensorboard/`: one event file holding every row of `history`; None (and nothing
    written) without tensorboard."""
    writer_class = summary_writer()
    if writer_class is None:
        return None
    out = Path(folder) / SUBFOLDER
    shutil.rmtree(out, ignore_errors=True)  # the earlier log points' file: this one holds them all
    writer = writer_class(log_dir=str(out))
    try:
        for i, row in enumerate(history):
            x = next((int(row[k]) for k in POSITION if isinstance(row.get(k), (int, float))), i)
            for key, value in row.items():
                if key not in POSITION and isinstance(value, (int, float)) and not isinstance(value, bool) \
                        and math.isfinite(value):
                    writer.add_scalar(key, value, x)
    finally:
        writer.close()
    return out
