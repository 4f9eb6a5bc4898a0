"""learned_soup: model soups' per-layer learned soup, fitted with WeightFormer's loss: the control
that says whether WeightFormer needs its Transformer. Coefficients alpha of shape (N, L), one per
(teacher, parameter tensor) of the architecture (L = its `named_parameters()`: a convolution's
weight and its bias are two layers, as in model soups' learned_bylayer.py); the student's parameter
l is sum_i softmax(alpha[:, l])_i theta_i,l, starting at alpha = 0 (the uniform soup). alpha alone
is fitted (Adam) by minimising eq. 1 (bench.weightformer.losses.ensemble_kl: KL to the group's mean
soft labels at temperature T) on the training images, batch size and number of steps a
WeightFormer's meta-training draws at this scale (its `SoftLabels`, seed and soft-label cache: the
same images in the same order), the teachers' weights fixed: the student runs through
`torch.func.functional_call`, in train mode (BatchNorm on each batch's statistics, as in
meta-training). BatchNorm running statistics are not parameters: after the fit they are
re-estimated on training data, as `soup` does, and the student is evaluated. It is WeightFormer with
N x L parameters; where it matches WeightFormer, the Transformer adds nothing.

The fit lives in `job.workdir` (an engine run folder: resumable; a finished fit is found, not
redone). Records `train_s` (soft labels + fit + re-estimation), `fit_s`, `layers` (L), the eq. 1
loss over the first and last log interval (`kl_first`, `kl_last`), `coef_max_mean` (the mean over
layers of the largest coefficient: 1/N is the uniform soup, 1 a copy of one teacher per layer) and
`coef_teacher_mean` (each teacher's mean coefficient over the layers, in the group's order).
"""
from __future__ import annotations

import copy
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from torch.func import functional_call

from bench.checkpoint import load_checkpoint
from bench.engine import autocast
from bench.engine.checkpointer import RunFolder
from bench.engine.loop import fit
from bench.errors import BenchError
from bench.methods.base import MethodJob
from bench.methods.common import evaluated, load_teachers, reestimated
from bench.metrics import classification_metrics
from bench.models import ARCH_SPECS
from bench.method_options import LearnedSoupOptions
from bench.job_env import world
from bench.weightformer.losses import ensemble_kl
from bench.weightformer.meta_train import SoftLabels
from bench.weights.averaging import average_state_dicts

KIND = "learned-soup"


class Mixer(nn.Module):
    """The coefficients alpha (N, L) over N teachers' parameters (each a mapping name -> tensor, in
    `named_parameters()` order); `weights()` is the mixed parameters, differentiable in alpha."""

    def __init__(self, params: Sequence[Mapping[str, torch.Tensor]]) -> None:
        super().__init__()
        self.names = list(params[0])
        # Plain attributes, not buffers: the state dict (what a checkpoint keeps) is alpha alone,
        # and the teachers' weights get no gradient.
        self.stacked = [torch.stack([p[name].detach() for p in params]) for name in self.names]
        self.alpha = nn.Parameter(torch.zeros(len(params), len(self.names), device=self.stacked[0].device))

    def coefficients(self) -> torch.Tensor:
        """softmax over the teachers, per layer: (N, L), each column summing to 1."""
        return self.alpha.softmax(0)

    def weights(self) -> dict[str, torch.Tensor]:
        c = self.coefficients()
        # A product then a sum over the teachers: a one-hot column gives that teacher's tensor exactly.
        return {name: (c[:, l].view(-1, *[1] * (theta.dim() - 1)) * theta).sum(0)
                for l, (name, theta) in enumerate(zip(self.names, self.stacked))}


class LearnedSoupObjective:
    """One step: the group's mean soft labels on a batch of training images, eq. 1 of the mixed student."""

    labels = {"kl": "KL (eq. 1)"}

    def __init__(self, mixer: Mixer, optimizer, student: nn.Module, data: SoftLabels, n: int, temperature: float,
                 device: torch.device) -> None:
        self.model, self.optimizer, self.student, self.data = mixer, optimizer, student, data
        self.group, self.temperature, self.device = list(range(n)), temperature, device

    def loss(self, step: int) -> dict[str, torch.Tensor]:
        x, probs = self.data.batch(step, self.group)
        with autocast(self.device):  # bf16 on GPUs, as meta-training; the loss in float32
            kl = ensemble_kl(functional_call(self.student, self.model.weights(), (x,)), probs, self.temperature)
        return {"kl": kl, "loss": kl}

    def log_row(self, step: int, means: dict[str, torch.Tensor], seconds: float) -> dict[str, Any]:
        return {"step": step, "kl": means["kl"].item(), "fit_s": seconds}


