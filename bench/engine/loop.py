"""The one training loop: supervised runs, distillation and meta-training all step through it.

An `Objective` says what one step computes (`loss(step)`: named scalar terms, "loss" the one optimised;
its data draw a pure function of the step, so a resumed run makes the same steps) and what a log
point records (`log_row`: evaluation, for instance). The loop owns the rest: the schedule, the
finite check of every term (a NaN or inf stops the run naming the step and the term, before the
optimizer takes that step, so the last checkpoint is the last good state), clipping, the clock,
checkpoints and the log (`RunFolder`), the progress bar, and early stopping: with a `monitor` (a
log row's key, lower is better) it keeps the best weights (in every checkpoint, so a resumed run
keeps them too), stops `patience` log points after the last improvement, and ends with the best
weights in the model.
"""
from __future__ import annotations

import datetime as dt
import time
from typing import Any, Callable, Protocol

import torch
import torch.nn as nn
from tqdm import tqdm

from bench.engine.checkpointer import RunFolder
from bench.engine.devices import grad_scaler
from bench.engine.optim import set_lr
from bench.errors import BenchError
from bench.job_env import capped_steps


class NonFiniteLoss(BenchError):
    pass


class Objective(Protocol):
    model: nn.Module                 # the module whose weights the folder saves
    optimizer: torch.optim.Optimizer
    labels: dict[str, str]           # term -> its name in messages ("kl" -> "KL (eq. 1)")

    def loss(self, step: int) -> dict[str, torch.Tensor]: ...
    def log_row(self, step: int, means: dict[str, torch.Tensor], seconds: float) -> dict[str, Any]: ...


def batches_per_epoch(loader) -> int:
    """len(loader), refused when nought: a split smaller than one batch (the last partial batch is
    dropped) would otherwise fail as a division by zero, or loop forever."""
    n = len(loader)
    if n == 0:
        size = getattr(loader, "batch_size", None)
        raise BenchError(f"the training split holds fewer images than one batch{f' ({size})' if size else ''}; "
                         f"lower the batch size or use more data")
    return n


class StepBatches:
    """The batch of step s from a loader of epochs (`len(loader)` steps each) for a loop that may
    start at any step: a new epoch, or a jump (a resume), restarts the loader at that epoch (its
    order and augmentation) and skips ahead, so a resumed run sees the batches it would have seen."""

    def __init__(self, loader) -> None:
        self.loader, self.per_epoch = loader, batches_per_epoch(loader)
        self._batches, self._next = None, -1

    def __call__(self, step: int) -> tuple[Any, bool]:
        """(the batch, whether the loader was restarted for it)."""
        epoch, i = divmod(step, self.per_epoch)
        restarted = self._batches is None or self._next != step or i == 0
        if restarted:
            if hasattr(self.loader, "set_epoch"):
                self.loader.set_epoch(epoch)
            self._batches = iter(self.loader)
            for _ in range(i):
                next(self._batches)
        self._next = step + 1
        return next(self._batches), restarted


def check_finite(value: torch.Tensor, step: int, term: str, what: str) -> None:
    if not torch.isfinite(value).all():
        raise NonFiniteLoss(f"{what}: stopped at step {step}: the {term} loss is {value.item()} "
                            f"(the last good checkpoint is kept)")


def fit(objective: Objective, folder: RunFolder, *, steps: int, log_every: int, lr: float, schedule: Callable[[int], float],
        clip: float | None = None, checkpoint_meta: Callable[[int], dict[str, Any]] = lambda step: {},
        describe: Callable[[dict[str, Any]], str] = str, desc: str = "", progress: bool | None = None,
        quiet: bool = False, monitor: str | None = None, patience: int = 0) -> tuple[list[dict[str, Any]], float]:
    """Run (or resume) steps [0, steps); log, checkpoint every `log_every` steps and at the end.
    Returns the history (one row per log point) and the seconds spent in steps. With `monitor` and
    `patience` > 0 the run stops early (the module's docstring) and the model ends at its best log point.
    In a smoke run (bench.job_env.smoke_steps) every loop stops after that many steps, logging at the last."""
    steps = capped_steps(steps)
    resumed = folder.resume(objective.model, objective.optimizer)
    start, history, seconds = (0, [], 0.0) if resumed is None else (
        resumed["step"], resumed["history"], resumed["seconds"])
    early = monitor is not None and patience > 0
    best = {k: v.clone() for k, v in folder.kept.items()} if early and resumed is not None else {}
    if early and _stale(history, monitor, patience):  # a resumed run that had already stopped
        start = steps
    bar = tqdm(range(start, steps), initial=start, total=steps, desc=desc, unit="step",
               disable=True if quiet else (None if progress is None else not progress))
    # fp16 GPUs scale the loss (bench.engine.devices.precision); a resumed run starts its scale
    # afresh, which the scaler re-finds within a few steps.
    scaler = grad_scaler(next(objective.model.parameters()).device)
    sums: dict[str, torch.Tensor] = {}
    since = start  # the first step the running sums cover
    for step in bar:
        t0 = time.perf_counter()
        set_lr(objective.optimizer, lr * schedule(step))
        terms = objective.loss(step)
        for name, value in terms.items():
            check_finite(value, step, objective.labels.get(name, name), desc)
        objective.optimizer.zero_grad(set_to_none=True)
        scaler.scale(terms["loss"]).backward()
        if clip is not None:
            scaler.unscale_(objective.optimizer)  # clip the true gradients, not the scaled ones
            norm = nn.utils.clip_grad_norm_(objective.model.parameters(), clip if clip > 0 else float("inf"))
            if not scaler.is_enabled():  # a finite loss can still give inf gradients; under fp16 the
                check_finite(norm, step, "gradient norm of the", desc)  # scaler skips that step instead
        scaler.step(objective.optimizer)
        scaler.update()
        seconds += time.perf_counter() - t0
        for name, value in terms.items():
            sums[name] = sums.get(name, 0) + value.detach()
        if (step + 1) % log_every == 0 or step + 1 == steps:
            row = objective.log_row(step + 1, {k: v / (step + 1 - since) for k, v in sums.items()}, seconds)
            row.update(lr=objective.optimizer.param_groups[0]["lr"],
                       time=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"))
            history.append(row)
            sums, since = {}, step + 1
            if early and _best_row(history, monitor) is row:
                best = {k: v.detach().clone() for k, v in objective.model.state_dict().items()}
            folder.save(objective.model, objective.optimizer, {**checkpoint_meta(step + 1), "step": step + 1,
                                                     "history": history, "seconds": seconds},
                        **({"keep": best} if early else {}))
            bar.set_postfix_str(describe(row))
            if bar.disable and not quiet:
                print(f"step {step + 1}/{steps} {describe(row)}", flush=True)
            if early and _stale(history, monitor, patience):
                break
    bar.close()
    if early and best:
        objective.model.load_state_dict(best)
    return history, seconds


def _best_row(history: list[dict[str, Any]], monitor: str) -> dict[str, Any]:
    """The first log row with the lowest `monitor`."""
    return min(history, key=lambda r: r[monitor])


def _stale(history: list[dict[str, Any]], monitor: str, patience: int) -> bool:
    """Whether `patience` log points have passed since the best one."""
    return bool(history) and len(history) - 1 - history.index(_best_row(history, monitor)) >= patience
