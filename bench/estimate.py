"""GPU-hours a sweep's plan would take, estimated from FLOPs (`python -m bench.sweep --dry-run`).

FLOPs are counted, not measured: `torch.utils.flop_counter.FlopCounterMode` over a forward pass
of the network built on the `meta` device (shapes only: no memory, no weights, nothing
downloaded; a pretrained pool counts its architecture). It counts matrix products,
convolutions and attention, a multiply-add as 2 FLOPs; elementwise work, norms, the optimizer,
data loading and the CPU work (weight matching, averaging) are not counted. GPU-hours are
FLOPs / the sustained throughput / 3600: an estimate of the work, not of a schedule (queueing,
preemption and the tail of a job array are not in it). The throughput (`Throughput`) is the one
`make gpu-check` measured for the job's architecture at its resolution where results/gpu_check.json
has it (a training step's images/s x 3F), a flat `--gpu-tflops` otherwise.

Per job (F = one image's forward FLOPs; train / test = the split sizes in
`bench.data.SPLIT_SIZES`, times the fraction a run trains on):

* a training run: epochs x train x 3F (forward + backward; a backward is about two forwards:
  one product for the activations' gradient, one for the weights', and FlopCounterMode over
  forward + backward of these networks gives 2.97 to 2.99 F) + epochs x test x F (the
  evaluation after every epoch);
* pretrain: a training run of the base network on its source task (tiny pretrained pools);
* teachers: a training run with the pool's recipe (the epochs a member draws, where it draws them);
* meta_train: steps x one step, i.e. the WeightFormer's forward + backward over every layer's
  tokens (counted with FlopCounterMode on the meta device, the real `WeightFormer` module, one
  layer shape at a time: a layer's share of the step depends on its shape only, so the sum is
  the whole step's count), the predicted student's forward + backward on the batch (3F x batch)
  and the group's N teachers' forwards on it (soft labels; when the data set trains without
  augmentation they are computed once over the split for every meta-train member instead);
  with shift consistency, the WeightFormer and the student once more for the shifted group (N
  teachers) and once for the cut-off one (N - 1);
* methods: single / ensemble: test x F x 1 / N; soup / aligned_soup: the BatchNorm
  re-estimation's forwards + test x F; greedy_soup: that for each of the N - 1 candidate soups,
  with its val evaluation (val x F; the members' own val outputs are the ones their training
  kept), + test x F; learned_soup: steps x the student's forward + backward on the batch (3F x
  batch; mixing the weights is elementwise, not counted) + the group's soft labels as meta-training
  pays them (once over the split when it trains without augmentation, else N teachers' forwards
  per batch), + a soup's re-estimation and test x F; kd / self_distill: a student's training run + N / 1
  teachers' forward per training image per epoch (once, when the soft labels are cached);
  weightformer: one WeightFormer forward + re-estimation + test x F; weightformer_ft: that, then
  `ft_epochs` of KD training on `ft_fraction` of the split.
"""
from __future__ import annotations

import dataclasses
import functools
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

from bench.data import SPLIT_SIZES, dataset_spec
from bench.errors import BenchError
from bench.methods import method_options
from bench.models import build_model
from bench.method_options import WFConfig
from bench.train_config import TrainConfig, draw

# Sustained training throughput of one GPU, TFLOP/s. NVIDIA's own tuned ResNet-50 v1.5 trains
# at 2,470 images/s on one A100 80GB in mixed precision (NVIDIA DeepLearningExamples,
# PyTorch/Classification/ConvNets/resnet50v1.5/README.md, "Training performance: NVIDIA DGX
# A100"); at 3 x 8.18 GFLOP per 224 px image (FlopCounterMode, timm's resnet50) that is 61
# TFLOP/s, about 20 % of the A100's 312 TFLOP/s dense bf16 peak. This suite's convnets train
# at batch 64 on 32 px images, which keeps a GPU no busier than that, so the tuned figure is
# the optimistic end for them.
DEFAULT_TFLOPS = 60.0
TFLOPS_SOURCE = ("one A100 80GB training ResNet-50 in mixed precision: 2,470 img/s (NVIDIA DeepLearningExamples, "
                 "resnet50v1.5 README) x 3 x 8.18 GFLOP/img = 61 TFLOP/s, about 20% of its 312 TFLOP/s bf16 "
                 "dense peak")
