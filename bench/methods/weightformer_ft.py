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

from pathlib import Path
from typing import Any

from bench.checkpoint import paths, read_meta, save_checkpoint
from bench.engine import barrier
from bench.errors import BenchError
from bench.methods.base import MethodJob
from bench.methods.distillation import distill, on, student_config
from bench.methods.weightformer_student import predict
from bench.method_options import WeightFormerFTOptions
from bench.job_env import world

SEED_OFFSET = 10_000  # kd's student seed: the fine-tuning is a KD run
FT_LR_SCALE = 0.1  # the default ft_lr, as a fraction of the recipe's peak lr


def predicted_student(job: MethodJob[WeightFormerFTOptions]) -> tuple[Path, dict[str, Any]]:
    """The predicted student's checkpoint in the job's folder and the prediction's record fields:
    made once (by rank 0 of a data-parallel job), found when the job resumes."""
    start = Path(job.workdir) / "predicted"
    if not paths(start)[1].exists() and world()[0] == 0:
        student, teachers, fields = predict(job)
        meta = teachers[0][1]
        save_checkpoint(start, student.state_dict(), {
            **{k: meta[k] for k in ("arch", "dataset", "scale", "num_classes", "image_size", "in_chans")},
            **({"pretrained_weights": meta["pretrained_weights"]} if "pretrained_weights" in meta else {}),
            "fields": fields})
        del student, teachers  # fine-tuning loads its own teachers
    barrier(job.torch_device())
    return start, read_meta(start)


def run(job: MethodJob[WeightFormerFTOptions]) -> dict[str, Any]:
    if job.workdir is None:
        raise BenchError(f"{job.method} fine-tunes a student: its job needs a workdir")
    o = job.options
    lr = o.ft_lr if o.ft_lr is not None else FT_LR_SCALE * student_config(job, 0, None, {}).resolved().lr
    start, meta = predicted_student(job)
    record = distill(job, student_seed=SEED_OFFSET + job.seed, temperature=o.ft_temperature, alpha=o.alpha,
                     epochs=o.ft_epochs,
                     overrides={"init_from": str(paths(start)[0]), "train_fraction": o.ft_fraction, "lr": lr,
                                "warmup_epochs": 0, "schedule": "cosine", **on(o.ft_on)},
                     extra={"start_sha256": meta["sha256"]})
    return {**record, **meta["fields"], "wf_ft_epochs": o.ft_epochs, "wf_ft_fraction": o.ft_fraction, "ft_lr": lr,
            "ft_temperature": o.ft_temperature, "ft_on": o.ft_on}
