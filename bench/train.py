"""One training run: `python -m bench.train --arch vgg11 --dataset digits --scale tiny --seed 0 --out DIR`.

The run folder holds `config.json` (the resolved, flattened config), `log.jsonl` (a line per
epoch), `checkpoint.*` (model + optimizer after the last finished epoch) and, once finished,
`model.*` (final weights; its sidecar carries the metrics). Rerunning the same command resumes
from the checkpoint, or returns at once when `model.*` exists. The seed fixes initialisation,
data order and augmentation, so on a CPU a rerun -- interrupted or not -- gives the same bits.

Data-parallel: when torch.distributed is initialised with more than one rank (`bench.stages.run_job`
does it for a job of several SLURM tasks), every rank trains a DistributedDataParallel copy on its
own shard of each global batch (`batch_size` stays the global batch size), rank 0 alone evaluates
and writes the run folder, and the files are those of a single-process run (same keys, same layout).
BatchNorm stays per rank (DDP's default): each rank normalises with its own shard's statistics and
rank 0's running statistics are the ones saved (SyncBatchNorm would make it exactly the
single-process computation, on GPUs only).
"""
from __future__ import annotations

import argparse
import math
import os
import time
from pathlib import Path
from typing import Any, Callable

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from bench.checkpoint import (load_checkpoint, optimizer_from_tensors, optimizer_to_tensors,
                              paths, read_meta, remove_checkpoint, save_checkpoint)
from bench.data import DATASETS, dataset_spec
from bench.data.loaders import make_loader
from bench.errors import BenchError, cli
from bench.io import atomic_write_json, atomic_write_lines
from bench.recipes import OPTIMIZERS, SCHEDULES, TrainConfig, same_run
from bench.system import world
from bench.metrics import classification_metrics
from bench.models import ARCHS, SCALES, build_model

def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def rank_device(name: str, world_size: int) -> torch.device:
    """The device of this process: `pick_device(name)`, except that with several ranks on GPUs
    rank LOCAL_RANK takes cuda:LOCAL_RANK (modulo the GPUs it sees: one each when SLURM binds
    a GPU per task, all of the node's otherwise)."""
    device = pick_device(name)
    if world_size > 1 and device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)) % torch.cuda.device_count())
        torch.cuda.set_device(device)
    if world_size > 1 and dist.get_backend() == "nccl" and device.type != "cuda":
        raise BenchError(f"device {name!r} is not a GPU but torch.distributed uses nccl (GPUs only); "
                         f"use --device auto or cuda, or the gloo backend")
    return device


def barrier(device: torch.device) -> None:
    """Wait for every rank (nothing to do in a single process)."""
    if world()[1] > 1:
        dist.barrier(device_ids=[device.index]) if dist.get_backend() == "nccl" else dist.barrier()


def lr_factor(step: int, total: int, warmup: int, cfg: TrainConfig, steps_per_epoch: int) -> float:
    """Multiplier of the peak learning rate at optimizer step `step` (0-based)."""
    if step < warmup:
        return (step + 1) / warmup
    t = (step - warmup) / max(1, total - warmup)
    if cfg.schedule == "cosine":
        return 0.5 * (1 + math.cos(math.pi * t))
    if cfg.schedule == "onecycle":  # linear up over the warm-up, then linearly down to zero
        return 1 - t
    if cfg.schedule == "step":
        return cfg.gamma ** sum(step >= m * steps_per_epoch for m in cfg.milestones)
    return 1.0


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """No weight decay on biases, normalisation parameters, position embeddings and tokens."""
    skip = set(getattr(model, "no_weight_decay", lambda: set())())
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (no_decay if p.ndim <= 1 or name in skip else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    groups = param_groups(model, cfg.weight_decay)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=True)
    return torch.optim.AdamW(groups, lr=cfg.lr)


