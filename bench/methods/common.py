"""What several methods share: loading a verified group of teachers, test-set predictions, and a
student made from the teachers' weights with its BatchNorm statistics re-estimated."""
from __future__ import annotations

import time
from typing import Any

import torch
import torch.nn as nn

from bench.data.loaders import make_loader
from bench.engine import load_model, predict
from bench.errors import BenchError
from bench.methods.base import MethodJob
from bench.metrics import classification_metrics
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


def test_predictions(job: MethodJob[Any], teachers) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Each teacher's softmax over the test split, and the labels."""
    meta = teachers[0][1]
    loader = make_loader(job.dataset, "test", batch_size=512, train=False, root=job.data_root,
                         image_size=meta["image_size"], device=job.torch_device())
    outputs = [predict(model, loader, job.torch_device()) for model, _ in teachers]
    return [p for p, _ in outputs], outputs[0][1]


def evaluate_averaged(job: MethodJob[Any], model: nn.Module, meta: dict[str, Any],
                      sds: list[dict[str, torch.Tensor]], bn_batches: int) -> dict[str, Any]:
    """Load the average of `sds` into `model`, re-estimate its norm statistics, evaluate."""
    t0 = time.perf_counter()
    model.load_state_dict(average_state_dicts(sds))
    device = job.torch_device()
    train_batches = make_loader(job.dataset, "train", batch_size=128, train=False, root=job.data_root,
                                image_size=meta["image_size"], device=device)
    used = reestimate_norm_stats(model, train_batches, bn_batches)
    made_s = time.perf_counter() - t0  # making the student ends here; its evaluation is not counted
    (probs,), labels = test_predictions(job, [(model, meta)])
    return {**classification_metrics(probs, labels), "infer_forwards": 1, "train_s": made_s, "bn_batches": used}
