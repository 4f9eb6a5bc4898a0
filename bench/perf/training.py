"""The training benchmarks: teacher_pool_training (stacked members against one at a time),
meta_train_step (activation checkpointing's cost and savings), kd_student (the soft-label cache
against online teachers) and training_step (a training step and an evaluation forward as `train`
runs them against contiguous tensors and the per-tensor optimizer loop)."""
from __future__ import annotations

import contextlib
import itertools
import json
import os
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable

import torch

from bench.perf.gemm import gemm_peak_fp32
from bench.perf.harness import Row, paired, rate, sizes


# -- teacher_pool_training -------------------------------------------------------------------

def teacher_pool_rows(quick: bool, repeat: int, members_list: tuple[int, ...] | None = None,
                      steps: int | None = None, batch: int | None = None) -> list[Row]:
    """M tiny members trained side by side: one packed network (bench.engine.stacked) against the
    M networks one at a time, AdamW steps on random digits-shaped batches (64 x 3 x 16 x 16) on
    the CPU; images/s of all members together. `gemm_fraction`: the stack's FLOP rate (3 x
    forward FLOPs counted with torch.utils.flop_counter, per image) over this machine's fp32
    GEMM rate measured in the same run."""
    from torch.utils.flop_counter import FlopCounterMode

    from bench.models import build_model

    size = sizes(quick)
    peak = gemm_peak_fp32(quick)
    members_list, steps, batch = members_list or size.pool_members, steps or size.pool_steps, batch or size.pool_batch
    rows = []
    for arch in size.pool_archs:
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            torch.manual_seed(0)
            build_model(arch, 10, 16, "tiny").eval()(torch.zeros(1, 3, 16, 16))
        train_flops_per_image = 3 * counter.get_total_flops()
        for members in members_list:
            row = pool_pair(arch, members, steps, batch, repeat,
                            {"train_gflop_per_image": train_flops_per_image / 1e9, "gemm_fp32_gflops": peak})
            fraction = row.median * train_flops_per_image / 1e9 / peak
            rows.append(Row(**{**asdict(row), "settings": {**row.settings, "gemm_fraction": fraction,
                                                           "gemm_fraction_alone": fraction / row.ratio}}))
    return rows


def pool_pair(arch: str, members: int, steps: int, batch: int, repeat: int, settings: dict) -> Row:
    """`members` tiny networks of `arch`, `steps` AdamW steps each: packed against one at a time."""
    import torch.nn.functional as F

    from bench.engine.optim import make_optimizer
    from bench.engine.stacked import stack_models
    from bench.models import build_model

    models = []
    for seed in range(members):
        torch.manual_seed(seed)
        models.append(build_model(arch, 10, 16, "tiny"))
    net = stack_models(models)
    gen = torch.Generator().manual_seed(0)
    # Channels-last strided, as the loaders' augmented batches come (random_crop's permute):
    # the convolutions follow their input's format, alone and stacked.
    xs = [x.contiguous(memory_format=torch.channels_last)
          for x in torch.randn(members, batch, 3, 16, 16, generator=gen)]
    ys = torch.randint(0, 10, (members, batch), generator=gen)
    x_packed = torch.cat(xs, 1)  # as StackedObjective builds it
    stacked_opt = make_optimizer(net, "adamw", lr=1e-3, weight_decay=5e-4)
    alone_opts = [make_optimizer(m, "adamw", lr=1e-3, weight_decay=5e-4) for m in models]

    def stacked() -> float:
        for _ in range(steps):
            logits = net(x_packed).view(batch, members, -1)
            loss = sum(F.cross_entropy(logits[:, i], ys[i]) for i in range(members))
            stacked_opt.zero_grad(set_to_none=True)
            loss.backward()
            stacked_opt.step()
        return steps * batch * members

    def alone() -> float:
        for _ in range(steps):
            for model, opt, x, y in zip(models, alone_opts, xs, ys):
                loss = F.cross_entropy(model(x), y)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
        return steps * batch * members

    return paired(f"teacher_pool_training/{arch}/M={members}", ("one at a time", rate(alone)),
                  ("stacked", rate(stacked)), unit="images/s", repeat=repeat,
                  settings={"members": members, "steps": steps, "batch_size": batch, **settings})



