"""Starting a run from another task's network: its body kept, its classifier new.

A member of a `pretrained` pool starts from a base network trained on a source task (timm's
ImageNet weights at paper scale, the suite's own base at tiny scale). The source's classifier
names other classes, so it is dropped: the new head is either the one the member's seed draws
(`head: new`: members differ from the first step, which gives the ensemble headroom) or one
linear probe fitted on the base's frozen features of the training split (`head: probe`, model
soups' LP-FT: every member starts from the same network, which keeps them in one basin). The
probe is a pure function of the base and the data (zero start, full-batch L-BFGS), so every
member of a pool fits the same one.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


def classifier_names(model: nn.Module) -> set[str]:
    """The parameter names of the model's classifier (timm's `get_classifier`)."""
    head = {id(p) for p in model.get_classifier().parameters()}
    return {name for name, p in model.named_parameters() if id(p) in head}


def load_body(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Load every tensor of `state` but the classifier's into `model` (which keeps its own head)."""
    head = classifier_names(model)
    missing, unexpected = model.load_state_dict({k: v for k, v in state.items() if k not in head}, strict=False)
    if set(missing) != head or unexpected:
        raise ValueError(f"the base network does not match the model: missing {sorted(set(missing) - head)}, "
                         f"unexpected {sorted(unexpected)}")


@torch.no_grad()
def features(model: nn.Module, loader, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """The classifier's inputs (timm's pre-logits) and labels of every image `loader` yields."""
    was_training = model.training
    model.eval()
    feats, labels = [], []
    for x, y, *_ in loader:
        feats.append(model.forward_head(model.forward_features(x.to(device)), pre_logits=True).float())
        labels.append(y.to(device))
    model.train(was_training)
    return torch.cat(feats), torch.cat(labels)


def fit_probe(model: nn.Module, loader, device: torch.device, iterations: int = 100,
              weight_decay: float = 1e-4) -> float:
    """Fit the model's linear classifier on its frozen features (cross-entropy plus an L2 term,
    full batch, L-BFGS from zero); return the final training loss."""
    x, y = features(model, loader, device)
    head = model.get_classifier()
    weight = torch.zeros_like(head.weight, dtype=torch.float32, requires_grad=True)
    bias = torch.zeros_like(head.bias, dtype=torch.float32, requires_grad=True)
    opt = torch.optim.LBFGS([weight, bias], max_iter=iterations, history_size=20, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(x @ weight.T + bias, y) + weight_decay * weight.square().sum()
        loss.backward()
        return loss

    loss = opt.step(closure)
    with torch.no_grad():
        head.weight.copy_(weight)
        head.bias.copy_(bias)
    return float(loss.detach())
