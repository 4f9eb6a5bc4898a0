"""weightformer_ft: the WeightFormer student, fine-tuned for a few epochs with the KD loss.

The predicted student (after re-estimation, as `weightformer` makes it) is written to the job's
folder and trained from there with the pool's recipe and KD's loss on the group's soft labels,
for `ft_epochs` epochs on a fixed `ft_fraction` of the training split, at `ft_lr` (default a
tenth of the recipe's peak rate: the start is already a good network) with cosine decay and no
warm-up. `train_s` is the fine-tuning (as KD's `train_s` is its whole training); `predict_s` the
prediction before it.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from bench.checkpoint import save_checkpoint
from bench.errors import BenchError
from bench.methods import kd, weightformer
from bench.train import TrainConfig

FT_OPTIONS = ("ft_epochs", "ft_fraction", "ft_lr", "alpha")
OPTIONS: tuple[str, ...] = (*weightformer.OPTIONS, *FT_OPTIONS)
DEFAULTS = {"ft_epochs": 2, "ft_fraction": 1.0, "ft_lr_scale": 0.1}
meta_train_options = weightformer.meta_train_options


def ft_settings(job) -> tuple[int, float, float]:
    opts = job.options or {}
    epochs = opts.get("ft_epochs", DEFAULTS["ft_epochs"])
    fraction = float(opts.get("ft_fraction", DEFAULTS["ft_fraction"]))
    if not isinstance(epochs, int) or epochs < 1:
        raise BenchError(f"{job.method}: ft_epochs must be a whole number >= 1, got {epochs!r}")
    if not 0 < fraction <= 1:
        raise BenchError(f"{job.method}: ft_fraction must be in (0, 1], got {fraction}")
    recipe_lr = kd.student_config(job, 0, None, {}).resolved().lr
    lr = float(opts.get("ft_lr", DEFAULTS["ft_lr_scale"] * recipe_lr))
    if lr <= 0:
        raise BenchError(f"{job.method}: ft_lr must be positive, got {lr}")
    return epochs, fraction, lr


def run(job) -> dict[str, Any]:
    if job.workdir is None:
        raise BenchError(f"{job.method} fine-tunes a student: its job needs a workdir")
    epochs, fraction, lr = ft_settings(job)
    student, teachers, fields = weightformer.predict(job)
    meta = teachers[0][1]
    start = Path(job.workdir) / "predicted"
    save_checkpoint(start, student.state_dict(), {k: meta[k] for k in ("arch", "dataset", "scale", "num_classes",
                                                                          "image_size", "in_chans")})
    record = kd.distill(job, student_seed=kd.SEED_OFFSET + job.seed, epochs=epochs, overrides={
        "init_from": str(start.with_suffix(".safetensors")), "train_fraction": fraction, "lr": lr,
        "warmup_epochs": 0, "schedule": "cosine"})
    return {**record, **fields, "wf_ft_epochs": epochs, "wf_ft_fraction": fraction, "ft_lr": lr}