# -- meta_train_step -------------------------------------------------------------------------

def meta_train_step_rows(quick: bool, repeat: int, archs: tuple[str, ...] | None = None) -> list[Row]:
    """WeightFormer's meta-training step (bench/perf/meta_step.py). Tiny (digits, N = 4, the tiny
    defaults; the step `meta_train` runs): steps/s with per-layer activation checkpointing
    against without (what recomputing every layer's blocks costs). Paper shapes (ResNet-50 /
    CIFAR-100, ViT-B/32 / ImageNet, N = 4, d_model 512, 6 blocks, batch 8), counted on fake
    tensors (nothing allocated): the step's peak memory in float32 (what autograd keeps for the
    backward pass, plus the teachers, WeightFormer's weights, gradients and AdamW's states) and
    its FLOPs, with checkpointing against without; the ratio is the memory saved (without / with)."""
    from bench.perf import meta_step

    size, rows = sizes(quick), []
    for arch in archs or size.meta_archs:
        def step_rate(checkpointing: bool) -> Callable[[], float]:
            step = meta_step.tiny_step(arch, checkpointing=checkpointing, **size.meta_options)
            counter = itertools.count()

            def one() -> float:
                step(next(counter))
                return 1.0

            return rate(one)

        rows.append(paired(f"meta_train_step/tiny/{arch}", ("no checkpointing", step_rate(False)),
                           ("checkpointing", step_rate(True)), unit="steps/s", repeat=repeat,
                           settings={"n_teachers": 4, "pool": 6, **size.meta_options}))
    for arch in size.meta_count_archs:
        without, with_ = (meta_step.count_step(arch, checkpointing=c, scale=size.meta_count_scale)
                          for c in (False, True))
        gb = 2 ** 30
        rows.append(Row(f"meta_train_step/{size.meta_count_scale}/{arch}", without["peak_bytes"] / with_["peak_bytes"],
                        "no checkpointing", "checkpointing", "GiB counted", with_["peak_bytes"] / gb,
                        with_["peak_bytes"] / gb, with_["peak_bytes"] / gb,
                        {"baseline_median": without["peak_bytes"] / gb, "flops": with_["flops"],
                         "flops_without": without["flops"], "n_teachers": 4, "batch": 8,
                         "how": "fake tensors (torch._subclasses.FakeTensorMode): counted, not measured"}))
    return rows



# -- kd_student ------------------------------------------------------------------------------

@contextlib.contextmanager
def environment(name: str, value: str | None):
    """`os.environ[name]` set to `value` (None: unset) inside the block, restored after it."""
    old = os.environ.get(name)
    if value is None:
        os.environ.pop(name, None)
    else:
        os.environ[name] = value
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = old


