"""A run folder: what every training loop writes, and how it resumes.

    config.json          the run's identity (its resolved, flat config), written when it starts
    log.jsonl            one line per log point (loss terms, metrics, lr, seconds, time), rewritten
                         whole with every checkpoint so the two always agree
    checkpoint.json      model + optimizer + progress after the last log point (the sidecar names
    checkpoint-<h>.*     its weights file, so a kill between two writes leaves the previous pair)
    model.json/.safetensors  the final weights; their sidecar holds the run's metadata
    tensorboard/         the log as TensorBoard events, where tensorboard is installed
                         (bench.engine.tensorboard)

A folder holding another run (another config) is refused, never resumed or overwritten. In a
data-parallel job every rank reads the folder; only the writer (rank 0) writes it.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn as nn

from bench.checkpoint import (load_checkpoint, optimizer_from_tensors, optimizer_to_tensors, paths, read_meta,
                              remove_checkpoint, save_checkpoint)
from bench.engine.tensorboard import write_events
from bench.errors import BenchError
from bench.io import atomic_write_json, atomic_write_lines


class RunFolder:
    def __init__(self, out: str | Path, config: dict[str, Any], *, what: str = "run",
                 matches: Callable[[dict[str, Any]], bool], expect: dict[str, Any] | None = None,
                 writer: bool = True, sync: Callable[[], None] = lambda: None) -> None:
        """`config`: what config.json holds; `matches(sidecar)`: whether a checkpoint or final sidecar
        found in the folder is this run's; `expect`: sidecar fields `load_checkpoint` verifies first;
        `sync()`: waits for every rank once each has read the checkpoint (none may replace it before)."""
        self.out, self.config, self.what = Path(out), config, what
        self.matches, self.expect, self.writer, self.sync = matches, expect, writer, sync
        self.final, self.checkpoint = self.out / "model", self.out / "checkpoint"
        self.kept: dict[str, torch.Tensor] = {}  # what a resumed checkpoint kept beside the model (`save`'s `keep`)

    def _refuse(self, kind: str) -> BenchError:
        return BenchError(f"{self.out} holds {kind} with another config; choose another folder")

    def finished(self) -> dict[str, Any] | None:
        """The final sidecar when this run is done, else None."""
        if not paths(self.final)[1].exists():
            return None
        meta = read_meta(self.final)
        if not self.matches(meta):
            raise self._refuse(f"a finished {self.what}")
        return meta

    def resume(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any] | None:
        """Load the last checkpoint into `model` and `optimizer` and return its sidecar; None (and
        the folder started, config.json written) when there is none."""
        if not paths(self.checkpoint)[1].exists():
            if self.writer:
                self.out.mkdir(parents=True, exist_ok=True)
                atomic_write_json(self.out / "config.json", self.config)
            self.sync()
            return None
        tensors, meta = load_checkpoint(self.checkpoint, expect=self.expect)
        if not self.matches(meta):
            raise self._refuse(f"a {self.what} checkpoint")
        if not {"step", "seconds", "history"} <= meta.keys():
            raise BenchError(f"{paths(self.checkpoint)[1]} holds no step count (an older checkpoint format); "
                             f"delete it to restart this {self.what}")
        model.load_state_dict({k[len("model/"):]: v for k, v in tensors.items() if k.startswith("model/")})
        self.kept = {k[len("kept/"):]: v for k, v in tensors.items() if k.startswith("kept/")}
        optimizer_from_tensors(optimizer, tensors, meta["optimizer"])
        self.sync()
        return meta

    def save(self, model: nn.Module, optimizer: torch.optim.Optimizer, meta: dict[str, Any],
             keep: dict[str, torch.Tensor] | None = None) -> None:
        """A new checkpoint (versioned: the sidecar's rename is the commit point) and its log;
        `keep`: tensors saved beside the model (the best weights so far) that `resume` puts in `kept`."""
        if not self.writer:
            return
        tensors, opt_meta = optimizer_to_tensors(optimizer)
        tensors.update({f"model/{k}": v for k, v in model.state_dict().items()})
        tensors.update({f"kept/{k}": v for k, v in (keep or {}).items()})
        save_checkpoint(self.checkpoint, tensors, {**meta, "optimizer": opt_meta}, versioned=True)
        atomic_write_lines(self.out / "log.jsonl", meta["history"])
        write_events(self.out, meta["history"])

    def finish(self, weights: dict[str, torch.Tensor], meta: dict[str, Any], history: list[dict[str, Any]]) -> None:
        """The final weights; they supersede the resume point."""
        if not self.writer:
            return
        save_checkpoint(self.final, weights, meta)
        atomic_write_lines(self.out / "log.jsonl", history)
        write_events(self.out, history)
        remove_checkpoint(self.checkpoint)