# Batches of this many images re-estimate BatchNorm statistics (bench.methods.common and
# bench.methods.weightformer_student load the training split at this batch size).
REESTIMATE_BATCH = 128
BACKWARD_FACTOR = 2  # a backward pass's FLOPs, in forwards


def model_forward_flops(model: torch.nn.Module, image_size: int, in_chans: int = 3) -> int:
    """FLOPs of `model`'s forward pass (eval mode) on one image, counted on the meta device."""
    model = model.to("meta").eval()
    with FlopCounterMode(display=False) as counter:
        model(torch.empty(1, in_chans, image_size, image_size, device="meta"))
    return counter.get_total_flops()


@functools.lru_cache(maxsize=None)
def forward_flops(arch: str, num_classes: int, image_size: int, scale: str) -> int:
    """FLOPs of one image's forward pass through `arch` built for the data set's shapes."""
    with torch.device("meta"):
        model = build_model(arch, num_classes, image_size, scale)
    return model_forward_flops(model, image_size)


@functools.lru_cache(maxsize=None)
def has_batchnorm(arch: str, num_classes: int, image_size: int, scale: str) -> bool:
    """Whether re-estimating normalisation statistics runs any forward (ViT has no BatchNorm)."""
    with torch.device("meta"):
        model = build_model(arch, num_classes, image_size, scale)
    return any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules())


# (kind_key, n_tokens, token_width, cfg, N, teachers given) -> (forward, backward) FLOPs
_LAYER_FLOPS: dict[tuple[Any, ...], tuple[int, int]] = {}


def _counted(layer: Any, cfg: WFConfig, n_teachers: int, n_given: int) -> tuple[int, int]:
    """(forward, backward) FLOPs of the real WeightFormer module built for `layer` alone, on the meta device."""
    from bench.weightformer.model import WeightFormer

    with torch.device("meta"):
        wf = WeightFormer([layer], cfg, n_teachers)
        tokens = torch.empty(n_given, layer.n_tokens, layer.token_width)
    with FlopCounterMode(display=False) as forward:
        out = wf([tokens])
    with FlopCounterMode(display=False) as backward:
        out[0].sum().backward()
    return forward.get_total_flops(), backward.get_total_flops()


def _layer_flops(layer: Any, cfg: WFConfig, n_teachers: int, n_given: int) -> tuple[int, int]:
    """(forward, backward) FLOPs of one layer's share of a WeightFormer step.

    Counting on the meta device costs about a millisecond per operator, so two things keep it
    short: the count is cached by the layer's shape (ResNet-50's 54 layers have 21 shapes,
    ViT-B/32's 77 have 11), and it is made at depth 1 and depth 2: the last block computes only
    the rows read out and every block before it is the same, so from depth 1 on a layer's FLOPs
    are exactly affine in the depth."""
    key = (layer.kind_key, layer.n_tokens, layer.token_width, cfg, n_teachers, n_given)
    if key not in _LAYER_FLOPS:
        one, two = (_counted(layer, dataclasses.replace(cfg, depth=d), n_teachers, n_given) for d in (1, 2))
        _LAYER_FLOPS[key] = tuple(a + (cfg.depth - 1) * (b - a) for a, b in zip(one, two))
    return _LAYER_FLOPS[key]


@functools.lru_cache(maxsize=None)
def weightformer_flops(arch: str, num_classes: int, image_size: int, scale: str, cfg: WFConfig,
                       n_teachers: int, n_given: int | None = None) -> tuple[int, int]:
    """(forward, backward) FLOPs of a WeightFormer (`cfg`, meta-trained for `n_teachers`)
    predicting a student of `arch` from `n_given` (default N) teachers' tokens, summed over the
    layers (the [cross] token's chain from layer to layer adds no product of its own)."""
    from bench.weights.tokens import weight_layers

    with torch.device("meta"):
        model = build_model(arch, num_classes, image_size, scale)
    forward = backward = 0
    for layer in weight_layers(model, arch):
        f, b = _layer_flops(layer, cfg, n_teachers, n_given or n_teachers)
        forward, backward = forward + f, backward + b
    return forward, backward


