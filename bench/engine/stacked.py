"""Training M networks of one architecture at once, as one network: `train_stack(cfgs, outs)`.

Packing (`stack_models`): member m's channels are [m*C, (m+1)*C) of every activation. A
convolution becomes one convolution with M times the groups, a BatchNorm over C channels one over
M*C, a linear layer a block-diagonal one (`BlockLinear`, a batched matmul); activations, pools and
residual adds act on the M*C channels unchanged. Member m's input is channels [m*3, (m+1)*3) of the
packed input, its logits `packed(x).view(B, M, K)[:, m]`. Every packed tensor (weights, buffers,
optimizer moments) is the members' tensors concatenated along dim 0 under the member's own name, so
packing and unpacking a state dict is `cat` / `chunk`, and the optimizer's weight-decay groups
(`param_groups`, by dimension and name) come out as each member's.

Exactness: each member keeps its own seed (initial weights built as `train` builds them, its own
data order and augmentation); the loss is the sum of the members' mean losses, so each member's
gradient is its own; AdamW and SGD update element by element with one learning rate, so each
member's update is its own. What may differ from training alone is float rounding, not the
computation: a 3-channel stem and the head run member by member, the rest as grouped kernels,
which round otherwise than a member's own (as train() itself does on another thread count), and
the tiny recipes amplify that (~1e-3 in the loss within three steps; after 3 epochs on digits or
the testbed some weights of a tiny VGG member differ by ~1 from training it alone, contiguous or
channels-last). Gradient clipping by a global norm would couple the members; `train` does not
clip, so neither does this.

Files: each member's run folder gets what `train` writes (config.json, log.jsonl, a checkpoint
per epoch, model.* whose sidecar has the same keys); its seconds are its share (1/M) of the stack's.
A later `train` with the same config finds it finished; `train` resumes a checkpoint a stack wrote
and a stack resumes checkpoints `train` wrote. A stack resumes when its members' checkpoints are at
one step; `train_stack` trains members at other steps (and finished ones are just found) apart.

Architectures with a module the packer does not know (ViT: LayerNorm, attention) are refused with
`Unstackable` and its reason; `train_stack` then trains the members one at a time.
"""
from __future__ import annotations

import copy
from functools import partial
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from bench.checkpoint import load_optimizer_state, paths, read_meta
from bench.data import dataset_spec
from bench.data.loaders import make_loader
from bench.engine.checkpointer import RunFolder
from bench.engine.devices import autocast, pick_device
from bench.engine.loop import NonFiniteLoss, StepBatches, fit
from bench.engine.optim import make_optimizer
from bench.engine.schedule import lr_factor
from bench.engine.train import EVAL_SPLITS, LOG_ONLY, keep_predictions, model_meta, run_folder, train
from bench.errors import BenchError
from bench.metrics import classification_metrics, for_split
from bench.models import ARCH_SPECS, build_model
from bench.train_config import TrainConfig
from bench.job_env import capped_steps, world


class Unstackable(BenchError):
    """The architecture (or the run) cannot be trained as a stack; the message says why."""


