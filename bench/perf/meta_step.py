"""What one WeightFormer meta-training step costs: the tiny step (timed, profiled) and the
paper-shape step (time, peak memory, FLOPs), with and without activation checkpointing.

    python -m bench.perf.meta_step tiny [--arch vgg11 resnet50 vit_b32] [--steps 5] [--profile]
    python -m bench.perf.meta_step paper --arch resnet50 [--no-checkpointing] [--device cpu] [--cap-gb 20]
    python -m bench.perf.meta_step count --arch vit_b32 [--no-checkpointing]   # fake tensors: no memory used

`tiny_step` builds the step meta-training runs (`MetaTrainObjective` on digits, the tiny defaults,
N = 4 of 6 freshly initialised, jittered tiny teachers) and returns one call of `fit`'s step body.
`paper_step` is one step at the paper's shapes (`wf_config(..., "paper")`: d_model 512, 6 blocks,
every weight layer of ResNet-50 / CIFAR-100 or ViT-B/32 / ImageNet, N = 4 fresh teachers, a batch
of 8 random images): the group's soft labels, WeightFormer, the student's forward and backward,
clipping and AdamW. `count_step` runs the same step on fake tensors (shapes only, nothing
allocated): its FLOPs (`torch.utils.flop_counter`) and a counted estimate of its memory (the tensors
autograd saves for the backward pass, through `saved_tensors_hooks`), for shapes that do not fit here.
On a CPU a measured peak is the process's (`ru_maxrss`): run it in a child with a memory cap
(`measure_in_child`), as the `paper` command does. Speed is measured here, never asserted in tests.
"""
from __future__ import annotations

import argparse
import copy
import json
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.nn as nn
from torch._subclasses.fake_tensor import unset_fake_temporarily

from bench.engine.optim import make_optimizer
from bench.errors import BenchError, cli
from bench.models import ARCH_SPECS, ARCHS, build_model
from bench.method_options import wf_config
from bench.weightformer import meta_train as mt
from bench.weightformer.losses import ensemble_kl, student_logits
from bench.weightformer.model import WeightFormer, column_stats
from bench.weights.tokens import passthrough, stack_tokens, weight_layers

# The paper's (architecture: classes, image size) pairs of the main table.
PAPER_SHAPES = {"vgg11": (10, 32), "resnet50": (100, 32), "vit_b32": (1000, 224)}


def jittered_teachers(arch: str, k: int, num_classes: int, image_size: int, scale: str,
                      device: torch.device | str = "cpu") -> list[nn.Module]:
    """k freshly initialised models (seeds 0..k-1), every weight jittered so that no token column is
    constant (as in a trained pool), frozen, in eval mode."""
    models = []
    for seed in range(k):
        torch.manual_seed(seed)
        model = build_model(arch, num_classes, image_size, scale)
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.05 * torch.randn_like(p))
        models.append(model.to(device).eval().requires_grad_(False))
    return models


def tiny_step(arch: str, *, n_teachers: int = 4, pool: int = 6, device: torch.device | str = "cpu",
              **options: Any) -> Callable[[int], float]:
    """One meta-training step as `fit` runs it (loss, backward, clipping, AdamW) on the objective
    `meta_train` builds, at the tiny defaults (`options` override WFConfig fields). Returns
    step(s) -> the step's loss."""
    device = torch.device(device)
    cfg = wf_config(options, "tiny")
    channels_last = ARCH_SPECS[arch].channels_last
    models = jittered_teachers(arch, pool, 10, 16, "tiny", device)
    if channels_last:
        models = [m.to(memory_format=torch.channels_last) for m in models]
    tokens = mt.TeacherTokens(models, arch, cfg.align)
    torch.manual_seed(cfg.seed)
    wf = WeightFormer(tokens.layers, cfg, n_teachers, column_stats(tokens.tokens)).to(device)
    optimizer = make_optimizer(wf, "adamw", lr=cfg.lr, weight_decay=cfg.weight_decay)
    data = mt.SoftLabels(models, "digits", None, 16, device, cfg.batch_size, cfg.seed, cfg.temperature,
                         steps=cfg.steps, channels_last=channels_last)
    objective = mt.MetaTrainObjective(wf, optimizer, copy.deepcopy(models[0]).train(), tokens.layers, tokens, data, pool,
                            n_teachers, cfg, device)

    def step(s: int) -> float:
        terms = objective.loss(s)
        optimizer.zero_grad(set_to_none=True)
        terms["loss"].backward()
        nn.utils.clip_grad_norm_(wf.parameters(), cfg.clip)
        optimizer.step()
        return terms["loss"].item()

    return step


def time_tiny_step(arch: str, *, steps: int = 5, warmup: int = 2, **options: Any) -> dict[str, float]:
    """Median wall and CPU (process) seconds of `steps` tiny steps after `warmup` untimed ones. On a
    shared machine the CPU time is the steadier figure (it leaves out time spent waiting for a core)."""
    step = tiny_step(arch, **options)
    for s in range(warmup):
        step(s)
    wall, cpu = [], []
    for s in range(warmup, warmup + steps):
        t0, c0 = time.perf_counter(), time.process_time()
        step(s)
        wall.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return {"step_s": statistics.median(wall), "cpu_s": statistics.median(cpu)}