# --- per job -----------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Net:
    """What a job's FLOPs depend on: the architecture at its data set's shapes and the split sizes."""

    arch: str
    dataset: str
    scale: str
    image_size: int

    @property
    def num_classes(self) -> int:
        return dataset_spec(self.dataset).num_classes

    @property
    def forward(self) -> int:
        return forward_flops(self.arch, self.num_classes, self.image_size, self.scale)

    @property
    def train_images(self) -> int:
        return SPLIT_SIZES[self.dataset]["train"]

    @property
    def test_images(self) -> int:
        return SPLIT_SIZES[self.dataset]["test"]

    @property
    def val_images(self) -> int:
        return SPLIT_SIZES[self.dataset]["val"]

    @property
    def cached_soft_labels(self) -> bool:
        """Whether distillation computes the teachers' soft labels once (no augmentation)."""
        spec = dataset_spec(self.dataset)
        return spec.augment == "none" and spec.in_memory


def training_config(teacher: Mapping[str, Any], **overrides: Any) -> TrainConfig:
    """A teacher spec's (bench.jobs.teacher_spec) resolved training config, `overrides` on top."""
    return TrainConfig(arch=teacher["arch"], dataset=teacher["dataset"], scale=teacher["scale"],
                       **{**teacher["recipe"], **overrides}).resolved()


def net_of(teacher: Mapping[str, Any]) -> Net:
    cfg = training_config(teacher)
    return Net(cfg.arch, cfg.dataset, cfg.scale, cfg.image_size)


def training_flops(net: Net, epochs: int, fraction: float = 1.0) -> float:
    """A training run: forward + backward on every training image each epoch, and the test
    split's evaluation after every epoch."""
    return epochs * (fraction * net.train_images * (1 + BACKWARD_FACTOR) * net.forward
                     + net.test_images * net.forward)


def distillation_flops(net: Net, n_teachers: int, epochs: int, fraction: float = 1.0) -> float:
    """A student's training run + its teachers' forwards: on every training batch, or once over
    the split when the soft labels are cached."""
    passes = 1 if net.cached_soft_labels else epochs
    return training_flops(net, epochs, fraction) + passes * n_teachers * fraction * net.train_images * net.forward


def evaluation_flops(net: Net, networks: int = 1) -> float:
    return networks * net.test_images * net.forward


def reestimation_flops(net: Net, batches: int) -> float:
    if not has_batchnorm(net.arch, net.num_classes, net.image_size, net.scale):
        return 0.0
    return min(batches * REESTIMATE_BATCH, net.train_images) * net.forward


def teacher_job_flops(spec: Mapping[str, Any]) -> float:
    """A member's training run, at the epochs it draws where its pool gives a range of them."""
    epochs = draw(spec.get("ranges", {}), spec["member"]).get("epochs") or training_config(spec).epochs
    return training_flops(net_of(spec), epochs)


def pretrain_job_flops(spec: Mapping[str, Any]) -> float:
    """A base network's training run on its source task."""
    return training_flops(net_of(spec), training_config(spec).epochs)


def meta_train_step_flops(net: Net, cfg: WFConfig, n_teachers: int) -> float:
    """One meta-training step, without the teachers' soft labels."""
    batch = min(cfg.batch_size, net.train_images) if net.cached_soft_labels else cfg.batch_size
    student = (1 + BACKWARD_FACTOR) * net.forward * batch
    groups = [n_teachers]
    if cfg.shift_weight > 0 and n_teachers > 1:
        groups += [n_teachers, n_teachers - 1]  # the shifted group and the cut-off one
    return sum(sum(weightformer_flops(net.arch, net.num_classes, net.image_size, net.scale, cfg, n_teachers, n))
               + student for n in groups)


def learned_soup_flops(net: Net, cfg: WFConfig, n_teachers: int) -> float:
    """A learned soup's fit: the student's forward + backward on `cfg.steps` batches of its split,
    and the group's soft labels on them (once over the split when it is not augmented)."""
    images = SPLIT_SIZES[net.dataset].get(cfg.distill_on, net.train_images)
    batch = min(cfg.batch_size, images) if net.cached_soft_labels else cfg.batch_size
    soft_labels = n_teachers * images * net.forward if net.cached_soft_labels \
        else cfg.steps * n_teachers * batch * net.forward
    return cfg.steps * (1 + BACKWARD_FACTOR) * net.forward * batch + soft_labels