@torch.no_grad()
def predict(model: nn.Module, loader, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax probabilities (float32, CPU) and labels over a whole evaluation loader."""
    model.eval()
    probs, labels = [], []
    for x, y in loader:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            logits = model(x.to(device, non_blocking=True))
        probs.append(logits.float().softmax(1).cpu())
        labels.append(y.cpu())
    return torch.cat(probs), torch.cat(labels)


def model_meta(cfg: TrainConfig, num_classes: int) -> dict[str, Any]:
    return {"arch": cfg.arch, "dataset": cfg.dataset, "scale": cfg.scale, "seed": cfg.seed,
            "num_classes": num_classes, "image_size": cfg.image_size, "in_chans": 3}


Criterion = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def train(cfg: TrainConfig, out: str | Path, *, criterion: Criterion | None = None,
          progress: bool | None = None) -> dict[str, Any]:
    """Train (or resume, or find finished) the run in `out`; return the final sidecar.

    `criterion(logits, images, labels) -> loss` replaces cross-entropy (distillation methods
    pass their own); it must be a pure function of its inputs for resumes to stay exact.

    With torch.distributed initialised (world size > 1) every rank calls this with the same
    arguments; `cfg.batch_size` is the global batch size and must divide by the world size.
    """
    cfg = cfg.resolved()
    out = Path(out)
    final, ckpt = out / "model", out / "checkpoint"
    config = cfg.to_json()
    rank, world_size = world()
    if paths(final)[1].exists():
        meta = read_meta(final)
        if not same_run(meta.get("config"), config):
            raise BenchError(f"{out} holds a finished run with another config; choose another --out")
        return meta
    device = rank_device(cfg.device, world_size)
    spec = dataset_spec(cfg.dataset)
    common = dict(batch_size=cfg.batch_size, seed=cfg.seed, root=cfg.data_root,
                  image_size=cfg.image_size, device=device)
    # Each rank gets its share of every global batch (the same draws as a single process); the
    # loader refuses a batch size the world size does not divide, before anything is written.
    train_loader = make_loader(cfg.dataset, "train", train=True, beton=cfg.beton_train,
                               distributed=world_size > 1, fraction=cfg.train_fraction, **common)
    # Only rank 0 evaluates (see the epoch loop), on the whole test set, unsharded.
    test_loader = make_loader(cfg.dataset, "test", train=False, beton=cfg.beton_test, **common) \
        if rank == 0 else None

    # The seed fixes the initial weights unless a shared initialisation is asked for.
    torch.manual_seed(cfg.seed if cfg.init_seed is None else cfg.init_seed)
    model = build_model(cfg.arch, spec.num_classes, cfg.image_size, cfg.scale, pretrained=cfg.pretrained).to(device)
    if cfg.init_from:
        model.load_state_dict(load_checkpoint(cfg.init_from, expect={"arch": cfg.arch})[0])
    if device.type == "cuda" and not cfg.arch.startswith("vit"):
        model = model.to(memory_format=torch.channels_last)
    opt = make_optimizer(model, cfg)
    steps_per_epoch = len(train_loader)
    if steps_per_epoch == 0:
        raise BenchError(f"the training data ({cfg.train_fraction:g} of the {cfg.dataset} split) is smaller than "
                         f"one batch of {cfg.batch_size}; use a larger fraction or a smaller batch")
    total, warmup = cfg.epochs * steps_per_epoch, round(cfg.warmup_epochs * steps_per_epoch)
    criterion = criterion or (lambda logits, x, y: F.cross_entropy(logits, y, label_smoothing=cfg.label_smoothing))

    start_epoch, history, train_s = 0, [], 0.0
    if paths(ckpt)[1].exists():  # every rank resumes from the same file, into the bare model
        tensors, meta = load_checkpoint(ckpt, expect={"arch": cfg.arch})
        if not same_run(meta.get("config"), config):
            raise BenchError(f"{out} holds a checkpoint of another config; choose another --out")
        model.load_state_dict({k[len("model/"):]: v for k, v in tensors.items() if k.startswith("model/")})
        optimizer_from_tensors(opt, tensors, meta["optimizer"])
        start_epoch, history, train_s = meta["epoch"], meta["history"], meta["train_s"]
    elif rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_json(out / "config.json", config)
    # No rank may replace the checkpoint (rank 0, after its next epoch) before all have read it.
    barrier(device)
    # DDP averages the gradients over the ranks; `model` stays the bare module, whose
    # state_dict (keys without "module.") is what every file holds. The optimizer holds the
    # same parameter objects.
    net = model if world_size == 1 else DistributedDataParallel(
        model, device_ids=[device.index] if device.type == "cuda" else None)
    extra_meta = {"world_size": world_size} if world_size > 1 else {}

    bar = tqdm(range(start_epoch, cfg.epochs), initial=start_epoch, total=cfg.epochs,
               desc=f"{cfg.arch}/{cfg.dataset} seed {cfg.seed}", unit="epoch",
               disable=True if rank else (not progress if progress is not None else None))
    for epoch in bar:
        t0 = time.perf_counter()
        net.train()
        train_loader.set_epoch(epoch) if hasattr(train_loader, "set_epoch") else None
        loss_sum = torch.zeros((), device=device)
        for i, (x, y) in enumerate(train_loader):
            for group in opt.param_groups:
                group["lr"] = cfg.lr * lr_factor(epoch * steps_per_epoch + i, total, warmup, cfg, steps_per_epoch)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
                loss = criterion(net(x), x, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            loss_sum += loss.detach()
        train_s += time.perf_counter() - t0
        if world_size > 1:  # the mean over ranks of their shards' mean losses: the global batch's
            dist.all_reduce(loss_sum)
            loss_sum /= world_size
        row = None
        if rank == 0:
            # Rank 0 alone evaluates, with the bare model, on the whole test set; the other ranks
            # take its row. Evaluating on every rank would not agree: each rank's BatchNorm
            # running statistics come from its own shards (DDP re-broadcasts rank 0's only at
            # the next forward), and rank 0's are the ones saved, so its numbers describe the
            # files. The test sets are small, so the others' wait is short.
            metrics = classification_metrics(*predict(model, test_loader, device))
            row = {"epoch": epoch + 1, "train_loss": loss_sum.item() / steps_per_epoch, "train_s": train_s,
                   **metrics}
        if world_size > 1:
            box = [row]
            dist.broadcast_object_list(box, src=0, device=device if device.type == "cuda" else None)
            row = box[0]
            train_s = row["train_s"]  # rank 0's clock, as in its files
        history.append(row)
        if rank == 0:
            tensors, opt_meta = optimizer_to_tensors(opt)
            tensors.update({f"model/{k}": v for k, v in model.state_dict().items()})
            save_checkpoint(ckpt, tensors, versioned=True, meta={
                **model_meta(cfg, spec.num_classes), "config": config, "epoch": epoch + 1, "history": history,
                "train_s": train_s, "optimizer": opt_meta, **extra_meta})
            atomic_write_lines(out / "log.jsonl", history)  # rewritten whole: always matches the checkpoint
        bar.set_postfix(loss=f"{row['train_loss']:.3f}", top1=f"{row['top1']:.1f}")
        if bar.disable and rank == 0:
            print(f"epoch {epoch + 1}/{cfg.epochs} loss {row['train_loss']:.4f} top1 {row['top1']:.2f}", flush=True)

    if rank == 0:
        final_meta = {**model_meta(cfg, spec.num_classes), "config": config, "epochs": cfg.epochs,
                      "metrics": {k: v for k, v in history[-1].items() if k != "epoch"}, "train_s": train_s,
                      **extra_meta}
        save_checkpoint(final, model.state_dict(), final_meta)
        remove_checkpoint(ckpt)  # the final weights supersede the resume point
    barrier(device)  # the others read what rank 0 has just written
    return read_meta(final)


def load_model(path: str | Path, device: str | torch.device = "cpu", **expect: Any) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild a trained model from its checkpoint (hash and architecture verified)."""
    tensors, meta = load_checkpoint(path, expect=expect or None, map_location=device)
    model = build_model(meta["arch"], meta["num_classes"], meta["image_size"], meta["scale"], meta["in_chans"])
    model.load_state_dict(tensors)
    return model.to(device).eval(), meta


def parse_args(argv: list[str] | None = None) -> tuple[TrainConfig, Path]:
    p = argparse.ArgumentParser(prog="python -m bench.train", description=__doc__.split("\n\n")[0])
    p.add_argument("--arch", required=True, help=f"one of {', '.join(ARCHS)}")
    p.add_argument("--dataset", required=True, help=f"one of {', '.join(DATASETS)}")
    p.add_argument("--scale", default="tiny", help=f"one of {', '.join(SCALES)}")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--init-seed", type=int, help="seed of the initial weights (default: --seed)")
    p.add_argument("--out", required=True, type=Path, help="run folder (resumed if it exists)")
    p.add_argument("--data-root", help="folder holding the data set (or BENCH_DATA)")
    p.add_argument("--beton-train", help="FFCV .beton of the training split")
    p.add_argument("--beton-test", help="FFCV .beton of the test split")
    for name, kind in [("epochs", int), ("batch-size", int), ("lr", float), ("weight-decay", float),
                       ("warmup-epochs", float), ("label-smoothing", float), ("image-size", int)]:
        p.add_argument(f"--{name}", type=kind)
    p.add_argument("--optimizer", help=f"one of {', '.join(OPTIMIZERS)}")
    p.add_argument("--schedule", help=f"one of {', '.join(SCHEDULES)}")
    p.add_argument("--milestones", type=lambda s: tuple(int(v) for v in s.split(",")), default=(),
                   help="epochs of the step schedule's decays, e.g. 150,180,210")
    p.add_argument("--device", default="auto")
    a = vars(p.parse_args(argv))
    out = a.pop("out")
    from bench.paths import data_root

    a["data_root"] = str(data_root(a["data_root"])) if data_root(a["data_root"]) else None
    return TrainConfig(**a), out


@cli
def main(argv: list[str] | None = None) -> None:
    cfg, out = parse_args(argv)
    meta = train(cfg, out)
    m = meta["metrics"]
    print(f"{meta['arch']} on {meta['dataset']} ({meta['scale']}, seed {meta['seed']}): top1 {m['top1']:.2f} "
          f"top5 {m['top5']:.2f} nll {m['nll']:.4f} ece {m['ece']:.2f}  [{m['train_s']:.1f} s] -> {out}")


if __name__ == "__main__":
    main()
