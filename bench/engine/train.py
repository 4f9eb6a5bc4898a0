"""One training run of a network on a data set: `train(cfg, out)` (CLI: `python -m bench.train`).

The run folder (`RunFolder`) holds `config.json`, `log.jsonl` (a line per epoch), `checkpoint.*`
(after the last finished epoch) and, once finished, `model.*` (its sidecar carries the metrics).
Calling it again resumes from the checkpoint, or returns at once when `model.*` exists. The seed
fixes initialisation, data order and augmentation, so on a CPU a rerun -- interrupted or not --
gives the same bits.

Data-parallel: when torch.distributed is initialised with more than one rank (`bench.stages.run_job`
does it for a job of several SLURM tasks), every rank trains a DistributedDataParallel copy on its
own shard of each global batch (`batch_size` stays the global batch size), rank 0 alone evaluates
and writes the run folder, and the files are those of a single-process run (same keys, same layout).
BatchNorm stays per rank (DDP's default): each rank normalises with its own shard's statistics and
rank 0's running statistics are the ones saved (SyncBatchNorm would make it exactly the
single-process computation, on GPUs only).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel

from bench.checkpoint import load_checkpoint
from bench.data import dataset_spec
from bench.data.loaders import make_loader
from bench.engine.checkpointer import RunFolder
from bench.engine.devices import autocast, barrier, rank_device
from bench.engine.heads import fit_probe, load_body
from bench.engine.evaluate import predict, predictions_path, save_predictions
from bench.engine.loop import StepBatches, fit
from bench.engine.optim import make_optimizer
from bench.engine.schedule import lr_factor
from bench.errors import BenchError
from bench.metrics import classification_metrics, for_split
from bench.models import ARCH_SPECS, build_model
from bench.train_config import TrainConfig, same_run
from bench.job_env import capped_steps, world

# `criterion(logits, images, labels, indices, views) -> loss` replaces cross-entropy (distillation).
Criterion = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
LOG_ONLY = ("epoch", "lr", "time")  # row fields that are not the run's metrics


def model_meta(cfg: TrainConfig, num_classes: int) -> dict[str, Any]:
    """What rebuilding the model needs (bench.engine.evaluate.load_model): with named pretrained
    weights, those (their architecture is the one built); absent otherwise, as before they existed."""
    return {"arch": cfg.arch, "dataset": cfg.dataset, "scale": cfg.scale, "seed": cfg.seed,
            "num_classes": num_classes, "image_size": cfg.image_size, "in_chans": 3,
            **({"pretrained_weights": cfg.pretrained_weights} if cfg.pretrained_weights is not None else {})}


def initial_model(cfg: TrainConfig, num_classes: int, device: torch.device | str = "cpu") -> nn.Module:
    """The resolved run's network before its first step: seeded (the seed fixes the initial weights
    and a pretrained network's new head, unless a shared initialisation is asked for), pretrained
    or fresh, then `init_from`'s weights where given: all of them when they are a network of this
    data set, else a base's body with this task's head (new, or a linear probe: bench.engine.heads)."""
    torch.manual_seed(cfg.seed if cfg.init_seed is None else cfg.init_seed)
    model = build_model(cfg.arch, num_classes, cfg.image_size, cfg.scale, pretrained=cfg.pretrained,
                        weights=cfg.pretrained_weights).to(device)
    if cfg.init_from:
        state, start = load_checkpoint(cfg.init_from, expect={"arch": cfg.arch})
        if start.get("dataset") == cfg.dataset:  # a network of this task (a predicted student): all of it
            model.load_state_dict(state)
        else:  # a base of another task: its body, and a classifier of this task's classes
            load_body(model, state)
            if cfg.head == "probe":
                fit_probe(model, make_loader(cfg.dataset, cfg.train_split, train=False, batch_size=cfg.batch_size,
                                             seed=cfg.seed, root=cfg.data_root, image_size=cfg.image_size,
                                             device=device), device)
    return model


EVAL_SPLITS = ("val", "test")


def describe_row(row: dict[str, Any], epochs: int) -> str:
    return f"epoch {row['epoch']}/{epochs} loss {row['train_loss']:.4f}" + (
        f" val top1 {row['val_top1']:.2f}" if "val_top1" in row else "")


class SupervisedObjective:
    """One optimizer step per training batch; a log row per epoch, and at the end of the run an
    evaluation on the val and test splits (records are last-epoch metrics; evaluating only then
    keeps a tiny run's 20,000 test images from costing more than its training)."""

    labels = {"loss": "training"}

    def __init__(self, cfg: TrainConfig, model: nn.Module, net: nn.Module, optimizer, train_loader, eval_loaders,
                 criterion: Criterion, device: torch.device, steps: int) -> None:
        self.cfg, self.model, self.net, self.optimizer = cfg, model, net, optimizer
        self.train_loader, self.eval_loaders, self.criterion, self.device = train_loader, eval_loaders, criterion, device
        # The last step the loop makes (a smoke run's cap, bench.job_env.capped_steps) evaluates.
        self.steps_per_epoch, self.steps = len(train_loader), capped_steps(steps)
        self.batches = StepBatches(train_loader)
        self.final: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}  # split -> the last evaluation's (probs, labels)

    def loss(self, step: int) -> dict[str, torch.Tensor]:
        (x, y, idx, views), restarted = self.batches(step)
        if restarted:  # an epoch begins (after the last one's evaluation) or the run resumes
            self.net.train()
        with autocast(self.device):
            return {"loss": self.criterion(self.net(x), x, y, idx, views)}

    def log_row(self, step: int, means: dict[str, torch.Tensor], seconds: float) -> dict[str, Any]:
        loss = means["loss"]
        rank, world_size = world()
        if world_size > 1:  # the mean over ranks of their shards' mean losses: the global batch's
            dist.all_reduce(loss)
            loss /= world_size
        row = None
        if rank == 0:
            # Rank 0 alone evaluates, with the bare model, on the whole splits; the other ranks
            # take its row. Evaluating on every rank would not agree: each rank's BatchNorm
            # running statistics come from its own shards (DDP re-broadcasts rank 0's only at
            # the next forward), and rank 0's are the ones saved, so its numbers describe the files.
            row = {"epoch": step // self.steps_per_epoch, "train_loss": loss.item(), "train_s": seconds}
            if step == self.steps:
                for split, loader in self.eval_loaders.items():
                    self.final[split] = predict(self.model, loader, self.device)
                    row.update(for_split(classification_metrics(*self.final[split]), split))
        if world_size > 1:
            box = [row]
            dist.broadcast_object_list(box, src=0, device=self.device if self.device.type == "cuda" else None)
            row = box[0]
        return row


def keep_predictions(cfg: TrainConfig, folder: RunFolder, device: torch.device,
                     final: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> None:
    """The final evaluation's outputs beside the finished model (bench.engine.evaluate), so the
    jobs that evaluate these weights later read them: every split but a test split read from a
    `.beton` (the methods read the data set itself)."""
    for split, (probs, labels) in final.items():
        if not (split == "test" and cfg.beton_test):
            save_predictions(predictions_path(folder.final, cfg.dataset, split, cfg.image_size, device.type),
                             probs, labels)


def run_folder(cfg: TrainConfig, out: str | Path, writer: bool = True) -> RunFolder:
    """The run folder of the resolved run `cfg` in `out` (also the stacked trainer's, so the two
    find, resume and refuse each other's runs alike)."""
    config = cfg.to_json()
    return RunFolder(out, config, matches=lambda meta: same_run(meta.get("config"), config),
                     expect={"arch": cfg.arch}, writer=writer)


def run_loaders(cfg: TrainConfig, device: torch.device, rank: int, world_size: int) -> tuple[Any, dict[str, Any]]:
    """The run's training loader and (rank 0's) evaluation loaders. Each rank gets its share of
    every global batch (the same draws as a single process); the loader refuses a batch size the
    world size does not divide, before anything is written."""
    common = dict(batch_size=cfg.batch_size, seed=cfg.seed, root=cfg.data_root, image_size=cfg.image_size,
                  device=device)
    train_loader = make_loader(cfg.dataset, cfg.train_split, train=True, beton=cfg.beton_train,
                               distributed=world_size > 1, fraction=cfg.train_fraction, **common)
    eval_loaders = {split: make_loader(cfg.dataset, split, train=False, beton=cfg.beton_test if split == "test"
                                       else None, **common) for split in EVAL_SPLITS} if rank == 0 else {}
    if len(train_loader) == 0:
        raise BenchError(f"the training data ({cfg.train_fraction:g} of the {cfg.dataset} split) is smaller than "
                         f"one batch of {cfg.batch_size}; use a larger fraction or a smaller batch")
    return train_loader, eval_loaders


def train(cfg: TrainConfig, out: str | Path, *, criterion: Criterion | None = None,
          progress: bool | None = None) -> dict[str, Any]:
    """Train (or resume, or find finished) the run in `out`; return the final sidecar.

    `criterion(logits, images, labels, indices, views) -> loss` replaces cross-entropy; it must be
    a pure function of its inputs for resumes to stay exact. A criterion with a
    `prepare(train_loader, steps)` method has it called once before training (not when the run
    is found finished): e.g. to cache its teachers' outputs on the views the run will draw. With torch.distributed initialised (world
    size > 1) every rank calls this with the same arguments; `cfg.batch_size` is the global batch
    size and must divide by the world size."""
    cfg = cfg.resolved()
    config = cfg.to_json()
    rank, world_size = world()
    folder = run_folder(cfg, out, writer=rank == 0)
    done = folder.finished()
    if done is not None:
        return done
    device = rank_device(cfg.device, world_size)
    folder.sync = lambda: barrier(device)
    spec = dataset_spec(cfg.dataset)
    train_loader, eval_loaders = run_loaders(cfg, device, rank, world_size)
    steps_per_epoch = len(train_loader)
    model = initial_model(cfg, spec.num_classes, device)
    if ARCH_SPECS[cfg.arch].channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = make_optimizer(model, cfg.optimizer, lr=cfg.lr, weight_decay=cfg.weight_decay, momentum=cfg.momentum)
    # DDP averages the gradients over the ranks; `model` stays the bare module, whose state_dict
    # (keys without "module.") is what every file holds. The optimizer holds the same parameters.
    net = model if world_size == 1 else DistributedDataParallel(
        model, device_ids=[device.index] if device.type == "cuda" else None)
    criterion = criterion or (lambda logits, x, y, idx, views: F.cross_entropy(
        logits, y, label_smoothing=cfg.label_smoothing))
    total, warmup = cfg.epochs * steps_per_epoch, round(cfg.warmup_epochs * steps_per_epoch)
    objective = SupervisedObjective(cfg, model, net, optimizer, train_loader, eval_loaders, criterion, device, total)
    if hasattr(criterion, "prepare"):
        criterion.prepare(train_loader, total)
    milestones = [m * steps_per_epoch for m in cfg.milestones]
    base = {**model_meta(cfg, spec.num_classes), "config": config, **({"world_size": world_size} if world_size > 1 else {})}
    history, seconds = fit(
        objective, folder, steps=total, log_every=steps_per_epoch, lr=cfg.lr,
        schedule=lambda s: lr_factor(s, total, warmup, cfg.schedule, milestones=milestones, gamma=cfg.gamma),
        checkpoint_meta=lambda step: {**base, "epoch": step // steps_per_epoch},
        describe=lambda r: describe_row(r, cfg.epochs),
        desc=f"{cfg.arch}/{cfg.dataset} seed {cfg.seed}", progress=progress, quiet=rank != 0)
    folder.finish(model.state_dict(), {
        **base, "epochs": cfg.epochs, "metrics": {k: v for k, v in history[-1].items() if k not in LOG_ONLY},
        "train_s": seconds}, history)
    if rank == 0:
        keep_predictions(cfg, folder, device, objective.final)
    barrier(device)  # the others read what rank 0 has just written
    return folder.finished()