class BlockLinear(nn.Module):
    """M linear layers (in -> out) side by side: (..., M*in) -> (..., M*out). The weight is
    (M*out, in) and the bias (M*out,): the members' own tensors concatenated. Computed member by
    member, as `nn.Linear` computes it (the same bits; a batched matmul's weight gradient rounds
    otherwise, and a classifier head is a small part of a step)."""

    def __init__(self, members: int, in_features: int, out_features: int, bias: bool = True) -> None:
        super().__init__()
        self.members, self.in_features, self.out_features = members, in_features, out_features
        self.weight = nn.Parameter(torch.empty(members * out_features, in_features))
        self.bias = nn.Parameter(torch.empty(members * out_features)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = self.members
        biases = self.bias.chunk(m) if self.bias is not None else [None] * m
        return torch.cat([F.linear(xi, wi, bi) for xi, wi, bi in zip(x.chunk(m, -1), self.weight.chunk(m), biases)], -1)

    def extra_repr(self) -> str:
        return f"members={self.members}, in_features={self.in_features}, out_features={self.out_features}"


class MemberConv2d(nn.Conv2d):
    """A packed convolution computed member by member (the same weights and names as the grouped
    one): CPU kernels run a convolution with very few input channels per group (a 3-channel stem)
    about twice as slowly grouped as one member at a time."""

    def __init__(self, members: int, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.members = members

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = self.members
        biases = self.bias.chunk(m) if self.bias is not None else [None] * m
        return torch.cat([F.conv2d(xi, wi, bi, self.stride, self.padding, self.dilation, self.groups // m)
                          for xi, wi, bi in zip(x.chunk(m, 1), self.weight.chunk(m), biases)], 1)


SPLIT_BELOW = 4  # input channels per group under which a packed convolution runs member by member


def _name(module: nn.Module) -> str:
    return f"{type(module).__module__}.{type(module).__qualname__}"


# Modules whose own forward code is known to treat channels one by one (so M*C packed channels
# stay M independent networks): containers whose forward only chains, pools and adds, and
# parameter-free leaves. Anything else (LayerNorm, attention, a reshape by heads) is refused.
CONTAINERS = {
    "torch.nn.modules.container.Sequential", "timm.models.vgg.VGG", "timm.layers.classifier.ClassifierHead",
    "timm.layers.adaptive_avgmax_pool.SelectAdaptivePool2d", "timm.models.resnet.ResNet",
    "timm.models.resnet.Bottleneck", "timm.models.resnet.BasicBlock", "bench.models.wrn.WideResNet",
    "bench.models.wrn.Block",
}
STATELESS = {
    "torch.nn.modules.activation.ReLU", "torch.nn.modules.pooling.MaxPool2d", "torch.nn.modules.pooling.AvgPool2d",
    "torch.nn.modules.pooling.AdaptiveAvgPool2d", "torch.nn.modules.pooling.AdaptiveMaxPool2d",
    "torch.nn.modules.linear.Identity", "torch.nn.modules.flatten.Flatten",
}


def _packed_leaf(module: nn.Module, m: int) -> nn.Module | None:
    """The packed counterpart of a leaf with weights (None: the leaf is kept as it is)."""
    if type(module) is nn.Conv2d:
        if module.padding_mode != "zeros":
            raise Unstackable(f"a Conv2d with padding_mode {module.padding_mode!r} is not packed")
        split = module.in_channels // module.groups < SPLIT_BELOW
        return (partial(MemberConv2d, m) if split else nn.Conv2d)(
            m * module.in_channels, m * module.out_channels, module.kernel_size, module.stride,
            module.padding, module.dilation, m * module.groups, module.bias is not None)
    if type(module) is nn.BatchNorm2d:
        return nn.BatchNorm2d(m * module.num_features, module.eps, module.momentum, module.affine,
                              module.track_running_stats)
    if type(module) is nn.Linear:
        return BlockLinear(m, module.in_features, module.out_features, module.bias is not None)
    if type(module) is nn.Dropout:
        if module.p > 0:  # each member alone draws its own mask from the global generator
            raise Unstackable(f"dropout (p = {module.p}) draws masks the members would share")
        return None
    if _name(module) in STATELESS:
        return None
    raise Unstackable(f"{_name(module)} is not a module the packer knows")


def pack_state(states: Sequence[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """The members' tensors concatenated along dim 0 under their own names; a 0-dim tensor (a step
    count) is one for all and must agree."""
    out = {}
    for key, first in states[0].items():
        if first.ndim == 0:
            if any(not torch.equal(s[key], first) for s in states[1:]):
                raise Unstackable(f"the members' {key} differ ({[s[key].item() for s in states]})")
            out[key] = first.clone()
        else:
            out[key] = torch.cat([s[key] for s in states])
    return out


def unpack_state(state: dict[str, torch.Tensor], members: int) -> list[dict[str, torch.Tensor]]:
    out: list[dict[str, torch.Tensor]] = [{} for _ in range(members)]
    for key, value in state.items():
        parts = [value] * members if value.ndim == 0 else value.chunk(members)
        for d, part in zip(out, parts):
            d[key] = part.clone()
    return out


def pack_optimizer_state(states: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Optimizer state dicts of the members (same param order) as the packed optimizer's."""
    pids = states[0]["state"].keys()
    return {"state": {p: pack_state([s["state"][p] for s in states]) for p in pids},
            "param_groups": copy.deepcopy(states[0]["param_groups"])}


def unpack_optimizer_state(state: dict[str, Any], members: int) -> list[dict[str, Any]]:
    per = {p: unpack_state(s, members) for p, s in state["state"].items()}
    return [{"state": {p: per[p][i] for p in per}, "param_groups": copy.deepcopy(state["param_groups"])}
            for i in range(members)]


def stack_models(models: Sequence[nn.Module], check: bool = True, image_size: int = 16) -> nn.Module:
    """One network computing every member side by side (see the module doc); its output is
    (B, M*K), member m's logits at [:, m*K:(m+1)*K]. Raises `Unstackable` with the reason when
    a module is not one the packer knows. `check`: the packed network's forward is compared with
    each member's on one random batch (eval mode), a guard against forward code that mixes channels."""
    m = len(models)
    if m < 1:
        raise ValueError("stack_models needs at least one model")
    first = models[0]
    kinds = [[_name(x) for x in mod.modules()] for mod in models]
    if any(k != kinds[0] for k in kinds[1:]):
        raise Unstackable("the members are not one architecture")
    packed = copy.deepcopy(first)
    for name, module in list(packed.named_modules()):
        if any(True for _ in module.children()):
            if _name(module) not in CONTAINERS:
                raise Unstackable(f"{_name(module)} is not a module the packer knows")
            continue
        new = _packed_leaf(module, m)
        if new is not None:
            parent, _, leaf = name.rpartition(".")
            setattr(packed.get_submodule(parent) if parent else packed, leaf, new)
    if not any(True for _ in first.children()):
        raise Unstackable(f"{_name(first)} is not a module the packer knows")
    packed.load_state_dict(pack_state([mod.state_dict() for mod in models]))
    packed = packed.to(next(first.parameters()).device)
    if check:
        _check_packed(packed, models, image_size)
    return packed


@torch.no_grad()
def _check_packed(packed: nn.Module, models: Sequence[nn.Module], image_size: int) -> None:
    modes = [mod.training for mod in models]
    device = next(packed.parameters()).device
    x = torch.randn(2, 3, image_size, image_size, generator=torch.Generator().manual_seed(0)).to(device)
    packed.eval()
    got = packed(x.repeat(1, len(models), 1, 1)).view(2, len(models), -1)
    for i, mod in enumerate(models):
        want = mod.eval()(x)
        if got.shape[-1] != want.shape[-1] or not torch.allclose(got[:, i], want, rtol=1e-3, atol=1e-4):
            raise Unstackable(f"the packed forward of {_name(models[0])} does not give member {i}'s logits")
    for mod, mode in zip(models, modes):
        mod.train(mode)


# --- training ---------------------------------------------------------------------------------

class StackedObjective:
    """The supervised objective of `train` for M members at once: one step is every member's step on
    its own batch; the last log point evaluates every member on the val and test splits."""

    labels = {"loss": "summed members' training"}

    def __init__(self, net: nn.Module, optimizer, train_loaders, eval_loaders, label_smoothing: float,
                 device: torch.device, channels_last: bool, steps: int) -> None:
        # The last step the loop makes (a smoke run's cap, bench.job_env.capped_steps) evaluates.
        self.model, self.optimizer, self.eval_loaders, self.steps = net, optimizer, eval_loaders, capped_steps(steps)
        self.members, self.label_smoothing, self.device = len(train_loaders), label_smoothing, device
        self.batches = [StepBatches(loader) for loader in train_loaders]
        self.steps_per_epoch = len(train_loaders[0])
        self.channels_last = channels_last
        self.seconds_before = [0.0] * self.members  # each member's seconds before this stack began
        self._sums, self._count = torch.zeros(self.members, device=device), 0
        self.final: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}  # split -> (probs (N, M, K), labels)

    def _input(self, xs: Sequence[torch.Tensor]) -> torch.Tensor:
        # cat keeps the members' memory format (augmented batches come channels-last strided, test
        # batches contiguous), so every layer runs the kernels a member alone runs.
        x = torch.cat(xs, 1)
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def loss(self, step: int) -> dict[str, torch.Tensor]:
        got = [b(step) for b in self.batches]
        if any(restarted for _, restarted in got):
            self.model.train()
        x = self._input([batch[0] for batch, _ in got])
        y = torch.stack([batch[1] for batch, _ in got], 1)  # (B, M)
        with autocast(self.device):
            logits = self.model(x).view(len(y), self.members, -1)
            # Member by member, as train() computes each one's loss (its mean rounds the same).
            per_member = torch.stack([F.cross_entropy(logits[:, i], y[:, i], label_smoothing=self.label_smoothing)
                                      for i in range(self.members)])
        self._sums += per_member.detach()
        self._count += 1
        return {"loss": per_member.sum()}

    @torch.no_grad()
    def predict(self, loader) -> tuple[torch.Tensor, torch.Tensor]:
        """Every member's softmax outputs on one split (N, M, K) and the labels."""
        self.model.eval()
        probs, labels = [], []
        for x, y, *_ in loader:
            with autocast(self.device):
                logits = self.model(self._input([x] * self.members))
            probs.append(logits.float().view(len(y), self.members, -1).softmax(-1).cpu())
            labels.append(y.cpu())
        return torch.cat(probs), torch.cat(labels)

    def log_row(self, step: int, means: dict[str, torch.Tensor], seconds: float) -> dict[str, Any]:
        losses = (self._sums / self._count).tolist()
        self._sums, self._count = torch.zeros_like(self._sums), 0
        rows = [{"epoch": step // self.steps_per_epoch, "train_loss": losses[i],
                 "train_s": self.seconds_before[i] + seconds / self.members} for i in range(self.members)]
        if step == self.steps:
            for split, loader in self.eval_loaders.items():
                probs, labels = self.final[split] = self.predict(loader)
                for i, row in enumerate(rows):
                    row.update(for_split(classification_metrics(probs[:, i], labels), split))
        return {"members": rows}


class StackFolder:
    """The members' run folders as one for `fit`: a resume packs their checkpoints, a save
    unpacks into each member's own model and optimizer and writes each folder as `train` does."""

    def __init__(self, folders: list[RunFolder], models: list[nn.Module], optimizers: list, bases: list[dict],
                 objective: StackedObjective) -> None:
        self.folders, self.models, self.optimizers, self.bases, self.objective = folders, models, optimizers, bases, objective
        self.before: list[list[dict[str, Any]]] = [[] for _ in folders]  # histories before this stack

    def resume(self, net: nn.Module, optimizer) -> dict[str, Any] | None:
        metas = [f.resume(m, o) for f, m, o in zip(self.folders, self.models, self.optimizers)]
        if all(meta is None for meta in metas):
            return None
        if any(meta is None for meta in metas) or len({meta["step"] for meta in metas}) > 1:
            raise BenchError("a stack resumes only members whose checkpoints are at one step")
        net.load_state_dict(pack_state([m.state_dict() for m in self.models]))
        load_optimizer_state(optimizer, pack_optimizer_state([o.state_dict() for o in self.optimizers]))
        self.before = [meta["history"] for meta in metas]
        self.objective.seconds_before = [meta["seconds"] for meta in metas]
        # fit counts the stack's own steps and seconds from here; each member's are added back on save.
        return {"step": metas[0]["step"], "history": [], "seconds": 0.0}

    def history(self, i: int, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return self.before[i] + [{**r["members"][i], **{k: v for k, v in r.items() if k != "members"}}
                                 for r in rows]

    def unpack(self, net: nn.Module, optimizer) -> None:
        for model, state in zip(self.models, unpack_state(net.state_dict(), len(self.models))):
            model.load_state_dict(state)
        for opt, state in zip(self.optimizers, unpack_optimizer_state(optimizer.state_dict(), len(self.models))):
            load_optimizer_state(opt, state)

    def save(self, net: nn.Module, optimizer, meta: dict[str, Any]) -> None:
        self.unpack(net, optimizer)
        for i, (folder, model, opt) in enumerate(zip(self.folders, self.models, self.optimizers)):
            folder.save(model, opt, {**self.bases[i], **{k: v for k, v in meta.items() if k not in ("history", "seconds")},
                                     "history": self.history(i, meta["history"]),
                                     "seconds": self.objective.seconds_before[i] + meta["seconds"] / len(self.models)})


def stack_key(cfg: TrainConfig) -> dict[str, Any]:
    """What members of one stack share: the whole resolved config but the seeds."""
    return {k: v for k, v in cfg.resolved().to_json().items() if k not in ("seed", "init_seed")}


def check_stackable(cfgs: Sequence[TrainConfig]) -> None:
    """Raise `Unstackable` when these runs cannot share one network (the architecture is checked
    when the members are packed)."""
    if world()[1] > 1:
        raise Unstackable(f"a data-parallel job ({world()[1]} ranks) trains its members one at a time")
    keys = [stack_key(c) for c in cfgs]
    if any(k != keys[0] for k in keys[1:]):
        diff = sorted(f for f in keys[0] if any(k.get(f) != keys[0][f] for k in keys[1:]))
        raise Unstackable(f"the members' configs differ in {', '.join(diff)}, not only in the seed")
    if keys[0]["pretrained"] or keys[0]["init_from"] or keys[0].get("pretrained_weights"):
        raise Unstackable("members starting from given weights (pretrained, init_from) are trained alone")


def _train_packed(cfgs: list[TrainConfig], outs: list[Path], progress: bool | None) -> list[dict[str, Any]]:
    """Train (or resume) members whose checkpoints are at one step, as one stacked network."""
    check_stackable(cfgs)
    cfg0 = cfgs[0]
    device = pick_device(cfg0.device)
    spec = dataset_spec(cfg0.dataset)
    models = []
    for cfg in cfgs:  # each member's initial weights exactly as train() draws them
        torch.manual_seed(cfg.seed if cfg.init_seed is None else cfg.init_seed)
        models.append(build_model(cfg.arch, spec.num_classes, cfg.image_size, cfg.scale).to(device))
    net = stack_models(models, image_size=cfg0.image_size)
    # train()'s policy: convolutional networks train channels-last (GPU and CPU).
    channels_last = ARCH_SPECS[cfg0.arch].channels_last
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
    opt_args = dict(lr=cfg0.lr, weight_decay=cfg0.weight_decay, momentum=cfg0.momentum)
    optimizer = make_optimizer(net, cfg0.optimizer, **opt_args)
    optimizers = [make_optimizer(m, cfg0.optimizer, **opt_args) for m in models]
    common = dict(batch_size=cfg0.batch_size, root=cfg0.data_root, image_size=cfg0.image_size, device=device)
    loaders = [make_loader(c.dataset, c.train_split, train=True, beton=c.beton_train, fraction=c.train_fraction,
                           seed=c.seed, **common) for c in cfgs]
    eval_loaders = {split: make_loader(cfg0.dataset, split, train=False, seed=cfg0.seed, **common,
                                       beton=cfg0.beton_test if split == "test" else None) for split in EVAL_SPLITS}
    steps_per_epoch = len(loaders[0])
    if steps_per_epoch == 0:
        raise BenchError(f"the training data ({cfg0.train_fraction:g} of the {cfg0.dataset} split) is smaller "
                         f"than one batch of {cfg0.batch_size}; use a larger fraction or a smaller batch")
    total = cfg0.epochs * steps_per_epoch
    objective = StackedObjective(net, optimizer, loaders, eval_loaders, cfg0.label_smoothing, device, channels_last, total)
    folders = [run_folder(c, o) for c, o in zip(cfgs, outs)]
    bases = [{**model_meta(c, spec.num_classes), "config": c.to_json()} for c in cfgs]
    folder = StackFolder(folders, models, optimizers, bases, objective)
    warmup = round(cfg0.warmup_epochs * steps_per_epoch)
    milestones = [m * steps_per_epoch for m in cfg0.milestones]
    history, seconds = fit(
        objective, folder, steps=total, log_every=steps_per_epoch, lr=cfg0.lr,
        schedule=lambda s: lr_factor(s, total, warmup, cfg0.schedule, milestones=milestones, gamma=cfg0.gamma),
        checkpoint_meta=lambda step: {"epoch": step // steps_per_epoch},
        describe=lambda r: f"epoch {r['members'][0]['epoch']}/{cfg0.epochs}" + (
            f" mean val top1 {sum(x['val_top1'] for x in r['members']) / len(cfgs):.2f}"
            if "val_top1" in r["members"][0] else ""),
        desc=f"{cfg0.arch}/{cfg0.dataset} seeds {','.join(str(c.seed) for c in cfgs)}", progress=progress)
    folder.unpack(net, optimizer)
    for i, (f, model) in enumerate(zip(folders, models)):
        rows = folder.history(i, history)
        f.finish(model.state_dict(), {
            **bases[i], "epochs": cfg0.epochs, "metrics": {k: v for k, v in rows[-1].items() if k not in LOG_ONLY},
            "train_s": objective.seconds_before[i] + seconds / len(cfgs)}, rows)
        keep_predictions(cfgs[i], f, device, {split: (probs[:, i].contiguous(), labels)
                                              for split, (probs, labels) in objective.final.items()})
    return [f.finished() for f in folders]


def _checkpoint_step(folder: RunFolder) -> int:
    sidecar = paths(folder.checkpoint)[1]
    return read_meta(folder.checkpoint).get("step", -1) if sidecar.exists() else 0


def train_stack(cfgs: Sequence[TrainConfig], outs: Sequence[str | Path], *, progress: bool | None = None,
                on_fallback=None) -> list[dict[str, Any] | Exception]:
    """Train (or resume, or find finished) each run `cfgs[i]` in `outs[i]`, stacked where they
    can be; per run its final sidecar (what `train` returns), or the exception that stopped it.

    Finished runs are found; the others are grouped by the step of their checkpoint and each
    group of two or more trained as one stack. When a group cannot stack (`Unstackable`: the
    architecture, differing configs, data-parallel) or a stacked step is not finite (one member
    diverging must not stop the others), its members are trained one at a time by `train`,
    resuming from the checkpoints the stack wrote; `on_fallback(reason)` hears why."""
    cfgs = [c.resolved() for c in cfgs]
    outs = [Path(o) for o in outs]
    results: list[dict[str, Any] | Exception | None] = [None] * len(cfgs)
    groups: dict[int, list[int]] = {}
    for i, (cfg, out) in enumerate(zip(cfgs, outs)):
        folder = run_folder(cfg, out)
        try:
            results[i] = folder.finished()
        except BenchError as err:
            results[i] = err
        if results[i] is None:
            groups.setdefault(_checkpoint_step(folder), []).append(i)
    for step, group in sorted(groups.items()):
        if len(group) > 1:
            try:
                for i, meta in zip(group, _train_packed([cfgs[i] for i in group], [outs[i] for i in group], progress)):
                    results[i] = meta
                continue
            except (Unstackable, NonFiniteLoss) as err:
                if on_fallback is not None:
                    on_fallback(f"{type(err).__name__}: {err}")
        for i in group:
            try:
                results[i] = train(cfgs[i], outs[i], progress=progress)
            except Exception as err:  # this member's own failure; the others still train
                results[i] = err
    return results  # type: ignore[return-value]
