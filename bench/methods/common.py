"""What several methods share: loading a verified group of teachers, test-set predictions."""
from __future__ import annotations

from typing import Any

import torch

from bench.data.loaders import make_loader
from bench.errors import BenchError
from bench.train import load_model, predict


def load_teachers(job) -> list[tuple[torch.nn.Module, dict[str, Any]]]:
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


def test_predictions(job, teachers) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Each teacher's softmax over the test split, and the labels."""
    meta = teachers[0][1]
    loader = make_loader(job.dataset, "test", batch_size=512, train=False, root=job.data_root,
                         image_size=meta["image_size"], device=job.torch_device())
    outputs = [predict(model, loader, job.torch_device()) for model, _ in teachers]
    return [p for p, _ in outputs], outputs[0][1]