def profile_tiny_step(arch: str, *, steps: int = 3, rows: int = 15, **options: Any) -> str:
    """torch.profiler's table of the ops of `steps` tiny steps (after one untimed), by self CPU time."""
    from torch.profiler import ProfilerActivity, profile

    step = tiny_step(arch, **options)
    step(0)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for s in range(1, 1 + steps):
            step(s)
    return prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows, max_name_column_width=44)


def _paper_parts(arch: str, checkpointing: bool, device: torch.device, n_teachers: int, batch: int,
                 scale: str = "paper", optimize: bool = True):
    """The paper-shape step's pieces on `device` (scale "tiny": the same step at the tiny shapes):
    (step function, its WeightFormer, the teachers and the student)."""
    if arch not in PAPER_SHAPES:
        raise BenchError(f"paper_step: arch {arch!r} has no paper shape; one of {', '.join(PAPER_SHAPES)}")
    num_classes, image_size = PAPER_SHAPES[arch] if scale == "paper" else (10, 16)
    cfg = wf_config({"checkpointing": checkpointing}, scale)
    # Real networks even when counting on fake tensors: timm's ViT reads a value (.item()) while
    # it is built, which fake tensors cannot give.
    with torch.device(device), unset_fake_temporarily():
        teachers = [build_model(arch, num_classes, image_size, scale).eval().requires_grad_(False)
                    for _ in range(n_teachers)]
    layers = weight_layers(teachers[0], arch)
    tokens = stack_tokens(layers, [m.state_dict() for m in teachers])
    stats = column_stats([[t[k] for t in tokens] for k in range(n_teachers)])
    with torch.device(device):
        wf = WeightFormer(layers, cfg, n_teachers, stats)
    optimizer = make_optimizer(wf, "adamw", lr=cfg.lr, weight_decay=cfg.weight_decay)
    with torch.device(device), unset_fake_temporarily():  # its weights come from WeightFormer: a fresh one will do
        student = build_model(arch, num_classes, image_size, scale).train()
    extra = passthrough(student.state_dict())
    x = torch.randn(batch, 3, image_size, image_size, device=device)
    if ARCH_SPECS[arch].channels_last:
        x = x.contiguous(memory_format=torch.channels_last)

    def step(dtype: torch.dtype) -> None:
        with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
            with torch.no_grad():
                probs = torch.stack([(m(x).float() / cfg.temperature).softmax(-1) for m in teachers]).mean(0)
            logits = student_logits(student, layers, wf(tokens), {k: v.clone() for k, v in extra.items()}, x)
            loss = ensemble_kl(logits, probs, cfg.temperature)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if optimize:  # counting (fake tensors) stops at the backward: the rest needs values
            nn.utils.clip_grad_norm_(wf.parameters(), cfg.clip)
            optimizer.step()

    return step, wf, [*teachers, student]


