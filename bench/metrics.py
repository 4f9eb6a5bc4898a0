"""Classification metrics from predicted probabilities (ensembles average probabilities)."""
from __future__ import annotations

import torch

ECE_BINS = 15


@torch.no_grad()
def classification_metrics(probs: torch.Tensor, labels: torch.Tensor, bins: int = ECE_BINS) -> dict[str, float]:
    """top1 / top5 accuracy and ECE in percent, NLL in nats per image.

    NLL clamps each image's probability of its label at 1e-12, so one image adds at most
    -ln(1e-12) = 27.6 nats (a model sure of a wrong class would otherwise make the mean infinite).

    ECE: images binned by confidence (max probability) into `bins` equal-width bins on
    (0, 1]; the mean |accuracy - confidence| per bin, weighted by the bin's share of images.
    """
    probs, labels = probs.double().cpu(), labels.cpu()
    n, k = probs.shape
    conf, pred = probs.max(1)
    correct = (pred == labels).double()
    topk = probs.topk(min(5, k), dim=1).indices
    top5 = (topk == labels[:, None]).any(1).double()
    nll = -probs.gather(1, labels[:, None]).squeeze(1).clamp_min(1e-12).log()
    # Bin b holds confidences in (b/bins, (b+1)/bins]; ceil puts an exact edge in the lower bin.
    which = (conf * bins).ceil().long().clamp(1, bins) - 1
    ece = torch.zeros((), dtype=torch.float64)
    for b in range(bins):
        in_bin = which == b
        if in_bin.any():
            ece += in_bin.double().mean() * (correct[in_bin].mean() - conf[in_bin].mean()).abs()
    return {"top1": 100 * correct.mean().item(), "top5": 100 * top5.mean().item(),
            "nll": nll.mean().item(), "ece": 100 * ece.item(), "n_test": n}


@torch.no_grad()
def kl_from(reference: torch.Tensor, probs: torch.Tensor) -> float:
    """KL(reference || probs) in nats, the mean over images (both clamped at 1e-12 inside the log)."""
    reference, probs = reference.double().cpu(), probs.double().cpu()
    return float((reference * (reference.clamp_min(1e-12).log() - probs.clamp_min(1e-12).log())).sum(1).mean())


@torch.no_grad()
def agreement(a: torch.Tensor, b: torch.Tensor) -> float:
    """% of images on which two models' top classes agree."""
    return 100.0 * float((a.argmax(1).cpu() == b.argmax(1).cpu()).double().mean())


def for_split(metrics: dict[str, float], split: str) -> dict[str, float]:
    """A split's metrics under the record's names: test's as they are (`top1`, ..., `n_test`), every
    other split's prefixed (`val_top1`, ..., `n_val`)."""
    if split == "test":
        return dict(metrics)
    return {(f"n_{split}" if k == "n_test" else f"{split}_{k}"): v for k, v in metrics.items()}
