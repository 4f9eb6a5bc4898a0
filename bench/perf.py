"""Performance benchmarks: `python -m bench.perf [--quick] [--only NAME ...] [--out FILE.json]`.

These machines vary by +-30 % in absolute speed, so every benchmark is a ratio: a baseline and a
contender measured side by side in one run, alternately, `repeat` times. Each row (printed, and
one JSON object per row with `--out`) is

    {name, ratio, baseline, contender, unit, median, min, max, settings}

`ratio` is the median over the repeats of contender / baseline in `unit` (a speed-up when the
unit is a rate); `median`, `min` and `max` are the contender's own measurements in `unit`;
`settings` holds the work measured, the baseline's median and the ratio's min and max.
Speed is measured here, never asserted in tests.
"""
from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from bench.errors import BenchError, choose, cli
from bench.paths import project_root


@dataclass(frozen=True)
class Row:
    name: str
    ratio: float
    baseline: str
    contender: str
    unit: str
    median: float
    min: float
    max: float
    settings: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Sizes:
    """The work the benchmarks measure: FULL, or QUICK with --quick (within 5 minutes on 2 cores)."""
    gemm_n: int  # gemm_peak (and the fp32 rate teacher_pool_training reports against): n x n fp32; bf16 n/2
    pool_archs: tuple[str, ...]  # teacher_pool_training: architectures, members per stack, steps, batch
    pool_members: tuple[int, ...]
    pool_steps: int
    pool_batch: int
    meta_archs: tuple[str, ...]  # meta_train_step: the tiny steps timed (WFConfig overrides in meta_options)
    meta_options: dict[str, Any]
    meta_count_archs: tuple[str, ...]  # ... and the steps counted on fake tensors, at meta_count_scale
    meta_count_scale: str
    loader: tuple[int, int, int, int, int]  # classes, images per class, stored px, image size, batch
    kd_archs: tuple[str, ...]  # kd_student: architectures, the teachers' epochs, the students'
    kd_teacher_epochs: int
    kd_epochs: int
    step_archs: tuple[str, ...]  # training_step: architectures, steps per measurement
    step_steps: int


ALL_ARCHS = ("vgg11", "resnet50", "vit_b32")
FULL = Sizes(gemm_n=2048, pool_archs=("vgg11", "resnet50"), pool_members=(8, 16), pool_steps=10, pool_batch=64,
             meta_archs=ALL_ARCHS, meta_options={}, meta_count_archs=("resnet50", "vit_b32"), meta_count_scale="paper",
             loader=(10, 200, 160, 128, 100), kd_archs=("vgg11", "resnet50"), kd_teacher_epochs=2, kd_epochs=2,
             step_archs=ALL_ARCHS, step_steps=20)
QUICK = Sizes(gemm_n=1024, pool_archs=("vgg11",), pool_members=(8, 16), pool_steps=5, pool_batch=64,
              meta_archs=("vgg11",), meta_options={}, meta_count_archs=("resnet50",), meta_count_scale="paper",
              loader=(10, 40, 96, 64, 50), kd_archs=("vgg11",), kd_teacher_epochs=1, kd_epochs=1,
              step_archs=ALL_ARCHS, step_steps=5)


def sizes(quick: bool) -> Sizes:
    return QUICK if quick else FULL


def paired(name: str, baseline: tuple[str, Callable[[], float]], contender: tuple[str, Callable[[], float]],
           *, unit: str, repeat: int, settings: dict[str, Any] | None = None, warmup: bool = True) -> Row:
    """Measure two callables alternately (`repeat` pairs, after one warm-up call of each unless
    `warmup` is False); each returns its measurement in `unit`, higher is better."""
    (base_label, base_fn), (cont_label, cont_fn) = baseline, contender
    if warmup:  # first-call allocations, kernel selection, lazy caches
        base_fn(), cont_fn()
    base, cont = [], []
    for _ in range(repeat):
        base.append(base_fn())
        cont.append(cont_fn())
    ratios = [c / b for b, c in zip(base, cont)]
    return Row(name, statistics.median(ratios), base_label, cont_label, unit, statistics.median(cont),
               min(cont), max(cont), {**(settings or {}), "baseline_median": statistics.median(base),
                                      "ratio_min": min(ratios), "ratio_max": max(ratios), "repeat": repeat})


