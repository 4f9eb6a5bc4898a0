"""Weight matching (Git Re-Basin, Ainsworth et al. 2022): permute N networks onto the first.

Hidden units can be permuted without changing what a network computes: reorder a layer's output
channels, the same channels of the BatchNorm after it, and the input channels of every layer that
reads them. Independently trained networks differ by such a permutation (and more), so their plain
average is poor; weight matching finds, per group of tied channels, the permutation that makes
the weights most similar to a reference network; aligned members can then be averaged
(`bench.weights.averaging`).

Each architecture's `ArchSpec.permutation` names its walk in `WALKS`: `vgg11` and `resnet50` (any timm
VGG / ResNet built from plain conv + BatchNorm layers, so both scales and both stems). The others have
none, and their `permutation_unsupported_reason` is the error a user gets.
"""
from __future__ import annotations

import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn as nn
from scipy.optimize import linear_sum_assignment

from bench.errors import BenchError, choose
from bench.models import ARCH_SPECS, model_class

StateDict = dict[str, torch.Tensor]
Perms = dict[str, torch.Tensor]  # group -> index tensor: the permuted tensor is `t.index_select(axis, perm)`

SUPPORTED: tuple[str, ...] = tuple(arch for arch, spec in ARCH_SPECS.items() if spec.permutation is not None)

RTOL = 1e-6  # relative gain below which weight matching counts a group as not improved

_WEIGHTED = (nn.Conv2d, nn.Linear)
_NORM = nn.BatchNorm2d
# BatchNorm tensors indexed by channel; num_batches_tracked is a scalar count and is never permuted.
_NORM_TENSORS = ("weight", "bias", "running_mean", "running_var")
# Weight matching's objective is over weights and biases only (Git Re-Basin's): running statistics
# describe the data a network saw, not what it computes, and are permuted along without counting.
_STATISTICS = ("running_mean", "running_var")


def _in_objective(key: str) -> bool:
    return not key.endswith(_STATISTICS)


@dataclass(frozen=True)
class PermutationSpec:
    """Which axis of which state-dict entry each permutation group acts on.

    `sizes`: group -> number of channels. `axes`: state-dict key -> the group of each axis (None:
    that axis is not permuted). `groups`: group -> every (key, axis) it permutes.
    """

    sizes: dict[str, int]
    axes: dict[str, tuple[str | None, ...]]
    groups: dict[str, tuple[tuple[str, int], ...]]


class WeightMatchingError(BenchError):
    """An architecture, model or state dict that weight matching cannot permute."""