def kd_student_rows(quick: bool, repeat: int) -> list[Row]:
    """A KD student on digits (tiny scale, the pool recipe, N = 4 teachers trained briefly)
    trained from online teachers (`BENCH_SOFT_LABEL_CACHE_GB=0`) and from the soft-label cache,
    alternately, `repeat` times each, every run in a fresh folder. The first cached run fills
    the cache (the teachers' forwards on each (sample, view) the run draws: `fill_s`, a one-off
    cost per teacher shared by every later job); the rate compared is the student's own steps
    (train_s less the cache's seconds). `identical_weights`: every student's sha256 is the same."""
    from bench.engine import soft_labels, train
    from bench.methods import kd
    from bench.methods.base import MethodJob
    from bench.method_options import DistillOptions
    from bench.train_config import TrainConfig

    size = sizes(quick)
    archs, teacher_epochs, epochs = size.kd_archs, size.kd_teacher_epochs, size.kd_epochs
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        for arch in archs:
            teachers = []
            for k in range(4):
                train(TrainConfig(arch=arch, dataset="digits", scale="tiny", seed=k, epochs=teacher_epochs),
                      base / f"{arch}-teacher-{k}", progress=False)
                teachers.append(base / f"{arch}-teacher-{k}" / "model.safetensors")
            runs: dict[str, list[dict[str, Any]]] = {"online": [], "cached": []}

            def student(mode: str) -> Callable[[], float]:
                def measure() -> float:
                    out = base / f"{arch}-kd-{mode}-{len(runs[mode])}"
                    job = MethodJob(method="kd", dataset="digits", arch=arch, seed=0, teachers=teachers,
                                    members=list(range(4)), options=DistillOptions(epochs=epochs), workdir=out,
                                    scale="tiny", recipe={"epochs": epochs})
                    with environment(soft_labels.BUDGET_ENV, "0" if mode == "online" else None):
                        record = kd.run(job)
                    sha = json.loads((out / "model.json").read_text())["sha256"]
                    runs[mode].append({**record, "sha256": sha})
                    return 3600 / (record["train_s"] - record["soft_label_s"])
                return measure

            row = paired(f"kd_student/{arch}", ("online teachers", student("online")),
                         ("soft-label cache", student("cached")), unit="students/h", repeat=repeat, warmup=False)
            every = runs["online"] + runs["cached"]
            rows.append(Row(**{**asdict(row), "settings": {
                **row.settings, "teachers": 4, "epochs": epochs, "fill_s": runs["cached"][0]["soft_label_s"],
                "online_top1": runs["online"][0]["top1"], "cached_top1": runs["cached"][0]["top1"],
                "identical_weights": len({r["sha256"] for r in every}) == 1}}))
    return rows



# -- training_step ---------------------------------------------------------------------------

def training_step_rows(quick: bool, repeat: int, archs: tuple[str, ...] | None = None) -> list[Row]:
    """One tiny training step (16 px, batch 64, the arch's own optimizer) as `train` ran it before
    (contiguous tensors, the optimizer's per-tensor loop) against as it runs it now (convnets
    channels-last, a fused optimizer), and an evaluation forward (512 images) on a contiguous
    against a channels-last input. One thread: a local job's share of the cores."""
    import torch.nn.functional as F

    from bench.engine.optim import param_groups
    from bench.models import ARCH_SPECS, build_model

    steps, archs = sizes(quick).step_steps, archs or sizes(quick).step_archs
    rows = []
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for arch in archs:
            adamw = arch == "vit_b32"

            def step_rate(now: bool) -> Callable[[], float]:
                torch.manual_seed(0)
                model = build_model(arch, 10, 16, "tiny")
                x, y = torch.randn(64, 3, 16, 16), torch.randint(0, 10, (64,))
                if now and ARCH_SPECS[arch].channels_last:
                    model = model.to(memory_format=torch.channels_last)
                groups = param_groups(model, 5e-4)
                kind = {"fused": True} if now else {"foreach": False}
                opt = (torch.optim.AdamW(groups, lr=1e-3, **kind) if adamw else
                       torch.optim.SGD(groups, lr=0.05, momentum=0.9, nesterov=True, **kind))

                def work() -> float:
                    for _ in range(steps):
                        opt.zero_grad(set_to_none=True)
                        F.cross_entropy(model(x), y).backward()
                        opt.step()
                    return steps
                return rate(work)

            rows.append(paired(f"training_step/{arch}", ("contiguous, loop optimizer", step_rate(False)),
                               ("as train() runs it", step_rate(True)), unit="steps/s", repeat=repeat,
                               settings={"batch": 64, "image_size": 16, "threads": 1}))

            model = build_model(arch, 10, 16, "tiny").eval()
            images = torch.randn(512, 3, 16, 16)

            def eval_rate(x: torch.Tensor) -> Callable[[], float]:
                @torch.no_grad()
                def work() -> float:
                    model(x)
                    return len(x)
                return rate(work)

            rows.append(paired(f"eval_forward/{arch}", ("contiguous input", eval_rate(images)),
                               ("channels-last input", eval_rate(images.contiguous(memory_format=torch.channels_last))),
                               unit="images/s", repeat=repeat, settings={"batch": 512, "threads": 1}))
    finally:
        torch.set_num_threads(threads)
    return rows