def fitted(job: MethodJob[LearnedSoupOptions], models: Sequence[nn.Module], metas: Sequence[dict[str, Any]],
           mixer: Mixer) -> dict[str, Any]:
    """Fit (or resume, or find fitted) `mixer`'s alpha in `job.workdir`; return the fit's sidecar."""
    if job.workdir is None:
        raise BenchError(f"{job.method} fits mixing coefficients: its job needs a workdir (the fit's run folder)")
    cfg = job.options.wf_config(job.scale)
    device = job.torch_device()
    identity = {"kind": KIND, "arch": job.arch, "dataset": job.dataset, "members": list(job.members),
                "teacher_sha256": [m["sha256"] for m in metas], "steps": cfg.steps, "batch_size": cfg.batch_size,
                "lr": job.options.lr, "temperature": cfg.temperature, "distill_on": cfg.distill_on, "seed": cfg.seed}
    folder = RunFolder(job.workdir, identity, what="learned soup", expect={"kind": KIND}, writer=world()[0] == 0,
                       matches=lambda meta: {k: meta.get(k) for k in identity} == identity)
    done = folder.finished()
    if done is None:
        t0 = time.perf_counter()
        channels_last = ARCH_SPECS[job.arch].channels_last
        data = SoftLabels(models, job.dataset, job.data_root, metas[0]["image_size"], device, cfg.batch_size, cfg.seed,
                          cfg.temperature, steps=cfg.steps, checkpoints=job.teachers, channels_last=channels_last,
                          split=cfg.distill_on)
        soft_label_s = time.perf_counter() - t0
        student = copy.deepcopy(models[0]).train()
        optimizer = torch.optim.Adam([mixer.alpha], lr=job.options.lr)
        objective = LearnedSoupObjective(mixer, optimizer, student, data, len(models), cfg.temperature, device)
        history, seconds = fit(objective, folder, steps=cfg.steps, log_every=cfg.checkpoint_every, lr=job.options.lr,
                               schedule=lambda step: 1.0, checkpoint_meta=lambda step: identity,
                               describe=lambda r: f"kl {r['kl']:.4f}", desc=f"learned_soup: members {job.members}",
                               progress=False, quiet=world()[0] != 0)
        folder.finish({"alpha": mixer.alpha.detach()},
                      {**identity, "fit_s": seconds, "soft_label_s": soft_label_s, "layers": len(mixer.names),
                       "history": history}, history)
        done = folder.finished() or {**identity, "fit_s": seconds, "soft_label_s": soft_label_s, "history": history}
    else:
        tensors, _ = load_checkpoint(Path(job.workdir) / "model", expect={"kind": KIND}, map_location=device)
        mixer.alpha.data.copy_(tensors["alpha"])
    return done


def run(job: MethodJob[LearnedSoupOptions]) -> dict[str, Any]:
    teachers = load_teachers(job)
    models = [m.eval().requires_grad_(False) for m, _ in teachers]
    if ARCH_SPECS[job.arch].channels_last:  # as meta-training runs them (faster convolutions on a CPU too)
        models = [m.to(memory_format=torch.channels_last) for m in models]
    metas = [meta for _, meta in teachers]
    mixer = Mixer([dict(m.named_parameters()) for m in models])
    done = fitted(job, models, metas, mixer)
    t0 = time.perf_counter()
    student = copy.deepcopy(models[0])
    with torch.no_grad():
        # The running statistics' average is only a start: re-estimated below, as `soup` does.
        student.load_state_dict({**average_state_dicts([m.state_dict() for m in models]), **mixer.weights()})
    used = reestimated(job, student, metas[0], job.options.bn_batches)
    made_s = time.perf_counter() - t0
    metrics = evaluated(job, [(student, metas[0])], lambda probs, labels: classification_metrics(probs[0], labels))
    with torch.no_grad():
        c = mixer.coefficients().cpu()
    history = done["history"]
    return {**metrics, "infer_forwards": 1, "train_s": done["soft_label_s"] + done["fit_s"] + made_s,
            "fit_s": done["fit_s"], "bn_batches": used, "layers": len(mixer.names), "steps": done["steps"],
            "kl_first": history[0]["kl"], "kl_last": history[-1]["kl"],
            "coef_max_mean": float(c.max(0).values.mean()), "coef_teacher_mean": c.mean(1).tolist()}