class _SpecBuilder:
    """Collects the axes of a model's tensors group by group while its structure is walked."""

    def __init__(self) -> None:
        self.sizes: dict[str, int] = {}
        self.axes: dict[str, list[str | None]] = {}
        self.visited: set[str] = set()

    def group(self, name: str, size: int) -> str:
        assert name not in self.sizes, f"permutation group {name!r} defined twice"
        self.sizes[name] = size
        return name

    def _mark(self, key: str, tensor: torch.Tensor, axis: int, group: str) -> None:
        if tensor.shape[axis] != self.sizes[group]:
            raise WeightMatchingError(f"weight matching: {key} has {tensor.shape[axis]} channels on axis {axis}, "
                                      f"permutation {group!r} has {self.sizes[group]}")
        groups = self.axes.setdefault(key, [None] * tensor.dim())
        if groups[axis] not in (None, group):
            raise WeightMatchingError(f"weight matching: {key} axis {axis} is in both {groups[axis]!r} and {group!r}")
        groups[axis] = group

    def layer(self, name: str, module: nn.Module, in_group: str | None, out_group: str | None) -> None:
        """A conv or linear layer: `out_group` permutes its output channels, `in_group` its inputs."""
        if isinstance(module, nn.Conv2d) and module.groups != 1:
            # A grouped conv only mixes channels within a group: a free permutation would break it.
            raise WeightMatchingError(f"weight matching: grouped convolution {name!r} is not supported")
        self.visited.add(name)
        prefix = f"{name}." if name else ""
        if out_group is not None:
            self._mark(prefix + "weight", module.weight, 0, out_group)
            if module.bias is not None:
                self._mark(prefix + "bias", module.bias, 0, out_group)
        if in_group is not None:
            self._mark(prefix + "weight", module.weight, 1, in_group)

    def norm(self, name: str, module: nn.Module, group: str | None) -> None:
        if group is None:
            raise WeightMatchingError(f"weight matching: BatchNorm {name!r} normalises unpermuted inputs")
        self.visited.add(name)
        for attr in _NORM_TENSORS:
            tensor = getattr(module, attr, None)
            if tensor is not None:
                self._mark(f"{name}.{attr}", tensor, 0, group)

    def chain(self, layers: list[tuple[str, nn.Module]], in_group: str | None, out_group: str | None) -> str | None:
        """Conv/linear/BatchNorm layers applied one after the other; returns the output's group.

        Activations, pooling and dropout between them act on each channel alone, so they commute
        with the permutation and are skipped. Every conv/linear output gets a new group named
        after the layer, except the last, whose output is `out_group` (a residual stream, or None
        for logits); a BatchNorm shares the group of the layer before it.
        """
        last = max((i for i, (_, m) in enumerate(layers) if isinstance(m, _WEIGHTED)), default=-1)
        current = in_group
        for i, (name, module) in enumerate(layers):
            if isinstance(module, _NORM):
                self.norm(name, module, current)
                continue
            out = out_group if i == last else self.group(name, module.weight.shape[0])
            self.layer(name, module, current, out)
            current = out
        return current

    def build(self, model: nn.Module, arch: str) -> PermutationSpec:
        # Any weight the walk did not reach (squeeze-excite, attention, ...) would be left
        # unpermuted and silently change the function: refuse instead.
        for name, module in model.named_modules():
            owns = any(True for _ in module.parameters(recurse=False)) or any(
                t.is_floating_point() for t in module.buffers(recurse=False))
            if owns and name not in self.visited:
                raise WeightMatchingError(f"weight matching: {arch} has a {type(module).__name__} at "
                                          f"{name!r} that the permutation spec does not cover")
        groups: dict[str, list[tuple[str, int]]] = {g: [] for g in self.sizes}
        for key, axis_groups in self.axes.items():
            for axis, g in enumerate(axis_groups):
                if g is not None:
                    groups[g].append((key, axis))
        return PermutationSpec(dict(self.sizes), {k: tuple(v) for k, v in self.axes.items()},
                               {g: tuple(v) for g, v in groups.items()})


def _layers(module: nn.Module, prefix: str) -> list[tuple[str, nn.Module]]:
    """The conv, linear and BatchNorm modules in `module` (itself included), in registration order."""
    return [(".".join(p for p in (prefix, name) if p), m) for name, m in module.named_modules()
            if isinstance(m, (*_WEIGHTED, _NORM))]


def _vgg_spec(b: _SpecBuilder, model: nn.Module) -> None:
    # VGG is one chain: features (conv, BN, ReLU, pool), then the optional ConvMlp pre-logits and
    # the head (global pool + Linear), registered in the order they run.
    b.chain(_layers(model, ""), None, None)


def _resnet_spec(b: _SpecBuilder, model: nn.Module) -> None:
    # The residual stream is one set of channels as long as blocks add their output to their
    # input unchanged (identity shortcut): the stem, every such block's last conv/BN output and
    # every conv that reads the stream share one permutation. A block with a downsample shortcut
    # (a conv, in timm also layer1's first block: 64 -> 256 channels in ResNet-50) writes a new
    # stream, with its own permutation shared by its last conv/BN and the downsample conv/BN.
    stem = _layers(model.conv1, "conv1") + _layers(model.bn1, "bn1")
    stream = b.chain(stem, None, b.group("stream.stem", model.bn1.num_features))
    for stage in ("layer1", "layer2", "layer3", "layer4"):
        for i, block in enumerate(getattr(model, stage)):
            name = f"{stage}.{i}"
            # The residual branch: conv1/bn1 -> conv2/bn2 (-> conv3/bn3); direct children only, so
            # the downsample and any attention module are not part of it.
            branch = [(f"{name}.{n}", m) for n, m in block.named_children() if isinstance(m, (*_WEIGHTED, _NORM))]
            out = stream
            if block.downsample is not None:
                last_conv = [m for _, m in branch if isinstance(m, nn.Conv2d)][-1]
                out = b.group(f"stream.{name}", last_conv.out_channels)
                b.chain(_layers(block.downsample, f"{name}.downsample"), stream, out)
            b.chain(branch, stream, out)
            stream = out
    if isinstance(model.fc, nn.Linear):
        b.chain([("fc", model.fc)], stream, None)


