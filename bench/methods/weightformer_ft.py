"""weightformer_ft: the WeightFormer student, fine-tuned for a few epochs with the KD loss.

The predicted student (after re-estimation, as `weightformer` makes it) is written once to the
job's folder (`predicted.*`, its sidecar holding the prediction's record fields) and trained
from there with the pool's recipe and KD's loss on the group's soft labels, for `ft_epochs`
epochs on a fixed `ft_fraction` of the training split, at `ft_lr` (default a tenth of the
recipe's peak rate: the start is already a good network) with cosine decay and no warm-up, at
KD's temperature `ft_temperature` (the `temperature` option is WeightFormer's). `train_s` is
the fine-tuning (as KD's `train_s` is its whole training); `predict_s` the prediction before it.
A resumed job reuses the predicted file; the fine-tuning run records that file's sha256.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from bench.checkpoint import paths, read_meta, save_checkpoint
from bench.system import world
from bench.errors import BenchError
from bench.methods import kd, weightformer
from bench.train import barrier

FT_OPTIONS = ("ft_epochs", "ft_fraction", "ft_lr", "ft_temperature", "alpha")
OPTIONS: tuple[str, ...] = (*weightformer.OPTIONS, *FT_OPTIONS)
DEFAULTS = {"ft_epochs": 2, "ft_fraction": 1.0, "ft_lr_scale": 0.1}


def _number(opts: dict[str, Any], key: str, default: float, ok, allowed: str) -> float:
    value = opts.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or not ok(value):
        raise BenchError(f"weightformer_ft: {key} must be {allowed}, got {value!r}")
    return value


def check_ft_options(opts: dict[str, Any]) -> tuple[int, float, float | None, float]:
    """(epochs, fraction, lr or None: the recipe's / 10, KD temperature), validated."""
    epochs = _number(opts, "ft_epochs", DEFAULTS["ft_epochs"], lambda v: isinstance(v, int) and v >= 1,
                     "a whole number >= 1")
    fraction = float(_number(opts, "ft_fraction", DEFAULTS["ft_fraction"], lambda v: 0 < v <= 1, "in (0, 1]"))
    lr = opts.get("ft_lr")
    if lr is not None:
        lr = float(_number(opts, "ft_lr", 1.0, lambda v: v > 0, "positive"))
    temperature = float(_number(opts, "ft_temperature", kd.DEFAULTS["temperature"], lambda v: v > 0, "positive"))
    return epochs, fraction, lr, temperature


def meta_train_options(options: dict[str, Any], scale: str) -> dict[str, Any]:
    check_ft_options(options)  # at grid load: a bad fine-tuning option never waits for meta-training
    return weightformer.meta_train_options(options, scale)


def predicted_student(job) -> tuple[Path, dict[str, Any]]:
    """The predicted student's checkpoint in the job's folder and the prediction's record fields:
    made once (by rank 0 of a data-parallel job), found when the job resumes."""
    start = Path(job.workdir) / "predicted"
    if not paths(start)[1].exists() and world()[0] == 0:
        student, teachers, fields = weightformer.predict(job)
        meta = teachers[0][1]
        save_checkpoint(start, student.state_dict(), {
            **{k: meta[k] for k in ("arch", "dataset", "scale", "num_classes", "image_size", "in_chans")},
            "fields": fields})
        del student, teachers  # fine-tuning loads its own teachers
    barrier(job.torch_device())
    return start, read_meta(start)


def run(job) -> dict[str, Any]:
    if job.workdir is None:
        raise BenchError(f"{job.method} fine-tunes a student: its job needs a workdir")
    epochs, fraction, lr, temperature = check_ft_options(job.options or {})
    lr = lr if lr is not None else DEFAULTS["ft_lr_scale"] * kd.student_config(job, 0, None, {}).resolved().lr
    start, meta = predicted_student(job)
    record = kd.distill(job, student_seed=kd.SEED_OFFSET + job.seed, epochs=epochs, temperature=temperature,
                        overrides={"init_from": str(paths(start)[0]), "train_fraction": fraction, "lr": lr,
                                   "warmup_epochs": 0, "schedule": "cosine"},
                        extra={"start_sha256": meta["sha256"]})
    return {**record, **meta["fields"], "wf_ft_epochs": epochs, "wf_ft_fraction": fraction, "ft_lr": lr,
            "ft_temperature": temperature}