def meta_train_job_flops(spec: Mapping[str, Any]) -> float:
    net = net_of(spec["teachers"][0])
    cfg = WFConfig(**spec["wf"])
    n = spec["n_teachers"]
    if net.cached_soft_labels:  # every meta-train member's outputs on the split, once
        soft_labels = len(spec["members"]) * net.train_images * net.forward
    else:  # the group's teachers on every batch
        soft_labels = cfg.steps * n * cfg.batch_size * net.forward
    return cfg.steps * meta_train_step_flops(net, cfg, n) + soft_labels


def method_job_flops(spec: Mapping[str, Any]) -> float:
    net = net_of(spec["teachers"][0])
    name, n = spec["method"], len(spec["teachers"])
    options = method_options(name, spec["options"], f"methods.{spec['variant']}")
    if name == "single":
        return evaluation_flops(net)
    if name == "ensemble":
        return evaluation_flops(net, n)
    if name in ("soup", "aligned_soup"):
        return reestimation_flops(net, options.bn_batches) + evaluation_flops(net)
    if name == "greedy_soup":
        candidate = reestimation_flops(net, options.bn_batches) + net.val_images * net.forward
        return (n - 1) * candidate + evaluation_flops(net)
    if name == "learned_soup":
        fit = learned_soup_flops(net, options.wf_config(net.scale), n)
        return fit + reestimation_flops(net, options.bn_batches) + evaluation_flops(net)
    if name in ("kd", "self_distill"):
        epochs = options.epochs or training_config(spec["teachers"][0]).epochs
        return distillation_flops(net, n if name == "kd" else 1, epochs)
    if name in ("weightformer", "weightformer_ft"):
        cfg = options.wf_config(net.scale)
        forward, _ = weightformer_flops(net.arch, net.num_classes, net.image_size, net.scale, cfg, n)
        made = forward + reestimation_flops(net, options.bn_batches)
        if name == "weightformer":
            return made + evaluation_flops(net)
        return made + distillation_flops(net, n, options.ft_epochs, options.ft_fraction)
    raise BenchError(f"no FLOP estimate for method {name!r}")


# --- disk ----------------------------------------------------------------------------------------
# Weights and optimizer state are saved in float32 (safetensors). While a run trains, its folder
# holds a checkpoint (weights + optimizer state), two for a moment while a new one is committed
# (bench.engine.checkpointer); when it finishes the checkpoint goes and the final weights stay.
FLOAT_BYTES = 4
OPTIMIZER_SLOTS = {"adamw": 2, "sgd": 1}  # state tensors per weight: Adam's two moments, SGD's momentum


@functools.lru_cache(maxsize=None)
def weight_bytes(arch: str, num_classes: int, image_size: int, scale: str) -> int:
    """Bytes of a network's saved state (weights and buffers), counted on the meta device."""
    with torch.device("meta"):
        model = build_model(arch, num_classes, image_size, scale)
    return FLOAT_BYTES * sum(t.numel() for t in model.state_dict().values())


def weightformer_bytes(net: Net, cfg: WFConfig, n_teachers: int) -> int:
    from bench.weightformer.model import WeightFormer
    from bench.weights.tokens import weight_layers

    with torch.device("meta"):
        model = build_model(net.arch, net.num_classes, net.image_size, net.scale)
        wf = WeightFormer(weight_layers(model, net.arch), cfg, n_teachers)
    return FLOAT_BYTES * sum(t.numel() for t in wf.state_dict().values())


def training_bytes(kept: int, weights: int, optimizer: str | None) -> tuple[int, int]:
    """(kept, peak) of a training run that keeps `kept` bytes and checkpoints `weights` bytes."""
    return kept, kept + 2 * weights * (1 + OPTIMIZER_SLOTS.get(optimizer or "adamw", 2))