# The walks `ArchSpec.permutation` names.
WALKS: dict[str, Callable[[_SpecBuilder, nn.Module], None]] = {"vgg": _vgg_spec, "resnet": _resnet_spec}


def _walk(arch: str) -> Callable[[_SpecBuilder, nn.Module], None]:
    spec = ARCH_SPECS[choose("arch", arch, ARCH_SPECS)]
    if spec.permutation is None:
        raise WeightMatchingError(f"weight matching supports {', '.join(SUPPORTED)}, not {arch}: "
                                  f"{spec.permutation_unsupported_reason}")
    return WALKS[spec.permutation]


def permutation_spec(model: nn.Module, arch: str) -> PermutationSpec:
    """The permutation groups of `model` (a `build_model(arch, ...)` network), from its modules."""
    walk = _walk(arch)
    cls = model_class(arch)
    if not isinstance(model, cls):
        raise WeightMatchingError(f"weight matching: {arch} expects a {cls.__name__}, got {type(model).__name__}")
    builder = _SpecBuilder()
    walk(builder, model)
    return builder.build(model, arch)


def _check(spec: PermutationSpec, state_dict: Mapping[str, torch.Tensor], perms: Perms | None = None) -> None:
    for key, groups in spec.axes.items():
        if key not in state_dict:
            raise WeightMatchingError(f"weight matching: the state dict has no {key!r}; is it the spec's architecture?")
        shape = state_dict[key].shape
        if len(shape) != len(groups) or any(g and shape[a] != spec.sizes[g] for a, g in enumerate(groups)):
            raise WeightMatchingError(f"weight matching: {key} has shape {tuple(shape)}, which the spec does not fit")
    if perms is not None:
        if perms.keys() != spec.sizes.keys():
            raise WeightMatchingError(f"weight matching: permutations for groups "
                                      f"{sorted(spec.sizes.keys() ^ perms.keys())} missing or not in the spec")
        for g, p in perms.items():
            if not torch.equal(p.sort().values.cpu(), torch.arange(spec.sizes[g])):
                raise WeightMatchingError(f"weight matching: perms[{g!r}] is not a permutation of "
                                          f"{spec.sizes[g]} channels")


def _permute(spec: PermutationSpec, key: str, tensor: torch.Tensor, perms: Perms, skip_axis: int = -1) -> torch.Tensor:
    for axis, g in enumerate(spec.axes[key]):
        if g is not None and axis != skip_axis:
            tensor = tensor.index_select(axis, perms[g].to(tensor.device))
    return tensor


def apply_permutation(spec: PermutationSpec, state_dict: Mapping[str, torch.Tensor], perms: Perms) -> StateDict:
    """A new state dict with every spec'd axis permuted (`t.index_select(axis, perms[group])`).

    The input is not modified; entries the spec does not touch are shared with it, not copied.
    """
    _check(spec, state_dict, perms)
    return {key: _permute(spec, key, t, perms) if key in spec.axes else t for key, t in state_dict.items()}


def _rows(tensor: torch.Tensor, axis: int) -> torch.Tensor:
    """The tensor as a matrix with one row per channel of `axis`."""
    return tensor.movedim(axis, 0).reshape(tensor.shape[axis], -1)


