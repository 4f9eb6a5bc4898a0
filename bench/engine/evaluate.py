"""Evaluation: softmax outputs over a loader, trained models rebuilt from their checkpoints, and
the predictions files kept beside a checkpoint.

A finished training run keeps its final evaluation's softmax outputs beside its model
(`predictions-<hash>.*`, one per split), and the methods keep the ones they compute for a teacher
there too: every later job that evaluates the same weights on the same split reads them instead of
running the network again over 25,000 val + test images. The hash covers the weights (sha256),
the data set, split and image size, the device kind and torch's version (which round the same
forward differently); a damaged file is derived data, recomputed.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from bench.checkpoint import CheckpointError, load_checkpoint, paths, read_meta, save_checkpoint
from bench.engine.devices import autocast
from bench.models import build_model


@torch.no_grad()
def predict(model: nn.Module, loader, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax probabilities (float32, CPU) and labels over a whole evaluation loader."""
    model.eval()
    probs, labels = [], []
    for x, y, *_ in loader:
        x = x.to(device, non_blocking=True)
        if x.ndim == 4:  # images: a channels-last input runs a convolution channels-last (CPU: ~1.8x)
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast(device):
            logits = model(x)
        probs.append(logits.float().softmax(1).cpu())
        labels.append(y.cpu())
    return torch.cat(probs), torch.cat(labels)


def load_model(path: str | Path, device: str | torch.device = "cpu", **expect: Any) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild a trained model from its checkpoint (hash and architecture verified)."""
    tensors, meta = load_checkpoint(path, expect=expect or None, map_location=device)
    model = build_model(meta["arch"], meta["num_classes"], meta["image_size"], meta["scale"], meta["in_chans"],
                        weights=meta.get("pretrained_weights"))  # fine-tuned from named weights: their architecture
    model.load_state_dict(tensors)
    return model.to(device).eval(), meta


PREDICTIONS = "teacher-predictions"  # the files' kind (their first use was teachers')


def predictions_path(checkpoint: str | Path, dataset: str, split: str, image_size: int, device_type: str) -> Path:
    """Where the predictions of the weights in `checkpoint` on `split` are kept (module doc)."""
    identity = {"teacher_sha256": read_meta(checkpoint)["sha256"], "dataset": dataset, "split": split,
                "image_size": image_size, "device": device_type, "torch": torch.__version__.split("+")[0]}
    digest = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]
    return Path(checkpoint).parent / f"predictions-{digest}"


def save_predictions(stored: Path, probs: torch.Tensor, labels: torch.Tensor) -> None:
    save_checkpoint(stored, {"probs": probs, "labels": labels}, {"kind": PREDICTIONS})


def read_predictions(stored: Path | None) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The kept (probs, labels), or None when there are none or they are damaged."""
    if stored is None or not paths(stored)[1].exists():
        return None
    try:
        tensors, _ = load_checkpoint(stored, expect={"kind": PREDICTIONS})
    except CheckpointError:
        return None
    return tensors["probs"], tensors["labels"]
