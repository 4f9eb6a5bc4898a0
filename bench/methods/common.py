"""What several methods share: loading a verified group of teachers, their predictions on the val
and test splits (every record carries both: settings are chosen on val, claims read test), and a
student made from the teachers' weights with its BatchNorm statistics re-estimated."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
import torch.nn as nn

from bench.data.loaders import make_loader
from bench.engine import load_model, predict
from bench.engine.evaluate import predictions_path, read_predictions, save_predictions
from bench.errors import BenchError
from bench.methods.base import MethodJob
from bench.metrics import classification_metrics, for_split
from bench.job_env import world
from bench.weights.averaging import average_state_dicts, reestimate_norm_stats


def load_teachers(job: MethodJob[Any]) -> list[tuple[torch.nn.Module, dict[str, Any]]]:
    """The job's teachers, each verified (hash, arch) and checked against the first."""
    device = job.torch_device()
    loaded = []
    for member, path in zip(job.members, job.teachers):
        if not path.with_suffix(".json").exists():
            raise BenchError(f"teacher {member} ({path}) not found: train its pool first")
        model, meta = load_model(path, device, arch=job.arch)
        if loaded:
            ref = loaded[0][1]
            for key in ("num_classes", "image_size", "dataset", "scale"):
                if meta[key] != ref[key]:
                    raise BenchError(f"teacher {member} ({path}) has {key} {meta[key]!r}, "
                                     f"teacher {job.members[0]} has {ref[key]!r}")
        loaded.append((model, meta))
    return loaded


EVAL_SPLITS = ("val", "test")


def predictions(job: MethodJob[Any], models, split: str, checkpoints: Sequence[Path | None] | None = None
                ) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Each model's softmax over one split, and the labels. A model with a checkpoint (a teacher, a
    trained student) has its predictions kept beside it (`predictions_file`; training keeps its
    final evaluation's there) and read back by later jobs: the single, ensemble and WeightFormer
    rows of a grid evaluate the same teachers on the same images, and at 25,000 val + test images
    that would be most of their time."""
    meta = models[0][1]
    loader = make_loader(job.dataset, split, batch_size=512, train=False, root=job.data_root,
                         image_size=meta["image_size"], device=job.torch_device())
    checkpoints = list(checkpoints or []) + [None] * (len(models) - len(checkpoints or []))
    probs, labels = [], None
    for (model, _), checkpoint in zip(models, checkpoints):
        stored = None if checkpoint is None else predictions_file(checkpoint, job, split, meta["image_size"])
        got = read_predictions(stored)
        if got is None:
            got = predict(model, loader, job.torch_device())
            if stored is not None and world()[0] == 0:
                save_predictions(stored, *got)
        probs.append(got[0])
        labels = got[1] if labels is None else labels
    return probs, labels


def predictions_file(checkpoint: Path, job: MethodJob[Any], split: str, image_size: int) -> Path:
    """The kept predictions of the weights in `checkpoint` (bench.engine.evaluate's module doc)."""
    return predictions_path(checkpoint, job.dataset, split, image_size, job.torch_device().type)


def evaluated(job: MethodJob[Any], models, score: Callable[[list[torch.Tensor], torch.Tensor], dict[str, Any]],
              checkpoints: Sequence[Path | None] | None = None) -> dict[str, Any]:
    """`score(probs, labels)` of `models` (a list of (model, meta); `checkpoints` the teachers'
    paths, None for a model made by the job) on val and on test, under each split's names
    (`val_top1`, ...; test's unprefixed: `top1`, ...)."""
    out: dict[str, Any] = {}
    for split in EVAL_SPLITS:
        out.update(for_split(score(*predictions(job, models, split, checkpoints)), split))
    return out


def reestimated(job: MethodJob[Any], model: nn.Module, meta: dict[str, Any], bn_batches: int) -> int:
    """Re-estimate `model`'s norm statistics on the first `bn_batches` batches of the training split
    (128 images each, no augmentation); the number of batches used (0 without BatchNorm)."""
    train_batches = make_loader(job.dataset, "train", batch_size=128, train=False, root=job.data_root,
                                image_size=meta["image_size"], device=job.torch_device())
    return reestimate_norm_stats(model, train_batches, bn_batches)


def evaluate_averaged(job: MethodJob[Any], model: nn.Module, meta: dict[str, Any],
                      sds: list[dict[str, torch.Tensor]], bn_batches: int) -> dict[str, Any]:
    """Load the average of `sds` into `model`, re-estimate its norm statistics, evaluate."""
    t0 = time.perf_counter()
    model.load_state_dict(average_state_dicts(sds))
    used = reestimated(job, model, meta, bn_batches)
    made_s = time.perf_counter() - t0  # making the student ends here; its evaluation is not counted
    metrics = evaluated(job, [(model, meta)], lambda probs, labels: classification_metrics(probs[0], labels))
    return {**metrics, "infer_forwards": 1, "train_s": made_s, "bn_batches": used}