def rate(work: Callable[[], float]) -> Callable[[], float]:
    """A callable returning `work()`'s items per second (work returns the items it processed)."""
    def measure() -> float:
        t0 = time.perf_counter()
        items = work()
        return items / (time.perf_counter() - t0)
    return measure


# -- gemm_peak -------------------------------------------------------------------------------

def gemm_gflops(n: int, dtype: torch.dtype, seconds: float = 0.3) -> Callable[[], float]:
    """GFLOP/s of n x n x n matrix products in `dtype` (2 n^3 FLOPs each), as many as fit in
    `seconds` (at least one: a CPU without bf16 instructions emulates bf16 slowly)."""
    gen = torch.Generator().manual_seed(0)
    a, b = (torch.randn(n, n, generator=gen).to(dtype) for _ in range(2))
    out = torch.empty(n, n, dtype=dtype)

    def measure() -> float:
        calls, t0 = 0, time.perf_counter()
        while calls == 0 or time.perf_counter() - t0 < seconds:
            torch.mm(a, b, out=out)
            calls += 1
        return calls * 2 * n ** 3 / 1e9 / (time.perf_counter() - t0)

    return measure


def gemm_peak_rows(quick: bool, repeat: int) -> list[Row]:
    n = sizes(quick).gemm_n
    # bf16 at a quarter of the size: where the CPU has no bf16 instructions one call takes seconds.
    row = paired("gemm_peak", ("fp32", gemm_gflops(n, torch.float32)), ("bf16", gemm_gflops(n // 2, torch.bfloat16)),
                 unit="GFLOP/s", repeat=repeat, settings={"n_fp32": n, "n_bf16": n // 2,
                                                         "threads": torch.get_num_threads(),
                                                         "cpu_bf16_instructions": cpu_has_bf16()})
    return [row]


def cpu_has_bf16() -> bool | None:
    """Whether the CPU advertises bf16 matrix instructions (avx512_bf16 / amx_bf16); None off Linux."""
    try:
        flags = Path("/proc/cpuinfo").read_text().split()
    except OSError:
        return None
    return "avx512_bf16" in flags or "amx_bf16" in flags


def gemm_peak_fp32(quick: bool = True) -> float:
    """The fp32 GEMM rate other benchmarks report a fraction of (median of three)."""
    measure = gemm_gflops(sizes(quick).gemm_n, torch.float32)
    measure()
    return statistics.median(measure() for _ in range(3))


# -- teacher_pool_training -------------------------------------------------------------------

def teacher_pool_rows(quick: bool, repeat: int, members_list: tuple[int, ...] | None = None,
                      steps: int | None = None, batch: int | None = None) -> list[Row]:
    """M tiny members trained side by side: one packed network (bench.engine.stacked) against the
    M networks one at a time, AdamW steps on random digits-shaped batches (64 x 3 x 16 x 16) on
    the CPU; images/s of all members together. `gemm_fraction`: the stack's FLOP rate (3 x
    forward FLOPs counted with torch.utils.flop_counter, per image) over this machine's fp32
    GEMM rate measured in the same run."""
    import torch.nn.functional as F
    from torch.utils.flop_counter import FlopCounterMode

    from bench.engine.optim import make_optimizer
    from bench.engine.stacked import stack_models
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
            x_packed = torch.cat(xs, 1)  # as StackedTask builds it
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

            row = paired(f"teacher_pool_training/{arch}/M={members}", ("one at a time", rate(alone)),
                         ("stacked", rate(stacked)), unit="images/s", repeat=repeat,
                         settings={"members": members, "steps": steps, "batch_size": batch,
                                   "train_gflop_per_image": train_flops_per_image / 1e9, "gemm_fp32_gflops": peak})
            fraction = row.median * train_flops_per_image / 1e9 / peak
            rows.append(Row(**{**asdict(row), "settings": {**row.settings, "gemm_fraction": fraction,
                                                           "gemm_fraction_alone": fraction / row.ratio}}))
    return rows


# -- meta_train_step -------------------------------------------------------------------------

def meta_train_step_rows(quick: bool, repeat: int, archs: tuple[str, ...] | None = None) -> list[Row]:
    """WeightFormer's meta-training step (bench/perf_meta.py). Tiny (digits, N = 4, the tiny
    defaults; the step `meta_train` runs): steps/s with per-layer activation checkpointing
    against without (what recomputing every layer's blocks costs). Paper shapes (ResNet-50 /
    CIFAR-100, ViT-B/32 / ImageNet, N = 4, d_model 512, 6 blocks, batch 8), counted on fake
    tensors (nothing allocated): the step's peak memory in float32 (what autograd keeps for the
    backward pass, plus the teachers, WeightFormer's weights, gradients and AdamW's states) and
    its FLOPs, with checkpointing against without; the ratio is the memory saved (without / with)."""
    from bench import perf_meta

    size, rows = sizes(quick), []
    for arch in archs or size.meta_archs:
        def step_rate(checkpointing: bool) -> Callable[[], float]:
            step = perf_meta.tiny_step(arch, checkpointing=checkpointing, **size.meta_options)
            counter = itertools.count()

            def one() -> float:
                step(next(counter))
                return 1.0

            return rate(one)

        rows.append(paired(f"meta_train_step/tiny/{arch}", ("no checkpointing", step_rate(False)),
                           ("checkpointing", step_rate(True)), unit="steps/s", repeat=repeat,
                           settings={"n_teachers": 4, "pool": 6, **size.meta_options}))
    for arch in size.meta_count_archs:
        without, with_ = (perf_meta.count_step(arch, checkpointing=c, scale=size.meta_count_scale)
                          for c in (False, True))
        gb = 2 ** 30
        rows.append(Row(f"meta_train_step/{size.meta_count_scale}/{arch}", without["peak_bytes"] / with_["peak_bytes"],
                        "no checkpointing", "checkpointing", "GiB counted", with_["peak_bytes"] / gb,
                        with_["peak_bytes"] / gb, with_["peak_bytes"] / gb,
                        {"baseline_median": without["peak_bytes"] / gb, "flops": with_["flops"],
                         "flops_without": without["flops"], "n_teachers": 4, "batch": 8,
                         "how": "fake tensors (torch._subclasses.FakeTensorMode): counted, not measured"}))
    return rows


# -- loader ----------------------------------------------------------------------------------

def loader_rows(quick: bool, repeat: int) -> list[Row]:
    from bench.data.beton import write_beton_from
    from bench.data.ffcv_loader import make_ffcv_loader
    from bench.data.file_loader import make_file_loader
    from bench.data.optional_ffcv import ffcv_available
    from bench.data.imagenet import load as load_imagenet
    from bench.data.synthetic import write_imagenet
    from bench.system import job_cpus

    if not ffcv_available():
        raise BenchError("loader: FFCV is not importable here (see the README's FFCV section)")
    classes, per_class, size, image_size, batch = sizes(quick).loader
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    with tempfile.TemporaryDirectory() as tmp:
        root = write_imagenet(Path(tmp) / "jpegs", {"train": per_class, "test": 0}, classes, size)
        folder = load_imagenet(root, "train")
        beton = write_beton_from(folder, Path(tmp) / "train.beton")
        common = dict(train=True, batch_size=batch, seed=0, image_size=image_size, mean=mean, std=std, device="cpu")
        files = make_file_loader(folder, **common)
        ffcv = make_ffcv_loader(beton, augment="rrc_flip", **common)

        def epoch(loader) -> Callable[[], float]:
            return rate(lambda: float(sum(len(batch[1]) for batch in loader)))

        first = epoch(ffcv)()  # FFCV's first epoch compiles its pipeline (numba): reported apart
        return [paired("loader", ("torchvision", epoch(files)), ("ffcv", epoch(ffcv)), unit="images/s",
                       repeat=repeat, settings={"images": classes * per_class, "stored_px": size,
                                                "image_size": image_size, "augment": "rrc_flip",
                                                "batch_size": batch, "workers": job_cpus(),
                                                "ffcv_first_epoch_images_per_s": first})]


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
    from bench.options import DistillOptions
    from bench.recipes import TrainConfig

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


# -- tiny_main_table -------------------------------------------------------------------------

def stage_seconds(records: Path) -> dict[str, float]:
    """Summed job seconds per stage of the records under `records` (finished jobs only): a job's
    wall seconds, or its training's where larger (a teacher found finished carries the seconds
    its training took)."""
    from bench.store import load_records

    table = load_records(records)
    table = table[table["status"] == "done"]
    if table.empty:
        return {}
    seconds = table[[c for c in ("wall_s", "train_s") if c in table]].max(axis=1)
    return seconds.groupby(table["stage"]).sum().to_dict()


def tiny_main_table_rows(results: Path, reference: Path) -> list[Row]:
    """Job seconds per stage of a tiny main_table run in `results` against the reference run in
    `reference` (records of the committed results; another machine, another commit)."""
    mine, ref = stage_seconds(results), stage_seconds(reference)
    if not mine:
        raise BenchError(f"tiny_main_table: no finished records under {results}; run `make demo` first "
                         f"(or pass --results-root)")
    rows = []
    for stage in [*sorted(mine), "total"]:
        now = sum(mine.values()) if stage == "total" else mine[stage]
        before = sum(ref.values()) if stage == "total" else ref.get(stage, float("nan"))
        # Seconds: lower is better, so the ratio is the speed-up reference / this run.
        rows.append(Row(f"tiny_main_table/{stage}", before / now, "reference records", "this run", "job s",
                        now, now, now, {"baseline_median": before, "results": str(results), "reference": str(reference)}))
    return rows


# -- time_to_student -------------------------------------------------------------------------

def time_to_student_rows(records: Path) -> list[Row]:
    """Per architecture, from a tiny main_table run's records (seen groups): the median job seconds
    to a WeightFormer student (one forward pass; meta-training is the pool's one-off cost, in
    tiny_main_table/meta_train) against KD's (a student trained on the same ensemble's soft
    labels, the suite's fastest way to it: cached where exact) and the uniform soup's, each
    student's median top-1 beside its time. Job seconds include loading and the test evaluation."""
    from bench.store import load_records

    table = load_records(records)
    if "variant" in table:
        table = table[(table["status"] == "done") & (table["stage"] == "methods") & ~table["variant"].str.contains("/")]
    if table.empty or "variant" not in table:
        raise BenchError(f"time_to_student: no finished method records under {records}; run `make demo` first "
                         f"(or pass --results-root)")
    rows = []
    for arch, runs in table.groupby("arch"):
        cell = runs.groupby("method")[["wall_s", "top1"]].median()
        if "weightformer" not in cell.index:
            continue
        wf = cell.loc["weightformer"]
        for method in ("kd", "soup"):
            if method not in cell.index:
                continue
            seconds, top1 = cell.loc[method]
            rows.append(Row(f"time_to_student/{arch}/{method}", seconds / wf["wall_s"],
                            method, "weightformer", "job s", wf["wall_s"], wf["wall_s"], wf["wall_s"],
                            {"baseline_median": seconds, "baseline_top1": top1, "weightformer_top1": wf["top1"],
                             "groups": int((runs["method"] == "weightformer").sum())}))
    return rows


# -- the command -----------------------------------------------------------------------------

# The committed reference run tiny_main_table compares with (wherever the command runs from).
REFERENCE_RECORDS = project_root() / "results" / "main_table" / "records"

# name -> rows(quick, repeat, args): the order is the order they run in.
BENCHMARKS: dict[str, Callable[[bool, int, argparse.Namespace], list[Row]]] = {
    "gemm_peak": lambda quick, repeat, a: gemm_peak_rows(quick, repeat),
    "teacher_pool_training": lambda quick, repeat, a: teacher_pool_rows(quick, repeat),
    "meta_train_step": lambda quick, repeat, a: meta_train_step_rows(quick, repeat),
    "loader": lambda quick, repeat, a: loader_rows(quick, repeat),
    "kd_student": lambda quick, repeat, a: kd_student_rows(quick, repeat),
    "training_step": lambda quick, repeat, a: training_step_rows(quick, repeat),
    "time_to_student": lambda quick, repeat, a: time_to_student_rows(Path(a.results_root) / "main_table" / "records"),
    "tiny_main_table": lambda quick, repeat, a: tiny_main_table_rows(Path(a.results_root) / "main_table" / "records",
                                                                     REFERENCE_RECORDS),
}


def table(rows: list[Row]) -> str:
    import pandas as pd

    frame = pd.DataFrame([{"name": r.name, "baseline": r.baseline, "contender": r.contender,
                           "ratio": f"{r.ratio:.2f} [{r.settings.get('ratio_min', r.ratio):.2f}, "
                                    f"{r.settings.get('ratio_max', r.ratio):.2f}]",
                           "contender median": f"{r.median:,.1f} {r.unit}",
                           "baseline median": f"{r.settings.get('baseline_median', float('nan')):,.1f} {r.unit}"}
                          for r in rows])
    return frame.to_string(index=False)


@cli
def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.perf", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="smaller work and 3 repeats (within 5 minutes on 2 cores)")
    p.add_argument("--only", nargs="+", metavar="NAME", help=f"benchmarks to run (default: all): {', '.join(BENCHMARKS)}")
    p.add_argument("--out", metavar="FILE.json", help="write the rows as JSON")
    p.add_argument("--repeat", type=int, default=None, help="pairs measured per benchmark (default 5, quick 3)")
    p.add_argument("--results-root", default="results/demo",
                   help="the tiny main_table run tiny_main_table reads (default: make demo's)")
    a = p.parse_args(argv)
    if a.repeat is not None and a.repeat < 1:
        raise BenchError(f"--repeat must be at least 1, got {a.repeat}")
    selected = [choose("benchmark", n, BENCHMARKS) for n in (a.only or BENCHMARKS)]
    repeat = a.repeat or (3 if a.quick else 5)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device cpu")
    rows, failed = [], {}
    for name in selected:
        t0 = time.perf_counter()
        try:
            got = BENCHMARKS[name](a.quick, repeat, a)
        except BenchError as err:  # a benchmark that cannot run here says why; the others still run
            failed[name] = str(err)
            print(f"{name}: not run: {err}")
            continue
        finally:
            if a.out:  # after every benchmark: a crash later loses none of the rows measured
                write_rows(Path(a.out), rows, failed)
        rows += got
        print(f"{name} ({time.perf_counter() - t0:.0f} s)\n{table(got)}\n", flush=True)
    if a.out:
        write_rows(Path(a.out), rows, failed)
        print(f"wrote {a.out}")


def write_rows(out: Path, rows: list[Row], failed: dict[str, str]) -> None:
    from bench.io import atomic_write_json

    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out, {"rows": [asdict(r) for r in rows], "not_run": failed,
                            "torch": torch.__version__, "threads": torch.get_num_threads()})


if __name__ == "__main__":
    main()
