"""Performance benchmarks: `python -m bench.perf [--repeat 3]`.

Measures, on this machine: batches per second of the device-resident loader (with and without
augmentation), training and inference images per second of each tiny architecture on digits,
WeightFormer meta-training steps and predictions per second, and checkpoint write/verify-read
time. `kd_student_benchmark()`: a KD student from online teachers beside one from the soft-label
cache (seconds, top-1, identical weights). Speed is measured here, never asserted in tests.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Callable

import pandas as pd
import torch
import torch.nn.functional as F

from bench.checkpoint import load_checkpoint, save_checkpoint
from bench.data.loaders import make_loader
from bench.errors import cli
from bench.models import ARCHS, build_model, count_parameters


def timed(fn: Callable[[], int], repeat: int) -> tuple[float, float]:
    """(median, spread) of items per second over `repeat` calls; fn returns items processed."""
    fn()  # warm-up: first-call allocations and kernel selection
    rates = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        n = fn()
        rates.append(n / (time.perf_counter() - t0))
    return statistics.median(rates), (max(rates) - min(rates)) / 2


def weightformer_rows(repeat: int) -> list[tuple]:
    """WeightFormer (tiny defaults, N = 4, freshly initialised teachers): meta-training steps per
    second (prediction, the student's forward and backward on 128 images, AdamW step) and
    students predicted per second (one forward pass, no re-estimation)."""
    from bench.options import wf_config
    from bench.weightformer.losses import ensemble_kl, student_logits
    from bench.weightformer.model import WeightFormer, column_stats
    from bench.weights.tokens import passthrough, stack_tokens, to_tokens, weight_layers

    rows = []
    x = torch.randn(128, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    for arch in ARCHS:
        teachers = []
        for seed in range(4):
            torch.manual_seed(seed)
            teachers.append(build_model(arch, 10, 16, "tiny"))
        layers = weight_layers(teachers[0], arch)
        sds = [m.state_dict() for m in teachers]
        tokens = stack_tokens(layers, sds)
        wf = WeightFormer(layers, wf_config({"output": "direct"}, "tiny"), 4,
                          column_stats([to_tokens(layers, sd) for sd in sds]))
        opt = torch.optim.AdamW(wf.parameters(), lr=1e-4)
        student, extra = teachers[0].train(), passthrough(sds[0])
        probs = torch.full((128, 10), 0.1)

        def step() -> int:
            loss = ensemble_kl(student_logits(student, layers, wf(tokens), {k: v.clone() for k, v in extra.items()}, x),
                               probs, 4.0)
            opt.zero_grad()
            loss.backward()
            opt.step()
            return 1

        @torch.no_grad()
        def predict() -> int:
            wf(tokens)
            return 1

        label = f"{arch} tiny, N=4 ({sum(p.numel() for p in wf.parameters()):,} WF params)"
        rows.append(("meta-train", label, "steps/s", *timed(step, repeat)))
        rows.append(("predict", label, "students/s", *timed(predict, repeat)))
    return rows


@contextlib.contextmanager
def _env(name: str, value: str | None):
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


def kd_student_benchmark(archs: tuple[str, ...] = ("vgg11", "resnet50"), *, n_teachers: int = 4,
                         teacher_epochs: int = 2, student_epochs: int = 2, root: str | Path | None = None) -> pd.DataFrame:
    """A KD student on digits (tiny scale, the pool recipe) trained twice from the same N teachers,
    side by side: with online teachers (`BENCH_SOFT_LABEL_CACHE_GB=0`) and with the soft-label
    cache. The cached run fills the cache before its first step (`fill_s`, the one-off cost: the
    teachers' forwards on each (sample, view) the run draws, later jobs on these teachers read
    it); `student_s` is the student's steps alone. One row per (arch, teachers): both students'
    seconds, `speedup` = online / cached student_s, top-1 of each, and whether the two students'
    weights are bit-identical. Teachers are trained first (`teacher_epochs`) in `root` (default
    a temporary folder)."""
    from bench.engine import soft_labels, train
    from bench.methods import kd
    from bench.methods.base import MethodJob
    from bench.options import DistillOptions
    from bench.recipes import TrainConfig

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(root or tmp)
        for arch in archs:
            teachers = []
            for k in range(n_teachers):
                out = base / f"{arch}-teacher-{k}"
                train(TrainConfig(arch=arch, dataset="digits", scale="tiny", seed=k, epochs=teacher_epochs), out,
                      progress=False)
                teachers.append(out / "model.safetensors")
            runs = {}
            for mode, budget in (("online", "0"), ("cached", None)):
                job = MethodJob(method="kd", dataset="digits", arch=arch, seed=0, teachers=teachers,
                                members=list(range(n_teachers)), options=DistillOptions(epochs=student_epochs),
                                workdir=base / f"{arch}-kd-{mode}", scale="tiny", recipe={"epochs": student_epochs})
                with _env(soft_labels.BUDGET_ENV, budget):
                    rec = kd.run(job)
                sha = json.loads((base / f"{arch}-kd-{mode}" / "model.json").read_text())["sha256"]
                runs[mode] = (rec, sha)
            (on, on_sha), (ca, ca_sha) = runs["online"], runs["cached"]
            on_s, ca_s = on["train_s"] - on["soft_label_s"], ca["train_s"] - ca["soft_label_s"]
            rows.append({"arch": arch, "teachers": n_teachers, "epochs": student_epochs,
                         "online_student_s": on_s, "cached_student_s": ca_s, "speedup": on_s / ca_s,
                         "fill_s": ca["soft_label_s"], "online_top1": on["top1"], "cached_top1": ca["top1"],
                         "identical_weights": on_sha == ca_sha})
    return pd.DataFrame(rows)


def benchmarks(repeat: int) -> pd.DataFrame:
    rows = []
    for augment in (False, True):
        loader = make_loader("digits", "train", batch_size=64, train=augment, image_size=16)
        rate, spread = timed(lambda: sum(len(y) for _, y, *_ in loader), repeat)
        rows.append(("loader", "digits " + ("train (augmented)" if augment else "eval"), "images/s", rate, spread))
    loader = make_loader("digits", "train", batch_size=64, train=True, image_size=16)
    for arch in ARCHS:
        torch.manual_seed(0)
        model = build_model(arch, 10, 16, "tiny")
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)

        def epoch() -> int:
            model.train()
            for x, y, *_ in loader:
                opt.zero_grad()
                F.cross_entropy(model(x), y).backward()
                opt.step()
            return len(loader) * 64

        @torch.no_grad()
        def infer() -> int:
            model.eval()
            return sum(len(model(x)) for x, *_ in loader)

        rows.append(("train", f"{arch} tiny ({count_parameters(model):,} params)", "images/s", *timed(epoch, repeat)))
        rows.append(("infer", f"{arch} tiny", "images/s", *timed(infer, repeat)))
    rows += weightformer_rows(repeat)
    big = build_model("resnet50", 1000, 224, "paper").state_dict()
    with tempfile.TemporaryDirectory() as tmp:
        size_mb = sum(v.numel() * v.element_size() for v in big.values()) / 1e6
        rows.append(("checkpoint", f"resnet50 paper write ({size_mb:.0f} MB)", "MB/s",
                     *timed(lambda: save_checkpoint(Path(tmp) / "m", big, {"arch": "resnet50"}) and size_mb, repeat)))
        rows.append(("checkpoint", "resnet50 paper verified read", "MB/s",
                     *timed(lambda: load_checkpoint(Path(tmp) / "m") and size_mb, repeat)))
    return pd.DataFrame(rows, columns=["kind", "what", "unit", "median", "half_range"])


@cli
def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.perf", description=__doc__.split("\n\n")[0])
    p.add_argument("--repeat", type=int, default=3)
    a = p.parse_args(argv)
    table = benchmarks(a.repeat)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device cpu")
    print(table.round({"median": 1, "half_range": 1}).to_string(index=False))


if __name__ == "__main__":
    main()