def paper_step(arch: str, *, checkpointing: bool, device: torch.device | str = "cpu",
               dtype: torch.dtype = torch.float32, n_teachers: int = 4, batch: int = 8, warmup: int = 0,
               flops: bool = True, scale: str = "paper") -> dict[str, Any]:
    """One paper-shape meta-training step (after `warmup` untimed ones): time_s, peak_bytes (CUDA:
    max_memory_allocated over the steps; CPU: the process's peak resident set, everything it holds),
    flops (counted on the meta device, the backward and any recomputation included; None if not
    asked), wf_parameters. `dtype` bfloat16: the step under bf16 autocast. `scale` "tiny": the same
    step with the tiny models and WFConfig (a check of the code path, in seconds)."""
    device = torch.device(device)
    step, wf, _ = _paper_parts(arch, checkpointing, device, n_teachers, batch, scale)
    for _ in range(warmup):
        step(dtype)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    t0 = time.perf_counter()
    step(dtype)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - t0
    peak = (torch.cuda.max_memory_allocated(device) if device.type == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    counted = count_step(arch, checkpointing=checkpointing, n_teachers=n_teachers, batch=batch,
                         memory=False, scale=scale)["flops"] if flops else None
    return {"arch": arch, "scale": scale, "checkpointing": checkpointing, "device": str(device),
            "dtype": str(dtype).split(".")[-1],
            "n_teachers": n_teachers, "batch": batch, "time_s": seconds, "peak_bytes": peak, "flops": counted,
            "wf_parameters": sum(p.numel() for p in wf.parameters())}


def count_step(arch: str, *, checkpointing: bool, n_teachers: int = 4, batch: int = 8,
               memory: bool = True, scale: str = "paper") -> dict[str, Any]:
    """The paper-shape step's forward and backward on the meta device: FLOPs (FlopCounterMode) and,
    if `memory`, a counted estimate of its peak in float32: the bytes autograd saves for the backward
    pass (each tensor's base once; with checkpointing, each layer's inputs and outputs) plus the
    teachers, WeightFormer's weights, gradients and AdamW's two states. Transients (one layer's
    recomputation, attention's workspace) come on top: compare with a measured peak where one fits."""
    from torch.utils.flop_counter import FlopCounterMode

    from torch._subclasses.fake_tensor import FakeTensorMode

    # Fake CPU tensors (shapes, no storage): unlike the meta device, they take the CPU's attention
    # kernel (flash: it keeps no S x S attention matrix), so the count matches what runs.
    cpu = torch.device("cpu")
    with FakeTensorMode(allow_non_fake_inputs=True):
        step, wf, _ = _paper_parts(arch, checkpointing, cpu, n_teachers, batch, scale, optimize=False)
        params = sum(p.numel() * p.element_size() for p in wf.parameters())
        with FlopCounterMode(display=False) as counter:
            step(torch.float32)
    out = {"arch": arch, "checkpointing": checkpointing, "flops": counter.get_total_flops()}
    if memory:  # what the backward pass will need: every tensor autograd saves, each base counted once
        saved: dict[int, torch.Tensor] = {}

        def pack(t: torch.Tensor) -> torch.Tensor:
            base = t if t._base is None else t._base
            if id(base) not in leaves:
                saved[id(base)] = base
            return t

        with FakeTensorMode(allow_non_fake_inputs=True):
            step, wf, models = _paper_parts(arch, checkpointing, cpu, n_teachers, batch, scale, optimize=False)
            leaves = {id(p) for m in [wf, *models] for p in [*m.parameters(), *m.buffers()]}
            with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
                step(torch.float32)
        held = sum(p.numel() * p.element_size() for m in models[:-1] for p in m.parameters())
        out["saved_bytes"] = sum(t.untyped_storage().nbytes() for t in saved.values())
        # teachers, WeightFormer's weights, gradients and AdamW's two states, the saved tensors
        out["peak_bytes"] = held + 4 * params + out["saved_bytes"]
    return out


def measure_in_child(arch: str, *, checkpointing: bool, cap_bytes: int, device: str = "cpu",
                     timeout_s: float | None = None) -> dict[str, Any]:
    """`paper_step` in a child process whose address space is capped at `cap_bytes` (so a step too big
    for the machine fails there instead of swapping it or waking the OOM killer). Returns its dict,
    or {"exceeded_cap": cap_bytes, ...} when it ran out of memory."""
    cmd = [sys.executable, "-m", "bench.perf.meta_step", "paper", "--arch", arch, "--device", device, "--json",
           *([] if checkpointing else ["--no-checkpointing"])]

    def cap() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (cap_bytes, cap_bytes))

    run = subprocess.run(cmd, capture_output=True, text=True, preexec_fn=cap, timeout=timeout_s)
    if run.returncode == 0:
        return json.loads(run.stdout.strip().splitlines()[-1])
    tail = (run.stderr or run.stdout).strip().splitlines()[-1:] or [f"exit {run.returncode}"]
    if "memory" in tail[0].lower() or "alloc" in tail[0].lower() or run.returncode < 0:
        return {"arch": arch, "checkpointing": checkpointing, "exceeded_cap": cap_bytes, "error": tail[0]}
    raise BenchError(f"meta_step: the {arch} paper step failed in its child: {tail[0]}")


@cli
def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.perf.meta_step", description=__doc__.split("\n\n")[0])
    p.add_argument("what", choices=("tiny", "paper", "count"))
    p.add_argument("--arch", nargs="+", default=None)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--profile", action="store_true", help="tiny: print torch.profiler's op table")
    p.add_argument("--no-checkpointing", dest="checkpointing", action="store_false")
    p.add_argument("--device", default="cpu")
    p.add_argument("--bf16", action="store_true")
    p.add_argument("--cap-gb", type=float, default=None, help="paper: run in a child with this address-space cap")
    p.add_argument("--json", action="store_true", help="one JSON line per result")
    a = p.parse_args(argv)
    archs = a.arch or (list(ARCHS[:3]) if a.what == "tiny" else ["resnet50", "vit_b32"])
    for arch in archs:
        if a.what == "tiny":
            print(profile_tiny_step(arch, steps=a.steps) if a.profile else
                  json.dumps({"arch": arch, **time_tiny_step(arch, steps=a.steps)}))
            continue
        if a.what == "count":
            result = count_step(arch, checkpointing=a.checkpointing)
        elif a.cap_gb is not None:
            result = measure_in_child(arch, checkpointing=a.checkpointing, cap_bytes=int(a.cap_gb * 2**30),
                                      device=a.device)
        else:
            result = paper_step(arch, checkpointing=a.checkpointing, device=a.device,
                                dtype=torch.bfloat16 if a.bf16 else torch.float32)
        print(json.dumps(result))


if __name__ == "__main__":
    main()