def _canonical_start(spec: PermutationSpec, ref: Mapping[str, torch.Tensor],
                     other: Mapping[str, torch.Tensor]) -> Perms:
    """Per group, the channels of both networks ranked by the norm of everything the group
    permutes (a norm that does not change when any other axis is permuted), paired rank by rank.

    Coordinate descent finds a local optimum that depends on where it starts; starting from the
    identity would make the result depend on the order of `other`'s units. This start does not:
    the pairing of ranks is the same for every permuted copy of `other` (channels of exactly
    equal norm, e.g. dead ones, are ranked by index: there the order can still matter)."""
    perms: Perms = {}
    for g, n in spec.sizes.items():
        rank = lambda sd: torch.stack([_rows(sd[k], a).double().square().sum(1)
                                       for k, a in spec.groups[g] if _in_objective(k)]).sum(0).argsort(stable=True)
        start = torch.empty(n, dtype=torch.long)
        start[rank(ref)] = rank(other)
        perms[g] = start
    return perms


def weight_matching(spec: PermutationSpec, reference_sd: Mapping[str, torch.Tensor],
                    other_sd: Mapping[str, torch.Tensor], max_iter: int = 100, seed: int = 0) -> Perms:
    """Permutations that make `other_sd` most similar to `reference_sd` (sum of inner products of
    the weights and biases; BatchNorm running statistics are permuted but not counted).

    Coordinate descent: groups are visited in a random order (seeded, new each sweep); each one is
    solved exactly as a linear assignment with all other groups held fixed. It starts from
    `_canonical_start`, so the result does not depend on the order `other_sd`'s units come in:
    a permuted copy of `other_sd` is aligned to the same weights (barring channels of equal norm). Stops after a sweep
    in which no group improved the objective by more than `RTOL` (relative), or after `max_iter`
    sweeps.
    """
    _check(spec, reference_sd)
    _check(spec, other_sd)
    # float32 on the CPU (float64 matrix products are ~3x slower, ResNet-50's 2048-channel stream
    # dominates); the rounding this leaves in the scores is what `RTOL` absorbs.
    ref = {k: reference_sd[k].detach().to("cpu", torch.float32) for k in spec.axes}
    other = {k: other_sd[k].detach().to("cpu", torch.float32) for k in spec.axes}
    perms = _canonical_start(spec, ref, other)
    rng = random.Random(seed)
    order = sorted(spec.sizes)
    for _ in range(max_iter):
        improved = False
        for g in rng.sample(order, len(order)):
            n = spec.sizes[g]
            # similarity[i, j]: reference channel i against other channel j, over every tensor the
            # group permutes, with the other axes of those tensors aligned by the current perms.
            similarity = torch.zeros(n, n)
            for key, axis in spec.groups[g]:
                if _in_objective(key):
                    similarity += _rows(ref[key], axis) @ _rows(_permute(spec, key, other[key], perms, axis), axis).T
            _, cols = linear_sum_assignment(similarity.numpy(), maximize=True)
            new = torch.from_numpy(cols).long()
            rows = torch.arange(n)
            old_score = float(similarity[rows, perms[g]].double().sum())
            new_score = float(similarity[rows, new].double().sum())
            # A gain within float32 rounding is a tie: keep the old permutation so that the descent
            # cannot cycle between equal optima.
            if new_score > old_score + RTOL * max(abs(old_score), 1e-30):
                perms[g], improved = new, True
        if not improved:
            break
    return perms


def align_to_first(arch: str, state_dicts: Sequence[Mapping[str, torch.Tensor]], model: nn.Module,
                   *, max_iter: int = 100, seed: int = 0) -> list[StateDict]:
    """Every state dict permuted to match the first (which is returned as is).

    `model`: any network with the members' architecture (e.g. the first member) to read the
    permutation groups from.
    """
    if not state_dicts:
        raise WeightMatchingError("weight matching: no state dicts to align")
    spec = permutation_spec(model, arch)
    first = state_dicts[0]
    return [dict(first)] + [apply_permutation(spec, sd, weight_matching(spec, first, sd, max_iter, seed))
                            for sd in state_dicts[1:]]

