"""Averaging networks' weights, and re-estimating the BatchNorm statistics of the average.

The mean of the members' running statistics is not the statistics of the averaged network (unless
the members are exact permutations of one another, aligned): re-estimate them on training data
before evaluating an average.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import torch
import torch.nn as nn

from bench.errors import BenchError

StateDict = dict[str, torch.Tensor]


def average_state_dicts(state_dicts: Sequence[Mapping[str, torch.Tensor]]) -> StateDict:
    """The element-wise mean of floating-point entries; integer entries (num_batches_tracked) from the first."""
    if not state_dicts:
        raise BenchError("average_state_dicts: no state dicts to average")
    first = state_dicts[0]
    for i, sd in enumerate(state_dicts[1:], 1):
        if sd.keys() != first.keys() or any(sd[k].shape != t.shape for k, t in first.items()):
            raise BenchError(f"average_state_dicts: state dict {i} does not have the keys and shapes of the first")
    out: StateDict = {}
    for key, t in first.items():
        if not t.is_floating_point():
            out[key] = t.clone()
            continue
        # Summed in float64 so that the mean of N equal tensors is exactly that tensor.
        total = torch.zeros(t.shape, dtype=torch.float64, device=t.device)
        for sd in state_dicts:
            total.add_(sd[key].detach().to(t.device))
        out[key] = (total / len(state_dicts)).to(t.dtype)
    return out


@torch.no_grad()
def reestimate_norm_stats(model: nn.Module, loader: Iterable, batches: int) -> int:
    """Recompute every BatchNorm's running mean and variance from training batches (a plain
    cumulative average: momentum None); returns the number of batches used, 0 when the model
    has no BatchNorm (ViT's LayerNorm keeps no statistics)."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return 0
    for m in norms:
        m.reset_running_stats()
        m.momentum = None
    model.train()
    used = 0
    for x, *_ in loader:
        if used == batches:
            break
        model(x)
        used += 1
    model.eval()
    return used