def job_disk(stage: str, spec: Mapping[str, Any]) -> tuple[int, int]:
    """(bytes a job leaves once done, bytes it holds at most while it runs): teachers, base networks
    and WeightFormers under the teachers root; students (KD, self-distillation, WeightFormer's
    fine-tuning; `--clean` removes them) under the results root; evaluations leave nothing."""
    teacher = spec if stage in ("pretrain", "teachers") else spec["teachers"][0]
    cfg, net = training_config(teacher), job_net(stage, spec)
    w = weight_bytes(net.arch, net.num_classes, net.image_size, net.scale)
    if stage in ("pretrain", "teachers"):  # the weights, and the val and test outputs kept beside them
        return training_bytes(w + FLOAT_BYTES * (net.val_images + net.test_images) * net.num_classes, w, cfg.optimizer)
    if stage == "meta_train":
        wf = weightformer_bytes(net, WFConfig(**spec["wf"]), spec["n_teachers"])
        return training_bytes(wf, wf, "adamw")
    name = spec["method"]
    if name in ("kd", "self_distill"):
        return training_bytes(w, w, cfg.optimizer)
    if name == "weightformer_ft":  # the predicted student and the fine-tuned one
        return training_bytes(2 * w, w, cfg.optimizer)
    return 0, 0


def job_net(stage: str, spec: Mapping[str, Any]) -> Net:
    """The network a job trains or evaluates: its own (pretrain, teachers), else its teachers'."""
    return net_of(spec if stage in ("pretrain", "teachers") else spec["teachers"][0])


JOB_FLOPS = {"pretrain": pretrain_job_flops, "teachers": teacher_job_flops, "meta_train": meta_train_job_flops, "methods": method_job_flops}


def job_flops(stage: str, spec: Mapping[str, Any]) -> float:
    """The FLOPs one job of `stage` computes, from its spec (bench.jobs)."""
    if stage not in JOB_FLOPS:
        raise BenchError(f"no FLOP estimate for stage {stage!r}")
    return JOB_FLOPS[stage](spec)


def check_tflops(tflops: float) -> float:
    if not 0 < tflops < float("inf"):  # NaN fails too
        raise BenchError(f"--gpu-tflops must be a positive, finite number of TFLOP/s, got {tflops:g}")
    return tflops


def gpu_hours(flops: float, tflops: float) -> float:
    """FLOPs at `tflops` TFLOP/s sustained, in GPU-hours."""
    return flops / (check_tflops(tflops) * 1e12) / 3600


# --- throughput ----------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Throughput:
    """Sustained TFLOP/s of one GPU per network shape: `measured` by `make gpu-check` where it
    ran that shape (keyed (arch, scale, image size)), `flat` for every other."""

    flat: float = DEFAULT_TFLOPS
    measured: Mapping[tuple[str, str, int], float] = dataclasses.field(default_factory=dict)
    source: str = ""  # where `measured` came from, e.g. "results/gpu_check.json (NVIDIA H100)"

    def tflops(self, net: Net) -> float:
        return self.measured.get((net.arch, net.scale, net.image_size), self.flat)

    def job_seconds(self, stage: str, spec: Mapping[str, Any]) -> float:
        """One job's estimated GPU-seconds: its counted FLOPs at its network's throughput."""
        return 3600 * gpu_hours(job_flops(stage, spec), self.tflops(job_net(stage, spec)))


def read_throughput(path: Path, flat: float = DEFAULT_TFLOPS) -> Throughput:
    """The training throughput `make gpu-check` measured (its `training_throughput` section: one
    entry per shape, with `tflops`), over a flat rate; just the flat rate where the file is
    missing or measured nothing. A file that is not the check's JSON is refused in one line."""
    check_tflops(flat)
    if not path.is_file():
        return Throughput(flat)
    try:
        result = json.loads(path.read_text())
        section = result.get("training_throughput", {})
        shapes = section.get("shapes", []) if isinstance(section, dict) else []
        measured = {(s["arch"], s["scale"], int(s["image_size"])): check_tflops(float(s["tflops"]))
                    for s in shapes if "tflops" in s}
    except (ValueError, TypeError, KeyError, AttributeError, BenchError) as err:
        raise BenchError(f"{path}: not a gpu-check result (python -m bench.perf.gpu_check writes one): {err}") from None
    gpu = result.get("gpu") or result.get("device") or "?"
    return Throughput(flat, measured, f"{path} ({gpu})" if measured else "")
